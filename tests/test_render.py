"""Rendering against a slow per-sample reference, tiling, empty input, KDE range, parameter handling.

Rendering tests run once per implementation (the `backend` fixture): the compiled one (numba) and the numpy
fallback used where numba is not installed. The numba-only tests at the end cover its own machinery (bands,
bucket blocks, sparse / dense missing values, backend choice) and check both implementations agree.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import roadmap_cli.render as R
from roadmap_cli.errors import RoadmapError
from roadmap_cli.render import RenderParams, default_sigma, gaussian_taps, kde, kde_margin, render
from roadmap_cli.store import SAMPLE_DTYPE


def numba_kernels():  # noqa: ANN201 - the kernels module
    """The compiled kernels, or a skip where numba is not installed (the numpy fallback is still tested)."""
    try:
        return R._load_backend("numba")
    except RoadmapError as e:
        pytest.skip(f"numba not installed here: {e}")


@pytest.fixture(params=["numba", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make `render` use one implementation for the test."""
    monkeypatch.setattr(R, "_BACKEND", [numba_kernels() if request.param == "numba" else None])
    return request.param


def make_samples(rng: np.random.Generator, n: int, col0: float, row0: float, w: float, h: float,
                 nan_frac: float = 0.1) -> np.ndarray:
    """Random samples in a box, a cluster sharing a few pixels, and some NaN values."""
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["col"] = rng.uniform(col0, col0 + w, n)
    s["row"] = rng.uniform(row0, row0 + h, n)
    k = n // 5  # pile some samples into a few pixels so that counts exceed 1
    s["col"][:k] = col0 + w / 2 + rng.integers(0, 3, k) + rng.uniform(0, 1, k)
    s["row"][:k] = row0 + h / 2 + rng.uniform(0, 1, k)
    s["time"] = np.arange(n, dtype=np.float64)
    s["vehicle"] = rng.integers(0, 5, n)
    s["interval"] = rng.uniform(1, 60, n)
    s["speed"] = rng.uniform(0, 25, n)
    s["bearing"] = rng.uniform(0, 360, n)
    for f in ("interval", "speed", "bearing"):
        s[f][rng.random(n) < nan_frac] = np.nan
    return s


