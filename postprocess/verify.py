"""GPS verification of proposed road segments, and the verification.csv / verification.geojson writers.

A segment is *confirmed* when enough independent GPS traffic runs along it:
- a sample supports a segment when it lies within `radius_m` of it and its bearing agrees with the segment's
  local direction (either way, within `angle_deg`), or it has no bearing. Each sample supports at most one
  segment: the nearest agreeing one, where existing OSM roads (`other_lines`) compete too, so traffic on a
  mapped or a parallel road does not confirm a neighbouring phantom one;
- near a node where segments meet, a fix cannot tell them apart (noise carries fixes of a busy road a few
  metres into a phantom spur prolonging it), so samples within `end_margin_m` of such an end do not count,
  and support is taken over the rest of the length;
- confirmed = at least `min_samples` supporting samples from at least `min_vehicles` distinct vehicles, and at
  least `min_support_per_100m` samples per 100 m. Segments shorter than `short_length_m` need one vehicle only.

Defaults, and why:
- radius_m = 15: half the width of a wide road (~7 m) plus consumer GPS error and coordinate quantisation
  (the paper's Shanghai data is quantised to 1e-4 degree, ~10 m; noise of several metres is usual);
  nearest-road assignment keeps this from spilling traffic onto parallel roads.
- angle_deg = 30: wide enough for curves, the piecewise direction of a densified line and the 3-10 degree
  bearing resolution of taxi receivers; narrow enough that crossing traffic (90 degrees) never confirms.
- min_vehicles = 2: one vehicle can be a single off-road trace, a car park or a multipath track; two
  independent vehicles make a road. Short connectors (< 30 m) need one: at 10-60 s sampling intervals a
  vehicle crossing 30 m leaves a sample there only now and then, so two vehicles would rarely both show.
- min_support_per_100m = 2: about two passes of a vehicle sampled every 5-10 s at urban speeds; sparse
  scattered fixes near an imagery artefact stay below it. min_samples = 2: one fix is never evidence.
- end_margin_m = 8: twice a typical along-track GPS error (3-4 m), capped at a quarter of the segment.
All are options: sparse fleets (60-300 s intervals) call for a lower support threshold.

Unconfirmed segments get a `reason` (and a machine-readable `reason_code`): no_samples ("no GPS samples within
R m"), junction_only, heading ("samples present but headings disagree"), nearer_road, vehicles ("only N
vehicles"), samples, support ("support X/100 m below Y").

Bearings are degrees clockwise from north; the metric frame's grid north differs from true north by the
meridian convergence (< 3 degrees inside a UTM zone), negligible against `angle_deg`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from postprocess.georef import XYTransform, densify, graph_metric_transform, lonlat_transform, polyline_lengths
from postprocess.roadgraph import RoadGraph

BBox = tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax) in the grid CRS
SampleQuery = Callable[[BBox], dict]

NO_STORE_REASON = "verification not done: no GPS point store in the workdir"
_K_NEIGHBOURS = 32
_BATCH = 100_000


@dataclass
class VerificationSummary:
    """Outcome of verification over a graph (lengths in metres)."""

    done: bool
    reason: str = ""  # why verification was not done
    n_segments: int = 0
    length_m: float = 0.0
    n_confirmed: int = 0
    length_confirmed_m: float = 0.0
    n_unconfirmed: int = 0
    length_unconfirmed_m: float = 0.0
    n_samples_used: int = 0  # samples that support some segment
    reasons: dict[str, int] = field(default_factory=dict)  # reason_code -> number of unconfirmed segments
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- sample sources -------------------------------------------------------------------------------------------
def array_query(x: np.ndarray, y: np.ndarray, bearing: np.ndarray | None = None,
                vehicle: np.ndarray | None = None) -> SampleQuery:
    """A `query(bbox)` over samples held in memory (grid-CRS x, y; bearing degrees or NaN; vehicle ids)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    b = np.full(x.shape, np.nan) if bearing is None else np.asarray(bearing, dtype=np.float64)
    v = np.zeros(x.shape, dtype=np.int64) if vehicle is None else np.asarray(vehicle, dtype=np.int64)

    def query(bbox: BBox) -> dict:
        x0, y0, x1, y1 = bbox
        m = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        return {"x": x[m], "y": y[m], "bearing": b[m], "vehicle": v[m]}

    return query


