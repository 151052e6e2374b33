"""Reading GPS files for `roadmap ingest`: CSV, CSV.gz and Parquet, in Arrow record batches.

What this module decides, and why:

- **Delimiter and columns** are detected from the header (comma, semicolon, tab or `|`; common names such as
  lat/latitude/y, lon/lng/longitude/x, time/timestamp/ts/t, vehicle_id/taxi_id/trip_id/id, speed/velocity,
  bearing/heading/dir/angle). A vehicle candidate whose every value is distinct (a row id) is skipped, so a
  file with `id` and `vehicle_id` uses `vehicle_id`. `--columns lat=..,lon=..` overrides any role.
- **Values are parsed leniently but vectorised**: selected columns are read as text and cast by Arrow in one
  go; only a batch whose fast cast fails takes a slower path (regex filtering for numbers, decimal commas,
  pandas for mixed-zone ISO times) that turns bad values into "unparsable" instead of aborting the file.
- **Time** is epoch seconds, milliseconds, microseconds or nanoseconds (scale guessed per file from the
  magnitude of its first values), ISO 8601 text with or without a zone (no zone means UTC), or a Parquet
  timestamp/date column.
- **Validation** gives every dropped row exactly one reason (the first that applies, in `REASONS` order)
  and keeps one example row per reason, so the report and the "too many bad rows" error can point at it.
"""

from __future__ import annotations

import bz2
import csv as pycsv
import gzip
import logging
import math
import re
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from roadmap_cli.errors import RoadmapError

log = logging.getLogger("roadmap")

ROLES = ("lat", "lon", "time", "vehicle", "speed", "bearing")
REQUIRED_ROLES = ("lat", "lon", "time")

# Normalised header names per role, most specific first (normalisation: lower case, runs of other characters
# than letters and digits become "_"). "direction" is deliberately absent: bus feeds use it for
# "inbound"/"outbound".
CANDIDATES: dict[str, tuple[str, ...]] = {
    "lat": ("lat", "latitude", "y", "lat_deg", "latitude_deg", "gps_lat", "gps_latitude"),
    "lon": ("lon", "lng", "long", "longitude", "x", "lon_deg", "longitude_deg", "gps_lon", "gps_lng",
            "gps_longitude"),
    "time": ("time", "timestamp", "ts", "t", "datetime", "date_time", "gps_time", "time_utc", "utc_time",
             "unix_time", "epoch"),
    "vehicle": ("vehicle", "vehicle_id", "vehicleid", "taxi_id", "taxiid", "taxi", "car_id", "device_id",
                "driver_id", "trip_id", "track_id", "id", "uid"),
    "speed": ("speed", "velocity", "spd"),
    "bearing": ("bearing", "heading", "dir", "angle", "course", "azimuth"),
}

# Drop reasons, in the order they are tested (a row is counted under the first that applies).
REASONS = (
    "malformed_row",  # wrong number of fields (CSV)
    "missing_vehicle",
    "missing_coordinates",
    "unparsable_coordinates",
    "missing_time",
    "unparsable_time",
    "coordinates_out_of_range",  # latitude outside [-90, 90], longitude outside [-180, 180], or unprojectable
    "zero_zero",  # (0, 0): a receiver without a fix
    "duplicate_vehicle_time",  # a second sample of one vehicle at the same time (the first is kept)
    "outside_grid",
)

SPEED_UNITS = {"km/h": 1.0 / 3.6, "m/s": 1.0, "mph": 0.44704, "knots": 1852.0 / 3600.0}

CSV_DELIMITERS = (",", ";", "\t", "|")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
GPS_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".txt", ".gz", *PARQUET_SUFFIXES)

_NUM_RE = r"^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|(?i:nan|inf|infinity))$"


