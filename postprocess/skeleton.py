"""Binary road mask -> skeleton -> pixel graph, window by window, stitched exactly at the window seams.

A raster larger than memory is cut into *core* windows (a partition of the image). Each core is processed inside
an *extended* window (the core grown by a margin):

1. threshold; remove small objects and fill small holes (by bounding-box extent, see `clean_mask`);
2. thin with skimage's `skeletonize` (Zhang-Suen);
3. trace the skeleton with sknw (its `mark` / `parse_struc` on a uint32 buffer, so more than 65 525 nodes per
   window cannot wrap around) inside a *crop* (the core grown by a small ring);
4. keep, of every traced chain, the runs of its interior pixels that lie inside the core. A run ends either at a
   node cluster (pixels with other than two skeleton neighbours) or at a *seam*: the pair of consecutive chain
   pixels one of which lies in this core and the other in a neighbouring one.

Stitching joins runs from neighbouring windows at their seam pairs (the same two pixels, seen from both sides) and
names every node cluster by its smallest global pixel index, so the stitched graph is the graph sknw would trace
on the whole-image skeleton, with the same pixels in the same order. Closed rings of degree-2 pixels get their node
at their smallest pixel index in both cases.

Why the windows agree with the whole image:
- `clean_mask` decides a component from its bounding box; a component that touches a *cut* side of the extended
  window (a side inside the image) is kept/not filled, so a wrong decision can only concern components within
  `clean_px` of a cut side.
- Zhang-Suen thinning updates all pixels in parallel from their 3x3 neighbourhood, so in k sub-iterations a
  difference travels at most k pixels; a blob of chessboard radius R is thinned in about 2R sub-iterations. The
  margin is therefore chosen per window as ring + clean_px + 2 * R_bound + slack, where R_bound is an upper bound
  of the mask's thickness in that window (from a 4x max-pooled distance transform), and the window is re-read with a
  larger margin when needed (up to a cap, beyond which a warning is counted in the stats).
- sknw miscounts neighbours only on the crop's own border, which lies `ring` pixels outside the core; a node
  cluster that a core run ends at and that touches a cut side of the crop makes the window be redone with a wider
  ring.
The tests check tiled == whole on masks with junctions, loops, blobs and holes placed across the seams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger("roadmap")

Reader = Callable[[int, int, int, int], np.ndarray]  # (col_off, row_off, width, height) -> raw 2-D array
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class SkeletonParams:
    """Pixel-level parameters of the skeleton stage."""

    threshold_raw: float  # raw raster value at or above which a pixel is road
    min_object_px: int = 10  # components whose bounding box is smaller than this (both sides) are removed
    max_hole_px: int = 13  # background holes whose bounding box fits in this (both sides) are filled
    tile_size: int = 4096  # core window size; >= the raster size processes it whole
    ring: int = 16  # crop ring around the core traced by sknw
    base_margin: int = 96  # smallest margin around the core
    max_margin: int | None = None  # cap (default max(256, tile_size // 2))

    @property
    def clean_px(self) -> int:
        return int(max(self.min_object_px, self.max_hole_px)) + 2


class Piece:
    """A run of chain pixels inside one core, from end `a` to end `b`.

    An end is ("n", key) for a node cluster or ("s", lin1, lin2) for a seam between two consecutive pixels. The
    pixels are kept as the first one plus one byte per 8-connected step (a skeleton of the whole raster is held
    until stitching, so this is what memory grows with), decoded on access.
    """

    __slots__ = ("a", "b", "r0", "c0", "steps", "psum")

    def __init__(self, a: tuple, b: tuple, rows: np.ndarray, cols: np.ndarray, psum: float) -> None:
        self.a, self.b, self.psum = a, b, float(psum)
        self.r0, self.c0 = int(rows[0]), int(cols[0])
        dr, dc = np.diff(rows.astype(np.int64)), np.diff(cols.astype(np.int64))
        if dr.size and (np.abs(dr).max() > 1 or np.abs(dc).max() > 1):
            raise ValueError("a chain piece is not 8-connected")
        self.steps = ((dr + 1) * 3 + (dc + 1)).astype(np.uint8)

    @property
    def rows(self) -> np.ndarray:
        return (self.r0 + np.concatenate([[0], np.cumsum(self.steps.astype(np.int64) // 3 - 1)])).astype(np.int32)

    @property
    def cols(self) -> np.ndarray:
        return (self.c0 + np.concatenate([[0], np.cumsum(self.steps.astype(np.int64) % 3 - 1)])).astype(np.int32)


@dataclass
class PixelGraph:
    """The traced skeleton of the whole raster, in global pixel indices."""

    width: int
    height: int
    nodes: dict[int, tuple[float, float]]  # key (smallest pixel index row*W+col) -> centroid (row, col)
    edges: list  # what `consume(u, v, rows, cols, psum)` made of each edge (default: that tuple)
    stats: dict = field(default_factory=dict)


EdgeConsumer = Callable[[int, int, np.ndarray, np.ndarray, float], object]


def _keep_edge(u: int, v: int, rows: np.ndarray, cols: np.ndarray, psum: float) -> tuple:
    return u, v, rows, cols, psum


# ---- mask cleaning -----------------------------------------------------------------------------------------------
def _bboxes(lab: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) int64 r0, r1, c0, c1 (exclusive ends) of labels 1..n."""
    out = np.zeros((n, 4), dtype=np.int64)
    for i, s in enumerate(ndi.find_objects(lab, max_label=n)):
        if s is not None:
            out[i] = (s[0].start, s[0].stop, s[1].start, s[1].stop)
    return out


