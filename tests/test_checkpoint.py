"""Checkpoints: round trip, weights_only safety, one-line errors for foreign/corrupt files, mismatch messages."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from tiny_model import make_tiny_model, tiny_meta

from roadmap_cli.checkpoint import (
    build_from_checkpoint,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from roadmap_cli.errors import RoadmapError

torch.set_num_threads(1)


class _RunsCode:
    """Unpickling this runs a shell command (creates a marker file) unless the loader refuses it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = exc.value.format_message()
    assert "\n" not in msg
    return msg


def test_round_trip_restores_weights_meta_and_extra(tmp_path):
    model = make_tiny_model(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 5, 8, 8)).mean().backward()
    opt.step()
    extra = {"optimizer": opt.state_dict(), "epoch": 3, "step": 17, "torch_rng": torch.get_rng_state(),
             "python_rng": list(__import__("random").getstate()[1][:5])}
    path = save_checkpoint(tmp_path / "m.pt", model, tiny_meta(), extra_state=extra)
    assert path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    state, meta, got = load_checkpoint(path)
    assert meta == tiny_meta()
    fresh = make_tiny_model(seed=2)
    fresh.load_state_dict(state)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert got["epoch"] == 3 and got["step"] == 17
    assert torch.equal(got["torch_rng"], extra["torch_rng"])
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(got["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_file_is_loadable_with_weights_only_and_has_format_header(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_tiny_model(), tiny_meta())
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "roadmap-checkpoint" and raw["version"] == 1
    assert raw["extra"] is None
    _, _, extra = load_checkpoint(path)
    assert extra == {}


def test_save_refuses_non_json_meta_and_unloadable_extra(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "a.pt", make_tiny_model(), tiny_meta(bad=object()))
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(tmp_path / "b.pt", make_tiny_model(), tiny_meta(), extra_state={"x": _RunsCode("/x")})
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_save_respects_overwrite(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_tiny_model(), tiny_meta())
    with pytest.raises(RoadmapError, match="--overwrite"):
        save_checkpoint(path, make_tiny_model(), tiny_meta(), overwrite=False)


def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker_created_by_pickle"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "roadmap-checkpoint", "version": 1, "state_dict": {"w": torch.zeros(1)},
                "meta": tiny_meta(), "extra": _RunsCode(str(marker))}, evil)
    with pytest.raises(RoadmapError) as exc:
        load_checkpoint(evil)
    msg = _one_line(exc)
    assert "refused" in msg and "run code" in msg and str(evil) in msg
    assert not marker.exists()
    # the same with a plain pickle file
    plain = tmp_path / "evil.pkl"
    with open(plain, "wb") as fh:
        pickle.dump(_RunsCode(str(marker)), fh, protocol=2)
    with pytest.raises(RoadmapError):
        load_checkpoint(plain)
    assert not marker.exists()


def test_missing_corrupt_truncated_files(tmp_path):
    with pytest.raises(RoadmapError) as exc:
        load_checkpoint(tmp_path / "nope.pt")
    assert "no such checkpoint" in _one_line(exc)

    good = save_checkpoint(tmp_path / "good.pt", make_tiny_model(), tiny_meta())
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(RoadmapError) as exc:
        load_checkpoint(trunc)
    assert "corrupt or truncated" in _one_line(exc)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(RoadmapError) as exc:
        load_checkpoint(junk)
    _one_line(exc)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(RoadmapError, match="empty"):
        load_checkpoint(empty)

    with pytest.raises(RoadmapError, match="folder"):
        load_checkpoint(tmp_path)


def test_foreign_files_are_named(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(make_tiny_model().state_dict(), bare)
    with pytest.raises(RoadmapError) as exc:
        load_checkpoint(bare)
    assert "bare state dict" in _one_line(exc)

    other = tmp_path / "other.pt"
    torch.save({"model": make_tiny_model().state_dict(), "epoch": 4}, other)
    with pytest.raises(RoadmapError) as exc:
        load_checkpoint(other)
    msg = _one_line(exc)
    assert "another tool" in msg and "epoch" in msg

    newer = tmp_path / "newer.pt"
    torch.save({"format": "roadmap-checkpoint", "version": 99, "state_dict": {}, "meta": {}}, newer)
    with pytest.raises(RoadmapError, match="newer"):
        load_checkpoint(newer)

    nometa = tmp_path / "nometa.pt"
    torch.save({"format": "roadmap-checkpoint", "version": 1, "state_dict": {"w": torch.ones(1)},
                "meta": {"architecture": "linknet18"}}, nometa)
    with pytest.raises(RoadmapError, match="lacks"):
        load_checkpoint(nometa)

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), tensor)
    with pytest.raises(RoadmapError, match="Tensor"):
        load_checkpoint(tensor)


def test_build_from_checkpoint_rebuilds_a_registry_model(tmp_path):
    from models import build_model

    torch.manual_seed(0)
    net = build_model("linknet18", 5, "1d")
    meta = tiny_meta(architecture=net.name, encoder_depth=net.encoder_depth)
    path = save_checkpoint(tmp_path / "m.pt", net, meta)
    model, got = build_from_checkpoint(path, "cpu")
    assert got["architecture"] == "linknet18" and not model.training
    x = torch.randn(1, 5, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), net(x))


def test_build_from_checkpoint_with_wrong_weights_is_one_line(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_tiny_model(), tiny_meta())  # TinyNet weights, linknet meta
    with pytest.raises(RoadmapError) as exc:
        build_from_checkpoint(path, "cpu")
    assert "do not fit" in _one_line(exc)

    path2 = save_checkpoint(tmp_path / "m2.pt", make_tiny_model(), tiny_meta(architecture="alexnet"))
    with pytest.raises(RoadmapError) as exc:
        build_from_checkpoint(path2, "cpu")
    assert "cannot build" in _one_line(exc)


def test_check_compatible_accepts_the_training_setup_and_notes_tile_size():
    meta = tiny_meta()
    assert check_compatible(meta, meta["render"], tile_size=64, inputs="image+gps") == []
    notes = check_compatible(meta, dict(meta["render"]), tile_size=1024)
    assert len(notes) == 1 and "1024" in notes[0] and "64" in notes[0]


def test_check_compatible_names_every_mismatch():
    meta = tiny_meta()
    other = dict(meta["render"], kernel_size=5, channels=["density", "interval", "speed"])
    with pytest.raises(RoadmapError) as exc:
        check_compatible(meta, other)
    msg = _one_line(exc)
    assert "kernel_size 5 but trained with 3" in msg
    assert "channels density,interval,speed" in msg
    assert "6 input channels but the network takes 5" in msg

    with pytest.raises(RoadmapError, match="inputs image but the model was trained on image\\+gps"):
        check_compatible(meta, meta["render"], inputs="image")
    with pytest.raises(RoadmapError, match="needs GPS"):
        check_compatible(meta, None)
    img = tiny_meta(inputs="image", in_channels=3, render=None)
    assert check_compatible(img, None, inputs="image") == []
