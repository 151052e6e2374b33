"""Conflation of a proposed road graph with an existing OSM extract.

What it does, and why:
- A proposed segment that mostly runs along an existing highway is not proposed again: when at least
  `dup_fraction` (70 %) of its length lies within `dup_distance_m` (8 m) of an existing highway running the same
  way (within `dup_angle_deg`, 30 degrees) it is dropped. 8 m is half the width of a wide road plus the usual
  misregistration between aerial imagery and OSM (a few metres); 70 % leaves room for the skeleton's wiggles
  at junctions. The direction test keeps a new road that merely crosses or ends on an existing one from being
  counted as lying "along" it.
- A segment that overlaps an existing highway over a real stretch (at least `min_overlap_m`, 10 m, so that
  the near-contact at a crossing does not count) but not mostly is cut to its new parts; new parts shorter than
  `min_new_length_m` (15 m, about a road width plus the duplicate distance: the fragments a wiggling centreline
  leaves beside an existing road) are dropped.
- A proposed dead end (or a node that lost edges to the above, i.e. a junction lying on an existing road) within
  `snap_distance_m` (10 m) of an existing OSM node of a vehicle road is moved onto that node and tagged with
  its id, version and tags in `graph.node_attrs`, so the .osc ties the new way to the existing network. Nothing
  fancier (no splitting existing ways): a change file that modifies existing ways needs a human anyway.

Distances are measured in a local metric frame (see `postprocess.georef`). Existing highways are read with
pyosmium in two filtered passes (highway ways, then only their nodes), so a large extract costs little memory.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from postprocess.georef import XYTransform, densify, from_lonlat_transform, graph_metric_transform, polyline_lengths
from postprocess.roadgraph import RoadEdge, RoadGraph

# highway=* values that are not roads on the ground (or not lines of travel): never read.
EXCLUDED_HIGHWAYS = frozenset({"proposed", "abandoned", "razed", "disused", "platform", "bus_stop", "elevator",
                               "corridor", "emergency_bay", "rest_area", "services"})
# highway=* values a new vehicle road must not be joined to (they still count when looking for duplicates:
# a proposed line on top of a mapped footway or track is already mapped).
NON_VEHICLE_HIGHWAYS = frozenset({"footway", "path", "steps", "cycleway", "bridleway", "pedestrian", "via_ferrata"})


@dataclass
class ExistingWay:
    """One highway way of the extract."""

    id: int
    version: int
    nodes: list[int]
    tags: dict[str, str]


@dataclass
class ExistingOSM:
    """Highway ways of an OSM extract with the nodes they use (lon/lat degrees, versions, tags)."""

    nodes: dict[int, tuple[float, float]] = field(default_factory=dict)  # id -> (lon, lat)
    node_versions: dict[int, int] = field(default_factory=dict)  # 0 when the file carries no versions
    node_tags: dict[int, dict[str, str]] = field(default_factory=dict)  # only nodes that have tags
    ways: list[ExistingWay] = field(default_factory=list)
    source: str = ""

    def way_lines(self) -> list[tuple[int, np.ndarray]]:
        """(way index, (N, 2) lon/lat) for each run of a way's nodes present in the file (extract cuts split)."""
        out: list[tuple[int, np.ndarray]] = []
        for wi, w in enumerate(self.ways):
            run: list[tuple[float, float]] = []
            for nid in w.nodes:
                ll = self.nodes.get(nid)
                if ll is None:
                    if len(run) >= 2:
                        out.append((wi, np.array(run)))
                    run = []
                else:
                    run.append(ll)
            if len(run) >= 2:
                out.append((wi, np.array(run)))
        return out


