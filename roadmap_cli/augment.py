"""Training-time augmentation: GPS samples before rendering (paper §4.2), and image/label geometry and colour.

GPS augmentation (`GpsAugment`) degrades the samples of a training window so that the network does not learn
to trust GPS blindly: with its own probability each of

- subsample: keep a random fraction (drawn from `subsample_keep`) of the samples, each kept independently.
  Intervals are left as they are: fewer samples here stands for fewer vehicles / trips, not a lower rate.
- perturb: add Gaussian offsets to every sample, sigma (pixels) drawn from `perturb_sigma`.
- subres: quantise positions to a coarser grid of `factor` pixels (drawn from `subres_factor`): positions
  snap to the nearest multiple of the factor in global pixel coordinates, so neighbouring windows agree, as a
  low-resolution receiver or a privacy filter would do (the paper's sub-resolution).
- omit: drop the samples inside a random rectangle of the window, each side a fraction (from `omit_size`)
  of the window's side.

They run in that order (omission last, so the omitted rectangle is empty whatever the other steps did). All
random numbers of one call are drawn first (`draw`), then applied (`apply_drawn`), so a call is reproducible
from the generator's state and tests can see what was drawn.

Geometry (`geometric_augment`): the same random flip / 90° rotation for every array of a training sample
(image, GPS channels, label, validity), with bearing channels turned to match. Colour (`colour_jitter`):
small random brightness, contrast and saturation changes of the RGB image.

Imports numpy only (and roadmap_cli.errors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from roadmap_cli.errors import RoadmapError

GPS_AUGMENTS = ("subsample", "subres", "perturb", "omit")


def _range(name: str, value: Any, lo: float, hi: float | None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RoadmapError(f"GPS augmentation {name}: expected a (low, high) pair, not {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b or a < lo or (hi is not None and b > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise RoadmapError(f"GPS augmentation {name}: ({a}, {b}) must be an ordered pair within {bound}")
    return a, b


@dataclass
class GpsAugment:
    """Random degradation of the GPS samples of a training window (probabilities and ranges)."""

    subsample_p: float = 0.5
    subsample_keep: tuple[float, float] = (0.1, 1.0)  # fraction of samples kept
    subres_p: float = 0.25
    subres_factor: tuple[float, float] = (2.0, 8.0)  # quantisation step, pixels
    perturb_p: float = 0.5
    perturb_sigma: tuple[float, float] = (0.5, 2.0)  # Gaussian offset sigma, pixels
    omit_p: float = 0.25
    omit_size: tuple[float, float] = (0.1, 0.5)  # rectangle side as a fraction of the window side

    def __post_init__(self) -> None:
        for op in GPS_AUGMENTS:
            p = getattr(self, op + "_p")
            try:
                p = float(p)
            except (TypeError, ValueError):
                raise RoadmapError(f"GPS augmentation {op}_p: not a number: {p!r}") from None
            if not 0.0 <= p <= 1.0:
                raise RoadmapError(f"GPS augmentation {op}_p: probability {p} is not within [0, 1]")
            setattr(self, op + "_p", p)
        self.subsample_keep = _range("subsample_keep", self.subsample_keep, 0.0, 1.0)
        self.subres_factor = _range("subres_factor", self.subres_factor, 1e-6, None)
        self.perturb_sigma = _range("perturb_sigma", self.perturb_sigma, 0.0, None)
        self.omit_size = _range("omit_size", self.omit_size, 0.0, 1.0)

    @classmethod
    def from_spec(cls, spec: str, **overrides: Any) -> GpsAugment:
        """From `--augment`: a comma list of subsample, subres, perturb, omit, or "none".

        Listed steps keep their default probability, the others get probability 0. `overrides` set fields by
        name (e.g. ``perturb_sigma=(1, 3)``, ``omit_p=0.5``) after that.
        """
        names = [s.strip().lower() for s in str(spec).split(",") if s.strip()]
        if not names:
            raise RoadmapError("--augment: empty; give a comma list of " + ", ".join(GPS_AUGMENTS) + " or none")
        if names == ["none"]:
            names = []
        bad = [n for n in names if n not in GPS_AUGMENTS]
        if bad:
            raise RoadmapError(f"--augment: unknown step {bad[0]!r} (choose from {', '.join(GPS_AUGMENTS)} or none)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RoadmapError(f"GPS augmentation: unknown setting(s) {', '.join(unknown)}")
        kw: dict[str, Any] = {op + "_p": 0.0 for op in GPS_AUGMENTS if op not in names}
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpsAugment:
        """Inverse of `to_dict`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RoadmapError(f"GPS augmentation: unknown setting(s) {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (pairs as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def enabled(self) -> bool:
        """False when every step has probability 0 (apply is then the identity)."""
        return any(getattr(self, op + "_p") > 0 for op in GPS_AUGMENTS)

    def draw(self, rng: np.random.Generator, col_off: float, row_off: float, width: float, height: float
             ) -> dict[str, Any]:
        """Draw which steps run and their parameters for one window. Draws a fixed number of values from `rng`
        whatever is enabled, so the stream stays aligned."""
        u = rng.random(4)  # one decision per step
        a = rng.random(7)  # parameters
        d: dict[str, Any] = {}
        if u[0] < self.subsample_p:
            lo, hi = self.subsample_keep
            d["subsample"] = lo + (hi - lo) * a[0]
        if u[1] < self.perturb_p:
            lo, hi = self.perturb_sigma
            d["perturb"] = lo + (hi - lo) * a[1]
        if u[2] < self.subres_p:
            lo, hi = self.subres_factor
            d["subres"] = lo + (hi - lo) * a[2]
        if u[3] < self.omit_p:
            lo, hi = self.omit_size
            w = width * (lo + (hi - lo) * a[3])
            h = height * (lo + (hi - lo) * a[4])
            c0 = col_off + (width - w) * a[5]
            r0 = row_off + (height - h) * a[6]
            d["omit"] = (c0, r0, c0 + w, r0 + h)  # samples with c0 <= col < c1 and r0 <= row < r1 go
        return d

    def apply_drawn(self, samples: np.ndarray, drawn: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Apply the steps of `draw`'s result. Returns `samples` itself when nothing was drawn, else a new array."""
        out = samples
        if "subsample" in drawn:
            out = out[rng.random(out.shape[0]) < drawn["subsample"]]
        if "perturb" in drawn and out.shape[0]:
            if out is samples:
                out = out.copy()
            sigma = drawn["perturb"]
            out["col"] += rng.normal(0.0, sigma, out.shape[0])
            out["row"] += rng.normal(0.0, sigma, out.shape[0])
        if "subres" in drawn and out.shape[0]:
            if out is samples:
                out = out.copy()
            f = drawn["subres"]
            out["col"] = np.round(out["col"] / f) * f
            out["row"] = np.round(out["row"] / f) * f
        if "omit" in drawn and out.shape[0]:
            c0, r0, c1, r1 = drawn["omit"]
            c, r = out["col"], out["row"]
            out = out[~((c >= c0) & (c < c1) & (r >= r0) & (r < r1))]
        return out

    def apply(self, samples: np.ndarray, col_off: float, row_off: float, width: float, height: float,
              rng: np.random.Generator) -> np.ndarray:
        """Augment the samples (store.SAMPLE_DTYPE, global pixel coordinates) of window (col_off, row_off,
        width, height). The input is never modified; with nothing enabled it is returned as is (no draws)."""
        if not self.enabled:
            return samples
        return self.apply_drawn(samples, self.draw(rng, col_off, row_off, width, height), rng)


# --------------------------------------------------------------------------------------------------------------
# geometry and colour


def draw_geometric(rng: np.random.Generator, square: bool = True) -> tuple[int, bool]:
    """A random element of the symmetry group of the square: (k quarter turns, horizontal flip after).
    Non-square arrays get k in {0, 2} only (a quarter turn would change their shape)."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    if not square:
        k = 2 * (k // 2)
    return k, flip


def apply_geometric(arrays: Sequence[np.ndarray], k: int, flip: bool,
                    bearing: Sequence[tuple[int, int, int]] = ()) -> list[np.ndarray]:
    """Rotate every array ([..., H, W]) by k quarter turns (np.rot90 on the last two axes: counter-clockwise as
    displayed, row 0 on top) and then mirror left-right if `flip`. Returns contiguous copies.

    `bearing` lists (array index, sin channel, cos channel) of rendered bearing channels (channel = index on
    axis 0): their values are turned with the image so that they keep meaning "bearing clockwise from north"
    in the new picture.
    """
    out = []
    for a in arrays:
        b = np.rot90(a, k % 4, axes=(-2, -1)) if k % 4 else a
        if flip:
            b = b[..., ::-1]
        out.append(np.array(b, copy=True, order="C"))
    for ai, si, ci in bearing:
        a = out[ai]
        s, c = a[si].copy(), a[ci].copy()
        for _ in range(k % 4):  # a quarter turn counter-clockwise: bearing - 90 degrees
            s, c = -c, s
        if flip:  # left-right mirror: bearing -> 360 - bearing
            s = -s
        a[si], a[ci] = s, c
    return out


def geometric_augment(arrays: Sequence[np.ndarray], rng: np.random.Generator,
                      bearing: Sequence[tuple[int, int, int]] = ()) -> list[np.ndarray]:
    """The same random flip / 90° rotation for all arrays ([..., H, W], equal H and W across arrays); contiguous
    copies. Quarter turns need square arrays; for non-square ones only 180° turns and flips are drawn.
    `bearing`: see `apply_geometric` (use `RenderParams.bearing_channels()`)."""
    if not arrays:
        return []
    hw = {tuple(a.shape[-2:]) for a in arrays}
    if len(hw) != 1 or any(a.ndim < 2 for a in arrays):
        raise ValueError(f"geometric_augment: arrays must share their last two dimensions, got {sorted(hw)}")
    (h, w), = hw
    k, flip = draw_geometric(rng, square=h == w)
    return apply_geometric(arrays, k, flip, bearing)


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator, brightness: float = 0.1, contrast: float = 0.1,
                  saturation: float = 0.1) -> np.ndarray:
    """Random brightness, contrast and saturation change of an RGB image (uint8 [3, H, W]) -> uint8 [3, H, W].

    Factors are drawn uniformly from [1 - x, 1 + x]. Brightness scales all values; contrast moves values away
    from / towards the image's mean grey; saturation away from / towards each pixel's grey (Rec. 601 luma).
    Pixels that are 0 in all bands (no imagery) stay 0.
    """
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"colour_jitter: expected [3, H, W], got {rgb.shape}")
    fb, fc, fs = 1.0 + rng.uniform(-1.0, 1.0, 3) * np.array([brightness, contrast, saturation])
    x = rgb.astype(np.float32)
    empty = ~rgb.any(axis=0)
    x *= np.float32(fb)
    luma = np.float32(0.299) * x[0] + np.float32(0.587) * x[1] + np.float32(0.114) * x[2]
    valid = ~empty
    mean = np.float32(luma[valid].mean()) if valid.any() else np.float32(0.0)
    x = (x - luma) * np.float32(fs) + luma  # saturation about each pixel's grey
    x = (x - mean) * np.float32(fc) + mean  # contrast about the mean grey
    np.clip(x, 0, 255, out=x)
    out = np.rint(x).astype(np.uint8)
    out[:, empty] = 0
    return out
