"""The paper's experiments (Sun et al. 2019, Tables 2-4) at reduced scale on synthetic cities.

Rows, each trained with the same step budget and scored on a held-out city of the training style (never the
training city):

    KDE                 `predict --method kde`; kernel size and threshold picked on the training city
    GPS only            --inputs gps, density channel, 3x3 transpose decoder, no GPS augmentation
    image only          --inputs image, transpose decoder
    image + GPS         --inputs image+gps, density, transpose decoder, no augmentation
    + 1D decoder        as above with --decoder 1d
    + augmentation      ... --augment subsample,subres,perturb,omit
    + interval channel  ... --gps-channels density,interval  (the paper's full model)

New-city test (Table 4): every model above, trained on style `--style-train` with the `beijing` GPS profile, is
also scored on a city of style `--style-new` with the `shanghai` profile; the relative IoU drop is taken per seed
against the same model's same-city IoU. Three seeds per trained row (the seed of `roadmap train`: weights
initialisation and tile sampling; the cities stay the same), mean ± sample standard deviation, min-max beside.

Everything runs through the `roadmap` command line (synth, ingest, train, predict, evaluate) in subprocesses
with OMP/MKL threads = `--threads`. The step budget: unless `--steps N`, real `roadmap train` runs of the
heaviest row (2 and 8 steps) and one predict + evaluate are timed first, and the steps per training are the most
that fit `--budget-min` minutes in all (8 % margin), rounded down to a multiple of 5, but never fewer than
`--min-steps` (80; a busy machine would otherwise give a handful of steps and untrained models: the report then
says the budget was exceeded). `--dry-run` makes the cities, times the stages, prints the plan and stops.
Models start from random
weights (no ImageNet file here), so the learning rate defaults to 1e-3 with a cosine schedule: with the paper's
2e-4, D-LinkNet34 after 80 steps scored no pixel at or above 0.5 in a probe on these cities.

Writes a section of `bench/results/ablation.md` (sections keyed by device, e.g. `cpu` and `cuda`, so a CPU and a
GPU run are recorded side by side; `--quick` runs get their own section) and prints ONE JSON line: rows with
mean/sd/min/max, the new-city drops, and `ratio` = full-model per-tile IoU / image-only per-tile IoU (the paper's
Table 3 gain, 59.18 / 54.42 = 1.087).

    .venv/bin/python bench/ablation.py                     # CPU: 3 seeds, fits 90 min on 2 cores (make bench-ablation)
    .venv/bin/python bench/ablation.py --quick --out /tmp/a.md   # smoke run, a few minutes
    python3 bench/ablation.py --device cuda --tile-size 1024 --threads 8 --seeds 0 --budget-min 8   # a GPU box
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALL_AUG = "subsample,subres,perturb,omit"


@dataclass(frozen=True)
class Row:
    """One ablation row: `train` holds the `roadmap train` options that differ between rows (None: KDE)."""

    key: str
    label: str
    train: dict[str, str] | None
    paper_iou: float | None  # Table 2 / 3, D-LinkNet, Beijing test set (%)
    paper_drop: float | None = None  # Table 4, trained on Beijing, tested on Shanghai (relative, %)
    paper_note: str = ""


ROWS: tuple[Row, ...] = (
    Row("kde", "KDE (GPS only)", None, 34.06, None, "Table 2"),
    Row("gps", "GPS only", {"inputs": "gps", "decoder": "transpose", "gps-channels": "density", "augment": "none"},
        48.46, -4.6, "Table 2 (D-LinkNet plain); Table 4 GPS"),
    Row("image", "image only", {"inputs": "image", "decoder": "transpose"}, 54.42, -31.6, "Tables 2-4"),
    Row("image+gps", "image + GPS", {"inputs": "image+gps", "decoder": "transpose", "gps-channels": "density",
                                     "augment": "none"}, 56.96, -24.9, "Table 3; Table 4 w/o augment"),
    Row("+1d", "+ 1D decoder", {"inputs": "image+gps", "decoder": "1d", "gps-channels": "density",
                                "augment": "none"}, 57.96, None, "Table 3"),
    Row("+augment", "+ augmentation", {"inputs": "image+gps", "decoder": "1d", "gps-channels": "density",
                                       "augment": ALL_AUG}, 58.55, None, "Table 3"),
    Row("+interval", "+ interval channel", {"inputs": "image+gps", "decoder": "1d",
                                            "gps-channels": "density,interval", "augment": ALL_AUG},
        59.18, -18.9, "Table 3 (full); Table 4 w/ augment"),
)
TRAINED = tuple(r for r in ROWS if r.train is not None)
ROW_BY_KEY = {r.key: r for r in ROWS}


# ---------------------------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Sizes, model and budget of one ablation run (JSON-able; recorded in the outputs)."""

    device: str
    threads: int
    model: str
    encoder_depth: int
    tile_size: int
    eval_tile: int
    batch_size: int
    lr: float
    schedule: str
    train_size: int
    test_size: int
    style_train: str
    style_new: str
    data_seed: int
    seeds: list[int]
    rows: list[str]
    steps: int | None  # None until the budget is computed
    budget_min: float
    kde_kernels: list[int]
    quick: bool
    gps_vehicles: int | None = None
    gps_hours: float | None = None
    keep_models: bool = False
    min_steps: int = 80
    estimate: dict[str, Any] = field(default_factory=dict)

    @property
    def trained_rows(self) -> list[Row]:
        return [ROW_BY_KEY[k] for k in self.rows if ROW_BY_KEY[k].train is not None]

    def fingerprint(self, row: Row, seed: int) -> dict[str, Any]:
        """What decides one training's result (a finished one is reused from --work when it matches)."""
        return {"row": row.key, "train": row.train, "seed": seed, "model": self.model, "depth": self.encoder_depth,
                "tile": self.tile_size, "eval_tile": self.eval_tile, "batch": self.batch_size, "lr": self.lr,
                "schedule": self.schedule, "steps": self.steps, "device": self.device.split(":")[0],
                "data": [self.train_size, self.test_size, self.style_train, self.style_new, self.data_seed,
                         self.gps_vehicles, self.gps_hours]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny cities, 128² tiles, ResNet-18 encoder, 3 steps, one seed (minutes)")
    p.add_argument("--seeds", type=str, default=None, help="comma-separated training seeds [0,1,2; quick: 0]")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per training [CPU: 600, the whole run measured 65.6 min on 2 quiet cores; "
                        "other devices: the most that fit --budget-min by the calibration, which under-estimated "
                        "CPU steps 1.7x (reader threads compete with training there)]")
    p.add_argument("--budget-min", type=float, default=90.0, help="whole-run budget in minutes [90]")
    p.add_argument("--min-steps", type=int, default=80,
                   help="never fewer steps per training than this, whatever the budget (a busy machine gives "
                        "few): at 80 steps from scratch every probed row learned; fewer were not tried [80]")
    p.add_argument("--size", type=int, default=None,
                   help="training city side in pixels [CPU: 1024; else max(2048, 4 x tile); quick: 384]")
    p.add_argument("--test-size", type=int, default=None,
                   help="side of each test city [CPU: 512; else max(2048, 2 x tile); quick: 256]")
    p.add_argument("--gps-vehicles", type=int, default=None, help="synth --vehicles of every city [synth's: 200]")
    p.add_argument("--gps-hours", type=float, default=None, help="synth --hours of every city [synth's: 4]")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto  [cpu]")
    p.add_argument("--threads", type=int, default=2, help="torch / BLAS threads of every stage [2]")
    p.add_argument("--tile-size", type=int, default=None,
                   help="training tile (and test window) [CPU and quick: 128; else 256]")
    p.add_argument("--eval-tile", type=int, default=None,
                   help="tile of the per-tile mean IoU [= --tile-size; the paper's is 1024]")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per step [4; quick: 2]")
    p.add_argument("--model", default="dlinknet34", choices=["dlinknet34", "linknet34"],
                   help="architecture (`roadmap train --model`) [dlinknet34]")
    p.add_argument("--encoder-depth", type=int, choices=[18, 34], default=None,
                   help="ResNet depth of the encoder [CPU and quick: 18; else 34]")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate [1e-3: the paper's 2e-4 left D-LinkNet34 below 0.5 everywhere after "
                        "80 steps from scratch here]")
    p.add_argument("--calibrate", choices=["auto", "real", "micro", "none"], default="auto",
                   help="how the step time is measured: real = short `roadmap train` runs (2 and 8 steps) and "
                        f"one predict; micro = an in-process step on random tensors x {MICRO_TO_REAL:.2f} "
                        "; none = no estimate (needs --steps) [auto: real unless --steps; quick: none]")
    p.add_argument("--schedule", choices=["cosine", "plateau"], default="cosine",
                   help="learning-rate schedule over the fixed budget [cosine; plateau needs validation]")
    p.add_argument("--rows", default=",".join(r.key for r in ROWS),
                   help="rows to run, comma-separated keys [all: " + ",".join(r.key for r in ROWS) + "]")
    p.add_argument("--style-train", default="a", help="synth style of the training and same-city test city [a]")
    p.add_argument("--style-new", default="b", help="synth style of the new-city test [b]")
    p.add_argument("--data-seed", type=int, default=1, help="synth seed of the training city (+1, +2: tests) [1]")
    p.add_argument("--work", type=Path, default=None,
                   help="keep cities, results and predictions here; a re-run reuses the cities and every "
                        "finished training of the same plan (to resume an interrupted run, also pass the --steps "
                        "it printed) [a temporary folder, removed at the end]")
    p.add_argument("--keep-models", action="store_true",
                   help="keep every model.pt under --work (about 125 MB each for D-LinkNet34) [deleted once scored]")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablation.md",
                   help="markdown results (one section per device is replaced) [bench/results/ablation.md]")
    p.add_argument("--json", type=Path, default=None, help="also write every row and seed to this JSON file")
    p.add_argument("--dry-run", action="store_true",
                   help="make the cities, time the stages, print the plan and the estimate, and stop")
    p.add_argument("--label", default=None, help="section name in --out [the device type, +'-quick']")
    p.add_argument("--render-from", type=Path, default=None, metavar="JSON",
                   help="run nothing: rewrite the --out section from a --json file of an earlier run")
    return p.parse_args(argv)


