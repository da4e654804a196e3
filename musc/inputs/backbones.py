"""Backbones: patch tokens of chosen blocks and one image embedding per image (docs/METHOD.md section 2).

Two families:

* CLIP (open_clip), the paper's: ``model`` is an open_clip model name (``ViT-L-14-336``) or the
  path of an open_clip JSON model config. Built to reproduce the reference tokens exactly: GELU
  unless the OpenAI weights run at their native size (then QuickGELU), the positional embedding
  resized bicubically without antialias, eval mode, squash resize.
* DINO / DINOv2 through timm: ``model`` = ``timm:<name>`` (e.g. ``timm:vit_small_patch14_dinov2``).

``pretrained`` is an open_clip tag (needs the model hub), a local checkpoint file (loaded with
``weights_only``: no pickle code runs), or ``none`` (seeded random weights, for tests and demos).
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .backbone_spec import RANDOM_WEIGHTS, TIMM_PREFIX, backbone_family, check_geometry, clip_config
from .config import ConfigError, ExtractSettings

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
def preprocess(pil_image: Image.Image, image_size: int, family: str = "clip") -> torch.Tensor:
    """The reference transform: squash to S x S (bicubic for CLIP, bilinear for DINO), [0, 1], normalise."""
    image = pil_image.convert("RGB")
    if family == "clip":
        resized = image.resize((image_size, image_size), Image.BICUBIC)
        mean, std = OPENAI_MEAN, OPENAI_STD
    else:
        resized = image.resize((image_size, image_size), Image.BILINEAR)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (array - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def resize_positional_embedding(pos_embed: torch.Tensor, grid: int, prefix_tokens: int = 1) -> torch.Tensor:
    """The reference resize: prefix rows kept, the square grid resized bicubically, no antialias."""
    prefix, rows = pos_embed[:prefix_tokens], pos_embed[prefix_tokens:]
    old = math.isqrt(rows.shape[0])
    if old == grid:
        return pos_embed
    square = rows.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(square, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    rows = resized.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([prefix, rows], dim=0)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, loaded safely (weights only / safetensors). ConfigError if it is none."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means "not a checkpoint we can read"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"pretrained: {path} is not a readable checkpoint file ({reason[:160]})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"pretrained: {path} holds no state dict of tensors")
    for key, value in state.items():  # NaN weights would give NaN scores only after every stage
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"pretrained: {path} holds non-finite values (NaN or inf) in {key}")
    return {k.removeprefix("module."): v for k, v in state.items()}


@dataclass
class Backbone:
    """A loaded backbone: ``extract(images)`` -> (tokens per layer (B, 1+L, C), embeddings (B, D))."""

    model: torch.nn.Module
    family: str
    name: str
    image_size: int
    patch_size: int
    layers: tuple[int, ...]
    device: torch.device

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def preprocess(self, pil_image: Image.Image) -> torch.Tensor:
        return preprocess(pil_image, self.image_size, self.family)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        images = torch.as_tensor(images).to(self.device)
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images: expected shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            if self.family == "clip":
                out = self.model.visual.forward_intermediates(
                    images, indices=list(self.layers), output_fmt="NLC", output_extra_tokens=True)
                tokens = [torch.cat([p, t], dim=1)
                          for p, t in zip(out["image_intermediates_prefix"], out["image_intermediates"])]
                embedding = out["image_features"]
            else:
                tokens, embedding = self._extract_timm(images)
        # Out of autocast in fp32: the artifact and every later stage (LNAMD, MSM, RsCIN's similarity)
        # get fp32 values whatever the device; the embedding is normalised in fp32 (no fp16 overflow).
        embedding = embedding.float()
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        return [t.float().cpu() for t in tokens], embedding.cpu()

    def _extract_timm(self, images):
        final, intermediates = self.model.forward_intermediates(
            images, indices=list(self.layers), return_prefix_tokens=True, norm=True, output_fmt="NLC")
        tokens = []
        for spatial, prefix in intermediates:
            if spatial.ndim == 4:
                spatial = spatial.flatten(2).transpose(1, 2)
            cls = prefix[:, :1] if prefix is not None and prefix.shape[1] else torch.zeros_like(spatial[:, :1])
            tokens.append(torch.cat([cls, spatial], dim=1))
        pooled = self.model.forward_head(final, pre_logits=True)
        return tokens, pooled

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "name": self.name, "image_size": self.image_size,
                "patch_size": self.patch_size, "grid": self.grid, "layers": list(self.layers),
                "device": str(self.device)}


def resolve_device(device: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu', or 'cuda[:n]' (which must exist)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for, but no CUDA device is available")
    return torch.device(device)


HUB_PROBE_SECONDS = 5.0


def _checkpoint_for_tag(name: str, tag: str) -> Path:
    """The weights of an open_clip tag: from the local cache when there, else downloaded. An
    unreachable hub is found in seconds (one connection attempt) and said in one line, instead
    of the download library's minute of retries and warnings."""
    import open_clip
    from open_clip.pretrained import download_pretrained
    tag_config = open_clip.get_pretrained_cfg(name, tag)
    if not tag_config:
        raise ConfigError(f"pretrained: {tag!r} is neither a checkpoint file nor an open_clip tag of {name!r} "
                          f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'})")
    cached = _cached_hub_file(tag_config)
    if cached is not None:
        return cached
    source = _download_source(tag_config)
    if source is not None and not _reachable(source):
        raise ConfigError(f"pretrained: the weights of tag {tag!r} are not in the local cache and {source} is "
                          f"unreachable (offline?); download them once elsewhere and pass the file "
                          f"(--pretrained /path/to/weights.bin)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Path(download_pretrained(tag_config))
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"pretrained: could not fetch the weights of tag {tag!r} ({type(error).__name__}); "
                          f"offline, pass a local checkpoint file instead") from None


def _cached_hub_file(tag_config: dict) -> Path | None:
    """The tag's file in the local Hugging Face cache, without any network access."""
    hub = tag_config.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import hf_hub_download
        model_id, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
        return Path(hf_hub_download(model_id, filename or "open_clip_pytorch_model.bin", local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or no hub library): the download decides
        return None


def _download_source(tag_config: dict) -> str | None:
    """The address the download would use: the Hugging Face endpoint for hub tags, else the URL."""
    if tag_config.get("hf_hub"):
        try:
            from huggingface_hub import constants
            return str(constants.ENDPOINT)
        except ImportError:
            pass
    return tag_config.get("url") or None


def _reachable(address: str) -> bool:
    import socket
    from urllib.parse import urlsplit
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                  pos_key: str, grid: int, prefix_tokens: int, required_prefix: str) -> None:
    if pos_key in state:
        rows = state[pos_key].squeeze(0)
        side = math.isqrt(max(rows.shape[0] - prefix_tokens, 0)) if rows.ndim == 2 else 0
        if rows.ndim != 2 or side == 0 or side * side != rows.shape[0] - prefix_tokens:
            raise ConfigError(f"pretrained: {source} does not fit this backbone ({pos_key} of shape "
                              f"{tuple(state[pos_key].shape)} is not {prefix_tokens} prefix row(s) plus a square grid)")
        state[pos_key] = resize_positional_embedding(rows, grid, prefix_tokens)
        if model.state_dict()[pos_key].ndim == 3:
            state[pos_key] = state[pos_key].unsqueeze(0)
    own = model.state_dict()
    missing = [k for k in own if k.startswith(required_prefix) and k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ConfigError(f"pretrained: {source} does not fit this backbone ({what})")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ConfigError(f"pretrained: {source} does not fit this backbone (shape of {wrong[0]} "
                          f"{tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})")
    model.load_state_dict(state, strict=False)


@functools.lru_cache(maxsize=32)
def backbone_for(settings: ExtractSettings, device: str | None = None) -> Backbone:
    """The backbone a run's extract settings describe (``device`` overrides theirs)."""
    return load_backbone(settings.backbone, settings.pretrained, settings.image_size, settings.layers,
                         device or settings.device, settings.seed, settings.quick_gelu)


def load_backbone(model: str, pretrained: str | None, image_size: int, layers, device: str = "auto",
                  seed: int = 0, quick_gelu: str = "auto") -> Backbone:
    """Build a backbone ready to ``extract`` tokens of ``layers`` (0-based blocks) at ``image_size``."""
    import open_clip
    layers = tuple(int(layer) for layer in layers)
    target = resolve_device(device)
    pretrained = "none" if pretrained is None else str(pretrained)
    random_weights = pretrained.lower() in RANDOM_WEIGHTS
    if random_weights:
        warnings.warn("pretrained=none: the backbone has seeded random weights; results on real images "
                      "are meaningless", stacklevel=2)
    elif not Path(pretrained).is_file() and (Path(pretrained).suffix or "/" in pretrained):
        raise ConfigError(f"pretrained: checkpoint file {pretrained} does not exist")
    torch.manual_seed(seed)
    if backbone_family(model) == "timm":
        return _load_timm(model, pretrained, random_weights, image_size, layers, target)

    name, config = clip_config(model)
    vision = dict(config["vision_cfg"])
    native_size = vision.get("image_size", 224)
    patch_size = vision.get("patch_size", 16)
    check_geometry(image_size, patch_size, layers, vision.get("layers", 12))
    if quick_gelu == "auto":
        use_quick_gelu = bool(config.get("quick_gelu", False)) or (
            pretrained == "openai" and image_size == native_size)
    else:
        use_quick_gelu = quick_gelu == "true"
    vision["image_size"] = image_size
    config = {**config, "vision_cfg": vision, "quick_gelu": use_quick_gelu}
    config.pop("custom_text", None)
    # the weights first: a missing file or an unreachable hub is said before a large model is built
    checkpoint = None if random_weights else (Path(pretrained) if Path(pretrained).is_file()
                                              else _checkpoint_for_tag(name, pretrained))
    network = open_clip.CLIP(**config)
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        _load_weights(network, state, str(checkpoint), "visual.positional_embedding",
                      image_size // patch_size, 1, "visual.")
    network.eval().to(target)
    return Backbone(network, "clip", name, image_size, patch_size, layers, target)


def _load_timm(model: str, pretrained: str, random_weights: bool, image_size: int, layers, target) -> Backbone:
    import timm
    name = model[len(TIMM_PREFIX):]
    try:
        network = timm.create_model(name, pretrained=False, img_size=image_size, num_classes=0)
    except RuntimeError as error:
        raise ConfigError(f"backbone: unknown timm model {name!r} ({str(error).splitlines()[0][:120]})") from None
    patch_size = network.patch_embed.patch_size[0]
    check_geometry(image_size, patch_size, layers, len(network.blocks))
    if not random_weights:
        if not Path(pretrained).is_file():
            raise ConfigError(f"pretrained: timm backbones load local checkpoint files only, got {pretrained!r}")
        state = load_state_dict_file(pretrained)
        _load_weights(network, state, pretrained, "pos_embed", image_size // patch_size,
                      network.num_prefix_tokens, "")
    network.eval().to(target)
    return Backbone(network, "timm", name, image_size, patch_size, layers, target)
