"""The line's warm scorer (``musc serve``): one process keeps torch, the pool's backbone and the
pool open, watches a folder, and scores each new part as it arrives through the same stages and
records as ``score-new`` and the daily flow (``score_new_images``: features -> pool_score -> decide,
the day's record, scores.csv, maps), into ``<out>/<YYYY-MM-DD>`` (the day it arrived, local time).

A file is taken once its size and modification time stayed the same over one look (a camera still
writing it is left for the next look), and again when its content changed (a camera writing one
path for every part: a new part). Parts seen before (the same content) reuse their artifacts.
Nothing here knows Prefect: the command line (flows/cli_line.py) prints what each look scored.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..inputs.images import IMAGE_SUFFIXES
from ..store import ARTIFACTS_MARKER
from .day import DayView
from .errors import PoolError
from .rule import DecisionRule


@dataclass
class Watcher:
    """The image files of a folder (and its subfolders, never one of our outputs) that are new or
    changed since they were last taken, once they stopped changing."""
    folder: Path
    taken: dict[str, tuple[int, int]] = field(default_factory=dict)    # path -> (size, mtime) when taken
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)     # path -> (size, mtime) at the last look

    def files(self) -> Iterator[Path]:
        for top, folders, names in os.walk(self.folder):
            folders[:] = sorted(f for f in folders if not f.startswith(".")
                                and not (Path(top) / f / ARTIFACTS_MARKER).exists())
            for name in sorted(names):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                    yield Path(top) / name

    def ready(self) -> list[Path]:
        """Files that stood still since the last look and were not taken as they are now."""
        now, ready = {}, []
        for path in self.files():
            try:
                stat = path.stat()
            except OSError:  # gone meanwhile
                continue
            state = (stat.st_size, stat.st_mtime_ns)
            now[str(path)] = state
            if self.seen.get(str(path)) == state and self.taken.get(str(path)) != state:
                ready.append(path)
        self.seen = now
        return ready

    def take(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.taken[str(path)] = self.seen[str(path)]


@dataclass
class Scored:
    """One look's parts: the day's view after them, the files taken, and the seconds they took."""
    view: DayView
    files: list[Path]
    seconds: float

    def rows(self) -> list[dict]:
        """The rows of the files taken (their latest sighting)."""
        latest = {os.path.abspath(row["file"]): row for row in self.view.rows}  # sightings in order: the last wins
        return [latest[whole] for f in self.files if (whole := os.path.abspath(f)) in latest]


def serve(pool: str | Path, watch: str | Path, out: str | Path, rule: DecisionRule = DecisionRule(),
          device: str = "auto", models: Sequence[str] = (), interval: float = 1.0,
          on_scored: Callable[[Scored], None] = lambda scored: None,
          on_error: Callable[[Exception, list[Path]], None] = lambda error, files: None, looks: int | None = None,
          day_of: Callable[[], str] = lambda: time.strftime("%Y-%m-%d")) -> None:
    """Watch ``watch`` and score what arrives against ``pool`` into ``out/<day>``, one look every
    ``interval`` seconds (``looks``: that many, then return; None: until stopped), calling
    ``on_scored`` after each look that scored parts, and ``on_error`` (the error, the files) after
    one whose parts could not be scored (unreadable, not of a tiled pool's size): those are taken
    too, and tried again only once they change. Refused before any look when the folders overlap
    (our outputs would be read back as parts)."""
    from ..errors import MuscError
    from .line import score_new_images
    watch, out = Path(watch), Path(out)
    if not watch.is_dir():
        raise PoolError(f"watch: {watch} is not a folder")
    whole_watch, whole_out = Path(os.path.abspath(watch)), Path(os.path.abspath(out))
    if whole_out == whole_watch or whole_out.is_relative_to(whole_watch):
        raise PoolError(f"out: {out} lies in the watched folder {watch}; give a folder of its own")
    from .pool import open_pool, pool_backbone
    opened = open_pool(pool)  # what would fail every look fails now: the pool, its model files, the rule
    if not len(opened):
        raise PoolError(f"{pool}: the pool is empty; add a scored run first (musc pool add)")
    pool_backbone(opened, device, models)
    from .verdicts import evidence
    rule.apply(opened, evidence(opened) if rule.learns else None)
    watcher = Watcher(watch)
    done = 0
    while looks is None or done < looks:
        ready = watcher.ready()
        if ready:
            start = time.perf_counter()
            try:
                view = score_new_images(pool, [str(p) for p in ready], out / day_of(), rule, device, models=models)
            except MuscError as error:
                watcher.take(ready)
                on_error(error, ready)
            else:
                watcher.take(ready)
                on_scored(Scored(view, ready, time.perf_counter() - start))
        done += 1
        if looks is None or done < looks:
            time.sleep(interval)


__all__ = ["Scored", "Watcher", "serve"]
