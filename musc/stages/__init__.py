"""The stages of MuSc, without Prefect: each stage's plan (its key and artifact) and build in a
module of its own, the key recipe written once (``key``), the cache mechanism (``building``) and
the stage graph declared once (``graph``): a category's batch, its guard, and the line's new parts
against a pool are walks of that one graph."""
from .building import NotBuilt, Plan, built, ensure, ensure_many, valid_ref
from .graph import (GRAPH, LINE, STAGE_SPECS, LineRun, Part, Run, StageSpec, build_all, first_plan, resolve_here,
                    reused_throughout, walk)
from .key import Ref, StageKey
from .preflight import preflight

__all__ = ["GRAPH", "LINE", "STAGE_SPECS", "LineRun", "NotBuilt", "Part", "Plan", "Ref", "Run", "StageKey",
           "StageSpec", "build_all", "built", "ensure", "ensure_many", "first_plan", "preflight", "resolve_here",
           "reused_throughout", "valid_ref", "walk"]