def make_store_query(store_query: Callable[[float, float, float, float], np.ndarray],
                     transform: Sequence[float], min_speed_for_bearing: float = 1.0) -> SampleQuery:
    """Adapt a point store's pixel-window query (`PointStore.query`) into a grid-CRS `query(bbox)`.

    `transform` is the grid's affine 6-tuple (rasterio order). Bearings of samples whose speed is known and below
    `min_speed_for_bearing` m/s are treated as unknown: a standing receiver reports a meaningless heading.
    """
    a, _, c, _, e, f = (float(t) for t in tuple(transform)[:6])

    def query(bbox: BBox) -> dict:
        x0, y0, x1, y1 = bbox
        cols = sorted(((x0 - c) / a, (x1 - c) / a))
        rows = sorted(((y0 - f) / e, (y1 - f) / e))
        c0, r0 = math.floor(cols[0]), math.floor(rows[0])
        s = store_query(c0, r0, math.ceil(cols[1]) - c0 + 1, math.ceil(rows[1]) - r0 + 1)
        x = c + a * s["col"].astype(np.float64)
        y = f + e * s["row"].astype(np.float64)
        bearing = s["bearing"].astype(np.float64)
        if "speed" in (s.dtype.names or ()):
            speed = s["speed"].astype(np.float64)
            bearing[np.isfinite(speed) & (speed < min_speed_for_bearing)] = np.nan
        return {"x": x, "y": y, "bearing": bearing, "vehicle": s["vehicle"].astype(np.int64)}

    return query


# ---- verification -----------------------------------------------------------------------------------------------
def mark_unverified(graph: RoadGraph, reason: str = NO_STORE_REASON) -> VerificationSummary:
    """Mark every edge as not verified (confirmed=None) and say why; for workdirs without GPS."""
    for e in graph.edges:
        e.attrs.update({"n_samples": None, "n_vehicles": None, "support_per_100m": None, "gps_support": None,
                        "confirmed": None, "reason": reason, "reason_code": "not_verified"})
    return VerificationSummary(done=False, reason=reason, n_segments=len(graph.edges), length_m=graph.total_length_m)


def _units_per_metre(to_metric: XYTransform, x: float, y: float) -> float:
    """Grid-CRS units per metre near (x, y) (the larger of the two axes)."""
    h = 1e-6 * max(1.0, abs(x), abs(y))
    mx, my = to_metric(np.array([x, x + h, x]), np.array([y, y, y + h]))
    dx = math.hypot(mx[1] - mx[0], my[1] - my[0])
    dy = math.hypot(mx[2] - mx[0], my[2] - my[0])
    d = min(dx, dy)
    return h / d if d > 0 else 1.0


@dataclass
class _Lines:
    """Every line (proposed edges first, then competitors) cut into short pieces, in metres."""

    grid: list[np.ndarray]  # grid-CRS coordinates per line
    lo: np.ndarray  # (L, 2) metric bbox
    hi: np.ndarray
    length: np.ndarray  # (L,) metric length
    margin0: np.ndarray  # (L,) metres at the start / end where samples are ambiguous (junction ends)
    margin1: np.ndarray
    ps: np.ndarray  # (P, 2) piece starts
    pe: np.ndarray  # (P, 2) piece ends
    owner: np.ndarray  # (P,) line of each piece
    arc0: np.ndarray  # (P,) arc length of each piece start along its line
    bearing: np.ndarray  # (P,) piece direction, degrees clockwise from grid north
    offsets: np.ndarray  # (L + 1,) pieces of line k are offsets[k]:offsets[k+1]


