"""The network input: image and GPS channels stacked the same way in train and predict."""

from __future__ import annotations

import numpy as np

from roadmap_cli.augment import ColourJitter, image_input

INPUT_MODES = ("image+gps", "image", "gps")
# ImageNet statistics: the encoders may start from ImageNet weights.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def default_normalisation() -> dict[str, list[float]]:
    """JSON-able normalisation recorded in checkpoints."""
    return {"image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)}


def input_channels(inputs: str, n_gps: int) -> int:
    """Number of network input channels for an input mode."""
    if inputs not in INPUT_MODES:
        raise ValueError(f"inputs must be one of {', '.join(INPUT_MODES)}, not {inputs!r}")
    return (3 if "image" in inputs else 0) + (n_gps if "gps" in inputs else 0)


def make_input(rgb: np.ndarray | None, gps: np.ndarray | None, inputs: str,
               norm: dict[str, list[float]] | None = None, colour: ColourJitter | None = None,
               turn: tuple[int, bool] = (0, False)) -> np.ndarray:
    """Stack normalised RGB (uint8 [3,H,W]) and rendered GPS (float32 [C,H,W]) into float32 [C',H,W].

    The image comes first so that channels 0-2 meet the pretrained RGB stem weights. Training options, applied
    to the image on its way into the output (it is converted to float once, `augment.image_input`): `turn`
    (quarter turns, flip) as `augment.turn_views` (the GPS channels must come turned already) and `colour` a
    drawn colour jitter; the result equals normalising `colour_jitter`'s bytes but for their rounding.
    """
    norm = norm or default_normalisation()
    if "image" not in inputs:
        if gps is None:
            raise ValueError("this model needs rendered GPS channels")
        return np.ascontiguousarray(gps, dtype=np.float32)
    if rgb is None:
        raise ValueError("this model needs imagery")
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"imagery must be [3, H, W], got {rgb.shape}")
    k, flip = int(turn[0]) % 4, bool(turn[1])
    hw = rgb.shape[:0:-1] if k % 2 else rgb.shape[1:]
    n_gps = 0
    if "gps" in inputs:
        if gps is None:
            raise ValueError("this model needs rendered GPS channels")
        if gps.ndim != 3 or gps.shape[1:] != hw:
            raise ValueError(f"GPS channels {gps.shape} do not match the image {rgb.shape}")
        n_gps = gps.shape[0]
    x = np.empty((3 + n_gps, *hw), dtype=np.float32)
    mean = np.asarray(norm["image_mean"], dtype=np.float64)
    std = np.asarray(norm["image_std"], dtype=np.float64)
    image_input(rgb, x[:3], k, flip, colour, 1.0 / (255.0 * std), -mean / std)  # (v / 255 - mean) / std
    if n_gps:
        np.copyto(x[3:], gps, casting="same_kind")
    return x
