"""Score new images against a reference pool, and fill the pool from scored runs (``musc pool add``,
``musc score-new``). See ``musc.pool`` for the method and the pool policy."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import MuscConfig
from .data import UnreadableImage, load_image
from .lnamd import aggregate
from .pool import DEFAULT_MAX_IMAGES, Pool, pool_maps
from .rebuild import find_input
from .store import ArtifactError, open_artifact
from .report import save_overlay

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
    from .backbone import BACKBONE_FIELDS, load_backbone
    pool = Pool.load(pool_path)
    settings = pool.settings
    cfg = MuscConfig.from_dict({k: settings[k] for k in BACKBONE_FIELDS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone(cfg.backbone, cfg.pretrained, cfg.image_size, cfg.layers, device, cfg.seed,
                                 cfg.quick_gelu)
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
    maps, scores = pool_maps(new, {r: pool.layers(r) for r in pool.features}, cfg.image_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, image, anomaly_map, score in zip(names, loaded, maps, scores):
        target = out / (Path(name).stem + "_map.png")
        picture = np.asarray(image.resize((cfg.image_size, cfg.image_size)))
        save_overlay(picture, anomaly_map, target, title=f"{Path(name).name}  score {score:.4f}")
        np.save(out / (Path(name).stem + "_map.npy"), anomaly_map)
        results.append({"image": name, "score": float(score), "map_png": str(target)})
    (out / "scores.json").write_text(json.dumps(results, indent=2))
    return results