def _make_lines(graph: RoadGraph, other_lines, to_metric: XYTransform, step: float, end_margin_m: float) -> _Lines:
    grid = [np.asarray(e.coords, dtype=np.float64) for e in graph.edges]
    grid += [np.asarray(ln, dtype=np.float64) for ln in (other_lines or []) if len(ln) >= 2]
    n = len(grid)
    lo, hi = np.full((n, 2), np.inf), np.full((n, 2), -np.inf)
    length = np.zeros(n)
    starts, ends, owner, arc0 = [], [], [], []
    if n:
        allp = np.concatenate(grid)
        ax, ay = to_metric(allp[:, 0], allp[:, 1])
        split = np.cumsum([len(ln) for ln in grid])[:-1]
        for k, m in enumerate(np.split(np.column_stack([ax, ay]), split)):
            s, t, arc = densify(m, step)
            length[k] = arc[-1]
            if len(s) == 0:  # a zero-length edge: one degenerate piece so that it still gets counted
                s, t, arc = m[:1], m[:1], np.zeros(2)
            starts.append(s)
            ends.append(t)
            arc0.append(arc[:-1])
            owner.append(np.full(len(s), k, dtype=np.int64))
            lo[k], hi[k] = m.min(axis=0), m.max(axis=0)
    # a sample near a node where several segments meet cannot tell them apart: along a straight road, noise
    # carries fixes of one segment a few metres into the next, which would confirm a spur that only extends
    # a busy road. Such ends get a margin (at most a quarter of the segment) where samples do not count.
    margin0, margin1 = np.zeros(n), np.zeros(n)
    deg = graph.degree()
    for k, e in enumerate(graph.edges):
        m = min(end_margin_m, length[k] / 4.0)
        if deg.get(e.u, 0) >= 2 or "osm_id" in graph.node_attrs.get(e.u, {}):
            margin0[k] = m
        if deg.get(e.v, 0) >= 2 or "osm_id" in graph.node_attrs.get(e.v, {}):
            margin1[k] = m
    ps = np.concatenate(starts) if starts else np.empty((0, 2))
    pe = np.concatenate(ends) if ends else np.empty((0, 2))
    d = pe - ps
    return _Lines(grid, lo, hi, length, margin0, margin1, ps, pe,
                  np.concatenate(owner) if owner else np.empty(0, dtype=np.int64),
                  np.concatenate(arc0) if arc0 else np.empty(0),
                  np.degrees(np.arctan2(d[:, 0], d[:, 1])),
                  np.concatenate([[0], np.cumsum([len(x) for x in starts])]).astype(np.int64))


