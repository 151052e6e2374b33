"""Windowed GeoTIFF output for probability rasters: tiled, deflate-compressed, written row block by row block.

`prob.tif` convention (what QGIS, GDAL and `roadmap vectorize` see):

- one uint8 band on the workdir grid (same CRS, transform, width, height);
- value v in 1..255 is a road probability of about v/255 (a probability below 1/255 is stored as 1);
- value 0 is nodata (declared as the band's nodata value): outside the imagery for image models. A reader that
  ignores nodata still sees "no road" there, which is the safe reading;
- 512×512 internal tiles, DEFLATE with horizontal predictor; `--cog` turns it into a Cloud-Optimised GeoTIFF.

Rows arrive in order in chunks of any height; the writer re-cuts them into whole block rows so GDAL never holds
or re-reads a partly written block, and memory stays at one block row plus one chunk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("roadmap")

BLOCK = 512
NODATA = 0
#: GDAL block cache (MB) for streaming stages: enough for a band's reads and a few block rows of a very wide
#: raster, instead of GDAL's default 5% of the machine's memory (which would grow with the mosaic)
GDAL_CACHE_MB = 32


def probability_to_uint8(prob: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """float probabilities [0, 1] to the prob.tif encoding: round(p·255) clipped to 1..255, 0 where invalid."""
    scaled = np.multiply(prob, np.float32(255.0), dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 1, 255, out=scaled)
    out = scaled.astype(np.uint8)
    if valid is not None:
        out[~valid] = NODATA
    return out


def gtiff_profile(grid: Any, block: int = BLOCK) -> dict[str, Any]:
    """rasterio creation profile of a prob.tif on `grid` (a roadmap_cli.grid.Grid)."""
    from rasterio.crs import CRS

    crs = CRS.from_epsg(grid.epsg) if grid.epsg else CRS.from_wkt(grid.crs_wkt)
    profile: dict[str, Any] = {
        "driver": "GTiff", "dtype": "uint8", "count": 1, "width": grid.width, "height": grid.height,
        "crs": crs, "transform": grid.affine, "nodata": NODATA, "compress": "deflate", "predictor": 2,
        "BIGTIFF": "IF_SAFER", "tiled": True, "blockxsize": block, "blockysize": block,
        # blocks are compressed on all cores; GDAL writes them in order, so the bytes equal a 1-thread write
        "num_threads": "ALL_CPUS",
    }
    return profile


class RowWriter:
    """Write a single-band uint8 GeoTIFF top to bottom from row chunks of any height.

    Use as a context manager; `write_rows(rows)` takes the next `rows.shape[0]` rows (full width). Closing checks
    that every row was written. The caller handles atomicity (write to a temporary path, rename afterwards) and
    bounds GDAL's block cache (`rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)`).
    """

    def __init__(self, path: str | os.PathLike[str], grid: Any, tags: dict[str, str] | None = None,
                 block: int = BLOCK) -> None:
        import rasterio

        self.path = Path(path)
        self.width, self.height = grid.width, grid.height
        self.block = block
        self.ds = rasterio.open(self.path, "w", **gtiff_profile(grid, block))
        if tags:
            self.ds.update_tags(**tags)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._next_row = 0  # first row not yet handed to GDAL

    def write_rows(self, rows: np.ndarray) -> None:
        """Append the next rows (uint8 [n, width])."""
        if rows.ndim != 2 or rows.shape[1] != self.width or rows.dtype != np.uint8:
            raise ValueError(f"expected uint8 rows of width {self.width}, got {rows.dtype} {rows.shape}")
        self._pending.append(rows)
        self._pending_rows += rows.shape[0]
        if self._next_row + self._pending_rows > self.height:
            raise ValueError("more rows written than the raster has")
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        from rasterio.windows import Window

        n = self._pending_rows
        if not final:
            n = (n // self.block) * self.block
        if n == 0:
            return
        buf = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, axis=0)
        for r in range(0, n, self.block):
            h = min(self.block, n - r)
            self.ds.write(buf[r:r + h], 1, window=Window(0, self._next_row + r, self.width, h))
        self._next_row += n
        rest = buf[n:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_rows = rest.shape[0]

    def close(self) -> None:
        """Flush the last rows and close the file."""
        try:
            self._flush(final=True)
            if self._next_row != self.height:
                raise ValueError(f"{self.path}: {self._next_row} of {self.height} rows written")
        finally:
            self.ds.close()

    def abort(self) -> None:
        """Close without checks (the caller discards the file)."""
        self.ds.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def cog_available() -> bool:
    """Whether this GDAL has the COG driver (GDAL >= 3.1)."""
    import rasterio

    with rasterio.Env() as env:
        return "COG" in env.drivers()


def to_cog(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a GeoTIFF to a Cloud-Optimised GeoTIFF (GDAL streams block by block; memory stays flat).

    Uses the COG driver when GDAL has it, else a tiled GTiff with internal overviews built on the source first
    and copied with COPY_SRC_OVERVIEWS (the classic COG recipe).
    """
    import rasterio
    from rasterio.shutil import copy as rio_copy

    if cog_available():
        rio_copy(str(src), str(dst), driver="COG", compress="DEFLATE", predictor="YES", blocksize=BLOCK,
                 overview_resampling="AVERAGE", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
        return
    from rasterio.enums import Resampling

    with rasterio.open(src, "r+") as ds:
        factors, size = [], max(ds.width, ds.height)
        f = 2
        while size / f >= BLOCK / 2:
            factors.append(f)
            f *= 2
        if factors:
            ds.build_overviews(factors, Resampling.average)
    rio_copy(str(src), str(dst), driver="GTiff", tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
             compress="deflate", predictor=2, copy_src_overviews=True, BIGTIFF="IF_SAFER")


def read_tags(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The dataset tags of a raster, or None when it cannot be opened."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return dict(ds.tags())
    except Exception:  # any unreadable file: the caller treats it as foreign
        return None
