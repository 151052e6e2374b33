"""Model checkpoints: weights plus JSON-able metadata, saved atomically and loaded without running code.

A checkpoint is one `torch.save` file holding a plain dict::

    {"format": "roadmap-checkpoint", "version": 1,
     "state_dict": {name: tensor},          # CPU tensors, no DDP/compile prefixes
     "meta": {...},                          # plain JSON-able dict (see META_KEYS)
     "extra": {...} | None}                  # resume state: optimizer, scheduler, epoch, step, RNG states

Loading always uses `torch.load(weights_only=True)`: a file that would need to run code to unpickle (a
class with `__reduce__`, an arbitrary global) is refused, not executed. Every way a file can be wrong
(missing, truncated, not a torch file, a plain state dict, another tool's checkpoint, code-carrying) ends in
one `RoadmapError` line naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from roadmap_cli.errors import RoadmapError
from roadmap_cli.workdir import atomic_output

FORMAT = "roadmap-checkpoint"
VERSION = 1

#: metadata keys every checkpoint carries (train writes them all; predict relies on the first eight)
META_KEYS = (
    "roadmap_version",
    "architecture",
    "decoder",
    "encoder_depth",
    "in_channels",
    "inputs",
    "render",
    "normalisation",
    "tile_size",
    "training",
    "validation",
)
#: the keys without which a network cannot be rebuilt and fed
REQUIRED_META = ("architecture", "decoder", "in_channels", "inputs")

_ALLOWED_LEAVES = (str, int, float, bool, type(None))


def _unwrap(model: Any) -> Any:
    """The bare module behind DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and model.__class__.__name__ in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Refuse (at save time) anything `torch.load(weights_only=True)` would refuse at load time."""
    import torch

    if isinstance(obj, (torch.Tensor, torch.dtype, torch.device, torch.Size, *_ALLOWED_LEAVES)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, _ALLOWED_LEAVES):
                raise TypeError(f"checkpoint {where}: key {k!r} of type {type(k).__name__} cannot be stored")
            _check_weights_only_safe(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple | set):
        for i, v in enumerate(obj):
            _check_weights_only_safe(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint {where}: a {type(obj).__name__} cannot be loaded with weights_only=True; "
                    "store tensors, numbers, strings, lists or dicts")


def save_checkpoint(path: str | os.PathLike[str], model: Any, meta: dict[str, Any],
                    extra_state: dict[str, Any] | None = None, overwrite: bool = True) -> Path:
    """Write `model`'s weights, `meta` and optional resume state to `path` atomically.

    `model` is a torch module (DDP / compiled wrappers are unwrapped) or an already-made state dict.
    `meta` must be JSON-able (checked with json.dumps) so it can be shown, diffed and written beside outputs.
    `extra_state` holds what `--resume` needs (optimizer/scheduler state dicts, epoch, step, RNG states as
    tensors or plain data); it is checked to be loadable with weights_only=True before anything is written.
    """
    import torch

    path = Path(path)
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint meta must be a dict, not {type(meta).__name__}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint meta is not JSON-able: {exc}") from exc
    if isinstance(model, Mapping):
        state = dict(model)
    else:
        state = _unwrap(model).state_dict()
    state = {k: v.detach().to("cpu") if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    _check_weights_only_safe(state, "state_dict")
    if extra_state is not None:
        _check_weights_only_safe(extra_state, "extra")
    payload = {"format": FORMAT, "version": VERSION, "state_dict": state, "meta": meta, "extra": extra_state}
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return path


def _is_code_refusal(message: str) -> bool:
    m = message.lower()
    return any(word in m for word in ("global", "reduce", "unsupported class"))


def load_checkpoint(path: str | os.PathLike[str],
                    map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(state_dict, meta, extra) of a roadmap checkpoint; one-line RoadmapError for anything else.

    `extra` is `{}` for checkpoints saved without resume state (e.g. the best-model `model.pt`).
    """
    import torch

    p = Path(path)
    if not p.exists():
        raise RoadmapError(f"{p}: no such checkpoint file")
    if p.is_dir():
        raise RoadmapError(f"{p}: is a folder, not a checkpoint file")
    if p.stat().st_size == 0:
        raise RoadmapError(f"{p}: empty file, not a checkpoint")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if _is_code_refusal(msg):
            raise RoadmapError(f"{p}: refused: the file holds Python objects that would run code when loaded "
                               "(only weights and plain data are accepted); not a roadmap checkpoint") from None
        raise RoadmapError(f"{p}: not a readable torch checkpoint (corrupt, truncated or another format)") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile, IndexError,
            TypeError, AttributeError, MemoryError) as exc:
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            raise RoadmapError(f"{p}: cannot read ({exc.strerror})") from None
        raise RoadmapError(f"{p}: corrupt or truncated checkpoint, or not a torch file ({detail})") from None

    if not isinstance(obj, dict):
        raise RoadmapError(f"{p}: not a roadmap checkpoint (holds a {type(obj).__name__}, expected a dict)")
    if obj.get("format") != FORMAT:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise RoadmapError(f"{p}: a bare state dict without roadmap metadata, not a roadmap checkpoint "
                               "(use it as --encoder-weights if it is an ImageNet ResNet, or train with `roadmap "
                               "train`)")
        keys = ", ".join(sorted(str(k) for k in list(obj)[:6]))
        raise RoadmapError(f"{p}: another tool's checkpoint, not a roadmap checkpoint (top-level keys: {keys})")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise RoadmapError(f"{p}: roadmap checkpoint version {version!r} is newer than this roadmap reads "
                           f"({VERSION}); upgrade roadmap")
    state, meta, extra = obj.get("state_dict"), obj.get("meta"), obj.get("extra")
    if not isinstance(state, dict) or not state:
        raise RoadmapError(f"{p}: roadmap checkpoint without weights (state_dict missing or empty)")
    if not isinstance(meta, dict):
        raise RoadmapError(f"{p}: roadmap checkpoint without metadata")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise RoadmapError(f"{p}: checkpoint metadata lacks {', '.join(missing)}")
    return state, meta, (extra if isinstance(extra, dict) else {})


