"""tqdm progress bars that follow -q/-v and stay off when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Turn every later progress bar off (the group's -q)."""
    global _QUIET
    _QUIET = quiet


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; disabled with -q or when stderr is not a terminal."""
    disable = _QUIET or not sys.stderr.isatty()
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, file=sys.stderr, disable=disable, **kwargs)
