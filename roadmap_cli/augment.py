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

The training pipeline turns and jitters without intermediate copies: `turn_copy` (label, validity) and
`image_input` (the image straight into the float32 network input, via `inputs.make_input(colour=, turn=)`),
each one pass; with numba installed they run compiled kernels (`_augment_numba`, ~10x faster on a 1024² tile;
``ROADMAP_AUGMENT_BACKEND`` = auto | numba | numpy), else the numpy steps they equal.

Imports numpy only (and roadmap_cli.errors; numba optionally, through `_augment_numba`).
"""

from __future__ import annotations

import math
import os
import threading
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


TRANSPOSE_SLAB = 32  # columns per block when copying a quarter-turned view (keeps the reads in cache)


def turn_views(arrays: Sequence[np.ndarray], k: int, flip: bool) -> list[np.ndarray]:
    """The arrays ([..., H, W]) turned by k quarter turns (np.rot90 on the last two axes) and then mirrored
    left-right if `flip`, as views (no copy)."""
    out = []
    for a in arrays:
        b = np.rot90(a, k % 4, axes=(-2, -1)) if k % 4 else a
        out.append(b[..., ::-1] if flip else b)
    return out


def _decompose() -> dict[tuple[int, bool], tuple[bool, bool, bool]]:
    """(transpose, reverse columns, reverse rows), applied in that order, equal to each (k, flip) of
    `turn_views` (found by trying them all on a 3x3 array)."""
    a = np.arange(9).reshape(3, 3)
    table = {}
    for k in range(4):
        for flip in (False, True):
            want = turn_views([a], k, flip)[0]
            for t in (False, True):
                for q in (False, True):
                    for p in (False, True):
                        v = a.T if t else a
                        v = v[:, ::-1] if q else v
                        v = v[::-1] if p else v
                        if np.array_equal(v, want):
                            table[k, flip] = (t, q, p)
    return table


_DECOMPOSE = _decompose()


def copy_into(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Copy `src` (any strides, e.g. a `turn_views` view) into `dst` of the same shape, casting to dst's dtype;
    returns `dst`.

    A view whose rows run across the rows of its memory (a quarter turn) is copied in slabs of
    `TRANSPOSE_SLAB` columns, so that the rows it reads stay in cache (one numpy copy of a turned 1024² view
    costs about 3x as much); a turned cast (uint8 view -> float32) goes through a same-dtype copy first, as
    numpy's strided casting loop is slower still.
    """
    if src.shape != dst.shape:
        raise ValueError(f"copy_into: shapes differ, {src.shape} and {dst.shape}")
    transposed = src.ndim >= 2 and abs(src.strides[-1]) > abs(src.strides[-2]) and src.shape[-1] > TRANSPOSE_SLAB
    if not transposed:
        np.copyto(dst, src, casting="unsafe")
    elif src.dtype != dst.dtype:
        np.copyto(dst, copy_into(np.empty(src.shape, dtype=src.dtype), src), casting="unsafe")
    else:
        for j in range(0, src.shape[-1], TRANSPOSE_SLAB):
            np.copyto(dst[..., j:j + TRANSPOSE_SLAB], src[..., j:j + TRANSPOSE_SLAB])
    return dst


def _words_ok(a: np.ndarray) -> bool:
    """Whether the compiled byte kernels can take `a`: 1-byte items, C-contiguous, 8-byte aligned, last two
    dimensions multiples of 8."""
    return (a.ndim >= 2 and a.dtype.itemsize == 1 and a.flags.c_contiguous and a.ctypes.data % 8 == 0
            and a.shape[-1] % 8 == 0 and a.shape[-2] % 8 == 0 and a.size > 0)


def _first_step(jit: Any, a: np.ndarray, transpose: bool, reverse_cols: bool) -> np.ndarray:
    """uint8 [C, H', W'] of `a` ([..., H, W] bytes, `_words_ok`) transposed and/or column-reversed."""
    h, w = a.shape[-2:]
    src = a.reshape(-1, h, w).view(np.uint8)
    if transpose:
        out = np.empty((src.shape[0], w, h), dtype=np.uint8)
        jit.transpose8(src.view(np.uint64), out.view(np.uint64), reverse_cols)
    else:
        out = np.empty_like(src)
        jit.reverse_cols8(src.view(np.uint64), out.view(np.uint64))
    return out


