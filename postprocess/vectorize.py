"""Road probability raster -> cleaned, simplified, georeferenced road graph (`RoadGraph`).

Steps (every length in metres on the ground, whatever the grid's CRS; see `postprocess.geodesy.PixelScale`):

1. threshold (`threshold` on probabilities scaled to 0..1), remove small objects, fill small holes, skeletonize
   and trace with sknw, window by window with exact stitching (`postprocess.skeleton`); every stitched pixel
   chain is simplified at half a pixel straight away (the digital staircase; memory then grows with the road
   network, not with its pixels);
2. drop small loops (a self-loop, or a pair of parallel edges, whose perimeter is under `min_loop_m`: the
   skeleton of a hole in a wide road);
3. prune spurs: dead-end edges shorter than `min_spur_m` hanging off a junction, in rounds (all spurs of a round at
   once, so the result does not depend on the order of the edges), merging the degree-2 nodes left behind;
4. merge junction clusters: junctions joined by an edge shorter than `junction_merge_m` become one node at their
   mean position (the skeleton splits a wide crossing into several close junctions);
5. close gaps: a dead end is joined to another dead end, or to the nearest point of another edge, within
   `max_gap_m`, when the gap leaves the road's direction by at most `gap_angle_deg` (and, for two dead ends, enters
   the other road the same way) and the probability along the straight gap stays at or above `gap_threshold`;
   a dead end pointing at the raster's border within `max_gap_m` is extended to the border on the same condition
   (a skeleton stops half a road width short of the border; the road goes on beyond it); candidates are accepted
   greedily from the shortest, each dead end used once;
6. drop connected components whose total length is under `min_length_m`;
7. simplify every edge by Douglas-Peucker with a tolerance of `simplify_m` metres (at least 0.75 pixel, so that
   the staircase of the pixel chain never survives), then georeference: pixel centres (col + 0.5, row + 0.5)
   through the grid's affine transform; `length_m` is the geodesic length (WGS84 ellipsoid) of the final line and
   `confidence` the mean probability of the skeleton pixels (and gap samples) along it.

Everything after tracing runs on the stitched graph in a canonical order (nodes by their smallest pixel index),
so the result is identical whatever the window size. No torch here; rasterio only for `raster_to_graph`.

Memory: one extended window of the raster (about 20 bytes per pixel of it at peak: labels, skeleton, sknw's
buffer) plus one byte per skeleton pixel of the whole raster until stitching, plus the simplified graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from postprocess.geodesy import PixelScale, geodesic_lengths
from postprocess.roadgraph import RoadEdge, RoadGraph
from postprocess.skeleton import PixelGraph, SkeletonParams, skeleton_graph

log = logging.getLogger("roadmap")

MAX_TILE = 30000  # sknw stores pixel coordinates as int16


@dataclass
class VectorizeParams:
    """Parameters of mask -> graph (metres on the ground unless said otherwise)."""

    threshold: float = 0.5  # probability (0..1) at or above which a pixel is road
    min_length_m: float = 20.0  # connected components shorter than this are dropped
    min_spur_m: float = 10.0  # dead-end branches shorter than this, off a junction, are pruned
    max_gap_m: float = 20.0  # longest gap closed between a dead end and another road
    gap_threshold: float = 0.2  # the probability along a closed gap stays at or above this
    gap_angle_deg: float = 30.0  # a gap leaves the dead end's direction by at most this
    junction_merge_m: float = 8.0  # junctions closer than this (along an edge) become one node
    min_loop_m: float = 30.0  # self-loops and parallel-edge pairs of smaller perimeter are reduced
    simplify_m: float = 1.0  # Douglas-Peucker tolerance
    min_object_m: float = 3.0  # blobs whose bounding box is smaller than this on both sides are removed
    max_hole_m: float = 4.0  # holes whose bounding box fits in this on both sides are filled
    tile_size: int = 4096  # window size (pixels) for tiled processing; >= the raster processes it whole

    def validate(self) -> VectorizeParams:
        """Raise ValueError naming the first bad parameter."""
        if not (0.0 < self.threshold <= 1.0):
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold}")
        if not (0.0 <= self.gap_threshold <= 1.0):
            raise ValueError(f"gap_threshold: must be in [0, 1], got {self.gap_threshold}")
        for f in fields(self):
            if f.name.endswith("_m"):
                v = getattr(self, f.name)
                if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                    raise ValueError(f"{f.name}: must be a number >= 0, got {v}")
        if not (0.0 <= self.gap_angle_deg <= 90.0):
            raise ValueError(f"gap_angle_deg: must be in [0, 90], got {self.gap_angle_deg}")
        if not (64 <= int(self.tile_size) <= MAX_TILE):
            raise ValueError(f"tile_size: must be between 64 and {MAX_TILE} pixels, got {self.tile_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- raster sources --------------------------------------------------------------------------------------------
def detect_scale(dtype: np.dtype, max_value: float) -> float:
    """The raw value that means probability 1: 1 for bool/float/0-1 rasters, 255 up to 255, else the dtype max."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1.0
    if np.issubdtype(dtype, np.floating):
        return 1.0 if max_value <= 1.0 else (255.0 if max_value <= 255.0 else float(max_value))
    if max_value <= 1:
        return 1.0
    if max_value <= 255:
        return 255.0
    return float(np.iinfo(dtype).max)


