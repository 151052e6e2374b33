"""`roadmap ingest`: GPS files and imagery into the workdir's grid, imagery.vrt, point store and report."""

from __future__ import annotations

import click

from roadmap_cli.cluster import scheduler_option
from roadmap_cli.options import config_option, overwrite_option, record_config


@click.command("ingest")
@click.option("--gps", "gps", multiple=True, metavar="FILE",
              help="GPS samples: .csv, .csv.gz or Parquet (repeatable; a folder stands for the GPS files in it).")
@click.option("--imagery", metavar="PATH", default=None,
              help="Aerial imagery: one GeoTIFF, a folder of GeoTIFFs (one CRS and resolution) or a VRT; any CRS.")
@click.option("--columns", metavar="lat=..,lon=..,time=..,vehicle=..,speed=..,bearing=..", default=None,
              help="Name the columns instead of detecting them; `speed=` (empty) ignores a column.")
@click.option("--gps-crs", metavar="CRS", default=None,
              help="CRS of the GPS coordinates when they are projected metres (x=easting, y=northing) "
                   "[default: degrees, EPSG:4326].")
@click.option("--crs", metavar="CRS", default=None,
              help="Grid CRS without imagery [default: the UTM zone of the data, or --gps-crs when projected].")
@click.option("--resolution", type=float, default=None, metavar="M",
              help="Pixel size in metres without imagery [default: 0.5].")
@click.option("--speed-unit", type=click.Choice(["km/h", "m/s", "mph", "knots"]), default="km/h",
              show_default=True, help="Unit of the input speed column (the store keeps m/s).")
@click.option("--max-bad-fraction", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Fail when more than this fraction of rows is dropped.")
@scheduler_option
@overwrite_option
@config_option
@click.pass_context
def cmd(ctx: click.Context, gps: tuple[str, ...], imagery: str | None, columns: str | None, gps_crs: str | None,
        crs: str | None, resolution: float | None, speed_unit: str, max_bad_fraction: float,
        scheduler: str | None, overwrite: bool) -> None:
    """Read GPS files and imagery into the workdir's grid and point store.

    \b
    Writes grid.json, imagery.vrt (with --imagery), gps/ (the point store) and ingest_report.json
    (rows read and kept, drops per reason, vehicles, extent, sampling intervals, coordinate resolution).

    \b
    Columns and the delimiter are detected from the header: lat/latitude/y, lon/lng/longitude/x,
    time/timestamp/ts/t, vehicle/vehicle_id/taxi_id/trip_id/id (a column with a different value on
    every row is not a vehicle id), speed/velocity, bearing/heading/dir/angle. Time is epoch seconds or
    milliseconds, or ISO 8601 text (UTC when it has no zone). Coordinates are degrees unless --gps-crs.
    Speed is read in --speed-unit (km/h by default) and stored in m/s; bearing in degrees from north.
    Missing speed and bearing values are derived from consecutive samples of the same vehicle.
    A file without a vehicle column is one vehicle.

    \b
    With --scheduler the GPS files are read in parts (files, byte ranges of large CSV files, batches
    of Parquet files) and indexed in chunks of vehicles on the Dask cluster's workers, which must see
    the input files at the same paths; the store and report are those of an in-process run.

    \b
    The grid comes from the imagery; without imagery, from the GPS extent at --resolution in --crs.
    Re-running on a workdir: artifacts are replaced only with --overwrite.
      --gps only, workdir has imagery: the store is rebuilt on the imagery grid.
      --gps only, no imagery: grid and store are rebuilt from the new GPS extent.
      --imagery only, workdir has GPS: the grid changes to the imagery's, so the store is rebuilt
      from the GPS files recorded in ingest_report.json (they must still exist).
    """
    from roadmap_cli.ingest import IngestOptions, run_ingest

    if not gps and not imagery:
        raise click.UsageError("give --gps FILE (repeatable) and/or --imagery PATH", ctx=ctx)
    opts = IngestOptions(gps=list(gps), imagery=imagery, columns=columns, gps_crs=gps_crs, crs=crs,
                         resolution=resolution, speed_unit=speed_unit, max_bad_fraction=max_bad_fraction,
                         overwrite=overwrite, scheduler=scheduler)
    report = run_ingest(ctx.obj.workdir, opts)
    record_config(ctx, {"gps": list(gps), "imagery": imagery, "columns": columns, "gps_crs": gps_crs, "crs": crs,
                        "resolution": resolution, "speed_unit": speed_unit, "max_bad_fraction": max_bad_fraction,
                        "scheduler": scheduler, "overwrite": overwrite})
    g = report["grid"]
    msg = f"ingest: grid {g['width']} x {g['height']} px at {g['pixel_size_m']:g} m ({g['source']})"
    if report.get("rows_read"):
        msg += (f"; {report['rows_kept']} of {report['rows_read']} GPS rows kept, {report['vehicles']} vehicle(s)")
    if ctx.obj.verbosity >= 0:
        click.echo(msg, err=True)
