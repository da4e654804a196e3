"""Figures: overlays of anomaly maps, binary defect masks, score histograms, ROC/PR curves,
metric bar charts (PNG files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..inputs.datasets import UnreadableImage, load_image
from ..method.metrics import METRIC_NAMES, f1_max


def png_name(image_name: str) -> str:
    """'crack/000.png' -> 'crack__000.png': one flat folder of per-image figures."""
    return str(image_name).replace("/", "__").rsplit(".", 1)[0] + ".png"


def save_binary_masks(folder: Path, names, maps, threshold: float) -> list[str]:
    """One PNG per image: pixels whose map value reaches the threshold are white."""
    from PIL import Image
    written = []
    for name, anomaly_map in zip(names, maps):
        target = folder / png_name(name)
        Image.fromarray(((anomaly_map >= threshold) * 255).astype(np.uint8), mode="L").save(target)
        written.append(str(target))
    return written


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


def save_histograms(labels, raw, rscin, path: str | Path, threshold: float | None = None,
                    pixel_threshold: float | None = None) -> str:
    """Image scores of normal vs anomalous images, before and after RsCIN, with the thresholds
    drawn in: the decision threshold on the final (RsCIN) scores, and on the raw scores (the maxima
    of the maps) the pixel threshold, above which an image gets defect pixels."""
    plt = _pyplot()
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    panels = ((axes[0], raw, "raw (max of map)", pixel_threshold, "pixel threshold"),
              (axes[1], rscin, "after RsCIN", threshold, "threshold"))
    for axis, scores, title, line, line_label in panels:
        scores = np.asarray(scores, dtype=np.float64)
        if (labels >= 0).all():
            axis.hist(scores[labels == 0], bins=20, alpha=0.6, label="normal")
            axis.hist(scores[labels == 1], bins=20, alpha=0.6, label="anomalous")
        else:
            axis.hist(scores, bins=20, alpha=0.8, label="all (labels unknown)")
        if line is not None and np.isfinite(line):
            axis.axvline(line, color="k", linestyle="--", linewidth=1.2, label=f"{line_label} {line:.3g}")
        axis.legend(fontsize=7)
        axis.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def save_metric_bars(table, path: str | Path) -> str:
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


def render_overlays(folder: Path, paths, names, maps, masks, has_mask, scores, normalisation: str) -> list[str]:
    """One PNG per image: the image and its anomaly map, whole-set ('set') or per-image scaling."""
    low, high = (float(maps.min()), float(maps.max())) if normalisation == "set" else (None, None)
    size = maps.shape[-1]
    written = []
    for index, (path, name) in enumerate(zip(paths, names)):
        target = folder / png_name(name)
        try:
            image = np.asarray(load_image(path).resize((size, size)))
        except UnreadableImage:
            image = np.zeros((size, size, 3), dtype=np.uint8)
        save_overlay(image, maps[index], target, masks[index] if has_mask[index] else None, low, high,
                     title=f"{name}  score {scores[index]:.4f}")
        written.append(str(target))
    return written
