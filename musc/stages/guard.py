"""The systematic-defect guard of a batch (``musc run --reference POOL``), a stage of the graph
present when the run names a reference pool: every image of the run scored against the pool alone
(its aggregate features, read a chunk at a time) and decided with the pool's rule. The batch's own
stages and keys are the same with or without it. Its key: the decision rule, the run's evaluate
digest and the pool's content digest."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from ..store import naming
from .building import Plan
from .key import Ref, StageKey

log = logging.getLogger("musc.stages")


def plans(run, evaluate: Ref) -> list[Plan]:
    from ..reference_pool.pool import open_pool
    from ..reference_pool.rule import DecisionRule
    return [plan(evaluate, open_pool(run.config.reference), DecisionRule(pool_top_k=run.config.pool_top_k))]


def plan(evaluate: Ref, pool, rule) -> Plan:
    from ..reference_pool.pool import PoolError
    if rule.rule != "calibrated":
        raise PoolError(f"threshold rule: the guard decides with a fixed or calibrated threshold, not {rule.rule!r}")
    top_k = getattr(rule, "pool_top_k", None)  # retrieval: in the key when set (exact keys as they were)
    key = StageKey("guard", {"threshold": rule.threshold, "false_alarm_rate": float(rule.false_alarm_rate),
                             **({"pool_top_k": int(top_k)} if top_k is not None else {})},
                   {"evaluate": evaluate["digest"], "pool": pool.digest})
    return Plan(key, str(key.beside(evaluate)), "guard", Needs(evaluate, pool.ref(), rule), build)


@dataclass(frozen=True)
class Needs:
    evaluate: Ref
    pool: dict          # PoolFile.ref(): path, identity, digest
    rule: object        # a DecisionRule (fixed or calibrated)


def build(path: Path, plan: Plan) -> None:
    import torch

    from ..outputs.evaluation import decisions
    from ..reference_pool.pool import check_compatible, open_pool
    from ..reference_pool.lineage import run_lineage
    from ..reference_pool.retrieval import EMBEDDING_DEGREE, EMBEDDING_LAYER, embedding, nearest
    from ..reference_pool.scoring import image_scores
    evaluate, reference, rule = plan.needs.evaluate, plan.needs.pool, plan.needs.rule
    pool = open_pool(reference["path"], reference["digest"])
    settings, aggregates, extract, _ = run_lineage(evaluate["path"])
    check_compatible(pool, settings)
    threshold, how = rule.apply(pool)
    names = [str(n) for n in extract.read("names")]
    features = {r: store.open_artifact(aggregates[r], "aggregate") for r in pool.settings.r_list}
    count, scores = pool.settings.tiles_per_image, np.empty(len(names))
    for start, stop in pool.settings.chunks(len(names)):  # a chunk of the run's images (their rows) at a time
        rows = slice(start * count, stop * count)
        chosen = None
        if rule.pool_top_k is not None:  # retrieval: each image against its k nearest pool images
            layer = len(pool.settings.layers) + EMBEDDING_LAYER
            mine = features[pool.settings.r_list[EMBEDDING_DEGREE]].read("features", (layer, rows))
            chosen = nearest(pool, np.stack([embedding(mine[i * count:(i + 1) * count])
                                             for i in range(stop - start)]), rule.pool_top_k)
        per_degree = [torch.stack([pool.score(torch.from_numpy(features[r].read("features", (layer, rows))), r, layer,
                                              chosen)
                                   for layer in range(len(pool.settings.layers))]) for r in pool.settings.r_list]
        scores[start:stop] = image_scores(per_degree, pool.settings.image_size, pool.settings.tiling)
    store.write_artifact(path, "guard", plan.key.config, plan.key.inputs,
                         {"names": np.array(names, dtype=object), "pool_scores": scores.astype(np.float64),
                          "pool_decisions": decisions(scores, threshold).astype(np.int8)},
                         attrs={"threshold": float(threshold), "threshold_rule": how, "pool": naming.named_from(pool.path, Path(path).parent),
                                "pool_size": len(pool)},
                         code_version=plan.key.code_version)
    log.info(f"guard: {len(names)} images scored against the pool {pool.path} ({len(pool)} images)")
