"""Tests for models/: registry, output shapes, the 1D decoder (eq. 1 of the paper), encoder weight loading."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import DECODERS, MODEL_NAMES, build_model, load_encoder_weights
from models.decoders import Directional1dConv, TransposeConv1D, shear, unshear
from models.resnet import ResNetEncoder

torch.set_num_threads(1)

#: direction vectors (I_h, I_w) of the paper's equation 1, in the output-channel order of Directional1dConv
PAPER_DIRECTIONS = [(0, 1), (1, 0), (1, 1), (-1, 1)]
TRANSPOSE_CAPABLE = [n for n in MODEL_NAMES if n != "deeplabv3plus"]
GPS_CHANNELS = 2


@functools.cache
def _model(name: str, decoder: str, in_channels: int = 3 + GPS_CHANNELS) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_channels, decoder).eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", TRANSPOSE_CAPABLE)
def test_1d_decoder_has_the_parameter_count_of_its_transpose_twin(name: str) -> None:
    one_d, transpose = _model(name, "1d"), _model(name, "transpose")
    n1, nt = _n_params(one_d), _n_params(transpose)
    assert abs(n1 - nt) <= 0.02 * nt, (n1, nt)
    # the variants must really differ: every 3x3 transpose conv is gone from the 1d model
    blocks_1d = [m for m in one_d.modules() if isinstance(m, TransposeConv1D)]
    t3 = [m for m in transpose.modules() if isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (3, 3)]
    assert blocks_1d and len(blocks_1d) == len(t3)
    assert not any(isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (3, 3) for m in one_d.modules())
    assert not any(isinstance(m, TransposeConv1D) for m in transpose.modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [(64, 96), (70, 50)])
def test_output_shape_equals_input_shape(name: str, size: tuple[int, int]) -> None:
    decoder = "transpose" if name == "deeplabv3plus" else "1d"
    model = _model(name, decoder)
    x = torch.randn(1, 3 + GPS_CHANNELS, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 1, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["linknet18", "unet", "resunet"])
def test_transpose_decoder_output_shape_and_gradients(name: str) -> None:
    model = build_model(name, 3, "transpose").train()
    x = torch.randn(2, 3, 40, 56)
    y = model(x)
    assert y.shape == (2, 1, 40, 56)
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_1d_decoder_trains_gradients_reach_every_direction() -> None:
    model = build_model("linknet18", 2, "1d", image_channels=0).train()
    model(torch.randn(2, 2, 64, 64)).square().mean().backward()
    block = next(m for m in model.modules() if isinstance(m, Directional1dConv))
    for conv in (block.horizontal, block.vertical, block.forward_diagonal, block.backward_diagonal):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_model_describes_itself_and_config_rebuilds_it() -> None:
    model = build_model("dlinknet18", 5, "1d")
    assert (model.name, model.decoder, model.in_channels, model.image_channels) == ("dlinknet18", "1d", 5, 3)
    assert model.gps_channels == 2 and model.encoder_depth == 18
    again = build_model(**model.config())
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    gps_only = build_model("unet", 4, "transpose", image_channels=0)
    assert gps_only.gps_channels == 4


def test_encoder_depth_from_argument_and_name() -> None:
    assert build_model("linknet34", 3, encoder_depth=34).encoder.depth == 34
    assert build_model("deeplabv3plus", 3, "transpose", encoder_depth=18).encoder.depth == 18
    with pytest.raises(ValueError, match="ResNet-34"):
        build_model("dlinknet34", 3, encoder_depth=18)
    with pytest.raises(ValueError, match="encoder_depth"):
        build_model("deeplabv3plus", 3, "transpose", encoder_depth=50)


def test_unknown_names_raise_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="dlinknet34") as err:
        build_model("segnet", 3)
    assert all(n in str(err.value) for n in MODEL_NAMES)
    with pytest.raises(ValueError, match="transpose"):
        build_model("dlinknet34", 3, decoder="bilinear")
    assert set(DECODERS) == {"1d", "transpose"}


def test_deeplab_refuses_the_1d_decoder() -> None:
    with pytest.raises(ValueError, match="deeplabv3plus.*transpose"):
        build_model("deeplabv3plus", 5, "1d")


def test_wrong_input_channels_raise() -> None:
    model = _model("unet", "1d")
    with pytest.raises(ValueError, match=r"\[N, 5, H, W\]"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image_channels"):
        build_model("unet", 2, image_channels=3)


# ------------------------------------------------------------------------------------------ 1D decoder


def _reference_eq1(x: torch.Tensor, conv: Directional1dConv) -> torch.Tensor:
    """Equation 1 by brute force: y_I[i, j] = sum_t x[i + I_h t, j + I_w t] k[t], zero outside the map."""
    r = conv.kernel_size // 2
    n, _, h, w = x.shape
    xp = F.pad(x, (r, r, r, r))
    subconvs = [conv.horizontal, conv.vertical, conv.forward_diagonal, conv.backward_diagonal]
    outs = []
    for (dh, dw), sub in zip(PAPER_DIRECTIONS, subconvs, strict=True):
        taps = sub.weight.reshape(sub.out_channels, sub.in_channels, -1)  # [q, C, 9], tap u <-> t = u - r
        y = sub.bias.view(1, -1, 1, 1).expand(n, -1, h, w).clone()
        for u in range(2 * r + 1):
            t = u - r
            shifted = xp[:, :, r + dh * t : r + dh * t + h, r + dw * t : r + dw * t + w]
            y = y + torch.einsum("qc,nchw->nqhw", taps[:, :, u], shifted)
        outs.append(y)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("size", [(7, 12), (13, 5), (9, 9), (1, 9), (9, 1), (2, 3)])
def test_directional_conv_computes_equation_1(size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    conv = Directional1dConv(3, 8)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert torch.allclose(conv(x), _reference_eq1(x, conv), atol=1e-5)


@pytest.mark.parametrize("centre", [(5, 7), (0, 0), (10, 2), (3, 14)])
def test_impulse_spreads_only_along_each_direction(centre: tuple[int, int]) -> None:
    torch.manual_seed(2)
    h, w = 11, 15
    conv = Directional1dConv(1, 4)
    with torch.no_grad():
        for sub in (conv.horizontal, conv.vertical, conv.forward_diagonal, conv.backward_diagonal):
            sub.weight.copy_(sub.weight.abs() + 0.5)  # every tap clearly non-zero
            sub.bias.zero_()
        x = torch.zeros(1, 1, h, w)
        x[0, 0, centre[0], centre[1]] = 1.0
        y = conv(x)[0]
    i0, j0 = centre
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    near = (ii - i0).abs().maximum((jj - j0).abs()) <= 4
    expected = {
        "horizontal": (ii == i0) & near,  # I = (0, 1): same row
        "vertical": (jj == j0) & near,  # I = (1, 0): same column
        "forward": (ii - jj == i0 - j0) & near,  # I = (1, 1)
        "backward": (ii + jj == i0 + j0) & near,  # I = (-1, 1)
    }
    for channel, (label, mask) in enumerate(expected.items()):
        assert torch.equal(y[channel] != 0, mask), label


@pytest.mark.parametrize("size", [(1, 6), (2, 2), (5, 8), (8, 5), (7, 7)])
def test_shear_makes_diagonals_columns_and_unshear_inverts(size: tuple[int, int]) -> None:
    h, w = size
    x = torch.arange(1.0, h * w + 1).reshape(1, 1, h, w)  # distinct values: each pixel is traceable
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for direction, diagonal in (("forward", ii - jj), ("backward", ii + jj)):
        z = shear(x, direction)
        assert z.shape[-1] == w + h - 1
        assert torch.equal(unshear(z, direction, w), x)
        rows, cols = torch.nonzero(z[0, 0], as_tuple=True)
        assert len(rows) == h * w  # nothing duplicated or lost
        source = z[0, 0, rows, cols].long() - 1  # flat index of the pixel in x
        assert torch.equal(rows, source // w)  # rows stay rows
        for c in cols.unique():  # each column of z holds exactly one diagonal of x
            assert diagonal.flatten()[source[cols == c]].unique().numel() == 1


def test_transpose_conv_1d_matches_transpose_conv_shape_and_size() -> None:
    block = TransposeConv1D(16, 8)
    twin = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(1, 16, 5, 9)
    assert block(x).shape == twin(x).shape == (1, 8, 10, 18)
    assert _n_params(block) == _n_params(twin)
    with pytest.raises(ValueError, match="divisible by 4"):
        Directional1dConv(4, 6)


# ---------------------------------------------------------------------------------------- encoder weights


def _torchvision_resnet_state_dict(layers: tuple[int, ...] = (3, 4, 6, 3), seed: int = 3) -> dict:
    """A state dict with torchvision's ResNet (BasicBlock) names and shapes, random values, fc included."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            cin = inplanes if b == 0 else planes
            sd[f"{p}.conv1.weight"] = torch.randn(planes, cin, 3, 3, generator=g)
            bn(f"{p}.bn1", planes)
            sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g)
            bn(f"{p}.bn2", planes)
            if b == 0 and stage > 1:
                sd[f"{p}.downsample.0.weight"] = torch.randn(planes, cin, 1, 1, generator=g)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_torchvision_weights_load_with_gps_channels() -> None:
    sd = _torchvision_resnet_state_dict()
    model = build_model("dlinknet34", 3 + GPS_CHANNELS, "1d")
    report = load_encoder_weights(model.encoder, sd)
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert sorted(report.ignored_keys) == ["fc.bias", "fc.weight"]
    assert report.complete and report.gps_channels == GPS_CHANNELS
    own = model.encoder.state_dict()
    stem = own["conv1.weight"]
    assert stem.shape == (64, 3 + GPS_CHANNELS, 7, 7)
    assert torch.equal(stem[:, :3], sd["conv1.weight"])  # RGB filters unchanged
    gps_filter = sd["conv1.weight"].mean(dim=1) / GPS_CHANNELS
    for k in range(GPS_CHANNELS):
        assert torch.allclose(stem[:, 3 + k], gps_filter)
    for key, value in sd.items():
        if key != "conv1.weight" and not key.startswith("fc."):
            assert torch.equal(own[key], value), key