# ---- column specification -----------------------------------------------------------------------------------
def normalise_name(name: str) -> str:
    """Header name for matching: lower case, other characters than letters and digits collapsed to '_'."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().strip("\ufeff").strip('"').lower()).strip("_")


def parse_columns_spec(spec: str | None) -> dict[str, str | None]:
    """Parse `--columns lat=NAME,lon=NAME,...`; an empty name (or `none`) switches a role off."""
    out: dict[str, str | None] = {}
    if spec is None or not spec.strip():
        return out
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise RoadmapError(f"--columns {spec!r}: expected ROLE=COLUMN pairs separated by commas, got {part!r}")
        role, name = (s.strip() for s in part.split("=", 1))
        role = role.lower()
        if role not in ROLES:
            raise RoadmapError(f"--columns {spec!r}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if role in out:
            raise RoadmapError(f"--columns {spec!r}: role {role!r} given twice")
        if name.lower() in ("", "none", "-") and role in REQUIRED_ROLES:
            raise RoadmapError(f"--columns {spec!r}: role {role!r} is required and cannot be switched off")
        out[role] = None if name.lower() in ("", "none", "-") else name
    return out


@dataclass
class ColumnMap:
    """Which file column plays each role (None: absent)."""

    lat: str
    lon: str
    time: str
    vehicle: str | None = None
    speed: str | None = None
    bearing: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {r: getattr(self, r) for r in ROLES}

    def selected(self) -> list[str]:
        """Distinct column names in use, in role order."""
        names: list[str] = []
        for r in ROLES:
            n = getattr(self, r)
            if n is not None and n not in names:
                names.append(n)
        return names


def _match_override(name: str, names: list[str], path: Path) -> str:
    if name in names:
        return name
    norm = {normalise_name(n): n for n in names}
    if normalise_name(name) in norm:
        return norm[normalise_name(name)]
    raise RoadmapError(f"{path}: --columns names {name!r}, which is not a column of this file "
                       f"(columns: {', '.join(names)})")


def detect_columns(names: list[str], path: Path, overrides: dict[str, str | None]) -> tuple[ColumnMap, list[str]]:
    """Map roles to columns from the header; returns the map and the other vehicle candidates (best first).

    The vehicle role is provisional: `GpsFile` drops a candidate whose values are all distinct.
    """
    by_norm: dict[str, str] = {}
    for n in names:
        by_norm.setdefault(normalise_name(n), n)
    chosen: dict[str, str | None] = {}
    vehicle_alternatives: list[str] = []
    for role in ROLES:
        if role in overrides:
            chosen[role] = None if overrides[role] is None else _match_override(overrides[role], names, path)
            continue
        found = [by_norm[c] for c in CANDIDATES[role] if c in by_norm]
        used = {v for v in chosen.values() if v is not None}
        found = [f for f in found if f not in used]
        chosen[role] = found[0] if found else None
        if role == "vehicle":
            vehicle_alternatives = found[1:]
    missing = [r for r in REQUIRED_ROLES if chosen[r] is None]
    if missing:
        what = {"lat": "latitude", "lon": "longitude", "time": "time"}
        raise RoadmapError(f"{path}: no {' / '.join(what[m] for m in missing)} column found (columns: "
                           f"{', '.join(names) or 'none'}); name it with --columns "
                           f"{','.join(f'{m}=NAME' for m in missing)}")
    cmap = ColumnMap(**chosen)  # type: ignore[arg-type]
    if cmap.lat == cmap.lon:
        raise RoadmapError(f"{path}: latitude and longitude are both column {cmap.lat!r}")
    return cmap, vehicle_alternatives


# ---- file sniffing -------------------------------------------------------------------------------------------
def file_format(path: Path) -> str:
    """'parquet' or 'csv' (by suffix, then by the Parquet magic bytes)."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise RoadmapError(f"--gps {path}: cannot read ({exc.strerror})") from exc
    return "parquet" if head == b"PAR1" else "csv"


