"""Group-level behaviour of `roadmap`: help, version, one-line errors with exit 1, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from roadmap_cli import __version__, cli
from roadmap_cli.cli import COMMANDS, main
from roadmap_cli.errors import RoadmapError


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roadmap: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_help_lists_every_command():
    r = invoke("--help")
    assert r.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in r.output
    r = invoke("ingest", "--help")
    assert r.exit_code == 0 and "--gps" in r.output and "--overwrite" in r.output


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output


@pytest.fixture
def fake_commands(monkeypatch):
    """Two extra commands: an unbuilt placeholder and one that fails unexpectedly."""

    @click.command("unbuilt", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def unbuilt() -> None:
        raise RoadmapError("'unbuilt' is not built yet in this version of roadmap")

    @click.command("boom")
    def boom() -> None:
        raise ValueError("kaputt\nsecond line")

    for name, command in (("unbuilt", unbuilt), ("boom", boom)):
        mod = types.ModuleType(f"roadmap_cli.commands.{name}")
        mod.cmd = command
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(cli.COMMANDS, name, "test command")


def test_unbuilt_command_is_one_line(fake_commands):
    line = one_error_line(invoke("unbuilt"))
    assert "not built yet" in line


def test_unexpected_error_is_one_line_unless_vv(fake_commands):
    line = one_error_line(invoke("boom"))
    assert "unexpected ValueError: kaputt" in line and "-vv" in line
    r = invoke("-vv", "boom")
    assert isinstance(r.exception, ValueError)


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp / "empty.csv"
    empty.write_text("")
    header = tmp / "header.csv"
    header.write_text("vehicle,time,lat,lon\n")
    junk = tmp / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 20)
    cols = tmp / "cols.csv"
    cols.write_text("a,b,c\n1,2,3\n")
    good = tmp / "good.csv"
    good.write_text("vehicle,time,lat,lon\nx,1700000000,53.4,-2.9\nx,1700000010,53.41,-2.91\n")
    badpq = tmp / "bad.parquet"
    badpq.write_bytes(b"PAR1garbage")
    return {
        "empty": (["--gps", str(empty)], "empty"),
        "header only": (["--gps", str(header)], "no data rows"),
        "binary junk": (["--gps", str(junk)], "binary"),
        "wrong columns": (["--gps", str(cols)], "no latitude"),
        "bad --columns": (["--gps", str(good), "--columns", "lat:y"], "--columns"),
        "unknown column": (["--gps", str(good), "--columns", "lat=nope"], "nope"),
        "missing file": (["--gps", str(tmp / "missing.csv")], "no such file"),
        "bad parquet": (["--gps", str(badpq)], "Parquet"),
        "bad crs": (["--gps", str(good), "--crs", "EPSG:999999"], "--crs"),
        "bad imagery": (["--gps", str(good), "--imagery", str(junk)], "not a readable raster"),
    }


@pytest.mark.parametrize("case", ["empty", "header only", "binary junk", "wrong columns", "bad --columns",
                                  "unknown column", "missing file", "bad parquet", "bad crs", "bad imagery"])
def test_bad_ingest_inputs_end_with_one_line_and_leave_nothing(tmp_path, case):
    args, expect = _bad_inputs(tmp_path)[case]
    wd = tmp_path / "wd"
    line = one_error_line(invoke("-w", str(wd), "ingest", *args))
    assert expect in line
    assert not wd.exists() or not any(wd.iterdir())


def test_failed_ingest_keeps_previous_artifacts(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("vehicle,time,lat,lon\nx,1700000000,53.4,-2.9\nx,1700000010,53.41,-2.91\n")
    wd = tmp_path / "wd"
    assert invoke("-w", str(wd), "ingest", "--gps", str(good)).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in wd.iterdir()}
    line = one_error_line(invoke("-w", str(wd), "ingest", "--gps", str(good)))
    assert "--overwrite" in line
    args, _ = _bad_inputs(tmp_path)["binary junk"]
    one_error_line(invoke("-w", str(wd), "ingest", "--overwrite", *args))
    assert {p.name: p.stat().st_mtime_ns for p in wd.iterdir()} == before  # untouched, no temp folders


def test_usage_errors_exit_2(tmp_path):
    assert invoke("-w", str(tmp_path / "wd"), "ingest").exit_code == 2
    assert invoke("-w", str(tmp_path / "wd"), "ingest", "--gps", "x.csv", "--max-bad-fraction", "2").exit_code == 2
    assert invoke("nosuchcommand").exit_code == 2


def test_ingest_writes_artifacts_and_config(tmp_path, liverpool_csv):
    wd = tmp_path / "wd"
    r = invoke("-w", str(wd), "ingest", "--gps", str(liverpool_csv))
    assert r.exit_code == 0, r.output
    assert "1533 of 1533 GPS rows kept" in r.stderr
    names = sorted(p.name for p in wd.iterdir())
    assert names == ["config.resolved.json", "gps", "grid.json", "ingest_report.json"]


def test_real_process_prints_no_traceback(tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 20)
    wd = tmp_path / "wd"
    script = Path(sys.executable).parent / "roadmap"  # the installed console script, else the module
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "roadmap_cli"]
    p = subprocess.run([*cmd, "-w", str(wd), "ingest", "--gps", str(junk)],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("roadmap: error: ")
    assert not wd.exists()
