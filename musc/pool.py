"""A reference pool: score new images (one, or a few) against earlier images with the MSM rule.

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

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .msm import msm_rank_window, reduce_votes, tile_minima
from .scoring import upsample_maps
from .store import ArtifactError, open_artifact, write_artifact

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
    """Mean over layers of the MSM scores of the new images (M, L) against pool + each other.

    new_layers / pool_layers: per layer, L2-normalised LNAMD features (M, L, C) / (P, L, C).
    """
    per_layer = []
    for new, pool in zip(new_layers, pool_layers):
        votes = pool_votes(new.float(), pool.float(), radius, precision)
        k_min, k_max = msm_rank_window(new.shape[0] + pool.shape[0], topmin_min, topmin_max)
        per_layer.append(reduce_votes(votes, k_min, k_max))
    return torch.stack(per_layer).mean(dim=0)


def pool_maps(new_by_degree: dict[int, Sequence[torch.Tensor]], pool_by_degree: dict[int, Sequence[torch.Tensor]],
              image_size: int, topmin_min: float = 0.0, topmin_max: float = 0.3, radius: int | None = None,
              precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (M, S, S) and image scores (M,) of new images against a pool, over all degrees."""
    patch_map = torch.stack([score_against_pool(new_by_degree[r], pool_by_degree[r], topmin_min, topmin_max, radius,
                                                precision)
                             for r in sorted(new_by_degree)]).mean(dim=0)
    maps = upsample_maps(patch_map, image_size).numpy()
    return maps, maps.reshape(maps.shape[0], -1).max(axis=1)


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
