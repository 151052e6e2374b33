"""Graph metrics of a proposed road network against a truth network: APLS, TOPO, length-weighted P/R/F1.

All three work in plane geometry in metres: both graphs are projected into one local conformal metric CRS chosen
from the truth (`postprocess.geodesy.local_metric_crs`: the graphs' own CRS when it already is one, else UTM or a
transverse Mercator on the data), so EPSG:4326 or Web Mercator inputs are fine.

- `length_precision_recall`: precision = share of the proposal's length lying within `buffer_m` of the truth,
  recall = share of the truth's length within `buffer_m` of the proposal, F1 their harmonic mean. Lines are cut
  into pieces of at most `step_m` (0.5 m) and a piece counts when its midpoint is within the buffer.
- `apls`: the Average Path Length Similarity of Van Etten et al. (2018), SpaceNet 3, as implemented by CosmiQ's
  `apls` package: control points are the graph's nodes plus points every `spacing_m` (50 m) along its edges; each
  control point of the source graph is snapped onto the nearest edge of the target graph when within `snap_m`
  (4 m) and inserted there; for every ordered pair of control points whose source path is at least `min_path_m`
  (10 m) long the penalty is min(1, |L_source - L_target| / L_source), or 1 when either point did not snap or the
  target has no path; a direction scores 1 - mean penalty, and APLS is the harmonic mean of truth->proposal and
  proposal->truth (0 when either is 0). Differences from the reference code: pairs are sampled from at most
  `max_points` control points per graph (CosmiQ's "yuge" mode does the same with 500 nodes) and paths are computed
  with scipy's Dijkstra; ties and snapping to a node are handled by the same edge insertion.
- `topo`: the TOPO metric of Biagioni & Eriksson (2012) ("holes and marbles"): `n_seeds` random seed points on
  the truth; around each, the truth reachable within `radius_m` along the network carries holes every
  `interval_m`; the seed's nearest point on the proposal (within `hole_m`, else every hole of that seed is missed)
  starts the same exploration of the proposal, which carries marbles; marbles fill holes one-to-one within
  `hole_m` (greedily, nearest pairs first). Precision = filled / marbles, recall = filled / holes, summed over
  seeds; F1 their harmonic mean. Defaults follow CosmiQ's topo_metric (radius 150 m, hole 5 m) with holes every
  5 m instead of 30 m.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from postprocess.geodesy import geodesic_lengths, local_metric_crs, project_graph
from postprocess.roadgraph import RoadEdge, RoadGraph

_EPS = 1e-9  # scipy's sparse graphs drop explicit zeros: a zero-length link gets this weight


# ---- building graphs from lines ----------------------------------------------------------------------------------
def graph_from_lines(lines: Sequence[np.ndarray], crs_wkt: str, tolerance: float | None = None) -> RoadGraph:
    """A RoadGraph from polylines ((M, 2) in `crs_wkt`): nodes at line ends and at vertices shared between lines.

    Points closer than `tolerance` (CRS units; default 1e-7 degree or 1 cm) are the same node. Lines that cross
    without a shared vertex stay unconnected (a bridge). Lengths are geodesic metres.
    """
    from pyproj import CRS

    if tolerance is None:
        tolerance = 1e-7 if CRS.from_user_input(crs_wkt).is_geographic else 0.01
    lines = [np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in lines]
    lines = [c for c in lines if len(c) >= 2]

    def key(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] / tolerance)), int(round(p[1] / tolerance))

    count: dict[tuple[int, int], int] = {}
    for c in lines:
        ks = {key(p) for p in c}
        for k in ks:
            count[k] = count.get(k, 0) + 1
    ends = {key(c[0]) for c in lines} | {key(c[-1]) for c in lines}
    node_of: dict[tuple[int, int], int] = {}
    nodes: dict[int, tuple[float, float]] = {}

    def node(p: np.ndarray) -> int:
        k = key(p)
        if k not in node_of:
            node_of[k] = len(node_of) + 1
            nodes[node_of[k]] = (float(p[0]), float(p[1]))
        return node_of[k]

    pieces: list[tuple[int, int, np.ndarray]] = []
    for c in lines:
        cuts = [0] + [i for i in range(1, len(c) - 1) if key(c[i]) in ends or count.get(key(c[i]), 0) > 1] + \
               [len(c) - 1]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            seg = c[a:b + 1].copy()
            u, v = node(seg[0]), node(seg[-1])
            seg[0], seg[-1] = nodes[u], nodes[v]
            pieces.append((u, v, seg))
    lengths = geodesic_lengths(crs_wkt, [p[2] for p in pieces])
    edges = [RoadEdge(i + 1, u, v, seg, float(ln)) for i, ((u, v, seg), ln) in enumerate(zip(pieces, lengths,
                                                                                             strict=True))]
    return RoadGraph(crs_wkt=crs_wkt, nodes=nodes, edges=edges)


def read_graph(path: str | Path, layer: str | None = None) -> RoadGraph:
    """A RoadGraph from the (Multi)LineStrings of a vector file (GeoJSON, GPKG, shapefile...)."""
    import geopandas as gpd
    import shapely

    gdf = gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")
    geoms = gdf.geometry.explode(index_parts=False)
    geoms = geoms[geoms.geom_type == "LineString"]
    lines = [np.asarray(shapely.get_coordinates(g))[:, :2] for g in geoms]
    return graph_from_lines(lines, gdf.crs.to_wkt())


# ---- common frame ------------------------------------------------------------------------------------------------
def _sample_points(g: RoadGraph) -> np.ndarray:
    pts = [np.array(list(g.nodes.values()), dtype=np.float64).reshape(-1, 2)]
    pts += [np.asarray(e.coords, dtype=np.float64) for e in g.edges]
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def metric_pair(truth: RoadGraph, proposal: RoadGraph) -> tuple[RoadGraph, RoadGraph]:
    """Both graphs in one local metric CRS chosen from the truth (the proposal's when the truth is empty)."""
    ref = truth if (truth.edges or truth.nodes) else proposal
    dst = local_metric_crs(ref.crs_wkt, _sample_points(ref))
    return project_graph(truth, dst), project_graph(proposal, dst)


def _lines(g: RoadGraph) -> list:
    import shapely

    return [shapely.linestrings(np.asarray(e.coords, dtype=np.float64)) for e in g.edges if len(e.coords) >= 2]


# ---- length-weighted precision / recall ----------------------------------------------------------------------------
def _covered_length(src: list, ref: list, buffer_m: float, step_m: float) -> tuple[float, float]:
    """(length of `src` within buffer_m of `ref`, total length of `src`)."""
    import shapely

    if not src:
        return 0.0, 0.0
    total = float(sum(ln.length for ln in src))
    if not ref or total == 0:
        return 0.0, total
    tree = shapely.STRtree(ref)
    covered = 0.0
    for ln in src:
        n = max(1, int(math.ceil(ln.length / step_m)))
        mids = shapely.line_interpolate_point(ln, (np.arange(n) + 0.5) / n, normalized=True)
        idx = tree.query(mids, predicate="dwithin", distance=buffer_m)
        hit = np.zeros(n, dtype=bool)
        hit[np.unique(idx[0])] = True
        covered += float(ln.length) * int(hit.sum()) / n
    return float(covered), total


def length_precision_recall(truth: RoadGraph, proposal: RoadGraph, buffer_m: float = 5.0,
                            step_m: float = 0.5) -> dict:
    """Length-weighted precision, recall and F1 of `proposal` within `buffer_m` metres of `truth` (and back).

    precision is None when the proposal is empty, recall None when the truth is empty (F1 then 0).
    """
    t, p = metric_pair(truth, proposal)
    tl, pl = _lines(t), _lines(p)
    p_cov, p_tot = _covered_length(pl, tl, buffer_m, step_m)
    t_cov, t_tot = _covered_length(tl, pl, buffer_m, step_m)
    precision = float(p_cov / p_tot) if p_tot > 0 else None
    recall = float(t_cov / t_tot) if t_tot > 0 else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "buffer_m": buffer_m,
            "truth_length_m": t_tot, "proposal_length_m": p_tot, "truth_matched_m": t_cov,
            "proposal_matched_m": p_cov}


