"""A synthetic labelled city: imagery, road-area labels, road vectors and simulated GPS, from one seed.

Made for tests, benchmarks and domain-shift experiments, so it carries the things that make road extraction
hard: tree canopy over stretches of road, building shadows across streets, parking lots and plazas paved like
roads (not labelled), a railway (not a road), dirt tracks barely different from the bare fields around them,
curved residential streets and cul-de-sacs, and uneven GPS coverage from `roadmap_cli.simulate`.

Layout: a grid of (slightly skewed) arterials splits the area into blocks; each block is residential (curved
streets, houses, gardens), commercial (big buildings, parking lots with service roads), park (trees, plaza,
footpaths, a pond) or fields (parcels and dirt tracks). Everything is generated in local metres (u east,
v south, origin at the top-left corner), moved to a UTM grid at 0.5 m, and drawn with vectorised rasterisation
and numpy; `--style` switches palette, textures and densities (a different-looking "city").

Labels are `labels.rasterize_roads` of the very road vectors written to roads.geojson, so they agree exactly.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roadmap_cli.errors import RoadmapError

RESOLUTION = 0.5  # metres per pixel
DEFAULT_EPSG = 32633  # UTM 33N
DEFAULT_ORIGIN = (389000.0, 5821000.0)  # top-left corner (easting, northing)
EXTEND = 30.0  # arterials and edge streets run this far past the image border (so they leave the area)
LANE_WIDTH = 3.5

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Style:
    """Palette, textures and densities of one synthetic "city"."""

    name: str
    lawn: Colour
    grass: Colour
    soil: Colour
    crops: tuple[Colour, ...]
    ground_commercial: Colour
    plaza: Colour
    asphalt: Colour
    dirt: Colour
    path: Colour
    marking: Colour
    roofs: tuple[Colour, ...]
    tree: Colour
    water: Colour
    ballast: Colour
    landuse: dict[str, float]
    building_density: float = 0.8
    tree_density: float = 1.0  # multiplier
    avenue_prob: float = 0.25  # residential streets under closed canopy
    arterial_spacing: tuple[float, float] = (280.0, 420.0)
    street_spacing: tuple[float, float] = (60.0, 90.0)
    curviness: float = 18.0  # metres of wiggle on residential streets
    skew: float = 0.06  # max slope of arterials
    texture: float = 14.0  # amplitude of ground texture (grey levels)
    shadow: float = 0.5  # brightness factor in shadow
    sun: tuple[float, float] = (-0.55, -0.75)  # shadow direction per metre of height, in (u, v)
    house_size: tuple[float, float] = (8.0, 14.0)
    lanes_arterial: tuple[int, ...] = (4, 4, 6)


STYLES: dict[str, Style] = {
    "a": Style(
        name="temperate",
        lawn=(96, 128, 72), grass=(84, 122, 60), soil=(138, 118, 92),
        crops=((120, 140, 70), (160, 150, 100), (100, 120, 60), (142, 122, 94)),
        ground_commercial=(150, 146, 138), plaza=(170, 164, 152), asphalt=(88, 88, 92), dirt=(146, 126, 100),
        path=(176, 168, 150), marking=(235, 235, 225),
        roofs=((150, 70, 55), (170, 90, 70), (110, 105, 105), (90, 80, 75), (185, 110, 80), (140, 140, 150)),
        tree=(52, 88, 44), water=(48, 70, 82), ballast=(112, 104, 96),
        landuse={"residential": 0.5, "commercial": 0.2, "park": 0.12, "fields": 0.18},
        street_spacing=(48.0, 72.0),
    ),
    "b": Style(
        name="arid",
        lawn=(176, 156, 124), grass=(150, 146, 100), soil=(196, 170, 132),
        crops=((170, 160, 110), (200, 176, 136), (150, 150, 96), (190, 166, 128)),
        ground_commercial=(190, 180, 164), plaza=(214, 204, 186), asphalt=(70, 70, 74), dirt=(202, 176, 138),
        path=(222, 210, 190), marking=(250, 250, 240),
        roofs=((226, 222, 214), (200, 186, 160), (180, 170, 150), (236, 236, 236), (160, 150, 140)),
        tree=(86, 100, 62), water=(60, 96, 110), ballast=(150, 136, 120),
        landuse={"residential": 0.55, "commercial": 0.25, "park": 0.05, "fields": 0.15},
        building_density=0.95, tree_density=0.35, avenue_prob=0.08, arterial_spacing=(240.0, 320.0),
        street_spacing=(50.0, 70.0), curviness=8.0, skew=0.0, texture=10.0, shadow=0.42, sun=(0.5, -0.8),
        house_size=(10.0, 16.0), lanes_arterial=(4, 6, 6),
    ),
    "c": Style(
        name="dense",
        lawn=(110, 118, 96), grass=(92, 116, 74), soil=(124, 114, 100),
        crops=((110, 126, 80), (132, 126, 104), (118, 114, 96)),
        ground_commercial=(128, 128, 128), plaza=(150, 150, 146), asphalt=(104, 104, 108), dirt=(130, 120, 104),
        path=(160, 160, 150), marking=(220, 220, 200),
        roofs=((90, 96, 110), (120, 124, 130), (70, 74, 80), (150, 150, 156), (100, 110, 120), (160, 90, 70)),
        tree=(60, 84, 56), water=(40, 56, 64), ballast=(100, 96, 92),
        landuse={"residential": 0.45, "commercial": 0.4, "park": 0.1, "fields": 0.05},
        building_density=1.0, tree_density=0.6, avenue_prob=0.15, arterial_spacing=(200.0, 300.0),
        street_spacing=(45.0, 65.0), curviness=10.0, skew=0.1, texture=8.0, shadow=0.45, sun=(-0.7, 0.6),
        house_size=(12.0, 22.0),
    ),
}
STYLE_ALIASES = {s.name: k for k, s in STYLES.items()}


def resolve_style(name: str) -> Style:
    """A style by letter (a, b, c) or name (temperate, arid, dense)."""
    key = (name or "a").strip().lower()
    key = STYLE_ALIASES.get(key, key)
    if key not in STYLES:
        choices = ", ".join(f"{k} ({s.name})" for k, s in STYLES.items())
        raise RoadmapError(f"--style {name}: unknown; choose from {choices}")
    return STYLES[key]


# ---- geometry helpers ------------------------------------------------------------------------------------------
@dataclass
class _Road:
    coords: np.ndarray  # (M, 2) local metres
    highway: str
    lanes: int

    @property
    def width(self) -> float:
        return self.lanes * LANE_WIDTH


@dataclass
class _Scene:
    L: float
    roads: list[_Road] = field(default_factory=list)
    blocks: list[tuple[np.ndarray, int]] = field(default_factory=list)  # (quad (4,2), landuse id)
    buildings: list[tuple[np.ndarray, float, Colour]] = field(default_factory=list)  # (rect (4,2), height, roof)
    trees: list[tuple[float, float, float]] = field(default_factory=list)  # (u, v, radius)
    lots: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (quad, angle of stall rows)
    plazas: list[np.ndarray] = field(default_factory=list)
    paths: list[np.ndarray] = field(default_factory=list)
    ponds: list[np.ndarray] = field(default_factory=list)
    parcels: list[tuple[np.ndarray, Colour, float, float]] = field(default_factory=list)  # quad, colour, angle, period
    cars: list[np.ndarray] = field(default_factory=list)  # rect (4,2)
    car_colours: list[Colour] = field(default_factory=list)
    rail: np.ndarray | None = None


LANDUSE = ("residential", "commercial", "park", "fields")


def _rect(c: np.ndarray, along: np.ndarray, length: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners of rectangles centred at c (N,2), long side along unit vectors `along` (N,2)."""
    nrm = np.column_stack([-along[:, 1], along[:, 0]])
    a = along * (length / 2)[:, None]
    b = nrm * (depth / 2)[:, None]
    return np.stack([c - a - b, c + a - b, c + a + b, c - a + b], axis=1)


