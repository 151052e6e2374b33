"""The vectorize stage: probability raster -> road graph -> conflation -> verification -> files -> report.

Order, and the plug-in points (each optional module is imported lazily; the stage works without it):

1. `postprocess.vectorize.raster_to_graph` turns the mask (default `<workdir>/prob.tif`, or any single-band
   raster via --mask, on its own grid) into a `RoadGraph` in the mask's CRS. With --scheduler the skeleton's
   core windows are traced on the Dask workers (`trace_window_task`, reading the mask at the same path) and
   stitched here exactly as in-process, so the graph is the same.
2. `_conflate(graph, existing_osm)` (only with --existing-osm) uses `postprocess.conflate`:
   `read_existing_osm(path) -> ExistingOSM`, `conflate(graph, existing) -> (graph, summary)` (drops or cuts
   edges already mapped; sets `node_attrs[n] = {"osm_id", "osm_version", "tags"}` on nodes snapped to existing OSM
   nodes) and `existing_lines_in_crs(existing, crs_wkt)` (grid-CRS polylines for verification and the report).
   Without that module --existing-osm is a one-line error.
3. `_verify(graph, workdir, radius, other_lines)` uses `postprocess.verify`: with a GPS point store in the
   workdir, `verify(graph, query, radius_m=..., other_lines=...) -> summary` sets edge attrs gps_support,
   confirmed, reason, n_samples, n_vehicles, support_per_100m; without one (or without the module) every edge gets
   confirmed=None / gps_support=None and the reason.
4. Writers: roads.gpkg (`postprocess.gpkg`), roads.osm and roads.osc (`postprocess.osm_writer`), and, when
   `postprocess.verify` is there, verification.csv / verification.geojson (`write_verification`).
5. `_report(...)` uses `postprocess.report.write_report` for report.html.

Re-runs: a small `vectorize.json` (counts, parameters and a fingerprint of the inputs) is written last. When every
output exists and the fingerprint matches, the stage says so and does nothing; when the inputs changed it replaces
the outputs and says so; outputs of unknown origin are replaced only with --overwrite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadmap_cli.errors import RoadmapError
from roadmap_cli.progress import progress
from roadmap_cli.workdir import Workdir, atomic_write_json

log = logging.getLogger("roadmap")

OUTPUTS = ("roads_gpkg", "roads_osm", "roads_osc", "verification_csv", "verification_geojson", "report")
SUMMARY = "vectorize.json"


@dataclass
class VectorizeOptions:
    """What the command line gives the stage."""

    mask: Path | None = None
    highway: str = "road"
    existing_osm: Path | None = None
    verify_radius: float | None = None  # metres; None: the verification module's default
    overwrite: bool = False
    params: Any = None  # postprocess.vectorize.VectorizeParams


@dataclass
class VectorizeOutcome:
    skipped: bool
    outputs: dict[str, Path] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    graph: Any = None


# ---- plug-in points ----------------------------------------------------------------------------------------------
def _conflate(graph, existing_osm: Path):
    """(graph, summary, existing grid-CRS lines) after conflation with an OSM extract; see the module docstring."""
    try:
        from postprocess import conflate as mod
    except ImportError as exc:
        raise RoadmapError(f"--existing-osm {existing_osm}: conflation is not available in this version of "
                           f"roadmap") from exc
    if not existing_osm.exists():
        raise RoadmapError(f"--existing-osm {existing_osm}: no such file")
    try:
        existing = mod.read_existing_osm(existing_osm)
    except (OSError, RuntimeError, ValueError) as exc:
        raise RoadmapError(f"--existing-osm {existing_osm}: cannot read as OSM data "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    graph, summary = mod.conflate(graph, existing)
    lines = mod.existing_lines_in_crs(existing, graph.crs_wkt) if hasattr(mod, "existing_lines_in_crs") else None
    return graph, summary, lines


def _mark_unverified(graph, reason: str) -> None:
    for e in graph.edges:
        e.attrs.update({"gps_support": None, "confirmed": None, "reason": reason})


def _verify(graph, wd: Workdir, radius: float | None, other_lines=None):
    """Verification summary (or None) after setting the GPS attributes of every edge; see the module docstring."""
    try:
        from postprocess import verify as mod
    except ImportError:
        _mark_unverified(graph, "verification not done: not available in this version of roadmap")
        return None
    if not wd.has_gps():
        return mod.mark_unverified(graph)
    from pyproj import CRS

    from roadmap_cli.store import PointStore

    grid = wd.load_grid()
    if CRS.from_user_input(grid.crs_wkt) != CRS.from_user_input(graph.crs_wkt):
        return mod.mark_unverified(graph, "verification not done: the mask's CRS differs from the workdir grid's, "
                                          "where the GPS samples are stored")
    store = PointStore(wd.path("gps"))
    query = mod.make_store_query(store.query, grid.transform)
    kwargs: dict[str, Any] = {"other_lines": other_lines}
    if radius is not None:
        kwargs["radius_m"] = float(radius)
    try:
        return mod.verify(graph, query, **kwargs)
    except ValueError as exc:
        raise RoadmapError(f"--verify-radius: {exc}") from exc


def _thumbnail(wd: Workdir, crs_wkt: str, max_px: int = 1024):
    """(uint8 H x W x 3, affine 6-tuple) of the workdir's imagery, or (None, None)."""
    if not wd.has_imagery():
        return None, None
    try:
        import numpy as np
        import rasterio
        from pyproj import CRS

        with rasterio.open(wd.path("imagery")) as ds:
            if ds.crs is None or CRS.from_user_input(ds.crs.to_wkt()) != CRS.from_user_input(crs_wkt):
                return None, None
            f = max(1.0, max(ds.width, ds.height) / max_px)
            w, h = max(1, int(ds.width / f)), max(1, int(ds.height / f))
            bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            rgb = ds.read(bands, out_shape=(3, h, w))
            t = ds.transform * ds.transform.scale(ds.width / w, ds.height / h)
            if rgb.dtype != np.uint8:
                hi = float(np.percentile(rgb, 99)) or 1.0
                rgb = np.clip(rgb.astype(np.float32) / hi * 255, 0, 255).astype(np.uint8)
            return np.transpose(rgb, (1, 2, 0)), tuple(t)[:6]
    except Exception as exc:  # noqa: BLE001 - a missing thumbnail never fails the stage
        log.info("report: no imagery thumbnail (%s)", exc)
        return None, None


