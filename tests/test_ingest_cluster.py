"""`roadmap ingest --scheduler`: GPS files split into parts on a Dask cluster give the same store and report as an
in-process run (byte for byte), whatever way the input is cut (files, byte ranges of a CSV file, batches of a
Parquet file) and whichever pass-2 path runs (in memory, disk spill, time slices)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_tracks

from roadmap_cli.cluster import open_cluster
from roadmap_cli.gpsio import GpsFile
from roadmap_cli.ingest import IngestOptions, _plan_parts, run_ingest
from roadmap_cli.store import PointStore
from roadmap_cli.workdir import Workdir

STORE_FILES = ("samples.bin", "index.npy", "vehicles.json", "meta.json")


@pytest.fixture(scope="module")
def scheduler():
    """One LocalCluster of two single-thread worker processes for the whole module; its address."""
    with open_cluster("local:2") as cluster:
        yield cluster.client.scheduler.address


def both(tmp_path: Path, scheduler: str, **kw) -> tuple[dict, dict]:
    """Ingest in-process into tmp_path/local and on the cluster into tmp_path/cluster; the two reports."""
    a = run_ingest(Workdir(tmp_path / "local"), IngestOptions(**kw))
    b = run_ingest(Workdir(tmp_path / "cluster"), IngestOptions(scheduler=scheduler, **kw))
    return a, b


def assert_same_output(tmp_path: Path, a: dict, b: dict) -> None:
    for name in STORE_FILES:
        assert (tmp_path / "local" / "gps" / name).read_bytes() == (tmp_path / "cluster" / "gps" / name).read_bytes(), \
            name
    on_disk = [json.loads((tmp_path / w / "ingest_report.json").read_text()) for w in ("local", "cluster")]
    for rep, disk in zip((a, b), on_disk, strict=True):
        for r in (rep, disk):
            r.pop("timing_s", None)
            r.pop("created_utc", None)
        assert rep == disk
    assert a == b


def write_csv(df: pd.DataFrame, path: Path) -> str:
    df.to_csv(path, index=False)
    return str(path)


def bad_rows(df: pd.DataFrame, every: int, seed: int) -> pd.DataFrame:
    """A copy with every `every`-th row broken in one of several ways (text in numbers, blanks, duplicates)."""
    out = df.astype({"lat": object, "time": object}).copy()
    rng = np.random.default_rng(seed)
    for i in range(every // 2, len(out), every):
        kind = rng.integers(0, 3)
        if kind == 0:
            out.loc[i, "lat"] = f"{out.loc[i, 'lat']}x"  # unparsable_coordinates (and typed reads fall back to text)
        elif kind == 1:
            out.loc[i, "time"] = ""  # missing_time
        else:
            out.loc[i, "time"] = out.loc[i - 1, "time"]  # duplicate_vehicle_time (elsewhere: first one kept)
            out.loc[i, "vehicle"] = out.loc[i - 1, "vehicle"]
    return out


@pytest.fixture
def mixed_inputs(tmp_path: Path) -> tuple[list[str], pd.DataFrame]:
    """Three CSV files of shuffled rows (car0 spread over all of them, out of order), a Parquet file of several
    batches across row groups, two files without a vehicle column that share a name, and some bad rows."""
    df = make_tracks(n_vehicles=5, n_per_vehicle=90, seed=31)
    df["time"] = df["time"].round().astype("int64")
    df.loc[::7, "speed"] = np.nan
    df.loc[::5, "bearing"] = np.nan
    shuffled = df.sample(frac=1.0, random_state=4).reset_index(drop=True)
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    files = [write_csv(bad_rows(shuffled.iloc[part].reset_index(drop=True), 23, i), root / f"part{i}.csv")
             for i, part in enumerate(np.array_split(np.arange(len(shuffled)), 3))]
    pq = make_tracks(n_vehicles=3, n_per_vehicle=1000, seed=32)
    pq["vehicle"] = "pq_" + pq["vehicle"]
    pq["speed"] = np.nan  # derived from the neighbours, also across time slices
    pq.loc[::2, "bearing"] = np.nan
    dup = pq.iloc[::10].copy()
    dup["lat"] += 2e-5  # same vehicle and time elsewhere: the first in the input is kept
    pq = pd.concat([pq, dup]).sample(frac=1.0, random_state=5).reset_index(drop=True)
    pq.to_parquet(root / "tracks.parquet", row_group_size=700)
    files.append(str(root / "tracks.parquet"))
    for d, seed in (("a", 33), ("b", 34)):
        one = make_tracks(n_vehicles=1, n_per_vehicle=30, seed=seed).drop(columns=["vehicle"])
        files.append(write_csv(one, root / d / "phone.csv"))
    return files, df


@pytest.mark.parametrize("path", ["memory", "spill", "switch", "slices"])
def test_split_inputs_give_the_same_store(tmp_path, scheduler, mixed_inputs, path, caplog, monkeypatch):
    """Files, Parquet batches and vehicles spread over parts; pass 2 in memory, from the disk spill (with time
    slices of the Parquet vehicles), switching to the spill mid-way, and in-memory time slices."""
    files, df = mixed_inputs
    kw = {"memory": {}, "spill": {"memory_rows": 0, "group_rows": 400},
          "switch": {"memory_rows": 2000, "group_rows": 400}, "slices": {"group_rows": 60}}[path]
    if path == "switch":  # the row estimate is short: the run moves to the disk spill while reading
        monkeypatch.setattr(GpsFile, "estimate_rows", lambda self: 0)
    # 1024-row Parquet batches: the 3300-row file is cut into parts across its row groups
    parts = _plan_parts([Path(f) for f in files], [GpsFile(f, block_size=1 << 16) for f in files], 2)
    assert [p.kind for p in parts].count("parquet") == 4
    caplog.set_level(logging.INFO, logger="roadmap")
    a = run_ingest(Workdir(tmp_path / "local"), IngestOptions(gps=files, block_size=1 << 16, max_bad_fraction=0.9,
                                                             **kw))
    local_warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    b = run_ingest(Workdir(tmp_path / "cluster"), IngestOptions(gps=files, block_size=1 << 16, max_bad_fraction=0.9,
                                                               scheduler=scheduler, **kw))
    assert_same_output(tmp_path, a, b)
    assert f"cluster: GPS pass 1 in {len(parts)} part(s) of {len(files)} file(s)" in caplog.messages
    # warnings logged on the workers (no vehicle column) reach the user as in-process
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == local_warnings
    assert sum("no vehicle id column" in m for m in local_warnings) == 2
    assert a["store"]["spilled_to_disk"] == (path in ("spill", "switch"))
    assert b["dropped"]["unparsable_coordinates"] > 0 and b["dropped"]["missing_time"] > 0
    assert b["vehicles"] == 5 + 3 + 2
    st = PointStore(tmp_path / "cluster" / "gps")
    assert st.vehicles[-2:] == ["phone.csv", "phone.csv#2"]
    # intervals across files and parts against pandas, for the vehicles of the CSV files
    s = st.all_samples()
    got = pd.DataFrame({"vehicle": np.array(st.vehicles)[s["vehicle"]], "time": s["time"],
                        "interval": s["interval"]})
    got = got[got["vehicle"].str.startswith("car")].sort_values(["vehicle", "time"]).reset_index(drop=True)
    ref = got[["vehicle", "time"]].copy()
    ref["interval"] = ref.groupby("vehicle")["time"].diff()
    np.testing.assert_allclose(got["interval"], ref["interval"], equal_nan=True)
    assert set(got["time"]) <= set(df["time"].astype(float))
    assert got.groupby("vehicle").size().min() > 80  # car0..car4 kept nearly all their rows across the files


def test_byte_ranges_of_one_csv_give_the_same_store(tmp_path, scheduler, monkeypatch):
    """One CSV file cut into byte ranges (as an in-process run cuts it for its threads), grouped into parts on
    the workers: malformed rows and bad values in later parts keep their whole-file row numbers, a range whose
    typed read fails is read as text, and one vehicle's rows are spread over every part."""
    monkeypatch.setattr(GpsFile, "range_bytes", 2048)
    df = make_tracks(n_vehicles=4, n_per_vehicle=150, seed=41)
    df["time"] = df["time"].round().astype("int64")
    df = df.sample(frac=1.0, random_state=6).reset_index(drop=True)
    df = pd.concat([df.iloc[:150], bad_rows(df.iloc[150:].reset_index(drop=True), 37, 7)], ignore_index=True)
    path = tmp_path / "big.csv"
    lines = df.to_csv(index=False).splitlines()
    lines.insert(400, "car1,1700000001,53.4,-2.98,1.0,2.0,extra")  # a malformed row deep in the file (line 401)
    path.write_text("\n".join(lines) + "\n")
    parts = _plan_parts([path], [GpsFile(path, block_size=4096)], 2)
    assert len(parts) >= 3 and {p.kind for p in parts} == {"csv"}
    # the first 4 KiB block (clean) decides the column types: later ranges with bad values are read as text
    a, b = both(tmp_path, scheduler, gps=[str(path)], max_bad_fraction=0.9, block_size=4096)
    assert_same_output(tmp_path, a, b)
    mode = b["gps_files"][0]["read_mode"]
    assert "ranges in parallel" in mode and "as text" in mode
    assert b["dropped"]["malformed_row"] == 1 and "big.csv row 401: 7 fields" in b["drop_examples"]["malformed_row"]
    first_bad = next(i for i, v in enumerate(df["lat"]) if str(v).endswith("x"))
    assert f"big.csv row {first_bad + 1}:" in b["drop_examples"]["unparsable_coordinates"]


