"""Decoder building blocks: the ×2 up-sampling convolution and its 1D replacement (paper section 4.1).

``decoder="transpose"`` is the usual 3×3 transpose convolution with stride 2. ``decoder="1d"`` is the
paper's 1D transpose convolution block (figure 4b, equation 1): 2× interpolation, then four sets of 1D
filters of ``2r + 1 = 9`` taps along the directions ``I = (I_h, I_w)`` = (0, 1) horizontal, (1, 0) vertical,
(1, 1) forward diagonal and (-1, 1) backward diagonal, each set producing a quarter of the output channels,
concatenated. A 9-tap filter has as many weights as a 3×3 one, so the parameter count equals that of the
3×3 transpose convolution (the paper also claims equal cost; see :class:`TransposeConv1D` for what the
order of interpolation and filtering does to the multiply-adds).

Interpolation is bilinear (``align_corners=False``): the stride-1 1D filters then see a smooth map, and a
diagonal road at the coarse scale does not turn into 2-pixel stair steps as with nearest-neighbour copies.

Diagonal filters are a vertical ``(9, 1)`` convolution on a *sheared* feature map (:func:`shear`): row ``i``
is shifted sideways by ``i`` pixels, so a diagonal of the original map becomes a column; the result is
sheared back (:func:`unshear`). Out-of-image taps read zeros, exactly as the zero padding of the horizontal
and vertical filters, so all four sets compute equation 1 with a zero boundary. The shear is a pad, a
flatten and a reshape with a row stride one longer or shorter than the row (no loop over rows); the
sheared map is ``H + W - 1`` wide, so the diagonal sets do about twice the arithmetic of the axis-aligned
ones (the extra work multiplies zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DECODERS",
    "DIRECTIONS",
    "Directional1dConv",
    "LinkNetDecoderBlock",
    "TransposeConv1D",
    "check_decoder",
    "shear",
    "unshear",
    "upsampling_conv",
]

#: decoder variants accepted by the model registry
DECODERS = ("1d", "transpose")
#: the four 1D filter directions (I_h, I_w) of equation 1, in output-channel order
DIRECTIONS: dict[str, tuple[int, int]] = {
    "horizontal": (0, 1),
    "vertical": (1, 0),
    "forward_diagonal": (1, 1),
    "backward_diagonal": (-1, 1),
}


def check_decoder(decoder: str) -> str:
    """Return ``decoder`` if it is a known variant, else raise ``ValueError`` listing the valid ones."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    return decoder


def _rows(flat: Tensor, start: int, stride: int, height: int, width: int) -> Tensor:
    """View ``flat[..., start + i * stride + c]`` as ``[..., height, width]`` (zero-padded at the end)."""
    need = start + height * stride
    if flat.shape[-1] < need:
        flat = F.pad(flat, (0, need - flat.shape[-1]))
    return flat[..., start:need].reshape(*flat.shape[:-1], height, stride)[..., :width]


def shear(x: Tensor, direction: str) -> Tensor:
    """Shear ``x [..., H, W]`` to ``[..., H, W + H - 1]`` so that a diagonal becomes a column.

    ``direction="backward"`` (I = (-1, 1), ``i + j`` constant): ``z[i, c] = x[i, c - i]``.
    ``direction="forward"`` (I = (1, 1), ``i - j`` constant): ``z[i, c] = x[i, c - (H - 1) + i]``.
    Entries that fall outside ``x`` are zero.
    """
    h, w = x.shape[-2:]
    if h == 1:
        return x
    lead = x.shape[:-2]
    if direction == "backward":
        flat = F.pad(x, (0, h)).reshape(*lead, h * (w + h))
        return _rows(flat, 0, w + h - 1, h, w + h - 1)
    if direction == "forward":
        flat = F.pad(x, (h - 1, 0)).reshape(*lead, h * (w + h - 1))
        return _rows(flat, 0, w + h, h, w + h - 1)
    raise ValueError(f"shear direction must be 'forward' or 'backward', got {direction!r}")


def unshear(z: Tensor, direction: str, width: int) -> Tensor:
    """Invert :func:`shear`: take ``[..., H, width + H - 1]`` back to ``[..., H, width]``."""
    h, m = z.shape[-2:]
    if h == 1:
        return z
    if m != width + h - 1:
        raise ValueError(f"sheared map is {m} wide; expected width + height - 1 = {width + h - 1}")
    flat = z.reshape(*z.shape[:-2], h * m)
    if direction == "backward":  # y[i, j] = z[i, j + i]
        return _rows(flat, 0, m + 1, h, width)
    if direction == "forward":  # y[i, j] = z[i, j + h - 1 - i]
        return _rows(flat, h - 1, m - 1, h, width)
    raise ValueError(f"shear direction must be 'forward' or 'backward', got {direction!r}")


