"""What a run decided, as a person reads it at the end of a run: how many images, how many flagged
anomalous and by which threshold (value and rule), and where the report pages are. Read from the
evaluate artifacts; the flows log these lines and the terminal prints the same counts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .evaluation import threshold_text
from ..store.catalog import REPORT


def write_latest(evaluate_path: str | Path, report: str | Path, flow_run: str = "") -> Path:
    """The category's ``latest.json`` (``catalog.latest_path``): this run's evaluate artifact and
    report page relative to the category folder, its flow run id and the time; written atomically."""
    import json
    import time

    from ..store import atomic_write_text
    from ..store.catalog import latest_path, located
    folder = located(Path(evaluate_path)).category_folder
    record = {"evaluate": Path(evaluate_path).relative_to(folder).as_posix(),
              "report": Path(report).relative_to(folder).as_posix(), "flow_run": flow_run,
              "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(latest_path(folder), json.dumps(record, indent=1) + "\n")
    return latest_path(folder)


def outcome(evaluation) -> dict[str, Any]:
    """The decisions of an opened evaluate artifact: images, flagged (judged anomalous), the image
    threshold and its rule."""
    decided = np.asarray(evaluation.read("decisions"))
    return {"images": int(decided.size), "flagged": int((decided == 1).sum()),
            "threshold": float(evaluation.attrs["threshold"]), "threshold_rule": str(evaluation.attrs["threshold_rule"])}


def flagged_text(result: Mapping[str, Any]) -> str:
    """'9 of 26': the images flagged anomalous of those scored."""
    return f"{result['flagged']} of {result['images']}"


def category_line(category: str, result: Mapping[str, Any], report: str | Path) -> str:
    """``result``: an ``outcome``; ``report``: the category's report.html."""
    return (f"{category}: {result['images']} images, {result['flagged']} flagged anomalous "
            f"(threshold {threshold_text(result['threshold'], result['threshold_rule'])}); report {report}")


def dataset_line(dataset: str, results: Mapping[str, Mapping[str, Any]], page: str | Path) -> str:
    """``results``: category -> its ``outcome``; ``page``: the dataset's index.html."""
    images = sum(r["images"] for r in results.values())
    flagged = sum(r["flagged"] for r in results.values())
    each = ", ".join(f"{name} {flagged_text(r)}" for name, r in results.items())
    return (f"{dataset}: {len(results)} categor{'y' if len(results) == 1 else 'ies'}, {images} images, "
            f"{flagged} flagged anomalous ({each}); report {page}")


def unlabeled_lines(category: str, outputs: str | Path, top: int = 5) -> list[str]:
    """What is known of a category without labels: its most anomalous parts (score, decision) and
    how its final scores spread (quantiles), from its per_image.csv."""
    import pandas as pd
    table = pd.read_csv(Path(outputs) / REPORT.per_image).sort_values("score_rscin", ascending=False, kind="stable")
    scores = table["score_rscin"].to_numpy(dtype=float)
    worst = ", ".join(f"{row.name} {row.score_rscin:.4f} ({row.decision})"
                      for row in table.head(top).itertuples(index=False))
    spread = ", ".join(f"{label} {value:.4f}" for label, value in
                       (("min", scores.min()), ("median", float(np.median(scores))),
                        ("90th percentile", float(np.quantile(scores, 0.9))), ("max", scores.max())))
    return [f"{category}: no labels, so no metrics; most anomalous: {worst}",
            f"{category}: final scores {spread}"]