def verify(
    graph: RoadGraph,
    query: SampleQuery,
    to_metric: XYTransform | None = None,
    *,
    radius_m: float = 15.0,
    angle_deg: float = 30.0,
    min_samples: int = 2,
    min_vehicles: int = 2,
    min_support_per_100m: float = 2.0,
    short_length_m: float = 30.0,
    end_margin_m: float = 8.0,
    other_lines: Sequence[np.ndarray] | None = None,
    block_m: float = 500.0,
) -> VerificationSummary:
    """Count agreeing GPS samples and vehicles along each edge, set edge.attrs, return a summary.

    `query(bbox)` returns the samples inside a grid-CRS bbox as arrays x, y (grid CRS), bearing (degrees, NaN
    unknown) and vehicle (int). `other_lines` are grid-CRS polylines (existing OSM roads) that compete for
    samples but are not reported. Samples within `end_margin_m` of an end where other segments meet do not
    count (support per 100 m is taken over the rest of the length). Edges are processed in blocks of about
    `block_m` metres, one query per block.
    """
    if not (radius_m > 0 and math.isfinite(radius_m)):
        raise ValueError(f"radius_m: must be > 0, got {radius_m}")
    if not 0 <= angle_deg <= 90:
        raise ValueError(f"angle_deg: must be in [0, 90], got {angle_deg}")
    if not end_margin_m >= 0:
        raise ValueError(f"end_margin_m: must be >= 0, got {end_margin_m}")
    params = {"radius_m": radius_m, "angle_deg": angle_deg, "min_samples": min_samples,
              "min_vehicles": min_vehicles, "min_support_per_100m": min_support_per_100m,
              "short_length_m": short_length_m, "end_margin_m": end_margin_m}
    summary = VerificationSummary(done=True, params=params, n_segments=len(graph.edges),
                                  length_m=graph.total_length_m)
    n_edges = len(graph.edges)
    if to_metric is None:
        to_metric = graph_metric_transform(graph)
    lines = _make_lines(graph, other_lines, to_metric, max(0.5, radius_m / 4.0), end_margin_m)
    counts = {level: _Counter(n_edges) for level in ("ok", "assigned", "within", "within_all")}
    if n_edges:
        mid_e = (lines.lo[:n_edges] + lines.hi[:n_edges]) / 2.0
        cell = np.floor(mid_e / block_m).astype(np.int64)
        order = np.lexsort((cell[:, 0], cell[:, 1]))
        keys = cell[order]
        bounds = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
        for own in np.split(order, bounds):
            _verify_block(own, n_edges, lines, query, to_metric, radius_m, angle_deg, counts)

    n_samples, n_veh = counts["ok"].result()
    n_asg, n_veh_asg = counts["assigned"].result()
    n_within, n_veh_within = counts["within"].result()
    n_within_all = counts["within_all"].samples
    summary.n_samples_used = int(n_samples.sum())
    for k, e in enumerate(graph.edges):
        length = e.length_m if e.length_m > 0 else float(lines.length[k])
        # the part of the length where samples count (metric lengths may differ slightly from length_m)
        frac = 1.0 - (lines.margin0[k] + lines.margin1[k]) / lines.length[k] if lines.length[k] > 0 else 1.0
        counted = length * frac

        def per100(n: int, counted: float = counted) -> float:
            return 100.0 * n / counted if counted > 0 else 0.0

        support = per100(int(n_samples[k]))
        need_veh = 1 if length < short_length_m else min_vehicles

        def passes(ns: int, nv: int, need_veh: int = need_veh) -> bool:
            return ns >= min_samples and nv >= need_veh and per100(ns) >= min_support_per_100m

        ok = passes(int(n_samples[k]), int(n_veh[k]))
        if ok:
            reason, code = "", ""
        elif n_within_all[k] == 0:
            reason, code = f"no GPS samples within {radius_m:g} m", "no_samples"
        elif n_within[k] == 0:
            reason = f"GPS samples only within {end_margin_m:g} m of its junctions (traffic of the roads there)"
            code = "junction_only"
        elif passes(int(n_asg[k]), int(n_veh_asg[k])) or (n_samples[k] == 0 and n_asg[k] > 0):
            reason = (f"samples present but headings disagree ({int(n_samples[k])} of {int(n_asg[k])} within "
                      f"{angle_deg:g} degrees)")
            code = "heading"
        elif passes(int(n_within[k]), int(n_veh_within[k])) or n_samples[k] == 0:
            reason = (f"samples nearby fit a nearer road ({int(n_within[k]) - int(n_asg[k])} of "
                      f"{int(n_within[k])})")
            code = "nearer_road"
        elif n_veh[k] < need_veh:
            nv = int(n_veh[k])
            reason = f"only {nv} vehicle{'' if nv == 1 else 's'} (need {need_veh})"
            code = "vehicles"
        elif n_samples[k] < min_samples:
            ns = int(n_samples[k])
            reason = f"only {ns} sample{'' if ns == 1 else 's'} (need {min_samples})"
            code = "samples"
        else:
            reason = f"support {support:.1f}/100 m below {min_support_per_100m:g}"
            code = "support"
        e.attrs.update({"n_samples": int(n_samples[k]), "n_vehicles": int(n_veh[k]),
                        "n_samples_any_heading": int(n_asg[k]), "n_samples_within": int(n_within[k]),
                        "support_per_100m": round(float(support), 3), "gps_support": round(float(support), 3),
                        "confirmed": bool(ok), "reason": reason, "reason_code": code})
        if ok:
            summary.n_confirmed += 1
            summary.length_confirmed_m += e.length_m
        else:
            summary.n_unconfirmed += 1
            summary.length_unconfirmed_m += e.length_m
            summary.reasons[code] = summary.reasons.get(code, 0) + 1
    return summary


