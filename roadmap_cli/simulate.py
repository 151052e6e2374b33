"""Crowdsourced GPS simulator (paper §3): taxis driving shortest-path trips on a road network.

What it reproduces, and how:

- uneven traffic: trips run between a limited set of "places" drawn with weights that favour arterial roads
  and the network's entry points, along routes that penalise minor streets; arterials get orders of magnitude
  more samples than residential streets, and some streets (plus a fraction of "closed" minor ones) get none;
- per-vehicle receiver settings drawn from a profile: sampling interval (Beijing modes 10/60/180/300 s,
  Shanghai 16/61 s, or given), coordinate resolution (1e-5, 1/60000 or 1e-4 degree), speed resolution (1 or
  2 km/h) and bearing resolution (Table 1 of the paper); small timing jitter and missed fixes;
- motion: speeds by road class with per-vehicle and per-trip factors, stops at junctions, dwell at trip ends,
  vehicles in lanes to the right of the centreline, leaving through the network's dead ends at its border
  and coming back later;
- errors: isotropic Gaussian noise (σ metres per axis), rare multipath outliers tens of metres off, an optional
  zone of systematic bias, clusters of waiting taxis off the road (taxi stands).

Every vehicle's day is one piecewise-linear timeline (vertex times from segment lengths and speeds, stops as
repeated vertices), sampled with `np.searchsorted` at its sampling clock: no per-sample Python.
`simulate()` returns a DataFrame with an internal `kind` column (road | outlier | wait | bias) that
`write_gps_csv` drops; same seed, same bytes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from roadmap_cli.errors import RoadmapError
from roadmap_cli.labels import lane_counts, parse_number

CSV_COLUMNS = ["vehicle_id", "timestamp", "lat", "lon", "speed", "bearing"]
KINDS = ("road", "outlier", "wait", "bias")
_ROAD, _WAIT, _GAP = 0, 2, 9

# ---- road classes ------------------------------------------------------------------------------------------------
# rank: 0 motorway/trunk, 1 primary, 2 secondary/tertiary, 3 residential/unclassified, 4 service/track, 5 no cars.
RANK_IMPORTANCE = np.array([100.0, 40.0, 10.0, 1.0, 0.3, 0.0])
RANK_PENALTY = np.array([1.0, 1.0, 1.3, 2.2, 4.0, np.inf])  # routing cost multiplier on travel time
RANK_SPEED_KMH = np.array([90.0, 55.0, 45.0, 30.0, 15.0, 0.0])
RANK_ATTRACTION = np.array([3.0, 10.0, 5.0, 0.5, 0.25, 0.0])  # trip ends per metre of road, relative
GATEWAY_WEIGHT = 100.0  # through traffic at an entry point, per unit of its road's importance
POPULARITY_SIGMA = 1.0  # spread (log) of how popular places are
PLACE_EXPONENT = 0.5  # places (a subset of nodes: the rest see no trip ends) are drawn with weight**this
ROUTE_CACHE_SIZE = 20000  # routes kept between trips
OSM_RANK = {
    "motorway": 0, "motorway_link": 0, "trunk": 0, "trunk_link": 0,
    "primary": 1, "primary_link": 1,
    "secondary": 2, "secondary_link": 2, "tertiary": 2, "tertiary_link": 2,
    "residential": 3, "unclassified": 3, "living_street": 3, "road": 3, "busway": 3,
    "service": 4, "track": 4,
    "footway": 5, "path": 5, "cycleway": 5, "pedestrian": 5, "steps": 5, "bridleway": 5, "corridor": 5,
    "proposed": 5, "construction": 5, "platform": 5, "elevator": 5, "raceway": 5,
}
# SpaceNet road_type: 1 motorway, 2 primary, 3 secondary, 4 tertiary, 5 residential, 6 unclassified, 7 cart track.
SPACENET_RANK = {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4}


def road_ranks(gdf) -> np.ndarray:
    """Road class rank per feature from OSM `highway`, SpaceNet `road_type`, or speed / lane attributes.

    Without any of them every road is rank 3 (all equal)."""
    n = len(gdf)
    rank = np.full(n, -1, dtype=np.int64)
    if "highway" in gdf.columns:
        for i, v in enumerate(gdf["highway"].tolist()):
            if isinstance(v, str) and v:
                rank[i] = OSM_RANK.get(v, 3)
    if "road_type" in gdf.columns:
        for i, v in enumerate(gdf["road_type"].tolist()):
            num = parse_number(v)
            if rank[i] < 0 and not math.isnan(num):
                rank[i] = SPACENET_RANK.get(int(num), 3)
    speeds = road_speeds_kmh(gdf)
    has_speed = ~np.isnan(speeds)
    take = (rank < 0) & has_speed
    rank[take] = np.select([speeds[take] >= 80, speeds[take] >= 60, speeds[take] >= 45, speeds[take] >= 25],
                           [0, 1, 2, 3], 4)
    lanes = lane_counts(gdf)
    take = (rank < 0) & ~np.isnan(lanes)
    rank[take] = np.select([lanes[take] >= 4, lanes[take] >= 3], [1, 2], 3)
    rank[rank < 0] = 3
    return rank


def road_speeds_kmh(gdf) -> np.ndarray:
    """Posted speed per feature in km/h from `speed_mph`, `maxspeed` (OSM; 'mph' honoured) or `speed_kmh`."""
    out = np.full(len(gdf), np.nan)
    if "speed_mph" in gdf.columns:
        out = np.array([parse_number(v) for v in gdf["speed_mph"].tolist()]) * 1.609344
    for col, mph_default in (("maxspeed", False), ("speed_kmh", False)):
        if col in gdf.columns:
            for i, v in enumerate(gdf[col].tolist()):
                num = parse_number(v)
                if math.isnan(out[i]) and not math.isnan(num):
                    out[i] = num * (1.609344 if (mph_default or "mph" in str(v)) else 1.0)
    out[~(out > 0)] = np.nan
    return out


# ---- profiles ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """Receiver settings of a fleet; each vehicle draws one value of each from these (value, weight) lists."""

    intervals: tuple[tuple[float, float], ...]
    coord_res: tuple[tuple[float, float], ...]
    speed_res: tuple[tuple[float, float], ...] = ((1.0, 0.5), (2.0, 0.5))
    bearing_res: tuple[tuple[float, float], ...] = ((1.0, 1.0),)


PROFILES: dict[str, Profile] = {
    # Paper §3 / Fig. 3 / Table 1.
    "beijing": Profile(intervals=((10, 0.3), (60, 0.35), (180, 0.15), (300, 0.2)),
                       coord_res=((1e-5, 0.85), (1e-4, 0.15)),
                       speed_res=((1.0, 0.5), (2.0, 0.5)), bearing_res=((3.0, 0.5), (10.0, 0.5))),
    "shanghai": Profile(intervals=((16, 0.55), (61, 0.45)),
                        coord_res=((1 / 60000, 0.7), (1e-4, 0.3)),
                        speed_res=((1.0, 0.5), (2.0, 0.5)), bearing_res=((2.0, 0.6), (45.0, 0.4))),
}


def resolve_profile(name: str = "beijing", intervals: list[float] | None = None,
                    coord_res: list[float] | None = None) -> Profile:
    """A profile by name, its intervals and/or coordinate resolutions replaced when given (equal weights)."""
    key = name.lower()
    if key not in PROFILES:
        raise RoadmapError(f"--profile {name}: unknown; choose from {', '.join(PROFILES)}")
    p = PROFILES[key]
    if intervals:
        if any(not (v > 0) for v in intervals):
            raise RoadmapError(f"--intervals {intervals}: sampling intervals must be positive seconds")
        p = Profile(tuple((float(v), 1.0) for v in intervals), p.coord_res, p.speed_res, p.bearing_res)
    if coord_res:
        if any(not (0 < v < 1) for v in coord_res):
            raise RoadmapError(f"--coord-res {coord_res}: resolutions are degrees in (0, 1)")
        p = Profile(p.intervals, tuple((float(v), 1.0) for v in coord_res), p.speed_res, p.bearing_res)
    return p


def _draw(rng: np.random.Generator, choices: tuple[tuple[float, float], ...], n: int) -> np.ndarray:
    vals = np.array([c[0] for c in choices], dtype=float)
    w = np.array([c[1] for c in choices], dtype=float)
    return vals[rng.choice(len(vals), size=n, p=w / w.sum())]


# ---- road network ----------------------------------------------------------------------------------------------
@dataclass
class RoadNetwork:
    """Noded road graph in a metric CRS: nodes at shared endpoints, crossings and snapped T-junctions."""

    crs: Any  # pyproj CRS (metres)
    nodes: np.ndarray  # (N, 2)
    edge_u: np.ndarray
    edge_v: np.ndarray
    edge_coords: list[np.ndarray]  # (M, 2) from u to v
    edge_length: np.ndarray
    edge_rank: np.ndarray
    edge_speed: np.ndarray  # m/s
    edge_lanes: np.ndarray  # lane count (>= 1)
    edge_oneway: np.ndarray  # bool (lane placement only; routing is undirected)
    edge_source: np.ndarray  # index of the input feature
    degree: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.degree = np.bincount(np.concatenate([self.edge_u, self.edge_v]), minlength=len(self.nodes))

    @property
    def n_edges(self) -> int:
        return len(self.edge_u)


def _cum(coords: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(coords[:, 0]), np.diff(coords[:, 1])))])


def _substring(coords: np.ndarray, cum: np.ndarray, a: float, b: float) -> np.ndarray:
    inner = (cum > a) & (cum < b)
    d = np.concatenate([[a], cum[inner], [b]])
    return np.column_stack([np.interp(d, cum, coords[:, 0]), np.interp(d, cum, coords[:, 1])])


def _points_of(geom) -> list[tuple[float, float]]:
    """Vertices where two lines meet: points, and the ends of shared stretches."""
    import shapely

    out: list[tuple[float, float]] = []
    for part in shapely.get_parts(geom):
        t = part.geom_type
        if t == "Point":
            out.append((part.x, part.y))
        elif t in ("LineString", "LinearRing"):
            c = np.asarray(part.coords)
            out += [tuple(c[0]), tuple(c[-1])]
        elif t.startswith("Multi") or t == "GeometryCollection":
            out += _points_of(part)
    return out


def build_road_network(gdf, snap_tol: float = 2.0, node_tol: float = 0.5) -> RoadNetwork:
    """Node road centrelines into a graph: split at crossings, snap dangling ends within `snap_tol` metres
    onto the nearest other road, merge nodes within `node_tol` metres. Roads closed to cars are left out."""
    import shapely
    from scipy.spatial import cKDTree

    from roadmap_cli.labels import metric_crs_for

    if len(gdf) == 0:
        raise RoadmapError("roads: no road lines")
    metric = metric_crs_for(gdf)
    g = gdf.to_crs(metric)
    rank = road_ranks(gdf)
    speed = road_speeds_kmh(gdf)
    speed = np.where(np.isnan(speed), RANK_SPEED_KMH[np.minimum(rank, 4)], speed) / 3.6
    lanes = lane_counts(gdf)
    lanes = np.where(np.isnan(lanes), 2.0, np.maximum(lanes, 1.0))
    oneway = np.zeros(len(gdf), dtype=bool)
    if "oneway" in gdf.columns:
        oneway |= np.array([str(v).lower() in ("yes", "1", "true", "-1") for v in gdf["oneway"].tolist()])
    keep = np.nonzero(rank < 5)[0]
    lines = [np.asarray(g.geometry.iloc[i].coords, dtype=float)[:, :2].copy() for i in keep]
    good = [k for k, c in enumerate(lines) if len(c) >= 2 and _cum(c)[-1] > 0]
    keep = keep[good]
    lines = [lines[k] for k in good]
    if not lines:
        raise RoadmapError("roads: no drivable road lines")
    n = len(lines)

    # Pass 1: move dangling ends onto a road within snap_tol (T-junction undershoots, near misses).
    geoms = np.array([shapely.LineString(c) for c in lines], dtype=object)
    tree = shapely.STRtree(geoms)
    end_pts = shapely.points(np.array([c[k] for c in lines for k in (0, -1)]))
    qi, qj = tree.query(end_pts, predicate="dwithin", distance=snap_tol)
    forced: list[tuple[int, tuple[float, float]]] = []  # (line, point) splits to make
    best: dict[int, tuple[float, int]] = {}
    for e, j in zip(qi.tolist(), qj.tolist(), strict=True):
        if j == e // 2:
            continue
        d = float(geoms[j].distance(end_pts[e]))
        if e not in best or d < best[e][0]:
            best[e] = (d, j)
    for e in sorted(best):
        d, j = best[e]
        line = e // 2
        q = geoms[j].interpolate(geoms[j].project(end_pts[e]))
        lines[line][0 if e % 2 == 0 else -1] = (q.x, q.y)
        forced.append((j, (q.x, q.y)))

    # Pass 2: split every line at its crossings and at the points other lines were snapped to.
    geoms = np.array([shapely.LineString(c) for c in lines], dtype=object)
    tree = shapely.STRtree(geoms)
    splits: list[list[float]] = [[] for _ in range(n)]
    a, b = tree.query(geoms, predicate="intersects")
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        if i >= j:
            continue
        for p in _points_of(geoms[i].intersection(geoms[j])):
            pt = shapely.Point(p)
            splits[i].append(float(geoms[i].project(pt)))
            splits[j].append(float(geoms[j].project(pt)))
    for j, p in forced:
        splits[j].append(float(geoms[j].project(shapely.Point(p))))

    pieces: list[np.ndarray] = []
    piece_src: list[int] = []
    for i, c in enumerate(lines):
        cum = _cum(c)
        total = cum[-1]
        cuts = sorted({0.0, total, *(s for s in splits[i] if 1e-6 < s < total - 1e-6)})
        for s0, s1 in zip(cuts[:-1], cuts[1:], strict=True):
            if s1 - s0 > 1e-6:
                pieces.append(_substring(c, cum, s0, s1))
                piece_src.append(i)

    # Nodes: piece ends merged within node_tol (union-find over close pairs).
    ends = np.array([p[k] for p in pieces for k in (0, -1)])
    parent = np.arange(len(ends))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in sorted(cKDTree(ends).query_pairs(node_tol)):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    roots = np.array([find(x) for x in range(len(ends))])
    uniq, node_of_end = np.unique(roots, return_inverse=True)
    cnt = np.bincount(node_of_end)
    nodes = np.column_stack([np.bincount(node_of_end, weights=ends[:, 0]) / cnt,
                             np.bincount(node_of_end, weights=ends[:, 1]) / cnt])
    node_list = [tuple(p) for p in nodes]

    eu: list[int] = []
    ev: list[int] = []
    ec: list[np.ndarray] = []
    es: list[int] = []
    seen: set[tuple[int, int]] = set()

    def add_edge(u: int, v: int, c: np.ndarray, src: int) -> None:
        c = c.copy()
        c[0], c[-1] = node_list[u], node_list[v]
        length = _cum(c)[-1]
        if u == v or (min(u, v), max(u, v)) in seen:
            if length < 4 * node_tol:
                return
            cum = _cum(c)
            mid = len(node_list)
            node_list.append(tuple(_substring(c, cum, cum[-1] / 2, cum[-1] / 2)[0]))
            add_edge(u, mid, _substring(c, cum, 0.0, cum[-1] / 2), src)
            add_edge(mid, v, _substring(c, cum, cum[-1] / 2, cum[-1]), src)
            return
        if length <= 0:
            return
        seen.add((min(u, v), max(u, v)))
        eu.append(u)
        ev.append(v)
        ec.append(c)
        es.append(src)

    for k, p in enumerate(pieces):
        add_edge(int(node_of_end[2 * k]), int(node_of_end[2 * k + 1]), p, piece_src[k])
    if not eu:
        raise RoadmapError("roads: the lines form no usable road graph")
    src = keep[np.array(es)]
    net = RoadNetwork(
        crs=metric, nodes=np.array(node_list, dtype=float), edge_u=np.array(eu), edge_v=np.array(ev),
        edge_coords=ec, edge_length=np.array([_cum(c)[-1] for c in ec]), edge_rank=rank[src],
        edge_speed=speed[src], edge_lanes=lanes[src], edge_oneway=oneway[src], edge_source=src,
    )
    return net


# ---- the simulator ---------------------------------------------------------------------------------------------
@dataclass
class SimConfig:
    """Simulator settings (see module docstring); defaults follow the paper's Beijing data."""

    vehicles: int = 200
    hours: float = 4.0
    profile: str = "beijing"
    intervals: list[float] | None = None
    coord_res: list[float] | None = None
    noise: float = 5.0  # metres, per axis
    outlier_rate: float = 0.005
    outlier_range: tuple[float, float] = (20.0, 100.0)
    bias_zone: str = "none"  # none | random | lon,lat,radius_m,dx_m,dy_m
    stands: int | None = None  # taxi stands; None = one per ~3 km of road (at least 1)
    wait_every: float = 7200.0  # seconds of driving in the area, on average, between two visits to a stand
    wait_range: tuple[float, float] = (180.0, 1200.0)  # seconds waiting at a stand
    closed_fraction: float = 0.1  # minor streets no vehicle uses
    start: str = "2024-03-04T07:00:00Z"
    seed: int = 0


