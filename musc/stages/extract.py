"""Stage 1, extract: patch tokens of the chosen blocks and image embeddings, batch by batch.

Each batch is written as a part as soon as it is done, so a crash loses at most one batch.
Unreadable images are skipped with a warning and listed in the artifact.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .. import store
from ..store import naming
from ..inputs.backbone_spec import backbone_settings, check_tile_size, model_files
from ..inputs.config import ExtractSettings
from ..inputs.datasets import Category, DatasetError
from ..inputs.images import UnreadableImage, load_image, load_mask
from ..method.checks import MIN_IMAGES
from ..method.tiling import ImageTiling, TileSizeError
from ..progress import TRACKER
from .building import Plan
from .faults import fault_point
from .key import StageKey

log = logging.getLogger("musc.stages")


def image_listing(category: Category) -> list[tuple]:
    """What decides the extracted images: each image's name, content digest, label and mask digest."""
    return [(s.name, store.file_digest(s.path), s.label, _mask_digest(s.mask_path)) for s in category.samples]


def _mask_digest(mask_path: str | tuple[str, ...] | None) -> str | list[str] | None:
    """The digest of an image's mask file (a list of digests where its masks are several files)."""
    if mask_path is None:
        return None
    return store.file_digest(mask_path) if isinstance(mask_path, str) else [store.file_digest(p) for p in mask_path]


def plans(run) -> list[Plan]:
    return [plan(run.images, run.config.extract, run.artifacts, run.artifacts_given)]


def plan(category: Category, settings: ExtractSettings, artifacts: str, artifacts_given: str | None = None) -> Plan:
    """``artifacts_given``: the artifacts folder as the person gave it (recorded beside the dataset
    root, so that a relative root is found again: ``store.naming.dataset_root``)."""
    key = StageKey("extract", {"dataset": category.dataset, "category": category.name, **backbone_settings(settings)},
                   {"images": store.stable_hash(image_listing(category))})
    path = store.artifact_path(artifacts, category.dataset, category.name, "extract", key.value)
    return Plan(key, str(path), f"extract {category.name}", Needs(category, settings, artifacts_given or artifacts),
                build)


@dataclass(frozen=True)
class Needs:
    category: Category
    settings: ExtractSettings
    artifacts: str = ""  # the artifacts folder as given: a record, not in the key


def tiling_of(category: Category, settings: ExtractSettings) -> ImageTiling | None:
    """The tiling of a category's images (their size: the first readable image's), or None untiled.
    ConfigError when its tiles are too small for the backbone (``check_tile_size``)."""
    if settings.tiles is None:
        return None
    for sample in category.samples:
        try:
            width, height = load_image(sample.path).size
        except UnreadableImage:
            continue
        try:
            tiling = ImageTiling.of_size(height, width, settings.tiles, settings.tile_overlap)
        except ValueError as error:
            raise DatasetError(f"{sample.path}: {error}") from None
        sides = tiling.boxes[:, 2:] - tiling.boxes[:, :2]  # each tile's (height, width)
        check_tile_size(settings, int(sides[:, 0].min()), int(sides[:, 1].min()), sample.path)
        return tiling
    return None  # no readable image: the merge says so


def forward(backbone, pictures: list, tiling: ImageTiling | None = None, batch_size: int = 4):
    """Patch tokens (per layer: rows, L, C) and image embeddings (n, D) of PIL ``pictures``. Tiled
    (every picture of the tiling's size): each picture's tiles are rows of the tokens (image-major),
    forwarded ``batch_size`` tiles at a time; a picture's embedding is the mean of its tiles'
    embeddings, renormalised. The one forward of the extract stage and of the pool's new parts."""
    import torch
    if tiling is None:
        chunks = [backbone.extract(torch.stack([backbone.preprocess(p) for p in pictures[s:s + batch_size]]))
                  for s in range(0, len(pictures), batch_size)]
    else:
        tiles = [backbone.preprocess(tile) for picture, path in pictures for tile in tiling.cut(picture, path)]
        chunks = [backbone.extract(torch.stack(tiles[s:s + batch_size])) for s in range(0, len(tiles), batch_size)]
    tokens = [torch.cat([chunk[0][layer] for chunk in chunks]) for layer in range(len(chunks[0][0]))]
    embeddings = torch.cat([chunk[1] for chunk in chunks]).float()
    if tiling is not None:
        embeddings = embeddings.view(len(pictures), tiling.count, -1).mean(dim=1)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    return tokens, embeddings


def extract_batch(backbone, category: Category, indices, image_size, tiling: ImageTiling | None = None,
                   batch_size: int = 4):
    """Tokens, embeddings (``forward``) and masks of a batch of images; masks at the image size, or
    at the image's full resolution when tiled."""
    import torch
    pictures, kept, skipped = [], [], []
    for index in indices:
        path = category.samples[index].path
        try:
            image = load_image(path)
            if tiling is not None:
                tiling.check_size(image, path)  # before any tile is forwarded
            pictures.append(image if tiling is None else (image, path))
            kept.append(index)
        except UnreadableImage as error:  # recorded naming the image as outputs do
            skipped.append(str(error).replace(str(path), naming.image_name(path, category.root_folder)))
        except TileSizeError as error:
            raise DatasetError(f"{error}; a tiled run needs images of one size") from None
    if not pictures:
        return None, skipped
    tokens, embeddings = forward(backbone, pictures, tiling, len(pictures) if tiling is None else batch_size)
    mask_size = image_size if tiling is None else (tiling.height, tiling.width)
    sizes = [(picture if tiling is None else picture[0]).size for picture in pictures]
    masks = np.stack([load_mask(category.samples[i].mask_path, mask_size, category.mask_rule, size)
                      for i, size in zip(kept, sizes)])
    return {"tokens": torch.stack(tokens).numpy(), "embeddings": embeddings.numpy(),
            "indices": np.asarray(kept, dtype=np.int64), "masks": masks}, skipped