def read_existing_osm(path: str | Path, exclude_highways: Iterable[str] = EXCLUDED_HIGHWAYS,
                      bbox: tuple[float, float, float, float] | None = None) -> ExistingOSM:
    """Highway ways (and their nodes) of an .osm / .osm.pbf / .osm.bz2 file. Raises ValueError on a bad file.

    `bbox` (lon_min, lat_min, lon_max, lat_max) keeps only ways with a node inside it (with all their nodes),
    so that a country extract costs little downstream for a city-sized grid.
    """
    import osmium
    import osmium.filter

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such OSM file")
    excluded = set(exclude_highways)
    ways: list[ExistingWay] = []
    needed: set[int] = set()
    try:
        fp = osmium.FileProcessor(str(path), osmium.osm.WAY).with_filter(osmium.filter.KeyFilter("highway"))
        for w in fp:
            tags = {t.k: t.v for t in w.tags}
            if tags.get("highway", "") in excluded or tags.get("area") == "yes":
                continue
            ids = [int(n.ref) for n in w.nodes]
            if len(ids) < 2:
                continue
            ways.append(ExistingWay(int(w.id), int(w.version), ids, tags))
            needed.update(ids)
        out = ExistingOSM(ways=ways, source=str(path))
        if needed:
            fp = osmium.FileProcessor(str(path), osmium.osm.NODE).with_filter(osmium.filter.IdFilter(needed))
            for n in fp:
                loc = n.location
                if not loc.valid():
                    continue
                out.nodes[int(n.id)] = (float(loc.lon), float(loc.lat))
                out.node_versions[int(n.id)] = int(n.version)
                if len(n.tags):
                    out.node_tags[int(n.id)] = {t.k: t.v for t in n.tags}
    except RuntimeError as exc:  # libosmium's parse errors
        raise ValueError(f"{path}: not a readable OSM file ({exc})") from exc
    if bbox is not None:
        x0, y0, x1, y1 = bbox

        def inside(n: int) -> bool:
            ll = out.nodes.get(n)
            return ll is not None and x0 <= ll[0] <= x1 and y0 <= ll[1] <= y1

        out.ways = [w for w in out.ways if any(inside(n) for n in w.nodes)]
        used = {n for w in out.ways for n in w.nodes}
        out.nodes = {n: ll for n, ll in out.nodes.items() if n in used}
        out.node_versions = {n: v for n, v in out.node_versions.items() if n in used}
        out.node_tags = {n: t for n, t in out.node_tags.items() if n in used}
    return out


def existing_lines_in_crs(existing: ExistingOSM, crs_wkt: str) -> list[np.ndarray]:
    """The extract's highway lines as (N, 2) arrays in a graph's CRS (for drawing and for verification)."""
    lines = existing.way_lines()
    if not lines:
        return []
    to_grid = from_lonlat_transform(crs_wkt)
    allp = np.concatenate([ll for _, ll in lines])
    gx, gy = to_grid(allp[:, 0], allp[:, 1])
    out, i = [], 0
    for _, ll in lines:
        out.append(np.column_stack([gx[i:i + len(ll)], gy[i:i + len(ll)]]))
        i += len(ll)
    return out


