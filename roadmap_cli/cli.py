"""The `roadmap` command: a chained click group (`roadmap -w city ingest ... predict ... vectorize`)."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import click

from roadmap_cli import __version__
from roadmap_cli.errors import RoadmapError
from roadmap_cli.options import load_config_file
from roadmap_cli.progress import set_quiet
from roadmap_cli.workdir import Workdir

# name -> one-line summary; modules are imported only when their command runs (fast start-up, --help included).
COMMANDS: dict[str, str] = {
    "ingest": "Read GPS files and imagery into the workdir's grid and point store.",
    "simulate": "Simulate crowdsourced GPS along road vectors.",
    "synth": "Make a synthetic labelled city (imagery, labels, roads, GPS).",
    "train": "Train a segmentation model on imagery, GPS and labels.",
    "predict": "Predict a road probability raster (or the KDE baseline).",
    "vectorize": "Turn a probability raster into roads: graph, OSM files, verification report.",
    "evaluate": "Score a prediction against truth masks, vectors or graphs.",
}


@dataclass
class AppContext:
    """What every command finds in `ctx.obj`."""

    workdir: Workdir
    verbosity: int = 0


class RoadmapGroup(click.Group):
    """Lazy-loading group that turns unexpected exceptions into one line unless -vv."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"roadmap_cli.commands.{name}")
        return module.cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except KeyboardInterrupt:
            raise
        except MemoryError as exc:
            raise RoadmapError("out of memory; try a smaller --tile-size or --batch-size") from exc
        except Exception as exc:
            obj = ctx.obj
            if obj is not None and obj.verbosity >= 2:
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RoadmapError(f"unexpected {type(exc).__name__}: {msg} (run with -vv for the traceback)") from exc


@click.group(cls=RoadmapGroup, chain=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-w", "--workdir", default="./roadmap-work", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding every stage's artifacts.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv also shows tracebacks).")
@click.option("-q", "--quiet", count=True, help="Less log output, no progress bars.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML or TOML file with a section of option defaults per command.")
@click.version_option(__version__, "--version", prog_name="roadmap")
@click.pass_context
def main(ctx: click.Context, workdir: str, verbose: int, quiet: int, config_file: str | None) -> None:
    """Crowdsourced GPS + aerial imagery -> vector roads a mapper can review.

    Stages chain in one process and share one workdir:

        roadmap -w city ingest --gps taxi.csv --imagery tiles/ predict --model m.pt vectorize
    """
    verbosity = verbose - quiet
    level = {-2: logging.CRITICAL, -1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        max(-2, min(verbosity, 2)), logging.DEBUG)
    logging.basicConfig(level=level, format="roadmap: %(levelname)s: %(message)s")
    logging.getLogger("roadmap").setLevel(level)
    set_quiet(quiet > 0)
    if config_file:
        data = load_config_file(config_file)
        ctx.default_map = {name: {str(k).replace("-", "_"): v for k, v in section.items()}
                           for name, section in data.items() if isinstance(section, dict)}
    ctx.obj = AppContext(workdir=Workdir(workdir), verbosity=verbosity)
