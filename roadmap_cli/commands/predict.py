"""`roadmap predict`: road probability raster (`prob.tif`) from a trained model, or the GPS-only KDE baseline."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from roadmap_cli.cluster import scheduler_option
from roadmap_cli.options import common_options, record_config, resolve_device, say

log = logging.getLogger("roadmap")


@click.command("predict")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint written by `roadmap train`.  [default: <workdir>/model.pt]")
@click.option("--method", type=click.Choice(["model", "kde"]), default="model", show_default=True,
              help="`kde`: the paper's GPS-only baseline (Gaussian-smoothed sample density), no model.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Output raster.  [default: <workdir>/prob.tif]")
@click.option("--tile-size", type=int, default=None,
              help="Window size in pixels.  [default: the checkpoint's training tile size, else 1024]")
@click.option("--overlap", type=int, default=None,
              help="Pixels shared by neighbouring windows, blended smoothly.  [default: tile/8, at least 64]")
@click.option("--tta", type=click.Choice(["1", "2", "4", "8"]), default="1", show_default=True,
              help="Test-time augmentation views averaged: 2 adds a flip, 4 all flips, 8 flips and rotations.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Windows per network forward pass.")
@click.option("--workers", type=int, default=None,
              help="Background threads reading imagery and rendering GPS ahead of the network.  [default: 2 on "
                   "CPU, half the cores (2-8) on a GPU or for --method kde]")
@click.option("--inputs", type=click.Choice(["image+gps", "image", "gps"]), default=None,
              help="What to feed the model.  [default: what it was trained on]; `image` runs an image+gps model "
                   "with empty GPS channels.")
@click.option("--cog", is_flag=True, default=False, help="Write a Cloud-Optimised GeoTIFF (with overviews).")
@click.option("--kernel-size", type=int, default=9, show_default=True,
              help="--method kde: Gaussian kernel size in pixels.")
@click.option("--kde-sigma", type=float, default=None,
              help="--method kde: Gaussian sigma in pixels.  [default: kernel size / 3]")
@click.option("--kde-scale", type=click.Choice(["log", "linear"]), default="log", show_default=True,
              help="--method kde: density scaling to 0..1.")
@click.option("--kde-reference", type=float, default=16.0, show_default=True,
              help="--method kde: smoothed sample count that maps to probability 1.")
@scheduler_option
@click.option("--windows-per-task", type=int, default=16, show_default=True,
              help="With --scheduler: windows per cluster task (rounded down to whole batches).")
@common_options
@click.pass_context
def cmd(ctx: click.Context, model_path: str | None, method: str, out_path: str | None, tile_size: int | None,
        overlap: int | None, tta: str, batch_size: int, workers: int | None, inputs: str | None, cog: bool,
        kernel_size: int, kde_sigma: float | None, kde_scale: str, kde_reference: float, scheduler: str | None,
        windows_per_task: int, device: str, seed: int, overwrite: bool) -> None:
    """Predict a road probability raster over the whole mosaic, window by window.

    Streams over any mosaic size in row bands (memory stays flat), blends overlapping windows without seams,
    and resumes a killed run where it stopped. Output: uint8 GeoTIFF on the workdir grid, 0 = nodata (outside
    the imagery), 1..255 = road probability x 255.
    """
    from roadmap_cli.cluster import open_cluster
    from roadmap_cli.predict import predict_kde, predict_to_raster

    wd = ctx.obj.workdir
    record_config(ctx, dict(ctx.params))
    out = Path(out_path) if out_path else None
    with open_cluster(scheduler) as cluster:
        if method == "kde":
            stats = predict_kde(wd, out, kernel_size=kernel_size, sigma=kde_sigma, scale=kde_scale,
                                reference=kde_reference, window=tile_size or 1024, workers=workers, cog=cog,
                                overwrite=overwrite, cluster=cluster)
        else:
            import torch

            from roadmap_cli.checkpoint import build_from_checkpoint

            torch.manual_seed(seed)
            # with a cluster the workers run the network on their own devices; here it only names the weights
            dev = resolve_device(device) if cluster is None else torch.device("cpu")
            path = Path(model_path) if model_path else wd.require("model", "run `roadmap train` first or pass "
                                                                            "--model")
            model, meta = build_from_checkpoint(path, dev)
            stats = predict_to_raster(model, meta, wd, out, tile_size=tile_size, overlap=overlap,
                                      batch_size=batch_size, tta=int(tta), device=dev, workers=workers,
                                      inputs=inputs, cog=cog, overwrite=overwrite, source=str(path),
                                      cluster=cluster, checkpoint=path, worker_device=device,
                                      windows_per_task=windows_per_task)
    if not stats.skipped:
        resumed = f", resumed after {stats.bands_resumed} bands" if stats.bands_resumed else ""
        say(ctx, f"predict: wrote {stats.output} ({stats.windows} windows this run{resumed})")
