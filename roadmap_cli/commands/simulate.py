"""`roadmap simulate`: not built yet."""

from __future__ import annotations

import click

from roadmap_cli.errors import RoadmapError


@click.command("simulate", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def cmd() -> None:
    """(not built yet)"""
    raise RoadmapError("'simulate' is not built yet in this version of roadmap")
