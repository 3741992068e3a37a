"""Where the heavy stages compute: Dask's threaded scheduler or a `dask.distributed` cluster.

Every stage is a lazy Dask graph that `sar2ndvi.store.write` computes region by region with
*the active scheduler*; nothing in the library picks one or creates a cluster. This module
decides, once per command, which scheduler is active:

1. a `distributed.Client` that is already active (made in a notebook, or by
   ``dask-gateway`` / ``dask-kubernetes`` code) is used as it is, and left open;
2. otherwise a scheduler address (``--scheduler tcp://host:8786``, or the
   ``DASK_SCHEDULER_ADDRESS`` environment variable) is connected to for the duration of
   the block, and the client closed at its end (the cluster itself keeps running);
3. otherwise Dask's threaded scheduler, in this process.

It says which in one line (logged and, when asked, echoed), with the dashboard link of a
cluster. Progress: `store.write` shows one tqdm bar per store, advanced after each region
is written; regions are computed one after another by this process on whichever
scheduler is active, so the bar counts the same on a cluster as on threads, and the
dashboard shows the tasks of the region in flight.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask

from sar2ndvi.errors import Sar2ndviError

__all__ = [
    "SCHEDULER_ENV",
    "ComputeInfo",
    "SchedulerError",
    "active_client",
    "compute_context",
]

#: The environment variable naming a scheduler when no ``--scheduler`` is given.
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"

log = logging.getLogger(__name__)


class SchedulerError(Sar2ndviError, ConnectionError):
    """The Dask scheduler at the given address cannot be reached; the message names it."""


@dataclass(frozen=True)
class ComputeInfo:
    """The scheduler a block computes with.

    Attributes:
        kind: "threads", "distributed", or the local scheduler set in Dask's config
            (``dask.config.set(scheduler="synchronous")``: "synchronous").
        address: the scheduler's address (distributed only).
        dashboard: the dashboard URL, None when the cluster runs none (no bokeh).
        workers: worker processes (distributed) or threads (threaded scheduler).
        threads: threads in all (distributed: summed over the workers).
        client: the `distributed.Client`, or None.
    """

    kind: str
    address: str | None = None
    dashboard: str | None = None
    workers: int = 0
    threads: int = 0
    client: Any = None

    def describe(self) -> str:
        """One line for a log or a terminal."""
        if self.kind == "threads":
            return f"dask: threaded scheduler, {self.threads} threads in this process"
        if self.kind != "distributed":
            return f"dask: {self.kind} scheduler in this process (dask.config 'scheduler')"
        board = f"dashboard {self.dashboard}" if self.dashboard else "no dashboard"
        return (
            f"dask.distributed: scheduler {self.address}, {self.workers} workers, "
            f"{self.threads} threads; {board}"
        )


def active_client() -> Any:
    """The active `distributed.Client`, or None (also when distributed is not installed)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:  # "No clients found"
        return None


def _dashboard(client: Any) -> str | None:
    """The client's dashboard link, None when the scheduler serves no dashboard."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # a scheduler that went away: say so elsewhere, not here
        return None
    if "dashboard" not in services:
        return None
    try:
        return str(client.dashboard_link)
    except Exception:
        return None


def _distributed_info(client: Any) -> ComputeInfo:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    return ComputeInfo(
        kind="distributed",
        address=str(client.scheduler.address),
        dashboard=_dashboard(client),
        workers=len(workers),
        threads=sum(int(w.get("nthreads", 0)) for w in workers.values()),
        client=client,
    )


def _local_info() -> ComputeInfo:
    """The scheduler Dask uses in this process: threads unless configured otherwise."""
    configured = dask.config.get("scheduler", None)
    if isinstance(configured, str) and configured not in ("threads", "threading"):
        return ComputeInfo(kind=configured, workers=1, threads=1)
    threads = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    return ComputeInfo(kind="threads", workers=1, threads=threads)


def _timeout(timeout: float | None) -> float:
    """`timeout`, or Dask's connect timeout (``distributed.comm.timeouts.connect``), s."""
    if timeout is not None:
        return float(timeout)
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect", "30s")))


def _connect(address: str, timeout: float) -> Any:
    from distributed import Client

    from sar2ndvi.store import scrub_secrets

    try:
        return Client(address, timeout=timeout, set_as_default=True)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerError(
            scrub_secrets(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); "
                f"check --scheduler / {SCHEDULER_ENV} and that the scheduler is running "
                "(e.g. `dask scheduler`), or leave both unset to compute on local threads"
            )
        ) from exc


@contextmanager
def compute_context(
    scheduler: str | None = None,
    *,
    timeout: float | None = None,
    echo: Callable[[str], Any] | None = None,
) -> Iterator[ComputeInfo]:
    """Compute the block's Dask work on the active client, a scheduler, or threads.

    Args:
        scheduler: a scheduler address (``tcp://host:8786``, ``host:8786``); None: the
            ``DASK_SCHEDULER_ADDRESS`` environment variable, if set. Ignored when a
            `distributed.Client` is already active (that one is used).
        timeout: seconds to wait for the scheduler; default Dask's
            ``distributed.comm.timeouts.connect`` (30 s).
        echo: called with the one-line description (e.g. a console's print); it is
            logged at INFO level in any case.

    Yields:
        `ComputeInfo`: the scheduler in use (its client, address, dashboard link).

    Raises:
        SchedulerError: the scheduler cannot be reached within `timeout`.
    """
    client = active_client()
    owned = None
    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if client is None and address:
        owned = client = _connect(address, _timeout(timeout))
    elif client is not None and address and address != str(client.scheduler.address):
        log.warning("a Dask client is active: using it, not the scheduler at %s", address)
    try:
        info = _distributed_info(client) if client is not None else _local_info()
        log.info("%s", info.describe())
        if echo is not None:
            echo(info.describe())
        yield info
    finally:
        if owned is not None:
            owned.close()
