"""GPS rendering: the samples of a pixel window become float32 image channels (paper §4.3).

Channels (in the order the user lists them):

- ``density``: number of samples per pixel smoothed by a normalised Gaussian kernel (``mode="gaussian"``), on a
  log scale ``log1p(d) / log1p(density_norm)`` or linear ``d / density_norm``. ``density_norm`` is a reference
  count: a pixel whose smoothed count equals it renders as 1 in either scale, so road values are O(1). With
  ``mode="binary"`` (what the paper's released code does) the channel is 1 where a sample lies within
  ``binary_radius`` pixels (Euclidean, between pixel indices) and 0 elsewhere.
- ``interval``, ``speed``: the mean of the samples' values per pixel, smoothed with the same kernel: the kernel-
  weighted sum of values divided by the kernel-weighted count of samples that have a value (NaN values are
  ignored), 0 where no such sample is near, divided by ``interval_norm`` / ``speed_norm``.
- ``bearing``: two channels ``bearing_sin``, ``bearing_cos``, the means of sin and cos of the bearing (degrees
  clockwise from north) computed the same way; in [-1, 1].

A sample lies in pixel ``(floor(col - col_off), floor(row - row_off))``. Samples outside the window but within
``RenderParams.margin`` pixels of it feed the edge pixels, so windows rendered separately equal one big render
(callers query the point store over the window grown by ``margin`` on each side).

Two implementations give the same values (to float32 rounding; `tests/test_render.py` checks both against a
float64 reference), chosen once per process by `_backend()`: a compiled one (`roadmap_cli._render_numba`, numba
is always installed with the package since sknw needs it), and this module's numpy one, used where numba is
missing (the GPU boxes' minimal environment) or when ``ROADMAP_RENDER_BACKEND=numpy``.

Speed (`bench/render.py`, density + interval of a 1024² window from 1 M samples, against a bare ``np.bincount``
of the same pixel indices on the shared 2-core box): numpy ~8-10x the bincount, numba ~4-5x (10 ms; the first
use in a process loads the compiled kernels from numba's disk cache in ~0.4 s plus ~0.4 s to import numba,
or compiles them in ~10 s when there is no cache yet). The compiled renderer is bound by memory traffic: one
pass over the 40-byte sample records that buckets the samples by bands of canvas rows (~55 %), then per band
the additions into a cache-sized canvas (~20 %) and the fused smoothing and output (~20 %).

The numpy implementation: one pass over the samples in cache-sized chunks computes each sample's flat pixel
index and reads its values; one ``np.add.at`` per accumulated quantity (count, and the value sums of each mean
channel) adds straight into a float32 canvas (as fast as ``np.bincount`` here, with no float64 result to
convert); the separable Gaussian is a sum of shifted 1-D slices of the flattened canvas (a horizontal tap is a
shift by one element, a vertical tap a shift by one canvas row), so every array operation runs on long
contiguous memory. Scratch buffers are reused between calls of a thread. No Python loop runs per sample.
Its ~9 bincounts: reading three fields out of 40-byte records (strided loops, ~3 bincounts), two scatters (~3),
and ~15 full-window float32 passes for the smoothing, log, division (~3).

This module imports only numpy (and roadmap_cli.errors, i.e. click; numba only on first use), so GPU boxes and
data-loader workers can use it without rasterio, pyproj or torch.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from roadmap_cli.errors import RoadmapError

GPS_CHANNELS = ("density", "interval", "speed", "bearing")
RENDER_MODES = ("gaussian", "binary")
SCALES = ("log", "linear")
_CHUNK = 1 << 16  # samples per chunk of the gather pass (2.6 MB of records: read once, then worked on in cache)


def default_sigma(kernel_size: int) -> float:
    """Gaussian sigma used when none is given: OpenCV's rule for a kernel of that size.

    ``0.3 * ((kernel_size - 1) / 2 - 1) + 0.8`` (0.8 px for the paper's size 3, 1.1 for 5, 1.7 for 9). The paper
    gives only a kernel size, as OpenCV's ``GaussianBlur`` takes it (sigma 0: derived from the size), so we use the
    same rule. Sigma grows with the size so a large kernel stays bell-shaped (edge tap 6 % of the centre for size
    9) instead of flattening into a box, as ``kernel_size / 3`` would (edge tap 41 %).
    """
    return 0.3 * ((kernel_size - 1) * 0.5 - 1.0) + 0.8


def gaussian_taps(kernel_size: int, sigma: float | None = None) -> np.ndarray:
    """The normalised 1-D Gaussian kernel (float64, odd length, sums to 1); the 2-D kernel is its outer product."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise RoadmapError(f"--kernel-size: must be an odd number >= 1, not {kernel_size}")
    s = default_sigma(kernel_size) if sigma is None else float(sigma)
    r = kernel_size // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(t * t) / (2.0 * s * s))
    return g / g.sum()


def disk(radius: int) -> np.ndarray:
    """Boolean disk footprint of pixel offsets (dy, dx) with dy² + dx² <= radius²."""
    t = np.arange(-radius, radius + 1)
    return (t[:, None] ** 2 + t[None, :] ** 2) <= radius * radius


@dataclass
class RenderParams:
    """How GPS samples become input channels. JSON-able via `to_dict` (stored in checkpoints).

    `sigma=None` uses `default_sigma(kernel_size)` (OpenCV's rule: 0.8 px for size 3). `density_norm` is the
    reference count that renders as 1 (see the module doc); `interval_norm` (seconds) and `speed_norm` (m/s)
    divide the mean interval and speed so typical values are O(1).
    """

    channels: tuple[str, ...] = ("density", "interval")
    mode: str = "gaussian"
    kernel_size: int = 3
    sigma: float | None = None
    scale: str = "log"
    binary_radius: int = 2
    density_norm: float = 16.0
    interval_norm: float = 30.0
    speed_norm: float = 15.0

    def __post_init__(self) -> None:
        ch = self.channels
        if isinstance(ch, str):
            ch = [c.strip() for c in ch.split(",") if c.strip()]
        ch = tuple(str(c).strip().lower() for c in ch)
        if not ch:
            raise RoadmapError("--gps-channels: give at least one of " + ", ".join(GPS_CHANNELS))
        bad = [c for c in ch if c not in GPS_CHANNELS]
        if bad:
            raise RoadmapError(f"--gps-channels: unknown channel {bad[0]!r} (choose from {', '.join(GPS_CHANNELS)})")
        if len(set(ch)) != len(ch):
            raise RoadmapError(f"--gps-channels: channel listed twice in {','.join(ch)}")
        self.channels = ch
        if self.mode not in RENDER_MODES:
            raise RoadmapError(f"render mode must be one of {', '.join(RENDER_MODES)}, not {self.mode!r}")
        if self.scale not in SCALES:
            raise RoadmapError(f"render scale must be one of {', '.join(SCALES)}, not {self.scale!r}")
        if isinstance(self.kernel_size, bool) or int(self.kernel_size) != self.kernel_size:
            raise RoadmapError(f"--kernel-size: must be an odd integer, not {self.kernel_size!r}")
        self.kernel_size = int(self.kernel_size)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise RoadmapError(f"--kernel-size: must be an odd number >= 1, not {self.kernel_size}")
        if self.sigma is not None:
            self.sigma = float(self.sigma)
            if not (self.sigma > 0 and math.isfinite(self.sigma)):
                raise RoadmapError(f"render sigma must be a positive number, not {self.sigma}")
        if isinstance(self.binary_radius, bool) or int(self.binary_radius) != self.binary_radius \
                or self.binary_radius < 0:
            raise RoadmapError(f"binary radius must be an integer >= 0, not {self.binary_radius!r}")
        self.binary_radius = int(self.binary_radius)
        for name in ("density_norm", "interval_norm", "speed_norm"):
            v = float(getattr(self, name))
            if not (v > 0 and math.isfinite(v)):
                raise RoadmapError(f"render {name} must be a positive number, not {getattr(self, name)!r}")
            setattr(self, name, v)

    @property
    def effective_sigma(self) -> float:
        """The Gaussian sigma actually used (pixels)."""
        return default_sigma(self.kernel_size) if self.sigma is None else float(self.sigma)

    @property
    def margin(self) -> int:
        """Pixels beyond each side of a window whose samples still affect it."""
        return self.binary_radius if self.mode == "binary" else self.kernel_size // 2

    def channel_names(self) -> list[str]:
        """One name per output channel (bearing expands to bearing_sin, bearing_cos)."""
        out: list[str] = []
        for c in self.channels:
            out.extend(("bearing_sin", "bearing_cos") if c == "bearing" else (c,))
        return out

    @property
    def n_channels(self) -> int:
        return len(self.channel_names())

    def bearing_channels(self) -> tuple[int, int] | None:
        """Indices (sin, cos) of the bearing channels in the output, or None (see augment.geometric_augment)."""
        names = self.channel_names()
        if "bearing_sin" not in names:
            return None
        return names.index("bearing_sin"), names.index("bearing_cos")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, not tuples)."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderParams:
        """Inverse of `to_dict`; unknown keys are an error (a checkpoint from an incompatible version)."""
        if not isinstance(d, dict):
            raise RoadmapError(f"render parameters must be a mapping, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise RoadmapError(f"render parameters: unknown key(s) {', '.join(extra)}")
        kw = dict(d)
        if "channels" in kw and not isinstance(kw["channels"], str):
            kw["channels"] = tuple(kw["channels"])
        return cls(**kw)


# --------------------------------------------------------------------------------------------------------------
# public entry points


def render(samples: np.ndarray, col_off: float, row_off: float, width: int, height: int,
           params: RenderParams) -> np.ndarray:
    """Render the samples of window (col_off, row_off, width, height) as float32 [C, height, width].

    `samples` is a store.SAMPLE_DTYPE array in global pixel coordinates, normally queried over the window grown
    by `params.margin` on each side; samples farther out (or with NaN coordinates) are ignored. Channel order:
    `params.channel_names()`.
    """
    w, h = int(width), int(height)
    if w != width or h != height or w <= 0 or h <= 0:
        raise ValueError(f"window size must be positive integers, not {width} x {height}")
    plan = _plan(params)
    need = tuple(dict.fromkeys(src for _, src, _ in plan))
    names = samples.dtype.names or ()
    missing = [f for f in ("col", "row", *need) if f not in names]
    if missing:
        raise ValueError(f"samples lack field(s) {', '.join(missing)} (expected store.SAMPLE_DTYPE)")
    if samples.ndim != 1:
        samples = samples.reshape(-1)
    if samples.shape[0] == 0:
        return np.zeros((params.n_channels, h, w), dtype=np.float32)
    jit = _backend()
    if jit is not None:
        return _render_numba(jit, samples, float(col_off), float(row_off), w, h, params)
    return _render_numpy(samples, col_off, row_off, w, h, params, plan, need)


def kde_margin(kernel_size: int, sigma: float | None = None) -> int:
    """Pixels to grow a window by when querying samples for `kde` (the kernel is cut at its size whatever the
    sigma, so `sigma` does not matter)."""
    return int(kernel_size) // 2


def kde(samples: np.ndarray, col_off: float, row_off: float, width: int, height: int, kernel_size: int = 9,
        sigma: float | None = None, scale: str = "log", reference: float = 16.0) -> np.ndarray:
    """GPS-only road likelihood by kernel density estimation (the paper's KDE baseline), float32 [H, W] in [0, 1].

    The Gaussian-smoothed sample count d (kernel as in `RenderParams`) scaled by a fixed reference count, not by
    the tile's maximum, so that separately computed tiles agree: ``min(1, log1p(d) / log1p(reference))``
    (scale "log") or ``min(1, d / reference)`` (scale "linear"). A pixel with `reference` smoothed samples or more
    is 1. Query samples over the window grown by `kde_margin(kernel_size)`.
    """
    p = RenderParams(channels=("density",), mode="gaussian", kernel_size=kernel_size, sigma=sigma, scale=scale,
                     density_norm=reference)
    d = render(samples, col_off, row_off, width, height, p)[0]
    np.minimum(d, 1.0, out=d)
    return d


# --------------------------------------------------------------------------------------------------------------
# internals


def _render_numpy(samples: np.ndarray, col_off: float, row_off: float, w: int, h: int, params: RenderParams,
                  plan: list[tuple[str, str, float]], need: tuple[str, ...]) -> np.ndarray:
    """The numpy implementation of `render` (arguments already checked; at least one sample)."""
    if params.mode == "binary":
        r = params.binary_radius
        weights2d = disk(r).astype(np.float64)
        taps = None
    else:
        # Taps with centre 1 save a multiply per pass; the normalised kernel is g[r]**2 * outer(u, u), and
        # that factor is the weight each sample adds to the count (values are scaled alike, means unchanged).
        g = gaussian_taps(params.kernel_size, params.sigma)
        r = g.shape[0] // 2
        u = g / g[r]
        weights2d = np.outer(u, u) * g[r] ** 2
        taps = u.astype(np.float32)
    lay = _Layout(w, h, r)
    canvas, fix = _accumulate(samples, col_off, row_off, lay, plan, need, weights2d)
    if taps is None:
        v = _smooth_footprint(canvas, weights2d > 0, lay)
    else:
        v = _smooth_separable(canvas, taps, lay)
    return _finish(v, fix, params, plan, lay, weights2d)


class _Workspace(threading.local):
    """Per-thread scratch buffers reused across calls.

    A render touches ~40 MB of temporaries for a 1024² window; fresh allocations of that size come back from
    the OS as new pages whose first-touch faults cost about as much as the arithmetic. Reusing the buffers keeps
    them mapped (the memory stays held by the thread until `release_workspace()`). Nothing handed to a caller
    ever lives in here.
    """

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}
        self.zero: np.ndarray | None = None  # the compiled path's canvas, all zeros between calls

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = max(count * dt.itemsize, 1)
        b = self.bufs.get(name)
        if b is None or b.nbytes < nbytes:
            b = self.bufs[name] = np.empty(nbytes, dtype=np.uint8)
        return b[:nbytes].view(dt)[:count].reshape(shape)


