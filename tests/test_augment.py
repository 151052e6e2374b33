"""GPS augmentation steps, reproducibility, geometry (alignment, bearing channels) and colour jitter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from roadmap_cli.augment import (
    GpsAugment,
    apply_geometric,
    colour_jitter,
    draw_geometric,
    geometric_augment,
)
from roadmap_cli.errors import RoadmapError
from roadmap_cli.render import RenderParams, render
from roadmap_cli.store import SAMPLE_DTYPE

W = H = 64


def samples(n: int = 20000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["col"] = rng.uniform(100, 100 + W, n)
    s["row"] = rng.uniform(200, 200 + H, n)
    s["time"] = np.arange(n)
    s["interval"] = rng.uniform(1, 30, n)
    s["speed"] = rng.uniform(0, 20, n)
    s["bearing"] = rng.uniform(0, 360, n)
    return s


def only(step: str, **kw) -> GpsAugment:
    return GpsAugment.from_spec(step, **{step + "_p": 1.0}, **kw)


def test_none_is_identity_and_draws_nothing() -> None:
    s = samples(100)
    aug = GpsAugment.from_spec("none")
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    out = aug.apply(s, 100, 200, W, H, rng)
    assert out is s and not aug.enabled
    assert rng.bit_generator.state == state


def test_subsample_keeps_about_the_fraction() -> None:
    s = samples(20000)
    aug = only("subsample", subsample_keep=(0.3, 0.3))
    out = aug.apply(s, 100, 200, W, H, np.random.default_rng(2))
    assert out.shape[0] == pytest.approx(6000, abs=300)
    assert np.isin(out["time"], s["time"]).all()  # a subset, fields untouched
    np.testing.assert_array_equal(out["interval"], s["interval"][np.isin(s["time"], out["time"])])


def test_subres_quantises_to_the_factor_grid() -> None:
    s = samples(5000)
    aug = only("subres", subres_factor=(3.0, 6.0))
    rng = np.random.default_rng(3)
    drawn = aug.draw(np.random.default_rng(3), 100, 200, W, H)
    f = drawn["subres"]
    assert 3.0 <= f <= 6.0
    out = aug.apply(s, 100, 200, W, H, rng)
    for k in ("col", "row"):
        q = out[k] / f
        np.testing.assert_allclose(q, np.round(q), atol=1e-9)
        assert np.abs(out[k] - s[k]).max() <= f / 2 + 1e-9  # the nearest grid point
    assert len(np.unique(out["col"])) < W / 3 + 2


def test_perturbation_std_close_to_asked() -> None:
    s = samples(40000)
    aug = only("perturb", perturb_sigma=(2.5, 2.5))
    out = aug.apply(s, 100, 200, W, H, np.random.default_rng(4))
    for k in ("col", "row"):
        d = out[k] - s[k]
        assert abs(d.mean()) < 0.05 and d.std() == pytest.approx(2.5, rel=0.03)
    assert s["col"].min() >= 100  # the input was not modified


def test_omission_leaves_the_rectangle_empty() -> None:
    s = samples(20000)
    aug = only("omit", omit_size=(0.3, 0.5))
    drawn = aug.draw(np.random.default_rng(5), 100, 200, W, H)
    c0, r0, c1, r1 = drawn["omit"]
    assert 100 <= c0 < c1 <= 100 + W and 200 <= r0 < r1 <= 200 + H
    assert 0.3 * W - 1e-9 <= c1 - c0 <= 0.5 * W + 1e-9
    out = aug.apply(s, 100, 200, W, H, np.random.default_rng(5))
    inside = (out["col"] >= c0) & (out["col"] < c1) & (out["row"] >= r0) & (out["row"] < r1)
    assert not inside.any()
    was_inside = (s["col"] >= c0) & (s["col"] < c1) & (s["row"] >= r0) & (s["row"] < r1)
    assert out.shape[0] == s.shape[0] - was_inside.sum() > 0
    # the rendered window is empty well inside the rectangle (the kernel reaches 1 px in)
    d = render(out, 100, 200, W, H, RenderParams(channels=("density",)))[0]
    y0, y1 = int(np.ceil(r0 - 200)) + 1, int(np.floor(r1 - 200)) - 1
    x0, x1 = int(np.ceil(c0 - 100)) + 1, int(np.floor(c1 - 100)) - 1
    assert not d[y0:y1, x0:x1].any() and d.sum() > 0


def test_all_steps_deterministic_for_seeded_rng() -> None:
    s = samples(3000)
    aug = GpsAugment.from_spec("subsample,subres,perturb,omit", subsample_p=1, subres_p=1, perturb_p=1, omit_p=1)
    a = aug.apply(s, 100, 200, W, H, np.random.default_rng(6))
    b = aug.apply(s, 100, 200, W, H, np.random.default_rng(6))
    c = aug.apply(s, 100, 200, W, H, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert a.dtype == SAMPLE_DTYPE


def test_probabilities_are_respected() -> None:
    aug = GpsAugment(subsample_p=0.3, subres_p=0.0, perturb_p=1.0, omit_p=0.5)
    rng = np.random.default_rng(8)
    got = [aug.draw(rng, 0, 0, W, H) for _ in range(2000)]
    assert np.mean(["subsample" in d for d in got]) == pytest.approx(0.3, abs=0.04)
    assert np.mean(["omit" in d for d in got]) == pytest.approx(0.5, abs=0.04)
    assert all("perturb" in d and "subres" not in d for d in got)


def test_spec_overrides_and_dict() -> None:
    aug = GpsAugment.from_spec("subsample, omit", omit_p=0.9)
    assert aug.subres_p == 0 and aug.perturb_p == 0 and aug.omit_p == 0.9 and aug.subsample_p > 0
    d = aug.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert GpsAugment.from_dict(d) == aug
    for bad in ("", "subsample,blur"):
        with pytest.raises(RoadmapError):
            GpsAugment.from_spec(bad)
    with pytest.raises(RoadmapError):
        GpsAugment.from_spec("none", wobble=1)
    with pytest.raises(RoadmapError):
        GpsAugment(subsample_p=1.5)
    with pytest.raises(RoadmapError):
        GpsAugment(perturb_sigma=(3, 1))
    with pytest.raises(RoadmapError):
        GpsAugment(omit_size=(0.5, 2.0))


def test_geometric_keeps_arrays_aligned() -> None:
    rng = np.random.default_rng(9)
    img = np.zeros((3, 8, 8), np.uint8)
    gps = np.zeros((2, 8, 8), np.float32)
    lab = np.zeros((8, 8), np.uint8)
    img[:, 1, 5] = 255
    gps[:, 1, 5] = 1
    lab[1, 5] = 1
    seen = set()
    for _ in range(64):
        a, g, lb = geometric_augment([img, gps, lab], rng)
        assert a.flags.c_contiguous and g.flags.c_contiguous and lb.flags.c_contiguous
        assert a.shape == img.shape and g.shape == gps.shape and lb.shape == lab.shape
        pos = tuple(np.argwhere(lb)[0])
        assert tuple(np.argwhere(a[0])[0]) == pos == tuple(np.argwhere(g[1])[0])
        seen.add(pos)
    assert len(seen) == 8  # all eight symmetries occur
    assert lab[1, 5] == 1 and lab.sum() == 1  # inputs untouched


def test_geometric_non_square_and_mismatch() -> None:
    rng = np.random.default_rng(10)
    a = np.arange(12).reshape(3, 4)
    for _ in range(20):
        (b,) = geometric_augment([a], rng)
        assert b.shape == (3, 4)
    with pytest.raises(ValueError):
        geometric_augment([a, np.zeros((4, 3))], rng)
    k, _ = draw_geometric(rng, square=False)
    assert k in (0, 2)


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_bearing_channels_follow_the_geometry(k: int, flip: bool) -> None:
    """Turning the rendering equals rendering the turned samples, bearing channels included."""
    rng = np.random.default_rng(11)
    n, S = 300, 16
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["col"], s["row"] = rng.uniform(0.01, S - 0.01, n), rng.uniform(0.01, S - 0.01, n)
    s["bearing"] = rng.uniform(0, 360, n)
    p = RenderParams(channels=("density", "bearing"))
    (got,) = apply_geometric([render(s, 0, 0, S, S, p)], k, flip, bearing=[(0, *p.bearing_channels())])
    t = s.copy()
    for _ in range(k):  # a counter-clockwise quarter turn of the picture
        t["col"], t["row"] = t["row"].copy(), S - t["col"]
        t["bearing"] = (t["bearing"] - 90) % 360
    if flip:
        t["col"] = S - t["col"]
        t["bearing"] = (360 - t["bearing"]) % 360
    np.testing.assert_allclose(got, render(t, 0, 0, S, S, p), atol=2e-5)


def test_colour_jitter() -> None:
    rng = np.random.default_rng(12)
    rgb = rng.integers(30, 220, (3, 16, 16)).astype(np.uint8)
    rgb[:, 0, :] = 0  # no imagery
    outs = [colour_jitter(rgb, np.random.default_rng(i)) for i in range(10)]
    for o in outs:
        assert o.dtype == np.uint8 and o.shape == rgb.shape
        assert not o[:, 0, :].any()
        diff = np.abs(o.astype(int) - rgb.astype(int))[:, 1:]
        assert diff.mean() < 25  # small changes
    assert any(not np.array_equal(o, rgb) for o in outs)
    np.testing.assert_array_equal(colour_jitter(rgb, np.random.default_rng(3)), outs[3])
    same = colour_jitter(rgb, rng, brightness=0, contrast=0, saturation=0)
    np.testing.assert_array_equal(same, rgb)


# ---- fast turned copies and the fused image input (numba kernels and their numpy equivalents) -----------------

def _numba_kernels():
    try:
        from roadmap_cli import _augment_numba
    except ImportError:  # numba is optional: the numpy path is tested on its own
        return None
    return _augment_numba


BACKENDS = ["numpy", "numba"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test with the numpy path and, where numba imports, with the compiled kernels."""
    from roadmap_cli import augment

    jit = None
    if request.param == "numba":
        jit = _numba_kernels()
        if jit is None:
            pytest.skip("numba not installed (optional): only the numpy path exists here")
    monkeypatch.setattr(augment, "_BACKEND", [jit])
    return request.param


