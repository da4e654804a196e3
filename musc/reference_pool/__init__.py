"""The reference pool and the production line: new parts scored against earlier good ones.

MuSc needs a set of images that score each other; a single new image has none. A pool keeps the
LNAMD features of earlier images of one category, so that each new image is scored against the
pool only, exactly as it would score in one batch made of the pool and itself, with the settings of
the batches the pool was filled from (docs/METHOD.md section 4). The other new images of a call
never vote: a part's verdict does not depend on the parts that arrived with it.

* ``pool``: the pool artifact (its identity, what it records and refuses, streaming writes,
  calibration); ``scoring``: votes against a pool read block by block; ``rule``: the decision rule.
* ``line``: new parts through the stage graph (``musc.stages``: features, pool_score, decide),
  between a day's record and its outputs (``day``); ``musc score-new`` and the daily flow.
* ``verdicts``: the inspectors' verdicts, records of the pool's by part identity; ``review``:
  recording them (``musc review``, the daily run's form); ``additions``: what joins and leaves a pool.
* ``daily``: a production day's summary, history, trend plot, thumbnails and report.
* ``runs``: what a scored batch run gives a pool; ``guard``: the systematic-defect guard of a batch
  run (``musc run --reference POOL``, a stage of the graph) read for people.

Pool policy (bounded size): ``add`` appends the good images of a scored batch: those neither
labelled defective nor decided anomalous (all of them when asked), each left-out image named with
why; when the pool holds more than ``max_images``, the oldest images leave first, named. A part
confirmed defective leaves the pool it had joined. Normal-looking earlier images are the useful
ones: an anomalous image in the pool only weakens the votes against the same defect.

The names below are imported when first used: the stages import ``pool``, ``scoring`` and ``rule``
without loading the line's service (which itself walks the stages).
"""
import importlib

_EXPORTS = {
    "pool": ("DEFAULT_MAX_IMAGES", "Images", "PoolError", "PoolFile", "PoolSettings", "leave_one_out_scores",
             "open_pool", "write_pool"),
    "scoring": ("mutual_votes", "part_scores", "pool_votes", "score_against_pool"),
    "rule": ("DEFAULT_FALSE_ALARM_RATE", "DecisionRule", "calibrated_threshold"),
    "line": ("score_new_images",),
    "day": ("load_day",),
    "review": ("ReviewError", "record_verdicts"),
    "additions": ("Addition", "add_day_to_pool", "add_run_to_pool"),
    "runs": ("run_images",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'musc.reference_pool' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