@dataclass
class ConflationSummary:
    """What conflation did: counts and lengths (metres)."""

    n_existing_ways: int = 0
    n_proposed: int = 0
    length_proposed_m: float = 0.0
    n_duplicates: int = 0  # dropped entirely (already mapped)
    length_duplicates_m: float = 0.0
    n_cut: int = 0  # partly mapped: cut to their new parts
    n_cut_pieces: int = 0
    length_cut_removed_m: float = 0.0
    n_kept: int = 0  # edges in the output graph (cut pieces included)
    length_kept_m: float = 0.0
    n_snapped: int = 0  # graph nodes moved onto an existing OSM node
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _undirected_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest angle (radians, 0..pi/2) between two undirected directions."""
    d = np.mod(a - b, np.pi)
    return np.minimum(d, np.pi - d)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive True values."""
    if flags.size == 0:
        return []
    f = np.concatenate([[False], flags, [False]]).astype(np.int8)
    d = np.diff(f)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def _substring(coords: np.ndarray, cum: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """Part of a polyline between arc lengths s0 < s1 (cum: arc length of each vertex, in metres)."""
    inner = (cum > s0) & (cum < s1)
    x0, y0 = np.interp(s0, cum, coords[:, 0]), np.interp(s0, cum, coords[:, 1])
    x1, y1 = np.interp(s1, cum, coords[:, 0]), np.interp(s1, cum, coords[:, 1])
    return np.vstack([[x0, y0], coords[inner], [x1, y1]])


def _copy_graph(graph: RoadGraph) -> RoadGraph:
    return RoadGraph(
        crs_wkt=graph.crs_wkt,
        nodes=dict(graph.nodes),
        edges=[RoadEdge(e.id, e.u, e.v, np.array(e.coords, dtype=np.float64, copy=True), float(e.length_m),
                        float(e.confidence), copy.deepcopy(e.attrs)) for e in graph.edges],
        node_attrs=copy.deepcopy(graph.node_attrs),
    )


def conflate(
    graph: RoadGraph,
    existing: ExistingOSM,
    to_metric: XYTransform | None = None,
    *,
    dup_distance_m: float = 8.0,
    dup_fraction: float = 0.7,
    dup_angle_deg: float = 30.0,
    min_overlap_m: float = 10.0,
    min_new_length_m: float = 15.0,
    snap_distance_m: float = 10.0,
    snap_exclude_highways: Iterable[str] = NON_VEHICLE_HIGHWAYS,
) -> tuple[RoadGraph, ConflationSummary]:
    """Drop proposed segments already in `existing`, cut partly mapped ones, snap dead ends to existing nodes.

    `to_metric` maps grid-CRS arrays (x, y) to a local frame in metres (default: `graph_metric_transform`).
    Returns a new graph (the input is not modified) and a summary.
    """
    for name, val in (("dup_distance_m", dup_distance_m), ("min_overlap_m", min_overlap_m),
                      ("min_new_length_m", min_new_length_m), ("snap_distance_m", snap_distance_m)):
        if not (math.isfinite(val) and val >= 0):
            raise ValueError(f"{name}: must be a number >= 0, got {val}")
    if not 0.0 < dup_fraction <= 1.0:
        raise ValueError(f"dup_fraction: must be in (0, 1], got {dup_fraction}")
    params = {"dup_distance_m": dup_distance_m, "dup_fraction": dup_fraction, "dup_angle_deg": dup_angle_deg,
              "min_overlap_m": min_overlap_m, "min_new_length_m": min_new_length_m,
              "snap_distance_m": snap_distance_m}
    out = _copy_graph(graph)
    summary = ConflationSummary(n_existing_ways=len(existing.ways), n_proposed=len(graph.edges),
                                length_proposed_m=graph.total_length_m, params=params)
    if to_metric is None:
        to_metric = graph_metric_transform(graph)
    if not out.edges:
        return out, summary

    # ---- existing highways in grid CRS and metres ------------------------------------------------------------
    node_ids = np.array(list(existing.nodes.keys()), dtype=np.int64)
    ll = np.array(list(existing.nodes.values()), dtype=np.float64).reshape(-1, 2)
    if node_ids.size:
        gx, gy = from_lonlat_transform(graph.crs_wkt)(ll[:, 0], ll[:, 1])
        mx, my = to_metric(gx, gy)
    else:
        gx = gy = mx = my = np.empty(0)
    index_of = {int(n): i for i, n in enumerate(node_ids.tolist())}

    # proposed edges densified, in metres
    step = max(0.25, min(2.0, dup_distance_m / 4.0))
    cums, pieces_start, pieces_end, arcs = [], [], [], []
    allc = np.concatenate([e.coords for e in out.edges])
    ax_, ay_ = to_metric(allc[:, 0], allc[:, 1])
    split = np.cumsum([len(e.coords) for e in out.edges])[:-1]
    for m in np.split(np.column_stack([ax_, ay_]), split):
        cums.append(polyline_lengths(m))
        s, t, arc = densify(m, step)
        pieces_start.append(s)
        pieces_end.append(t)
        arcs.append(arc)
    ps = np.concatenate(pieces_start)
    pe = np.concatenate(pieces_end)
    covered = np.zeros(len(ps), dtype=bool)

    segs_a, segs_b = _existing_segments(existing, index_of, mx, my)
    if len(segs_a) and len(ps):
        covered = _covered_pieces(ps, pe, segs_a, segs_b, dup_distance_m, math.radians(dup_angle_deg))

    # ---- drop / cut edge by edge -------------------------------------------------------------------------------
    next_node = max(out.nodes, default=-1) + 1
    next_edge = max((e.id for e in out.edges), default=-1) + 1
    deg_before = out.degree()
    new_edges: list[RoadEdge] = []
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in pieces_start])])
    for k, e in enumerate(out.edges):
        c = covered[offsets[k]:offsets[k + 1]].copy()
        arc = arcs[k]
        total = float(arc[-1])
        if total <= 0 or not c.any():
            new_edges.append(e)
            continue
        pl = np.diff(arc)
        for a, b in _runs(c):  # brief contacts (crossings, junction corners) are not overlaps...
            whole = a == 0 and b == len(c)  # ...but a short segment lying along a mapped road all the way is one
            if pl[a:b].sum() < min_overlap_m and not whole:
                c[a:b] = False
        covered_len = float(pl[c].sum())
        if covered_len <= 0:
            new_edges.append(e)
            continue
        if covered_len / total >= dup_fraction:
            summary.n_duplicates += 1
            summary.length_duplicates_m += float(e.length_m)
            continue
        keep = [(float(arc[a]), float(arc[b])) for a, b in _runs(~c) if arc[b] - arc[a] >= min_new_length_m]
        if not keep:
            summary.n_duplicates += 1
            summary.length_duplicates_m += float(e.length_m)
            continue
        summary.n_cut += 1
        cum = cums[k]
        scale = e.length_m / cum[-1] if cum[-1] > 0 else 1.0
        kept_len = 0.0
        for j, (s0, s1) in enumerate(keep):
            coords = _substring(e.coords, cum, s0, s1)
            u = e.u if s0 <= 1e-9 else None
            v = e.v if s1 >= cum[-1] - 1e-9 else None
            if u is None:
                u = next_node
                out.nodes[u] = (float(coords[0, 0]), float(coords[0, 1]))
                next_node += 1
            if v is None:
                v = next_node
                out.nodes[v] = (float(coords[-1, 0]), float(coords[-1, 1]))
                next_node += 1
            attrs = copy.deepcopy(e.attrs)
            attrs.update({"conflation": "cut", "cut_from": e.id})
            eid = e.id if j == 0 else next_edge
            if j > 0:
                next_edge += 1
            piece_len = float((s1 - s0) * scale)
            kept_len += piece_len
            new_edges.append(RoadEdge(eid, u, v, coords, piece_len, e.confidence, attrs))
            summary.n_cut_pieces += 1
        summary.length_cut_removed_m += float(e.length_m - kept_len)
    out.edges = new_edges

    deg_after = out.degree()
    for n in [n for n, d in deg_after.items() if d == 0 and deg_before.get(n, 0) > 0]:
        del out.nodes[n]
        out.node_attrs.pop(n, None)

    # ---- snapping ------------------------------------------------------------------------------------------------
    if node_ids.size and snap_distance_m > 0:
        summary.n_snapped = _snap(out, existing, node_ids, gx, gy, mx, my, to_metric, deg_before,
                                  snap_distance_m, set(snap_exclude_highways))
    summary.n_kept = len(out.edges)
    summary.length_kept_m = out.total_length_m
    return out, summary


