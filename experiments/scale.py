"""Scale-out on Dask: a local cluster or an existing scheduler.

Dask is an optional extra (``pip install 'biaslab[dask]'``). Workers get the
same pinned thread settings as the in-process backend (set in their
environment before they import JAX), and each cell's random stream depends on
its seed alone, so both backends store identical values.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from sim.config import ConfigError, check

__all__ = ["dask_client", "as_completed"]


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "--backend dask needs the dask extra: pip install 'biaslab[dask]'"
        ) from None
    return distributed


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator:
    """A Dask client: on ``scheduler`` if given, else on a local cluster of
    ``workers`` single-threaded worker processes (default 2)."""
    distributed = _distributed()
    from experiments.cli import PINNED_THREADS

    if scheduler is not None:
        check(workers is None, "--workers", "unset when --scheduler is given", workers)
        with distributed.Client(scheduler) as client:
            yield client
        return
    workers = 2 if workers is None else workers
    ok = isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1
    check(ok, "--workers", "an integer >= 1", workers)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                  processes=True, dashboard_address=None,
                                  env=dict(PINNED_THREADS)) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def as_completed(futures):
    return _distributed().as_completed(futures)
