"""report.html: the one page a reviewer opens after `roadmap vectorize`.

Self-contained on purpose (CSS inline, the map an inline base64 PNG drawn with matplotlib's Agg backend, no
scripts, fonts or remote images), so it can be mailed, archived or opened offline. The only links leave for
JOSM's remote control on 127.0.0.1:8111, which loads and zooms to a segment in the mapper's running JOSM; they
target a hidden iframe so the report stays open.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from postprocess.georef import XYTransform, polyline_lengths
from postprocess.roadgraph import RoadGraph
from postprocess.verify import verification_rows

JOSM_URL = "http://127.0.0.1:8111/load_and_zoom"
COLOURS = {"confirmed": "#1a9641", "unconfirmed": "#e8431c", "unverified": "#2b6cd4", "existing": "#c8c8c8"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:16px 24px;color:#222;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.4em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
.banner{border:2px solid #c0392b;background:#fdecea;color:#7b1d12;padding:12px 16px;margin:12px 0;
font-size:1.1em;border-radius:4px}
table{border-collapse:collapse;font-size:.92em}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
img.map{max-width:100%;border:1px solid #ccc}
.legend span{display:inline-block;width:28px;height:4px;margin:0 6px 3px 14px;vertical-align:middle}
.note{color:#555;font-size:.9em}
"""