def _existing_segments(existing: ExistingOSM, index_of: dict[int, int], mx: np.ndarray,
                       my: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points (metres) of every consecutive node pair of every way (both nodes present)."""
    a_idx, b_idx = [], []
    for w in existing.ways:
        idx = np.array([index_of.get(n, -1) for n in w.nodes], dtype=np.int64)
        ok = (idx[:-1] >= 0) & (idx[1:] >= 0)
        a_idx.append(idx[:-1][ok])
        b_idx.append(idx[1:][ok])
    if not a_idx:
        return np.empty((0, 2)), np.empty((0, 2))
    ai, bi = np.concatenate(a_idx), np.concatenate(b_idx)
    return np.column_stack([mx[ai], my[ai]]), np.column_stack([mx[bi], my[bi]])


def _covered_pieces(ps: np.ndarray, pe: np.ndarray, sa: np.ndarray, sb: np.ndarray, dist: float,
                    max_angle: float) -> np.ndarray:
    """Whether each proposed piece's midpoint lies within `dist` of an existing segment running the same way."""
    import shapely

    # keep only existing segments near the proposal (cheap bbox test) before building the tree
    lo = np.minimum(ps.min(axis=0), pe.min(axis=0)) - dist
    hi = np.maximum(ps.max(axis=0), pe.max(axis=0)) + dist
    near = np.all((np.minimum(sa, sb) <= hi) & (np.maximum(sa, sb) >= lo), axis=1)
    sa, sb = sa[near], sb[near]
    covered = np.zeros(len(ps), dtype=bool)
    if len(sa) == 0:
        return covered
    tree = shapely.STRtree(shapely.linestrings(np.stack([sa, sb], axis=1)))
    mid = (ps + pe) / 2.0
    pi_, si = tree.query(shapely.points(mid), predicate="dwithin", distance=dist)
    if pi_.size == 0:
        return covered
    pd = pe - ps
    sd = sb - sa
    ang_p = np.arctan2(pd[pi_, 1], pd[pi_, 0])
    ang_s = np.arctan2(sd[si, 1], sd[si, 0])
    ok = _undirected_diff(ang_p, ang_s) <= max_angle
    covered[pi_[ok]] = True
    return covered


def _snap(graph: RoadGraph, existing: ExistingOSM, node_ids: np.ndarray, gx: np.ndarray, gy: np.ndarray,
          mx: np.ndarray, my: np.ndarray, to_metric: XYTransform, deg_before: dict[int, int], snap_distance_m: float,
          excluded: set[str]) -> int:
    """Move dead ends (and junctions that lost edges) onto the nearest existing vehicle-road node in reach."""
    from scipy.spatial import cKDTree

    snappable_ids: set[int] = set()
    for w in existing.ways:
        if w.tags.get("highway", "") not in excluded:
            snappable_ids.update(w.nodes)
    cand_idx = np.array([i for i, n in enumerate(node_ids.tolist()) if n > 0 and n in snappable_ids],
                        dtype=np.int64)
    if cand_idx.size == 0:
        return 0
    tree = cKDTree(np.column_stack([mx[cand_idx], my[cand_idx]]))

    deg = graph.degree()
    todo = [n for n, d in deg.items()
            if d >= 1 and (d == 1 or d < deg_before.get(n, d)) and "osm_id" not in graph.node_attrs.get(n, {})]
    if not todo:
        return 0
    pts = np.array([graph.nodes[n] for n in todo], dtype=np.float64)
    px, py = to_metric(pts[:, 0], pts[:, 1])
    dist, j = tree.query(np.column_stack([px, py]), distance_upper_bound=snap_distance_m)
    taken: dict[int, int] = {n_attrs["osm_id"]: n for n, n_attrs in graph.node_attrs.items() if "osm_id" in n_attrs}
    neighbours: dict[int, set[int]] = {}
    for e in graph.edges:
        neighbours.setdefault(e.u, set()).add(e.v)
        neighbours.setdefault(e.v, set()).add(e.u)
    snapped = 0
    moved: dict[int, int] = {}  # graph node -> graph node it was merged into
    for order in np.argsort(dist, kind="stable"):
        if not np.isfinite(dist[order]):
            break
        n = todo[int(order)]
        ci = int(cand_idx[int(j[order])])
        osm_id = int(node_ids[ci])
        if osm_id in taken:  # another proposed node already sits there: merge unless that makes a self-loop
            target = taken[osm_id]
            if target in neighbours.get(n, set()):
                continue
            moved[n] = target
            neighbours.setdefault(target, set()).update(neighbours.pop(n, set()))
            snapped += 1
            continue
        graph.nodes[n] = (float(gx[ci]), float(gy[ci]))
        version = existing.node_versions.get(osm_id, 0)
        lon, lat = existing.nodes[osm_id]
        tags = dict(existing.node_tags.get(osm_id, {}))
        # lon/lat exactly as in the extract (no round trip through the grid CRS), tags under both names the
        # writers may read: an existing node written without its tags would delete them if uploaded
        graph.node_attrs[n] = {"osm_id": osm_id, "osm_version": version if version > 0 else None,
                               "osm_tags": tags, "tags": dict(tags), "lon": lon, "lat": lat}
        taken[osm_id] = n
        snapped += 1
    if not snapped:
        return 0
    for n in moved:
        del graph.nodes[n]
        graph.node_attrs.pop(n, None)
    for e in graph.edges:
        u, v = moved.get(e.u, e.u), moved.get(e.v, e.v)
        changed = False
        old = e.coords.copy()
        if "osm_id" in graph.node_attrs.get(u, {}):
            e.coords[0] = graph.nodes[u]
            e.attrs["osm_node_u"] = graph.node_attrs[u]["osm_id"]
            changed = True
        if "osm_id" in graph.node_attrs.get(v, {}):
            e.coords[-1] = graph.nodes[v]
            e.attrs["osm_node_v"] = graph.node_attrs[v]["osm_id"]
            changed = True
        e.u, e.v = u, v
        if changed:
            ox, oy = to_metric(old[:, 0], old[:, 1])
            nx_, ny_ = to_metric(e.coords[:, 0], e.coords[:, 1])
            lo = polyline_lengths(np.column_stack([ox, oy]))[-1]
            ln = polyline_lengths(np.column_stack([nx_, ny_]))[-1]
            if lo > 0:
                e.length_m = float(e.length_m * ln / lo)
    return snapped
