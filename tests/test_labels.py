"""Labels: reading road vectors (GeoJSON, GPKG, OSM), buffering to road area, window reads, rasters on other grids."""

from __future__ import annotations

import time

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject
from shapely.geometry import LineString, MultiLineString, Point

from roadmap_cli.errors import RoadmapError
from roadmap_cli.grid import Grid
from roadmap_cli.labels import LabelSource, rasterize_roads, read_road_vectors, write_mask

X0, Y0 = 389000.0, 5821000.0  # UTM 33N, top-left of the test grid


@pytest.fixture(scope="module")
def grid() -> Grid:
    return Grid.create("EPSG:32633", (0.5, 0.0, X0, 0.0, -0.5, Y0), 600, 500)


def _roads() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"lane_number": ["2", "4", None, "1"], "highway": ["residential", "primary", "service", "track"]},
        geometry=[
            LineString([(X0 + 20, Y0 - 50), (X0 + 280, Y0 - 60), (X0 + 330, Y0 - 200)]),
            LineString([(X0 + 150, Y0 + 30), (X0 + 160, Y0 - 280)]),  # runs off the grid
            LineString([(X0 + 50, Y0 - 150), (X0 + 120, Y0 - 230)]),
            LineString([(X0 + 200, Y0 - 180), (X0 + 290, Y0 - 240), (X0 + 240, Y0 - 245)]),
        ],
        crs="EPSG:32633",
    )