def test_lattice_projection_and_imagery_grid(tmp_path, scheduler, gps_csv, utm_tiff, monkeypatch):
    """The workers project with the main process's lattice settings (here: the lattice even for small chunks)
    onto an imagery grid, dropping samples outside it as in-process."""
    from roadmap_cli.ingest import _Projector

    monkeypatch.setattr(_Projector, "MIN_POINTS", 0)
    df = make_tracks(n_vehicles=3, n_per_vehicle=60, seed=51)
    df.loc[::9, "lat"] += 0.01  # north of the raster: outside_grid
    halves = np.array_split(np.arange(len(df)), 2)
    files = [str(gps_csv(df.iloc[idx], name=f"g{i}.csv")) for i, idx in enumerate(halves)]
    a, b = both(tmp_path, scheduler, gps=files, imagery=str(utm_tiff), max_bad_fraction=0.9)
    assert_same_output(tmp_path, a, b)
    assert b["projection"]["method"] == "pyproj lattice + bilinear" and b["dropped"]["outside_grid"] > 0


def test_projected_input_and_iso_times(tmp_path, scheduler, gps_csv):
    """--gps-crs (a pyproj CRS sent to the workers) and ISO times with and without a zone, one vehicle spread
    over the files."""
    from pyproj import Transformer

    df = make_tracks(n_vehicles=2, n_per_vehicle=80, seed=55)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True).transform(df["lon"], df["lat"])
    df = df.assign(lon=np.round(x, 3), lat=np.round(y, 3)).rename(columns={"lon": "x", "lat": "y"})
    halves = np.array_split(np.arange(len(df)), 2)
    files = [str(gps_csv(df.iloc[idx], name=f"utm{i}.csv", time_format=fmt, shuffle=True))
             for i, (idx, fmt) in enumerate(zip(halves, ("iso", "isoz"), strict=True))]
    a, b = both(tmp_path, scheduler, gps=files, gps_crs="EPSG:32630")
    assert_same_output(tmp_path, a, b)
    assert b["rows_kept"] == len(df) and [f["time_format"] for f in b["gps_files"]] == ["iso", "iso"]