def clean_mask(mask: np.ndarray, cut: tuple[bool, bool, bool, bool], min_object_px: int, max_hole_px: int) -> None:
    """Remove small objects and fill small holes of `mask` in place.

    An object (8-connected) is removed when its bounding box is smaller than `min_object_px` on both sides and it
    touches no cut side (top, bottom, left, right of the window that lie inside the image). A hole (4-connected
    background) is filled when its bounding box is at most `max_hole_px` on both sides and it touches no side of
    the window at all (background open to the image border is never a hole). The bounding-box rule keeps every
    decision local: a component that small lies within that many pixels of any place it touches.
    """
    h, w = mask.shape
    if min_object_px > 1 and mask.any():
        lab, n = ndi.label(mask, structure=_EIGHT)
        if n:
            bb = _bboxes(lab, n)
            small = ((bb[:, 1] - bb[:, 0]) < min_object_px) & ((bb[:, 3] - bb[:, 2]) < min_object_px)
            touch = ((bb[:, 0] == 0) & cut[0]) | ((bb[:, 1] == h) & cut[1]) | ((bb[:, 2] == 0) & cut[2]) | \
                    ((bb[:, 3] == w) & cut[3])
            drop = small & ~touch
            if drop.any():
                lut = np.zeros(n + 1, dtype=bool)
                lut[1:][drop] = True
                mask[lut[lab]] = False
        del lab
    if max_hole_px > 0 and not mask.all():
        lab, n = ndi.label(~mask)
        if n:
            bb = _bboxes(lab, n)
            small = ((bb[:, 1] - bb[:, 0]) <= max_hole_px) & ((bb[:, 3] - bb[:, 2]) <= max_hole_px)
            touch = (bb[:, 0] == 0) | (bb[:, 1] == h) | (bb[:, 2] == 0) | (bb[:, 3] == w)
            fill = small & ~touch
            if fill.any():
                lut = np.zeros(n + 1, dtype=bool)
                lut[1:][fill] = True
                mask[lut[lab]] = True


