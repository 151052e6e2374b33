"""Test-only helpers: a tiny segmentation network and checkpoint metadata (not part of the package)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TinyNet(nn.Module):
    """Two convolutions: `[N, C, H, W]` -> logits `[N, 1, H, W]`; a few hundred parameters."""

    def __init__(self, in_channels: int = 5, hidden: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def make_tiny_model(in_channels: int = 5, seed: int = 0) -> TinyNet:
    """A seeded TinyNet."""
    torch.manual_seed(seed)
    return TinyNet(in_channels)


def tiny_meta(**overrides: Any) -> dict[str, Any]:
    """Checkpoint metadata as train writes it, for a 5-channel image+gps model."""
    meta: dict[str, Any] = {
        "roadmap_version": "0.1.0",
        "architecture": "linknet18",
        "decoder": "1d",
        "encoder_depth": 18,
        "in_channels": 5,
        "image_channels": 3,
        "inputs": "image+gps",
        "render": {"channels": ["density", "interval"], "mode": "gaussian", "kernel_size": 3, "sigma": None,
                   "scale": "log", "binary_radius": 2, "density_norm": 4.0, "interval_norm": 60.0,
                   "speed_norm": 30.0},
        "normalisation": {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
        "tile_size": 64,
        "training": {"workdirs": ["w"], "steps": 2},
        "validation": {"iou_tile_mean": 0.5, "iou_global": 0.4},
    }
    meta.update(overrides)
    return meta