@dataclass
class _Routes:
    net: RoadNetwork
    places: np.ndarray  # node ids
    place_weight: np.ndarray
    gateways: np.ndarray  # subset of place indices that are border dead ends
    pred: np.ndarray  # (K, N) predecessors from each place
    edge_index: dict[tuple[int, int], int]
    edge_factor: np.ndarray  # per-edge congestion factor on speed
    n_major: np.ndarray  # per node: incident roads of rank <= 2
    cache: dict[tuple[int, int], tuple[np.ndarray, ...]] = field(default_factory=dict)

    def path(self, pi: int, qi: int) -> tuple[np.ndarray, ...] | None:
        """(xy, seg_len, seg_speed, seg_edge, stop_p, end_minor) of the route between two places."""
        key = (pi, qi)
        if key in self.cache:
            return self.cache[key]
        net = self.net
        src, dst = int(self.places[pi]), int(self.places[qi])
        pred = self.pred[pi]
        if pred[dst] < 0 and dst != src:
            self.cache[key] = None  # type: ignore[assignment]
            return None
        seq = [dst]
        while seq[-1] != src:
            seq.append(int(pred[seq[-1]]))
        seq.reverse()
        xy_parts, spd, eid, stop = [], [], [], []
        for a, b in zip(seq[:-1], seq[1:], strict=True):
            e = self.edge_index[(a, b)] if (a, b) in self.edge_index else self.edge_index[(b, a)]
            c = net.edge_coords[e] if net.edge_u[e] == a else net.edge_coords[e][::-1]
            xy_parts.append(c if not xy_parts else c[1:])
            m = len(c) - 1
            spd.append(np.full(m, net.edge_speed[e] * self.edge_factor[e]))
            eid.append(np.full(m, e, dtype=np.int64))
            s = np.zeros(m)
            if net.degree[b] >= 3:  # junction: how likely a stop is depends on who has priority
                major_here = net.edge_rank[e] <= 2
                crossing_major = self.n_major[b] - int(major_here) >= (1 if not major_here else 2)
                s[-1] = (0.3 if crossing_major else 0.03) if major_here else (0.35 if self.n_major[b] else 0.15)
            stop.append(s)
        if not xy_parts:
            self.cache[key] = None  # type: ignore[assignment]
            return None
        xy = np.concatenate(xy_parts)
        seg_len = np.hypot(np.diff(xy[:, 0]), np.diff(xy[:, 1]))
        stop_p = np.concatenate([[0.0], np.concatenate(stop)])
        stop_p[-1] = 0.0
        end_minor = bool(net.edge_rank[e] >= 3)  # drop-offs happen on minor streets, not in arterial traffic
        out = (xy, seg_len, np.concatenate(spd), np.concatenate(eid), stop_p, end_minor)
        if len(self.cache) >= ROUTE_CACHE_SIZE:  # bounded memory on big networks (results do not change)
            self.cache.clear()
        self.cache[key] = out
        return out


