"""Benchmark `roadmap predict`: overhead over the bare network, and memory flatness over mosaic size.

Prints ONE JSON line:

- `ratio`: end-to-end `predict_to_raster` time (CPU by default, TTA off) over a synthetic mosaic with a GPS
  store and an image+gps LinkNet-18, divided by the bare forward time of the same tiles in the same batches,
  measured in the same process (goal <= 1.2).
- `rss_ratio`: peak RSS (ru_maxrss of a fresh subprocess) of predict over a 16384² mosaic divided by the same
  over a 4096² one, with a per-pixel linear "network" so that the big run takes a minute or two (goal <= 1.2).
  `kde_rss_ratio` is the same for `--method kde`.

    .venv/bin/python bench/predict.py            # 2048² timing, 4096² vs 16384² memory
    .venv/bin/python bench/predict.py --quick    # 1024² timing, 2048² vs 8192² memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------------------------
# synthetic inputs (written in windows: the generator itself stays small)
# ---------------------------------------------------------------------------------------------------------------
def make_workdir(folder: Path, size: int, seed: int = 0, gps_per_px: float = 0.002) -> Path:
    """A workdir with a `size`² tiled RGB GeoTIFF mosaic (VRT), grid.json and a GPS store along straight roads."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from roadmap_cli.grid import Grid
    from roadmap_cli.imagery import build_vrt
    from roadmap_cli.store import SAMPLE_DTYPE, StoreWriter
    from roadmap_cli.workdir import Workdir

    wd = Workdir(folder)
    wd.ensure()
    tif = folder / "mosaic.tif"
    rng = np.random.default_rng(seed)
    road_rows = rng.integers(0, size, max(2, size // 600))
    road_cols = rng.integers(0, size, max(2, size // 600))
    with rasterio.open(tif, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32630", transform=from_origin(500000.0, 5900000.0, 0.5, 0.5), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate") as ds:
        cols = np.arange(size)
        for r0 in range(0, size, 512):
            rows = np.arange(r0, min(size, r0 + 512))
            img = np.empty((3, rows.size, size), dtype=np.uint8)
            base = (60 + 40 * np.sin(cols[None, :] / 97.0) + 30 * np.cos(rows[:, None] / 131.0))
            for b in range(3):
                img[b] = np.clip(base + 15 * b + rng.integers(0, 8, (rows.size, size)), 0, 255)
            for rr in road_rows:
                sel = np.abs(rows - rr) < 6
                img[:, sel, :] = 200
            img[:, :, np.isin(cols, np.concatenate([np.arange(c - 5, c + 6) for c in road_cols]))] = 200
            ds.write(img, window=Window(0, r0, size, rows.size))
    build_vrt([tif], wd.path("imagery"))
    Grid.from_raster(wd.path("imagery")).save(wd.path("grid"))
    n_per_road = max(50, int(gps_per_px * size * size / (road_rows.size + road_cols.size)))
    with StoreWriter(wd.path("gps"), size, size, tile_size=1024) as w:
        for i, rr in enumerate(road_rows):
            s = np.zeros(n_per_road, dtype=SAMPLE_DTYPE)
            s["col"] = rng.random(n_per_road) * (size - 1)
            s["row"] = np.clip(rr + rng.normal(0, 2.0, n_per_road), 0, size - 1e-3)
            s["time"], s["vehicle"], s["interval"] = np.arange(n_per_road) * 5.0, i, 5.0
            s["speed"], s["bearing"] = np.nan, np.nan
            w.append(s)
        for j, cc in enumerate(road_cols):
            s = np.zeros(n_per_road, dtype=SAMPLE_DTYPE)
            s["row"] = rng.random(n_per_road) * (size - 1)
            s["col"] = np.clip(cc + rng.normal(0, 2.0, n_per_road), 0, size - 1e-3)
            s["time"], s["vehicle"], s["interval"] = np.arange(n_per_road) * 5.0, road_rows.size + j, 5.0
            s["speed"], s["bearing"] = np.nan, np.nan
            w.append(s)
        w.close([f"v{i}" for i in range(road_rows.size + road_cols.size)])
    return folder


# ---------------------------------------------------------------------------------------------------------------
# timing: end-to-end vs bare forward
# ---------------------------------------------------------------------------------------------------------------
def bench_time(folder: Path, tile: int, batch: int, device: str, repeats: int = 2, workers: int = 2) -> dict:
    import torch

    from models import build_model
    from roadmap_cli.inputs import default_normalisation, make_input
    from roadmap_cli.predict import TileLayout, default_overlap, predict_to_raster
    from roadmap_cli.render import RenderParams, render
    from roadmap_cli.workdir import Workdir

    wd = Workdir(folder)
    grid = wd.load_grid()
    params = RenderParams()
    torch.manual_seed(0)
    model = build_model("linknet18", 3 + params.n_channels, "1d").eval().to(device)
    meta = {"roadmap_version": "bench", "architecture": "linknet18", "decoder": "1d", "encoder_depth": 18,
            "in_channels": 3 + params.n_channels, "inputs": "image+gps", "render": params.to_dict(),
            "normalisation": default_normalisation(), "tile_size": tile, "training": {}, "validation": {}}
    overlap = default_overlap(tile)
    lay = TileLayout.build(grid.width, grid.height, tile, overlap)

    # the same tiles and batches, inputs prepared beforehand (not timed)
    from roadmap_cli.imagery import ImageryReader
    from roadmap_cli.store import PointStore

    store = PointStore(wd.path("gps"))
    batches = []
    with ImageryReader(wd.path("imagery")) as reader:
        for y in lay.ys:
            row = []
            for x in lay.xs:
                rgb, _ = reader.read(x, y, lay.tile_w, lay.tile_h)
                m = int(np.ceil(params.margin))
                s = store.query(x - m, y - m, lay.tile_w + 2 * m, lay.tile_h + 2 * m)
                row.append(make_input(rgb, render(s, x, y, lay.tile_w, lay.tile_h, params), "image+gps"))
            for i in range(0, len(row), batch):
                batches.append(np.stack(row[i:i + batch]))

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                y = torch.sigmoid(model(torch.from_numpy(b).to(device)))
                y.cpu().numpy()
        return time.perf_counter() - t0

    def e2e() -> tuple[float, float]:
        t0 = time.perf_counter()
        stats = predict_to_raster(model, meta, wd, folder / "prob.tif", tile_size=tile, overlap=overlap,
                                  batch_size=batch, tta=1, device=device, workers=workers, overwrite=True)
        return time.perf_counter() - t0, stats.forward_seconds

    with torch.inference_mode():  # warm-up (allocator, kernels)
        model(torch.from_numpy(batches[0]).to(device))
    bares, e2es, fwd_in = [], [], []
    for _ in range(repeats):  # interleaved; the minimum of each is the least disturbed by other load
        bares.append(bare())
        t, f = e2e()
        e2es.append(t)
        fwd_in.append(f)
    t_bare, t_e2e = min(bares), min(e2es)
    return {"ratio": round(t_e2e / t_bare, 3), "e2e_s": round(t_e2e, 2), "forward_s": round(t_bare, 2),
            "e2e_s_runs": [round(t, 2) for t in e2es], "forward_s_runs": [round(t, 2) for t in bares],
            "forward_in_predict_s": [round(t, 2) for t in fwd_in], "tiles": lay.n_tiles,
            "mosaic": grid.width, "tile": tile, "overlap": overlap, "batch": batch, "model": "linknet18 image+gps",
            "workers": workers, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}


# ---------------------------------------------------------------------------------------------------------------
# memory: one fresh subprocess per size
# ---------------------------------------------------------------------------------------------------------------
def _pixel_linear():
    import torch
    from torch import nn

    class PixelLinear(nn.Module):
        """A per-pixel linear map of the 3 image channels: no convolution workspace (oneDNN's blocked layouts
        and im2col buffers would add hundreds of MB that hide the pipeline's own memory)."""

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.5, -0.3, 0.2]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * self.w[None, :, None, None]).sum(1, keepdim=True)

    return PixelLinear


def peak_rss_mb() -> float:
    """Peak resident memory of this process: VmHWM (Linux; ru_maxrss survives exec and would report the parent's
    peak when the parent was bigger), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(folder: Path, method: str) -> None:
    """Run predict once in this (fresh) process and print its peak RSS."""
    import torch

    from roadmap_cli.inputs import default_normalisation
    from roadmap_cli.predict import predict_kde, predict_to_raster

    PixelLinear = _pixel_linear()

    t0 = time.perf_counter()
    out = folder / f"prob_{method}.tif"
    if method == "kde":
        predict_kde(folder, out, window=1024, overwrite=True)
    else:
        torch.manual_seed(0)
        model = PixelLinear().eval()
        meta = {"inputs": "image", "render": None, "normalisation": default_normalisation(), "in_channels": 3,
                "architecture": "conv1", "decoder": "1d", "tile_size": 1024}
        predict_to_raster(model, meta, folder, out, tile_size=1024, batch_size=4, workers=2, overwrite=True)
    print(json.dumps({"rss_mb": round(peak_rss_mb(), 1), "seconds": round(time.perf_counter() - t0, 1),
                      "out_mb": round(out.stat().st_size / 2**20, 2)}))


def run_child(folder: Path, method: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", str(folder), "--method", method],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child failed ({folder}, {method}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="predict's reader threads")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child), args.method)
        return
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    time_size, tile = (1024, 512) if args.quick else (2048, 1024)
    small, big = (2048, 8192) if args.quick else (4096, 16384)
    result: dict = {"name": "predict", "quick": args.quick, "device": args.device, "goal": 1.2}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp_path = Path(tmp)
        if not args.skip_time:
            folder = make_workdir(tmp_path / "time", time_size)
            result.update(bench_time(folder, tile, 2, args.device, workers=args.workers))
        if not args.skip_rss:
            rss = {}
            for size in (small, big):
                folder = make_workdir(tmp_path / f"rss{size}", size, gps_per_px=0.0005)
                rss[size] = {"model": run_child(folder, "model"), "kde": run_child(folder, "kde")}
                for f in folder.glob("*.tif"):
                    os.unlink(f)
            result["rss_ratio"] = round(rss[big]["model"]["rss_mb"] / rss[small]["model"]["rss_mb"], 3)
            result["kde_rss_ratio"] = round(rss[big]["kde"]["rss_mb"] / rss[small]["kde"]["rss_mb"], 3)
            result["rss_goal"] = 1.2
            result["rss"] = {str(k): v for k, v in rss.items()}
    if "ratio" not in result:
        result["ratio"] = result.get("rss_ratio")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