def _resample(coords: np.ndarray, step: float, start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Points every `step` metres along a polyline and the unit tangent at each."""
    seg = np.diff(coords, axis=0)
    slen = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(slen)])
    d = np.arange(start, cum[-1], step)
    if d.size == 0:
        return np.empty((0, 2)), np.empty((0, 2))
    k = np.clip(np.searchsorted(cum, d, side="right") - 1, 0, len(seg) - 1)
    f = (d - cum[k]) / np.maximum(slen[k], 1e-9)
    pts = coords[k] + seg[k] * f[:, None]
    tan = seg[k] / np.maximum(slen[k], 1e-9)[:, None]
    return pts, tan


def _line_cross(vl: tuple[float, float], hl: tuple[float, float]) -> np.ndarray:
    """Crossing of u = a + b v (vertical-ish) and v = c + d u (horizontal-ish)."""
    a, b = vl
    c, d = hl
    u = (a + b * c) / (1.0 - b * d)
    return np.array([u, c + d * u])


def _block_map(corners: dict[str, np.ndarray], front: str):
    """f(s, t) over a block quad with t = 0 on the `front` side and s along it (bilinear)."""
    order = {"top": ("tl", "tr", "bl", "br"), "bottom": ("br", "bl", "tr", "tl"),
             "left": ("bl", "tl", "br", "tr"), "right": ("tr", "br", "tl", "bl")}[front]
    q00, q10, q01, q11 = (corners[k] for k in order)

    def f(s, t):
        s = np.asarray(s, dtype=float)[..., None]
        t = np.asarray(t, dtype=float)[..., None]
        return (1 - s) * (1 - t) * q00 + s * (1 - t) * q10 + (1 - s) * t * q01 + s * t * q11

    return f


# ---- layout -----------------------------------------------------------------------------------------------------
def _arterials(L: float, rng: np.random.Generator, st: Style):
    def positions() -> list[float]:
        lo, hi = st.arterial_spacing
        p = rng.uniform(0.35, 0.75) * lo
        out = []
        while p < L - 0.25 * lo:
            out.append(p)
            p += rng.uniform(lo, hi)
        if not out:
            out.append(rng.uniform(0.3, 0.7) * L)
        return out

    vert = [(p - 0.5 * L * b, b) for p in positions() for b in [rng.uniform(-st.skew, st.skew)]]
    horiz = [(p - 0.5 * L * d, d) for p in positions() for d in [rng.uniform(-st.skew, st.skew)]]
    return vert, horiz


def _layout(L: float, rng: np.random.Generator, st: Style) -> _Scene:
    sc = _Scene(L)
    vert, horiz = _arterials(L, rng, st)
    lo, hi = -EXTEND, L + EXTEND
    vlines = [(lo, 0.0)] + vert + [(hi, 0.0)]
    hlines = [(lo, 0.0)] + horiz + [(hi, 0.0)]
    is_road_v = [False] + [True] * len(vert) + [False]
    is_road_h = [False] + [True] * len(horiz) + [False]
    for i, (a, b) in enumerate(vert):
        top, bot = _line_cross((a, b), hlines[0]), _line_cross((a, b), hlines[-1])
        lanes = int(rng.choice(st.lanes_arterial))
        sc.roads.append(_Road(np.array([top, bot]), "primary" if lanes >= 6 or i % 2 == 0 else "secondary", lanes))
    for j, (c, d) in enumerate(horiz):
        left, right = _line_cross(vlines[0], (c, d)), _line_cross(vlines[-1], (c, d))
        lanes = int(rng.choice(st.lanes_arterial))
        sc.roads.append(_Road(np.array([left, right]), "primary" if lanes >= 6 or j % 2 == 1 else "secondary",
                              lanes))
    names = list(st.landuse)
    w = np.array([st.landuse[k] for k in names])
    for i in range(len(vlines) - 1):
        for j in range(len(hlines) - 1):
            corners = {
                "tl": _line_cross(vlines[i], hlines[j]), "tr": _line_cross(vlines[i + 1], hlines[j]),
                "bl": _line_cross(vlines[i], hlines[j + 1]), "br": _line_cross(vlines[i + 1], hlines[j + 1]),
            }
            sides = {"top": is_road_h[j], "bottom": is_road_h[j + 1], "left": is_road_v[i], "right": is_road_v[i + 1]}
            use = names[int(rng.choice(len(names), p=w / w.sum()))]
            quad = np.array([corners["tl"], corners["tr"], corners["br"], corners["bl"]])
            sc.blocks.append((quad, LANDUSE.index(use)))
            {"residential": _residential, "commercial": _commercial, "park": _park, "fields": _fields}[use](
                sc, corners, sides, rng, st)
    _railway(sc, rng)
    return sc


def _pick_front(sides: dict[str, bool], rng: np.random.Generator) -> str:
    roads = [k for k in ("top", "bottom", "left", "right") if sides[k]]
    return str(rng.choice(roads)) if roads else "top"


def _extent(f, axis: str) -> float:
    """Length in metres of the block along s (axis='s') or t (axis='t') through its middle."""
    if axis == "s":
        p, q = f(0.0, 0.5), f(1.0, 0.5)
    else:
        p, q = f(0.5, 0.0), f(0.5, 1.0)
    return float(np.hypot(*(q - p)))


def _residential(sc: _Scene, corners, sides, rng, st: Style) -> None:
    # Streets run parallel to a road side ("front"), from one side boundary to the other or into a cul-de-sac.
    front = "top" if sides["top"] or sides["bottom"] else "left"
    f = _block_map(corners, front)
    depth, width = _extent(f, "t"), _extent(f, "s")
    n = max(1, int(depth / rng.uniform(*st.street_spacing)) - 1)
    ts = (np.arange(1, n + 1) / (n + 1)) + rng.uniform(-0.15, 0.15, n) / (n + 1)
    n_pts = max(8, int(width / 12))
    s = np.linspace(0.0, 1.0, n_pts)
    amp = min(st.curviness, 0.25 * depth / (n + 1)) / max(depth, 1.0)
    streets: list[tuple[np.ndarray, int, int]] = []  # coords, first index, last index (into s)
    for t in ts:
        wig = amp * np.sin(np.pi * s) * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * s + rng.uniform(0, 2 * np.pi))
        pts = f(s, t + wig)
        i0, i1 = 0, n_pts - 1
        if rng.random() < 0.3:  # cul-de-sac from one side
            cut = int(rng.uniform(0.4, 0.75) * n_pts)
            if rng.random() < 0.5:
                i1 = cut
            else:
                i0 = cut
        streets.append((pts, i0, i1))
        sc.roads.append(_Road(pts[i0:i1 + 1], "residential", 2))
    # Cross streets between neighbouring streets (and from the front road to the first street).
    front_pts = f(s, np.zeros_like(s)) if sides[front] else None
    prev = (front_pts, 0, n_pts - 1) if front_pts is not None else None
    for cur in streets:
        if prev is not None:
            k_choices = np.arange(2, n_pts - 2)
            n_cross = max(1, int(width / rng.uniform(120, 220)))
            for k in np.sort(rng.choice(k_choices, size=min(n_cross, k_choices.size), replace=False)):
                if prev[1] <= k <= prev[2] and cur[1] <= k <= cur[2]:
                    a, b = prev[0][k], cur[0][k]
                    sc.roads.append(_Road(np.array([a, (a + b) / 2 + rng.normal(0, 2.0, 2), b]), "residential", 2))
        prev = cur
    # Houses along every residential street of the block, trees in gardens and along some streets.
    for pts, i0, i1 in streets:
        line = pts[i0:i1 + 1]
        _houses_along(sc, line, 3.5, rng, st)
        avenue = rng.random() < st.avenue_prob
        _street_trees(sc, line, 3.5, rng, st, avenue)
    quad = np.array([corners["tl"], corners["tr"], corners["br"], corners["bl"]])
    _scatter_trees(sc, quad, rng, 0.0009 * st.tree_density, (2.5, 5.0))
    _parked_cars(sc, [p[0][p[1]:p[2] + 1] for p in streets], rng, 0.015)


def _houses_along(sc: _Scene, line: np.ndarray, half_width: float, rng, st: Style) -> None:
    pts, tan = _resample(line, rng.uniform(15.0, 22.0), start=rng.uniform(4.0, 10.0))
    if pts.size == 0:
        return
    for side in (-1.0, 1.0):
        m = len(pts)
        keep = rng.random(m) < st.building_density
        length = rng.uniform(*st.house_size, m)
        depth = rng.uniform(0.7, 1.0, m) * length
        setback = rng.uniform(4.0, 8.0, m)
        nrm = np.column_stack([-tan[:, 1], tan[:, 0]]) * side
        c = pts + nrm * (half_width + setback + depth / 2)[:, None]
        rects = _rect(c, tan, length, depth)
        for r, k in zip(rects, keep, strict=True):
            if k:
                sc.buildings.append((r, float(rng.uniform(4.0, 10.0)), _roof(rng, st)))


def _roof(rng, st: Style) -> Colour:
    base = np.array(st.roofs[int(rng.integers(len(st.roofs)))], dtype=float)
    return tuple(np.clip(base * rng.uniform(0.88, 1.12) + rng.normal(0, 5, 3), 0, 255).tolist())  # type: ignore


def _street_trees(sc: _Scene, line: np.ndarray, half_width: float, rng, st: Style, avenue: bool) -> None:
    if not avenue and rng.random() > 0.5 * st.tree_density:
        return
    step = rng.uniform(7.0, 10.0) if avenue else rng.uniform(10.0, 18.0)
    pts, tan = _resample(line, step, start=rng.uniform(0, step))
    if pts.size == 0:
        return
    if avenue:  # canopy closes over a stretch of the street, not all of it
        n = len(pts)
        a = int(rng.uniform(0.0, 0.5) * n)
        b = min(n, a + max(2, int(rng.uniform(0.3, 0.6) * n)))
        pts, tan = pts[a:b], tan[a:b]
    nrm = np.column_stack([-tan[:, 1], tan[:, 0]])
    for side in (-1.0, 1.0):
        off = (half_width - rng.uniform(0.0, 1.0, len(pts))) if avenue else half_width + rng.uniform(1.0, 3.0, len(pts))
        rad = rng.uniform(4.5, 6.5, len(pts)) if avenue else rng.uniform(2.5, 4.5, len(pts))
        c = pts + nrm * side * off[:, None]
        keep = rng.random(len(pts)) < (0.95 if avenue else 0.7)
        sc.trees += [(float(x), float(y), float(r)) for (x, y), r in zip(c[keep], rad[keep], strict=True)]


def _scatter_trees(sc: _Scene, quad: np.ndarray, rng, per_m2: float, radius: tuple[float, float]) -> None:
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    area = float(np.prod(hi - lo))
    n = rng.poisson(per_m2 * area)
    if n == 0:
        return
    import shapely

    pts = rng.uniform(lo, hi, (n, 2))
    inside = shapely.contains_xy(shapely.Polygon(quad), pts[:, 0], pts[:, 1])
    rad = rng.uniform(*radius, n)
    sc.trees += [(float(x), float(y), float(r)) for (x, y), r in zip(pts[inside], rad[inside], strict=True)]


def _parked_cars(sc: _Scene, lines: list[np.ndarray], rng, per_m: float) -> None:
    for line in lines:
        pts, tan = _resample(line, 1.0 / max(per_m, 1e-6), start=rng.uniform(0, 1.0 / max(per_m, 1e-6)))
        if pts.size == 0:
            continue
        side = rng.choice([-1.0, 1.0], len(pts))
        nrm = np.column_stack([-tan[:, 1], tan[:, 0]]) * side[:, None]
        c = pts + nrm * 2.4
        _add_cars(sc, c, tan, rng)


def _add_cars(sc: _Scene, centres: np.ndarray, along: np.ndarray, rng) -> None:
    if len(centres) == 0:
        return
    rects = _rect(centres, along, rng.uniform(4.2, 4.9, len(centres)), rng.uniform(1.8, 2.0, len(centres)))
    palette = np.array([(235, 235, 235), (30, 30, 34), (150, 150, 155), (170, 30, 30), (40, 60, 120),
                        (200, 200, 205), (90, 90, 95), (220, 200, 120)], dtype=float)
    cols = palette[rng.integers(len(palette), size=len(centres))]
    sc.cars += list(rects)
    sc.car_colours += [tuple(c) for c in cols.tolist()]


def _commercial(sc: _Scene, corners, sides, rng, st: Style) -> None:
    front = _pick_front(sides, rng)
    f = _block_map(corners, front)
    width = _extent(f, "s")
    n_par = max(1, int(width / rng.uniform(90, 160)))
    edges = np.linspace(0.04, 0.96, n_par + 1)
    for s0, s1 in zip(edges[:-1], edges[1:], strict=True):
        gap = 0.04 * (s1 - s0)
        a, b = s0 + gap, s1 - gap
        t_lot = rng.uniform(0.3, 0.45)
        lot = np.array([f(a, 0.06), f(b, 0.06), f(b, t_lot), f(a, t_lot)])
        d = lot[1] - lot[0]
        sc.lots.append((lot, math.atan2(d[1], d[0])))
        # a service road from the front road into the lot's aisle
        if sides[front]:
            sm = (a + b) / 2
            sc.roads.append(_Road(np.array([f(sm, 0.0), f(sm, t_lot - 0.03)]), "service", 2))
        bt0, bt1 = t_lot + rng.uniform(0.04, 0.1), rng.uniform(0.75, 0.93)
        bs0, bs1 = a + rng.uniform(0.0, 0.15) * (b - a), b - rng.uniform(0.0, 0.15) * (b - a)
        rect = np.array([f(bs0, bt0), f(bs1, bt0), f(bs1, bt1), f(bs0, bt1)])
        sc.buildings.append((rect, float(rng.uniform(8.0, 25.0)), _roof(rng, st)))
        _lot_cars(sc, lot, rng)
    quad = np.array([corners["tl"], corners["tr"], corners["br"], corners["bl"]])
    _scatter_trees(sc, quad, rng, 0.0002 * st.tree_density, (2.5, 4.0))


def _lot_cars(sc: _Scene, lot: np.ndarray, rng) -> None:
    """Cars in a fraction of the stalls: rows 5 m deep on both sides of 6 m aisles, stalls 2.6 m wide."""
    d = lot[1] - lot[0]
    length = float(np.hypot(*d))
    ax = d / max(length, 1e-9)
    ay = np.array([-ax[1], ax[0]])
    depth = float(np.dot(lot[3] - lot[0], ay))
    if depth < 0:
        ay, depth = -ay, -depth
    cols = np.arange(1.3, length - 1.3, 2.6)
    rows = [r for r in np.arange(2.5, depth, 16.0)] + [r for r in np.arange(13.5, depth, 16.0)]
    rows = [r for r in rows if r + 2.5 < depth]
    if not len(cols) or not rows:
        return
    cc, rr = np.meshgrid(cols, np.array(rows))
    centres = lot[0] + cc.reshape(-1, 1) * ax + rr.reshape(-1, 1) * ay
    keep = rng.random(len(centres)) < rng.uniform(0.15, 0.6)
    _add_cars(sc, centres[keep], np.tile(ay, (int(keep.sum()), 1)), rng)


def _park(sc: _Scene, corners, sides, rng, st: Style) -> None:
    quad = np.array([corners["tl"], corners["tr"], corners["br"], corners["bl"]])
    f = _block_map(corners, "top")
    cs, ct = rng.uniform(0.35, 0.65, 2)
    r = rng.uniform(0.1, 0.16)
    plaza = np.array([f(cs - r, ct - r), f(cs + r, ct - r), f(cs + r, ct + r), f(cs - r, ct + r)])
    sc.plazas.append(plaza)
    for corner in ((0.02, 0.02), (0.98, 0.02), (0.98, 0.98), (0.02, 0.98)):
        s = np.linspace(corner[0], cs, 12)
        t = np.linspace(corner[1], ct, 12) + 0.03 * np.sin(np.linspace(0, np.pi, 12)) * rng.uniform(-1, 1)
        sc.paths.append(f(s, t))
    if rng.random() < 0.6:
        ps, pt = (0.2 if cs > 0.5 else 0.8), rng.uniform(0.25, 0.75)
        ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        rr = 0.09 * (1 + 0.15 * np.sin(3 * ang + rng.uniform(0, 6)))
        sc.ponds.append(f(ps + rr * np.cos(ang), pt + rr * 0.8 * np.sin(ang)))
    if rng.random() < 0.5 and sides["left"] and sides["right"]:  # a lane crossing the park under the trees
        t = rng.uniform(0.15, 0.3) if ct > 0.5 else rng.uniform(0.7, 0.85)
        s = np.linspace(0.0, 1.0, 14)
        line = f(s, t + 0.03 * np.sin(np.pi * s))
        sc.roads.append(_Road(line, "residential", 2))
        _street_trees(sc, line, 3.5, rng, st, avenue=True)
    _scatter_trees(sc, quad, rng, 0.004 * max(st.tree_density, 0.4), (3.0, 7.0))


def _fields(sc: _Scene, corners, sides, rng, st: Style) -> None:
    front = _pick_front(sides, rng)
    f = _block_map(corners, front)
    ns = int(rng.integers(2, 5))
    nt = int(rng.integers(1, 3))
    s_edges = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.15, 0.85, ns - 1)]))
    t_edges = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.3, 0.7, nt - 1)]))
    for s0, s1 in zip(s_edges[:-1], s_edges[1:], strict=True):
        for t0, t1 in zip(t_edges[:-1], t_edges[1:], strict=True):
            quad = np.array([f(s0, t0), f(s1, t0), f(s1, t1), f(s0, t1)])
            bare = rng.random() < 0.35
            col = st.soil if bare else st.crops[int(rng.integers(len(st.crops)))]
            sc.parcels.append((quad, tuple(np.asarray(col, float) * rng.uniform(0.93, 1.07)),  # type: ignore
                               float(rng.uniform(0, np.pi)), float(rng.uniform(3.0, 8.0))))
    # Dirt tracks along some parcel boundaries, from the front road into the fields.
    for s in s_edges[1:-1]:
        if rng.random() < 0.75:
            t_end = 1.0 if rng.random() < 0.5 else rng.uniform(0.5, 0.85)
            t = np.linspace(0.0, t_end, 16)
            ss = s + 0.01 * np.sin(np.linspace(0, 3 * np.pi, 16) + rng.uniform(0, 6))
            ss[0] = s
            if t_end == 1.0:
                ss[-1] = s
            sc.roads.append(_Road(f(ss, t), "track", 1))
    quad = np.array([corners["tl"], corners["tr"], corners["br"], corners["bl"]])
    _scatter_trees(sc, quad, rng, 0.00015 * st.tree_density, (3.0, 6.0))


def _railway(sc: _Scene, rng) -> None:
    L = sc.L
    ang = rng.uniform(0.15, 0.6) * rng.choice([-1, 1]) + rng.choice([0.0, np.pi / 2])
    c = np.array([rng.uniform(0.3, 0.7) * L, rng.uniform(0.3, 0.7) * L])
    d = np.array([math.cos(ang), math.sin(ang)])
    sc.rail = np.array([c - d * 2 * L, c + d * 2 * L])


# ---- drawing ----------------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, ...]) -> np.ndarray:
    """Smooth multi-scale noise (std ~1): bilinear upsampling of coarse Gaussian grids."""
    from scipy.ndimage import zoom

    h, w = shape
    out = np.zeros(shape, dtype=np.float32)
    for k, c in enumerate(cells):
        small = rng.normal(size=(h // c + 2, w // c + 2)).astype(np.float32)
        out += zoom(small, c, order=1)[:h, :w] * (0.6 ** k)
    return out / np.float32(out.std() + 1e-6)


class _Canvas:
    def __init__(self, grid, origin: tuple[float, float]) -> None:
        from affine import Affine

        self.grid = grid
        self.h, self.w = grid.height, grid.width
        self.affine = Affine(*grid.transform)
        self.x0, self.y0 = origin

    def to_crs(self, geoms):
        import shapely

        x0, y0 = self.x0, self.y0
        return shapely.transform(geoms, lambda c: np.column_stack([x0 + c[:, 0], y0 - c[:, 1]]))

    def burn(self, geoms, values=None, dtype=np.uint8, all_touched: bool = False) -> np.ndarray:
        from rasterio.features import rasterize

        out = np.zeros((self.h, self.w), dtype=dtype)
        if len(geoms) == 0:
            return out
        g = self.to_crs(np.asarray(geoms, dtype=object))
        vals = np.ones(len(g)) if values is None else values
        rasterize(zip(g, vals, strict=True), out_shape=out.shape, transform=self.affine, out=out, fill=0,
                  dtype=dtype, all_touched=all_touched)
        return out


def _paint(img: np.ndarray, mask: np.ndarray, colour, jitter: np.ndarray | None = None, amp: float = 0.0) -> None:
    col = np.asarray(colour, dtype=np.float32)
    if jitter is None:
        img[mask] = col
    else:
        img[mask] = col + (amp * jitter[mask])[:, None]


def _render(sc: _Scene, grid, origin, rng: np.random.Generator, st: Style, road_mask: np.ndarray,
            track_mask: np.ndarray) -> np.ndarray:
    import shapely

    cv = _Canvas(grid, origin)
    H, W = cv.h, cv.w
    tex = _noise(rng, (H, W), (4, 16, 64))
    fine = rng.normal(size=(H, W)).astype(np.float32)
    img = np.empty((H, W, 3), dtype=np.float32)
    # Land cover of each block.
    landuse = cv.burn([shapely.Polygon(q) for q, _ in sc.blocks], np.array([u + 1 for _, u in sc.blocks]))
    ground = np.array([st.lawn, st.lawn, st.ground_commercial, st.grass, st.soil], dtype=np.float32)
    img[:] = ground[landuse]
    img += (st.texture * tex + 0.35 * st.texture * fine)[..., None]
    # Field parcels: crop colours with rows at an angle.
    if sc.parcels:
        pid = cv.burn([shapely.Polygon(p[0]) for p in sc.parcels], np.arange(1, len(sc.parcels) + 1),
                      dtype=np.int32)
        m = pid > 0
        rows, cols = np.nonzero(m)
        u = (cols + 0.5) * RESOLUTION
        v = (rows + 0.5) * RESOLUTION
        k = pid[m] - 1
        ang = np.array([p[2] for p in sc.parcels])[k]
        per = np.array([p[3] for p in sc.parcels])[k]
        stripes = np.sin(2 * np.pi * (u * np.cos(ang) + v * np.sin(ang)) / per)
        base = np.array([p[1] for p in sc.parcels], dtype=np.float32)[k]
        img[m] = base * (1.0 + 0.07 * stripes[:, None]) + (st.texture * 0.8 * tex[m])[:, None]
    # Ponds, plazas, parking lots (paved, not roads), footpaths.
    ponds = cv.burn([shapely.Polygon(p) for p in sc.ponds]) > 0
    _paint(img, ponds, st.water, tex, 4.0)
    plazas = cv.burn([shapely.Polygon(p) for p in sc.plazas]) > 0
    _paint(img, plazas, st.plaza, fine, 6.0)
    paths = cv.burn(list(shapely.buffer(shapely.linestrings(list(sc.paths)), 1.0))) > 0 if sc.paths else None
    if paths is not None:
        _paint(img, paths, st.path, fine, 5.0)
    if sc.lots:
        lid = cv.burn([shapely.Polygon(q) for q, _ in sc.lots], np.arange(1, len(sc.lots) + 1), dtype=np.int32)
        m = lid > 0
        rows, cols = np.nonzero(m)
        k = lid[m] - 1
        o = np.array([q[0] for q, _ in sc.lots])[k]
        ang = np.array([a for _, a in sc.lots])[k]
        du, dv = (cols + 0.5) * RESOLUTION - o[:, 0], (rows + 0.5) * RESOLUTION - o[:, 1]
        a = du * np.cos(ang) + dv * np.sin(ang)
        b = -du * np.sin(ang) + dv * np.cos(ang)
        b = np.abs(b)
        in_rows = (np.mod(b, 16.0) < 5.0) | (np.mod(b, 16.0) >= 11.0)
        line = in_rows & (np.mod(a, 2.6) < 0.45)
        col = np.asarray(st.asphalt, np.float32) * 1.08 + (6.0 * tex[m])[:, None]
        col[line] = np.asarray(st.marking, np.float32) * 0.9
        img[m] = col
    # Railway: ballast and two rails (not a road).
    if sc.rail is not None:
        rl = shapely.LineString(sc.rail)
        ballast = cv.burn([rl.buffer(2.6, cap_style="flat")]) > 0
        _paint(img, ballast, st.ballast, fine, 10.0)
        rails = cv.burn([rl.offset_curve(0.75), rl.offset_curve(-0.75)], all_touched=True) > 0
        _paint(img, rails, (60, 58, 56))
    # Roads: asphalt, dirt tracks barely different from bare soil, lane markings on arterials.
    tracks = (track_mask > 0) & (road_mask == 0)
    _paint(img, tracks, st.dirt, tex, st.texture * 0.8)
    img[tracks] += (0.3 * st.texture * fine[tracks])[:, None]
    ruts = [shapely.LineString(r.coords).offset_curve(o) for r in sc.roads if r.highway == "track" for o in (-0.8, 0.8)]
    if ruts:  # two wheel ruts along each dirt track
        rut = (cv.burn(ruts, all_touched=True) > 0) & tracks
        img[rut] *= 0.9
    paved = road_mask > 0
    _paint(img, paved, st.asphalt, tex, 5.0)
    img[paved] += (3.0 * fine[paved])[:, None]
    dashes = []
    for r in sc.roads:
        if r.highway not in ("primary", "secondary"):
            continue
        line = shapely.LineString(r.coords)
        for j in range(1, r.lanes):
            off = (j - r.lanes / 2) * LANE_WIDTH
            ln = line.offset_curve(off) if off else line
            if j * 2 == r.lanes:
                dashes.append(ln)  # solid centre line
                continue
            total = ln.length
            starts = np.arange(0.0, total, 12.0)
            for s0 in starts:
                dashes.append(shapely.ops.substring(ln, s0, min(s0 + 5.0, total)))
    if dashes:
        marks = cv.burn(dashes, all_touched=True) > 0
        marks &= paved
        _paint(img, marks, st.marking, fine, 6.0)
    # Cars (on streets and in lots).
    if sc.cars:
        cid = cv.burn([shapely.Polygon(c) for c in sc.cars], np.arange(1, len(sc.cars) + 1), dtype=np.int32)
        m = cid > 0
        img[m] = np.array(sc.car_colours, np.float32)[cid[m] - 1]
    # Shadows of buildings and trees, then roofs (gabled: two shades) and canopies.
    sun = np.array(st.sun)
    shade = np.zeros((H, W), dtype=bool)
    if sc.buildings:
        rects = np.array([b[0] for b in sc.buildings])
        hts = np.array([b[1] for b in sc.buildings])
        moved = rects + (hts[:, None, None] * sun[None, None, :])
        hull = shapely.convex_hull(shapely.multipoints(np.concatenate([rects, moved], axis=1)))
        shade |= cv.burn(list(hull)) > 0
    if sc.trees:
        tr = np.array(sc.trees)
        tree_shadow = shapely.buffer(shapely.points(tr[:, :2] + sun * tr[:, 2:3] * 1.4), tr[:, 2], quad_segs=4)
        shade |= cv.burn(list(tree_shadow)) > 0
    img[shade] *= st.shadow
    if sc.buildings:
        rects = np.array([b[0] for b in sc.buildings])
        mid_a = (rects[:, 0] + rects[:, 3]) / 2
        mid_b = (rects[:, 1] + rects[:, 2]) / 2
        half1 = np.stack([rects[:, 0], rects[:, 1], mid_b, mid_a], axis=1)
        half2 = np.stack([mid_a, mid_b, rects[:, 2], rects[:, 3]], axis=1)
        n = len(rects)
        polys = shapely.polygons(np.concatenate([half1, half2]))
        bid = cv.burn(list(polys), np.arange(1, 2 * n + 1), dtype=np.int32)
        m = bid > 0
        k = bid[m] - 1
        roof = np.array([b[2] for b in sc.buildings], np.float32)[k % n]
        factor = np.where(k < n, 1.0, 0.82).astype(np.float32)
        img[m] = roof * factor[:, None] + (4.0 * fine[m])[:, None]
        edge = cv.burn(list(shapely.boundary(shapely.polygons(rects))), all_touched=True) > 0
        img[edge & m] *= 0.8
    if sc.trees:
        tr = np.array(sc.trees)
        polys = shapely.buffer(shapely.points(tr[:, :2]), tr[:, 2], quad_segs=6)
        tid = cv.burn(list(polys), np.arange(1, len(tr) + 1), dtype=np.int32)
        m = tid > 0
        rows, cols = np.nonzero(m)
        k = tid[m] - 1
        du = (cols + 0.5) * RESOLUTION - tr[k, 0]
        dv = (rows + 0.5) * RESOLUTION - tr[k, 1]
        rr = np.clip((du**2 + dv**2) / tr[k, 2] ** 2, 0, 1)
        # lit on the side facing the sun, darker at the rim, leafy texture
        lit = 1.0 - 0.25 * np.clip((du * sun[0] + dv * sun[1]) / tr[k, 2], -1, 1)
        shade_f = (1.0 - 0.35 * rr) * lit
        img[m] = np.asarray(st.tree, np.float32) * shade_f[:, None].astype(np.float32) + (
            9.0 * fine[m] + 6.0 * tex[m])[:, None]
    # A touch of blur and sensor noise.
    from scipy.ndimage import gaussian_filter

    for c in range(3):
        img[..., c] = gaussian_filter(img[..., c], 0.6)
    img += rng.normal(0.0, 2.0, size=(H, W, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _prune(sc: _Scene) -> None:
    """Drop buildings that touch a road, the railway, a lot, a plaza or another building; trees on buildings;
    lots, plazas and ponds the railway runs through."""
    import shapely

    if sc.rail is not None:
        rail = shapely.LineString(sc.rail).buffer(6.0)
        sc.lots = [lot for lot in sc.lots if not shapely.Polygon(lot[0]).intersects(rail)]
        sc.plazas = [p for p in sc.plazas if not shapely.Polygon(p).intersects(rail)]
        sc.ponds = [p for p in sc.ponds if not shapely.Polygon(p).intersects(rail)]
    if sc.cars:  # cars stay on roads and in the remaining lots
        places = [shapely.LineString(r.coords).buffer(r.width / 2) for r in sc.roads] + \
            [shapely.Polygon(q) for q, _ in sc.lots]
        centres = shapely.points(np.array([c.mean(axis=0) for c in sc.cars]))
        ok = np.zeros(len(sc.cars), dtype=bool)
        i, _ = shapely.STRtree(places).query(centres, predicate="within")
        ok[i] = True
        if sc.rail is not None:
            ok &= shapely.distance(shapely.LineString(sc.rail), centres) > 4.0
        sc.cars = [c for c, k in zip(sc.cars, ok, strict=True) if k]
        sc.car_colours = [c for c, k in zip(sc.car_colours, ok, strict=True) if k]

    road_area = [shapely.LineString(r.coords).buffer(r.width / 2 + 1.5) for r in sc.roads]
    blockers = road_area + [shapely.Polygon(q).buffer(1.0) for q, _ in sc.lots] + \
        [shapely.Polygon(p) for p in sc.plazas] + [shapely.Polygon(p) for p in sc.ponds]
    if sc.rail is not None:
        blockers.append(shapely.LineString(sc.rail).buffer(8.0))
    blockers += [shapely.LineString(p).buffer(1.5) for p in sc.paths]
    if sc.buildings:
        polys = shapely.polygons(np.array([b[0] for b in sc.buildings]))
        tree = shapely.STRtree(blockers)
        hit = np.zeros(len(polys), dtype=bool)
        i, _ = tree.query(polys, predicate="intersects")
        hit[i] = True
        # among themselves: keep the first of any overlapping pair (commercial ones are generated last per block)
        own = shapely.STRtree(polys)
        a, b = own.query(polys, predicate="intersects")
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            if x < y and not hit[x]:
                hit[y] = True
        sc.buildings = [b for b, h in zip(sc.buildings, hit, strict=True) if not h]
    if sc.trees and sc.buildings:
        tr = np.array(sc.trees)
        polys = shapely.polygons(np.array([b[0] for b in sc.buildings]))
        inside = np.zeros(len(tr), dtype=bool)
        pts = shapely.points(tr[:, :2])
        i, _ = shapely.STRtree(polys).query(pts, predicate="within")
        inside[i] = True
        rail_near = np.zeros(len(tr), dtype=bool)
        if sc.rail is not None:
            rail_near = shapely.distance(shapely.LineString(sc.rail), pts) < tr[:, 2] + 3.0
        sc.trees = [t for t, x in zip(sc.trees, inside | rail_near, strict=True) if not x]
    if sc.cars and sc.buildings:
        polys = shapely.polygons(np.array([b[0] for b in sc.buildings]))
        cars = shapely.polygons(np.array(sc.cars))
        hit = np.zeros(len(cars), dtype=bool)
        i, _ = shapely.STRtree(polys).query(cars, predicate="intersects")
        hit[i] = True
        sc.cars = [c for c, h in zip(sc.cars, hit, strict=True) if not h]
        sc.car_colours = [c for c, h in zip(sc.car_colours, hit, strict=True) if not h]


def _traffic(sc: _Scene, rng) -> None:
    """Cars driving on arterials, in their lanes."""
    for r in sc.roads:
        if r.highway not in ("primary", "secondary"):
            continue
        pts, tan = _resample(r.coords, rng.uniform(25.0, 60.0), start=rng.uniform(0, 20))
        if pts.size == 0:
            continue
        lane = rng.integers(r.lanes, size=len(pts))
        off = (lane + 0.5 - r.lanes / 2) * LANE_WIDTH
        nrm = np.column_stack([-tan[:, 1], tan[:, 0]])
        _add_cars(sc, pts + nrm * off[:, None], tan, rng)


# ---- public API ---------------------------------------------------------------------------------------------------
HIGHWAY_TO_ROAD_TYPE = {"primary": 2, "secondary": 3, "residential": 5, "service": 6, "track": 7}
HIGHWAY_SPEED_KMH = {"primary": 60, "secondary": 50, "residential": 30, "service": 15, "track": 20}


@dataclass
class SynthCity:
    """What `make_city` returns: the grid, image (H,W,3), labels (H,W), roads (EPSG:4326) and a summary."""

    grid: Any
    image: np.ndarray
    labels: np.ndarray
    roads: Any  # GeoDataFrame, EPSG:4326
    summary: dict[str, Any]


def make_city(size: int = 2048, seed: int = 0, style: str = "a", epsg: int = DEFAULT_EPSG,
              origin: tuple[float, float] = DEFAULT_ORIGIN) -> SynthCity:
    """Generate a synthetic city of `size`×`size` pixels at 0.5 m (deterministic for a seed)."""
    import geopandas as gpd
    import shapely

    from roadmap_cli.grid import Grid
    from roadmap_cli.labels import rasterize_roads

    if size < 64:
        raise RoadmapError(f"--size {size}: at least 64 pixels")
    st = resolve_style(style)
    rng = np.random.default_rng(seed)
    L = size * RESOLUTION
    sc = _layout(L, rng, st)
    _traffic(sc, rng)
    _prune(sc)
    grid = Grid.create(f"EPSG:{epsg}", (RESOLUTION, 0.0, origin[0], 0.0, -RESOLUTION, origin[1]), size, size)
    x0, y0 = origin
    geoms = [shapely.LineString(np.column_stack([x0 + r.coords[:, 0], y0 - r.coords[:, 1]])) for r in sc.roads]
    props = {
        "road_id": np.arange(1, len(sc.roads) + 1),
        "highway": [r.highway for r in sc.roads],
        "road_type": [HIGHWAY_TO_ROAD_TYPE[r.highway] for r in sc.roads],
        "lane_number": [r.lanes for r in sc.roads],
        "maxspeed": [HIGHWAY_SPEED_KMH[r.highway] for r in sc.roads],
        "surface": ["unpaved" if r.highway == "track" else "asphalt" for r in sc.roads],
    }
    roads_utm = gpd.GeoDataFrame(props, geometry=geoms, crs=f"EPSG:{epsg}")
    # Keep only roads that reach the image (edge streets may lie wholly outside it).
    view = shapely.box(x0 - 5, y0 - L - 5, x0 + L + 5, y0 + 5)
    roads_utm = roads_utm[roads_utm.intersects(view)].reset_index(drop=True)
    roads_utm["road_id"] = np.arange(1, len(roads_utm) + 1)
    labels = rasterize_roads(roads_utm, grid, lane_width=LANE_WIDTH)
    is_track = (roads_utm["highway"] == "track").to_numpy()
    paved = rasterize_roads(roads_utm[~is_track], grid, lane_width=LANE_WIDTH) if (~is_track).any() else \
        np.zeros_like(labels)
    tracks = rasterize_roads(roads_utm[is_track], grid, lane_width=LANE_WIDTH) if is_track.any() else \
        np.zeros_like(labels)
    image = _render(sc, grid, origin, rng, st, paved, tracks)
    roads = roads_utm.to_crs("EPSG:4326")
    counts = roads_utm["highway"].value_counts().to_dict()
    summary = {
        "size": size, "seed": seed, "style": st.name, "resolution_m": RESOLUTION, "epsg": epsg,
        "roads": int(len(roads)), "roads_by_highway": {k: int(v) for k, v in sorted(counts.items())},
        "road_km": round(float(roads_utm.length.sum()) / 1000, 3),
        "road_fraction": round(float(labels.mean()), 4),
        "buildings": len(sc.buildings), "trees": len(sc.trees), "parking_lots": len(sc.lots),
        "plazas": len(sc.plazas), "cars": len(sc.cars),
    }
    return SynthCity(grid, image, labels, roads, summary)


def write_image(path: str | os.PathLike[str], image: np.ndarray, grid, overwrite: bool = True) -> Path:
    """RGB uint8 GeoTIFF, tiled 256, deflate (atomic)."""
    import rasterio
    from affine import Affine

    from roadmap_cli.workdir import atomic_output

    tiled = grid.width >= 256 and grid.height >= 256
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 3, "dtype": "uint8",
               "crs": grid.crs_wkt, "transform": Affine(*grid.transform), "compress": "deflate", "predictor": 2,
               "tiled": tiled, "photometric": "RGB", "interleave": "pixel"}
    if tiled:
        profile.update(blockxsize=256, blockysize=256)
    with atomic_output(path, overwrite=overwrite, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as ds:
        ds.write(np.moveaxis(image, -1, 0))
    return Path(path)


def write_roads_geojson(path: str | os.PathLike[str], roads, overwrite: bool = True) -> Path:
    """Road centrelines as GeoJSON (EPSG:4326), written atomically."""
    from roadmap_cli.workdir import atomic_output

    with atomic_output(path, overwrite=overwrite, suffix=".geojson") as tmp:
        roads.to_file(tmp, driver="GeoJSON", layer=Path(path).stem)
    return Path(path)


def synth(out_dir: str | os.PathLike[str], size: int = 2048, seed: int = 0, style: str = "a",
          gps_cfg: Any | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write image.tif, labels.tif, roads.geojson, gps.csv and synth.json into `out_dir`; return the summary."""
    from roadmap_cli.labels import write_mask
    from roadmap_cli.simulate import SimConfig, coord_decimals, resolve_profile, simulate, write_gps_csv
    from roadmap_cli.workdir import atomic_write_json, check_overwrite

    out = Path(out_dir)
    names = ["image.tif", "labels.tif", "roads.geojson", "gps.csv", "synth.json"]
    for n in names:
        check_overwrite(out / n, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RoadmapError(f"--out {out}: cannot create folder ({exc.strerror})") from exc
    t0 = time.perf_counter()
    city = make_city(size=size, seed=seed, style=style)
    t_city = time.perf_counter() - t0
    cfg = gps_cfg or SimConfig(seed=seed)
    gps = simulate(city.roads, cfg)
    t_gps = time.perf_counter() - t0 - t_city
    write_image(out / "image.tif", city.image, city.grid, overwrite=True)
    write_mask(out / "labels.tif", city.labels, city.grid, overwrite=True)
    write_roads_geojson(out / "roads.geojson", city.roads, overwrite=True)
    prof = resolve_profile(cfg.profile, cfg.intervals, cfg.coord_res)
    write_gps_csv(gps, out / "gps.csv", overwrite=True, decimals=coord_decimals([c[0] for c in prof.coord_res]))
    summary = dict(city.summary)
    summary["gps"] = {k: v for k, v in asdict(cfg).items()}
    summary["gps"]["samples"] = int(len(gps))
    summary["gps"]["samples_by_kind"] = {k: int(v) for k, v in sorted(gps["kind"].value_counts().items())}
    summary["grid"] = city.grid.to_dict()
    atomic_write_json(out / "synth.json", summary, overwrite=True)
    summary["seconds"] = {"city": round(t_city, 2), "gps": round(t_gps, 2)}
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the terminal."""
    return (f"synth: {summary['size']}² px '{summary['style']}' city, {summary['roads']} roads "
            f"({summary['road_km']} km, {100 * summary['road_fraction']:.1f}% road pixels), "
            f"{summary['buildings']} buildings, {summary['trees']} trees, {summary['gps']['samples']} GPS samples")


__all__ = ["STYLES", "Style", "SynthCity", "make_city", "synth", "resolve_style", "write_image",
           "write_roads_geojson", "summary_line"]