def _routing(net: RoadNetwork, cfg: SimConfig, rng: np.random.Generator,
             stand_nodes: np.ndarray) -> _Routes:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components, dijkstra

    n_nodes = len(net.nodes)
    routable = net.edge_rank < 5
    minor = np.nonzero(routable & (net.edge_rank >= 3))[0]
    n_closed = int(round(cfg.closed_fraction * len(minor)))
    if n_closed:
        routable[rng.choice(minor, size=n_closed, replace=False)] = False
    edge_factor = np.exp(rng.normal(0.0, 0.15, net.n_edges))
    cost = net.edge_length / (net.edge_speed * edge_factor) * RANK_PENALTY[net.edge_rank]
    cost *= np.exp(rng.normal(0.0, 0.25, net.n_edges))  # route choice varies between streets
    idx = np.nonzero(routable)[0]
    u, v = net.edge_u[idx], net.edge_v[idx]
    graph = csr_matrix((np.concatenate([cost[idx], cost[idx]]), (np.concatenate([u, v]), np.concatenate([v, u]))),
                       shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)
    # The component carrying most importance-weighted road length is where vehicles drive.
    comp_w = np.bincount(comp[u], weights=net.edge_length[idx] * RANK_IMPORTANCE[net.edge_rank[idx]],
                         minlength=comp.max() + 1)
    main = int(np.argmax(comp_w))
    in_main = comp == main
    # Where trips start and end: "addresses" along the streets (half of each incident road's length times how
    # much its class attracts trips), and the network's entry points (dead ends near its border), where through
    # traffic comes and goes in proportion to the importance of the road.
    attract = RANK_ATTRACTION[net.edge_rank[idx]] * net.edge_length[idx] / 2.0
    node_w = np.bincount(u, attract, n_nodes) + np.bincount(v, attract, n_nodes)
    node_w[~in_main] = 0.0
    lo, hi = net.nodes.min(axis=0), net.nodes.max(axis=0)
    margin = max(15.0, 0.03 * float(np.max(hi - lo)))
    border = np.any((net.nodes - lo < margin) | (hi - net.nodes < margin), axis=1)
    deg = np.bincount(np.concatenate([u, v]), minlength=n_nodes)
    gate = border & (deg == 1) & in_main
    gate_imp = np.zeros(n_nodes)
    np.maximum.at(gate_imp, u, RANK_IMPORTANCE[net.edge_rank[idx]])
    np.maximum.at(gate_imp, v, RANK_IMPORTANCE[net.edge_rank[idx]])
    # Popularity differs between places (a station, a mall, a quiet cul-de-sac): heavy-tailed.
    node_w *= rng.lognormal(0.0, POPULARITY_SIGMA, n_nodes)
    node_w[gate] += GATEWAY_WEIGHT * gate_imp[gate]
    cand = np.nonzero(node_w > 0)[0]
    if cand.size < 2:
        raise RoadmapError("roads: the road graph has too few connected places to drive between")
    k = int(np.clip(cand.size, min(cand.size, 8), 300))
    k = min(k, max(2, int(2e7 // max(n_nodes, 1))))
    pick = node_w[cand] ** PLACE_EXPONENT
    places = rng.choice(cand, size=min(k, cand.size), replace=False, p=pick / pick.sum())
    extra = [s for s in stand_nodes.tolist() if in_main[s] and s not in set(places.tolist())]
    places = np.sort(np.concatenate([places, np.array(extra, dtype=places.dtype)]))
    _, pred = dijkstra(graph, directed=False, indices=places, return_predecessors=True)
    pw = node_w[places]
    edge_index = {(int(a), int(b)): int(e) for e, (a, b) in enumerate(zip(net.edge_u, net.edge_v, strict=True))}
    gateways = np.nonzero(gate[places])[0]
    major = net.edge_rank <= 2
    n_major = np.bincount(np.concatenate([net.edge_u[major], net.edge_v[major]]), minlength=n_nodes)
    return _Routes(net, places, pw, gateways, pred, edge_index, edge_factor, n_major)


def _place_stands(net: RoadNetwork, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Taxi stands: spots 18-40 m off an important road, at least 12 m from every road; (xy (S,2), node (S,))."""
    import shapely

    tree = shapely.STRtree(np.array([shapely.LineString(c) for c in net.edge_coords], dtype=object))
    w = net.edge_length * RANK_IMPORTANCE[net.edge_rank]
    if w.sum() <= 0 or n <= 0:
        return np.empty((0, 2)), np.empty(0, dtype=np.int64)
    spots, nodes = [], []
    for _ in range(n * 30):
        if len(spots) >= n:
            break
        e = int(rng.choice(net.n_edges, p=w / w.sum()))
        c = net.edge_coords[e]
        cum = _cum(c)
        s = rng.uniform(0.2, 0.8) * cum[-1]
        k = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(c) - 2))
        p = _substring(c, cum, s, s)[0]
        d = c[k + 1] - c[k]
        nrm = np.array([d[1], -d[0]]) / max(np.hypot(*d), 1e-9)
        spot = p + nrm * rng.choice([-1.0, 1.0]) * rng.uniform(18.0, 40.0)
        pt = shapely.Point(spot)
        near = tree.query(pt, predicate="dwithin", distance=12.0)
        if near.size:
            continue
        if spots and np.min(np.hypot(*(np.array(spots) - spot).T)) < 60.0:
            continue
        u, v = net.edge_u[e], net.edge_v[e]
        node = u if np.hypot(*(net.nodes[u] - spot)) <= np.hypot(*(net.nodes[v] - spot)) else v
        spots.append(spot)
        nodes.append(int(node))
    return np.array(spots).reshape(-1, 2), np.array(nodes, dtype=np.int64)


def _expand_trip(xy: np.ndarray, dur: np.ndarray, pause: np.ndarray, attrs: list[np.ndarray]):
    """Insert a zero-length, `pause`-long interval at each vertex with pause > 0 (stops)."""
    rep = 1 + (pause > 0)
    X = np.repeat(xy, rep, axis=0)
    n_int = len(X) - 1
    start = np.cumsum(rep) - rep
    out_dur = np.zeros(n_int)
    moving = np.zeros(n_int, dtype=bool)
    travel_pos = (start + rep - 1)[:-1]
    out_dur[travel_pos] = dur
    moving[travel_pos] = True
    has = np.nonzero(pause > 0)[0]
    has = has[start[has] < n_int]
    out_dur[start[has]] = pause[has]
    # attributes of each interval: the travel segment it belongs to (pauses take the previous one's).
    seg_of = np.maximum(np.cumsum(moving) - 1, 0)
    return X, out_dur, moving, [a[seg_of] for a in attrs]


def _parse_start(start: str) -> float:
    try:
        ts = pd.Timestamp(start)
    except (ValueError, TypeError) as exc:
        raise RoadmapError(f"--start {start}: not a date-time (use ISO 8601, e.g. 2024-03-04T07:00:00Z)") from exc
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return float(ts.timestamp())


def _bias_zone(spec: str, net: RoadNetwork,
               rng: np.random.Generator) -> tuple[float, float, float, float, float] | None:
    """(x, y, radius, dx, dy) in the network CRS, or None."""
    spec = (spec or "none").strip().lower()
    if spec in ("none", "", "off"):
        return None
    if spec == "random":
        e = int(rng.choice(net.n_edges, p=net.edge_length / net.edge_length.sum()))
        c = net.edge_coords[e][len(net.edge_coords[e]) // 2]
        ext = float(np.max(net.nodes.max(axis=0) - net.nodes.min(axis=0)))
        ang = rng.uniform(0, 2 * math.pi)
        mag = rng.uniform(10.0, 25.0)
        return float(c[0]), float(c[1]), max(50.0, 0.15 * ext), mag * math.cos(ang), mag * math.sin(ang)
    try:
        lon, lat, r, dx, dy = (float(t) for t in spec.split(","))
    except ValueError as exc:
        raise RoadmapError(f"--bias-zone {spec}: expected none, random or LON,LAT,RADIUS_M,DX_M,DY_M") from exc
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", net.crs, always_xy=True).transform(lon, lat)
    return float(x), float(y), r, dx, dy


def simulate(roads, cfg: SimConfig | None = None, net: RoadNetwork | None = None) -> pd.DataFrame:
    """Simulated crowdsourced GPS along `roads` (GeoDataFrame of centrelines).

    Returns columns vehicle_id, time (epoch s), timestamp (ISO UTC), lat, lon, speed (km/h), bearing (deg),
    and two internal ones that the CSV leaves out: `kind` (road | outlier | wait | bias) and `edge` (the
    index in `net` of the road the vehicle was on, -1 while waiting); sorted by vehicle and time.
    Pass `net` (from `build_road_network(roads)`) to reuse a graph or to relate `edge` to it.
    """
    from pyproj import Transformer

    cfg = cfg or SimConfig()
    if cfg.vehicles < 1:
        raise RoadmapError(f"--vehicles {cfg.vehicles}: need at least one vehicle")
    if not cfg.hours > 0:
        raise RoadmapError(f"--hours {cfg.hours}: must be positive")
    if cfg.noise < 0:
        raise RoadmapError(f"--noise {cfg.noise}: must be >= 0 metres")
    if not 0 <= cfg.outlier_rate < 1:
        raise RoadmapError(f"--outlier-rate {cfg.outlier_rate}: must be in [0, 1)")
    profile = resolve_profile(cfg.profile, cfg.intervals, cfg.coord_res)
    t0 = _parse_start(cfg.start)
    rng = np.random.default_rng(cfg.seed)
    if net is None:
        net = build_road_network(roads)
    total_km = float(net.edge_length.sum()) / 1000.0
    n_stands = cfg.stands if cfg.stands is not None else max(1, int(round(total_km / 3.0)))
    stand_xy, stand_node = _place_stands(net, n_stands, rng)
    routes = _routing(net, cfg, rng, stand_node)
    place_of = {int(p): i for i, p in enumerate(routes.places)}
    stand_place = np.array([place_of.get(int(s), -1) for s in stand_node], dtype=np.int64)
    ok = stand_place >= 0
    stand_xy, stand_place = stand_xy[ok], stand_place[ok]
    zone = _bias_zone(cfg.bias_zone, net, rng)
    horizon = cfg.hours * 3600.0
    pw = routes.place_weight / routes.place_weight.sum()
    gate_set = set(routes.gateways.tolist())
    gate_w = pw[routes.gateways] / pw[routes.gateways].sum() if routes.gateways.size else None
    K = len(routes.places)

    V = cfg.vehicles
    v_interval = _draw(rng, profile.intervals, V)
    v_coord = _draw(rng, profile.coord_res, V)
    v_speed_res = _draw(rng, profile.speed_res, V)
    v_bear_res = _draw(rng, profile.bearing_res, V)
    v_factor = rng.uniform(0.75, 1.05, V)

    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("veh", "t", "x", "y", "speed", "heading", "kind", "edge")}
    for vi in range(V):
        vrng = np.random.default_rng([cfg.seed, vi])
        cur = int(vrng.choice(K, p=pw))
        pieces = []  # (X, dur, moving, kind, edge) per continuous stretch
        elapsed = 0.0
        guard = 0
        next_wait = vrng.exponential(cfg.wait_every)  # in-area driving time before the next stand visit
        while elapsed < horizon and guard < 100000:
            guard += 1
            if stand_place.size and next_wait <= 0:
                next_wait = vrng.exponential(cfg.wait_every)
                s = int(vrng.integers(stand_place.size))
                dst = int(stand_place[s])
            else:
                s = -1
                dst = int(vrng.choice(K, p=pw))
            if dst == cur:
                continue
            route = routes.path(cur, dst)
            if route is None:
                cur = int(vrng.choice(K, p=pw))
                continue
            xy, seg_len, seg_speed, seg_edge, stop_p, end_minor = route
            trip_f = v_factor[vi] * vrng.uniform(0.8, 1.1)
            dur = seg_len / np.maximum(seg_speed * trip_f, 0.5)
            pause = np.where(vrng.random(len(xy)) < stop_p, vrng.uniform(5.0, 45.0, len(xy)), 0.0)
            if s < 0 and end_minor and dst not in gate_set and vrng.random() < 0.5:  # pick-up / drop-off
                pause[-1] = vrng.uniform(10.0, 120.0)
            X, d, mv, (ed,) = _expand_trip(xy, dur, pause, [seg_edge])
            pieces.append((X, d, mv, np.full(len(d), _ROAD), ed))
            elapsed += float(d.sum())
            next_wait -= float(d.sum())
            cur = dst
            if s >= 0:  # drive onto the stand, wait there, come back
                spot = stand_xy[s] + vrng.normal(0.0, 5.0, 2)
                approach = float(np.hypot(*(spot - xy[-1]))) / 4.0
                wait = vrng.uniform(*cfg.wait_range)
                Xs = np.array([xy[-1], spot, spot, xy[-1]])
                ds = np.array([approach, wait, approach])
                pieces.append((Xs, ds, np.array([True, False, True]), np.full(3, _WAIT), np.full(3, -1)))
                elapsed += float(ds.sum())
            elif cur in gate_set and gate_w is not None:  # left the area: come back later somewhere else
                gap = vrng.uniform(60.0, 1800.0)
                cur = int(routes.gateways[vrng.choice(routes.gateways.size, p=gate_w)])
                X0 = routes.net.nodes[routes.places[cur]]
                pieces.append((np.array([X[-1], X0]), np.array([gap]), np.array([False]), np.array([_GAP]),
                               np.full(1, -1)))
                elapsed += gap
        if not pieces:
            continue
        # One timeline: consecutive pieces share their end/start vertex (gaps are explicit pieces).
        Xs = [pieces[0][0]] + [p[0][1:] if np.array_equal(p[0][0], q[0][-1]) else p[0]
                               for q, p in zip(pieces[:-1], pieces[1:], strict=True)]
        parts_d, parts_mv, parts_k, parts_e = [], [], [], []
        for idx, p in enumerate(pieces):
            if idx > 0 and not np.array_equal(p[0][0], pieces[idx - 1][0][-1]):
                parts_d.append(np.zeros(1))  # joins two pieces that do not touch (never sampled)
                parts_mv.append(np.zeros(1, bool))
                parts_k.append(np.full(1, _GAP))
                parts_e.append(np.full(1, -1))
            parts_d.append(p[1])
            parts_mv.append(p[2])
            parts_k.append(p[3])
            parts_e.append(p[4])
        X = np.concatenate(Xs)
        dur = np.concatenate(parts_d)
        mv = np.concatenate(parts_mv)
        kind = np.concatenate(parts_k)
        edge = np.concatenate(parts_e).astype(np.int64)
        lanes = np.where(edge >= 0, net.edge_lanes[edge], 1.0)
        oneway = np.where(edge >= 0, net.edge_oneway[edge], True)
        T = np.concatenate([[0.0], np.cumsum(dur)])
        # Sampling clock: the vehicle's interval, with a little jitter and a few missed fixes.
        base = v_interval[vi]
        n_max = int(horizon / base * 1.05) + 8
        steps = np.full(n_max, base)
        jit = vrng.random(n_max) < 0.08
        steps[jit] += vrng.choice([-2.0, -1.0, 1.0, 2.0], size=int(jit.sum()))
        miss = vrng.random(n_max) < 0.03
        steps[miss] += base
        steps = np.maximum(steps, 1.0)
        ts = vrng.uniform(0.0, base) + np.concatenate([[0.0], np.cumsum(steps[:-1])])
        ts = np.round(ts)
        ts = ts[(ts < horizon) & (ts < T[-1])]
        if ts.size == 0:
            continue
        k = np.clip(np.searchsorted(T, ts, side="right") - 1, 0, len(dur) - 1)
        seg = X[k + 1] - X[k]
        frac = np.where(dur[k] > 0, (ts - T[k]) / np.where(dur[k] > 0, dur[k], 1.0), 0.0)
        pos = X[k] + frac[:, None] * seg
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        spd = np.where(mv[k] & (dur[k] > 0), seg_len / np.where(dur[k] > 0, dur[k], 1.0), 0.0)
        # Heading of each interval: its own direction, or the last moving one's while stopped.
        iv = np.diff(X, axis=0)
        ilen = np.hypot(iv[:, 0], iv[:, 1])
        last = np.maximum.accumulate(np.where(ilen > 0, np.arange(len(ilen)), 0))
        hv = iv[last]
        hlen = np.maximum(np.hypot(hv[:, 0], hv[:, 1]), 1e-9)
        hx, hy = hv[k, 0] / hlen[k], hv[k, 1] / hlen[k]
        # Lane: right of the direction of travel on two-way roads, across the carriageway on one-way ones.
        nl = lanes[k]
        lane_i = np.floor(vrng.random(ts.size) * np.where(oneway[k], nl, np.maximum(nl // 2, 1)))
        lateral = np.where(oneway[k], (lane_i + 0.5 - nl / 2.0) * 3.5, np.where(nl >= 2, (lane_i + 0.5) * 3.5, 0.0))
        lateral = np.where(kind[k] == _ROAD, lateral, 0.0)
        pos = pos + lateral[:, None] * np.column_stack([hy, -hx])
        keep = kind[k] != _GAP
        cols["veh"].append(np.full(int(keep.sum()), vi + 1))
        cols["t"].append(ts[keep])
        cols["x"].append(pos[keep, 0])
        cols["y"].append(pos[keep, 1])
        cols["speed"].append(spd[keep])
        cols["heading"].append((np.degrees(np.arctan2(hx, hy)) % 360.0)[keep])
        cols["kind"].append(np.where(kind[k] == _WAIT, 2, 0)[keep])
        cols["edge"].append(edge[k][keep])

    if not cols["t"]:
        raise RoadmapError("simulate: no samples produced (more --vehicles or --hours?)")
    veh = np.concatenate(cols["veh"])
    t = np.concatenate(cols["t"])
    x = np.concatenate(cols["x"])
    y = np.concatenate(cols["y"])
    speed = np.concatenate(cols["speed"])
    heading = np.concatenate(cols["heading"])
    kind = np.concatenate(cols["kind"])
    edge = np.concatenate(cols["edge"])
    n = t.size
    if n == 0:
        raise RoadmapError("simulate: no samples produced; the roads are too short for the vehicles to be sampled "
                           "(more --vehicles or --hours, or shorter --intervals)")
    # Measurement errors.
    x = x + rng.normal(0.0, cfg.noise, n)
    y = y + rng.normal(0.0, cfg.noise, n)
    out = (rng.random(n) < cfg.outlier_rate) & (kind == 0)
    ang = rng.uniform(0, 2 * math.pi, int(out.sum()))
    dist = rng.uniform(*cfg.outlier_range, int(out.sum()))
    x[out] += dist * np.cos(ang)
    y[out] += dist * np.sin(ang)
    kind[out] = 1
    if zone is not None:
        zx, zy, zr, zdx, zdy = zone
        inz = np.hypot(x - zx, y - zy) < zr
        x[inz] += zdx
        y[inz] += zdy
        kind[inz & (kind == 0)] = 3
    lon, lat = Transformer.from_crs(net.crs, "EPSG:4326", always_xy=True).transform(x, y)
    q = v_coord[veh - 1]
    lat = np.round(np.asarray(lat) / q) * q
    lon = np.round(np.asarray(lon) / q) * q
    kmh = speed * 3.6
    kmh = np.where(kmh > 0, np.maximum(kmh * (1 + rng.normal(0, 0.03, n)) + rng.normal(0, 1.0, n), 0.0), 0.0)
    sr = v_speed_res[veh - 1]
    kmh = np.round(kmh / sr) * sr
    br = v_bear_res[veh - 1]
    bearing = (np.round(((heading + rng.normal(0.0, 2.0, n)) % 360.0) / br) * br) % 360.0
    epoch = t0 + t
    return pd.DataFrame({
        "vehicle_id": veh.astype(np.int64),
        "time": epoch,
        "timestamp": np.char.add(np.datetime_as_string(epoch.astype("datetime64[s]"), unit="s"), "Z"),
        "lat": lat,
        "lon": lon,
        "speed": kmh.astype(np.int64) if np.all(sr == np.round(sr)) else kmh,
        "bearing": bearing.astype(np.int64) if np.all(br == np.round(br)) else bearing,
        "kind": np.array(KINDS, dtype=object)[kind],
        "edge": edge,
    })


def coord_decimals(res: list[float] | np.ndarray) -> int:
    """Decimals that print every coordinate of these resolutions exactly (7 for non-decimal steps)."""
    dec = 0
    for r in np.atleast_1d(np.asarray(res, dtype=float)):
        k = -math.log10(r)
        if abs(k - round(k)) > 1e-9:
            return 7
        dec = max(dec, int(round(k)))
    return dec


def write_gps_csv(df: pd.DataFrame, path: str | os.PathLike[str], overwrite: bool = True,
                  decimals: int = 7) -> Path:
    """Write the public columns (vehicle_id,timestamp,lat,lon,speed,bearing) atomically; `kind` is dropped."""
    from roadmap_cli.workdir import atomic_output

    out = df[CSV_COLUMNS]
    with atomic_output(path, overwrite=overwrite) as tmp:
        out.to_csv(tmp, index=False, float_format=f"%.{decimals}f", lineterminator="\n")
    return Path(path)


def simulate_to_csv(roads_path: str | os.PathLike[str], out: str | os.PathLike[str], cfg: SimConfig,
                    overwrite: bool = False) -> pd.DataFrame:
    """Read road vectors, simulate, write the CSV; returns the DataFrame (with `kind`)."""
    from roadmap_cli.labels import read_road_vectors
    from roadmap_cli.workdir import check_overwrite

    roads = read_road_vectors(roads_path)
    check_overwrite(Path(out), overwrite)
    df = simulate(roads, cfg)
    profile = resolve_profile(cfg.profile, cfg.intervals, cfg.coord_res)
    write_gps_csv(df, out, overwrite=overwrite, decimals=coord_decimals([c[0] for c in profile.coord_res]))
    return df
