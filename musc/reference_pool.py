"""The reference pool service: score new images (one, or a few) against earlier images with the
MSM rule, and fill the pool from scored runs (``musc pool add``, ``musc score-new``).

MuSc needs a set of images that score each other; a single new image has none. A pool keeps the
LNAMD features of earlier images, so that each new image is scored against the pool plus the
other new images, exactly as if they had all been one batch (each patch's votes: its nearest
distance to every other image; score: the mean of the smallest ``topmin_max`` fraction).

Pool policy (bounded size): ``add`` appends the images of a scored batch that were judged normal
(or all of them when asked); when the pool holds more than ``max_images``, the oldest images are
removed first. Normal-looking earlier images are the useful ones: an anomalous image in the pool
only weakens the votes against the same defect.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .inputs.config import ExtractSettings
from .inputs.datasets import UnreadableImage, load_image
from .method.lnamd import aggregate
from .method.maps import anomaly_maps
from .method.msm import msm_rank_window, reduce_votes, tile_minima
from .outputs.figures import save_overlay
from .outputs.rebuild import find_input
from .store import ArtifactError, mark_artifacts_root, open_artifact, write_artifact

DEFAULT_MAX_IMAGES = 200


def pool_votes(new: torch.Tensor, pool: torch.Tensor, radius: int | None = None, precision: str = "fp32"
               ) -> torch.Tensor:
    """Votes of each new image against every pool image and every other new image: (M, P + M, L)."""
    against_pool, _ = tile_minima(new, pool, radius=radius, precision=precision)
    among_new, _ = tile_minima(new, new, same_block=True, radius=radius, precision=precision)
    return torch.cat([against_pool, among_new], dim=1)


def score_against_pool(new_layers: Sequence[torch.Tensor], pool_layers: Sequence[torch.Tensor],
                       topmin_min: float = 0.0, topmin_max: float = 0.3, radius: int | None = None,
                       precision: str = "fp32") -> torch.Tensor:
    """MSM scores (layers, M, L) of the new images against pool + each other, per layer.

    new_layers / pool_layers: per layer, L2-normalised LNAMD features (M, L, C) / (P, L, C).
    """
    per_layer = []
    for new, pool in zip(new_layers, pool_layers):
        votes = pool_votes(new.float(), pool.float(), radius, precision)
        k_min, k_max = msm_rank_window(new.shape[0] + pool.shape[0], topmin_min, topmin_max)
        per_layer.append(reduce_votes(votes, k_min, k_max))
    return torch.stack(per_layer)


def pool_maps(new_by_degree: dict[int, Sequence[torch.Tensor]], pool_by_degree: dict[int, Sequence[torch.Tensor]],
              image_size: int, topmin_min: float = 0.0, topmin_max: float = 0.3, radius: int | None = None,
              precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (M, S, S) and image scores (M,) of new images against a pool, over all degrees."""
    return anomaly_maps([score_against_pool(new_by_degree[r], pool_by_degree[r], topmin_min, topmin_max, radius,
                                            precision)
                         for r in sorted(new_by_degree)], image_size)


class Pool:
    """The pool file: features per degree (layers, P, L, C), names, when each was added, and the
    extraction settings they were made with (new images must be extracted the same way)."""

    def __init__(self, features: dict[int, np.ndarray], names: list[str], added: np.ndarray,
                 settings: dict[str, Any], max_images: int = DEFAULT_MAX_IMAGES):
        self.features, self.names, self.added = features, names, added
        self.settings, self.max_images = settings, max_images

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def load(cls, path: str | Path) -> "Pool":
        artifact = open_artifact(path, "pool")
        degrees = [int(r) for r in artifact.config["r_list"]]
        return cls({r: artifact.read(f"features_r{r}") for r in degrees}, list(artifact.read("names")),
                   artifact.read("added"), artifact.config["settings"], int(artifact.config["max_images"]))

    def add(self, features: dict[int, np.ndarray], names: Sequence[str], settings: dict[str, Any]) -> None:
        """Append images (features per degree: (layers, n, L, C)); drop the oldest beyond max_images."""
        if len(self) and settings != self.settings:
            changed = sorted(k for k in set(settings) | set(self.settings) if settings.get(k) != self.settings.get(k))
            raise ArtifactError(f"pool: these images were extracted with other settings ({', '.join(changed)})")
        if len(self) and set(features) != set(self.features):
            raise ArtifactError(f"pool: degrees {sorted(features)} differ from the pool's {sorted(self.features)}")
        self.settings = settings
        now = np.full(len(names), time.time())
        for r, values in features.items():
            self.features[r] = values if not len(self) else np.concatenate([self.features[r], values], axis=1)
        self.names = self.names + list(names)
        self.added = np.concatenate([self.added, now]) if len(self.added) else now
        overflow = len(self.names) - self.max_images
        if overflow > 0:  # oldest first: the arrays are in order of addition
            self.features = {r: v[:, overflow:] for r, v in self.features.items()}
            self.names, self.added = self.names[overflow:], self.added[overflow:]

    def save(self, path: str | Path) -> str:
        degrees = sorted(self.features)
        return write_artifact(path, "pool", {"r_list": degrees, "settings": self.settings,
                                             "max_images": self.max_images}, {},
                              {**{f"features_r{r}": self.features[r] for r in degrees},
                               "names": self.names, "added": self.added})

    def layers(self, r: int) -> list[torch.Tensor]:
        return [torch.from_numpy(layer) for layer in self.features[r]]


