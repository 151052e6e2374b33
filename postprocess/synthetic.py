"""Deterministic synthetic road probability rasters for tests and benchmarks.

A road network (a wobbly grid of streets, a few long curved roads and dead-end stubs, widths varying from road to
road) is defined once from a seed in pixel coordinates; `render_window` draws any window of it, so a raster far
larger than memory can be generated window by window and every window agrees with the whole. The raster looks like
a segmentation network's output: soft road edges, noise, false-positive blobs, small holes (cars, trees) and short
gaps where the probability sags below the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass
class SyntheticNetwork:
    """Segments (x0, y0, x1, y1, half_width, peak) of the roads plus blobs and holes, in pixel coordinates."""

    width: int
    height: int
    segments: np.ndarray  # (S, 6) float64: x0, y0, x1, y1, half width px, peak probability 0..1
    blobs: np.ndarray  # (B, 5) float64: x, y, radius x, radius y, peak probability (false positives)
    holes: np.ndarray  # (H, 4) float64: x, y, radius, floor probability (occlusions inside roads)
    seed: int


def _polyline_segments(xs: np.ndarray, ys: np.ndarray, hw: float, peak: float) -> list[tuple]:
    return [(xs[i], ys[i], xs[i + 1], ys[i + 1], hw, peak) for i in range(len(xs) - 1)]


def make_network(width: int, height: int, seed: int = 0, spacing: int = 700, step: int = 24) -> SyntheticNetwork:
    """A seeded road network covering a `width` x `height` raster."""
    rng = np.random.default_rng(seed)
    segs: list[tuple] = []
    stubs_from: list[tuple[float, float, float]] = []

    def wobble(n: int, length: float) -> np.ndarray:
        amp = rng.uniform(5, spacing * 0.12)
        period = rng.uniform(1200, 4000)
        phase = rng.uniform(0, 2 * np.pi)
        t = np.linspace(0, length, n)
        return amp * np.sin(2 * np.pi * t / period + phase)

    def add_road(xs: np.ndarray, ys: np.ndarray) -> None:
        hw = float(rng.choice([3.0, 4.0, 5.0, 6.0, 8.0, 11.0], p=[0.15, 0.3, 0.2, 0.15, 0.12, 0.08]))
        peak = float(rng.uniform(0.8, 1.0))
        # short gaps: drop the peak of a few consecutive segments below the threshold
        gap = np.zeros(len(xs) - 1, bool)
        for _ in range(rng.poisson(len(xs) / 150)):
            i = int(rng.integers(0, len(xs) - 1))
            gap[i:i + 1] = True
        for i in range(len(xs) - 1):
            segs.append((xs[i], ys[i], xs[i + 1], ys[i + 1], hw, 0.35 if gap[i] else peak))
        for _ in range(rng.poisson(len(xs) / 60)):
            i = int(rng.integers(1, len(xs) - 1))
            stubs_from.append((xs[i], ys[i], np.arctan2(ys[i + 1] - ys[i], xs[i + 1] - xs[i])))

    # a wobbly grid
    for y0 in np.arange(rng.uniform(0.3, 0.7) * spacing, height, spacing):
        n = max(2, int(width / step) + 2)
        xs = np.linspace(-20, width + 20, n)
        add_road(xs, y0 + rng.uniform(-0.2, 0.2) * spacing + wobble(n, width))
    for x0 in np.arange(rng.uniform(0.3, 0.7) * spacing, width, spacing):
        n = max(2, int(height / step) + 2)
        ys = np.linspace(-20, height + 20, n)
        add_road(x0 + rng.uniform(-0.2, 0.2) * spacing + wobble(n, height), ys)
    # long curved roads (arcs of circles) crossing the grid
    for _ in range(max(1, int(width * height / (4 * spacing * spacing * 8)))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.3, 1.0) * max(width, height)
        a0 = rng.uniform(0, 2 * np.pi)
        arc = rng.uniform(0.5, 1.5)
        n = max(2, int(r * arc / step))
        a = np.linspace(a0, a0 + arc, n)
        add_road(cx + r * np.cos(a), cy + r * np.sin(a))
    # dead-end stubs perpendicular to roads
    for x, y, ang in stubs_from:
        side = rng.choice([-1.0, 1.0])
        length = rng.uniform(80, 0.45 * spacing)
        n = max(2, int(length / step) + 1)
        t = np.linspace(0, length, n)
        ax = ang + side * np.pi / 2 + rng.uniform(-0.3, 0.3)
        hw = float(rng.choice([2.5, 3.0, 4.0]))
        segs.extend(_polyline_segments(x + t * np.cos(ax), y + t * np.sin(ax), hw, float(rng.uniform(0.75, 1.0))))

    area = width * height
    nb = rng.poisson(area / 60_000)
    blobs = np.column_stack([rng.uniform(0, width, nb), rng.uniform(0, height, nb),
                             rng.gamma(1.5, 6.0, nb) + 1.5, rng.gamma(1.5, 6.0, nb) + 1.5,
                             rng.uniform(0.3, 0.95, nb)])
    seg_arr = np.asarray(segs, dtype=np.float64).reshape(-1, 6)
    # holes sit on roads: pick random segments and points along them
    nh = rng.poisson(area / 150_000) if len(seg_arr) else 0
    idx = rng.integers(0, max(1, len(seg_arr)), nh)
    t = rng.uniform(0, 1, nh)
    hx = seg_arr[idx, 0] + t * (seg_arr[idx, 2] - seg_arr[idx, 0]) if nh else np.zeros(0)
    hy = seg_arr[idx, 1] + t * (seg_arr[idx, 3] - seg_arr[idx, 1]) if nh else np.zeros(0)
    holes = np.column_stack([hx, hy, rng.uniform(1.0, 3.0, nh), rng.uniform(0.0, 0.45, nh)])
    return SyntheticNetwork(width, height, seg_arr, blobs, holes, seed)


@njit(cache=True)
def _draw_segments(out: np.ndarray, segs: np.ndarray, col_off: int, row_off: int) -> None:
    h, w = out.shape
    for k in range(segs.shape[0]):
        x0, y0, x1, y1, hw, peak = segs[k]
        reach = hw + 3.0
        cmin = max(int(np.floor(min(x0, x1) - reach)) - col_off, 0)
        cmax = min(int(np.ceil(max(x0, x1) + reach)) - col_off, w - 1)
        rmin = max(int(np.floor(min(y0, y1) - reach)) - row_off, 0)
        rmax = min(int(np.ceil(max(y0, y1) + reach)) - row_off, h - 1)
        if cmin > cmax or rmin > rmax:
            continue
        dx, dy = x1 - x0, y1 - y0
        ll = dx * dx + dy * dy
        for r in range(rmin, rmax + 1):
            py = r + row_off + 0.5
            for c in range(cmin, cmax + 1):
                px = c + col_off + 0.5
                t = 0.0
                if ll > 0:
                    t = ((px - x0) * dx + (py - y0) * dy) / ll
                    t = min(1.0, max(0.0, t))
                ex, ey = px - (x0 + t * dx), py - (y0 + t * dy)
                d = np.sqrt(ex * ex + ey * ey)
                v = peak / (1.0 + np.exp((d - hw) / 0.8))
                if v > out[r, c]:
                    out[r, c] = v


@njit(cache=True)
def _draw_blobs(out: np.ndarray, blobs: np.ndarray, col_off: int, row_off: int) -> None:
    h, w = out.shape
    for k in range(blobs.shape[0]):
        x, y, rx, ry, peak = blobs[k]
        cmin = max(int(np.floor(x - 2 * rx)) - col_off, 0)
        cmax = min(int(np.ceil(x + 2 * rx)) - col_off, w - 1)
        rmin = max(int(np.floor(y - 2 * ry)) - row_off, 0)
        rmax = min(int(np.ceil(y + 2 * ry)) - row_off, h - 1)
        for r in range(rmin, rmax + 1):
            for c in range(cmin, cmax + 1):
                ex = (c + col_off + 0.5 - x) / rx
                ey = (r + row_off + 0.5 - y) / ry
                v = peak * np.exp(-(ex * ex + ey * ey))
                if v > out[r, c]:
                    out[r, c] = v


@njit(cache=True)
def _draw_holes(out: np.ndarray, holes: np.ndarray, col_off: int, row_off: int) -> None:
    h, w = out.shape
    for k in range(holes.shape[0]):
        x, y, rad, floor = holes[k]
        cmin = max(int(np.floor(x - rad)) - col_off, 0)
        cmax = min(int(np.ceil(x + rad)) - col_off, w - 1)
        rmin = max(int(np.floor(y - rad)) - row_off, 0)
        rmax = min(int(np.ceil(y + rad)) - row_off, h - 1)
        for r in range(rmin, rmax + 1):
            for c in range(cmin, cmax + 1):
                ex = c + col_off + 0.5 - x
                ey = r + row_off + 0.5 - y
                if ex * ex + ey * ey <= rad * rad and out[r, c] > floor:
                    out[r, c] = floor


@njit(cache=True)
def _hash_noise(out: np.ndarray, col_off: int, row_off: int, seed: int, amp: float) -> None:
    # position-keyed noise, so every window of the raster agrees with the whole
    h, w = out.shape
    for r in range(h):
        gy = np.uint64(r + row_off)
        for c in range(w):
            gx = np.uint64(c + col_off)
            z = gx * np.uint64(0x9E3779B97F4A7C15) ^ (gy * np.uint64(0xC2B2AE3D27D4EB4F)) ^ np.uint64(seed)
            z = (z ^ (z >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
            z = z ^ (z >> np.uint64(29))
            u = (z & np.uint64(0xFFFF)) / 65535.0
            v = out[r, c] + amp * (u - 0.5)
            out[r, c] = min(1.0, max(0.0, v))


def render_window(net: SyntheticNetwork, col_off: int, row_off: int, width: int, height: int,
                  noise: float = 0.25) -> np.ndarray:
    """uint8 probability (0-255) of the window of `net` whose top-left pixel is (col_off, row_off)."""
    out = np.zeros((height, width), dtype=np.float32)
    pad = 40.0
    box = (col_off - pad, row_off - pad, col_off + width + pad, row_off + height + pad)

    def inside(x0, y0, x1, y1):
        return (np.maximum(x0, x1) >= box[0]) & (np.minimum(x0, x1) <= box[2]) & \
               (np.maximum(y0, y1) >= box[1]) & (np.minimum(y0, y1) <= box[3])

    s = net.segments
    if len(s):
        sel = s[inside(s[:, 0], s[:, 1], s[:, 2], s[:, 3])]
        _draw_segments(out, np.ascontiguousarray(sel), col_off, row_off)
    b = net.blobs
    if len(b):
        sel = b[inside(b[:, 0] - 2 * b[:, 2], b[:, 1] - 2 * b[:, 3], b[:, 0] + 2 * b[:, 2], b[:, 1] + 2 * b[:, 3])]
        _draw_blobs(out, np.ascontiguousarray(sel), col_off, row_off)
    ho = net.holes
    if len(ho):
        sel = ho[inside(ho[:, 0] - ho[:, 2], ho[:, 1] - ho[:, 2], ho[:, 0] + ho[:, 2], ho[:, 1] + ho[:, 2])]
        _draw_holes(out, np.ascontiguousarray(sel), col_off, row_off)
    if noise > 0:
        _hash_noise(out, col_off, row_off, net.seed * 7919 + 17, noise)
    return np.round(out * 255.0).astype(np.uint8)


def synthetic_prob(width: int, height: int, seed: int = 0, spacing: int = 700, noise: float = 0.25) -> np.ndarray:
    """A whole synthetic probability raster (uint8) of `width` x `height` pixels."""
    return render_window(make_network(width, height, seed, spacing), 0, 0, width, height, noise)