def render_from(a: argparse.Namespace) -> int:
    """Rewrite a results section from the JSON an earlier run saved (same numbers, current wording)."""
    import json

    d = json.loads(a.render_from.read_text())
    plan = Plan(**d["plan"])
    label = a.label or plan.device.split(":")[0] + ("-quick" if plan.quick else "")
    write_markdown(a.out, label, render_section(plan, d["meta"], d["summary"], d["results"], d["kde"], label))
    print(f"wrote {a.out} (section {label}) from {a.render_from}", file=sys.stderr)
    return 0


def make_plan(a: argparse.Namespace) -> Plan:
    q = a.quick
    cpu = a.device == "cpu" and not q  # the full run on 2 CPU cores: sizes chosen to fit 90 minutes
    tile = a.tile_size or (128 if q or cpu else 256)
    rows = [k.strip() for k in a.rows.split(",") if k.strip()]
    bad = [k for k in rows if k not in ROW_BY_KEY]
    if bad:
        raise SystemExit(f"--rows: unknown {', '.join(bad)}; choose from {', '.join(ROW_BY_KEY)}")
    seeds = [int(s) for s in (a.seeds or ("0" if q else "0,1,2")).split(",") if s.strip()]
    if a.steps is not None and a.steps < 1:
        raise SystemExit("--steps: must be at least 1")
    return Plan(
        device=a.device, threads=a.threads, model=a.model,
        encoder_depth=a.encoder_depth or (18 if q or cpu else 34), tile_size=tile, eval_tile=a.eval_tile or tile,
        batch_size=2 if q and a.batch_size == 4 else a.batch_size, lr=a.lr, schedule=a.schedule,
        train_size=a.size or (384 if q else 1024 if cpu else max(2048, 4 * tile)),
        test_size=a.test_size or (256 if q else 512 if cpu else max(2048, 2 * tile)),
        style_train=a.style_train, style_new=a.style_new, data_seed=a.data_seed, seeds=seeds, rows=rows,
        steps=a.steps if a.steps is not None else (3 if q else 600 if cpu else None), budget_min=a.budget_min,
        kde_kernels=[3, 9] if q else [3, 5, 9, 15, 25, 41, 61],
        quick=q, keep_models=a.keep_models, min_steps=a.min_steps, gps_vehicles=a.gps_vehicles, gps_hours=a.gps_hours,
    )


