"""Training tiles: shapes and channels, spatially disjoint train/validation blocks, determinism, workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from train_fixtures import ROAD_GREY, make_tiny_city

from roadmap_cli.dataset import SourceSpec, TileSpec, TrainingData, read_imagery, split_blocks, turn_samples
from roadmap_cli.errors import RoadmapError
from roadmap_cli.inputs import IMAGE_MEAN, IMAGE_STD

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return make_tiny_city(tmp_path_factory.mktemp("city"), size=256, seed=3)


def _spec(inputs="image+gps", channels=("density", "interval"), augment=True, tile=64):
    from roadmap_cli.augment import GpsAugment
    from roadmap_cli.render import RenderParams

    render = RenderParams(channels=tuple(channels)) if "gps" in inputs else None
    aug = GpsAugment.from_spec("subsample,subres,perturb,omit") if augment and "gps" in inputs else None
    return TileSpec(tile_size=tile, inputs=inputs, render=render, gps_augment=aug, image_augment=augment)


def _data(city, seed=0, **kw):
    wd, labels = city
    return TrainingData([SourceSpec(str(wd), str(labels))], _spec(**kw), val_fraction=0.2, seed=seed)


def test_shapes_and_channels(city):
    data = _data(city)
    train = data.train_dataset(8)
    x, y, v = train[0]
    assert x.dtype == torch.float32 and x.shape == (5, 64, 64)
    assert y.shape == (1, 64, 64) and y.dtype == torch.uint8 and set(torch.unique(y).tolist()) <= {0, 1}
    assert v.shape == (1, 64, 64) and int(v.min()) == 1  # tile inside the mosaic
    assert len(train) == 8
    xv, yv, vv = data.val_dataset()[0]
    assert xv.shape == (5, 64, 64) and yv.shape == (1, 64, 64)

    wide = _data(city, channels=("density", "interval", "speed", "bearing"))
    assert wide.train_dataset(1)[0][0].shape == (3 + 5, 64, 64)
    img = _data(city, inputs="image")
    assert img.train_dataset(1)[0][0].shape == (3, 64, 64)
    gps = _data(city, inputs="gps")
    xg = gps.train_dataset(1)[0][0]
    assert xg.shape == (2, 64, 64) and float(xg[0].max()) > 0  # GPS density rendered


def test_image_and_labels_stay_aligned_under_augmentation(city):
    """Road pixels are bright in the synthetic imagery: after flips/rotations/jitter they must still be."""
    data = _data(city)
    train = data.train_dataset(64)
    checked = 0
    for i in range(12):
        x, y, _ = train[i]
        road = y[0] > 0
        if road.sum() < 20 or (~road).sum() < 20:
            continue
        grey = x[:3] * torch.tensor(IMAGE_STD)[:, None, None] + torch.tensor(IMAGE_MEAN)[:, None, None]
        grey = grey.mean(0) * 255
        assert float(grey[road].mean()) > float(grey[~road].mean()) + 60
        dens = x[3]
        assert float(dens[road].mean()) > float(dens[~road].mean())  # GPS lies on the roads too
        checked += 1
    assert checked >= 3
    assert ROAD_GREY > 150


def test_train_and_validation_are_spatially_disjoint(city):
    data = _data(city)
    split = data.splits[0]
    assert split.val.sum() == round(0.2 * 16) and (~split.val).sum() == 13
    val = data.val_dataset()
    assert len(val) == int(split.val.sum())
    t = data.spec.tile_size
    val_mask = np.zeros((256, 256), dtype=bool)
    for _src, col, row in val.windows:
        assert split.val[row // t, col // t] and col % t == 0 and row % t == 0
        val_mask[row:row + t, col:col + t] = True
    train = data.train_dataset(200)
    offsets = set()
    for i in range(200):
        src, col, row = train.window(i)
        assert 0 <= col <= 256 - t and 0 <= row <= 256 - t
        assert not val_mask[row:row + t, col:col + t].any()
        offsets.add((col % t, row % t))
    assert len(offsets) > 20  # not only block-aligned windows


def test_same_seed_same_samples_and_split(city):
    a = _data(city, seed=5)
    b = _data(city, seed=5)
    assert np.array_equal(a.splits[0].val, b.splits[0].val)
    ta, tb = a.train_dataset(10), b.train_dataset(10)
    for i in (0, 3, 17):
        for u, w in zip(ta[i], tb[i], strict=True):
            assert torch.equal(u, w)
    assert not torch.equal(ta[0][0], ta[1][0])
    c = _data(city, seed=6)
    assert not np.array_equal(a.splits[0].val, c.splits[0].val) or ta.window(0) != c.train_dataset(10).window(0)
    # validation samples carry no randomness
    va = a.val_dataset()
    assert torch.equal(va[0][0], va[0][0])


def test_dataset_pickles_and_works_in_a_dataloader_worker(city):
    data = _data(city)
    train = data.train_dataset(4)
    _ = train[0]  # opens readers in this process
    clone = pickle.loads(pickle.dumps(train))
    assert torch.equal(clone[2][0], train[2][0])
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=1, sampler=[0, 1, 2, 3])
    batches = list(loader)
    assert torch.equal(batches[1][0][0], train[2][0])


def test_split_blocks_edges():
    s = split_blocks(300, 130, 64, 0.5, seed=0)
    assert (s.nbx, s.nby) == (4, 2) and s.val.sum() == 4
    one = split_blocks(64, 64, 64, 0.2, seed=0)
    assert one.val.sum() == 0
    none = split_blocks(256, 256, 64, 0.0, seed=0)
    assert none.val.sum() == 0


def test_errors_are_one_line(tmp_path):
    wd, labels = make_tiny_city(tmp_path / "noimg", size=128, imagery=False)
    with pytest.raises(RoadmapError, match="no imagery .*--inputs image\\+gps needs it"):
        TrainingData([SourceSpec(str(wd), str(labels))], _spec(), 0.2)
    with pytest.raises(RoadmapError, match="--labels .*no such file"):
        TrainingData([SourceSpec(str(wd), str(tmp_path / "missing.tif"))], _spec(inputs="gps"), 0.2)
    wd2, labels2 = make_tiny_city(tmp_path / "nogps", size=128, gps=False)
    with pytest.raises(RoadmapError, match="no GPS point store"):
        TrainingData([SourceSpec(str(wd2), str(labels2))], _spec(), 0.2)
    with pytest.raises(RoadmapError, match="smaller than one"):
        TrainingData([SourceSpec(str(wd2), str(labels2))], _spec(inputs="image", tile=256), 0.2)
    with pytest.raises(RoadmapError, match="--val-fraction"):
        TrainingData([SourceSpec(str(wd2), str(labels2))], _spec(inputs="image"), 1.5)


def _jitter_maths(rgb: np.ndarray, fb: float, fc: float, fs: float) -> np.ndarray:
    """Colour jitter step by step (float32, not rounded): brightness, saturation about each pixel's grey,
    contrast about the mean grey of the non-empty pixels, clip; empty pixels stay 0."""
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


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("tile", [64, 60])
def test_sample_equals_the_step_by_step_pipeline(city, tile):
    """A training sample == the steps done one by one on plain arrays: boundless reads, GPS augmented and
    rendered, every array turned, colours jittered, normalised (the fused path only skips the rounding of the
    jittered colours to bytes)."""
    import math

    import rasterio
    from rasterio.windows import Window

    from roadmap_cli.augment import apply_geometric, draw_geometric
    from roadmap_cli.render import render

    wd, _ = city
    data = _data(city, tile=tile, channels=("density", "interval", "bearing"))
    train = data.train_dataset(6)
    spec, maker = data.spec, data.maker
    mean, std = np.array(IMAGE_MEAN)[:, None, None], np.array(IMAGE_STD)[:, None, None]
    seen = set()
    for i in range(6):
        x, y, v = (a.numpy() for a in train[i])
        rng = np.random.default_rng([train.seed, i])
        src, col, row = train.window(i, rng)
        k, flip = draw_geometric(rng)
        seen.add((k, flip))
        with rasterio.open(wd / "imagery.vrt") as ds:
            win = Window(col, row, tile, tile)
            rgb = ds.read([1, 2, 3], window=win, boundless=True, fill_value=0)
            valid = ds.read_masks(1, window=win, boundless=True) > 0
        h = maker.handles(src)
        m = int(math.ceil(spec.render.margin))
        samples = h.store.query(col - m, row - m, tile + 2 * m, tile + 2 * m)
        samples = spec.gps_augment.apply(samples, col, row, tile, tile, rng)
        gps = render(samples, col, row, tile, tile, spec.render)
        label = h.labels.read(col, row, tile, tile)
        rgb, gps, label, valid = apply_geometric([rgb, gps, label, valid], k, flip,
                                                 bearing=[(1, *spec.render.bearing_channels())])
        fb, fc, fs = 1.0 + rng.uniform(-1.0, 1.0, 3) * 0.1
        image = (_jitter_maths(rgb, fb, fc, fs) / 255.0 - mean) / std
        np.testing.assert_allclose(x[:3], image, atol=1e-4)
        np.testing.assert_allclose(x[3:], gps, atol=1e-5)
        np.testing.assert_array_equal(y[0], label)
        np.testing.assert_array_equal(v[0], valid)
    assert len(seen) >= 3


def test_compiled_and_numpy_paths_make_the_same_samples(city, monkeypatch):
    from roadmap_cli import augment

    try:
        from roadmap_cli import _augment_numba
    except ImportError:
        pytest.skip("numba not installed (optional): only the numpy path exists here")
    train = _data(city).train_dataset(8)
    got = {}
    for name, jit in (("numpy", None), ("numba", _augment_numba)):
        monkeypatch.setattr(augment, "_BACKEND", [jit])
        got[name] = [train[i] for i in range(8)]
    for a, b in zip(got["numpy"], got["numba"], strict=True):
        for u, w in zip(a, b, strict=True):
            assert torch.equal(u, w)


def test_read_imagery_alias(city):
    from roadmap_cli.imagery import ImageryReader

    wd, _ = city
    with ImageryReader(wd / "imagery.vrt") as reader:
        for col, row, w in ((10, 20, 64), (-5, 30, 64)):
            a, b = read_imagery(reader, col, row, w, w), reader.read(col, row, w, w)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_turned_samples_render_as_the_turned_rendering(k, flip):
    """Moving samples before rendering == turning the rendered channels (integer positions and margins too)."""
    from roadmap_cli.augment import apply_geometric
    from roadmap_cli.render import RenderParams, render
    from roadmap_cli.store import SAMPLE_DTYPE

    rng = np.random.default_rng(k * 2 + flip)
    n, size, c0, r0 = 400, 24, 100, 37
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["col"] = c0 + rng.uniform(-2, size + 2, n)
    s["row"] = r0 + rng.uniform(-2, size + 2, n)
    s["col"][:100] = np.round(s["col"][:100])  # sub-resolution snaps samples onto pixel corners
    s["row"][:100] = np.round(s["row"][:100])
    s["interval"] = rng.uniform(1, 60, n)
    s["speed"] = rng.uniform(0, 20, n)
    s["bearing"] = rng.uniform(0, 360, n)
    s["bearing"][:10] = np.nan
    p = RenderParams(channels=("density", "interval", "speed", "bearing"), kernel_size=3)
    (want,) = apply_geometric([render(s, c0, r0, size, size, p)], k, flip, bearing=[(0, *p.bearing_channels())])
    got = render(turn_samples(s, c0, r0, size, k, flip), c0, r0, size, size, p)
    np.testing.assert_allclose(got, want, atol=1e-5)
