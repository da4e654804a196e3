"""Evaluation: which metrics can be computed, thresholds and decisions, per-image results.

Arrays in, plain values out; nothing is drawn or written here (see ``reports`` and ``figures``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..method.metrics import METRIC_NAMES, BinaryCurves, PixelCurves, image_metrics, pixel_metrics

MAD_SCALE = 1.4826  # makes the median absolute deviation estimate sigma for normal data
ROBUST_Z = 3.5


def metrics_to_json(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """NaN (not computed) -> None, for JSON and for people."""
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
            for k, v in metrics.items()}


def metrics_from_json(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """None (not computed) -> NaN, for arrays and tables."""
    return {k: (math.nan if v is None else float(v)) for k, v in metrics.items()}


SHOWN_SCALE = 100.0  # metrics are fractions; people read them x100


# The metrics' short names, wherever a table head or a chart has little room
SHORT_NAMES = {"image_auroc": "I-AUROC", "image_f1max": "I-F1max", "image_ap": "I-AP",
               "pixel_auroc": "P-AUROC", "pixel_f1max": "P-F1max", "pixel_ap": "P-AP",
               "pixel_aupro": "P-AUPRO", "pixel_aupro_mvtec": "P-AUPRO-MVTec"}

def metric_text(value: float | None, scale: float = SHOWN_SCALE) -> str:
    """A metric as every table, report and terminal line shows it: x100 with 2 decimals, 'n/a'
    where it was not computed (None or NaN). ``scale=1`` for values already x100 (the metrics
    tables of ``reports.metrics_table``)."""
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{float(value) * scale:.2f}"


def threshold_text(value: float, rule: str) -> str:
    """A decision threshold as every report, terminal line and UI description shows it: 6
    significant digits (enough to tell it from the scores beside it, shown with 4 decimals) and
    the rule that chose it."""
    return f"{float(value):.6g}, {rule}"


ANOMALOUS, NORMAL = "anomalous", "normal"  # an image's decision, in every CSV, table and report


def decision_words(flags) -> np.ndarray:
    """'anomalous' where a decision (``decisions``) is 1, else 'normal'."""
    return np.where(np.asarray(flags) == 1, ANOMALOUS, NORMAL)


def pixel_usable(labels, has_mask) -> np.ndarray:
    """Images whose pixels count in pixel metrics and pixel thresholds: the normal ones and the
    anomalous ones with a mask (an anomalous image without one would count as all-normal)."""
    labels = np.asarray(labels)
    return (labels == 0) | ((labels == 1) & np.asarray(has_mask, dtype=bool))


def evaluate_arrays(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                    has_mask: np.ndarray, curves: dict[str, BinaryCurves | PixelCurves] | None = None
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
        pixels = pixel_curves_of(masks, maps, np.flatnonzero(pixel_usable(labels, has_mask)))
        if not pixels.n_positive or not pixels.n_negative:  # one kind of pixels: n/a, not the reference's zeros
            kind = "no defect pixels: every mask is empty" if not pixels.n_positive else "no normal pixels"
            notes["pixel"] = f"only one class in the masks ({kind})"
        else:
            curves["pixel"] = pixels
            metrics.update(pixel_metrics(masks, maps, pixels))
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


def choose_pixel_threshold(inputs: "EvaluationInputs", fixed: float | None = None,
                           pixel_curves: PixelCurves | None = None) -> tuple[float, str]:
    """Pixel threshold for binary defect masks: fixed if given; F1-optimal on the pixels when masks
    exist (``pixel_curves``: their PR curve, if the metrics computed it already); else the robust
    outlier rule on the raw image scores (the maxima of the maps), so that only images flagged as
    outliers get defect pixels."""
    labels, has_mask = np.asarray(inputs.labels), np.asarray(inputs.has_mask)
    if fixed is not None:
        return float(fixed), "fixed (config)"
    usable = pixel_usable(labels, has_mask)
    if has_mask.any() and (labels >= 0).all() and usable.any():
        curves = pixel_curves or pixel_curves_of(inputs.masks, inputs.maps, np.flatnonzero(usable))
        return curves.f1_optimal_threshold(), "F1-optimal on the mask pixels"
    return robust_threshold(inputs.raw), f"median + {ROBUST_Z} x MAD of the raw image scores (unsupervised)"


def decisions(scores, threshold: float) -> np.ndarray:
    """1 (anomalous) where the score reaches the threshold, else 0 (normal)."""
    return (np.asarray(scores) >= threshold).astype(np.int8)


def per_image_table(inputs: "EvaluationInputs", threshold: float) -> pd.DataFrame:
    """One row per image: where it is, its label, its scores (raw, RsCIN, min-max normalised), its decision."""
    rscin = np.asarray(inputs.scores, dtype=np.float64)
    span = rscin.max() - rscin.min()
    return pd.DataFrame({
        "path": list(inputs.paths), "name": list(inputs.names), "defect_type": list(inputs.defect_types),
        "label": pd.array([None if int(v) < 0 else int(v) for v in inputs.labels], dtype="Int64"),
        "score_raw": np.asarray(inputs.raw, dtype=np.float64), "score_rscin": rscin,
        "score_norm": (rscin - rscin.min()) / span if span > 0 else np.zeros_like(rscin),
        "decision": decision_words(decisions(rscin, threshold)),
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
    curves: dict[str, BinaryCurves | PixelCurves]  # ROC/PR curves of the metrics computed ("image", "pixel")

    def summary(self) -> dict[str, Any]:
        return {"metrics": metrics_to_json(self.metrics), "notes": self.notes, "threshold": self.threshold,
                "threshold_rule": self.rule, "pixel_threshold": self.pixel_threshold,
                "pixel_threshold_rule": self.pixel_rule}


class StoredImages:
    """A dataset of images (N, H, W) in an HDF5 file (an artifact's maps or masks), read one image at
    a time where it is used (the metrics' walk, the pictures, the binary masks, the defect pixel
    counts): evaluating holds an image of them at a time, not N (2,000 maps at 128 px are 262 MB of
    float64). Indexed by image, iterated in order; ``min``/``max`` over every image (one pass,
    remembered). The file is opened once, when made (right after the caller verified it), and read
    through that opening (a file replaced meanwhile is not mixed in); a process of its own can open
    the same path."""

    def __init__(self, path: str | Path, name: str):
        import h5py
        self.path, self.name = str(path), name
        self._file = h5py.File(self.path, "r")
        self._data = self._file[name]
        self.shape, self.dtype = tuple(self._data.shape), self._data.dtype
        self.ndim = len(self.shape)
        self._range = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return self._data[int(index)]

    def __iter__(self):
        return (self._data[index] for index in range(len(self)))

    def _extremes(self) -> tuple[float, float]:
        if self._range is None:
            extremes = np.array([(m.min(), m.max()) for m in self], dtype=np.float64).reshape(-1, 2)
            self._range = (float(extremes[:, 0].min()), float(extremes[:, 1].max())) if len(extremes) else (0.0, 0.0)
        return self._range

    def min(self) -> float:
        return self._extremes()[0]

    def max(self) -> float:
        return self._extremes()[1]


PIXELS_APART = 1 << 22  # stored maps of more pixels than this (256 images at 128 px) are walked in a process of their own


def pixel_curves_of(masks, maps, images) -> PixelCurves:
    """``PixelCurves.of(masks, maps, images)``: here, or, for stored maps and masks of more than
    ``PIXELS_APART`` pixels, in a process of its own (``musc.outputs.pixel_walk``) that
    reads them from their files: the walk's sorted pixels (8 bytes each, 262 MB at 2,000 images of
    128 px) are then held beside numpy and h5py alone, not beside the run's torch, model and Prefect,
    which keeps a run's largest process what its tiles need. The same values either way."""
    images = np.asarray(images, dtype=np.int64)
    stored = isinstance(masks, StoredImages) and isinstance(maps, StoredImages)
    if not stored or images.size * int(np.prod(maps.shape[1:])) <= PIXELS_APART:
        return PixelCurves.of(masks, maps, images)
    import json
    import pickle
    import subprocess
    import sys
    code_root = str(Path(__file__).resolve().parents[2])  # the folder this musc is imported from, first;
    start = (f"import sys; sys.path.insert(0, {code_root!r}); "  # isolated (-I): no current folder, no
             "from musc.outputs.pixel_walk import main; main()")  # PYTHONPATH, none of the user's site
    request = {"masks": [str(Path(masks.path).resolve()), masks.name], "maps": [str(Path(maps.path).resolve()), maps.name],
               "images": images.tolist()}
    done = subprocess.run([sys.executable, "-I", "-c", start], input=json.dumps(request).encode(),
                          capture_output=True)
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"{maps.path}: the pixel metrics' process failed (exit {done.returncode}): {last}")
    return pickle.loads(done.stdout)


