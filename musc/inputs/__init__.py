"""Inputs: the run configuration and its settings objects, datasets (MVTec AD, VisA, BTAD, folder),
backbones (open_clip, timm), and the generated demo data."""
