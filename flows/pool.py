"""Each day's folder of new images, scored against a reference pool."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task

from musc.inputs.datasets import IMAGE_SUFFIXES


@task(name="score-new")
def score_new_task(pool: str, images: list[str], out: str) -> list[dict]:
    from musc.reference_pool import score_new_images  # torch: only when scoring
    return score_new_images(pool, images, out)


@flow(name="musc-daily-folder", log_prints=True)
def daily_folder_flow(pool: str, root: str, day: str = "", out: str = "") -> list[dict]:
    """Score every image of ``root/<day>`` (default: today, YYYY-MM-DD in UTC) against the pool;
    results in ``out`` (default: <root>/<day>/musc)."""
    day = day or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    folder = Path(root) / day
    if not folder.is_dir():
        raise FileNotFoundError(f"root: no folder {folder} for {day}")
    images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    results = score_new_task(pool, images, out or str(Path(folder) / "musc"))
    for result in results:
        print(f"{result['image']}: score {result['score']:.4f}")
    return results