def _report(path: Path, graph, wd: Workdir, conflation_summary, verification_summary, existing_lines,
            info: dict) -> bool:
    """Write report.html when `postprocess.report` is there; True when written."""
    try:
        from postprocess import report as mod
    except ImportError:
        return False
    thumb, thumb_t = _thumbnail(wd, graph.crs_wkt)
    mod.write_report(path, graph, conflation_summary, verification_summary, thumbnail_rgb=thumb,
                     thumb_transform=thumb_t, existing_lines=existing_lines, info=info)
    return True


# ---- the stage ---------------------------------------------------------------------------------------------------
def _file_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _fingerprint(wd: Workdir, mask: Path, opts: VectorizeOptions) -> str:
    from roadmap_cli import __version__

    parts: dict[str, Any] = {"version": __version__, "mask": _file_fingerprint(mask),
                             "params": opts.params.to_dict(),
                             "highway": opts.highway, "verify_radius": opts.verify_radius,
                             "existing_osm": _file_fingerprint(opts.existing_osm) if opts.existing_osm else None}
    meta = wd.path("gps") / "meta.json"
    parts["gps"] = hashlib.sha256(meta.read_bytes()).hexdigest() if meta.exists() else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _summary_of(graph) -> dict:
    confirmed = [e for e in graph.edges if e.attrs.get("confirmed") is True]
    unconfirmed = [e for e in graph.edges if e.attrs.get("confirmed") is False]
    return {"nodes": len(graph.nodes), "edges": len(graph.edges), "length_m": round(graph.total_length_m, 2),
            "confirmed": len(confirmed), "unconfirmed": len(unconfirmed),
            "not_verified": len(graph.edges) - len(confirmed) - len(unconfirmed),
            "existing_osm_nodes": sum(1 for a in graph.node_attrs.values() if a and a.get("osm_id"))}