def _ref_jitter(rgb: np.ndarray, fb: float, fc: float, fs: float) -> np.ndarray:
    """The colour jitter maths step by step (brightness, saturation about each pixel's grey, contrast about
    the mean grey of the non-empty pixels, clip; empty pixels stay 0), float32, not rounded."""
    x = rgb.astype(np.float32)
    empty = ~rgb.any(axis=0)
    x *= np.float32(fb)
    luma = np.float32(0.299) * x[0] + np.float32(0.587) * x[1] + np.float32(0.114) * x[2]
    mean = np.float32(luma[~empty].mean()) if (~empty).any() else np.float32(0.0)
    x = (x - luma) * np.float32(fs) + luma
    x = (x - mean) * np.float32(fc) + mean
    np.clip(x, 0, 255, out=x)
    x[:, empty] = 0
    return x


@pytest.mark.parametrize("shape", [(3, 64, 64), (64, 64), (1, 40, 40), (2, 16, 24), (60, 60), (3, 20, 12)])
def test_turn_copy_equals_the_turned_view(backend, shape):
    """Byte arrays with sides that are multiples of 8 take the compiled path, the others numpy: all equal."""
    from roadmap_cli.augment import turn_copy, turn_views

    a = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    for arr in (a, a > 128, a.astype(np.float32)):
        for k in range(4):
            for flip in (False, True):
                got = turn_copy(arr, k, flip)
                want = turn_views([arr], k, flip)[0]
                assert got.dtype == arr.dtype and got.flags.c_contiguous
                np.testing.assert_array_equal(got, want)
                assert not np.shares_memory(got, arr)


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 36, 36), (3, 16, 24)])
def test_image_input_equals_jitter_then_normalise(backend, shape):
    """Turned, jittered and normalised in one go == the jitter maths, then turn, then (v / 255 - mean) / std."""
    from roadmap_cli.augment import ColourJitter, image_input, turn_views

    rng = np.random.default_rng(shape[1])
    rgb = rng.integers(0, 256, shape, dtype=np.uint8)
    rgb[:, :3, :5] = 0  # no imagery
    rgb[0, 5, 5] = 0  # black in one band only: not empty
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    scale, offset = 1 / (255 * std), -mean / std
    for jitter in (None, ColourJitter(1.08, 0.92, 1.1), ColourJitter(0.93, 1.1, 0.9), ColourJitter.draw(rng)):
        for k in range(4):
            for flip in (False, True):
                if k % 2 and shape[1] != shape[2]:
                    continue
                want = rgb.astype(np.float32) if jitter is None else _ref_jitter(
                    rgb, jitter.brightness, jitter.contrast, jitter.saturation)
                want = (turn_views([want], k, flip)[0] / 255.0 - mean[:, None, None]) / std[:, None, None]
                out = np.full(want.shape, np.nan, dtype=np.float32)
                got = image_input(rgb, out, k, flip, jitter, scale, offset)
                assert got is out
                np.testing.assert_allclose(got, want, atol=1e-4)
                empty = turn_views([~rgb.any(axis=0)], k, flip)[0]
                np.testing.assert_allclose(got[:, empty], np.repeat(offset[:, None], empty.sum(), 1), atol=1e-6)


