"""The shared raster grid: construction, persistence, pixel <-> CRS <-> degrees conversions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LAT0, LON0, pixel_of

from roadmap_cli.errors import RoadmapError
from roadmap_cli.grid import Grid, utm_epsg_for


def test_utm_zone():
    assert utm_epsg_for(-2.99, 53.44) == 32630
    assert utm_epsg_for(151.2, -33.9) == 32756
    assert utm_epsg_for(-180.0, 10.0) == 32601
    assert utm_epsg_for(179.99, 10.0) == 32660


def test_from_raster_and_save_load(tmp_path, utm_tiff, wgs84_tiff):
    g = Grid.from_raster(utm_tiff)
    assert (g.width, g.height, g.epsg) == (320, 480, 32630)
    assert g.pixel_size_m == pytest.approx(0.5)
    assert g.bounds == pytest.approx((500_650.0, 5_921_230.0 - 240.0, 500_650.0 + 160.0, 5_921_230.0))
    g.save(tmp_path / "grid.json")
    assert Grid.load(tmp_path / "grid.json") == g
    w = Grid.from_raster(wgs84_tiff)
    assert w.is_geographic and w.epsg == 4326
    mx, my = w.metres_per_pixel()
    # 1e-5 degree: ~1.11 m north-south, times cos(latitude) east-west
    assert my == pytest.approx(1.113, abs=0.01)
    assert mx == pytest.approx(1.113 * np.cos(np.radians(LAT0)), abs=0.01)


@pytest.mark.parametrize("which", ["utm", "wgs84"])
def test_lonlat_to_pixel_matches_rasterio(which, utm_tiff, wgs84_tiff):
    tiff = utm_tiff if which == "utm" else wgs84_tiff
    g = Grid.from_raster(tiff)
    rng = np.random.default_rng(0)
    lon = LON0 + rng.uniform(0, 0.002, 50)
    lat = LAT0 - rng.uniform(0, 0.002, 50)
    col, row = g.lonlat_to_pixel(lon, lat)
    rc, rr = pixel_of(lon, lat, tiff)
    assert np.abs(col - rc).max() < 1e-3 and np.abs(row - rr).max() < 1e-3
    lon2, lat2 = g.pixel_to_lonlat(col, row)
    np.testing.assert_allclose(lon2, lon, atol=1e-9)
    np.testing.assert_allclose(lat2, lat, atol=1e-9)
    x, y = g.pixel_to_crs(col, row)
    c3, r3 = g.crs_to_pixel(x, y)
    np.testing.assert_allclose(c3, col, atol=1e-9)
    np.testing.assert_allclose(r3, row, atol=1e-9)


def test_from_extent():
    lon = np.array([LON0, LON0 + 0.01])
    lat = np.array([LAT0, LAT0 - 0.01])
    g = Grid.from_extent(lon, lat, resolution=1.0)
    assert g.epsg == 32630 and g.pixel_size_m == pytest.approx(1.0)
    col, row = g.lonlat_to_pixel(lon, lat)
    assert (col >= 49).all() and (col <= g.width - 49).all()  # 50 m margin
    assert (row >= 49).all() and (row <= g.height - 49).all()
    assert g.transform[2] % 1.0 == 0 and g.transform[5] % 1.0 == 0  # snapped to the resolution
    with pytest.raises(RoadmapError, match="projected CRS"):
        Grid.from_extent(lon, lat, crs="EPSG:4326")
    with pytest.raises(RoadmapError, match="no valid samples"):
        Grid.from_extent(np.zeros(0), np.zeros(0))


def test_load_errors_and_rotation(tmp_path):
    p = tmp_path / "grid.json"
    p.write_text('{"crs_wkt": 1}')
    with pytest.raises(RoadmapError, match="not a valid grid.json"):
        Grid.load(p)
    with pytest.raises(RoadmapError, match="rotated"):
        Grid.create("EPSG:32630", (1.0, 0.5, 0.0, 0.0, -1.0, 0.0), 10, 10)
    g = Grid.create("EPSG:32630", (2.0, 0.0, 100.0, 0.0, -2.0, 500.0), 10, 20)
    assert g.window_transform(3, 4) == (2.0, 0.0, 106.0, 0.0, -2.0, 492.0)
    assert g.area_km2() == pytest.approx(10 * 20 * 4 / 1e6)
