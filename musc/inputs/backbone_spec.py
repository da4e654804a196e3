"""What identifies a backbone's tokens, without loading it (docs/METHOD.md section 2).

The extract stage's cache key is planned from these settings, so a rerun whose extract artifact is
valid never builds the model, and does not import torch unless a CUDA device may be present (the
precision, fp16 autocast on CUDA, is part of the key).
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from ..store.files import file_digest
from .config import ExtractSettings

TIMM_PREFIX = "timm:"
RANDOM_WEIGHTS = ("", "none", "random")


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


def backbone_settings(settings: ExtractSettings) -> dict:
    """What decides the extracted tokens: the backbone fields of the settings, the precision the
    device implies, and the content digest of any local model or checkpoint file."""
    chosen = settings.token_fields()
    on_cuda = settings.device.startswith("cuda") or (settings.device == "auto" and cuda_available())
    chosen["precision"] = "fp16-autocast" if on_cuda else "fp32"
    for name in ("backbone", "pretrained"):
        if Path(chosen[name]).is_file():  # a local file: its content decides, not its name
            chosen[f"{name}_sha256"] = file_digest(chosen[name])
    return chosen