# ---------------------------------------------------------------------------------------------------------------
# running the stages
# ---------------------------------------------------------------------------------------------------------------
class StageError(RuntimeError):
    pass


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[v] = str(threads)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def roadmap(plan: Plan, *args: str | Path) -> tuple[float, str]:
    """Run `python -m roadmap_cli -q ARGS`; (wall seconds, stdout). One-line StageError on failure."""
    cmd = [sys.executable, "-m", "roadmap_cli", "-q", *[str(x) for x in args]]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=_env(plan.threads), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        raise StageError(f"`roadmap {' '.join(str(x) for x in args[:4])} ...` exited {r.returncode}: "
                         + " | ".join(tail))
    return dt, r.stdout


@dataclass
class City:
    name: str
    synth_dir: Path
    workdir: Path

    @property
    def labels(self) -> Path:
        return self.synth_dir / "labels.tif"


def make_cities(plan: Plan, work: Path) -> tuple[dict[str, City], dict[str, float]]:
    """Synthesise and ingest the training city, the same-style test city and the new-city test city."""
    specs = {
        "train": (plan.train_size, plan.style_train, "beijing", plan.data_seed),
        "same": (plan.test_size, plan.style_train, "beijing", plan.data_seed + 1),
        "new": (plan.test_size, plan.style_new, "shanghai", plan.data_seed + 2),
    }
    cities, seconds = {}, {}
    for name, (size, style, profile, seed) in specs.items():
        c = City(name, work / "cities" / f"{name}_synth", work / "cities" / f"{name}_work")
        t0 = time.perf_counter()
        stamp = c.workdir / "ablation_city.json"
        gps = []
        if plan.gps_vehicles is not None:
            gps += ["--vehicles", plan.gps_vehicles]
        if plan.gps_hours is not None:
            gps += ["--hours", plan.gps_hours]
        want = {"size": size, "style": style, "profile": profile, "seed": seed, "gps": [str(x) for x in gps]}
        if not (stamp.exists() and json.loads(stamp.read_text()) == want):
            roadmap(plan, "synth", "--out", c.synth_dir, "--size", size, "--style", style, "--gps-profile", profile,
                    "--seed", seed, *gps, "--overwrite")
            roadmap(plan, "-w", c.workdir, "ingest", "--gps", c.synth_dir / "gps.csv", "--imagery",
                    c.synth_dir / "image.tif", "--overwrite")
            stamp.write_text(json.dumps(want))
        cities[name] = c
        seconds[name] = round(time.perf_counter() - t0, 2)
        summary = json.loads((c.synth_dir / "synth.json").read_text())
        plan.estimate.setdefault("road_share", {})[name] = summary.get("road_fraction")
        log(f"city {name}: {size}² px style {summary.get('style', style)}, GPS {profile} "
            f"({summary.get('gps', {}).get('samples', '?')} samples), seed {seed} [{seconds[name]:.0f} s]")
    return cities, seconds