def thickness_bound(mask: np.ndarray, pool: int = 4) -> int:
    """An upper bound of the largest chessboard distance from a mask pixel to the background (pixels)."""
    if not mask.any():
        return 0
    h, w = mask.shape
    ph, pw = -(-h // pool), -(-w // pool)
    padded = np.zeros((ph * pool, pw * pool), dtype=bool)
    padded[:h, :w] = mask
    pooled = padded.reshape(ph, pool, pw, pool).any(axis=(1, 3))
    if pooled.all():
        return max(h, w)
    # no padding: a blob cut by the window's edge may go on beyond it, so only background seen inside counts
    d = ndi.distance_transform_cdt(pooled, metric="chessboard")
    return int(pool * (int(d.max()) + 1))


# ---- sknw tracing --------------------------------------------------------------------------------------------------
_SKNW: tuple | None = None


def _sknw_functions() -> tuple:
    """sknw's `mark` and `parse_struc`, compiled with numba's on-disk cache.

    sknw jits them without `cache=True`, which costs several seconds of compilation in every process; the same
    Python functions compiled with caching load in well under a second after the first run.
    """
    global _SKNW
    if _SKNW is None:
        import warnings

        import sknw.sknw as sk_impl
        from numba import njit

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _SKNW = (sk_impl.neighbors, njit(cache=True)(sk_impl.mark.py_func),
                         njit(cache=True)(sk_impl.parse_struc.py_func))
        except Exception:  # noqa: BLE001 - no cache possible: sknw's own jitted functions
            _SKNW = (sk_impl.neighbors, sk_impl.mark, sk_impl.parse_struc)
    return _SKNW


def _sknw_trace(sk: np.ndarray) -> tuple[list, list]:
    """sknw's node clusters and chains of a skeleton (crop coordinates), iso=False, ring=True."""
    neighbors, mark, parse_struc = _sknw_functions()
    buf = np.zeros((sk.shape[0] + 2, sk.shape[1] + 2), dtype=np.uint32)
    buf[1:-1, 1:-1] = sk
    nbs = neighbors(buf.shape)
    acc = np.cumprod((1,) + buf.shape[::-1][:-1])[::-1]
    mark(buf, nbs)
    nodes, edges = parse_struc(buf, nbs, acc, False, True)
    return nodes, edges


class _RetryWindow(Exception):
    pass


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of the runs of True."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def trace_window(read: Reader, width: int, height: int, core: tuple[int, int, int, int], params: SkeletonParams,
                 stats: dict) -> tuple[list[Piece], list[tuple[np.ndarray, np.ndarray, float]], dict]:
    """Pieces, closed rings and node clusters of one core window (c0, r0, c1, r1; exclusive ends).

    Returns (pieces, rings, nodes) where rings are (rows, cols, psum) of degree-2 cycles lying inside the core
    and nodes maps key -> (sum of rows, sum of cols, pixel count) for every cluster a piece ends at.
    """
    c0, r0, c1, r1 = core
    whole = (c0, r0, c1, r1) == (0, 0, width, height)
    margin = 0 if whole else params.base_margin
    ring = 0 if whole else params.ring
    cap = params.max_margin or max(256, params.tile_size // 2)
    for _attempt in range(8):
        ec0, er0 = max(0, c0 - margin), max(0, r0 - margin)
        ec1, er1 = min(width, c1 + margin), min(height, r1 + margin)
        cut = (er0 > 0, er1 < height, ec0 > 0, ec1 < width)
        raw = read(ec0, er0, ec1 - ec0, er1 - er0)
        mask = raw >= params.threshold_raw
        clean_mask(mask, cut, params.min_object_px, params.max_hole_px)
        if any(cut):
            need = ring + params.clean_px + 2 * thickness_bound(mask) + 8
            if need > margin:
                if margin >= cap:
                    stats["margin_capped"] = stats.get("margin_capped", 0) + 1
                    log.warning("window at col %d row %d: the mask is %d px thick there; the margin is capped at "
                                "%d px, so the graph may differ slightly along this window's seams (use a larger "
                                "--tile-size)", c0, r0, (need - ring - params.clean_px) // 2, cap)
                else:
                    margin = min(cap, max(need, 2 * margin))
                    stats["margin_retries"] = stats.get("margin_retries", 0) + 1
                    continue
        from skimage.morphology import skeletonize

        skel = skeletonize(mask) if mask.any() else np.zeros_like(mask)
        del mask
        k0, q0 = max(0, c0 - ring), max(0, r0 - ring)
        k1, q1 = min(width, c1 + ring), min(height, r1 + ring)
        crop = skel[q0 - er0:q1 - er0, k0 - ec0:k1 - ec0]
        craw = raw[q0 - er0:q1 - er0, k0 - ec0:k1 - ec0]
        crop_cut = (q0 > 0, q1 < height, k0 > 0, k1 < width)
        try:
            out = _pieces(crop, craw, (k0, q0, k1, q1), core, crop_cut, width)
        except _RetryWindow:
            ring *= 2
            margin = min(max(cap, margin), margin + ring)
            stats["ring_retries"] = stats.get("ring_retries", 0) + 1
            continue
        stats["max_margin_used"] = max(stats.get("max_margin_used", 0), margin)
        stats["skeleton_pixels"] = stats.get("skeleton_pixels", 0) + int(
            skel[r0 - er0:r1 - er0, c0 - ec0:c1 - ec0].sum())
        return out
    raise RuntimeError(f"window at col {c0} row {r0}: could not find a consistent margin")


def _pieces(crop: np.ndarray, craw: np.ndarray, crop_box: tuple[int, int, int, int],
            core: tuple[int, int, int, int], crop_cut: tuple[bool, bool, bool, bool], width: int):
    k0, q0, k1, q1 = crop_box
    c0, r0, c1, r1 = core
    ch, cw = crop.shape
    if not crop.any():
        return [], [], {}
    cl_nodes, cl_edges = _sknw_trace(crop)

    node_info: dict[int, tuple[int, int, int, int, bool]] = {}  # index -> key, sum r, sum c, n, touches cut border

    def info(i: int) -> tuple[int, int, int, int, bool]:
        got = node_info.get(i)
        if got is None:
            px = np.asarray(cl_nodes[i], dtype=np.int64)
            gr, gc = px[:, 0] + q0, px[:, 1] + k0
            touch = bool(((px[:, 0] == 0) & crop_cut[0]).any() or ((px[:, 0] == ch - 1) & crop_cut[1]).any()
                         or ((px[:, 1] == 0) & crop_cut[2]).any() or ((px[:, 1] == cw - 1) & crop_cut[3]).any())
            got = (int((gr * width + gc).min()), int(gr.sum()), int(gc.sum()), len(px), touch)
            node_info[i] = got
        return got

    def is_ring_node(i: int) -> bool:
        px = cl_nodes[i]
        if len(px) != 1:
            return False
        r, c = int(px[0, 0]), int(px[0, 1])
        nb = crop[max(0, r - 1):r + 2, max(0, c - 1):c + 2]
        return int(nb.sum()) - 1 == 2

    pieces: list[Piece] = []
    rings: list[tuple[np.ndarray, np.ndarray, float]] = []
    used_nodes: dict[int, tuple[int, int, int]] = {}

    def node_end(i: int) -> tuple:
        key, sr, sc, n, touch = info(i)
        if touch:
            raise _RetryWindow
        used_nodes[key] = (sr, sc, n)
        return ("n", key)

    for s, e, pts in cl_edges:
        pts = np.asarray(pts, dtype=np.int32)
        cyclic = s == e and is_ring_node(s)
        if cyclic:
            lr, lc = pts[:-1, 0], pts[:-1, 1]  # the ring node pixel first, then the chain; closed implicitly
        else:
            lr, lc = pts[1:-1, 0], pts[1:-1, 1]
        gr = lr + np.int32(q0)
        gc = lc + np.int32(k0)
        inside = (gr >= r0) & (gr < r1) & (gc >= c0) & (gc < c1)
        if not inside.any():
            continue
        vals = craw[lr, lc].astype(np.float64)
        if cyclic:
            if inside.all():
                rings.append((gr, gc, float(vals.sum())))
                continue
            start = int(np.flatnonzero(~inside)[0])  # rotate so that the sequence begins outside the core
            order = np.roll(np.arange(len(gr)), -start)
            gr, gc, vals, inside = gr[order], gc[order], vals[order], inside[order]
            for a, b in _runs(inside):
                pa = int(gr[a - 1]) * width + int(gc[a - 1])
                pb = int(gr[a]) * width + int(gc[a])
                qa = int(gr[b - 1]) * width + int(gc[b - 1])
                qb = int(gr[b % len(gr)]) * width + int(gc[b % len(gr)])
                pieces.append(Piece(("s", min(pa, pb), max(pa, pb)), ("s", min(qa, qb), max(qa, qb)),
                                    gr[a:b], gc[a:b], float(vals[a:b].sum())))
            continue
        n = len(gr)
        if inside.all():
            pieces.append(Piece(node_end(s), node_end(e), gr, gc, float(vals.sum())))
            continue
        for a, b in _runs(inside):
            if a == 0:
                end_a = node_end(s)
            else:
                pa, pb = int(gr[a - 1]) * width + int(gc[a - 1]), int(gr[a]) * width + int(gc[a])
                end_a = ("s", min(pa, pb), max(pa, pb))
            if b == n:
                end_b = node_end(e)
            else:
                pa, pb = int(gr[b - 1]) * width + int(gc[b - 1]), int(gr[b]) * width + int(gc[b])
                end_b = ("s", min(pa, pb), max(pa, pb))
            pieces.append(Piece(end_a, end_b, gr[a:b], gc[a:b], float(vals[a:b].sum())))
    return pieces, rings, used_nodes


# ---- windows and stitching -----------------------------------------------------------------------------------------
def core_windows(width: int, height: int, tile_size: int) -> Iterator[tuple[int, int, int, int]]:
    """The core windows (c0, r0, c1, r1) partitioning the raster, row by row."""
    t = max(1, int(tile_size))
    for r0 in range(0, height, t):
        for c0 in range(0, width, t):
            yield c0, r0, min(width, c0 + t), min(height, r0 + t)


def stitch(width: int, height: int, pieces: list[Piece], rings: list, nodes: dict[int, tuple[int, int, int]],
           stats: dict, consume: EdgeConsumer = _keep_edge) -> PixelGraph:
    """Join pieces at their seams into the whole-raster pixel graph (nodes by key, edges u -> v).

    Each stitched edge (u, v, interior rows, cols, psum) goes through `consume` as soon as it is complete, and only
    what that returns is kept (vectorize simplifies it there, so the whole-raster pixel chains are never all held).
    """
    node_pos = {k: (sr / n, sc / n) for k, (sr, sc, n) in nodes.items()}
    seam_ends: dict[tuple, list[tuple[int, int]]] = {}
    for i, p in enumerate(pieces):
        for which, end in ((0, p.a), (1, p.b)):
            if end[0] == "s":
                seam_ends.setdefault(end, []).append((i, which))
    bad = [k for k, v in seam_ends.items() if len(v) != 2]
    stats["seams"] = len(seam_ends)
    stats["seam_mismatches"] = len(bad)
    if bad:
        log.warning("%d window seam point(s) did not match between neighbouring windows; the graph is cut there "
                    "(a larger --tile-size avoids this)", len(bad))
    visited = np.zeros(len(pieces), dtype=bool)
    edges: list[tuple[int, int, np.ndarray, np.ndarray, float]] = []

    def other(end: tuple, i: int, which: int) -> tuple[int, int] | None:
        lst = seam_ends.get(end, [])
        if len(lst) != 2:
            return None
        for j, w in lst:
            if (j, w) != (i, which):
                return j, w
        return None

    def dangling_node(i: int, which: int) -> int:
        p = pieces[i]
        k = -1 if which == 1 else 0
        r, c = int(p.rows[k]), int(p.cols[k])
        key = r * width + c
        node_pos.setdefault(key, (float(r), float(c)))
        return key

    def walk(i: int, which_start: int, start_node: int) -> None:
        rows, cols, psum = [], [], 0.0
        cur, ent = i, which_start
        while True:
            visited[cur] = True
            p = pieces[cur]
            r, c = (p.rows, p.cols) if ent == 0 else (p.rows[::-1], p.cols[::-1])
            rows.append(r)
            cols.append(c)
            psum += p.psum
            far = p.b if ent == 0 else p.a
            far_which = 1 - ent
            if far[0] == "n":
                end_node = far[1]
                break
            nxt = other(far, cur, far_which)
            if nxt is None:
                end_node = dangling_node(cur, far_which)
                break
            cur, ent = nxt
            if visited[cur]:  # a cycle through seams that came back to its start (handled by the caller)
                end_node = start_node
                break
        edges.append(consume(start_node, end_node, np.concatenate(rows), np.concatenate(cols), psum))

    for i, p in enumerate(pieces):
        if visited[i]:
            continue
        for which, end in ((0, p.a), (1, p.b)):
            if visited[i]:
                break
            if end[0] == "n":
                walk(i, which, end[1])
            elif other(end, i, which) is None:
                walk(i, which, dangling_node(i, which))
    # what is left are cycles of pieces joined only at seams: closed rings crossing windows
    for i in range(len(pieces)):
        if visited[i]:
            continue
        rows, cols, psum = [], [], 0.0
        cur, ent = i, 0
        while not visited[cur]:
            visited[cur] = True
            p = pieces[cur]
            r, c = (p.rows, p.cols) if ent == 0 else (p.rows[::-1], p.cols[::-1])
            rows.append(r)
            cols.append(c)
            psum += p.psum
            far = p.b if ent == 0 else p.a
            nxt = other(far, cur, 1 - ent)
            if nxt is None:
                break
            cur, ent = nxt
        rings.append((np.concatenate(rows), np.concatenate(cols), psum))
    for gr, gc, psum in rings:
        lin = gr.astype(np.int64) * width + gc
        k = int(np.argmin(lin))
        key = int(lin[k])
        node_pos[key] = (float(gr[k]), float(gc[k]))
        order = np.roll(np.arange(len(gr)), -k)[1:]
        edges.append(consume(key, key, gr[order], gc[order], psum))
    return PixelGraph(width, height, node_pos, edges, stats)


WindowResult = tuple[list, list, dict, dict]  # (pieces, rings, nodes, window stats) of trace_window
WindowMapper = Callable[[list[tuple[int, int, int, int]]], Iterator[WindowResult]]


def merge_window_stats(total: dict, part: dict) -> None:
    """Add one window's counters to the run's (`max_*` keys keep the largest)."""
    for k, v in part.items():
        total[k] = max(total.get(k, 0), v) if k.startswith("max_") else total.get(k, 0) + v


def trace_one(read: Reader, width: int, height: int, core: tuple[int, int, int, int],
              params: SkeletonParams) -> WindowResult:
    """`trace_window` with its own counters: what a worker computes for one core window."""
    window_stats: dict = {}
    pieces, rings, nodes = trace_window(read, width, height, core, params, window_stats)
    return pieces, rings, nodes, window_stats


def skeleton_graph(read: Reader, width: int, height: int, params: SkeletonParams, stats: dict | None = None,
                   progress: Callable[[int], None] | None = None, consume: EdgeConsumer = _keep_edge,
                   map_windows: WindowMapper | None = None) -> PixelGraph:
    """The pixel graph of the thresholded, cleaned, skeletonized raster, processed in core windows.

    `map_windows(cores)` may compute the windows elsewhere (a cluster: each result is `trace_one` of that core,
    yielded in the order of `cores`); by default they are traced here, one after the other. The stitching is the
    same either way, so the graph is too.
    """
    stats = {} if stats is None else stats
    pieces: list[Piece] = []
    rings: list = []
    nodes: dict[int, tuple[int, int, int]] = {}
    n_windows = 0
    cores = list(core_windows(width, height, params.tile_size))
    if map_windows is None:
        results: Iterator[WindowResult] = (trace_one(read, width, height, core, params) for core in cores)
    else:
        results = map_windows(cores)
    for p, r, nd, window_stats in results:
        merge_window_stats(stats, window_stats)
        pieces.extend(p)
        rings.extend(r)
        for k, v in nd.items():
            old = nodes.get(k)
            if old is not None and old != v:
                stats["node_mismatches"] = stats.get("node_mismatches", 0) + 1
            nodes.setdefault(k, v)
        n_windows += 1
        if progress is not None:
            progress(1)
    stats["windows"] = n_windows
    if stats.get("node_mismatches"):
        log.warning("%d junction(s) were seen differently by neighbouring windows (a larger --tile-size avoids "
                    "this)", stats["node_mismatches"])
    return stitch(width, height, pieces, rings, nodes, stats, consume)
