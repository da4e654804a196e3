"""One thin Prefect task per stage of the method: read artifact(s), call musc/, write an artifact,
return its path and digest. Tasks pass artifact references ({stage, path, digest}), never tensors."""
from .aggregate import aggregate_task
from .classify import classify_task
from .evaluate import evaluate_task
from .extract import extract_task
from .score import all_tiles, plan_score, score_task, score_tile_task

__all__ = ["extract_task", "aggregate_task", "score_tile_task", "score_task", "classify_task", "evaluate_task",
           "all_tiles", "plan_score"]