@dataclass
class ArraySource:
    """An in-memory probability array (any dtype; see `detect_scale`)."""

    array: np.ndarray
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def read(self, col_off: int, row_off: int, width: int, height: int) -> np.ndarray:
        a = self.array[row_off:row_off + height, col_off:col_off + width]
        return np.nan_to_num(a, nan=0.0) if np.issubdtype(a.dtype, np.floating) else a

    def sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h, w = self.array.shape
        c = np.clip(np.floor(x).astype(np.int64), 0, w - 1)
        r = np.clip(np.floor(y).astype(np.int64), 0, h - 1)
        v = self.array[r, c].astype(np.float64) / self.scale
        return np.nan_to_num(v, nan=0.0)


class RasterSource:
    """Band `band` of a raster file read window by window (nodata and NaN read as 0).

    GDAL's block cache is capped at `cache_mb` while the source is open: by default GDAL may cache up to 5 % of
    the machine's memory of decompressed blocks, which would make memory grow with the raster instead of staying
    at one window.
    """

    def __init__(self, path: str | Path, band: int = 1, scale: float | None = None, cache_mb: int = 64) -> None:
        import rasterio

        self.path = Path(path)
        self._env = rasterio.Env(GDAL_CACHEMAX=int(cache_mb))
        self._env.__enter__()
        try:
            self.ds = rasterio.open(self.path)
        except BaseException:
            self._env.__exit__(None, None, None)
            raise
        if not 1 <= band <= self.ds.count:
            self.close()
            raise ValueError(f"{self.path}: has {self.ds.count} band(s), band {band} asked for")
        self.band = band
        self.nodata = self.ds.nodatavals[band - 1]
        self.dtype = np.dtype(self.ds.dtypes[band - 1])
        if scale is None:
            enc = self.ds.tags().get("ROADMAP_ENCODING", "")
            scale = 255.0 if enc.startswith("uint8") else detect_scale(self.dtype, self._max_value())
        self.scale = float(scale)

    @property
    def shape(self) -> tuple[int, int]:
        return self.ds.height, self.ds.width

    def _max_value(self) -> float:
        """The raster's largest value, read block by block until the scale is decided (see `detect_scale`)."""
        if self.dtype.kind == "b":
            return 1.0
        enough = 1.0 if self.dtype.itemsize == 1 else 255.0  # uint8 above 1 can only mean 0-255
        m = 0.0
        for _, win in self.ds.block_windows(self.band):
            a = self.read(int(win.col_off), int(win.row_off), int(win.width), int(win.height))
            if a.size:
                m = max(m, float(np.max(a)))
            if m > enough:
                break
        return m

    def read(self, col_off: int, row_off: int, width: int, height: int) -> np.ndarray:
        from rasterio.windows import Window

        a = self.ds.read(self.band, window=Window(col_off, row_off, width, height))
        nd = self.nodata
        if nd is not None and not (isinstance(nd, float) and math.isnan(nd)) and nd != 0:
            a[a == nd] = 0
        if np.issubdtype(a.dtype, np.floating):
            a = np.nan_to_num(a, nan=0.0)
        return a

    def sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h, w = self.shape
        c = np.clip(np.floor(x).astype(np.int64), 0, w - 1)
        r = np.clip(np.floor(y).astype(np.int64), 0, h - 1)
        if c.size == 0:
            return np.zeros(0)
        c0, r0 = int(c.min()), int(r.min())
        win = self.read(c0, r0, int(c.max()) - c0 + 1, int(r.max()) - r0 + 1)
        return win[r - r0, c - c0].astype(np.float64) / self.scale

    def close(self) -> None:
        if not self.ds.closed:
            self.ds.close()
            self._env.__exit__(None, None, None)


# ---- working graph -----------------------------------------------------------------------------------------------
class _Edge:
    __slots__ = ("u", "v", "pts", "psum", "pcnt", "_len")

    def __init__(self, u: int, v: int, pts: np.ndarray, psum: float, pcnt: float) -> None:
        self.u, self.v, self.pts, self.psum, self.pcnt = u, v, pts, psum, pcnt
        self._len: float | None = None


