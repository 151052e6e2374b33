"""Vectorize: hand-drawn masks give the expected graphs, tiled equals whole, the real Vegas tile comes back within
5 m, and the command writes valid files.

Masks are drawn on a 0.5 m UTM grid unless said otherwise; lengths are checked against what the drawing implies
(a skeleton ends half a road width short of a bar's end).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from postprocess.roadgraph import RoadGraph
from postprocess.vectorize import VectorizeStats, mask_to_graph, raster_to_graph

DATA = Path(__file__).parent / "data"
UTM = "EPSG:32633"
T05 = (0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)  # 0.5 m pixels


# ---- drawing helpers --------------------------------------------------------------------------------------------
def bar(mask: np.ndarray, r0: float, c0: float, r1: float, c1: float, width: float, value: int = 255) -> None:
    """A straight road of `width` pixels between two pixel centres (rows, cols), flat ends."""
    rr, cc = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    d = np.array([r1 - r0, c1 - c0], dtype=float)
    n = np.hypot(*d)
    t = ((rr - r0) * d[0] + (cc - c0) * d[1]) / n
    off = np.abs((rr - r0) * d[1] - (cc - c0) * d[0]) / n
    mask[(t >= 0) & (t <= n) & (off <= width / 2)] = value


def ring(mask: np.ndarray, rc: float, cc: float, radius: float, width: float, value: int = 255) -> None:
    rr, cols = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    d = np.hypot(rr - rc, cols - cc)
    mask[np.abs(d - radius) <= width / 2] = value


def degrees(g: RoadGraph) -> list[int]:
    return sorted(g.degree().values())


def assert_same_graph(a: RoadGraph, b: RoadGraph) -> None:
    assert a.nodes == b.nodes
    assert len(a.edges) == len(b.edges)
    for ea, eb in zip(a.edges, b.edges, strict=True):
        assert (ea.u, ea.v) == (eb.u, eb.v)
        np.testing.assert_array_equal(ea.coords, eb.coords)
        assert ea.length_m == pytest.approx(eb.length_m, rel=1e-12)
        assert ea.confidence == pytest.approx(eb.confidence, abs=1e-12)


# ---- hand-drawn masks -------------------------------------------------------------------------------------------
def test_cross_gives_one_junction_and_four_arms():
    m = np.zeros((400, 400), np.uint8)
    bar(m, 200, 20, 200, 380, 10)
    bar(m, 20, 200, 380, 200, 10)
    g = mask_to_graph(m, T05, UTM)
    assert degrees(g) == [1, 1, 1, 1, 4]
    assert len(g.edges) == 4
    for e in g.edges:  # 180 px arm minus half the road width, 0.5 m pixels
        assert e.length_m == pytest.approx(87.5, rel=0.03)
    assert all(e.confidence == pytest.approx(1.0) for e in g.edges)


def test_loop_survives_as_a_self_loop():
    m = np.zeros((300, 300), np.uint8)
    ring(m, 150, 150, 100, 10)
    g = mask_to_graph(m, T05, UTM)
    assert len(g.edges) == 1 and len(g.nodes) == 1
    e = g.edges[0]
    assert e.u == e.v
    assert e.length_m == pytest.approx(2 * np.pi * 50.0, rel=0.03)
    assert len(e.coords) >= 4 and np.allclose(e.coords[0], e.coords[-1])


def test_t_junction_loses_its_short_spur_keeps_a_long_branch():
    m = np.zeros((400, 400), np.uint8)
    bar(m, 100, 20, 100, 380, 10)  # the main road
    bar(m, 100, 200, 350, 200, 10)  # the stem of the T
    bar(m, 100, 300, 88, 300, 6)  # a spur 12 px (6 m) from the road's centreline: pruned (--min-spur 10 m)
    g = mask_to_graph(m, T05, UTM)
    assert degrees(g) == [1, 1, 1, 3]
    lengths = sorted(e.length_m for e in g.edges)
    assert lengths == pytest.approx([87.5, 87.5, 122.5], rel=0.03)
    m2 = m.copy()
    bar(m2, 100, 300, 40, 300, 6)  # now 60 px = 30 m: a real branch
    g2 = mask_to_graph(m2, T05, UTM)
    assert degrees(g2) == [1, 1, 1, 1, 3, 3]
    assert g2.total_length_m == pytest.approx(87.5 * 2 + 122.5 + 30 - 1.5, rel=0.03)


@pytest.mark.parametrize("gap_value,closed", [(90, True), (10, False)])
def test_gap_closed_only_where_probability_stays_up(gap_value, closed):
    m = np.zeros((400, 400), np.uint8)
    bar(m, 200, 20, 200, 380, 10)
    m[190:211, 190:211] = np.where(m[190:211, 190:211] > 0, gap_value, 0)  # 10 m stretch below the threshold
    st = VectorizeStats()
    g = mask_to_graph(m, T05, UTM, stats=st)
    if closed:
        assert st.gaps_closed == 1
        assert len(g.edges) == 1 and degrees(g) == [1, 1]
        assert g.edges[0].length_m == pytest.approx(175.0, rel=0.03)
        assert g.edges[0].confidence < 1.0  # the gap's low probability shows in the mean
    else:
        assert st.gaps_closed == 0
        assert len(g.edges) == 2 and degrees(g) == [1, 1, 1, 1]


def test_dead_end_short_of_a_road_joins_it_and_roads_reach_the_border():
    m = np.zeros((300, 400), np.uint8)
    bar(m, 100, 0, 100, 380, 10)  # touches the left border
    bar(m, 125, 250, 280, 250, 10)  # a side road ending 10 px (5 m) short of the main road's edge
    m[96:125, 245:256] = np.maximum(m[96:125, 245:256], 80)  # weak but above --gap-threshold
    st = VectorizeStats()
    g = mask_to_graph(m, T05, UTM, stats=st)
    assert st.gaps_closed == 2  # the T, and the left end extended to the raster's border
    assert degrees(g) == [1, 1, 1, 3]
    xs = [xy[0] for xy in g.nodes.values()]
    assert min(xs) == pytest.approx(500000.0)  # the left border of the raster, not half a road short of it
    (junction,) = [n for n, d in g.degree().items() if d == 3]
    jx, jy = g.nodes[junction]
    assert jx == pytest.approx(500000.0 + 0.5 * 250.5, abs=1.0) and jy == pytest.approx(4000000.0 - 50.25, abs=1.0)


def test_lengths_are_geodesic_metres_on_a_geographic_grid():
    from pyproj import Geod

    m = np.zeros((400, 400), np.uint8)
    bar(m, 200, 20, 200, 380, 10)
    bar(m, 20, 200, 380, 200, 10)
    tr = (1e-5, 0.0, 10.0, 0.0, -1e-5, 60.0)  # ~0.56 m x 1.11 m pixels at 60 degrees north
    g = mask_to_graph(m, tr, "EPSG:4326")
    assert degrees(g) == [1, 1, 1, 1, 4]
    geod = Geod(ellps="WGS84")
    for e in g.edges:
        expect = geod.line_length(e.coords[:, 0], e.coords[:, 1])
        assert e.length_m == pytest.approx(expect, rel=1e-6)
    span = [np.abs(e.coords[-1] - e.coords[0]) for e in g.edges]  # degrees; pixels are square in degrees
    horiz = [e.length_m for e, s in zip(g.edges, span, strict=True) if s[0] > 10 * s[1]]
    vert = [e.length_m for e, s in zip(g.edges, span, strict=True) if s[1] > 10 * s[0]]
    assert len(horiz) == 2 and len(vert) == 2
    lat_m = geod.inv(10, 60, 10, 60 - 1e-5)[2]
    lon_m = geod.inv(10, 60, 10 + 1e-5, 60)[2]
    # arms are 180 px minus half the road width (5 px across, in pixels of the other axis' size)
    assert np.mean(vert) == pytest.approx(175 * lat_m, rel=0.04)
    assert np.mean(horiz) == pytest.approx(175 * lon_m, rel=0.04)


def test_georeferenced_at_pixel_centres():
    m = np.zeros((100, 200), np.uint8)
    m[50, 10:190] = 255  # a one-pixel line along row 50, columns 10..189
    g = mask_to_graph(m, T05, UTM, min_length_m=1.0)
    (e,) = g.edges
    ys = e.coords[:, 1]
    assert np.allclose(ys, 4000000.0 - 0.5 * 50.5)
    assert sorted(e.coords[[0, -1], 0]) == pytest.approx([500000.0 + 0.5 * 10.5, 500000.0 + 0.5 * 189.5])


def test_input_scales_bool_01_0255_and_float_agree():
    m = np.zeros((200, 200), np.uint8)
    bar(m, 100, 10, 100, 190, 8)
    ref = mask_to_graph(m, T05, UTM)
    for arr in (m > 0, (m > 0).astype(np.uint8), (m / 255.0).astype(np.float32)):
        g = mask_to_graph(arr, T05, UTM)
        assert [e.coords.tolist() for e in g.edges] == [e.coords.tolist() for e in ref.edges]


def test_empty_and_bad_inputs():
    g = mask_to_graph(np.zeros((64, 64), np.uint8), T05, UTM)
    assert g.nodes == {} and g.edges == []
    with pytest.raises(ValueError, match="threshold"):
        mask_to_graph(np.zeros((64, 64), np.uint8), T05, UTM, threshold=1.5)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_graph(np.zeros((2, 64, 64), np.uint8), T05, UTM)


# ---- tiled == whole -----------------------------------------------------------------------------------------------
def _seam_mask(size: int = 640, tile: int = 160) -> np.ndarray:
    from postprocess.synthetic import synthetic_prob

    m = synthetic_prob(size, size, seed=11, spacing=210)
    t = tile
    bar(m, t - 60, t, t + 60, t, 9)  # a junction exactly at a window corner
    bar(m, t, t - 60, t, t + 60, 9)
    ring(m, 2 * t, 2 * t + 3, 45, 8)  # a ring across a seam crossing
    rr, cc = np.mgrid[0:size, 0:size]
    m[np.hypot(rr - 3 * t, cc - t) < 30] = 230  # a thick blob on a seam
    bar(m, 3 * t, t, 3 * t, 3 * t + 50, 12)
    bar(m, t + 7, 3 * t - 1, size - 1, 3 * t - 1, 7)  # a road running along a seam, one pixel off it
    return m


def test_tiled_equals_whole_on_a_mask_with_seam_features():
    m = _seam_mask()
    whole_stats, tiled_stats = VectorizeStats(), VectorizeStats()
    whole = mask_to_graph(m, T05, UTM, tile_size=4096, stats=whole_stats)
    tiled = mask_to_graph(m, T05, UTM, tile_size=160, stats=tiled_stats)
    assert whole_stats.windows == 1 and tiled_stats.windows == 16
    assert tiled_stats.tiling["seams"] > 10 and tiled_stats.tiling["seam_mismatches"] == 0
    assert not tiled_stats.tiling.get("node_mismatches")
    assert len(whole.edges) > 30
    assert_same_graph(whole, tiled)
    odd = mask_to_graph(m, T05, UTM, tile_size=97)  # windows that do not divide the raster
    assert_same_graph(whole, odd)


def test_tiled_from_a_geotiff_equals_in_memory(tmp_path):
    import rasterio
    from rasterio.transform import Affine

    m = _seam_mask(384, 128)
    path = tmp_path / "prob.tif"
    with rasterio.open(path, "w", driver="GTiff", width=384, height=384, count=1, dtype="uint8", crs=UTM,
                       transform=Affine(*T05), tiled=True, blockxsize=128, blockysize=128, nodata=0) as ds:
        ds.write(m, 1)
    mem = mask_to_graph(m, T05, UTM, tile_size=4096)
    st = VectorizeStats()
    disk = raster_to_graph(path, stats=st, params=None)
    assert_same_graph(mem, disk)
    from postprocess.vectorize import VectorizeParams

    tiled = raster_to_graph(path, params=VectorizeParams(tile_size=100))
    assert_same_graph(mem, tiled)


# ---- real data: the Vegas tile -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vegas():
    import geopandas as gpd
    from affine import Affine
    from rasterio.features import rasterize

    grid = json.loads((DATA / "vegas_grid.json").read_text())
    gdf = gpd.read_file(DATA / "vegas_roads.geojson")
    utm = gdf.to_crs(32611)  # buffer lane_number x 3.5 m in metres, rasterize on the tile's EPSG:4326 grid
    polys = utm.geometry.buffer(utm["lane_number"].astype(float) * 3.5 / 2, cap_style="flat").to_crs(4326)
    mask = rasterize([(p, 1) for p in polys], out_shape=(grid["height"], grid["width"]),
                     transform=Affine(*grid["transform"]), dtype="uint8")
    return mask, grid


def test_vegas_roads_come_back_within_5m(vegas):
    from postprocess.metrics import length_precision_recall, read_graph

    mask, grid = vegas
    g = mask_to_graph(mask, grid["transform"], "EPSG:4326")
    truth = read_graph(DATA / "vegas_roads.geojson")
    # the truth lines run a little past the tile; score only what the tile shows
    from postprocess.roadgraph import RoadEdge

    a, _, c, _, e, f = grid["transform"]
    x0, x1, y0, y1 = c, c + a * grid["width"], f + e * grid["height"], f
    clipped = []
    import shapely

    box = shapely.box(x0, y0, x1, y1)
    for k, ed in enumerate(truth.edges):
        part = shapely.intersection(shapely.linestrings(ed.coords), box)
        for geom in getattr(part, "geoms", [part]):
            if not geom.is_empty and geom.geom_type == "LineString":
                clipped.append(RoadEdge(k, ed.u, ed.v, np.asarray(geom.coords), 0.0))
    truth_in = RoadGraph(truth.crs_wkt, dict(truth.nodes), clipped)
    pr = length_precision_recall(truth_in, g, buffer_m=5.0)
    assert pr["precision"] >= 0.95 and pr["recall"] >= 0.95, pr
    assert g.total_length_m == pytest.approx(pr["truth_length_m"], rel=0.05)


def test_vegas_tiled_equals_whole(vegas):
    mask, grid = vegas
    whole = mask_to_graph(mask, grid["transform"], "EPSG:4326")
    tiled = mask_to_graph(mask, grid["transform"], "EPSG:4326", tile_size=400)
    assert_same_graph(whole, tiled)


# ---- the command ------------------------------------------------------------------------------------------------
@pytest.fixture()
def prob_tif(tmp_path):
    import rasterio
    from rasterio.transform import Affine

    m = np.zeros((300, 400), np.uint8)
    bar(m, 150, 20, 150, 380, 10, 230)
    bar(m, 20, 200, 280, 200, 10, 200)
    ring(m, 150, 320, 40, 8, 220)
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=300, count=1, dtype="uint8", crs=UTM,
                       transform=Affine(*T05), nodata=0) as ds:
        ds.write(m, 1)
    return path


def _run(args: list[str]):
    from roadmap_cli.cli import main

    return CliRunner().invoke(main, args)


def test_command_writes_valid_files(prob_tif, tmp_path):
    import osmium
    import pyogrio

    wd = tmp_path / "w"  # no grid.json: the mask brings its own grid
    res = _run(["-q", "-w", str(wd), "vectorize", "--mask", str(prob_tif), "--tile-size", "128",
                "--highway", "unclassified"])
    assert res.exit_code == 0, res.output
    layers = {name for name, _ in pyogrio.list_layers(wd / "roads.gpkg")}
    assert {"roads", "nodes"} <= layers
    roads = pyogrio.read_dataframe(wd / "roads.gpkg", layer="roads")
    assert {"id", "length_m", "gps_support", "confirmed", "confidence"} <= set(roads.columns)
    assert len(roads) >= 5 and (roads["length_m"] > 0).all()
    counts = {"n": 0, "w": 0}
    tags = []
    for obj in osmium.FileProcessor(str(wd / "roads.osm")):
        counts[obj.type_str()] += 1
        if obj.type_str() == "w":
            tags.append(dict(obj.tags))
    assert counts["w"] == len(roads)
    assert all(t["highway"] == "unclassified" and "roadmap:confidence" in t for t in tags)
    osc_ways = sum(1 for obj in osmium.FileProcessor(str(wd / "roads.osc")) if obj.type_str() == "w")
    assert osc_ways == len(roads)
    summary = json.loads((wd / "vectorize.json").read_text())
    assert summary["graph"]["edges"] == len(roads)
    assert summary["stats"]["tiling"]["seam_mismatches"] == 0
    if shutil.which("osmium"):
        for name in ("roads.osm", "roads.osc"):
            out = subprocess.run(["osmium", "check-refs", str(wd / name)], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
    else:  # osmium-tool not installed: the pyosmium parse above is the only check
        print("osmium-tool not installed: `osmium check-refs` skipped")
    assert not list(wd.glob(".*.tmp*"))  # no temporary files left behind


def test_command_default_mask_is_the_workdirs_prob_tif(prob_tif, tmp_path):
    import csv

    wd = tmp_path / "w"
    wd.mkdir()
    shutil.copy(prob_tif, wd / "prob.tif")
    res = _run(["-q", "-w", str(wd), "vectorize"])
    assert res.exit_code == 0, res.output
    summary = json.loads((wd / "vectorize.json").read_text())
    assert Path(summary["mask"]) == wd / "prob.tif" and summary["graph"]["edges"] >= 5
    assert summary["graph"]["not_verified"] == summary["graph"]["edges"]  # no GPS store in this workdir
    if "verification_csv" in summary["written"]:
        with open(wd / "verification.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) == summary["graph"]["edges"]


def test_command_reruns_skip_replace_or_refuse(prob_tif, tmp_path, caplog):
    wd = tmp_path / "w"
    assert _run(["-q", "-w", str(wd), "vectorize", "--mask", str(prob_tif)]).exit_code == 0
    before = (wd / "roads.osm").stat().st_mtime_ns
    caplog.clear()
    res = _run(["-w", str(wd), "vectorize", "--mask", str(prob_tif)])
    assert res.exit_code == 0 and "up to date" in caplog.text
    assert (wd / "roads.osm").stat().st_mtime_ns == before
    caplog.clear()
    res = _run(["-w", str(wd), "vectorize", "--mask", str(prob_tif), "--min-length", "200"])
    assert res.exit_code == 0 and "replacing" in caplog.text
    assert (wd / "roads.osm").stat().st_mtime_ns != before
    (wd / "vectorize.json").unlink()  # outputs of unknown origin: only --overwrite replaces them
    res = _run(["-w", str(wd), "vectorize", "--mask", str(prob_tif)])
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert _run(["-q", "-w", str(wd), "vectorize", "--mask", str(prob_tif), "--overwrite"]).exit_code == 0


def test_command_errors_are_one_line(prob_tif, tmp_path, monkeypatch):
    wd = tmp_path / "w"
    res = _run(["-w", str(wd), "vectorize"])
    assert res.exit_code == 1 and "roadmap predict" in res.output and "Traceback" not in res.output
    res = _run(["-w", str(wd), "vectorize", "--mask", str(tmp_path / "nope.tif")])
    assert res.exit_code == 1 and "--mask" in res.output and "no such file" in res.output
    res = _run(["-w", str(wd), "vectorize", "--mask", str(prob_tif), "--threshold", "1.5"])
    assert res.exit_code == 1 and "--threshold" in res.output
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    res = _run(["-w", str(wd), "vectorize", "--mask", str(bad)])
    assert res.exit_code == 1 and "not a readable raster" in res.output
    monkeypatch.setitem(sys.modules, "postprocess.conflate", None)  # as if conflation were not installed
    osm = tmp_path / "x.osm"
    osm.write_text("<osm version='0.6'/>")
    res = _run(["-w", str(wd), "vectorize", "--mask", str(prob_tif), "--existing-osm", str(osm)])
    assert res.exit_code == 1 and "not available" in res.output
    assert len(res.output.strip().splitlines()) == 1
