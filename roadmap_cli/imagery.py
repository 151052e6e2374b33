"""Imagery: the user's mosaic as one virtual raster (`imagery.vrt`) on the workdir grid, read window by window.

Imagery is never copied. `build_vrt` writes a small GDAL VRT that references the user's files by absolute path,
after checking they share one CRS and one resolution.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from roadmap_cli.errors import RoadmapError

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img"}


def collect_imagery(path: str | os.PathLike[str]) -> list[Path]:
    """The raster files behind --imagery: one file, a VRT, or every raster in a folder (sorted)."""
    p = Path(path)
    if not p.exists():
        raise RoadmapError(f"--imagery {p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in RASTER_SUFFIXES and f.is_file())
        if not files:
            raise RoadmapError(f"--imagery {p}: folder holds no raster files ({', '.join(sorted(RASTER_SUFFIXES))})")
        return files
    return [p]


def _describe(path: Path):
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise RoadmapError(f"{path}: raster has no CRS")
            if ds.transform.b != 0 or ds.transform.d != 0:
                raise RoadmapError(f"{path}: rotated rasters are not supported")
            interp = [ci.name for ci in ds.colorinterp]
            return {
                "crs": ds.crs, "transform": ds.transform, "width": ds.width, "height": ds.height,
                "count": ds.count, "dtypes": ds.dtypes, "nodata": ds.nodata, "colorinterp": interp,
            }
    except RasterioIOError as exc:
        raise RoadmapError(f"{path}: not a readable raster ({str(exc).splitlines()[0]})") from exc


def build_vrt(files: list[Path], out_path: Path) -> None:
    """Write a VRT mosaic of `files` to `out_path` (caller makes it atomic)."""
    infos = [_describe(f) for f in files]
    first = infos[0]
    for f, info in zip(files[1:], infos[1:], strict=True):
        if info["crs"] != first["crs"]:
            raise RoadmapError(f"--imagery {f}: CRS {info['crs'].to_string()} differs from "
                               f"{files[0].name}'s {first['crs'].to_string()}; reproject the mosaic to one CRS")
        ra, re_ = info["transform"].a, info["transform"].e
        if not (math.isclose(ra, first["transform"].a, rel_tol=1e-6) and
                math.isclose(re_, first["transform"].e, rel_tol=1e-6)):
            raise RoadmapError(f"--imagery {f}: resolution {ra:g} x {abs(re_):g} differs from {files[0].name}'s "
                               f"{first['transform'].a:g} x {abs(first['transform'].e):g}; resample to one resolution")
        if info["count"] < 3:
            raise RoadmapError(f"--imagery {f}: {info['count']} band(s); RGB imagery (3 or 4 bands) is expected")
    if first["count"] < 3:
        raise RoadmapError(f"--imagery {files[0]}: {first['count']} band(s); RGB imagery (3 or 4 bands) is expected")
    a, e = first["transform"].a, first["transform"].e
    lefts = [i["transform"].c for i in infos]
    tops = [i["transform"].f for i in infos]
    rights = [i["transform"].c + a * i["width"] for i in infos]
    bottoms = [i["transform"].f + e * i["height"] for i in infos]
    left, top = min(lefts), max(tops)
    width = int(round((max(rights) - left) / a))
    height = int(round((min(bottoms) - top) / e))
    has_alpha = first["count"] >= 4 and first["colorinterp"][3] == "alpha"
    # Without alpha or nodata, a synthetic alpha band (255 wherever a file covers the mosaic, 0 in gaps between
    # files) keeps the gaps invalid instead of black-but-valid.
    synth_alpha = not has_alpha and first["nodata"] is None
    nbands = 4 if has_alpha or synth_alpha else 3
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{escape(first['crs'].to_wkt())}</SRS>",
             f"  <GeoTransform>{left!r}, {a!r}, 0.0, {top!r}, 0.0, {e!r}</GeoTransform>"]
    for b in range(1, nbands + 1):
        interp = ["Red", "Green", "Blue", "Alpha"][b - 1]
        lines.append(f'  <VRTRasterBand dataType="Byte" band="{b}">')
        lines.append(f"    <ColorInterp>{interp}</ColorInterp>")
        if not has_alpha and first["nodata"] is not None:
            lines.append(f"    <NoDataValue>{first['nodata']!r}</NoDataValue>")
        for f, info in zip(files, infos, strict=True):
            xoff = int(round((info["transform"].c - left) / a))
            yoff = int(round((info["transform"].f - top) / e))
            coverage = synth_alpha and b == 4
            src = "ComplexSource" if info["nodata"] is not None or coverage else "SimpleSource"
            lines.append(f"    <{src}>")
            lines.append(f'      <SourceFilename relativeToVRT="0">{escape(str(f.resolve()))}</SourceFilename>')
            lines.append(f"      <SourceBand>{1 if coverage else b}</SourceBand>")
            size = f'xSize="{info["width"]}" ySize="{info["height"]}"'
            lines.append(f'      <SrcRect xOff="0" yOff="0" {size}/>')
            lines.append(f'      <DstRect xOff="{xoff}" yOff="{yoff}" {size}/>')
            if coverage:
                lines.append("      <ScaleOffset>255</ScaleOffset>")
                lines.append("      <ScaleRatio>0</ScaleRatio>")
            if info["nodata"] is not None:
                lines.append(f"      <NODATA>{info['nodata']!r}</NODATA>")
            lines.append(f"    </{src}>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class ImageryReader:
    """Windowed reads of the workdir's mosaic: RGB uint8 and a validity mask, zero outside the mosaic."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import rasterio

        self.path = Path(path)
        try:
            self.ds = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as exc:
            raise RoadmapError(f"{self.path}: cannot open imagery ({str(exc).splitlines()[0]})") from exc

    def read(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [3, H, W], valid bool [H, W]) for a pixel window; outside the mosaic is invalid."""
        from rasterio.windows import Window

        win = Window(col_off, row_off, width, height)
        rgb = self.ds.read([1, 2, 3], window=win, boundless=True, fill_value=0)
        mask = self.ds.read_masks(1, window=win, boundless=True)
        return rgb, mask > 0

    def close(self) -> None:
        self.ds.close()

    def __enter__(self) -> ImageryReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
