"""Reading GPS files for `roadmap ingest`: CSV, CSV.gz and Parquet, in Arrow record batches.

What this module decides, and why:

- **Delimiter and columns** are detected from the header (comma, semicolon, tab or `|`; common names such as
  lat/latitude/y, lon/lng/longitude/x, time/timestamp/ts/t, vehicle_id/taxi_id/trip_id/id, speed/velocity,
  bearing/heading/dir/angle). A vehicle candidate whose every value is distinct (a row id) is skipped, so a
  file with `id` and `vehicle_id` uses `vehicle_id`. `--columns lat=..,lon=..` overrides any role.
- **Values are parsed leniently but vectorised**: the first block is read as text and decides, per column,
  whether Arrow's CSV reader can convert the column itself (numbers to float64, ISO times to timestamps, with
  or without zone as the block shows); the file is then read with those types, which saves materialising
  every value as text. A value the typed reader cannot convert switches the rest of the file (or that byte
  range) to text, and text goes through Arrow casts, then, for a batch whose fast cast fails, a slower path
  (regex filtering for numbers, decimal commas, pandas for mixed-zone ISO times) that turns bad values into
  "unparsable" instead of aborting the file. Either way the rows, values and drops are the same.
- **Speed**: a plain CSV file is parsed by byte ranges cut at line ends on several threads (Arrow's streaming
  reader parses on the calling thread only); numbers come out of Arrow buffers as numpy views (`to_numpy()`
  would import pandas, which costs more than reading a million rows); vehicle ids are looked up in Arrow, a
  Python string per id only for ids not seen before; Arrow allocates from jemalloc (or the system allocator)
  while reading, see `reader_memory_pool()`.
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
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
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


_POOL: list[pa.MemoryPool] = []


def reader_memory_pool() -> pa.MemoryPool:
    """The Arrow memory pool GPS reading allocates from: jemalloc where pyarrow has it, else the system allocator.

    Arrow's default mimalloc pool hands freed pages back to the OS after a short delay and maps them again for
    the next block, as transparent huge pages that the kernel zeroes each time: ingesting a few million rows
    spent about a fifth of its time zeroing pages, and about half as much system time with these pools.
    """
    if not _POOL:
        try:
            _POOL.append(pa.jemalloc_memory_pool())
        except (NotImplementedError, pa.ArrowNotImplementedError):
            _POOL.append(pa.system_memory_pool())
    return _POOL[0]


@contextmanager
def reading_pool() -> Iterator[None]:
    """Make `reader_memory_pool()` Arrow's default pool inside the block (for the buffers Arrow allocates
    without a pool argument: file blocks, compute kernels), then restore the previous default. Buffers keep a
    reference to the pool they came from, so they may outlive the block."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(reader_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


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


