"""JOSM .osm and osmChange .osc writers: structure, ids, existing OSM nodes, review tags, validity."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from postprocess.osm_writer import MAX_WAY_NODES, build_osm, write_osc, write_osm
from postprocess.roadgraph import RoadEdge, RoadGraph

UTM = "EPSG:32633"
X0, Y0 = 500000.0, 4000000.0


def small_graph() -> RoadGraph:
    """A T (nodes 1-2-3 and 2-4) plus a closed loop at node 5; node 3 is an existing OSM node."""
    nodes = {1: (X0, Y0), 2: (X0 + 100, Y0), 3: (X0 + 200, Y0), 4: (X0 + 100, Y0 - 80), 5: (X0 + 300, Y0 + 50)}
    edges = [
        RoadEdge(1, 1, 2, np.array([nodes[1], (X0 + 50, Y0 + 2), nodes[2]]), 100.0, 0.91,
                 {"confirmed": True, "gps_support": 4.25, "reason": "ok"}),
        RoadEdge(2, 2, 3, np.array([nodes[2], nodes[3]]), 100.0, 0.55,
                 {"confirmed": False, "gps_support": 0.0, "reason": "no GPS trace <here> & there"}),
        RoadEdge(3, 2, 4, np.array([nodes[2], (X0 + 101, Y0 - 40), nodes[4]]), 80.0, 0.7,
                 {"confirmed": None, "gps_support": None}),
        RoadEdge(4, 5, 5, np.array([nodes[5], (X0 + 330, Y0 + 50), (X0 + 315, Y0 + 80), nodes[5]]), 90.0, 0.8),
    ]
    g = RoadGraph(UTM, nodes, edges)
    g.node_attrs[3] = {"osm_id": 987654, "osm_version": 7, "tags": {"highway": "turning_circle"}}
    return g


def _check_refs(path) -> subprocess.CompletedProcess | None:
    if not shutil.which("osmium"):
        print("osmium-tool not installed: `osmium check-refs` skipped")
        return None
    return subprocess.run(["osmium", "check-refs", str(path)], capture_output=True, text=True)


def test_osm_file_for_josm(tmp_path):
    g = small_graph()
    path = tmp_path / "roads.osm"
    write_osm(g, path, highway="residential")
    root = ET.parse(path).getroot()
    assert root.tag == "osm" and root.get("upload") == "false" and root.get("version") == "0.6"
    kinds = [el.tag for el in root]
    assert kinds == sorted(kinds, key=lambda k: {"node": 0, "way": 1}[k])  # nodes before ways
    nodes = {int(n.get("id")): n for n in root.findall("node")}
    ways = root.findall("way")
    assert len(ways) == len(g.edges)
    # new objects: negative ids, no version, no action; the existing node keeps id, version and tags
    assert all(i < 0 or i == 987654 for i in nodes)
    assert all(n.get("action") is None for n in nodes.values())
    assert all(nodes[i].get("version") is None for i in nodes if i < 0)
    ex = nodes[987654]
    assert ex.get("version") == "7"
    assert {t.get("k"): t.get("v") for t in ex.findall("tag")} == {"highway": "turning_circle"}
    refs = {r for w in ways for r in (int(nd.get("ref")) for nd in w.findall("nd"))}
    assert refs <= set(nodes)  # JOSM loads the file alone
    assert 987654 in refs
    tags = {int(w.get("id")): {t.get("k"): t.get("v") for t in w.findall("tag")} for w in ways}
    by_edge = {int(t["roadmap:id"]): t for t in tags.values()}
    assert all(t["highway"] == "residential" for t in tags.values())
    assert by_edge[1]["roadmap:confirmed"] == "yes" and by_edge[1]["roadmap:gps_support"] == "4.25"
    assert by_edge[1]["roadmap:confidence"] == "0.91"
    assert by_edge[2]["roadmap:confirmed"] == "no" and by_edge[2]["roadmap:reason"].startswith("no GPS trace <here>")
    assert "roadmap:confirmed" not in by_edge[3] and "roadmap:gps_support" not in by_edge[3]
    loop = [w for w in ways if {t.get("k"): t.get("v") for t in w.findall("tag")}["roadmap:id"] == "4"][0]
    lrefs = [nd.get("ref") for nd in loop.findall("nd")]
    assert lrefs[0] == lrefs[-1] and len(set(lrefs)) == 3
    # shared graph nodes are shared OSM nodes: node 2 is in three ways
    first = [int(w.findall("nd")[0].get("ref")) for w in ways]
    assert first.count(first[1]) == 2
    lat = float(ex.get("lat"))
    assert 36.0 < lat < 36.2  # WGS84 degrees, not UTM metres
    out = _check_refs(path)
    if out is not None:
        assert out.returncode == 0, out.stderr


def test_osc_creates_only_new_objects(tmp_path):
    import osmium

    g = small_graph()
    path = tmp_path / "roads.osc"
    write_osc(g, path)
    root = ET.parse(path).getroot()
    assert root.tag == "osmChange"
    (create,) = list(root)
    assert create.tag == "create"
    ids = [int(n.get("id")) for n in create.findall("node")]
    assert all(i < 0 for i in ids) and 987654 not in ids  # the existing node is referenced, not created
    assert all(el.get("version") == "1" for el in create)
    refs = [int(nd.get("ref")) for w in create.findall("way") for nd in w.findall("nd")]
    assert 987654 in refs
    assert {r for r in refs if r < 0} <= set(ids)
    counts = {"n": 0, "w": 0}
    for obj in osmium.FileProcessor(str(path)):
        counts[obj.type_str()] += 1
    assert counts == {"n": len(ids), "w": len(g.edges)}
    out = _check_refs(path)
    if out is not None:  # by design, only the existing node is missing: it lives in the OSM database
        assert "Nodes in ways missing: 1" in out.stderr


def test_without_existing_nodes_both_files_are_whole(tmp_path):
    g = small_graph()
    g.node_attrs.clear()
    write_osm(g, tmp_path / "a.osm")
    write_osc(g, tmp_path / "a.osc")
    for name in ("a.osm", "a.osc"):
        out = _check_refs(tmp_path / name)
        if out is not None:
            assert out.returncode == 0, out.stderr


def test_long_way_is_split_and_duplicates_dropped(tmp_path):
    n = MAX_WAY_NODES + 500
    xs = X0 + np.arange(n, dtype=float)
    coords = np.column_stack([xs, np.full(n, Y0)])
    coords = np.insert(coords, 10, coords[9] + 1e-5, axis=0)  # a vertex 10 micrometres from the previous one
    g = RoadGraph(UTM, {1: tuple(coords[0]), 2: tuple(coords[-1])}, [RoadEdge(1, 1, 2, coords, float(n), 0.8)])
    data = build_osm(g)
    assert len(data.ways) == 2
    assert all(len(w.refs) <= MAX_WAY_NODES for w in data.ways)
    assert data.ways[0].refs[-1] == data.ways[1].refs[0]
    assert sum(len(w.refs) for w in data.ways) - 1 == n  # the near-duplicate vertex is written once
    write_osm(g, tmp_path / "long.osm", data=data)
    out = _check_refs(tmp_path / "long.osm")
    if out is not None:
        assert out.returncode == 0, out.stderr


def test_bad_highway_value_and_atomic_write(tmp_path):
    g = small_graph()
    path = tmp_path / "roads.osm"
    with pytest.raises(ValueError, match="highway"):
        write_osm(g, path, highway='a"b')
    assert not path.exists() and not list(tmp_path.iterdir())
    write_osm(g, path)
    assert list(tmp_path.iterdir()) == [path]


def test_empty_graph_writes_empty_files(tmp_path):
    g = RoadGraph(UTM)
    write_osm(g, tmp_path / "e.osm")
    write_osc(g, tmp_path / "e.osc")
    assert ET.parse(tmp_path / "e.osm").getroot().findall("way") == []
    assert ET.parse(tmp_path / "e.osc").getroot().find("create") is not None
