"""The ingest stage: grid, store, per-vehicle intervals, derived values, report, workdir behaviour."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_tracks, pixel_of, write_geotiff

from roadmap_cli.errors import RoadmapError
from roadmap_cli.grid import Grid
from roadmap_cli.ingest import IngestOptions, run_ingest
from roadmap_cli.store import PointStore
from roadmap_cli.workdir import Workdir


def ingest(wd: Path, **kw) -> dict:
    return run_ingest(Workdir(wd), IngestOptions(**kw))


def store_frame(wd: Path) -> pd.DataFrame:
    st = PointStore(wd / "gps")
    s = st.all_samples()
    df = pd.DataFrame({k: s[k] for k in s.dtype.names})
    df["vehicle"] = [st.vehicles[i] for i in s["vehicle"]]
    return df.sort_values(["vehicle", "time"]).reset_index(drop=True)


def test_liverpool_bus_file(tmp_path, liverpool_csv):
    rep = ingest(tmp_path / "wd", gps=[str(liverpool_csv)])
    with open(liverpool_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rep["rows_read"] == len(rows) == rep["rows_kept"]
    assert rep["vehicles"] == len({r["vehicle_id"] for r in rows})  # vehicle_id, not id or trip_id
    assert rep["gps_files"][0]["columns"]["vehicle"] == "vehicle_id"
    assert sum(r["bearing"] == "" for r in rows) == rep["bearing_deg"]["derived"] > 300
    assert rep["bearing_deg"]["unknown"] == 0 and rep["speed_m_s"]["derived"] == len(rows)
    assert 20.0 <= rep["interval_s"]["p50"] <= 30.0
    df = store_frame(tmp_path / "wd")
    assert np.isfinite(df["bearing"]).all()  # the empty bearings were filled
    assert (df["bearing"] >= 0).all() and (df["bearing"] < 360).all()
    # speeds of a city bus: mostly below 20 m/s
    assert np.nanpercentile(df["speed"], 95) < 20.0
    # intervals against a brute-force reference from the file itself
    ref = pd.DataFrame({"vehicle": [r["vehicle_id"] for r in rows],
                        "time": (pd.to_datetime([r["timestamp"] for r in rows], utc=True)
                                 - pd.Timestamp(0, tz="UTC")).total_seconds()})
    ref = ref.sort_values(["vehicle", "time"]).reset_index(drop=True)
    ref["interval"] = ref.groupby("vehicle")["time"].diff()
    np.testing.assert_allclose(df["interval"], ref["interval"], equal_nan=True)
    grid = Grid.load(tmp_path / "wd" / "grid.json")
    assert grid.epsg == 32630 and grid.pixel_size_m == pytest.approx(0.5)


def test_derived_bearing_agrees_with_recorded_bearing(tmp_path, liverpool_csv):
    ingest(tmp_path / "a", gps=[str(liverpool_csv)])
    ingest(tmp_path / "b", gps=[str(liverpool_csv)], columns="bearing=")
    a, b = store_frame(tmp_path / "a"), store_frame(tmp_path / "b")
    with open(liverpool_csv, newline="") as fh:
        recorded = np.array([r["bearing"] != "" for r in csv.DictReader(fh)])
    assert recorded.sum() > 1000
    diff = np.abs((a["bearing"] - b["bearing"] + 180.0) % 360.0 - 180.0)
    assert np.nanmedian(diff) < 15.0


def test_every_drop_reason_is_counted(tmp_path, utm_tiff):
    rows = ["vehicle,time,lat,lon",
            "a,1700000000,53.4390,-2.9890",   # kept
            "a,1700000010,53.4391,-2.9891",   # kept
            "a,1700000010,53.4392,-2.9892",   # duplicate_vehicle_time (same vehicle and time)
            ",1700000020,53.4390,-2.9890",    # missing_vehicle
            "a,1700000030,,-2.9890",          # missing_coordinates
            "a,1700000040,53.4x,-2.9890",     # unparsable_coordinates
            "a,,53.4390,-2.9890",             # missing_time
            "a,later,53.4390,-2.9890",        # unparsable_time
            "a,1700000050,91.0,-2.9890",      # coordinates_out_of_range
            "a,1700000060,0,0",               # zero_zero
            "a,1700000070,53.5,-2.9890",      # outside_grid (north of the raster)
            "a,1700000080,53.4390,-2.9890,x",  # malformed_row
            "b,1700000000,53.4390,-2.9880"]   # kept
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(rows) + "\n")
    rep = ingest(tmp_path / "wd", gps=[str(p)], imagery=str(utm_tiff), max_bad_fraction=1.0)
    assert rep["dropped"] == {"malformed_row": 1, "missing_vehicle": 1, "missing_coordinates": 1,
                              "unparsable_coordinates": 1, "missing_time": 1, "unparsable_time": 1,
                              "coordinates_out_of_range": 1, "zero_zero": 1, "duplicate_vehicle_time": 1,
                              "outside_grid": 1}
    assert rep["rows_read"] == 13 and rep["rows_kept"] == 3 and rep["vehicles"] == 2
    assert set(rep["drop_examples"]) == set(rep["dropped"])


def test_too_many_bad_rows_is_an_error_naming_reasons(tmp_path):
    p = tmp_path / "mostly_bad.csv"
    p.write_text("vehicle,time,lat,lon\n" + "a,1700000000,nope,-2.9\n" * 6 + "a,1700000001,53.4,-2.9\n")
    with pytest.raises(RoadmapError, match=r"6 of 7 rows .*unparsable_coordinates 6.*row 1.*nope") as ei:
        ingest(tmp_path / "wd", gps=[str(p)])
    assert "\n" not in ei.value.format_message()
    assert not (tmp_path / "wd").exists()  # nothing left behind
    rep = ingest(tmp_path / "wd", gps=[str(p)], max_bad_fraction=0.9)
    assert rep["rows_kept"] == 1
    q = tmp_path / "all_bad.csv"
    q.write_text("vehicle,time,lat,lon\na,1700000000,91,-2.9\n")
    with pytest.raises(RoadmapError, match="no usable rows left.*coordinates_out_of_range.*--gps-crs"):
        ingest(tmp_path / "wd2", gps=[str(q)], max_bad_fraction=1.0)


@pytest.mark.parametrize("group_rows", [1_000_000, 37])
def test_unsorted_multi_file_intervals_match_pandas(tmp_path, gps_csv, group_rows):
    df = make_tracks(n_vehicles=4, n_per_vehicle=60, seed=7)
    df = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    cars = df[df["vehicle"] != "car3"]
    parts = np.array_split(np.arange(len(cars)), 3)
    files = [str(gps_csv(cars.iloc[idx], name=f"part{i}.csv")) for i, idx in enumerate(parts)]
    # car3 is spread over two more files that write time as ISO text
    car3 = df[df["vehicle"] == "car3"]
    files += [str(gps_csv(car3.iloc[:25], name="iso_a.csv", time_format="iso")),
              str(gps_csv(car3.iloc[25:], name="iso_b.csv", time_format="isoz"))]
    rep = ingest(tmp_path / "wd", gps=files, group_rows=group_rows)
    assert rep["rows_kept"] == len(df) and rep["vehicles"] == 4
    got = store_frame(tmp_path / "wd")
    ref = df.assign(time=df["time"].round()).sort_values(["vehicle", "time"]).reset_index(drop=True)
    ref["interval"] = ref.groupby("vehicle")["time"].diff()
    assert got["vehicle"].tolist() == ref["vehicle"].tolist()
    np.testing.assert_allclose(got["time"], ref["time"])
    np.testing.assert_allclose(got["interval"], ref["interval"], equal_nan=True)
    assert np.isnan(got.groupby("vehicle")["interval"].nth(0)).all()


def test_time_slicing_gives_the_same_store(tmp_path, gps_csv):
    """Few vehicles with many samples: buckets larger than group_rows are cut into time slices."""
    df = make_tracks(n_vehicles=2, n_per_vehicle=300, seed=5)
    df["speed"] = np.nan
    df.loc[::3, "bearing"] = np.nan
    path = str(gps_csv(df, shuffle=True))
    ingest(tmp_path / "one", gps=[path])
    ingest(tmp_path / "sliced", gps=[path], group_rows=50)
    a, b = store_frame(tmp_path / "one"), store_frame(tmp_path / "sliced")
    pd.testing.assert_frame_equal(a, b)


def test_derived_speed_and_bearing_fill_only_missing(tmp_path, gps_csv):
    # one vehicle driving due east at 10 m/s, sampled every 10 s
    n = 20
    lat = np.full(n, 53.439)
    lon = -2.9895 + np.arange(n) * 100.0 / (111_320.0 * np.cos(np.radians(53.439)))
    speed = np.full(n, np.nan)
    speed[5] = 36.0  # km/h: kept as 10 m/s
    bearing = np.full(n, np.nan)
    bearing[7] = 45.0  # recorded: kept
    df = pd.DataFrame({"vehicle": "v", "time": 1.7e9 + 10.0 * np.arange(n), "lat": lat, "lon": lon,
                       "speed": speed, "bearing": bearing})
    rep = ingest(tmp_path / "wd", gps=[str(gps_csv(df))])
    got = store_frame(tmp_path / "wd")
    np.testing.assert_allclose(got["speed"], 10.0, rtol=2e-3)
    expect = np.full(n, 90.0)
    expect[7] = 45.0
    np.testing.assert_allclose(got["bearing"], expect, atol=0.2)
    assert rep["speed_m_s"]["from_input"] == 1 and rep["speed_m_s"]["derived"] == n - 1
    assert rep["bearing_deg"]["from_input"] == 1 and rep["bearing_deg"]["derived"] == n - 1


@pytest.mark.parametrize("which,projection", [("utm", "lattice"), ("utm", "exact"), ("wgs84", "lattice")])
def test_grid_from_imagery_and_pixel_positions(tmp_path, gps_csv, utm_tiff, wgs84_tiff, which, projection,
                                               monkeypatch):
    from roadmap_cli.ingest import _Projector

    monkeypatch.setattr(_Projector, "MIN_POINTS", 0)  # small data still goes through the lattice
    if projection == "exact":
        monkeypatch.setattr(_Projector, "LATTICE_TOL_PX", -1.0)  # no lattice is good enough
    tiff = utm_tiff if which == "utm" else wgs84_tiff
    df = make_tracks(seed=11)
    rep = ingest(tmp_path / "wd", gps=[str(gps_csv(df))], imagery=str(tiff))
    method = rep["projection"]["method"]
    assert method == {("utm", "lattice"): "pyproj lattice + bilinear", ("utm", "exact"): "pyproj per point",
                      ("wgs84", "lattice"): "affine (grid in EPSG:4326)"}[which, projection]
    assert rep["rows_kept"] == len(df) and rep["grid"]["source"] == "imagery"
    grid = Grid.load(tmp_path / "wd" / "grid.json")
    assert grid == Grid.from_raster(tiff)
    assert (tmp_path / "wd" / "imagery.vrt").exists()
    got = store_frame(tmp_path / "wd")
    ref = df.sort_values(["vehicle", "time"]).reset_index(drop=True)
    col, row = pixel_of(ref["lon"].to_numpy(), ref["lat"].to_numpy(), tiff)
    assert np.abs(got["col"] - col).max() < 0.1
    assert np.abs(got["row"] - row).max() < 0.1


def test_lattice_projection_on_a_large_extent(tmp_path, gps_csv, monkeypatch):
    """Tracks spread over ~20 km: the lattice has many cells; positions still match pyproj to 0.01 px."""
    from pyproj import Transformer

    from roadmap_cli.ingest import _Projector

    monkeypatch.setattr(_Projector, "MIN_POINTS", 0)
    df = make_tracks(n_vehicles=3, n_per_vehicle=200, seed=12, span_deg=0.2)
    rep = ingest(tmp_path / "wd", gps=[str(gps_csv(df))], resolution=0.3)
    assert rep["projection"]["method"] == "pyproj lattice + bilinear"
    assert rep["projection"]["nodes"][0] > 50 and rep["projection"]["max_error_px"] < 0.01
    grid = Grid.load(tmp_path / "wd" / "grid.json")
    got = store_frame(tmp_path / "wd")
    ref = df.sort_values(["vehicle", "time"]).reset_index(drop=True)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(ref["lon"], ref["lat"])
    a, _, c, _, e, f = grid.transform
    assert np.abs(got["col"] - (x - c) / a).max() < 0.01
    assert np.abs(got["row"] - (y - f) / e).max() < 0.01


def test_grid_from_gps_extent(tmp_path, gps_csv):
    df = make_tracks(seed=2)
    rep = ingest(tmp_path / "wd", gps=[str(gps_csv(df))], resolution=2.0)
    grid = Grid.load(tmp_path / "wd" / "grid.json")
    assert grid.epsg == 32630 and grid.transform[0] == 2.0 and rep["grid"]["source"] == "gps"
    s = PointStore(tmp_path / "wd" / "gps").all_samples()
    assert s.size == len(df)
    assert s["col"].min() > 10 and s["col"].max() < grid.width - 10  # 50 m margin at 2 m
    ingest(tmp_path / "wd3857", gps=[str(gps_csv(df))], crs="EPSG:3857", resolution=1.0)
    assert Grid.load(tmp_path / "wd3857" / "grid.json").epsg == 3857
    with pytest.raises(RoadmapError, match="--crs EPSG:4326"):
        ingest(tmp_path / "wd4326", gps=[str(gps_csv(df))], crs="EPSG:4326")
    with pytest.raises(RoadmapError, match="--crs bogus"):
        ingest(tmp_path / "wdx", gps=[str(gps_csv(df))], crs="bogus")


def test_projected_gps_input(tmp_path, gps_csv, utm_tiff):
    from pyproj import Transformer

    df = make_tracks(seed=4)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(df["lon"], df["lat"])
    proj = df.assign(lon=np.round(x, 3), lat=np.round(y, 3)).rename(columns={"lon": "x", "lat": "y"})
    rep = ingest(tmp_path / "wd", gps=[str(gps_csv(proj))], gps_crs="EPSG:32630", imagery=str(utm_tiff))
    assert rep["rows_kept"] == len(df)
    got = store_frame(tmp_path / "wd")
    ref = proj.sort_values(["vehicle", "time"]).reset_index(drop=True)
    np.testing.assert_allclose(got["col"], (ref["x"] - 500_650.0) / 0.5, atol=0.01)
    np.testing.assert_allclose(got["row"], (5_921_230.0 - ref["y"]) / 0.5, atol=0.01)
    # without --gps-crs the same file is all out of range, with a hint
    with pytest.raises(RoadmapError, match="--gps-crs"):
        ingest(tmp_path / "wd2", gps=[str(gps_csv(proj))])


def test_overwrite_and_rerun_semantics(tmp_path, gps_csv, utm_tiff):
    wd = tmp_path / "wd"
    path = str(gps_csv(make_tracks(seed=8)))
    ingest(wd, gps=[path])
    gps_grid = Grid.load(wd / "grid.json")
    with pytest.raises(RoadmapError, match="pass --overwrite"):
        ingest(wd, gps=[path])
    # adding imagery to a GPS-only workdir changes the grid: needs --overwrite, re-ingests the recorded files
    with pytest.raises(RoadmapError, match="--overwrite"):
        ingest(wd, imagery=str(utm_tiff))
    rep = ingest(wd, imagery=str(utm_tiff), overwrite=True)
    assert Grid.load(wd / "grid.json") == Grid.from_raster(utm_tiff) != gps_grid
    assert rep["rows_kept"] == PointStore(wd / "gps").n_samples == 120
    assert PointStore(wd / "gps").meta["width"] == 320
    # GPS only on a workdir with imagery keeps the imagery grid
    rep = ingest(wd, gps=[path], overwrite=True, resolution=3.0)
    assert rep["grid"]["source"] == "imagery"
    assert Grid.load(wd / "grid.json") == Grid.from_raster(utm_tiff)
    # naming the workdir's own mosaic as --imagery keeps it (and the store: the grid does not change)
    rep = ingest(wd, imagery=str(wd / "imagery.vrt"), overwrite=True)
    assert Grid.from_raster(wd / "imagery.vrt") == Grid.from_raster(utm_tiff)
    assert rep["rows_kept"] == 120 and rep["imagery"]["files"] == [str(utm_tiff.resolve())]
    # imagery only on a fresh workdir: grid and VRT, an empty GPS section
    rep = ingest(tmp_path / "img", imagery=str(utm_tiff))
    assert rep["rows_read"] == 0 and not (tmp_path / "img" / "gps").exists()
    with pytest.raises(RoadmapError, match="nothing to do"):
        ingest(tmp_path / "none")


def test_no_leftovers_and_deterministic_store(tmp_path, gps_csv):
    path = str(gps_csv(make_tracks(n_vehicles=5, seed=9), shuffle=True))
    ingest(tmp_path / "a", gps=[path])
    ingest(tmp_path / "b", gps=[path])
    for name in ("samples.bin", "index.npy", "vehicles.json"):
        assert (tmp_path / "a" / "gps" / name).read_bytes() == (tmp_path / "b" / "gps" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["gps", "grid.json", "ingest_report.json"]
    rep = json.loads((tmp_path / "a" / "ingest_report.json").read_text())
    assert {"rows_read", "rows_kept", "dropped", "vehicles", "extent", "interval_s", "resolution"} <= set(rep)
    assert rep["resolution"]["lat_step_deg"] == pytest.approx(1e-7)


def test_mixed_imagery_is_a_clear_error(tmp_path, gps_csv):
    folder = tmp_path / "tiles"
    folder.mkdir()
    write_geotiff(folder / "a.tif", "EPSG:32630", (0.5, 0, 500_650.0, 0, -0.5, 5_921_230.0), 40, 40)
    write_geotiff(folder / "b.tif", "EPSG:32631", (0.5, 0, 500_670.0, 0, -0.5, 5_921_230.0), 40, 40)
    with pytest.raises(RoadmapError, match="CRS .* differs"):
        ingest(tmp_path / "wd", gps=[str(gps_csv())], imagery=str(folder))
    assert not (tmp_path / "wd").exists()


def test_interval_percentiles_match_numpy():
    from roadmap_cli.ingest import _IntervalHist

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(1, 120, 5000), rng.integers(4000, 90000, 50)]).astype(float)
    h = _IntervalHist()
    for part in np.array_split(x, 7):
        h.add(part)
    s = h.summary()
    for q in (5, 25, 50, 75):
        assert s[f"p{q:02d}"] == np.percentile(x, q, method="lower")
    assert s["min"] == x.min() and s["max"] == x.max() and s["count"] == x.size
    assert s["mean"] == pytest.approx(x.mean(), abs=1e-3)
    assert s["p95"] == pytest.approx(np.percentile(x, 95, method="lower"), rel=0.13)  # log bins above 1 h


def test_memory_and_disk_paths_give_the_same_store(tmp_path, gps_csv, monkeypatch):
    """Inputs within the memory budget skip the disk spill; larger ones spill, and so does an input whose row
    estimate was short, switching mid-way. All three give the same samples, drops and statistics."""
    from roadmap_cli.gpsio import GpsFile

    df = make_tracks(n_vehicles=6, n_per_vehicle=150, seed=21)
    df.loc[::4, "speed"] = np.nan
    df.loc[::5, "bearing"] = np.nan
    dup = df.iloc[[10, 200, 400]].copy()
    dup["lat"] += 1e-4  # same vehicle and time at another position: whichever comes first in the input is kept
    df = pd.concat([df, dup]).sample(frac=1.0, random_state=3).reset_index(drop=True)
    files = [str(gps_csv(df.iloc[idx], name=f"p{i}.csv"))
             for i, idx in enumerate(np.array_split(np.arange(len(df)), 3))]
    kw = {"gps": files, "group_rows": 100}  # vehicles of 150 rows: cut into time slices on either path
    reps = {"memory": ingest(tmp_path / "memory", **kw), "disk": ingest(tmp_path / "disk", memory_rows=0, **kw)}
    monkeypatch.setattr(GpsFile, "estimate_rows", lambda self: 0)
    reps["switch"] = ingest(tmp_path / "switch", memory_rows=300, **kw)
    assert [r["store"]["spilled_to_disk"] for r in reps.values()] == [False, True, True]
    ref = store_frame(tmp_path / "memory")
    assert len(ref) == len(df) - 3 and reps["memory"]["dropped"]["duplicate_vehicle_time"] == 3
    for name in ("disk", "switch"):
        pd.testing.assert_frame_equal(store_frame(tmp_path / name), ref)
        for key in ("rows_read", "rows_kept", "dropped", "vehicles", "extent", "interval_s", "speed_m_s",
                    "bearing_deg"):
            assert reps[name][key] == reps["memory"][key], (name, key)
    # the copy kept of each duplicate is the first in the input (files in order, rows in order)
    from pyproj import Transformer

    first = df.drop_duplicates(["vehicle", "time"]).sort_values(["vehicle", "time"]).reset_index(drop=True)
    x, _ = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(first["lon"], first["lat"])
    a, _, c, _, _, _ = Grid.load(tmp_path / "memory" / "grid.json").transform
    np.testing.assert_allclose(ref["col"], (x - c) / a, atol=0.01)


def test_in_memory_time_slices_keep_duplicates_together(tmp_path, gps_csv):
    """One vehicle, many samples, runs of equal times: slices never split a run, so each run keeps one sample."""
    n = 400
    t = 1.7e9 + np.repeat(np.arange(n // 4) * 10.0, 4)  # every time four times
    df = pd.DataFrame({"vehicle": "bus", "time": t, "lat": 53.439 - np.arange(n) * 1e-6,
                       "lon": -2.9895 + np.arange(n) * 1e-6})
    rep = ingest(tmp_path / "wd", gps=[str(gps_csv(df, shuffle=True))], group_rows=7, max_bad_fraction=1.0)
    assert rep["rows_kept"] == n // 4 and rep["dropped"]["duplicate_vehicle_time"] == n - n // 4
    got = store_frame(tmp_path / "wd")
    np.testing.assert_allclose(got["interval"].iloc[1:], 10.0)
    assert np.isnan(got["interval"].iloc[0])
