"""`roadmap synth`: a synthetic labelled city (imagery, labels, road vectors, GPS) for tests and benchmarks."""

from __future__ import annotations

import click

from roadmap_cli.commands.simulate import parse_float_list
from roadmap_cli.options import config_option, overwrite_option, seed_option


@click.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write image.tif, labels.tif, roads.geojson, gps.csv, synth.json.")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(min=64),
              help="Image width and height in pixels (0.5 m each).")
@click.option("--style", default="a", show_default=True, metavar="a|b|c|temperate|arid|dense",
              help="Palette, textures and densities: a different-looking city for domain-shift tests.")
@click.option("--gps-profile", default="beijing", show_default=True, type=click.Choice(["beijing", "shanghai"]),
              help="GPS receiver profile (see `roadmap simulate`).")
@click.option("--intervals", default=None, metavar="S[,S...]", help="GPS sampling intervals (replace the profile's).")
@click.option("--vehicles", default=200, show_default=True, type=click.IntRange(min=1), help="GPS vehicles.")
@click.option("--hours", default=4.0, show_default=True, type=float, help="Hours of GPS per vehicle.")
@click.option("--noise", default=5.0, show_default=True, type=float, help="GPS noise σ in metres.")
@seed_option
@overwrite_option
@config_option
@click.pass_context
def cmd(ctx: click.Context, out_dir: str, size: int, style: str, gps_profile: str, intervals: str | None,
        vehicles: int, hours: float, noise: float, seed: int, overwrite: bool) -> None:
    """Make a synthetic city: RGB imagery, road-area labels, road centrelines and simulated GPS.

    Trees hide stretches of road, parking lots and plazas look like road, dirt tracks barely differ from
    fields, a railway crosses the city. Same seed, same files.

    \b
        roadmap synth --out city --size 2048 --style b --seed 3
    """
    from roadmap_cli.simulate import SimConfig, resolve_profile
    from roadmap_cli.synth import resolve_style, summary_line, synth

    resolve_style(style)
    ivs = parse_float_list(intervals, "--intervals")
    resolve_profile(gps_profile, ivs)
    cfg = SimConfig(vehicles=vehicles, hours=hours, profile=gps_profile, intervals=ivs, noise=noise, seed=seed)
    summary = synth(out_dir, size=size, seed=seed, style=style, gps_cfg=cfg, overwrite=overwrite)
    if ctx.obj is None or ctx.obj.verbosity >= 0:
        click.echo(summary_line(summary), err=True)
