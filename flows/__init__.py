"""Prefect flows wiring the stage tasks (one category, a whole dataset, the demo, each day's folder
against a reference pool) and the ``musc`` command line that launches them (``flows.cli``)."""
from .category import category_flow
from .dataset import dataset_flow
from .demo import demo_flow
from .pool import daily_folder_flow

__all__ = ["category_flow", "dataset_flow", "demo_flow", "daily_folder_flow"]
