"""The tile-indexed GPS point store (`<workdir>/gps/`).

Format (version 2), and why: `samples.bin` holds fixed-size little-endian records (`SAMPLE_DTYPE`) written as
they stream in, a buffer at a time, each buffer sorted by grid tile; `index.npy` lists the extents, one row
(tile id, first record, record count) per tile per buffer, sorted by tile; `meta.json` has the tile size and
the count per tile, `vehicles.json` the vehicle ids. The writer writes every record exactly once and holds one
buffer at a time, never the whole store (a window query reads only the extents of the tiles it touches, with
positional reads and no decoding), two files are created however many tiles there are (creating thousands of
small files costs more than writing the data on common file systems), and the files are readable from any
language.
Columnar formats (Parquet) would compress better but cost decode time on the hot path of training (thousands
of window queries per epoch). Version 1 stores (one `tiles/<ty>_<tx>.bin` file per tile) are still read.

Positions are stored as float64 continuous pixel coordinates of the grid: exact to far below 0.1 pixel for
any mosaic size (float64 holds 1e-6 pixel at a million pixels across).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np

from roadmap_cli.errors import RoadmapError

SAMPLE_DTYPE = np.dtype(
    [
        ("col", "<f8"),  # continuous pixel column on the grid
        ("row", "<f8"),  # continuous pixel row on the grid
        ("time", "<f8"),  # epoch seconds, UTC
        ("vehicle", "<i4"),  # index into vehicles.json
        ("interval", "<f4"),  # seconds since the vehicle's previous sample; NaN for its first
        ("speed", "<f4"),  # m/s; NaN unknown
        ("bearing", "<f4"),  # degrees clockwise from north, [0, 360); NaN unknown
    ]
)
STORE_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_TILE_SIZE = 1024


def empty_samples(n: int = 0) -> np.ndarray:
    """A structured array of `n` samples (zeros)."""
    return np.zeros(n, dtype=SAMPLE_DTYPE)


def read_records_into(fh: io.BufferedReader | int, out: np.ndarray, offset: int) -> np.ndarray:
    """Fill the contiguous array `out` with its records starting at record `offset` of an open file.

    Positional reads (no shared file position, so safe from threads and after fork in data-loader workers)
    into the caller's buffer: unlike a memory map, resident memory does not grow with the file.
    """
    fd = fh if isinstance(fh, int) else fh.fileno()
    view = memoryview(out).cast("B")
    pos, start = 0, offset * out.dtype.itemsize
    while pos < view.nbytes:
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[pos:]], start + pos)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(fd, view.nbytes - pos, start + pos)
            n = len(data)
            view[pos:pos + n] = data
        if n <= 0:
            raise OSError(f"unexpected end of file reading {out.size} records at {offset}")
        pos += n
    return out


def read_records(fh: io.BufferedReader | int, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    """`count` records of `dtype` at record `offset` of an open file, in a new writable array."""
    return read_records_into(fh, np.empty(count, dtype=dtype), offset)


def take_records(records: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`records[index]` for a structured array, as whole-row byte copies (several times faster than numpy's
    field-by-field gather for structured dtypes). `index` is an integer or boolean array."""
    if index.dtype == np.bool_:
        index = np.flatnonzero(index)
    records = np.ascontiguousarray(records)
    raw = records.view(np.uint8).reshape(records.size, records.dtype.itemsize)
    return np.take(raw, index, axis=0).view(records.dtype).reshape(-1)


def tile_index(col: np.ndarray, row: np.ndarray, tile_size: int, tiles_x: int) -> np.ndarray:
    """Flat tile index (row-major, `tiles_x` tiles a row) of each position: what `StoreWriter.tile_ids` gives,
    as a plain function for workers that have no writer. Positions must lie inside the grid: non-negative, so
    the integer part is the floor and floor(floor(x) / n) == floor(x / n) exactly."""
    tx = np.asarray(col).astype(np.int64)
    tx //= tile_size
    ty = np.asarray(row).astype(np.int64)
    ty //= tile_size
    ty *= tiles_x
    ty += tx
    return ty


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """Write the bytes of a contiguous array at a byte offset of a file (positional: threads may write apart)."""
    view = memoryview(data).cast("B")
    pos = 0
    while pos < view.nbytes:
        pos += os.pwrite(fd, view[pos:], offset + pos)


