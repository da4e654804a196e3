"""Stage 5, evaluate: metrics (where labels and masks allow), threshold, per-image results,
figures and a report, beside the evaluate artifact."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from musc import report, store

from .stage import Ref, ensure_artifact, fault_point, logger, stage_folder, stage_task
from .versions import code_version


def plan_evaluate(extract: Ref, classify: Ref, threshold: float | None, overlays: str,
                  pixel_threshold: float | None = None) -> Path:
    key = store.stable_hash(code_version("evaluate"), extract["digest"], classify["digest"], threshold, overlays,
                            pixel_threshold)
    return stage_folder(extract["path"], "evaluate") / f"{key}.h5"


def outputs_folder(path: str | Path) -> Path:
    """Where the evaluate artifact's CSV, Markdown and figures live: a folder beside it."""
    return Path(path).with_suffix("")


def build_evaluate(path: Path, extract: Ref, classify: Ref, threshold: float | None, overlays: str,
                   pixel_threshold: float | None = None) -> None:
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    classified = store.open_artifact(classify["path"], "classify", classify["digest"])
    outcome = report.write_outputs(source, classified, outputs_folder(path), threshold, overlays,
                                   evaluate_path=str(path), pixel_threshold=pixel_threshold)
    metrics = outcome["metrics"]
    fault_point("evaluate", 1)
    store.write_artifact(
        path, "evaluate", {"threshold": threshold, "overlays": overlays, "pixel_threshold": pixel_threshold},
        {"extract": extract["digest"], "classify": classify["digest"]},
        {"metrics": {k: np.float64(v) for k, v in metrics.items()}, "ranking": outcome["ranking"],
         "decisions": outcome["decisions"]},
        attrs={"metrics": {k: (None if math.isnan(v) else v) for k, v in metrics.items()}, "notes": outcome["notes"],
               "threshold": outcome["threshold"], "threshold_rule": outcome["rule"],
               "pixel_threshold": outcome["pixel_threshold"], "pixel_threshold_rule": outcome["pixel_rule"],
               "category": source.config["category"], "dataset": source.config["dataset"],
               "outputs": str(outputs_folder(path))},
        code_version=code_version("evaluate"))
    shown = ", ".join(f"{k} {v * 100:.2f}" for k, v in metrics.items() if not math.isnan(v)) or "none"
    notes = outcome["notes"]
    logger().info(f"evaluate {source.config['category']}: {shown}"
                  + (f" (not computed: {json.dumps(notes)})" if notes else ""))


@stage_task("evaluate", plan_evaluate)
def evaluate_task(extract: Ref, classify: Ref, threshold: float | None = None, overlays: str = "set",
                  pixel_threshold: float | None = None) -> Ref:
    return ensure_artifact("evaluate", plan_evaluate(extract, classify, threshold, overlays, pixel_threshold),
                           lambda p: build_evaluate(p, extract, classify, threshold, overlays, pixel_threshold))