class _Graph:
    """Nodes by key (pixel-coordinate positions x=col+0.5, y=row+0.5) and edges with incidence lists."""

    def __init__(self, scale: PixelScale) -> None:
        self.scale = scale
        self.pos: dict[int, tuple[float, float]] = {}
        self.edges: list[_Edge | None] = []
        self.inc: dict[int, list[int]] = {}
        self.next_key = 0

    # basic operations
    def add_node(self, key: int, xy: tuple[float, float]) -> None:
        self.pos[key] = (float(xy[0]), float(xy[1]))
        self.inc.setdefault(key, [])

    def new_key(self) -> int:
        self.next_key += 1
        return self.next_key

    def add_edge(self, e: _Edge) -> int:
        i = len(self.edges)
        self.edges.append(e)
        self.inc[e.u].append(i)
        self.inc[e.v].append(i)
        return i

    def remove_edge(self, i: int) -> None:
        e = self.edges[i]
        if e is None:
            return
        self.inc[e.u].remove(i)
        self.inc[e.v].remove(i)
        self.edges[i] = None

    def degree(self, n: int) -> int:
        return len(self.inc.get(n, ()))

    def alive(self) -> list[int]:
        return [i for i, e in enumerate(self.edges) if e is not None]

    def length(self, i: int) -> float:
        e = self.edges[i]
        assert e is not None
        if e._len is None:
            e._len = _metric_length(e.pts, self.scale)
        return e._len

    def drop_isolated(self) -> None:
        for n in [n for n, lst in self.inc.items() if not lst]:
            del self.inc[n]
            del self.pos[n]

    def oriented(self, i: int, start: int) -> np.ndarray:
        """Points of edge i running from node `start`."""
        e = self.edges[i]
        assert e is not None
        return e.pts if e.u == start else e.pts[::-1]


def _metric_length(pts: np.ndarray, scale: PixelScale) -> float:
    if len(pts) < 2:
        return 0.0
    mx, my = scale.at(float(pts[:, 0].mean()), float(pts[:, 1].mean()))
    d = np.diff(pts, axis=0)
    return float(np.hypot(d[:, 0] * float(mx), d[:, 1] * float(my)).sum())


PRE_SIMPLIFY_PX = 0.5  # Douglas-Peucker tolerance applied to every traced chain as soon as it is stitched


def _chain_consumer(width: int) -> Callable[[int, int, np.ndarray, np.ndarray, float], tuple]:
    """What `skeleton.stitch` keeps of each stitched edge: canonical orientation and a simplified pixel chain.

    The interior pixel chain is simplified at `PRE_SIMPLIFY_PX` (the staircase of a digital line; this is where
    memory would otherwise grow with every skeleton pixel of the raster). The whole pipeline after this works on
    these records in a canonical order, so it gives the same result whatever the window size.
    """

    def consume(u: int, v: int, rows: np.ndarray, cols: np.ndarray, psum: float) -> tuple:
        lin0 = int(rows[0]) * width + int(cols[0])
        lin1 = int(rows[-1]) * width + int(cols[-1])
        if (v, lin1) < (u, lin0):
            u, v, rows, cols, lin0 = v, u, rows[::-1], cols[::-1], lin1
        x = cols.astype(np.float64) + 0.5
        y = rows.astype(np.float64) + 0.5
        if len(x) > 2:
            keep = _dp_keep(x, y, np.zeros(1, np.int64), np.full(1, len(x), np.int64), PRE_SIMPLIFY_PX)
            x, y = x[keep], y[keep]
        return u, v, lin0, len(rows), np.column_stack([x, y]), float(psum)

    return consume


def _from_pixel_graph(pg: PixelGraph, scale: PixelScale, value_scale: float) -> _Graph:
    """The working graph from stitched records (see `_chain_consumer`), in canonical order."""
    g = _Graph(scale)
    for key in sorted(pg.nodes):
        r, c = pg.nodes[key]
        g.add_node(key, (c + 0.5, r + 0.5))
    g.next_key = pg.width * pg.height + 1
    for u, v, _, npix, interior, psum in sorted(pg.edges, key=lambda t: (t[0], t[1], t[2], t[3])):
        pts = np.empty((len(interior) + 2, 2), dtype=np.float64)
        pts[0] = g.pos[u]
        pts[-1] = g.pos[v]
        pts[1:-1] = interior
        g.add_edge(_Edge(u, v, pts, psum / value_scale, float(npix)))
    return g


