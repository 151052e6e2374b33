"""The raster grid every stage shares: CRS, affine transform, size, pixel size in metres.

Pixel coordinates are continuous: pixel (i, j) covers col in [i, i+1) and row in [j, j+1), so a pixel centre is
at (i + 0.5, j + 0.5). pyproj and rasterio are imported lazily so that rendering and models stay importable
without them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from roadmap_cli.errors import RoadmapError


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid."""

    crs_wkt: str
    epsg: int | None
    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f (rasterio/affine order)
    width: int
    height: int
    pixel_size_m: float  # mean metres per pixel at the grid centre

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, crs: Any, transform: Any, width: int, height: int) -> Grid:
        """Make a grid from anything pyproj accepts as a CRS and an affine transform (or 6 numbers)."""
        from pyproj import CRS

        c = CRS.from_user_input(crs)
        t = tuple(float(v) for v in tuple(transform)[:6])
        if t[1] != 0.0 or t[3] != 0.0:
            raise RoadmapError("grid: rotated rasters are not supported (transform has rotation terms)")
        epsg = c.to_epsg()
        grid = cls(c.to_wkt(), epsg, t, int(width), int(height), 0.0)  # type: ignore[arg-type]
        mx, my = grid.metres_per_pixel()
        return cls(c.to_wkt(), epsg, t, int(width), int(height), float((mx + my) / 2))  # type: ignore[arg-type]

    @classmethod
    def from_extent(
        cls, lon: np.ndarray, lat: np.ndarray, resolution: float = 0.5, crs: Any | None = None, margin_m: float = 50.0
    ) -> Grid:
        """A grid covering GPS points (degrees) at `resolution` metres in `crs` (default: their UTM zone)."""
        from pyproj import CRS, Transformer

        if lon.size == 0:
            raise RoadmapError("gps: no valid samples to derive a grid from")
        if crs is None:
            crs = utm_epsg_for(float(np.median(lon)), float(np.median(lat)))
        target = CRS.from_user_input(crs)
        if target.is_geographic:
            raise RoadmapError(f"--crs {crs}: a grid without imagery needs a projected CRS in metres")
        tr = Transformer.from_crs("EPSG:4326", target, always_xy=True)
        x, y = tr.transform(lon, lat)
        unit = target.axis_info[0].unit_conversion_factor or 1.0
        res = resolution / unit
        m = margin_m / unit
        x0 = math.floor((float(np.min(x)) - m) / res) * res
        y1 = math.ceil((float(np.max(y)) + m) / res) * res
        width = int(math.ceil((float(np.max(x)) + m - x0) / res))
        height = int(math.ceil((y1 - (float(np.min(y)) - m)) / res))
        return cls.create(target, (res, 0.0, x0, 0.0, -res, y1), width, height)

    @classmethod
    def from_raster(cls, path: str | Path) -> Grid:
        """The grid of a raster file (GeoTIFF or VRT)."""
        import rasterio

        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise RoadmapError(f"{path}: raster has no CRS")
            return cls.create(ds.crs.to_wkt(), ds.transform, ds.width, ds.height)

    # ---- persistence --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["transform"] = list(self.transform)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        return cls(d["crs_wkt"], d.get("epsg"), tuple(d["transform"]), int(d["width"]), int(d["height"]),
                   float(d["pixel_size_m"]))  # type: ignore[arg-type]

    def save(self, path: str | Path, overwrite: bool = True) -> None:
        from roadmap_cli.workdir import atomic_write_json

        atomic_write_json(path, self.to_dict(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RoadmapError(f"{path}: not a valid grid.json ({exc})") from exc

    # ---- geometry -----------------------------------------------------------------------------------------
    @cached_property
    def crs(self):
        """The pyproj CRS."""
        from pyproj import CRS

        return CRS.from_wkt(self.crs_wkt)

    @property
    def is_geographic(self) -> bool:
        return bool(self.crs.is_geographic)

    @property
    def affine(self):
        from affine import Affine

        return Affine(*self.transform)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid CRS."""
        a, _, c, _, e, f = self.transform
        xs = (c, c + a * self.width)
        ys = (f, f + e * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    def window_transform(self, col_off: int, row_off: int) -> tuple[float, float, float, float, float, float]:
        """Transform of a window whose top-left pixel is (col_off, row_off)."""
        a, b, c, d, e, f = self.transform
        return (a, b, c + a * col_off, d, e, f + e * row_off)

    def pixel_to_crs(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coordinates to grid-CRS coordinates."""
        a, _, c, _, e, f = self.transform
        return c + a * np.asarray(col, dtype=np.float64), f + e * np.asarray(row, dtype=np.float64)

    def crs_to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid-CRS coordinates to continuous pixel coordinates."""
        a, _, c, _, e, f = self.transform
        return (np.asarray(x, dtype=np.float64) - c) / a, (np.asarray(y, dtype=np.float64) - f) / e

    @cached_property
    def _to_grid(self):
        from pyproj import Transformer

        return Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)

    @cached_property
    def _from_grid(self):
        from pyproj import Transformer

        return Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)

    def lonlat_to_pixel(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 degrees to continuous pixel coordinates."""
        x, y = self._to_grid.transform(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
        return self.crs_to_pixel(x, y)

    def pixel_to_lonlat(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coordinates to WGS84 degrees."""
        x, y = self.pixel_to_crs(col, row)
        lon, lat = self._from_grid.transform(x, y)
        return np.asarray(lon), np.asarray(lat)

    def metres_per_pixel(self) -> tuple[float, float]:
        """Ground size of one pixel (x, y) in metres at the grid centre; geodesic for geographic CRSs."""
        a, _, _, _, e, _ = self.transform
        if self.crs.is_geographic:
            from pyproj import Geod

            cc, cr = self.width / 2.0, self.height / 2.0
            lon0, lat0 = self.pixel_to_crs(cc, cr)
            geod = Geod(ellps="WGS84")
            _, _, dx = geod.inv(float(lon0), float(lat0), float(lon0 + a), float(lat0))
            _, _, dy = geod.inv(float(lon0), float(lat0), float(lon0), float(lat0 + e))
            return abs(float(dx)), abs(float(dy))
        unit = self.crs.axis_info[0].unit_conversion_factor or 1.0
        return abs(a) * unit, abs(e) * unit

    def area_km2(self, pixels: float | None = None) -> float:
        """Ground area of `pixels` pixels (default: the whole grid) in km²."""
        n = self.width * self.height if pixels is None else pixels
        return n * self.pixel_size_m**2 / 1e6


def utm_epsg_for(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone containing (lon, lat)."""
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone
