"""Benchmark `roadmap predict --scheduler`: wall time with 1 and 2 Dask workers on this machine.

Builds a synthetic workdir (an RGB mosaic and a GPS store, see bench/predict.py) and a randomly initialised
image+GPS D-LinkNet34 checkpoint, then runs `predict_to_raster` on a LocalCluster of 1 worker and on one of 2
workers (one thread each, so torch runs one thread per worker), in the same process. The model dominates: reading
and blending are a few percent of the time. Each configuration runs `--repeats` times after a warm-up task has
loaded the model on every worker; the best time counts. The two rasters must be byte-identical (same network
arithmetic on every worker), and so must the in-process run at one torch thread, which is also timed.

Prints ONE JSON line: `ratio` = time with 2 workers / time with 1 worker (the issue expects <= 0.65 on 2 cores
when the model dominates), the times, windows, and whether the outputs matched.

    .venv/bin/python bench/scale.py              # 1536² px, 256 px windows overlapping by 64: 64 windows
    .venv/bin/python bench/scale.py --quick      # 768² px: 16 windows
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _digest(path: Path) -> str:
    import rasterio

    with rasterio.open(path) as ds:
        return hashlib.sha256(ds.read(1).tobytes()).hexdigest()


def _checkpoint(folder: Path, tile: int, depth: int) -> Path:
    import torch

    from models import build_model
    from roadmap_cli.checkpoint import save_checkpoint
    from roadmap_cli.inputs import default_normalisation
    from roadmap_cli.render import RenderParams

    torch.manual_seed(0)
    params = RenderParams(channels=("density", "interval"))
    net = build_model(f"dlinknet{depth}", 3 + params.n_channels, "1d", depth, image_channels=3)
    meta = {"roadmap_version": "bench", "architecture": f"dlinknet{depth}", "decoder": "1d", "encoder_depth": depth,
            "in_channels": 3 + params.n_channels, "image_channels": 3, "inputs": "image+gps",
            "render": params.to_dict(), "normalisation": default_normalisation(), "tile_size": tile,
            "training": {}, "validation": {}}
    path = folder / "model.pt"
    save_checkpoint(path, net, meta)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a quarter of the area")
    p.add_argument("--tile", type=int, default=256, help="window size [256]")
    p.add_argument("--batch-size", type=int, default=2, help="windows per forward [2]")
    p.add_argument("--depth", type=int, choices=[18, 34], default=34, help="D-LinkNet encoder depth [34]")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per configuration, best counts [2]")
    p.add_argument("--windows-per-task", type=int, default=4,
                   help="windows per cluster task: two batches, so that a worker reads one while the other runs [4]")
    a = p.parse_args()

    import torch
    from predict import make_workdir

    from roadmap_cli.checkpoint import build_from_checkpoint
    from roadmap_cli.cluster import open_cluster
    from roadmap_cli.predict import predict_to_raster

    size = 768 if a.quick else 1536
    with tempfile.TemporaryDirectory(prefix="roadmap-scale-") as tmp:
        folder = Path(tmp)
        wd = make_workdir(folder / "wd", size)
        ckpt = _checkpoint(folder, a.tile, a.depth)
        model, meta = build_from_checkpoint(ckpt, "cpu")
        opts = dict(tile_size=a.tile, batch_size=a.batch_size, device="cpu", overwrite=True)
        result: dict = {"bench": "scale", "cores": os.cpu_count(), "size": [size, size], "tile": a.tile,
                        "model": f"dlinknet{a.depth} image+gps, random init", "batch_size": a.batch_size,
                        "windows_per_task": a.windows_per_task}
        digests = {}

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        stats = predict_to_raster(model, meta, wd, folder / "inproc.tif", **opts)
        result["in_process_1_thread_s"] = round(time.perf_counter() - t0, 2)
        result["windows"] = stats.windows
        digests["in_process"] = _digest(folder / "inproc.tif")

        for n in (1, 2):
            t_start = time.perf_counter()
            with open_cluster(f"local:{n}") as cluster:
                result[f"cluster_start_{n}_s"] = round(time.perf_counter() - t_start, 2)
                run = dict(opts, cluster=cluster, checkpoint=ckpt, worker_device="cpu",
                           windows_per_task=a.windows_per_task)
                # warm-up: every worker loads the model (a one-window raster would use another spec, so run once)
                t0 = time.perf_counter()
                predict_to_raster(model, meta, wd, folder / f"warm{n}.tif", **run)
                result[f"warmup_{n}_workers_s"] = round(time.perf_counter() - t0, 2)
                times = []
                for r in range(a.repeats):
                    out = folder / f"cluster{n}_{r}.tif"
                    t0 = time.perf_counter()
                    predict_to_raster(model, meta, wd, out, **run)
                    times.append(time.perf_counter() - t0)
                    digests[f"cluster{n}_{r}"] = _digest(out)
                result[f"workers_{n}_s"] = round(min(times), 2)
                result[f"workers_{n}_all_s"] = [round(t, 2) for t in times]
        result["ratio"] = round(result["workers_2_s"] / result["workers_1_s"], 3)
        result["goal"] = 0.65
        result["byte_identical"] = len(set(digests.values())) == 1
        result["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