# ---- graph cleaning ----------------------------------------------------------------------------------------------
def _merge_degree2(g: _Graph) -> None:
    """Join the two edges at every node of degree 2 (ring nodes whose one edge is a self-loop stay)."""
    for n in sorted(g.inc):
        lst = g.inc.get(n)
        if lst is None or len(lst) != 2 or lst[0] == lst[1]:
            continue
        i, j = lst
        a, b = g.edges[i], g.edges[j]
        assert a is not None and b is not None
        pa = g.oriented(i, n)[::-1]  # ... -> n
        pb = g.oriented(j, n)  # n -> ...
        ua = a.v if a.u == n else a.u
        vb = b.v if b.u == n else b.u
        merged = _Edge(ua, vb, np.concatenate([pa, pb[1:]]), a.psum + b.psum, a.pcnt + b.pcnt)
        g.remove_edge(i)
        g.remove_edge(j)
        del g.inc[n]
        del g.pos[n]
        g.add_edge(merged)


def _drop_small_loops(g: _Graph, min_loop_m: float) -> int:
    dropped = 0
    groups: dict[tuple[int, int], list[int]] = {}
    for i in g.alive():
        e = g.edges[i]
        assert e is not None
        if e.u == e.v:
            if g.length(i) < min_loop_m:
                g.remove_edge(i)
                dropped += 1
        else:
            groups.setdefault((min(e.u, e.v), max(e.u, e.v)), []).append(i)
    for lst in groups.values():
        if len(lst) < 2:
            continue
        lst = sorted(lst, key=lambda i: (g.length(i), i))
        shortest = g.length(lst[0])
        for i in lst[1:]:
            if shortest + g.length(i) < min_loop_m:
                g.remove_edge(i)
                dropped += 1
    return dropped


def _prune_spurs(g: _Graph, min_spur_m: float, max_rounds: int = 20) -> int:
    pruned = 0
    for _ in range(max_rounds):
        spurs = []
        for i in g.alive():
            e = g.edges[i]
            assert e is not None
            if e.u == e.v:
                continue
            du, dv = g.degree(e.u), g.degree(e.v)
            if ((du == 1 and dv >= 3) or (dv == 1 and du >= 3)) and g.length(i) < min_spur_m:
                spurs.append(i)
        if not spurs:
            break
        for i in spurs:
            g.remove_edge(i)
        pruned += len(spurs)
        g.drop_isolated()
        _merge_degree2(g)
    return pruned


def _merge_junctions(g: _Graph, merge_m: float) -> int:
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.get(a, a) != a:
            parent[a] = parent.get(parent[a], parent[a])
            a = parent[a]
        return a

    short = []
    involved: set[int] = set()
    for i in g.alive():
        e = g.edges[i]
        assert e is not None
        if e.u != e.v and g.degree(e.u) >= 3 and g.degree(e.v) >= 3 and g.length(i) < merge_m:
            short.append(i)
            involved.update((e.u, e.v))
            ra, rb = find(e.u), find(e.v)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    if not short:
        return 0
    clusters: dict[int, list[int]] = {}
    for n in sorted(involved):
        clusters.setdefault(find(n), []).append(n)
    root_of = {n: r for r, members in clusters.items() for n in members}
    for i in short:
        g.remove_edge(i)
    # other short edges inside a cluster (a triangle at a crossing) go too
    for i in g.alive():
        e = g.edges[i]
        assert e is not None
        if e.u in root_of and e.v in root_of and root_of[e.u] == root_of[e.v] and g.length(i) < merge_m:
            g.remove_edge(i)
    merged = 0
    for root in sorted(clusters):
        members = sorted(set(clusters[root]))
        xy = np.array([g.pos[n] for n in members]).mean(axis=0)
        key = min(members)
        incident = sorted({i for n in members for i in g.inc.get(n, [])})
        edges = []
        for i in incident:
            e = g.edges[i]
            assert e is not None
            edges.append(e)
            g.remove_edge(i)
        for n in members:
            g.inc.pop(n, None)
            g.pos.pop(n, None)
        g.add_node(key, (float(xy[0]), float(xy[1])))
        for e in edges:
            pts = e.pts.copy()
            u, v = e.u, e.v
            if u in root_of and root_of[u] == root:
                u = key
                pts[0] = xy
            if v in root_of and root_of[v] == root:
                v = key
                pts[-1] = xy
            g.add_edge(_Edge(u, v, pts, e.psum, e.pcnt))
        merged += len(members) - 1
    g.drop_isolated()
    return merged


