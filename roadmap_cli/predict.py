"""Predict a road probability raster (`prob.tif`) over a mosaic of any size, or the GPS-only KDE baseline.

How it works, and why:

- **Tiles with overlap, smooth blending.** The grid is covered by a lattice of `tile_size` windows, as few as a
  stride of `tile_size - overlap` allows, spread evenly from edge to edge (no reads outside the mosaic, every
  overlap at least `overlap`). Each tile's probabilities are weighted by a separable window that is 0 on the
  outer quarter of the overlap (where zero padding spoils a network's output), rises with a raised cosine over
  the middle half and is 1 inside; on a side that touches the mosaic edge the weight stays 1. The raster is
  sum(w·p) / sum(w); sum(w) is the product of two 1-D sums (the lattice is a full product), so only sum(w·p) is
  buffered. For a fully convolutional network whose receptive field fits in a quarter of the overlap the result
  equals a whole-image forward pass up to float rounding; for deeper networks it is a seamless approximation.
- **Row bands, flat memory.** A band is one row of tiles, run left to right. The accumulation buffer is one
  tile: after each tile, the columns left of the next tile are final for the band's finished rows (quantised
  and written, compressed, to the band's file) and for its overlap rows (copied to a float32 strip that seeds
  the next band). Memory grows with the mosaic width only by that strip (overlap rows × width × 4 bytes), not
  at all with its height; GDAL's block cache and glibc's allocator are bounded too (see `_run`).
- **Reads off the main thread.** Imagery windows (`ImageryReader`, one per reader thread) and GPS windows (the
  point store queried over the window grown by the rendering margin, rendered with the checkpoint's own
  `RenderParams`) are prepared by `workers` background threads a few tiles ahead of the network.
- **Resumable, byte-identical.** Work happens in `<out>.partial/`: per finished band a compressed file of its
  uint8 rows, the carried overlap rows (float32, so nothing is recomputed differently) and `state.json` with the
  count of finished bands and the fingerprint of every input and option. A killed run restarted with the same
  inputs continues after the last finished band; batches never span bands, so the bytes equal an uninterrupted
  run's. Changed inputs or options discard the partial state (and say which changed). The GeoTIFF is
  assembled from the band files at the end, written to a temporary name and renamed into place.
- **KDE baseline** (`method="kde"`): no model; each window's Gaussian density (render.kde) from the samples of
  the window grown by the kernel's reach, which is exact, so windows need no overlap or blending.

The output encoding is described in `roadmap_cli.rasterio_out` (uint8, 0 = nodata, v ≈ 255·p otherwise).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roadmap_cli import __version__
from roadmap_cli.errors import RoadmapError
from roadmap_cli.progress import progress
from roadmap_cli.rasterio_out import GDAL_CACHE_MB, RowWriter, probability_to_uint8, read_tags, to_cog
from roadmap_cli.workdir import Workdir, atomic_output, atomic_write_json

log = logging.getLogger("roadmap")

DEFAULT_TILE_SIZE = 1024
TTA_CHOICES = (1, 2, 4, 8)
FINGERPRINT_TAG = "ROADMAP_FINGERPRINT"
STATE_VERSION = 1
WINDOWS_PER_TASK = 16  # windows per cluster task (whole batches): small enough to spread, large enough to amortise


def default_overlap(tile_size: int) -> int:
    """tile/8, at least 64 px (but at most half the tile)."""
    return int(min(tile_size // 2, max(64, tile_size // 8)))


# ---------------------------------------------------------------------------------------------------------------
# tiling geometry
# ---------------------------------------------------------------------------------------------------------------
def tile_starts(n: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length min(tile, n) covering an axis of length n, first at 0, last ending at n.

    As few tiles as the stride allows, spread evenly: every overlap is at least tile - stride and they are all
    about equal (a last tile shifted back to the edge would instead overlap its neighbour almost entirely, and
    the rows carried from band to band would balloon to nearly a tile's height).
    """
    if n <= tile:
        return [0]
    count = -(-(n - tile) // stride) + 1
    return [(i * (n - tile)) // (count - 1) for i in range(count)]


def _ramp(r: int) -> np.ndarray:
    """Raised-cosine rise over r pixels, strictly inside (0, 1); mirrored it sums to 1 with itself."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(r, dtype=np.float64) + 0.5) / r)).astype(np.float32)


def axis_weights(start: int, length: int, n: int, halo: int, ramp: int) -> np.ndarray:
    """1-D blend weight of one tile: 0 on the `halo` outer pixels of an inner side, cosine rise, then 1."""
    w = np.ones(length, dtype=np.float32)
    rise = _ramp(ramp) if ramp else np.zeros(0, dtype=np.float32)
    if start > 0:
        w[:halo] = 0.0
        w[halo:halo + ramp] = rise
    if start + length < n:
        w[length - halo:] = 0.0
        w[length - halo - ramp:length - halo] = rise[::-1]
    return w


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles fall on a width × height grid and how they are blended."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]
    halo: int
    ramp: int

    @classmethod
    def build(cls, width: int, height: int, tile_size: int, overlap: int) -> TileLayout:
        if tile_size < 1:
            raise RoadmapError(f"--tile-size {tile_size}: must be a positive number of pixels")
        if overlap < 0 or 2 * overlap > tile_size:
            raise RoadmapError(f"--overlap {overlap}: must be between 0 and half the tile size ({tile_size // 2})")
        stride = tile_size - overlap
        halo = overlap // 4
        return cls(width, height, min(tile_size, width), min(tile_size, height),
                   tuple(tile_starts(width, tile_size, stride)), tuple(tile_starts(height, tile_size, stride)),
                   halo, overlap - 2 * halo)

    @property
    def n_bands(self) -> int:
        return len(self.ys)

    @property
    def n_tiles(self) -> int:
        return len(self.xs) * len(self.ys)

    def band_rows(self, k: int) -> tuple[int, int]:
        """Rows [r0, r1) finished after band k (they partition the grid's rows)."""
        r1 = self.ys[k + 1] if k + 1 < len(self.ys) else self.height
        return self.ys[k], r1

    def x_weights(self) -> list[np.ndarray]:
        return [axis_weights(x, self.tile_w, self.width, self.halo, self.ramp) for x in self.xs]

    def y_weights(self) -> list[np.ndarray]:
        return [axis_weights(y, self.tile_h, self.height, self.halo, self.ramp) for y in self.ys]

    @staticmethod
    def _sum(starts: Iterable[int], weights: list[np.ndarray], n: int) -> np.ndarray:
        s = np.zeros(n, dtype=np.float32)
        for p, w in zip(starts, weights, strict=True):
            s[p:p + w.size] += w
        return s

    def weight_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum over tiles of x weights per column, same per row); both > 0 everywhere."""
        return self._sum(self.xs, self.x_weights(), self.width), self._sum(self.ys, self.y_weights(), self.height)


# ---------------------------------------------------------------------------------------------------------------
# background reading
# ---------------------------------------------------------------------------------------------------------------
class Prefetch:
    """Run `fn(item)` for the items in order on `workers` threads, at most `depth` ahead; iterate the results."""

    def __init__(self, fn: Callable[[Any], Any], items: Iterable[Any], workers: int, depth: int) -> None:
        self._fn = fn
        self._items = iter(items)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="roadmap-read")
        self._queue: deque[Future] = deque()
        self._depth = max(1, depth)
        self._fill()

    def _fill(self) -> None:
        while len(self._queue) < self._depth:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._queue.append(self._pool.submit(self._fn, item))

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._queue:
            raise StopIteration
        fut = self._queue.popleft()
        self._fill()
        return fut.result()

    def close(self) -> None:
        for fut in self._queue:
            fut.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ThreadLocalImagery:
    """One ImageryReader per thread (GDAL dataset handles are not shared between threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self):
        reader = getattr(self._local, "reader", None)
        if reader is None:
            from roadmap_cli.imagery import ImageryReader

            reader = ImageryReader(self.path)
            self._local.reader = reader
            with self._lock:
                self._all.append(reader)
        return reader

    def close(self) -> None:
        with self._lock:
            for r in self._all:
                r.close()
            self._all.clear()


# ---------------------------------------------------------------------------------------------------------------
# fingerprints and partial state
# ---------------------------------------------------------------------------------------------------------------
def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_digest(model: Any) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes): what the weights are, not the file."""
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def imagery_digest(vrt: Path) -> str:
    """sha256 of the VRT text plus the size and mtime of every file it references."""
    text = vrt.read_bytes()
    h = hashlib.sha256(text)
    for m in re.finditer(rb"<SourceFilename[^>]*>([^<]+)</SourceFilename>", text):
        name = m.group(1).decode("utf-8", "replace")
        p = Path(name) if os.path.isabs(name) else vrt.parent / name
        try:
            st = p.stat()
            h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{name}|missing".encode())
    return h.hexdigest()


def gps_digest(store_dir: Path) -> str:
    """sha256 of the point store's meta.json (sample counts per tile, dtype, extent)."""
    return _sha256_bytes((store_dir / "meta.json").read_bytes())


def _diff_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if json.dumps(old.get(k), sort_keys=True)
                  != json.dumps(new.get(k), sort_keys=True))


