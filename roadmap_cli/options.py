"""Shared option decorators: the same option means the same thing in every command (as `rio` does)."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from roadmap_cli.errors import RoadmapError

log = logging.getLogger("roadmap")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict (one section per command, or flat keys)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoadmapError(f"--config {p}: cannot read ({exc.strerror})") from exc
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # yaml and toml raise their own error types
        raise RoadmapError(f"--config {p}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'YAML'} "
                           f"({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise RoadmapError(f"--config {p}: expected a mapping of option names to values")
    return data


def _normalise(section: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def _command_config_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager: load --config into this command's default map before its other options are resolved."""
    if value is None:
        return None
    data = load_config_file(value)
    name = ctx.info_name or ""
    section = data.get(name, data) if isinstance(data.get(name), dict) else data
    flat = {k: v for k, v in section.items() if not isinstance(v, dict)}
    ctx.default_map = {**(ctx.default_map or {}), **_normalise(flat)}
    return value


def config_option(f: Callable) -> Callable:
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=False,
        callback=_command_config_callback,
        help="YAML or TOML file of option defaults (a section named after the command, or flat keys).",
    )(f)


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                        help="Where to run the network.")(f)


def seed_option(f: Callable) -> Callable:
    return click.option("--seed", type=int, default=0, show_default=True,
                        help="Random seed (same seed, same result).")(f)


def overwrite_option(f: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True, default=False, help="Replace existing artifacts.")(f)


def common_options(f: Callable) -> Callable:
    """--device, --seed, --overwrite and --config."""
    for deco in (config_option, overwrite_option, seed_option, device_option):
        f = deco(f)
    return f


def record_config(ctx: click.Context, params: dict[str, Any]) -> None:
    """Write the resolved options of this command into `<workdir>/config.resolved.json` (a section per command)."""
    from roadmap_cli.workdir import atomic_write_json

    wd = ctx.obj.workdir
    wd.ensure()
    path = wd.path("config.resolved.json")
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        current = {}
    current[ctx.info_name or "command"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    atomic_write_json(path, current)


def resolve_device(spec: str) -> Any:
    """`auto|cpu|cuda[:N]` to a torch.device, with a one-line error when CUDA is asked for and absent."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RoadmapError(f"--device {spec}: CUDA is not available in this torch build or on this machine")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RoadmapError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise RoadmapError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def say(ctx: click.Context, message: str) -> None:
    """A stage's one-line summary on stderr (stdout stays free for data); silent with -q."""
    if ctx.obj is None or ctx.obj.verbosity >= 0:
        click.echo(message, err=True)
