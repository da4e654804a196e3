"""Stage 5, evaluate: metrics (where labels and masks allow), thresholds, decisions, and the
per-image results, figures and report in the folder beside the evaluate artifact."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from musc import store
from musc.inputs.config import EvaluateSettings

from .faults import fault_point
from .stage import Plan, Ref, code_version, logger, stage_folder, stage_task


def plan_evaluate(extract: Ref, classify: Ref, settings: EvaluateSettings) -> Path:
    key = store.stable_hash(code_version("evaluate"), extract["digest"], classify["digest"], *settings.key())
    return stage_folder(extract["path"], "evaluate") / f"{key}.h5"


def build_evaluate(path: Path, extract: Ref, classify: Ref, settings: EvaluateSettings) -> None:
    from musc.outputs.evaluation import metric_text
    from musc.outputs.rebuild import outputs_folder
    from musc.outputs.reports import evaluate_into  # sklearn, pandas, figures: only when evaluating
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    classified = store.open_artifact(classify["path"], "classify", classify["digest"])
    decided, _ = evaluate_into(outputs_folder(path), source, classified, settings.recorded(), str(path))
    fault_point("evaluate", 1)
    store.write_artifact(
        path, "evaluate",
        settings.recorded(),
        {"extract": extract["digest"], "classify": classify["digest"]},
        {"metrics": {k: np.float64(v) for k, v in decided.metrics.items()}, "ranking": decided.ranking,
         "decisions": decided.decisions},
        attrs={**decided.summary(), "category": source.config["category"], "dataset": source.config["dataset"],
               "outputs": str(outputs_folder(path))},
        code_version=code_version("evaluate"))
    shown = ", ".join(f"{k} {metric_text(v)}" for k, v in decided.metrics.items() if not math.isnan(v)) or "none"
    logger().info(f"evaluate {source.config['category']}: {shown}"
                  + (f" (not computed: {json.dumps(decided.notes)})" if decided.notes else ""))


@stage_task("evaluate")
def evaluate_task(extract: Ref, classify: Ref, settings: EvaluateSettings) -> Plan:
    return plan_evaluate(extract, classify, settings), lambda p: build_evaluate(p, extract, classify, settings)
