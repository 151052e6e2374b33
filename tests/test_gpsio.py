"""GPS file reading: delimiter and column detection, value and time parsing, validation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import make_tracks

from roadmap_cli.errors import RoadmapError
from roadmap_cli.gpsio import (
    DropLog,
    GpsFile,
    TimeFormat,
    VehicleIndex,
    expand_gps_paths,
    guess_quantum,
    parse_columns_spec,
    parse_numbers,
    sniff_csv,
)


def read_all(path: Path, **kw) -> tuple[GpsFile, VehicleIndex, DropLog, dict[str, np.ndarray]]:
    f = GpsFile(path, parse_columns_spec(kw.pop("columns", None)), **kw)
    v, d = VehicleIndex(), DropLog()
    batches = list(f.batches(v, d))
    cat = {k: np.concatenate([getattr(b, k) for b in batches]) if batches else np.zeros(0)
           for k in ("vehicle", "time", "lon", "lat", "speed", "bearing")}
    return f, v, d, cat


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_delimiters_are_detected(gps_csv, sep):
    path = gps_csv(sep=sep)
    delim, names = sniff_csv(path)
    assert delim == sep
    assert names == ["vehicle", "time", "lat", "lon", "speed", "bearing"]
    f, v, d, cat = read_all(path)
    df = make_tracks()
    assert f.columns.as_dict() == {"lat": "lat", "lon": "lon", "time": "time", "vehicle": "vehicle",
                                   "speed": "speed", "bearing": "bearing"}
    np.testing.assert_allclose(cat["lat"], df["lat"])
    np.testing.assert_allclose(cat["time"], df["time"].round())
    assert v.names == ["car0", "car1", "car2"]
    assert d.total == 0


@pytest.mark.parametrize("names", [
    {"lat": "Latitude", "lon": "Longitude", "time": "timestamp", "vehicle": "taxi_id", "speed": "velocity",
     "bearing": "heading"},
    {"lat": "y", "lon": "x", "time": "ts", "vehicle": "vehicle_id", "speed": "Speed", "bearing": "angle"},
    {"lat": "LAT", "lon": "lng", "time": "t", "vehicle": "trip_id", "speed": "speed", "bearing": "dir"},
])
def test_alternative_column_names(gps_csv, names):
    f, v, _, cat = read_all(gps_csv(names=names, sep=";"))
    assert f.columns.as_dict() == names
    assert len(v.names) == 3
    np.testing.assert_allclose(cat["lon"], make_tracks()["lon"])


def test_decimal_commas_with_semicolons(tmp_path):
    p = tmp_path / "eu.csv"
    p.write_text("vehicle;time;lat;lon\na;1700000000;53,44;-2,99\na;1700000010;53,441;-2,991\n")
    _, _, d, cat = read_all(p)
    np.testing.assert_allclose(cat["lat"], [53.44, 53.441])
    np.testing.assert_allclose(cat["lon"], [-2.99, -2.991])
    assert d.total == 0


def test_vehicle_id_wins_over_row_id_and_trip_id(tmp_path):
    p = tmp_path / "bus.csv"
    p.write_text("id,trip_id,vehicle_id,timestamp,latitude,longitude\n"
                 "1,10,A,1700000000,53.1,-2.9\n2,10,A,1700000010,53.1,-2.9\n3,11,B,1700000000,53.2,-2.8\n"
                 "4,12,A,1700000020,53.1,-2.9\n")
    f, v, _, _ = read_all(p)
    assert f.columns.vehicle == "vehicle_id"
    assert v.names == ["A", "B"]


def test_distinct_column_is_no_vehicle_id(tmp_path):
    p = tmp_path / "ids.csv"
    p.write_text("id,time,lat,lon\n1,1700000000,53.1,-2.9\n2,1700000010,53.1,-2.9\n3,1700000020,53.2,-2.8\n")
    f, v, _, cat = read_all(p)
    assert f.columns.vehicle is None
    assert v.names == ["ids.csv"]  # the file is one vehicle
    assert set(cat["vehicle"].tolist()) == {0}
    # ... but an `id` column that repeats is a vehicle id
    q = tmp_path / "ids2.csv"
    q.write_text("id,time,lat,lon\n7,1700000000,53.1,-2.9\n7,1700000010,53.1,-2.9\n8,1700000020,53.2,-2.8\n")
    f, v, _, _ = read_all(q)
    assert f.columns.vehicle == "id" and v.names == ["7", "8"]


def test_columns_override_and_errors(gps_csv, tmp_path):
    path = gps_csv(names={"lat": "northing_deg", "lon": "easting_deg"})
    with pytest.raises(RoadmapError, match="no latitude / longitude column"):
        GpsFile(path)
    f, _, _, cat = read_all(path, columns="lat=northing_deg, lon=easting_deg, speed=")
    assert f.columns.lat == "northing_deg" and f.columns.speed is None
    assert np.isnan(cat["speed"]).all()
    with pytest.raises(RoadmapError, match="not a column of this file"):
        GpsFile(path, parse_columns_spec("lat=nope,lon=easting_deg"))
    for bad in ("lat", "height=z", "lat=a,lat=b", "time="):
        with pytest.raises(RoadmapError, match="--columns"):
            parse_columns_spec(bad)


@pytest.mark.parametrize("fmt", ["epoch", "ms", "iso", "isoz"])
def test_time_formats(gps_csv, fmt):
    f, _, d, cat = read_all(gps_csv(time_format=fmt))
    np.testing.assert_allclose(cat["time"], make_tracks()["time"].round(), atol=1e-3)
    assert d.total == 0
    assert f.time_format.kind == {"epoch": "epoch_s", "ms": "epoch_ms", "iso": "iso", "isoz": "iso"}[fmt]


def test_iso_zones_mixed_and_bad_values():
    tf = TimeFormat()
    arr = pa.array(["2026-01-26 15:57:02", "2026-01-26T15:57:02Z", "2026-01-26T16:57:02+01:00",
                    "2026-01-26 15:57:02.5", None, "yesterday"])
    v, missing, bad = tf.parse(arr)
    base = pd.Timestamp("2026-01-26T15:57:02Z").timestamp()
    np.testing.assert_allclose(v[:4], [base, base, base, base + 0.5])
    assert missing.tolist() == [False] * 4 + [True, False]
    assert bad.tolist() == [False] * 5 + [True]
    assert tf.kind == "iso"


def test_parquet_and_gzip_match_csv(gps_csv, tmp_path):
    df = make_tracks(seed=3)
    csv_path = gps_csv(df, time_format="iso")
    gz = tmp_path / "tracks.csv.gz"
    gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    pq_path = tmp_path / "tracks.parquet"
    pdf = df.copy()
    pdf["time"] = pd.to_datetime(pdf["time"], unit="s")  # a Parquet timestamp column
    pdf.to_parquet(pq_path)
    ref = read_all(csv_path)[3]
    for p in (gz, pq_path):
        got = read_all(p)[3]
        for k in ("time", "lat", "lon", "speed", "bearing"):
            np.testing.assert_allclose(got[k], ref[k], err_msg=f"{p.name}: {k}")


def test_speed_units(gps_csv):
    path = gps_csv()
    kmh = read_all(path)[3]["speed"]
    ms = read_all(path, speed_unit="m/s")[3]["speed"]
    np.testing.assert_allclose(kmh, make_tracks()["speed"] / 3.6, rtol=1e-6)
    np.testing.assert_allclose(ms, make_tracks()["speed"], rtol=1e-6)


def test_validation_reasons_in_pass_one(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(
        "vehicle,time,lat,lon\n"
        "a,1700000000,53.1,-2.9\n"        # ok
        ",1700000001,53.1,-2.9\n"         # missing_vehicle
        "a,1700000002,,-2.9\n"            # missing_coordinates
        "a,1700000003,abc,-2.9\n"         # unparsable_coordinates
        "a,,53.1,-2.9\n"                  # missing_time
        "a,soon,53.1,-2.9\n"              # unparsable_time
        "a,1700000006,95.0,-2.9\n"        # coordinates_out_of_range
        "a,1700000007,53.1,190\n"         # coordinates_out_of_range
        "a,1700000008,0,0\n"              # zero_zero
        "a,1700000009,53.1,-2.9,extra\n"  # malformed_row
        "b,1700000010,53.2,-2.8\n"        # ok
    )
    f, v, d, cat = read_all(p)
    assert d.counts == {"malformed_row": 1, "missing_vehicle": 1, "missing_coordinates": 1,
                        "unparsable_coordinates": 1, "missing_time": 1, "unparsable_time": 1,
                        "coordinates_out_of_range": 2, "zero_zero": 1, "duplicate_vehicle_time": 0,
                        "outside_grid": 0}
    assert f.rows_read == 11
    assert cat["time"].tolist() == [1700000000, 1700000010]
    assert "abc" in d.examples["unparsable_coordinates"] and "row 4" in d.examples["unparsable_coordinates"]


def test_parse_numbers_lenient():
    v, missing, bad = parse_numbers(pa.array(["1.5", " 2 ", "", None, "x1", "1e3", "nan", "-0.25"]))
    assert missing.tolist() == [False, False, True, True, False, False, True, False]
    assert bad.tolist() == [False, False, False, False, True, False, False, False]
    np.testing.assert_allclose(v[[0, 1, 5, 7]], [1.5, 2.0, 1000.0, -0.25])


def test_guess_quantum():
    rng = np.random.default_rng(0)
    assert guess_quantum(np.round(53 + rng.random(1000), 5)) == pytest.approx(1e-5)
    assert guess_quantum(np.round(rng.random(1000) * 1000)) == pytest.approx(1.0)
    assert guess_quantum(np.round(53 + rng.random(1000), 6)) == pytest.approx(1e-6)


def test_bad_files_raise_one_line_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("1,2,3\n4,5,6\n")
    badpq = tmp_path / "bad.parquet"
    badpq.write_bytes(b"PAR1 not really")
    for p, msg in ((empty, "empty"), (junk, "binary"), (nohead, "no latitude"), (badpq, "Parquet"),
                   (tmp_path / "missing.csv", "no such file")):
        with pytest.raises(RoadmapError, match=msg) as ei:
            GpsFile(p)
        assert "\n" not in str(ei.value.format_message())


def test_expand_gps_paths(gps_csv, tmp_path):
    a = gps_csv(name="a.csv")
    b = gps_csv(name="b.csv")
    assert expand_gps_paths([tmp_path]) == [a, b]
    with pytest.raises(RoadmapError, match="no such file"):
        expand_gps_paths([tmp_path / "nope.csv"])


def test_vehicle_ids_are_trimmed_and_blank_is_missing():
    v = VehicleIndex()
    codes = v.encode(pa.array(["a", " a", "", None, "b", "  ", "a"]))
    assert codes.tolist() == [0, 0, -1, -1, 1, -1, 0] and v.names == ["a", "b"]
    # numeric ids from Parquet: 4716.0 and 4716 are the same vehicle
    assert v.encode(pa.array([4716.0, None, 4716.0])).tolist() == [2, -1, 2]
    assert v.encode(pa.array([4716], type=pa.int64())).tolist() == [2] and v.names[2] == "4716"


@pytest.mark.parametrize("range_bytes", [None, 9000])
def test_typed_read_falls_back_to_text_and_counts_once(tmp_path, monkeypatch, range_bytes):
    """Columns are converted by Arrow's CSV reader as typed by the first block; a value it cannot convert in a
    later block switches the file (or, read by byte ranges in parallel, that range) to text: the rows, drops,
    malformed-row count and its example row number are the same as reading it all as text."""
    rng = np.random.default_rng(4)
    lines = ["vehicle,time,lat,lon,speed"]
    for i in range(4000):
        lat = f"{53.4 + rng.uniform(0, 0.01):.6f}"
        speed = "" if i % 7 == 0 else f"{rng.uniform(0, 50):.1f}"
        if i == 3100:
            lat = "53.4x"  # unparsable, far beyond the first block
        extra = ",x" if i in (40, 3500) else ""  # malformed rows before and after the failure
        lines.append(f"v{i % 5},{1_700_000_000 + i},{lat},-2.9{i % 10},{speed}{extra}")
    p = tmp_path / "late_bad.csv"
    p.write_text("\n".join(lines) + "\n")

    def read(**kw):
        f = GpsFile(p, block_size=1 << 13)
        v, d = VehicleIndex(), DropLog()
        batches = list(f.batches(v, d, **kw))
        cat = {k: np.concatenate([getattr(b, k) for b in batches]) for k in ("vehicle", "time", "lat", "speed")}
        return f, d, cat

    from concurrent.futures import ThreadPoolExecutor

    f, d, cat = read()
    assert f.read_mode.startswith("text from block ") and int(f.read_mode.split()[3]) > 5
    assert d.counts["malformed_row"] == 2 and d.counts["unparsable_coordinates"] == 1 and d.total == 3
    assert f.rows_read == 4000 and cat["time"].size == 3997 and "53.4x" in d.examples["unparsable_coordinates"]
    assert "row 42:" in d.examples["malformed_row"]  # line 42: the header, then rows 0..40
    if range_bytes:
        monkeypatch.setattr(GpsFile, "range_bytes", range_bytes)
    with ThreadPoolExecutor(2) as pool:
        f2, d2, cat2 = read(pool=pool)
    if range_bytes:
        assert "ranges in parallel, 1 of them as text" in f2.read_mode and int(f2.read_mode.split("; ")[1][:2]) > 10
    assert d2.examples["malformed_row"] == d.examples["malformed_row"]
    # the example of a malformed row deep in the file names its line, also when it lies in a later range
    q = tmp_path / "late_malformed.csv"
    q.write_text("\n".join(ln for i, ln in enumerate(lines) if i != 41) + "\n")  # line 42 (row 40) removed
    with ThreadPoolExecutor(2) as pool:
        dq = DropLog()
        list(GpsFile(q, block_size=1 << 13).batches(VehicleIndex(), dq, pool=pool))
    assert dq.counts["malformed_row"] == 1 and "row 3501:" in dq.examples["malformed_row"]
    monkeypatch.setattr(GpsFile, "typed_read", False)
    f3, d3, cat3 = read()
    assert f3.read_mode == "text"
    for other, counts in ((cat2, d2.counts), (cat3, d3.counts)):
        assert counts == d.counts
        for k in cat:
            np.testing.assert_array_equal(other[k], cat[k])
    empty = (cat["time"].astype(np.int64) - 1_700_000_000) % 7 == 0
    assert (np.isnan(cat["speed"]) == empty).all()  # empty speeds are unknown, on either path


def test_typed_read_when_clean(gps_csv):
    f, _, d, cat = read_all(gps_csv(time_format="isoz"))
    assert f.read_mode.startswith("typed: ") and "lat double" in f.read_mode and "timestamp[us, tz=UTC]" in f.read_mode
    assert d.total == 0 and cat["time"].size == len(make_tracks())


def test_estimate_rows(gps_csv, tmp_path):
    df = make_tracks(n_vehicles=5, n_per_vehicle=400, seed=6)
    csv_path = gps_csv(df)
    assert 0.8 * len(df) <= GpsFile(csv_path).estimate_rows() <= 1.25 * len(df)
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    assert 0.8 * len(df) <= GpsFile(gz).estimate_rows() <= 1.25 * len(df)
    pq_path = tmp_path / "t.parquet"
    df.to_parquet(pq_path)
    assert GpsFile(pq_path).estimate_rows() == len(df)


def test_vehicle_codes_found_in_arrow_match_python():
    v = VehicleIndex()
    names, idx = VehicleIndex.arrow_dictionary(pa.array(["b", " a", None, "", "b", "c"]))
    assert v.known(names, idx) is None  # nothing known yet: left to codes_for, which assigns in order
    assert v.codes_for(names, idx).tolist() == [0, 1, -1, -1, 0, 2] and v.names == ["b", "a", "c"]
    names, idx = VehicleIndex.arrow_dictionary(pa.array(["c", "a ", "  ", "b"]))
    assert v.known(names, idx).tolist() == [2, 1, -1, 0]
    names, idx = VehicleIndex.arrow_dictionary(pa.array(["c", "d"]))
    assert v.known(names, idx) is None and v.codes_for(names, idx).tolist() == [2, 3]
    assert v.known(*VehicleIndex.arrow_dictionary(pa.array(["d", "a"]))).tolist() == [3, 1]


@pytest.mark.parametrize("newline,trailing", [("\n", True), ("\r\n", False)])
def test_parallel_ranges_read_the_same_rows(tmp_path, monkeypatch, newline, trailing):
    from concurrent.futures import ThreadPoolExecutor

    df = make_tracks(n_vehicles=7, n_per_vehicle=300, seed=13)
    text = df.to_csv(index=False, lineterminator=newline)
    p = tmp_path / "crlf.csv"
    p.write_bytes((text if trailing else text.rstrip("\r\n")).encode())

    def read(pool):
        f, v, d = GpsFile(p, block_size=4096), VehicleIndex(), DropLog()
        bs = list(f.batches(v, d, pool=pool))
        return f, d, {k: np.concatenate([getattr(b, k) for b in bs]) for k in ("vehicle", "time", "lat", "bearing")}

    f0, d0, ref = read(None)
    monkeypatch.setattr(GpsFile, "range_bytes", 5000)
    with ThreadPoolExecutor(2) as pool:
        f1, d1, got = read(pool)
    assert "ranges in parallel" in f1.read_mode and "ranges" not in f0.read_mode
    assert f1.rows_read == f0.rows_read == len(df) and d0.total == d1.total == 0
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
