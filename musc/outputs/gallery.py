"""The gallery a person scans: every image sorted by score, worst first, with its score, decision,
ground truth and heat-map thumbnail (drawn by ``figures.render_pictures``); small PNGs that can
also travel inside a page as data URIs (the Prefect UI cannot reach the worker's disk)."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .evaluation import ANOMALOUS, NORMAL
from ..store.catalog import REPORT
from ..store.naming import linked


@dataclass
class Entry:
    """One image of the gallery."""
    rank: int            # 1 = highest score
    name: str
    score: float
    decision: str        # ANOMALOUS / NORMAL
    truth: str           # 'anomalous (crack)', 'normal', 'unknown'
    misclassified: bool
    thumb: str           # thumbnail PNG path ('' when none)
    overlay: str         # full overlay PNG path ('' when none)
    defect_pixels: int = -1  # pixels of its binary mask (-1: not known)
    guard: str = ""          # the systematic-defect guard's mark (guarding.GUARD_MARK) or ''
    pool_score: float | None = None  # its score against the reference pool alone (--reference)

    @property
    def region_note(self) -> str:
        """Why a part judged anomalous shows no defect region: its decision is the image threshold on
        its final score, its region the pixel threshold on its map, and its map stays below that."""
        if self.decision == ANOMALOUS and self.defect_pixels == 0:
            return "no defect region: its map stays below the pixel threshold"
        return ""


def truth_of(label, defect_type: str) -> str:
    if label is None or pd.isna(label) or int(label) < 0:
        return "unknown"
    if int(label) == 0:
        return NORMAL
    return f"{ANOMALOUS} ({defect_type})" if defect_type and defect_type not in ("good", "ko", "bad") else ANOMALOUS


def entries(per_image: pd.DataFrame) -> list[Entry]:
    """Every image, highest score (most anomalous) first; ties keep the table's order."""
    ordered = per_image.sort_values("score_rscin", ascending=False, kind="stable")
    out = []
    for rank, row in enumerate(ordered.itertuples(index=False), start=1):
        truth = truth_of(row.label, str(row.defect_type))
        known = truth != "unknown"
        out.append(Entry(rank, str(row.name), float(row.score_rscin), str(row.decision), truth,
                         known and (truth != NORMAL) != (row.decision == ANOMALOUS),
                         str(getattr(row, "thumb_png", "") or ""), str(getattr(row, "map_png", "") or ""),
                         int(getattr(row, "defect_pixels", -1)) if str(getattr(row, "defect_pixels", "")) != "" else -1,
                         str(getattr(row, "guard", "") or ""),
                         float(row.pool_score) if str(getattr(row, "pool_score", "")) not in ("", "nan") else None))
    return out


FILE_COLUMNS = ("map_png", "mask_png", "thumb_png")  # files the report made, named from its folder


def read_per_image(folder: str | Path) -> pd.DataFrame:
    """A report folder's per_image.csv, its files (``FILE_COLUMNS``) found from the folder
    (``store.naming.linked``): paths any page or the UI can read, wherever the folder lies now."""
    table = pd.read_csv(Path(folder) / REPORT.per_image, dtype={"label": "Int64"}, keep_default_na=False,
                        na_values={"label": [""]})
    for column in FILE_COLUMNS:
        if column in table.columns:
            table[column] = [str(linked(name, folder)) if str(name) else "" for name in table[column]]
    return table


def data_uri(path: str | Path, max_width: int | None = None, colors: int | None = None) -> str:
    """A PNG as a data URI, optionally scaled down to ``max_width`` and reduced to a palette of
    ``colors`` (a palette PNG is several times smaller). The palette is an octree's: it keeps the
    rare colours (a heat map's few hot pixels, the ones that matter) that a median cut, tuned to
    the common ones, would merge into their grey or blue neighbours."""
    from PIL import Image
    with Image.open(path) as image:
        image = image.convert("RGB")
        if max_width and image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        if colors:
            image = image.quantize(colors, method=Image.Quantize.FASTOCTREE)
        return png_data_uri(image)


def png_data_uri(picture) -> str:
    """A Pillow image as a PNG data URI (pages and Prefect markdown carry it inline)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
