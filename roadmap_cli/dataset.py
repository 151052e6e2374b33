"""Training data: random tiles of imagery + rendered GPS + labels from one or more workdirs.

Per sample (training): read the imagery window, query the GPS of the window grown by `RenderParams.margin`,
augment the GPS samples (subsample / sub-resolution / perturb / omit), render them, read the labels, apply
the same random flip/rotation to every array, jitter the image colours, and stack the network input with
`inputs.make_input` exactly as predict does.

Validation is spatially disjoint from training: each workdir's grid is cut into square blocks (tile-size by
default; only whole blocks, so a strip narrower than a block at the right and bottom edges is unused), a seeded
`val_fraction` of the blocks is held out, validation tiles are the fixed, block-aligned windows of those blocks
(no augmentation), and a training tile is sampled only where it lies wholly inside training blocks.

Sampling is uniform over the training area (no weighting by road content): a random training block, a random
offset from its corner, kept when every block the tile touches is a training block (else retried; after 20
tries the block itself is used). Every random choice of sample `index` comes from
`np.random.default_rng([seed, index])`, so a sample is the same whichever DataLoader worker makes it and
however many workers there are; the train loop passes global indices (epoch * samples_per_epoch + i).

File handles (rasterio datasets, point stores, label trees) are opened lazily in each process, so the
datasets can be pickled to DataLoader worker processes.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from roadmap_cli.errors import RoadmapError
from roadmap_cli.inputs import default_normalisation, make_input

log = logging.getLogger("roadmap.dataset")

MAX_TRIES = 20


@dataclass
class SourceSpec:
    """One workdir of training data and its labels."""

    workdir: str
    labels: str
    road_width: float | None = None
    lane_width: float = 3.5
    grid: Any = None  # Grid, filled by TrainingData


@dataclass
class TileSpec:
    """How samples are made (the parts of the training configuration the data pipeline needs)."""

    tile_size: int = 512
    inputs: str = "image+gps"
    render: Any = None  # RenderParams (None for --inputs image)
    gps_augment: Any = None  # GpsAugment or None (no GPS augmentation)
    image_augment: bool = True  # flips/rotations (all arrays) and colour jitter (image)
    norm: dict[str, list[float]] = field(default_factory=default_normalisation)


class _Handles:
    """Per-process open readers of one source (imagery, point store, labels)."""

    def __init__(self, src: SourceSpec, spec: TileSpec) -> None:
        from roadmap_cli.labels import LabelSource
        from roadmap_cli.workdir import Workdir

        wd = Workdir(src.workdir)
        self.imagery = None
        self.store = None
        if "image" in spec.inputs:
            from roadmap_cli.imagery import ImageryReader

            self.imagery = ImageryReader(wd.path("imagery"))
        if "gps" in spec.inputs:
            from roadmap_cli.store import PointStore

            self.store = PointStore(wd.path("gps"))
        self.labels = LabelSource(src.labels, src.grid, road_width=src.road_width, lane_width=src.lane_width)


class TileMaker:
    """Makes one (input, label, valid) sample for a window of a source; picklable, opens files lazily."""

    def __init__(self, sources: list[SourceSpec], spec: TileSpec) -> None:
        self.sources = sources
        self.spec = spec
        self._handles: dict[int, _Handles] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def handles(self, i: int) -> _Handles:
        if self._pid != os.getpid():  # forked: never share open files with the parent
            self._handles = {}
            self._pid = os.getpid()
        h = self._handles.get(i)
        if h is None:
            h = self._handles[i] = _Handles(self.sources[i], self.spec)
        return h

    @property
    def n_gps(self) -> int:
        return int(self.spec.render.n_channels) if "gps" in self.spec.inputs else 0

    def make(self, src: int, col: int, row: int, rng: np.random.Generator | None,
             size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x float32 [C,T,T], label uint8 [1,T,T], valid uint8 [1,T,T]) at (col, row) of source `src`.

        `rng=None` makes a validation sample (no augmentation). `valid` is 0 where the imagery has no data
        (image inputs) or outside the grid; loss and IoU ignore those pixels. Label and validity stay uint8
        (a quarter of the bytes through the DataLoader); the train step makes them float on the device.

        The random flip / quarter turn is drawn first and applied to the GPS *samples* before rendering
        (`turn_samples`), which renders exactly what turning the rendered channels would give, without copying
        float channels through a transposing rotation; image, label and validity are turned by the one copy
        each gets anyway (`inputs.make_input`, `augment.turn_copy`). The colour jitter is drawn after the GPS
        augmentation and applied by `make_input` while it normalises the image (one float conversion of the
        image per sample, `augment.image_input`).
        """
        t = int(size or self.spec.tile_size)
        k, flip = self.draw_geometric(rng)
        rgb, valid = self.read_image(src, col, row, t)
        samples = self.gps_samples(src, col, row, t, rng, k, flip)
        gps = self.render(samples, col, row, t)
        label = self.handles(src).labels.read(col, row, t, t)
        return self.assemble(rgb, gps, label, valid, rng, k, flip)

    # The steps of `make`, in its order (public so that bench/train_pipeline.py can time each one).
    def draw_geometric(self, rng: np.random.Generator | None) -> tuple[int, bool]:
        """(quarter turns, flip) of a training sample; (0, False) without augmentation (no draws)."""
        if rng is None or not self.spec.image_augment:
            return 0, False
        from roadmap_cli.augment import draw_geometric

        return draw_geometric(rng)

    def read_image(self, src: int, col: int, row: int, t: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(rgb uint8 [3,t,t] or None without image inputs, valid bool [t,t])."""
        h = self.handles(src)
        if h.imagery is not None:
            return h.imagery.read(col, row, t, t)
        grid = self.sources[src].grid
        valid = np.zeros((t, t), dtype=bool)
        valid[max(0, -row):max(0, grid.height - row), max(0, -col):max(0, grid.width - col)] = True
        return None, valid

    def gps_samples(self, src: int, col: int, row: int, t: int, rng: np.random.Generator | None, k: int,
                    flip: bool) -> np.ndarray | None:
        """The window's GPS samples (render margin included), augmented and turned; None without GPS inputs."""
        h = self.handles(src)
        if h.store is None:
            return None
        m = int(math.ceil(self.spec.render.margin))
        samples = h.store.query(col - m, row - m, t + 2 * m, t + 2 * m)
        if rng is not None and self.spec.gps_augment is not None:
            samples = self.spec.gps_augment.apply(samples, col, row, t, t, rng)
        return turn_samples(samples, col, row, t, k, flip)

    def render(self, samples: np.ndarray | None, col: int, row: int, t: int) -> np.ndarray | None:
        if samples is None:
            return None
        from roadmap_cli.render import render

        return render(samples, col, row, t, t, self.spec.render)

    def assemble(self, rgb: np.ndarray | None, gps: np.ndarray | None, label: np.ndarray, valid: np.ndarray,
                 rng: np.random.Generator | None, k: int, flip: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Turn image, label and validity by (k, flip), jitter the colours (drawn here, from `rng`, when
        augmenting) and stack the input (the GPS channels come turned already)."""
        from roadmap_cli.augment import ColourJitter, turn_copy

        colour = None
        if rng is not None and self.spec.image_augment and rgb is not None:
            colour = ColourJitter.draw(rng)
        x = make_input(rgb, gps, self.spec.inputs, self.spec.norm, colour=colour, turn=(k, flip))
        y = turn_copy(np.ascontiguousarray(label, dtype=np.uint8), k, flip)[None]
        if valid.all():
            v = np.ones((1, *y.shape[1:]), dtype=np.uint8)
        else:
            v = turn_copy(np.ascontiguousarray(valid).view(np.uint8), k, flip)[None]
        return x, y, v


def turn_samples(samples: np.ndarray, col_off: float, row_off: float, size: int, k: int,
                 flip: bool) -> np.ndarray:
    """GPS samples moved as `augment.apply_geometric(arrays, k, flip)` moves the pixels of a size x size window.

    A sample in window pixel (u, v) = floor(col - col_off, row - row_off) goes to the pixel the rotation sends
    that pixel to (np.rot90 k times, then a left-right mirror), placed at its centre; bearings turn with the
    picture (-90 degrees per counter-clockwise quarter turn, mirrored by the flip). Rendering bins samples by
    pixel, so rendering the moved samples equals turning the rendered channels, bearing channels included;
    samples in the margin around the window move to the margin of the turned window.
    """
    k %= 4
    if (k == 0 and not flip) or samples.size == 0:
        return samples
    out = samples.copy()
    u = np.floor(out["col"] - col_off)
    v = np.floor(out["row"] - row_off)
    for _ in range(k):  # np.rot90: (row, col) -> (size - 1 - col, row)
        u, v = v, size - 1 - u
    if flip:
        u = size - 1 - u
    out["col"] = col_off + u + 0.5
    out["row"] = row_off + v + 0.5
    b = out["bearing"].astype(np.float64)
    b = (b - 90.0 * k) % 360.0
    if flip:
        b = (360.0 - b) % 360.0
    out["bearing"] = b
    return out


def read_imagery(reader: Any, col: int, row: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """`reader.read(col, row, width, height)`: kept for callers of the former fast path, which now lives in
    `imagery.ImageryReader.read` itself."""
    return reader.read(col, row, width, height)


@dataclass
class BlockSplit:
    """The block grid of one source and which blocks are held out for validation."""

    block: int
    nbx: int
    nby: int
    val: np.ndarray  # bool [nby, nbx]

    @property
    def train_blocks(self) -> np.ndarray:
        """(by, bx) of every training block, [K, 2]."""
        return np.argwhere(~self.val)

    @property
    def val_blocks(self) -> np.ndarray:
        return np.argwhere(self.val)


def split_blocks(width: int, height: int, block: int, val_fraction: float, seed: int, salt: int = 0) -> BlockSplit:
    """Hold out a seeded `val_fraction` of the whole `block`-sized blocks of a width x height grid."""
    nbx, nby = width // block, height // block
    n = nbx * nby
    val = np.zeros((nby, nbx), dtype=bool)
    if n == 0:
        return BlockSplit(block, nbx, nby, val)
    n_val = 0
    if val_fraction > 0:
        n_val = int(round(val_fraction * n))
        n_val = min(max(1, n_val), n - 1) if n >= 2 else 0
    perm = np.random.default_rng([int(seed), 7919, int(salt)]).permutation(n)
    val.flat[perm[:n_val]] = True
    return BlockSplit(block, nbx, nby, val)


class TrainTiles(Dataset):
    """Random training tiles lying wholly inside training blocks; item `index` is a pure function of (seed, index)."""

    def __init__(self, maker: TileMaker, splits: list[BlockSplit], seed: int, samples_per_epoch: int) -> None:
        self.maker = maker
        self.splits = splits
        self.seed = int(seed)
        self.samples_per_epoch = int(samples_per_epoch)
        counts = np.array([len(s.train_blocks) for s in splits], dtype=float)
        if counts.sum() == 0:
            raise RoadmapError("training data: no training blocks (grids smaller than --tile-size?)")
        self.source_p = counts / counts.sum()
        self._train_blocks = [s.train_blocks for s in splits]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def window(self, index: int, rng: np.random.Generator | None = None) -> tuple[int, int, int]:
        """(source, col, row) of training sample `index` (drawn from its own generator)."""
        rng = rng if rng is not None else np.random.default_rng([self.seed, int(index)])
        t = self.maker.spec.tile_size
        src = int(rng.choice(len(self.splits), p=self.source_p)) if len(self.splits) > 1 else 0
        split = self.splits[src]
        blocks = self._train_blocks[src]
        b = split.block
        by, bx = blocks[int(rng.integers(len(blocks)))]
        for _ in range(MAX_TRIES):
            col = int(bx * b + rng.integers(-(t - 1), b))
            row = int(by * b + rng.integers(-(t - 1), b))
            if col < 0 or row < 0 or col + t > split.nbx * b or row + t > split.nby * b:
                continue
            bxs = slice(col // b, (col + t - 1) // b + 1)
            bys = slice(row // b, (row + t - 1) // b + 1)
            if not split.val[bys, bxs].any():
                return src, col, row
        return src, int(bx * b), int(by * b)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        src, col, row = self.window(index, rng)
        x, y, v = self.maker.make(src, col, row, rng)
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(v)


class ValTiles(Dataset):
    """Fixed, block-aligned validation tiles (no augmentation)."""

    def __init__(self, maker: TileMaker, splits: list[BlockSplit]) -> None:
        self.maker = maker
        t = maker.spec.tile_size
        self.windows: list[tuple[int, int, int]] = []
        for src, s in enumerate(splits):
            per = max(1, s.block // t)
            for by, bx in s.val_blocks:
                for j in range(per):
                    for i in range(per):
                        self.windows.append((src, int(bx * s.block + i * t), int(by * s.block + j * t)))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src, col, row = self.windows[index]
        x, y, v = self.maker.make(src, col, row, None)
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(v)


class TrainingData:
    """Sources, their block splits, and the train / validation datasets built from them."""

    def __init__(self, sources: list[SourceSpec], spec: TileSpec, val_fraction: float = 0.2, seed: int = 0,
                 block_size: int | None = None) -> None:
        from roadmap_cli.workdir import Workdir

        if not 0.0 <= val_fraction < 1.0:
            raise RoadmapError(f"--val-fraction {val_fraction}: must be in [0, 1)")
        if spec.tile_size < 32:
            raise RoadmapError(f"--tile-size {spec.tile_size}: must be at least 32 pixels")
        self.spec = spec
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        block = int(block_size or spec.tile_size)
        if block < spec.tile_size:
            raise RoadmapError(f"block size {block} is smaller than --tile-size {spec.tile_size}")
        self.splits: list[BlockSplit] = []
        for i, src in enumerate(sources):
            wd = Workdir(src.workdir)
            src.grid = wd.load_grid()
            check_source(wd, src, spec.inputs)
            split = split_blocks(src.grid.width, src.grid.height, block, val_fraction, seed, salt=i)
            if split.nbx * split.nby == 0:
                raise RoadmapError(f"{wd.root}: grid {src.grid.width}x{src.grid.height} px is smaller than one "
                                   f"{block}-px tile; use a smaller --tile-size")
            if val_fraction > 0 and split.nbx * split.nby < 2:
                raise RoadmapError(f"{wd.root}: grid holds a single {block}-px block, too few to hold out "
                                   "validation; use a smaller --tile-size or --val-fraction 0")
            self.splits.append(split)
        self.sources = sources
        self.maker = TileMaker(sources, spec)

    @property
    def train_area_px(self) -> int:
        return int(sum(len(s.train_blocks) for s in self.splits) * self.splits[0].block ** 2) if self.splits else 0

    def default_samples_per_epoch(self, batch_size: int) -> int:
        """Tiles that cover the training area about once (at least one batch)."""
        return max(int(batch_size), int(round(self.train_area_px / self.spec.tile_size ** 2)))

    def train_dataset(self, samples_per_epoch: int) -> TrainTiles:
        return TrainTiles(self.maker, self.splits, self.seed, samples_per_epoch)

    def val_dataset(self) -> ValTiles:
        return ValTiles(self.maker, self.splits)

    def summary(self) -> dict[str, Any]:
        """JSON-able description recorded in the checkpoint."""
        out = []
        for src, s in zip(self.sources, self.splits, strict=True):
            out.append({
                "workdir": str(Path(src.workdir).resolve()),
                "labels": str(Path(src.labels).resolve()),
                "grid": [src.grid.width, src.grid.height],
                "pixel_size_m": src.grid.pixel_size_m,
                "block_px": s.block,
                "train_blocks": int((~s.val).sum()),
                "val_blocks": int(s.val.sum()),
                "train_area_km2": float((~s.val).sum() * s.block ** 2 * src.grid.pixel_size_m ** 2 / 1e6),
            })
        return {"sources": out, "val_fraction": self.val_fraction, "split_seed": self.seed,
                "sampling": "uniform over training blocks (tile wholly inside training blocks)"}


def check_source(wd: Any, src: SourceSpec, inputs: str) -> None:
    """One-line errors for a workdir that lacks what --inputs needs, or missing labels."""
    if "image" in inputs and not wd.has_imagery():
        raise RoadmapError(f"{wd.root}: no imagery (imagery.vrt missing) but --inputs {inputs} needs it; run "
                           "`roadmap ingest --imagery ...` or train with --inputs gps")
    if "gps" in inputs and not wd.has_gps():
        raise RoadmapError(f"{wd.root}: no GPS point store (gps/ missing) but --inputs {inputs} needs it; run "
                           "`roadmap ingest --gps ...` or train with --inputs image")
    if not src.labels:
        raise RoadmapError(f"--labels: missing for workdir {wd.root}; give a road mask raster or road vectors")
    if not Path(src.labels).exists():
        raise RoadmapError(f"--labels {src.labels}: no such file")
