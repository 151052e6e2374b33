"""`roadmap simulate`: crowdsourced-GPS samples along road vectors (paper §3 characteristics)."""

from __future__ import annotations

import click

from roadmap_cli.errors import RoadmapError
from roadmap_cli.options import config_option, overwrite_option, seed_option


def parse_float_list(value: str | None, option: str) -> list[float] | None:
    """'5,30' -> [5.0, 30.0]; None/'' -> None; a one-line error otherwise."""
    if value is None or not str(value).strip():
        return None
    try:
        out = [float(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise RoadmapError(f"{option} {value}: expected comma-separated numbers") from exc
    return out or None


@click.command("simulate")
@click.option("--roads", "roads_path", required=True, type=click.Path(dir_okay=False),
              help="Road centrelines: GeoJSON, GPKG, .osm or .osm.pbf.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="CSV to write (vehicle_id,timestamp,lat,lon,speed,bearing).")
@click.option("--profile", default="beijing", show_default=True, type=click.Choice(["beijing", "shanghai"]),
              help="Receiver settings: sampling intervals and resolutions (paper Fig. 3, Table 1).")
@click.option("--intervals", default=None, metavar="S[,S...]",
              help="Sampling intervals in seconds, one drawn per vehicle (replaces the profile's).")
@click.option("--coord-res", default=None, metavar="DEG[,DEG...]",
              help="Coordinate resolutions in degrees, one drawn per vehicle (e.g. 1e-5,1e-4).")
@click.option("--vehicles", default=200, show_default=True, type=click.IntRange(min=1), help="Number of vehicles.")
@click.option("--hours", default=4.0, show_default=True, type=float, help="Hours each vehicle is on the road.")
@click.option("--noise", default=5.0, show_default=True, type=float, help="Gaussian position noise σ (m, per axis).")
@click.option("--outlier-rate", default=0.005, show_default=True, type=float,
              help="Share of samples thrown tens of metres off (multipath).")
@click.option("--bias-zone", default="none", show_default=True, metavar="none|random|LON,LAT,R_M,DX_M,DY_M",
              help="A zone whose samples are all shifted by (DX, DY) metres (urban canyon).")
@click.option("--stands", default=None, type=click.IntRange(min=0),
              help="Taxi stands (waiting clusters off the road); default one per ~3 km of road.")
@click.option("--closed-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Share of minor streets that no vehicle drives.")
@click.option("--start", default="2024-03-04T07:00:00Z", show_default=True, help="Start time (ISO 8601, UTC).")
@seed_option
@overwrite_option
@config_option
@click.pass_context
def cmd(ctx: click.Context, roads_path: str, out_path: str, profile: str, intervals: str | None,
        coord_res: str | None, vehicles: int, hours: float, noise: float, outlier_rate: float, bias_zone: str,
        stands: int | None, closed_fraction: float, start: str, seed: int, overwrite: bool) -> None:
    """Simulate crowdsourced GPS (taxis) driving along road vectors.

    Trips follow shortest paths between places weighted towards arterials, so main roads get orders of
    magnitude more samples than residential streets and some streets none. Each vehicle has its own
    sampling interval and resolutions; samples carry Gaussian noise, rare outliers and, near taxi stands,
    clusters of waiting vehicles off the road. Same seed, same file.

    \b
        roadmap simulate --roads roads.geojson --out gps.csv --profile shanghai --vehicles 300 --hours 6
    """
    from roadmap_cli.simulate import SimConfig, simulate_to_csv

    cfg = SimConfig(
        vehicles=vehicles, hours=hours, profile=profile, intervals=parse_float_list(intervals, "--intervals"),
        coord_res=parse_float_list(coord_res, "--coord-res"), noise=noise, outlier_rate=outlier_rate,
        bias_zone=bias_zone, stands=stands, closed_fraction=closed_fraction, start=start, seed=seed,
    )
    df = simulate_to_csv(roads_path, out_path, cfg, overwrite=overwrite)
    if ctx.obj is None or ctx.obj.verbosity >= 0:
        kinds = df["kind"].value_counts()
        click.echo(f"simulate: wrote {out_path}: {len(df)} samples from {df['vehicle_id'].nunique()} vehicles "
                   f"({int(kinds.get('wait', 0))} waiting, {int(kinds.get('outlier', 0))} outliers)", err=True)
