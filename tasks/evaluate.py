"""Stage 5, evaluate: metrics (where labels and masks allow), threshold, per-image results,
figures and a report, beside the evaluate artifact."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from musc import report, store
from musc.data import UnreadableImage, load_image

from .stage import Ref, ensure_artifact, logger, stage_folder, stage_task
from .versions import code_version


def plan_evaluate(extract: Ref, classify: Ref, threshold: float | None, overlays: str) -> Path:
    key = store.stable_hash(code_version("evaluate"), extract["digest"], classify["digest"], threshold, overlays)
    return stage_folder(extract["path"], "evaluate") / f"{key}.h5"


def outputs_folder(path: str | Path) -> Path:
    """Where the evaluate artifact's CSV, Markdown and figures live: a folder beside it."""
    return Path(path).with_suffix("")


def build_evaluate(path: Path, extract: Ref, classify: Ref, threshold: float | None, overlays: str) -> None:
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    classified = store.open_artifact(classify["path"], "classify", classify["digest"])
    labels, has_mask = source.read("labels"), source.read("has_mask")
    maps, masks = classified.read("maps"), source.read("masks")
    raw, scores = classified.read("image_scores_raw"), classified.read("image_scores")
    names, paths, defects = source.read("names"), source.read("paths"), source.read("defect_types")
    metrics, notes = report.evaluate_arrays(labels, scores, masks, maps, has_mask)
    value, rule = report.choose_threshold(labels, scores, threshold)
    category = source.config["category"]

    folder = outputs_folder(path)
    (folder / "overlays").mkdir(parents=True, exist_ok=True)
    overlay_paths = render_overlays(folder / "overlays", paths, names, maps, masks, has_mask, scores, overlays)
    table = report.per_image_table(names, paths, defects, labels, raw, scores, value, overlay_paths)
    table.to_csv(folder / "per_image.csv", index=False)
    metrics_table = report.metrics_table({category: metrics}, {category: notes}, int(source.config["image_size"]),
                                         source.attrs.get("mask_rule", ""))
    metrics_table.to_csv(folder / "metrics.csv")
    (folder / "metrics.md").write_text(report.table_markdown(metrics_table))
    figures = {"score histograms": report.save_histograms(labels, raw, scores, folder / "histograms.png")}
    if "image" not in notes:
        figures["image ROC/PR"] = report.save_curves(labels, scores, folder / "curves_image.png", "image")
    if "pixel" not in notes:
        usable = (labels == 0) | has_mask
        figures["pixel ROC/PR"] = report.save_curves(masks[usable].ravel(), maps[usable].ravel(),
                                                     folder / "curves_pixel.png", "pixel")
    report.write_report(folder, f"MuSc results: {source.config['dataset']} / {category}", metrics_table, figures,
                        str(folder / "per_image.csv"), {"extract": extract["path"], "classify": classify["path"],
                                                        "evaluate": str(path)},
                        {"value": value, "rule": rule})
    order = np.argsort(-scores)
    store.write_artifact(
        path, "evaluate", {"threshold": threshold, "overlays": overlays},
        {"extract": extract["digest"], "classify": classify["digest"]},
        {"metrics": {k: np.float64(v) for k, v in metrics.items()}, "ranking": order.astype(np.int64),
         "decisions": (scores >= value).astype(np.int8)},
        attrs={"metrics": {k: (None if math.isnan(v) else v) for k, v in metrics.items()}, "notes": notes,
               "threshold": value, "threshold_rule": rule, "category": category,
               "dataset": source.config["dataset"], "outputs": str(folder)},
        code_version=code_version("evaluate"))
    shown = ", ".join(f"{k} {v * 100:.2f}" for k, v in metrics.items() if not math.isnan(v)) or "none"
    logger().info(f"evaluate {category}: {shown}" + (f" (not computed: {json.dumps(notes)})" if notes else ""))


def render_overlays(folder: Path, paths, names, maps, masks, has_mask, scores, normalisation: str) -> list[str]:
    """One PNG per image: the image and its anomaly map, whole-set ('set') or per-image scaling."""
    low, high = (float(maps.min()), float(maps.max())) if normalisation == "set" else (None, None)
    size = maps.shape[-1]
    written = []
    for index, (path, name) in enumerate(zip(paths, names)):
        target = folder / (str(name).replace("/", "__").rsplit(".", 1)[0] + ".png")
        try:
            image = np.asarray(load_image(path).resize((size, size)))
        except UnreadableImage:
            image = np.zeros((size, size, 3), dtype=np.uint8)
        report.save_overlay(image, maps[index], target, masks[index] if has_mask[index] else None, low, high,
                            title=f"{name}  score {scores[index]:.4f}")
        written.append(str(target))
    return written


@stage_task("evaluate", plan_evaluate)
def evaluate_task(extract: Ref, classify: Ref, threshold: float | None = None, overlays: str = "set") -> Ref:
    return ensure_artifact("evaluate", plan_evaluate(extract, classify, threshold, overlays),
                           lambda p: build_evaluate(p, extract, classify, threshold, overlays))