class StoreWriter:
    """Streams samples into a store folder. Use as a context manager; the caller renames the folder into place.

    `append` collects samples (keeping a reference: do not modify them afterwards) until they fill
    `buffer_bytes`; then they are sorted by tile (a stable radix sort) into one buffer and written at their
    place in `samples.bin` as one extent per tile. The buffers are allocated once and reused, so writing
    costs no fresh memory per flush. With `executor`, that sorting and writing happens on it while
    the next samples are collected (one flush in flight), so the caller's thread does no copying at all.
    `close(vehicles)` writes the index and metadata.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, tile_size: int = DEFAULT_TILE_SIZE,
                 buffer_bytes: int = 16 << 20, executor: Executor | None = None) -> None:
        self.path = Path(path)
        self.width, self.height, self.tile_size = int(width), int(height), int(tile_size)
        if self.tile_size <= 0:
            raise ValueError("tile_size must be positive")
        self.tiles_x = max(1, -(-self.width // self.tile_size))
        self.tiles_y = max(1, -(-self.height // self.tile_size))
        self.counts: dict[int, int] = {}  # flat tile id -> samples
        self._capacity = max(1, int(buffer_bytes) // SAMPLE_DTYPE.itemsize)
        self._executor = executor
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []  # (samples, tile ids) collected since the last flush
        self._bufs: tuple[np.ndarray, np.ndarray] | None = None  # tile ids and sorted samples of the flush
        self._buffered = 0
        self._pending: deque[Future[np.ndarray]] = deque()  # flushes in flight, in file order
        self._extents: list[np.ndarray] = []  # (E, 3) int64 blocks: tile id, first record, count
        self._written = 0  # records placed in the file (written or being written)
        self.path.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path / "samples.bin", "wb")  # noqa: SIM115 - closed in close()/__exit__

    def tile_ids(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Flat tile index of each position (see `tile_index`)."""
        return tile_index(col, row, self.tile_size, self.tiles_x)

    def append(self, samples: np.ndarray, tile_sorted: bool = False, tile_ids: np.ndarray | None = None) -> None:
        """Add samples (SAMPLE_DTYPE) lying inside the grid.

        `tile_sorted=True` promises they are already ordered by `tile_ids` (as `sort_by_tile` leaves them):
        they are then written at once as one extent per tile, without buffering or sorting here. `tile_ids`, when
        given, are the samples' `tile_ids(col, row)` computed by the caller (saving that work here; the caller
        vouches that the samples lie inside the grid).
        """
        if samples.size == 0:
            return
        if samples.dtype != SAMPLE_DTYPE:
            raise TypeError("samples must have SAMPLE_DTYPE")
        if tile_ids is None:
            tile_ids = self._checked_ids(samples)
        elif tile_ids.shape != samples.shape:
            raise ValueError("tile_ids must have one id per sample")
        if tile_sorted:
            self.flush()
            ids = np.asarray(tile_ids)
            if ids.size > 1 and np.any(ids[1:] < ids[:-1]):
                raise ValueError("samples are not sorted by tile")
            offset = self._written
            self._written += samples.size
            self._extents.append(self._write_sorted(np.ascontiguousarray(samples), ids, offset))
            self._count(self._extents[-1])
            return
        pos = 0
        while pos < samples.size:
            k = min(samples.size - pos, self._capacity - self._buffered)
            self._parts.append((samples[pos:pos + k], tile_ids[pos:pos + k]))
            self._buffered += k
            pos += k
            if self._buffered == self._capacity:
                self._flush_buffer()

    def sort_by_tile(self, samples: np.ndarray) -> np.ndarray:
        """The samples reordered by tile (what `append(..., tile_sorted=True)` expects)."""
        ids = self._checked_ids(samples)
        return take_records(samples, self._tile_order(ids))

    def _checked_ids(self, samples: np.ndarray) -> np.ndarray:
        col, row = samples["col"], samples["row"]
        inside = (col >= 0) & (col < self.width) & (row >= 0) & (row < self.height)
        if not inside.all():
            raise ValueError(f"{inside.size - np.count_nonzero(inside)} samples outside the grid "
                             f"({self.width} x {self.height} pixels)")
        return self.tile_ids(col, row)

    def _tile_order(self, ids: np.ndarray) -> np.ndarray:
        # Stable radix sort for 16-bit ids (the usual case), numpy's default sort otherwise.
        if self.tiles_x * self.tiles_y <= 65536:
            return np.argsort(ids.astype(np.uint16), kind="stable")
        return np.argsort(ids, kind="stable")

    def _write_sorted(self, samples: np.ndarray, ids: np.ndarray, offset: int) -> np.ndarray:
        """Write tile-sorted samples at record `offset`; their extents (tile id, first record, count)."""
        starts = np.flatnonzero(np.diff(ids, prepend=-1))
        n = np.diff(np.append(starts, ids.size))
        _pwrite_all(self._fh.fileno(), samples, offset * SAMPLE_DTYPE.itemsize)
        return np.stack([ids[starts], starts + offset, n], axis=1).astype(np.int64)

    def _sort_and_write(self, parts: list[tuple[np.ndarray, np.ndarray]], n: int, offset: int) -> np.ndarray:
        """Gather `n` collected samples, sort them by tile and write them at record `offset` (one flush at a
        time: the buffers are shared); their extents."""
        if self._bufs is None:
            self._bufs = (np.empty(self._capacity, dtype=np.int64), np.empty(self._capacity, dtype=SAMPLE_DTYPE))
        ids, out = (b[:n] for b in self._bufs)
        np.concatenate([i for _, i in parts], out=ids)
        order = self._tile_order(ids)
        rows = out.view(np.uint8).reshape(n, SAMPLE_DTYPE.itemsize)
        if len(parts) == 1:
            np.take(np.ascontiguousarray(parts[0][0]).view(np.uint8).reshape(n, -1), order, axis=0, out=rows)
        else:  # scatter each part to its sorted place: no gathering copy of the parts first
            where = np.empty(n, dtype=np.int64)
            where[order] = np.arange(n)
            pos = 0
            for p, _ in parts:
                k = p.size
                rows[where[pos:pos + k]] = np.ascontiguousarray(p).view(np.uint8).reshape(k, -1)
                pos += k
        return self._write_sorted(out, ids[order], offset)

    def _count(self, extents: np.ndarray) -> None:
        for t, c in zip(extents[:, 0].tolist(), extents[:, 2].tolist(), strict=True):
            self.counts[t] = self.counts.get(t, 0) + c

    def _collect(self, keep: int) -> None:
        """Wait for flushes in flight until at most `keep` remain; record their extents in file order."""
        while len(self._pending) > keep:
            extents = self._pending.popleft().result()
            self._extents.append(extents)
            self._count(extents)

    def _flush_buffer(self) -> None:
        if not self._buffered:
            return
        parts, n, offset = self._parts, self._buffered, self._written
        self._parts, self._buffered = [], 0
        self._written += n
        self._collect(0)  # one flush at a time (they share the buffers)
        if self._executor is None:
            self._pending.append(_done(self._sort_and_write(parts, n, offset)))
            self._collect(0)
        else:
            self._pending.append(self._executor.submit(self._sort_and_write, parts, n, offset))

    def flush(self) -> None:
        """Write the buffered samples as one extent per tile and wait until every flush is written."""
        self._flush_buffer()
        self._collect(0)

    def close(self, vehicles: list[str], extra: dict | None = None) -> None:
        """Flush and write index.npy, meta.json and vehicles.json."""
        self.flush()
        self._fh.close()
        index = np.concatenate(self._extents) if self._extents else np.zeros((0, 3), dtype=np.int64)
        index = index[np.lexsort((index[:, 1], index[:, 0]))]
        np.save(self.path / "index.npy", index)
        meta = {
            "version": STORE_VERSION,
            "tile_size": self.tile_size,
            "width": self.width,
            "height": self.height,
            "tiles_x": self.tiles_x,
            "tiles_y": self.tiles_y,
            "n_samples": int(self._written),
            "counts": {f"{t // self.tiles_x}_{t % self.tiles_x}": int(c) for t, c in sorted(self.counts.items())},
            "dtype": [list(d) for d in SAMPLE_DTYPE.descr],
        }
        if extra:
            meta.update(extra)
        (self.path / "vehicles.json").write_text(json.dumps(list(vehicles)))
        (self.path / "meta.json").write_text(json.dumps(meta, indent=1))

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for fut in self._pending:  # let flushes in flight finish before the file is closed
            with contextlib.suppress(Exception):
                fut.result()
        self._pending.clear()
        if not self._fh.closed:
            self._fh.close()
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def _done(value: np.ndarray) -> Future[np.ndarray]:
    fut: Future[np.ndarray] = Future()
    fut.set_result(value)
    return fut


