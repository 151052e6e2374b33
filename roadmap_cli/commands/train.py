"""`roadmap train`: train a road segmentation network on imagery + rendered GPS + labels.

Several GPUs or nodes: `torchrun --nproc-per-node N -m roadmap_cli -w city train ...` (see roadmap_cli.train);
--batch-size is then per process and only rank 0 writes files and prints.
"""

from __future__ import annotations

import logging

import click

from roadmap_cli.errors import RoadmapError
from roadmap_cli.options import common_options, record_config, say

log = logging.getLogger("roadmap")


def _csv_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip().lower() for v in str(value).split(",") if v.strip()]
    return items


def _parse_options(values: tuple[str, ...]) -> dict[str, object]:
    """KEY=VALUE pairs (numbers parsed; a,b -> a 2-tuple range)."""
    out: dict[str, object] = {}
    for item in values:
        if "=" not in item:
            raise RoadmapError(f"--augment-option {item}: expected KEY=VALUE, e.g. subsample_p=0.5")
        k, v = item.split("=", 1)
        parts = [p.strip() for p in v.split(",")]
        try:
            nums = [float(p) if any(c in p for c in ".eE") else int(p) for p in parts]
            out[k.strip()] = nums[0] if len(nums) == 1 else tuple(nums)
        except ValueError:
            out[k.strip()] = v.strip()
    return out


@click.command("train")
@click.option("--labels", multiple=True, type=click.Path(dir_okay=False),
              help="Road mask raster (any grid) or road vectors (GeoJSON, GPKG, .osm/.osm.pbf); one per "
                   "--data-workdir, in order (one file serves all).")
@click.option("--data-workdir", "data_workdirs", multiple=True, type=click.Path(file_okay=False),
              help="Workdir(s) with ingested imagery/GPS to train on (repeatable: several cities).  "
                   "[default: the group's -w workdir]")
@click.option("--model", type=click.Choice(["dlinknet34", "linknet34", "unet", "resunet", "deeplabv3plus"]),
              default="dlinknet34", show_default=True, help="Network architecture.")
@click.option("--decoder", type=click.Choice(["1d", "transpose"]), default=None,
              help="Decoder upsampling: the paper's 1D transpose convolutions or 3x3 ones.  "
                   "[default: 1d; transpose for deeplabv3plus]")
@click.option("--encoder-depth", type=click.Choice(["18", "34"]), default=None,
              help="ResNet depth of the (D-)LinkNet / DeepLab encoder.  [default: 34]")
@click.option("--inputs", type=click.Choice(["image+gps", "image", "gps"]), default="image+gps", show_default=True,
              help="Network input: imagery, rendered GPS, or both.")
@click.option("--gps-channels", default="density,interval", show_default=True, callback=_csv_list,
              help="Rendered GPS channels: density,interval[,speed,bearing] (bearing adds sin and cos).")
@click.option("--kernel-size", type=int, default=3, show_default=True, help="Gaussian rendering kernel (pixels).")
@click.option("--render-scale", type=click.Choice(["log", "linear"]), default="log", show_default=True,
              help="Density scale of the rendered GPS.")
@click.option("--render-mode", type=click.Choice(["gaussian", "binary"]), default="gaussian", show_default=True,
              help="gaussian: kernel density (the paper); binary: dilated hit mask (the paper's released code).")
@click.option("--augment", default="subsample,subres,perturb,omit", show_default=True,
              help="GPS augmentations (subsample, subres, perturb, omit) or `none`.")
@click.option("--augment-option", "augment_options", multiple=True, metavar="KEY=VALUE",
              help="Override a GPS augmentation probability or range (a GpsAugment field), e.g. "
                   "subsample_p=0.5 or subsample_keep=0.2,1.0. Repeatable.")
@click.option("--image-augment/--no-image-augment", default=True, show_default=True,
              help="Random flips/rotations (all channels and labels) and colour jitter (image).")
