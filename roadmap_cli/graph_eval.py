"""Graph metrics for `roadmap evaluate`: the proposal (roads.gpkg) against truth centrelines (any road vectors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from roadmap_cli.errors import RoadmapError


def _truth_graph(path: Path):
    import shapely

    from postprocess.metrics import graph_from_lines
    from roadmap_cli.labels import read_road_vectors

    gdf = read_road_vectors(path)
    geoms = gdf.geometry.explode(index_parts=False)
    lines = [np.asarray(shapely.get_coordinates(g))[:, :2] for g in geoms if g.geom_type == "LineString"]
    if not lines:
        raise RoadmapError(f"--truth-graph {path}: no road lines")
    return graph_from_lines(lines, gdf.crs.to_wkt() if gdf.crs is not None else "EPSG:4326")


def _proposal_graph(path: Path):
    from postprocess.metrics import read_graph

    try:
        layer = "roads" if path.suffix.lower() == ".gpkg" else None
        return read_graph(path, layer=layer)
    except Exception as exc:  # pyogrio raises its own DataSourceError / DataLayerError types
        raise RoadmapError(f"--pred-graph {path}: cannot read roads ({str(exc).splitlines()[0]})") from exc


def graph_metrics(pred_path: Path, truth_path: Path, grid: Any = None, buffer_m: float = 5.0) -> dict[str, Any]:
    """APLS, TOPO and length P/R/F1 (within `buffer_m`) of the proposed roads against the truth centrelines.

    Flat keys (apls, topo_*, length_*) are for the table; the full result of each metric is kept under `detail`.
    """
    from postprocess.metrics import graph_metrics as compute

    truth = _truth_graph(Path(truth_path))
    proposal = _proposal_graph(Path(pred_path))
    full = compute(truth, proposal, buffer_m=buffer_m)
    return {
        "apls": full["apls"]["apls"],
        "topo_precision": full["topo"]["precision"],
        "topo_recall": full["topo"]["recall"],
        "topo_f1": full["topo"]["f1"],
        "length_precision": full["length"]["precision"],
        "length_recall": full["length"]["recall"],
        "length_f1": full["length"]["f1"],
        "buffer_m": buffer_m,
        "truth": str(truth_path),
        "proposal": str(pred_path),
        "detail": full,
    }
