"""Common base of the segmentation networks: input checks, pad-to-stride, crop-back, self-description."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegmentationNet", "default_image_channels"]


def default_image_channels(in_channels: int, image_channels: int | None) -> int:
    """How many leading input channels are RGB: 3 when there are at least 3 inputs, unless told otherwise.

    A GPS-only network with three or more GPS channels must say ``image_channels=0``.
    """
    if image_channels is None:
        return 3 if in_channels >= 3 else 0
    if image_channels not in (0, 3) or image_channels > in_channels:
        raise ValueError(
            f"image_channels must be 3 (RGB first) or 0 (no image) and at most in_channels={in_channels},"
            f" got {image_channels}"
        )
    return image_channels


class SegmentationNet(nn.Module):
    """A road segmentation network: ``[N, in_channels, H, W]`` in, road logits ``[N, 1, H, W]`` out.

    Inputs of any size are zero-padded on the bottom and right to a multiple of ``size_divisor`` (the
    network's total stride) and the logits are cropped back, so the output size always equals the input
    size. Subclasses implement :meth:`forward_padded` and set the describing attributes ``name``,
    ``decoder``, ``in_channels``, ``image_channels`` and ``encoder_depth`` (``None`` without a ResNet).
    """

    size_divisor: int = 32

    def __init__(
        self,
        name: str,
        in_channels: int,
        decoder: str,
        image_channels: int | None = None,
        encoder_depth: int | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        self.name = name
        self.in_channels = in_channels
        self.image_channels = default_image_channels(in_channels, image_channels)
        self.decoder = decoder
        self.encoder_depth = encoder_depth

    @property
    def gps_channels(self) -> int:
        """Input channels after the image (all of them for a GPS-only network)."""
        return self.in_channels - self.image_channels

    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this architecture with ``models.build_model``."""
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "decoder": self.decoder,
            "encoder_depth": self.encoder_depth,
            "image_channels": self.image_channels,
        }

    def forward_padded(self, x: Tensor) -> Tensor:
        """Logits for an input whose height and width are multiples of ``size_divisor``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name} expects input [N, {self.in_channels}, H, W], got {list(x.shape)}")
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.size_divisor, -w % self.size_divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.forward_padded(x)[..., :h, :w]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_channels={self.in_channels}, decoder={self.decoder!r}"
