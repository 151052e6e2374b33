"""Benchmark: render density + interval of one 1024 x 1024 window from 1 M samples.

Prints one JSON line. `ratio` = median render time / median time of a bare `np.bincount` of the same samples'
pixel indices (minlength H*W, precomputed), both measured here, interleaved; `ratio_of_minima` the same with the
fastest of each; `cpu_ratio` the ratio of median thread CPU times (the wall times without the waits for a core,
which on a shared box lengthen the longer call more). `backend` is the implementation `render` uses (numba, or
the numpy fallback); `compile_s` the time of the first render in the process (importing numba and loading the
compiled kernels from its on-disk cache, or compiling them when there is none), which the timed renders
exclude. `numpy_ratio` is the numpy fallback measured the same way (fewer repeats), for comparison;
`max_abs_diff_vs_numpy` how far the two renders of the window differ. Run: `.venv/bin/python bench/render.py`
(`ROADMAP_RENDER_BACKEND=numpy` times the fallback alone).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import roadmap_cli.render as R  # noqa: E402
from roadmap_cli.render import RenderParams, render  # noqa: E402
from roadmap_cli.store import SAMPLE_DTYPE  # noqa: E402

SIZE = 1024
N = 1_000_000
REPEATS = 21
REPEATS_NUMPY = 7


def make_samples(rng: np.random.Generator, n: int, col_off: float, row_off: float, size: int, margin: int
                 ) -> np.ndarray:
    """60 % of the samples on 40 random straight 'roads' (1.5 px noise), 40 % uniform; random order, as a
    store query over the window grown by `margin` returns them. One vehicle in 500 samples starts a trace
    (interval NaN)."""
    lo, hi = -margin, size + margin
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    k = int(n * 0.6)
    road = rng.integers(0, 40, k)
    p0 = rng.uniform(0, size, (40, 2))
    ang = rng.uniform(0, np.pi, 40)
    t = rng.uniform(-size, size, k)
    x = p0[road, 0] + t * np.cos(ang[road]) + rng.normal(0, 1.5, k)
    y = p0[road, 1] + t * np.sin(ang[road]) + rng.normal(0, 1.5, k)
    ok = (x >= lo) & (x < hi) & (y >= lo) & (y < hi)
    x, y = x[ok], y[ok]
    m = n - x.shape[0]
    x = np.concatenate([x, rng.uniform(lo, hi, m)])
    y = np.concatenate([y, rng.uniform(lo, hi, m)])
    order = rng.permutation(n)
    s["col"] = x[order] + col_off
    s["row"] = y[order] + row_off
    s["time"] = np.arange(n, dtype=np.float64)
    s["vehicle"] = rng.integers(0, 2000, n)
    s["interval"] = rng.gamma(2.0, 8.0, n)
    s["interval"][rng.random(n) < 1 / 500] = np.nan
    s["speed"] = rng.uniform(0, 20, n)
    s["bearing"] = rng.uniform(0, 360, n)
    return s


def timed(fn: Callable[[], object], flat: np.ndarray, size: int, repeats: int
          ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Wall and thread-CPU times of `fn` and of the baseline bincount, interleaved so that load from other
    processes hits both alike; the baseline is the second of two back-to-back bincounts (steady state: its
    output buffer is recycled), the harder baseline to beat. CPU time leaves out the time this thread waited
    for a core, which on the shared box inflates the longer call more."""
    t_fn, t_base, c_fn, c_base = [], [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        t1, c1 = time.perf_counter(), time.thread_time()
        np.bincount(flat, minlength=size * size)
        t2, c2 = time.perf_counter(), time.thread_time()
        np.bincount(flat, minlength=size * size)
        t3, c3 = time.perf_counter(), time.thread_time()
        t_fn.append(t1 - t0)
        t_base.append(t3 - t2)
        c_fn.append(c1 - c0)
        c_base.append(c3 - c2)
    return t_fn, t_base, c_fn, c_base


def main() -> None:
    rng = np.random.default_rng(20190616)
    params = RenderParams(channels=("density", "interval"))
    col_off, row_off = 4096.0, 2048.0
    s = make_samples(rng, N, col_off, row_off, SIZE, params.margin)
    ix = np.clip(np.floor(s["col"] - col_off), 0, SIZE - 1).astype(np.intp)
    iy = np.clip(np.floor(s["row"] - row_off), 0, SIZE - 1).astype(np.intp)
    flat = iy * SIZE + ix

    t0 = time.perf_counter()
    out = render(s, col_off, row_off, SIZE, SIZE, params)  # loads (or compiles) the kernels
    compile_s = time.perf_counter() - t0
    backend = R.backend_name()
    plan = R._plan(params)
    need = tuple(dict.fromkeys(src for _, src, _ in plan))
    ref = R._render_numpy(s, col_off, row_off, SIZE, SIZE, params, plan, need)
    max_diff = float(np.abs(out - ref).max())  # the two implementations agree (float32 rounding)
    for _ in range(3):  # warm up
        render(s, col_off, row_off, SIZE, SIZE, params)
        np.bincount(flat, minlength=SIZE * SIZE)
    t_render, t_base, c_render, c_base = timed(lambda: render(s, col_off, row_off, SIZE, SIZE, params), flat,
                                               SIZE, REPEATS)
    t_np, t_np_base, _, _ = timed(lambda: R._render_numpy(s, col_off, row_off, SIZE, SIZE, params, plan, need),
                                  flat, SIZE, REPEATS_NUMPY)
    out = render(s, col_off, row_off, SIZE, SIZE, params)
    assert out.shape == (2, SIZE, SIZE) and np.isfinite(out).all()
    r, b = float(np.median(t_render)), float(np.median(t_base))
    print(json.dumps({
        "bench": "render",
        "what": "density+interval, 1024x1024 window, 1M samples (60% on lines), gaussian k=3 log scale",
        "samples": N, "size": SIZE, "repeats": REPEATS, "backend": backend, "compile_s": round(compile_s, 3),
        "render_ms": round(r * 1e3, 3), "bincount_ms": round(b * 1e3, 3),
        "render_min_ms": round(min(t_render) * 1e3, 3), "bincount_min_ms": round(min(t_base) * 1e3, 3),
        "ratio": round(r / b, 3), "ratio_of_minima": round(min(t_render) / min(t_base), 3), "goal": 2.5,
        "cpu_ratio": round(float(np.median(c_render) / np.median(c_base)), 3),
        "numpy_ratio": round(float(np.median(t_np) / np.median(t_np_base)), 3),
        "numpy_render_ms": round(float(np.median(t_np)) * 1e3, 3), "max_abs_diff_vs_numpy": max_diff,
    }))


if __name__ == "__main__":
    main()