class _Counter:
    """Samples and distinct vehicles per edge, accumulated block by block."""

    def __init__(self, n_edges: int) -> None:
        self.n_edges = n_edges
        self.samples = np.zeros(n_edges, dtype=np.int64)
        self.pairs: list[np.ndarray] = []

    def add(self, edge: np.ndarray, vehicle: np.ndarray) -> None:
        self.samples += np.bincount(edge, minlength=self.n_edges)[:self.n_edges]
        self.pairs.append(np.column_stack([edge, vehicle]))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        vehicles = np.zeros(self.n_edges, dtype=np.int64)
        if self.pairs:
            p = np.concatenate(self.pairs)
            if len(p):
                vehicles += np.bincount(np.unique(p, axis=0)[:, 0], minlength=self.n_edges)
        return self.samples, vehicles


def _verify_block(own: np.ndarray, n_edges: int, lines: _Lines, query: SampleQuery, to_metric: XYTransform,
                  radius_m: float, angle_deg: float, counts: dict[str, _Counter]) -> None:
    """Assign the samples around one block of edges (`own`, indices) to their nearest agreeing line."""
    from scipy.spatial import cKDTree

    # grid-CRS bbox of the block's edges grown by the radius: the samples that may support them
    g = np.concatenate([lines.grid[k] for k in own])
    gx0, gy0 = g.min(axis=0)
    gx1, gy1 = g.max(axis=0)
    pad = 1.5 * radius_m * _units_per_metre(to_metric, float((gx0 + gx1) / 2), float((gy0 + gy1) / 2))
    s = query((float(gx0 - pad), float(gy0 - pad), float(gx1 + pad), float(gy1 + pad)))
    sx = np.asarray(s.get("x", ()), dtype=np.float64)
    if sx.size == 0:
        return
    sy = np.asarray(s["y"], dtype=np.float64)
    sb = np.asarray(s.get("bearing", np.full(sx.shape, np.nan)), dtype=np.float64)
    sv = np.asarray(s.get("vehicle", np.zeros(sx.shape)), dtype=np.int64)
    mx, my = to_metric(sx, sy)
    # competing lines: anything within two radii of the block (a nearer rival of a supporting sample lies there)
    blo = lines.lo[own].min(axis=0) - 2 * radius_m
    bhi = lines.hi[own].max(axis=0) + 2 * radius_m
    ctx = np.flatnonzero(np.all((lines.lo <= bhi) & (lines.hi >= blo), axis=1))
    pidx = np.concatenate([np.arange(lines.offsets[k], lines.offsets[k + 1]) for k in ctx])
    a, b = lines.ps[pidx], lines.pe[pidx]
    p_line, p_arc0, p_bear = lines.owner[pidx], lines.arc0[pidx], lines.bearing[pidx]
    tree = cKDTree((a + b) / 2.0)
    half = float(np.max(np.hypot(*(b - a).T))) / 2.0
    k_nn = min(_K_NEIGHBOURS, len(pidx))
    n_lines = len(lines.grid)
    is_own = np.zeros(n_lines, dtype=bool)
    is_own[own] = True
    for i0 in range(0, len(mx), _BATCH):
        p = np.column_stack([mx[i0:i0 + _BATCH], my[i0:i0 + _BATCH]])
        bear = sb[i0:i0 + _BATCH]
        veh = sv[i0:i0 + _BATCH]
        _, nn = tree.query(p, k=k_nn, distance_upper_bound=radius_m + half)
        nn = nn.reshape(len(p), -1)
        valid = nn < len(pidx)
        nn_c = np.where(valid, nn, 0)
        pa, pb = a[nn_c], b[nn_c]  # (n, K, 2)
        ab = pb - pa
        ap = p[:, None, :] - pa
        denom = np.einsum("nkj,nkj->nk", ab, ab)
        t = np.clip(np.einsum("nkj,nkj->nk", ap, ab) / np.where(denom > 0, denom, 1.0), 0.0, 1.0)
        dist = np.hypot(*(ap - ab * t[..., None]).transpose(2, 0, 1))
        dist = np.where(valid & (dist <= radius_m), dist, np.inf)
        diff = np.mod(bear[:, None] - p_bear[nn_c], 180.0)
        agree = ~np.isfinite(bear)[:, None] | (np.minimum(diff, 180.0 - diff) <= angle_deg)
        line = p_line[nn_c]
        foot = p_arc0[nn_c] + t * np.sqrt(denom)  # arc length of the nearest point along its line
        ambiguous = (foot < lines.margin0[line]) | (foot > lines.length[line] - lines.margin1[line])
        rows = np.arange(len(p))
        j_any = np.argmin(dist, axis=1)
        near = np.isfinite(dist[rows, j_any])
        dist_ok = np.where(agree, dist, np.inf)
        j_ok = np.argmin(dist_ok, axis=1)
        has_ok = np.isfinite(dist_ok[rows, j_ok])
        # each sample goes to one line: the nearest agreeing one, else (as a disagreeing sample) the nearest;
        # it counts there unless it sits in that line's ambiguous end margin
        e_ok = line[rows, j_ok]
        j_asg = np.where(has_ok, j_ok, j_any)
        e_asg = line[rows, j_asg]
        sel = has_ok & is_own[e_ok] & ~ambiguous[rows, j_ok]
        counts["ok"].add(e_ok[sel], veh[sel])
        sel = near & is_own[e_asg] & ~ambiguous[rows, j_asg]
        counts["assigned"].add(e_asg[sel], veh[sel])
        # every (sample, own edge) pair within the radius, judged at the edge's nearest point (outside its end
        # margins), whatever the assignment
        order = np.argsort(dist, axis=1)
        d_s = np.take_along_axis(dist, order, 1)
        l_s = np.take_along_axis(line, order, 1)
        r_i, c_i = np.nonzero(np.isfinite(d_s) & is_own[l_s])  # row-major: nearest piece first in each row
        if r_i.size:
            _, first = np.unique(r_i * np.int64(n_lines) + l_s[r_i, c_i], return_index=True)
            r_f, c_f = r_i[first], c_i[first]
            keep = ~np.take_along_axis(ambiguous, order, 1)[r_f, c_f]
            counts["within"].add(l_s[r_f, c_f][keep], veh[r_f][keep])
            counts["within_all"].add(l_s[r_f, c_f], veh[r_f])


