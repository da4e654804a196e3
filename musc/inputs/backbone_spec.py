"""What identifies a backbone's tokens, without loading it (docs/METHOD.md section 2).

The extract stage's cache key is planned from these settings, so a rerun whose extract artifact is
valid never builds the model, and does not import torch unless a CUDA device may be present (the
precision, fp16 autocast on CUDA, is part of the key).
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..store.digests import file_digest
from .config import ConfigError, ExtractSettings

TIMM_PREFIX = "timm:"
RANDOM_WEIGHTS = ("", "none", "random")


# The demo's backbone: a tiny ViT (open_clip JSON config) with seeded random weights, shipped in the package
DEMO_BACKBONE = str(Path(__file__).with_name("demo_vit.json"))

def backbone_family(model: str) -> str:
    return "timm" if str(model).startswith(TIMM_PREFIX) else "clip"


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch on a Linux machine that has no GPU device
    node (/dev/nvidia*, or /dev/dxg under WSL): there CUDA cannot be available."""
    if "torch" not in sys.modules and sys.platform.startswith("linux"):
        if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")):
            return False
    import torch
    return torch.cuda.is_available()


LOCAL_FILES = ("backbone", "pretrained")  # settings that may name a local model or checkpoint file
MODELS_VARIABLE = "MUSC_MODELS"  # folders (os.pathsep between) where recorded model files are looked for


def backbone_settings(settings: ExtractSettings) -> dict:
    """What decides the extracted tokens: the backbone fields of the settings, the precision the
    device implies and, for a local model or checkpoint file, its content digest with its file
    name: not its path, so that artifacts and pools keep their identity when the file moves
    (``model_file`` finds it again by its digest)."""
    chosen = settings.recorded()
    on_cuda = settings.device.startswith("cuda") or (settings.device == "auto" and cuda_available())
    chosen["precision"] = "fp16-autocast" if on_cuda else "fp32"
    for name in LOCAL_FILES:
        if Path(chosen[name]).is_file():  # a local file: its content decides, not where it lies
            chosen[f"{name}_sha256"] = file_digest(chosen[name])
            chosen[name] = Path(chosen[name]).name
    return chosen


def model_files(settings: ExtractSettings, folder: str | Path) -> str:
    """Where the settings' local model files lie, named from ``folder`` (a JSON list, recorded beside
    an artifact's or a pool's key: a hint for ``model_file``, which trusts only the digest)."""
    from ..store.naming import named_from
    # as given (a file typed relative is named relative; abspath first would name it absolute)
    return json.dumps([named_from(getattr(settings, name), folder) for name in LOCAL_FILES
                       if Path(getattr(settings, name)).is_file()])


def recorded_model_files(value: str | None, folder: str | Path) -> list[Path]:
    """The files a ``model_files`` record names, from ``folder`` (none where nothing was recorded)."""
    from ..store.naming import named_in
    try:
        return [named_in(name, folder) for name in json.loads(value or "[]")]
    except (TypeError, ValueError):
        return []


def model_file(setting: str, recorded: str, sha256: str, places=(), made: str = "the pool") -> str:
    """The local file a recorded model or checkpoint (its name, or an older record's path, and its
    SHA-256) is now: the first file of that content among ``places`` (files, or folders holding it,
    under its name or another), the recorded path itself, the folders in $MUSC_MODELS and the models
    shipped with musc. ConfigError in one line naming the setting, the file and where it looked."""
    name = Path(recorded).name
    folders = [*places, *(p for p in os.environ.get(MODELS_VARIABLE, "").split(os.pathsep) if p),
               Path(DEMO_BACKBONE).parent]
    others = []
    for candidate in _candidates(recorded, name, folders, len(places)):
        try:
            if file_digest(candidate) == sha256:
                return str(candidate)
        except OSError:
            continue
        if candidate.name == name:
            others.append(str(candidate))
    looked = ", ".join(dict.fromkeys(str(p) for p in [*places[:3], recorded, f"${MODELS_VARIABLE}"]))
    differing = f"; {others[0]} is another file" if others else ""
    missing = [str(p) for p in os.environ.get(MODELS_VARIABLE, "").split(os.pathsep) if p and not Path(p).is_dir()]
    differing += f"; {MODELS_VARIABLE} names no such folder {missing[0]}" if missing else ""
    raise ConfigError(f"{setting}: {made} was made with {name} (SHA-256 {sha256[:12]}), found in none of "
                      f"{looked}{differing}; give the file (or a folder holding it) with --backbone PATH, or "
                      f"name its folder in {MODELS_VARIABLE}")


