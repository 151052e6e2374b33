"""GPU check: training and inference throughput of D-LinkNet34 + 1D decoder (image+gps, 5 channels) and whether
the CPU data pipeline keeps up. Runs on a bare GPU box that has torch, numpy, scipy, scikit-image, pandas and
pyarrow but maybe not rasterio / pyproj / geopandas / osmium / click: installs nothing and imports only
`models/`, `roadmap_cli/render.py`, `roadmap_cli/augment.py` and `roadmap_cli/inputs.py` (a stand-in `click`
module is put in place when click is missing, because roadmap_cli.errors subclasses click.ClickException).

Measures, on synthetic tensors / synthetic GPS:

- training: images/s at SIZE² with bf16 autocast + channels-last, batch BATCH, Adam, BCE + soft Dice; the same
  for the 3x3 transpose-convolution decoder as the baseline (`ratio` = 1d images/s / transpose images/s);
- inference: images/s at batch BATCH with TTA 1 and 8 (flips and rotations, averaged on the GPU); prediction
  throughput in km²/min at 0.5 m per pixel (a 1024² tile = 0.262 km²), raw and with predict's default overlap;
- peak GPU memory per phase;
- the CPU data pipeline: a torch DataLoader with WORKERS processes making SIZE² samples the way training does
  (GPS window query, augmentation, rendering, flips/rotations, colour jitter, input stacking; imagery and labels
  are in-memory arrays here, no disk reads) vs the GPU step time: `pipeline_keeps_up` when it delivers at least
  the training images/s.

Environment (all optional): OUT (results folder, default ./gpu_out), GPU_CHECK_SIZE (1024), GPU_CHECK_BATCH (8),
GPU_CHECK_STEPS (300 timed train steps; each timed loop also stops after GPU_CHECK_MAX_TRAIN_S, 150 s),
GPU_CHECK_WARMUP (15), GPU_CHECK_BASELINE_STEPS (60; 0 skips the
transpose-decoder baseline), GPU_CHECK_INFER_BATCHES (20), GPU_CHECK_WORKERS (min(16, CPUs)),
GPU_CHECK_PIPE_BATCHES (12), GPU_CHECK_GPS_PER_MPX (20000 GPS samples per 1024² px), GPU_CHECK_DEVICE (cuda when
available, else cpu). Writes $OUT/gpu_check.json and $OUT/gpu_check.log and prints one JSON line.

    bash bench/gpu_check.sh                                   # on the GPU machine, from the repository root
    GPU_CHECK_SIZE=128 GPU_CHECK_STEPS=2 bash bench/gpu_check.sh   # CPU smoke run
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


SIZE = _env_int("GPU_CHECK_SIZE", 1024)
BATCH = _env_int("GPU_CHECK_BATCH", 8)
STEPS = _env_int("GPU_CHECK_STEPS", 300)
WARMUP = _env_int("GPU_CHECK_WARMUP", 15)
BASELINE_STEPS = _env_int("GPU_CHECK_BASELINE_STEPS", 60)
INFER_BATCHES = _env_int("GPU_CHECK_INFER_BATCHES", 20)
WORKERS = _env_int("GPU_CHECK_WORKERS", min(16, os.cpu_count() or 1))
PIPE_BATCHES = _env_int("GPU_CHECK_PIPE_BATCHES", 12)
GPS_PER_MPX = _env_int("GPU_CHECK_GPS_PER_MPX", 20000)
MAX_TRAIN_S = float(os.environ.get("GPU_CHECK_MAX_TRAIN_S") or 150)  # cap on each timed training loop
PIXEL_M = 0.5
OUT = Path(os.environ.get("OUT") or "./gpu_out")
OUT.mkdir(parents=True, exist_ok=True)
LOG = open(OUT / "gpu_check.log", "a", buffering=1)  # noqa: SIM115 - open for the whole run


def say(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    LOG.write(line + "\n")


def _ensure_click() -> bool:
    """Put a minimal `click` in place when it is not installed (roadmap_cli.errors needs ClickException)."""
    try:
        import click  # noqa: F401

        return True
    except ImportError:
        shim = types.ModuleType("click")

        class ClickException(Exception):
            exit_code = 1

            def __init__(self, message: str) -> None:
                super().__init__(message)
                self.message = message

            def format_message(self) -> str:
                return self.message

        shim.ClickException = ClickException
        shim.echo = lambda msg="", err=False, file=None: print(msg, file=sys.stderr if err else sys.stdout)
        sys.modules["click"] = shim
        return False


HAVE_CLICK = _ensure_click()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import build_model  # noqa: E402
from roadmap_cli.augment import GpsAugment, colour_jitter, geometric_augment  # noqa: E402
from roadmap_cli.inputs import make_input  # noqa: E402
from roadmap_cli.render import RenderParams, render  # noqa: E402

HEAVY = [m for m in ("rasterio", "pyproj", "geopandas", "osmium", "shapely") if m in sys.modules]

try:
    from roadmap_cli.store import SAMPLE_DTYPE  # numpy only (+ roadmap_cli.errors)
except ImportError:  # pragma: no cover - store must stay light, but do not fail the check over it
    SAMPLE_DTYPE = np.dtype([("col", "<f8"), ("row", "<f8"), ("time", "<f8"), ("vehicle", "<i4"),
                             ("interval", "<f4"), ("speed", "<f4"), ("bearing", "<f4")])


# ---- synthetic data -----------------------------------------------------------------------------------------------
class SynthCity:
    """An in-memory area of (2 x SIZE)² px: RGB, road labels on a grid, GPS samples along the roads."""

    def __init__(self, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.size = size
        self.area = 2 * size
        a = self.area
        spacing = max(32, size // 6)
        self.lines = np.arange(spacing // 2, a, spacing)
        road = np.zeros((a, a), dtype=np.uint8)
        w = max(1, size // 200)
        for v in self.lines:
            road[max(0, v - w):v + w + 1, :] = 1
            road[:, max(0, v - w):v + w + 1] = 1
        self.label = road
        self.rgb = rng.integers(30, 120, (3, a, a), dtype=np.uint8)
        self.rgb[:, road > 0] = 180
        n = int(GPS_PER_MPX * (a / 1024.0) ** 2)
        s = np.zeros(n, dtype=SAMPLE_DTYPE)
        horiz = rng.random(n) < 0.5
        at = self.lines[rng.integers(len(self.lines), size=n)] + 0.5 + rng.normal(0, 2.0, n)
        along = rng.uniform(0, a, n)
        s["col"] = np.clip(np.where(horiz, along, at), 0, a - 1e-3)
        s["row"] = np.clip(np.where(horiz, at, along), 0, a - 1e-3)
        s["time"] = 1.6e9 + np.arange(n)
        s["vehicle"] = rng.integers(0, 1000, n)
        s["interval"] = rng.choice(np.array([10.0, 60.0, 180.0], dtype=np.float32), n)
        s["speed"] = rng.uniform(0, 20, n)
        s["bearing"] = np.where(horiz, 90.0, 0.0)
        # sort by row so a window query is a slice + a column filter (like reading the store's tiles)
        self.samples = s[np.argsort(s["row"], kind="stable")]
        self.params = RenderParams()
        self.aug = GpsAugment.from_spec("subsample,subres,perturb,omit")

    def query(self, col: int, row: int, w: int, h: int) -> np.ndarray:
        r = self.samples["row"]
        lo, hi = np.searchsorted(r, row), np.searchsorted(r, row + h)
        part = self.samples[lo:hi]
        c = part["col"]
        return part[(c >= col) & (c < col + w)]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One training sample, made the way roadmap_cli.dataset.TileMaker does (minus the disk reads)."""
        rng = np.random.default_rng([0, index])
        t = self.size
        col = int(rng.integers(0, self.area - t + 1))
        row = int(rng.integers(0, self.area - t + 1))
        m = int(self.params.margin)
        s = self.query(col - m, row - m, t + 2 * m, t + 2 * m)
        s = self.aug.apply(s, col, row, t, t, rng)
        gps = render(s, col, row, t, t, self.params)
        rgb = self.rgb[:, row:row + t, col:col + t].copy()
        label = self.label[row:row + t, col:col + t].copy()
        valid = np.ones((t, t), dtype=bool)
        rgb, gps, label, valid = geometric_augment([rgb, gps, label, valid], rng)
        rgb = colour_jitter(np.ascontiguousarray(rgb), rng)
        x = make_input(rgb, np.ascontiguousarray(gps), "image+gps")
        return (x, np.ascontiguousarray(label, dtype=np.float32)[None],
                np.ascontiguousarray(valid, dtype=np.float32)[None])


