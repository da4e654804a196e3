"""Progress of the long stages, as a callback interface: no Prefect, no terminal here.

The code that does the work reports items (images extracted, tiles scored) on a :class:`Job`;
listeners registered on :data:`TRACKER` show them (the ``musc`` command draws terminal bars, the
Prefect tasks keep a progress artifact up to date). A job is named by (label, stage), e.g.
("fabric", "extract"): whoever starts a stage opens the job, and code further down asks for the
same job with :meth:`Tracker.job` and advances it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Job:
    """One stage of one category: ``done`` of ``total`` items (``unit``), with its rate and time left."""
    label: str
    stage: str
    total: int
    unit: str
    dataset: str = ""
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    note: str = ""                     # "reused", "failed", ... once ended
    tracker: "Tracker | None" = field(default=None, repr=False)

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def rate(self) -> float | None:
        """Items per second so far (None before the first item)."""
        return self.done / self.elapsed if self.done and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far."""
        rate = self.rate
        return max(self.total - self.done, 0) / rate if rate else None

    @property
    def percent(self) -> float:
        return 100.0 * min(self.done, self.total) / self.total if self.total else 100.0

    def advance(self, items: int = 1) -> None:
        self.done += items
        if self.tracker:
            self.tracker.notify(self, "advance")

    def finish(self, note: str = "") -> None:
        if self.ended is not None:
            return
        self.ended, self.note = time.monotonic(), note
        if not note:
            self.done = max(self.done, self.total)
        if self.tracker:
            self.tracker.close(self)

    def summary(self) -> str:
        """One line: 'fabric extract: 26/26 images in 3.2 s (8.1 images/s)'."""
        head = f"{self.label} {self.stage}: "
        if self.note == "reused":
            return head + "reused"
        text = f"{self.done}/{self.total} {self.unit} in {format_seconds(self.elapsed)}"
        if self.rate and self.unit not in ("step",):
            text += f" ({self.rate:.1f} {self.unit}/s)"
        if self.ended is None and self.eta is not None:
            text += f", {format_seconds(self.eta)} left"
        return head + text + (f" [{self.note}]" if self.note else "")

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.finish("failed" if kind else "")


class Listener(Protocol):
    def update(self, job: Job, event: str) -> None:
        """event: 'start', 'advance' or 'end'. Called from the thread that did the work."""


class Tracker:
    """The process's open jobs and the listeners that show them."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.open: dict[tuple[str, str], Job] = {}
        self.lock = threading.RLock()

    def add_listener(self, listener: Listener) -> None:
        with self.lock:
            if listener not in self.listeners:
                self.listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self.lock:
            if listener in self.listeners:
                self.listeners.remove(listener)

    def job(self, label: str, stage: str, total: int, unit: str, dataset: str = "") -> Job:
        """The open job (label, stage), or a new one started now."""
        with self.lock:
            job = self.open.get((label, stage))
            if job is None:
                job = Job(label, stage, int(total), unit, dataset, tracker=self)
                self.open[(label, stage)] = job
                self.notify(job, "start")
            return job

    def find(self, label: str, stage: str) -> Job | None:
        with self.lock:
            return self.open.get((label, stage))

    def notify(self, job: Job, event: str) -> None:
        for listener in list(self.listeners):
            try:
                listener.update(job, event)
            except Exception:  # noqa: BLE001 - showing progress must never fail the work
                pass

    def close(self, job: Job) -> None:
        with self.lock:
            if self.open.get((job.label, job.stage)) is job:
                del self.open[(job.label, job.stage)]
        self.notify(job, "end")


TRACKER = Tracker()


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Throttle:
    """True at most once per ``interval`` seconds (and always for the first call)."""

    def __init__(self, interval: float, clock=time.monotonic) -> None:
        self.interval, self.clock, self.last = interval, clock, None

    def ready(self) -> bool:
        now = self.clock()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False
