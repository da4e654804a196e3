"""Results a person can read: metrics tables, per-image results, thresholds, figures, a report.

Pure functions of arrays and paths (pandas, matplotlib); no stage is recomputed here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .metrics import METRIC_NAMES, f1_max, image_metrics, pixel_metrics

MAD_SCALE = 1.4826  # makes the median absolute deviation estimate sigma for normal data
ROBUST_Z = 3.5


def evaluate_arrays(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                    has_mask: np.ndarray) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics that can be computed, NaN for the others, and a note saying why each is missing.

    labels: (N,) with -1 for unknown. Pixel metrics use the normal images and the anomalous
    images that have a mask (an anomalous image without a mask would count as all-normal).
    """
    metrics = {name: math.nan for name in METRIC_NAMES}
    notes: dict[str, str] = {}
    labels = np.asarray(labels)
    if (labels < 0).any():
        notes["image"] = "labels unknown"
    elif labels.min() == labels.max():
        notes["image"] = "only one class in the labels"
    usable = (labels == 0) | ((labels == 1) & has_mask)
    if not has_mask.any():
        notes["pixel"] = "no ground-truth masks"
    elif (labels < 0).any():
        notes["pixel"] = "labels unknown"
    if "image" not in notes:
        metrics.update(image_metrics(labels, scores))
    if "pixel" not in notes:
        metrics.update(pixel_metrics(masks[usable], maps[usable]))
    return metrics, notes


def f1_optimal_threshold(labels, scores) -> float:
    """The image-score threshold at the F1-max point (scores >= threshold are flagged)."""
    from sklearn.metrics import precision_recall_curve
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1])
    f1 = np.where(np.isfinite(f1), f1, -1)
    return float(thresholds[int(np.argmax(f1))])


def robust_threshold(scores) -> float:
    """Unsupervised threshold: median + 3.5 robust standard deviations (MAD), the usual outlier rule
    (Iglewicz and Hoaglin). It assumes most images of a batch are normal."""
    scores = np.asarray(scores, dtype=np.float64)
    median = np.median(scores)
    mad = np.median(np.abs(scores - median)) * MAD_SCALE
    return float(median + ROBUST_Z * mad)


def choose_threshold(labels, scores, fixed: float | None = None) -> tuple[float, str]:
    """(threshold, rule): fixed if given, else F1-optimal with both classes, else robust outlier rule."""
    labels = np.asarray(labels)
    if fixed is not None:
        return float(fixed), "fixed (config)"
    if (labels >= 0).all() and labels.min() != labels.max():
        return f1_optimal_threshold(labels, scores), "F1-optimal on the labels"
    return robust_threshold(scores), f"median + {ROBUST_Z} x MAD (unsupervised)"


