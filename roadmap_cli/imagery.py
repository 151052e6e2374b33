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


def coverage_rects(path: str | os.PathLike[str]) -> np.ndarray | None:
    """Where a mosaic written by `build_vrt` with a synthetic coverage alpha is valid, without reading pixels.

    Returns int64 [N, 4] rectangles (col0, row0, col1, row1) of the files' footprints when band 4 of the VRT is
    exactly such a coverage band (only ComplexSources mapping every source pixel to a constant alpha > 0, no
    nodata anywhere in the band), the mosaic's validity mask then being their union; None for anything else
    (nodata, a real alpha band, a VRT from elsewhere), whose mask must be read.
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    if root.tag != "VRTDataset":
        return None
    bands = root.findall("VRTRasterBand")
    alpha = [b for b in bands if b.get("band") == "4"]
    if len(bands) != 4 or len(alpha) != 1 or (alpha[0].findtext("ColorInterp") or "").strip() != "Alpha":
        return None
    source_tags = {"SourceFilename", "SourceBand", "SrcRect", "DstRect", "ScaleOffset", "ScaleRatio"}
    rects = []
    for child in alpha[0]:
        if child.tag == "ColorInterp":
            continue
        if child.tag != "ComplexSource" or any(c.tag not in source_tags for c in child):
            return None
        try:
            ratio = float(child.findtext("ScaleRatio", ""))
            offset = float(child.findtext("ScaleOffset", ""))
            d = child.find("DstRect")
            x, y, w, h = (float(d.get(k, "")) for k in ("xOff", "yOff", "xSize", "ySize"))
        except (TypeError, ValueError, AttributeError):
            return None
        if ratio != 0.0 or not 0.5 <= offset < 255.5 or any(v != int(v) for v in (x, y, w, h)):
            return None  # alpha must round to a constant in [1, 255]; rectangles on whole pixels
        rects.append((int(x), int(y), int(x + w), int(y + h)))
    return np.asarray(rects, dtype=np.int64).reshape(-1, 4)


class ImageryReader:
    """Windowed reads of the workdir's mosaic: RGB uint8 and a validity mask, zero outside the mosaic.

    Reads are plain windowed reads of the part of the window inside the mosaic (rasterio's boundless reads go
    through a warped VRT, ~10x slower), and the validity mask is read only when it has to be: a mosaic whose
    band 1 GDAL reports all valid, or whose alpha is `build_vrt`'s synthetic coverage band (`coverage_rects`),
    gets its mask from that knowledge instead of from pixels.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import rasterio
        from rasterio.enums import MaskFlags

        self.path = Path(path)
        try:
            self.ds = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as exc:
            raise RoadmapError(f"{self.path}: cannot open imagery ({str(exc).splitlines()[0]})") from exc
        self.width, self.height = self.ds.width, self.ds.height
        self._all_valid = MaskFlags.all_valid in self.ds.mask_flag_enums[0]
        self._coverage = None
        if not self._all_valid and self.ds.driver == "VRT":
            rects = coverage_rects(self.path)
            if rects is not None:
                rects[:, [0, 2]] = rects[:, [0, 2]].clip(0, self.width)
                rects[:, [1, 3]] = rects[:, [1, 3]].clip(0, self.height)
                self._coverage = rects[(rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])]

    def read(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [3, H, W], valid bool [H, W]) for a pixel window; outside the mosaic is 0 and invalid."""
        from rasterio.windows import Window

        col_off, row_off, width, height = int(col_off), int(row_off), int(width), int(height)
        c0, r0 = max(col_off, 0), max(row_off, 0)
        c1, r1 = min(col_off + width, self.width), min(row_off + height, self.height)
        if (c0, r0, c1, r1) == (col_off, row_off, col_off + width, row_off + height) and width > 0 and height > 0:
            rgb = self.ds.read([1, 2, 3], window=Window(col_off, row_off, width, height))
            return rgb, self._valid(col_off, row_off, width, height)
        rgb = np.zeros((3, max(height, 0), max(width, 0)), dtype=np.uint8)
        valid = np.zeros((max(height, 0), max(width, 0)), dtype=bool)
        if c0 < c1 and r0 < r1:
            ys, xs = slice(r0 - row_off, r1 - row_off), slice(c0 - col_off, c1 - col_off)
            rgb[:, ys, xs] = self.ds.read([1, 2, 3], window=Window(c0, r0, c1 - c0, r1 - r0))
            valid[ys, xs] = self._valid(c0, r0, c1 - c0, r1 - r0)
        return rgb, valid

    def _valid(self, col: int, row: int, width: int, height: int) -> np.ndarray:
        """Validity of a window inside the mosaic."""
        if self._all_valid:
            return np.ones((height, width), dtype=bool)
        rects = self._coverage
        if rects is None:
            from rasterio.windows import Window

            return self.ds.read_masks(1, window=Window(col, row, width, height)) > 0
        c1, r1 = col + width, row + height
        if ((rects[:, 0] <= col) & (rects[:, 1] <= row) & (rects[:, 2] >= c1) & (rects[:, 3] >= r1)).any():
            return np.ones((height, width), dtype=bool)  # inside one file (every training tile of one image)
        valid = np.zeros((height, width), dtype=bool)
        hit = (rects[:, 0] < c1) & (rects[:, 2] > col) & (rects[:, 1] < r1) & (rects[:, 3] > row)
        for a, b, c, d in rects[hit].tolist():
            valid[max(b, row) - row:min(d, r1) - row, max(a, col) - col:min(c, c1) - col] = True
        return valid

    def close(self) -> None:
        self.ds.close()

    def __enter__(self) -> ImageryReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