_WS = _Workspace()


def release_workspace() -> None:
    """Free this thread's rendering scratch buffers (both implementations')."""
    _WS.bufs.clear()
    _WS.zero = None


_BACKEND_ENV = "ROADMAP_RENDER_BACKEND"
_BACKEND: list[Any] = []  # [module or None] once chosen
_BACKEND_LOCK = threading.Lock()


def backend_name() -> str:
    """The implementation `render` uses in this process: "numba" or "numpy" (chosen on first use)."""
    return "numpy" if _backend() is None else "numba"


def _backend() -> Any:
    """The compiled kernels module, or None for the numpy path; chosen once per process.

    ``ROADMAP_RENDER_BACKEND`` = ``auto`` (default: numba when it imports), ``numba`` (an error without it) or
    ``numpy``. Importing the kernels loads them from numba's on-disk cache (compiling them the first time).
    """
    if _BACKEND:
        return _BACKEND[0]
    with _BACKEND_LOCK:
        if not _BACKEND:
            _BACKEND.append(_load_backend(os.environ.get(_BACKEND_ENV, "auto").strip().lower() or "auto"))
    return _BACKEND[0]


def _load_backend(choice: str) -> Any:
    """The kernels module for `choice` (auto | numba | numpy), or None (see `roadmap_cli.kernels`)."""
    from roadmap_cli.kernels import load_kernels

    return load_kernels(choice, _BACKEND_ENV, "roadmap_cli._render_numba", "GPS renderer")


