"""Prefect's thin face of musc.stages: a task that runs a stage's plan (``stage_task``), a task
per tile of a tiled stage (``tile_task``), and what the Prefect UI shows (``publish``)."""
from . import publish  # registers the Prefect progress listener wherever tasks run (also on Dask workers)
from .stage import stage_task, tile_task

__all__ = ["stage_task", "tile_task"]