def test_numba_and_numpy_paths_give_identical_floats(monkeypatch):
    """The compiled kernels do numpy's float32 operations in numpy's order: bit-identical results."""
    from roadmap_cli import augment

    jit = _numba_kernels()
    if jit is None:
        pytest.skip("numba not installed (optional)")
    rgb = np.random.default_rng(5).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    rgb[:, 10:20, 30:] = 0
    jitter = augment.ColourJitter(1.07, 0.94, 1.09)
    outs = []
    for b in (None, jit):
        monkeypatch.setattr(augment, "_BACKEND", [b])
        outs.append([augment.image_input(rgb, np.empty((3, 48, 48), np.float32), k, f, jitter, (0.017, 0.018, 0.019),
                                         (-2.0, -1.9, -1.8)) for k in range(4) for f in (False, True)])
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_colour_jitter_matches_the_jitter_maths(backend):
    rgb = np.random.default_rng(13).integers(0, 256, (3, 32, 40), dtype=np.uint8)
    rgb[:, 0] = 0
    for seed in range(5):
        got = colour_jitter(rgb, np.random.default_rng(seed))
        fb, fc, fs = 1.0 + np.random.default_rng(seed).uniform(-1.0, 1.0, 3) * 0.1
        want = _ref_jitter(rgb, fb, fc, fs)
        assert np.abs(got.astype(np.float32) - want).max() <= 0.5 + 1e-3  # rounded to whole values


def test_backend_choice(monkeypatch):
    from roadmap_cli import augment

    monkeypatch.setattr(augment, "_BACKEND", [])
    monkeypatch.setenv("ROADMAP_AUGMENT_BACKEND", "numpy")
    assert augment.backend_name() == "numpy"
    monkeypatch.setattr(augment, "_BACKEND", [])
    monkeypatch.setenv("ROADMAP_AUGMENT_BACKEND", "fast")
    with pytest.raises(RoadmapError, match="ROADMAP_AUGMENT_BACKEND"):
        augment.backend_name()
    monkeypatch.setattr(augment, "_BACKEND", [])
    monkeypatch.setenv("ROADMAP_AUGMENT_BACKEND", "auto")
    assert augment.backend_name() == ("numba" if _numba_kernels() is not None else "numpy")
