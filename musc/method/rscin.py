"""RsCIN: re-scoring with the constrained image-level neighbourhood (docs/METHOD.md section 6)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .checks import check_image_count


def rescore(scores, embeddings, k_list: Sequence[int]) -> np.ndarray:
    """Smooth image scores over each image's k most similar images, averaged over ``k_list``.

    ``scores``: (N,) raw image scores; ``embeddings``: (N, D) L2-normalised image embeddings, or
    None. Returns (N,) float32, or the raw scores unchanged (float64) when ``embeddings`` is None or
    ``k_list`` contains 0, as the reference does.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores: expected shape (N,), got {scores.shape}")
    k_list = [int(k) for k in k_list]
    if embeddings is None or 0 in k_list or not k_list:
        return scores
    embeddings = np.asarray(embeddings)
    n_images = scores.shape[0]
    if embeddings.ndim != 2 or embeddings.shape[0] != n_images:
        raise ValueError(f"embeddings: expected shape ({n_images}, D), got {embeddings.shape}")
    check_image_count(n_images, k_list)

    span = scores.max() - scores.min()
    # The reference divides by zero here (all scores equal); we return all-zero normalised scores.
    normalised = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    normalised = torch.from_numpy(normalised.astype(np.float32))
    similarity = torch.from_numpy((embeddings @ embeddings.T).astype(np.float32))

    per_k = [_rescore_one_window(similarity, normalised, k) for k in k_list]
    return torch.stack(per_k).mean(dim=0).numpy()


def _rescore_one_window(similarity: torch.Tensor, normalised: torch.Tensor, k: int) -> torch.Tensor:
    """S^(k) = D^-1 W_k s, where W_k keeps the k largest similarities of each row."""
    n_images = similarity.shape[0]
    kept = similarity.clone()
    smallest = torch.topk(similarity, n_images - k, dim=1, largest=False).indices
    kept.scatter_(1, smallest, 0.0)
    weights = kept / kept.sum(dim=1, keepdim=True)
    return weights @ normalised
