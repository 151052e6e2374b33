"""Deep residual U-Net (Zhang, Liu & Wang 2018, "Road extraction by deep residual U-Net").

Pre-activation residual units (BN, ReLU, 3×3 conv, twice, plus a 1×1 projection shortcut) replace the
plain double convolutions of U-Net; down-sampling is by the stride-2 first convolution of a unit. Widths
32, 64, 128, 256 and a 512 bridge (total stride 16). As in :mod:`models.unet`, up-sampling uses 3×3
transpose convolutions (stride 2) so that ``decoder="1d"`` can swap in the paper's 1D block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SegmentationNet
from .decoders import check_decoder, upsampling_conv

__all__ = ["ResidualUnit", "ResUNet"]


class ResidualUnit(nn.Module):
    """Pre-activation residual unit; ``stride`` 2 halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, preactivate: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if preactivate:
            layers += [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False)]
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        ]
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class ResUNet(SegmentationNet):
    """Residual U-Net; the first unit takes the raw input (no pre-activation), as in the original.

    Args:
        in_channels: input channels; decoder: ``"1d"`` or ``"transpose"``; base: first-level width;
        image_channels: leading RGB channels (only recorded: the network is trained from scratch).
    """

    size_divisor = 16

    def __init__(
        self, in_channels: int = 3, decoder: str = "1d", base: int = 32, image_channels: int | None = None
    ) -> None:
        check_decoder(decoder)
        super().__init__("resunet", in_channels, decoder, image_channels)
        widths = [base * 2**i for i in range(5)]
        self.down = nn.ModuleList([ResidualUnit(in_channels, widths[0], preactivate=False)])
        self.down.extend(ResidualUnit(c_in, c_out, stride=2) for c_in, c_out in zip(widths, widths[1:], strict=False))
        deep = widths[::-1]
        self.up = nn.ModuleList(upsampling_conv(decoder, c, c // 2) for c in deep[:-1])
        self.fuse = nn.ModuleList(ResidualUnit(c, c // 2) for c in deep[:-1])
        self.classifier = nn.Sequential(nn.BatchNorm2d(base), nn.ReLU(inplace=True), nn.Conv2d(base, 1, 1))

    def forward_padded(self, x: Tensor) -> Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
        return self.classifier(x)
