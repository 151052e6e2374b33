"""Conflation against a hand-made existing.osm: duplicates dropped, partial overlaps cut, dead ends snapped."""

from __future__ import annotations

import numpy as np
import pytest
from gps_sim import X0, Y0, local_to_grid, local_to_lonlat, make_graph, write_osm

from postprocess.conflate import conflate, existing_lines_in_crs, read_existing_osm

# Existing OSM (local metres): a residential street along y=0 (x 0..300), a tertiary road north from its east
# end (x=300, y 0..200), and a footway further away.
NODES = {
    1: (0, 0, 1, {}), 2: (100, 0, 5, {"highway": "traffic_signals"}), 3: (200, 0, 2, {}), 4: (300, 0, 1, {}),
    5: (300, 100, 3, {}), 6: (300, 200, 7, {}),
    7: (600, 400, 1, {}), 8: (700, 400, 1, {}),
}
WAYS = {
    100: ([1, 2, 3, 4], 3, {"highway": "residential", "name": "Old Street"}),
    101: ([4, 5, 6], 1, {"highway": "tertiary"}),
    102: ([7, 8], 2, {"highway": "footway"}),
}
# Proposed graph (edge id -> local-metre polyline).
PROPOSED = {
    10: [(0, 3), (50, 5), (100, 3)],          # along Old Street: duplicate
    11: [(100, 3), (200, 1), (300, 3)],       # along Old Street: duplicate
    12: [(100, 3), (100, 120), (100, 250)],   # new side street starting at Old Street's node 2
    13: [(303, 40), (303, 200), (303, 420)],  # runs along the tertiary road, then continues north: cut
    14: [(605, 405), (605, 700)],             # new road starting 7 m from a footway node: not joined to it
    15: [(250, -60), (250, 60)],              # new road crossing Old Street: kept whole
}


@pytest.fixture()
def existing_osm(tmp_path):
    return write_osm(tmp_path / "existing.osm", NODES, WAYS)


def _edge(graph, eid):
    return {e.id: e for e in graph.edges}[eid]


def _cut_piece(graph, from_id):
    pieces = [e for e in graph.edges if e.attrs.get("cut_from") == from_id]
    assert len(pieces) == 1, pieces
    return pieces[0]


def test_read_existing_osm(existing_osm):
    ex = read_existing_osm(existing_osm)
    assert sorted(w.id for w in ex.ways) == [100, 101, 102]
    way = {w.id: w for w in ex.ways}
    assert way[100].nodes == [1, 2, 3, 4] and way[100].version == 3 and way[100].tags["name"] == "Old Street"
    assert ex.node_versions[2] == 5 and ex.node_versions[6] == 7
    assert ex.node_tags[2] == {"highway": "traffic_signals"}
    assert set(ex.nodes) == set(NODES)


def test_read_existing_osm_bbox(existing_osm):
    lon0, lat0 = local_to_lonlat(-10, -10)
    lon1, lat1 = local_to_lonlat(150, 10)  # only Old Street's western part lies inside
    ex = read_existing_osm(existing_osm, bbox=(float(lon0), float(lat0), float(lon1), float(lat1)))
    assert [w.id for w in ex.ways] == [100]
    assert set(ex.nodes) == {1, 2, 3, 4} and set(ex.node_versions) == {1, 2, 3, 4}


def test_read_pbf_same_as_xml(existing_osm, tmp_path):
    import osmium

    pbf = tmp_path / "existing.osm.pbf"
    with osmium.SimpleWriter(str(pbf)) as w:
        for obj in osmium.FileProcessor(str(existing_osm)):
            w.add(obj)
    a, b = read_existing_osm(existing_osm), read_existing_osm(pbf)
    assert [(w.id, w.nodes, w.version) for w in a.ways] == [(w.id, w.nodes, w.version) for w in b.ways]
    assert a.node_versions == b.node_versions
    for n in a.nodes:
        assert np.allclose(a.nodes[n], b.nodes[n], atol=1e-7)


def test_bad_osm_file(tmp_path):
    bad = tmp_path / "bad.osm"
    bad.write_text("<osm><way id='1'><nd ref=")
    with pytest.raises(ValueError, match="bad.osm"):
        read_existing_osm(bad)
    with pytest.raises(ValueError, match="no such"):
        read_existing_osm(tmp_path / "missing.osm")