@click.option("--road-width", type=float, default=None,
              help="Width in metres of vector roads (default: lanes x 3.5 m, else 7 m).")
@click.option("--tile-size", type=int, default=512, show_default=True, help="Training tile size in pixels.")
@click.option("--epochs", type=int, default=20, show_default=True, help="Epochs (an epoch covers the training "
              "area about once unless --samples-per-epoch).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Tiles per step and process: under torchrun "
              "a step trains on batch size x world size tiles.")
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Adam learning rate.")
@click.option("--schedule", type=click.Choice(["plateau", "cosine"]), default="plateau", show_default=True,
              help="plateau: lr x0.2 after 3 epochs without validation gain; cosine: to lr/100 over the run.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of tile-size blocks held out for validation (spatially disjoint; 0: none).")
@click.option("--samples-per-epoch", type=int, default=None,
              help="Training tiles per epoch.  [default: training area / tile area, at least one batch]")
@click.option("--steps", type=int, default=None,
              help="Stop after this many optimizer steps in total (overrides --epochs).")
@click.option("--workers", type=int, default=None,
              help="DataLoader worker processes.  [default: 0 on CPU, up to 8 on CUDA]")
@click.option("--encoder-weights", type=click.Path(dir_okay=False), default=None,
              help="torchvision ResNet state-dict file (e.g. ImageNet resnet34) to start the encoder from.")
@click.option("--resume", is_flag=True, default=False,
              help="Continue from <workdir>/last.pt (weights, optimizer, schedule, position, RNG).")
@common_options
@click.pass_context
def cmd(ctx: click.Context, labels: tuple[str, ...], data_workdirs: tuple[str, ...], model: str,
        decoder: str | None, encoder_depth: str | None, inputs: str, gps_channels: list[str], kernel_size: int,
        render_scale: str, render_mode: str, augment: str, augment_options: tuple[str, ...], image_augment: bool,
        road_width: float | None, tile_size: int, epochs: int, batch_size: int, lr: float, schedule: str,
        val_fraction: float, samples_per_epoch: int | None, steps: int | None, workers: int | None,
        encoder_weights: str | None, resume: bool, device: str, seed: int, overwrite: bool) -> None:
    """Train a road segmentation network; writes model.pt (best), last.pt, train_log.csv, train_curves.png.

    Validation tiles come from blocks held out of training (spatially disjoint). Metrics per epoch: per-tile
    mean IoU (the paper's figure) and global IoU. Same --seed on CPU gives the same weights.
    """
    from roadmap_cli.train import TrainConfig, run_training

    wd = ctx.obj.workdir
    params = dict(ctx.params)
    from roadmap_cli.train import dist_from_env

    main_rank = dist_from_env().main
    if main_rank:
        record_config(ctx, params)
    explicit = {name for name in params
                if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}
    cfg = TrainConfig(
        labels=list(labels), data_workdirs=list(data_workdirs), model=model, decoder=decoder,
        encoder_depth=int(encoder_depth) if encoder_depth else None, inputs=inputs,
        gps_channels=list(gps_channels or []), kernel_size=kernel_size, render_scale=render_scale,
        render_mode=render_mode, augment=augment, augment_options=_parse_options(augment_options),
        image_augment=image_augment, road_width=road_width, tile_size=tile_size, epochs=epochs,
        batch_size=batch_size, lr=lr, schedule=schedule, val_fraction=val_fraction,
        samples_per_epoch=samples_per_epoch, steps=steps, workers=workers, encoder_weights=encoder_weights,
        resume=resume, device=device, seed=seed, overwrite=overwrite,
    )
    wd.ensure()
    summary = run_training(cfg, wd, explicit=explicit)
    if not main_rank:
        return  # under torchrun only rank 0 reports
    best = summary.get("best_validation") or {}

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    say(ctx, f"train: {summary['step']} steps; best validation IoU per-tile mean {fmt(best.get('iou_tile_mean'))}, "
             f"global {fmt(best.get('iou_global'))}; wrote {summary['model']}")
