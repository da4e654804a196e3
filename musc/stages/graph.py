"""The stage graph, declared once: each stage, what it takes, and the per-degree fan-out.

    extract -> aggregate (per r) -> score (per r, in tiles) -> classify -> evaluate

Everything that walks a category's stages derives from ``GRAPH`` through ``walk``: the category
flow (each stage a Prefect task), the check that a rerun would reuse everything
(``reused_throughout``), plain-Python and benchmark builds (``build_all``), the preflight (the first
stage's plan), and, through the input roles the stages record (``musc.store.catalog``), report
rebuilding, ``musc clean`` and the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from ..inputs.config import MuscConfig
from ..inputs.datasets import Category
from . import aggregate, classify, evaluate, extract, score
from ..store import running
from ..store.catalog import category_folder
from .building import Plan, ensure, valid_ref
from .key import Ref


@dataclass(frozen=True)
class Run:
    """One category's run: its images, the configuration and the artifacts root."""
    images: Category
    config: MuscConfig
    artifacts: str


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: ModuleType                    # its plan(...) and build(path, plan)
    inputs: tuple[str, ...]               # the stages it reads (their roles in its record)
    plans: Callable[[dict, Run], list[Plan]]
    per_degree: bool = False              # one artifact per degree r
    tiled: bool = False                   # its work is tiles (``module.tiles``, ``module.compute_tile``)
    unit: str = "step"                    # what its progress counts


GRAPH: tuple[StageSpec, ...] = (
    StageSpec("extract", extract, (), unit="images",
              plans=lambda refs, run: [extract.plan(run.images, run.config.extract, run.artifacts)]),
    StageSpec("aggregate", aggregate, ("extract",), per_degree=True, unit="degrees",
              plans=lambda refs, run: [aggregate.plan(refs["extract"], r) for r in run.config.r_list]),
    StageSpec("score", score, ("aggregate", "extract"), per_degree=True, tiled=True, unit="tiles",
              plans=lambda refs, run: [score.plan(degree, refs["extract"], run.config.score, r)
                                       for r, degree in zip(run.config.r_list, refs["aggregate"])]),
    StageSpec("classify", classify, ("extract", "score"),
              plans=lambda refs, run: [classify.plan(refs["extract"], refs["score"],
                                                     run.config.k_list_for(run.images.dataset),
                                                     run.config.image_size)]),
    StageSpec("evaluate", evaluate, ("extract", "classify"),
              plans=lambda refs, run: [evaluate.plan(refs["extract"], refs["classify"], run.config.evaluate)]),
)
STAGE_SPECS = {spec.name: spec for spec in GRAPH}

# resolve(spec, plans) -> the artifacts' references, or None to stop the walk
Resolver = Callable[[StageSpec, list[Plan]], "list[Ref] | None"]


def builder(stage: str) -> Callable[..., None]:
    return STAGE_SPECS[stage].module.build


def walk(run: Run, resolve: Resolver) -> dict[str, "Ref | list[Ref]"] | None:
    """The stages in order: each stage planned from its inputs' references, and resolved (built,
    reused, submitted as a task) by ``resolve``. Returns every stage's reference (a list for
    per-degree stages), or None when ``resolve`` stopped the walk."""
    refs: dict = {}
    for spec in GRAPH:
        resolved = resolve(spec, spec.plans(refs, run))
        if resolved is None:
            return None
        refs[spec.name] = list(resolved) if spec.per_degree else resolved[0]
    return refs


def reused_throughout(run: Run) -> bool:
    """Whether every stage would reuse a valid artifact: the plans walked in order, nothing built
    and no model loaded."""
    def existing(spec: StageSpec, plans: list[Plan]):
        refs = [valid_ref(p.stage, p.path) for p in plans]
        return None if any(r is None for r in refs) else refs
    return walk(run, existing) is not None


def build_all(run: Run) -> dict[str, "Ref | list[Ref]"]:
    """Every stage built here, in this process (or reused): plain Python, no Prefect. The category's
    run marker is held meanwhile (``musc clean`` leaves the category alone)."""
    with running(category_folder(run.artifacts, run.images.dataset, run.images.name)):
        return walk(run, lambda spec, plans: [ensure(p)[0] for p in plans])


def first_plan(run: Run) -> Plan:
    """The first stage's plan (needs no upstream artifact): what a preflight checks."""
    return GRAPH[0].plans({}, run)[0]
