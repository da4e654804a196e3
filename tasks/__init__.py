"""Prefect's thin face of musc.stages: a task that runs a stage's plan (``stage_task``), a task
per chunk of a per-part stage's plans (``parts_task``), a task per batch of tiles of a
tiled stage (``tile_task``), and what the Prefect UI shows (``ui``: artifacts and progress)."""
from . import ui  # registers the Prefect progress listener wherever tasks run (also on Dask workers)
from .stage import parts_task, stage_task, tile_task

__all__ = ["parts_task", "stage_task", "tile_task"]
