"""Prefect flows wiring the stage tasks (one category, a whole dataset, the demo, each day's folder
against a reference pool) and the ``musc`` command line that launches them (``flows.cli``).

The flows load on first use, so ``musc`` reads its Prefect settings from the environment it sets
up before Prefect is imported."""
import importlib
import os

_MODULES = {"category_flow": "category", "dataset_flow": "dataset", "demo_flow": "demo", "daily_folder_flow": "daily"}

# How long a temporary Prefect server may take to answer: Prefect's own 20 s is too short on a busy
# machine. The one value for the command line, a flow called from Python (Prefect's ephemeral
# server) and the tests' harness.
PREFECT_STARTUP_SECONDS = 120


def use_prefect_startup_timeout() -> None:
    """Make PREFECT_STARTUP_SECONDS Prefect's ephemeral-server start-up timeout, unless the
    environment sets one. Prefect reads it when it is first imported: done here, on importing this
    package, which every flow module and the command line do before they import Prefect."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(PREFECT_STARTUP_SECONDS))


use_prefect_startup_timeout()


def __getattr__(name):
    if name in _MODULES:
        return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")


__all__ = list(_MODULES)