_DUMMY_F32 = np.zeros(4, dtype=np.float32)[::2]  # stands for an unused field (strided like the real ones)
_PROBE = 1024  # samples looked at to guess whether a field is mostly missing
_DENSE_FRACTION = 0.125  # ... and the missing fraction above which it is rendered dense


def _zero_canvas(n: int) -> np.ndarray:
    """This thread's all-zero float32 scratch of at least `n` elements (the kernels leave it zeroed on return;
    `_render_numba` marks it dirty around the call so that an interrupted call cannot leak values)."""
    z = getattr(_WS, "zero", None)
    if z is None or z.shape[0] < n:
        z = np.zeros(n, dtype=np.float32)
    _WS.zero = None  # dirty until handed back
    return z


@dataclass(frozen=True)
class _JitPlan:
    """The arguments of `_render_numba.render_window` that depend only on the parameters and on which value
    fields are dense (built once per combination, see `_jit_plan`)."""

    fields: tuple[str, ...]
    r: int
    k: int
    kinds: np.ndarray
    offs: np.ndarray
    vch: np.ndarray
    hf: np.ndarray
    vt: np.ndarray
    w2d: np.ndarray
    dens_out: int
    dens_mode: int
    dens_scale: np.ndarray
    means: np.ndarray
    mean_scale: np.ndarray
    thr: float