def test_gps_only_and_zero_init_stems() -> None:
    sd = _torchvision_resnet_state_dict(layers=(2, 2, 2, 2))
    gps_only = build_model("linknet18", 3, "1d", image_channels=0)
    load_encoder_weights(gps_only, sd)  # the model itself is accepted too
    expected = sd["conv1.weight"].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)  # 3/k scaling, k = 3
    assert torch.allclose(gps_only.encoder.conv1.weight, expected)

    rgb = ResNetEncoder(18, 3).eval()
    fused = ResNetEncoder(18, 3 + GPS_CHANNELS).eval()
    load_encoder_weights(rgb, sd)
    load_encoder_weights(fused, sd, gps_init="zeros")
    image, gps = torch.randn(1, 3, 64, 64), torch.rand(1, GPS_CHANNELS, 64, 64)
    with torch.no_grad():  # zero-initialised GPS filters: the pretrained RGB network, exactly
        assert torch.allclose(rgb(image).e4, fused(torch.cat([image, gps], 1)).e4, atol=1e-5)


def test_weight_loading_reports_and_rejects_mismatches() -> None:
    encoder = ResNetEncoder(34, 3)
    report = load_encoder_weights(encoder, _torchvision_resnet_state_dict(layers=(2, 2, 2, 2)))
    assert "layer1.2.conv1.weight" in report.missing_keys and not report.complete
    with pytest.raises(ValueError, match="missing"):
        load_encoder_weights(encoder, _torchvision_resnet_state_dict(layers=(2, 2, 2, 2)), strict=True)

    bottleneck = _torchvision_resnet_state_dict()
    bottleneck["layer1.0.conv1.weight"] = torch.randn(64, 64, 1, 1)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight.*\(64, 64, 1, 1\)"):
        load_encoder_weights(encoder, bottleneck)

    four_band = _torchvision_resnet_state_dict()
    four_band["conv1.weight"] = torch.randn(64, 4, 7, 7)
    with pytest.raises(ValueError, match="conv1.weight"):
        load_encoder_weights(ResNetEncoder(34, 5), four_band)

    extra = _torchvision_resnet_state_dict()
    extra["head.weight"] = torch.zeros(1)
    assert load_encoder_weights(encoder, extra).unexpected_keys == ["head.weight"]
    with pytest.raises(ValueError, match="no ResNet encoder"):
        load_encoder_weights(build_model("unet", 3), extra)


def test_encoder_exposes_strides_4_to_32() -> None:
    encoder = ResNetEncoder(18, 4).eval()
    with torch.no_grad():
        f = encoder(torch.randn(1, 4, 64, 96))
    assert [tuple(t.shape[1:]) for t in f] == [
        (64, 32, 48),
        (64, 16, 24),
        (128, 8, 12),
        (256, 4, 6),
        (512, 2, 3),
    ]
    dilated = ResNetEncoder(18, 3, dilate_layer4=True).eval()
    with torch.no_grad():
        assert dilated(torch.randn(1, 3, 64, 96)).e4.shape[-2:] == (4, 6)
