"""The systematic-defect guard of a batch run (``musc run --reference POOL``).

Mutual scoring (MuSc's batch mode) cannot see a defect shared by a large share of one batch: such
parts find similar patches in each other and score as normal. The guard scores every image of a
run once more, against a reference pool of good parts only (``PoolFile.score``: the pool votes, the
batch's other images never do), decides with the pool's rule, and marks the images the pool flags
while the batch calls them normal.

It is a stage of the graph (musc/stages/guard.py), present when the run names a pool: an artifact of
its own beside the run's evaluate artifact, keyed by the evaluate digest, the pool digest and the
decision rule, so a rerun reuses it. The batch's own stage keys are unchanged. This module reads it
for people (``read_guard``) and checks a pool before any work (``check_reference``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..outputs.evaluation import ANOMALOUS, decision_words
from ..outputs.guarding import GUARD_MARK, guard_warning
from ..stages.key import Ref
from ..store import open_artifact
from ..store.naming import named_in, rebased
from .pool import PoolError, check_compatible, open_pool
from .runs import planned_settings

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
    pool_recorded: str = ""      # the pool as the guard artifact names it (``store.naming.named_from``)

    @property
    def warning(self) -> str | None:
        return guard_warning(self.marked)

    def record(self, folder: str | Path | None = None) -> dict:
        """What the report folder keeps (guard.json): the reports and the UI read the marks from it;
        the pool named from ``folder`` (where given) as the guard artifact names it from its own."""
        pool = rebased(self.pool_recorded, Path(self.ref["path"]).parent, folder) if folder and self.pool_recorded \
            else self.pool
        return {"pool": pool, "pool_digest": self.pool_digest, "pool_size": self.pool_size,
                "threshold": self.threshold, "rule": self.rule, "artifact": self.ref["path"],
                "images": {name: {"pool_score": float(score), "pool_decision": decision}
                           for name, score, decision in zip(self.names, self.pool_scores, self.pool_decisions)}}


def check_reference(pool_path: str | Path, runs) -> None:
    """Before any work: PoolError (one line) when the pool cannot guard these runs (``Run``s): empty,
    of another category, or made with other settings (each named), as the guard would say at the end."""
    pool = open_pool(pool_path)
    if not len(pool):
        raise PoolError(f"{pool_path}: the pool is empty; add a scored run first (musc pool add)")
    for run in runs:
        check_compatible(pool, planned_settings(run))


def read_guard(ref: Ref, evaluate: Ref) -> Guard:
    """The guard of a run as its artifact (the graph's ``guard`` stage) says, beside the run's own
    decisions: the images the pool flags while the batch calls them normal are marked."""
    artifact = open_artifact(ref["path"], "guard", ref["digest"])
    evaluation = open_artifact(evaluate["path"], "evaluate", evaluate["digest"])
    names = [str(n) for n in artifact.read("names")]
    scores = np.asarray(artifact.read("pool_scores"), dtype=np.float64)
    pool_decided = decision_words(np.asarray(artifact.read("pool_decisions")) == 1)
    batch = np.asarray(evaluation.read("decisions")) == 1
    flagged = [(scores[i], names[i]) for i in range(len(names)) if pool_decided[i] == ANOMALOUS and not batch[i]]
    recorded = str(artifact.attrs["pool"])  # relative to the artifact's folder (absolute: as a person gave it)
    return Guard(names, scores, [str(d) for d in pool_decided], [n for _, n in sorted(flagged, reverse=True)],
                 float(artifact.attrs["threshold"]), str(artifact.attrs["threshold_rule"]),
                 os.path.abspath(named_in(recorded, artifact.path.parent)), artifact.inputs["pool"],
                 int(artifact.attrs["pool_size"]), ref, recorded)


__all__ = ["GUARD_MARK", "Guard", "check_reference", "guard_warning", "read_guard"]