def _candidates(recorded: str, name: str, places, given: int):
    """Files that may be the recorded one: ``given`` places first, then the recorded path, then the
    other folders; a folder's file of the name first, then its other files of the same suffix."""
    for index, place in enumerate(places):
        if index == given:
            yield Path(recorded)
        place = Path(place)
        if place.is_file():
            yield place
        elif place.is_dir():
            yield place / name
            try:
                yield from sorted(p for p in place.iterdir() if p.suffix == Path(name).suffix and p.name != name
                                  and p.is_file())
            except OSError:
                continue


def clip_config(model: str) -> tuple[str, dict[str, Any]]:
    """(name, open_clip model config) of a model name or a JSON config file, read without importing
    open_clip (its configs are JSON files in its package)."""
    path = Path(model)
    if path.suffix == ".json":
        try:
            config = json.loads(path.read_text())
        except OSError as error:
            raise ConfigError(f"backbone: cannot read model config {path} ({error.strerror})") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"backbone: {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
        if not isinstance(config, dict) or "vision_cfg" not in config:
            raise ConfigError(f"backbone: {path} is not an open_clip model config (no 'vision_cfg')")
        return path.stem, config
    spec = importlib.util.find_spec("open_clip")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "model_configs" / f"{model}.json" if spec else None
    if bundled is not None and "/" not in str(model) and bundled.is_file():
        return model, json.loads(bundled.read_text())
    import open_clip
    config = open_clip.get_model_config(model)
    if config is None:
        raise ConfigError(f"backbone: unknown open_clip model {model!r} (see open_clip.list_models(), "
                          f"or pass a JSON model config file)")
    return model, config


def geometry_of(model: str) -> tuple[int, int]:
    """(patch size, number of blocks) of a backbone, from its configuration (a timm model is built,
    without weights): no weights, no network."""
    if backbone_family(model) == "timm":
        import timm
        try:
            network = timm.create_model(model[len(TIMM_PREFIX):], pretrained=False, num_classes=0)
        except RuntimeError as error:
            raise ConfigError(f"backbone: unknown timm model {model!r} ({str(error).splitlines()[0][:120]})") from None
        return int(network.patch_embed.patch_size[0]), len(network.blocks)
    vision = clip_config(model)[1]["vision_cfg"]
    blocks = vision.get("layers", 12)
    return int(vision.get("patch_size", 16)), int(blocks if isinstance(blocks, int) else sum(blocks))


def check_tile_size(settings: ExtractSettings, tile_height: int, tile_width: int, path) -> None:
    """ConfigError unless every tile holds at least one of its pixels per patch the backbone sees
    (``image_size / patch`` per side): a smaller tile is enlarged past its detail, each patch seeing
    less than a pixel, for many times the work (16 x 16 tiles of a 64-pixel image: 4-pixel tiles)."""
    grid = settings.image_size // patch_size_of(settings.backbone)
    if min(tile_height, tile_width) < grid:
        rows, columns = settings.tiles
        raise ConfigError(f"tiles: {rows}x{columns} tiles of {path} are {tile_width} x {tile_height} pixels, fewer "
                          f"than the {grid} x {grid} patches the backbone sees in each (image_size "
                          f"{settings.image_size}); use fewer tiles, or no tiles")


@functools.lru_cache(maxsize=None)
def patch_size_of(model: str) -> int:
    return geometry_of(model)[0]


def check_geometry(image_size: int, patch_size: int, layers, n_blocks: int) -> None:
    """ConfigError unless the image size is a multiple of the patch size and every block exists."""
    if image_size % patch_size:
        raise ConfigError(f"image_size: {image_size} is not a multiple of the patch size {patch_size}")
    bad = [layer for layer in layers if not 0 <= layer < n_blocks]
    if bad:
        raise ConfigError(f"layers: block {bad[0]} is out of range; this backbone has blocks 0..{n_blocks - 1}")


def check_degrees(settings: ExtractSettings, r_list, aligned_radius: int | None = None) -> None:
    """ConfigError unless every aggregation degree r fits the patch grid (r <= image_size / patch),
    and the aligned-parts radius is below the grid's side (a larger one only adds shifts that
    compare nothing, (2 radius + 1)^2 of them per tile). First the backbone's geometry (image size,
    blocks): all from its configuration, before any dataset is listed or any weight fetched."""
    patch_size, n_blocks = geometry_of(settings.backbone)
    check_geometry(settings.image_size, patch_size, settings.layers, n_blocks)
    grid = settings.image_size // patch_size
    too_large = [r for r in r_list if r > grid]
    if too_large:
        raise ConfigError(f"r_list: degree {too_large[0]} is larger than the patch grid ({grid} x {grid} "
                          f"patches at image_size {settings.image_size})")
    if aligned_radius is not None and aligned_radius >= grid:
        raise ConfigError(f"aligned_radius: {aligned_radius} reaches beyond the patch grid ({grid} x {grid} "
                          f"patches at image_size {settings.image_size}); at most {grid - 1}")
