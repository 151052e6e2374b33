"""DeepLabv3+ (Chen et al. 2018) with a ResNet-18/34 encoder at output stride 16.

ASPP (1×1, three 3×3 atrous convolutions at rates 6, 12, 18, image pooling) on the layer4 features
(dilated, stride 16), bilinear ×4 up-sampling, fusion with 48 projected channels of the stride-4 layer1
features, two 3×3 convolutions, one logit channel, bilinear ×4 to the input size.

The decoder has no transpose convolution, so the paper does not apply its 1D decoder to DeepLab and
``decoder="1d"`` is rejected; ``decoder="transpose"`` names this standard (bilinear) decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationNet
from .decoders import check_decoder
from .resnet import ResNetEncoder

__all__ = ["ASPP", "DeepLabV3Plus"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling.

    The image-pooling branch has no BatchNorm (a 1×1 map per image cannot be normalised with batch size 1).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        branches = [_conv_bn_relu(in_channels, out_channels, 1)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            _conv_bn_relu(out_channels * (len(branches) + 1), out_channels, 1), nn.Dropout(0.1)
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(SegmentationNet):
    """DeepLabv3+ for road logits.

    Args:
        in_channels: input channels (3 image, 3 + k image + GPS, k GPS only).
        decoder: must be ``"transpose"`` (the standard bilinear decoder); ``"1d"`` raises ``ValueError``.
        encoder_depth: 18 or 34.
        image_channels: leading RGB channels (default 3 if ``in_channels >= 3`` else 0).
    """

    def __init__(
        self,
        in_channels: int = 3,
        decoder: str = "transpose",
        encoder_depth: int = 34,
        image_channels: int | None = None,
    ) -> None:
        if check_decoder(decoder) == "1d":
            raise ValueError(
                "deeplabv3plus has no transpose convolution for the 1D decoder to replace (the paper does "
                "not apply it to DeepLab); use decoder='transpose' for its standard bilinear decoder"
            )
        super().__init__("deeplabv3plus", in_channels, decoder, image_channels, encoder_depth)
        self.encoder = ResNetEncoder(encoder_depth, in_channels, self.image_channels, dilate_layer4=True)
        low, _, _, high = ResNetEncoder.channels
        self.aspp = ASPP(high, 256)
        self.low_level = _conv_bn_relu(low, 48, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(256 + 48, 256, 3), _conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, 1, 1)

    def forward_padded(self, x: Tensor) -> Tensor:
        f = self.encoder(x)
        low = self.low_level(f.e1)
        high = F.interpolate(self.aspp(f.e4), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.fuse(torch.cat([high, low], dim=1)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
