"""Stage 4, classify: anomaly maps (mean over layers and degrees, upsampled; tiled runs: the tiles'
maps stitched at the image's full resolution) and image scores before and after RsCIN."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .. import store
from ..store.catalog import role_name
from .building import Plan
from .faults import fault_point
from .key import Ref, StageKey

IMAGES_PER_CHUNK = 32


def plans(run, extract: Ref, score: list[Ref]) -> list[Plan]:
    return [plan(extract, score, run.config.k_list_for(run.images.dataset), run.config.image_size)]


def plan(extract: Ref, scores: list[Ref], k_list, image_size: int) -> Plan:
    k_list = [int(k) for k in k_list]
    key = StageKey("classify", {"k_list": k_list, "image_size": int(image_size)},
                   {"extract": extract["digest"], **{role_name("score", i): s["digest"] for i, s in enumerate(scores)}})
    return Plan(key, str(key.beside(extract)), "classify", Needs(extract, tuple(scores), tuple(k_list)), build)


@dataclass(frozen=True)
class Needs:
    extract: Ref
    scores: tuple[Ref, ...]   # one per degree r
    k_list: tuple[int, ...]


def build(path: Path, plan: Plan) -> None:
    from ..method.maps import combine_patch_scores, image_scores_from_maps, upsample_maps
    from ..method.rscin import rescore
    extract, scores, k_list = plan.needs.extract, plan.needs.scores, list(plan.needs.k_list)
    source = store.open_artifact(extract["path"], "extract", extract["digest"])
    image_size = int(plan.key.config["image_size"])
    patch_map = combine_patch_scores([store.open_artifact(s["path"], "score", s["digest"]).read("scores")
                                      for s in scores]).numpy()
    tiled = source.config.get("tiles") is not None
    n_images = source.shape("masks")[0] if tiled else patch_map.shape[0]
    raw = np.empty(n_images)

    def fill_untiled(maps: h5py.Dataset) -> None:
        for start in range(0, n_images, IMAGES_PER_CHUNK):
            chunk = upsample_maps(patch_map[start:start + IMAGES_PER_CHUNK], image_size)
            maps[start:start + chunk.shape[0]] = chunk.numpy()
            raw[start:start + chunk.shape[0]] = image_scores_from_maps(chunk)

    def fill_stitched(maps: h5py.Dataset) -> None:
        """One image's map at a time: its tiles' patch scores stitched at its full resolution."""
        from ..method.tiling import stitch
        sources, boxes = source.read("tile_source"), source.read("tile_boxes")
        for image in range(n_images):
            rows = np.flatnonzero(sources == image)
            stitched = stitch(patch_map[rows], boxes[rows], *maps.shape[1:])
            maps[image] = stitched
            raw[image] = stitched.max()

    def fill(f: h5py.File) -> None:
        shape = tuple(source.shape("masks")[1:]) if tiled else (image_size, image_size)
        maps = f.create_dataset("maps", shape=(n_images, *shape), dtype="float64", chunks=(1, *shape))
        (fill_stitched if tiled else fill_untiled)(maps)
        fault_point("classify", 1)
        f.create_dataset("image_scores_raw", data=raw)
        f.create_dataset("image_scores", data=rescore(raw, source.read("embeddings"), k_list))

    store.write_artifact(path, "classify", plan.key.config, plan.key.inputs, {"patch_map": patch_map},
                         code_version=plan.key.code_version, fill=fill)