def _nearest_in_sector(pts: np.ndarray, d: np.ndarray, half: float, rmax: float) -> tuple[float, int, float] | None:
    """Nearest point of a polyline (metric coordinates relative to the apex) inside the sector of half-angle
    `half` around unit direction `d` and radius `rmax`: (distance, segment index, parameter t) or None."""
    a, b = pts[:-1], pts[1:]
    dd = b - a
    lo, hi = np.zeros(len(a)), np.ones(len(a))
    for rot in (half, -half):  # the two rays bounding the sector; keep the side facing the other ray
        c, s = math.cos(rot), math.sin(rot)
        r = np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])
        n = np.array([r[1], -r[0]]) if rot > 0 else np.array([-r[1], r[0]])
        na, nd = a @ n, dd @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            tb = -na / nd
        lo = np.where(nd > 0, np.maximum(lo, tb), lo)
        hi = np.where(nd < 0, np.minimum(hi, tb), hi)
        lo = np.where((nd == 0) & (na < 0), 2.0, lo)  # parallel and outside: nothing
    ok = lo <= hi
    if not ok.any():
        return None
    ll = np.einsum("ij,ij->i", dd, dd)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(ll > 0, -np.einsum("ij,ij->i", a, dd) / ll, 0.0)
    t = np.clip(t, lo, hi)
    q = a + t[:, None] * dd
    dist = np.hypot(q[:, 0], q[:, 1])
    dist = np.where(ok & (dist > 1e-9) & (dist <= rmax), dist, np.inf)
    k = int(np.argmin(dist))
    if not np.isfinite(dist[k]):
        return None
    return float(dist[k]), k, float(t[k])


def _split_points(pts: np.ndarray, cuts: list[tuple[int, float]]) -> list[np.ndarray]:
    """`pts` cut at positions (segment k, parameter t in [0, 1)), sorted, into consecutive polylines."""
    def at(k: int, t: float) -> np.ndarray:
        return pts[k] + t * (pts[k + 1] - pts[k])

    bounds = [(0, 0.0), *cuts, (len(pts) - 2, 1.0)]
    out = []
    for (ka, ta), (kb, tb) in zip(bounds[:-1], bounds[1:], strict=True):
        seq = [at(ka, ta), *pts[ka + 1:kb + 1]]
        if tb > 0:
            seq.append(at(kb, tb))
        out.append(np.array(seq, dtype=np.float64))
    return out


