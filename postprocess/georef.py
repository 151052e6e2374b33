"""Coordinate helpers shared by conflation, verification and the report.

Road graphs live in the grid CRS, which may be geographic (EPSG:4326) or a projected CRS whose units are not
ground metres (Web Mercator inflates distances by 1/cos(lat)). Distance thresholds ("within 8 m") need a local
metric frame, so every distance computation goes through `metric_transform`: the grid CRS itself when it is
projected with a scale factor within 0.2 % of 1 at the data (UTM-like, so no reprojection cost), otherwise the
UTM zone of the data. pyproj is imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

XYTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_MAX_SCALE_ERROR = 0.002  # UTM's scale factor stays within 0.9996..1.001 inside its zone


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone containing (lon, lat)."""
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def _transformer(src, dst) -> XYTransform:
    from pyproj import Transformer

    tr = Transformer.from_crs(src, dst, always_xy=True)

    def apply(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ox, oy = tr.transform(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        return np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)

    return apply


def lonlat_transform(crs_wkt: str) -> XYTransform:
    """Grid CRS -> WGS84 lon/lat degrees."""
    return _transformer(_crs(crs_wkt), "EPSG:4326")


def from_lonlat_transform(crs_wkt: str) -> XYTransform:
    """WGS84 lon/lat degrees -> grid CRS."""
    return _transformer("EPSG:4326", _crs(crs_wkt))


def _crs(crs_wkt: str):
    from pyproj import CRS

    return CRS.from_user_input(crs_wkt)


def metric_transform(crs_wkt: str, ref_xy: tuple[float, float]) -> XYTransform:
    """Grid CRS -> a local frame in metres valid around `ref_xy` (a point of the data, in the grid CRS)."""
    crs = _crs(crs_wkt)
    lon, lat = lonlat_transform(crs_wkt)(np.array([ref_xy[0]]), np.array([ref_xy[1]]))
    lon0, lat0 = float(lon[0]), float(lat[0])
    if not (math.isfinite(lon0) and math.isfinite(lat0)):
        raise ValueError(f"reference point {ref_xy} cannot be placed on the earth in the grid CRS")
    if crs.is_projected:
        try:
            from pyproj import Proj

            f = Proj(crs).get_factors(lon0, lat0)
            unit = crs.axis_info[0].unit_conversion_factor or 1.0
            k = max(abs(f.meridional_scale - 1.0), abs(f.parallel_scale - 1.0))
            if math.isfinite(k) and k < _MAX_SCALE_ERROR and math.isclose(unit, 1.0):
                return lambda x, y: (np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        except Exception:  # noqa: BLE001 - any failure: fall back to UTM, which is always right
            pass
    return _transformer(crs, f"EPSG:{utm_epsg(lon0, lat0)}")


def reference_point(points: np.ndarray) -> tuple[float, float]:
    """A representative point (median) of (N, 2) coordinates, for choosing the metric frame."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    p = p[np.all(np.isfinite(p), axis=1)]
    if p.size == 0:
        raise ValueError("no finite coordinates to choose a metric frame from")
    return float(np.median(p[:, 0])), float(np.median(p[:, 1]))


def graph_metric_transform(graph) -> XYTransform:
    """`metric_transform` for a RoadGraph, referenced at the median of its nodes (identity-like when empty)."""
    pts = np.array(list(graph.nodes.values()), dtype=np.float64).reshape(-1, 2)
    if pts.size == 0:
        for e in graph.edges:
            pts = np.asarray(e.coords, dtype=np.float64)
            break
    if pts.size == 0:
        return lambda x, y: (np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return metric_transform(graph.crs_wkt, reference_point(pts))


def polyline_lengths(xy: np.ndarray) -> np.ndarray:
    """Cumulative length along an (M, 2) polyline (same units as xy), starting at 0."""
    d = np.hypot(np.diff(xy[:, 0]), np.diff(xy[:, 1]))
    return np.concatenate([[0.0], np.cumsum(d)])


def densify(xy: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut an (M, 2) metric polyline into pieces no longer than `step`.

    Returns (starts (K, 2), ends (K, 2), arc (K + 1,)) where piece k runs from arc[k] to arc[k+1] along the line.
    Vectorised: each original segment is split into ceil(len / step) equal pieces.
    """
    xy = np.asarray(xy, dtype=np.float64)
    seg = np.diff(xy, axis=0)
    seglen = np.hypot(seg[:, 0], seg[:, 1])
    keep = seglen > 0
    if not np.any(keep):
        return np.empty((0, 2)), np.empty((0, 2)), np.zeros(1)
    a, seg, seglen = xy[:-1][keep], seg[keep], seglen[keep]
    n = np.maximum(1, np.ceil(seglen / step).astype(np.int64))
    idx = np.repeat(np.arange(n.size), n)
    first = np.repeat(np.cumsum(n) - n, n)
    k = np.arange(idx.size) - first  # piece number inside its segment
    t0 = k / n[idx]
    t1 = (k + 1) / n[idx]
    starts = a[idx] + seg[idx] * t0[:, None]
    ends = a[idx] + seg[idx] * t1[:, None]
    pl = seglen[idx] / n[idx]
    arc = np.concatenate([[0.0], np.cumsum(pl)])
    return starts, ends, arc