def invoke(workdir: Path, *args: str):
    from roadmap_cli.cli import main

    return CliRunner().invoke(main, ["-q", "-w", str(workdir), "ingest", *args], catch_exceptions=False)


def test_errors_on_workers_are_the_same_one_line_via_the_cli(tmp_path, scheduler, monkeypatch):
    """A file that cannot be read fails on a worker; too many bad rows fail after pass 1 with an example from a
    later part. Either way the CLI prints the in-process line, naming the file as given (a relative path here,
    while the workers run elsewhere)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(GpsFile, "range_bytes", 1024)
    good = make_tracks(n_vehicles=2, n_per_vehicle=20, seed=61)
    good.to_csv("good.csv", index=False)
    Path("binary.csv").write_bytes(b"vehicle,time,lat,lon\ncar0,1700000000,53.4,-2.98\ncar\xff,1700000001,53.4,-2.98\n")
    rows = ["vehicle,time,lat,lon"] + [f"v{i % 3},{1700000000 + i},53.4{i:03d},-2.98" for i in range(150)]
    rows += [f"v{i % 3},{1700000200 + i},nope,-2.98" for i in range(200)]
    Path("mostly_bad.csv").write_text("\n".join(rows) + "\n")
    assert len(_plan_parts([Path("mostly_bad.csv")], [GpsFile("mostly_bad.csv")], 2)) > 1
    expect = {"binary.csv": ["--gps binary.csv: cannot read as CSV"],
              "mostly_bad.csv": ["200 of 390 rows", "unparsable_coordinates 200", "mostly_bad.csv row 151: "]}
    for name, fragments in expect.items():
        local = invoke(tmp_path / f"wd_local_{name}", "--gps", "good.csv", "--gps", name)
        remote = invoke(tmp_path / f"wd_cluster_{name}", "--gps", "good.csv", "--gps", name,
                        "--max-bad-fraction", "0.5", "--scheduler", scheduler)
        assert local.exit_code == remote.exit_code == 1
        assert remote.output == local.output and remote.output.count("\n") == 1
        assert remote.output.startswith("roadmap: error: ")
        for fragment in fragments:
            assert fragment in remote.output, (fragment, remote.output)
        assert not (tmp_path / f"wd_cluster_{name}").exists()


def test_cli_scheduler_option_and_config(tmp_path, scheduler, gps_csv):
    """`--scheduler` on the command line and `scheduler:` in a --config file both run on the cluster, recorded
    in config.resolved.json; the store equals the in-process one."""
    path = str(gps_csv(make_tracks(n_vehicles=3, seed=71), shuffle=True))
    assert invoke(tmp_path / "local", "--gps", path).exit_code == 0
    assert invoke(tmp_path / "cluster", "--gps", path, "--scheduler", scheduler).exit_code == 0
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"scheduler: {scheduler}\n")
    res = invoke(tmp_path / "config", "--gps", path, "--config", str(cfg))
    assert res.exit_code == 0, res.output
    for wd in ("cluster", "config"):
        for name in STORE_FILES:
            assert (tmp_path / wd / "gps" / name).read_bytes() == (tmp_path / "local" / "gps" / name).read_bytes()
        resolved = json.loads((tmp_path / wd / "config.resolved.json").read_text())
        assert resolved["ingest"]["scheduler"] == scheduler


def test_slice_context_is_the_one_process_chunk_returns():
    """The main process hands each time slice of an oversized bucket its context without processing the slices
    before it: the same records `_process_chunk` would return, through runs of equal times at slice ends."""
    from roadmap_cli.grid import Grid
    from roadmap_cli.ingest import BUCKET_DTYPE, _last_per_vehicle, _process_chunk, _Projector

    grid = Grid.create("EPSG:4326", (1e-5, 0, -3.0, 0, -1e-5, 53.5), 100_000, 100_000)
    rng = np.random.default_rng(81)
    n = 3000
    rec = np.zeros(n, dtype=BUCKET_DTYPE)
    rec["vehicle"] = rng.integers(0, 7, n)
    rec["time"] = np.sort(rng.integers(0, 400, n)).astype(float)  # many equal times per vehicle
    rec["lon"] = -2.99 + rng.uniform(0, 0.01, n)
    rec["lat"] = 53.49 - rng.uniform(0, 0.01, n)
    rec["speed"] = rec["bearing"] = np.nan
    # slices cut only between different times (as `_time_slices` cuts), rows shuffled within each
    edges = [0, *np.unique(np.searchsorted(rec["time"], rec["time"][[500, 1100, 1900, 2400]])).tolist(), n]
    context = mine = None
    names = [f"v{i}" for i in range(7)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        part = rec[a:b][rng.permutation(b - a)]
        out = _process_chunk(part, context, _Projector(grid), names)
        mine = _last_per_vehicle(part, mine)
        assert mine.tobytes() == out.context.tobytes()
        context = out.context
    assert np.unique(context["vehicle"]).size == 7


@pytest.mark.slow
def test_cli_local_cluster_of_its_own(tmp_path, gps_csv):
    """`--scheduler local:2` starts a LocalCluster for the command alone (slow: 5-30 s to start)."""
    files = [str(gps_csv(make_tracks(n_vehicles=3, seed=91 + i), name=f"l{i}.csv", shuffle=True)) for i in range(3)]
    args = [a for f in files for a in ("--gps", f)]
    assert invoke(tmp_path / "local", *args).exit_code == 0
    res = invoke(tmp_path / "cluster", *args, "--scheduler", "local:2")
    assert res.exit_code == 0, res.output
    for name in STORE_FILES:
        assert (tmp_path / "cluster" / "gps" / name).read_bytes() == (tmp_path / "local" / "gps" / name).read_bytes()
    bad = invoke(tmp_path / "bad", *args, "--scheduler", "local:0")
    assert bad.exit_code == 1 and "--scheduler local:0: expected local:N" in bad.output
