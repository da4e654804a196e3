"""Where tasks run: local threads by default, a Dask cluster when asked (prefect-dask)."""
from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

LOCAL_THREADS = 2


def task_runner(dask: str | None = None):
    """``None``: local threads. ``"local"``: a Dask LocalCluster started for the run.
    ``"tcp://host:8786"``: an existing Dask scheduler (artifacts must be on a path all workers share)."""
    if not dask:
        return ThreadPoolTaskRunner(max_workers=LOCAL_THREADS)
    from prefect_dask import DaskTaskRunner
    if dask == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1})
    return DaskTaskRunner(address=dask)
