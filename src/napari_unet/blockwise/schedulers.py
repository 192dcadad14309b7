"""Where the block tasks run: dask's local schedulers or a dask.distributed cluster.

:func:`scheduler` gives the keyword arguments of one scheduler for the whole run (so a
process pool or a cluster loads the model once); :func:`compute_events` computes a list of
dask tasks there, yielding as they finish and stopping between them on request.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Generator, Iterator
from typing import Any

from napari_unet.errors import ConfigError

#: Schedulers that run on this machine without dask.distributed.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")


@contextlib.contextmanager
def scheduler(name: str | None = None, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Keyword arguments for ``dask.compute`` that run on the requested scheduler.

    Parameters
    ----------
    name : str, optional
        ``"threads"`` (default), ``"processes"``, ``"synchronous"``, or the address of a
        running ``dask.distributed`` scheduler (``tcp://host:8786``, e.g. of a
        ``dask_jobqueue.SLURMCluster``).
    workers : int, optional
        With ``threads``/``processes``: the number of workers. With no name: start a
        ``dask.distributed.LocalCluster`` of this many single-threaded worker processes
        for the duration of the block.

    Yields
    ------
    dict
        ``{"scheduler": ...}`` and, for local schedulers, ``num_workers``.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}.")
    if name is not None and name not in LOCAL_SCHEDULERS and ":" not in name:
        raise ConfigError(
            f"scheduler {name!r} is unknown; use one of {LOCAL_SCHEDULERS} or the address of "
            "a dask.distributed scheduler (tcp://host:8786)."
        )
    if name == "processes":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # One pool for all passes, so each process loads the model once (dask would
        # otherwise start a fresh pool, and reload the model, for every compute call).
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            yield {"scheduler": "processes", "pool": pool}
        return
    if name in LOCAL_SCHEDULERS or (name is None and workers is None):
        kwargs: dict[str, Any] = {"scheduler": name or "threads"}
        if workers is not None:
            kwargs["num_workers"] = workers
        yield kwargs
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ConfigError(
            "a dask.distributed scheduler needs the 'distributed' package: "
            "pip install 'napari-unet[distributed]'."
        ) from error
    if name is None:
        assert workers is not None  # no name and no workers is the threads case above
        import dask

        # One task thread per worker process; torch uses the worker's share of the cores.
        threads = max(1, (os.cpu_count() or 1) // workers)
        # distributed sets MALLOC_TRIM_THRESHOLD_ in its workers to hand memory back to the
        # OS sooner; then every large numpy temporary is a fresh mmap and page-faults, which
        # measured 1.5x slower per block here (benchmarks/bench_scale.py). Memory stays
        # bounded by the blocks in flight either way.
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))},
            ) as cluster,
            Client(cluster) as client,
        ):
            yield {"scheduler": client}
        return
    try:
        client = Client(name, timeout="30s")
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"could not reach the dask scheduler at {name!r}: {error}; start it (e.g. "
            "dask_jobqueue.SLURMCluster(...).scheduler_address) or use --scheduler threads."
        ) from error
    with client:
        yield {"scheduler": client}


def _batch_size(compute_kwargs: dict[str, Any]) -> int:
    """Tasks computed at once on a local scheduler: enough to keep every worker busy."""
    workers = compute_kwargs.get("num_workers") or os.cpu_count() or 1
    return 4 * workers


def compute_events(
    tasks: list[Any], compute_kwargs: dict[str, Any], stop: threading.Event | None = None
) -> Generator[int, None, list[Any] | None]:
    """Compute dask ``tasks`` where ``compute_kwargs`` says, yielding the number done.

    A local scheduler computes them in batches of a few tasks per worker; a
    ``dask.distributed`` client runs them all and reports each as it finishes. With
    ``stop`` set, no further batch starts (local) or the tasks left are cancelled
    (distributed), and the result is None.

    Returns
    -------
    list or None
        The tasks' results in order, or None if stopped.
    """
    import dask

    runner = compute_kwargs["scheduler"]
    if isinstance(runner, str):
        results: list[Any] = []
        size = _batch_size(compute_kwargs)
        for start in range(0, len(tasks), size):
            if stop is not None and stop.is_set():
                return None
            results.extend(dask.compute(*tasks[start : start + size], **compute_kwargs))
            yield len(results)
        return results
    from distributed import as_completed

    futures = runner.compute(tasks)
    for done, _ in enumerate(as_completed(futures), start=1):
        if stop is not None and stop.is_set():
            runner.cancel(futures)
            return None
        yield done
    return list(runner.gather(futures))
