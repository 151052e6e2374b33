"""Tiny helpers shared by the conflation / verification / report tests: a local metric frame, graphs, OSM files
and GPS samples generated along chosen lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyproj import Transformer

from postprocess.roadgraph import RoadEdge, RoadGraph

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_495_000.0  # about lon 15.0, lat 49.6
_TO_LL = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)


def utm_wkt() -> str:
    from pyproj import CRS

    return CRS.from_user_input(UTM).to_wkt()


def wgs84_wkt() -> str:
    from pyproj import CRS

    return CRS.from_epsg(4326).to_wkt()


def local_to_lonlat(x, y):
    """Local metres (offsets from X0, Y0 in UTM 33N) to lon/lat."""
    lon, lat = _TO_LL.transform(np.asarray(x, dtype=float) + X0, np.asarray(y, dtype=float) + Y0)
    return np.asarray(lon), np.asarray(lat)


def local_to_grid(xy: np.ndarray, geographic: bool) -> np.ndarray:
    xy = np.asarray(xy, dtype=float)
    if geographic:
        lon, lat = local_to_lonlat(xy[:, 0], xy[:, 1])
        return np.column_stack([lon, lat])
    return xy + [X0, Y0]


def make_graph(lines: dict[int, list[tuple[float, float]]], geographic: bool = False) -> RoadGraph:
    """A RoadGraph from polylines in local metres (edge id -> vertices); shared endpoints share a node."""
    g = RoadGraph(crs_wkt=wgs84_wkt() if geographic else utm_wkt())
    node_of: dict[tuple[float, float], int] = {}

    def node(p) -> int:
        key = (round(float(p[0]), 6), round(float(p[1]), 6))
        if key not in node_of:
            node_of[key] = len(node_of)
            xy = local_to_grid(np.array([p]), geographic)[0]
            g.nodes[node_of[key]] = (float(xy[0]), float(xy[1]))
        return node_of[key]

    for eid, pts in lines.items():
        pts = np.asarray(pts, dtype=float)
        length = float(np.hypot(*np.diff(pts, axis=0).T).sum())
        g.edges.append(RoadEdge(eid, node(pts[0]), node(pts[-1]), local_to_grid(pts, geographic), length, 0.8))
    return g


def write_osm(path: Path, nodes: dict[int, tuple[float, float, int, dict]], ways: dict[int, tuple[list[int], int,
              dict]]) -> Path:
    """An .osm XML file: nodes id -> (local x, local y, version, tags); ways id -> (node ids, version, tags)."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    for nid, (x, y, ver, tags) in nodes.items():
        lon, lat = local_to_lonlat(x, y)
        body = "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items())
        lines.append(f'<node id="{nid}" version="{ver}" lat="{float(lat):.7f}" lon="{float(lon):.7f}">{body}</node>')
    for wid, (refs, ver, tags) in ways.items():
        body = "".join(f'<nd ref="{r}"/>' for r in refs) + "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items())
        lines.append(f'<way id="{wid}" version="{ver}">{body}</way>')
    lines.append("</osm>")
    path.write_text("\n".join(lines) + "\n")
    return path


def samples_along(pts, vehicles, spacing_m: float, noise_m: float, rng: np.random.Generator,
                  bearing_offset_deg: float = 0.0, nan_bearing_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """One pass per vehicle along a local-metre polyline: a fix every `spacing_m` with Gaussian noise, bearing
    along the travel direction (random way) plus `bearing_offset_deg` (90 = perpendicular) and 3 deg noise."""
    pts = np.asarray(pts, dtype=float)
    seg = np.diff(pts, axis=0)
    seglen = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(seglen)])
    xs, ys, bs, vs = [], [], [], []
    for v in vehicles:
        s = np.arange(rng.uniform(0, spacing_m), cum[-1], spacing_m)
        x = np.interp(s, cum, pts[:, 0])
        y = np.interp(s, cum, pts[:, 1])
        k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        b = np.degrees(np.arctan2(seg[k, 0], seg[k, 1]))
        if rng.random() < 0.5:
            b = b + 180.0
        b = np.mod(b + bearing_offset_deg + rng.normal(0, 3, s.size), 360.0)
        b[rng.random(s.size) < nan_bearing_fraction] = np.nan
        xs.append(x + rng.normal(0, noise_m, s.size))
        ys.append(y + rng.normal(0, noise_m, s.size))
        bs.append(b)
        vs.append(np.full(s.size, v, dtype=np.int64))
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "bearing": np.concatenate(bs),
            "vehicle": np.concatenate(vs)}


def merge(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in ("x", "y", "bearing", "vehicle")}


def samples_to_grid(s: dict[str, np.ndarray], geographic: bool) -> dict[str, np.ndarray]:
    xy = local_to_grid(np.column_stack([s["x"], s["y"]]), geographic)
    return {"x": xy[:, 0], "y": xy[:, 1], "bearing": s["bearing"], "vehicle": s["vehicle"]}