@functools.lru_cache(maxsize=64)
def _jit_plan(key: tuple[Any, ...], dense: tuple[bool, ...]) -> _JitPlan:
    """`_JitPlan` for RenderParams `key` (`_params_key`) with the value fields flagged in `dense` dense.

    Canvas channels: 0 the count; per value field, in the order of first use, its sums (interval and speed
    one, bearing two: sin, cos); then a count channel for each dense field. Gaussian taps are normalised to
    centre 1, the density scaled back by the centre weight at the end (means, being ratios, need nothing).
    Binary mode: one box filter per distinct half-width of the disk's rows, `vt` picking each row offset's box.
    """
    jit = importlib.import_module("roadmap_cli._render_numba")  # the compiled path's constants, whatever the default
    params = RenderParams(**dict(key))
    names = params.channel_names()
    value_fields = tuple(c for c in params.channels if c != "density")
    if params.mode == "binary":
        r = params.binary_radius
        foot = disk(r)
        w2d = foot.astype(np.float64)
        widths = (np.abs(np.arange(-r, r + 1))[None, :] * foot).max(axis=1)
        boxes = sorted(set(widths.tolist()))
        hf = np.array([np.abs(np.arange(-r, r + 1)) <= a for a in boxes], dtype=np.float32)
        vt = np.array([[float(wd == a) for a in boxes] for wd in widths], dtype=np.float32)
        dens_mode, dens_scale = jit.DENS_BINARY, (1.0, 1.0)
        thr = 0.5
    else:
        g = gaussian_taps(params.kernel_size, params.sigma)
        r = g.shape[0] // 2
        u = (g / g[r]).astype(np.float32)
        hf = np.ascontiguousarray(u[None, :])
        vt = np.ascontiguousarray(u[:, None])
        w2d = np.outer(u.astype(np.float64), u.astype(np.float64))
        cw = float(g[r] ** 2)  # the normalised 2-D kernel is cw * outer(u, u)
        if params.scale == "log":
            dens_mode, dens_scale = jit.DENS_LOG, (cw, 1.0 / math.log1p(params.density_norm))
        else:
            dens_mode, dens_scale = jit.DENS_LINEAR, (cw / params.density_norm, 1.0)
        thr = 0.5 * float(w2d.min())  # below the smallest weight: a pixel no sample reaches stays 0 (no 0 / 0)
    kinds = np.zeros(3, dtype=np.int64)
    offs = np.zeros(3, dtype=np.int64)
    vch = np.zeros(3, dtype=np.int64)
    k = 1
    for i, f in enumerate(value_fields):
        kinds[i] = jit.BEARING if f == "bearing" else jit.PLAIN
        offs[i] = k
        k += 2 if f == "bearing" else 1
    for i in range(len(value_fields)):
        if dense[i]:
            vch[i] = k
            k += 1
    means: list[tuple[int, int, int]] = []
    scales: list[float] = []
    for i, f in enumerate(value_fields):
        if f == "bearing":
            means += [(names.index("bearing_sin"), offs[i], i), (names.index("bearing_cos"), offs[i] + 1, i)]
            scales += [1.0, 1.0]
        else:
            means.append((names.index(f), offs[i], i))
            scales.append(1.0 / (params.interval_norm if f == "interval" else params.speed_norm))
    return _JitPlan(fields=value_fields, r=r, k=k, kinds=kinds, offs=offs, vch=vch, hf=hf, vt=vt, w2d=w2d,
                    dens_out=names.index("density") if "density" in names else -1, dens_mode=dens_mode,
                    dens_scale=np.asarray(dens_scale, dtype=np.float64),
                    means=np.asarray(means, dtype=np.int64).reshape(-1, 3),
                    mean_scale=np.asarray(scales, dtype=np.float64), thr=thr)