class PointStore:
    """Read access to a point store: window queries that read only the tiles they touch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise RoadmapError(f"{self.path}: no GPS point store here; run `roadmap ingest --gps ...` first")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise RoadmapError(f"{meta_path}: corrupt point store metadata ({exc})") from exc
        self.version = self.meta.get("version")
        if self.version not in READABLE_VERSIONS:
            raise RoadmapError(f"{meta_path}: point store version {self.version} is not supported")
        self.tile_size = int(self.meta["tile_size"])
        self.tiles_x = int(self.meta["tiles_x"])
        self.tiles_y = int(self.meta["tiles_y"])
        self.width = int(self.meta["width"])
        self.height = int(self.meta["height"])
        self.counts: dict[str, int] = self.meta.get("counts", {})
        self._vehicles: list[str] | None = None
        self._index: np.ndarray | None = None
        self._fd: int | None = None
        self._fd_pid: int | None = None

    def __getstate__(self) -> dict:
        # Pickled into data-loader workers: reopen the file lazily there.
        state = dict(self.__dict__)
        state["_index"] = None
        state["_fd"] = None
        state["_fd_pid"] = None
        return state

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and getattr(self, "_fd_pid", None) == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def n_samples(self) -> int:
        return int(self.meta["n_samples"])

    @property
    def vehicles(self) -> list[str]:
        """Vehicle ids; a sample's `vehicle` field indexes this list."""
        if self._vehicles is None:
            self._vehicles = json.loads((self.path / "vehicles.json").read_text())
        return self._vehicles

    def _load(self) -> None:
        try:
            self._index = np.load(self.path / "index.npy")
            self._size = (self.path / "samples.bin").stat().st_size // SAMPLE_DTYPE.itemsize
        except (OSError, ValueError) as exc:
            raise RoadmapError(f"{self.path}: corrupt or incomplete point store ({exc})") from exc
        if self._index.ndim != 2 or self._index.shape[1] != 3 or (
                self._index.size and int((self._index[:, 1] + self._index[:, 2]).max()) > self._size):
            raise RoadmapError(f"{self.path}: corrupt point store index")

    def _file(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path / "samples.bin", os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fd_pid = os.getpid()
        return self._fd

    def read_tile(self, ty: int, tx: int) -> np.ndarray:
        """All samples of one tile (a new array)."""
        if f"{ty}_{tx}" not in self.counts:
            return empty_samples()
        if self.version == 1:
            return np.fromfile(self.path / "tiles" / f"{ty}_{tx}.bin", dtype=SAMPLE_DTYPE)
        if self._index is None:
            self._load()
        assert self._index is not None
        tid = ty * self.tiles_x + tx
        keys = self._index[:, 0]
        a, b = np.searchsorted(keys, tid, side="left"), np.searchsorted(keys, tid, side="right")
        extents = self._index[a:b, 1:].tolist()
        out = np.empty(sum(c for _, c in extents), dtype=SAMPLE_DTYPE)
        fd, pos = self._file(), 0
        for o, c in extents:  # one extent per ingest buffer that held samples of this tile
            read_records_into(fd, out[pos:pos + c], o)
            pos += c
        return out

    def tiles(self) -> Iterator[tuple[int, int]]:
        """(ty, tx) of every non-empty tile."""
        for key in self.counts:
            ty, tx = key.split("_")
            yield int(ty), int(tx)

    def query(self, col_off: float, row_off: float, width: float, height: float) -> np.ndarray:
        """Samples with col in [col_off, col_off+width) and row in [row_off, row_off+height) (a new array)."""
        c1, r1 = col_off + width, row_off + height
        tx0 = max(0, int(np.floor(col_off / self.tile_size)))
        ty0 = max(0, int(np.floor(row_off / self.tile_size)))
        tx1 = min(self.tiles_x - 1, int(np.ceil(c1 / self.tile_size)) - 1)
        ty1 = min(self.tiles_y - 1, int(np.ceil(r1 / self.tile_size)) - 1)
        parts = []
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                t = self.read_tile(ty, tx)
                if t.size == 0:
                    continue
                inner = (tx * self.tile_size >= col_off and (tx + 1) * self.tile_size <= c1
                         and ty * self.tile_size >= row_off and (ty + 1) * self.tile_size <= r1)
                if not inner:
                    c, r = t["col"], t["row"]
                    t = take_records(t, (c >= col_off) & (c < c1) & (r >= row_off) & (r < r1))
                parts.append(t)
        if not parts:
            return empty_samples()
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def all_samples(self) -> np.ndarray:
        """Every sample (small stores and tests only)."""
        return self.query(0, 0, self.width, self.height)
