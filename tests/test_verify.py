"""GPS verification: simulated traffic along some roads confirms them and only them, with the right reasons."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from gps_sim import X0, Y0, local_to_grid, make_graph, merge, samples_along, samples_to_grid

from postprocess.verify import (
    NO_STORE_REASON,
    array_query,
    make_store_query,
    mark_unverified,
    verify,
    write_verification,
)

LINES = {
    0: [(0, 0), (200, 10), (400, 0)],      # busy road, 4 vehicles
    1: [(0, 0), (0, 300)],                 # 3 vehicles, half the bearings unknown
    2: [(500, 50), (500, 300)],            # no GPS at all
    3: [(50, 400), (400, 400)],            # plenty of traffic, but driving across it (perpendicular)
    4: [(0, -200), (400, -200)],           # one vehicle only
    5: [(0, -400), (400, -400)],           # two vehicles, 3 fixes over 400 m
    6: [(0, 11), (200, 21), (400, 11)],    # phantom parallel to road 0, 11 m north: its traffic is road 0's
    7: [(1000, 1000), (1020, 1000)],       # 20 m connector, one vehicle, two fixes
    8: [(0, 1510), (400, 1510)],           # phantom 10 m beside an existing OSM road (traffic on the OSM road)
}
EXISTING = [(0, 1500), (400, 1500)]


def simulate(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts = [
        samples_along(LINES[0], [1, 2, 3, 4], 15.0, 2.0, rng),
        samples_along(LINES[1], [5, 6, 7], 15.0, 2.0, rng, nan_bearing_fraction=0.5),
        samples_along(LINES[3], [8, 9, 10, 11], 15.0, 2.0, rng, bearing_offset_deg=90.0),
        samples_along(LINES[4], [12], 5.0, 2.0, rng),
        samples_along(LINES[5], [13, 14], 150.0, 2.0, rng),
        samples_along(LINES[7], [15], 8.0, 1.0, rng),
        samples_along(EXISTING, [16, 17, 18], 15.0, 2.0, rng),
    ]
    return merge(*parts)


def run(geographic: bool, other_lines: bool = True, **kw):
    graph = make_graph(LINES, geographic=geographic)
    s = samples_to_grid(simulate(), geographic)
    others = [local_to_grid(np.array(EXISTING, dtype=float), geographic)] if other_lines else None
    summary = verify(graph, array_query(s["x"], s["y"], s["bearing"], s["vehicle"]), other_lines=others, **kw)
    return graph, summary


def by_id(graph):
    return {e.id: e.attrs for e in graph.edges}


@pytest.mark.parametrize("geographic", [False, True], ids=["utm-grid", "wgs84-grid"])
def test_confirms_only_roads_with_traffic(geographic):
    graph, summary = run(geographic)
    a = by_id(graph)
    confirmed = {k for k, v in a.items() if v["confirmed"]}
    assert confirmed == {0, 1, 7}
    assert a[0]["n_vehicles"] == 4 and a[1]["n_vehicles"] == 3
    assert a[0]["n_samples"] >= 20 and a[0]["support_per_100m"] == a[0]["gps_support"] >= 5.0
    assert a[0]["reason"] == ""
    assert a[2]["reason"] == "no GPS samples within 15 m" and a[2]["n_samples"] == 0
    assert a[3]["reason"].startswith("samples present but headings disagree")
    assert a[3]["n_samples"] <= 2 and a[3]["n_samples_any_heading"] >= 20
    assert a[4]["reason"] == "only 1 vehicle (need 2)" and a[4]["n_samples"] >= 50
    assert a[5]["n_vehicles"] == 2 and a[5]["reason"] == f"support {a[5]['support_per_100m']:.1f}/100 m below 2"
    # the phantom beside road 0 gets (almost) none of road 0's fixes; the one beside an OSM road none of its
    for k in (6, 8):
        assert not a[k]["confirmed"] and a[k]["n_samples"] <= 2 and a[k]["n_samples_within"] >= 50
        assert a[k]["reason"].startswith("samples nearby fit a nearer road")
    assert summary.done and summary.n_confirmed == 3 and summary.n_unconfirmed == 6
    assert summary.length_confirmed_m == pytest.approx(sum(e.length_m for e in graph.edges if e.attrs["confirmed"]))
    assert summary.reasons == {"no_samples": 1, "heading": 1, "vehicles": 1, "support": 1, "nearer_road": 2}


def test_existing_roads_compete_for_samples():
    graph, _ = run(False, other_lines=False)
    a = by_id(graph)
    assert a[8]["confirmed"] and a[8]["n_vehicles"] == 3  # without OSM roads, their traffic confirms the phantom
    assert not a[6]["confirmed"]  # while road 0, being proposed, still keeps its own traffic


def test_perpendicular_confirms_with_wide_angle():
    graph, _ = run(False, angle_deg=90.0)
    assert by_id(graph)[3]["confirmed"]


def test_thresholds_are_options():
    graph, _ = run(False, min_vehicles=1)
    assert by_id(graph)[4]["confirmed"]
    graph, _ = run(False, min_support_per_100m=0.5)
    assert by_id(graph)[5]["confirmed"]
    graph, _ = run(False, radius_m=0.05)
    assert not by_id(graph)[0]["confirmed"]
    with pytest.raises(ValueError, match="radius_m"):
        run(False, radius_m=0.0)


def test_blocks_do_not_change_counts():
    g1, _ = run(False)
    g2, _ = run(False, block_m=60.0)  # many small blocks: a sample must still count once, for one edge
    for e1, e2 in zip(g1.edges, g2.edges, strict=True):
        assert e1.attrs == e2.attrs


def test_mark_unverified_and_no_samples():
    graph = make_graph(LINES)
    s = mark_unverified(graph)
    assert not s.done and s.reason == NO_STORE_REASON
    for e in graph.edges:
        assert e.attrs["confirmed"] is None and e.attrs["reason"] == NO_STORE_REASON
    graph = make_graph(LINES)
    s = verify(graph, array_query(np.empty(0), np.empty(0)))
    assert s.done and s.n_confirmed == 0
    assert {e.attrs["reason"] for e in graph.edges} == {"no GPS samples within 15 m"}


def test_point_store_query(tmp_path):
    """The adapter over the workdir's point store gives the same answer as the in-memory samples."""
    from roadmap_cli.grid import Grid
    from roadmap_cli.store import PointStore, StoreWriter, empty_samples

    grid = Grid.create("EPSG:32633", (0.5, 0.0, X0 - 100, 0.0, -0.5, Y0 + 1700), 2600, 4400)
    sim = simulate()
    col, row = grid.crs_to_pixel(sim["x"] + X0, sim["y"] + Y0)
    inside = (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
    assert inside.all()
    rec = empty_samples(col.size)
    rec["col"], rec["row"], rec["vehicle"] = col, row, sim["vehicle"]
    rec["bearing"] = sim["bearing"]
    rec["speed"] = 10.0
    rec["speed"][sim["vehicle"] == 13] = 0.2  # standing: bearing ignored, still counted (no heading)
    with StoreWriter(tmp_path / "gps", grid.width, grid.height, tile_size=512) as w:
        w.append(rec)
        w.close([str(i) for i in range(20)])
    store = PointStore(tmp_path / "gps")
    graph = make_graph(LINES)
    verify(graph, make_store_query(store.query, grid.transform),
           other_lines=[np.array(EXISTING, dtype=float) + [X0, Y0]])
    ref, _ = run(False)
    got, want = by_id(graph), by_id(ref)
    for k in LINES:
        assert got[k]["confirmed"] == want[k]["confirmed"], k
        assert got[k]["n_samples"] == want[k]["n_samples"], k


def test_write_verification(tmp_path):
    graph, _ = run(False)
    csv_path, gj_path = tmp_path / "out" / "verification.csv", tmp_path / "out" / "verification.geojson"
    write_verification(graph, csv_path, gj_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["id"]) for r in rows] == [e.id for e in graph.edges]
    r0 = {int(r["id"]): r for r in rows}
    assert r0[0]["confirmed"] == "true" and r0[2]["confirmed"] == "false"
    assert r0[2]["reason"] == "no GPS samples within 15 m"
    assert r0[0]["wkt"].startswith("LINESTRING (15.")
    assert abs(float(r0[0]["mid_lat"]) - 49.6) < 0.1 and abs(float(r0[0]["mid_lon"]) - 15.0) < 0.1
    fc = json.loads(gj_path.read_text())
    assert len(fc["features"]) == len(graph.edges)
    f = fc["features"][0]
    assert f["geometry"]["type"] == "LineString" and len(f["geometry"]["coordinates"]) == 3
    lon, lat = np.array(f["geometry"]["coordinates"]).T
    assert np.all(np.abs(lon - 15.0) < 0.1) and np.all(np.abs(lat - 49.6) < 0.1)
    assert f["properties"]["confirmed"] is True and f["properties"]["n_vehicles"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["verification.csv", "verification.geojson"]

    mark_unverified(graph)
    write_verification(graph, csv_path, gj_path)
    assert {r["confirmed"] for r in csv.DictReader(csv_path.open())} == {""}
    assert {f["properties"]["confirmed"] for f in json.loads(gj_path.read_text())["features"]} == {None}


def test_traffic_does_not_spill_into_a_spur():
    """A phantom spur prolonging a busy road past its real end gets none of the road's fixes near the node."""
    lines = {20: [(0, 0), (300, 0)], 21: [(300, 0), (400, 0)]}
    rng = np.random.default_rng(3)
    s = samples_along(lines[20], range(12), 3.0, 4.0, rng)
    q = array_query(s["x"] + X0, s["y"] + Y0, s["bearing"], s["vehicle"])
    graph = make_graph(lines)
    verify(graph, q)
    a = by_id(graph)
    assert a[20]["confirmed"] and not a[21]["confirmed"] and a[21]["n_samples"] <= 1
    assert a[21]["reason"].startswith("GPS samples only within 8 m of its junctions")
    graph = make_graph(lines)
    verify(graph, q, end_margin_m=0.0)  # without the junction margin the spill confirms the spur
    assert by_id(graph)[21]["confirmed"]
