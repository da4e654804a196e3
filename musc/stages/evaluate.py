"""Stage 5, evaluate: metrics (where labels and masks allow), thresholds, decisions, and the
per-image results, figures and report in the folder beside the evaluate artifact."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from ..inputs.config import EvaluateSettings
from .building import Plan
from .faults import fault_point
from .key import Ref, StageKey

log = logging.getLogger("musc.stages")


def plans(run, extract: Ref, classify: Ref) -> list[Plan]:
    return [plan(extract, classify, run.config.evaluate)]


def plan(extract: Ref, classify: Ref, settings: EvaluateSettings) -> Plan:
    key = StageKey("evaluate", settings.recorded(), {"extract": extract["digest"], "classify": classify["digest"]})
    return Plan(key, str(key.beside(extract)), "evaluate", Needs(extract, classify), build)


@dataclass(frozen=True)
class Needs:
    extract: Ref
    classify: Ref


def _pixel_resolution(source) -> dict:
    """Tiled runs: the resolution per image their pixel metrics were computed at (the images' own, or
    reduced to at most EVALUATION_MAX_PIXELS); untiled runs record nothing (it is the image size)."""
    if source.config.get("tiles") is None:
        return {}
    from ..outputs.evaluation import evaluation_reduction
    height, width = source.shape("masks")[1:]
    factor = evaluation_reduction(height, width)
    return {"pixel_resolution": [int(-(-height // factor)), int(-(-width // factor))]}


def build(path: Path, plan: Plan) -> None:
    from ..outputs.evaluation import metric_text
    from ..outputs.reports import evaluate_into  # sklearn, pandas, figures: only when evaluating
    extract, classify = plan.needs.extract, plan.needs.classify
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    classified = store.open_artifact(classify["path"], "classify", classify["digest"])
    outputs = store.report_folder(path)
    decided, _ = evaluate_into(outputs, source, classified, plan.key.config, str(path))
    fault_point("evaluate", 1)
    store.write_artifact(
        path, "evaluate", plan.key.config, plan.key.inputs,
        {"metrics": {k: np.float64(v) for k, v in decided.metrics.items()}, "ranking": decided.ranking,
         "decisions": decided.decisions},
        attrs={**decided.summary(), "category": source.config["category"], "dataset": source.config["dataset"],
               "outputs": store.naming.link(outputs, path.parent), **_pixel_resolution(source)},
        code_version=plan.key.code_version)
    shown = ", ".join(f"{k} {metric_text(v)}" for k, v in decided.metrics.items() if not math.isnan(v)) or "none"
    log.info(f"evaluate {source.config['category']}: {shown}"
             + (f" (not computed: {json.dumps(decided.notes)})" if decided.notes else ""))
