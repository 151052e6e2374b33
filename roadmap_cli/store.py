"""The tile-indexed GPS point store (`<workdir>/gps/`).

Format, and why: one raw little-endian file of fixed-size records (`SAMPLE_DTYPE`) per grid tile
(`tiles/<ty>_<tx>.bin`) plus `meta.json` (tile size, counts per tile) and `vehicles.json` (vehicle ids).
Raw records append in a stream (ingest never holds the whole file in memory), a window query is one
`np.fromfile` per touched tile with no decoding, and the files are readable from any language. Columnar
formats (Parquet) would compress better but cost decode time on the hot path of training (thousands of
window queries per epoch).

Positions are stored as float64 continuous pixel coordinates of the grid: exact to far below 0.1 pixel for
any mosaic size (float64 holds 1e-6 pixel at a million pixels across).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
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
STORE_VERSION = 1
DEFAULT_TILE_SIZE = 1024


def empty_samples(n: int = 0) -> np.ndarray:
    """A structured array of `n` samples (zeros)."""
    return np.zeros(n, dtype=SAMPLE_DTYPE)


class StoreWriter:
    """Streams samples into tile files. Use as a context manager; the caller renames the folder into place."""

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, tile_size: int = DEFAULT_TILE_SIZE,
                 buffer_bytes: int = 32 << 20) -> None:
        self.path = Path(path)
        self.width, self.height, self.tile_size = int(width), int(height), int(tile_size)
        self.tiles_x = max(1, -(-self.width // self.tile_size))
        self.tiles_y = max(1, -(-self.height // self.tile_size))
        self.counts = np.zeros(self.tiles_x * self.tiles_y, dtype=np.int64)
        self._buffers: dict[int, list[np.ndarray]] = {}
        self._buffered = 0
        self._buffer_bytes = buffer_bytes
        (self.path / "tiles").mkdir(parents=True, exist_ok=True)

    def tile_ids(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Flat tile index of each position (positions must lie inside the grid)."""
        tx = np.floor_divide(col, self.tile_size).astype(np.int64)
        ty = np.floor_divide(row, self.tile_size).astype(np.int64)
        return ty * self.tiles_x + tx

    def append(self, samples: np.ndarray) -> None:
        """Add samples (SAMPLE_DTYPE) lying inside the grid."""
        if samples.size == 0:
            return
        if samples.dtype != SAMPLE_DTYPE:
            raise TypeError("samples must have SAMPLE_DTYPE")
        ids = self.tile_ids(samples["col"], samples["row"])
        order = np.argsort(ids, kind="stable")
        ids_sorted = ids[order]
        uniq, starts = np.unique(ids_sorted, return_index=True)
        ends = np.append(starts[1:], ids_sorted.size)
        sorted_samples = samples[order]
        for tid, s, e in zip(uniq.tolist(), starts.tolist(), ends.tolist(), strict=True):
            self._buffers.setdefault(tid, []).append(sorted_samples[s:e])
            self.counts[tid] += e - s
        self._buffered += samples.nbytes
        if self._buffered >= self._buffer_bytes:
            self.flush()

    def _tile_file(self, tid: int) -> Path:
        ty, tx = divmod(tid, self.tiles_x)
        return self.path / "tiles" / f"{ty}_{tx}.bin"

    def flush(self) -> None:
        """Append buffered samples to their tile files."""
        for tid, parts in self._buffers.items():
            with open(self._tile_file(tid), "ab") as fh:
                for p in parts:
                    fh.write(p.tobytes())
        self._buffers.clear()
        self._buffered = 0

    def close(self, vehicles: list[str], extra: dict | None = None) -> None:
        """Flush and write meta.json and vehicles.json."""
        self.flush()
        meta = {
            "version": STORE_VERSION,
            "tile_size": self.tile_size,
            "width": self.width,
            "height": self.height,
            "tiles_x": self.tiles_x,
            "tiles_y": self.tiles_y,
            "n_samples": int(self.counts.sum()),
            "counts": {f"{divmod(t, self.tiles_x)[0]}_{divmod(t, self.tiles_x)[1]}": int(c)
                       for t, c in enumerate(self.counts.tolist()) if c},
            "dtype": [list(d) for d in SAMPLE_DTYPE.descr],
        }
        if extra:
            meta.update(extra)
        (self.path / "vehicles.json").write_text(json.dumps(list(vehicles)))
        (self.path / "meta.json").write_text(json.dumps(meta, indent=1))

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)


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
        if self.meta.get("version") != STORE_VERSION:
            raise RoadmapError(f"{meta_path}: point store version {self.meta.get('version')} is not supported")
        self.tile_size = int(self.meta["tile_size"])
        self.tiles_x = int(self.meta["tiles_x"])
        self.tiles_y = int(self.meta["tiles_y"])
        self.width = int(self.meta["width"])
        self.height = int(self.meta["height"])
        self.counts: dict[str, int] = self.meta.get("counts", {})
        self._vehicles: list[str] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.meta["n_samples"])

    @property
    def vehicles(self) -> list[str]:
        """Vehicle ids; a sample's `vehicle` field indexes this list."""
        if self._vehicles is None:
            self._vehicles = json.loads((self.path / "vehicles.json").read_text())
        return self._vehicles

    def read_tile(self, ty: int, tx: int) -> np.ndarray:
        """All samples of one tile."""
        if f"{ty}_{tx}" not in self.counts:
            return empty_samples()
        return np.fromfile(self.path / "tiles" / f"{ty}_{tx}.bin", dtype=SAMPLE_DTYPE)

    def tiles(self) -> Iterator[tuple[int, int]]:
        """(ty, tx) of every non-empty tile."""
        for key in self.counts:
            ty, tx = key.split("_")
            yield int(ty), int(tx)

    def query(self, col_off: float, row_off: float, width: float, height: float) -> np.ndarray:
        """Samples with col in [col_off, col_off+width) and row in [row_off, row_off+height)."""
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
                    t = t[(c >= col_off) & (c < c1) & (r >= row_off) & (r < r1)]
                parts.append(t)
        if not parts:
            return empty_samples()
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def all_samples(self) -> np.ndarray:
        """Every sample (small stores and tests only)."""
        return self.query(0, 0, self.width, self.height)