def _close_gaps(g: _Graph, params: VectorizeParams, sample: Callable[[np.ndarray, np.ndarray], np.ndarray],
                size: tuple[int, int] | None = None) -> int:
    import shapely

    max_gap = params.max_gap_m
    if max_gap <= 0:
        return 0
    half = math.radians(params.gap_angle_deg)
    cos_max = math.cos(half)
    dead = [n for n in sorted(g.inc) if len(g.inc[n]) == 1]
    if not dead:
        return 0
    alive = g.alive()
    own_edge = {n: g.inc[n][0] for n in dead}
    tree = shapely.STRtree([shapely.linestrings(g.edges[i].pts) for i in alive])  # type: ignore[union-attr]
    radius_px = max_gap / g.scale.min_size

    def direction(n: int) -> np.ndarray:
        """Unit vector (metric frame) of the road's heading at dead end n, over its last ~10 pixels."""
        pts = g.oriented(own_edge[n], n)  # from the dead end inwards
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        k = int(min(len(pts) - 1, np.searchsorted(cum, 10.0)))
        mx, my = g.scale.at(pts[0, 0], pts[0, 1])
        d = np.array([(pts[0, 0] - pts[k, 0]) * float(mx), (pts[0, 1] - pts[k, 1]) * float(my)])
        nrm = float(np.hypot(*d))
        return d / nrm if nrm > 0 else d

    dirs = {n: direction(n) for n in dead}
    dead_set = set(dead)
    cands = []  # (distance m, dead end, kind, target, target xy); kinds: 0 dead end, 1 node, 2 edge point, 3 border
    for n in dead:
        if not dirs[n].any():
            continue
        p = np.array(g.pos[n])
        mx, my = (float(v) for v in g.scale.at(p[0], p[1]))
        hits = tree.query(shapely.points(p), predicate="dwithin", distance=radius_px)
        for h in sorted(int(x) for x in hits):
            j = alive[h]
            if j == own_edge[n]:
                continue
            e = g.edges[j]
            assert e is not None
            rel = (e.pts - p) * np.array([mx, my])
            best = _nearest_in_sector(rel, dirs[n], half, max_gap)
            if best is None:
                continue
            dist, k, t = best
            if t >= 1.0 - 1e-9:
                k, t = k + 1, 0.0
            txy = e.pts[k] + t * (e.pts[min(k + 1, len(e.pts) - 1)] - e.pts[k])
            if t == 0.0 and k in (0, len(e.pts) - 1):
                tn = e.u if k == 0 else e.v
                if tn == n:
                    continue
                if tn in dead_set:
                    v = rel[k] / dist
                    if float(-v @ dirs[tn]) < cos_max:
                        continue
                    kind = 0
                else:
                    kind = 1
                target: tuple = (tn,)
            else:
                kind, target = 2, (j, k, t)
            cands.append((dist, n, kind, target, txy.copy()))
    if size is not None:  # a dead end short of the raster's border, pointing at it: extend it to the border
        width, height = size
        for n in dead:
            p = np.array(g.pos[n])
            mx, my = (float(v) for v in g.scale.at(p[0], p[1]))
            dp = np.array([dirs[n][0] / mx, dirs[n][1] / my])  # pixels per metre along the road
            ts = [(lim - p[k]) / dp[k] for k, lim in ((0, 0.0), (0, float(width)), (1, 0.0), (1, float(height)))
                  if dp[k] != 0 and (lim - p[k]) / dp[k] > 0]
            if ts and min(ts) <= max_gap:
                t = min(ts)
                txy = p + t * dp
                txy = np.array([min(max(txy[0], 0.0), float(width)), min(max(txy[1], 0.0), float(height))])
                if float(np.hypot(*(txy - p))) > 1e-6:
                    cands.append((float(t), n, 3, (), txy))
    cands.sort(key=lambda c: (c[0], c[1], c[2], c[3]))
    used: set[int] = set()
    links: list[tuple[int, tuple, np.ndarray, np.ndarray]] = []  # (dead end, target, target xy, samples)
    for _dist, n, kind, target, txy in cands:
        if n in used or (kind == 0 and target[0] in used):
            continue
        p = np.array(g.pos[n])
        steps = max(2, int(math.ceil(float(np.hypot(*(txy - p))) * 2)) + 1)
        t = np.linspace(0.0, 1.0, steps)
        vals = sample(p[0] + t * (txy[0] - p[0]), p[1] + t * (txy[1] - p[1]))
        if vals.size and float(vals.min()) < params.gap_threshold:
            continue
        used.add(n)
        if kind == 0:
            used.add(target[0])
        links.append((n, target, txy, vals))
    if not links:
        return 0
    # cut edges at the chosen points (all cuts of one edge at once)
    cuts: dict[int, set[tuple[int, float]]] = {}
    for _, target, _, _ in links:
        if len(target) == 3:
            cuts.setdefault(target[0], set()).add((target[1], target[2]))
    cut_node: dict[tuple[int, int, float], int] = {}
    for j in sorted(cuts):
        e = g.edges[j]
        assert e is not None
        ks = sorted(cuts[j])
        mean = e.psum / e.pcnt if e.pcnt else 0.0
        total = _metric_length(e.pts, g.scale) or 1.0
        nodes = [e.u]
        for k, t in ks:
            key = g.new_key()
            xy = e.pts[k] + t * (e.pts[k + 1] - e.pts[k])
            g.add_node(key, (float(xy[0]), float(xy[1])))
            cut_node[(j, k, t)] = key
            nodes.append(key)
        nodes.append(e.v)
        g.remove_edge(j)
        for a, seg in enumerate(_split_points(e.pts, ks)):
            seg[0], seg[-1] = g.pos[nodes[a]], g.pos[nodes[a + 1]]
            cnt = e.pcnt * _metric_length(seg, g.scale) / total
            g.add_edge(_Edge(nodes[a], nodes[a + 1], seg, mean * cnt, cnt))
    for n, target, txy, vals in links:
        if not target:  # to the raster border
            t = g.new_key()
            g.add_node(t, (float(txy[0]), float(txy[1])))
        else:
            t = cut_node[target] if len(target) == 3 else target[0]
        pts = np.array([g.pos[n], g.pos[t]], dtype=np.float64)
        g.add_edge(_Edge(n, t, pts, float(vals.sum()), float(vals.size)))
    return len(links)


def _drop_short_components(g: _Graph, min_length_m: float) -> int:
    parent = {n: n for n in g.inc}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in g.alive():
        e = g.edges[i]
        assert e is not None
        ra, rb = find(e.u), find(e.v)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    total: dict[int, float] = {}
    for i in g.alive():
        e = g.edges[i]
        assert e is not None
        r = find(e.u)
        total[r] = total.get(r, 0.0) + g.length(i)
    dropped = 0
    for i in g.alive():
        e = g.edges[i]
        assert e is not None
        if total.get(find(e.u), 0.0) < min_length_m:
            g.remove_edge(i)
            dropped += 1
    g.drop_isolated()
    return dropped