# ---- output files -----------------------------------------------------------------------------------------------
def _atomic_write(path: str | os.PathLike[str], text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def midpoint_lonlat(lonlat: np.ndarray) -> tuple[float, float]:
    """The point halfway along a lon/lat polyline (local equirectangular lengths)."""
    lonlat = np.asarray(lonlat, dtype=np.float64)
    k = math.cos(math.radians(float(np.mean(lonlat[:, 1]))))
    cum = polyline_lengths(np.column_stack([lonlat[:, 0] * k, lonlat[:, 1]]))
    if cum[-1] <= 0:
        return float(lonlat[0, 0]), float(lonlat[0, 1])
    h = cum[-1] / 2.0
    return float(np.interp(h, cum, lonlat[:, 0])), float(np.interp(h, cum, lonlat[:, 1]))


def edges_lonlat(graph: RoadGraph, to_lonlat: XYTransform | None = None) -> list[np.ndarray]:
    """Each edge's coordinates in WGS84 lon/lat, in edge order."""
    if not graph.edges:
        return []
    if to_lonlat is None:
        to_lonlat = lonlat_transform(graph.crs_wkt)
    allp = np.concatenate([np.asarray(e.coords, dtype=np.float64) for e in graph.edges])
    lon, lat = to_lonlat(allp[:, 0], allp[:, 1])
    out, i = [], 0
    for e in graph.edges:
        n = len(e.coords)
        out.append(np.column_stack([lon[i:i + n], lat[i:i + n]]))
        i += n
    return out


VERIFICATION_FIELDS = ["id", "u", "v", "length_m", "confidence", "n_samples", "n_vehicles", "support_per_100m",
                       "confirmed", "reason", "mid_lon", "mid_lat", "lon_start", "lat_start", "lon_end", "lat_end",
                       "osm_node_start", "osm_node_end", "wkt"]


def verification_rows(graph: RoadGraph, to_lonlat: XYTransform | None = None) -> list[dict]:
    """One dict per edge with the verification figures and WGS84 geometry (`lonlat` key holds the array)."""
    rows = []
    for e, ll in zip(graph.edges, edges_lonlat(graph, to_lonlat), strict=True):
        mlon, mlat = midpoint_lonlat(ll)
        a = e.attrs
        rows.append({
            "id": int(e.id), "u": int(e.u), "v": int(e.v), "length_m": round(float(e.length_m), 2),
            "confidence": round(float(e.confidence), 4),
            "n_samples": a.get("n_samples"), "n_vehicles": a.get("n_vehicles"),
            "support_per_100m": a.get("support_per_100m"), "confirmed": a.get("confirmed"),
            "reason": a.get("reason", ""),
            "mid_lon": round(mlon, 7), "mid_lat": round(mlat, 7),
            "lon_start": round(float(ll[0, 0]), 7), "lat_start": round(float(ll[0, 1]), 7),
            "lon_end": round(float(ll[-1, 0]), 7), "lat_end": round(float(ll[-1, 1]), 7),
            "osm_node_start": a.get("osm_node_u"), "osm_node_end": a.get("osm_node_v"),
            "lonlat": ll,
        })
    return rows


def write_verification(graph: RoadGraph, csv_path: str | os.PathLike[str] | None,
                       geojson_path: str | os.PathLike[str] | None, to_lonlat: XYTransform | None = None) -> None:
    """verification.csv (one row per segment, WKT in WGS84) and verification.geojson (LineStrings in WGS84).

    Each file is written to a temporary name and renamed into place. `confirmed` is true/false, or empty (CSV) /
    null (GeoJSON) when verification was not done.
    """
    rows = verification_rows(graph, to_lonlat)
    if csv_path is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=VERIFICATION_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            ll = r["lonlat"]
            out = {k: r[k] for k in VERIFICATION_FIELDS if k != "wkt"}
            out = {k: ("" if v is None else (str(v).lower() if isinstance(v, bool) else v)) for k, v in out.items()}
            out["wkt"] = "LINESTRING (" + ", ".join(f"{x:.7f} {y:.7f}" for x, y in ll) + ")"
            w.writerow(out)
        _atomic_write(csv_path, buf.getvalue())
    if geojson_path is not None:
        feats = []
        for r in rows:
            props = {k: r[k] for k in VERIFICATION_FIELDS if k != "wkt"}
            coords = [[round(float(x), 7), round(float(y), 7)] for x, y in r["lonlat"]]
            feats.append({"type": "Feature", "id": r["id"], "properties": props,
                          "geometry": {"type": "LineString", "coordinates": coords}})
        fc = {"type": "FeatureCollection", "features": feats}
        _atomic_write(geojson_path, json.dumps(fc, separators=(",", ":")) + "\n")
