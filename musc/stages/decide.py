"""The line, per day (or per score-new output folder): every part's decision at the rule's threshold.

One artifact for the day's parts, keyed by their pool_score artifacts (in the order of the parts'
identities, so the same parts in another order are the same decisions), the pool's digest, the rule
and the rule's evidence (the reviewed rule's verdicts): a changed rule or new verdicts decide again
without scoring anything again. It also records the day's one colour scale (the range of its maps).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from ..store.catalog import role_name
from .building import Plan
from .key import Ref, StageKey


def plans(run, pool_score: list[Ref]) -> list[Plan]:
    """The day's one plan; none when none of its parts could be scored."""
    return [plan(pool_score, run.pool, run.rule, run.evidence)] if pool_score else []


def plan(scores: list[Ref], pool: dict, rule, evidence=None) -> Plan:
    ordered = sorted(scores, key=lambda ref: ref["part"])
    inputs = {"pool": pool["digest"], **({"evidence": evidence.digest} if rule.learns else {}),
              **{role_name("pool_score", index): ref["digest"] for index, ref in enumerate(ordered)}}
    key = StageKey("decide", rule.recorded(), inputs)
    return Plan(key, str(key.beside(ordered[0])), "decide", Needs(tuple(ordered), pool, rule, evidence), build)


@dataclass(frozen=True)
class Needs:
    scores: tuple[Ref, ...]   # the parts' pool_score references, by part identity
    pool: dict                # PoolFile.ref(): path, identity, digest
    rule: object              # a DecisionRule
    evidence: object = None   # the reviewed rule's Evidence


def build(path: Path, plan: Plan) -> None:
    from ..outputs.evaluation import decisions
    from ..reference_pool.pool import open_pool
    reference, rule, evidence = plan.needs.pool, plan.needs.rule, plan.needs.evidence
    pool = open_pool(reference["path"], reference["digest"])
    threshold, how = rule.apply(pool, evidence if rule.learns else None)
    scored = [store.open_artifact(ref["path"], "pool_score", ref["digest"]) for ref in plan.needs.scores]
    scores = np.array([float(artifact.read("score")) for artifact in scored], dtype=np.float64)
    low = min(float(artifact.attrs["map_min"]) for artifact in scored)
    high = max(float(artifact.attrs["map_max"]) for artifact in scored)
    store.write_artifact(
        path, "decide", plan.key.config, plan.key.inputs,
        {"parts": np.array([ref["part"] for ref in plan.needs.scores], dtype=object), "scores": scores,
         "decisions": decisions(scores, threshold).astype(np.int8)},
        attrs={"threshold": float(threshold), "threshold_rule": how, "map_range": [low, max(high, low + 1e-12)],
               "pool_id": pool.id, "pool_size": len(pool),
               **({"evidence": evidence.record()} if rule.learns else {})},
        code_version=plan.key.code_version)