def _asdict(obj) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj if isinstance(obj, dict) else str(obj)


def trace_window_task(core: tuple[int, int, int, int], spec: dict[str, Any]) -> tuple:
    """Dask task: one core window of the skeleton stage (`postprocess.skeleton.trace_one`), read on the worker."""
    import threading

    from postprocess.skeleton import trace_one
    from postprocess.vectorize import RasterSource
    from roadmap_cli.cluster import worker_cached

    key = ("vectorize", spec["mask"], spec["mtime_ns"], threading.get_ident())  # a dataset handle per thread
    src = worker_cached(key, lambda: RasterSource(spec["mask"], scale=spec["scale"]), keep=64)
    return trace_one(src.read, spec["width"], spec["height"], core, spec["params"])


def _cluster_mapper(cluster: Any, mask: Path, src: Any) -> Any:
    """map_windows for graph_from_source: the core windows as cluster tasks, results in order."""
    spec = {"mask": str(mask.resolve()), "mtime_ns": mask.stat().st_mtime_ns, "scale": src.scale,
            "width": src.ds.width, "height": src.ds.height}

    def mapper(cores: list, skeleton_params: Any) -> Any:
        return cluster.map_ordered(trace_window_task, cores, dict(spec, params=skeleton_params))

    return mapper


def run_vectorize(wd: Workdir, opts: VectorizeOptions, cluster: Any = None,
                  scheduler: str | None = None) -> VectorizeOutcome:
    """Run the stage in workdir `wd` (see the module docstring).

    With `cluster` (a roadmap_cli.cluster.Cluster), or a `scheduler` address connected to only when there is
    work to do, the skeleton's windows run on the cluster's workers.
    """
    from postprocess.vectorize import RasterSource, VectorizeParams, VectorizeStats, graph_from_source

    params = opts.params or VectorizeParams()
    try:
        params.validate()
    except ValueError as exc:
        name, _, msg = str(exc).partition(": ")
        raise RoadmapError(f"--{name.replace('_m', '').replace('_', '-')}: {msg}") from exc
    opts.params = params
    if opts.mask is not None:
        mask = Path(opts.mask)
        if not mask.exists():
            raise RoadmapError(f"--mask {mask}: no such file")
    else:
        mask = wd.require("prob", "run `roadmap predict` first, or pass --mask FILE")
    if opts.existing_osm is not None:
        try:
            import postprocess.conflate  # noqa: F401
        except ImportError as exc:
            raise RoadmapError(f"--existing-osm {opts.existing_osm}: conflation is not available in this version "
                               "of roadmap") from exc
        if not Path(opts.existing_osm).exists():
            raise RoadmapError(f"--existing-osm {opts.existing_osm}: no such file")
    wd.ensure()
    outputs = {name: wd.path(name) for name in OUTPUTS}
    fp = _fingerprint(wd, mask, opts)
    summary_path = wd.path(SUMMARY)
    existing = [p for p in outputs.values() if p.exists()]
    if existing and not opts.overwrite:
        try:
            old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        except ValueError:
            old = {}
        if not old.get("fingerprint"):
            raise RoadmapError(f"{existing[0]}: exists; pass --overwrite to replace it")
        complete = all(p.exists() for name, p in outputs.items() if name in old.get("written", OUTPUTS))
        if old["fingerprint"] == fp and complete:
            log.warning("vectorize: outputs are up to date with %s; nothing to do (--overwrite recomputes)", mask)
            return VectorizeOutcome(True, outputs, old)
        why = "inputs or options changed since the last run" if old["fingerprint"] != fp else "outputs are missing"
        log.warning("vectorize: %s; replacing %s", why, ", ".join(p.name for p in existing))

    t0 = time.time()
    try:
        src = RasterSource(mask)
    except ValueError as exc:
        raise RoadmapError(f"--mask {mask}: {exc}") from exc
    except Exception as exc:  # rasterio's own error types
        raise RoadmapError(f"--mask {mask}: not a readable raster ({str(exc).splitlines()[0]})") from exc
    try:
        if src.ds.crs is None:
            raise RoadmapError(f"--mask {mask}: raster has no CRS")
        if src.ds.count != 1:
            log.warning("--mask %s: has %d bands; using band 1", mask, src.ds.count)
        from postprocess.skeleton import core_windows

        n_windows = sum(1 for _ in core_windows(src.ds.width, src.ds.height, params.tile_size))
        stats = VectorizeStats()
        from roadmap_cli.cluster import open_cluster

        with open_cluster(scheduler if cluster is None else None) as opened, \
                progress(total=n_windows, desc="vectorize", unit="window") as bar:
            on = cluster or opened
            try:
                mapper = None if on is None else _cluster_mapper(on, mask, src)
                graph = graph_from_source(src, tuple(src.ds.transform)[:6], src.ds.crs.to_wkt(), params, stats,
                                          bar.update, mapper)
            except ValueError as exc:
                raise RoadmapError(f"--mask {mask}: {exc}") from exc
    finally:
        src.close()
    log.info("vectorize: %d nodes, %d edges, %.1f km of road from %s (%d windows, %.1f s)", stats.nodes,
             stats.edges, stats.length_m / 1000, mask, stats.windows, time.time() - t0)

    conflation_summary, existing_lines = None, None
    if opts.existing_osm is not None:
        graph, conflation_summary, existing_lines = _conflate(graph, Path(opts.existing_osm))
    verification_summary = _verify(graph, wd, opts.verify_radius, existing_lines)

    from postprocess.gpkg import write_gpkg
    from postprocess.osm_writer import build_osm, write_osc, write_osm

    written = ["roads_gpkg", "roads_osm", "roads_osc"]
    logging.getLogger("pyogrio").setLevel(logging.WARNING)  # one "Created N records" line per layer otherwise
    write_gpkg(graph, outputs["roads_gpkg"])
    try:
        data = build_osm(graph, opts.highway)
    except ValueError as exc:
        raise RoadmapError(f"--highway {opts.highway}: {exc}") from exc
    write_osm(graph, outputs["roads_osm"], opts.highway, data)
    write_osc(graph, outputs["roads_osc"], opts.highway, data)
    if data.skipped_edges:
        log.warning("vectorize: %d edge(s) shorter than a centimetre were left out of the OSM files",
                    len(data.skipped_edges))
    try:
        from postprocess.verify import write_verification
    except ImportError:
        write_verification = None
    if write_verification is not None:
        write_verification(graph, outputs["verification_csv"], outputs["verification_geojson"])
        written += ["verification_csv", "verification_geojson"]
    summary = {
        "mask": str(mask), "params": params.to_dict(), "highway": opts.highway,
        "existing_osm": str(opts.existing_osm) if opts.existing_osm else None,
        "verify_radius": opts.verify_radius,
        "graph": _summary_of(graph),
        "stats": {k: v for k, v in stats.__dict__.items() if k != "tiling"} | {"tiling": stats.tiling},
        "conflation": _asdict(conflation_summary),
        "verification": _asdict(verification_summary),
        "osm": {"ways": len(data.ways), "nodes": len(data.nodes), "existing_nodes": len(data.existing_node_ids)},
        "seconds": round(time.time() - t0, 2),
    }
    if _report(outputs["report"], graph, wd, conflation_summary, verification_summary, existing_lines,
               {"mask": str(mask), "threshold": params.threshold, "highway": opts.highway}):
        written.append("report")
    summary["written"] = written
    summary["fingerprint"] = fp
    atomic_write_json(summary_path, summary)
    return VectorizeOutcome(False, {k: outputs[k] for k in written}, summary, graph)
