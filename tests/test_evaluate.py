"""Evaluate: pixel metrics on hand-made masks whose scores are known, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from roadmap_cli.evaluate import score_arrays


def test_identical_masks_score_one():
    truth = np.zeros((64, 64), bool)
    truth[30:34, :] = True
    m = score_arrays(truth.copy(), truth, tile_size=32)
    assert m["iou_global"] == 1.0
    assert m["iou_tile_mean"] == 1.0
    assert m["f1"] == 1.0


def test_known_iou_per_tile_and_global():
    # two 32x32 tiles side by side: left tile IoU 1/2, right tile IoU 1
    truth = np.zeros((32, 64), bool)
    pred = np.zeros((32, 64), bool)
    truth[0:10, 0:10] = True  # 100 px
    pred[0:10, 0:5] = True  # 50 px inside truth -> tp 50, fn 50 -> IoU 0.5
    truth[0:4, 32:42] = True
    pred[0:4, 32:42] = True  # 40 px exact -> IoU 1
    m = score_arrays(pred, truth, tile_size=32)
    assert m["iou_tile_mean"] == pytest.approx(0.75)
    assert m["iou_global"] == pytest.approx(90 / 140)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(90 / 140)
    assert m["tiles_scored"] == 2


def test_both_empty_tiles_are_left_out_of_the_mean():
    truth = np.zeros((32, 96), bool)
    pred = np.zeros((32, 96), bool)
    truth[:, 0:4] = True
    pred[:, 0:2] = True  # tile 0: IoU 0.5; tiles 1, 2 empty
    m = score_arrays(pred, truth, tile_size=32)
    assert m["tiles_scored"] == 1
    assert m["tiles_both_empty"] == 2
    assert m["iou_tile_mean"] == pytest.approx(0.5)


def test_relaxed_metrics_forgive_small_offsets():
    truth = np.zeros((40, 40), bool)
    truth[20, 5:35] = True
    pred = np.zeros_like(truth)
    pred[22, 5:35] = True  # two pixels off: strict IoU 0
    strict = score_arrays(pred, truth, tile_size=40, slack=0)
    relaxed = score_arrays(pred, truth, tile_size=40, slack=2)
    assert strict["iou_global"] == 0.0
    assert relaxed["relaxed_precision"] == 1.0
    assert relaxed["relaxed_recall"] == 1.0
    tight = score_arrays(pred, truth, tile_size=40, slack=1)
    assert tight["relaxed_precision"] == 0.0


def test_relaxed_metrics_see_across_tile_borders():
    truth = np.zeros((40, 40), bool)
    truth[19, :] = True  # last row of the top tile
    pred = np.zeros_like(truth)
    pred[20, :] = True  # first row of the bottom tile
    m = score_arrays(pred, truth, tile_size=20, slack=1)
    assert m["relaxed_precision"] == 1.0
    assert m["relaxed_recall"] == 1.0


def _write_raster(path, arr, transform, crs="EPSG:32611", nodata=None):
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(arr, 1)


def test_evaluate_command_on_rasters(tmp_path):
    from affine import Affine
    from click.testing import CliRunner

    from roadmap_cli.cli import main

    t = Affine(0.5, 0, 500000, 0, -0.5, 4000000)
    truth = np.zeros((96, 128), np.uint8)
    truth[40:48, :] = 1
    pred = np.zeros((96, 128), np.uint8)
    pred[40:48, :64] = 230  # half the road found, probability 0.9
    pred[0:4, 0:4] = 100  # below threshold
    _write_raster(tmp_path / "truth.tif", truth, t)
    _write_raster(tmp_path / "prob.tif", pred, t)
    wd = tmp_path / "work"
    res = CliRunner().invoke(main, ["-w", str(wd), "evaluate", "--truth", str(tmp_path / "truth.tif"),
                                    "--pred", str(tmp_path / "prob.tif"), "--tile-size", "64"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((wd / "metrics.json").read_text())
    assert metrics["iou_global"] == pytest.approx(0.5)
    # tiles: (0,0) IoU 1, (0,64) IoU 0; bottom row tiles empty -> mean 0.5
    assert metrics["iou_tile_mean"] == pytest.approx(0.5)
    assert (wd / "error_map.png").exists()
    assert "IoU (global)" in res.output


def test_evaluate_bad_truth_is_one_line(tmp_path):
    from click.testing import CliRunner

    from roadmap_cli.cli import main

    (tmp_path / "junk.tif").write_bytes(b"\x00\x01not a raster")
    res = CliRunner().invoke(main, ["-w", str(tmp_path / "w"), "evaluate", "--truth", str(tmp_path / "junk.tif"),
                                    "--pred", str(tmp_path / "junk.tif")])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert not (tmp_path / "w" / "metrics.json").exists()


def test_evaluate_on_vector_truth_with_graph_metrics(tmp_path):
    import geopandas as gpd
    from affine import Affine
    from click.testing import CliRunner
    from shapely.geometry import LineString

    from roadmap_cli.cli import main
    from roadmap_cli.grid import Grid
    from roadmap_cli.labels import rasterize_roads

    t = Affine(0.5, 0, 500000, 0, -0.5, 4000100)
    grid = Grid.create("EPSG:32611", t, 400, 200)
    lines = [LineString([(500010, 4000050), (500190, 4000050)]), LineString([(500100, 4000050), (500100, 4000010)])]
    roads = gpd.GeoDataFrame({"lane_number": [2, 1]}, geometry=lines, crs="EPSG:32611")
    roads.to_file(tmp_path / "truth.geojson", driver="GeoJSON")
    mask = rasterize_roads(roads, grid)
    assert mask.sum() > 0
    _write_raster(tmp_path / "prob.tif", (mask * 255).astype(np.uint8), t)
    wd = tmp_path / "work"
    wd.mkdir()
    roads[["geometry"]].to_file(wd / "roads.gpkg", layer="roads", driver="GPKG")
    res = CliRunner().invoke(main, ["-w", str(wd), "evaluate", "--truth", str(tmp_path / "truth.geojson"),
                                    "--pred", str(tmp_path / "prob.tif"), "--tile-size", "100"])
    assert res.exit_code == 0, res.output
    m = json.loads((wd / "metrics.json").read_text())
    assert m["iou_global"] == pytest.approx(1.0)
    assert m["graph"]["length_f1"] == pytest.approx(1.0, abs=0.01)
    assert m["graph"]["apls"] == pytest.approx(1.0, abs=0.01)
    # the proposal keeps 90 m of 220 m; truth within its 5 m buffer: those 90 m plus 5 m beyond its east end
    # on the horizontal road and the first 5 m of the vertical one
    roads_half = gpd.GeoDataFrame(geometry=[LineString([(500010, 4000050), (500100, 4000050)])], crs="EPSG:32611")
    roads_half.to_file(wd / "roads.gpkg", layer="roads", driver="GPKG")
    res = CliRunner().invoke(main, ["-w", str(wd), "evaluate", "--truth", str(tmp_path / "truth.geojson"),
                                    "--pred", str(tmp_path / "prob.tif"), "--overwrite"])
    assert res.exit_code == 0, res.output
    m = json.loads((wd / "metrics.json").read_text())
    assert m["graph"]["length_recall"] == pytest.approx(100 / 220, abs=0.01)
    assert m["graph"]["length_precision"] == pytest.approx(1.0, abs=0.01)
