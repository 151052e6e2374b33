"""D-LinkNet (Zhou, Zhang & Wu 2018), the DeepGlobe'18 road winner the paper builds on.

LinkNet plus a dilated centre block on the stride-32 features: cascaded 3×3 convolutions with dilation
1, 2, 4 and 8, each followed by ReLU, whose outputs are summed with the block input. The receptive field
grows to cover long roads while the resolution stays.
"""

from __future__ import annotations

from torch import Tensor, nn

from .linknet import LinkNet

__all__ = ["DilatedCenter", "DLinkNet"]


class DilatedCenter(nn.Module):
    """D-LinkNet's centre block: ``x + d1 + d2 + d3 + d4`` with ``d_k = relu(conv_k(d_{k-1}))``."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.dilations = dilations
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations)
        self.relu = nn.ReLU(inplace=True)
        for conv in self.convs:
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out, d = x, x
        for conv in self.convs:
            d = self.relu(conv(d))
            out = out + d
        return out


class DLinkNet(LinkNet):
    """D-LinkNet-18/34: :class:`~models.linknet.LinkNet` with a :class:`DilatedCenter` (same arguments)."""

    family = "dlinknet"

    def _make_center(self, channels: int) -> nn.Module:
        return DilatedCenter(channels)