def _params_key(params: RenderParams) -> tuple[Any, ...]:
    """A hashable form of `params` (the dataclass itself is mutable)."""
    return tuple((f.name, getattr(params, f.name)) for f in fields(params))


def _render_numba(jit: Any, samples: np.ndarray, col_off: float, row_off: float, w: int, h: int,
                  params: RenderParams) -> np.ndarray:
    """The compiled implementation of `render` (arguments already checked; at least one sample); the
    algorithm is described in `_render_numba`'s module doc.

    A value field is rendered dense (its own count channel) when more than `_DENSE_FRACTION` of up to `_PROBE`
    evenly spread samples lack a value, sparse (its missing samples listed) otherwise; a sparse render that
    meets more than n / 4 + 1024 missing values stops and is done again dense. Both give the same values to
    float32 rounding, and which is used depends only on the samples.
    """
    key = _params_key(params)
    value_fields = tuple(c for c in params.channels if c != "density")
    n = samples.shape[0]
    col = np.asarray(samples["col"], dtype=np.float64)
    row = np.asarray(samples["row"], dtype=np.float64)
    vals = [np.asarray(samples[f], dtype=np.float32) for f in value_fields]
    step = max(1, n // _PROBE)
    dense = tuple(bool(np.count_nonzero(~np.isfinite(v[::step])) > _DENSE_FRACTION * v[::step].shape[0])
                  for v in vals)
    vals += [_DUMMY_F32] * (3 - len(vals))
    out = np.empty((params.n_channels, h, w), dtype=np.float32)
    miss_limit = n // 4 + 1024
    while True:
        plan = _jit_plan(key, dense)
        r, k = plan.r, plan.k
        wc, hc = w + 2 * r, h + 2 * r
        bh = jit.band_rows(wc, k, hc)
        nblk = -(-n // jit.BLOCK) + -(-hc // bh)  # each band leaves at most one block part-filled
        size = bh * wc * k
        canvas = _zero_canvas(size)
        over = jit.render_window(
            col, row, vals[0], vals[1], vals[2], plan.kinds, plan.offs, plan.vch, col_off, row_off, w, h, r, k,
            bh.bit_length() - 1, canvas[:size], _WS.get("nb_pix", (nblk * jit.BLOCK,), np.int32),
            _WS.get("nb_val", (max(k - 1, 1), nblk * jit.BLOCK), np.float32),
            _WS.get("nb_next", (nblk,), np.int64), _WS.get("nb_miss", (3, miss_limit), np.int64),
            plan.hf, plan.vt, plan.w2d, out, plan.dens_out, plan.dens_mode, plan.dens_scale, plan.means,
            plan.mean_scale, plan.thr)
        _WS.zero = canvas  # zeroed again by the kernel
        if over < 0:
            return out
        dense = tuple(d or i == over for i, d in enumerate(dense))


@dataclass(frozen=True)
class _Layout:
    """The accumulation canvas of a window: the window grown by the kernel radius `r` on each side plus one
    more row on top and column on the left. Samples up to two pixels beyond the margin on the top/left land in
    that extra row/column (which no output reads) instead of needing a per-sample check.

    Window pixel (y, x) is canvas pixel (y + r + 1, x + r + 1); canvas rows are stored flat, `wq` apart.
    """

    width: int
    height: int
    r: int

    @property
    def wq(self) -> int:
        return self.width + 2 * self.r + 1

    @property
    def hq(self) -> int:
        return self.height + 2 * self.r + 1

    @property
    def size(self) -> int:
        return self.wq * self.hq

    @property
    def nv(self) -> int:
        """Length of a smoothed row: window pixel (y, x) is element y * wq + x."""
        return (self.height - 1) * self.wq + self.width

    def crop(self, v: np.ndarray) -> np.ndarray:
        """The [height, width] window view of a smoothed row."""
        return np.lib.stride_tricks.as_strided(v, shape=(self.height, self.width),
                                               strides=(self.wq * v.itemsize, v.itemsize), writeable=True)


def _plan(params: RenderParams) -> list[tuple[str, str, float]]:
    """Mean channels in output order: (name, sample field, factor applied to the values as they are read)."""
    plan: list[tuple[str, str, float]] = []
    for c in params.channels:
        if c == "interval":
            plan.append(("interval", "interval", 1.0 / params.interval_norm))
        elif c == "speed":
            plan.append(("speed", "speed", 1.0 / params.speed_norm))
        elif c == "bearing":
            plan.append(("bearing_sin", "bearing", math.pi / 180.0))
            plan.append(("bearing_cos", "bearing", math.pi / 180.0))
    return plan


def _gather(samples: np.ndarray, col_off: float, row_off: float, lay: _Layout, scales: dict[str, float]
            ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Flat canvas index of each sample that falls on the canvas, its values times their factor (float32), and
    per field the positions (into the returned arrays) of the samples whose value is NaN or infinite.

    Chunk by chunk, so that each strided record field is pulled from memory once and the arithmetic runs in
    cache. The returned arrays are workspace views, valid until the next render in this thread. The index is
    floor(row') * wq + col' in float64, truncated once: exact for the row; for the column it can differ from
    floor only when col' lies within ~1e-10 px below an integer (below the precision of the coordinates), and
    at the right edge that sends the sample into the never-read first column of the next row.
    """
    n = samples.shape[0]
    wq, size = lay.wq, lay.size
    c0 = col_off - lay.r - 1.0
    r0 = row_off - lay.r - 1.0
    flat = _WS.get("flat", (n,), np.intp)
    vals = {f: _WS.get("val_" + f, (n,), np.float32) for f in scales}
    bad: dict[str, list[np.ndarray]] = {f: [] for f in scales}
    c = min(n, _CHUNK)
    xf, yf = _WS.get("xf", (c,), np.float64), _WS.get("yf", (c,), np.float64)
    m = 0
    with np.errstate(invalid="ignore"):  # NaN coordinates cast to a negative index and are dropped
        for s in range(0, n, _CHUNK):
            part = samples[s:s + _CHUNK]
            k = part.shape[0]
            x, y = xf[:k], yf[:k]
            np.subtract(part["row"], r0, out=y)
            np.floor(y, out=y)
            y *= wq
            np.subtract(part["col"], c0, out=x)
            y += x
            fl = flat[m:m + k]
            np.copyto(fl, y, casting="unsafe")
            if not (x.min() >= 0.0 and x.max() < wq) or fl.view(np.uintp).max() >= size:
                keep = (x >= 0.0) & (x < wq) & (fl >= 0) & (fl < size)
                part = part[keep]
                k = part.shape[0]
                fl[:k] = fl[keep]
                if k == 0:
                    continue
            for f, scale in scales.items():
                v = vals[f][m:m + k]
                np.multiply(part[f], scale, out=v, casting="same_kind")
                if not np.isfinite(v.sum()):
                    bad[f].append(np.flatnonzero(~np.isfinite(v)) + m)
            m += k
    empty = np.empty(0, dtype=np.intp)
    return (flat[:m], {f: v[:m] for f, v in vals.items()},
            {f: (np.concatenate(b) if b else empty) for f, b in bad.items()})


def _accumulate(samples: np.ndarray, col_off: float, row_off: float, lay: _Layout,
                plan: list[tuple[str, str, float]], need: tuple[str, ...], weights2d: np.ndarray
                ) -> tuple[np.ndarray, dict[str, int | np.ndarray]]:
    """Per-pixel sums on the canvas: float32 [k, hq*wq], row 0 the count of all samples, row 1 + i the sum of
    the values of mean channel i of `plan` (times its factor), each sample weighted by the centre weight `cw` of
    `weights2d` (the smoothing passes use centre taps 1, so the smoothed count comes out with the kernel's own
    weights).

    Also, per field, how to get the count of the samples that have a value: row 0 itself when all values are
    finite (an empty index array), the canvas indices of the few samples without a value (their smoothed
    footprints are taken off afterwards, at the pixels they reach only), or a canvas row of its own (an int)
    when that would touch more pixels than recounting.
    """
    r = lay.r
    cw = float(weights2d[r, r])
    cw32 = np.float32(cw)
    scales = {src: sc * (1.0 if src == "bearing" else cw) for _, src, sc in plan}
    flat, vals, bad = _gather(samples, col_off, row_off, lay, {f: scales[f] for f in need})
    n = flat.shape[0]
    n_rows = 1 + len(plan)
    taps = int(np.count_nonzero(weights2d))
    dense = [f for f in need if bad[f].shape[0] * taps > max(n // 4, 4096)]
    canvas = _WS.get("canvas", (n_rows + len(dense), lay.size), np.float32)
    canvas.fill(0.0)
    fix: dict[str, int | np.ndarray] = {f: flat[bad[f]] for f in need}
    for i, f in enumerate(dense):
        fix[f] = n_rows + i
    if n == 0:
        return canvas, fix
    np.add.at(canvas[0], flat, cw32)
    for f in need:
        if bad[f].shape[0]:
            vals[f][bad[f]] = 0.0
    for i, (name, src, _) in enumerate(plan):
        v = vals[src]
        if src == "bearing":  # radians -> sin or cos, weighted; 0 where the bearing is missing
            t = _WS.get(name, (n,), np.float32)
            (np.sin if name == "bearing_sin" else np.cos)(v, out=t)
            t *= cw32
            t[bad[src]] = 0.0
            v = t
        np.add.at(canvas[1 + i], flat, v)
    for f in dense:
        row = fix[f]
        np.copyto(canvas[row], canvas[0])
        np.subtract.at(canvas[row], flat[bad[f]], cw32)
    return canvas, fix


def _smooth_separable(canvas: np.ndarray, u: np.ndarray, lay: _Layout) -> np.ndarray:
    """Correlate each canvas row with the separable kernel outer(u, u) (`u` symmetric, float32, centre 1).

    Every pass is a sum of shifted 1-D slices of the flat rows: a horizontal tap shifts by one element, a
    vertical tap by `wq`. The horizontal pass mixes a row's margin columns with the next row's, but no output
    pixel reads those. Returns float32 [k, nv] (see `_Layout.nv`).
    """
    r, wq = lay.r, lay.wq
    k, length = canvas.shape
    nh = length - 2 * r  # h[i] is centred on canvas element i + r
    base = (r + 1) * wq + 1  # v[j] is centred on h element j + base
    nv = lay.nv
    if r == 0:
        return canvas[:, base:base + nv]
    h = _WS.get("h", (k, nh), np.float32)
    np.add(canvas[:, r - 1:r - 1 + nh], canvas[:, r + 1:r + 1 + nh], out=h)
    h *= u[r + 1]
    h += canvas[:, r:r + nh]
    if r > 1:
        tmp = _WS.get("tmp", (k, nh), np.float32)
        for t in range(2, r + 1):
            np.add(canvas[:, r - t:r - t + nh], canvas[:, r + t:r + t + nh], out=tmp)
            tmp *= u[r + t]
            h += tmp
    v = _WS.get("v", (k, nv), np.float32)
    np.add(h[:, base - wq:base - wq + nv], h[:, base + wq:base + wq + nv], out=v)
    v *= u[r + 1]
    v += h[:, base:base + nv]
    if r > 1:
        tmp = _WS.get("tmp", (k, nv), np.float32)
        for t in range(2, r + 1):
            np.add(h[:, base - t * wq:base - t * wq + nv], h[:, base + t * wq:base + t * wq + nv], out=tmp)
            tmp *= u[r + t]
            v += tmp
    return v


def _smooth_footprint(canvas: np.ndarray, foot: np.ndarray, lay: _Layout) -> np.ndarray:
    """Correlate each canvas row with a 0/1 footprint (binary mode); same output layout as `_smooth_separable`."""
    k = canvas.shape[0]
    c2 = canvas.reshape(k, lay.hq, lay.wq)
    v = _WS.get("v", (k, lay.height * lay.wq), np.float32)
    v.fill(0.0)
    vw = v.reshape(k, lay.height, lay.wq)[:, :, :lay.width]
    for dy, dx in zip(*np.nonzero(foot), strict=True):
        vw += c2[:, 1 + dy:1 + dy + lay.height, 1 + dx:1 + dx + lay.width]
    return v[:, :lay.nv]


def _missing_footprint(bad_flat: np.ndarray, weights2d: np.ndarray, lay: _Layout
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed count of the samples at canvas indices `bad_flat` at the window pixels they reach:
    (pixel indices y * wq + x, possibly repeated, and the whole count at each)."""
    r = lay.r
    cy, cx = np.divmod(bad_flat, lay.wq)
    off = np.arange(-r, r + 1)
    ty = (cy - r - 1)[:, None, None] + off[None, :, None]
    tx = (cx - r - 1)[:, None, None] + off[None, None, :]
    ok = (ty >= 0) & (ty < lay.height) & (tx >= 0) & (tx < lay.width) & (weights2d[None] > 0)
    idx = (ty * lay.wq + tx)[ok]
    w = np.broadcast_to(weights2d[None], ok.shape)[ok]
    acc = _WS.get("missing", (lay.nv,), np.float64)
    acc[idx] = 0.0  # only the entries used below need to start at zero
    np.add.at(acc, idx, w)
    return idx, acc[idx]


def _finish(v: np.ndarray, fix: dict[str, int | np.ndarray], params: RenderParams,
            plan: list[tuple[str, str, float]], lay: _Layout, weights2d: np.ndarray) -> np.ndarray:
    """Turn smoothed sums ([k, nv], `_smooth_separable` layout) into the output channels."""
    out = np.empty((params.n_channels, lay.height, lay.width), dtype=np.float32)
    names = params.channel_names()
    count = lay.crop(v[0])
    if "density" in names:
        o = out[names.index("density")]
        if params.mode == "binary":
            np.greater(count, 0.5, out=o)
        elif params.scale == "log":
            np.log1p(count, out=o)
            o *= 1.0 / math.log1p(params.density_norm)
        else:
            np.multiply(count, 1.0 / params.density_norm, out=o)
    if not plan:
        return out
    # Any positive floor below the smallest kernel weight keeps 0 / 0 away: the sums are exactly 0 wherever
    # no valid sample is within reach.
    thr = max(0.5 * float(weights2d[weights2d > 0].min()), 1e-30)
    shared = None
    patches: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for i, (name, src, _) in enumerate(plan):
        o = out[names.index(name)]
        f = fix[src]
        if isinstance(f, int):  # a dense count of the samples with a value (clamping twice is harmless)
            den = np.maximum(v[f], thr, out=v[f])
        else:
            if shared is None:
                shared = np.maximum(v[0], thr, out=_WS.get("den", (lay.nv,), np.float32))
            den = shared
        np.divide(lay.crop(v[1 + i]), lay.crop(den), out=o)
        if isinstance(f, np.ndarray) and f.shape[0]:
            # pixels reached by samples without a value: divide by the count of those with one instead
            if src not in patches:
                pix, miss = _missing_footprint(f, weights2d, lay)
                y, x = np.divmod(pix, lay.wq)
                patches[src] = (pix, y, x, np.maximum(v[0][pix] - miss, thr))
            pix, y, x, valid = patches[src]
            o[y, x] = v[1 + i][pix] / valid
    return out

