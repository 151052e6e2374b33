"""`roadmap train` on a tiny synthetic city (CPU): outputs, metadata, resume, determinism, DDP at world size 1."""

from __future__ import annotations

import csv
import socket

import pytest
import torch
from click.testing import CliRunner
from train_fixtures import make_tiny_city

from roadmap_cli.checkpoint import META_KEYS, build_from_checkpoint, load_checkpoint
from roadmap_cli.cli import main

torch.set_num_threads(1)

FAST = ["--model", "linknet34", "--encoder-depth", "18", "--tile-size", "64", "--batch-size", "2",
        "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return make_tiny_city(tmp_path_factory.mktemp("city"), size=256, seed=1)


def _train(wd, labels, *extra, data_workdir=None, expect=0):
    args = ["-w", str(wd), "train", "--labels", str(labels), *FAST, *extra]
    if data_workdir is not None:
        args += ["--data-workdir", str(data_workdir)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == expect, res.output
    return res


def _weights(path):
    return load_checkpoint(path)[0]


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_step_run(city, tmp_path_factory):
    """Train 2 steps reading the city's workdir, writing into a separate output workdir."""
    wd, labels = city
    out = tmp_path_factory.mktemp("out_a")
    _train(out, labels, "--steps", "2", data_workdir=wd)
    return out


def test_two_steps_write_every_artifact_with_metadata(two_step_run):
    out = two_step_run
    for name in ("model.pt", "last.pt", "train_log.csv", "train_curves.png", "config.resolved.json"):
        assert (out / name).exists(), name
    assert (out / "train_curves.png").read_bytes()[:4] == b"\x89PNG"
    state, meta, extra = load_checkpoint(out / "model.pt")
    assert set(META_KEYS) <= set(meta)
    assert meta["architecture"] == "linknet18" and meta["encoder_depth"] == 18 and meta["decoder"] == "1d"
    assert meta["in_channels"] == 5 and meta["inputs"] == "image+gps" and meta["tile_size"] == 64
    assert meta["render"]["channels"] == ["density", "interval"]
    assert meta["training"]["steps"] == 2 and meta["training"]["samples"] == 4
    assert meta["training"]["augment"] is not None
    assert set(meta["validation"]) >= {"iou_tile_mean", "iou_global", "loss", "tiles", "step"}
    assert meta["validation"]["tiles"] == 3  # 20 % of 16 blocks
    assert extra == {}
    _, _, last_extra = load_checkpoint(out / "last.pt")
    assert last_extra["step"] == 2 and "optimizer" in last_extra and "scheduler" in last_extra
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [r["step"] for r in rows] == ["2"]
    assert set(rows[0]) == {"epoch", "step", "train_loss", "val_loss", "val_iou_tile_mean", "val_iou_global",
                            "lr", "seconds"}
    assert float(rows[0]["train_loss"]) > 0
    model, _ = build_from_checkpoint(out / "model.pt", "cpu")
    with torch.no_grad():
        assert model(torch.zeros(1, 5, 64, 64)).shape == (1, 1, 64, 64)


def test_same_seed_same_weights_and_resume_continues_exactly(city, two_step_run, tmp_path):
    wd, labels = city
    a = two_step_run
    b = tmp_path / "b"
    _train(b, labels, "--steps", "2", data_workdir=wd)
    assert _same(_weights(a / "last.pt"), _weights(b / "last.pt"))

    # resume b to 4 steps; a straight 4-step run must give the same weights and optimizer state
    before = load_checkpoint(b / "last.pt")[2]["optimizer"]
    res = CliRunner().invoke(main, ["-w", str(b), "train", "--labels", str(labels), "--resume", "--steps", "4",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    _, meta_b, extra_b = load_checkpoint(b / "last.pt")
    assert extra_b["step"] == 4 and meta_b["training"]["steps"] == 4
    assert extra_b["optimizer"]["state"][0]["step"] == before["state"][0]["step"] + 2
    rows = list(csv.DictReader((b / "train_log.csv").open()))
    assert [r["step"] for r in rows] == ["2", "4"]

    c = tmp_path / "c"
    _train(c, labels, "--steps", "4", data_workdir=wd)
    assert _same(_weights(b / "last.pt"), _weights(c / "last.pt"))
    assert torch.equal(extra_b["optimizer"]["state"][0]["exp_avg"],
                       load_checkpoint(c / "last.pt")[2]["optimizer"]["state"][0]["exp_avg"])


def test_ddp_world_size_one_with_gloo_matches_plain_run(city, two_step_run, tmp_path, monkeypatch):
    import torch.distributed as tdist

    wd, labels = city
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "ddp"
    _train(out, labels, "--steps", "2", data_workdir=wd)
    assert not tdist.is_initialized()  # the process group was closed again
    assert (out / "model.pt").exists()
    assert load_checkpoint(out / "model.pt")[1]["training"]["world_size"] == 1
    assert _same(_weights(out / "last.pt"), _weights(two_step_run / "last.pt"))


def test_refuses_to_overwrite_and_reports_one_line_errors(city, two_step_run, tmp_path):
    wd, labels = city
    res = _train(two_step_run, labels, "--steps", "1", data_workdir=wd, expect=1)
    assert "exists; pass --overwrite" in res.output and res.output.count("\n") == 1

    res = CliRunner().invoke(main, ["-w", str(tmp_path / "x"), "train", *FAST, "--data-workdir", str(wd)])
    assert res.exit_code == 1 and "--labels: missing" in res.output and res.output.count("\n") == 1

    res = _train(tmp_path / "y", tmp_path / "nope.tif", data_workdir=wd, expect=1)
    assert "no such file" in res.output and res.output.count("\n") == 1

    gps_only, labels2 = make_tiny_city(tmp_path / "gpsonly", size=128, imagery=False)
    res = _train(gps_only, labels2, "--steps", "1", expect=1)
    assert "no imagery" in res.output and "--inputs image+gps" in res.output and res.output.count("\n") == 1

    res = _train(tmp_path / "z", labels, "--resume", data_workdir=wd, expect=1)
    assert "nothing to --resume" in res.output

    res = _train(tmp_path / "d", labels, "--model", "deeplabv3plus", "--decoder", "1d", data_workdir=wd, expect=1)
    assert "deeplabv3plus" in res.output and res.output.count("\n") == 1


def test_encoder_weights_file_is_loaded(tmp_path):
    """A torchvision-format ResNet state dict (with fc.*) fills the encoder; the GPS stem channels get filters."""
    from models import build_model
    from roadmap_cli.train import _load_encoder_weights

    torch.manual_seed(0)
    src = build_model("linknet18", 3, "1d").encoder.state_dict()
    src = {k: v + 1.0 if v.is_floating_point() else v for k, v in src.items()}
    src["fc.weight"] = torch.zeros(1000, 512)
    src["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(src, path)
    net = build_model("linknet18", 5, "1d")
    _load_encoder_weights(net, str(path))
    enc = net.encoder.state_dict()
    assert torch.equal(enc["layer1.0.conv1.weight"], src["layer1.0.conv1.weight"])
    assert torch.equal(enc["conv1.weight"][:, :3], src["conv1.weight"])

    from roadmap_cli.errors import RoadmapError

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(RoadmapError, match="--encoder-weights"):
        _load_encoder_weights(net, str(bad))


def test_dataloader_workers_do_not_change_the_result(city, two_step_run, tmp_path):
    """Every sample draws from its own seeded generator: two worker processes give the same weights."""
    wd, labels = city
    out = tmp_path / "workers"
    _train(out, labels, "--steps", "2", "--workers", "2", data_workdir=wd)
    assert _same(_weights(out / "last.pt"), _weights(two_step_run / "last.pt"))