@pytest.mark.parametrize("geographic", [False, True], ids=["utm-grid", "wgs84-grid"])
def test_conflate(existing_osm, geographic):
    graph = make_graph(PROPOSED, geographic=geographic)
    n_before = len(graph.edges)
    out, summary = conflate(graph, read_existing_osm(existing_osm))

    assert len(graph.edges) == n_before, "input graph must not be modified"
    ids = {e.id for e in out.edges}
    # roads already in OSM are not proposed again
    assert 10 not in ids and 11 not in ids
    assert summary.n_duplicates == 2
    assert summary.length_duplicates_m == pytest.approx(_edge(graph, 10).length_m + _edge(graph, 11).length_m)
    # new roads are kept; the crossing road is not mistaken for a duplicate
    assert {12, 14, 15} <= ids
    assert _edge(out, 15).length_m == pytest.approx(_edge(graph, 15).length_m)
    np.testing.assert_allclose(_edge(out, 15).coords, _edge(graph, 15).coords)

    # the side street ends on Old Street's node 2, with its version and tags
    side = _edge(out, 12)
    attrs = out.node_attrs[side.u]
    signals = {"highway": "traffic_signals"}
    assert {k: attrs[k] for k in ("osm_id", "osm_version", "osm_tags", "tags")} == {
        "osm_id": 2, "osm_version": 5, "osm_tags": signals, "tags": signals}
    ll2 = read_existing_osm(existing_osm).nodes[2]
    assert (attrs["lon"], attrs["lat"]) == ll2  # exactly the extract's coordinates
    node2 = local_to_grid(np.array([[100.0, 0.0]]), geographic)[0]
    tol = 1e-6 if geographic else 0.05
    np.testing.assert_allclose(out.nodes[side.u], node2, atol=tol)
    np.testing.assert_allclose(side.coords[0], out.nodes[side.u])
    assert side.attrs["osm_node_u"] == 2
    assert "osm_id" not in out.node_attrs.get(side.v, {})  # far end: nothing to join
    assert side.length_m == pytest.approx(250.0, abs=0.5)  # start moved 3 m south: 247 + 3

    # the partly mapped road is cut to its new part, which starts on the tertiary road's end node 6
    piece = _cut_piece(out, 13)
    assert 13 in ids and piece.id == 13
    assert out.node_attrs[piece.u]["osm_id"] == 6 and out.node_attrs[piece.u]["osm_version"] == 7
    local = piece.coords - ([X0, Y0] if not geographic else 0)
    if not geographic:
        assert local[:, 1].min() >= 199.9 and local[-1, 1] == pytest.approx(420.0)
    assert 205.0 < piece.length_m < 225.0
    assert summary.n_cut == 1 and summary.n_cut_pieces == 1
    assert summary.length_cut_removed_m == pytest.approx(380.0 - 212.6, abs=4.0)

    # a dead end near a footway node is not joined to the footway
    assert all("osm_id" not in out.node_attrs.get(n, {}) for n in (_edge(out, 14).u, _edge(out, 14).v))

    assert summary.n_snapped == 2
    assert summary.n_proposed == 6 and summary.n_kept == len(out.edges) == 4
    assert summary.length_kept_m == pytest.approx(out.total_length_m)
    # nodes left without edges are gone; every edge endpoint exists
    used = {n for e in out.edges for n in (e.u, e.v)}
    assert used == set(out.nodes)
    for e in out.edges:
        np.testing.assert_allclose(e.coords[0], out.nodes[e.u])
        np.testing.assert_allclose(e.coords[-1], out.nodes[e.v])


def test_partial_overlap_short_remainder_dropped(existing_osm):
    # 50 m along the tertiary road plus 22 m beyond its end node (~14 m of it farther than 8 m): 80 % covered,
    # below dup_fraction=0.95, but the new part is shorter than min_new_length_m (15 m): nothing is left
    graph = make_graph({1: [(302, 150), (302, 222)]})
    out, summary = conflate(graph, read_existing_osm(existing_osm), dup_fraction=0.95)
    assert out.edges == [] and summary.n_duplicates == 1 and summary.n_cut == 0


def test_thresholds_are_options(existing_osm):
    ex = read_existing_osm(existing_osm)
    graph = make_graph({1: [(0, 12), (300, 12)]})  # 12 m off Old Street: new at 8 m, duplicate at 15 m
    out, s = conflate(graph, ex)
    assert [e.id for e in out.edges] == [1] and s.n_duplicates == 0
    out, s = conflate(graph, ex, dup_distance_m=15.0)
    assert out.edges == [] and s.n_duplicates == 1
    # snapping off: the side street keeps its own start
    out, s = conflate(make_graph({12: PROPOSED[12]}), ex, snap_distance_m=0.0)
    assert s.n_snapped == 0 and out.node_attrs == {}
    with pytest.raises(ValueError, match="dup_fraction"):
        conflate(graph, ex, dup_fraction=0.0)


def test_two_dead_ends_on_one_node_merge(existing_osm):
    # two proposed roads ending 4 m either side of node 3 both end on it: one graph node, osm id 3
    graph = make_graph({1: [(196, 3), (150, 150)], 2: [(204, 3), (260, 150)]})
    out, s = conflate(graph, read_existing_osm(existing_osm))
    ends = {e.u for e in out.edges}
    assert len(ends) == 1 and out.node_attrs[ends.pop()]["osm_id"] == 3
    assert s.n_snapped == 2 and len(out.nodes) == 3


def test_existing_lines_in_crs(existing_osm):
    lines = existing_lines_in_crs(read_existing_osm(existing_osm), make_graph(PROPOSED).crs_wkt)
    assert len(lines) == 3
    np.testing.assert_allclose(lines[0][1], [X0 + 100, Y0], atol=0.05)


def test_empty_inputs(existing_osm, tmp_path):
    ex = read_existing_osm(existing_osm)
    out, s = conflate(make_graph({}), ex)
    assert out.edges == [] and s.n_proposed == 0
    empty = write_osm(tmp_path / "empty.osm", {}, {})
    graph = make_graph(PROPOSED)
    out, s = conflate(graph, read_existing_osm(empty))
    assert len(out.edges) == len(graph.edges) and s.n_duplicates == 0 and s.n_snapped == 0