def _bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """A bool array of `n` bits of an Arrow bitmap starting at bit `offset`."""
    raw = np.frombuffer(buf, dtype=np.uint8, count=(offset + n + 7) // 8)
    return np.unpackbits(raw, count=offset + n, bitorder="little")[offset:].view(np.bool_)


def _valid(arr: pa.Array) -> np.ndarray | None:
    """Validity of each slot (None when there are no nulls)."""
    if arr.null_count == 0:
        return None
    buf = arr.buffers()[0]
    return _bits(buf, arr.offset, len(arr))


def _values(arr: pa.Array, dtype: Any) -> np.ndarray:
    """The data buffer of a fixed-width Arrow array as a (read-only) numpy view; null slots hold junk.

    Arrow's own `to_numpy()` initialises its pandas support (importing pandas costs more than reading a few
    million rows), so ingest reads buffers directly.
    """
    dt = np.dtype(dtype)
    if pa.types.is_boolean(arr.type):
        return _bits(arr.buffers()[1], arr.offset, len(arr))
    return np.frombuffer(arr.buffers()[1], dtype=dt, count=len(arr), offset=arr.offset * dt.itemsize)


def _to_numpy_f8(arr: pa.Array) -> np.ndarray:
    """float64 values of a numeric Arrow array, NaN where null (a new writable array)."""
    t = arr.type
    if not pa.types.is_floating(t) or t.bit_width != 64:
        arr = pc.cast(arr, pa.float64())
    v = _values(arr, np.float64).copy()
    valid = _valid(arr)
    if valid is not None:
        v[~valid] = np.nan
    return v


def _f8_view(arr: pa.Array) -> np.ndarray:
    """Like `_to_numpy_f8`, but a read-only view of Arrow's buffer when there are no nulls (no copy)."""
    if pa.types.is_float64(arr.type) and arr.null_count == 0:
        return _values(arr, np.float64)
    return _to_numpy_f8(arr)


def _bool(arr: pa.Array) -> np.ndarray:
    """bool values of a BooleanArray, False where null."""
    v = _values(arr, np.bool_)
    valid = _valid(arr)
    return v & valid if valid is not None else v


def _lenient_numbers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, NaN wherever the text is not a number; mask of those numbers); decimal commas accepted."""
    s = pc.replace_substring(pc.utf8_trim_whitespace(arr), ",", ".")
    ok = pc.match_substring_regex(s, _NUM_RE)
    v = np.full(len(arr), np.nan)
    is_num = _bool(ok)
    v[is_num] = _to_numpy_f8(pc.cast(pc.filter(s, ok), pa.float64()))
    return v, is_num


def _blank(arr: pa.Array) -> np.ndarray:
    """Text that is empty or only whitespace (False where null)."""
    lengths = pc.utf8_length(pc.utf8_trim_whitespace(arr))
    out = _values(lengths, np.int64 if pa.types.is_large_string(arr.type) else np.int32) == 0
    valid = _valid(lengths)
    return out & valid if valid is not None else out


def _null_mask(arr: pa.Array) -> np.ndarray:
    valid = _valid(arr)
    return np.zeros(len(arr), dtype=bool) if valid is None else ~valid


def parse_numbers(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values with NaN where missing or bad, missing mask, unparsable mask).

    The values may be a read-only view of the Arrow buffer (a float64 column without nulls or non-finite values).
    """
    arr = _plain(arr)
    missing = _null_mask(arr)
    t = arr.type
    bad = np.zeros(len(arr), dtype=bool)
    if _is_text(t):
        try:
            v = _to_numpy_f8(pc.cast(arr, pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            v, is_num = _lenient_numbers(arr)
            missing |= _blank(arr)
            bad = ~missing & ~is_num
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        v = _f8_view(arr)
    else:
        v = np.full(len(arr), np.nan)
        bad = ~missing
    fin = np.isfinite(v)
    if not fin.all():
        # NaN/inf stored as numbers mean "no value".
        missing |= ~fin & ~bad
        v = np.where(fin, v, np.nan)
    return v, missing, bad


def _casts(arr: pa.Array, typ: pa.DataType) -> bool:
    """Whether every value of `arr` casts to `typ` (Arrow stops at the first that does not)."""
    try:
        pc.cast(arr, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _epoch_from_timestamps(arr: pa.Array) -> np.ndarray:
    unit = arr.type.unit
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[unit]
    out = _values(arr, np.int64) / scale
    valid = _valid(arr)
    if valid is not None:
        out[~valid] = np.nan
    return out


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
        missing = _null_mask(arr)
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
                if _casts(arr, pa.timestamp("us")) or _casts(arr, pa.timestamp("us", tz="UTC")):
                    self.kind = "iso"  # the common case, decided without scanning the text for numbers
                else:
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
def _string_array(values: list[str]) -> pa.Array:
    """A utf8 Arrow array of Python strings, built from buffers (`pa.array` would import pandas)."""
    data = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


class VehicleIndex:
    """Vehicle id text -> dense int code, shared by all files (so one vehicle may span several files)."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []
        self._known: pa.Array = _string_array([])  # the names as Arrow text, position = code (may lag behind)

    def code(self, name: str) -> int:
        c = self.codes.get(name)
        if c is None:
            c = len(self.names)
            self.codes[name] = c
            self.names.append(name)
        return c

    @staticmethod
    def arrow_dictionary(arr: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
        """(distinct ids as Arrow text, trimmed; int64 index into them per row, -1 where missing or blank).
        Thread-safe."""
        arr = _plain(arr)
        if pa.types.is_floating(arr.type):
            vals = _to_numpy_f8(arr)
            fin = vals[np.isfinite(vals)]
            if fin.size == 0 or np.all(fin == np.round(fin)):
                arr = pc.cast(pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr), pa.int64())
        if not _is_text(arr.type):
            arr = pc.cast(arr, pa.string())
        enc = pc.dictionary_encode(arr)
        idx = _values(enc.indices, np.int32).astype(np.int64)
        valid = _valid(enc.indices)
        if valid is not None:
            idx[~valid] = -1
        trimmed = pc.utf8_trim_whitespace(enc.dictionary)  # cleaned per distinct value, not per row
        blank = _blank(trimmed)
        if blank.any():
            idx[np.append(blank, False)[idx]] = -1
        return trimmed, idx

    @staticmethod
    def dictionary(arr: pa.Array | pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
        """(distinct ids as text, int64 index into them per row, -1 where missing). Thread-safe."""
        names, idx = VehicleIndex.arrow_dictionary(arr)
        return names.to_pylist(), idx

    def known(self, names: pa.Array, idx: np.ndarray) -> np.ndarray | None:
        """int32 codes for `arrow_dictionary()` output when every id it uses is known already, else None.

        Looks the ids up in Arrow (no Python string per id) and assigns nothing, so worker threads may call it
        while the owner assigns codes: a code found is final; an id not found yet is left to `codes_for`.
        """
        known = self._known
        pos = pc.index_in(names, value_set=known)
        lut = np.append(_values(pos, np.int32), -1)
        valid = _valid(pos)
        if valid is not None:
            used = np.zeros(len(names) + 1, dtype=bool)
            used[idx] = True
            if np.any(used[:-1] & ~valid):
                return None
            lut[:-1][~valid] = -1
        return lut[idx]

    def codes_for(self, names: list[str] | pa.Array, idx: np.ndarray) -> np.ndarray:
        """int32 codes for `dictionary()` / `arrow_dictionary()` output (-1 stays -1); codes are given in
        first-seen order, to the ids that `idx` uses only: an id seen only on rows dropped before this call gets
        no code (so the codes do not depend on how rows are cut into batches, nor on thread timing)."""
        if isinstance(names, pa.Array):
            names = names.to_pylist()
        get = self.codes.get
        found = [get(v, -1) for v in names]
        if -1 in found:
            n = len(self.names)
            used = np.zeros(len(names) + 1, dtype=bool)
            used[idx] = True
            found = [c if c >= 0 or v == "" or not u else self.code(v)
                     for v, c, u in zip(names, found, used[:-1].tolist(), strict=True)]
            if len(self.names) > n:
                self._known = _string_array(self.names)
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
    veh_names: pa.Array | None  # the batch's distinct ids (Arrow text)
    veh_idx: np.ndarray | None
    time: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    speed: np.ndarray
    bearing: np.ndarray
    drops: list[tuple[str, int, str]]
    veh_codes: np.ndarray | None = None  # final codes, when every id of the batch was known already


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


@dataclass
class _Range:
    """One byte range of a CSV file parsed on its own (see `GpsFile._parse_range`)."""

    batches: list[pa.RecordBatch]
    lines: int  # physical lines in the range
    malformed: int
    first_malformed: tuple[int, int, int, str] | None  # (line in the range from 1, fields, expected, text)
    typed: bool  # False when the typed read failed and the range was read as text
    note: str | None


COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".lz4", ".br", ".xz")


class _TypedReadFailed(Exception):
    """A CSV value the typed reader could not convert (the rest of the file, or that range, is read as text)."""


class GpsFile:
    """One GPS file: header inspection (cheap), then parsed and validated batches."""

    # Arrow's streaming CSV reader parses on the thread that asks for the next batch whatever `use_threads` says
    # (measured: its own threads only read ahead), so parallel parsing is done by byte ranges (below) instead.
    arrow_threads = False
    # CSV columns are converted to numbers and timestamps by Arrow's reader where the first block allows.
    typed_read = True
    # Plain CSV files of at least two ranges are parsed a byte range at a time on `range_threads` threads (cut
    # at line ends), when `batches()` is given a pool: Arrow's streaming reader parses on the calling thread.
    range_bytes = 4 << 20
    range_threads = 2

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
        self._generation = 0  # bumped when a reader is abandoned, so its late malformed-row callbacks are ignored
        self.vehicle_note: str | None = None
        self.read_mode = "parquet" if self.format == "parquet" else "text"  # how the CSV columns were converted
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
            "read_mode": self.read_mode,
            "rows_read": self.rows_read,
            "vehicle_note": self.vehicle_note,
        }

    def estimate_rows(self) -> int:
        """Rough number of data rows, from the file size and the head's line lengths (exact for Parquet).

        Ingest uses it to decide up front whether the rows fit its in-memory budget; a wrong guess only costs
        speed (ingest switches to spilling to disk when the budget is exceeded).
        """
        try:
            size = self.path.stat().st_size
            if self.format == "parquet":
                import pyarrow.parquet as pq

                return int(pq.ParquetFile(self.path).metadata.num_rows)
            name = self.path.name.lower()
            raw_size = size
            if name.endswith(".gz"):
                with open(self.path, "rb") as fh:  # ISIZE: uncompressed size mod 2**32 (of the last member)
                    fh.seek(max(0, size - 4))
                    isize = int.from_bytes(fh.read(4), "little")
                raw_size = isize if size < (1 << 32) and isize >= size else 4 * size
            elif name.endswith(".bz2"):
                raw_size = 6 * size
            head = _head_bytes(self.path)
            lines = head.count(b"\n")
            if lines <= 1:
                return 1
            return int(raw_size / (len(head) / lines))
        except (OSError, pa.ArrowException, RoadmapError):
            return 0

    # batches ---------------------------------------------------------------------------------------------
    @property
    def parquet_batch_rows(self) -> int:
        """Rows per batch read from a Parquet file (the last batch may be shorter)."""
        return max(1024, self.block_size // 64)

    def _raw_batches(self, cols: list[str], count_malformed: bool = True,
                     types: dict[str, pa.DataType] | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of columns `cols` (CSV: text, or the Arrow types in `types`; one batch per block).

        With `types`, a value Arrow cannot convert raises `_TypedReadFailed` (the caller re-reads as text).
        """
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(self.path)
                yield from pf.iter_batches(batch_size=self.parquet_batch_rows, columns=cols)
            except (pa.ArrowException, OSError) as exc:
                raise RoadmapError(f"--gps {self.path}: cannot read Parquet data "
                                   f"({str(exc).splitlines()[0]})") from exc
            return
        import pyarrow.csv as pacsv

        generation = self._generation

        def on_invalid(row: Any) -> str:  # called from Arrow's threads, also after a reader is abandoned
            if not count_malformed or generation != self._generation:
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
        column_types = {c: (types or {}).get(c, pa.string()) for c in cols}
        conv = pacsv.ConvertOptions(include_columns=cols, column_types=column_types,
                                    strings_can_be_null=True, quoted_strings_can_be_null=True)
        try:
            reader = pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=conv,
                                    memory_pool=reader_memory_pool())
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                yield batch
        except pa.ArrowInvalid as exc:
            if types:
                raise _TypedReadFailed(str(exc).splitlines()[0]) from exc
            raise RoadmapError(f"--gps {self.path}: cannot read as CSV ({str(exc).splitlines()[0]})") from exc
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

    def _column_types(self, probe: pa.RecordBatch) -> dict[str, pa.DataType]:
        """Arrow types for the CSV reader to convert to while parsing, judged on the first block (as text).

        Converting inside Arrow's CSV reader saves materialising every value as text and casting it again. A
        column gets a type only when the whole first block converts cleanly: numbers as float64, ISO times as
        timestamps (with or without zone, as the block shows), epoch times as float64; ids stay text.
        """
        cm = self.columns
        names = probe.schema.names
        wanted: dict[str, list[pa.DataType | None]] = {}

        def fits(name: str, typ: pa.DataType) -> bool:
            try:
                pc.cast(probe.column(names.index(name)), typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return False
            return True

        for role in ("lat", "lon", "speed", "bearing"):
            name = getattr(cm, role)
            if name is not None and name in names:
                wanted.setdefault(name, []).append(pa.float64() if fits(name, pa.float64()) else None)
        if cm.time in names:
            kind = self.time_format.kind
            typ: pa.DataType | None = None
            if kind is not None and kind.startswith("epoch") and fits(cm.time, pa.float64()):
                typ = pa.float64()
            elif kind == "iso":
                typ = next((t for t in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")) if fits(cm.time, t)),
                           None)
            wanted.setdefault(cm.time, []).append(typ)
        if cm.vehicle is not None:
            wanted.setdefault(cm.vehicle, []).append(None)
        return {name: ts[0] for name, ts in wanted.items() if ts[0] is not None and all(t == ts[0] for t in ts)}

    def _probe_head(self, cols: list[str]) -> pa.RecordBatch | None:
        """The first block of a plain CSV file as text, parsed from its bytes: the same rows as the reader's first
        batch, without its read-ahead (closing a streaming reader early waits for the blocks it read ahead).
        None for other files or when the block holds no row."""
        import pyarrow.csv as pacsv

        if self.format != "csv" or self.path.name.lower().endswith(COMPRESSED_SUFFIXES):
            return None
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(self.block_size)
                more = bool(fh.read(1))
        except OSError:
            return None
        if data[:2] == b"\x1f\x8b":
            return None
        if more:
            cut = data.rfind(b"\n")
            if cut <= 0:
                return None
            data = data[:cut + 1]
        read = pacsv.ReadOptions(column_names=self.names, skip_rows=1, block_size=self.block_size,
                                 use_threads=False)
        parse = pacsv.ParseOptions(delimiter=self.delimiter or ",", invalid_row_handler=lambda row: "skip")
        conv = pacsv.ConvertOptions(include_columns=cols, column_types=dict.fromkeys(cols, pa.string()),
                                    strings_can_be_null=True, quoted_strings_can_be_null=True)
        try:
            table = pacsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse,
                                   convert_options=conv, memory_pool=reader_memory_pool())
        except (pa.ArrowException, UnicodeDecodeError):
            return None
        if table.num_rows == 0:
            return None
        return table.combine_chunks().to_batches()[0]

    def _split_ranges(self) -> list[tuple[int, int]] | None:
        """Byte ranges of the data lines of a plain CSV file, each about `range_bytes` and ending just after a
        newline: the reader takes every newline for the end of a row (newlines inside quoted values are off in
        its options), so the rows are the same as read whole. None when the file is compressed, small, or not
        cut into lines by newline characters."""
        if self.format != "csv" or self.path.name.lower().endswith(COMPRESSED_SUFFIXES):
            return None
        try:
            size = self.path.stat().st_size
            if size < 2 * self.range_bytes:
                return None
            with open(self.path, "rb") as fh:
                if fh.read(2) == b"\x1f\x8b":
                    return None
                fh.seek(0)
                head = fh.read(1 << 16)
                start = head.find(b"\n") + 1
                if start <= 0 or b"\r" in head[:start - 2]:  # no newline in the head or CR-only line ends
                    return None
                ranges = []
                while start < size:
                    end = start + self.range_bytes
                    if end >= size - self.range_bytes // 4:
                        ranges.append((start, size))
                        break
                    fh.seek(end)
                    while True:
                        chunk = fh.read(1 << 16)
                        k = chunk.find(b"\n")
                        if k >= 0 or not chunk:
                            break
                        end += len(chunk)
                    if k < 0:
                        ranges.append((start, size))
                        break
                    end += k + 1
                    ranges.append((start, end))
                    start = end
        except OSError:
            return None
        return ranges if len(ranges) > 1 else None

    def _parse_range(self, start: int, end: int, cols: list[str], types: dict[str, pa.DataType]) -> _Range:
        """Parse bytes [start, end) of the file completely (on a range thread): typed as decided for the file,
        or as text when a value does not convert; malformed rows are counted per range."""
        import pyarrow.csv as pacsv

        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        note = None
        for attempt in ([types, {}] if types else [{}]):
            bad = [0, None]

            def on_invalid(row: Any, bad: list = bad) -> str:
                bad[0] += 1
                if bad[1] is None:
                    number = row.number if row.number is not None and row.number >= 0 else 0
                    bad[1] = (number, row.actual_columns, row.expected_columns, row.text[:120])
                return "skip"

            read = pacsv.ReadOptions(column_names=self.names, block_size=self.block_size, use_threads=False)
            parse = pacsv.ParseOptions(delimiter=self.delimiter or ",", invalid_row_handler=on_invalid)
            conv = pacsv.ConvertOptions(include_columns=cols,
                                        column_types={c: attempt.get(c, pa.string()) for c in cols},
                                        strings_can_be_null=True, quoted_strings_can_be_null=True)
            try:
                table = pacsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse,
                                       convert_options=conv, memory_pool=reader_memory_pool())
            except pa.ArrowInvalid as exc:
                if attempt:
                    note = str(exc).splitlines()[0]
                    continue
                raise RoadmapError(f"--gps {self.path}: cannot read as CSV ({str(exc).splitlines()[0]})") from exc
            except (pa.ArrowException, UnicodeDecodeError) as exc:
                raise RoadmapError(f"--gps {self.path}: cannot read as CSV ({str(exc).splitlines()[0]})") from exc
            return _Range(table.to_batches(), data.count(b"\n"), bad[0], bad[1], bool(attempt), note)
        raise AssertionError("unreachable")  # pragma: no cover

    def _range_blocks(self, ranges: list[tuple[int, int]], cols: list[str],
                      types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
        """Batches of every range in file order, the next ranges being parsed on other threads meanwhile."""
        threads = max(1, min(self.range_threads, os.cpu_count() or 1))
        line = 2  # the header is line 1
        as_text = 0
        with ThreadPoolExecutor(threads, thread_name_prefix="csv-range") as ex:
            todo = iter(ranges)
            queue: deque[Future[_Range]] = deque()
            for a, b in todo:
                queue.append(ex.submit(self._parse_range, a, b, cols, types))
                if len(queue) > threads:
                    break
            while queue:
                r = queue.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    queue.append(ex.submit(self._parse_range, nxt[0], nxt[1], cols, types))
                self.malformed += r.malformed
                if r.first_malformed is not None and self._malformed_example is None:
                    number, fields, expected, text = r.first_malformed
                    where = f" row {line + number - 1}" if number > 0 else ""
                    self._malformed_example = (f"{self.path.name}{where}: {fields} fields, expected {expected}: "
                                               f"{text!r}")
                if types and not r.typed:
                    as_text += 1
                    log.info("%s: %s; that part read as text", self.path.name, r.note)
                line += r.lines
                yield from r.batches
        typed = "typed: " + ", ".join(f"{c} {t}" for c, t in types.items()) if types else "text"
        self.read_mode = f"{typed}; {len(ranges)} ranges in parallel" + (
            f", {as_text} of them as text after a value that did not convert" if as_text else "")

    def probe(self) -> pa.RecordBatch | None:
        """The first block of the file (the selected columns and the other vehicle candidates), read as text for
        CSV; settles the vehicle column on it. None when the file holds no row. (`ingest --scheduler` probes a
        file here before handing its parts to workers, so that every part is read with the same settings.)"""
        cols = self.columns.selected()
        probe_cols = cols + [c for c in self._vehicle_alternatives if c not in cols]
        probe = self._probe_head(probe_cols)
        if probe is None:
            gen = self._raw_batches(probe_cols, count_malformed=False)
            probe = next(gen, None)
            gen.close()
        if probe is not None:
            self._settle_vehicle(probe)
        return probe

    def _blocks(self, parallel: bool = False) -> Iterator[pa.RecordBatch]:
        """The selected columns batch by batch: a probe of the first block settles the vehicle column, the time
        format and the column types; the file is then read typed, or as text after a conversion failure. With
        `parallel`, a large plain CSV file is parsed by byte ranges on several threads."""
        probe = self.probe()
        if probe is None:
            return
        cols = self.columns.selected()
        if self.format == "parquet":
            yield from self._raw_batches(cols)
            return
        self.time_format.parse(probe.column(probe.schema.names.index(self.columns.time)))
        types = self._column_types(probe) if self.typed_read else {}
        ranges = self._split_ranges() if parallel else None
        if ranges:
            yield from self._range_blocks(ranges, cols, types)
            return
        sizes: list[int] = []
        if types:
            self.read_mode = "typed: " + ", ".join(f"{c} {t}" for c, t in types.items())
            try:
                for batch in self._raw_batches(cols, types=types):
                    sizes.append(batch.num_rows)
                    yield batch
                return
            except _TypedReadFailed as exc:
                log.info("%s: %s; reading the rest as text", self.path.name, exc)
                self.read_mode = f"text from block {len(sizes) + 1} ({exc})"
            # Blocks are cut at the same bytes whatever the column types: skip the ones already delivered. Their
            # malformed rows are counted again by the text reader (the typed reader's count is discarded).
            self._generation += 1
            self.malformed = 0
            self._malformed_example = None
        else:
            self.read_mode = "text"
        for i, batch in enumerate(self._raw_batches(cols)):
            if i < len(sizes):
                if batch.num_rows != sizes[i]:  # pragma: no cover - would be an Arrow change
                    raise RoadmapError(f"--gps {self.path}: block {i} has {batch.num_rows} rows read as text but "
                                       f"{sizes[i]} typed")
                continue
            yield batch

    def batches(self, vehicles: VehicleIndex, drops: DropLog, pool: Executor | None = None,
                ahead: int = 2) -> Iterator[ParsedBatch]:
        """Parsed, validated batches in file order; dropped rows are counted in `drops`.

        With `pool`, batches are parsed on its threads (Arrow and numpy release the GIL) while the next ones
        are read; vehicle codes, drop examples and row numbers still follow file order, so the result is the
        same as without it.
        """
        queue: deque[Future[_Pending]] = deque()
        for raw in self._blocks(parallel=pool is not None):
            row_base = self.rows_read
            self.rows_read += raw.num_rows
            if pool is None or self.time_format.kind is None:
                while queue:
                    yield self._finish(queue.popleft().result(), vehicles, drops)
                yield self._finish(self._parse(raw, row_base, vehicles), vehicles, drops)
                continue
            queue.append(pool.submit(self._parse, raw, row_base, vehicles))
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
        if p.veh_codes is not None:
            veh = p.veh_codes
        elif p.veh_idx is not None:
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
            value = raw.column(raw.schema.names.index(name))[i].as_py()
            if value is not None and not isinstance(value, str):  # a typed read: show it as text, as in the file
                value = value.isoformat(" ") if hasattr(value, "isoformat") else repr(value)
            parts.append(f"{name}={value!r}")
        return f"{self.path.name} row {row_base + i + 1}: " + ", ".join(parts)

    def _parse(self, raw: pa.RecordBatch, row_base: int, vehicles: VehicleIndex | None = None) -> _Pending:
        """Parse and validate one batch (no shared state is changed once the time format is known; `vehicles`
        is only read)."""
        cm = self.columns
        n = raw.num_rows
        names = raw.schema.names

        def col(name: str) -> pa.Array:
            return raw.column(names.index(name))

        y, y_miss, y_bad = parse_numbers(col(cm.lat))
        x, x_miss, x_bad = parse_numbers(col(cm.lon))
        t, t_miss, t_bad = self.time_format.parse(col(cm.time))
        veh_names: pa.Array | None = None
        veh_idx: np.ndarray | None = None
        veh_missing = np.zeros(n, dtype=bool)
        if cm.vehicle is not None:
            veh_names, veh_idx = VehicleIndex.arrow_dictionary(col(cm.vehicle))
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
                negative = s < 0
            if negative.any():
                s = np.where(negative, np.nan, s)  # -1 and similar mean "unknown"
            speed = (s * self.speed_factor).astype(np.float32)
        if cm.bearing is not None:
            b, _, _ = parse_numbers(col(cm.bearing))
            with np.errstate(invalid="ignore"):
                out = np.flatnonzero(~((b >= 0.0) & (b < 360.0)))  # NaN too, but np.mod keeps it NaN
            bearing = b.astype(np.float32)
            if out.size:
                bearing[out] = np.mod(b[out], 360.0)
        if dropped:
            keep = reason == 0
            t, lon, lat, speed, bearing = t[keep], lon[keep], lat[keep], speed[keep], bearing[keep]
            if veh_idx is not None:
                veh_idx = veh_idx[keep]
        codes = None
        if vehicles is not None and veh_names is not None and veh_idx is not None:
            codes = vehicles.known(veh_names, veh_idx)  # on this worker thread when nothing new is in the batch
        return _Pending(n, veh_names, veh_idx, t, lon, lat, speed, bearing, dropped, codes)

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