def turn_copy(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """A C-contiguous copy of `turn_views([a], k, flip)[0]` (always a new array).

    Byte arrays (uint8, bool) with sides that are multiples of 8 go through the compiled kernels when numba is
    available (`backend_name`); anything else through `copy_into`.
    """
    t, q, p = _DECOMPOSE[k % 4, bool(flip)]
    jit = _backend() if (t or q) and _words_ok(a) else None
    if jit is None:
        view = turn_views([a], k, flip)[0]
        return copy_into(np.empty(view.shape, dtype=a.dtype), view)
    first = _first_step(jit, a, t, q)
    shape = (*a.shape[:-2], *first.shape[-2:])
    if p:
        rows = first[..., ::-1, :]
        out = np.empty(rows.shape, dtype=np.uint8)
        np.copyto(out, rows)
        first = out
    return first.view(a.dtype).reshape(shape)


def apply_geometric(arrays: Sequence[np.ndarray], k: int, flip: bool,
                    bearing: Sequence[tuple[int, int, int]] = ()) -> list[np.ndarray]:
    """Rotate every array ([..., H, W]) by k quarter turns (np.rot90 on the last two axes: counter-clockwise as
    displayed, row 0 on top) and then mirror left-right if `flip`. Returns contiguous copies.

    `bearing` lists (array index, sin channel, cos channel) of rendered bearing channels (channel = index on
    axis 0): their values are turned with the image so that they keep meaning "bearing clockwise from north"
    in the new picture.
    """
    out = [turn_copy(a, k, flip) for a in arrays]
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


LUMA = (0.299, 0.587, 0.114)  # Rec. 601 grey of (R, G, B)


@dataclass(frozen=True)
class ColourJitter:
    """Drawn brightness, contrast and saturation factors of one image (1 = unchanged).

    Brightness scales all values; saturation moves each pixel away from / towards its grey (Rec. 601 luma);
    contrast moves values away from / towards the image's mean grey over its non-empty pixels (an empty pixel is
    0 in all bands: no imagery). Together an affine map of each pixel's RGB values (`terms`) followed by
    clipping to [0, 255]; `apply_colour` applies it, to bytes (`colour_jitter`) or straight into the
    normalised network input (`inputs.make_input(..., colour=)`).
    """

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    @classmethod
    def draw(cls, rng: np.random.Generator, brightness: float = 0.1, contrast: float = 0.1,
             saturation: float = 0.1) -> ColourJitter:
        """Factors drawn uniformly from [1 - x, 1 + x] (three values from `rng`, whatever the ranges)."""
        fb, fc, fs = 1.0 + rng.uniform(-1.0, 1.0, 3) * np.array([brightness, contrast, saturation])
        return cls(float(fb), float(fc), float(fs))

    @property
    def identity(self) -> bool:
        return self.brightness == 1.0 and self.contrast == 1.0 and self.saturation == 1.0

    def terms(self, mean_grey: float) -> tuple[float, float, float]:
        """(a, b, d): jittered channel c = a * v_c + b * grey(v) + d (before clipping), for pixel values v and
        the image's mean grey `mean_grey` (before jitter).

        Brightness x = fb v; saturation y = fs x + (1 - fs) grey(x); contrast fc y + (1 - fc) mean(grey(x)),
        with grey(x) = fb grey(v) and mean(grey(x)) = fb mean_grey.
        """
        fb, fc, fs = self.brightness, self.contrast, self.saturation
        return fc * fs * fb, fc * (1.0 - fs) * fb, (1.0 - fc) * fb * float(mean_grey)


def _mean_grey(sums: Sequence[float], n_valid: int) -> float:
    """Mean grey of the non-empty pixels from the bands' (exact, whole) sums: empty pixels add nothing."""
    return (LUMA[0] * float(sums[0]) + LUMA[1] * float(sums[1]) + LUMA[2] * float(sums[2])) / n_valid \
        if n_valid else 0.0


def _norm_arrays(scale: Sequence[float], offset: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scale, dtype=np.float64).reshape(3).astype(np.float32)
    o = np.asarray(offset, dtype=np.float64).reshape(3).astype(np.float32)
    return s, o


def apply_colour(x: np.ndarray, jitter: ColourJitter | None, scale: Sequence[float] = (1.0, 1.0, 1.0),
                 offset: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """In place on float32 [3, H, W] holding RGB values in [0, 255] (whole numbers): the colour jitter (None:
    none), clipping to [0, 255], then value * scale[c] + offset[c] per channel (normalisation). Empty pixels (0 in
    all bands) end as offset[c] (jitter leaves them 0). Returns `x`.

    float32 arithmetic, in this order: grey = (0.299 r + 0.587 g) + 0.114 b; y = clip(v a + (grey b + d), 0,
    255) with (a, b, d) = `ColourJitter.terms` of the exact mean grey; y * scale + offset
    (`_augment_numba.colour_input` does the same operations).
    """
    if x.dtype != np.float32 or x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"apply_colour: expected float32 [3, H, W], got {x.dtype} {x.shape}")
    s, o = _norm_arrays(scale, offset)
    s, o = s.reshape(3, 1, 1), o.reshape(3, 1, 1)
    if jitter is None or jitter.identity:
        x *= s
        x += o
        return x
    grey = np.multiply(x[0], np.float32(LUMA[0]))
    tmp = np.empty_like(grey)
    for c in (1, 2):
        np.multiply(x[c], np.float32(LUMA[c]), out=tmp)
        grey += tmp
    empty = grey == 0  # exactly where all bands are 0 (weights > 0, values >= 0)
    n_valid = grey.size - int(np.count_nonzero(empty))
    if 255 * x.shape[2] < 2 ** 24:  # row sums are whole numbers below 2**24: exact in float32 (and fast)
        sums = x.sum(axis=2).sum(axis=1, dtype=np.float64)
    else:
        sums = x.reshape(3, -1).sum(axis=1, dtype=np.float64)
    a, b, d = jitter.terms(_mean_grey(sums, n_valid))
    grey *= np.float32(b)
    grey += np.float32(d)
    x *= np.float32(a)
    x += grey
    np.clip(x, np.float32(0.0), np.float32(255.0), out=x)
    x *= s
    x += o
    if n_valid < grey.size:
        for c in range(3):
            np.putmask(x[c], empty, o[c, 0, 0])
    return x


def image_input(rgb: np.ndarray, out: np.ndarray, k: int = 0, flip: bool = False,
                colour: ColourJitter | None = None, scale: Sequence[float] = (1.0, 1.0, 1.0),
                offset: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """`out` (float32 [3, H', W'], C-contiguous) = `apply_colour` of `rgb` (uint8 [3, H, W]) turned by
    (k, flip) as `turn_views` turns it. Returns `out`.

    With numba (`backend_name`) and sides that are multiples of 8, one compiled pass does the conversion,
    jitter and normalisation (after a byte-level transpose / column reversal when the turn needs one), ~10x
    faster than the numpy steps (`copy_into` then `apply_colour`), which it equals.
    """
    t, q, p = _DECOMPOSE[k % 4, bool(flip)]
    jit = _backend() if (rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[0] == 3 and out.flags.c_contiguous
                         and out.dtype == np.float32) else None
    if jit is not None and (t or q) and not _words_ok(rgb):
        jit = None
    if jit is None:
        copy_into(out, turn_views([rgb], k, flip)[0])
        return apply_colour(out, colour, scale, offset)
    src = np.ascontiguousarray(rgb)
    expected = (3, *(src.shape[:0:-1] if t else src.shape[1:]))
    if out.shape != expected:
        raise ValueError(f"image_input: out {out.shape} does not fit the turned image {expected}")
    a, b, d = 1.0, 0.0, 0.0
    if colour is not None and not colour.identity:
        s0, s1, s2, n = jit.channel_stats(src)
        a, b, d = colour.terms(_mean_grey((s0, s1, s2), int(n)))
    if t or q:
        src = _first_step(jit, src, t, q)
    s, o = _norm_arrays(scale, offset)
    f = np.float32
    jit.colour_input(src, out, p, f(a), f(b), f(d), f(LUMA[0]), f(LUMA[1]), f(LUMA[2]), s, o)
    return out


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator, brightness: float = 0.1, contrast: float = 0.1,
                  saturation: float = 0.1) -> np.ndarray:
    """Random brightness, contrast and saturation change of an RGB image (uint8 [3, H, W]) -> uint8 [3, H, W].

    Factors are drawn uniformly from [1 - x, 1 + x] (`ColourJitter.draw`). Brightness scales all values;
    contrast moves values away from / towards the image's mean grey; saturation away from / towards each pixel's
    grey (Rec. 601 luma). Pixels that are 0 in all bands (no imagery) stay 0. The training pipeline does the
    same without the round trip through bytes (`inputs.make_input(..., colour=)`).
    """
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"colour_jitter: expected [3, H, W], got {rgb.shape}")
    jitter = ColourJitter.draw(rng, brightness, contrast, saturation)
    x = image_input(rgb, np.empty(rgb.shape, dtype=np.float32), colour=jitter)
    np.rint(x, out=x)
    return x.astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# compiled kernels (optional)

_BACKEND_ENV = "ROADMAP_AUGMENT_BACKEND"
_BACKEND: list[Any] = []  # [module or None] once chosen
_BACKEND_LOCK = threading.Lock()


def backend_name() -> str:
    """The implementation of `turn_copy` / `image_input` in this process: "numba" or "numpy"."""
    return "numpy" if _backend() is None else "numba"


def _backend() -> Any:
    """The compiled kernels module (`roadmap_cli._augment_numba`), or None for the numpy path; chosen once per
    process. ``ROADMAP_AUGMENT_BACKEND`` = ``auto`` (default: numba when it imports), ``numba`` (an error
    without it) or ``numpy``."""
    if _BACKEND:
        return _BACKEND[0]
    with _BACKEND_LOCK:
        if not _BACKEND:
            _BACKEND.append(_load_backend(os.environ.get(_BACKEND_ENV, "auto").strip().lower() or "auto"))
    return _BACKEND[0]


def _load_backend(choice: str) -> Any:
    """The kernels module for `choice` (auto | numba | numpy), or None (see `roadmap_cli.kernels`)."""
    from roadmap_cli.kernels import load_kernels

    return load_kernels(choice, _BACKEND_ENV, "roadmap_cli._augment_numba", "augmentation kernels")
