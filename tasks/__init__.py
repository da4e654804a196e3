"""One thin Prefect task per stage of the method: plan the artifact, build it with musc/ when no
valid one exists, return its reference ({stage, path, digest}). Tasks pass references, never tensors."""
from . import publish  # registers the Prefect progress listener wherever tasks run (also on Dask workers)
from .aggregate import aggregate_task
from .classify import classify_task
from .evaluate import evaluate_task
from .extract import extract_task
from .score import Tile, all_tiles, plan_score, score_task, score_tile_task

__all__ = ["extract_task", "aggregate_task", "score_tile_task", "score_task", "classify_task", "evaluate_task",
           "Tile", "all_tiles", "plan_score"]
