"""The stage graph, declared once: each stage, what it takes, and how many artifacts it makes.

    images -> extract -> aggregate (per r) -> score (per r, in tiles) -> classify -> evaluate
                                                                  evaluate + pool -> guard
    parts + pool -> features (per part) -> pool_score (per part) -> decide

Each stage declares its inputs: upstream stages, or sources a run brings (``images``: a category's
images; ``parts``: new parts; ``pool``: a reference pool). A walk plans, in order, every stage whose
inputs the run has: a category's batch (``Run``: images, and a pool when it is guarded), or new
parts scored against a pool (``LineRun``: a day, a score-new call). Each stage module's
``plans(run, **inputs)`` makes its plans from its inputs' references; the edges are the
declarations below, nothing else.

Everything that walks the stages derives from ``GRAPH`` through ``walk``: the category and daily
flows (each stage a Prefect task), the check that a rerun would reuse everything
(``reused_throughout``), plain-Python and benchmark builds (``build_all``), the preflight (the first
stage's plan), and, through the input roles the stages record (``musc.store.catalog``), report
rebuilding, ``musc clean`` and the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from ..inputs.config import MuscConfig
from ..inputs.datasets import Category
from ..store import running
from ..store.catalog import LINE, category_folder
from . import aggregate, classify, decide, evaluate, extract, features, guard, pool_score, score
from .building import Plan, ensure, ensure_many, valid_ref
from .key import Ref



@dataclass(frozen=True)
class Run:
    """One category's run: its images, the configuration and the artifacts root (guarded against
    ``config.reference`` when it names a pool); ``artifacts_given``: the artifacts folder as the
    person gave it, which the outputs record (None: ``artifacts``)."""
    images: Category
    config: MuscConfig
    artifacts: str
    artifacts_given: str | None = None

    @property
    def sources(self) -> frozenset[str]:
        return frozenset({"images", *(["pool"] if self.config.reference else [])})

    @property
    def folder(self):
        return category_folder(self.artifacts, self.images.dataset, self.images.name)


@dataclass(frozen=True)
class Part:
    """A new part: its identity (the SHA-256 of its image file), the file it is read from, and every
    name it was seen under (a file given twice, or copies of one picture, are one part)."""
    digest: str
    path: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class LineRun:
    """New parts scored against a reference pool (a day of the line, a score-new call): the parts,
    the pool (``PoolFile.ref()``: path, identity, digest) and its category, the decision rule and
    its evidence (the reviewed rule's verdicts), the artifacts root, the device and where the pool's
    model files may be now (besides where it recorded them)."""
    parts: tuple[Part, ...]
    pool: dict[str, str]
    category: str
    rule: Any
    evidence: Any
    artifacts: str
    device: str = "auto"
    models: tuple[str, ...] = ()  # files or folders where the pool's model files may be now

    sources = frozenset({"parts", "pool"})

    @property
    def folder(self):
        return category_folder(self.artifacts, LINE, self.category)


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: ModuleType                    # its plans(run, **inputs) (each plan names its build)
    inputs: tuple[str, ...]               # upstream stages or sources of a run, in the order plans() takes them
    fan: str = "one"                      # artifacts per run: "one", "degree" (per r) or "part" (per new part)
    tiled: bool = False                   # its work is tiles (``module.tiles``, ``compute_tile``, ``tile_work``)
    unit: str = "step"                    # what its progress counts

    @property
    def per_degree(self) -> bool:
        return self.fan == "degree"

    @property
    def per_part(self) -> bool:
        return self.fan == "part"


GRAPH: tuple[StageSpec, ...] = (
    StageSpec("extract", extract, ("images",), unit="images"),
    StageSpec("aggregate", aggregate, ("extract",), fan="degree", unit="degrees"),
    StageSpec("score", score, ("aggregate", "extract"), fan="degree", tiled=True, unit="tiles"),
    StageSpec("classify", classify, ("extract", "score")),
    StageSpec("evaluate", evaluate, ("extract", "classify")),
    StageSpec("guard", guard, ("evaluate", "pool")),
    StageSpec("features", features, ("parts", "pool"), fan="part", unit="parts"),
    StageSpec("pool_score", pool_score, ("features", "pool"), fan="part", unit="parts"),
    StageSpec("decide", decide, ("pool_score", "pool")),
)
STAGE_SPECS = {spec.name: spec for spec in GRAPH}

# resolve(spec, plans) -> the artifacts' references, or None to stop the walk
Resolver = Callable[[StageSpec, list[Plan]], "list[Ref] | None"]


def applies(spec: StageSpec, run, refs: dict) -> bool:
    """Whether the run has every input of the stage: the upstream stages' references, its sources."""
    return all(name in refs or name in run.sources for name in spec.inputs)


def plans_of(spec: StageSpec, run, refs: dict) -> list[Plan]:
    return spec.module.plans(run, **{name: refs[name] for name in spec.inputs if name in STAGE_SPECS})


def walk(run, resolve: Resolver) -> dict[str, "Ref | list[Ref]"] | None:
    """The stages the run has inputs for, in order: each planned from its inputs' references, and
    resolved (built, reused, submitted as a task) by ``resolve``. Returns every stage's reference
    (a list for per-degree and per-part stages; None for a one-artifact stage with nothing to do:
    a day none of whose parts could be scored), or None when ``resolve`` stopped the walk."""
    refs: dict = {}
    for spec in GRAPH:
        if not applies(spec, run, refs):
            continue
        plans = plans_of(spec, run, refs)
        resolved = resolve(spec, plans) if plans else []
        if resolved is None:
            return None
        refs[spec.name] = list(resolved) if spec.fan != "one" else (resolved[0] if resolved else None)
    return refs


def reused_throughout(run) -> bool:
    """Whether every stage would reuse a valid artifact: the plans walked in order, nothing built
    and no model loaded."""
    def existing(spec: StageSpec, plans: list[Plan]):
        refs = [valid_ref(p.stage, p.path) for p in plans]
        if any(r is None for r in refs):
            return None
        return [plan.ref(ref["digest"]) for plan, ref in zip(plans, refs)]
    return walk(run, existing) is not None


PARTS_AT_ONCE = 64  # per-part plans built together, a task each (one pool read for them; a lock file open each)


def resolve_here(spec: StageSpec, plans: list[Plan]) -> list[Ref]:
    """Each plan built here, in this process (or reused); per-part plans a chunk at a time."""
    if not spec.per_part:
        return [ensure(plan)[0] for plan in plans]
    return [ref for start in range(0, len(plans), PARTS_AT_ONCE)
            for ref, _ in ensure_many(plans[start:start + PARTS_AT_ONCE])]


def build_all(run) -> dict[str, "Ref | list[Ref]"]:
    """Every stage built here, in this process (or reused): plain Python, no Prefect. The run's
    category marker is held meanwhile (``musc clean`` leaves the category alone)."""
    with running(run.folder):
        return walk(run, resolve_here)


def first_plan(run: Run) -> Plan:
    """The first stage's plan (needs no upstream artifact): what a preflight checks."""
    first = next(spec for spec in GRAPH if all(name in run.sources for name in spec.inputs))
    return plans_of(first, run, {})[0]
