"""Segmentation networks for roadmap: a registry over D-LinkNet, LinkNet, U-Net, Res U-Net and DeepLabv3+.

``build_model(name, in_channels, decoder)`` returns a :class:`~models.base.SegmentationNet` mapping
``[N, in_channels, H, W]`` to road logits ``[N, 1, H, W]`` for any ``H`` and ``W``. Networks only: no
file I/O, no CLI; pretrained ResNet weights are loaded from an already-loaded state dict with
:func:`load_encoder_weights`.
"""

from __future__ import annotations

from .base import SegmentationNet
from .decoders import DECODERS, check_decoder
from .deeplab import DeepLabV3Plus
from .dlinknet import DLinkNet
from .linknet import LinkNet
from .resnet import RESNET_LAYERS, LoadReport, ResNetEncoder, load_encoder_weights
from .resunet import ResUNet
from .unet import UNet

__all__ = [
    "DECODERS",
    "MODEL_NAMES",
    "LoadReport",
    "ResNetEncoder",
    "SegmentationNet",
    "build_model",
    "load_encoder_weights",
]

#: architectures accepted by :func:`build_model`; the first five are the paper's
MODEL_NAMES = ("dlinknet34", "linknet34", "unet", "resunet", "deeplabv3plus", "dlinknet18", "linknet18")

_RESNET_FAMILIES = {"dlinknet": DLinkNet, "linknet": LinkNet}


def build_model(
    name: str,
    in_channels: int,
    decoder: str = "1d",
    encoder_depth: int | None = None,
    image_channels: int | None = None,
) -> SegmentationNet:
    """Build a road segmentation network with random weights.

    Args:
        name: one of :data:`MODEL_NAMES`. A digit suffix fixes the ResNet depth (``dlinknet18``).
        in_channels: 3 (image), 3 + k (image then k GPS channels) or k (GPS only).
        decoder: ``"1d"`` (the paper's 1D transpose convolutions) or ``"transpose"`` (3×3 transpose
            convolutions; for ``deeplabv3plus`` its standard bilinear decoder, the only one it has).
        encoder_depth: ResNet depth (18 or 34) for the ResNet-based networks; ``None`` takes it from the
            name or 34. It must agree with a depth in the name; U-Net and Res U-Net have no ResNet and
            ignore it.
        image_channels: how many leading channels are RGB (3 or 0); default 3 when ``in_channels >= 3``.
            Pass 0 for a GPS-only network with three or more GPS channels.

    Raises:
        ValueError: unknown name or decoder, ``deeplabv3plus`` with ``"1d"``, inconsistent depth or
            channel counts.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    check_decoder(decoder)
    if name in ("unet", "resunet"):
        cls = UNet if name == "unet" else ResUNet
        return cls(in_channels, decoder, image_channels=image_channels)

    family = name.rstrip("0123456789")
    named_depth = int(name[len(family) :]) if name != family else None
    if encoder_depth is None:
        encoder_depth = named_depth or 34
    if named_depth is not None and encoder_depth != named_depth:
        raise ValueError(f"model {name!r} has a ResNet-{named_depth} encoder, not encoder_depth={encoder_depth}")
    if encoder_depth not in RESNET_LAYERS:
        raise ValueError(f"encoder_depth must be one of {sorted(RESNET_LAYERS)}, got {encoder_depth}")
    if family == "deeplabv3plus":
        return DeepLabV3Plus(in_channels, decoder, encoder_depth, image_channels)
    return _RESNET_FAMILIES[family](in_channels, decoder, encoder_depth, image_channels)
