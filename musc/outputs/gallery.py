"""Heat-map thumbnails and the gallery a person scans: every image sorted by score, worst first,
with its score, decision and ground truth; small PNGs that can also travel inside a page as
data URIs (the Prefect UI cannot reach the worker's disk)."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..inputs.datasets import UnreadableImage, load_image
from .figures import heat_colours, png_name

THUMB_PX = 96       # each panel (image, heat map) of a thumbnail
HEAT_ALPHA = 0.5


def _edges(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask (a pixel of the mask with a 4-neighbour outside it)."""
    inside = np.pad(mask.astype(bool), 1)
    eroded = inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    return mask.astype(bool) & ~eroded


def heat_thumbnail(image: np.ndarray, anomaly_map: np.ndarray, low: float, high: float,
                   mask: np.ndarray | None = None, size: int = THUMB_PX):
    """A PIL image: the picture | the picture under its heat map (ground-truth outline in white)."""
    from PIL import Image
    heat = heat_colours(anomaly_map, low, high)
    picture = np.asarray(Image.fromarray(image).resize(heat.shape[1::-1], Image.BILINEAR), dtype=np.float64)
    blend = (picture * (1 - HEAT_ALPHA) + heat * HEAT_ALPHA).astype(np.uint8)
    if mask is not None and mask.any():
        blend[_edges(mask)] = 255
    panels = [Image.fromarray(picture.astype(np.uint8)).resize((size, size), Image.BILINEAR),
              Image.fromarray(blend).resize((size, size), Image.BILINEAR)]
    out = Image.new("RGB", (2 * size + 2, size), (255, 255, 255))
    out.paste(panels[0], (0, 0))
    out.paste(panels[1], (size + 2, 0))
    return out


def write_thumbnails(folder: Path, paths, names, maps, masks, has_mask, normalisation: str = "set") -> list[str]:
    """One thumbnail PNG per image in ``folder`` (same file names as the overlays)."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = (float(np.min(maps)), float(np.max(maps)))
    written = []
    for index, (path, name) in enumerate(zip(paths, names)):
        anomaly_map = maps[index]
        low, high = whole if normalisation == "set" else (float(anomaly_map.min()), float(anomaly_map.max()))
        try:
            image = np.asarray(load_image(path))
        except UnreadableImage:
            image = np.zeros((*anomaly_map.shape, 3), dtype=np.uint8)
        target = folder / png_name(name)
        heat_thumbnail(image, anomaly_map, low, high, masks[index] if has_mask[index] else None).save(
            target, optimize=True)
        written.append(str(target))
    return written


@dataclass
class Entry:
    """One image of the gallery."""
    rank: int            # 1 = highest score
    name: str
    score: float
    decision: str        # 'anomalous' / 'normal'
    truth: str           # 'anomalous (crack)', 'normal', 'unknown'
    misclassified: bool
    thumb: str           # thumbnail PNG path ('' when none)
    overlay: str         # full overlay PNG path ('' when none)


def truth_of(label, defect_type: str) -> str:
    if label is None or pd.isna(label) or int(label) < 0:
        return "unknown"
    if int(label) == 0:
        return "normal"
    return f"anomalous ({defect_type})" if defect_type and defect_type not in ("good", "ko", "bad") else "anomalous"


def entries(per_image: pd.DataFrame) -> list[Entry]:
    """Every image, highest score (most anomalous) first; ties keep the table's order."""
    ordered = per_image.sort_values("score_rscin", ascending=False, kind="stable")
    out = []
    for rank, row in enumerate(ordered.itertuples(index=False), start=1):
        truth = truth_of(row.label, str(row.defect_type))
        known = truth != "unknown"
        out.append(Entry(rank, str(row.name), float(row.score_rscin), str(row.decision), truth,
                         known and (truth != "normal") != (row.decision == "anomalous"),
                         str(getattr(row, "thumb_png", "") or ""), str(getattr(row, "map_png", "") or "")))
    return out


def read_per_image(folder: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / "per_image.csv", dtype={"label": "Int64"}, keep_default_na=False,
                       na_values={"label": [""]})


def data_uri(path: str | Path, max_width: int | None = None, colors: int | None = None) -> str:
    """A PNG as a data URI, optionally scaled down to ``max_width`` and reduced to ``colors``
    (palette PNG: a figure of flat colours shrinks several times)."""
    from PIL import Image
    with Image.open(path) as image:
        image = image.convert("RGB")
        if max_width and image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        if colors:
            image = image.quantize(colors)
        return png_data_uri(image)


def png_data_uri(picture) -> str:
    """A Pillow image as a PNG data URI (pages and Prefect markdown carry it inline)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