def _head_bytes(path: Path, n: int = 1 << 16) -> bytes:
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        if name.endswith(".bz2"):
            with bz2.open(path, "rb") as fh:
                return fh.read(n)
        with open(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError) as exc:
        raise RoadmapError(f"--gps {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc


def unique_names(names: list[str]) -> list[str]:
    """Header names made unique and non-empty (`col3`, `name.1`), as Arrow needs them."""
    out: list[str] = []
    seen: set[str] = set()
    for i, n in enumerate(names):
        n = n.strip("\ufeff") or f"col{i + 1}"
        base, k = n, 1
        while n in seen:
            n = f"{base}.{k}"
            k += 1
        seen.add(n)
        out.append(n)
    return out


def sniff_csv(path: Path) -> tuple[str, list[str]]:
    """(delimiter, header names) of a delimited text file, from its first 64 KiB."""
    raw = _head_bytes(path)
    if not raw.strip():
        raise RoadmapError(f"--gps {path}: file is empty")
    if b"\x00" in raw:
        raise RoadmapError(f"--gps {path}: binary data, not a CSV text file (nor Parquet)")
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = text.splitlines()
    if len(raw) >= (1 << 16) and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut short
    lines = lines[:50]
    header = lines[0]
    if not header.strip():
        raise RoadmapError(f"--gps {path}: first line is empty; expected a header row of column names")
    best: tuple[tuple[int, int], str, list[str]] | None = None
    for delim in CSV_DELIMITERS:
        fields = next(pycsv.reader([header], delimiter=delim))
        if len(fields) < 2:
            continue
        body = [ln for ln in lines[1:21] if ln.strip()]
        same = sum(len(next(pycsv.reader([ln], delimiter=delim))) == len(fields) for ln in body)
        consistent = int(not body or same >= 0.8 * len(body))
        score = (consistent, len(fields))
        if best is None or score > best[0]:
            best = (score, delim, fields)
    if best is None:
        raise RoadmapError(f"--gps {path}: no delimiter (comma, semicolon, tab or |) in the first line; "
                           "expected a header row of column names")
    return best[1], unique_names([f.strip() for f in best[2]])


# ---- value parsing -------------------------------------------------------------------------------------------
def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _to_numpy_f8(arr: pa.Array) -> np.ndarray:
    return np.array(arr.to_numpy(zero_copy_only=False), dtype=np.float64)  # a writable copy


def _lenient_numbers(arr: pa.Array) -> pa.Array:
    """float64 Array with null wherever the text is not a number (decimal commas accepted)."""
    s = pc.replace_substring(pc.utf8_trim_whitespace(arr), ",", ".")
    ok = pc.fill_null(pc.match_substring_regex(s, _NUM_RE), False)
    return pc.cast(pc.if_else(ok, s, pa.scalar(None, s.type)), pa.float64())


def _null_mask(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.zeros(len(arr), dtype=bool)
    return np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def parse_numbers(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values with NaN where missing or bad, missing mask, unparsable mask)."""
    arr = _plain(arr)
    missing = _null_mask(arr)
    t = arr.type
    bad = np.zeros(len(arr), dtype=bool)
    if _is_text(t):
        try:
            v = _to_numpy_f8(pc.cast(arr, pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            vals = _lenient_numbers(arr)
            v = _to_numpy_f8(vals)
            blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""), False)
            missing |= np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
            bad = ~missing & _null_mask(vals)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        v = _to_numpy_f8(pc.cast(arr, pa.float64()))
    else:
        v = np.full(len(arr), np.nan)
        bad = ~missing
    fin = np.isfinite(v)
    if not fin.all():
        # NaN/inf stored as numbers mean "no value".
        missing |= ~fin & ~bad
        v[~fin] = np.nan
    return v, missing, bad


def _epoch_from_timestamps(arr: pa.Array) -> np.ndarray:
    unit = arr.type.unit
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[unit]
    ints = pc.cast(arr, pa.int64())
    return _to_numpy_f8(ints) / scale


def _parse_iso(arr: pa.Array) -> np.ndarray:
    """Epoch seconds of ISO 8601 text (NaN where unparsable); no zone means UTC."""
    for typ in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return _epoch_from_timestamps(pc.cast(arr, typ))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    trimmed = pc.utf8_trim_whitespace(arr)
    for typ in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return _epoch_from_timestamps(pc.cast(trimmed, typ))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    # Mixed zones or some bad values: pandas parses each, coercing failures to NaT (slow path, rare).
    import pandas as pd

    s = pd.Series(trimmed.to_pylist(), dtype=object)
    ts = pd.to_datetime(s, errors="coerce", utc=True, format="ISO8601")
    out = ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    return out


EPOCH_SCALES = (("epoch_ns", 1e17, 1e9), ("epoch_us", 1e14, 1e6), ("epoch_ms", 1e11, 1e3), ("epoch_s", 0.0, 1.0))


def _epoch_kind(values: np.ndarray) -> tuple[str, float]:
    v = np.abs(values[np.isfinite(values)])
    med = float(np.median(v)) if v.size else 0.0
    for kind, threshold, scale in EPOCH_SCALES:
        if med >= threshold:
            return kind, scale
    return "epoch_s", 1.0


@dataclass
class TimeFormat:
    """How one file's time column is read; fixed from its first batch with values."""

    kind: str | None = None  # epoch_s | epoch_ms | epoch_us | epoch_ns | iso | timestamp | date
    scale: float = 1.0

    def parse(self, arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch seconds with NaN where missing/bad, missing mask, unparsable mask)."""
        arr = _plain(arr)
        n = len(arr)
        missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        t = arr.type
        if pa.types.is_timestamp(t):
            self.kind = self.kind or "timestamp"
            v = _epoch_from_timestamps(arr)
            return v, missing | np.isnan(v), np.zeros(n, dtype=bool)
        if pa.types.is_date(t):
            self.kind = self.kind or "date"
            v = _epoch_from_timestamps(pc.cast(arr, pa.timestamp("s")))
            return v, missing | np.isnan(v), np.zeros(n, dtype=bool)
        if self.kind is None and missing.all():
            return np.full(n, np.nan), missing, np.zeros(n, dtype=bool)
        if _is_text(t):
            if self.kind is None:
                nums, _, bad = parse_numbers(arr)
                valid = ~missing
                if bad.sum() <= 0.5 * valid.sum():
                    self.kind, self.scale = _epoch_kind(nums)
                else:
                    self.kind = "iso"
            if self.kind == "iso":
                v = _parse_iso(arr)
                bad = ~missing & ~np.isfinite(v)
                return v, missing, bad
            nums, m2, bad = parse_numbers(arr)
            return nums / self.scale, m2, bad
        nums, m2, bad = parse_numbers(arr)
        if self.kind is None:
            self.kind, self.scale = _epoch_kind(nums)
        if not self.kind.startswith("epoch"):
            return np.full(n, np.nan), missing, ~missing
        return nums / self.scale, m2, bad


# ---- vehicles and drop bookkeeping ---------------------------------------------------------------------------
class VehicleIndex:
    """Vehicle id text -> dense int code, shared by all files (so one vehicle may span several files)."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, name: str) -> int:
        c = self.codes.get(name)
        if c is None:
            c = len(self.names)
            self.codes[name] = c
            self.names.append(name)
        return c

    @staticmethod
    def dictionary(arr: pa.Array | pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
        """(distinct ids as text, int64 index into them per row, -1 where missing). Thread-safe."""
        arr = _plain(arr)
        if pa.types.is_floating(arr.type):
            vals = _to_numpy_f8(arr)
            fin = vals[np.isfinite(vals)]
            if fin.size == 0 or np.all(fin == np.round(fin)):
                arr = pc.cast(pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr), pa.int64())
        if not _is_text(arr.type):
            arr = pc.cast(arr, pa.string())
        enc = pc.dictionary_encode(arr)
        idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        trimmed = pc.utf8_trim_whitespace(enc.dictionary)  # cleaned per distinct value, not per row
        blank = np.asarray(pc.equal(trimmed, "").to_numpy(zero_copy_only=False), dtype=bool)
        if blank.any():
            idx[np.append(blank, False)[idx]] = -1
        return trimmed.to_pylist(), idx

    def codes_for(self, names: list[str], idx: np.ndarray) -> np.ndarray:
        """int32 codes for `dictionary()` output (-1 stays -1); codes are given in first-seen order."""
        get = self.codes.get
        found = [get(v, -1) for v in names]
        if -1 in found:
            found = [c if c >= 0 or v == "" else self.code(v) for v, c in zip(names, found, strict=True)]
        lut = np.array(found + [-1], dtype=np.int32)
        return lut[idx]  # idx -1 picks the trailing -1

    def encode(self, arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int32 codes of a column of ids (-1 where missing); one Python step per distinct id in the batch."""
        return self.codes_for(*self.dictionary(arr))


@dataclass
class DropLog:
    """Dropped rows per reason, with one example per reason (for the report and error messages)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, n: int, example: str | None = None) -> None:
        if n <= 0:
            return
        self.counts[reason] += int(n)
        if example is not None and reason not in self.examples:
            self.examples[reason] = example

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def worst(self, k: int = 3) -> list[tuple[str, int]]:
        return sorted(((r, c) for r, c in self.counts.items() if c), key=lambda rc: -rc[1])[:k]

    def summary(self) -> str:
        """'reason count, reason count; e.g. <example of the worst reason>'."""
        worst = self.worst()
        text = ", ".join(f"{r} {c}" for r, c in worst)
        if worst and worst[0][0] in self.examples:
            text += f"; e.g. {self.examples[worst[0][0]]}"
        return text


# ---- reading one file ----------------------------------------------------------------------------------------
@dataclass
class _Pending:
    """A batch parsed and validated off the main thread; vehicle codes are assigned later, in file order."""

    n: int
    veh_names: list[str] | None
    veh_idx: np.ndarray | None
    time: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    speed: np.ndarray
    bearing: np.ndarray
    drops: list[tuple[str, int, str]]


@dataclass
class ParsedBatch:
    """Valid rows of one batch: vehicle code, epoch seconds, degrees, speed (m/s) and bearing (NaN unknown)."""

    vehicle: np.ndarray  # int32
    time: np.ndarray  # float64
    lon: np.ndarray  # float64
    lat: np.ndarray  # float64
    speed: np.ndarray  # float32
    bearing: np.ndarray  # float32
    rows: int  # rows read in this batch (kept + dropped)


class GpsFile:
    """One GPS file: header inspection (cheap), then parsed and validated batches."""

    # CSV blocks are parsed on the reading thread: the batches are then converted on the ingest worker threads,
    # and Arrow's own parse threads measured slower (more CPU, no faster) next to them on small machines.
    arrow_threads = False

    def __init__(self, path: str | Path, overrides: dict[str, str | None] | None = None, *,
                 gps_crs: Any = None, speed_unit: str = "km/h", block_size: int = 2 << 20) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise RoadmapError(f"--gps {self.path}: no such file")
        if self.path.is_dir():
            raise RoadmapError(f"--gps {self.path}: is a folder; give the files (or a folder of them)")
        if speed_unit not in SPEED_UNITS:
            raise RoadmapError(f"--speed-unit {speed_unit}: expected one of {', '.join(SPEED_UNITS)}")
        self.overrides = dict(overrides or {})
        self.speed_factor = SPEED_UNITS[speed_unit]
        self.block_size = int(block_size)
        self.gps_crs = gps_crs
        self.format = file_format(self.path)
        self.delimiter: str | None = None
        self.names = self._read_names()
        self.columns, self._vehicle_alternatives = detect_columns(self.names, self.path, self.overrides)
        self.time_format = TimeFormat()
        self.rows_read = 0
        self.malformed = 0
        self._malformed_example: str | None = None
        self.vehicle_note: str | None = None
        self._local = threading.local()

    # header ----------------------------------------------------------------------------------------------
    def _read_names(self) -> list[str]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                schema = pq.read_schema(self.path)
            except (pa.ArrowException, OSError) as exc:
                raise RoadmapError(f"--gps {self.path}: not a readable Parquet file "
                                   f"({str(exc).splitlines()[0]})") from exc
            return list(schema.names)
        self.delimiter, names = sniff_csv(self.path)
        return names

    def describe(self) -> dict[str, Any]:
        """What was detected (for ingest_report.json)."""
        return {
            "path": str(self.path.resolve()),
            "format": self.format,
            "delimiter": self.delimiter,
            "columns": self.columns.as_dict(),
            "time_format": self.time_format.kind,
            "rows_read": self.rows_read,
            "vehicle_note": self.vehicle_note,
        }

    # batches ---------------------------------------------------------------------------------------------
    def _raw_batches(self, cols: list[str], count_malformed: bool = True) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(self.path)
                yield from pf.iter_batches(batch_size=max(1024, self.block_size // 64), columns=cols)
            except (pa.ArrowException, OSError) as exc:
                raise RoadmapError(f"--gps {self.path}: cannot read Parquet data "
                                   f"({str(exc).splitlines()[0]})") from exc
            return
        import pyarrow.csv as pacsv

        def on_invalid(row: Any) -> str:  # called from Arrow's threads, also after a probe is closed
            if not count_malformed:
                return "skip"
            self.malformed += 1
            if self._malformed_example is None:
                where = f" row {row.number}" if row.number is not None and row.number >= 0 else ""
                self._malformed_example = (f"{self.path.name}{where}: {row.actual_columns} fields, expected "
                                           f"{row.expected_columns}: {row.text[:120]!r}")
            return "skip"

        read = pacsv.ReadOptions(column_names=self.names, skip_rows=1, block_size=self.block_size,
                                 use_threads=self.arrow_threads)
        parse = pacsv.ParseOptions(delimiter=self.delimiter or ",", invalid_row_handler=on_invalid)
        conv = pacsv.ConvertOptions(include_columns=cols, column_types=dict.fromkeys(cols, pa.string()),
                                    strings_can_be_null=True, quoted_strings_can_be_null=True)
        try:
            reader = pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=conv)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                yield batch
        except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError) as exc:
            raise RoadmapError(f"--gps {self.path}: cannot read as CSV ({str(exc).splitlines()[0]})") from exc

    def _settle_vehicle(self, first: pa.RecordBatch) -> None:
        """Skip vehicle candidates whose values are all distinct (row ids), unless named by --columns."""
        if "vehicle" in self.overrides:
            return
        names = first.schema.names
        candidates = [c for c in [self.columns.vehicle, *self._vehicle_alternatives] if c is not None and c in names]
        chosen = None
        for c in candidates:
            col = first.column(names.index(c))
            n_valid = len(col) - col.null_count
            if n_valid >= 2 and pc.count_distinct(col, mode="only_valid").as_py() == n_valid:
                log.info("%s: column %r has a different value on every row: not a vehicle id", self.path.name, c)
                continue
            chosen = c
            break
        self.columns.vehicle = chosen
        if chosen is None:
            self.vehicle_note = "no vehicle column: the whole file is one vehicle"
            log.warning("%s: no vehicle id column; treating the whole file as one vehicle", self.path.name)

    def batches(self, vehicles: VehicleIndex, drops: DropLog, pool: Executor | None = None,
                ahead: int = 2) -> Iterator[ParsedBatch]:
        """Parsed, validated batches in file order; dropped rows are counted in `drops`.

        With `pool`, batches are parsed on its threads (Arrow and numpy release the GIL) while the next ones
        are read; vehicle codes, drop examples and row numbers still follow file order, so the result is the
        same as without it.
        """
        settled = False
        if self._vehicle_alternatives and "vehicle" not in self.overrides:
            # Probe the first block with every vehicle candidate, then read the file with the chosen one only.
            cols = self.columns.selected() + [c for c in self._vehicle_alternatives
                                              if c not in self.columns.selected()]
            gen = self._raw_batches(cols, count_malformed=False)
            probe = next(gen, None)
            gen.close()
            if probe is not None:
                self._settle_vehicle(probe)
            settled = True
        queue: deque[Future[_Pending]] = deque()
        for raw in self._raw_batches(self.columns.selected()):
            if not settled:
                self._settle_vehicle(raw)
                settled = True
            row_base = self.rows_read
            self.rows_read += raw.num_rows
            if pool is None or self.time_format.kind is None:
                while queue:
                    yield self._finish(queue.popleft().result(), vehicles, drops)
                yield self._finish(self._parse(raw, row_base), vehicles, drops)
                continue
            queue.append(pool.submit(self._parse, raw, row_base))
            while len(queue) > ahead:
                yield self._finish(queue.popleft().result(), vehicles, drops)
        while queue:
            yield self._finish(queue.popleft().result(), vehicles, drops)
        if self.malformed:
            drops.add("malformed_row", self.malformed, self._malformed_example)
            self.rows_read += self.malformed
            self.malformed = 0

    def _finish(self, p: _Pending, vehicles: VehicleIndex, drops: DropLog) -> ParsedBatch:
        for name, k, example in p.drops:
            drops.add(name, k, example)
        if p.veh_idx is not None:
            assert p.veh_names is not None
            veh = vehicles.codes_for(p.veh_names, p.veh_idx)
        else:
            veh = np.full(p.time.size, vehicles.code(self._file_vehicle_name(vehicles)), dtype=np.int32)
        return ParsedBatch(veh, p.time, p.lon, p.lat, p.speed, p.bearing, p.n)

    def _example(self, raw: pa.RecordBatch, i: int, row_base: int) -> str:
        cm = self.columns
        parts = []
        for role in ("lat", "lon", "time", "vehicle"):
            name = getattr(cm, role)
            if name is None or name not in raw.schema.names:
                continue
            parts.append(f"{name}={raw.column(raw.schema.names.index(name))[i].as_py()!r}")
        return f"{self.path.name} row {row_base + i + 1}: " + ", ".join(parts)

    def _parse(self, raw: pa.RecordBatch, row_base: int) -> _Pending:
        """Parse and validate one batch (no shared state is changed once the time format is known)."""
        cm = self.columns
        n = raw.num_rows
        names = raw.schema.names

        def col(name: str) -> pa.Array:
            return raw.column(names.index(name))

        y, y_miss, y_bad = parse_numbers(col(cm.lat))
        x, x_miss, x_bad = parse_numbers(col(cm.lon))
        t, t_miss, t_bad = self.time_format.parse(col(cm.time))
        veh_names: list[str] | None = None
        veh_idx: np.ndarray | None = None
        veh_missing = np.zeros(n, dtype=bool)
        if cm.vehicle is not None:
            veh_names, veh_idx = VehicleIndex.dictionary(col(cm.vehicle))
            veh_missing = veh_idx < 0
        if self.gps_crs is not None:
            lon, lat = self._unproject(x, y)
        else:
            lon, lat = x, y
        with np.errstate(invalid="ignore"):
            out_of_range = ~((np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0))
        reason = np.zeros(n, dtype=np.uint8)
        checks = (
            ("missing_vehicle", veh_missing),
            ("missing_coordinates", x_miss | y_miss),
            ("unparsable_coordinates", x_bad | y_bad),
            ("missing_time", t_miss),
            ("unparsable_time", t_bad),
            ("coordinates_out_of_range", out_of_range),
            ("zero_zero", (x == 0.0) & (y == 0.0) if self.gps_crs is None else np.zeros(n, dtype=bool)),
        )
        dropped: list[tuple[str, int, str]] = []
        for code, (name, mask) in enumerate(checks, start=1):
            if not mask.any():
                continue
            hit = mask & (reason == 0)
            k = int(np.count_nonzero(hit))
            if k:
                reason[hit] = code
                dropped.append((name, k, self._example(raw, int(np.argmax(hit)), row_base)))
        speed = np.full(n, np.nan, dtype=np.float32)
        bearing = np.full(n, np.nan, dtype=np.float32)
        if cm.speed is not None:
            s, _, _ = parse_numbers(col(cm.speed))
            with np.errstate(invalid="ignore"):
                s[s < 0] = np.nan  # -1 and similar mean "unknown"
            speed = (s * self.speed_factor).astype(np.float32)
        if cm.bearing is not None:
            b, _, _ = parse_numbers(col(cm.bearing))
            bearing = np.mod(b, 360.0).astype(np.float32)
        if dropped:
            keep = reason == 0
            t, lon, lat, speed, bearing = t[keep], lon[keep], lat[keep], speed[keep], bearing[keep]
            if veh_idx is not None:
                veh_idx = veh_idx[keep]
        return _Pending(n, veh_names, veh_idx, t, lon, lat, speed, bearing, dropped)

    def _file_vehicle_name(self, vehicles: VehicleIndex) -> str:
        if not hasattr(self, "_own_vehicle"):
            name = self.path.name
            k = 2
            while name in vehicles.codes:
                name = f"{self.path.name}#{k}"
                k += 1
            self._own_vehicle = name
        return self._own_vehicle

    def _unproject(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from pyproj import Transformer

        tr = getattr(self._local, "inv", None)  # pyproj transformers are not thread-safe: one per thread
        if tr is None:
            tr = self._local.inv = Transformer.from_crs(self.gps_crs, "EPSG:4326", always_xy=True)
        lon, lat = tr.transform(x, y, errcheck=False)
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        return lon, lat


# ---- statistics helpers --------------------------------------------------------------------------------------
def guess_quantum(values: np.ndarray) -> float | None:
    """The coarsest power of ten that (nearly) every value is a multiple of: the coordinates' quantisation."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)][:100_000]
    if v.size < 2:
        return None
    for k in range(-3, 10):
        q = 10.0 ** (-k)
        r = v / q
        if np.mean(np.abs(r - np.round(r)) < 1e-3) >= 0.99:
            return q
    return None


def describe_quantum(lat_q: float | None, lon_q: float | None, mean_lat: float) -> dict[str, Any]:
    """Quantisation guess in degrees and in metres on the ground."""
    m_per_deg = 111_320.0
    out: dict[str, Any] = {"lat_step_deg": lat_q, "lon_step_deg": lon_q}
    out["lat_step_m"] = None if lat_q is None else round(lat_q * m_per_deg, 4)
    out["lon_step_m"] = None if lon_q is None else round(lon_q * m_per_deg * math.cos(math.radians(mean_lat)), 4)
    return out


def expand_gps_paths(paths: list[str | Path]) -> list[Path]:
    """--gps values to files: a folder stands for the GPS files directly inside it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(GPS_SUFFIXES))
            if not found:
                raise RoadmapError(f"--gps {p}: folder holds no GPS files (.csv, .csv.gz, .parquet)")
            out.extend(found)
        else:
            if not p.exists():
                raise RoadmapError(f"--gps {p}: no such file")
            out.append(p)
    return out
