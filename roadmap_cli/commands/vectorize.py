"""`roadmap vectorize`: probability raster -> road graph -> roads.gpkg / .osm / .osc (+ verification, report)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from roadmap_cli.cluster import scheduler_option
from roadmap_cli.options import config_option, overwrite_option, record_config, say

log = logging.getLogger("roadmap")


@click.command("vectorize")
@click.option("--mask", "mask", type=click.Path(dir_okay=False), default=None,
              help="Single-band raster to vectorize (prob.tif, or a 0/1 or 0/255 label raster), on its own grid.  "
                   "[default: <workdir>/prob.tif]")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Road probability (0..1; the raster is scaled from 0-255, or 0/1 labels) at or above which a "
                   "pixel is road.")
@click.option("--min-length", type=float, default=20.0, show_default=True,
              help="Drop connected pieces of road shorter than this (metres).")
@click.option("--min-spur", type=float, default=10.0, show_default=True,
              help="Prune dead-end branches shorter than this off junctions (metres).")
@click.option("--max-gap", type=float, default=20.0, show_default=True,
              help="Close gaps up to this long between a dead end and another road, or the raster's border "
                   "(metres; 0: never).")
@click.option("--gap-threshold", type=float, default=0.2, show_default=True,
              help="A gap is closed only where the probability along it stays at or above this.")
@click.option("--junction-merge", type=float, default=8.0, show_default=True,
              help="Junctions closer than this along a road become one node (metres).")
@click.option("--simplify", type=float, default=1.0, show_default=True,
              help="Douglas-Peucker tolerance (metres).")
@click.option("--highway", default="road", show_default=True,
              help="Value of the highway=* tag of the proposed ways.")
@click.option("--tile-size", type=int, default=4096, show_default=True,
              help="Window size in pixels; larger rasters are processed window by window and stitched exactly.")
@click.option("--existing-osm", type=click.Path(dir_okay=False), default=None,
              help="OSM extract (.osm / .osm.pbf): drop roads already mapped, tie new ways to existing nodes.")
@click.option("--verify-radius", type=float, default=None,
              help="GPS verification: samples within this many metres of a road count for it.  "
                   "[default: the verifier's, 15 m]")
@scheduler_option
@config_option
@overwrite_option
@click.pass_context
def cmd(ctx: click.Context, mask: str | None, threshold: float, min_length: float, min_spur: float, max_gap: float,
        gap_threshold: float, junction_merge: float, simplify: float, highway: str, tile_size: int,
        existing_osm: str | None, verify_radius: float | None, scheduler: str | None, overwrite: bool) -> None:
    """Turn a road probability raster into a road graph and files a mapper can review.

    Threshold, clean, skeletonize and trace the raster window by window, prune spurs, merge junction clusters,
    close small gaps, drop short pieces and simplify; every length in metres whatever the raster's CRS. Writes
    roads.gpkg (layers roads and nodes), roads.osm (JOSM, never uploadable as is), roads.osc (osmChange), and,
    with GPS in the workdir, verification.csv/.geojson and report.html.
    """
    from postprocess.vectorize import VectorizeParams
    from roadmap_cli.errors import RoadmapError
    from roadmap_cli.vectorize import VectorizeOptions, run_vectorize

    record_config(ctx, dict(ctx.params))
    if verify_radius is not None and not verify_radius > 0:
        raise RoadmapError(f"--verify-radius {verify_radius}: must be > 0")
    params = VectorizeParams(threshold=threshold, min_length_m=min_length, min_spur_m=min_spur, max_gap_m=max_gap,
                             gap_threshold=gap_threshold, junction_merge_m=junction_merge, simplify_m=simplify,
                             tile_size=tile_size)
    try:
        params.validate()
    except ValueError as exc:
        name, _, msg = str(exc).partition(": ")
        opt = {"threshold": "--threshold", "min_length_m": "--min-length", "min_spur_m": "--min-spur",
               "max_gap_m": "--max-gap", "gap_threshold": "--gap-threshold", "junction_merge_m": "--junction-merge",
               "simplify_m": "--simplify", "tile_size": "--tile-size"}.get(name, name)
        raise RoadmapError(f"{opt}: {msg}") from exc
    opts = VectorizeOptions(mask=Path(mask) if mask else None, highway=highway,
                            existing_osm=Path(existing_osm) if existing_osm else None, verify_radius=verify_radius,
                            overwrite=overwrite, params=params)
    out = run_vectorize(ctx.obj.workdir, opts, scheduler=scheduler)
    if not out.skipped:
        g = out.summary["graph"]
        say(ctx, f"vectorize: {g['edges']} roads, {g['length_m'] / 1000:.1f} km; wrote "
                 f"{', '.join(p.name for p in out.outputs.values())}")
