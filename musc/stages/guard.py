"""An optional step after evaluate: the systematic-defect guard of a run (``musc run --reference
POOL``; the scoring is musc/reference_pool/guard.py). Not in ``GRAPH``: the batch's own stages and
keys are the same with or without it; flows/category.py runs it after the walk. Its key: the
decision rule, the run's evaluate digest and the pool's digest."""
from __future__ import annotations

from .building import Plan
from .key import Ref, StageKey


def plan(evaluate: Ref, pool: str, pool_digest: str, threshold: float | None, false_alarm_rate: float) -> Plan:
    key = StageKey("guard", {"threshold": threshold, "false_alarm_rate": float(false_alarm_rate)},
                   {"evaluate": evaluate["digest"], "pool": pool_digest})
    return Plan("guard", key, str(key.beside(evaluate)), "guard", {"evaluate": evaluate, "pool": pool})
