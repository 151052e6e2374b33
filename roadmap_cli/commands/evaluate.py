"""`roadmap evaluate`: not built yet."""

from __future__ import annotations

import click

from roadmap_cli.errors import RoadmapError


@click.command("evaluate", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def cmd() -> None:
    """(not built yet)"""
    raise RoadmapError("'evaluate' is not built yet in this version of roadmap")