@njit(cache=True)
def _dp_keep(x: np.ndarray, y: np.ndarray, starts: np.ndarray, stops: np.ndarray, tol: float) -> np.ndarray:
    """Douglas-Peucker keep-mask of many polylines laid end to end ([starts[k], stops[k]) each)."""
    keep = np.zeros(x.size, dtype=np.bool_)
    stack = np.empty((x.size + 2, 2), dtype=np.int64)
    for k in range(starts.size):
        s, e = starts[k], stops[k] - 1
        if e < s:
            continue
        keep[s] = True
        keep[e] = True
        top = 0
        stack[top, 0], stack[top, 1] = s, e
        top += 1
        while top > 0:
            top -= 1
            i, j = stack[top, 0], stack[top, 1]
            if j <= i + 1:
                continue
            dx, dy = x[j] - x[i], y[j] - y[i]
            ll = dx * dx + dy * dy
            best, bi = -1.0, -1
            for m in range(i + 1, j):
                px, py = x[m] - x[i], y[m] - y[i]
                if ll > 0:
                    d = abs(px * dy - py * dx) / np.sqrt(ll)
                else:
                    d = np.sqrt(px * px + py * py)
                if d > best:
                    best, bi = d, m
            if best > tol:
                keep[bi] = True
                stack[top, 0], stack[top, 1] = i, bi
                top += 1
                stack[top, 0], stack[top, 1] = bi, j
                top += 1
    return keep


