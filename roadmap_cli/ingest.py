"""The ingest stage: GPS files and imagery into the workdir's grid, imagery.vrt, point store and ingest report.

GPS goes through two passes:

1. Every file is read in Arrow record batches, parsed and validated (`roadmap_cli.gpsio`), and the valid rows
   are kept as fixed-size records (`BUCKET_DTYPE`, 36 bytes). Inputs of up to `memory_rows` rows (estimated
   from the file sizes before reading; 4 million by default) keep them in memory. Larger inputs, so that
   memory stays flat however large they are, append them to a spill file on disk in runs sorted by bucket
   (vehicle code modulo `N_BUCKETS`): a vehicle's rows thus all land in one bucket, whatever file or order
   they came in. An input found larger than its estimate while reading moves to disk at that point.
2. The records are sorted by vehicle (in memory: all at once, a stable radix sort; from disk: a group of
   buckets of at most `group_rows` rows at a time) and processed in chunks of whole vehicles of about
   `MEMORY_CHUNK_ROWS` rows: sorted by (vehicle, time), duplicates of (vehicle, time) dropped (the first in
   input order is kept), each sample's interval since the same vehicle's previous sample computed, missing
   speed and bearing derived from consecutive samples, positions projected to continuous pixel coordinates of
   the grid (see `_Projector`), samples outside the grid dropped, and the rest appended to the point store
   (which sorts them by tile a buffer at a time). A vehicle with more rows than a chunk is cut into time
   slices, each given the vehicle's last sample before it; a single bucket larger than `group_rows` on disk
   (few vehicles, many samples) is cut into time slices processed in order, carrying each vehicle's last
   sample across slices.

Both passes run their numeric work on `WORKERS` threads (Arrow, numpy and pyproj release the GIL; CSV files
are parsed by byte ranges on threads of their own; full store buffers are sorted and written on another) and
hand the results back in input order, so the store and the report do not depend on thread timing. The disk
and memory paths give the same store content and report (tests/test_ingest.py checks it).

Derived values, and why: speed (m/s) and bearing (degrees clockwise from north) of a sample come from the
segment arriving at it (or, for a vehicle's first sample, the segment leaving it), measured on a local
equirectangular approximation of the sphere (exact to well under 1 % for the short hops between fixes).
Segments longer than `DERIVE_MAX_GAP_S` in time say nothing about the speed at either end and are not used;
bearing needs at least `MIN_MOVE_M` of movement (below that, GPS noise decides the direction), and a vehicle
that stands still keeps the bearing of its last movement. Only values missing from the input are filled.

On a Dask cluster (`--scheduler ADDRESS`, see `roadmap_cli.cluster`), both passes run their per-row work on the
workers and the main process keeps only what fixes the result's order, so that the store is byte for byte the
one an in-process run writes (samples.bin, index.npy, vehicles.json, meta.json) and the report differs only in
`timing_s` and `created_utc`:

- Pass 1 parts (`_plan_parts`): a plain CSV file that an in-process run reads by byte ranges (at least two
  `GpsFile.range_bytes` ranges) is cut into the same ranges, grouped into parts of whole ranges; a Parquet file
  of several batches into parts of whole batches (a part reads the row groups it overlaps and cuts the same
  batches a whole-file read gives: batches run across row groups); any other file (small, compressed, or one
  whose first block does not settle the time format) is one part, read on the worker exactly as in-process.
  The main process probes a file before splitting it (`GpsFile.probe`: vehicle column, time format, column
  types) and every part is read with those settings. A worker parses and validates its part with its own
  vehicle index and sends back the kept rows with local vehicle codes, the vehicles' names in first-appearance
  order, per-batch row counts and extent sums, drops, and drop examples whose row numbers count from the part.
  The main process takes the parts in input order: it gives vehicles global codes in that order (so codes are
  first appearance in file order, row order, as in-process; the name of a file's own vehicle, for a file
  without a vehicle column, is settled here), shifts example row numbers by the rows of the file's earlier
  parts, counts malformed lines and line numbers across ranges as `GpsFile._range_blocks` does, merges the
  extent sums in batch order, and keeps the rows batch by batch in memory or in the bucket spill, exactly as
  the in-process loop does (the same spill runs, so even the sampled time-slice edges agree).
- Pass 2: the main process cuts the same chunks as in-process (`_memory_jobs`; from the spill, the same bucket
  groups and time slices) and sends each chunk's records with its context to a worker, which sorts,
  deduplicates, derives intervals, speed and bearing, projects (with a projector built once per worker from
  the same grid, bounding box and lattice settings, so chunks of the same sizes take the same path) and
  computes tile ids. The time slices of an oversized bucket become independent tasks: their contexts (each
  vehicle's last sample so far) are computed here without processing the slices (`_last_per_vehicle`). The
  results come back in chunk order and go through the same `StoreWriter` calls, so the sample order, the
  buffer flushes and thus the files are the same.
- Errors a worker raises come back as the same one-line `RoadmapError` (naming the file as given: workers open
  absolute paths); `roadmap` log records of a task are logged again by the main process.

One difference from an in-process run on a single-CPU machine: there, large CSV files are read whole rather
than by byte ranges (no thread pool), so `read_mode` in the report reads differently; the rows are the same.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import logging
import math
import os
import shutil
import sys
import threading
import time as _time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from roadmap_cli import __version__
from roadmap_cli.cluster import Cluster, open_cluster, worker_cached
from roadmap_cli.errors import RoadmapError
from roadmap_cli.gpsio import (
    REASONS,
    DropLog,
    GpsFile,
    ParsedBatch,
    TimeFormat,
    VehicleIndex,
    describe_quantum,
    expand_gps_paths,
    guess_quantum,
    parse_columns_spec,
    reading_pool,
)
from roadmap_cli.grid import Grid, utm_epsg_for
from roadmap_cli.progress import progress
from roadmap_cli.store import (
    DEFAULT_TILE_SIZE,
    SAMPLE_DTYPE,
    StoreWriter,
    empty_samples,
    read_records,
    take_records,
    tile_index,
)
from roadmap_cli.workdir import Workdir, atomic_write_json

log = logging.getLogger("roadmap")

BUCKET_DTYPE = np.dtype([("vehicle", "<i4"), ("time", "<f8"), ("lon", "<f8"), ("lat", "<f8"),
                         ("speed", "<f4"), ("bearing", "<f4")])
N_BUCKETS = 256
GROUP_ROWS = 250_000
MEMORY_ROWS = 4_000_000  # inputs up to this many rows skip the disk spill (36 bytes a row held in memory)
# Rows per pass-2 chunk for inputs held in memory: the temporaries of a chunk (a few hundred bytes a row) stay
# small enough for the allocator to reuse instead of mapping fresh pages for every chunk (measured: larger
# chunks cost more in page faults than they save in per-chunk overhead).
MEMORY_CHUNK_ROWS = 65_536  # (also the chunks of a bucket group read back from the disk spill)
DERIVE_MAX_GAP_S = 300.0
MIN_MOVE_M = 0.5
EARTH_RADIUS_M = 6_371_008.8
MAX_GRID_SIDE = 4_000_000  # pixels; a larger GPS-derived grid almost always means an outlier far away
DEFAULT_RESOLUTION = 0.5
FLUSH_THREAD = True  # sort and write full store buffers on a thread of their own (see StoreWriter)
WORKERS = 2  # threads for parsing batches and processing bucket groups (numpy, Arrow and pyproj release the GIL)


@dataclass
class IngestOptions:
    """Everything `roadmap ingest` takes (see the command's help for the meaning of each)."""

    gps: list[str] = field(default_factory=list)
    imagery: str | None = None
    columns: str | None = None
    gps_crs: str | None = None
    crs: str | None = None
    resolution: float | None = None
    speed_unit: str = "km/h"
    max_bad_fraction: float = 0.5
    overwrite: bool = False
    tile_size: int = DEFAULT_TILE_SIZE
    group_rows: int = GROUP_ROWS
    block_size: int = 2 << 20
    memory_rows: int = MEMORY_ROWS
    scheduler: str | None = None  # Dask scheduler address, `local[:N]`, or None: in-process


# ---- spill files (pass 1 buckets, time slices) -------------------------------------------------------------
class _Spill:
    """Records appended in runs to one file, each run sorted by a small integer key, with an extent index.

    One file, however many keys: creating many small files is slow on common file systems. Reading a key back
    gathers its extents from every run with positional reads (not a memory map, whose pages would count as
    resident memory growing with the input).
    """

    def __init__(self, path: Path, n_keys: int, buffer_bytes: int = 16 << 20) -> None:
        self.path = path
        self.n_keys = n_keys
        self.counts = np.zeros(n_keys, dtype=np.int64)
        self._buf: list[tuple[np.ndarray, np.ndarray]] = []
        self._bytes = 0
        self._limit = buffer_bytes
        self._extents: list[list[tuple[int, int]]] = [[] for _ in range(n_keys)]
        self._written = 0
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self._rh: io.BufferedReader | None = None

    def add(self, rec: np.ndarray, keys: np.ndarray) -> None:
        if rec.size == 0:
            return
        self._buf.append((rec, keys))
        self._bytes += rec.nbytes
        if self._bytes >= self._limit:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        rec = np.concatenate([r for r, _ in self._buf]) if len(self._buf) > 1 else self._buf[0][0]
        keys = np.concatenate([k for _, k in self._buf]) if len(self._buf) > 1 else self._buf[0][1]
        self._buf = []
        self._bytes = 0
        order = np.argsort(keys.astype(np.uint16) if self.n_keys <= 65536 else keys, kind="stable")
        counts = np.bincount(keys, minlength=self.n_keys)
        self._fh.write(take_records(rec, order).data)
        starts = np.cumsum(counts) - counts + self._written
        for k in np.flatnonzero(counts).tolist():
            self._extents[k].append((int(starts[k]), int(counts[k])))
        self.counts += counts
        self._written += rec.size

    def finish(self) -> None:
        """Flush and switch to reading."""
        self.flush()
        self._fh.close()
        self._rh = open(self.path, "rb")  # noqa: SIM115 - closed in close()

    def pieces(self, key: int) -> Iterator[np.ndarray]:
        """The extents of one key, one at a time, each read into a new array (positional reads)."""
        for o, c in self._extents[key]:
            yield read_records(self._rh, BUCKET_DTYPE, o, c)

    def read(self, keys: list[int]) -> np.ndarray:
        """All records of these keys, in one new array."""
        extents = [e for k in keys for e in self._extents[k]]
        if not extents:
            return np.empty(0, dtype=BUCKET_DTYPE)
        if len(extents) == 1:
            return read_records(self._rh, BUCKET_DTYPE, *extents[0])
        out = np.empty(sum(c for _, c in extents), dtype=BUCKET_DTYPE)
        pos = 0
        for o, c in extents:
            out[pos:pos + c] = read_records(self._rh, BUCKET_DTYPE, o, c)
            pos += c
        return out

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if self._rh is not None:
            self._rh.close()
            self._rh = None


def _bucket_records(pb: ParsedBatch) -> np.ndarray:
    rec = np.empty(pb.vehicle.size, dtype=BUCKET_DTYPE)
    rec["vehicle"] = pb.vehicle
    rec["time"] = pb.time
    rec["lon"] = pb.lon
    rec["lat"] = pb.lat
    rec["speed"] = pb.speed
    rec["bearing"] = pb.bearing
    return rec


class _Rows:
    """Pass-1 records held in memory (inputs within the memory budget): one array sized by the row estimate,
    extended by further arrays when the estimate was short. Pages never written are never resident.

    `add` reserves each batch's place in input order on the calling thread and, given a pool, copies the batch
    there on a pool thread (first writes to fresh memory cost page faults: off the reading thread).
    """

    def __init__(self, capacity: int) -> None:
        self._parts: list[np.ndarray] = []
        self._buf = np.empty(max(1, capacity), dtype=BUCKET_DTYPE)
        self._n = 0
        self.size = 0
        self._pending: list[Future[None]] = []

    @staticmethod
    def _fill(out: np.ndarray, pb: ParsedBatch) -> None:
        out["vehicle"] = pb.vehicle
        out["time"] = pb.time
        out["lon"] = pb.lon
        out["lat"] = pb.lat
        out["speed"] = pb.speed
        out["bearing"] = pb.bearing

    def add(self, pb: ParsedBatch, pool: ThreadPoolExecutor | None = None) -> None:
        k = pb.vehicle.size
        if self._n + k > self._buf.size:
            if self._n:
                self._parts.append(self._buf[:self._n])
            self._buf = np.empty(max(k, self.size // 2, 1 << 16), dtype=BUCKET_DTYPE)  # the estimate was short
            self._n = 0
        out = self._buf[self._n:self._n + k]
        self._n += k
        self.size += k
        if pool is None:
            self._fill(out, pb)
            return
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(pool.submit(self._fill, out, pb))

    def wait(self) -> None:
        """Block until every copy handed to the pool is done (re-raising its error)."""
        for f in self._pending:
            f.result()
        self._pending = []

    def parts(self) -> list[np.ndarray]:
        self.wait()
        return [*self._parts, self._buf[:self._n]]

    def _clear(self) -> None:
        self._parts, self._buf, self._n, self.size = [], np.empty(0, dtype=BUCKET_DTYPE), 0, 0

    def array(self) -> np.ndarray:
        """All records in one array (no copy unless the estimate was short); the holder is emptied."""
        parts = self.parts()
        self._clear()
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def spill_into(self, spill: _Spill, piece_rows: int = 1 << 19) -> None:
        """Move every record into `spill` (a piece at a time, so memory does not double); the holder is emptied."""
        for part in self.parts():
            for i in range(0, part.size, piece_rows):
                piece = part[i:i + piece_rows]
                spill.add(piece, piece["vehicle"] % N_BUCKETS)
            spill.flush()
        self._clear()


def _memory_groups(counts: np.ndarray, max_rows: int) -> list[tuple[int, int, bool]]:
    """Row ranges (start, stop, sliced) over records sorted by vehicle whose per-vehicle `counts` are given:
    consecutive vehicles grouped to about `max_rows` (under 2 * max_rows), and every vehicle with more than
    `max_rows` rows alone, to be cut into time slices (`sliced` True)."""
    if counts.size == 0:
        return []
    ends = np.cumsum(counts)
    starts = ends - counts
    big = counts > max_rows
    gid = starts // max(1, max_rows)
    first = np.ones(counts.size, dtype=bool)
    first[1:] = (gid[1:] != gid[:-1]) | big[1:] | big[:-1]
    heads = np.flatnonzero(first)
    tails = np.append(heads[1:], counts.size) - 1
    return [(int(starts[h]), int(ends[t]), bool(big[h])) for h, t in zip(heads.tolist(), tails.tolist(),
                                                                            strict=True)]


def _time_cuts(t: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Ranges of about `max_rows` over sorted times, never splitting equal times (duplicates stay together)."""
    n = t.size
    bounds = [0]
    while bounds[-1] + max_rows < n:
        b = bounds[-1] + max_rows
        b = int(np.searchsorted(t, t[b], side="left"))
        if b <= bounds[-1]:
            b = int(np.searchsorted(t, t[bounds[-1] + max_rows], side="right"))
        if b >= n:
            break
        bounds.append(b)
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _groups(counts: np.ndarray, max_rows: int) -> list[list[int]]:
    """Consecutive non-empty buckets grouped so that each group holds at most `max_rows` (or one bucket)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for i in np.flatnonzero(counts).tolist():
        c = int(counts[i])
        if cur and size + c > max_rows:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += c
    if cur:
        groups.append(cur)
    return groups


def _time_slices(buckets: _Spill, key: int, max_rows: int, path: Path) -> tuple[_Spill, int]:
    """Cut one oversized bucket into time slices of about `max_rows` records, one extent in memory at a time."""
    n = int(buckets.counts[key])
    step = max(1, n // 200_000)
    sample = np.sort(np.concatenate([p["time"][::step] for p in buckets.pieces(key)]))
    k = max(2, math.ceil(1.25 * n / max_rows))
    edges = np.unique(sample[(np.arange(1, k) * sample.size) // k])
    spill = _Spill(path, edges.size + 1)
    for p in buckets.pieces(key):
        spill.add(p, np.searchsorted(edges, p["time"], side="right"))
    spill.finish()
    return spill, edges.size + 1


# ---- pass 2: per-vehicle derivation ------------------------------------------------------------------------
def _vehicle_key(v: np.ndarray) -> np.ndarray:
    """A dense sort key for vehicle codes: uint16 (radix-sortable) when the codes allow."""
    vmin, vmax = int(v.min()), int(v.max())
    if vmax - vmin < 65536:
        return (v - vmin).astype(np.uint16)
    present = np.zeros(vmax - vmin + 1, dtype=bool)
    present[v - vmin] = True
    rank = (np.cumsum(present) - 1)[v - vmin]
    return rank.astype(np.uint16) if rank.max() < 65536 else rank


def _sort_vehicle_time(v: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """Order by (vehicle, time), stable (equal samples keep their input order); None when already in order.

    Rows usually arrive in time order per vehicle (time-sorted or vehicle-sorted files), so a stable sort by
    vehicle alone is tried first; a time sort is added only when needed."""
    if v.size < 2:
        return None
    same = v[1:] == v[:-1]
    if np.all((v[1:] > v[:-1]) | (same & (t[1:] >= t[:-1]))):
        return None
    key = _vehicle_key(v)
    order = np.argsort(key, kind="stable")
    ks, ts = key[order], t[order]
    if np.all((ts[1:] >= ts[:-1]) | (ks[1:] != ks[:-1])):
        return order
    o1 = np.argsort(t, kind="stable")
    return o1[np.argsort(key[o1], kind="stable")]


def _nearest_bearing(seg_bearing: np.ndarray, moved: np.ndarray, v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per sample: the bearing of the last segment that moved (a stopped vehicle keeps its heading), else of
    the next one; only segments of the same vehicle ending (starting) within DERIVE_MAX_GAP_S count."""
    n = v.size
    out = np.full(n, np.nan)
    if n < 2 or not moved.any():
        return out
    m = n - 1
    ff = np.maximum.accumulate(np.where(moved, np.arange(m), -1))  # last moving segment j <= k
    bf = np.minimum.accumulate(np.where(moved, np.arange(m), m)[::-1])[::-1]  # first moving segment j >= k
    i = np.arange(1, n)
    j = ff  # for sample i the candidate is ff[i - 1]; the segment ends at sample j + 1
    ok = (j >= 0) & (v[np.maximum(j, 0) + 1] == v[i]) & (t[i] - t[np.maximum(j, 0) + 1] <= DERIVE_MAX_GAP_S)
    out[1:] = np.where(ok, seg_bearing[np.maximum(j, 0)], np.nan)
    i = np.arange(m)
    j = bf  # for sample i < n - 1 the candidate is bf[i]; the segment starts at sample j
    jj = np.minimum(j, m - 1)
    ok = (j < m) & (v[jj] == v[i]) & (t[jj] - t[i] <= DERIVE_MAX_GAP_S)
    nxt = np.where(ok, seg_bearing[jj], np.nan)
    lead = np.isnan(out[:-1])
    out[:-1][lead] = nxt[lead]
    return out


def _iso(t: float) -> str:
    if not np.isfinite(t):
        return "?"
    return datetime.fromtimestamp(float(t), tz=UTC).isoformat().replace("+00:00", "Z")


class _IntervalHist:
    """Streaming interval percentiles: 0.1 s bins up to an hour, then logarithmic bins (20 per decade)."""

    LIN_MAX = 3600.0
    LIN_BINS = 36_000
    LOG_BINS = 200

    def __init__(self) -> None:
        self.hist = np.zeros(self.LIN_BINS + self.LOG_BINS, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        x = np.maximum(x, 0.0)
        lin = x < self.LIN_MAX
        idx = np.empty(x.size, dtype=np.int64)
        idx[lin] = (x[lin] * 10.0).astype(np.int64)
        big = x[~lin]
        idx[~lin] = self.LIN_BINS + np.minimum(
            (np.log10(big / self.LIN_MAX) * 20.0).astype(np.int64), self.LOG_BINS - 1)
        self.hist += np.bincount(idx, minlength=self.hist.size)
        self.count += x.size
        self.total += float(x.sum())
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def _edge(self, i: int) -> float:
        if i < self.LIN_BINS:
            return i / 10.0
        return self.LIN_MAX * 10.0 ** ((i - self.LIN_BINS) / 20.0)

    def percentile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        cum = np.cumsum(self.hist)
        i = int(np.searchsorted(cum, q / 100.0 * (self.count - 1), side="right"))
        return round(min(max(self._edge(i), self.min), self.max), 3)

    def merge(self, other: _IntervalHist) -> None:
        self.hist += other.hist
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def __getstate__(self) -> dict[str, Any]:
        # Sent back from cluster workers with every pass-2 chunk: the non-empty bins only (a few hundred, not
        # 36 200).
        state = dict(self.__dict__)
        nz = np.flatnonzero(self.hist)
        state["hist"] = (nz.astype(np.int32), self.hist[nz])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        idx, counts = state.pop("hist")
        self.__dict__.update(state)
        self.hist = np.zeros(self.LIN_BINS + self.LOG_BINS, dtype=np.int64)
        self.hist[idx] = counts

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        if self.count == 0:
            return out
        out["min"] = round(self.min, 3)
        for q in (5, 25, 50, 75, 95):
            out[f"p{q:02d}"] = self.percentile(q)
        out["max"] = round(self.max, 3)
        out["mean"] = round(self.total / self.count, 3)
        out["note"] = "seconds since the same vehicle's previous sample; percentiles to 0.1 s below an hour"
        return out


@dataclass
class _Partial:
    """Statistics of one processed chunk (merged in order by the main thread)."""

    kept: int = 0
    vehicles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    intervals: _IntervalHist = field(default_factory=_IntervalHist)
    speed: dict[str, int] = field(default_factory=lambda: {"from_input": 0, "derived": 0, "unknown": 0})
    bearing: dict[str, int] = field(default_factory=lambda: {"from_input": 0, "derived": 0, "unknown": 0})
    lon: list[float] = field(default_factory=lambda: [math.inf, -math.inf])
    lat: list[float] = field(default_factory=lambda: [math.inf, -math.inf])
    time: list[float] = field(default_factory=lambda: [math.inf, -math.inf])


class _Pass2Stats(_Partial):
    """The running totals over all chunks."""

    def __init__(self, n_vehicles: int) -> None:
        super().__init__()
        self.present = np.zeros(max(1, n_vehicles), dtype=bool)

    def merge(self, p: _Partial) -> None:
        self.kept += p.kept
        self.present[p.vehicles] = True
        self.intervals.merge(p.intervals)
        for mine, theirs in ((self.speed, p.speed), (self.bearing, p.bearing)):
            for k, c in theirs.items():
                mine[k] += c
        for mine, theirs in ((self.lon, p.lon), (self.lat, p.lat), (self.time, p.time)):
            mine[0] = min(mine[0], theirs[0])
            mine[1] = max(mine[1], theirs[1])


@dataclass
class _ChunkOut:
    samples: np.ndarray  # SAMPLE_DTYPE, inside the grid
    context: np.ndarray  # each vehicle's last record (for the next time slice)
    drops: list[tuple[str, int, str]]
    stats: _Partial
    tile_ids: np.ndarray | None = None  # the store tile of each sample


class _Projector:
    """Degrees to continuous grid pixels for pass 2, thread-safe.

    pyproj costs about as much as parsing the CSV, so over the data's bounding box the projection is computed
    exactly (pyproj, whole arrays) on a lattice of nodes about `LATTICE_CELL_PX` pixels apart and interpolated
    bilinearly in between. The lattice is kept only when its error, measured against pyproj at every cell
    centre (where bilinear interpolation is worst), is below `LATTICE_TOL_PX`; otherwise (very large extents,
    strongly curved projections) and for points off the lattice, every point goes through pyproj, with one
    transformer per thread (they are not thread-safe).
    """

    LATTICE_CELL_PX = 256
    LATTICE_MAX_NODES = 1025
    LATTICE_TOL_PX = 0.01
    MIN_POINTS = 20_000  # below this, pyproj directly

    def __init__(self, grid: Grid, bbox: tuple[float, float, float, float] | None = None) -> None:
        self.grid = grid
        self.identity = grid.epsg == 4326
        self._local = threading.local()
        self.lattice: tuple[np.ndarray, np.ndarray] | None = None
        self.lattice_error_px: float | None = None
        if bbox is not None and not self.identity:
            self._build_lattice(*bbox)

    def describe(self) -> dict[str, Any]:
        if self.identity:
            return {"method": "affine (grid in EPSG:4326)"}
        if self.lattice is None:
            return {"method": "pyproj per point"}
        return {"method": "pyproj lattice + bilinear", "nodes": list(self.lattice[0].shape),
                "max_error_px": self.lattice_error_px,
                "note": f"chunks under {self.MIN_POINTS} points and points off the lattice go through pyproj"}

    def _exact(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tr = getattr(self._local, "tr", None)
        if tr is None:
            from pyproj import Transformer

            tr = self._local.tr = Transformer.from_crs("EPSG:4326", self.grid.crs, always_xy=True)
        x, y = tr.transform(lon, lat, errcheck=False)
        return self.grid.crs_to_pixel(x, y)

    def _build_lattice(self, lo0: float, lo1: float, la0: float, la1: float) -> None:
        if not (np.isfinite([lo0, lo1, la0, la1]).all() and lo1 > lo0 and la1 > la0):
            return
        corners_c, corners_r = self._exact(np.array([lo0, lo1, lo0, lo1]), np.array([la0, la0, la1, la1]))
        span = max(np.ptp(corners_c), np.ptp(corners_r))
        if not np.isfinite(span):
            return
        n = int(min(self.LATTICE_MAX_NODES, max(2, math.ceil(span / self.LATTICE_CELL_PX) + 1)))
        lons = np.linspace(lo0, lo1, n)
        lats = np.linspace(la0, la1, n)
        glon, glat = np.meshgrid(lons, lats)
        col, row = self._exact(glon.ravel(), glat.ravel())
        col, row = col.reshape(n, n), row.reshape(n, n)
        if not (np.isfinite(col).all() and np.isfinite(row).all()):
            return
        self._origin = (lo0, la0)
        self._scale = ((n - 1) / (lo1 - lo0), (n - 1) / (la1 - la0))
        self._n = n
        self.lattice = (col, row)
        self._coefficients()
        clon, clat = np.meshgrid(0.5 * (lons[1:] + lons[:-1]), 0.5 * (lats[1:] + lats[:-1]))
        ec, er = self._exact(clon.ravel(), clat.ravel())
        ic, ir, _ = self._interpolate(clon.ravel(), clat.ravel())
        err = float(max(np.max(np.abs(ic - ec)), np.max(np.abs(ir - er))))
        self.lattice_error_px = round(err, 6)
        if not err <= self.LATTICE_TOL_PX:
            self.lattice = None

    def _coefficients(self) -> None:
        """Per cell and output: v = a + b*wx + (c + d*wx)*wy, with wx, wy the position inside the cell."""
        assert self.lattice is not None
        self._coef = []
        for g in self.lattice:
            v00, v10, v01, v11 = g[:-1, :-1], g[:-1, 1:], g[1:, :-1], g[1:, 1:]
            self._coef.append(tuple(np.ascontiguousarray(x).ravel() for x in
                                    (v00, v10 - v00, v01 - v00, v11 - v10 - v01 + v00)))

    def _interpolate(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Bilinear lattice values and a mask of the points off the lattice (their values are meaningless), None
        when every point is on it (the usual case: the lattice spans the data's bounding box)."""
        m = self._n - 1  # cells per side
        fx = lon - self._origin[0]
        fx *= self._scale[0]
        fy = lat - self._origin[1]
        fy *= self._scale[1]
        off = None
        if fx.size and not (fx.min() >= 0 and fx.max() <= m and fy.min() >= 0 and fy.max() <= m):
            off = ~((fx >= 0) & (fx <= m) & (fy >= 0) & (fy <= m))
            ix = np.clip(fx, 0, m - 1).astype(np.int32)
            iy = np.clip(fy, 0, m - 1).astype(np.int32)
        else:
            ix = fx.astype(np.int32)
            np.minimum(ix, m - 1, out=ix)
            iy = fy.astype(np.int32)
            np.minimum(iy, m - 1, out=iy)
        fx -= ix
        fy -= iy
        cell = iy * m
        cell += ix
        out = []
        for a, b, c, d in self._coef:
            v = d[cell]
            v *= fx
            v += c[cell]
            v *= fy
            t = b[cell]
            t *= fx
            v += t
            v += a[cell]
            out.append(v)
        return out[0], out[1], off

    def __call__(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return self.grid.crs_to_pixel(lon, lat)
        if self.lattice is None or lon.size < self.MIN_POINTS:
            return self._exact(lon, lat)
        col, row, off = self._interpolate(lon, lat)
        if off is not None and off.any():
            col[off], row[off] = self._exact(lon[off], lat[off])
        return col, row


def _process_chunk(rec: np.ndarray, context: np.ndarray | None, project: _Projector, names: list[str],
                   tile_ids: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> _ChunkOut:
    """Pass 2 on one chunk of bucket records: sort by (vehicle, time), drop duplicates, intervals, derived
    speed and bearing, projection to pixels, drop outside the grid. `context` holds each vehicle's last record
    before this chunk (time slices); it shapes intervals and derived values but is not emitted again.
    `tile_ids` (the store writer's) gives each sample's store tile, here on a worker thread."""
    grid = project.grid
    drops: list[tuple[str, int, str]] = []
    n_ctx = 0 if context is None else context.size
    if n_ctx:
        rec = np.concatenate([context, rec])
    if rec.size == 0:
        return _ChunkOut(empty_samples(), rec, drops, _Partial())
    is_ctx = np.zeros(rec.size, dtype=bool)
    is_ctx[:n_ctx] = True
    order = _sort_vehicle_time(rec["vehicle"], rec["time"])
    if order is not None:
        rec, is_ctx = take_records(rec, order), is_ctx[order]
    v, t = rec["vehicle"], rec["time"]
    dup = np.zeros(rec.size, dtype=bool)
    dup[1:] = (v[1:] == v[:-1]) & (t[1:] == t[:-1])
    nd = int(np.count_nonzero(dup))
    if nd:
        i = int(np.argmax(dup))
        drops.append(("duplicate_vehicle_time", nd,
                      f"vehicle {names[v[i]]!r} at {_iso(t[i])} (lat {rec['lat'][i]:.6f}, "
                      f"lon {rec['lon'][i]:.6f}) twice"))
        rec, is_ctx = take_records(rec, ~dup), is_ctx[~dup]
        v, t = rec["vehicle"], rec["time"]
    last = np.ones(rec.size, dtype=bool)
    last[:-1] = v[1:] != v[:-1]
    next_context = take_records(rec, last)

    lon, lat = rec["lon"], rec["lat"]
    same = v[1:] == v[:-1]
    dt = t[1:] - t[:-1]
    interval = np.full(rec.size, np.nan, dtype=np.float64)
    interval[1:] = np.where(same, dt, np.nan)
    speed = rec["speed"].copy()
    bearing = rec["bearing"].copy()
    need_speed = np.isnan(speed)
    need_bearing = np.isnan(bearing)
    if need_speed.any() or need_bearing.any():
        latm = np.radians(0.5 * (lat[1:] + lat[:-1]))
        dlon = np.radians(np.mod(lon[1:] - lon[:-1] + 180.0, 360.0) - 180.0)
        dx = EARTH_RADIUS_M * dlon * np.cos(latm)
        dy = EARTH_RADIUS_M * np.radians(lat[1:] - lat[:-1])
        dist = np.hypot(dx, dy)
        ok = same & (dt > 0) & (dt <= DERIVE_MAX_GAP_S)
        if need_speed.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                seg_speed = np.where(ok, dist / np.where(ok, dt, 1.0), np.nan)
            derived = np.full(rec.size, np.nan)
            derived[1:] = seg_speed  # the segment arriving at the sample ...
            lead = np.isnan(derived[:-1])
            derived[:-1][lead] = seg_speed[lead]  # ... or, without one, the segment leaving it
            fill = need_speed & np.isfinite(derived)
            speed[fill] = derived[fill]
        if need_bearing.any():
            moved = ok & (dist >= MIN_MOVE_M)
            seg_bearing = np.where(moved, np.mod(np.degrees(np.arctan2(dx, dy)), 360.0), np.nan)
            derived = _nearest_bearing(seg_bearing, moved, v, t)
            fill = need_bearing & np.isfinite(derived)
            bearing[fill] = derived[fill]

    if n_ctx:
        out = ~is_ctx
        rec, interval, speed, bearing = take_records(rec, out), interval[out], speed[out], bearing[out]
        need_speed, need_bearing = need_speed[out], need_bearing[out]
    v, t, lon, lat = rec["vehicle"], rec["time"], rec["lon"], rec["lat"]
    col, row = project(lon, lat)
    inside = (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
    n_out = int(inside.size - np.count_nonzero(inside))
    if n_out:
        i = int(np.argmax(~inside))
        drops.append(("outside_grid", n_out,
                      f"vehicle {names[v[i]]!r} at {_iso(t[i])}: lat {lat[i]:.6f}, lon {lon[i]:.6f} is pixel "
                      f"({col[i]:.1f}, {row[i]:.1f}) of the {grid.width} x {grid.height} grid"))
        sel = np.flatnonzero(inside)
        col, row, t, v, lon, lat = col[sel], row[sel], t[sel], v[sel], lon[sel], lat[sel]
        interval, speed, bearing = interval[sel], speed[sel], bearing[sel]
        need_speed, need_bearing = need_speed[sel], need_bearing[sel]
    k = col.size
    samples = np.empty(k, dtype=SAMPLE_DTYPE)
    stats = _Partial()
    ids = tile_ids(col, row) if tile_ids is not None and k else None
    if k:
        samples["col"], samples["row"], samples["time"], samples["vehicle"] = col, row, t, v
        samples["interval"], samples["speed"], samples["bearing"] = interval, speed, bearing
        stats.kept = k
        stats.vehicles = v[np.flatnonzero(np.diff(v, prepend=-1))]  # v is sorted by vehicle
        stats.intervals.add(interval)
        for d, values, need in ((stats.speed, speed, need_speed), (stats.bearing, bearing, need_bearing)):
            known = np.isfinite(values)
            d["from_input"] = int(np.count_nonzero(~need))
            d["derived"] = int(np.count_nonzero(need & known))
            d["unknown"] = int(k - np.count_nonzero(known))
        for acc, x in ((stats.lon, lon), (stats.lat, lat), (stats.time, t)):
            acc[0], acc[1] = float(x.min()), float(x.max())
    return _ChunkOut(samples, next_context, drops, stats, ids)


# ---- the GPS part of ingest --------------------------------------------------------------------------------
@dataclass
class _Extent:
    lon: list[float] = field(default_factory=lambda: [math.inf, -math.inf])
    lat: list[float] = field(default_factory=lambda: [math.inf, -math.inf])
    sum_lon: float = 0.0
    sum_lat: float = 0.0
    n: int = 0

    def update(self, lon: np.ndarray, lat: np.ndarray) -> None:
        if lon.size == 0:
            return
        self.lon = [min(self.lon[0], float(lon.min())), max(self.lon[1], float(lon.max()))]
        self.lat = [min(self.lat[0], float(lat.min())), max(self.lat[1], float(lat.max()))]
        self.sum_lon += float(lon.sum())
        self.sum_lat += float(lat.sum())
        self.n += lon.size

    @staticmethod
    def batch_stats(lon: np.ndarray, lat: np.ndarray) -> tuple[float, float, float, float, float, float, int] | None:
        """What `update` takes from one batch, to be merged elsewhere (`merge`) in the same order."""
        if lon.size == 0:
            return None
        return (float(lon.min()), float(lon.max()), float(lat.min()), float(lat.max()), float(lon.sum()),
                float(lat.sum()), int(lon.size))

    def merge(self, stats: tuple[float, float, float, float, float, float, int] | None) -> None:
        """`update` from a batch's `batch_stats` (the same result, sums added in the same order)."""
        if stats is None:
            return
        lo0, lo1, la0, la1, s_lon, s_lat, n = stats
        self.lon = [min(self.lon[0], lo0), max(self.lon[1], lo1)]
        self.lat = [min(self.lat[0], la0), max(self.lat[1], la1)]
        self.sum_lon += s_lon
        self.sum_lat += s_lat
        self.n += n


def _parse_crs(value: str | None, option: str):
    if value is None or not str(value).strip():
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise RoadmapError(f"{option} {value}: not a coordinate reference system pyproj knows "
                           "(try EPSG:32633 or a WKT/PROJ string)") from exc


def grid_from_gps_extent(ext: _Extent, resolution: float, crs: Any = None, gps_crs: Any = None) -> Grid:
    """The grid covering the GPS extent: `crs` (default the GPS CRS when projected, else the UTM zone)."""
    if crs is None:
        if gps_crs is not None and not gps_crs.is_geographic:
            crs = gps_crs
        else:
            crs = utm_epsg_for(ext.sum_lon / ext.n, ext.sum_lat / ext.n)
    k = np.linspace(0.0, 1.0, 33)
    lo0, lo1 = ext.lon
    la0, la1 = ext.lat
    lon = np.concatenate([lo0 + (lo1 - lo0) * k, np.full(k.size, lo1), lo1 - (lo1 - lo0) * k, np.full(k.size, lo0)])
    lat = np.concatenate([np.full(k.size, la0), la0 + (la1 - la0) * k, np.full(k.size, la1), la1 - (la1 - la0) * k])
    grid = Grid.from_extent(lon, lat, resolution=resolution, crs=crs)
    if max(grid.width, grid.height) > MAX_GRID_SIDE:
        raise RoadmapError(
            f"gps: the extent lon {lo0:.5f}..{lo1:.5f}, lat {la0:.5f}..{la1:.5f} at {resolution:g} m makes a "
            f"{grid.width} x {grid.height} pixel grid; check for outlying fixes, or pass --imagery or a coarser "
            "--resolution")
    if max(grid.width, grid.height) > 200_000:
        log.warning("the GPS extent makes a large grid (%d x %d pixels)", grid.width, grid.height)
    return grid


def _check_bad(rows_read: int, kept: int, drops: DropLog, max_bad_fraction: float, files: list[Path]) -> None:
    what = files[0].name if len(files) == 1 else f"{len(files)} files"
    if kept == 0:
        raise RoadmapError(f"--gps {what}: no usable rows left of {rows_read}: {drops.summary()}"
                           + _hint(drops))
    frac = drops.total / rows_read if rows_read else 0.0
    if frac > max_bad_fraction:
        raise RoadmapError(f"--gps {what}: {drops.total} of {rows_read} rows ({100 * frac:.1f}%) dropped, more than "
                           f"--max-bad-fraction {max_bad_fraction:g}: {drops.summary()}" + _hint(drops))


def _hint(drops: DropLog) -> str:
    worst = drops.worst(1)
    if not worst:
        return ""
    hints = {
        "coordinates_out_of_range": " (coordinates in projected metres? pass --gps-crs)",
        "unparsable_coordinates": " (wrong columns? name them with --columns lat=..,lon=..)",
        "unparsable_time": " (time must be epoch seconds/milliseconds or ISO 8601 text)",
        "outside_grid": " (GPS and imagery cover different places?)",
    }
    return hints.get(worst[0][0], "")


class _InOrder:
    """Runs pass-2 jobs on the pool and hands their results to `take` in submission order (so the store and
    the report do not depend on thread timing), with at most `depth` jobs in flight: enough that the workers
    keep busy while `take` (the store writer sorting and writing a full buffer) holds the calling thread."""

    def __init__(self, pool: ThreadPoolExecutor | None, workers: int, take: Callable[[_ChunkOut], Any],
                 bar: Any) -> None:
        self.pool, self.take, self.bar = pool, take, bar
        self.depth = 4 * workers
        self.queue: deque[tuple[Future[_ChunkOut], int]] = deque()

    def submit(self, n: int, fn: Callable[..., _ChunkOut], *args: Any) -> None:
        if self.pool is None:
            self.take(fn(*args))
            self.bar.update(n)
            return
        self.queue.append((self.pool.submit(fn, *args), n))
        while self.queue and (len(self.queue) > self.depth or self.queue[0][0].done()):
            self._pop()

    def _pop(self) -> None:
        fut, n = self.queue.popleft()
        self.take(fut.result())
        self.bar.update(n)

    def drain(self) -> None:
        while self.queue:
            self._pop()


def _take_and_process(rows: np.ndarray, index: np.ndarray, context: np.ndarray | None, project: _Projector,
                      names: list[str], tile_ids: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> _ChunkOut:
    return _process_chunk(take_records(rows, index), context, project, names, tile_ids)


def _memory_jobs(rows: np.ndarray, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The pass-2 chunks of in-memory records, in store order: (row index, context) each. One stable sort by
    vehicle, then chunks of whole vehicles (about `chunk_rows` rows each). A vehicle with more rows is cut into
    time slices; as all its rows are at hand, each slice gets its context (the vehicle's last sample before it,
    the first of equal times) directly, so the slices are independent chunks too."""
    if rows.size == 0:
        return
    key = _vehicle_key(rows["vehicle"])
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key)
    counts = counts[counts > 0]  # rows per vehicle, in key order
    del key
    for a, b, sliced in _memory_groups(counts, chunk_rows):
        if not sliced:
            yield order[a:b], None
            continue
        sub = order[a:b]  # one vehicle, in input order
        t = rows["time"][sub]
        if np.any(t[1:] < t[:-1]):
            by_time = np.argsort(t, kind="stable")
            sub, t = sub[by_time], t[by_time]
        context = None
        for i, j in _time_cuts(t, chunk_rows):
            yield sub[i:j], context
            last = int(np.searchsorted(t, t[j - 1], side="left"))  # the sample kept of the slice's last time
            context = rows[sub[last:last + 1]]


def _pass2_memory(rows: np.ndarray, chunk_rows: int, runner: _InOrder, project: _Projector, names: list[str],
                  tile_ids: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """Pass 2 over in-memory records: the chunks of `_memory_jobs` on the pool."""
    for index, context in _memory_jobs(rows, chunk_rows):
        runner.submit(index.size, _take_and_process, rows, index, context, project, names, tile_ids)


def _pass2_spill(buckets: _Spill, group_rows: int, chunk_rows: int, runner: _InOrder, work_dir: Path,
                 project: _Projector, names: list[str],
                 tile_ids: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """Pass 2 over the bucket spill: groups of buckets of up to `group_rows` rows read in turn and processed as
    in memory (chunks of `chunk_rows` on the pool); a bucket larger than `group_rows` in time slices, in order,
    carrying each vehicle's last sample from one slice to the next."""
    for group in _groups(buckets.counts, group_rows):
        n_group = int(sum(buckets.counts[i] for i in group))
        if len(group) == 1 and n_group > group_rows:
            runner.drain()
            path = work_dir / f"slices{group[0]:04d}.bin"
            slices, n_slices = _time_slices(buckets, group[0], group_rows, path)
            context = None
            for k in range(n_slices):
                context = runner.take(_process_chunk(slices.read([k]), context, project, names, tile_ids))
            slices.close()
            path.unlink()
            runner.bar.update(n_group)
            continue
        _pass2_memory(buckets.read(group), chunk_rows, runner, project, names, tile_ids)


def ingest_gps(files: list[Path], grid: Grid | None, store_dir: Path, work_dir: Path, *,
               overrides: dict[str, str | None], gps_crs: Any = None, speed_unit: str = "km/h",
               max_bad_fraction: float = 0.5, crs: Any = None, resolution: float = DEFAULT_RESOLUTION,
               tile_size: int = DEFAULT_TILE_SIZE, group_rows: int = GROUP_ROWS,
               block_size: int = 2 << 20, memory_rows: int = MEMORY_ROWS,
               cluster: Cluster | None = None) -> tuple[Grid, dict[str, Any]]:
    """Read GPS `files` into a point store at `store_dir` on `grid` (None: from the GPS extent).

    Inputs of up to `memory_rows` rows (estimated from the file sizes, checked while reading) are held in
    memory between the passes; larger ones go through bucket files in `work_dir` (deleted by the caller), so
    that memory stays flat however large the input. Returns the grid and the GPS part of the report.
    With `cluster`, the parsing and the per-chunk work of pass 2 run on its workers; the store and the report
    are the same (see the module docstring).
    """
    t0 = _time.perf_counter()
    warm_pyproj = "pyproj" not in sys.modules  # pass 2 needs it: import it (about 50 ms) while pass 1 reads
    sources = [GpsFile(p, overrides, gps_crs=gps_crs, speed_unit=speed_unit, block_size=block_size) for p in files]
    vehicles = VehicleIndex()
    drops = DropLog()
    work_dir.mkdir(parents=True, exist_ok=True)
    estimate = sum(s.estimate_rows() for s in sources)
    memory: _Rows | None = None
    buckets: _Spill | None = None
    if estimate <= memory_rows:
        memory = _Rows(min(memory_rows, int(1.1 * estimate) + 1024))
    else:
        buckets = _Spill(work_dir / "buckets.bin", N_BUCKETS)
    ext = _Extent()
    q_lat: list[np.ndarray] = []
    q_lon: list[np.ndarray] = []
    workers = max(1, min(WORKERS, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        with reading_pool(), progress(desc="reading GPS", unit="rows", unit_scale=True) as bar:
            def keep(pb: ParsedBatch, fill_pool: ThreadPoolExecutor | None = None) -> None:
                """Hold a batch's rows in memory, or in the disk buckets once there are too many."""
                nonlocal memory, buckets
                if memory is not None:
                    memory.add(pb, fill_pool)
                    if memory.size > memory_rows:  # the estimate was short: continue on disk
                        log.info("more than %d GPS rows: spilling to disk", memory_rows)
                        buckets = _Spill(work_dir / "buckets.bin", N_BUCKETS)
                        memory.spill_into(buckets)
                        memory = None
                else:
                    assert buckets is not None
                    buckets.add(_bucket_records(pb), pb.vehicle % N_BUCKETS)

            if cluster is not None:
                spec = _ReadSpec(overrides, gps_crs, speed_unit, block_size,
                                 {k: getattr(GpsFile, k) for k in _GPSFILE_KNOBS}, log.getEffectiveLevel())
                _pass1_cluster(cluster, files, sources, spec, vehicles, drops, keep, ext, q_lat, q_lon, bar)
                for src in sources:
                    if src.rows_read == 0:
                        log.warning("%s: no data rows", src.path)
            else:
                for src in sources:
                    first = True
                    for pb in src.batches(vehicles, drops, pool=pool if workers > 1 else None):
                        if warm_pyproj:  # now that parsing (which releases the GIL) is under way
                            threading.Thread(target=importlib.import_module, args=("pyproj",), daemon=True).start()
                            warm_pyproj = False
                        keep(pb, pool if workers > 1 else None)
                        ext.update(pb.lon, pb.lat)
                        if first and pb.lat.size:
                            q_lat.append(pb.lat[:20_000])
                            q_lon.append(pb.lon[:20_000])
                            first = False
                        bar.update(pb.rows)
                    if src.rows_read == 0:
                        log.warning("%s: no data rows", src.path)
        spilled = buckets is not None
        if buckets is not None:
            buckets.finish()
        n_valid = memory.size if memory is not None else buckets.total  # type: ignore[union-attr]
        rows_read = sum(s.rows_read for s in sources)
        if rows_read == 0:
            names = ", ".join(str(p) for p in files)
            raise RoadmapError(f"--gps {names}: no data rows (only a header?)")
        _check_bad(rows_read, n_valid, drops, max_bad_fraction, files)
        t1 = _time.perf_counter()

        if grid is None:
            grid = grid_from_gps_extent(ext, resolution, crs, gps_crs)
        stats = _Pass2Stats(len(vehicles.names))
        project = _Projector(grid, (ext.lon[0], ext.lon[1], ext.lat[0], ext.lat[1]))
        names = vehicles.names
        # Full store buffers are sorted and written on a thread of their own while pass 2 goes on.
        flusher = ThreadPoolExecutor(1, thread_name_prefix="store-flush") if workers > 1 and FLUSH_THREAD else None
        writer = StoreWriter(store_dir, grid.width, grid.height, tile_size=tile_size, executor=flusher)
        tile_ids = writer.tile_ids

        def take(out: _ChunkOut) -> np.ndarray:
            # In chunk order, so that the store and the report do not depend on thread timing.
            writer.append(out.samples, tile_ids=out.tile_ids)
            for reason, k, example in out.drops:
                drops.add(reason, k, example)
            stats.merge(out.stats)
            return out.context

        try:
            with progress(total=n_valid, desc="indexing GPS", unit="rows", unit_scale=True) as bar:
                runner = _InOrder(pool if workers > 1 else None, workers, take, bar)
                if cluster is not None:
                    rows = memory.array() if memory is not None else None
                    memory = None
                    chunk_spec = _ChunkSpec(uuid.uuid4().hex, grid, (ext.lon[0], ext.lon[1], ext.lat[0], ext.lat[1]),
                                            {k: getattr(_Projector, k) for k in _PROJECTOR_KNOBS}, tile_size,
                                            writer.tiles_x)
                    _pass2_cluster(cluster, rows, buckets, group_rows, min(group_rows, MEMORY_CHUNK_ROWS), work_dir,
                                   chunk_spec, names, take, bar)
                    del rows
                elif memory is not None:
                    rows = memory.array()
                    memory = None
                    _pass2_memory(rows, min(group_rows, MEMORY_CHUNK_ROWS), runner, project, names, tile_ids)
                    runner.drain()
                    del rows
                else:
                    assert buckets is not None
                    _pass2_spill(buckets, group_rows, min(group_rows, MEMORY_CHUNK_ROWS), runner, work_dir,
                                 project, names, tile_ids)
                    runner.drain()
                writer.flush()
        finally:
            if flusher is not None:
                flusher.shutdown(wait=True)
    if buckets is not None:
        buckets.close()
    _check_bad(rows_read, stats.kept, drops, max_bad_fraction, files)
    t2 = _time.perf_counter()

    mean_lat = ext.sum_lat / ext.n if ext.n else 0.0
    lat_q = guess_quantum(np.concatenate(q_lat)) if q_lat else None
    lon_q = guess_quantum(np.concatenate(q_lon)) if q_lon else None
    resolution_stats = describe_quantum(lat_q, lon_q, mean_lat) if gps_crs is None else {
        "y_step": lat_q, "x_step": lon_q, "unit": "input CRS units"}
    resolution_stats["pixel_size_m"] = round(grid.pixel_size_m, 4)
    writer.close(vehicles.names, extra={"crs_wkt": grid.crs_wkt, "transform": list(grid.transform)})
    n_tiles = len(writer.counts)
    report = {
        "gps_files": [s.describe() for s in sources],
        "rows_read": rows_read,
        "rows_kept": stats.kept,
        "dropped": {r: drops.counts[r] for r in REASONS},
        "dropped_total": drops.total,
        "bad_fraction": round(drops.total / rows_read, 6),
        "drop_examples": drops.examples,
        "vehicles": int(np.count_nonzero(stats.present)),
        "extent": {
            "lon_min": stats.lon[0], "lat_min": stats.lat[0], "lon_max": stats.lon[1], "lat_max": stats.lat[1],
            "time_start": _iso(stats.time[0]), "time_end": _iso(stats.time[1]),
        },
        "interval_s": stats.intervals.summary(),
        "resolution": resolution_stats,
        "speed_m_s": {"input_unit": speed_unit if any(s.columns.speed for s in sources) else None, **stats.speed},
        "bearing_deg": dict(stats.bearing),
        "derivation": {"max_gap_s": DERIVE_MAX_GAP_S, "min_move_m": MIN_MOVE_M},
        "projection": project.describe(),
        "store": {"tile_size": tile_size, "n_samples": stats.kept, "tiles": n_tiles,
                  "spilled_to_disk": spilled},
        "timing_s": {"read": round(t1 - t0, 3), "index": round(t2 - t1, 3)},
    }
    return grid, report


# ---- running on a cluster (`--scheduler`) ------------------------------------------------------------------
CLUSTER_PART_BYTES = 64 << 20  # at most this much of one CSV file per pass-1 task (whole byte ranges)
CLUSTER_PART_ROWS = 1 << 20  # at most this many rows of one Parquet file per pass-1 task (whole batches)
_GPSFILE_KNOBS = ("range_bytes", "range_threads", "typed_read", "arrow_threads")
_PROJECTOR_KNOBS = ("LATTICE_CELL_PX", "LATTICE_MAX_NODES", "LATTICE_TOL_PX", "MIN_POINTS")
_NO_RECORDS = np.empty(0, dtype=BUCKET_DTYPE)


@dataclass
class _ReadSpec:
    """What every pass-1 task needs besides its part: the reading options of the run (and the class-level
    settings of `GpsFile` in the main process, so that workers read exactly as it would)."""

    overrides: dict[str, str | None]
    gps_crs: Any
    speed_unit: str
    block_size: int
    knobs: dict[str, Any]
    log_level: int


@dataclass
class _Part:
    """One pass-1 task: a whole file (read on the worker exactly as in-process), whole byte ranges of a plain CSV
    file, or whole batches (rows [a, b)) of a Parquet file. `settled` carries what the main process's probe of
    a split file decided (columns, time format, column types), so that every part is read the same way."""

    file: int
    path: str  # absolute: what the workers open
    shown: str  # as given (error messages name it)
    kind: str = "file"  # file | csv | parquet
    ranges: list[tuple[int, int]] = field(default_factory=list)
    rows: tuple[int, int] = (0, 0)
    last: bool = True  # the file's last part
    settled: dict[str, Any] | None = None


@dataclass
class _RowExample:
    """A drop example from a worker: its data row number counts from the start of the part, not of the file."""

    row: int
    text: str

    def shifted(self, name: str, offset: int) -> str:
        """The example with the row number of the whole file (`offset` data rows in the file's earlier parts)."""
        prefix = f"{name} row {self.row}: "
        if not offset or not self.text.startswith(prefix):
            return self.text
        return f"{name} row {self.row + offset}: {self.text[len(prefix):]}"


class _PartFile(GpsFile):
    """A GPS file read on a worker: drop examples keep their row number apart (see `_RowExample`)."""

    def _example(self, raw: Any, i: int, row_base: int) -> Any:
        return _RowExample(row_base + i + 1, super()._example(raw, i, row_base))


class _Inline(Executor):
    """Runs each call at once. Given to `GpsFile.batches` on a worker so that a large CSV file is read by byte
    ranges as in-process (where `batches` gets a pool), while its batches are parsed on the task's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to whoever asks for the result, as a pool would
            fut.set_exception(exc)
        return fut


@dataclass
class _PartOut:
    """Pass 1 of one part, sent back to the main process. Vehicles are local codes into `names` (first
    appearance in the part); `file_vehicle` says that code 0 stands for the file's own vehicle (no vehicle
    column), whose name only the main process can settle."""

    cols: tuple[np.ndarray, ...]  # vehicle (local code), time, lon, lat, speed, bearing of the kept rows
    batches: list[tuple[int, int, Any]]  # per batch: rows read, rows kept, `_Extent.batch_stats`
    quantum: tuple[np.ndarray, np.ndarray] | None  # lat, lon of the part's first batch with rows (resolution)
    names: list[str]
    file_vehicle: bool
    drops: list[tuple[str, int, Any]]  # (reason, rows, first example) as a DropLog holds them
    ranges: list[tuple[int, int, Any, bool, str | None]]  # CSV: lines, malformed, first malformed, typed, note
    state: dict[str, Any]  # what reading settled on the file (whole-file parts)
    logs: list[tuple[int, str]] = field(default_factory=list)


_TASK_LOG = threading.local()


class _TaskLogHandler(logging.Handler):
    """Collects the `roadmap` log records of the current task's thread on a worker (the main process logs them
    again, so that warnings reach the user as in-process)."""

    def emit(self, record: logging.LogRecord) -> None:
        records = getattr(_TASK_LOG, "records", None)
        if records is not None:
            records.append((record.levelno, record.getMessage()))


@contextlib.contextmanager
def _task_logs(level: int) -> Iterator[list[tuple[int, str]]]:
    if not any(isinstance(h, _TaskLogHandler) for h in log.handlers):
        log.addHandler(_TaskLogHandler())
    if log.getEffectiveLevel() > level:
        log.setLevel(level)
    records: list[tuple[int, str]] = []
    _TASK_LOG.records = records
    try:
        yield records
    finally:
        _TASK_LOG.records = None


def _csv_part_batches(src: GpsFile, part: _Part, types: dict[str, Any],
                      infos: list[tuple[int, int, Any, bool, str | None]]) -> Iterator[Any]:
    cols = src.columns.selected()
    for a, b in part.ranges:
        r = src._parse_range(a, b, cols, types)
        infos.append((r.lines, r.malformed, r.first_malformed, r.typed, r.note))
        yield from r.batches


def _parquet_part_batches(src: GpsFile, part: _Part) -> Iterator[Any]:
    """Rows [a, b) of a Parquet file in the batches a whole-file read cuts them into (`iter_batches` batches run
    across row groups: the part reads the row groups it overlaps and cuts the same batches from them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = part.rows
    step = src.parquet_batch_rows
    try:
        meta = pq.ParquetFile(src.path).metadata
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = [g for g in range(meta.num_row_groups) if starts[g] < b and starts[g + 1] > a]
        table = pq.ParquetFile(src.path).read_row_groups(groups, columns=src.columns.selected())
    except (pa.ArrowException, OSError) as exc:
        raise RoadmapError(f"--gps {src.path}: cannot read Parquet data ({str(exc).splitlines()[0]})") from exc
    base = int(starts[groups[0]]) if groups else a
    for s in range(a, b, step):
        yield from table.slice(s - base, min(step, b - s)).combine_chunks().to_batches()


def _read_part(part: _Part, spec: _ReadSpec) -> _PartOut:
    """Pass 1 of one part, on a worker: parse, validate and keep the valid rows (see `_PartOut`)."""
    with _task_logs(spec.log_level) as logs:
        try:
            out = _read_part_rows(part, spec)
        except RoadmapError as exc:  # name the file as the user gave it, as in-process
            msg = exc.format_message()
            raise RoadmapError(msg.replace(part.path, part.shown) if part.path != part.shown else msg) from None
    out.logs = logs
    return out


def _read_part_rows(part: _Part, spec: _ReadSpec) -> _PartOut:
    src = _PartFile(part.path, spec.overrides, gps_crs=spec.gps_crs, speed_unit=spec.speed_unit,
                    block_size=spec.block_size)
    for k, v in spec.knobs.items():
        setattr(src, k, v)
    vehicles, drops = VehicleIndex(), DropLog()
    parts: list[tuple[np.ndarray, ...]] = []
    batches: list[tuple[int, int, Any]] = []
    quantum: tuple[np.ndarray, np.ndarray] | None = None
    infos: list[tuple[int, int, Any, bool, str | None]] = []

    def keep(pb: ParsedBatch) -> None:
        nonlocal quantum
        parts.append((pb.vehicle, pb.time, pb.lon, pb.lat, pb.speed, pb.bearing))
        batches.append((pb.rows, pb.vehicle.size, _Extent.batch_stats(pb.lon, pb.lat)))
        if quantum is None and pb.lat.size:
            quantum = (pb.lat[:20_000].copy(), pb.lon[:20_000].copy())

    if part.kind == "file":
        for pb in src.batches(vehicles, drops, pool=_Inline()):
            keep(pb)
    else:
        assert part.settled is not None
        src.columns = replace(part.settled["columns"])
        src.time_format = TimeFormat(*part.settled["time"])
        src.vehicle_note = part.settled["vehicle_note"]
        raws = (_csv_part_batches(src, part, part.settled["types"], infos) if part.kind == "csv"
                else _parquet_part_batches(src, part))
        for raw in raws:
            row_base = src.rows_read
            src.rows_read += raw.num_rows
            keep(src._finish(src._parse(raw, row_base, vehicles), vehicles, drops))
    dtypes = (np.int32, np.float64, np.float64, np.float64, np.float32, np.float32)
    cols = tuple(np.concatenate([p[k] for p in parts]).astype(dt, copy=False) if parts else np.empty(0, dt)
                 for k, dt in enumerate(dtypes))
    state = {"vehicle": src.columns.vehicle, "time": (src.time_format.kind, src.time_format.scale),
             "read_mode": src.read_mode, "rows_read": src.rows_read, "vehicle_note": src.vehicle_note}
    return _PartOut(cols, batches, quantum, list(vehicles.names), src.columns.vehicle is None,
                    [(r, drops.counts[r], drops.examples.get(r)) for r in REASONS if drops.counts[r]], infos, state)


def _settle_split(src: GpsFile) -> dict[str, Any] | None:
    """Probe a file to be split (as `GpsFile._blocks` does before reading): None when its time format is not
    settled by the first block (then the file stays one part, read as in-process)."""
    probe = src.probe()
    if probe is None:
        return None
    # (for Parquet the first batch's parse decides it in-process: the probe is that batch)
    src.time_format.parse(probe.column(probe.schema.names.index(src.columns.time)))
    if src.time_format.kind is None:
        return None
    types = src._column_types(probe) if src.format == "csv" and src.typed_read else {}
    return {"columns": replace(src.columns), "time": (src.time_format.kind, src.time_format.scale), "types": types,
            "vehicle_note": src.vehicle_note}


def _plan_parts(files: list[Path], sources: list[GpsFile], threads: int) -> list[_Part]:
    """Pass-1 parts in input order: plain CSV files of several byte ranges (`GpsFile._split_ranges`, as an
    in-process run cuts them) and Parquet files of several batches are split, about two parts per worker thread
    (at most CLUSTER_PART_BYTES / CLUSTER_PART_ROWS each); every other file is one part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts: list[_Part] = []
    for i, (f, src) in enumerate(zip(files, sources, strict=True)):
        path, shown = str(Path(f).absolute()), str(f)
        pieces: list[Any] = []
        kind = src.format
        try:
            if kind == "csv":
                ranges = src._split_ranges() or []
                per = max(1, min(CLUSTER_PART_BYTES // max(1, src.range_bytes), -(-len(ranges) // (2 * threads))))
                pieces = [ranges[k:k + per] for k in range(0, len(ranges), per)]
            else:
                n = int(pq.ParquetFile(src.path).metadata.num_rows)
                step = src.parquet_batch_rows
                n_batches = -(-n // step)
                per = max(1, min(CLUSTER_PART_ROWS // step, -(-n_batches // (2 * threads))))
                pieces = [(k * step, min(n, (k + per) * step)) for k in range(0, n_batches, per)]
            settled = _settle_split(src) if len(pieces) > 1 else None
        except (RoadmapError, OSError, pa.ArrowException):  # a whole-file part raises the error in its turn
            settled = None
        if settled is None:
            parts.append(_Part(i, path, shown))
            continue
        for k, piece in enumerate(pieces):
            parts.append(_Part(i, path, shown, kind, ranges=piece if kind == "csv" else [],
                               rows=piece if kind == "parquet" else (0, 0), last=k == len(pieces) - 1,
                               settled=settled))
    return parts


@dataclass
class _FileRead:
    """Main-process bookkeeping of a file read in parts (what `GpsFile.batches` keeps while reading one)."""

    rows: int = 0  # data rows of the parts so far (the row number base of the next part)
    malformed: int = 0
    malformed_example: str | None = None
    line: int = 2  # physical line of the next range (the header is line 1)
    ranges: int = 0
    as_text: int = 0
    quantum: bool = False


def _pass1_cluster(cluster: Cluster, files: list[Path], sources: list[GpsFile], spec: _ReadSpec,
                   vehicles: VehicleIndex, drops: DropLog, keep: Callable[[ParsedBatch], None], ext: _Extent,
                   q_lat: list[np.ndarray], q_lon: list[np.ndarray], bar: Any) -> None:
    """Pass 1 on the cluster: parts parsed on the workers, their results taken here in input order as the
    in-process loop takes batches (global vehicle codes in first-appearance order, drops with whole-file row
    numbers, `keep` per batch); `sources` end up describing their files as after an in-process read."""
    parts = _plan_parts(files, sources, cluster.n_threads)
    log.info("cluster: GPS pass 1 in %d part(s) of %d file(s)", len(parts), len(files))
    reads = [_FileRead() for _ in files]
    for part, out in zip(parts, cluster.map_ordered(_read_part, parts, spec), strict=True):
        src, fr = sources[part.file], reads[part.file]
        for level, msg in out.logs:
            log.log(level, "%s", msg)
        if out.file_vehicle and out.names:
            lut = [vehicles.code(src._file_vehicle_name(vehicles))]
        else:
            lut = [vehicles.code(name) for name in out.names]
        veh, t, lon, lat, speed, bearing = out.cols
        veh = np.asarray(lut, dtype=np.int32)[veh]
        pos = 0
        for rows, kept, stats in out.batches:
            sl = slice(pos, pos + kept)
            pos += kept
            keep(ParsedBatch(veh[sl], t[sl], lon[sl], lat[sl], speed[sl], bearing[sl], rows))
            ext.merge(stats)
            bar.update(rows)
        if out.quantum is not None and not fr.quantum:
            q_lat.append(out.quantum[0])
            q_lon.append(out.quantum[1])
            fr.quantum = True
        name = src.path.name
        for reason, k, example in out.drops:
            drops.add(reason, k, example.shifted(name, fr.rows) if isinstance(example, _RowExample) else example)
        fr.rows += sum(b[0] for b in out.batches)
        types = part.settled["types"] if part.settled else {}
        for lines, malformed, first, typed, note in out.ranges:  # as GpsFile._range_blocks
            fr.malformed += malformed
            if first is not None and fr.malformed_example is None:
                number, n_fields, expected, text = first
                where = f" row {fr.line + number - 1}" if number > 0 else ""
                fr.malformed_example = f"{name}{where}: {n_fields} fields, expected {expected}: {text!r}"
            if types and not typed:
                fr.as_text += 1
                log.info("%s: %s; that part read as text", name, note)
            fr.line += lines
            fr.ranges += 1
        if not part.last:
            continue
        if part.kind == "file":
            st = out.state
            src.columns.vehicle = st["vehicle"]
            src.time_format = TimeFormat(*st["time"])
            src.read_mode, src.rows_read, src.vehicle_note = st["read_mode"], st["rows_read"], st["vehicle_note"]
            continue
        if fr.malformed:
            drops.add("malformed_row", fr.malformed, fr.malformed_example)
        src.rows_read = fr.rows + fr.malformed
        if part.kind == "csv":
            typed_desc = "typed: " + ", ".join(f"{c} {typ}" for c, typ in types.items()) if types else "text"
            src.read_mode = f"{typed_desc}; {fr.ranges} ranges in parallel" + (
                f", {fr.as_text} of them as text after a value that did not convert" if fr.as_text else "")


@dataclass
class _ChunkSpec:
    """What every pass-2 task needs besides its records: the grid, the projector's lattice box and settings,
    the store's tiling."""

    key: str  # one run
    grid: Grid
    bbox: tuple[float, float, float, float]
    knobs: dict[str, Any]
    tile_size: int
    tiles_x: int


def _worker_projector(spec: _ChunkSpec) -> _Projector:
    def build() -> _Projector:
        p = _Projector(spec.grid)
        for k, v in spec.knobs.items():
            setattr(p, k, v)
        if not p.identity:
            p._build_lattice(*spec.bbox)
        return p

    return worker_cached(("roadmap-ingest-projector", spec.key), build)


def _index_chunk(item: tuple[np.ndarray, np.ndarray | None], spec: _ChunkSpec,
                 names: list[str]) -> tuple[int, _ChunkOut]:
    """Pass 2 of one chunk, on a worker (`_process_chunk` with the run's projector, built once per worker)."""
    rec, context = item
    tile_ids = functools.partial(tile_index, tile_size=spec.tile_size, tiles_x=spec.tiles_x)
    out = _process_chunk(rec, context, _worker_projector(spec), names, tile_ids)
    out.context = _NO_RECORDS  # not needed back: the main process hands every chunk its context
    return rec.size, out


def _last_per_vehicle(rec: np.ndarray, context: np.ndarray | None) -> np.ndarray:
    """Each vehicle's last record of `context` + `rec` in time, the first in input order of equal times: the
    context `_process_chunk` returns for the next time slice, found without processing the slice (so that the
    slices of a bucket run as independent tasks)."""
    if context is not None and context.size:
        rec = np.concatenate([context, rec])
    if rec.size == 0:
        return rec
    order = _sort_vehicle_time(rec["vehicle"], rec["time"])
    if order is not None:
        rec = take_records(rec, order)
    v, t = rec["vehicle"], rec["time"]
    n = rec.size
    run = np.ones(n, dtype=bool)  # the first of each run of equal (vehicle, time): what dropping duplicates keeps
    run[1:] = (v[1:] != v[:-1]) | (t[1:] != t[:-1])
    run_start = np.maximum.accumulate(np.where(run, np.arange(n), 0))
    last = np.ones(n, dtype=bool)
    last[:-1] = v[1:] != v[:-1]
    return take_records(rec, run_start[last])


def _cluster_jobs(rows: np.ndarray | None, buckets: _Spill | None, group_rows: int, chunk_rows: int,
                  work_dir: Path) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The pass-2 chunks of an in-process run, in the same order and cut the same way, as (records, context):
    in memory, `_memory_jobs`; from the bucket spill, groups of buckets as `_pass2_spill` reads them and the
    time slices of an oversized bucket, each with its context computed here."""
    if rows is not None:
        for index, context in _memory_jobs(rows, chunk_rows):
            yield take_records(rows, index), context
        return
    assert buckets is not None
    for group in _groups(buckets.counts, group_rows):
        n_group = int(sum(buckets.counts[i] for i in group))
        if len(group) == 1 and n_group > group_rows:
            path = work_dir / f"slices{group[0]:04d}.bin"
            slices, n_slices = _time_slices(buckets, group[0], group_rows, path)
            try:
                context = None
                for k in range(n_slices):
                    rec = slices.read([k])
                    yield rec, context
                    context = _last_per_vehicle(rec, context)
            finally:
                slices.close()
                path.unlink()
            continue
        group_recs = buckets.read(group)
        for index, context in _memory_jobs(group_recs, chunk_rows):
            yield take_records(group_recs, index), context


def _pass2_cluster(cluster: Cluster, rows: np.ndarray | None, buckets: _Spill | None, group_rows: int,
                   chunk_rows: int, work_dir: Path, spec: _ChunkSpec, names: list[str],
                   take: Callable[[_ChunkOut], Any], bar: Any) -> None:
    """Pass 2 on the cluster: the chunks of `_cluster_jobs` processed on the workers, taken here in order."""
    key = f"roadmap-ingest-names-{spec.key}"
    names_future = cluster.client.scatter({key: names}, broadcast=True, hash=False)[key]
    try:
        jobs = _cluster_jobs(rows, buckets, group_rows, chunk_rows, work_dir)
        for n, out in cluster.map_ordered(_index_chunk, jobs, spec, names_future):
            take(out)
            bar.update(n)
    finally:
        names_future.release()


# ---- the whole stage ---------------------------------------------------------------------------------------
def _commit(src: Path, dst: Path, trash: Path) -> None:
    """Move a finished artifact (file or folder) into place, replacing what was there."""
    if dst.is_dir() and not dst.is_symlink():
        os.replace(dst, trash / f"old-{dst.name}")
    os.replace(src, dst)


def _grid_key(g: Grid) -> tuple:
    return (g.width, g.height, tuple(round(v, 9) for v in g.transform), g.crs_wkt)


def run_ingest(wd: Workdir, opts: IngestOptions) -> dict[str, Any]:
    """Run the ingest stage into workdir `wd`; returns the report written to ingest_report.json."""
    if not opts.gps and not opts.imagery:
        raise RoadmapError("ingest: nothing to do; give --gps FILE (repeatable) and/or --imagery PATH")
    if not 0.0 <= opts.max_bad_fraction <= 1.0:
        raise RoadmapError(f"--max-bad-fraction {opts.max_bad_fraction}: expected a fraction in [0, 1]")
    if opts.resolution is not None and not opts.resolution > 0:
        raise RoadmapError(f"--resolution {opts.resolution}: expected a positive number of metres")
    overrides = parse_columns_spec(opts.columns)
    gps_crs = _parse_crs(opts.gps_crs, "--gps-crs")
    crs = _parse_crs(opts.crs, "--crs")
    if crs is not None and crs.is_geographic and not opts.imagery:
        raise RoadmapError(f"--crs {opts.crs}: a grid without imagery needs a projected CRS in metres")
    files = expand_gps_paths(opts.gps) if opts.gps else []
    for f in files:
        if not f.is_file():
            raise RoadmapError(f"--gps {f}: not a file")

    p_grid, p_vrt, p_gps, p_report = (wd.path(n) for n in ("grid", "imagery", "gps", "ingest_report"))
    old_report: dict[str, Any] = {}
    if p_report.exists():
        with contextlib.suppress(OSError, ValueError):
            old_report = json.loads(p_report.read_text())
    keep_imagery_grid = bool(files) and not opts.imagery and wd.has_imagery() and p_grid.exists()
    rebuild_from_record = bool(opts.imagery) and not files and wd.has_gps()
    writes = [p_report]
    if opts.imagery:
        writes += [p_vrt, p_grid]
    if files:
        writes.append(p_gps)
        if not keep_imagery_grid:
            writes.append(p_grid)
    existing = [p for p in dict.fromkeys(writes) if p.exists()]
    if existing and not opts.overwrite:
        if rebuild_from_record:
            raise RoadmapError(f"{p_grid}: exists; adding or replacing imagery replaces the grid and rebuilds the "
                               f"GPS store from the files recorded in {p_report.name}: pass --overwrite")
        names = ", ".join(p.name for p in existing)
        raise RoadmapError(f"{wd.root}: {names} exist(s); pass --overwrite to replace")
    if (opts.imagery or keep_imagery_grid) and (opts.crs or opts.resolution):
        log.warning("--crs/--resolution are ignored: the grid comes from the imagery")

    created_root = not wd.root.exists()
    wd.ensure()
    tmp = wd.root / f".ingest.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    ok = False
    try:
        grid: Grid | None = None
        imagery_info: dict[str, Any] | None = None
        grid_source = "gps"
        if opts.imagery:
            from roadmap_cli.imagery import build_vrt, collect_imagery

            img_files = collect_imagery(opts.imagery)
            if len(img_files) == 1 and p_vrt.exists() and img_files[0].resolve() == p_vrt.resolve():
                # --imagery names the workdir's own mosaic: keep it (wrapping it would make it refer to itself)
                shutil.copyfile(p_vrt, tmp / "imagery.vrt")
                img_files = [Path(f) for f in (old_report.get("imagery") or {}).get("files", [str(p_vrt)])]
            else:
                build_vrt(img_files, tmp / "imagery.vrt")
            grid = Grid.from_raster(tmp / "imagery.vrt")
            grid_source = "imagery"
            imagery_info = {"path": str(Path(opts.imagery).resolve()), "files": [str(f.resolve()) for f in img_files]}
        elif keep_imagery_grid:
            grid = wd.load_grid()
            grid_source = "imagery"
            imagery_info = old_report.get("imagery")

        settings = {
            "gps": [str(f.resolve()) for f in files], "columns": opts.columns, "gps_crs": opts.gps_crs,
            "speed_unit": opts.speed_unit, "max_bad_fraction": opts.max_bad_fraction,
            "crs": opts.crs, "resolution": opts.resolution,
        }
        gps_report: dict[str, Any] | None = None
        if rebuild_from_record:
            old_grid = Grid.load(p_grid) if p_grid.exists() else None
            assert grid is not None
            if old_grid is not None and _grid_key(old_grid) == _grid_key(grid):
                gps_report = {k: v for k, v in old_report.items() if k not in ("grid", "imagery", "created_utc")}
                settings = old_report.get("settings", settings)
            else:
                settings = dict(old_report.get("settings") or {})
                recorded = [Path(p) for p in settings.get("gps") or []]
                missing = [p for p in recorded if not p.exists()]
                if not recorded or missing:
                    what = f"{missing[0]} is gone" if missing else f"{p_report.name} records no GPS files"
                    raise RoadmapError(f"{wd.root}: the new imagery changes the grid, so the GPS store must be "
                                       f"rebuilt, but {what}; pass --gps FILE(s) too")
                log.warning("imagery changes the grid: re-ingesting GPS from %d recorded file(s)", len(recorded))
                files = recorded
                overrides = parse_columns_spec(settings.get("columns"))
                gps_crs = _parse_crs(settings.get("gps_crs"), "--gps-crs")
        if files:
            with open_cluster(opts.scheduler) as cluster:
                grid, gps_report = ingest_gps(
                    files, grid, tmp / "gps", tmp / "work", overrides=overrides, gps_crs=gps_crs,
                    speed_unit=settings.get("speed_unit", opts.speed_unit),
                    max_bad_fraction=float(settings.get("max_bad_fraction", opts.max_bad_fraction)),
                    crs=crs, resolution=opts.resolution or DEFAULT_RESOLUTION, tile_size=opts.tile_size,
                    group_rows=opts.group_rows, block_size=opts.block_size, memory_rows=opts.memory_rows,
                    cluster=cluster)
        assert grid is not None
        report: dict[str, Any] = {"roadmap_version": __version__,
                                  "created_utc": datetime.now(UTC).isoformat(timespec="seconds")}
        if gps_report is None:
            gps_report = {"gps_files": [], "rows_read": 0, "rows_kept": 0, "dropped": dict.fromkeys(REASONS, 0),
                          "dropped_total": 0, "vehicles": 0}
        report.update(gps_report)
        report["grid"] = {"source": grid_source, "width": grid.width, "height": grid.height, "epsg": grid.epsg,
                          "pixel_size_m": round(grid.pixel_size_m, 4), "bounds": list(grid.bounds)}
        report["imagery"] = imagery_info
        report["settings"] = settings
        grid.save(tmp / "grid.json")
        atomic_write_json(tmp / "ingest_report.json", report)
        # Commit: every artifact is complete under a temporary name; move them into place together.
        trash = tmp / "trash"
        trash.mkdir()
        if opts.imagery:
            _commit(tmp / "imagery.vrt", p_vrt, trash)
        if (tmp / "gps").exists():
            _commit(tmp / "gps", p_gps, trash)
        _commit(tmp / "grid.json", p_grid, trash)
        _commit(tmp / "ingest_report.json", p_report, trash)
        ok = True
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok and created_root:
            with contextlib.suppress(OSError):
                wd.root.rmdir()  # only if empty
