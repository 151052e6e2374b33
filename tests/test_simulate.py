"""roadmap simulate: the crowdsourced-GPS properties of paper §3, determinism, the CSV and the command."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from click.testing import CliRunner
from pyproj import Transformer
from shapely.geometry import LineString

from roadmap_cli.cli import main
from roadmap_cli.errors import RoadmapError
from roadmap_cli.simulate import (
    CSV_COLUMNS,
    SimConfig,
    build_road_network,
    simulate,
    simulate_to_csv,
)

X0, Y0 = 389000.0, 5820000.0  # UTM 33N


def _town() -> gpd.GeoDataFrame:
    """Two crossing arterials and a ladder of residential streets 150 m apart (single lane: no lane offset),
    some ending in dead ends; the arterials run off the edges (through traffic)."""
    rows = []

    def add(coords, highway, lanes=1):
        rows.append({"highway": highway, "lane_number": lanes,
                     "geometry": LineString([(X0 + x, Y0 + y) for x, y in coords])})

    add([(-700, 0), (700, 0)], "primary")
    add([(0, -700), (0, 700)], "primary")
    for y in (-450, -300, -150, 150, 300, 450):
        add([(-450, y), (0, y)], "residential")
        add([(0, y), (450, y)], "residential")
    for x in (-450, 450):
        add([(x, -450), (x, 450)], "residential")
    for x in (-300, -150, 150, 300):  # cul-de-sacs hanging off the outer streets
        add([(x, 450), (x, 560)], "residential")
        add([(x, -450), (x, -560)], "residential")
    return gpd.GeoDataFrame(rows, crs="EPSG:32633")


@pytest.fixture(scope="module")
def town() -> gpd.GeoDataFrame:
    return _town()


@pytest.fixture(scope="module")
def net(town):
    return build_road_network(town)


def _metric(df: pd.DataFrame, net) -> tuple[np.ndarray, np.ndarray]:
    tr = Transformer.from_crs("EPSG:4326", net.crs, always_xy=True)
    return tr.transform(df["lon"].to_numpy(), df["lat"].to_numpy())


def _dist_to_roads(df: pd.DataFrame, net) -> np.ndarray:
    x, y = _metric(df, net)
    lines = np.array([shapely.LineString(c) for c in net.edge_coords], dtype=object)
    _, d = shapely.STRtree(lines).query_nearest(shapely.points(x, y), return_distance=True, all_matches=False)
    return d


def test_network_is_noded(net):
    # crossings and shared ends become nodes: one connected graph, 4-way junctions at the arterial crossing
    assert net.degree.max() == 4
    assert (net.degree == 1).sum() >= 8 + 4  # cul-de-sacs and arterial ends
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(net.nodes)
    m = coo_matrix((np.ones(net.n_edges), (net.edge_u, net.edge_v)), shape=(n, n))
    assert connected_components(m, directed=False)[0] == 1


def test_t_junction_undershoot_is_snapped():
    roads = gpd.GeoDataFrame({"geometry": [LineString([(X0 - 100, Y0), (X0 + 100, Y0)]),
                                           LineString([(X0, Y0 + 1.2), (X0, Y0 + 80)])]}, crs="EPSG:32633")
    net = build_road_network(roads)
    assert len(net.nodes) == 4 and net.n_edges == 3  # the main road split where the side road was snapped


@pytest.mark.parametrize("profile,modes", [("beijing", [10, 60, 180, 300]), ("shanghai", [16, 61])])
def test_interval_histogram_has_the_profile_modes(town, net, profile, modes):
    df = simulate(town, SimConfig(vehicles=160, hours=3, profile=profile, seed=1), net=net)
    iv = df.groupby("vehicle_id")["time"].diff().dropna().round().astype(int).to_numpy()
    hist = np.bincount(iv, minlength=700)
    for m in modes:
        neighbours = np.r_[hist[max(m - 12, 1):m - 2], hist[m + 3:m + 12]]
        assert hist[m] > 3 * neighbours.max(), (m, hist[m], neighbours.max())
    top = np.argsort(hist)[::-1][:3]
    assert any(t in modes for t in top)


def test_custom_intervals(town, net):
    df = simulate(town, SimConfig(vehicles=40, hours=1, intervals=[5, 30], seed=2), net=net)
    iv = df.groupby("vehicle_id")["time"].diff().dropna().round().astype(int).to_numpy()
    hist = np.bincount(iv, minlength=100)
    assert set(np.argsort(hist)[::-1][:2]) == {5, 30}


@pytest.mark.parametrize("sigma", [5.0, 10.0])
def test_noise_matches_sigma(town, net, sigma):
    cfg = SimConfig(vehicles=80, hours=2, noise=sigma, coord_res=[1e-5], outlier_rate=0.0, stands=0, seed=3)
    df = simulate(town, cfg, net=net)
    road = df["kind"].to_numpy() == "road"
    d = _dist_to_roads(df[road], net)
    # perpendicular offset of an isotropic Gaussian has std sigma (single-lane roads: no lane offset)
    measured = float(np.sqrt(np.mean(d**2)))
    assert abs(measured - sigma) / sigma < 0.15, measured


def test_samples_near_roads_outliers_and_waiting_clusters(town, net):
    df = simulate(town, SimConfig(vehicles=120, hours=3, noise=5.0, outlier_rate=0.01, stands=2, seed=4), net=net)
    kinds = df["kind"].to_numpy()
    d = _dist_to_roads(df, net)
    assert (kinds == "outlier").sum() > 0 and (kinds == "wait").sum() > 0
    assert np.mean(d[kinds == "road"] < 15.0) >= 0.9  # within 3 sigma
    assert np.median(d[kinds == "outlier"]) > 15.0  # tens of metres off
    assert np.median(d[kinds == "wait"]) > 10.0  # taxi stands are off the road
    assert np.mean(df.loc[kinds == "wait", "speed"] == 0) > 0.7
    # waiting samples form tight clusters: most have several others within 20 m
    from scipy.spatial import cKDTree

    x, y = _metric(df[kinds == "wait"], net)
    xy = np.column_stack([x, y])
    neighbours = np.array([len(n) for n in cKDTree(xy).query_ball_point(xy, 20.0)])
    assert np.mean(neighbours >= 5) > 0.7


def test_uneven_traffic_and_untravelled_streets(town, net):
    df = simulate(town, SimConfig(vehicles=150, hours=3, seed=5), net=net)
    road = df["kind"].to_numpy() == "road"
    counts = np.bincount(df["edge"].to_numpy()[road], minlength=net.n_edges)
    km = net.edge_length / 1000.0
    art = net.edge_rank <= 2
    minor = ~art
    dens_art = counts[art].sum() / km[art].sum()
    dens_minor = counts[minor].sum() / km[minor].sum()
    assert dens_art > 10 * dens_minor, (dens_art, dens_minor)
    untravelled = counts[minor] == 0
    assert 0.1 <= untravelled.mean() <= 0.9  # some streets carry none, some carry a few
    assert (counts[art] > 0).all()


def test_quantisation_is_visible(town, net, tmp_path):
    out = tmp_path / "gps.csv"
    simulate_to_csv(_write(town, tmp_path), out, SimConfig(vehicles=30, hours=1, coord_res=[1e-4], seed=6))
    df = pd.read_csv(out)
    for col in ("lat", "lon"):
        steps = df[col].to_numpy() * 1e4
        assert np.allclose(steps, np.round(steps), atol=1e-6)
    assert df["lat"].nunique() < len(df) / 2  # the ~10 m mosaic effect
    # speed resolution 1 or 2 km/h and bearing 3 or 10 degrees, per vehicle
    per_vehicle_even = df.groupby("vehicle_id")["speed"].apply(lambda s: bool((s % 2 == 0).all()))
    assert per_vehicle_even.any() and not per_vehicle_even.all()
    b = df.groupby("vehicle_id")["bearing"].apply(lambda s: (bool((s % 3 == 0).all()), bool((s % 10 == 0).all())))
    assert all(a or c for a, c in b)


def test_shanghai_resolution_sixtieth_of_a_thousandth(town, net):
    df = simulate(town, SimConfig(vehicles=40, hours=1, profile="shanghai", seed=7), net=net)
    fine = df.groupby("vehicle_id")["lat"].apply(lambda s: bool(np.allclose(s * 60000, np.round(s * 60000))))
    coarse = df.groupby("vehicle_id")["lat"].apply(lambda s: bool(np.allclose(s * 1e4, np.round(s * 1e4))))
    assert fine.any() and coarse.any()


def _write(gdf: gpd.GeoDataFrame, folder) -> str:
    p = folder / "roads.geojson"
    if not p.exists():
        gdf.to_crs("EPSG:4326").to_file(p, driver="GeoJSON")
    return str(p)


def test_same_seed_same_bytes(town, tmp_path):
    roads = _write(town, tmp_path)
    cfg = SimConfig(vehicles=25, hours=1, seed=11)
    simulate_to_csv(roads, tmp_path / "a.csv", cfg)
    simulate_to_csv(roads, tmp_path / "b.csv", cfg)
    simulate_to_csv(roads, tmp_path / "c.csv", SimConfig(vehicles=25, hours=1, seed=12))
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.csv", "b.csv", "c.csv"))
    assert a == b
    assert a != c


def test_csv_format(town, tmp_path):
    out = tmp_path / "gps.csv"
    simulate_to_csv(_write(town, tmp_path), out, SimConfig(vehicles=10, hours=0.5, seed=1))
    header = out.read_text().splitlines()[0]
    assert header.split(",") == CSV_COLUMNS
    df = pd.read_csv(out)
    t = pd.to_datetime(df["timestamp"], utc=True)
    assert t.notna().all() and (t.dt.year == 2024).all()
    assert df["lat"].between(52, 53).all() and df["lon"].between(13, 14).all()
    assert (df["speed"] >= 0).all() and df["bearing"].between(0, 359.999).all()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_bias_zone_shifts_samples(town, net):
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(X0, Y0)
    cfg = SimConfig(vehicles=60, hours=1, outlier_rate=0.0, bias_zone=f"{lon},{lat},200,30,0", seed=8)
    df = simulate(town, cfg, net=net)
    assert (df["kind"] == "bias").sum() > 0
    with pytest.raises(RoadmapError):
        simulate(town, SimConfig(vehicles=2, hours=0.2, bias_zone="somewhere"), net=net)


def test_cli(town, tmp_path):
    roads = _write(town, tmp_path)
    out = tmp_path / "gps.csv"
    runner = CliRunner()
    args = ["simulate", "--roads", roads, "--out", str(out), "--vehicles", "8", "--hours", "0.5",
            "--profile", "shanghai", "--seed", "3"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert pd.read_csv(out).shape[1] == 6
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "--overwrite" in res.output
    res = runner.invoke(main, args + ["--overwrite", "--intervals", "5,abc"])
    assert res.exit_code == 1 and "--intervals" in res.output
    res = runner.invoke(main, ["simulate", "--roads", str(tmp_path / "none.geojson"), "--out", str(out)])
    assert res.exit_code == 1 and "none.geojson" in res.output