_BLOCK_HEADER = struct.Struct("<qqq")  # first column, width, compressed length


class _BandWriter:
    """Column blocks of one band (each zlib-compressed with a small header) streamed to a temporary file, so a
    band's finished rows never sit in memory at full mosaic width. Compression and writing run on a thread of
    their own (in submission order, so the file is the same), off the thread that feeds the network."""

    _MAX_PENDING = 8

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roadmap-write")
        self._pending: deque[Future] = deque()

    def _write(self, c0: int, block: np.ndarray) -> None:
        data = zlib.compress(block.tobytes(), 1)
        self.fh.write(_BLOCK_HEADER.pack(c0, block.shape[1], len(data)))
        self.fh.write(data)

    def write(self, c0: int, block: np.ndarray) -> None:
        while len(self._pending) >= self._MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, c0, np.ascontiguousarray(block)))

    def commit(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
            self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class PartialState:
    """`<out>.partial/`: finished band files, the carried overlap rows, and state.json with the fingerprint."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any], width: int, n_bands: int) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.width = width
        self.n_bands = n_bands

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def band_path(self, k: int) -> Path:
        return self.folder / f"band_{k:05d}.u8.zz"

    def carry_path(self, k: int) -> Path:
        return self.folder / f"carry_{k:05d}.npy"

    def open(self) -> int:
        """Number of bands already finished by an earlier run with the same fingerprint (0 to start fresh)."""
        done = 0
        if self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_text())
                old = state.get("fingerprint", {})
                done = int(state.get("bands_done", 0))
                has_carry = bool(state.get("carry", False))
            except (OSError, ValueError, TypeError):
                old, done, has_carry = None, 0, False
            if old is None:
                log.warning("%s: unreadable partial state; starting over", self.folder)
                done = 0
            elif old != self.fingerprint:
                changed = ", ".join(_diff_keys(old, self.fingerprint)) or "format"
                log.warning("%s: a partial run with other inputs/options (changed: %s) is discarded; starting over",
                            self.folder, changed)
                done = 0
            elif not all(self.band_path(k).exists() for k in range(done)) or (
                    has_carry and 0 < done < self.n_bands and not self.carry_path(done - 1).exists()):
                log.warning("%s: partial state is incomplete; starting over", self.folder)
                done = 0
            elif done:
                log.warning("%s: resuming after %d of %d finished bands", self.folder, done, self.n_bands)
        if done == 0 and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if done == 0:
            self._write_state(0)
        return done

    def _write_state(self, done: int, carry: bool = False) -> None:
        atomic_write_json(self.state_path, {"version": STATE_VERSION, "bands_done": done, "carry": carry,
                                            "width": self.width, "fingerprint": self.fingerprint})

    def band_writer(self, k: int) -> _BandWriter:
        """Writer of band k's finished column blocks (a temporary file until `commit_band`)."""
        return _BandWriter(self.band_path(k))

    def commit_band(self, k: int, writer: _BandWriter, carry: np.ndarray | None) -> None:
        """Record band k: its column blocks, the carried rows for band k+1, then the count (last, atomically)."""
        writer.commit()
        has_carry = carry is not None and k + 1 < self.n_bands
        if has_carry:
            with atomic_output(self.carry_path(k)) as tmp, open(tmp, "wb") as fh:
                np.save(fh, carry, allow_pickle=False)
        self._write_state(k + 1, has_carry)
        if k > 0:
            self.carry_path(k - 1).unlink(missing_ok=True)

    def load_carry(self, k: int) -> np.ndarray:
        return np.load(self.carry_path(k), allow_pickle=False)

    def band_rows(self, k: int, n_rows: int) -> np.ndarray:
        """Band k's finished rows (uint8 [n_rows, width]) pasted together from its column blocks."""
        path = self.band_path(k)
        rows = np.empty((n_rows, self.width), dtype=np.uint8)
        covered = 0
        try:
            with open(path, "rb") as fh:
                while header := fh.read(_BLOCK_HEADER.size):
                    c0, w, n = _BLOCK_HEADER.unpack(header)
                    block = np.frombuffer(zlib.decompress(fh.read(n)), dtype=np.uint8)
                    rows[:, c0:c0 + w] = block.reshape(n_rows, w)
                    covered += w
        except (OSError, ValueError, zlib.error, struct.error) as exc:
            raise RoadmapError(f"{path}: corrupt partial band file ({exc}); delete {self.folder} and re-run") from None
        if covered != self.width:
            raise RoadmapError(f"{path}: partial band file covers {covered} of {self.width} columns; delete "
                               f"{self.folder} and re-run")
        return rows

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# engines: one band of finished uint8 rows at a time
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RunStats:
    """What a run did, for logs, tests and benchmarks."""

    windows: int = 0
    bands_run: int = 0
    bands_resumed: int = 0
    windows_without_gps: int = 0
    gps_windows: int = 0
    km2_without_gps: float = 0.0
    forward_seconds: float = 0.0
    skipped: bool = False
    output: str = ""
    notes: list[str] = field(default_factory=list)


class _ModelEngine:
    """Model inference over a TileLayout with blended accumulation and a carried overlap."""

    def __init__(self, model: Any, meta: dict[str, Any], workdir: Workdir, grid: Any, layout: TileLayout,
                 inputs: str, feed_gps: bool, render_params: Any, batch_size: int, tta: int, device: Any,
                 workers: int, stats: RunStats, cluster: Any = None, remote_spec: dict[str, Any] | None = None,
                 windows_per_task: int = WINDOWS_PER_TASK) -> None:
        self.model, self.meta, self.grid, self.layout = model, meta, grid, layout
        self.cluster, self.remote_spec, self.windows_per_task = cluster, remote_spec, windows_per_task
        self._remote: Any = None
        self.model_inputs = str(meta["inputs"])
        self.uses_image = "image" in self.model_inputs
        self.uses_gps = "gps" in self.model_inputs
        self.feed_gps = feed_gps
        self.render_params = render_params
        self.norm = meta.get("normalisation")
        self.batch_size, self.tta, self.device, self.workers = batch_size, tta, device, workers
        self.stats = stats
        self.imagery = _ThreadLocalImagery(workdir.path("imagery")) if self.uses_image else None
        self.store = None
        if self.uses_gps and feed_gps:
            from roadmap_cli.store import PointStore

            self.store = PointStore(workdir.path("gps"))
        self.wx, self.wy = layout.x_weights(), layout.y_weights()
        sx, sy = layout.weight_sums()
        self.inv_sx = (1.0 / sx).astype(np.float32)
        self.inv_sy = (1.0 / sy).astype(np.float32)
        # working window: the columns of the current tile (earlier tiles' overlap included), all band rows
        self.work = np.zeros((layout.tile_h, layout.tile_w), dtype=np.float32)
        self.work_valid = np.ones((layout.tile_h, layout.tile_w), dtype=bool)
        self._prefetch: Prefetch | None = None
        self._batch: np.ndarray | None = None
        self._carry_in: np.ndarray | None = None
        self._pending_carry: np.ndarray | None = None

    # -- per tile, on a reader thread ----------------------------------------------------------------------
    def load_tile(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(network input [C, h, w], valid [h, w] or None, GPS samples in the window or -1)."""
        from roadmap_cli.inputs import make_input

        ty, tx = key
        x0, y0 = self.layout.xs[tx], self.layout.ys[ty]
        w, h = self.layout.tile_w, self.layout.tile_h
        rgb = valid = None
        if self.uses_image:
            rgb, valid = self.imagery.get().read(x0, y0, w, h)
        gps, n = None, -1
        if self.uses_gps:
            from roadmap_cli.render import render
            from roadmap_cli.store import empty_samples

            if self.store is not None:
                m = int(math.ceil(self.render_params.margin))
                samples = self.store.query(x0 - m, y0 - m, w + 2 * m, h + 2 * m)
                n = int(samples.size)
            else:
                samples = empty_samples()
            gps = render(samples, x0, y0, w, h, self.render_params)
        return make_input(rgb, gps, self.model_inputs, self.norm), valid, n

    # -- band protocol ---------------------------------------------------------------------------------------
    @property
    def n_bands(self) -> int:
        return self.layout.n_bands

    def band_rows(self, k: int) -> tuple[int, int]:
        return self.layout.band_rows(k)

    def windows_in_band(self, k: int) -> int:
        return len(self.layout.xs)

    def window_km2(self) -> float:
        return self.grid.area_km2(self.layout.tile_w * self.layout.tile_h)

    def start(self, first_band: int, carry: np.ndarray | None) -> None:
        self._carry_in = carry
        if self.cluster is not None:
            tasks = [(k, i) for k in range(first_band, self.n_bands) for i in self.task_starts()]
            self._remote = self.cluster.map_ordered(predict_windows_task, tasks, self.remote_spec)
            return
        keys = [(ty, tx) for ty in range(first_band, self.n_bands) for tx in range(len(self.layout.xs))]
        # one batch ahead: the readers prepare batch b+1 while the network runs batch b
        self._prefetch = Prefetch(self.load_tile, keys, self.workers, max(self.batch_size, self.workers))

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self.imagery is not None:
            self.imagery.close()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [B, h, w] of a batch [B, C, h, w], averaged over the TTA flips/rotations."""
        return forward_tta(self.model, batch, self.tta, self.device)

    # -- where a band's probabilities come from ---------------------------------------------------------------
    def task_size(self) -> int:
        """Windows per cluster task: whole batches, `windows_per_task` at most (one batch at least)."""
        return max(1, self.windows_per_task // self.batch_size) * self.batch_size

    def task_starts(self) -> list[int]:
        """First window of each cluster task in a band."""
        return list(range(0, len(self.layout.xs), self.task_size()))

    def _forward_batches(self, k: int, first: int, count: int, source: Iterator[Any]) -> Iterator[tuple]:
        """(probs [n, h, w], [(valid, n_samples)] * n) per batch of windows first..first+count of band k.

        Batches are cut the same way wherever they run (in-process or on a worker): a band is split into runs
        of `batch_size` windows from its left edge, so the network sees the same batches and gives the same
        numbers.
        """
        import time

        i = first
        end = first + count
        while i < end:
            n = min(self.batch_size, end - i)
            items = [next(source) for _ in range(n)]
            head = items[0][0]
            if self._batch is None or self._batch.shape[1:] != head.shape or self._batch.dtype != head.dtype:
                self._batch = np.empty((self.batch_size, *head.shape), dtype=head.dtype)  # reused: no page faults
            batch = np.stack([it[0] for it in items], out=self._batch[:n])
            rest = [(valid, n_samples) for _, valid, n_samples in items]  # drop the inputs: memory
            t0 = time.perf_counter()
            probs = self.forward(batch)
            self.stats.forward_seconds += time.perf_counter() - t0
            yield probs, rest
            i += n

    def band_batches(self, k: int) -> Iterator[tuple]:
        """Band k's batches in order: from the reader threads and the local network, or from cluster tasks."""
        if self._remote is None:
            yield from self._forward_batches(k, 0, len(self.layout.xs), self._prefetch)
            return
        for _ in self.task_starts():
            result = next(self._remote)
            self.stats.forward_seconds += result["forward_seconds"]
            yield from result["batches"]

    def compute_windows(self, k: int, first: int, count: int) -> list[tuple]:
        """Worker side: the batches of windows first..first+count of band k (reads on the worker's threads)."""
        keys = [(k, tx) for tx in range(first, first + count)]
        reader = Prefetch(self.load_tile, keys, self.workers, max(self.batch_size, self.workers))
        try:
            return list(self._forward_batches(k, first, count, reader))
        finally:
            reader.close()

    def run_band(self, k: int, on_window: Callable[[int], None], emit: Callable[[int, np.ndarray], None]) -> None:
        """Run band k's tiles; emit its finished rows column block by column block; keep what band k+1 adds to.

        Streams in both directions: the working window holds only the current tile's columns; columns left of
        the next tile are final for this band's finished rows (quantised and emitted) and for the carried rows
        (copied into the carry strip, which seeds those columns of band k+1). Memory across the mosaic width is
        two float32 strips of overlap height.
        """
        lay = self.layout
        r0, r1 = lay.band_rows(k)
        nr, th, tw = r1 - r0, lay.tile_h, lay.tile_w
        keep = th - nr  # rows of this band's buffer that band k+1 also covers (0 for the last band)
        carry_out = np.empty((keep, lay.width), dtype=np.float32) if keep else None
        carry_in = self._carry_in
        inv_sy = self.inv_sy[r0:r1, None]
        wy = self.wy[k][:, None]
        work, work_valid = self.work, self.work_valid
        lo = hi = 0  # columns [lo, hi) of the mosaic live in work[:, :hi - lo]
        nx = len(lay.xs)
        i = 0
        for probs, items in self.band_batches(k):
            n = len(items)
            for j, (valid, n_samples) in enumerate(items):
                x0 = lay.xs[i + j]
                x1 = x0 + tw
                if x1 > hi:  # new columns enter the window: seed them with the previous band's carried sums
                    work[:, hi - lo:x1 - lo] = 0.0
                    if carry_in is not None:
                        work[:carry_in.shape[0], hi - lo:x1 - lo] = carry_in[:, hi:x1]
                    hi = x1
                tmp = probs[j] * self.wx[i + j][None, :]
                tmp *= wy
                work[:, x0 - lo:x1 - lo] += tmp
                if valid is not None:
                    work_valid[:, x0 - lo:x1 - lo] = valid
                if self.store is not None:
                    self.stats.gps_windows += 1
                    if n_samples == 0:
                        self.stats.windows_without_gps += 1
                        self.stats.km2_without_gps += self.window_km2()
                # columns before the next tile are final
                f = lay.xs[i + j + 1] if i + j + 1 < nx else lay.width
                if f > lo:
                    block = work[:nr, :f - lo] * inv_sy
                    block *= self.inv_sx[None, lo:f]
                    emit(lo, probability_to_uint8(block, work_valid[:nr, :f - lo] if self.uses_image else None))
                    if carry_out is not None:
                        carry_out[:, lo:f] = work[nr:, :f - lo]
                    live = hi - f
                    if live:
                        work[:, :live] = work[:, f - lo:hi - lo]
                        work_valid[:, :live] = work_valid[:, f - lo:hi - lo]
                    lo = f
            i += n
            on_window(n)
        self._carry_in = carry_out
        self._pending_carry = carry_out

    def carry(self) -> np.ndarray | None:
        return self._pending_carry


class _KdeEngine:
    """The GPS-only KDE baseline: exact per window (samples of the window grown by the kernel's reach)."""

    def __init__(self, workdir: Workdir, grid: Any, window: int, kernel_size: int, sigma: float | None,
                 scale: str, reference: float, workers: int, stats: RunStats) -> None:
        from roadmap_cli.store import PointStore

        self.grid, self.window = grid, window
        self.kernel_size, self.sigma, self.scale, self.reference = kernel_size, sigma, scale, reference
        self.workers, self.stats = workers, stats
        self.store = PointStore(workdir.path("gps"))
        self.margin = kde_margin(kernel_size, sigma)
        self.xs = list(range(0, grid.width, window))
        self._prefetch: Any = None
        self.cluster: Any = None
        self.remote_spec: dict[str, Any] | None = None

    @property
    def n_bands(self) -> int:
        return -(-self.grid.height // self.window)

    def band_rows(self, k: int) -> tuple[int, int]:
        return k * self.window, min(self.grid.height, (k + 1) * self.window)

    def windows_in_band(self, k: int) -> int:
        return len(self.xs)

    def compute(self, key: tuple[int, int]) -> np.ndarray:
        from roadmap_cli.render import kde

        k, x0 = key
        r0, r1 = self.band_rows(k)
        w, h = min(self.window, self.grid.width - x0), r1 - r0
        m = self.margin
        samples = self.store.query(x0 - m, r0 - m, w + 2 * m, h + 2 * m)
        d = kde(samples, x0, r0, w, h, self.kernel_size, self.sigma, self.scale, self.reference)
        return probability_to_uint8(d, None)

    def start(self, first_band: int, carry: np.ndarray | None) -> None:
        if self.cluster is not None:  # one task per band, its windows back in order
            bands = self.cluster.map_ordered(kde_band_task, range(first_band, self.n_bands), self.remote_spec)
            self._prefetch = (block for blocks in bands for block in blocks)
            return
        keys = [(k, x0) for k in range(first_band, self.n_bands) for x0 in self.xs]
        self._prefetch = Prefetch(self.compute, keys, self.workers, 2 * self.workers + 1)

    def compute_band(self, k: int) -> list[np.ndarray]:
        """Worker side: band k's windows, left to right."""
        return [self.compute((k, x0)) for x0 in self.xs]

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    def run_band(self, k: int, on_window: Callable[[int], None], emit: Callable[[int, np.ndarray], None]) -> None:
        for x0 in self.xs:
            emit(x0, next(self._prefetch))
            on_window(1)

    def carry(self) -> np.ndarray | None:
        return None


def kde_margin(kernel_size: int, sigma: float | None) -> int:
    """Pixels beyond a window whose samples still reach it through the KDE kernel (render.kde_margin)."""
    from roadmap_cli.render import kde_margin as render_kde_margin

    return int(math.ceil(render_kde_margin(kernel_size, sigma)))


# ---------------------------------------------------------------------------------------------------------------
# cluster tasks (run on Dask workers; see roadmap_cli.cluster)
# ---------------------------------------------------------------------------------------------------------------
def worker_device(spec: str) -> Any:
    """The torch device of a worker: `--device` resolved there; with several GPUs visible, one per worker.

    A worker that sees several GPUs (a plain `dask worker --nworkers N` on a multi-GPU node) takes the GPU
    numbered by its worker name's trailing integer modulo the GPU count; workers started by dask-cuda see one
    GPU each and take it.
    """
    import torch

    from roadmap_cli.options import resolve_device

    dev = resolve_device(spec)
    if dev.type == "cuda" and dev.index is None and torch.cuda.device_count() > 1:
        try:
            from distributed import get_worker

            digits = re.search(r"(\d+)$", str(get_worker().name))
            dev = torch.device("cuda", int(digits.group(1)) % torch.cuda.device_count() if digits else 0)
        except (ImportError, ValueError):
            pass
    return dev


_REMOTE_LOCK = threading.Lock()


def _remote_model_engine(spec: dict[str, Any]) -> _ModelEngine:
    from roadmap_cli.cluster import worker_cached

    def build() -> _ModelEngine:
        from roadmap_cli.checkpoint import build_from_checkpoint

        dev = worker_device(spec["device"])
        model, meta = build_from_checkpoint(spec["checkpoint"], dev)
        if model_digest(model) != spec["model"]:
            raise RoadmapError(f"{spec['checkpoint']}: the worker read other weights than the main process (is the "
                               "path shared, and the file unchanged?)")
        wd = Workdir(spec["workdir"])
        grid = wd.load_grid()
        layout = TileLayout.build(grid.width, grid.height, spec["tile"], spec["overlap"])
        params = None
        if meta.get("render") is not None and "gps" in spec["inputs"]:
            from roadmap_cli.render import RenderParams

            params = RenderParams.from_dict(meta["render"])
        return _ModelEngine(model, meta, wd, grid, layout, spec["inputs"], spec["feed_gps"], params,
                            spec["batch_size"], spec["tta"], dev, spec["readers"], RunStats(),
                            windows_per_task=spec["windows_per_task"])

    return worker_cached(("predict", json.dumps(spec, sort_keys=True)), build)


def predict_windows_task(task: tuple[int, int], spec: dict[str, Any]) -> dict[str, Any]:
    """Dask task: the network's probabilities for one run of whole batches of band `task[0]` from window `task[1]`.

    Returns {"batches": [(probs [n, h, w] float32, [(valid, n_samples)] * n)], "forward_seconds"}; the main
    process blends them exactly as it blends its own batches.
    """
    from roadmap_cli.cluster import worker_threads

    worker_threads()
    _big_arrays_from_mmap()  # the allocator settings of an in-process run (Dask's own make every layer fault pages)
    with _REMOTE_LOCK:  # a worker with several Dask threads runs one network at a time, on all its threads
        engine = _remote_model_engine(spec)
        k, first = task
        count = min(engine.task_size(), len(engine.layout.xs) - first)
        engine.stats.forward_seconds = 0.0
        batches = engine.compute_windows(k, first, count)
        return {"batches": batches, "forward_seconds": engine.stats.forward_seconds}


def kde_band_task(k: int, spec: dict[str, Any]) -> list[np.ndarray]:
    """Dask task: the KDE baseline's uint8 windows of band k, left to right."""
    from roadmap_cli.cluster import worker_cached, worker_threads

    worker_threads()

    def build() -> _KdeEngine:
        wd = Workdir(spec["workdir"])
        return _KdeEngine(wd, wd.load_grid(), spec["window"], spec["kernel_size"], spec["sigma"], spec["scale"],
                          spec["reference"], 1, RunStats())

    return worker_cached(("kde", json.dumps(spec, sort_keys=True)), build).compute_band(k)


# ---------------------------------------------------------------------------------------------------------------
# TTA forward
# ---------------------------------------------------------------------------------------------------------------
def tta_ops(n: int) -> list[tuple[int, bool]]:
    """(quarter turns, horizontal flip) of each TTA view: 1 identity; 2 +h-flip; 4 the flips; 8 all dihedral."""
    if n not in TTA_CHOICES:
        raise RoadmapError(f"--tta {n}: must be one of {', '.join(map(str, TTA_CHOICES))}")
    return {1: [(0, False)], 2: [(0, False), (0, True)], 4: [(0, False), (0, True), (2, False), (2, True)],
            8: [(k, f) for k in range(4) for f in (False, True)]}[n]


def forward_tta(model: Any, batch: np.ndarray, tta: int, device: Any) -> np.ndarray:
    """Sigmoid probabilities [B, h, w] of `model` on batch [B, C, h, w], averaged over the TTA views.

    Rotations of non-square tiles are fine for fully convolutional networks (the views are run one by one).
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    total = None
    with torch.inference_mode():
        for k, flip in tta_ops(tta):
            xi = torch.rot90(x, k, (2, 3)) if k else x
            if flip:
                xi = xi.flip(3)
            y = model(xi)
            if y.dim() == 4:
                y = y[:, 0]
            y = torch.sigmoid(y.float())
            if flip:
                y = y.flip(2)
            if k:
                y = torch.rot90(y, -k, (1, 2))
            total = y if total is None else total + y
        if tta > 1:
            total = total / float(tta)
    return total.cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------
def _big_arrays_from_mmap() -> None:
    """glibc only: serve every allocation of 1 MB or more from mmap, so it goes back to the OS when freed.

    Reader threads and the network allocate and free arrays of many sizes (a few MB to a few hundred MB) per
    window. glibc's default raises its mmap threshold after each large free, so later large arrays come from
    per-thread heaps that fragment, and resident memory creeps up with the number of windows instead of staying
    flat. Fixing the threshold (which also stops that adjustment) keeps a long run's memory at its working set.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


def _run(engine: Any, grid: Any, out: Path, fingerprint: dict[str, Any], overwrite: bool, cog: bool,
         stats: RunStats, band_hook: Callable[[int], None] | None, desc: str) -> RunStats:
    """Shared by model and KDE: up-to-date check, partial state, band loop, assembly, atomic rename.

    GDAL's block cache is bounded for the whole run: its default (5% of RAM) would otherwise fill with every
    imagery block read and output block written, and memory would grow with the mosaic.
    """
    import rasterio

    # as JSON sees it (tuples become lists), so that a fingerprint read back from state.json compares equal
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    _big_arrays_from_mmap()
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return _run_bands(engine, grid, out, fingerprint, overwrite, cog, stats, band_hook, desc)
    except BaseException:
        engine.close()
        raise


def _run_bands(engine: Any, grid: Any, out: Path, fingerprint: dict[str, Any], overwrite: bool, cog: bool,
               stats: RunStats, band_hook: Callable[[int], None] | None, desc: str) -> RunStats:
    out_fp = dict(fingerprint, cog=bool(cog))
    out_fp_text = json.dumps(out_fp, sort_keys=True, separators=(",", ":"))
    stats.output = str(out)
    if out.exists():
        tags = read_tags(out) or {}
        old = tags.get(FINGERPRINT_TAG)
        if old is not None and old == out_fp_text and not overwrite:
            log.warning("%s: up to date (same model, inputs and options); pass --overwrite to recompute", out)
            stats.skipped = True
            return stats
        if old is None and not overwrite:
            raise RoadmapError(f"{out}: exists and was not made by roadmap predict; pass --overwrite to replace it")
        if old is not None and old != out_fp_text:
            try:
                changed = ", ".join(_diff_keys(json.loads(old), out_fp)) or "format"
            except ValueError:
                changed = "unknown"
            log.warning("%s: inputs or options changed (%s); replacing it", out, changed)
    partial = PartialState(out.with_name(out.name + ".partial"), fingerprint, grid.width, engine.n_bands)
    done = partial.open()
    stats.bands_resumed = done
    total = sum(engine.windows_in_band(k) for k in range(engine.n_bands))
    initial = sum(engine.windows_in_band(k) for k in range(done))
    km2_per_window = grid.area_km2() / max(1, total)  # of the mosaic, windows' overlaps not counted twice
    try:
        if done < engine.n_bands:
            carry = partial.load_carry(done - 1) if done > 0 and partial.carry_path(done - 1).exists() else None
            engine.start(done, carry)
            bar = progress(total=total, initial=initial, desc=desc, unit="win")
            km2 = [initial * km2_per_window]

            def on_window(n: int) -> None:
                stats.windows += n
                km2[0] += n * km2_per_window
                bar.update(n)
                bar.set_postfix_str(f"{km2[0]:.2f} km²", refresh=False)

            try:
                for k in range(done, engine.n_bands):
                    writer = partial.band_writer(k)
                    try:
                        engine.run_band(k, on_window, writer.write)
                    except BaseException:
                        writer.abort()
                        raise
                    partial.commit_band(k, writer, engine.carry())
                    stats.bands_run += 1
                    if band_hook is not None:
                        band_hook(k)
            finally:
                bar.close()
        else:
            log.info("%s: every band was already finished; assembling the raster", partial.folder)
    finally:
        engine.close()

    tags = {FINGERPRINT_TAG: out_fp_text, "ROADMAP_VERSION": __version__, "ROADMAP_METHOD": fingerprint["method"],
            "ROADMAP_ENCODING": "uint8: 0 nodata, v in 1..255 = road probability ~ v/255"}
    with atomic_output(out, overwrite=True, suffix=".tif") as tmp:
        gtiff = partial.folder / "assembled.tif" if cog else tmp
        with RowWriter(gtiff, grid, tags=tags) as writer:
            for k in range(engine.n_bands):
                r0, r1 = engine.band_rows(k)
                writer.write_rows(partial.band_rows(k, r1 - r0))
        if cog:
            to_cog(gtiff, tmp)
    partial.remove()
    return stats


def _check_workdir_for(inputs: str, workdir: Workdir, feed_gps: bool, source: str) -> None:
    if "image" in inputs and not workdir.has_imagery():
        raise RoadmapError(f"{source}: needs imagery (inputs {inputs}) but {workdir.path('imagery')} is missing "
                           "(a GPS-only workdir); use a GPS-only model or --method kde")
    if "gps" in inputs and feed_gps and not workdir.has_gps():
        hint = " or pass --inputs image to predict from imagery alone" if "image" in inputs else ""
        raise RoadmapError(f"{source}: needs GPS (inputs {inputs}) but {workdir.path('gps')} holds no point store; "
                           f"run `roadmap ingest --gps ...`{hint}")


def predict_to_raster(model: Any, meta: dict[str, Any], workdir: Workdir | str | os.PathLike[str],
                      out: str | os.PathLike[str] | None = None, *, tile_size: int | None = None,
                      overlap: int | None = None, batch_size: int = 4, tta: int = 1, device: Any = "cpu",
                      workers: int | None = None, inputs: str | None = None, cog: bool = False, overwrite: bool = False,
                      model_id: str | None = None, source: str = "model",
                      band_hook: Callable[[int], None] | None = None, cluster: Any = None,
                      checkpoint: str | os.PathLike[str] | None = None, worker_device: str = "auto",
                      windows_per_task: int = WINDOWS_PER_TASK) -> RunStats:
    """Write the road probability raster of `model` (an nn.Module in eval mode) over the workdir's grid.

    `meta` is the checkpoint metadata (inputs, render, normalisation, tile_size). `inputs` may be "image" for an
    image+gps model to predict from imagery alone (GPS channels rendered from no samples). `model_id` names the
    weights in the resume fingerprint (default: a hash of the state dict). `band_hook(k)` runs after band k is
    recorded (tests use it to simulate a killed run). `workers` (reader threads) defaults to 2 on CPU, where the
    network wants the cores, and to half the cores (2..8) on a GPU, where reading and rendering are the bottleneck.

    With `cluster` (roadmap_cli.cluster.Cluster) the windows run as tasks on its workers, `windows_per_task` at a
    time in whole batches, each worker loading `checkpoint` (which must hold `model`'s weights, at a path the
    workers see) onto `worker_device` resolved there; this process blends and writes as before, so the raster
    equals an in-process run's wherever the network gives the same numbers (same device kind and torch thread
    count: one per Dask worker thread). Returns what the run did.
    """
    import torch

    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    grid = wd.load_grid()
    out_path = Path(out) if out is not None else wd.path("prob")
    model_inputs = str(meta.get("inputs"))
    if inputs is None or inputs == model_inputs:
        feed_gps = True
    elif inputs == "image" and model_inputs == "image+gps":
        feed_gps = False
    else:
        raise RoadmapError(f"--inputs {inputs}: the model was trained on {model_inputs}; only --inputs image "
                           "(GPS channels left empty) can stand in for an image+gps model")
    _check_workdir_for(model_inputs, wd, feed_gps, source)
    tile = int(tile_size or meta.get("tile_size") or DEFAULT_TILE_SIZE)
    ov = default_overlap(tile) if overlap is None else int(overlap)
    if batch_size < 1:
        raise RoadmapError(f"--batch-size {batch_size}: must be at least 1")
    tta_ops(tta)
    layout = TileLayout.build(grid.width, grid.height, tile, ov)
    params = None
    if "gps" in model_inputs:
        from roadmap_cli.render import RenderParams

        if meta.get("render") is None:
            raise RoadmapError(f"{source}: checkpoint needs GPS but records no GPS rendering parameters")
        params = RenderParams.from_dict(meta["render"])
    from roadmap_cli.checkpoint import check_compatible

    for note in check_compatible(meta, params, tile_size=tile, inputs=model_inputs, source=source):
        log.info(note)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if workers is None:
        workers = 2 if dev.type == "cpu" else max(2, min(8, (os.cpu_count() or 2) // 2))
    if workers < 1:
        raise RoadmapError(f"--workers {workers}: must be at least 1")
    model.to(dev)
    model.eval()
    fingerprint = {
        "method": "model",
        "model": model_id or model_digest(model),
        "meta": {k: meta.get(k) for k in ("inputs", "render", "normalisation")},
        "grid": grid.to_dict(),
        "imagery": imagery_digest(wd.path("imagery")) if "image" in model_inputs else None,
        "gps": gps_digest(wd.path("gps")) if ("gps" in model_inputs and feed_gps) else None,
        "inputs": inputs or model_inputs,
        "tile_size": tile, "overlap": ov, "tta": tta, "batch_size": batch_size,
        "device": dev.type, "torch": torch.__version__, "roadmap": __version__,
    }
    stats = RunStats()
    if "gps" in model_inputs and not feed_gps:
        log.warning("%s: predicting from imagery alone; the model's GPS channels are left empty", source)
    remote_spec = None
    if cluster is not None:
        if checkpoint is None:
            raise RoadmapError("--scheduler: the workers load the model from its checkpoint file; pass --model or "
                               "keep <workdir>/model.pt")
        if windows_per_task < 1:
            raise RoadmapError(f"windows per task {windows_per_task}: must be at least 1")
        digest = model_digest(model) if model_id else fingerprint["model"]  # what the workers check they loaded
        remote_spec = {"checkpoint": str(Path(checkpoint).resolve()), "model": digest,
                       "device": worker_device, "workdir": str(wd.root.resolve()), "tile": tile, "overlap": ov,
                       "inputs": model_inputs, "feed_gps": feed_gps, "batch_size": batch_size, "tta": tta,
                       "readers": 2, "windows_per_task": windows_per_task}
        fingerprint["device"] = f"cluster:{worker_device}"
    engine = _ModelEngine(model, meta, wd, grid, layout, model_inputs, feed_gps, params, batch_size, tta, dev,
                          workers, stats, cluster=cluster, remote_spec=remote_spec, windows_per_task=windows_per_task)
    _run(engine, grid, out_path, fingerprint, overwrite, cog, stats, band_hook, "predict")
    if stats.gps_windows and stats.windows_without_gps:
        frac = stats.windows_without_gps / stats.gps_windows
        log.warning("GPS: %d of %d windows (%.0f%%, about %.2f km² of tiles) had no GPS samples; the model saw "
                    "imagery alone there", stats.windows_without_gps, stats.gps_windows, 100 * frac,
                    stats.km2_without_gps)
    return stats


def predict_kde(workdir: Workdir | str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                kernel_size: int = 9, sigma: float | None = None, scale: str = "log", reference: float = 16.0,
                window: int = 1024, workers: int | None = None, cog: bool = False, overwrite: bool = False,
                band_hook: Callable[[int], None] | None = None, cluster: Any = None) -> RunStats:
    """Write the paper's GPS-only KDE baseline (Gaussian-smoothed sample density) as a probability raster.

    The density d (samples per pixel after smoothing) maps to min(1, log1p(d)/log1p(reference)) with scale "log"
    or min(1, d/reference) with "linear" (render.kde): a fixed reference, so windows agree with each other.
    """
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    grid = wd.load_grid()
    if not wd.has_gps():
        raise RoadmapError(f"--method kde: {wd.path('gps')} holds no point store; run `roadmap ingest --gps ...`")
    if kernel_size < 1:
        raise RoadmapError(f"--kernel-size {kernel_size}: must be at least 1")
    if sigma is not None and sigma <= 0:
        raise RoadmapError(f"--kde-sigma {sigma}: must be positive")
    if reference <= 0:
        raise RoadmapError(f"--kde-reference {reference}: must be positive")
    if scale not in ("log", "linear"):
        raise RoadmapError(f"--kde-scale {scale}: must be log or linear")
    if window < 16:
        raise RoadmapError(f"--tile-size {window}: must be at least 16 for --method kde")
    if workers is None:
        workers = max(1, min(8, os.cpu_count() or 1))
    if workers < 1:
        raise RoadmapError(f"--workers {workers}: must be at least 1")
    out_path = Path(out) if out is not None else wd.path("prob")
    fingerprint = {"method": "kde", "grid": grid.to_dict(), "gps": gps_digest(wd.path("gps")),
                   "kernel_size": kernel_size, "sigma": sigma, "scale": scale, "reference": reference,
                   "window": window,
                   "roadmap": __version__}
    stats = RunStats()
    engine = _KdeEngine(wd, grid, window, kernel_size, sigma, scale, reference, workers, stats)
    if cluster is not None:  # a band per task; the windows are exact, so the bytes equal an in-process run's
        engine.cluster = cluster
        engine.remote_spec = {"workdir": str(wd.root.resolve()), "window": window, "kernel_size": kernel_size,
                              "sigma": sigma, "scale": scale, "reference": reference}
    return _run(engine, grid, out_path, fingerprint, overwrite, cog, stats, band_hook, "kde")