def image_channels_of(meta: Mapping[str, Any]) -> int:
    """RGB channels at the front of the network input (3 or 0) recorded in / implied by the metadata."""
    if "image_channels" in meta and meta["image_channels"] is not None:
        return int(meta["image_channels"])
    return 3 if "image" in str(meta.get("inputs", "")) else 0


def build_model_from_meta(meta: Mapping[str, Any]) -> Any:
    """A randomly initialised network of the architecture the metadata describes."""
    from models import build_model

    try:
        return build_model(str(meta["architecture"]), int(meta["in_channels"]), str(meta["decoder"]),
                           meta.get("encoder_depth"), image_channels=image_channels_of(meta))
    except (ValueError, TypeError, KeyError) as exc:
        raise RoadmapError(f"checkpoint metadata describes a network this roadmap cannot build ({exc})") from None


def build_from_checkpoint(path: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """(model in eval mode on `device`, meta) rebuilt from a checkpoint."""
    import torch

    state, meta, _ = load_checkpoint(path, map_location="cpu")
    try:
        model = build_model_from_meta(meta)
    except RoadmapError as exc:
        raise RoadmapError(f"{path}: {exc.format_message()}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = first[1] if len(first) > 1 else (first[0] if first else "")
        raise RoadmapError(f"{path}: weights do not fit the {meta['architecture']} network its metadata "
                           f"describes ({detail[:160]})") from None
    model.to(torch.device(device) if not isinstance(device, torch.device) else device)
    model.eval()
    return model, meta


def _render_dict(render_params: Any) -> dict[str, Any] | None:
    if render_params is None:
        return None
    if isinstance(render_params, Mapping):
        return dict(render_params)
    if hasattr(render_params, "to_dict"):
        return dict(render_params.to_dict())
    raise TypeError(f"render_params must be RenderParams, a dict or None, not {type(render_params).__name__}")


def _fmt(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list | tuple) else repr(v) if isinstance(v, str) else str(v)


def check_compatible(meta: Mapping[str, Any], render_params: Any, tile_size: int | None = None,
                     inputs: str | None = None, source: str = "model") -> list[str]:
    """Check that what predict is about to feed a model is what it was trained on.

    `render_params` (RenderParams, its dict, or None for no GPS) and `inputs` are what the caller will use;
    a difference in input mode, channel count or any GPS rendering parameter raises one RoadmapError line
    listing each difference (the network would silently see other data). Returns non-fatal notes, e.g. a
    prediction tile size other than the training one (fully convolutional networks accept it).
    """
    notes: list[str] = []
    problems: list[str] = []
    m_inputs = str(meta.get("inputs"))
    if inputs is not None and inputs != m_inputs:
        problems.append(f"inputs {inputs} but the model was trained on {m_inputs}")
    use_inputs = inputs or m_inputs
    trained = meta.get("render")
    given = _render_dict(render_params)
    if "gps" in use_inputs:
        if given is None:
            problems.append("no GPS rendering given but the model needs GPS channels")
        elif trained is None:
            problems.append("the checkpoint records no GPS rendering parameters")
        else:
            for key in sorted(set(trained) | set(given)):
                a, b = trained.get(key), given.get(key)
                if isinstance(a, list | tuple) and isinstance(b, list | tuple):
                    a, b = list(a), list(b)
                if isinstance(a, float) and isinstance(b, int | float) and abs(a - b) <= 1e-9 * max(1, abs(a)):
                    continue
                if a != b:
                    problems.append(f"GPS {key} {_fmt(b)} but trained with {_fmt(a)}")
    n_gps = 0
    if "gps" in use_inputs and given is not None:
        if hasattr(render_params, "n_channels"):
            n_gps = int(render_params.n_channels)
        else:
            n_gps = sum(2 if c == "bearing" else 1 for c in given.get("channels") or [])
    expected = (3 if "image" in use_inputs else 0) + n_gps
    in_ch = meta.get("in_channels")
    if in_ch is not None and ("gps" not in use_inputs or given is not None) and int(in_ch) != expected:
        problems.append(f"{expected} input channels but the network takes {in_ch}")
    if problems:
        raise RoadmapError(f"{source}: does not match this input: " + "; ".join(problems))
    t = meta.get("tile_size")
    if tile_size is not None and t is not None and int(tile_size) != int(t):
        notes.append(f"{source}: predicting with --tile-size {tile_size}, trained on {t}-pixel tiles")
    return notes
