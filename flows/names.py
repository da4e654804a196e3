"""Flow-run names that say what a run is, in the run lists of the Prefect UI: a category run is
named by its category (``fabric``), a dataset run by its dataset and how many categories it scores
(``mvtec_ad: 2 categories``), a daily run by its pool and day (``line3 2026-12-01``). Each name is
made from the run's parameters (``*_name`` take them as a dict, for tests); the ``*_run_name``
callables are the flows' ``flow_run_name``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


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


def _parameters() -> dict[str, Any]:
    from prefect.runtime import flow_run
    return dict(flow_run.parameters)


def category_run_name() -> str:
    return category_name(_parameters())


def dataset_run_name() -> str:
    return dataset_name(_parameters())


def run_day(timezone: str = "UTC") -> str:
    """The day a daily run scores: the date of its *scheduled* start (a retry after midnight of a
    run scheduled at 23:30 still scores that day), in ``timezone``."""
    from zoneinfo import ZoneInfo

    from prefect.runtime import flow_run
    return flow_run.scheduled_start_time.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d")


def daily_run_name() -> str:
    parameters = _parameters()
    return daily_name(parameters, parameters.get("day") or run_day(parameters.get("timezone") or "UTC"))
