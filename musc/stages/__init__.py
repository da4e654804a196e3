"""The stages of MuSc, without Prefect: each stage's plan (its key and artifact) and build in a
module of its own, the key recipe written once (``key``), the cache mechanism (``building``) and
the stage graph declared once (``graph``)."""
from .building import Plan, ensure, valid_ref
from .graph import GRAPH, STAGE_SPECS, Run, StageSpec, build_all, first_plan, reused_throughout, walk
from .key import Ref, StageKey
from .preflight import preflight

__all__ = ["GRAPH", "STAGE_SPECS", "Plan", "Ref", "Run", "StageKey", "StageSpec", "build_all", "ensure",
           "first_plan", "preflight", "reused_throughout", "valid_ref", "walk"]
