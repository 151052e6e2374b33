"""Make the README pictures: docs/images/synth_city.png and docs/images/vegas_gps.png.

    .venv/bin/python docs/make_pictures.py

synth_city.png: `roadmap synth --seed 0 --size 2048` (default style) with its simulated GPS over it.
vegas_gps.png: the Las Vegas sample tile (SpaceNet 3, imagery courtesy of Maxar, CC BY-SA 4.0) with
sample_data/gps.csv over it; waiting clusters and the road centrelines shown.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import rasterio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"


def _gps_pixels(path: Path, ds) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    from roadmap_cli.grid import Grid

    grid = Grid.create(ds.crs.to_wkt(), ds.transform, ds.width, ds.height)
    gps = pd.read_csv(path)
    col, row = grid.lonlat_to_pixel(gps["lon"].to_numpy(), gps["lat"].to_numpy())
    return col, row, gps


def synth_city(size: int = 2048, seed: int = 0) -> Path:
    from roadmap_cli.simulate import SimConfig
    from roadmap_cli.synth import synth

    with tempfile.TemporaryDirectory() as tmp:
        info = synth(tmp, size=size, seed=seed, gps_cfg=SimConfig(seed=seed))
        with rasterio.open(Path(tmp) / "image.tif") as ds:
            img = np.moveaxis(ds.read(), 0, -1)
            col, row, gps = _gps_pixels(Path(tmp) / "gps.csv", ds)
        with rasterio.open(Path(tmp) / "labels.tif") as ds:
            lab = ds.read(1)
    fig, axes = plt.subplots(1, 2, figsize=(16, 8.4), dpi=100)
    axes[0].imshow(img)
    axes[0].scatter(col, row, s=2.0, c="#ffe600", alpha=0.5, linewidths=0)
    axes[0].set_title(f"roadmap synth --seed {seed}: imagery + {len(gps)} simulated GPS samples (Beijing profile)")
    over = img.copy()
    over[lab == 1] = (0.45 * over[lab == 1] + 0.55 * np.array([230, 40, 40])).astype(np.uint8)
    axes[1].imshow(over)
    axes[1].set_title(f"road-area labels ({info['roads']} roads, {info['road_km']} km)")
    for ax in axes:
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
        ax.set_axis_off()
    fig.tight_layout()
    out = OUT / "synth_city.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def vegas() -> Path:
    from roadmap_cli.labels import read_road_vectors

    sd = ROOT / "sample_data"
    with rasterio.open(sd / "image.tif") as ds:
        img = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
        col, row, gps = _gps_pixels(sd / "gps.csv", ds)
        inv = ~ds.transform
        roads = read_road_vectors(sd / "roads.geojson")
        lines = []
        for g in roads.geometry:
            c = np.asarray(g.coords)
            px = np.array([inv * (x, y) for x, y in c[:, :2]])
            lines.append(px)
    fig, axes = plt.subplots(1, 2, figsize=(16, 8.4), dpi=100)
    axes[0].imshow(img)
    for px in lines:
        axes[0].plot(px[:, 0], px[:, 1], color="#ff3b30", lw=1.2)
    axes[0].set_title("Las Vegas sample tile (SpaceNet 3, imagery courtesy of Maxar, CC BY-SA 4.0) + centrelines")
    axes[1].imshow(img)
    axes[1].scatter(col, row, s=2.5, c="#ffe600", alpha=0.45, linewidths=0)
    axes[1].set_title(f"sample_data/gps.csv: {len(gps)} samples from {gps['vehicle_id'].nunique()} simulated taxis")
    for ax in axes:
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
        ax.set_axis_off()
    fig.tight_layout()
    out = OUT / "vegas_gps.png"
    fig.savefig(out)
    plt.close(fig)
    return out


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    print(synth_city())
    print(vegas())
