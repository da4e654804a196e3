"""Evaluation: which metrics can be computed, thresholds and decisions, per-image results.

Arrays in, plain values out; nothing is drawn or written here (see ``reports`` and ``figures``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..method.metrics import METRIC_NAMES, BinaryCurves, descending_order, image_metrics, pixel_metrics

MAD_SCALE = 1.4826  # makes the median absolute deviation estimate sigma for normal data
ROBUST_Z = 3.5


def metrics_to_json(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """NaN (not computed) -> None, for JSON and for people."""
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
            for k, v in metrics.items()}


def metrics_from_json(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """None (not computed) -> NaN, for arrays and tables."""
    return {k: (math.nan if v is None else float(v)) for k, v in metrics.items()}


def pixel_usable(labels, has_mask) -> np.ndarray:
    """Images whose pixels count in pixel metrics and pixel thresholds: the normal ones and the
    anomalous ones with a mask (an anomalous image without one would count as all-normal)."""
    labels = np.asarray(labels)
    return (labels == 0) | ((labels == 1) & np.asarray(has_mask, dtype=bool))


def evaluate_arrays(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                    has_mask: np.ndarray, curves: dict[str, BinaryCurves] | None = None
                    ) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics that can be computed, NaN for the others, and a note saying why each is missing.

    labels: (N,) with -1 for unknown. ``curves``, when given, receives the ROC/PR curves computed
    ("image", "pixel"), for the figures.
    """
    curves = {} if curves is None else curves
    metrics = {name: math.nan for name in METRIC_NAMES}
    notes: dict[str, str] = {}
    labels = np.asarray(labels)
    if (labels < 0).any():
        notes["image"] = "labels unknown"
    elif labels.min() == labels.max():
        notes["image"] = "only one class in the labels"
    if not has_mask.any():
        notes["pixel"] = "no ground-truth masks"
    elif (labels < 0).any():
        notes["pixel"] = "labels unknown"
    if "image" not in notes:
        curves["image"] = BinaryCurves.of(labels, scores)
        metrics.update(image_metrics(labels, scores, curves["image"]))
    if "pixel" not in notes:
        usable = pixel_usable(labels, has_mask)
        gt_px, pr_px = masks[usable].astype(bool, copy=False), maps[usable].astype(np.float64, copy=False)
        if gt_px.min() == gt_px.max():  # one kind of pixels: n/a, not the reference's zeros
            kind = "no defect pixels: every mask is empty" if not gt_px.max() else "no normal pixels"
            notes["pixel"] = f"only one class in the masks ({kind})"
        else:
            order = descending_order(pr_px)
            curves["pixel"] = BinaryCurves.of(gt_px, pr_px, order)
            metrics.update(pixel_metrics(gt_px, pr_px, curves["pixel"], order))
    return metrics, notes


def f1_optimal_threshold(labels, scores) -> float:
    """The score threshold at the F1-max point (scores >= threshold are flagged)."""
    return BinaryCurves.of(labels, scores).f1_optimal_threshold()


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


def choose_pixel_threshold(labels, masks, maps, has_mask, raw_scores, fixed: float | None = None,
                           pixel_curves: BinaryCurves | None = None) -> tuple[float, str]:
    """Pixel threshold for binary defect masks: fixed if given; F1-optimal on the pixels when masks
    exist (``pixel_curves``: their PR curve, if the metrics computed it already); else the robust
    outlier rule on the raw image scores (the maxima of the maps), so that only images flagged as
    outliers get defect pixels."""
    labels = np.asarray(labels)
    if fixed is not None:
        return float(fixed), "fixed (config)"
    usable = pixel_usable(labels, has_mask)
    if np.asarray(has_mask).any() and (labels >= 0).all() and usable.any():
        curves = pixel_curves or BinaryCurves.of(np.asarray(masks)[usable], np.asarray(maps)[usable])
        return curves.f1_optimal_threshold(), "F1-optimal on the mask pixels"
    return robust_threshold(raw_scores), f"median + {ROBUST_Z} x MAD of the raw image scores (unsupervised)"


