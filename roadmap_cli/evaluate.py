"""`roadmap evaluate`: score a probability or mask raster against truth, tile by tile.

IoU as the paper reports it is the mean over test tiles of per-tile IoU. A tile where truth and prediction are
both empty has no defined IoU; it is left out of the mean and counted under `tiles_both_empty` (counting it as 1
would reward empty countryside, counting it as 0 would punish a correct prediction). Global IoU pools every pixel.
Pixels the prediction marks as nodata are left out of every count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from roadmap_cli.errors import RoadmapError

log = logging.getLogger("roadmap.evaluate")

ERROR_COLOURS = {  # RGB of the error map
    "tn": (0, 0, 0),
    "tp": (255, 255, 255),
    "fp": (230, 60, 50),  # predicted road where there is none
    "fn": (40, 120, 255),  # road missed
    "nodata": (90, 90, 90),
}


def disk(radius: int) -> np.ndarray:
    """A boolean disk structuring element of the given pixel radius."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


@dataclass
class Counts:
    """Pixel counts accumulated over tiles."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    relaxed_tp_pred: int = 0  # predicted road pixels within slack of truth
    relaxed_tp_truth: int = 0  # truth road pixels within slack of prediction
    tile_ious: list[float] = field(default_factory=list)
    tiles_both_empty: int = 0

    def add_tile(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, slack: int,
                 pred_wide: np.ndarray | None = None, truth_wide: np.ndarray | None = None,
                 core: tuple[slice, slice] | None = None) -> None:
        """Add one tile. `*_wide` are the same masks with `slack` pixels of context around `core`."""
        tp = int(np.count_nonzero(pred & truth & valid))
        fp = int(np.count_nonzero(pred & ~truth & valid))
        fn = int(np.count_nonzero(~pred & truth & valid))
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += int(np.count_nonzero(valid)) - tp - fp - fn
        if tp + fp + fn == 0:
            self.tiles_both_empty += 1
        else:
            self.tile_ious.append(tp / (tp + fp + fn))
        if slack > 0:
            pw = pred if pred_wide is None else pred_wide
            tw = truth if truth_wide is None else truth_wide
            se = disk(slack)
            near_truth = ndimage.binary_dilation(tw, structure=se)
            near_pred = ndimage.binary_dilation(pw, structure=se)
            if core is not None:
                near_truth, near_pred = near_truth[core], near_pred[core]
            self.relaxed_tp_pred += int(np.count_nonzero(pred & near_truth & valid))
            self.relaxed_tp_truth += int(np.count_nonzero(truth & near_pred & valid))
        else:
            self.relaxed_tp_pred += tp
            self.relaxed_tp_truth += tp

    def metrics(self, slack: int) -> dict[str, Any]:
        """The pixel metrics as plain JSON-able numbers (None where undefined)."""

        def ratio(a: float, b: float) -> float | None:
            return float(a / b) if b else None

        precision = ratio(self.tp, self.tp + self.fp)
        recall = ratio(self.tp, self.tp + self.fn)
        f1 = (2 * precision * recall / (precision + recall)) if precision and recall else (
            0.0 if precision is not None and recall is not None else None)
        rp = ratio(self.relaxed_tp_pred, self.tp + self.fp)
        rr = ratio(self.relaxed_tp_truth, self.tp + self.fn)
        rf1 = (2 * rp * rr / (rp + rr)) if rp and rr else (0.0 if rp is not None and rr is not None else None)
        return {
            "iou_tile_mean": float(np.mean(self.tile_ious)) if self.tile_ious else None,
            "iou_global": ratio(self.tp, self.tp + self.fp + self.fn),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "relaxed_precision": rp,
            "relaxed_recall": rr,
            "relaxed_f1": rf1,
            "slack_px": int(slack),
            "tiles_scored": len(self.tile_ious),
            "tiles_both_empty": self.tiles_both_empty,
            "pixels": {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn},
        }


def score_arrays(pred: np.ndarray, truth: np.ndarray, tile_size: int, slack: int = 0,
                 valid: np.ndarray | None = None) -> dict[str, Any]:
    """Pixel metrics of two in-memory boolean masks (same shape), tiled as evaluate does."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    valid = np.ones(pred.shape, dtype=bool) if valid is None else valid
    counts = Counts()
    h, w = pred.shape
    for r0 in range(0, h, tile_size):
        for c0 in range(0, w, tile_size):
            core = (slice(r0, min(h, r0 + tile_size)), slice(c0, min(w, c0 + tile_size)))
            wr0, wc0 = max(0, r0 - slack), max(0, c0 - slack)
            wide = (slice(wr0, min(h, r0 + tile_size + slack)), slice(wc0, min(w, c0 + tile_size + slack)))
            inner = (slice(r0 - wr0, r0 - wr0 + core[0].stop - r0), slice(c0 - wc0, c0 - wc0 + core[1].stop - c0))
            counts.add_tile(pred[core], truth[core], valid[core], slack, pred[wide], truth[wide], inner)
    return counts.metrics(slack)


