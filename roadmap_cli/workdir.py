"""The workdir contract: where each stage's artifacts live, and atomic writes.

Every artifact is written under a temporary name in the same folder and renamed into place, so a failed or
killed run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roadmap_cli.errors import RoadmapError

ARTIFACTS = {
    "grid": "grid.json",
    "imagery": "imagery.vrt",
    "gps": "gps",
    "ingest_report": "ingest_report.json",
    "model": "model.pt",
    "last": "last.pt",
    "train_log": "train_log.csv",
    "prob": "prob.tif",
    "roads_gpkg": "roads.gpkg",
    "roads_osm": "roads.osm",
    "roads_osc": "roads.osc",
    "verification_csv": "verification.csv",
    "verification_geojson": "verification.geojson",
    "report": "report.html",
    "metrics": "metrics.json",
}


class Workdir:
    """One workdir shared by every stage (`-w/--workdir`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """Path of a named artifact (a key of ARTIFACTS) or of a plain file name inside the workdir."""
        return self.root / ARTIFACTS.get(name, name)

    def ensure(self) -> Path:
        """Create the workdir if needed and return it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RoadmapError(f"{self.root}: cannot create workdir ({exc.strerror})") from exc
        return self.root

    def require(self, name: str, hint: str) -> Path:
        """The artifact's path, or a one-line error saying which stage makes it."""
        p = self.path(name)
        if not p.exists():
            raise RoadmapError(f"{p}: missing; {hint}")
        return p

    def load_grid(self):  # -> Grid (import kept lazy for start-up speed)
        """The grid written by ingest."""
        from roadmap_cli.grid import Grid

        return Grid.load(self.require("grid", "run `roadmap ingest` first"))

    def has_gps(self) -> bool:
        """Whether ingest wrote a point store here."""
        return (self.path("gps") / "meta.json").exists()

    def has_imagery(self) -> bool:
        """Whether ingest registered imagery here."""
        return self.path("imagery").exists()

    def __repr__(self) -> str:
        return f"Workdir({str(self.root)!r})"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def check_overwrite(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing artifact unless --overwrite was given."""
    if path.exists() and not overwrite:
        raise RoadmapError(f"{path}: exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Works for files and folders (whatever the block creates at the temporary path). `suffix` keeps the
    extension on the temporary name for writers that choose a format from it (e.g. ".gpkg").
    """
    path = Path(path)
    check_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    if suffix:
        tmp = tmp.with_name(tmp.name + suffix)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, overwrite: bool = True) -> Path:
    """Write text atomically."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, overwrite: bool = True) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n", overwrite=overwrite)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
