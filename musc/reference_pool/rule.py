"""How a new part is decided anomalous (and, opt-in, scored: ``pool_top_k``): a fixed threshold; one calibrated on the pool's own
leave-one-out scores at a false-alarm rate (the default); or, opt-in, one learnt from the
inspectors' verdicts on earlier parts scored against the same pool (``reviewed``). The rule and
what it learnt from (its evidence) decide the line's ``decide`` stage."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from ..inputs.config import MuscConfig, PoolTopK
from ..inputs.values import ConfigError, about, check_fields
from .errors import PoolError

THRESHOLD_RULES = ("calibrated", "reviewed")


@dataclass(frozen=True)
class Evidence:
    """What the ``reviewed`` rule learns from: the verdict history (its file, for people), and the
    latest verdict of each part reviewed against this pool with its score then (labels: 1 defect,
    0 good)."""
    history: str
    scores: tuple[float, ...]
    labels: tuple[int, ...]

    @property
    def defect(self) -> int:
        return int(sum(self.labels))

    @property
    def good(self) -> int:
        return len(self.labels) - self.defect

    @property
    def digest(self) -> str:
        """The identity of what is learnt from (the scores and labels, whatever their order)."""
        pairs = sorted(zip((float(s) for s in self.scores), (int(v) for v in self.labels)))
        return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        return {"history": self.history, "defect": self.defect, "good": self.good}


@dataclass(frozen=True)
class DecisionRule:
    """A fixed threshold; or, by ``rule``: one calibrated on the pool at a false-alarm rate (see
    ``calibrated_threshold``, the default), or, opt-in, ``reviewed``: F1-optimal on the scores of
    the parts inspectors reviewed against this pool (the latest verdict per part; defect =
    anomalous, good = normal), once the history holds both verdicts. Each field declared once: the
    command line's options and the daily deployment's form derive from it."""
    threshold: Annotated[float | None, about("A fixed image-score threshold. Empty: by the rule.")] = None
    false_alarm_rate: Annotated[float, about("The calibrated rule: the fraction of the pool's own leave-one-out "
                                             "scores allowed to reach the threshold.", ge=0, lt=1)] = 0.01
    rule: Annotated[Literal[THRESHOLD_RULES], about(
        "calibrated (on the pool, at the false-alarm rate) or reviewed (F1-optimal on the scores of the parts "
        "inspectors reviewed against this pool, once both verdicts are there).")] = "calibrated"
    pool_top_k: PoolTopK = MuscConfig.pool_top_k  # how the parts (and the calibration) are scored: retrieval

    def __post_init__(self) -> None:
        check_fields(self)
        if self.rule == "reviewed" and self.threshold is not None:
            raise ConfigError("rule: reviewed sets the threshold itself; give no fixed threshold with it")

    @property
    def learns(self) -> bool:
        """Whether it learns from the inspectors' verdicts (it needs ``Evidence``)."""
        return self.rule == "reviewed" and self.threshold is None

    @property
    def name(self) -> str:
        return "fixed" if self.threshold is not None else self.rule

    def recorded(self) -> dict[str, Any]:
        """What decides the threshold given the pool and the evidence (the decide stage's settings)."""
        return {"threshold": None if self.threshold is None else float(self.threshold),
                "false_alarm_rate": float(self.false_alarm_rate), "rule": self.rule,
                **({"pool_top_k": int(self.pool_top_k)} if self.pool_top_k is not None else {})}

    def apply(self, pool, evidence: Evidence | None = None) -> tuple[float, str]:
        """(threshold, how it was chosen) for the pool (a ``PoolFile``), with the reviewed rule's evidence."""
        if self.threshold is not None:
            return float(self.threshold), "fixed"
        if self.rule == "reviewed":
            seen = evidence if evidence is not None else Evidence("no verdict history", (), ())
            lacking = [kind for kind, count in (("defect", seen.defect), ("good", seen.good)) if not count]
            if lacking:
                raise PoolError(f"threshold rule reviewed: the verdict history {seen.history} holds no "
                                f"{' and no '.join(lacking)} verdict with a score yet for the pool "
                                f"{Path(str(pool.path)).name} ({seen.defect} defect, {seen.good} good); review "
                                "flagged parts (musc review) or use the calibrated rule")
            from ..outputs.evaluation import f1_optimal_threshold
            return (f1_optimal_threshold(np.asarray(seen.labels, dtype=int), np.asarray(seen.scores, dtype=np.float64)),
                    f"reviewed: F1-optimal on the scores of {seen.defect + seen.good} reviewed parts "
                    f"({seen.defect} defect, {seen.good} good; {Path(seen.history).name})")
        if not len(pool.self_scores):
            raise PoolError(f"{pool.path}: a calibrated threshold needs a pool of at least 2 images "
                            f"(it has {len(pool)}); add runs or give a fixed threshold")
        from .retrieval import calibration_scores
        nearest = "" if self.pool_top_k is None else f", each against its {self.pool_top_k} nearest"
        return (calibrated_threshold(calibration_scores(pool, self.pool_top_k), self.false_alarm_rate),
                f"calibrated on the pool: at most {self.false_alarm_rate:g} of its {len(pool)} images' "
                f"leave-one-out scores{nearest} reach it")


def calibrated_threshold(self_scores, false_alarm_rate: float) -> float:
    """The threshold at which at most ``false_alarm_rate`` of the pool's own (leave-one-out) scores
    would be flagged: with P scores sorted ascending and k = floor(rate * P), just above the
    (k+1)-th largest. A score flags its image when it reaches the threshold (``>=``), so exactly
    the k largest pool scores (fewer with ties) lie at or above it; k = 0 (P < 1/rate) puts it just
    above the pool's largest score."""
    scores = np.sort(np.asarray(self_scores, dtype=np.float64))
    if not 0.0 <= false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate: must be in [0, 1), got {false_alarm_rate}")
    if scores.size == 0:
        raise ValueError("false_alarm_rate: the pool has no calibration scores (fewer than 2 images); "
                         "give a fixed threshold")
    allowed = math.floor(false_alarm_rate * scores.size)
    return float(np.nextafter(scores[scores.size - 1 - allowed], np.inf))


DEFAULT_FALSE_ALARM_RATE = DecisionRule().false_alarm_rate