# The service: filling the pool from runs, scoring new images --------------------------------------

RUN_FIELDS = ("dataset", "root", "category")


def evaluation_in(path: str | Path) -> Path:
    """An evaluate artifact, or the newest one under a category folder."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(path.glob("evaluate/*.h5"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ArtifactError(f"{path}: no evaluate artifact here (give a category folder of a run, or the .h5)")
    return candidates[-1]


def add_run_to_pool(pool_path: str | Path, run: str | Path, include_anomalous: bool = False,
                    max_images: int = DEFAULT_MAX_IMAGES) -> tuple[int, int]:
    """Append the LNAMD features of a scored run's images (normal-judged ones unless
    ``include_anomalous``); returns (images added, pool size)."""
    evaluate_path = evaluation_in(run)
    evaluation = open_artifact(evaluate_path, "evaluate")
    classify_path = find_input(evaluate_path, "classify", evaluation.inputs["classify"])
    classify = open_artifact(classify_path, "classify")
    extract = open_artifact(find_input(evaluate_path, "extract", evaluation.inputs["extract"]), "extract")
    keep = np.ones(len(extract.read("names")), bool) if include_anomalous else evaluation.read("decisions") == 0
    features = {}
    for name, digest in classify.inputs.items():
        if not name.startswith("score_"):
            continue
        score_path = find_input(classify_path, "score", digest)
        aggregate_path = find_input(score_path, "aggregate", open_artifact(score_path, "score").inputs["aggregate"])
        aggregated = open_artifact(aggregate_path, "aggregate")
        features[int(aggregated.config["r"])] = aggregated.read("features")[:, keep]
    settings = {k: v for k, v in extract.config.items() if k not in RUN_FIELDS}
    pool = Pool.load(pool_path) if Path(pool_path).exists() else Pool({}, [], np.zeros(0), settings, max_images)
    pool.max_images = max_images
    pool.add(features, [f"{extract.config['category']}/{n}" for n in extract.read("names")[keep]], settings)
    pool.save(pool_path)
    return int(keep.sum()), len(pool)


def score_new_images(pool_path: str | Path, images: Sequence[str | Path], out: str | Path,
                     device: str = "auto") -> list[dict]:
    """Maps and scores of new images against the pool; writes one overlay PNG and a JSON summary."""
    from .inputs.backbones import backbone_for
    pool = Pool.load(pool_path)
    settings = pool.settings
    extract = ExtractSettings(**{k: settings[k] for k in ExtractSettings.TOKEN_FIELDS}, device=device, batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = backbone_for(extract)
    loaded, names = [], []
    for image in images:
        try:
            loaded.append(load_image(image))
            names.append(str(image))
        except UnreadableImage as error:
            warnings.warn(str(error), stacklevel=2)
    if not loaded:
        raise UnreadableImage("score-new: none of the images could be read")
    tokens, _ = backbone.extract(torch.stack([backbone.preprocess(image) for image in loaded]))
    new = {r: [aggregate(layer, r) for layer in tokens] for r in pool.features}
    maps, scores = pool_maps(new, {r: pool.layers(r) for r in pool.features}, extract.image_size)
    out = mark_artifacts_root(out)  # our maps are never listed as input images later
    results = []
    for name, image, anomaly_map, score in zip(names, loaded, maps, scores):
        target = out / (Path(name).stem + "_map.png")
        picture = np.asarray(image.resize((extract.image_size, extract.image_size)))
        save_overlay(picture, anomaly_map, target, title=f"{Path(name).name}  score {score:.4f}")
        np.save(out / (Path(name).stem + "_map.npy"), anomaly_map)
        results.append({"image": name, "score": float(score), "map_png": str(target)})
    (out / "scores.json").write_text(json.dumps(results, indent=2))
    return results
