"""Training: a segmentation network on imagery + rendered GPS + labels, with spatially disjoint validation.

Loss BCE + soft Dice (pixels without imagery ignored), Adam (lr 2e-4 by default), plateau or cosine schedule,
bf16 autocast and channels-last on CUDA (fp32 on CPU). Each epoch (and at a `--steps` stop) the validation tiles
are scored: mean of per-tile IoU (the paper's figure; tiles where truth and prediction are both empty are left
out, as `roadmap evaluate` does) and global IoU. `model.pt` keeps the best model by per-tile IoU, `last.pt` the
latest with everything `--resume` needs (optimizer, scheduler, epoch and position in it, step, RNG states, log).

Reproducibility: the same seed on CPU gives the same weights. Model init uses `torch.manual_seed(seed)`; every
training sample draws from its own `np.random.default_rng([seed, index])`; CPU runs set
`torch.use_deterministic_algorithms` (restored afterwards). An interrupted run resumed from `last.pt` continues
the same sample sequence, so `--steps 4` equals `--steps 2` followed by `--resume --steps 4`.

Several GPUs (DDP): launch through torchrun, e.g.

    torchrun --nproc-per-node 4 -m roadmap_cli -w city train --labels roads.gpkg --batch-size 8

Each process takes its GPU from LOCAL_RANK. `--batch-size` is per process: a step trains on `batch_size x
world_size` tiles (the global batch), and BatchNorm statistics are per process. The sample indices of an epoch are
dealt out in turn (rank r takes r, r + world, ...), so step k of a run at world size N and batch B trains on the
same tiles as step k of a single-process run with batch N x B; every rank runs the same number of steps. DDP
averages the gradients, so the replicas stay identical (checked at every checkpoint: a divergence stops the run
with an error). The logged training loss is the mean over ranks, validation counts are summed across ranks, and
only rank 0 writes files (and prints the summary). The process group uses NCCL on CUDA and Gloo on CPU.
`last.pt` keeps the per-step training loss (mean over ranks) as `step_losses` in its resume state.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from roadmap_cli import __version__
from roadmap_cli.checkpoint import load_checkpoint, save_checkpoint
from roadmap_cli.errors import RoadmapError
from roadmap_cli.workdir import Workdir, atomic_output, atomic_write_text, check_overwrite

log = logging.getLogger("roadmap.train")

MODEL_CHOICES = ("dlinknet34", "linknet34", "unet", "resunet", "deeplabv3plus")
GPS_CHANNELS = ("density", "interval", "speed", "bearing")
LOG_FIELDS = ("epoch", "step", "train_loss", "val_loss", "val_iou_tile_mean", "val_iou_global", "lr", "seconds")
#: configuration that defines the run; on --resume these come from last.pt, not the command line
RESUME_FIXED = ("model", "decoder", "encoder_depth", "inputs", "gps_channels", "kernel_size", "render_scale",
                "render_mode", "augment", "augment_options", "image_augment", "tile_size", "batch_size",
                "samples_per_epoch", "val_fraction", "seed", "data_workdirs", "labels", "road_width", "lane_width",
                "schedule")


@dataclass
class TrainConfig:
    """Everything `roadmap train` was asked to do (JSON-able; recorded in checkpoints)."""

    labels: list[str] = field(default_factory=list)
    data_workdirs: list[str] = field(default_factory=list)
    model: str = "dlinknet34"
    decoder: str | None = None  # None: 1d, or transpose for deeplabv3plus
    encoder_depth: int | None = None
    inputs: str = "image+gps"
    gps_channels: list[str] = field(default_factory=lambda: ["density", "interval"])
    kernel_size: int = 3
    render_scale: str = "log"
    render_mode: str = "gaussian"
    augment: str = "subsample,subres,perturb,omit"
    augment_options: dict[str, Any] = field(default_factory=dict)
    image_augment: bool = True
    road_width: float | None = None
    lane_width: float = 3.5
    tile_size: int = 512
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-4
    schedule: str = "plateau"
    val_fraction: float = 0.2
    samples_per_epoch: int | None = None
    steps: int | None = None
    workers: int | None = None
    encoder_weights: str | None = None
    resume: bool = False
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- distributed -------------------------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; distributed when all are set (even at world size 1)."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world = int(env["WORLD_SIZE"])
        return Dist(True, int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])))
    return Dist()


def _init_dist(d: Dist, device: torch.device) -> bool:
    """Start the process group if needed; True when this call started it (and must end it)."""
    import torch.distributed as tdist

    if not d.enabled or tdist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend, init_method="env://", rank=d.rank, world_size=d.world)
    return True


def _all_reduce(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def _replica_divergence(model: torch.nn.Module, d: Dist, device: torch.device) -> float:
    """Largest difference between ranks of a parameter tensor's sum, relative to its sum of magnitudes.

    0.0 when the replicas agree. DDP keeps them identical by averaging gradients; a rank that trains apart (a
    broken launch, a parameter left out of the reduction) shows up here. One all-reduce, two numbers per tensor.
    """
    if not d.enabled or d.world < 2:
        return 0.0
    import torch.distributed as tdist

    params = list(model.parameters())
    if not params:
        return 0.0
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in params]).to(device)
        scale = torch.stack([p.detach().double().abs().sum() for p in params]).to(device)
    both = torch.cat([sums, -sums])
    tdist.all_reduce(both, op=tdist.ReduceOp.MAX)
    hi, lo = both[:len(sums)], -both[len(sums):]
    return float(((hi - lo) / scale.clamp(min=1e-12)).max())


#: relative parameter-sum difference above which DDP replicas count as diverged (identical replicas give 0.0)
REPLICA_TOLERANCE = 1e-5


def _barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as tdist

        tdist.barrier()


# ---- pieces ----------------------------------------------------------------------------------------------------
def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the batch, ignoring pixels where `valid` is 0."""
    logits = logits.float()
    n = valid.sum().clamp(min=1.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum") / n
    p = torch.sigmoid(logits) * valid
    inter = (p * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum() + (target * valid).sum() + 1.0)
    return bce + dice


def resolve_architecture(model: str, decoder: str | None, encoder_depth: int | None) -> tuple[str, str, int | None]:
    """(registry name, decoder, encoder depth) from --model/--decoder/--encoder-depth."""
    if model not in MODEL_CHOICES:
        raise RoadmapError(f"--model {model}: choose one of {', '.join(MODEL_CHOICES)}")
    if decoder is None:
        decoder = "transpose" if model == "deeplabv3plus" else "1d"
    if model == "deeplabv3plus" and decoder == "1d":
        raise RoadmapError("--decoder 1d: deeplabv3plus has a bilinear decoder without transpose convolutions; "
                           "use --decoder transpose (the default for it)")
    name = model
    if model in ("dlinknet34", "linknet34"):
        depth = encoder_depth or 34
        name = model[:-2] + str(depth)
        return name, decoder, depth
    if model == "deeplabv3plus":
        return name, decoder, encoder_depth or 34
    return name, decoder, None


class _EpochSampler:
    """Global sample indices of one epoch for this rank, from batch `start_batch` on (resume)."""

    def __init__(self, per_epoch_padded: int, d: Dist, batch_size: int) -> None:
        self.n = per_epoch_padded
        self.d = d
        self.batch = batch_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.n
        mine = range(self.d.rank, self.n, self.d.world)
        return iter([base + i for i in mine[self.start_batch * self.batch:]])

    def __len__(self) -> int:
        return max(0, len(range(self.d.rank, self.n, self.d.world)) - self.start_batch * self.batch)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    with contextlib.suppress(KeyError, TypeError, RuntimeError, ValueError):
        torch.set_rng_state(state["torch"])
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
        if device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_log_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LOG_FIELDS)
    for r in rows:
        w.writerow([_fmt(r.get(k)) for k in LOG_FIELDS])
    atomic_write_text(path, buf.getvalue())


