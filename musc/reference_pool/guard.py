"""The systematic-defect guard of a batch run (``musc run --reference POOL``).

Mutual scoring (MuSc's batch mode) cannot see a defect shared by a large share of one batch: such
parts find similar patches in each other and score as normal. The guard scores every image of a
run once more, against a reference pool of good parts only (``PoolFile.score``: the pool votes, the
batch's other images never do), decides with the pool's rule, and marks the images the pool flags
while the batch calls them normal.

It is an artifact of its own (stage ``guard``, musc/store/schema.py) beside the run's evaluate
artifact, keyed by the evaluate digest, the pool digest and the decision rule: a rerun reuses it.
The batch's own stage keys are unchanged (the guard is an extra step after evaluate).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..outputs.evaluation import ANOMALOUS, decision_words, decisions
from ..outputs.guarding import GUARD_MARK, guard_warning
from ..stages import guard as guard_stage
from ..stages.building import Plan, ensure
from ..stages.key import Ref
from ..store import open_artifact
from .pool import PoolError, PoolFile, check_compatible
from .scoring import image_scores
from .service import DecisionRule, planned_settings, run_lineage

log = logging.getLogger("musc.reference_pool")


@dataclass
class Guard:
    """The guard of one run: per image (the run's order) its pool-only score and decision, whether
    it is marked (the pool flags it, the batch calls it normal), and the pool's threshold and rule."""
    names: list[str]
    pool_scores: np.ndarray
    pool_decisions: list[str]
    marked: list[str]            # names, highest pool score first
    threshold: float
    rule: str
    pool: str
    pool_digest: str
    pool_size: int
    ref: Ref

    @property
    def warning(self) -> str | None:
        return guard_warning(self.marked)

    def record(self) -> dict:
        """What the report folder keeps (guard.json): the reports and the UI read the marks from it."""
        return {"pool": self.pool, "pool_digest": self.pool_digest, "pool_size": self.pool_size,
                "threshold": self.threshold, "rule": self.rule, "artifact": self.ref["path"],
                "images": {name: {"pool_score": float(score), "pool_decision": decision}
                           for name, score, decision in zip(self.names, self.pool_scores, self.pool_decisions)}}


def check_reference(pool_path: str | Path, runs) -> None:
    """Before any work: PoolError (one line) when the pool cannot guard these runs (``Run``s): empty,
    of another category, or made with other settings (each named), as the guard would say at the end."""
    pool = PoolFile(pool_path)
    if not len(pool):
        raise PoolError(f"{pool_path}: the pool is empty; add a scored run first (musc pool add)")
    for run in runs:
        check_compatible(pool, planned_settings(run))


def guard_plan(evaluate: Ref, pool: PoolFile, rule: DecisionRule) -> Plan:
    if rule.rule != "calibrated":
        raise PoolError(f"threshold rule: the guard decides with a fixed or calibrated threshold, not {rule.rule!r}")
    return guard_stage.plan(evaluate, str(pool.path), pool.digest, rule.threshold, rule.false_alarm_rate)


def run_guard(evaluate: Ref, pool_path: str | Path, rule: DecisionRule = DecisionRule()) -> Guard:
    """The guard of a run's evaluate artifact against the pool (built, or reused when its key's
    artifact is there). PoolError (one line) when the pool was made otherwise than the run (naming
    each setting that differs), is of another category or is empty."""
    pool = PoolFile(pool_path)
    if not len(pool):
        raise PoolError(f"{pool_path}: the pool is empty; add a scored run first (musc pool add)")
    ref, _ = ensure(guard_plan(evaluate, pool, rule), lambda path: _build(path, evaluate, pool, rule))
    artifact = open_artifact(ref["path"], "guard", ref["digest"])
    evaluation = open_artifact(evaluate["path"], "evaluate", evaluate["digest"])
    names = [str(n) for n in artifact.read("names")]
    scores = np.asarray(artifact.read("pool_scores"), dtype=np.float64)
    pool_decided = decision_words(np.asarray(artifact.read("pool_decisions")) == 1)
    batch = np.asarray(evaluation.read("decisions")) == 1
    flagged = [(scores[i], names[i]) for i in range(len(names)) if pool_decided[i] == ANOMALOUS and not batch[i]]
    return Guard(names, scores, [str(d) for d in pool_decided], [n for _, n in sorted(flagged, reverse=True)],
                 float(artifact.attrs["threshold"]), str(artifact.attrs["threshold_rule"]),
                 str(Path(pool_path).resolve()), pool.digest, len(pool), ref)


def _build(path: Path, evaluate: Ref, pool: PoolFile, rule: DecisionRule) -> None:
    from ..store import write_artifact
    settings, aggregates, extract = run_lineage(evaluate["path"])
    check_compatible(pool, settings)
    threshold, rule_text = rule.apply(pool)
    names = [str(n) for n in extract.read("names")]
    features = {r: open_artifact(aggregates[r], "aggregate") for r in pool.settings.r_list}
    count, scores = pool.settings.tiles_per_image, np.empty(len(names))
    for start, stop in pool.settings.chunks(len(names)):  # a chunk of the run's images (their rows) at a time
        rows = slice(start * count, stop * count)
        per_degree = [torch.stack([pool.score(torch.from_numpy(features[r].read("features", (layer, rows))), r, layer)
                                   for layer in range(len(pool.settings.layers))]) for r in pool.settings.r_list]
        scores[start:stop] = image_scores(per_degree, pool.settings.image_size, pool.settings.tiling)
    plan = guard_plan(evaluate, pool, rule)
    write_artifact(path, "guard", plan.key.config, plan.key.inputs,
                   {"names": np.array(names, dtype=object), "pool_scores": scores.astype(np.float64),
                    "pool_decisions": decisions(scores, threshold).astype(np.int8)},
                   attrs={"threshold": float(threshold), "threshold_rule": rule_text, "pool": str(pool.path),
                          "pool_size": len(pool)},
                   code_version=plan.key.code_version)
    log.info(f"guard: {len(names)} images scored against the pool {pool.path} ({len(pool)} images)")


__all__ = ["GUARD_MARK", "Guard", "guard_warning", "run_guard"]  # GUARD_MARK, guard_warning: musc.outputs.guarding
