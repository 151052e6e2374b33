"""`roads.gpkg`: a GeoPackage with layers `roads` (one LineString per edge) and `nodes` (Points), via pyogrio.

`roads` columns: id, u, v, length_m, gps_support, confirmed, confidence, then any other scalar edge attribute
set downstream (reason, n_samples, n_vehicles, support_per_100m, ...). `gps_support` and `confirmed` are null
when verification did not run. `nodes` columns: id, degree, osm_id, osm_version (null for new nodes). Geometries
are in the graph's CRS (the grid's). The file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from postprocess.roadgraph import RoadGraph

ROAD_COLUMNS = ("id", "u", "v", "length_m", "gps_support", "confirmed", "confidence")


def _column(values: list, name: str):
    """A pandas column of the right (nullable) type for a list of attribute values."""
    import pandas as pd

    present = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if name == "confirmed" or (present and all(isinstance(v, bool | np.bool_) for v in present)):
        return pd.array([None if v is None else bool(v) for v in values], dtype="boolean")
    if present and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in present):
        return pd.array([None if v is None else int(v) for v in values], dtype="Int64")
    if name == "gps_support" or (present and all(isinstance(v, int | float | np.number) for v in present)):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if not present:
        return pd.array([None] * len(values), dtype="string")
    return pd.array([None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))
                     for v in values], dtype="string")


def graph_frames(graph: RoadGraph):
    """(roads, nodes) GeoDataFrames of a graph."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    edges = graph.edges
    extra: list[str] = []
    for e in edges:
        for k in e.attrs:
            if k not in ROAD_COLUMNS and k not in extra and not k.startswith("_"):
                extra.append(k)
    data = {
        "id": np.array([e.id for e in edges], dtype=np.int64),
        "u": np.array([e.u for e in edges], dtype=np.int64),
        "v": np.array([e.v for e in edges], dtype=np.int64),
        "length_m": np.array([e.length_m for e in edges], dtype=np.float64),
        "gps_support": _column([e.attrs.get("gps_support") for e in edges], "gps_support"),
        "confirmed": _column([e.attrs.get("confirmed") for e in edges], "confirmed"),
        "confidence": np.array([e.confidence for e in edges], dtype=np.float64),
    }
    for k in extra:
        data[k] = _column([e.attrs.get(k) for e in edges], k)
    if edges:
        sizes = np.array([len(e.coords) for e in edges], dtype=np.int64)
        allc = np.concatenate([np.asarray(e.coords, dtype=np.float64).reshape(-1, 2) for e in edges])
        geoms = shapely.linestrings(allc, indices=np.repeat(np.arange(len(edges)), sizes))
    else:
        geoms = []
    roads = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=graph.crs_wkt), crs=graph.crs_wkt)

    deg = graph.degree()
    ids = list(graph.nodes)
    xy = np.array([graph.nodes[n] for n in ids], dtype=np.float64).reshape(-1, 2)
    nattrs = [graph.node_attrs.get(n) or {} for n in ids]
    ndata = {
        "id": np.array(ids, dtype=np.int64),
        "degree": np.array([deg.get(n, 0) for n in ids], dtype=np.int64),
        "osm_id": pd.array([None if a.get("osm_id") is None else int(a["osm_id"]) for a in nattrs], dtype="Int64"),
        "osm_version": pd.array([None if a.get("osm_version") is None else int(a["osm_version"]) for a in nattrs],
                                dtype="Int64"),
    }
    points = gpd.GeoSeries(shapely.points(xy) if len(xy) else [], crs=graph.crs_wkt)
    nodes = gpd.GeoDataFrame(ndata, geometry=points, crs=graph.crs_wkt)
    return roads, nodes


def write_gpkg(graph: RoadGraph, path: str | os.PathLike[str]) -> Path:
    """Write roads.gpkg (layers `roads` and `nodes`) atomically."""
    import pyogrio

    roads, nodes = graph_frames(graph)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.gpkg")
    try:
        pyogrio.write_dataframe(roads, tmp, layer="roads", driver="GPKG", geometry_type="LineString")
        pyogrio.write_dataframe(nodes, tmp, layer="nodes", driver="GPKG", geometry_type="Point", append=False)
        os.replace(tmp, path)
    except BaseException:
        for p in (tmp, tmp.with_name(tmp.name + "-journal"), tmp.with_name(tmp.name + "-wal"),
                  tmp.with_name(tmp.name + "-shm")):
            p.unlink(missing_ok=True)
        raise
    return path