@dataclass(frozen=True)
class EvaluationInputs:
    """What evaluating a category reads from its extract and classify artifacts, shared by the
    metrics, the pictures and the written outputs (the maps and masks as ``StoredImages``, read an
    image at a time; a tiled run's reduced ones in memory)."""
    names: np.ndarray
    paths: np.ndarray       # as the extract names them: relative to the dataset root (store.naming)
    defect_types: np.ndarray
    labels: np.ndarray      # 1 anomalous, 0 normal, -1 unknown
    has_mask: np.ndarray
    masks: np.ndarray       # (N, S, S), or ``StoredImages``
    maps: np.ndarray        # (N, S, S), or ``StoredImages`` (read one image at a time)
    raw: np.ndarray         # image scores before RsCIN (maxima of the maps)
    scores: np.ndarray      # final image scores
    files: Sequence[str] | None = None  # the image files where they are now (None: ``paths``)

    @property
    def image_files(self) -> Sequence[str]:
        return self.paths if self.files is None else self.files

    @classmethod
    def read(cls, extract, classify) -> "EvaluationInputs":
        if extract.config.get("tiles") is not None:
            return cls.read_tiled(extract, classify)
        return cls(*(extract.read(name) for name in ("names", "paths", "defect_types", "labels", "has_mask")),
                   StoredImages(extract.path, "masks"), StoredImages(classify.path, "maps"),
                   *(classify.read(name) for name in ("image_scores_raw", "image_scores")),
                   files=image_files(extract))

    @classmethod
    def read_tiled(cls, extract, classify) -> "EvaluationInputs":
        """A tiled run's inputs: its full-resolution maps and masks read one image at a time and, where an
        image has more than EVALUATION_MAX_PIXELS, reduced by ``evaluation_reduction`` (so the
        evaluation holds at most that many pixels per image, whatever the parts' resolution)."""
        height, width = extract.shape("masks")[1:]
        factor = evaluation_reduction(height, width)
        rule = str(extract.attrs.get("mask_rule", "nonzero"))
        n_images = extract.shape("masks")[0]
        masks, maps = [], []
        for index in range(n_images):
            mask, anomaly_map = extract.read("masks", (index,)), classify.read("maps", (index,))
            masks.append(reduce_mask(mask, factor, rule))
            maps.append(reduce_map(anomaly_map, factor))
        return cls(*(extract.read(name) for name in ("names", "paths", "defect_types", "labels", "has_mask")),
                   np.stack(masks), np.stack(maps), *(classify.read(name) for name in ("image_scores_raw", "image_scores")),
                   files=image_files(extract))


