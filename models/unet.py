"""U-Net (Ronneberger et al. 2015) at a modest width for road masks.

Five levels of two 3×3 conv/BN/ReLU (32, 64, 128, 256, 512 channels), max-pool down, and ×2 up-sampling
convolutions that halve the channels. The original 2×2 up-convolutions are replaced by 3×3 transpose
convolutions (stride 2) so that the paper's 1D decoder applies: ``decoder="1d"`` swaps each of them for
the 1D transpose convolution block at the same parameter count.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SegmentationNet
from .decoders import check_decoder, upsampling_conv

__all__ = ["DoubleConv", "UNet"]


class DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(SegmentationNet):
    """U-Net with ``base`` channels at full resolution, four poolings (total stride 16).

    Args:
        in_channels: input channels; decoder: ``"1d"`` or ``"transpose"``; base: first-level width;
        image_channels: leading RGB channels (only recorded: the network is trained from scratch).
    """

    size_divisor = 16

    def __init__(
        self, in_channels: int = 3, decoder: str = "1d", base: int = 32, image_channels: int | None = None
    ) -> None:
        check_decoder(decoder)
        super().__init__("unet", in_channels, decoder, image_channels)
        widths = [base * 2**i for i in range(5)]
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(
            DoubleConv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        deep = widths[::-1]  # 512, 256, 128, 64, 32
        self.up = nn.ModuleList(upsampling_conv(decoder, c, c // 2) for c in deep[:-1])
        self.fuse = nn.ModuleList(DoubleConv(c, c // 2) for c in deep[:-1])
        self.classifier = nn.Conv2d(base, 1, 1)

    def forward_padded(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
        return self.classifier(x)
