"""Running the tile-parallel stages (ingest, predict, vectorize) on a Dask cluster: `--scheduler ADDRESS`.

Without `--scheduler` every stage runs in-process, as it always has. With it, a stage cuts its work into
partitions (input files or byte ranges for ingest, row bands of windows for predict, core windows for
vectorize), runs each partition as a task on the cluster's workers, and assembles the results in the main
process in the order an in-process run would, so the outputs are the same files.

Addresses:

- `tcp://host:8786` (or `host:8786`): an existing scheduler (`dask scheduler` + `dask worker` on each node).
  Every worker needs the same roadmap installation and must see the workdir and inputs at the same paths (a
  shared disk, NFS, or GDAL virtual file systems such as /vsis3/ for imagery).
- `local` or `local:N`: a `LocalCluster` started for this command alone, N worker processes (default: the CPU
  count) with one thread each; handy on one big machine and used by the tests and `bench/scale.py`.

Tasks are submitted a bounded number at a time (`in_flight`, default twice the workers' threads), so the main
process never holds more than that many partitions' results; results come back in submission order.

Workers run tasks with as many torch / BLAS threads as the worker has Dask threads (one for `local`), set in
`worker_threads()`. A worker that hits bad input raises `RoadmapError`; it travels back and ends the command with
the same one line as in-process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import click

from roadmap_cli.errors import RoadmapError

log = logging.getLogger("roadmap")

CONNECT_TIMEOUT_S = 20
_WORKER_CACHE: dict[Any, Any] = {}
_CACHE_LOCK = threading.RLock()


def scheduler_option(f: Callable) -> Callable:
    """`--scheduler ADDRESS` (also `scheduler:` in a --config file, or $ROADMAP_SCHEDULER)."""
    return click.option(
        "--scheduler", default=None, envvar="ROADMAP_SCHEDULER", metavar="ADDRESS",
        help="Run the work as tasks on the Dask cluster at ADDRESS (tcp://host:8786), or on a LocalCluster "
             "started for this command (`local`, `local:N` workers). Workers must see the same paths.  "
             "[default: in-process]")(f)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise RoadmapError("--scheduler: dask.distributed is not installed; pip install 'roadmap[cluster]' "
                           "(or `pip install dask[distributed]`)") from exc
    return distributed


def parse_local(address: str) -> int | None:
    """Workers of a `local` / `local:N` address (0 = the CPU count), None for a scheduler address."""
    a = address.strip().lower()
    if a == "local":
        return 0
    if a.startswith("local:"):
        try:
            n = int(a.split(":", 1)[1])
        except ValueError:
            n = -1
        if n < 1:
            raise RoadmapError(f"--scheduler {address}: expected local:N with N workers >= 1")
        return n
    return None


class Cluster:
    """A connected Dask client and what the stages need of it."""

    def __init__(self, client: Any, address: str, local: Any = None) -> None:
        self.client = client
        self.address = address
        self._local = local

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    @property
    def n_threads(self) -> int:
        return max(1, sum(int(w.get("nthreads", 1)) for w in self.client.scheduler_info().get("workers",
                                                                                                {}).values()))

    def map_ordered(self, fn: Callable[..., Any], items: Iterable[Any], *args: Any, in_flight: int | None = None,
                    **kwargs: Any) -> Iterator[Any]:
        """Yield fn(item, *args, **kwargs) for each item, in item order, computed on the workers.

        At most `in_flight` tasks are pending at once (default twice the cluster's threads); a task's error is
        raised here when its turn comes, and the remaining tasks are cancelled.
        """
        limit = max(1, in_flight or 2 * self.n_threads)
        pending: deque = deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(self.client.submit(fn, item, *args, pure=False, **kwargs))
                if len(pending) >= limit:
                    yield _result(pending.popleft())
            while pending:
                yield _result(pending.popleft())
        finally:
            if pending:
                self.client.cancel(list(pending))

    def close(self) -> None:
        self.client.close()
        if self._local is not None:
            self._local.close()


def _result(future: Any) -> Any:
    try:
        return future.result()
    except RoadmapError:
        raise
    except Exception as exc:  # a worker died or a task failed unexpectedly: say which, in one line
        if type(exc).__name__ in ("KilledWorker", "CancelledError", "CommClosedError"):
            raise RoadmapError(f"--scheduler: a task was lost ({type(exc).__name__}: {exc}); is every worker "
                               "alive and able to import roadmap_cli?") from exc
        raise


@contextmanager
def open_cluster(address: str | None) -> Iterator[Cluster | None]:
    """Connect to `address` for the duration of a command; None gives None (run in-process)."""
    if not address:
        yield None
        return
    distributed = _import_distributed()
    local = None
    n_local = parse_local(address)
    try:
        if n_local is not None:
            n = n_local or (os.cpu_count() or 1)
            local = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                             dashboard_address=":0", host="127.0.0.1")
            client = distributed.Client(local)
        else:
            target = address if "://" in address else f"tcp://{address}"
            client = distributed.Client(target, timeout=CONNECT_TIMEOUT_S)
    except RoadmapError:
        raise
    except Exception as exc:  # OSError, TimeoutError, the nanny's RuntimeError: say it in one line
        if local is not None:
            local.close()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        what = "cannot start a local cluster" if n_local is not None else "cannot connect"
        raise RoadmapError(f"--scheduler {address}: {what} ({first})") from exc
    cluster = Cluster(client, address, local)
    log.info("cluster %s: %d worker(s), %d thread(s)", address, cluster.n_workers, cluster.n_threads)
    try:
        yield cluster
    finally:
        cluster.close()


# --------------------------------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------------------------------
def worker_threads() -> int:
    """Set torch's thread count on a worker to the worker's Dask threads; return it (1 outside a worker)."""
    n = 1
    try:
        from distributed import get_worker

        n = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        pass
    try:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    except ImportError:
        pass
    return n


def worker_cached(key: Any, factory: Callable[[], Any], keep: int = 2) -> Any:
    """A per-process cache for what every task of a stage would otherwise rebuild (a model, an open raster).

    At most `keep` entries stay (the oldest is closed first); thread-safe, since a worker may run several tasks
    at once.
    """
    with _CACHE_LOCK:
        return _cached(key, factory, keep)


def _cached(key: Any, factory: Callable[[], Any], keep: int) -> Any:
    if key not in _WORKER_CACHE:
        while len(_WORKER_CACHE) >= keep:
            old = _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
            close = getattr(old, "close", None)
            if callable(close):
                with suppress(Exception):  # closing a stale cache entry must not fail the task
                    close()
        _WORKER_CACHE[key] = factory()
    return _WORKER_CACHE[key]
