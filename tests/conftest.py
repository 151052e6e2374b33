"""Shared fixtures: tiny seeded GeoTIFFs (UTM and EPSG:4326), a GPS CSV generator, the real Liverpool bus file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"
LIVERPOOL_CSV = DATA / "liverpool_bus" / "route14_outbound.csv"

# A small area in Liverpool (UTM zone 30N), where the real bus data lies too.
UTM_CRS = "EPSG:32630"
LON0, LAT0 = -2.99, 53.44  # north-west corner of the generated tracks (they extend 0.002 deg south and east)
UTM_ORIGIN = (500_650.0, 5_921_230.0)  # top-left corner (x, y) of the UTM raster: covers the tracks


def write_geotiff(path: Path, crs: str, transform: tuple[float, ...], width: int, height: int, seed: int = 0,
                  bands: int = 3, nodata: float | None = None) -> Path:
    """A seeded random uint8 GeoTIFF (transform in rasterio/affine order a, b, c, d, e, f)."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(bands, height, width), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands, dtype="uint8",
                       crs=crs, transform=Affine(*transform[:6]), nodata=nodata) as ds:
        ds.write(data)
    return path


@pytest.fixture
def utm_tiff(tmp_path: Path) -> Path:
    """320 x 480 px at 0.5 m in EPSG:32630 (UTM 30N), covering `make_tracks()`."""
    x0, y0 = UTM_ORIGIN
    return write_geotiff(tmp_path / "utm.tif", UTM_CRS, (0.5, 0.0, x0, 0.0, -0.5, y0), 320, 480, seed=1)


@pytest.fixture
def wgs84_tiff(tmp_path: Path) -> Path:
    """220 x 220 px of 1e-5 degrees in EPSG:4326, covering `make_tracks()`."""
    return write_geotiff(tmp_path / "wgs84.tif", "EPSG:4326", (1e-5, 0.0, LON0, 0.0, -1e-5, LAT0), 220, 220, seed=2)


def make_tracks(n_vehicles: int = 3, n_per_vehicle: int = 40, seed: int = 0, lon0: float = LON0,
                lat0: float = LAT0, span_deg: float = 0.002, t0: float = 1_700_000_000.0) -> pd.DataFrame:
    """Seeded vehicle tracks: columns vehicle (str), time (epoch s), lat, lon, speed (km/h), bearing (deg)."""
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(n_vehicles):
        t = t0 + np.cumsum(rng.integers(2, 30, n_per_vehicle)).astype(float)
        lat = lat0 - rng.uniform(0, span_deg, n_per_vehicle)
        lon = lon0 + rng.uniform(0, span_deg, n_per_vehicle)
        rows.append(pd.DataFrame({
            "vehicle": f"car{v}", "time": t, "lat": np.round(lat, 7), "lon": np.round(lon, 7),
            "speed": np.round(rng.uniform(0, 60, n_per_vehicle), 1),
            "bearing": np.round(rng.uniform(0, 360, n_per_vehicle), 1),
        }))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture
def gps_csv(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a tracks DataFrame (default `make_tracks()`) as a GPS CSV; returns its path.

    `names` renames the columns (e.g. {"lat": "latitude"}), `sep` picks the delimiter, `time_format` is
    "epoch" (seconds), "ms", "iso" (no zone) or "isoz" (with Z), `shuffle` permutes the rows.
    """
    counter = iter(range(1_000_000))

    def write(df: pd.DataFrame | None = None, *, name: str | None = None, names: dict[str, str] | None = None,
              sep: str = ",", time_format: str = "epoch", shuffle: bool = False, seed: int = 0,
              drop: tuple[str, ...] = ()) -> Path:
        df = (make_tracks(seed=seed) if df is None else df).copy()
        if shuffle:
            df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        if time_format == "ms":
            df["time"] = (df["time"] * 1000).round().astype("int64")
        elif time_format in ("iso", "isoz"):
            ts = pd.to_datetime(df["time"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S")
            df["time"] = ts + ("Z" if time_format == "isoz" else "")
        elif time_format == "epoch":
            df["time"] = df["time"].round().astype("int64")
        df = df.drop(columns=list(drop))
        df = df.rename(columns=names or {})
        path = tmp_path / (name or f"gps{next(counter)}.csv")
        df.to_csv(path, sep=sep, index=False)
        return path

    return write


@pytest.fixture
def liverpool_csv() -> Path:
    """The real Liverpool bus file (tests/data/liverpool_bus, OGL v3.0)."""
    assert LIVERPOOL_CSV.exists(), "tests/data/liverpool_bus/route14_outbound.csv is missing"
    return LIVERPOOL_CSV


def pixel_of(lon: np.ndarray, lat: np.ndarray, tiff: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: degrees to continuous pixel coordinates of a raster via rasterio.warp + its
    affine transform (no roadmap code)."""
    import rasterio
    from rasterio.warp import transform as warp_transform

    with rasterio.open(tiff) as ds:
        xs, ys = warp_transform("EPSG:4326", ds.crs, list(map(float, lon)), list(map(float, lat)))
        inv = ~ds.transform
        cols, rows = zip(*(inv @ (x, y) for x, y in zip(xs, ys, strict=True)), strict=True)
    return np.asarray(cols), np.asarray(rows)