def image_files(extract) -> list[str]:
    """The image files of an opened extract artifact, where they are now: its ``paths`` under its
    dataset root, found from the root and the artifacts folder it recorded and the artifacts root it
    lies in (``store.naming.dataset_root``)."""
    from ..store import naming
    from ..store.catalog import located
    names = [str(name) for name in extract.read("paths")]
    if all(Path(name).is_absolute() for name in names):  # an artifact of an earlier version
        return names
    root = naming.dataset_root(str(extract.attrs.get("root", ".")), extract.attrs.get("artifacts"),
                               located(extract.path).root)
    return [str(naming.image_file(name, root)) for name in names]


EVALUATION_MAX_PIXELS = 1 << 20  # per image (1024 x 1024): a tiled run's maps are evaluated at most at this size


def evaluation_reduction(height: int, width: int) -> int:
    """The smallest integer factor k that brings an image of height x width pixels to at most
    EVALUATION_MAX_PIXELS in blocks of k x k (1: evaluated at full resolution)."""
    factor = 1
    while math.ceil(height / factor) * math.ceil(width / factor) > EVALUATION_MAX_PIXELS:
        factor += 1
    return factor


def _pooled_size(shape, factor: int) -> tuple[int, int]:
    return math.ceil(shape[0] / factor), math.ceil(shape[1] / factor)


def reduce_map(anomaly_map: np.ndarray, factor: int) -> np.ndarray:
    """A map reduced by ``factor`` to ceil(H / k) x ceil(W / k): each block's mean (adaptive pooling:
    blocks of k x k pixels where k divides the sides, of about k otherwise)."""
    if factor == 1:
        return anomaly_map
    import torch
    import torch.nn.functional as F
    grid = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float64))[None, None]
    return F.adaptive_avg_pool2d(grid, _pooled_size(anomaly_map.shape, factor))[0, 0].numpy()


def reduce_mask(mask: np.ndarray, factor: int, rule: str) -> np.ndarray:
    """A binary mask reduced by ``factor`` with the dataset's rule (docs/METHOD.md 1.3): a block is
    defective when all its pixels are (``truncate``, as MVTec AD's resizing keeps only pixels that stay
    255) or when any is (``nonzero``)."""
    if factor == 1:
        return mask
    import torch
    import torch.nn.functional as F
    grid = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    size = _pooled_size(mask.shape, factor)
    pooled = -F.adaptive_max_pool2d(-grid, size) if rule == "truncate" else F.adaptive_max_pool2d(grid, size)
    return (pooled[0, 0].numpy() > 0.5).astype(np.uint8)


def evaluate(inputs: EvaluationInputs, threshold: float | None = None,
             pixel_threshold: float | None = None) -> Evaluation:
    """Metrics, thresholds and decisions from what an extract and a classify artifact hold."""
    scores = inputs.scores
    curves: dict[str, BinaryCurves | PixelCurves] = {}
    metrics, notes = evaluate_arrays(inputs.labels, scores, inputs.masks, inputs.maps, inputs.has_mask, curves)
    value, rule = choose_threshold(inputs.labels, scores, threshold)
    pixel_value, pixel_rule = choose_pixel_threshold(inputs, pixel_threshold, curves.get("pixel"))
    per_image = per_image_table(inputs, value)
    per_image["defect_pixels"] = [(m >= pixel_value).sum() for m in inputs.maps]
    return Evaluation(metrics, notes, value, rule, pixel_value, pixel_rule,
                      np.argsort(-np.asarray(scores)).astype(np.int64), decisions(scores, value), per_image, curves)