def decisions(scores, threshold: float) -> np.ndarray:
    """1 (anomalous) where the score reaches the threshold, else 0 (normal)."""
    return (np.asarray(scores) >= threshold).astype(np.int8)


def per_image_table(names: Sequence[str], paths: Sequence[str], defect_types: Sequence[str], labels,
                    raw, rscin, threshold: float) -> pd.DataFrame:
    rscin = np.asarray(rscin, dtype=np.float64)
    span = rscin.max() - rscin.min()
    return pd.DataFrame({
        "path": list(paths), "name": list(names), "defect_type": list(defect_types),
        "label": pd.array([None if int(v) < 0 else int(v) for v in labels], dtype="Int64"),
        "score_raw": np.asarray(raw, dtype=np.float64), "score_rscin": rscin,
        "score_norm": (rscin - rscin.min()) / span if span > 0 else np.zeros_like(rscin),
        "decision": np.where(decisions(rscin, threshold) == 1, "anomalous", "normal"),
    })


@dataclass
class Evaluation:
    """What the evaluate stage decides for one category."""
    metrics: dict[str, float]          # fractions, NaN where not computed
    notes: dict[str, str]              # why a metric group was not computed
    threshold: float
    rule: str
    pixel_threshold: float
    pixel_rule: str
    ranking: np.ndarray                # image indices, most anomalous first
    decisions: np.ndarray              # 1 anomalous, 0 normal
    per_image: pd.DataFrame
    curves: dict[str, BinaryCurves]    # ROC/PR curves of the metrics computed ("image", "pixel")

    def summary(self) -> dict[str, Any]:
        return {"metrics": metrics_to_json(self.metrics), "notes": self.notes, "threshold": self.threshold,
                "threshold_rule": self.rule, "pixel_threshold": self.pixel_threshold,
                "pixel_threshold_rule": self.pixel_rule}


@dataclass(frozen=True)
class EvaluationInputs:
    """What evaluating a category reads from its extract and classify artifacts, read once and
    shared by the metrics, the pictures and the written outputs."""
    names: np.ndarray
    paths: np.ndarray
    defect_types: np.ndarray
    labels: np.ndarray      # 1 anomalous, 0 normal, -1 unknown
    has_mask: np.ndarray
    masks: np.ndarray       # (N, S, S)
    maps: np.ndarray        # (N, S, S)
    raw: np.ndarray         # image scores before RsCIN (maxima of the maps)
    scores: np.ndarray      # final image scores

    @classmethod
    def read(cls, extract, classify) -> "EvaluationInputs":
        return cls(*(extract.read(name) for name in ("names", "paths", "defect_types", "labels", "has_mask",
                                                      "masks")),
                   *(classify.read(name) for name in ("maps", "image_scores_raw", "image_scores")))


def evaluate(inputs: EvaluationInputs, threshold: float | None = None,
             pixel_threshold: float | None = None) -> Evaluation:
    """Metrics, thresholds and decisions from what an extract and a classify artifact hold."""
    labels, has_mask, masks, maps = inputs.labels, inputs.has_mask, inputs.masks, inputs.maps
    raw, scores = inputs.raw, inputs.scores
    curves: dict[str, BinaryCurves] = {}
    metrics, notes = evaluate_arrays(labels, scores, masks, maps, has_mask, curves)
    value, rule = choose_threshold(labels, scores, threshold)
    pixel_value, pixel_rule = choose_pixel_threshold(labels, masks, maps, has_mask, raw, pixel_threshold,
                                                     curves.get("pixel"))
    per_image = per_image_table(inputs.names, inputs.paths, inputs.defect_types, labels, raw, scores, value)
    per_image["defect_pixels"] = [(m >= pixel_value).sum() for m in maps]
    return Evaluation(metrics, notes, value, rule, pixel_value, pixel_rule,
                      np.argsort(-np.asarray(scores)).astype(np.int64), decisions(scores, value), per_image, curves)