def reference(samples: np.ndarray, col_off: float, row_off: float, w: int, h: int, p: RenderParams) -> np.ndarray:
    """One sample at a time: add its kernel footprint to every pixel it reaches (slow and obvious)."""
    if p.mode == "gaussian":
        g = gaussian_taps(p.kernel_size, p.sigma)
        k2 = np.outer(g, g)
    else:
        t = np.arange(-p.binary_radius, p.binary_radius + 1)
        k2 = ((t[:, None] ** 2 + t[None, :] ** 2) <= p.binary_radius ** 2).astype(np.float64)
    r = k2.shape[0] // 2
    count = np.zeros((h, w))
    sums = {k: np.zeros((h, w)) for k in ("interval", "speed", "bearing_sin", "bearing_cos")}
    valid = {k: np.zeros((h, w)) for k in ("interval", "speed", "bearing")}
    for s in samples:
        if not (np.isfinite(s["col"]) and np.isfinite(s["row"])):
            continue
        px = math.floor(s["col"] - col_off)
        py = math.floor(s["row"] - row_off)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                y, x = py + dy, px + dx
                if not (0 <= y < h and 0 <= x < w):
                    continue
                wt = k2[dy + r, dx + r]
                count[y, x] += wt
                for f in ("interval", "speed"):
                    if np.isfinite(s[f]):
                        sums[f][y, x] += wt * float(s[f])
                        valid[f][y, x] += wt
                if np.isfinite(s["bearing"]):
                    b = math.radians(float(s["bearing"]))
                    sums["bearing_sin"][y, x] += wt * math.sin(b)
                    sums["bearing_cos"][y, x] += wt * math.cos(b)
                    valid["bearing"][y, x] += wt

    def mean(total: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        out = np.zeros_like(total)
        nz = cnt > 1e-12
        out[nz] = total[nz] / cnt[nz]
        return out

    chans = []
    for c in p.channels:
        if c == "density":
            if p.mode == "binary":
                chans.append((count > 0).astype(np.float64))
            elif p.scale == "log":
                chans.append(np.log1p(count) / np.log1p(p.density_norm))
            else:
                chans.append(count / p.density_norm)
        elif c == "interval":
            chans.append(mean(sums["interval"], valid["interval"]) / p.interval_norm)
        elif c == "speed":
            chans.append(mean(sums["speed"], valid["speed"]) / p.speed_norm)
        else:
            chans.append(mean(sums["bearing_sin"], valid["bearing"]))
            chans.append(mean(sums["bearing_cos"], valid["bearing"]))
    return np.stack(chans)


ALL = ("density", "interval", "speed", "bearing")


@pytest.mark.parametrize(
    "params",
    [
        RenderParams(channels=ALL),
        RenderParams(channels=ALL, scale="linear"),
        RenderParams(channels=("bearing", "speed", "density"), kernel_size=5, sigma=1.3),
        RenderParams(channels=ALL, kernel_size=7),
        RenderParams(channels=ALL, kernel_size=1),
        RenderParams(channels=ALL, mode="binary", binary_radius=2),
        RenderParams(channels=("density", "interval"), mode="binary", binary_radius=0),
    ],
    ids=["log3", "linear3", "k5-reordered", "k7", "k1", "binary2", "binary0"],
)
@pytest.mark.parametrize("offset", [(100, 50), (7.25, 3.5)], ids=["int-offset", "frac-offset"])
def test_matches_reference(params: RenderParams, offset: tuple[float, float], backend: str) -> None:
    rng = np.random.default_rng(1)
    col_off, row_off = offset
    w, h = 23, 17
    m = params.margin + 3  # some samples lie beyond the margin: they must be ignored
    s = make_samples(rng, 400, col_off - m, row_off - m, w + 2 * m, h + 2 * m)
    got = render(s, col_off, row_off, w, h, params)
    want = reference(s, col_off, row_off, w, h, params)
    assert got.dtype == np.float32 and got.shape == (params.n_channels, h, w)
    assert np.isfinite(got).all()
    for i, name in enumerate(params.channel_names()):
        np.testing.assert_allclose(got[i], want[i], rtol=2e-5, atol=2e-5, err_msg=name)
    assert got[0].max() > 0  # the test data reach the window


def test_many_missing_values_use_dense_counts(backend: str) -> None:
    """Most intervals missing: the dense valid-count path must agree with the reference too."""
    rng = np.random.default_rng(2)
    p = RenderParams(channels=ALL)
    s = make_samples(rng, 3000, 0, 0, 30, 30, nan_frac=0.7)
    np.testing.assert_allclose(render(s, 2, 2, 26, 26, p), reference(s, 2, 2, 26, 26, p), rtol=2e-5, atol=2e-5)


def test_density_values_simple(backend: str) -> None:
    """Two samples in one pixel, linear scale: the centre holds 2 * g_c**2 / norm, the kernel sums to 2 / norm."""
    p = RenderParams(channels=("density",), scale="linear", density_norm=1.0)
    s = np.zeros(2, dtype=SAMPLE_DTYPE)
    s["col"], s["row"] = 5.3, 4.9
    d = render(s, 0, 0, 11, 11, p)[0]
    g = gaussian_taps(3)
    assert d[4, 5] == pytest.approx(2 * g[1] ** 2, rel=1e-6)
    assert d.sum() == pytest.approx(2.0, rel=1e-6)
    assert d[4, 7] == 0 and d[6, 5] == 0


def test_tiles_equal_whole_render(backend: str) -> None:
    rng = np.random.default_rng(3)
    for p in (RenderParams(channels=ALL), RenderParams(channels=ALL, kernel_size=5),
              RenderParams(channels=ALL, mode="binary", binary_radius=3)):
        W, H, T = 48, 40, 16
        s = make_samples(rng, 3000, -5, -5, W + 10, H + 10)
        whole = render(s, 0, 0, W, H, p)
        m = p.margin
        for r0 in range(0, H, T):
            for c0 in range(0, W, T):
                tw, th = min(T, W - c0), min(T, H - r0)
                # what a store query over the grown window returns
                sel = ((s["col"] >= c0 - m) & (s["col"] < c0 + tw + m)
                       & (s["row"] >= r0 - m) & (s["row"] < r0 + th + m))
                tile = render(s[sel], c0, r0, tw, th, p)
                np.testing.assert_allclose(tile, whole[:, r0:r0 + th, c0:c0 + tw], rtol=1e-5, atol=1e-6)


def test_empty_and_far_samples_give_zeros(backend: str) -> None:
    p = RenderParams(channels=ALL)
    out = render(np.zeros(0, dtype=SAMPLE_DTYPE), 0, 0, 8, 6, p)
    assert out.shape == (5, 6, 8) and out.dtype == np.float32 and not out.any()
    s = make_samples(np.random.default_rng(4), 50, 100, 100, 10, 10)
    assert not render(s, 0, 0, 8, 6, p).any()
    s["col"][:10] = np.nan
    assert not render(s, 0, 0, 8, 6, p).any()


def test_missing_values_never_count(backend: str) -> None:
    """A pixel reached only by samples without interval has interval 0 but non-zero density."""
    s = np.zeros(3, dtype=SAMPLE_DTYPE)
    s["col"], s["row"] = [2.5, 2.5, 12.5], [2.5, 2.5, 2.5]
    s["interval"] = [np.nan, np.nan, 10.0]
    s["bearing"] = [np.nan, np.nan, 90.0]
    out = render(s, 0, 0, 16, 6, RenderParams(channels=("density", "interval", "bearing"), interval_norm=10.0))
    assert out[0, 2, 2] > 0 and out[1, 2, 2] == 0 and out[2, 2, 2] == 0 and out[3, 2, 2] == 0
    np.testing.assert_allclose(out[1, 1:4, 11:14], 1.0, rtol=1e-6)  # mean of one value is the value
    np.testing.assert_allclose(out[2, 1:4, 11:14], 1.0, atol=1e-6)  # sin 90 degrees
    np.testing.assert_allclose(out[3, 1:4, 11:14], 0.0, atol=1e-6)  # cos 90 degrees


def test_kde_range_and_tiling(backend: str) -> None:
    rng = np.random.default_rng(5)
    s = make_samples(rng, 4000, 0, 0, 40, 40)
    k = kde(s, 0, 0, 40, 40, kernel_size=9, reference=4.0)
    assert k.dtype == np.float32 and k.shape == (40, 40)
    assert k.min() >= 0 and k.max() <= 1 and k.max() == 1.0 and 0 < k.mean() < 1
    lin = kde(s, 0, 0, 40, 40, kernel_size=5, scale="linear", reference=1000.0)
    assert 0 < lin.max() < 1
    m = kde_margin(9)
    sel = (s["col"] >= 20 - m) & (s["row"] >= 20 - m)
    np.testing.assert_allclose(kde(s[sel], 20, 20, 20, 20, kernel_size=9, reference=4.0), k[20:, 20:], atol=1e-6)


def test_params_roundtrip_and_names() -> None:
    p = RenderParams(channels="density, bearing ,interval", kernel_size=5, sigma=1.5, scale="linear")
    assert p.channel_names() == ["density", "bearing_sin", "bearing_cos", "interval"]
    assert p.n_channels == 4 and p.margin == 2 and p.bearing_channels() == (1, 2)
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert RenderParams.from_dict(d) == p
    assert RenderParams().margin == 1 and RenderParams(mode="binary", binary_radius=4).margin == 4
    assert RenderParams().effective_sigma == pytest.approx(default_sigma(3)) == pytest.approx(0.8)
    assert RenderParams().bearing_channels() is None


@pytest.mark.parametrize("kw", [
    {"channels": ("density", "colour")}, {"channels": ()}, {"channels": ("density", "density")},
    {"kernel_size": 4}, {"kernel_size": 0}, {"mode": "splat"}, {"scale": "sqrt"}, {"sigma": -1.0},
    {"density_norm": 0.0}, {"interval_norm": float("nan")}, {"binary_radius": -1},
])
def test_bad_params(kw: dict) -> None:
    with pytest.raises(RoadmapError):
        RenderParams(**kw)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(RoadmapError, match="wobble"):
        RenderParams.from_dict({**RenderParams().to_dict(), "wobble": 1})


def test_imports_stay_light() -> None:
    """render and augment must be usable where only numpy is installed (no torch, rasterio, pyproj, scipy);
    numba is imported on the first render only (importing it takes ~0.4 s)."""
    code = ("import sys, roadmap_cli.render, roadmap_cli.augment; "
            "print([m for m in ('torch', 'rasterio', 'pyproj', 'geopandas', 'numba') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_chunked_gather_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy path: many small chunks, some wholly outside the canvas, some with NaN coordinates: same result."""
    monkeypatch.setattr(R, "_BACKEND", [None])
    rng = np.random.default_rng(6)
    p = RenderParams(channels=ALL)
    s = make_samples(rng, 700, -10, -10, 50, 50)
    s[100:180]["col"] += 500  # a run of samples far away: a whole chunk to drop
    s["row"][::37] = np.nan
    want = render(s, 0, 0, 30, 30, p)
    monkeypatch.setattr(R, "_CHUNK", 37)
    got = render(s, 0, 0, 30, 30, p)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, reference(s, 0, 0, 30, 30, p), rtol=2e-5, atol=2e-5)


def test_threads_do_not_share_scratch(backend: str) -> None:
    """Scratch buffers are per thread: concurrent renders of different windows give the serial results."""
    from concurrent.futures import ThreadPoolExecutor

    from roadmap_cli.render import release_workspace

    rng = np.random.default_rng(7)
    p = RenderParams(channels=ALL)
    jobs = [(make_samples(rng, 20000, 0, 0, 40 + 8 * i, 40), 40 + 8 * i) for i in range(6)]
    serial = [render(s, 0, 0, w, 40, p) for s, w in jobs]
    with ThreadPoolExecutor(3) as ex:
        for _ in range(3):
            par = list(ex.map(lambda job: render(job[0], 0, 0, job[1], 40, p), jobs))
            for a, b in zip(serial, par, strict=True):
                np.testing.assert_array_equal(a, b)
    release_workspace()
    np.testing.assert_array_equal(render(jobs[0][0], 0, 0, jobs[0][1], 40, p), serial[0])


# --------------------------------------------------------------------------------------------------------------
# the compiled implementation's own machinery


def fast_reference(samples: np.ndarray, col_off: float, row_off: float, w: int, h: int, p: RenderParams
                   ) -> np.ndarray:
    """`reference` vectorised, in float64: per-pixel sums on the window grown by the kernel radius, then the
    2-D kernel applied by shifts. Quick enough for inputs too big for the per-sample loop."""
    if p.mode == "gaussian":
        g = gaussian_taps(p.kernel_size, p.sigma)
        k2 = np.outer(g, g)
    else:
        t = np.arange(-p.binary_radius, p.binary_radius + 1)
        k2 = ((t[:, None] ** 2 + t[None, :] ** 2) <= p.binary_radius ** 2).astype(np.float64)
    r = k2.shape[0] // 2
    with np.errstate(invalid="ignore"):
        px = np.floor(samples["col"] - col_off) + r
        py = np.floor(samples["row"] - row_off) + r
        ok = (px >= 0) & (px < w + 2 * r) & (py >= 0) & (py < h + 2 * r)
    px, py, s = px[ok].astype(np.intp), py[ok].astype(np.intp), samples[ok]

    def smooth(weights: np.ndarray) -> np.ndarray:
        c = np.zeros((h + 2 * r, w + 2 * r))
        np.add.at(c, (py, px), weights)
        out = np.zeros((h, w))
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                out += k2[dy, dx] * c[dy:dy + h, dx:dx + w]
        return out

    def mean(values: np.ndarray, has: np.ndarray) -> np.ndarray:
        cnt = smooth(has.astype(np.float64))
        tot = smooth(np.where(has, values, 0.0))
        return np.where(cnt > 1e-12, tot / np.where(cnt > 1e-12, cnt, 1.0), 0.0)

    count = smooth(np.ones(s.shape[0]))
    chans = []
    for c in p.channels:
        if c == "density":
            if p.mode == "binary":
                chans.append((count > 0.5).astype(np.float64))
            elif p.scale == "log":
                chans.append(np.log1p(count) / np.log1p(p.density_norm))
            else:
                chans.append(count / p.density_norm)
        elif c in ("interval", "speed"):
            v = s[c].astype(np.float64)
            chans.append(mean(v, np.isfinite(v)) / (p.interval_norm if c == "interval" else p.speed_norm))
        else:
            b = np.radians(s["bearing"].astype(np.float64))
            chans.append(mean(np.sin(b), np.isfinite(b)))
            chans.append(mean(np.cos(b), np.isfinite(b)))
    return np.stack(chans)


def test_fast_reference_is_the_reference() -> None:
    rng = np.random.default_rng(10)
    s = make_samples(rng, 500, -4, -4, 30, 26)
    for p in (RenderParams(channels=ALL, kernel_size=5), RenderParams(channels=ALL, mode="binary", binary_radius=2)):
        np.testing.assert_allclose(fast_reference(s, 0.5, -1.0, 23, 19, p), reference(s, 0.5, -1.0, 23, 19, p),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [
    RenderParams(channels=ALL), RenderParams(channels=("interval", "density"), scale="linear"),
    RenderParams(channels=("speed", "bearing"), kernel_size=9), RenderParams(channels=ALL, kernel_size=5, sigma=2.0),
    RenderParams(channels=ALL, mode="binary", binary_radius=4), RenderParams(channels=("density",), kernel_size=1),
], ids=["all", "linear", "k9-no-density", "k5-sigma2", "binary4", "k1-density"])
@pytest.mark.parametrize("nan_frac", [0.02, 0.6], ids=["few-missing", "most-missing"])
def test_backends_agree(p: RenderParams, nan_frac: float) -> None:
    """A bigger input (many bucket blocks; ~2000 samples in each pixel of the cluster): the numba and numpy
    renders both match the float64 reference, hence each other, to float32 rounding. (The numpy path sums
    values pre-scaled, in sample order, so its error in those crowded pixels is ~2e-5 of the mean against the
    compiled one's ~1e-6: the tolerances say so.)"""
    jit = numba_kernels()
    rng = np.random.default_rng(11)
    s = make_samples(rng, 30000, -6.5, -3.25, 90, 70, nan_frac=nan_frac)
    want = fast_reference(s, -0.5, 1.75, 77, 61, p)
    got = R._render_numba(jit, s, -0.5, 1.75, 77, 61, p)
    plan = R._plan(p)
    fallback = R._render_numpy(s, -0.5, 1.75, 77, 61, p, plan, tuple(dict.fromkeys(src for _, src, _ in plan)))
    assert got.dtype == np.float32 and got.shape == want.shape and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=5e-6, atol=1e-6)
    np.testing.assert_allclose(fallback, want, rtol=5e-5, atol=1e-6)


