"""A small synthetic industrial dataset in MVTec AD layout, for the demo and the tests.

Two categories: ``fabric`` (a woven texture) and ``washer`` (a round part on a plain background).
Defects are scratches, holes and stains with exact masks. Seeded: the same call, the same files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEFECTS = ("hole", "scratch", "stain")


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * x / 9 + phase[0]) * np.sin(2 * np.pi * y / 9 + phase[1])
    base = 150 + 35 * weave + rng.normal(0, 6, (size, size))
    tint = np.array([1.0, 0.92, 0.8])
    return np.clip(base[..., None] * tint, 0, 255)


def _washer(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.normal(0, 1.5, 2)
    radius = np.hypot(y - cy, x - cx)
    image = np.full((size, size, 3), 40.0) + rng.normal(0, 3, (size, size, 3))
    ring = (radius < size * 0.38) & (radius > size * 0.16)
    shade = 170 + 30 * np.cos(np.arctan2(y - cy, x - cx))
    image[ring] = np.stack([shade, shade, shade * 0.95], -1)[ring] + rng.normal(0, 4, (ring.sum(), 3))
    return np.clip(image, 0, 255)


def _defect(rng: np.random.Generator, image: np.ndarray, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    if kind == "hole":
        r = rng.uniform(size * 0.04, size * 0.07)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        colour = np.array([15.0, 12.0, 10.0])
    elif kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(size * 0.2, size * 0.35)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=255, width=max(2, size // 40))
        colour = np.array([245.0, 245.0, 250.0])
    else:
        r = rng.uniform(size * 0.06, size * 0.1, 2)
        draw.ellipse([cx - r[0], cy - r[1], cx + r[0], cy + r[1]], fill=255)
        colour = np.array([150.0, 60.0, 30.0])
    binary = np.asarray(mask) > 0
    image = image.copy()
    image[binary] = 0.25 * image[binary] + 0.75 * colour
    return image, binary


def make_dataset(root: str | Path, n_good: int = 14, n_per_defect: int = 4, size: int = 128, seed: int = 0,
                 categories: tuple[str, ...] = ("fabric", "washer")) -> Path:
    """Write the dataset under ``root`` (MVTec AD layout) and return ``root``."""
    root = Path(root)
    makers = {"fabric": _fabric, "washer": _washer}
    for number, category in enumerate(categories):
        rng = np.random.default_rng([seed, number])
        make = makers[category]
        good = root / category / "test" / "good"
        good.mkdir(parents=True, exist_ok=True)
        for index in range(n_good):
            Image.fromarray(make(rng, size).astype(np.uint8)).save(good / f"{index:03d}.png")
        for kind in DEFECTS:
            images = root / category / "test" / kind
            masks = root / category / "ground_truth" / kind
            images.mkdir(parents=True, exist_ok=True)
            masks.mkdir(parents=True, exist_ok=True)
            for index in range(n_per_defect):
                image, mask = _defect(rng, make(rng, size), kind, size)
                Image.fromarray(image.astype(np.uint8)).save(images / f"{index:03d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{index:03d}_mask.png")
    return root


def _plate(rng: np.random.Generator, size: int) -> np.ndarray:
    """A brushed metal plate: fine horizontal streaks and grain, a gentle light gradient."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    streaks = np.repeat(rng.normal(0, 6, (size, 1)), size, axis=1)
    light = 20 * (x / size - 0.5) + 10 * (y / size - 0.5)
    base = 140 + streaks + light + rng.normal(0, 4, (size, size))
    return np.clip(base[..., None] * np.array([1.0, 1.0, 1.04]), 0, 255)


def make_parts(root: str | Path, n_good: int = 12, n_defective: int = 6, size: int = 512,
               defect_px: tuple[int, int] = (6, 10), seed: int = 0, category: str = "plate",
               depth: float = 0.5) -> Path:
    """High-resolution parts with small defects, in MVTec AD layout (``<category>/test/{good,spot}``,
    ``ground_truth/spot/<name>_mask.png``): ``size`` px plates, each defective one with a dark spot
    (a pit, a fraction ``depth`` darker than the plate) ``defect_px`` pixels across, anywhere on the
    plate. Resized whole to a small image size a pit covers about one pixel; tiles keep it several.
    Seeded: the same call, the same files."""
    root = Path(root)
    rng = np.random.default_rng([seed, 7])
    good = root / category / "test" / "good"
    images, masks = root / category / "test" / "spot", root / category / "ground_truth" / "spot"
    for folder in (good, images, masks):
        folder.mkdir(parents=True, exist_ok=True)
    for index in range(n_good):
        Image.fromarray(_plate(rng, size).astype(np.uint8)).save(good / f"{index:03d}.png")
    for index in range(n_defective):
        image = _plate(rng, size)
        mask = Image.new("L", (size, size), 0)
        diameter = rng.uniform(*defect_px)
        cy, cx = rng.uniform(size * 0.08, size * 0.92, 2)
        ImageDraw.Draw(mask).ellipse([cx - diameter / 2, cy - diameter / 2, cx + diameter / 2, cy + diameter / 2],
                                     fill=255)
        binary = np.asarray(mask) > 0
        image[binary] *= 1.0 - depth
        Image.fromarray(image.astype(np.uint8)).save(images / f"{index:03d}.png")
        Image.fromarray(binary.astype(np.uint8) * 255).save(masks / f"{index:03d}_mask.png")
    return root