class Directional1dConv(nn.Module):
    """Four sets of stride-1 1D convolutions (horizontal, vertical, two diagonals), concatenated.

    Output channels ``[0, q)`` are horizontal, ``[q, 2q)`` vertical, ``[2q, 3q)`` forward diagonal and
    ``[3q, 4q)`` backward diagonal, with ``q = out_channels // 4``. Each set sees all input channels.
    In every set, tap ``u`` of the ``(1, 9)``/``(9, 1)`` weight multiplies ``x[i + I_h t, j + I_w t]`` with
    ``t = u - r``, so the weights are equation 1's ``k`` reversed, alike for the four directions.
    Output size equals input size for any ``H`` and ``W``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 9, bias: bool = True) -> None:
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"1D decoder needs output channels divisible by 4, got {out_channels}")
        if kernel_size % 2 == 0:
            raise ValueError(f"1D filter size must be odd (2r + 1), got {kernel_size}")
        q, r = out_channels // 4, kernel_size // 2
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.horizontal = nn.Conv2d(in_channels, q, (1, kernel_size), padding=(0, r), bias=bias)
        self.vertical = nn.Conv2d(in_channels, q, (kernel_size, 1), padding=(r, 0), bias=bias)
        self.forward_diagonal = nn.Conv2d(in_channels, q, (kernel_size, 1), padding=(r, 0), bias=bias)
        self.backward_diagonal = nn.Conv2d(in_channels, q, (kernel_size, 1), padding=(r, 0), bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        fwd = unshear(self.forward_diagonal(shear(x, "forward")), "forward", width)
        # a column of the backward-sheared map runs along (1, -1) = -I: flip the taps to keep tap u at +I
        bd = self.backward_diagonal
        bwd = F.conv2d(shear(x, "backward"), bd.weight.flip(2), bd.bias, padding=bd.padding)
        bwd = unshear(bwd, "backward", width)
        return torch.cat([self.horizontal(x), self.vertical(x), fwd, bwd], dim=1)


class TransposeConv1D(nn.Module):
    """The paper's 1D transpose convolution block: :class:`Directional1dConv` and 2× interpolation.

    A drop-in replacement for ``ConvTranspose2d(in, out, 3, stride=2, padding=1, output_padding=1)``:
    same output size (2H × 2W) and parameter count. By default the 9-tap filters run at the input
    resolution and the result is interpolated, so the multiply-adds equal those of the stride-2 3×3
    transpose convolution it replaces (the paper's "same parameter count and cost"; 1.5× counting the zeros
    of the sheared maps), with a reach of 18 output pixels. ``upsample_first=True`` interpolates first and
    filters at the output resolution (figure 4b read literally), about 4× the cost.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 9,
        scale_factor: int = 2,
        mode: str = "bilinear",
        upsample_first: bool = False,
    ) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode
        self.upsample_first = upsample_first
        self.conv = Directional1dConv(in_channels, out_channels, kernel_size)

    def _upsample(self, x: Tensor) -> Tensor:
        align = False if self.mode in ("bilinear", "bicubic") else None
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=align)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample_first:
            return self.conv(self._upsample(x))
        return self._upsample(self.conv(x))


def upsampling_conv(decoder: str, in_channels: int, out_channels: int) -> nn.Module:
    """The ×2 up-sampling convolution of a decoder: a 3×3 transpose convolution or its 1D replacement."""
    if check_decoder(decoder) == "1d":
        return TransposeConv1D(in_channels, out_channels)
    return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)


class LinkNetDecoderBlock(nn.Module):
    """LinkNet / D-LinkNet decoder block: 1×1 reduce to in/4, ×2 up-sampling conv, 1×1 to ``out``.

    Each convolution is followed by BatchNorm and ReLU. ``decoder`` picks the up-sampling convolution
    (:func:`upsampling_conv`); the 1×1 convolutions are the same in both variants.
    """

    def __init__(self, in_channels: int, out_channels: int, decoder: str = "transpose") -> None:
        super().__init__()
        mid = in_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid, 1)
        self.norm1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.deconv2 = upsampling_conv(decoder, mid, mid)
        self.norm2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, out_channels, 1)
        self.norm3 = nn.BatchNorm2d(out_channels)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.relu2(self.norm2(self.deconv2(x)))
        return self.relu3(self.norm3(self.conv3(x)))
