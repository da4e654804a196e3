"""Flow-run names that say what a run is and tell runs apart, in the run lists of the Prefect UI: a
category run is named by its category, a dataset run by its dataset and how many categories it
scores, a daily run by its pool and day, each followed by when the run was scheduled to start
(UTC): ``fabric 2026-12-06 01:00``, ``mvtec_ad: 2 categories 2026-12-06 01:00``, ``line3 2026-12-01
(23:30)``; a retry keeps its run's name. A name typed for the run (the UI's form, ``prefect
deployment run --flow-run-name``) is kept: only a name Prefect made up (two lowercase words joined
by a hyphen, ``bright-eagle``) is replaced. Each name is made from the run's parameters (``*_name``
take them as a dict, for tests); the ``*_run_name`` callables are the flows' ``flow_run_name``."""
from __future__ import annotations

import re
from datetime import datetime, timezone as utc_zone
from pathlib import Path
from typing import Any, Mapping

MADE_UP = re.compile(r"[a-z]+-[a-z]+")  # Prefect's own names for runs (adjective-animal)


def category_name(parameters: Mapping[str, Any]) -> str:
    return str(parameters["category"])


def dataset_name(parameters: Mapping[str, Any]) -> str:
    categories = parameters.get("categories")
    if not categories:  # every category found under the root: counted as the flow will find them
        from musc.inputs.datasets import list_categories
        try:
            categories = list_categories(parameters["dataset"], parameters["root"],
                                         exclude=[Path(parameters.get("artifacts") or "artifacts").resolve()])
        except Exception:  # noqa: BLE001 - the run itself reports what is wrong with its inputs
            return f"{parameters['dataset']}: every category"
    count = len(categories)
    return f"{parameters['dataset']}: {count} categor{'y' if count == 1 else 'ies'}"


def daily_name(parameters: Mapping[str, Any], day: str) -> str:
    """``day``: the day the run scores (its ``day`` parameter, else its scheduled day)."""
    return f"{Path(str(parameters['pool'])).stem} {day}"


def stamped(name: str, scheduled: datetime | None) -> str:
    """``name`` followed by the scheduled start, in UTC to the minute."""
    return name if scheduled is None else f"{name} {scheduled.astimezone(utc_zone.utc):%Y-%m-%d %H:%M}"


def kept(current: str | None, made: str) -> str:
    """The run's name: ``current`` when a person gave it, else ``made``."""
    return current if current and not MADE_UP.fullmatch(current) else made


def _parameters() -> dict[str, Any]:
    from prefect.runtime import flow_run
    return dict(flow_run.parameters)


def _scheduled() -> datetime | None:
    from prefect.runtime import flow_run
    return flow_run.scheduled_start_time


def _current() -> str | None:
    from prefect.runtime import flow_run
    return flow_run.name


def category_run_name() -> str:
    return kept(_current(), stamped(category_name(_parameters()), _scheduled()))


def dataset_run_name() -> str:
    return kept(_current(), stamped(dataset_name(_parameters()), _scheduled()))


def run_day(timezone: str = "UTC") -> str:
    """The day a daily run scores: the date of its *scheduled* start (a retry after midnight of a
    run scheduled at 23:30 still scores that day), in ``timezone``."""
    from zoneinfo import ZoneInfo

    from prefect.runtime import flow_run
    return flow_run.scheduled_start_time.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d")


def daily_run_name() -> str:
    parameters = _parameters()
    name = daily_name(parameters, parameters.get("day") or run_day(parameters.get("timezone") or "UTC"))
    scheduled = _scheduled()
    return kept(_current(), name if scheduled is None else f"{name} ({scheduled.astimezone(utc_zone.utc):%H:%M})")
