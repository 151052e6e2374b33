"""ResNet-18/34 encoders with torchvision-compatible state-dict keys.

The layout (``conv1``, ``bn1``, ``layer1`` .. ``layer4`` made of ``BasicBlock`` with ``conv1``, ``bn1``,
``conv2``, ``bn2`` and ``downsample.0``/``downsample.1``) is the one torchvision uses, so an ImageNet
checkpoint saved by torchvision loads by name. There is no ``fc``: segmentation networks use the encoder's
feature maps, and :func:`load_encoder_weights` ignores ``fc.*`` keys in a checkpoint.

The stem may take more (or other) channels than RGB: rendered GPS layers are concatenated to the image
(``in_channels = 3 + k``) or used alone (``in_channels = k``). :func:`load_encoder_weights` keeps the
pretrained RGB filters and initialises the GPS part of the first convolution (paper section 4.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import default_image_channels

__all__ = [
    "BasicBlock",
    "EncoderFeatures",
    "GPS_INIT_MODES",
    "LoadReport",
    "ResNetEncoder",
    "load_encoder_weights",
    "resnet_encoder",
]

#: blocks per stage for the supported depths (BasicBlock ResNets only)
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
#: how :func:`load_encoder_weights` initialises the stem filters of GPS channels
GPS_INIT_MODES = ("mean", "zeros")


class BasicBlock(nn.Module):
    """The two-3x3-convolution residual block of ResNet-18/34 (torchvision key names).

    ``dilation`` > 1 keeps the resolution of a stage (DeepLab's output stride 16); torchvision refuses it
    for BasicBlock but nothing in the block prevents it, and the parameter names do not change.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class EncoderFeatures(NamedTuple):
    """Feature maps of a :class:`ResNetEncoder` pass, finest first.

    ``stem`` is after conv1/bn1/relu (stride 2, 64 channels); ``e1`` .. ``e4`` are the outputs of
    ``layer1`` .. ``layer4`` (strides 4, 8, 16, 32 unless a stage is dilated; 64, 128, 256, 512 channels).
    """

    stem: Tensor
    e1: Tensor
    e2: Tensor
    e3: Tensor
    e4: Tensor


class ResNetEncoder(nn.Module):
    """ResNet-18/34 without the classifier, returning the multi-scale features decoders need.

    Args:
        depth: 18 or 34.
        in_channels: input channels of the stem (3 for RGB, 3 + k for RGB + GPS, k for GPS only).
        image_channels: how many of the leading input channels are the RGB image (3 or 0); it tells
            :func:`load_encoder_weights` which stem filters the pretrained ones map to.
        dilate_layer4: keep layer4 at stride 16 with dilation 2 (DeepLabv3+ output stride 16).
    """

    channels: tuple[int, int, int, int] = (64, 128, 256, 512)

    def __init__(
        self,
        depth: int = 34,
        in_channels: int = 3,
        image_channels: int | None = None,
        dilate_layer4: bool = False,
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth {depth} is not supported; choose one of {sorted(RESNET_LAYERS)}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        self.depth = depth
        self.in_channels = in_channels
        self.image_channels = default_image_channels(in_channels, image_channels)
        self.inplanes = 64
        self.dilation = 1

        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        blocks = RESNET_LAYERS[depth]
        self.layer1 = self._make_layer(64, blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], stride=2)
        self.layer4 = self._make_layer(512, blocks[3], stride=2, dilate=dilate_layer4)
        _init_resnet(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> EncoderFeatures:
        stem = self.relu(self.bn1(self.conv1(x)))
        e1 = self.layer1(self.maxpool(stem))
        e2 = self.layer2(e1)
        e3 = self.layer3(e2)
        e4 = self.layer4(e3)
        return EncoderFeatures(stem, e1, e2, e3, e4)


def resnet_encoder(
    depth: int = 34, in_channels: int = 3, image_channels: int | None = None, dilate_layer4: bool = False
) -> ResNetEncoder:
    """Build a ResNet-18/34 encoder (random initialisation; see :func:`load_encoder_weights`)."""
    return ResNetEncoder(depth, in_channels, image_channels, dilate_layer4)


def _init_resnet(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan out) convolutions, unit-scale BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass
class LoadReport:
    """What :func:`load_encoder_weights` did.

    ``missing_keys``: encoder parameters/buffers absent from the state dict (left as initialised);
    BatchNorm ``num_batches_tracked`` counters, which older torchvision files lack, are not listed.
    ``unexpected_keys``: keys of the state dict the encoder has no place for (``fc.*`` excluded).
    ``ignored_keys``: the classifier keys (``fc.*``) skipped on purpose.
    ``gps_channels``: stem input channels initialised from the pretrained filters rather than loaded.
    """

    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)
    gps_channels: int = 0
    gps_init: str = "mean"

    @property
    def complete(self) -> bool:
        """True when every encoder tensor came from the state dict and nothing was left over."""
        return not self.missing_keys and not self.unexpected_keys


def load_encoder_weights(
    encoder: nn.Module,
    state_dict: Mapping[str, Tensor],
    gps_init: str = "mean",
    strict: bool = False,
) -> LoadReport:
    """Load an (ImageNet) ResNet state dict into a :class:`ResNetEncoder` with any stem channels.

    ``state_dict`` is an already-loaded torchvision-format mapping (the caller does
    ``torch.load(path, weights_only=True)``); a ``module.`` prefix (DataParallel) is stripped and ``fc.*`` is
    ignored. ``encoder`` may also be a model with an ``encoder`` attribute holding the ResNet.

    The stem ``conv1.weight`` in the file is ``[64, 3, 7, 7]``. The encoder's stem may have ``3 + k``
    inputs (RGB then k GPS channels) or only ``k`` (GPS alone, ``encoder.image_channels == 0``):

    - the RGB filters are copied unchanged;
    - ``gps_init="mean"`` (default) gives each GPS channel the pretrained filter averaged over R, G and B:
      a luminance edge/blob detector, which is what a rendered GPS density map (bright thin lines) needs
      and keeps the stem's response distribution close to the one ``bn1`` was trained for. With an image
      the GPS filters are scaled by ``1/k`` so all GPS channels together weigh like one colour channel
      (a third of the image's contribution for a grey input) and do not swamp the pretrained features at
      the start of fine-tuning. Without an image they are scaled by ``3/k``, so k equal channels give the
      response the pretrained stem gives to a grey RGB image.
    - ``gps_init="zeros"`` makes the GPS filters zero: the network starts exactly as the pretrained RGB
      model and learns the GPS filters from there (the gradient of a weight does not depend on its value).

    A stem weight in the file that already has the encoder's input channels, other than 3 (e.g. an encoder
    saved by this project), is copied as is; a 3-channel one is always taken as RGB, so a GPS-only encoder
    with exactly 3 GPS channels gets the GPS initialisation. Any other shape difference raises
    ``ValueError`` naming the key and shapes. With ``strict=True`` missing or unexpected keys raise
    ``ValueError`` too.
    """
    if gps_init not in GPS_INIT_MODES:
        raise ValueError(f"gps_init must be one of {GPS_INIT_MODES}, got {gps_init!r}")
    target = encoder
    if not isinstance(target, ResNetEncoder):
        target = getattr(encoder, "encoder", None)
        if not isinstance(target, ResNetEncoder):
            raise ValueError(f"{type(encoder).__name__} has no ResNet encoder to load weights into")

    incoming = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    own = target.state_dict()
    report = LoadReport(gps_init=gps_init)
    new_state: dict[str, Tensor] = {}
    for key, value in incoming.items():
        if key.startswith("fc."):
            report.ignored_keys.append(key)
            continue
        if key not in own:
            report.unexpected_keys.append(key)
            continue
        if not isinstance(value, Tensor):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        expected = own[key]
        if key == "conv1.weight" and _needs_adapting(value, target):
            value = _adapt_stem(value, target, gps_init)
            report.gps_channels = target.in_channels - target.image_channels
        if value.shape != expected.shape:
            raise ValueError(
                f"state dict entry {key!r} has shape {tuple(value.shape)} but the ResNet-{target.depth} "
                f"encoder expects {tuple(expected.shape)} (is the file a ResNet-{target.depth} checkpoint?)"
            )
        new_state[key] = value.to(dtype=expected.dtype) if expected.is_floating_point() else value
        report.loaded_keys.append(key)
    report.missing_keys = [k for k in own if k not in new_state and not k.endswith("num_batches_tracked")]
    if strict and not report.complete:
        raise ValueError(
            f"state dict does not match the ResNet-{target.depth} encoder: "
            f"missing {report.missing_keys[:5]}, unexpected {report.unexpected_keys[:5]}"
        )
    target.load_state_dict(new_state, strict=False)
    return report


def _needs_adapting(weight: Tensor, encoder: ResNetEncoder) -> bool:
    """True unless the stem weight can be copied as is (plain RGB, or already the encoder's own layout)."""
    if encoder.image_channels == 3 and encoder.in_channels == 3:
        return False
    return weight.dim() != 4 or weight.shape[1] != encoder.in_channels or weight.shape[1] == 3


def _adapt_stem(weight: Tensor, encoder: ResNetEncoder, gps_init: str) -> Tensor:
    """Map a pretrained ``[64, 3, 7, 7]`` stem onto the encoder's ``image_channels + k`` inputs."""
    expected = encoder.conv1.weight.shape
    if weight.dim() != 4 or weight.shape[0] != expected[0] or weight.shape[2:] != expected[2:]:
        raise ValueError(
            f"state dict entry 'conv1.weight' has shape {tuple(weight.shape)}; expected "
            f"(64, 3, 7, 7) from an ImageNet ResNet or {tuple(expected)}"
        )
    if weight.shape[1] != 3:
        raise ValueError(
            f"state dict entry 'conv1.weight' has {weight.shape[1]} input channels; only 3 (RGB) or the "
            f"encoder's own {encoder.in_channels} can be loaded"
        )
    gps = encoder.in_channels - encoder.image_channels
    scale = (1.0 if encoder.image_channels else 3.0) / gps
    gps_filter = weight.mean(dim=1, keepdim=True) * scale
    if gps_init == "zeros":
        gps_filter = torch.zeros_like(gps_filter)
    parts = ([weight] if encoder.image_channels else []) + [gps_filter.expand(-1, gps, -1, -1)]
    return torch.cat(parts, dim=1).contiguous()
