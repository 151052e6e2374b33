"""The network input: channel order, ImageNet normalisation, GPS pass-through, training turn and colour jitter."""

from __future__ import annotations

import numpy as np
import pytest

from roadmap_cli.augment import ColourJitter, turn_views
from roadmap_cli.inputs import IMAGE_MEAN, IMAGE_STD, default_normalisation, input_channels, make_input

MEAN = np.array(IMAGE_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(IMAGE_STD, dtype=np.float32)[:, None, None]


def _data(h: int = 32, w: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (3, h, w), dtype=np.uint8), rng.random((2, h, w), dtype=np.float32)


@pytest.mark.parametrize("size", [32, 30])
def test_image_then_gps_normalised(size):
    rgb, gps = _data(size, size)
    x = make_input(rgb, gps, "image+gps")
    assert x.dtype == np.float32 and x.shape == (5, size, size) and x.flags.c_contiguous
    np.testing.assert_allclose(x[:3], (rgb.astype(np.float32) / 255.0 - MEAN) / STD, atol=1e-6)
    np.testing.assert_array_equal(x[3:], gps)
    img = make_input(rgb, None, "image")
    np.testing.assert_array_equal(img, x[:3])
    only = make_input(None, gps, "gps")
    np.testing.assert_array_equal(only, gps)
    norm = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}
    np.testing.assert_allclose(make_input(rgb, None, "image", norm), rgb / 255.0, atol=1e-7)
    assert input_channels("image+gps", 2) == 5 and default_normalisation()["image_std"] == list(IMAGE_STD)


@pytest.mark.parametrize("size", [32, 28])
def test_turn_and_colour_on_the_way(size):
    """make_input(turn=, colour=) == turning the normalised (jittered) image; the jittered input == the
    normalised bytes of `colour_jitter` with the same draw, but for their rounding."""
    from roadmap_cli.augment import colour_jitter

    rgb, gps = _data(size, size, seed=1)
    rgb[:, :2, :3] = 0  # no imagery: stays at the normalised 0
    jitter = ColourJitter(1.06, 0.95, 1.08)
    plain = make_input(rgb, None, "image")
    jittered = make_input(rgb, None, "image", colour=jitter)
    assert np.abs(jittered - plain).max() > 0.05
    np.testing.assert_allclose(jittered[:, :2, :3], np.broadcast_to(-MEAN / STD, (3, 2, 3)), atol=1e-6)
    for k in range(4):
        for flip in (False, True):
            turned_gps = np.ascontiguousarray(turn_views([gps], k, flip)[0])
            x = make_input(rgb, turned_gps, "image+gps", turn=(k, flip))
            np.testing.assert_array_equal(x[:3], turn_views([plain], k, flip)[0])
            np.testing.assert_array_equal(x[3:], turned_gps)
            xj = make_input(rgb, turned_gps, "image+gps", colour=jitter, turn=(k, flip))
            np.testing.assert_allclose(xj[:3], turn_views([jittered], k, flip)[0], atol=1e-6)
    for seed in range(4):
        via_bytes = make_input(colour_jitter(rgb, np.random.default_rng(seed)), None, "image")
        direct = make_input(rgb, None, "image", colour=ColourJitter.draw(np.random.default_rng(seed)))
        assert np.abs(direct - via_bytes).max() <= 0.5 / (255 * min(IMAGE_STD)) + 1e-5


def test_errors():
    rgb, gps = _data()
    with pytest.raises(ValueError, match="needs imagery"):
        make_input(None, gps, "image+gps")
    with pytest.raises(ValueError, match="GPS"):
        make_input(rgb, None, "image+gps")
    with pytest.raises(ValueError, match="do not match"):
        make_input(rgb, gps[:, :16], "image+gps")
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        make_input(rgb[:2], None, "image")
    with pytest.raises(ValueError):
        input_channels("rgb", 2)
