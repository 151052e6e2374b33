"""Optional numba-compiled kernels: one rule for choosing them, shared by render and augment."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from roadmap_cli.errors import RoadmapError


def load_kernels(choice: str, env_name: str, module: str, what: str) -> ModuleType | None:
    """The kernels module for `choice` (auto | numba | numpy), or None for the numpy path.

    numba missing (as on GPU boxes without the full install) falls back silently under auto; numba present but
    the kernels failing to build falls back with a warning, since that is a bug to report rather than a missing
    extra. `choice` comes from the environment variable `env_name`; `what` names the kernels in messages.
    """
    if choice not in ("auto", "numba", "numpy"):
        raise RoadmapError(f"{env_name}: must be auto, numba or numpy, not {choice!r}")
    if choice == "numpy":
        return None
    try:
        import numba  # noqa: F401
    except ImportError as e:
        if choice == "numba":
            raise RoadmapError(f"{env_name}=numba: numba is not installed ({e})") from e
        return None
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure to build the kernels: the numpy path does the same job
        if choice == "numba":
            raise RoadmapError(f"{env_name}=numba: the compiled {what} failed to build ({e})") from e
        warnings.warn(f"roadmap: compiled {what} unavailable, using the slower numpy path ({e})", RuntimeWarning,
                      stacklevel=4)
        return None