def _read_pred_window(ds, col_off: int, row_off: int, w: int, h: int, threshold: float) -> tuple[np.ndarray, ...]:
    from rasterio.windows import Window

    win = Window(col_off, row_off, w, h)
    band = ds.read(1, window=win, boundless=True, fill_value=0)
    mask = ds.read_masks(1, window=win, boundless=True) > 0
    if np.issubdtype(band.dtype, np.floating):
        prob = band.astype(np.float32)
        if np.nanmax(prob, initial=0.0) > 1.0:
            prob = prob / 255.0
    else:
        prob = band.astype(np.float32) / (255.0 if band.dtype == np.uint8 or band.max(initial=0) > 1 else 1.0)
    return prob >= threshold, mask


def evaluate_raster(pred_path: Path, truth: Any, tile_size: int, threshold: float, slack: int,
                    error_map_path: Path | None = None, max_map_side: int = 2048) -> dict[str, Any]:
    """Score a prediction raster against a truth LabelSource (anything with `.read(c, r, w, h)`) on its grid."""
    import rasterio

    from roadmap_cli.progress import progress

    try:
        ds = rasterio.open(pred_path)
    except rasterio.errors.RasterioIOError as exc:
        raise RoadmapError(f"--pred {pred_path}: not a readable raster ({str(exc).splitlines()[0]})") from exc
    counts = Counts()
    step = max(1, int(np.ceil(max(ds.width, ds.height) / max_map_side)))
    err_map = None
    if error_map_path is not None:
        err_map = np.zeros((-(-ds.height // step), -(-ds.width // step), 3), dtype=np.uint8)
    tiles = [(r, c) for r in range(0, ds.height, tile_size) for c in range(0, ds.width, tile_size)]
    with ds:
        for r0, c0 in progress(tiles, desc="evaluate", unit="tile"):
            w, h = min(tile_size, ds.width - c0), min(tile_size, ds.height - r0)
            wc0, wr0 = c0 - slack, r0 - slack
            pred_w, valid_w = _read_pred_window(ds, wc0, wr0, w + 2 * slack, h + 2 * slack, threshold)
            truth_w = truth.read(wc0, wr0, w + 2 * slack, h + 2 * slack).astype(bool)
            # outside the raster counts as neither road nor valid
            core = (slice(slack, slack + h), slice(slack, slack + w))
            pred_w &= valid_w
            pred, tru, valid = pred_w[core], truth_w[core], valid_w[core]
            counts.add_tile(pred, tru, valid, slack, pred_w, truth_w & valid_w, core)
            if err_map is not None:
                cls = np.zeros(pred.shape, dtype=np.uint8)  # 0 tn
                cls[pred & tru] = 1
                cls[pred & ~tru] = 2
                cls[~pred & tru] = 3
                cls[~valid] = 4
                # keep the start offset aligned to the decimation step so tiles join without gaps
                sub = cls[(-r0) % step :: step, (-c0) % step :: step]
                palette = np.array([ERROR_COLOURS[k] for k in ("tn", "tp", "fp", "fn", "nodata")], dtype=np.uint8)
                rr, cc = -(-r0 // step), -(-c0 // step)
                err_map[rr : rr + sub.shape[0], cc : cc + sub.shape[1]] = palette[sub]
    result = counts.metrics(slack)
    result["tile_size"] = int(tile_size)
    result["threshold"] = float(threshold)
    if err_map is not None and error_map_path is not None:
        _write_png(error_map_path, err_map)
        result["error_map"] = str(error_map_path)
        result["error_map_step"] = step
    return result


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    from roadmap_cli.workdir import atomic_output

    with atomic_output(path, overwrite=True, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def format_table(metrics: dict[str, Any]) -> str:
    """A short aligned table for stdout."""
    rows = [
        ("IoU (per-tile mean)", metrics.get("iou_tile_mean")),
        ("IoU (global)", metrics.get("iou_global")),
        ("precision", metrics.get("precision")),
        ("recall", metrics.get("recall")),
        ("F1", metrics.get("f1")),
        (f"relaxed precision ({metrics.get('slack_px')} px)", metrics.get("relaxed_precision")),
        (f"relaxed recall ({metrics.get('slack_px')} px)", metrics.get("relaxed_recall")),
        ("relaxed F1", metrics.get("relaxed_f1")),
    ]
    graph = metrics.get("graph") or {}
    for key in ("apls", "topo_precision", "topo_recall", "topo_f1", "length_precision", "length_recall",
                "length_f1"):
        if key in graph:
            rows.append((f"graph {key.replace('_', ' ')}", graph[key]))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {'n/a' if v is None else f'{v:.4f}'}" for name, v in rows]
    lines.append(f"{'tiles scored / both empty':<{width}}  {metrics.get('tiles_scored')} / "
                 f"{metrics.get('tiles_both_empty')}")
    return "\n".join(lines)


def dumps(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics, indent=2)
