"""What is checked before any work starts, so a bad setting fails in a second, naming the field."""
from __future__ import annotations

import warnings
from typing import Sequence

from ..inputs.config import MuscConfig
from .building import valid_ref
from .graph import Run, first_plan


def preflight(config: MuscConfig, runs: Sequence[Run] | None) -> list[str]:
    """Reject a bad backbone configuration before any work (ConfigError naming the field); returns
    warnings to show (bf16 screening on a CPU that multiplies bf16 no faster than fp32).

    The backbone is built only when some category still needs its first stage: a valid extract
    artifact for every category (planned from the settings and the image digests, no model) proves
    the configuration already worked, and a cached rerun then never loads torch or open_clip.
    ``runs`` None: the categories are not known (the backbone is built)."""
    if runs is None or any(valid_ref("extract", first_plan(run).path) is None for run in runs):
        from ..inputs.backbones import backbone_for
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone_for(config.extract)
    notes = []
    if config.msm_precision == "bf16":
        from ..method.screening import native_bf16
        if not native_bf16():
            notes.append("msm_precision: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 screening is "
                         "likely slower than fp32; the scores are the same either way")
    return notes
