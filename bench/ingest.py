"""Benchmark `roadmap ingest` on generated GPS CSVs; prints one JSON line.

Speed: ingest of a 2-million-row CSV (vehicle_id,timestamp,lat,lon,speed,bearing; ISO timestamps, rows in time
order with vehicles interleaved) against `pyarrow.csv.read_csv` of the same file (`ratio` = ingest time /
read_csv time; goal <= 3), with the file in the page cache. One measurement: a fresh subprocess times read_csv
three times (after one untimed read), then a fresh subprocess times `run_ingest` (interpreter start-up and
imports excluded, so its first Arrow and allocator use is in the timing) and right after it read_csv four
times in the same process (the first untimed, like the first read of the other process: the first read_csv
call of a process is slower); the ingest is compared with the median of the six timed reads, so a change of
machine load between the two biases the ratio less. `--pairs` such measurements run one after the other
(default 3); `ratio` is the median of their ratios (`ratios` lists them, `ratio_best` is the lowest).

Memory: peak RSS (ru_maxrss from wait4) of an ingest-only subprocess for 8 M rows against 2 M rows
(`rss_ratio`; goal <= 1.3). The parent only orchestrates (generation runs in children too), because a child's
ru_maxrss starts from its parent's peak at fork time. Inputs up to 4 M rows are held in memory by ingest and
larger ones spill to disk, so the 8 M run spills and the 2 M run does not. `--quick` uses 500 k and 2 M rows
and one pair (both held in memory: its rss_ratio shows in-memory growth, not the goal).

    python bench/ingest.py [--quick] [--rows N] [--big-rows N] [--pairs K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

def generate_csv(path: Path, n: int, seed: int = 0, n_vehicles: int | None = None) -> None:
    """Taxi-like traces: per vehicle a random walk at 5-30 s intervals, rows sorted by time (interleaved)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    nv = n_vehicles or max(10, n // 2000)
    veh = np.sort(rng.integers(0, nv, n)).astype(np.int64)
    starts = np.searchsorted(veh, np.arange(nv))
    first = np.zeros(n, dtype=bool)
    first[starts[starts < n]] = True
    dt = rng.uniform(5.0, 30.0, n)
    heading = np.cumsum(rng.normal(0.0, 0.3, n))
    speed = rng.uniform(0.0, 15.0, n)  # m/s
    step = speed * dt
    dx = step * np.sin(heading)
    dy = step * np.cos(heading)
    t0 = 1.7e9 + rng.uniform(0, 3600.0, nv)
    x0 = rng.uniform(-5000.0, 5000.0, nv)
    y0 = rng.uniform(-5000.0, 5000.0, nv)
    grp = np.cumsum(first) - 1  # vehicle group index of each row

    def per_vehicle_cumsum(a: np.ndarray) -> np.ndarray:
        c = np.cumsum(a)
        return c - (c - a)[starts[grp]]

    def fold(a: np.ndarray, half: float = 5000.0) -> np.ndarray:  # reflect a walk into [-half, half]
        m = np.mod(a + half, 4 * half)
        return np.where(m < 2 * half, m - half, 3 * half - m)

    t = t0[veh] + per_vehicle_cumsum(dt)
    x = fold(x0[veh] + per_vehicle_cumsum(dx))
    y = fold(y0[veh] + per_vehicle_cumsum(dy))
    lat = 53.40 + y / 111_320.0
    lon = -2.95 + x / (111_320.0 * np.cos(np.radians(53.4)))
    order = np.argsort(t, kind="stable")
    ts = pc.strftime(pa.array(np.floor(t[order]).astype("int64") * 1_000_000, type=pa.timestamp("us")),
                     format="%Y-%m-%d %H:%M:%S")
    tab = pa.table({
        "vehicle_id": pa.array(veh[order]).cast(pa.string()),
        "timestamp": ts,
        "lat": np.round(lat[order], 6),
        "lon": np.round(lon[order], 6),
        "speed": np.round(speed[order] * 3.6, 1),
        "bearing": np.round(np.mod(np.degrees(heading[order]), 360.0), 0),
    })
    pacsv.write_csv(tab, path, write_options=pacsv.WriteOptions(quoting_style="none"))


def child(args: list[str]) -> None:
    """Work done in a fresh interpreter, so that the orchestrating parent stays small (a child's ru_maxrss starts
    from its parent's peak at fork time)."""
    kind = args[0]
    if kind == "gen":
        generate_csv(Path(args[1]), int(args[2]), seed=int(args[3]))
        print(json.dumps({}))
    elif kind == "read":
        import pyarrow.csv as pacsv

        pacsv.read_csv(args[1])  # page cache
        times = []
        for _ in range(3):
            t = time.perf_counter()
            pacsv.read_csv(args[1])
            times.append(time.perf_counter() - t)
        print(json.dumps({"seconds": float(np.median(times)), "times": times}))
    elif kind in ("ingest", "pair"):
        import pyarrow.csv as pacsv

        from roadmap_cli.ingest import IngestOptions, run_ingest
        from roadmap_cli.progress import set_quiet
        from roadmap_cli.workdir import Workdir

        set_quiet(True)
        with open(args[1], "rb") as fh:  # page cache, as for read_csv
            while fh.read(1 << 24):
                pass

        def read_csv_seconds() -> float:
            t = time.perf_counter()
            pacsv.read_csv(args[1])
            return time.perf_counter() - t

        t = time.perf_counter()
        rep = run_ingest(Workdir(args[2]), IngestOptions(gps=[args[1]]))
        dt = time.perf_counter() - t
        reads = [read_csv_seconds() for _ in range(4)][1:] if kind == "pair" else []  # the first one warms up
        print(json.dumps({"seconds": dt, "rows_kept": rep["rows_kept"], "timing": rep["timing_s"],
                          "read_csv": reads}))


def run_child(*args: str) -> tuple[dict, float]:
    """Run `child(args)` in a fresh interpreter; its JSON and its peak RSS in MiB (ru_maxrss from wait4)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile() as out_fh, tempfile.TemporaryFile() as err_fh:
        proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=out_fh, stderr=err_fh,
                                env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_fh.seek(0)
        err_fh.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"bench child {args[0]} failed: {err_fh.read().decode()[-2000:]}")
        res = json.loads(out_fh.read().decode().strip().splitlines()[-1])
    return res, usage.ru_maxrss / 1024.0  # Linux: KiB


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 k and 2 M rows, one pair")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--big-rows", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=None, help="timing subprocesses (read_csv + ingest) [3]")
    args = ap.parse_args()
    n = args.rows or (500_000 if args.quick else 2_000_000)
    big = args.big_rows or 4 * n
    pairs = args.pairs or (1 if args.quick else 3)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="roadmap-bench-ingest-") as d:
        d = Path(d)
        small_csv, big_csv = d / "gps_small.csv", d / "gps_big.csv"
        run_child("gen", str(small_csv), str(n), "0")
        run_child("gen", str(big_csv), str(big), "1")
        timed = []
        for k in range(pairs):
            before, _ = run_child("read", str(small_csv))
            res, _ = run_child("pair", str(small_csv), str(d / f"wd_pair{k}"))
            shutil.rmtree(d / f"wd_pair{k}", ignore_errors=True)
            read_s = float(np.median(before["times"] + res["read_csv"]))
            timed.append({"ingest_s": res["seconds"], "read_csv_s": read_s, "ratio": res["seconds"] / read_s,
                          "phases": res["timing"], "rows_kept": res["rows_kept"]})
        small, rss_small = run_child("ingest", str(small_csv), str(d / "wd_small"))
        shutil.rmtree(d / "wd_small", ignore_errors=True)
        bigres, rss_big = run_child("ingest", str(big_csv), str(d / "wd_big"))
        size_mb = small_csv.stat().st_size / 1e6
    mid = sorted(timed, key=lambda x: x["ratio"])[len(timed) // 2]  # the pair with the median ratio
    result = {
        "bench": "ingest",
        "rows": n,
        "csv_mb": round(size_mb, 1),
        "ingest_s": round(mid["ingest_s"], 3),
        "ingest_phases_s": mid["phases"],
        "read_csv_s": round(mid["read_csv_s"], 3),
        "rows_per_s": round(n / mid["ingest_s"]),
        "ratio": round(mid["ratio"], 3),
        "ratio_best": round(min(x["ratio"] for x in timed), 3),
        "ratios": [round(x["ratio"], 3) for x in timed],
        "goal_ratio": 3.0,
        "rows_kept": mid["rows_kept"],
        "big_rows": big,
        "big_ingest_s": round(bigres["seconds"], 3),
        "peak_rss_mb": round(rss_small, 1),
        "big_peak_rss_mb": round(rss_big, 1),
        "rss_ratio": round(rss_big / rss_small, 3),
        "goal_rss_ratio": 1.3,
        "cpus": os.cpu_count(),
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