# ---- network helper ------------------------------------------------------------------------------------------------
class _Net:
    """Edges of a metric graph as shapely lines, with point insertion and shortest paths."""

    def __init__(self, g: RoadGraph) -> None:
        import shapely

        self.node_ids = list(g.nodes)
        self.index = {n: i for i, n in enumerate(self.node_ids)}
        self.node_xy = np.array([g.nodes[n] for n in self.node_ids], dtype=np.float64).reshape(-1, 2)
        edges = [e for e in g.edges if len(e.coords) >= 2]
        self.u = np.array([self.index[e.u] for e in edges], dtype=np.int64)
        self.v = np.array([self.index[e.v] for e in edges], dtype=np.int64)
        self.lines = [shapely.linestrings(np.asarray(e.coords, dtype=np.float64)) for e in edges]
        self.length = np.array([ln.length for ln in self.lines], dtype=np.float64)
        self.tree = shapely.STRtree(self.lines) if self.lines else None

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    def snap(self, pts: np.ndarray, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
        """(edge index or -1, arc position) of the nearest edge point within max_dist of each point."""
        import shapely

        n = len(pts)
        edge = np.full(n, -1, dtype=np.int64)
        arc = np.zeros(n)
        if self.tree is None or n == 0:
            return edge, arc
        geoms = shapely.points(pts)
        idx, _d = self.tree.query_nearest(geoms, max_distance=max_dist, return_distance=True, all_matches=False)
        if idx.size:
            pi, ei = idx[0], idx[1]
            edge[pi] = ei
            arc[pi] = shapely.line_locate_point(np.array(self.lines, dtype=object)[ei], geoms[pi])
        return edge, arc

    def augmented(self, edge: np.ndarray, arc: np.ndarray):
        """(CSR adjacency, node index of each inserted point or -1) with points inserted at (edge, arc)."""
        from scipy.sparse import coo_matrix

        n0 = self.n_nodes
        ok = edge >= 0
        ins_id = np.full(len(edge), -1, dtype=np.int64)
        ins_id[ok] = n0 + np.arange(int(ok.sum()))
        src, dst, w = [], [], []
        by_edge: dict[int, list[int]] = {}
        for k in np.flatnonzero(ok):
            by_edge.setdefault(int(edge[k]), []).append(int(k))
        for j in range(len(self.lines)):
            ks = by_edge.get(j)
            if not ks:
                src.append(self.u[j])
                dst.append(self.v[j])
                w.append(self.length[j])
                continue
            ks = sorted(ks, key=lambda k: arc[k])
            chain = [int(self.u[j])] + [int(ins_id[k]) for k in ks] + [int(self.v[j])]
            pos = [0.0] + [float(np.clip(arc[k], 0, self.length[j])) for k in ks] + [float(self.length[j])]
            for a in range(len(chain) - 1):
                src.append(chain[a])
                dst.append(chain[a + 1])
                w.append(pos[a + 1] - pos[a])
        n = n0 + int(ok.sum())
        if not src:
            return coo_matrix((n, n)).tocsr(), ins_id
        s = np.asarray(src, dtype=np.int64)
        d = np.asarray(dst, dtype=np.int64)
        ww = np.maximum(np.asarray(w, dtype=np.float64), _EPS)
        keep = s != d
        s, d, ww = s[keep], d[keep], ww[keep]
        a, b = np.minimum(s, d), np.maximum(s, d)
        order = np.lexsort((ww, b, a))
        a, b, ww = a[order], b[order], ww[order]
        first = np.ones(len(a), dtype=bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        a, b, ww = a[first], b[first], ww[first]  # the shortest of parallel edges
        m = coo_matrix((np.concatenate([ww, ww]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))
        return m.tocsr(), ins_id


def _control_points(net: _Net, spacing_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Control points of a graph: (xy, edge, arc, node) of its nodes (edge -1, node index) and of points every
    spacing_m along its edges (node -1)."""
    import shapely

    xy = [net.node_xy]
    edge = [np.full(net.n_nodes, -1, dtype=np.int64)]
    arc = [np.zeros(net.n_nodes)]
    node = [np.arange(net.n_nodes, dtype=np.int64)]
    for j, ln in enumerate(net.lines):
        L = net.length[j]
        if spacing_m >= L:
            continue
        s = np.arange(spacing_m, L - 1e-9, spacing_m)
        if s.size == 0:
            continue
        pts = shapely.get_coordinates(shapely.line_interpolate_point(ln, s))
        xy.append(pts)
        edge.append(np.full(len(s), j, dtype=np.int64))
        arc.append(s)
        node.append(np.full(len(s), -1, dtype=np.int64))
    return np.concatenate(xy), np.concatenate(edge), np.concatenate(arc), np.concatenate(node)


def _apls_one_way(src: _Net, dst: _Net, spacing_m: float, snap_m: float, min_path_m: float, max_points: int,
                  rng: np.random.Generator) -> tuple[float, int]:
    """1 - mean path penalty from `src` control points snapped onto `dst`; and the number of paths."""
    from scipy.sparse.csgraph import dijkstra

    xy, edge, arc, node = _control_points(src, spacing_m)
    if len(xy) == 0:
        return 0.0, 0
    if len(xy) > max_points:
        pick = np.sort(rng.choice(len(xy), size=max_points, replace=False))
        xy, edge, arc, node = xy[pick], edge[pick], arc[pick], node[pick]
    # source distances: node control points are the nodes themselves, the others are inserted on their edge
    adj_s, ins_s = src.augmented(edge, arc)
    ids_s = np.where(edge >= 0, ins_s, node)
    d_src = dijkstra(adj_s, directed=False, indices=ids_s)[:, ids_s]
    # target: snap and insert
    t_edge, t_arc = dst.snap(xy, snap_m)
    adj_t, ins_t = dst.augmented(t_edge, t_arc)
    snapped = ins_t >= 0
    d_dst = np.full_like(d_src, np.inf)
    if snapped.any():
        rows = dijkstra(adj_t, directed=False, indices=ins_t[snapped])[:, ins_t[snapped]]
        sidx = np.flatnonzero(snapped)
        d_dst[np.ix_(sidx, sidx)] = rows
    n = len(xy)
    off = ~np.eye(n, dtype=bool)
    valid = off & np.isfinite(d_src) & (d_src >= min_path_m)
    if not valid.any():
        return 0.0, 0
    ls, lt = d_src[valid], d_dst[valid]
    pen = np.where(np.isfinite(lt), np.minimum(1.0, np.abs(ls - lt) / ls), 1.0)
    return float(1.0 - pen.mean()), int(valid.sum())


def apls(truth: RoadGraph, proposal: RoadGraph, spacing_m: float = 50.0, snap_m: float = 4.0,
         min_path_m: float = 10.0, max_points: int = 1000, seed: int = 0) -> dict:
    """APLS (SpaceNet/CosmiQ definition, see the module docstring): {"apls", "truth_to_proposal",
    "proposal_to_truth", "n_paths_truth", "n_paths_proposal"}."""
    t, p = metric_pair(truth, proposal)
    nt, npp = _Net(t), _Net(p)
    rng = np.random.default_rng(seed)
    a, na = _apls_one_way(nt, npp, spacing_m, snap_m, min_path_m, max_points, rng)
    b, nb = _apls_one_way(npp, nt, spacing_m, snap_m, min_path_m, max_points, rng)
    total = 0.0 if (a <= 0 or b <= 0) else 2.0 * a * b / (a + b)
    return {"apls": total, "truth_to_proposal": a, "proposal_to_truth": b, "n_paths_truth": na,
            "n_paths_proposal": nb, "spacing_m": spacing_m, "snap_m": snap_m}


# ---- TOPO ----------------------------------------------------------------------------------------------------------
def _points_within(net: _Net, adj, edge: int, arc: float, radius: float, interval: float) -> np.ndarray:
    """Points every ~interval metres along the part of `net` within network distance `radius` of (edge, arc)."""
    import shapely
    from scipy.sparse.csgraph import dijkstra

    L0 = net.length[edge]
    u0, v0 = int(net.u[edge]), int(net.v[edge])
    dist = dijkstra(adj, directed=False, indices=[u0, v0], limit=radius + L0)
    du = np.minimum(dist[0] + arc, dist[1] + (L0 - arc))  # seed -> every node
    out = []
    for j, ln in enumerate(net.lines):
        L = net.length[j]
        a, b = du[net.u[j]], du[net.v[j]]
        if j != edge and not (np.isfinite(a) and a < radius) and not (np.isfinite(b) and b < radius):
            continue
        n = max(1, int(math.ceil(L / interval)))
        s = (np.arange(n) + 0.5) * L / n
        d = np.minimum(a + s, b + (L - s))
        if j == edge:
            d = np.minimum(d, np.abs(s - arc))
        keep = d <= radius
        if keep.any():
            out.append(shapely.get_coordinates(shapely.line_interpolate_point(ln, s[keep])))
    return np.concatenate(out) if out else np.zeros((0, 2))


def _match_count(holes: np.ndarray, marbles: np.ndarray, tol: float) -> int:
    """One-to-one matches of marbles to holes within `tol`, nearest pairs first."""
    from scipy.spatial import cKDTree

    if len(holes) == 0 or len(marbles) == 0:
        return 0
    sdm = cKDTree(marbles).sparse_distance_matrix(cKDTree(holes), tol, output_type="ndarray")
    if len(sdm) == 0:
        return 0
    order = np.lexsort((sdm["j"], sdm["i"], sdm["v"]))
    used_m: set[int] = set()
    used_h: set[int] = set()
    for k in order:
        i, j = int(sdm["i"][k]), int(sdm["j"][k])
        if i in used_m or j in used_h:
            continue
        used_m.add(i)
        used_h.add(j)
    return len(used_m)


@dataclass
class _TopoCounts:
    matched: int = 0
    holes: int = 0
    marbles: int = 0


def topo(truth: RoadGraph, proposal: RoadGraph, n_seeds: int = 50, radius_m: float = 150.0,
         interval_m: float = 5.0, hole_m: float = 5.0, seed: int = 0) -> dict:
    """TOPO precision/recall/F1 (holes on the truth, marbles on the proposal; see the module docstring)."""
    import shapely

    t, p = metric_pair(truth, proposal)
    nt, npp = _Net(t), _Net(p)
    counts = _TopoCounts()
    if not nt.lines:
        return {"precision": None, "recall": None, "f1": 0.0, "n_seeds": 0}
    adj_t, _ = nt.augmented(np.zeros(0, dtype=np.int64), np.zeros(0))
    adj_p, _ = npp.augmented(np.zeros(0, dtype=np.int64), np.zeros(0))
    rng = np.random.default_rng(seed)
    w = nt.length / nt.length.sum()
    for _ in range(n_seeds):
        j = int(rng.choice(len(nt.lines), p=w))
        s = float(rng.uniform(0, nt.length[j]))
        holes = _points_within(nt, adj_t, j, s, radius_m, interval_m)
        counts.holes += len(holes)
        sxy = shapely.get_coordinates(shapely.line_interpolate_point(nt.lines[j], s))
        pe, pa = npp.snap(sxy, hole_m)
        if pe[0] < 0:
            continue
        marbles = _points_within(npp, adj_p, int(pe[0]), float(pa[0]), radius_m, interval_m)
        counts.marbles += len(marbles)
        counts.matched += _match_count(holes, marbles, hole_m)
    precision = counts.matched / counts.marbles if counts.marbles else None
    recall = counts.matched / counts.holes if counts.holes else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n_seeds": n_seeds, "holes": counts.holes,
            "marbles": counts.marbles, "matched": counts.matched, "radius_m": radius_m, "hole_m": hole_m}


def graph_metrics(truth: RoadGraph, proposal: RoadGraph, buffer_m: float = 5.0, seed: int = 0) -> dict:
    """APLS, TOPO and length-weighted precision/recall/F1 in one dict (for metrics.json)."""
    return {"apls": apls(truth, proposal, seed=seed), "topo": topo(truth, proposal, seed=seed),
            "length": length_precision_recall(truth, proposal, buffer_m=buffer_m)}
