"""Prefect flows wiring the stage tasks (one category, a whole dataset, the demo, each day's folder
against a reference pool) and the ``musc`` command line that launches them (``flows.cli``).

The flows load on first use, so ``musc`` reads its Prefect settings from the environment it sets
up before Prefect is imported."""
import importlib

_MODULES = {"category_flow": "category", "dataset_flow": "dataset", "demo_flow": "demo", "daily_folder_flow": "pool"}


def __getattr__(name):
    if name in _MODULES:
        return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")


__all__ = list(_MODULES)
