"""Benchmark point-store window queries; prints one JSON line.

A store of 10 M samples (uniform over a 20480 x 20480 px grid, 1024 px tiles, about 24 k samples per tile) is
written with `StoreWriter` in a temporary folder. Then 1024 x 1024 windows at random offsets (most touch four
tiles) are queried with `PointStore.query`; the baseline reads the same bytes (the extents of the touched
tiles) with `np.fromfile`, so `ratio` = median query time / median raw read time shows the cost of the index
lookup and the window filter. Goal: median query <= 20 ms (`goal_ratio` = median / 20 ms). Files are in the
page cache (written just before), as they are during training.

    python bench/store_query.py [--samples N] [--queries Q]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roadmap_cli.store import SAMPLE_DTYPE, PointStore, StoreWriter  # noqa: E402

SIZE = 20480
TILE = 1024
WINDOW = 1024


def build(path: Path, n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    with StoreWriter(path, SIZE, SIZE, tile_size=TILE) as w:
        for start in range(0, n, 1_000_000):
            k = min(1_000_000, n - start)
            s = np.zeros(k, dtype=SAMPLE_DTYPE)
            s["col"] = rng.uniform(0, SIZE, k)
            s["row"] = rng.uniform(0, SIZE, k)
            s["time"] = 1.7e9 + start + np.arange(k)
            s["vehicle"] = rng.integers(0, 5000, k)
            s["interval"] = rng.uniform(1, 30, k)
            s["speed"] = rng.uniform(0, 20, k)
            s["bearing"] = rng.uniform(0, 360, k)
            w.append(s)
        w.close([f"v{i}" for i in range(5000)])
    return time.perf_counter() - t


def raw_read(store: PointStore, index: np.ndarray, col: float, row: float) -> int:
    """The baseline: np.fromfile of the extents of every tile the window touches (no filtering)."""
    tx0, ty0 = int(col // TILE), int(row // TILE)
    tx1, ty1 = int((col + WINDOW - 1e-9) // TILE), int((row + WINDOW - 1e-9) // TILE)
    ids = [ty * store.tiles_x + tx for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
    n = 0
    with open(store.path / "samples.bin", "rb") as fh:
        for tid in ids:
            a, b = np.searchsorted(index[:, 0], tid), np.searchsorted(index[:, 0], tid, side="right")
            for off, cnt in index[a:b, 1:].tolist():
                fh.seek(off * SAMPLE_DTYPE.itemsize)
                n += np.fromfile(fh, dtype=SAMPLE_DTYPE, count=cnt).size
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=60)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="roadmap-bench-store-") as d:
        path = Path(d) / "gps"
        build_s = build(path, args.samples)
        store = PointStore(path)
        offsets = rng.uniform(0, SIZE - WINDOW, size=(args.queries, 2))
        store.query(0, 0, WINDOW, WINDOW)  # opens the memory map
        index = np.load(path / "index.npy")
        q_times, r_times, returned = [], [], []
        for col, row in offsets:
            t = time.perf_counter()
            got = store.query(col, row, WINDOW, WINDOW)
            q_times.append(time.perf_counter() - t)
            returned.append(got.size)
            t = time.perf_counter()
            raw_read(store, index, col, row)
            r_times.append(time.perf_counter() - t)
    q_ms = statistics.median(q_times) * 1e3
    r_ms = statistics.median(r_times) * 1e3
    print(json.dumps({
        "bench": "store_query",
        "samples": args.samples,
        "grid_px": SIZE,
        "tile_px": TILE,
        "window_px": WINDOW,
        "queries": args.queries,
        "median_returned": int(statistics.median(returned)),
        "median_query_ms": round(q_ms, 3),
        "p90_query_ms": round(float(np.percentile(q_times, 90)) * 1e3, 3),
        "median_fromfile_ms": round(r_ms, 3),
        "ratio": round(q_ms / r_ms, 3),
        "goal_ms": 20.0,
        "goal_ratio": round(q_ms / 20.0, 3),
        "build_s": round(build_s, 2),
    }))


if __name__ == "__main__":
    main()
