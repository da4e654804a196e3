"""Prefect flows wiring the stage tasks: one category, a whole dataset, the demo."""
from .category import category_flow
from .dataset import dataset_flow
from .demo import demo_flow

__all__ = ["category_flow", "dataset_flow", "demo_flow"]
