"""Metres on any grid: local pixel scale, geodesic lengths, WGS84 conversion and local metric projections.

The grid CRS may be geographic (EPSG:4326: a pixel is degrees), projected in metres with little distortion (UTM)
or projected with a large scale error (Web Mercator: 1/cos(lat)). So lengths are never taken in CRS units:

- `PixelScale` gives the ground size of one pixel (metres along x and y) anywhere on the grid, from geodesic
  distances sampled on a coarse lattice and interpolated bilinearly. It depends only on the grid, so a window of
  the raster sees exactly the values the whole raster sees (tiled and whole-image vectorizing agree).
- `geodesic_lengths` measures polylines on the WGS84 ellipsoid (pyproj.Geod): the lengths written to outputs.
- `local_metric_crs` / `project_graph` put a graph into a conformal metric CRS (UTM, or a transverse Mercator
  centred on the data when it spans more than a zone) for metrics computed in plane geometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from postprocess.roadgraph import RoadEdge, RoadGraph


@lru_cache(maxsize=32)
def _crs(crs_wkt: str):
    from pyproj import CRS

    return CRS.from_user_input(crs_wkt)


@lru_cache(maxsize=32)
def _transformer(src: str, dst: str):
    from pyproj import Transformer

    return Transformer.from_crs(_crs(src), _crs(dst), always_xy=True)


def to_lonlat(crs_wkt: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid-CRS coordinates to WGS84 longitude/latitude degrees."""
    lon, lat = _transformer(crs_wkt, "EPSG:4326").transform(np.asarray(x, dtype=np.float64),
                                                            np.asarray(y, dtype=np.float64))
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def from_lonlat(crs_wkt: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 longitude/latitude degrees to grid-CRS coordinates."""
    x, y = _transformer("EPSG:4326", crs_wkt).transform(np.asarray(lon, dtype=np.float64),
                                                        np.asarray(lat, dtype=np.float64))
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def transform_xy(src_wkt: str, dst_wkt: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates from one CRS to another."""
    ox, oy = _transformer(src_wkt, dst_wkt).transform(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)


def _geod():
    from pyproj import Geod

    return Geod(ellps="WGS84")


def geodesic_lengths(crs_wkt: str, lines: Sequence[np.ndarray]) -> np.ndarray:
    """Length in metres on the WGS84 ellipsoid of each (M, 2) polyline given in the CRS (vectorised)."""
    n = len(lines)
    if n == 0:
        return np.zeros(0)
    sizes = np.array([len(c) for c in lines], dtype=np.int64)
    pts = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in lines])
    lon, lat = to_lonlat(crs_wkt, pts[:, 0], pts[:, 1])
    if lon.size < 2:
        return np.zeros(n)
    _, _, d = _geod().inv(lon[:-1], lat[:-1], lon[1:], lat[1:])
    d = np.asarray(d, dtype=np.float64)
    ends = np.cumsum(sizes)
    cut = ends[:-1] - 1  # the segment from the last point of a line to the first point of the next
    d[cut[(cut >= 0) & (cut < d.size)]] = 0.0
    csum = np.concatenate([[0.0], np.cumsum(d)])
    starts = ends - sizes
    last = np.maximum(ends - 1, starts)
    return np.where(sizes > 1, csum[np.minimum(last, csum.size - 1)] - csum[np.minimum(starts, csum.size - 1)], 0.0)