def test_many_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Canvas bands of 1 and 2 rows (fewer rows than the kernel spans) give the single-band result."""
    jit = numba_kernels()
    rng = np.random.default_rng(12)
    s = make_samples(rng, 5000, 0, 0, 40, 40)
    for p in (RenderParams(channels=ALL, kernel_size=7), RenderParams(channels=ALL, mode="binary", binary_radius=3)):
        whole = R._render_numba(jit, s, 2.0, 3.0, 33, 35, p)
        for floats in (1, 2 * 41 * 6):  # bh = 1, then 2 for the widest canvas rows here
            monkeypatch.setattr(jit, "BAND_FLOATS", floats)
            assert jit.band_rows(41, 6, 41) <= 2
            np.testing.assert_allclose(R._render_numba(jit, s, 2.0, 3.0, 33, 35, p), whole, rtol=1e-6, atol=1e-7)
        monkeypatch.undo()


def test_sparse_dense_and_overflow_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field's missing values handled as a list (sparse), as a count channel (dense), or found too many for
    a list mid-render (redone dense): the same result, matching the reference."""
    jit = numba_kernels()
    rng = np.random.default_rng(13)
    p = RenderParams(channels=ALL)
    for nan_frac in (0.05, 0.7):
        s = make_samples(rng, 6000, 0, 0, 30, 30, nan_frac=nan_frac)
        runs = []
        for frac in (2.0, -1.0):  # never dense by the probe (0.7: the list overflows), always dense
            monkeypatch.setattr(R, "_DENSE_FRACTION", frac)
            runs.append(R._render_numba(jit, s, 2.0, 2.0, 26, 26, p))
        np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(runs[0], reference(s, 2, 2, 26, 26, p), rtol=2e-5, atol=2e-5)


