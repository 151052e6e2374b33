"""roadmap synth: labels agree with the vectors, files are right, same seed same bytes, styles differ."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import rasterio
from click.testing import CliRunner

from roadmap_cli.cli import main
from roadmap_cli.errors import RoadmapError
from roadmap_cli.grid import Grid
from roadmap_cli.labels import rasterize_roads, read_road_vectors
from roadmap_cli.simulate import SimConfig
from roadmap_cli.synth import make_city, synth

SMALL = SimConfig(vehicles=20, hours=0.5, seed=0)


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("city")
    synth(out, size=512, seed=4, style="a", gps_cfg=SMALL)
    return out


def test_files_and_formats(city_dir):
    with rasterio.open(city_dir / "image.tif") as ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3
        assert ds.crs.to_epsg() == 32633 and ds.res == (0.5, 0.5)
        assert ds.profile["tiled"] and ds.compression is not None
        img = ds.read()
    with rasterio.open(city_dir / "labels.tif") as ds:
        lab = ds.read(1)
        assert ds.transform == rasterio.open(city_dir / "image.tif").transform
    assert set(np.unique(lab)) <= {0, 1} and 0.03 < lab.mean() < 0.5
    roads = read_road_vectors(city_dir / "roads.geojson")
    assert roads.crs.to_epsg() == 4326
    assert {"lane_number", "highway", "road_type"} <= set(roads.columns)
    assert set(roads["highway"]) >= {"primary", "residential"} or set(roads["highway"]) >= {"secondary", "residential"}
    gps = pd.read_csv(city_dir / "gps.csv")
    assert list(gps.columns) == ["vehicle_id", "timestamp", "lat", "lon", "speed", "bearing"] and len(gps) > 50
    meta = json.loads((city_dir / "synth.json").read_text())
    assert meta["size"] == 512 and meta["gps"]["samples"] == len(gps)
    # roads are darker than the average ground in this style (asphalt), but not uniformly so (trees, shadows)
    grey = img.mean(axis=0)
    assert grey[lab == 1].mean() < grey[lab == 0].mean()
    assert grey[lab == 1].std() > 5


def test_labels_agree_with_vectors(city_dir):
    grid = Grid.from_raster(city_dir / "image.tif")
    with rasterio.open(city_dir / "labels.tif") as ds:
        lab = ds.read(1)
    again = rasterize_roads(read_road_vectors(city_dir / "roads.geojson"), grid)
    iou = np.logical_and(lab, again).sum() / np.logical_or(lab, again).sum()
    assert iou >= 0.99


def test_gps_follows_the_roads(city_dir):
    grid = Grid.from_raster(city_dir / "image.tif")
    with rasterio.open(city_dir / "labels.tif") as ds:
        lab = ds.read(1)
    gps = pd.read_csv(city_dir / "gps.csv")
    col, row = grid.lonlat_to_pixel(gps["lon"].to_numpy(), gps["lat"].to_numpy())
    inside = (col >= 0) & (row >= 0) & (col < grid.width) & (row < grid.height)
    from scipy.ndimage import distance_transform_edt

    dist_m = distance_transform_edt(lab == 0) * 0.5
    d = dist_m[row[inside].astype(int), col[inside].astype(int)]
    assert np.mean(d < 15.0) > 0.85


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth(a, size=256, seed=9, style="b", gps_cfg=SimConfig(vehicles=5, hours=0.3, seed=9))
    synth(b, size=256, seed=9, style="b", gps_cfg=SimConfig(vehicles=5, hours=0.3, seed=9))
    synth(c, size=256, seed=10, style="b", gps_cfg=SimConfig(vehicles=5, hours=0.3, seed=10))
    for name in ("image.tif", "labels.tif", "roads.geojson", "gps.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "image.tif").read_bytes() != (c / "image.tif").read_bytes()


def test_styles_look_different():
    a = make_city(size=384, seed=1, style="a")
    b = make_city(size=384, seed=1, style="arid")
    mean_a = a.image.reshape(-1, 3).mean(axis=0)
    mean_b = b.image.reshape(-1, 3).mean(axis=0)
    assert np.abs(mean_a - mean_b).max() > 20
    with pytest.raises(RoadmapError, match="--style"):
        make_city(size=128, style="martian")


def test_cli(tmp_path):
    out = tmp_path / "city"
    runner = CliRunner()
    args = ["synth", "--out", str(out), "--size", "256", "--seed", "2", "--style", "c", "--vehicles", "5",
            "--hours", "0.3", "--gps-profile", "shanghai"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"image.tif", "labels.tif", "roads.geojson", "gps.csv", "synth.json"}
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert runner.invoke(main, args + ["--overwrite"]).exit_code == 0
    res = runner.invoke(main, ["synth", "--out", str(tmp_path / "x"), "--style", "nope"])
    assert res.exit_code == 1 and "--style" in res.output


@pytest.mark.slow
def test_full_size_city_is_fast(tmp_path):
    t = time.perf_counter()
    synth(tmp_path / "big", size=2048, seed=0, gps_cfg=SimConfig(vehicles=200, hours=4, seed=0))
    assert time.perf_counter() - t <= 20.0