def choose_pixel_threshold(labels, masks, maps, has_mask, raw_scores, fixed: float | None = None
                           ) -> tuple[float, str]:
    """Pixel threshold for binary defect masks: fixed if given; F1-optimal on the pixels when masks
    exist; else the robust outlier rule on the raw image scores (the maxima of the maps), so that
    only images flagged as outliers get defect pixels."""
    labels = np.asarray(labels)
    if fixed is not None:
        return float(fixed), "fixed (config)"
    usable = (labels == 0) | np.asarray(has_mask, dtype=bool)
    if np.asarray(has_mask).any() and (labels >= 0).all() and usable.any():
        sample = slice(None, None, max(1, int(np.asarray(maps)[usable].size // 2_000_000)))
        return (f1_optimal_threshold(np.asarray(masks)[usable].ravel()[sample], np.asarray(maps)[usable].ravel()[sample]),
                "F1-optimal on the mask pixels")
    return robust_threshold(raw_scores), f"median + {ROBUST_Z} x MAD of the raw image scores (unsupervised)"


def _png_name(image_name: str) -> str:
    """'crack/000.png' -> 'crack__000.png': one flat folder of per-image figures."""
    return str(image_name).replace("/", "__").rsplit(".", 1)[0] + ".png"


def save_binary_masks(folder: Path, names, maps, threshold: float) -> list[str]:
    """One PNG per image: pixels whose map value reaches the threshold are white."""
    from PIL import Image
    written = []
    for name, anomaly_map in zip(names, maps):
        target = folder / _png_name(name)
        Image.fromarray(((anomaly_map >= threshold) * 255).astype(np.uint8), mode="L").save(target)
        written.append(str(target))
    return written


def per_image_table(names: Sequence[str], paths: Sequence[str], defect_types: Sequence[str], labels,
                    raw, rscin, threshold: float, overlay_paths: Sequence[str] | None = None) -> pd.DataFrame:
    rscin = np.asarray(rscin, dtype=np.float64)
    span = rscin.max() - rscin.min()
    return pd.DataFrame({
        "path": list(paths), "name": list(names), "defect_type": list(defect_types),
        "label": pd.array([None if int(v) < 0 else int(v) for v in labels], dtype="Int64"),
        "score_raw": np.asarray(raw, dtype=np.float64), "score_rscin": rscin,
        "score_norm": (rscin - rscin.min()) / span if span > 0 else np.zeros_like(rscin),
        "decision": np.where(rscin >= threshold, "anomalous", "normal"),
        "map_png": list(overlay_paths) if overlay_paths is not None else [""] * len(rscin),
    })


def metrics_table(rows: dict[str, dict[str, float]], notes: dict[str, dict[str, str]],
                  image_size: int, mask_rule: str) -> pd.DataFrame:
    """One row per category plus the unweighted mean, x100, with the settings beside each row."""
    table = pd.DataFrame.from_dict(rows, orient="index")[list(METRIC_NAMES)] * 100
    if len(table) > 1:
        table.loc["mean"] = table.mean(axis=0, skipna=False)
    table["image_size"] = image_size
    table["mask_binarisation"] = mask_rule
    table["not_computed"] = [
        "; ".join(f"{k}: {v}" for k, v in notes.get(index, {}).items()) for index in table.index]
    table.index.name = "category"
    return table


def table_markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for name in METRIC_NAMES:
        shown[name] = shown[name].map(lambda v: "n/a" if pd.isna(v) else f"{v:.2f}")
    header = "| " + " | ".join([shown.index.name or "", *shown.columns]) + " |"
    rule = "|" + "---|" * (len(shown.columns) + 1)
    lines = [header, rule] + ["| " + " | ".join([str(i), *map(str, row)]) + " |"
                              for i, row in zip(shown.index, shown.itertuples(index=False))]
    return "\n".join(lines) + "\n"


# Figures ------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_overlay(image: np.ndarray, anomaly_map: np.ndarray, path: str | Path, mask: np.ndarray | None = None,
                 vmin: float | None = None, vmax: float | None = None, title: str = "") -> str:
    """Image | heat map over the image (ground-truth contour when known)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(image)
    heat = axes[1].imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    if mask is not None and mask.any():
        axes[1].contour(mask, levels=[0.5], colors="white", linewidths=1)
    axes[1].set_title(title or "anomaly map", fontsize=8)
    for axis in axes:
        axis.axis("off")
    fig.colorbar(heat, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def save_curves(labels, scores, path: str | Path, title: str) -> str:
    """ROC and PR curves side by side."""
    from sklearn.metrics import precision_recall_curve, roc_curve
    plt = _pyplot()
    fig, (roc_axis, pr_axis) = plt.subplots(1, 2, figsize=(7, 3.2))
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    roc_axis.plot(fpr, tpr)
    roc_axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    roc_axis.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title} ROC")
    pr_axis.plot(recall, precision)
    pr_axis.set(xlabel="recall", ylabel="precision", title=f"{title} PR (F1-max {f1_max(labels, scores):.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def save_histograms(labels, raw, rscin, path: str | Path) -> str:
    """Image scores of normal vs anomalous images, before and after RsCIN."""
    plt = _pyplot()
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for axis, scores, title in ((axes[0], raw, "raw (max of map)"), (axes[1], rscin, "after RsCIN")):
        scores = np.asarray(scores, dtype=np.float64)
        if (labels >= 0).all():
            axis.hist(scores[labels == 0], bins=20, alpha=0.6, label="normal")
            axis.hist(scores[labels == 1], bins=20, alpha=0.6, label="anomalous")
            axis.legend(fontsize=7)
        else:
            axis.hist(scores, bins=20, alpha=0.8, label="all (labels unknown)")
        axis.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def save_metric_bars(table: pd.DataFrame, path: str | Path) -> str:
    """Per-category bar chart of the metrics of a dataset run."""
    plt = _pyplot()
    shown = table[list(METRIC_NAMES)].drop(index="mean", errors="ignore")
    fig, axis = plt.subplots(figsize=(max(6, 1.2 * len(shown)), 3.5))
    shown.plot.bar(ax=axis, width=0.85)
    axis.set_ylabel("x100")
    axis.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def write_report(folder: str | Path, title: str, table: pd.DataFrame, figures: dict[str, str],
                 per_image_csv: str | None, artifacts: dict[str, str], threshold: dict[str, Any] | None,
                 skipped: Sequence[str] = ()) -> Path:
    """A Markdown report linking the table, figures and artifacts (paths relative to the report)."""
    folder = Path(folder)
    lines = [f"# {title}", "", "## Metrics (x100)", "", table_markdown(table)]
    if len(skipped):
        lines += ["## Skipped images (unreadable)", ""] + [f"- {message}" for message in skipped] + [""]
    if threshold:
        lines += ["## Thresholds", "", f"- image score: {threshold['value']:.6g} ({threshold['rule']})"]
        if "pixel_value" in threshold:
            lines += [f"- anomaly map (binary masks): {threshold['pixel_value']:.6g} ({threshold['pixel_rule']})"]
        lines += [""]
    if per_image_csv:
        lines += ["## Per-image results", "", f"[{Path(per_image_csv).name}]({_relative(per_image_csv, folder)})", ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{name}]({_relative(path, folder)})" for name, path in figures.items()] + [""]
    lines += ["## Artifacts", ""] + [f"- {stage}: `{path}`" for stage, path in artifacts.items()] + [""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    write_html(report)
    return report


def write_html(markdown_file: Path) -> Path:
    """report.html beside report.md: the same content, viewable in a browser with its figures."""
    import markdown
    body = markdown.markdown(markdown_file.read_text(), extensions=["tables"])
    page = markdown_file.with_suffix(".html")
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>MuSc report</title><style>"
                    "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
                    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"
                    f"</style></head><body>{body}</body></html>")
    return page


def _relative(path: str | Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


# The evaluate stage's outputs, from its two input artifacts ---------------------------------------

def render_overlays(folder: Path, paths, names, maps, masks, has_mask, scores, normalisation: str) -> list[str]:
    """One PNG per image: the image and its anomaly map, whole-set ('set') or per-image scaling."""
    from .data import UnreadableImage, load_image
    low, high = (float(maps.min()), float(maps.max())) if normalisation == "set" else (None, None)
    size = maps.shape[-1]
    written = []
    for index, (path, name) in enumerate(zip(paths, names)):
        target = folder / _png_name(name)
        try:
            image = np.asarray(load_image(path).resize((size, size)))
        except UnreadableImage:
            image = np.zeros((size, size, 3), dtype=np.uint8)
        save_overlay(image, maps[index], target, masks[index] if has_mask[index] else None, low, high,
                     title=f"{name}  score {scores[index]:.4f}")
        written.append(str(target))
    return written


def write_outputs(extract, classify, folder: str | Path, threshold: float | None = None, overlays: str = "set",
                  evaluate_path: str = "", pixel_threshold: float | None = None) -> dict[str, Any]:
    """Metrics, threshold, per-image CSV, metrics CSV/Markdown, figures and report.md in ``folder``,
    from an extract and a classify artifact (``musc.store.Artifact``). Returns what was decided."""
    folder = Path(folder)
    labels, has_mask = extract.read("labels"), extract.read("has_mask")
    maps, masks = classify.read("maps"), extract.read("masks")
    raw, scores = classify.read("image_scores_raw"), classify.read("image_scores")
    names, paths, defects = extract.read("names"), extract.read("paths"), extract.read("defect_types")
    metrics, notes = evaluate_arrays(labels, scores, masks, maps, has_mask)
    value, rule = choose_threshold(labels, scores, threshold)
    pixel_value, pixel_rule = choose_pixel_threshold(labels, masks, maps, has_mask, raw, pixel_threshold)
    category = extract.config["category"]

    for sub in ("overlays", "binary_masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    overlay_paths = render_overlays(folder / "overlays", paths, names, maps, masks, has_mask, scores, overlays)
    mask_paths = save_binary_masks(folder / "binary_masks", names, maps, pixel_value)
    per_image = per_image_table(names, paths, defects, labels, raw, scores, value, overlay_paths)
    per_image["defect_pixels"] = [(m >= pixel_value).sum() for m in maps]
    per_image["mask_png"] = mask_paths
    per_image.to_csv(folder / "per_image.csv", index=False)
    table = metrics_table({category: metrics}, {category: notes}, int(extract.config["image_size"]),
                          extract.attrs.get("mask_rule", ""))
    table.to_csv(folder / "metrics.csv")
    (folder / "metrics.md").write_text(table_markdown(table))
    figures = {"score histograms": save_histograms(labels, raw, scores, folder / "histograms.png")}
    if "image" not in notes:
        figures["image ROC/PR"] = save_curves(labels, scores, folder / "curves_image.png", "image")
    if "pixel" not in notes:
        usable = (labels == 0) | has_mask
        figures["pixel ROC/PR"] = save_curves(masks[usable].ravel(), maps[usable].ravel(),
                                              folder / "curves_pixel.png", "pixel")
    write_report(folder, f"MuSc results: {extract.config['dataset']} / {category}", table, figures,
                 str(folder / "per_image.csv"),
                 {"extract": str(extract.path), "classify": str(classify.path), "evaluate": evaluate_path},
                 {"value": value, "rule": rule, "pixel_value": pixel_value, "pixel_rule": pixel_rule},
                 list(extract.read("skipped")))
    return {"metrics": metrics, "notes": notes, "threshold": value, "rule": rule,
            "pixel_threshold": pixel_value, "pixel_rule": pixel_rule,
            "ranking": np.argsort(-np.asarray(scores)).astype(np.int64),
            "decisions": (np.asarray(scores) >= value).astype(np.int8)}