def test_render_is_deterministic() -> None:
    """Same input, same bits (the implementation chosen for missing values depends only on the samples)."""
    jit = numba_kernels()
    rng = np.random.default_rng(14)
    p = RenderParams(channels=ALL)
    mostly_missing = make_samples(rng, 6000, 0, 0, 30, 30, nan_frac=0.7)
    few_missing = make_samples(rng, 6000, 0, 0, 30, 30, nan_frac=0.01)
    first = R._render_numba(jit, few_missing, 0.0, 0.0, 30, 30, p)
    R._render_numba(jit, mostly_missing, 0.0, 0.0, 30, 30, p)
    np.testing.assert_array_equal(R._render_numba(jit, few_missing, 0.0, 0.0, 30, 30, p), first)


def test_other_sample_dtypes(backend: str) -> None:
    """Big-endian fields, float32 coordinates, other field order and extra fields: the same render."""
    rng = np.random.default_rng(15)
    s = make_samples(rng, 2000, 0, 0, 20, 20)
    p = RenderParams(channels=ALL)
    want = render(s, 1, 1, 18, 18, p)
    odd = np.zeros(s.shape[0], dtype=[("extra", "u1"), ("bearing", ">f8"), ("row", ">f8"), ("col", "<f8"),
                                      ("speed", "<f8"), ("interval", ">f4")])
    for f in ("bearing", "row", "col", "speed", "interval"):
        odd[f] = s[f]
    np.testing.assert_allclose(render(odd, 1, 1, 18, 18, p), want, rtol=1e-6, atol=1e-7)
    s32 = s[["col", "row", "interval"]].astype([("col", "<f4"), ("row", "<f4"), ("interval", "<f4")])
    p2 = RenderParams(channels=("density", "interval"))
    np.testing.assert_allclose(render(s32, 1, 1, 18, 18, p2), render(s32.astype([("col", "<f8"), ("row", "<f8"),
                               ("interval", "<f4")]), 1, 1, 18, 18, p2), rtol=1e-6, atol=1e-7)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert R._load_backend("numpy") is None
    with pytest.raises(RoadmapError, match="ROADMAP_RENDER_BACKEND"):
        R._load_backend("fortran")
    assert R._load_backend("numba") is numba_kernels()
    monkeypatch.setattr(R, "_BACKEND", [])
    monkeypatch.setenv("ROADMAP_RENDER_BACKEND", "numpy")
    assert R.backend_name() == "numpy"
    monkeypatch.setattr(R, "_BACKEND", [])
    monkeypatch.setenv("ROADMAP_RENDER_BACKEND", "auto")
    assert R.backend_name() == "numba"
