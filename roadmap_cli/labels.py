"""Road labels: road vectors (GeoJSON, GPKG, OSM) and road-area masks on any grid, read window by window.

Training asks for the label of a tile thousands of times per epoch, so `LabelSource` does the expensive work
once: vectors are buffered to road *areas* in a metric CRS, cut into short pieces, moved to the grid CRS and put
in an STRtree; a window read is an STRtree query plus one `rasterio.features.rasterize` of the few pieces it
returns. A label raster on another grid is warped into the window with nearest-neighbour resampling.

Widths: a road is `lane_number` (or OSM `lanes`) × `lane_width` metres wide, or `road_width` metres when that is
given or the lane count is missing (`DEFAULT_ROAD_WIDTH` when neither is known).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from roadmap_cli.errors import RoadmapError

DEFAULT_ROAD_WIDTH = 7.0  # metres, for roads without a lane count
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png"}
OSM_SUFFIXES = (".osm", ".osm.pbf", ".pbf", ".osm.bz2", ".osm.gz", ".o5m", ".osc")
LANE_COLUMNS = ("lane_number", "lanes")
PIECE_LENGTH_M = 60.0  # roads are cut into pieces this long before buffering (small polygons, fast window reads)


# ---- reading vectors ----------------------------------------------------------------------------------------
def _is_osm(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in OSM_SUFFIXES)


def _read_osm(path: Path):
    """Highway ways of an OSM file as LineStrings (EPSG:4326) with their tags as columns and `osm_id`."""
    import geopandas as gpd
    import osmium
    from shapely.geometry import LineString

    rows: list[dict[str, Any]] = []
    geoms: list[LineString] = []

    class _Ways(osmium.SimpleHandler):
        def way(self, w) -> None:  # noqa: D401 - osmium callback
            tags = {t.k: t.v for t in w.tags}
            if "highway" not in tags:
                return
            pts = []
            for n in w.nodes:
                loc = n.location
                if loc.valid():
                    pts.append((loc.lon, loc.lat))
            if len(pts) < 2:
                return
            geoms.append(LineString(pts))
            rows.append({"osm_id": int(w.id), **tags})

    try:
        _Ways().apply_file(str(path), locations=True)
    except RuntimeError as exc:
        raise RoadmapError(f"{path}: not a readable OSM file ({str(exc).splitlines()[0]})") from exc
    if not geoms:
        raise RoadmapError(f"{path}: no highway ways with node locations in this OSM file")
    return gpd.GeoDataFrame(rows, geometry=geoms, crs="EPSG:4326")


def read_road_vectors(path: str | os.PathLike[str]):
    """Road centrelines of a vector file as a GeoDataFrame of LineStrings (multi-lines exploded).

    GeoJSON/GPKG/Shapefile keep their attributes and CRS (EPSG:4326 assumed when the file has none);
    .osm/.osm.pbf give their highway ways with tags as columns. Non-line geometries are dropped.
    """
    import geopandas as gpd

    p = Path(path)
    if not p.exists():
        raise RoadmapError(f"{p}: no such file")
    if _is_osm(p):
        gdf = _read_osm(p)
    else:
        try:
            gdf = gpd.read_file(p)
        except Exception as exc:  # pyogrio raises its own error types
            raise RoadmapError(f"{p}: not a readable vector file ({str(exc).splitlines()[0]})") from exc
        if gdf.crs is None:
            gdf = gdf.set_crs("EPSG:4326")
    if len(gdf) == 0:
        raise RoadmapError(f"{p}: holds no features")
    gdf = gdf[gdf.geometry.notna()]
    gdf = gdf[gdf.geometry.geom_type.isin(["LineString", "MultiLineString"])]
    if len(gdf) == 0:
        raise RoadmapError(f"{p}: holds no line geometries (roads must be LineStrings)")
    gdf = gdf.explode(index_parts=False).reset_index(drop=True)
    import shapely

    keep = ~gdf.geometry.is_empty & (shapely.get_num_coordinates(gdf.geometry.values) >= 2)
    gdf = gdf[keep].reset_index(drop=True)
    if len(gdf) == 0:
        raise RoadmapError(f"{p}: holds only empty or zero-length lines")
    return gdf


# ---- widths --------------------------------------------------------------------------------------------------
_NUM = re.compile(r"[-+]?\d*\.?\d+")


def parse_number(value: Any) -> float:
    """First number in an attribute value ('3', 3, '2;3', '30 mph' -> 3, 3, 2, 30); NaN when there is none."""
    if value is None:
        return math.nan
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    m = _NUM.search(str(value))
    return float(m.group()) if m else math.nan


def lane_counts(gdf) -> np.ndarray:
    """Lane count per feature from `lane_number` or OSM `lanes` (NaN where unknown or not positive)."""
    out = np.full(len(gdf), np.nan)
    for col in LANE_COLUMNS:
        if col in gdf.columns:
            vals = np.array([parse_number(v) for v in gdf[col].tolist()], dtype=float)
            take = np.isnan(out) & (vals > 0)
            out[take] = vals[take]
    out[~(out > 0)] = np.nan
    return out


def road_widths(gdf, road_width: float | None = None, lane_width: float = 3.5) -> np.ndarray:
    """Road width in metres per feature: `road_width` when given, else lanes × lane_width, else the default."""
    if road_width is not None:
        if not road_width > 0:
            raise RoadmapError(f"--road-width {road_width}: must be a positive number of metres")
        return np.full(len(gdf), float(road_width))
    if not lane_width > 0:
        raise RoadmapError(f"--lane-width {lane_width}: must be a positive number of metres")
    lanes = lane_counts(gdf)
    return np.where(np.isnan(lanes), DEFAULT_ROAD_WIDTH, lanes * lane_width)


def metric_crs_for(gdf_or_grid: Any):
    """A metric CRS for buffering: the grid/frame CRS when projected, else the UTM zone of its centre."""
    from pyproj import CRS

    from roadmap_cli.grid import Grid, utm_epsg_for

    if isinstance(gdf_or_grid, Grid):
        if not gdf_or_grid.crs.is_geographic:
            return gdf_or_grid.crs
        lon, lat = gdf_or_grid.pixel_to_lonlat(gdf_or_grid.width / 2.0, gdf_or_grid.height / 2.0)
        return CRS.from_epsg(utm_epsg_for(float(lon), float(lat)))
    gdf = gdf_or_grid
    crs = CRS.from_user_input(gdf.crs) if gdf.crs is not None else CRS.from_epsg(4326)
    if not crs.is_geographic:
        return crs
    minx, miny, maxx, maxy = gdf.to_crs("EPSG:4326").total_bounds
    return CRS.from_epsg(utm_epsg_for((minx + maxx) / 2, (miny + maxy) / 2))


# ---- buffered road areas ---------------------------------------------------------------------------------------
def _cut_line(coords: np.ndarray, piece: float) -> list[np.ndarray]:
    """Cut a polyline (metric coords) into pieces of at most `piece` metres (vertices kept, cuts interpolated)."""
    seg = np.hypot(np.diff(coords[:, 0]), np.diff(coords[:, 1]))
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    if total <= piece:
        return [coords]
    n = int(math.ceil(total / piece))
    cuts = np.linspace(0.0, total, n + 1)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        inner = (cum > a) & (cum < b)
        d = np.concatenate([[a], cum[inner], [b]])
        out.append(np.column_stack([np.interp(d, cum, coords[:, 0]), np.interp(d, cum, coords[:, 1])]))
    return out


def road_polygons(gdf, grid, road_width: float | None = None, lane_width: float = 3.5) -> np.ndarray:
    """Road-area polygons in the grid CRS: each line cut into short pieces and buffered by half its width
    in a metric CRS (round caps and joins, so the union equals the buffer of the whole network)."""
    import shapely
    from pyproj import CRS

    widths = road_widths(gdf, road_width, lane_width)
    metric = metric_crs_for(grid)
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")
    g = gdf.to_crs(metric) if CRS.from_user_input(gdf.crs) != metric else gdf
    pieces: list[np.ndarray] = []
    half: list[float] = []
    for geom, w in zip(g.geometry, widths, strict=True):
        coords = np.asarray(geom.coords, dtype=float)[:, :2]
        if len(coords) < 2:
            continue
        for part in _cut_line(coords, PIECE_LENGTH_M):
            pieces.append(part)
            half.append(w / 2.0)
    if not pieces:
        return np.empty(0, dtype=object)
    lines = shapely.linestrings(pieces) if len({len(p) for p in pieces}) == 1 else np.array(
        [shapely.LineString(p) for p in pieces], dtype=object)
    polys = shapely.buffer(lines, np.asarray(half), quad_segs=8)
    if metric != grid.crs:
        from pyproj import Transformer

        tr = Transformer.from_crs(metric, grid.crs, always_xy=True)
        polys = shapely.transform(polys, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return polys


class _VectorLabels:
    """Buffered road polygons in the grid CRS with an STRtree, rasterised window by window."""

    def __init__(self, gdf, grid, road_width: float | None, lane_width: float) -> None:
        import shapely

        self.grid = grid
        self.polys = road_polygons(gdf, grid, road_width, lane_width)
        self.tree = shapely.STRtree(self.polys)

    def read(self, col_off: int, row_off: int, width: int, height: int) -> np.ndarray:
        import shapely
        from affine import Affine
        from rasterio.features import rasterize

        out = np.zeros((int(height), int(width)), dtype=np.uint8)
        if width <= 0 or height <= 0 or len(self.polys) == 0:
            return out
        x0, y0 = self.grid.pixel_to_crs(np.array([col_off, col_off + width]), np.array([row_off, row_off + height]))
        box = shapely.box(min(x0), min(y0), max(x0), max(y0))
        idx = self.tree.query(box)
        if idx.size == 0:
            return out
        transform = Affine(*self.grid.window_transform(int(col_off), int(row_off)))
        rasterize(((g, 1) for g in self.polys[np.sort(idx)]), out_shape=out.shape, transform=transform, out=out,
                  fill=0, dtype=np.uint8)
        _zero_outside(out, col_off, row_off, self.grid)
        return out


def _zero_outside(out: np.ndarray, col_off: int, row_off: int, grid) -> None:
    """Clear the part of a window that lies outside the grid (labels exist only on the grid)."""
    h, w = out.shape
    c0, r0 = max(0, -col_off), max(0, -row_off)
    c1, r1 = min(w, grid.width - col_off), min(h, grid.height - row_off)
    if c0 >= c1 or r0 >= r1:
        out[:] = 0
        return
    out[:r0] = 0
    out[r1:] = 0
    out[:, :c0] = 0
    out[:, c1:] = 0


def _road(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """uint8 0/1: label values > 0 that are not nodata."""
    road = data > 0
    if nodata is not None:
        road &= data != nodata
    return road.view(np.uint8)


class _RasterLabels:
    """A label raster read onto the grid: direct windowed reads on the same grid, nearest warp otherwise."""

    def __init__(self, path: Path, grid) -> None:
        import rasterio

        self.path = path
        self.grid = grid
        try:
            self.ds = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise RoadmapError(f"{path}: not a readable label raster ({str(exc).splitlines()[0]})") from exc
        if self.ds.crs is None:
            raise RoadmapError(f"{path}: label raster has no CRS")
        from pyproj import CRS

        same_crs = CRS.from_wkt(self.ds.crs.to_wkt()) == grid.crs
        t = tuple(self.ds.transform)[:6]
        scale_ok = all(math.isclose(t[i], grid.transform[i], rel_tol=1e-9, abs_tol=1e-12) for i in (0, 1, 3, 4))
        # Same CRS and resolution, origin on a whole-pixel offset: read a window directly.
        self.offset: tuple[int, int] | None = None
        if same_crs and scale_ok:
            dc = (grid.transform[2] - t[2]) / t[0]
            dr = (grid.transform[5] - t[5]) / t[4]
            if abs(dc - round(dc)) < 1e-6 and abs(dr - round(dr)) < 1e-6:
                self.offset = (int(round(dc)), int(round(dr)))
        self.nodata = self.ds.nodata

    def read(self, col_off: int, row_off: int, width: int, height: int) -> np.ndarray:
        import rasterio
        from affine import Affine
        from rasterio.warp import Resampling, reproject
        from rasterio.windows import Window

        width, height = max(int(width), 0), max(int(height), 0)
        fill = self.nodata if self.nodata is not None else 0
        if self.offset is not None:
            # Same grid: a plain windowed read of the part inside the raster (no boundless read through a warped
            # VRT); the rest stays 0, as nodata / outside the labels.
            c, r = col_off + self.offset[0], row_off + self.offset[1]
            c0, r0 = max(c, 0), max(r, 0)
            c1, r1 = min(c + width, self.ds.width), min(r + height, self.ds.height)
            if (c0, r0, c1, r1) == (c, r, c + width, r + height) and width and height:
                out = _road(self.ds.read(1, window=Window(c, r, width, height)), self.nodata)
            else:
                out = np.zeros((height, width), dtype=np.uint8)
                if c0 < c1 and r0 < r1:
                    data = self.ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                    out[r0 - r:r1 - r, c0 - c:c1 - c] = _road(data, self.nodata)
        else:
            data = np.zeros((height, width), dtype=self.ds.dtypes[0])
            if fill:
                data[:] = fill
            reproject(
                source=rasterio.band(self.ds, 1), destination=data,
                dst_transform=Affine(*self.grid.window_transform(int(col_off), int(row_off))),
                dst_crs=self.grid.crs_wkt, resampling=Resampling.nearest,
                src_nodata=self.nodata, dst_nodata=fill,
            )
            out = _road(data, self.nodata)
        _zero_outside(out, col_off, row_off, self.grid)
        return out

    def close(self) -> None:
        self.ds.close()


class LabelSource:
    """0/1 road-area labels on a grid from a mask raster (any CRS/grid) or road vectors, window by window."""

    def __init__(self, path: str | os.PathLike[str], grid, road_width: float | None = None,
                 lane_width: float = 3.5) -> None:
        self.path = Path(path)
        self.grid = grid
        if not self.path.exists():
            raise RoadmapError(f"--labels {self.path}: no such file")
        if self.path.suffix.lower() in RASTER_SUFFIXES:
            self.kind = "raster"
            self._impl: Any = _RasterLabels(self.path, grid)
        else:
            self.kind = "vector"
            self._impl = _VectorLabels(read_road_vectors(self.path), grid, road_width, lane_width)

    def read(self, col_off: int, row_off: int, w: int, h: int) -> np.ndarray:
        """uint8 [h, w] of 0/1 road area for the pixel window at (col_off, row_off); 0 outside the labels."""
        return self._impl.read(int(col_off), int(row_off), int(w), int(h))

    def close(self) -> None:
        if isinstance(self._impl, _RasterLabels):
            self._impl.close()

    def __enter__(self) -> LabelSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rasterize_roads(gdf, grid, road_width: float | None = None, lane_width: float = 3.5) -> np.ndarray:
    """uint8 [H, W] 0/1 road area of road centrelines buffered to their width, on the whole grid."""
    return _VectorLabels(gdf, grid, road_width, lane_width).read(0, 0, grid.width, grid.height)


def write_mask(path: str | os.PathLike[str], mask: np.ndarray, grid, overwrite: bool = True) -> Path:
    """Write a 0/1 uint8 mask on `grid` as a tiled, deflate-compressed GeoTIFF (atomically)."""
    import rasterio
    from affine import Affine

    from roadmap_cli.workdir import atomic_output

    tiled = grid.width >= 256 and grid.height >= 256
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1, "dtype": "uint8",
        "crs": grid.crs_wkt, "transform": Affine(*grid.transform), "compress": "deflate", "predictor": 2,
        "tiled": tiled,
    }
    if tiled:
        profile.update(blockxsize=256, blockysize=256)
    with atomic_output(path, overwrite=overwrite, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as ds:
        ds.write(mask.astype(np.uint8), 1)
    return Path(path)