class SynthDataset(torch.utils.data.Dataset):
    def __init__(self, city: SynthCity, n: int) -> None:
        self.city, self.n = city, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return tuple(torch.from_numpy(a) for a in self.city.sample(i))


# ---- measurements -----------------------------------------------------------------------------------------------
def loss_fn(logits: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, y, weight=v, reduction="sum") / v.sum().clamp(min=1)
    p = torch.sigmoid(logits) * v
    return bce + 1 - (2 * (p * y).sum() + 1) / (p.sum() + (y * v).sum() + 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_batch(device: torch.device, city: SynthCity) -> tuple[torch.Tensor, ...]:
    xs, ys, vs = zip(*(city.sample(i) for i in range(BATCH)), strict=True)
    x = torch.from_numpy(np.stack(xs)).to(device).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(np.stack(ys)).to(device), torch.from_numpy(np.stack(vs)).to(device)


def time_training(decoder: str, steps: int, batch: tuple[torch.Tensor, ...], device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model("dlinknet34", 5, decoder).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x, y, v = batch
    reset_peak(device)

    def step() -> float:
        with autocast(device):
            logits = model(x)
        loss = loss_fn(logits, y, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(min(WARMUP, max(1, steps))):
        step()
    sync(device)
    t0 = time.perf_counter()
    done = 0
    for i in range(steps):
        loss = step()
        done += 1
        if i % 50 == 49:
            sync(device)
            say(f"  {decoder}: step {i + 1}/{steps}, loss {float(loss.detach()):.4f}")
            if time.perf_counter() - t0 > MAX_TRAIN_S:
                say(f"  {decoder}: stopping after {done} steps (GPU_CHECK_MAX_TRAIN_S={MAX_TRAIN_S:g})")
                break
    sync(device)
    dt = time.perf_counter() - t0
    steps = done
    out = {"decoder": decoder, "steps": steps, "step_ms": round(1000 * dt / steps, 2),
           "images_per_s": round(steps * x.shape[0] / dt, 2), "peak_mem_mib": peak_mib(device),
           "final_loss": round(float(loss.detach()), 4), "params": sum(p.numel() for p in model.parameters())}
    out["model"] = model
    return out


@torch.inference_mode()
def time_inference(model: torch.nn.Module, x: torch.Tensor, tta: int, device: torch.device) -> dict:
    model.eval()
    reset_peak(device)

    def run() -> torch.Tensor:
        with autocast(device):
            if tta == 1:
                return torch.sigmoid(model(x).float())
            acc = torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3], device=device)
            for k in range(4):
                for flip in (False, True):
                    xi = torch.rot90(x, k, dims=(2, 3))
                    if flip:
                        xi = torch.flip(xi, dims=(3,))
                    p = torch.sigmoid(model(xi).float())
                    if flip:
                        p = torch.flip(p, dims=(3,))
                    acc += torch.rot90(p, -k, dims=(2, 3))
            return acc / 8

    for _ in range(2):
        run()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(INFER_BATCHES):
        run()
    sync(device)
    dt = time.perf_counter() - t0
    ips = INFER_BATCHES * x.shape[0] / dt
    tile_km2 = (SIZE * PIXEL_M) ** 2 / 1e6
    overlap = max(64, SIZE // 8) if SIZE > 128 else 0
    eff_km2 = ((SIZE - overlap) * PIXEL_M) ** 2 / 1e6
    return {"tta": tta, "images_per_s": round(ips, 2), "km2_per_min": round(ips * 60 * tile_km2, 2),
            "km2_per_min_with_overlap": round(ips * 60 * eff_km2, 2), "overlap_px": overlap,
            "peak_mem_mib": peak_mib(device)}


def time_pipeline(city: SynthCity, workers: int, device: torch.device) -> dict:
    one = []
    for i in range(6):
        t0 = time.perf_counter()
        city.sample(10_000 + i)
        one.append(time.perf_counter() - t0)
    per_sample_ms = 1000 * statistics.median(one[1:])
    n = (PIPE_BATCHES + 3) * BATCH
    loader = torch.utils.data.DataLoader(SynthDataset(city, n), batch_size=BATCH, num_workers=workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                                         persistent_workers=False)
    it = iter(loader)
    for _ in range(3):  # worker start-up and the first batches
        next(it)
    t0 = time.perf_counter()
    got = 0
    h2d = []
    for x, y, v in it:
        t1 = time.perf_counter()
        x.to(device, non_blocking=True)
        y.to(device, non_blocking=True)
        v.to(device, non_blocking=True)
        sync(device)
        h2d.append(time.perf_counter() - t1)
        got += x.shape[0]
    dt = time.perf_counter() - t0
    return {"workers": workers, "per_sample_ms_one_core": round(per_sample_ms, 2),
            "samples_per_s": round(got / dt, 2), "batches": got // BATCH,
            "h2d_copy_ms_per_batch": round(1000 * statistics.median(h2d), 2) if h2d else None,
            "gps_samples_per_tile": int(GPS_PER_MPX * (SIZE / 1024.0) ** 2)}


def main() -> None:
    t_start = time.perf_counter()
    dev_name = os.environ.get("GPU_CHECK_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res: dict = {
        "bench": "gpu_check", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "size": SIZE, "batch": BATCH,
        "model": "dlinknet34", "inputs": "image+gps (5 channels)", "precision":
            "bf16 autocast, channels-last" if device.type == "cuda" else "fp32 (CPU)",
        "heavy_modules_imported": HEAVY, "click_installed": HAVE_CLICK, "cpu_count": os.cpu_count(),
    }
    say(f"gpu_check: {res['device']}, torch {torch.__version__}, size {SIZE}, batch {BATCH}, steps {STEPS}")
    city = SynthCity(SIZE)

    say(f"data pipeline with {WORKERS} workers ...")
    res["pipeline"] = time_pipeline(city, WORKERS, device)
    say(f"  {res['pipeline']}")

    batch = make_batch(device, city)
    say("training, 1D decoder ...")
    tr = time_training("1d", STEPS, batch, device)
    model = tr.pop("model")
    res["train"] = tr
    say(f"  {tr}")
    if BASELINE_STEPS > 0:
        say("training, 3x3 transpose decoder (baseline) ...")
        base = time_training("transpose", BASELINE_STEPS, batch, device)
        base.pop("model")
        res["train_transpose_baseline"] = base
        res["ratio"] = round(tr["images_per_s"] / base["images_per_s"], 3)
        say(f"  {base}")
    x = batch[0]
    del batch
    res["infer"] = []
    for tta in (1, 8):
        say(f"inference, TTA {tta} ...")
        r = time_inference(model, x, tta, device)
        res["infer"].append(r)
        say(f"  {r}")
    pipe_rate = res["pipeline"]["samples_per_s"]
    res["pipeline_vs_train"] = round(pipe_rate / tr["images_per_s"], 3)
    res["pipeline_keeps_up"] = bool(pipe_rate >= tr["images_per_s"])
    res["gpu_step_ms"] = tr["step_ms"]
    res["pipeline_batch_ms"] = round(1000 * BATCH / pipe_rate, 2) if pipe_rate else None
    res["seconds_total"] = round(time.perf_counter() - t_start, 1)
    (OUT / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
    say(f"wrote {OUT / 'gpu_check.json'} in {res['seconds_total']} s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
