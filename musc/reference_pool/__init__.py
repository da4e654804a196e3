"""The reference pool service: new images (one, or a day's folder) scored against earlier ones.

MuSc needs a set of images that score each other; a single new image has none. A pool keeps the
LNAMD features of earlier images of one category, so that each new image is scored against the
pool only, exactly as it would score in one batch made of the pool and itself, with the settings of
the batches the pool was filled from (docs/METHOD.md section 4). The other new images of a call
never vote: a part's verdict does not depend on the parts that arrived with it.

* ``pool``: the pool artifact (what it records, what it refuses, streaming writes, calibration).
* ``scoring``: votes against a pool read block by block; the calibrated decision threshold.
* ``service``: ``musc pool add``, ``musc score-new``: runs in, scores and decisions out.
* ``review``: inspectors' verdicts on a day's parts (``musc review``), the verdict history.
* ``daily``: a production day's summary, history, trend plot, thumbnails and report.
* ``guard``: the systematic-defect guard of a batch run (``musc run --reference POOL``): every
  image of the run scored against the pool alone, marked where the pool flags what the batch does not.

Pool policy (bounded size): ``add`` appends the good images of a scored batch: those neither
labelled defective nor decided anomalous (all of them when asked), each left-out image named with
why; when the pool holds more than ``max_images``, the oldest images leave first. Normal-looking earlier images are the useful ones: an anomalous image in the pool only
weakens the votes against the same defect.
"""
from .pool import DEFAULT_MAX_IMAGES, Images, PoolError, PoolFile, PoolSettings, leave_one_out_scores, write_pool
from .scoring import calibrated_threshold, mutual_votes, part_scores, pool_votes, score_against_pool
from .review import ReviewError, load_day, record_verdicts
from .service import (DEFAULT_FALSE_ALARM_RATE, Addition, DecisionRule, add_day_to_pool, add_run_to_pool, map_names,
                      run_images, score_new_images)

__all__ = ["DEFAULT_MAX_IMAGES", "DEFAULT_FALSE_ALARM_RATE", "Addition", "DecisionRule", "Images", "PoolError",
           "PoolFile", "PoolSettings", "ReviewError", "add_day_to_pool", "add_run_to_pool", "calibrated_threshold",
           "leave_one_out_scores", "load_day", "map_names", "mutual_votes", "part_scores", "pool_votes",
           "record_verdicts", "run_images", "score_against_pool", "score_new_images", "write_pool"]