# ---------------------------------------------------------------------------------------------------------------
# timing and budget
# ---------------------------------------------------------------------------------------------------------------
def measure_costs(plan: Plan) -> dict[str, float]:
    """Seconds per training step and per forward batch (the plan's biggest row), and one stage's start-up."""
    import torch

    from models import build_model

    torch.set_num_threads(plan.threads)
    dev = torch.device("cuda" if plan.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if plan.device == "auto" else plan.device))
    name = plan.model[:-2] + str(plan.encoder_depth)
    torch.manual_seed(0)
    model = build_model(name, 5, "1d", plan.encoder_depth, image_channels=3).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=plan.lr)
    b, t = plan.batch_size, plan.tile_size
    x = torch.randn(b, 5, t, t, device=dev)
    y = (torch.rand(b, 1, t, t, device=dev) > 0.85).float()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def train_step() -> None:
        with autocast():
            out = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n_warm, n_timed = (3, 10) if cuda else (1, 3 if plan.steps is None else 1)
    times = []
    for i in range(n_warm + n_timed):
        sync()
        t0 = time.perf_counter()
        train_step()
        sync()
        if i >= n_warm:
            times.append(time.perf_counter() - t0)
    model.eval()
    fwd = []
    with torch.no_grad():
        for i in range(n_warm + max(2, n_timed // 2)):
            sync()
            t0 = time.perf_counter()
            with autocast():
                model(x)
            sync()
            if i >= n_warm:
                fwd.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, rasterio, roadmap_cli.train, roadmap_cli.predict"],
                   cwd=ROOT, env=_env(plan.threads), check=True)
    startup = time.perf_counter() - t0
    return {"step_s": statistics.median(times), "forward_s": statistics.median(fwd), "startup_s": startup,
            "device": str(dev)}


#: real `roadmap train` step / in-process bare step, measured here (2 cores, D-LinkNet34, 256², batch 4): the
#: real step also makes the samples (imagery, GPS render, augmentation), adds the Dice term and runs with
#: deterministic algorithms. Used only by the in-process estimate (`--calibrate micro`).
MICRO_TO_REAL = 1.35


def micro_costs(plan: Plan) -> dict[str, float]:
    """Costs per step / per training / per prediction from the in-process timing (cheap, approximate)."""
    c = measure_costs(plan)
    windows = math.ceil(plan.test_size / plan.tile_size) ** 2
    batches = math.ceil(windows / plan.batch_size)
    return {"step_s": c["step_s"] * MICRO_TO_REAL, "train_fixed_s": c["startup_s"] + 4.0,
            "predict_s": c["startup_s"] + 1.0 + batches * c["forward_s"] * 1.3, "startup_s": c["startup_s"],
            "device": c["device"], "how": f"in-process step x {MICRO_TO_REAL:.2f}"}


def real_costs(plan: Plan, cities: dict[str, City], work: Path) -> dict[str, float]:
    """Time real `roadmap train` runs of the plan's heaviest row at two step counts, and one predict+evaluate.

    step = difference of the training loops / difference of steps; fixed = the rest of a run's wall time
    (start-up, model build, checkpoints); predict = the wall time of predict+evaluate on the same-city test.
    """
    row = ROW_BY_KEY["+interval"] if "+interval" in plan.rows else plan.trained_rows[-1]
    cuda = plan.device.startswith("cuda")
    n1, n2 = (5, 25) if cuda else ((1, 3) if plan.quick else (2, 8))
    saved = plan.steps
    loops, walls = {}, {}
    try:
        for n in (n1, n2):
            d = work / "calibrate" / f"steps{n}"
            plan.steps = n
            walls[n], loops[n] = _train(plan, row, 0, cities["train"], d)
    finally:
        plan.steps = saved
    step = (loops[n2] - loops[n1]) / (n2 - n1) if loops[n1] is not None and loops[n2] is not None else 0.0
    if step <= 0:  # noise: fall back to the longer run's mean
        step = (loops[n2] or walls[n2]) / n2
    _, pred_s = predict_and_score(plan, cities["same"], work / "calibrate" / f"steps{n2}",
                                  model=work / "calibrate" / f"steps{n2}" / "model.pt")
    for n in (n1, n2):
        (work / "calibrate" / f"steps{n}" / "model.pt").unlink(missing_ok=True)
    dev = "cpu"
    if cuda or plan.device == "auto":
        import torch

        dev = plan.device if cuda else ("cuda" if torch.cuda.is_available() else "cpu")
    return {"step_s": step, "train_fixed_s": max(0.0, walls[n1] - n1 * step), "predict_s": pred_s,
            "startup_s": None, "device": dev, "how": f"real roadmap train at {n1} and {n2} steps",
            "calibration_s": round(sum(walls.values()) + pred_s, 1)}


def budget_steps(plan: Plan, costs: dict[str, float], spent_s: float) -> dict[str, Any]:
    """Estimate the run's remaining costs and, unless --steps, the steps per training that fit the budget."""
    n_train = len(plan.trained_rows) * len(plan.seeds)
    n_pred = 2 * n_train
    kde_s = (len(plan.kde_kernels) * (costs["predict_s"] * (plan.train_size / plan.test_size) ** 2 * 0.3 + 1.0)
             + 2 * costs["predict_s"]) if "kde" in plan.rows else 0.0
    fixed = spent_s + n_pred * costs["predict_s"] + n_train * costs["train_fixed_s"] + kde_s + 5.0
    est = {"trainings": n_train, "predictions": n_pred + (2 if "kde" in plan.rows else 0),
           "step_s": round(costs["step_s"], 3), "train_fixed_s": round(costs["train_fixed_s"], 1),
           "predict_s": round(costs["predict_s"], 1), "measured_by": costs.get("how"),
           "fixed_s": round(fixed, 1), "budget_s": round(plan.budget_min * 60, 1)}
    if plan.steps is None:
        usable = 0.92 * plan.budget_min * 60 - fixed  # 8 % margin for machine noise
        steps = int(usable / max(n_train, 1) / costs["step_s"]) if n_train else 1
        steps = max(5, steps // 5 * 5) if steps >= 5 else max(1, steps)
        est["steps_from_budget"] = steps
        if steps < plan.min_steps:
            est["raised_to_min_steps"] = plan.min_steps
            steps = plan.min_steps
        plan.steps = steps
    est["estimated_total_s"] = round(fixed + n_train * plan.steps * costs["step_s"], 1)
    return est


# ---------------------------------------------------------------------------------------------------------------
# the rows
# ---------------------------------------------------------------------------------------------------------------
def read_metrics(path: Path) -> dict[str, Any]:
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in ("iou_tile_mean", "iou_global", "precision", "recall", "f1", "tiles_scored",
                                  "tiles_both_empty", "threshold", "tile_size")}


def predict_and_score(plan: Plan, city: City, out_dir: Path, *, model: Path | None = None,
                      kde_kernel: int | None = None, threshold: float = 0.5) -> tuple[dict[str, Any], float]:
    """`predict` then `evaluate` in one chained process on a test city; (metrics, wall seconds)."""
    prob = out_dir / f"prob_{city.name}.tif"
    metrics = out_dir / f"metrics_{city.name}.json"
    if model is not None:
        pred = ["predict", "--model", model, "--out", prob, "--tile-size", plan.tile_size, "--overlap", 0,
                "--batch-size", plan.batch_size, "--device", plan.device, "--overwrite"]
    else:
        pred = ["predict", "--method", "kde", "--kernel-size", kde_kernel, "--out", prob, "--overwrite"]
    dt, _ = roadmap(plan, "-w", city.workdir, *pred, "evaluate", "--truth", city.labels, "--pred", prob,
                    "--threshold", threshold, "--tile-size", plan.eval_tile, "--metrics-out", metrics, "--overwrite")
    return read_metrics(metrics), dt


def tile_iou_by_level(band: np.ndarray, valid: np.ndarray, truth: np.ndarray, tile: int) -> np.ndarray:
    """Per-tile mean IoU of `band >= v` for every uint8 level v = 0..255 at once (as `roadmap evaluate` scores a
    tile: valid pixels only; tiles where truth and prediction are both empty left out), from per-tile histograms."""
    h, w = band.shape
    sums = np.zeros(256)
    counts = np.zeros(256)
    for r0 in range(0, h, tile):
        for c0 in range(0, w, tile):
            b = band[r0:r0 + tile, c0:c0 + tile].ravel()
            v = valid[r0:r0 + tile, c0:c0 + tile].ravel()
            t = truth[r0:r0 + tile, c0:c0 + tile].ravel()
            ht = np.bincount(b[v & t], minlength=256).astype(np.float64)
            hn = np.bincount(b[v & ~t], minlength=256).astype(np.float64)
            tp = ht[::-1].cumsum()[::-1]  # truth pixels with band >= level
            fp = hn[::-1].cumsum()[::-1]
            fn = ht.sum() - tp
            union = tp + fp + fn
            ok = union > 0
            sums[ok] += tp[ok] / union[ok]
            counts[ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def kde_sweep(plan: Plan, train: City, work: Path) -> dict[str, Any]:
    """Best KDE kernel size and threshold by per-tile mean IoU on the training city (the paper picked the best).

    Every threshold the uint8 raster can express is tried (level v: probability >= (v - 0.5) / 255)."""
    import rasterio

    folder = work / "kde"
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(train.labels) as ds:
        truth = ds.read(1) > 0
    best: dict[str, Any] = {"iou_tile_mean": -1.0}
    table = []
    for k in plan.kde_kernels:
        prob = folder / f"train_kde_k{k}.tif"
        roadmap(plan, "-w", train.workdir, "predict", "--method", "kde", "--kernel-size", k, "--out", prob,
                "--overwrite")
        with rasterio.open(prob) as ds:
            band = ds.read(1)
            valid = ds.read_masks(1) > 0
        if band.shape != truth.shape:
            raise StageError(f"{prob}: shape {band.shape} differs from {train.labels} {truth.shape}")
        ious = tile_iou_by_level(band, valid, truth, plan.eval_tile)
        ious[:2] = np.nan  # level 0 is nodata, level 1 everything valid
        lv = int(np.nanargmax(ious))
        table.append({"kernel": k, "best_level": lv, "iou_tile_mean": float(ious[lv])})
        if ious[lv] > best["iou_tile_mean"]:
            best = {"kernel": k, "threshold": round((lv - 0.5) / 255.0, 5), "level": lv,
                    "iou_tile_mean": float(ious[lv])}
    best["swept"] = {"kernels": plan.kde_kernels, "thresholds": "every uint8 level 2..255"}
    (folder / "sweep.json").write_text(json.dumps({"best": best, "table": table}, indent=1))
    return best


def _train(plan: Plan, row: Row, seed: int, train: City, d: Path, with_loss: bool = False) -> tuple:
    """`roadmap train` of one row into folder d: (wall s, loop s from train_log.csv[, final train loss])."""
    d.mkdir(parents=True, exist_ok=True)
    opts: list[Any] = []
    for k, v in (row.train or {}).items():
        opts += [f"--{k}", v]
    wall, _ = roadmap(plan, "-w", d, "train", "--data-workdir", train.workdir, "--labels", train.labels,
                      "--model", plan.model, "--encoder-depth", plan.encoder_depth, *opts,
                      "--tile-size", plan.tile_size, "--batch-size", plan.batch_size, "--steps", plan.steps,
                      "--samples-per-epoch", plan.steps * plan.batch_size, "--val-fraction", 0,
                      "--lr", plan.lr, "--schedule", plan.schedule, "--device", plan.device, "--seed", seed,
                      "--overwrite")
    (d / "last.pt").unlink(missing_ok=True)  # resume state: not needed here, and ~3x the model's size
    loop_s, loss = None, None
    with (d / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    if rows:
        loop_s = float(rows[-1]["seconds"]) if rows[-1].get("seconds") else None
        loss = float(rows[-1]["train_loss"]) if rows[-1].get("train_loss") else None
    return (wall, loop_s, loss) if with_loss else (wall, loop_s)


def train_one(plan: Plan, row: Row, seed: int, train: City, tests: list[City], work: Path) -> dict[str, Any]:
    """Train one row with one seed, score it on every test city; reuse a finished result with the same plan."""
    d = work / "models" / f"{row.key.replace('+', 'plus_')}_s{seed}"
    result_path = d / "result.json"
    fp = plan.fingerprint(row, seed)
    if result_path.exists():
        old = json.loads(result_path.read_text())
        if old.get("fingerprint") == fp:
            old["reused"] = True
            return old
    wall, loop_s, loss = _train(plan, row, seed, train, d, with_loss=True)
    res: dict[str, Any] = {"row": row.key, "seed": seed, "fingerprint": fp, "train_wall_s": round(wall, 2),
                           "train_loop_s": loop_s, "final_train_loss": loss, "steps": plan.steps}
    for city in tests:
        m, dt = predict_and_score(plan, city, d, model=d / "model.pt")
        res[city.name] = m
        res[f"{city.name}_predict_s"] = round(dt, 2)
    if not plan.keep_models:
        (d / "model.pt").unlink(missing_ok=True)
    result_path.write_text(json.dumps(res, indent=1))
    return res


# ---------------------------------------------------------------------------------------------------------------
# statistics and reports
# ---------------------------------------------------------------------------------------------------------------
def stats(values: list[float | None]) -> dict[str, Any]:
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None, "min": min(v),
            "max": max(v), "n": len(v)}


def rel_drop(new: float | None, same: float | None) -> float | None:
    if new is None or not same:
        return None
    return (new - same) / same


def summarise(plan: Plan, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in plan.rows:
        rs = results.get(key, [])
        out[key] = {
            "label": ROW_BY_KEY[key].label,
            "seeds": [r["seed"] for r in rs],
            "same_tile": stats([r["same"]["iou_tile_mean"] for r in rs]),
            "same_global": stats([r["same"]["iou_global"] for r in rs]),
            "same_precision": stats([r["same"]["precision"] for r in rs]),
            "same_recall": stats([r["same"]["recall"] for r in rs]),
            "new_tile": stats([r["new"]["iou_tile_mean"] for r in rs]),
            "new_global": stats([r["new"]["iou_global"] for r in rs]),
            "drop_tile": stats([rel_drop(r["new"]["iou_tile_mean"], r["same"]["iou_tile_mean"]) for r in rs]),
            "train_s": stats([r.get("train_loop_s") for r in rs]),
            "train_wall_s": stats([r.get("train_wall_s") for r in rs]),
        }
    return out


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _ms(s: dict[str, Any], digits: int = 1) -> str:
    """'mean ± sd' in percent."""
    if s["mean"] is None:
        return "n/a"
    return _pct(s["mean"], digits) + ("" if s["sd"] is None else f" ± {_pct(s['sd'], digits)}")


def _signed(s: dict[str, Any]) -> str:
    """'+x.x ± y.y %' for a relative change."""
    if s["mean"] is None:
        return "n/a"
    return f"{100 * s['mean']:+.1f}" + ("" if s["sd"] is None else f" ± {_pct(s['sd'])}") + " %"


def _range(s: dict[str, Any]) -> str:
    if s["mean"] is None or s["n"] < 2:
        return "-"
    return f"{_pct(s['min'])}–{_pct(s['max'])}"


def _per_seed(results: dict[str, list[dict[str, Any]]], a: str, b: str, metric: Any) -> tuple[int, int]:
    """(seeds where row b scores higher than row a, seeds compared); KDE (one value) pairs with every seed."""
    ra = {r["seed"]: metric(r) for r in results.get(a, [])}
    rb = {r["seed"]: metric(r) for r in results.get(b, [])}
    if a == "kde" and ra:
        ra = {s: next(iter(ra.values())) for s in rb}
    if b == "kde" and rb:
        rb = {s: next(iter(rb.values())) for s in ra}
    common = [s for s in ra if s in rb and ra[s] is not None and rb[s] is not None]
    return sum(1 for s in common if rb[s] > ra[s]), len(common)


def compare_paragraph(plan: Plan, summary: dict[str, Any], results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each ordering the paper reports, checked against this run's means and seed by seed (no explanations)."""
    def iou(r: dict[str, Any]) -> float | None:
        return r["same"]["iou_tile_mean"]

    def drop(r: dict[str, Any]) -> float | None:
        return rel_drop(r["new"]["iou_tile_mean"], r["same"]["iou_tile_mean"])

    checks = [
        ("kde", "gps", iou, "Table 2: a network on GPS alone beats KDE (34.06 → 48.46)"),
        ("gps", "image", iou, "Table 2: image alone beats GPS alone (48.46 → 54.42)"),
        ("image", "image+gps", iou, "Tables 2-3: adding GPS to the image helps (54.42 → 56.96)"),
        ("image+gps", "+1d", iou, "Table 3: the 1D decoder helps (56.96 → 57.96)"),
        ("+1d", "+augment", iou, "Table 3: GPS augmentation helps (57.96 → 58.55)"),
        ("+augment", "+interval", iou, "Table 3: the interval channel helps (58.55 → 59.18)"),
        ("image", "+interval", iou, "Table 3: full model over image only (+4.76 points)"),
        ("image", "image+gps", drop, "Table 4: image + GPS loses less in the new city than image only "
                                     "(-24.9 % vs -31.6 %)"),
        ("+1d", "+augment", drop, "Table 4: augmentation shrinks the new-city loss (-24.9 % → -18.9 %; here "
                                  "+1D decoder vs + augmentation, which differ only in augmentation)"),
        ("image", "gps", drop, "Table 4: GPS alone loses less in the new city than image only (-4.6 % vs "
                               "-31.6 %)"),
    ]
    lines = []
    metric_name = {iou: "same-city IoU", drop: "relative drop"}
    for a, b, metric, text in checks:
        if a not in plan.rows or b not in plan.rows or not results.get(a) or not results.get(b):
            continue
        key = "same_tile" if metric is iou else "drop_tile"
        ma, mb = summary[a][key]["mean"], summary[b][key]["mean"]
        if ma is None or mb is None:
            continue
        wins, n = _per_seed(results, a, b, metric)
        if mb > ma:  # higher on average: a finding only when every seed agrees
            verdict = "holds" if wins == n else "on average only, not in every seed (within the spread)"
        else:
            verdict = "**tie**" if mb == ma else "**does not hold**"
        unit = "points" if metric is iou else "points of relative drop"
        lines.append(f"- {verdict}: {text}. Here {ROW_BY_KEY[a].label} "
                     f"{_pct(ma)} → {ROW_BY_KEY[b].label} {_pct(mb)} ({metric_name[metric]}, "
                     f"{100 * (mb - ma):+.1f} {unit}; higher in {wins} of {n} seeds).")
    return lines


def degenerate_notes(plan: Plan, summary: dict[str, Any]) -> list[str]:
    """Rows whose same-city prediction is (nearly) all road or all background: their IoU is no learned result."""
    out = []
    for key in plan.rows:
        p, r = summary[key]["same_precision"]["mean"], summary[key]["same_recall"]["mean"]
        if r is not None and r >= 0.98 and (p or 0.0) < 0.5:
            out.append(f"- note: {ROW_BY_KEY[key].label} marks nearly every pixel road (recall {_pct(r)} %, precision "
                       f"{_pct(p)} %): its IoU is about the road share of the test city.")
        elif r is not None and r <= 0.02:
            out.append(f"- note: {ROW_BY_KEY[key].label} finds almost no road (recall {_pct(r)} %).")
    return out


def render_section(plan: Plan, meta: dict[str, Any], summary: dict[str, Any],
                   results: dict[str, list[dict[str, Any]]], kde: dict[str, Any] | None, label: str) -> str:
    sd_note = "sample standard deviation over seeds" if len(plan.seeds) > 1 else "one seed: no spread"
    L = [f"<!-- ablation:{label}:begin -->", f"## {label}: {meta['finished_utc']}", ""]
    L.append(f"- command: `{meta['command']}`")
    L.append(f"- machine: {meta['cpu_count']} CPUs ({meta['threads']} torch/BLAS threads per stage), "
             f"{meta['platform']}, Python {meta['python']}, torch {meta['torch']}, device {meta['device_name']}; "
             f"load average at start {meta['load_start']}, at end {meta['load_end']}")
    est_min = plan.estimate.get("estimated_total_s")
    L.append(f"- wall time: {meta['wall_s'] / 60:.1f} min (budget {plan.budget_min:g} min"
             + ("" if est_min is None else f"; estimated before the run {est_min / 60:.1f} min") + ")")
    depth_note = "" if plan.encoder_depth == 34 else f" (encoder depth {plan.encoder_depth}, reduced to fit)"
    L.append(f"- model: `{plan.model}` with ResNet-{plan.encoder_depth} encoder{depth_note}, random init (no "
             f"ImageNet weights), BCE + soft Dice, Adam lr {plan.lr:g}, {plan.schedule} schedule; "
             f"{plan.steps} steps × batch {plan.batch_size} of {plan.tile_size}² tiles per training "
             f"({plan.steps * plan.batch_size} tiles), image flips/rotations and colour jitter in every row, "
             f"no validation split (the held-out city is the test)")
    e = plan.estimate
    how = "steps per training from the budget" if "steps_from_budget" in e else "steps fixed by option"
    if "raised_to_min_steps" in e:
        how = (f"the budget allowed {e['steps_from_budget']} steps per training, raised to --min-steps "
               f"{e['raised_to_min_steps']}: **the run exceeds its budget**")
    if "step_s" in e:
        L.append(f"- timing measured before the run ({e.get('measured_by')}): {e.get('step_s')} s per step, "
                 f"{e.get('train_fixed_s')} s per training besides its steps, {e.get('predict_s')} s per "
                 f"predict + evaluate; {how}")
    else:
        L.append(f"- timing: {e.get('measured_by')}")
    L.append(f"- cities (`roadmap synth`, 0.5 m/px): training {plan.train_size}² style `{plan.style_train}` GPS "
             f"profile beijing (seed {plan.data_seed}); same-city test {plan.test_size}² style "
             f"`{plan.style_train}` beijing (seed {plan.data_seed + 1}); new-city test {plan.test_size}² style "
             f"`{plan.style_new}` shanghai (seed {plan.data_seed + 2}); synth GPS {plan.gps_vehicles or 200} "
             f"vehicles × {plan.gps_hours or 4:g} h per city; "
             f"road share of the pixels: " + ", ".join(f"{k} {_pct(v)} %" for k, v in
                                                      plan.estimate.get("road_share", {}).items()))
    L.append(f"- scoring: `roadmap predict` in {plan.tile_size}² windows without overlap (each window alone, like "
             f"the paper's separate test images), no TTA, threshold 0.5; `roadmap evaluate` per-tile mean IoU over "
             f"{plan.eval_tile}² tiles (tiles empty in truth and prediction left out) and global IoU")
    if kde:
        L.append(f"- KDE: kernel {kde['kernel']} px (sigma = kernel/3, log scale), threshold {kde['threshold']:g}, "
                 f"the best per-tile IoU on the training city ({_pct(kde['iou_tile_mean'])} there) over kernels "
                 f"{kde['swept']['kernels']} and every threshold of the uint8 raster; deterministic, so one value "
                 f"per row")
    L.append(f"- seeds {plan.seeds} (`roadmap train --seed`); ± is the {sd_note}; IoU in %")
    if meta.get("failures"):
        L.append(f"- **failures**: {'; '.join(meta['failures'])}")
    L += ["", "### Same-city test (Tables 2-3)", "",
          "| row | per-tile IoU | min–max | global IoU | precision / recall | train s (loop) | paper IoU | paper |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in plan.rows:
        s, r = summary[key], ROW_BY_KEY[key]
        ts = "-" if s["train_s"]["mean"] is None else f"{s['train_s']['mean']:.0f}"
        pr = f"{_pct(s['same_precision']['mean'])} / {_pct(s['same_recall']['mean'])}"
        L.append(f"| {r.label} | {_ms(s['same_tile'])} | {_range(s['same_tile'])} | {_ms(s['same_global'])} | {pr} "
                 f"| {ts} "
                 f"| {r.paper_iou if r.paper_iou is not None else '-'} | {r.paper_note} |")
    L += ["", f"### New-city test (Table 4): trained on style `{plan.style_train}`/beijing, tested on style "
              f"`{plan.style_new}`/shanghai", "",
          "| row | same-city IoU | new-city IoU | new-city global IoU | relative drop | paper drop |",
          "| --- | --- | --- | --- | --- | --- |"]
    for key in plan.rows:
        s, r = summary[key], ROW_BY_KEY[key]
        L.append(f"| {r.label} | {_ms(s['same_tile'])} | {_ms(s['new_tile'])} | {_ms(s['new_global'])} | "
                 f"{_signed(s['drop_tile'])} | {'-' if r.paper_drop is None else f'{r.paper_drop:+.1f} %'} |")
    L += ["", "The relative drop is (new − same) / same per seed, then mean ± sd. Paper: the Beijing-trained rows "
              "of Table 4 (its image + GPS rows do not say which decoder and channels they used).", "",
          "### Against the paper's ordering (the expectation, not the result)", ""]
    L += compare_paragraph(plan, summary, results) or ["- nothing to compare (rows missing)"]
    L += degenerate_notes(plan, summary)
    L += ["", "Read with the spread: a difference smaller than the seed-to-seed spread, or holding in fewer than "
              "all seeds, is not a finding at this scale. No explanation for a mismatch was tested here.",
          f"<!-- ablation:{label}:end -->"]
    return "\n".join(L) + "\n"


HEADER = """# Ablation: the paper's experiments at reduced scale on synthetic cities

Written by `bench/ablation.py` (`make bench-ablation`); one section per device the run was made on. Each
section says exactly what ran. The paper's Tables 2-4 (Sun et al., CVPR 2019: Beijing and Shanghai, 1024² images,
ImageNet-pretrained D-LinkNet34) are the expectation listed beside the results, not a target.
"""


def write_markdown(path: Path, label: str, section: str) -> None:
    """Replace this label's section in `path` (others kept), atomically."""
    from roadmap_cli.workdir import atomic_write_text

    old = path.read_text() if path.exists() else ""
    begin, end = f"<!-- ablation:{label}:begin -->", f"<!-- ablation:{label}:end -->"
    if begin in old and end in old:
        i, j = old.index(begin), old.index(end) + len(end)
        new = old[:i] + section.rstrip("\n") + old[j:]
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else HEADER + "\n") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, new if new.endswith("\n") else new + "\n")


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[ablation {time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render_from is not None:
        return render_from(a)
    plan = make_plan(a)
    import torch

    meta: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
                            else "bench/ablation.py " + " ".join(argv),
                            "cpu_count": os.cpu_count(), "threads": plan.threads, "platform": platform.platform(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "load_start": _load(), "failures": []}
    tmp = None
    if a.work is None:
        tmp = tempfile.mkdtemp(prefix="roadmap-ablation-")
        work = Path(tmp)
    else:
        work = a.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        cities, city_s = make_cities(plan, work)
        calibrate = a.calibrate
        if calibrate == "auto":
            calibrate = "real" if plan.steps is None else ("none" if plan.quick else "micro")
        if calibrate == "none" and plan.steps is None:
            raise SystemExit("--calibrate none needs --steps")
        log(f"timing ({calibrate}) ...")
        if calibrate == "none":
            dev = plan.device if plan.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            costs = {"device": dev}
            plan.estimate.update(measured_by="not measured (--steps fixed)")
        else:
            costs = real_costs(plan, cities, work) if calibrate == "real" else micro_costs(plan)
            plan.estimate.update(budget_steps(plan, costs, time.perf_counter() - T0))
        meta["device_name"] = costs["device"]
        if costs["device"].startswith("cuda"):
            meta["device_name"] = f"{costs['device']} ({torch.cuda.get_device_name(torch.device(costs['device']))})"
        log("plan: " + json.dumps(vars(plan)))
        est = plan.estimate
        if "estimated_total_s" in est:
            log(f"budget: {est['trainings']} trainings × {plan.steps} steps × {est['step_s']} s/step + "
                f"{est['fixed_s']:.0f} s fixed (cities, start-ups, {est['predictions']} predictions, KDE sweep) ≈ "
                f"{est['estimated_total_s'] / 60:.1f} min (budget {plan.budget_min:g} min)")
            if "raised_to_min_steps" in est:
                log(f"WARNING: the budget allows only {est['steps_from_budget']} steps per training on this machine "
                    f"now (busy or slow?); running --min-steps {plan.min_steps}")
            if est["estimated_total_s"] > plan.budget_min * 60:
                log("WARNING: the estimate exceeds the budget")

        if a.dry_run:
            print(json.dumps({"bench": "ablation", "dry_run": True, "plan": vars(plan)}))
            return 0

        results: dict[str, list[dict[str, Any]]] = {}
        tests = [cities["same"], cities["new"]]
        kde = None
        if "kde" in plan.rows:
            t0 = time.perf_counter()
            kde = kde_sweep(plan, cities["train"], work)
            res = {"row": "kde", "seed": None, "kernel": kde["kernel"], "threshold": kde["threshold"]}
            for c in tests:
                res[c.name], _ = predict_and_score(plan, c, work / "kde", kde_kernel=kde["kernel"],
                                                   threshold=kde["threshold"])
            results["kde"] = [res]
            log(f"KDE: kernel {kde['kernel']}, threshold {kde['threshold']} (train-city IoU "
                f"{_pct(kde['iou_tile_mean'])}); same-city {_pct(res['same']['iou_tile_mean'])}, new-city "
                f"{_pct(res['new']['iou_tile_mean'])} [{time.perf_counter() - t0:.0f} s]")
        todo = [(seed, row) for seed in plan.seeds for row in plan.trained_rows]  # seed-major: early rows complete
        for i, (seed, row) in enumerate(todo):
            t0 = time.perf_counter()
            try:
                res = train_one(plan, row, seed, cities["train"], tests, work)
            except StageError as exc:
                meta["failures"].append(f"{row.key} seed {seed}: {exc}")
                log(f"FAILED {row.key} seed {seed}: {exc}")
                continue
            results.setdefault(row.key, []).append(res)
            left = (time.perf_counter() - t0) * (len(todo) - i - 1)
            log(f"[{i + 1}/{len(todo)}] {row.label} seed {seed}: same-city IoU {_pct(res['same']['iou_tile_mean'])}"
                f", new-city {_pct(res['new']['iou_tile_mean'])}, train {res.get('train_loop_s')} s"
                f"{' (reused)' if res.get('reused') else ''}; about {left / 60:.0f} min left")
        summary = summarise(plan, results)
        meta["wall_s"] = round(time.perf_counter() - T0, 1)
        meta["load_end"] = _load()
        meta["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        meta["city_s"] = city_s
        label = a.label or (costs["device"].split(":")[0] + ("-quick" if plan.quick else ""))
        write_markdown(a.out, label, render_section(plan, meta, summary, results, kde, label))
        log(f"wrote {a.out} (section {label})")
        if a.json:
            from roadmap_cli.workdir import atomic_write_json

            atomic_write_json(a.json, {"plan": vars(plan), "meta": meta, "summary": summary, "results": results,
                                       "kde": kde})
        full, img = summary.get("+interval", {}).get("same_tile", {}), summary.get("image", {}).get("same_tile", {})
        ratio = (full["mean"] / img["mean"]) if full.get("mean") and img.get("mean") else None

        def r4(x: Any) -> Any:
            return round(x, 4) if isinstance(x, float) else x

        line = {
            "bench": "ablation", "ratio": r4(ratio), "ratio_is": "full model / image only, per-tile mean IoU "
            "(paper Table 3: 1.087)", "baseline": "image only",
            "rows": {k: {m: {kk: r4(vv) for kk, vv in v[m].items()} for m in ("same_tile", "same_global",
                                                                              "new_tile", "drop_tile")}
                     for k, v in summary.items()},
            "steps": plan.steps, "seeds": plan.seeds, "model": plan.model, "encoder_depth": plan.encoder_depth,
            "tile_size": plan.tile_size, "batch_size": plan.batch_size, "train_size": plan.train_size,
            "test_size": plan.test_size, "device": meta["device_name"], "step_s": plan.estimate.get("step_s"),
            "estimated_s": plan.estimate.get("estimated_total_s"), "wall_s": meta["wall_s"],
            "failures": len(meta["failures"]), "out": str(a.out),
        }
        print(json.dumps(line))
        return 1 if meta["failures"] and not any(results.get(r.key) for r in plan.trained_rows) else 0
    except StageError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
