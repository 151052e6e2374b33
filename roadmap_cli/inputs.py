"""The network input: image and GPS channels stacked the same way in train and predict."""

from __future__ import annotations

import numpy as np

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
               norm: dict[str, list[float]] | None = None) -> np.ndarray:
    """Stack normalised RGB (uint8 [3,H,W]) and rendered GPS (float32 [C,H,W]) into float32 [C',H,W].

    The image comes first so that channels 0-2 meet the pretrained RGB stem weights.
    """
    norm = norm or default_normalisation()
    parts = []
    if "image" in inputs:
        if rgb is None:
            raise ValueError("this model needs imagery")
        mean = np.asarray(norm["image_mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(norm["image_std"], dtype=np.float32)[:, None, None]
        parts.append((rgb.astype(np.float32) / 255.0 - mean) / std)
    if "gps" in inputs:
        if gps is None:
            raise ValueError("this model needs rendered GPS channels")
        parts.append(gps.astype(np.float32, copy=False))
    return np.concatenate(parts, axis=0) if len(parts) > 1 else np.ascontiguousarray(parts[0])
