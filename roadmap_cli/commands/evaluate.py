"""`roadmap evaluate`: per-tile mean IoU, global IoU, P/R/F1, relaxed P/R, graph metrics -> metrics.json."""

from __future__ import annotations

from pathlib import Path

import click

from roadmap_cli.errors import RoadmapError
from roadmap_cli.options import config_option, overwrite_option, record_config

VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".osm", ".pbf", ".shp"}


def _is_vector(path: Path) -> bool:
    return path.suffix.lower() in VECTOR_SUFFIXES or path.name.lower().endswith(".osm.pbf")


@click.command("evaluate")
@click.option("--truth", "truth_path", required=True, type=click.Path(dir_okay=False),
              help="Truth: a road mask raster on any grid, or road vectors (buffered as in train).")
@click.option("--pred", "pred_path", type=click.Path(dir_okay=False), default=None,
              help="Prediction raster (probability 0-255 or 0/1 mask). Default: the workdir's prob.tif.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability at or above which a pixel is road.")
@click.option("--tile-size", type=click.IntRange(16), default=1024, show_default=True,
              help="Tile side for the per-tile mean IoU (the paper's figure uses 1024 px tiles).")
@click.option("--slack", type=click.IntRange(0), default=4, show_default=True,
              help="Pixels of tolerance for relaxed precision and recall.")
@click.option("--road-width", type=float, default=None, help="Road width in metres for vector truth without lanes.")
@click.option("--lane-width", type=float, default=3.5, show_default=True, help="Metres per lane for vector truth.")
@click.option("--truth-graph", type=click.Path(dir_okay=False), default=None,
              help="Road centrelines for graph metrics (default: --truth when it is vectors).")
@click.option("--pred-graph", type=click.Path(dir_okay=False), default=None,
              help="Proposed roads for graph metrics (default: the workdir's roads.gpkg when present).")
@click.option("--metrics-out", type=click.Path(dir_okay=False), default=None,
              help="Where to write metrics.json (default: in the workdir).")
@config_option
@overwrite_option
@click.pass_context
def cmd(ctx: click.Context, truth_path: str, pred_path: str | None, threshold: float, tile_size: int, slack: int,
        road_width: float | None, lane_width: float, truth_graph: str | None, pred_graph: str | None,
        metrics_out: str | None, overwrite: bool) -> None:
    """Score a prediction against truth and write metrics.json, an error map PNG and a table on stdout.

    Per-tile mean IoU leaves out tiles where truth and prediction are both empty (counted separately).
    """
    from roadmap_cli.evaluate import evaluate_raster, format_table
    from roadmap_cli.grid import Grid
    from roadmap_cli.workdir import atomic_write_json, check_overwrite

    wd = ctx.obj.workdir
    truth = Path(truth_path)
    if not truth.exists():
        raise RoadmapError(f"--truth {truth}: no such file")
    pred = Path(pred_path) if pred_path else wd.require("prob", "run `roadmap predict` first or pass --pred FILE")
    if not pred.exists():
        raise RoadmapError(f"--pred {pred}: no such file")
    out = Path(metrics_out) if metrics_out else wd.path("metrics")
    check_overwrite(out, overwrite)
    wd.ensure()
    grid = Grid.from_raster(pred) if not _is_vector(pred) else None
    if grid is None:
        raise RoadmapError(f"--pred {pred}: expected a raster, not vectors")
    from roadmap_cli.labels import LabelSource

    source = LabelSource(truth, grid, road_width=road_width, lane_width=lane_width)
    metrics = evaluate_raster(pred, source, tile_size=tile_size, threshold=threshold, slack=slack,
                              error_map_path=out.with_name("error_map.png"))
    metrics["pred"] = str(pred)
    metrics["truth"] = str(truth)
    metrics["pixel_size_m"] = grid.pixel_size_m

    graph_truth = Path(truth_graph) if truth_graph else (truth if _is_vector(truth) else None)
    graph_pred = Path(pred_graph) if pred_graph else (wd.path("roads_gpkg") if wd.path("roads_gpkg").exists() else None)
    if graph_truth is not None and graph_pred is not None:
        from roadmap_cli.graph_eval import graph_metrics

        metrics["graph"] = graph_metrics(graph_pred, graph_truth, grid)
    elif graph_truth is not None:
        metrics["graph"] = None
        metrics["graph_skipped"] = "no proposed graph: run `roadmap vectorize` first or pass --pred-graph"
    atomic_write_json(out, metrics, overwrite=True)
    record_config(ctx, {"truth": truth_path, "pred": str(pred), "threshold": threshold, "tile_size": tile_size,
                        "slack": slack, "road_width": road_width, "lane_width": lane_width,
                        "truth_graph": truth_graph, "pred_graph": pred_graph})
    click.echo(format_table(metrics))
    click.echo(f"metrics: {out}")
