"""Imagery: collecting files, the VRT mosaic and its checks, windowed reads."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import write_geotiff

from roadmap_cli.errors import RoadmapError
from roadmap_cli.grid import Grid
from roadmap_cli.imagery import ImageryReader, build_vrt, collect_imagery

T0 = (0.5, 0.0, 500_000.0, 0.0, -0.5, 5_920_000.0)


def two_tiles(folder, crs_b="EPSG:32630", res_b=0.5):
    folder.mkdir(exist_ok=True)
    a = write_geotiff(folder / "a.tif", "EPSG:32630", T0, 40, 30, seed=1)
    b = write_geotiff(folder / "b.tif", crs_b, (res_b, 0.0, 500_020.0, 0.0, -res_b, 5_920_000.0 - 15.0), 40, 30,
                      seed=2)
    return a, b


def test_collect(tmp_path):
    a, b = two_tiles(tmp_path / "tiles")
    (tmp_path / "tiles" / "notes.txt").write_text("x")
    assert collect_imagery(tmp_path / "tiles") == [a, b]
    assert collect_imagery(a) == [a]
    with pytest.raises(RoadmapError, match="no such file"):
        collect_imagery(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RoadmapError, match="no raster files"):
        collect_imagery(tmp_path / "empty")


def test_mosaic_vrt_reads_each_tile(tmp_path):
    a, b = two_tiles(tmp_path / "tiles")
    vrt = tmp_path / "imagery.vrt"
    build_vrt([a, b], vrt)
    g = Grid.from_raster(vrt)
    assert (g.width, g.height) == (80, 60) and g.transform == T0
    with rasterio.open(a) as ds:
        da = ds.read()
    with rasterio.open(b) as ds:
        db = ds.read()
    with ImageryReader(vrt) as r:
        rgb, valid = r.read(0, 0, 80, 60)
        assert rgb.shape == (3, 60, 80) and valid.shape == (60, 80)
        np.testing.assert_array_equal(rgb[:, :30, :40], da)
        np.testing.assert_array_equal(rgb[:, 30:, 40:], db)
        assert valid[:30, :40].all() and valid[30:, 40:].all()
        assert not valid[:30, 40:].any() and not valid[30:, :40].any()  # gaps between the files
        assert (rgb[:, :30, 40:] == 0).all()
        # a boundless window half outside the mosaic
        rgb2, valid2 = r.read(-10, -5, 20, 10)
        assert not valid2[:5].any() and not valid2[:, :10].any() and valid2[5:, 10:].all()
        np.testing.assert_array_equal(rgb2[:, 5:, 10:], da[:, :5, :10])
        assert (rgb2[:, :5] == 0).all()


def test_mixed_crs_resolution_and_bands_are_errors(tmp_path):
    a, b = two_tiles(tmp_path / "crs", crs_b="EPSG:32631")
    with pytest.raises(RoadmapError, match="CRS .* differs"):
        build_vrt([a, b], tmp_path / "x.vrt")
    a, b = two_tiles(tmp_path / "res", res_b=1.0)
    with pytest.raises(RoadmapError, match="resolution .* differs"):
        build_vrt([a, b], tmp_path / "y.vrt")
    gray = write_geotiff(tmp_path / "gray.tif", "EPSG:32630", T0, 10, 10, bands=1)
    with pytest.raises(RoadmapError, match="RGB imagery"):
        build_vrt([gray], tmp_path / "z.vrt")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff")
    with pytest.raises(RoadmapError, match="not a readable raster"):
        build_vrt([junk], tmp_path / "w.vrt")


def test_nodata_is_invalid(tmp_path):
    path = write_geotiff(tmp_path / "nd.tif", "EPSG:32630", T0, 20, 10, seed=3, nodata=0)
    with rasterio.open(path, "r+") as ds:
        data = ds.read()
        data[:, :, :5] = 0
        ds.write(data)
    build_vrt([path], tmp_path / "imagery.vrt")
    with ImageryReader(tmp_path / "imagery.vrt") as r:
        _, valid = r.read(0, 0, 20, 10)
    assert not valid[:, :5].any() and valid[:, 5:].mean() > 0.9


def test_wgs84_vrt(tmp_path, wgs84_tiff):
    vrt = tmp_path / "imagery.vrt"
    build_vrt(collect_imagery(wgs84_tiff), vrt)
    assert Grid.from_raster(vrt) == Grid.from_raster(wgs84_tiff)


def _boundless(path, col, row, w, h):
    """What the reader must return: rasterio's boundless reads of RGB and of band 1's mask."""
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        win = Window(col, row, w, h)
        rgb = ds.read([1, 2, 3], window=win, boundless=True, fill_value=0)
        return rgb, ds.read_masks(1, window=win, boundless=True) > 0


def _mosaic(kind: str, folder):
    """(path the reader opens, whether its validity comes without reading masks)."""
    folder.mkdir()
    vrt = folder / "imagery.vrt"
    if kind == "two_tiles":  # synthetic coverage alpha, a gap between the files
        build_vrt(list(two_tiles(folder / "t")), vrt)
        return vrt, True
    if kind == "mixed_nodata":  # second file has nodata: the alpha band is not a pure coverage band
        a = write_geotiff(folder / "a.tif", "EPSG:32630", T0, 40, 30, seed=1)
        b = write_geotiff(folder / "b.tif", "EPSG:32630", (0.5, 0.0, 500_020.0, 0.0, -0.5, 5_919_985.0), 40, 30,
                          seed=2, nodata=0)
        with rasterio.open(b, "r+") as ds:
            d = ds.read()
            d[:, :, :7] = 0
            ds.write(d)
        build_vrt([a, b], vrt)
        return vrt, False
    if kind == "nodata":
        p = write_geotiff(folder / "nd.tif", "EPSG:32630", T0, 48, 40, seed=3, nodata=0)
        with rasterio.open(p, "r+") as ds:
            d = ds.read()
            d[:, 5:15, :9] = 0
            ds.write(d)
        build_vrt([p], vrt)
        return vrt, False
    if kind == "alpha":
        from affine import Affine

        rng = np.random.default_rng(4)
        data = rng.integers(1, 256, (4, 40, 48), dtype=np.uint8)
        data[3, :, :12] = 0
        p = folder / "alpha.tif"
        with rasterio.open(p, "w", driver="GTiff", width=48, height=40, count=4, dtype="uint8", crs="EPSG:32630",
                           transform=Affine(*T0), photometric="RGB", alpha="YES") as ds:
            ds.write(data)
        build_vrt([p], vrt)
        return vrt, False
    # a plain 3-band GeoTIFF opened directly: GDAL reports every pixel valid
    return write_geotiff(folder / "plain.tif", "EPSG:32630", T0, 48, 40, seed=5), True


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("kind", ["two_tiles", "mixed_nodata", "nodata", "alpha", "plain"])
def test_reads_equal_boundless_reads(tmp_path, kind):
    """Fast windowed reads (validity known without reading masks where possible) == rasterio boundless reads."""
    path, mask_free = _mosaic(kind, tmp_path / kind)
    windows = [(0, 0, 80, 60), (5, 3, 30, 20), (35, 25, 20, 12), (-10, -5, 20, 10), (70, 50, 20, 20),
               (-5, -5, 100, 80), (200, 200, 10, 10), (40, 0, 10, 30), (-30, 0, 20, 5), (3, 4, 0, 0)]
    with ImageryReader(path) as r:
        assert (r._all_valid or r._coverage is not None) == mask_free
        for col, row, w, h in windows:
            rgb, valid = r.read(col, row, w, h)
            want_rgb, want_valid = _boundless(path, col, row, w, h)
            assert rgb.shape == (3, h, w) and valid.shape == (h, w) and rgb.dtype == np.uint8
            np.testing.assert_array_equal(rgb, want_rgb)
            np.testing.assert_array_equal(valid, want_valid)


def test_coverage_rects_of_build_vrt(tmp_path):
    from roadmap_cli.imagery import coverage_rects

    a, b = two_tiles(tmp_path / "tiles")
    build_vrt([a, b], tmp_path / "m.vrt")
    np.testing.assert_array_equal(coverage_rects(tmp_path / "m.vrt"), [[0, 0, 40, 30], [40, 30, 80, 60]])
    nd = write_geotiff(tmp_path / "nd.tif", "EPSG:32630", T0, 20, 10, nodata=0)
    build_vrt([nd], tmp_path / "nd.vrt")
    assert coverage_rects(tmp_path / "nd.vrt") is None  # nodata, no alpha band
    (tmp_path / "junk.vrt").write_text("<VRTDataset")
    assert coverage_rects(tmp_path / "junk.vrt") is None