def write_curves_png(path: Path, rows: list[dict[str, Any]]) -> None:
    """Loss and IoU against optimizer step (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    a1.plot(steps, series("train_loss"), "o-", label="train")
    a1.plot(steps, series("val_loss"), "s-", label="validation")
    a1.set_xlabel("step")
    a1.set_ylabel("BCE + Dice loss")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(steps, series("val_iou_tile_mean"), "o-", label="per-tile mean IoU")
    a2.plot(steps, series("val_iou_global"), "s-", label="global IoU")
    a2.set_xlabel("step")
    a2.set_ylabel("validation IoU")
    a2.set_ylim(0, 1)
    a2.legend()
    a2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _to_device(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch to the device: channels-last input on CUDA, uint8 label/validity made float32 there."""
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True).float(), v.to(device, non_blocking=True).float()


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Any, device: torch.device, d: Dist,
             autocast: Any) -> dict[str, Any]:
    """Validation loss, per-tile mean IoU and global IoU (summed over ranks)."""
    model.eval()
    loss_sum = 0.0
    n_tiles = 0
    tp = fp = fn = 0.0
    iou_sum = 0.0
    iou_n = 0
    for x, y, v in loader:
        x, y, v = _to_device(x, y, v, device)
        with autocast():
            logits = model(x)
        logits = logits.float()
        for i in range(x.shape[0]):
            loss_sum += float(bce_dice_loss(logits[i:i + 1], y[i:i + 1], v[i:i + 1]))
        pred = (logits > 0).float() * v
        truth = y * v
        t_tp = (pred * truth).sum(dim=(1, 2, 3))
        t_fp = (pred * (1 - truth) * v).sum(dim=(1, 2, 3))
        t_fn = ((1 - pred) * truth).sum(dim=(1, 2, 3))
        union = t_tp + t_fp + t_fn
        scored = union > 0
        iou_sum += float((t_tp[scored] / union[scored]).sum())
        iou_n += int(scored.sum())
        tp += float(t_tp.sum())
        fp += float(t_fp.sum())
        fn += float(t_fn.sum())
        n_tiles += x.shape[0]
    loss_sum, n_tiles, tp, fp, fn, iou_sum, iou_n = _all_reduce(
        [loss_sum, n_tiles, tp, fp, fn, iou_sum, iou_n], d, device)
    model.train()
    return {
        "loss": loss_sum / n_tiles if n_tiles else None,
        "iou_tile_mean": iou_sum / iou_n if iou_n else None,
        "iou_global": tp / (tp + fp + fn) if (tp + fp + fn) else None,
        "tiles": int(n_tiles),
        "tiles_both_empty": int(n_tiles - iou_n),
    }