def build(path: Path, plan: Plan) -> None:
    from ..inputs.backbones import backbone_for  # torch and open_clip: only when extracting
    category, settings = plan.needs.category, plan.needs.settings
    samples = category.samples
    backbone = backbone_for(settings)
    batch_size = settings.batch_size
    batches = [list(range(i, min(i + batch_size, len(samples)))) for i in range(0, len(samples), batch_size)]
    tiling = tiling_of(category, settings)
    skipped: list[str] = []
    started, done_images = time.perf_counter(), 0
    # the flow opened this job (terminal bar, Prefect progress artifact); alone, the task opens it
    job = TRACKER.job(category.name, "extract", len(samples), "images", category.dataset)
    for number, indices in enumerate(batches):
        name = f"batch_{number:05d}"
        part = store.read_part(path, name)
        if part is not None:
            skipped.extend(json.loads(part.get("attr:skipped", "[]")))
            job.advance(len(indices))
            continue
        arrays, batch_skipped = extract_batch(backbone, category, indices, settings.image_size, tiling, batch_size)
        for message in batch_skipped:
            log.warning(f"extract: skipping {message} (under {category.root})")
        skipped.extend(batch_skipped)
        store.write_part(path, name, arrays or {"indices": np.zeros(0, dtype=np.int64)},
                         attrs={"skipped": json.dumps(batch_skipped)})
        done_images += len(indices)
        job.advance(len(indices))
        fault_point("extract", number + 1)
        rate = done_images / max(time.perf_counter() - started, 1e-9)
        log.info(f"extract: batch {number + 1}/{len(batches)} ({rate:.1f} images/s)")

    # the batches' images (their tokens read one batch at a time below: memory is one batch's, not N images')
    names = [f"batch_{n:05d}" for n in range(len(batches))]
    listed = [store.read_part(path, name, only=("indices",)) for name in names]
    if any(p is None for p in listed):
        raise store.ArtifactError(f"{path}: a batch part vanished while merging; rerun to redo it")
    names = [name for name, part in zip(names, listed) if part["indices"].size]
    kept = (np.concatenate([p["indices"] for p in listed if p["indices"].size]) if names
            else np.zeros(0, dtype=np.int64))
    if kept.size < MIN_IMAGES:
        raise DatasetError(f"category {category.name!r}: only {kept.size} readable image(s); "
                           f"MuSc needs at least {MIN_IMAGES}")
    chosen = [samples[i] for i in kept]
    has_mask = np.array([s.mask_path is not None for s in chosen])
    per_image = 1 if tiling is None else tiling.count  # token rows per image

    def fill(f: h5py.File) -> None:
        tokens = masks = None
        start, embeddings = 0, []
        for name in names:
            part = store.read_part(path, name, only=("indices", "tokens", "masks", "embeddings"))
            if part is None:
                raise store.ArtifactError(f"{path}: a batch part vanished while merging; rerun to redo it")
            if tokens is None:
                first, mask_shape = part["tokens"], part["masks"].shape[1:]  # masks: (S, S), or (H, W) when tiled
                tokens = f.create_dataset("tokens", shape=(first.shape[0], kept.size * per_image, *first.shape[2:]),
                                          dtype=first.dtype, chunks=(1, 1, *first.shape[2:]))
                masks = f.create_dataset("masks", shape=(kept.size, *mask_shape), dtype=np.uint8,
                                         chunks=(1, *mask_shape), compression="gzip")
            stop = start + part["indices"].size
            tokens[:, start * per_image:stop * per_image] = part["tokens"]
            masks[start:stop] = part["masks"]
            embeddings.append(part["embeddings"])
            start = stop
        f.create_dataset("embeddings", data=np.concatenate(embeddings))
        if tiling is not None:
            f.create_dataset("tile_source", data=np.repeat(np.arange(kept.size, dtype=np.int64), tiling.count))
            f.create_dataset("tile_boxes", data=np.tile(tiling.boxes, (kept.size, 1)))

    labels = np.array([-1 if s.label is None else s.label for s in chosen], dtype=np.int64)
    store.write_artifact(
        path, "extract", plan.key.config, plan.key.inputs,
        arrays={"names": [s.name for s in chosen],
                "paths": [naming.image_name(s.path, category.root_folder) for s in chosen],
                "digests": [store.file_digest(s.path) for s in chosen],
                "defect_types": [s.defect_type for s in chosen], "labels": labels, "has_mask": has_mask,
                "skipped": skipped or np.zeros(0, dtype=object)},
        attrs={"backbone": backbone.describe(), "mask_rule": category.mask_rule, "n_skipped": len(skipped),
               "root": naming.as_given(category.root), "artifacts": naming.as_given(plan.needs.artifacts),
               "model_files": model_files(settings, path.parent)},
        code_version=plan.key.code_version, fill=fill)
    store.clear_parts(path)
    for orphan in store.clear_orphan_parts(path):
        log.info(f"extract: removed {orphan.name}, unfinished work on images that have changed since")
    job.finish()
    log.info(f"extract: {kept.size} images, {len(skipped)} skipped -> {path}")
