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
