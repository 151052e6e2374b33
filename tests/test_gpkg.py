"""roads.gpkg: both layers, the attribute columns and their types, nulls, CRS, empty graphs."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest

from postprocess.gpkg import write_gpkg
from postprocess.roadgraph import RoadEdge, RoadGraph

UTM = "EPSG:32633"


def graph() -> RoadGraph:
    nodes = {1: (500000.0, 4000000.0), 2: (500100.0, 4000000.0), 3: (500100.0, 4000080.0)}
    edges = [
        RoadEdge(1, 1, 2, np.array([nodes[1], (500050.0, 4000003.0), nodes[2]]), 100.2, 0.9,
                 {"confirmed": True, "gps_support": 5.5, "reason": "ok", "n_samples": 11, "n_vehicles": 3,
                  "support_per_100m": 11.0}),
        RoadEdge(2, 2, 3, np.array([nodes[2], nodes[3]]), 80.0, 0.4,
                 {"confirmed": None, "gps_support": None, "reason": None, "n_samples": None}),
    ]
    g = RoadGraph(UTM, nodes, edges)
    g.node_attrs[3] = {"osm_id": 123456789012, "osm_version": 2, "tags": {"highway": "crossing"}}
    return g


def test_layers_columns_and_values(tmp_path):
    path = tmp_path / "roads.gpkg"
    write_gpkg(graph(), path)
    layers = dict(pyogrio.list_layers(path))
    assert layers == {"roads": "LineString", "nodes": "Point"}
    info = pyogrio.read_info(path, layer="roads")
    types = dict(zip(info["fields"], info["ogr_subtypes"], strict=True))
    assert types["confirmed"] == "OFSTBoolean"
    roads = pyogrio.read_dataframe(path, layer="roads")
    for col in ("id", "u", "v", "length_m", "gps_support", "confirmed", "confidence", "reason", "n_samples",
                "n_vehicles", "support_per_100m"):
        assert col in roads.columns
    assert roads.crs.to_epsg() == 32633
    r1, r2 = roads.iloc[0], roads.iloc[1]
    assert (r1["id"], r1["length_m"], r1["gps_support"], r1["confidence"]) == (1, 100.2, 5.5, 0.9)
    assert bool(r1["confirmed"]) is True and r1["n_samples"] == 11
    assert np.isnan(r2["gps_support"]) and (r2["confirmed"] is None or np.isnan(r2["confirmed"]))
    assert list(roads.geometry.iloc[0].coords)[1] == (500050.0, 4000003.0)
    nodes = pyogrio.read_dataframe(path, layer="nodes")
    assert list(nodes["id"]) == [1, 2, 3]
    assert list(nodes["degree"]) == [1, 2, 1]
    assert nodes["osm_id"].iloc[2] == 123456789012 and nodes["osm_version"].iloc[2] == 2
    assert np.isnan(nodes["osm_id"].iloc[0])


def test_empty_graph_and_atomic_replace(tmp_path):
    path = tmp_path / "roads.gpkg"
    write_gpkg(graph(), path)
    write_gpkg(RoadGraph(UTM), path)
    assert dict(pyogrio.list_layers(path)) == {"roads": "LineString", "nodes": "Point"}
    assert len(pyogrio.read_dataframe(path, layer="roads")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roads.gpkg"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import postprocess.gpkg as mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pyogrio, "write_dataframe", boom)
    with pytest.raises(OSError):
        mod.write_gpkg(graph(), tmp_path / "roads.gpkg")
    assert list(tmp_path.iterdir()) == []