@pytest.fixture(scope="module")
def roads_file(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("roads") / "roads.geojson"
    _roads().to_crs("EPSG:4326").to_file(p, driver="GeoJSON")
    return str(p)


def _width_px(mask: np.ndarray, col: int) -> int:
    return int(mask[:, col].sum())


def test_widths_from_lanes_and_overrides(grid):
    one = gpd.GeoDataFrame({"lane_number": [2]}, geometry=[LineString([(X0, Y0 - 100), (X0 + 300, Y0 - 100)])],
                           crs="EPSG:32633")
    assert _width_px(rasterize_roads(one, grid), 300) == 14  # 2 lanes x 3.5 m at 0.5 m
    assert _width_px(rasterize_roads(one, grid, lane_width=3.0), 300) == 12
    assert _width_px(rasterize_roads(one, grid, road_width=10.0), 300) == 20
    none = one.assign(lane_number=[None])
    assert _width_px(rasterize_roads(none, grid), 300) == 14  # default 7 m without a lane count
    osm = gpd.GeoDataFrame({"lanes": ["3"]}, geometry=one.geometry, crs="EPSG:32633")
    assert _width_px(rasterize_roads(osm, grid), 300) in (21, 22)  # 10.5 m: edge pixels touch the buffer
    with pytest.raises(RoadmapError):
        rasterize_roads(one, grid, road_width=-1.0)


def test_vectors_in_another_crs_are_buffered_in_metres(grid):
    gdf = _roads()
    a = rasterize_roads(gdf, grid)
    b = rasterize_roads(gdf.to_crs("EPSG:4326"), grid)
    assert (a != b).mean() < 1e-3
    # a geographic grid: buffered in the UTM zone, rasterised on degrees
    left, bottom, right, top = grid.bounds
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon0, lat1 = tr.transform(left, top)
    lon1, lat0 = tr.transform(right, bottom)
    g4326 = Grid.create("EPSG:4326", ((lon1 - lon0) / 400, 0.0, lon0, 0.0, -(lat1 - lat0) / 400, lat1), 400, 400)
    m = rasterize_roads(gdf, g4326)
    area_m2 = m.sum() * g4326.pixel_size_m**2
    assert abs(area_m2 - a.sum() * 0.25) / (a.sum() * 0.25) < 0.08


def test_window_reads_equal_crops(grid, roads_file):
    full = rasterize_roads(read_road_vectors(roads_file), grid)
    assert 0.02 < full.mean() < 0.5
    src = LabelSource(roads_file, grid)
    assert src.kind == "vector"
    pad = 200
    padded = np.pad(full, pad)
    rng = np.random.default_rng(0)
    for _ in range(40):
        c, r = int(rng.integers(-150, 600)), int(rng.integers(-150, 500))
        w, h = int(rng.integers(16, 200)), int(rng.integers(16, 200))
        win = src.read(c, r, w, h)
        assert win.dtype == np.uint8 and win.shape == (h, w)
        np.testing.assert_array_equal(win, padded[r + pad:r + pad + h, c + pad:c + pad + w])


def test_window_reads_are_fast(grid, roads_file):
    src = LabelSource(roads_file, grid)
    t = time.perf_counter()
    for i in range(200):
        src.read((i * 37) % 400, (i * 53) % 300, 256, 256)
    assert time.perf_counter() - t < 2.0


def test_raster_labels_same_grid_and_255(grid, tmp_path):
    mask = rasterize_roads(_roads(), grid)
    p = tmp_path / "mask.tif"
    write_mask(p, mask * 255, grid)
    src = LabelSource(p, grid)
    assert src.kind == "raster"
    np.testing.assert_array_equal(src.read(0, 0, grid.width, grid.height), mask)
    win = src.read(-10, 20, 64, 64)
    assert (win[:, :10] == 0).all()
    np.testing.assert_array_equal(win[:, 10:], mask[20:84, 0:54])


def test_raster_labels_on_another_grid_are_reprojected(grid, tmp_path):
    """A mask in EPSG:4326 read onto the UTM grid."""
    mask = rasterize_roads(_roads(), grid)
    left, bottom, right, top = grid.bounds
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon0, lat1 = tr.transform(left - 20, top + 20)
    lon1, lat0 = tr.transform(right + 20, bottom - 20)
    w, h = 700, 600
    dst_t = Affine((lon1 - lon0) / w, 0, lon0, 0, -(lat1 - lat0) / h, lat1)
    geo = np.zeros((h, w), np.uint8)
    reproject(mask, geo, src_transform=Affine(*grid.transform), src_crs="EPSG:32633", dst_transform=dst_t,
              dst_crs="EPSG:4326", resampling=Resampling.nearest)
    p = tmp_path / "mask4326.tif"
    with rasterio.open(p, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=dst_t, nodata=None) as ds:
        ds.write(geo, 1)
    src = LabelSource(p, grid)
    back = src.read(0, 0, grid.width, grid.height)
    inter = np.logical_and(back, mask).sum()
    union = np.logical_or(back, mask).sum()
    assert inter / union > 0.9
    np.testing.assert_array_equal(src.read(100, 50, 128, 96), back[50:146, 100:228])


def test_read_geojson_keeps_lines_only(tmp_path):
    gdf = gpd.GeoDataFrame(
        {"name": ["a", "b", "c"], "lane_number": ["2", "1", "3"]},
        geometry=[LineString([(13.0, 52.0), (13.001, 52.0)]), Point(13.0, 52.0),
                  MultiLineString([[(13.0, 52.001), (13.001, 52.001)], [(13.0, 52.002), (13.001, 52.003)]])],
        crs="EPSG:4326",
    )
    p = tmp_path / "mixed.geojson"
    gdf.to_file(p, driver="GeoJSON")
    out = read_road_vectors(p)
    assert list(out.geom_type) == ["LineString"] * 3
    assert list(out["name"]) == ["a", "c", "c"]
    g = tmp_path / "roads.gpkg"
    gdf.to_crs("EPSG:32633").to_file(g, driver="GPKG")
    out = read_road_vectors(g)
    assert len(out) == 3 and out.crs.to_epsg() == 32633


OSM = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="test">
  <node id="1" version="1" lat="52.5000" lon="13.4000"/>
  <node id="2" version="1" lat="52.5000" lon="13.4020"/>
  <node id="3" version="2" lat="52.5010" lon="13.4020"/>
  <node id="4" version="1" lat="52.5020" lon="13.4000"/>
  <way id="10" version="3">
    <nd ref="1"/><nd ref="2"/><nd ref="3"/>
    <tag k="highway" v="primary"/><tag k="lanes" v="4"/><tag k="name" v="Main"/>
  </way>
  <way id="11" version="1">
    <nd ref="3"/><nd ref="4"/>
    <tag k="highway" v="residential"/>
  </way>
  <way id="12" version="1">
    <nd ref="1"/><nd ref="4"/><nd ref="3"/><nd ref="1"/>
    <tag k="building" v="yes"/>
  </way>
  <way id="13" version="1">
    <nd ref="2"/><nd ref="99"/>
    <tag k="highway" v="service"/>
  </way>
</osm>
"""


def test_read_osm_highways(tmp_path):
    p = tmp_path / "extract.osm"
    p.write_text(OSM)
    out = read_road_vectors(p)
    assert sorted(out["osm_id"]) == [10, 11]  # the building and the way with a missing node are left out
    main = out[out["osm_id"] == 10].iloc[0]
    assert main["highway"] == "primary" and main["lanes"] == "4" and main["name"] == "Main"
    assert len(main.geometry.coords) == 3 and out.crs.to_epsg() == 4326
    grid = Grid.from_extent(np.array([13.4, 13.402]), np.array([52.5, 52.502]), resolution=1.0)
    src = LabelSource(p, grid)
    assert src.read(0, 0, grid.width, grid.height).sum() > 0


def test_read_osm_pbf(tmp_path):
    import osmium

    xml = tmp_path / "extract.osm"
    xml.write_text(OSM)
    pbf = tmp_path / "extract.osm.pbf"
    writer = osmium.SimpleWriter(str(pbf))
    for obj in osmium.FileProcessor(str(xml)):
        writer.add(obj)
    writer.close()
    out = read_road_vectors(pbf)
    assert sorted(out["osm_id"]) == [10, 11]


def test_bad_inputs(tmp_path, grid):
    with pytest.raises(RoadmapError, match="no such file"):
        read_road_vectors(tmp_path / "missing.geojson")
    junk = tmp_path / "junk.geojson"
    junk.write_text("this is not json")
    with pytest.raises(RoadmapError, match="junk.geojson"):
        read_road_vectors(junk)
    pts = tmp_path / "points.geojson"
    gpd.GeoDataFrame(geometry=[Point(13, 52)], crs="EPSG:4326").to_file(pts, driver="GeoJSON")
    with pytest.raises(RoadmapError, match="no line"):
        read_road_vectors(pts)
    bad_osm = tmp_path / "bad.osm"
    bad_osm.write_text("<osm><garbage")
    with pytest.raises(RoadmapError, match="bad.osm"):
        read_road_vectors(bad_osm)
    empty_osm = tmp_path / "empty.osm"
    empty_osm.write_text('<?xml version="1.0"?><osm version="0.6"></osm>')
    with pytest.raises(RoadmapError, match="no highway"):
        read_road_vectors(empty_osm)
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"not a tiff")
    with pytest.raises(RoadmapError, match="bad.tif"):
        LabelSource(bad_tif, grid)


@pytest.mark.parametrize("nodata", [None, 7])
def test_raster_label_windows_on_an_offset_raster(grid, tmp_path, nodata):
    """A label raster on the grid's pixels but another extent (whole-pixel offset): windowed reads inside,
    across and outside both extents == the raster's road pixels (> 0, not nodata) where raster and grid
    overlap, 0 elsewhere."""
    rng = np.random.default_rng(3)
    h, w, dc, dr = 520, 580, 20, -10  # raster pixel (col + dc, row + dr) is grid pixel (col, row)
    data = rng.choice(np.array([0, 1, 2, 7, 255], dtype=np.uint8), size=(h, w))
    p = tmp_path / "offset.tif"
    t = Affine(0.5, 0.0, X0 - dc * 0.5, 0.0, -0.5, Y0 + dr * 0.5)
    with rasterio.open(p, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=t, nodata=nodata, tiled=True, blockxsize=128, blockysize=128) as ds:
        ds.write(data, 1)
    road = (data > 0) & ((data != nodata) if nodata is not None else True)
    src = LabelSource(p, grid)
    assert src._impl.offset == (dc, dr)
    for col, row, ww, hh in [(0, 0, grid.width, grid.height), (100, 50, 256, 256), (-30, -20, 128, 64),
                             (560, 470, 64, 64), (590, 10, 40, 30), (700, 700, 16, 16), (5, 5, 0, 0)]:
        gc, gr = np.meshgrid(np.arange(col, col + ww), np.arange(row, row + hh))
        inside = (gc >= 0) & (gc < grid.width) & (gr >= 0) & (gr < grid.height)
        rc, rr = gc + dc, gr + dr
        inside &= (rc >= 0) & (rc < w) & (rr >= 0) & (rr < h)
        want = np.zeros((hh, ww), dtype=np.uint8)
        want[inside] = road[rr[inside], rc[inside]]
        got = src.read(col, row, ww, hh)
        assert got.dtype == np.uint8 and got.shape == (hh, ww)
        np.testing.assert_array_equal(got, want)