def _png_base64(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _is_geographic(crs_wkt: str) -> bool:
    try:
        from pyproj import CRS

        return bool(CRS.from_user_input(crs_wkt).is_geographic)
    except Exception:  # noqa: BLE001 - only used to pick an aspect ratio
        return False


def render_map(graph: RoadGraph, thumbnail_rgb: np.ndarray | None = None,
               thumb_transform: Sequence[float] | None = None, existing_lines: Sequence[np.ndarray] | None = None,
               label_ids: Sequence[int] = (), width_px: int = 1000) -> str:
    """The map picture as base64 PNG: imagery thumbnail, existing OSM (grey), segments coloured by verification."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    lines = {"confirmed": [], "unconfirmed": [], "unverified": []}
    for e in graph.edges:
        c = e.attrs.get("confirmed")
        key = "unverified" if c is None else ("confirmed" if c else "unconfirmed")
        lines[key].append(np.asarray(e.coords, dtype=np.float64))
    extent = None
    if thumbnail_rgb is not None and thumb_transform is not None:
        a, _, c0, _, e0, f0 = (float(t) for t in tuple(thumb_transform)[:6])
        h, w = thumbnail_rgb.shape[:2]
        x0, x1 = sorted((c0, c0 + a * w))
        y0, y1 = sorted((f0, f0 + e0 * h))
        extent = (x0, x1, y0, y1)
    else:
        pts = [ln for group in lines.values() for ln in group]
        if pts:
            allp = np.concatenate(pts)
            x0, y0 = allp.min(axis=0)
            x1, y1 = allp.max(axis=0)
            pad = 0.05 * max(x1 - x0, y1 - y0, 1e-9)
            extent = (x0 - pad, x1 + pad, y0 - pad, y1 + pad)
    if extent is None:
        extent = (0.0, 1.0, 0.0, 1.0)
    aspect = 1.0
    if _is_geographic(graph.crs_wkt):
        aspect = 1.0 / max(0.05, math.cos(math.radians((extent[2] + extent[3]) / 2)))
    span_x = max(extent[1] - extent[0], 1e-12)
    span_y = max(extent[3] - extent[2], 1e-12) * aspect
    dpi = 100
    max_w, max_h = width_px / dpi, 0.9 * width_px / dpi
    w_in, h_in = max_w, max_w * span_y / span_x
    if h_in > max_h:  # tall area: keep the picture on one screen, narrower
        w_in, h_in = max(3.0, max_h * span_x / span_y), max_h
    h_in = max(h_in, 2.0)
    fig = Figure(figsize=(w_in, h_in), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_facecolor("#f7f7f2")
    if thumbnail_rgb is not None and thumb_transform is not None:
        img = np.asarray(thumbnail_rgb)
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[2] != 3:
            img = np.moveaxis(img, 0, -1)
        ax.imshow(img, extent=extent, origin="upper", interpolation="bilinear", alpha=0.85)
    if existing_lines:
        from matplotlib import patheffects

        ax.add_collection(LineCollection([np.asarray(ln) for ln in existing_lines], colors=COLOURS["existing"],
                                         linewidths=2.0, zorder=2,
                                         path_effects=[patheffects.Stroke(linewidth=3.6, foreground="#303030"),
                                                       patheffects.Normal()]))
    widths = {"confirmed": 2.2, "unconfirmed": 2.6, "unverified": 2.4}
    for key in ("confirmed", "unverified", "unconfirmed"):
        if lines[key]:
            ax.add_collection(LineCollection(lines[key], colors=COLOURS[key], linewidths=widths[key], zorder=3))
    by_id = {e.id: e for e in graph.edges}
    for eid in label_ids:
        e = by_id.get(eid)
        if e is None:
            continue
        c = np.asarray(e.coords, dtype=np.float64)
        cum = polyline_lengths(c)
        xy = (np.interp(cum[-1] / 2, cum, c[:, 0]), np.interp(cum[-1] / 2, cum, c[:, 1]))
        ax.annotate(str(eid), xy=(float(xy[0]), float(xy[1])), fontsize=8, color="black", zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": COLOURS["unconfirmed"], "lw": 0.8})
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect(aspect)
    ax.set_axis_off()
    return _png_base64(fig)


def read_thumbnail(path: str | os.PathLike[str], max_px: int = 1200,
                   max_source_pixels: float = 2e9) -> tuple[np.ndarray | None, tuple | None]:
    """A small RGB picture of a raster (the workdir's imagery.vrt) and its affine transform, for the report map.

    Reads a decimated view (GDAL uses overviews where the files have them). Returns (None, None) for rasters
    larger than `max_source_pixels` without overviews, where decimating would read the whole mosaic, and for
    unreadable files: the map is then drawn without imagery. Non-8-bit imagery is stretched to 2-98 percentiles.
    """
    import rasterio
    from rasterio.enums import Resampling

    try:
        with rasterio.open(path) as ds:
            if float(ds.width) * ds.height > max_source_pixels and not ds.overviews(1):
                return None, None
            scale = max(1.0, max(ds.width, ds.height) / max_px)
            w, h = max(1, round(ds.width / scale)), max(1, round(ds.height / scale))
            bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            data = ds.read(indexes=bands, out_shape=(3, h, w), resampling=Resampling.nearest, masked=False)
            a, b, c, d, e, f = tuple(ds.transform)[:6]
            transform = (a * ds.width / w, b, c, d, e * ds.height / h, f)
    except Exception:  # noqa: BLE001 - a picture is optional: no picture rather than no report
        return None, None
    if data.dtype != np.uint8:
        x = data.astype(np.float64)
        lo, hi = np.nanpercentile(x, 2), np.nanpercentile(x, 98)
        data = np.clip((x - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    return np.moveaxis(data, 0, -1), transform


def josm_link(lonlat: np.ndarray, margin_m: float = 30.0) -> str:
    """JOSM remote-control URL that loads the area around a lon/lat polyline and zooms to it."""
    ll = np.asarray(lonlat, dtype=np.float64)
    lat0 = float(np.mean(ll[:, 1]))
    dlat = margin_m / 111_320.0
    dlon = margin_m / (111_320.0 * max(0.01, math.cos(math.radians(lat0))))
    left, right = float(ll[:, 0].min()) - dlon, float(ll[:, 0].max()) + dlon
    bottom, top = float(ll[:, 1].min()) - dlat, float(ll[:, 1].max()) + dlat
    return f"{JOSM_URL}?left={left:.7f}&right={right:.7f}&top={top:.7f}&bottom={bottom:.7f}"


def _km(m: float) -> str:
    return f"{m / 1000:.2f} km" if m >= 1000 else f"{m:.0f} m"


def _get(obj, name: str, default=None):
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def build_report_html(graph: RoadGraph, conflation_summary=None, verification_summary=None,
                      thumbnail_rgb: np.ndarray | None = None, thumb_transform: Sequence[float] | None = None,
                      to_lonlat: XYTransform | None = None, existing_lines: Sequence[np.ndarray] | None = None,
                      title: str = "roadmap: proposed roads for review", info: Mapping[str, object] | None = None,
                      max_rows: int = 2000, label_on_map: int = 30) -> str:
    """The report page as a string (see `write_report`)."""
    esc = html.escape
    rows = verification_rows(graph, to_lonlat)
    done = verification_summary is not None and bool(_get(verification_summary, "done", False))
    if verification_summary is None:
        not_done_reason = "verification not done: no verification was run"
    else:
        not_done_reason = str(_get(verification_summary, "reason", "") or "verification not done")
    if done:
        review = [r for r in rows if r["confirmed"] is False]
        list_title, row_class = "Unconfirmed segments", "unconfirmed"
    else:
        review = [r for r in rows if r["confirmed"] is not True]
        list_title, row_class = "Segments to review (not verified by GPS)", "unverified"
    review.sort(key=lambda r: (-r["length_m"], r["id"]))

    parts: list[str] = []
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
                 f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style>'
                 f'</head><body>\n<h1>{esc(title)}</h1>\n<p class="meta">generated {now}</p>\n')
    if not done:
        parts.append(f'<div class="banner" id="not-verified"><strong>GPS verification was not done.</strong> '
                     f'{esc(not_done_reason)}. No segment below is confirmed by GPS; review them all.</div>\n')

    # ---- counts ------------------------------------------------------------------------------------------------
    count_rows: list[tuple[str, str, str]] = []
    if conflation_summary is not None:
        c = conflation_summary
        count_rows += [
            ("Proposed by the model", str(_get(c, "n_proposed", 0)), _km(_get(c, "length_proposed_m", 0.0))),
            ("Dropped: already in OSM", str(_get(c, "n_duplicates", 0)), _km(_get(c, "length_duplicates_m", 0.0))),
            ("Cut to their new part", str(_get(c, "n_cut", 0)),
             _km(_get(c, "length_cut_removed_m", 0.0)) + " removed"),
            ("Ends joined to existing OSM nodes", str(_get(c, "n_snapped", 0)), ""),
        ]
    n_total = len(graph.edges)
    count_rows.append(("Segments proposed for review" if conflation_summary is not None else "Proposed segments",
                       str(n_total), _km(graph.total_length_m)))
    if done:
        v = verification_summary
        count_rows += [("Confirmed by GPS", str(_get(v, "n_confirmed", 0)), _km(_get(v, "length_confirmed_m", 0.0))),
                       ("Unconfirmed", str(_get(v, "n_unconfirmed", 0)), _km(_get(v, "length_unconfirmed_m", 0.0)))]
    else:
        count_rows.append(("Not verified", str(n_total), _km(graph.total_length_m)))
    parts.append('<h2>Summary</h2>\n<table class="counts" id="counts"><tr><th></th><th>segments</th>'
                 '<th>length</th></tr>\n')
    for label, n, length in count_rows:
        parts.append(f'<tr><td>{esc(label)}</td><td class="num">{esc(n)}</td><td class="num">{esc(length)}</td>'
                     '</tr>\n')
    parts.append("</table>\n")
    if done:
        reasons = _get(verification_summary, "reasons", {}) or {}
        params = _get(verification_summary, "params", {}) or {}
        if reasons:
            names = {"no_samples": "no GPS samples nearby", "heading": "headings disagree",
                     "vehicles": "too few vehicles", "samples": "too few samples", "support": "support too low",
                     "nearer_road": "traffic belongs to a nearer road",
                     "junction_only": "samples only at junction ends"}
            txt = ", ".join(f"{names.get(k, k)}: {n}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
            parts.append(f'<p class="note">Why unconfirmed: {esc(txt)}.</p>\n')
        if params:
            p = {k: (f"{v:g}" if isinstance(v, float) else str(v)) for k, v in params.items()}
            ptxt = (f"a sample counts for a segment within {p.get('radius_m')} m whose direction is within "
                    f"{p.get('angle_deg')} degrees of its heading (or it has none); confirmed with at least "
                    f"{p.get('min_samples')} samples from {p.get('min_vehicles')} vehicles (1 vehicle below "
                    f"{p.get('short_length_m')} m) and {p.get('min_support_per_100m')} samples per 100 m; "
                    f"samples within {p.get('end_margin_m')} m of a junction end do not count")
            parts.append(f'<p class="note">Rule: {esc(ptxt)}.</p>\n')
    if info:
        parts.append('<table class="info">\n')
        for k, val in info.items():
            parts.append(f"<tr><th>{esc(str(k))}</th><td>{esc(str(val))}</td></tr>\n")
        parts.append("</table>\n")

    # ---- map -----------------------------------------------------------------------------------------------------
    label_ids = [r["id"] for r in review[:label_on_map]] if done else []
    png = render_map(graph, thumbnail_rgb, thumb_transform, existing_lines, label_ids)
    legend = []
    if done:
        legend += [("confirmed", "confirmed by GPS"), ("unconfirmed", "unconfirmed (labelled with segment id)")]
    else:
        legend.append(("unverified", "proposed, not verified"))
    if existing_lines:
        legend.append(("existing", "existing OSM highways"))
    leg = "".join(f'<span style="background:{COLOURS[k]}"></span>{esc(t)}' for k, t in legend)
    parts.append(f'<h2>Map</h2>\n<img class="map" alt="map of proposed segments" '
                 f'src="data:image/png;base64,{png}">\n<p class="legend">{leg}</p>\n')

    # ---- list ----------------------------------------------------------------------------------------------------
    parts.append(f'<h2>{esc(list_title)} ({len(review)})</h2>\n')
    if review:
        parts.append('<p class="note">Longest first. "JOSM" loads the area in a running JOSM (remote control '
                     'enabled); coordinates are the segment midpoint.</p>\n')
        parts.append(f'<table class="segments" id="{row_class}"><tr><th>id</th><th>length</th><th>samples</th>'
                     '<th>vehicles</th><th>per 100 m</th><th>reason</th><th>lon, lat</th><th></th></tr>\n')
        for r in review[:max_rows]:
            def cell(v) -> str:
                return "" if v is None else esc(str(v))
            link = josm_link(r["lonlat"])
            parts.append(
                f'<tr class="{row_class}" data-edge-id="{r["id"]}"><td class="num">{r["id"]}</td>'
                f'<td class="num">{r["length_m"]:.0f} m</td><td class="num">{cell(r["n_samples"])}</td>'
                f'<td class="num">{cell(r["n_vehicles"])}</td><td class="num">{cell(r["support_per_100m"])}</td>'
                f'<td>{esc(str(r["reason"] or ""))}</td><td>{r["mid_lon"]:.6f}, {r["mid_lat"]:.6f}</td>'
                f'<td><a href="{esc(link)}" target="josm">JOSM</a></td></tr>\n')
        parts.append("</table>\n")
        if len(review) > max_rows:
            parts.append(f'<p class="note">{len(review) - max_rows} more in verification.csv.</p>\n')
    else:
        parts.append('<p>None.</p>\n')
    parts.append('<iframe name="josm" title="JOSM remote control" hidden></iframe>\n</body></html>\n')
    return "".join(parts)


def write_report(path: str | os.PathLike[str], graph: RoadGraph, conflation_summary=None, verification_summary=None,
                 thumbnail_rgb: np.ndarray | None = None, thumb_transform: Sequence[float] | None = None,
                 to_lonlat: XYTransform | None = None, existing_lines: Sequence[np.ndarray] | None = None,
                 title: str = "roadmap: proposed roads for review", info: Mapping[str, object] | None = None,
                 max_rows: int = 2000) -> Path:
    """Write report.html (atomically: temporary name, then rename).

    `thumbnail_rgb` is a uint8 H x W x 3 picture of the imagery and `thumb_transform` its affine (rasterio
    order) onto the grid CRS; `existing_lines` grid-CRS polylines of existing OSM highways (drawn grey);
    `conflation_summary` / `verification_summary` are the dataclasses (or their dicts) from conflate / verify
    (a summary with done=False, or None, puts a "verification was not done" banner on top).
    """
    text = build_report_html(graph, conflation_summary, verification_summary, thumbnail_rgb, thumb_transform,
                             to_lonlat, existing_lines, title, info, max_rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