class PixelScale:
    """Ground metres per pixel along x (columns) and y (rows) at any place of a north-up grid.

    Sampled every `step` pixels (at most ~64 samples per axis, at least every 256 px) with geodesic distances of
    one-pixel steps, and interpolated bilinearly. For a metric projected CRS without scale error this is the
    constant pixel size; for EPSG:4326 it follows the latitude; for Web Mercator it includes the 1/cos(lat) factor.
    """

    def __init__(self, transform: Sequence[float], crs_wkt: str, width: int, height: int) -> None:
        a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
        if b != 0.0 or d != 0.0:
            raise ValueError("rotated grids are not supported (transform has rotation terms)")
        self.transform = (a, b, c, d, e, f)
        self.crs_wkt = crs_wkt
        self.width, self.height = int(width), int(height)
        nx = int(min(64, max(1, math.ceil(self.width / 256)))) + 1
        ny = int(min(64, max(1, math.ceil(self.height / 256)))) + 1
        self._cols = np.linspace(0.0, float(self.width), nx)
        self._rows = np.linspace(0.0, float(self.height), ny)
        cc, rr = np.meshgrid(self._cols, self._rows)
        x0, y0 = c + a * cc, f + e * rr
        lon0, lat0 = to_lonlat(crs_wkt, x0.ravel(), y0.ravel())
        lon1, lat1 = to_lonlat(crs_wkt, (x0 + a).ravel(), y0.ravel())
        lon2, lat2 = to_lonlat(crs_wkt, x0.ravel(), (y0 + e).ravel())
        g = _geod()
        _, _, dx = g.inv(lon0, lat0, lon1, lat1)
        _, _, dy = g.inv(lon0, lat0, lon2, lat2)
        mx = np.abs(np.asarray(dx, dtype=np.float64)).reshape(ny, nx)
        my = np.abs(np.asarray(dy, dtype=np.float64)).reshape(ny, nx)
        for arr in (mx, my):
            bad = ~np.isfinite(arr) | (arr <= 0)
            if bad.all():
                raise ValueError("the grid cannot be placed on the earth (no finite pixel size)")
            if bad.any():
                arr[bad] = np.median(arr[~bad])
        self._mx, self._my = mx, my
        # constant within 1e-6 (a millimetre per kilometre): skip the interpolation
        self._const = bool(np.ptp(mx) <= 1e-6 * mx.max() and np.ptp(my) <= 1e-6 * my.max())
        self._cmx, self._cmy = float(np.median(mx)), float(np.median(my))
        self.nominal = float(np.sqrt(np.median(mx) * np.median(my)))  # metres per pixel at a typical place
        self.min_size = float(min(mx.min(), my.min()))

    def at(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(metres per pixel along x, along y) at continuous pixel coordinates (arrays or scalars)."""
        if self._const:
            shape = np.broadcast(np.asarray(col), np.asarray(row)).shape
            return np.full(shape, self._cmx), np.full(shape, self._cmy)
        col = np.clip(np.asarray(col, dtype=np.float64), self._cols[0], self._cols[-1])
        row = np.clip(np.asarray(row, dtype=np.float64), self._rows[0], self._rows[-1])
        out = []
        for grid in (self._mx, self._my):
            if grid.shape == (1, 1):
                out.append(np.full(np.broadcast(col, row).shape, grid[0, 0]))
                continue
            ci = np.clip(np.searchsorted(self._cols, col, side="right") - 1, 0, len(self._cols) - 2)
            ri = np.clip(np.searchsorted(self._rows, row, side="right") - 1, 0, len(self._rows) - 2)
            tc = (col - self._cols[ci]) / (self._cols[ci + 1] - self._cols[ci])
            tr = (row - self._rows[ri]) / (self._rows[ri + 1] - self._rows[ri])
            v = (grid[ri, ci] * (1 - tc) * (1 - tr) + grid[ri, ci + 1] * tc * (1 - tr)
                 + grid[ri + 1, ci] * (1 - tc) * tr + grid[ri + 1, ci + 1] * tc * tr)
            out.append(v)
        return out[0], out[1]


def local_metric_crs(crs_wkt: str, points: np.ndarray) -> str:
    """WKT of a conformal metric CRS for data at `points` ((N, 2) in `crs_wkt`).

    The CRS itself when it is projected in metres with a scale error below 0.1 % at the data; otherwise the UTM
    zone of the data's median point when the data stays within about 3 degrees of its central meridian; otherwise
    a transverse Mercator centred on the data.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    crs = _crs(crs_wkt)
    if pts.size == 0:
        return crs_wkt if crs.is_projected else _crs("EPSG:3857").to_wkt()
    lon, lat = to_lonlat(crs_wkt, pts[:, 0], pts[:, 1])
    lon0, lat0 = float(np.median(lon)), float(np.median(lat))
    if crs.is_projected:
        try:
            from pyproj import Proj

            unit = crs.axis_info[0].unit_conversion_factor or 1.0
            fac = Proj(crs).get_factors(np.array([lon.min(), lon.max(), lon0]), np.array([lat.min(), lat.max(), lat0]))
            k = np.max(np.abs(np.concatenate([np.asarray(fac.meridional_scale), np.asarray(fac.parallel_scale)]) - 1))
            if math.isclose(unit, 1.0) and np.isfinite(k) and k < 1e-3:
                return crs_wkt
        except Exception:  # noqa: BLE001 - any failure: fall back to a transverse Mercator, which is always right
            pass
    zone = int((lon0 + 180.0) // 6.0) % 60 + 1
    central = -183.0 + 6.0 * zone
    if np.all(np.abs(lon - central) <= 3.5) and abs(lat0) < 84:
        return _crs((32600 if lat0 >= 0 else 32700) + zone).to_wkt()
    return _crs(f"+proj=tmerc +lat_0={lat0:.6f} +lon_0={lon0:.6f} +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m "
                "+no_defs").to_wkt()


def project_graph(graph: RoadGraph, dst_wkt: str) -> RoadGraph:
    """A copy of `graph` with every coordinate in `dst_wkt` (lengths, confidences and attributes kept)."""
    if _crs(dst_wkt) == _crs(graph.crs_wkt):
        nodes = dict(graph.nodes)
        edges = [RoadEdge(e.id, e.u, e.v, np.array(e.coords, dtype=np.float64), e.length_m, e.confidence,
                          dict(e.attrs)) for e in graph.edges]
        return RoadGraph(dst_wkt, nodes, edges, {k: dict(v) for k, v in graph.node_attrs.items()})
    ids = list(graph.nodes)
    nxy = np.array([graph.nodes[i] for i in ids], dtype=np.float64).reshape(-1, 2)
    px, py = transform_xy(graph.crs_wkt, dst_wkt, nxy[:, 0], nxy[:, 1])
    nodes = {i: (float(x), float(y)) for i, x, y in zip(ids, px, py, strict=True)}
    edges = []
    if graph.edges:
        sizes = [len(e.coords) for e in graph.edges]
        allc = np.concatenate([np.asarray(e.coords, dtype=np.float64).reshape(-1, 2) for e in graph.edges])
        ex, ey = transform_xy(graph.crs_wkt, dst_wkt, allc[:, 0], allc[:, 1])
        pos = 0
        for e, n in zip(graph.edges, sizes, strict=True):
            edges.append(RoadEdge(e.id, e.u, e.v, np.column_stack([ex[pos:pos + n], ey[pos:pos + n]]), e.length_m,
                                  e.confidence, dict(e.attrs)))
            pos += n
    return RoadGraph(dst_wkt, nodes, edges, {k: dict(v) for k, v in graph.node_attrs.items()})


def to_metric_graph(graph: RoadGraph, reference: RoadGraph | None = None) -> RoadGraph:
    """`graph` in the local metric CRS chosen from `reference` (default: itself); no-op for metric CRSs."""
    ref = reference if reference is not None else graph
    pts = [np.array(list(ref.nodes.values()), dtype=np.float64).reshape(-1, 2)]
    pts += [np.asarray(e.coords, dtype=np.float64)[:: max(1, len(e.coords) // 4)] for e in ref.edges[:2000]]
    dst = local_metric_crs(ref.crs_wkt, np.concatenate(pts))
    return project_graph(graph, dst)
