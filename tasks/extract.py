"""Stage 1, extract: patch tokens of the chosen blocks and image embeddings, batch by batch.

Each batch is written as a part as soon as it is done, so a crash loses at most one batch.
Unreadable images are skipped with a warning and listed in the artifact.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from musc import MuscConfig, store
from musc.backbone import backbone_settings, load_backbone
from musc.config import ConfigError
from musc.data import UnreadableImage, load_category, load_image, load_mask
from musc.store import file_digest

from .stage import Ref, ensure_artifact, fault_point, logger, stage_task
from .versions import code_version


def plan_extract(dataset: str, root: str, category: str, config: dict, artifacts: str) -> Path:
    samples = load_category(dataset, root, category).samples
    images = [(s.name, file_digest(s.path), s.label, file_digest(s.mask_path) if s.mask_path else None)
              for s in samples]
    key = store.stable_hash(code_version("extract"), dataset, category, backbone_settings(config), images)
    return store.artifact_path(artifacts, dataset, category, "extract", key)


def _extract_batch(backbone, samples, indices, mask_rule, image_size):
    images, kept, skipped = [], [], []
    for index in indices:
        try:
            images.append(backbone.preprocess(load_image(samples[index].path)))
            kept.append(index)
        except UnreadableImage as error:
            skipped.append(str(error))
    if not images:
        return None, skipped
    tokens, embeddings = backbone.extract(torch.stack(images))
    masks = np.stack([load_mask(samples[i].mask_path, image_size, mask_rule) for i in kept])
    return {"tokens": torch.stack(tokens).numpy(), "embeddings": embeddings.numpy(),
            "indices": np.asarray(kept, dtype=np.int64), "masks": masks}, skipped


def build_extract(path: Path, dataset: str, root: str, category: str, config: dict) -> None:
    cfg = MuscConfig.from_dict(config)
    log = logger()
    listing = load_category(dataset, root, category)
    samples = listing.samples
    backbone = load_backbone(cfg.backbone, cfg.pretrained, cfg.image_size, cfg.layers, cfg.device,
                             cfg.seed, cfg.quick_gelu)
    batches = [list(range(i, min(i + cfg.batch_size, len(samples)))) for i in range(0, len(samples), cfg.batch_size)]
    skipped: list[str] = []
    started, done_images = time.perf_counter(), 0
    for number, indices in enumerate(batches):
        name = f"batch_{number:05d}"
        part = store.read_part(path, name)
        if part is not None:
            skipped.extend(json.loads(part.get("attr:skipped", "[]")))
            continue
        arrays, batch_skipped = _extract_batch(backbone, samples, indices, listing.mask_rule, cfg.image_size)
        for message in batch_skipped:
            log.warning(f"extract: skipping {message}")
        skipped.extend(batch_skipped)
        store.write_part(path, name, arrays or {"indices": np.zeros(0, dtype=np.int64)},
                         attrs={"skipped": json.dumps(batch_skipped)})
        done_images += len(indices)
        fault_point("extract", number + 1)
        rate = done_images / max(time.perf_counter() - started, 1e-9)
        log.info(f"extract: batch {number + 1}/{len(batches)} ({rate:.1f} images/s)")

    parts = [store.read_part(path, f"batch_{n:05d}") for n in range(len(batches))]
    if any(p is None for p in parts):
        raise store.ArtifactError(f"{path}: a batch part vanished while merging; rerun to redo it")
    parts = [p for p in parts if p["indices"].size]
    kept = np.concatenate([p["indices"] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    if kept.size < 2:
        raise ConfigError(f"category {category!r}: only {kept.size} readable image(s); MuSc needs at least 2")
    chosen = [samples[i] for i in kept]
    has_mask = np.array([s.mask_path is not None for s in chosen])

    def fill(f: h5py.File) -> None:
        first = parts[0]["tokens"]
        tokens = f.create_dataset("tokens", shape=(first.shape[0], kept.size, *first.shape[2:]), dtype=first.dtype,
                                  chunks=(1, 1, *first.shape[2:]))
        masks = f.create_dataset("masks", shape=(kept.size, cfg.image_size, cfg.image_size), dtype=np.uint8,
                                 chunks=(1, cfg.image_size, cfg.image_size), compression="gzip")
        start = 0
        for part in parts:
            stop = start + part["indices"].size
            tokens[:, start:stop] = part["tokens"]
            masks[start:stop] = part["masks"]
            start = stop
        f.create_dataset("embeddings", data=np.concatenate([p["embeddings"] for p in parts]))

    labels = np.array([-1 if s.label is None else s.label for s in chosen], dtype=np.int64)
    store.write_artifact(
        path, "extract", {"dataset": dataset, "root": str(root), "category": category, **backbone_settings(config)},
        inputs={s.name: file_digest(s.path) for s in chosen},
        arrays={"names": [s.name for s in chosen], "paths": [s.path for s in chosen],
                "defect_types": [s.defect_type for s in chosen], "labels": labels, "has_mask": has_mask,
                "skipped": skipped or np.zeros(0, dtype=object)},
        attrs={"backbone": backbone.describe(), "mask_rule": listing.mask_rule, "n_skipped": len(skipped)},
        code_version=code_version("extract"), fill=fill)
    store.clear_parts(path)
    log.info(f"extract: {kept.size} images, {len(skipped)} skipped -> {path}")


@stage_task("extract", plan_extract)
def extract_task(dataset: str, root: str, category: str, config: dict, artifacts: str) -> Ref:
    path = plan_extract(dataset, root, category, config, artifacts)
    return ensure_artifact("extract", path, lambda p: build_extract(p, dataset, root, category, config))
