"""LinkNet with a ResNet-18/34 encoder (Chaurasia & Culurciello 2017), as used by D-LinkNet.

Decoder blocks ``decoder4`` .. ``decoder1`` (:class:`~models.decoders.LinkNetDecoderBlock`) up-sample
by 2 and are added to the encoder feature of the same scale. The head is D-LinkNet's: a 4×4 transpose
convolution (×2, 64 → 32), two 3×3 convolutions, one logit channel. The paper replaces the 3×3 transpose
convolutions only, so the head's 4×4 transpose convolution is the same for both decoder variants.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import SegmentationNet
from .decoders import LinkNetDecoderBlock, check_decoder
from .resnet import ResNetEncoder

__all__ = ["LinkNet", "LinkNetHead"]


class LinkNetHead(nn.Sequential):
    """Final ×2 up-sampling and classifier shared by LinkNet and D-LinkNet: logits at input resolution."""

    def __init__(self, in_channels: int = 64, mid_channels: int = 32) -> None:
        super().__init__()
        self.deconv1 = nn.ConvTranspose2d(in_channels, mid_channels, 4, stride=2, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid_channels, 1, 3, padding=1)


class LinkNet(SegmentationNet):
    """LinkNet-18/34: ResNet encoder, four LinkNet decoder blocks with additive skips, D-LinkNet head.

    Args:
        in_channels: input channels (3 image, 3 + k image + GPS, k GPS only).
        decoder: ``"1d"`` (paper's 1D transpose convolutions) or ``"transpose"`` (3×3 transpose convs).
        encoder_depth: 18 or 34.
        image_channels: leading RGB channels (default 3 if ``in_channels >= 3`` else 0).
    """

    family = "linknet"

    def __init__(
        self,
        in_channels: int = 3,
        decoder: str = "1d",
        encoder_depth: int = 34,
        image_channels: int | None = None,
    ) -> None:
        check_decoder(decoder)
        super().__init__(f"{self.family}{encoder_depth}", in_channels, decoder, image_channels, encoder_depth)
        self.encoder = ResNetEncoder(encoder_depth, in_channels, self.image_channels)
        c1, c2, c3, c4 = ResNetEncoder.channels
        self.center = self._make_center(c4)
        self.decoder4 = LinkNetDecoderBlock(c4, c3, decoder)
        self.decoder3 = LinkNetDecoderBlock(c3, c2, decoder)
        self.decoder2 = LinkNetDecoderBlock(c2, c1, decoder)
        self.decoder1 = LinkNetDecoderBlock(c1, c1, decoder)
        self.head = LinkNetHead(c1)

    def _make_center(self, channels: int) -> nn.Module:
        """The block between encoder and decoder: nothing for LinkNet (D-LinkNet overrides)."""
        return nn.Identity()

    def forward_padded(self, x: Tensor) -> Tensor:
        f = self.encoder(x)
        d4 = self.decoder4(self.center(f.e4)) + f.e3
        d3 = self.decoder3(d4) + f.e2
        d2 = self.decoder2(d3) + f.e1
        return self.head(self.decoder1(d2))