def _score(val: dict[str, Any] | None) -> float:
    if not val:
        return -math.inf
    for key in ("iou_tile_mean", "iou_global"):
        if val.get(key) is not None:
            return float(val[key])
    return -float(val["loss"]) if val.get("loss") is not None else -math.inf


def _default_workers(device: torch.device, d: Dist) -> int:
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // max(1, d.world) - 1))


def _load_encoder_weights(model: torch.nn.Module, path: str) -> None:
    from models import load_encoder_weights

    p = Path(path)
    if not p.exists():
        raise RoadmapError(f"--encoder-weights {p}: no such file")
    if not hasattr(model, "encoder"):
        raise RoadmapError(f"--encoder-weights {p}: {model.name} has no ResNet encoder to load ImageNet weights into")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise RoadmapError(f"--encoder-weights {p}: not a loadable weights-only state dict "
                           f"({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__})"
                           ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RoadmapError(f"--encoder-weights {p}: expected a torchvision ResNet state dict (name -> tensor)")
    try:
        report = load_encoder_weights(model, sd)
    except ValueError as exc:
        raise RoadmapError(f"--encoder-weights {p}: {exc}") from None
    if not report.loaded_keys:
        raise RoadmapError(f"--encoder-weights {p}: no key matches a ResNet encoder (is it a torchvision ResNet?)")
    log.info("encoder weights %s: %d tensors loaded, %d missing, %d unexpected, %d GPS stem channels initialised",
             p, len(report.loaded_keys), len(report.missing_keys), len(report.unexpected_keys), report.gps_channels)


def make_render_params(cfg: TrainConfig) -> Any:
    """RenderParams from --gps-channels / --kernel-size / --render-scale / --render-mode (None without GPS)."""
    if "gps" not in cfg.inputs:
        return None
    from roadmap_cli.render import RenderParams

    bad = [c for c in cfg.gps_channels if c not in GPS_CHANNELS]
    if bad or not cfg.gps_channels:
        raise RoadmapError(f"--gps-channels {','.join(cfg.gps_channels)}: use names from {', '.join(GPS_CHANNELS)}")
    try:
        return RenderParams(channels=tuple(cfg.gps_channels), mode=cfg.render_mode, kernel_size=int(cfg.kernel_size),
                            scale=cfg.render_scale)
    except (ValueError, TypeError) as exc:
        raise RoadmapError(f"GPS rendering options: {exc}") from None


def make_gps_augment(cfg: TrainConfig) -> Any:
    """GpsAugment from --augment and --augment-option (None for 'none' or without GPS)."""
    if "gps" not in cfg.inputs or cfg.augment.strip().lower() == "none":
        return None
    from roadmap_cli.augment import GpsAugment

    try:
        return GpsAugment.from_spec(cfg.augment, **cfg.augment_options)
    except (ValueError, TypeError) as exc:
        raise RoadmapError(f"--augment {cfg.augment}: {exc}") from None


# ---- the run -----------------------------------------------------------------------------------------------------
def run_training(cfg: TrainConfig, out: Workdir, explicit: set[str] | None = None) -> dict[str, Any]:
    """Train as configured; write model.pt, last.pt, train_log.csv and train_curves.png into `out`.

    Returns a summary (best validation metrics, steps, paths). `explicit` names the options the user gave on
    the command line (used to warn when --resume ignores one).
    """
    from roadmap_cli.options import resolve_device

    d = dist_from_env()
    if d.enabled and torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    else:
        device = resolve_device(cfg.device)
    started = _init_dist(d, device)
    det_before = torch.are_deterministic_algorithms_enabled()
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _run(cfg, out, d, device, explicit or set())
    finally:
        torch.use_deterministic_algorithms(det_before)
        if started:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _resume_config(cfg: TrainConfig, last_path: Path, explicit: set[str]) -> tuple[TrainConfig, dict, dict]:
    state, meta, extra = load_checkpoint(last_path)
    if "config" not in extra or "step" not in extra:
        raise RoadmapError(f"{last_path}: holds no resume state (optimizer, step); it cannot be resumed")
    saved = extra["config"]
    world_before = (meta.get("training") or {}).get("world_size")
    world_now = dist_from_env().world
    if world_before is not None and int(world_before) != world_now:
        batch = int(saved.get("batch_size", cfg.batch_size))
        log.warning("--resume: %s was trained with %d process(es), now %d; the global batch changes from %d to %d "
                    "tiles and the run no longer repeats an uninterrupted one", last_path, int(world_before),
                    world_now, batch * int(world_before), batch * world_now)
    merged = cfg.to_dict()
    for key in RESUME_FIXED:
        if key in saved:
            if key in explicit and merged.get(key) != saved[key]:
                log.warning("--resume: ignoring --%s %s; the run continues with %s", key.replace("_", "-"),
                            merged.get(key), saved[key])
            merged[key] = saved[key]
    new = TrainConfig(**{k: v for k, v in merged.items() if k in TrainConfig.__dataclass_fields__})
    return new, state, extra


def _run(cfg: TrainConfig, out: Workdir, d: Dist, device: torch.device, explicit: set[str]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from models import build_model
    from roadmap_cli.dataset import SourceSpec, TileSpec, TrainingData
    from roadmap_cli.inputs import default_normalisation, input_channels
    from roadmap_cli.progress import progress

    paths = {k: out.path(k) for k in ("model", "last", "train_log")}
    paths["curves"] = out.path("train_curves.png")
    resume_state: dict[str, Any] | None = None
    resume_extra: dict[str, Any] = {}
    if cfg.resume:
        if not paths["last"].exists():
            raise RoadmapError(f"{paths['last']}: missing; nothing to --resume (train without --resume first)")
        cfg, resume_state, resume_extra = _resume_config(cfg, paths["last"], explicit)
        cfg.resume = True
    elif not cfg.overwrite:
        for key in ("model", "last"):
            check_overwrite(paths[key], False)

    if not cfg.data_workdirs:
        cfg.data_workdirs = [str(out.root)]
    if not cfg.labels:
        raise RoadmapError("--labels: missing; give the road mask raster or road vectors to train on")
    if len(cfg.labels) not in (1, len(cfg.data_workdirs)):
        raise RoadmapError(f"--labels given {len(cfg.labels)} times for {len(cfg.data_workdirs)} --data-workdir; "
                           "give one per workdir, in the same order")
    if cfg.inputs not in ("image+gps", "image", "gps"):
        raise RoadmapError(f"--inputs {cfg.inputs}: choose image+gps, image or gps")
    if cfg.schedule not in ("plateau", "cosine"):
        raise RoadmapError(f"--schedule {cfg.schedule}: choose plateau or cosine")
    for name, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size), ("--tile-size", cfg.tile_size)):
        if value < 1:
            raise RoadmapError(f"{name} {value}: must be at least 1")
    if cfg.steps is not None and cfg.steps < 1:
        raise RoadmapError(f"--steps {cfg.steps}: must be at least 1")
    if not cfg.lr > 0:
        raise RoadmapError(f"--lr {cfg.lr}: must be positive")

    name, decoder, depth = resolve_architecture(cfg.model, cfg.decoder, cfg.encoder_depth)
    render_params = make_render_params(cfg)
    gps_augment = make_gps_augment(cfg)
    labels = cfg.labels if len(cfg.labels) == len(cfg.data_workdirs) else cfg.labels * len(cfg.data_workdirs)
    sources = [SourceSpec(w, lab, cfg.road_width, cfg.lane_width) for w, lab in zip(cfg.data_workdirs, labels,
                                                                                     strict=True)]
    spec = TileSpec(tile_size=int(cfg.tile_size), inputs=cfg.inputs, render=render_params, gps_augment=gps_augment,
                    image_augment=cfg.image_augment, norm=default_normalisation())
    data = TrainingData(sources, spec, val_fraction=cfg.val_fraction, seed=cfg.seed)
    per_rank = cfg.batch_size * d.world
    spe = int(cfg.samples_per_epoch or data.default_samples_per_epoch(per_rank))
    if spe < 1:
        raise RoadmapError(f"--samples-per-epoch {spe}: must be at least 1")
    cfg.samples_per_epoch = spe
    steps_per_epoch = max(1, math.ceil(spe / per_rank))
    spe_padded = steps_per_epoch * per_rank
    # --steps (max optimizer steps) overrides --epochs
    total_steps = cfg.epochs * steps_per_epoch if cfg.steps is None else int(cfg.steps)
    n_gps = int(render_params.n_channels) if render_params is not None else 0
    in_ch = input_channels(cfg.inputs, n_gps)
    image_ch = 3 if "image" in cfg.inputs else 0

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    try:
        model = build_model(name, in_ch, decoder, depth, image_channels=image_ch)
    except ValueError as exc:
        raise RoadmapError(f"--model {cfg.model}: {exc}") from None
    if cfg.encoder_weights and resume_state is None:
        _load_encoder_weights(model, cfg.encoder_weights)
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state)
        except RuntimeError as exc:
            raise RoadmapError(f"{paths['last']}: weights do not fit the configured network "
                               f"({str(exc).splitlines()[0][:120]})") from None
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed tile size: let cuDNN pick the fastest kernels
    net: torch.nn.Module = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.schedule == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps),
                                                                    eta_min=cfg.lr * 0.01)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.2, patience=3)

    step = 0
    epoch = 0
    batch_in_epoch = 0
    samples_seen = 0
    best = -math.inf
    best_val: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    step_losses: list[float] = []  # training loss of every step, mean over ranks
    seconds_before = 0.0
    if resume_state is not None:
        ex = resume_extra
        optimizer.load_state_dict(ex["optimizer"])
        if cfg.lr != ex["config"].get("lr") and "lr" in explicit:
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr
        with contextlib.suppress(KeyError, ValueError, TypeError):
            scheduler.load_state_dict(ex["scheduler"])
        if cfg.schedule == "cosine":
            scheduler.T_max = max(1, total_steps)  # a resumed run may have been given more --steps / --epochs
        step, epoch, batch_in_epoch = int(ex["step"]), int(ex["epoch"]), int(ex["batch_in_epoch"])
        samples_seen = int(ex.get("samples_seen", 0))
        best = float(ex.get("best_score", -math.inf))
        best_val = ex.get("best_val")
        rows = list(ex.get("log", []))
        step_losses = [float(v) for v in ex.get("step_losses", [])]
        seconds_before = float(ex.get("seconds", 0.0))
        _set_rng_state(ex.get("rng", {}), device)
        log.info("resuming at step %d (epoch %d, batch %d)", step, epoch + 1, batch_in_epoch)

    workers = cfg.workers if cfg.workers is not None else _default_workers(device, d)
    train_ds = data.train_dataset(spe)
    val_ds = data.val_dataset()
    sampler = _EpochSampler(spe_padded, d, cfg.batch_size)
    loader_kw: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        loader_kw.update(persistent_workers=True, prefetch_factor=2)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=False, **loader_kw)
    val_idx = list(range(d.rank, len(val_ds), d.world))
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, sampler=val_idx, **loader_kw) if val_idx else []

    if device.type == "cuda":
        def autocast() -> Any:
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        def autocast() -> Any:
            return contextlib.nullcontext()

    meta_base = {
        "roadmap_version": __version__,
        "architecture": model.name,
        "decoder": decoder,
        "encoder_depth": depth,
        "in_channels": in_ch,
        "image_channels": image_ch,
        "inputs": cfg.inputs,
        "render": render_params.to_dict() if render_params is not None else None,
        "normalisation": default_normalisation(),
        "tile_size": int(cfg.tile_size),
    }

    replica_divergence = 0.0

    def training_summary() -> dict[str, Any]:
        summary = {
            "workdirs": [str(Path(w).resolve()) for w in cfg.data_workdirs],
            "labels": [str(Path(p).resolve()) for p in labels],
            "data": data.summary(),
            "samples": samples_seen,
            "steps": step,
            "epochs": round(epoch + batch_in_epoch / steps_per_epoch, 4),
            "samples_per_epoch": spe,
            "batch_size": cfg.batch_size,
            "world_size": d.world,
            "lr": cfg.lr,
            "schedule": cfg.schedule,
            "loss": "bce+soft_dice",
            "optimizer": "adam",
            "augment": gps_augment.to_dict() if gps_augment is not None else None,
            "image_augment": cfg.image_augment,
            "encoder_weights": str(Path(cfg.encoder_weights).resolve()) if cfg.encoder_weights else None,
            "seed": cfg.seed,
            "device": device.type,
        }
        if d.world > 1:
            summary["replica_divergence"] = replica_divergence
        return summary

    t_start = time.perf_counter()
    saved_best = resume_state is not None

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_start

    def checkpoint(val: dict[str, Any] | None, train_loss: float | None) -> None:
        nonlocal best, best_val, saved_best, replica_divergence
        replica_divergence = _replica_divergence(model, d, device)
        if replica_divergence > REPLICA_TOLERANCE:  # the same value on every rank: all stop together
            raise RoadmapError(f"distributed training: the model replicas differ between ranks at step {step} "
                               f"(relative difference {replica_divergence:.3g}); gradients are not being averaged")
        lr_now = optimizer.param_groups[0]["lr"]
        epochs_done = round(epoch + batch_in_epoch / steps_per_epoch, 3)
        row = {"epoch": epochs_done, "step": step,
               "train_loss": train_loss, "val_loss": val.get("loss") if val else None,
               "val_iou_tile_mean": val.get("iou_tile_mean") if val else None,
               "val_iou_global": val.get("iou_global") if val else None, "lr": lr_now,
               "seconds": round(elapsed(), 3)}
        rows.append(row)
        validation = dict(val or {}, epoch=epochs_done, step=step)
        score = _score(val)
        # model.pt: the best so far by per-tile IoU; the first checkpoint of a fresh run always replaces it, and
        # without validation it follows the latest weights
        improved = score > best or not saved_best or val is None
        if score > best or val is None:
            best, best_val = score, validation
        if d.main:
            meta = dict(meta_base, training=training_summary(), validation=validation)
            if improved:
                save_checkpoint(paths["model"], model, meta)
                saved_best = True
            extra = {
                "config": cfg.to_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "samples_seen": samples_seen,
                "best_score": best, "best_val": best_val, "log": rows, "step_losses": step_losses,
                "seconds": elapsed(),
                "rng": _rng_state(device),
            }
            save_checkpoint(paths["last"], model, dict(meta, best_validation=best_val), extra_state=extra)
            write_log_csv(paths["train_log"], rows)
            try:
                write_curves_png(paths["curves"], rows)
            except Exception as exc:  # a plot must never end a training run
                log.warning("train_curves.png not written (%s)", exc)
            v = val or {}
            log.info("step %d: train loss %s, val loss %s, val IoU tile-mean %s, global %s", step,
                     _fmt(train_loss), _fmt(v.get("loss")), _fmt(v.get("iou_tile_mean")), _fmt(v.get("iou_global")))
        _barrier(d)

    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
    loss_n = 0
    epoch_losses: list[torch.Tensor] = []  # this stretch's per-step losses, kept on the device until it ends

    def finished() -> bool:
        return step >= total_steps or (cfg.steps is None and epoch >= cfg.epochs)

    done = finished()
    if done:
        log.warning("nothing to do: the run already reached step %d (raise --steps or --epochs)", step)
    while not done:
        sampler.set_epoch(epoch, batch_in_epoch)
        bar = progress(total=steps_per_epoch, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch") if d.main else None
        for x, y, v in train_loader:
            x, y, v = _to_device(x, y, v, device)
            with autocast():
                logits = net(x)
            loss = bce_dice_loss(logits, y, v)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cfg.schedule == "cosine":
                scheduler.step()
            step += 1
            batch_in_epoch += 1
            samples_seen += x.shape[0] * d.world
            loss_sum += loss.detach()
            loss_n += 1
            epoch_losses.append(loss.detach())
            if bar is not None:
                bar.update(1)
                if loss_n % 10 == 1:
                    bar.set_postfix(loss=f"{float(loss_sum) / loss_n:.4f}")
            if step >= total_steps:
                break
        if bar is not None:
            bar.close()
        epoch_done = batch_in_epoch >= steps_per_epoch
        if epoch_done:
            epoch += 1
            batch_in_epoch = 0
        done = finished()
        if not epoch_done and not done:
            continue  # cannot happen (the loader ends only at the epoch's end or at the step limit)
        train_loss = float(_all_reduce([float(loss_sum)], d, device)[0]) / (loss_n * d.world) if loss_n else None
        loss_sum.zero_()
        loss_n = 0
        if epoch_losses:
            per_step = torch.stack(epoch_losses).double()
            if d.enabled:
                import torch.distributed as tdist

                tdist.all_reduce(per_step)
                per_step /= d.world
            step_losses.extend(per_step.tolist())
            epoch_losses.clear()
        val = validate(model, val_loader, device, d, autocast) if len(val_ds) else None
        if cfg.schedule == "plateau" and epoch_done and val is not None:
            scheduler.step(_score(val))
        checkpoint(val, train_loss)
        net.train()

    return {"step": step, "epoch": epoch, "best_validation": best_val, "model": str(paths["model"]),
            "last": str(paths["last"]), "samples_per_epoch": spe, "steps_per_epoch": steps_per_epoch}
