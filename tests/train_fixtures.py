"""Test-only: a tiny seeded synthetic city written straight into a workdir (grid, imagery VRT, GPS store) plus a
label raster beside it, without going through `roadmap ingest` / `roadmap synth`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from roadmap_cli.grid import Grid
from roadmap_cli.store import SAMPLE_DTYPE, StoreWriter

ROAD_ROWS = (40, 130, 200)
ROAD_COLS = (60, 170)
HALF_WIDTH = 3
ROAD_GREY = 200


def _write_tif(path: Path, grid: Grid, data: np.ndarray) -> None:
    import rasterio
    from affine import Affine

    data = data if data.ndim == 3 else data[None]
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": data.shape[0],
               "dtype": "uint8", "crs": grid.crs_wkt, "transform": Affine(*grid.transform)}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


def make_tiny_city(root: Path, size: int = 256, seed: int = 0, imagery: bool = True, gps: bool = True,
                   n_samples: int = 4000) -> tuple[Path, Path]:
    """(workdir, labels.tif) of a size x size px city at 0.5 m: a road grid, bright roads, GPS along roads."""
    from roadmap_cli.imagery import build_vrt

    rng = np.random.default_rng(seed)
    root = Path(root)
    wd = root / "work"
    wd.mkdir(parents=True, exist_ok=True)
    grid = Grid.create("EPSG:32633", (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), size, size)
    grid.save(wd / "grid.json")
    road = np.zeros((size, size), dtype=np.uint8)
    for r in ROAD_ROWS:
        if r < size:
            road[max(0, r - HALF_WIDTH):r + HALF_WIDTH + 1, :] = 1
    for c in ROAD_COLS:
        if c < size:
            road[:, max(0, c - HALF_WIDTH):c + HALF_WIDTH + 1] = 1
    labels = root / "labels.tif"
    _write_tif(labels, grid, road)
    if imagery:
        base = rng.integers(30, 90, size=(3, size, size)).astype(np.uint8)
        base[1] += 30  # greenish
        img = np.where(road[None] > 0, np.uint8(ROAD_GREY), base).astype(np.uint8)
        tif = root / "image.tif"
        _write_tif(tif, grid, img)
        build_vrt([tif], wd / "imagery.vrt")
    if gps:
        s = np.zeros(n_samples, dtype=SAMPLE_DTYPE)
        horizontal = rng.random(n_samples) < 0.6
        rows = np.asarray(ROAD_ROWS, dtype=float)[rng.integers(len(ROAD_ROWS), size=n_samples)] + 0.5
        cols = np.asarray(ROAD_COLS, dtype=float)[rng.integers(len(ROAD_COLS), size=n_samples)] + 0.5
        along = rng.uniform(0, size, n_samples)
        s["col"] = np.where(horizontal, along, cols) + rng.normal(0, 1.5, n_samples)
        s["row"] = np.where(horizontal, rows, along) + rng.normal(0, 1.5, n_samples)
        s["col"] = np.clip(s["col"], 0, size - 1e-3)
        s["row"] = np.clip(s["row"], 0, size - 1e-3)
        s["time"] = 1.6e9 + np.arange(n_samples) * 5.0
        s["vehicle"] = rng.integers(0, 20, n_samples)
        s["interval"] = rng.choice([5.0, 10.0, 60.0], n_samples)
        s["speed"] = rng.uniform(0, 15, n_samples)
        s["bearing"] = np.where(horizontal, 90.0, 0.0) + rng.choice([0.0, 180.0], n_samples)
        with StoreWriter(wd / "gps", size, size, tile_size=128) as w:
            w.append(s)
            w.close([f"v{i}" for i in range(20)])
    return wd, labels