def _simplify(g: _Graph, tol_m: float) -> dict[int, np.ndarray]:
    """Simplified points (pixel coordinates) of every alive edge."""
    alive = g.alive()
    if not alive:
        return {}
    pts = [g.edges[i].pts for i in alive]  # type: ignore[union-attr]
    sizes = np.array([len(p) for p in pts], dtype=np.int64)
    allp = np.concatenate(pts)
    cx = np.array([p[:, 0].mean() for p in pts])
    cy = np.array([p[:, 1].mean() for p in pts])
    mx, my = g.scale.at(cx, cy)
    x = allp[:, 0] * np.repeat(mx, sizes)
    y = allp[:, 1] * np.repeat(my, sizes)
    stops = np.cumsum(sizes)
    starts = stops - sizes
    keep = _dp_keep(x, y, starts, stops, float(tol_m))
    out = {}
    for i, p, s, t in zip(alive, pts, starts, stops, strict=True):
        k = keep[s:t]
        if g.edges[i].u == g.edges[i].v and int(k.sum()) < 4 and len(p) >= 4:  # type: ignore[union-attr]
            # a closed way needs three distinct nodes: keep the thirds of a small loop
            k = k.copy()
            k[[len(p) // 3, (2 * len(p)) // 3]] = True
        out[i] = p[k]
    return out


# ---- public API --------------------------------------------------------------------------------------------------
@dataclass
class VectorizeStats:
    """What vectorizing did (counts; for logs and tests)."""

    windows: int = 0
    skeleton_pixels: int = 0
    traced_nodes: int = 0
    traced_edges: int = 0
    small_loops: int = 0
    spurs: int = 0
    junctions_merged: int = 0
    gaps_closed: int = 0
    short_dropped: int = 0
    nodes: int = 0
    edges: int = 0
    length_m: float = 0.0
    tiling: dict = field(default_factory=dict)


def graph_from_source(source: ArraySource | RasterSource, transform: tuple, crs_wkt: str,
                      params: VectorizeParams | None = None, stats: VectorizeStats | None = None,
                      progress: Callable[[int], None] | None = None,
                      map_windows: Callable[[list, SkeletonParams], Any] | None = None) -> RoadGraph:
    """Vectorize a raster source (see the module docstring).

    `map_windows(cores, skeleton_params)` may trace the skeleton's core windows elsewhere (see
    `postprocess.skeleton.skeleton_graph`); everything after the stitched pixel graph runs here.
    """
    params = (params or VectorizeParams()).validate()
    stats = stats if stats is not None else VectorizeStats()
    h, w = source.shape
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    if b != 0.0 or d != 0.0:
        raise ValueError("rotated rasters are not supported (transform has rotation terms)")
    scale = PixelScale((a, b, c, d, e, f), crs_wkt, w, h)
    px = scale.nominal
    tile = int(params.tile_size)
    thr_raw = params.threshold * source.scale
    if np.issubdtype(source.dtype, np.integer):
        thr_raw = math.ceil(thr_raw - 1e-9)
    sp = SkeletonParams(threshold_raw=thr_raw,
                        min_object_px=max(1, int(math.ceil(params.min_object_m / px))),
                        max_hole_px=int(math.floor(params.max_hole_m / px)),
                        tile_size=tile)
    mapper = None if map_windows is None else (lambda cores: map_windows(cores, sp))
    pg = skeleton_graph(source.read, w, h, sp, stats.tiling, progress, _chain_consumer(w), mapper)
    stats.windows = int(stats.tiling.get("windows", 0))
    stats.skeleton_pixels = int(stats.tiling.get("skeleton_pixels", 0))
    stats.traced_nodes, stats.traced_edges = len(pg.nodes), len(pg.edges)

    g = _from_pixel_graph(pg, scale, source.scale)
    del pg
    stats.small_loops = _drop_small_loops(g, params.min_loop_m)
    g.drop_isolated()
    _merge_degree2(g)
    stats.spurs = _prune_spurs(g, params.min_spur_m)
    stats.junctions_merged = _merge_junctions(g, params.junction_merge_m)
    _merge_degree2(g)
    stats.small_loops += _drop_small_loops(g, params.min_loop_m)
    g.drop_isolated()
    _merge_degree2(g)
    stats.spurs += _prune_spurs(g, params.min_spur_m)
    stats.gaps_closed = _close_gaps(g, params, source.sample, (w, h))
    _merge_degree2(g)
    stats.short_dropped = _drop_short_components(g, params.min_length_m)
    _merge_degree2(g)

    simplified = _simplify(g, max(params.simplify_m, 0.75 * px))
    graph = _to_road_graph(g, simplified, (a, b, c, d, e, f), crs_wkt)
    stats.nodes, stats.edges = len(graph.nodes), len(graph.edges)
    stats.length_m = graph.total_length_m
    return graph


def _to_road_graph(g: _Graph, simplified: dict[int, np.ndarray], transform: tuple, crs_wkt: str) -> RoadGraph:
    a, _, c, _, e, f = transform
    keys = sorted(n for n in g.inc if g.inc[n])
    nid = {k: i + 1 for i, k in enumerate(keys)}
    recs = []
    for i, p in simplified.items():
        ed = g.edges[i]
        assert ed is not None
        u, v = nid[ed.u], nid[ed.v]
        if (v, tuple(p[-2])) < (u, tuple(p[1])):
            u, v, p = v, u, p[::-1]
        conf = ed.psum / ed.pcnt if ed.pcnt else 0.0
        recs.append((u, v, tuple(p[1]), len(p), p, conf))
    recs.sort(key=lambda r: r[:4])
    coords = [np.column_stack([c + a * r[4][:, 0], f + e * r[4][:, 1]]) for r in recs]
    lengths = geodesic_lengths(crs_wkt, coords)
    nodes = {nid[k]: (c + a * g.pos[k][0], f + e * g.pos[k][1]) for k in keys}
    edges = [RoadEdge(k + 1, r[0], r[1], xy, float(ln), float(min(1.0, max(0.0, r[5]))), {})
             for k, (r, xy, ln) in enumerate(zip(recs, coords, lengths, strict=True))]
    for ed in edges:  # node positions are exactly the edge ends
        ed.coords[0] = nodes[ed.u]
        ed.coords[-1] = nodes[ed.v]
    return RoadGraph(crs_wkt=crs_wkt, nodes=nodes, edges=edges, node_attrs={})


def mask_to_graph(prob: np.ndarray, transform: Any, crs_wkt: str, threshold: float = 0.5, *,
                  params: VectorizeParams | None = None, scale: float | None = None,
                  stats: VectorizeStats | None = None, **overrides: Any) -> RoadGraph:
    """Vectorize an in-memory probability or label array on the grid given by `transform` (rasterio order).

    `prob` may be bool, 0/1, 0-255 or float 0..1 (`scale`, the value meaning probability 1, is detected when not
    given). Keyword `overrides` set fields of `VectorizeParams` (e.g. tile_size=1024, min_length_m=30).
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"prob: expected a 2-D array, got shape {prob.shape}")
    base = params or VectorizeParams()
    params = VectorizeParams(**{**base.to_dict(), "threshold": threshold, **overrides})
    if scale is None:
        mv = float(np.nanmax(prob)) if prob.size else 0.0
        scale = detect_scale(prob.dtype, mv)
    src = ArraySource(prob.astype(np.uint8) if prob.dtype == bool else prob, float(scale))
    return graph_from_source(src, tuple(transform)[:6], crs_wkt, params, stats)


def raster_to_graph(path: str | Path, params: VectorizeParams | None = None, *, band: int = 1,
                    scale: float | None = None, stats: VectorizeStats | None = None,
                    progress: Callable[[int], None] | None = None) -> RoadGraph:
    """Vectorize band `band` of a raster file window by window (memory: one window, not the raster)."""
    src = RasterSource(path, band=band, scale=scale)
    try:
        if src.ds.crs is None:
            raise ValueError(f"{path}: raster has no CRS")
        return graph_from_source(src, tuple(src.ds.transform)[:6], src.ds.crs.to_wkt(), params, stats, progress)
    finally:
        src.close()
