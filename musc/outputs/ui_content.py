"""What the Prefect UI shows of a run, built as plain data (the flows publish it; no Prefect here).

The UI renders a markdown artifact in the browser, far from the worker's disk: a relative image
link is a broken image there. So every figure travels inside the markdown as a small PNG data URI
(scaled down and reduced to a palette: a few kB per thumbnail, tens of kB per chart), which the
UI's markdown renderer keeps; the table artifact carries the metrics as strings rounded to two
decimals (the UI prints numbers as they come), under short column names so that it fits a
1400 px window without scrolling.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..method.metrics import METRIC_NAMES
from .evaluation import ANOMALOUS, SHORT_NAMES, metric_text
from .gallery import Entry, data_uri, entries, read_per_image
from .guarding import guard_lines, read_guard
from ..store.catalog import REPORT

LEGEND = ("I- image level, P- pixel level; AUROC, F1max, AP (average precision), AUPRO (per-region overlap, "
          "the reference's), AUPRO-MVTec (the MVTec AD definition); x100")
FIGURE_PX = 560       # charts scaled to this width in the UI
FIGURE_COLOURS = 64
THUMB_COLOURS = 256
FIGURES = {REPORT.histograms: "score histograms (threshold dashed)", REPORT.curves("image"): "image ROC / PR",
           REPORT.curves("pixel"): "pixel ROC / PR"}


@dataclass
class Published:
    rows: list[dict]           # the table artifact
    table_description: str
    markdown: str              # the report artifact


def metric_rows(table: pd.DataFrame) -> list[dict]:
    """One row per category (and the mean): metric values as strings with 2 decimals (the table is x100)."""
    return [{"category": str(index), **{SHORT_NAMES[m]: metric_text(row[m], scale=1) for m in METRIC_NAMES}}
            for index, row in table.iterrows()]


def metrics_markdown(table: pd.DataFrame) -> str:
    rows = metric_rows(table)
    head = list(rows[0])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]) + "\n"


def gallery_markdown(items: Sequence[Entry]) -> str:
    """A table: rank, thumbnail (image | heat map), name, score, decision, ground truth."""
    if not items:
        return "none\n"
    lines = ["| # | image, heat map | name | score | decision | truth |", "|---|---|---|---|---|---|"]
    for e in items:
        thumb = f"![{e.name}]({data_uri(e.thumb, colors=THUMB_COLOURS)})" if e.thumb and Path(e.thumb).is_file() else ""
        decision = f"**{e.decision}**" if e.decision == ANOMALOUS else e.decision
        truth = (e.truth + (" (**misclassified**)" if e.misclassified else "") + (f"; {e.region_note}" if e.region_note else "")
                 + (f"; **{e.guard}** (pool score {e.pool_score:.4f})" if e.guard else ""))
        lines.append(f"| {e.rank} | {thumb} | {e.name} | {e.score:.4f} | {decision} | {truth} |")
    return "\n".join(lines) + "\n"


def figure_markdown(folder: Path, names: Sequence[str]) -> list[str]:
    return [f"![{FIGURES[n]}]({data_uri(folder / n, FIGURE_PX, FIGURE_COLOURS)})\n"
            for n in names if (folder / n).is_file()]


def summary_line(items: Sequence[Entry]) -> str:
    flagged = sum(e.decision == ANOMALOUS for e in items)
    return (f"{len(items)} images, {flagged} judged anomalous, "
            f"{sum(e.misclassified for e in items)} misclassified.")


def category_content(outputs: str | Path, title: str, artifacts: dict[str, str], top: int = 8,
                     missed: int = 8, named: Callable[[str | Path], str] = str) -> Published:
    """The Prefect artifacts of one category, from its evaluate outputs folder; ``named``: how a file
    of the artifacts root is named to a person (the flows: under the artifacts folder as given,
    ``store.naming.under_given``)."""
    folder = Path(outputs)
    table = pd.read_csv(folder / REPORT.metrics, index_col="category")
    items = entries(read_per_image(folder))
    wrong = [e for e in items if e.misclassified]
    guarded = [e for e in items if e.guard]
    guard = guard_lines(read_guard(folder), read_per_image(folder))
    lines = [f"# MuSc: {title}", "", metrics_markdown(table), f"_{LEGEND}_", "", summary_line(items), "",
             *([f"## Systematic-defect guard ({len(guarded)} marked)", "", *[f"- {line}" for line in guard], "",
                gallery_markdown(guarded[:top]) if guarded else ""] if guard else []),
             "## Scores and curves", "", *figure_markdown(folder, list(FIGURES)),
             f"## Most anomalous (highest score first, {min(top, len(items))} of {len(items)})", "",
             gallery_markdown(items[:top]),
             f"## Misclassified ({len(wrong)})", "", gallery_markdown(wrong[:missed]),
             "## Files", "", f"- report with every image: `{named(folder / REPORT.html)}`",
             *[f"- {stage}: `{named(path)}`" for stage, path in artifacts.items()], ""]
    size, rule = table["image_size"].iloc[0], table["mask_binarisation"].iloc[0]
    return Published(metric_rows(table), f"MuSc metrics (x100), {title}; image size {size}, masks {rule}",
                     "\n".join(lines))


def dataset_content(folder: str | Path, dataset: str, table: pd.DataFrame, categories: dict[str, str],
                    artifacts: dict[str, dict[str, str]], top: int = 4,
                    links: dict[str, dict[str, str]] | None = None,
                    named: Callable[[str | Path], str] = str) -> Published:
    """The Prefect artifacts of a dataset run: the metrics of every category, the bar chart, and per
    category its links (``links``: label -> address, e.g. its report artifact and its run in the
    UI), its image ROC/PR curves, its most anomalous and its misclassified images, its HDF5 files
    (``named`` as ``category_content`` names them)."""
    folder = Path(folder)
    lines = [f"# MuSc results: {dataset}", "", metrics_markdown(table), f"_{LEGEND}_", ""]
    if (folder / REPORT.bars).is_file():
        lines += [f"![metrics per category]({data_uri(folder / 'metrics_bars.png', FIGURE_PX, FIGURE_COLOURS)})", ""]
    for name, outputs in categories.items():
        items = entries(read_per_image(outputs))
        wrong = [e for e in items if e.misclassified]
        ways = " · ".join(f"[{label}]({address})" for label, address in (links or {}).get(name, {}).items())
        lines += [f"## {name}", "", *([ways, ""] if ways else []), summary_line(items), "",
                  *figure_markdown(Path(outputs), [REPORT.curves("image")]),
                  f"Most anomalous ({min(top, len(items))} of {len(items)}):", "", gallery_markdown(items[:top]),
                  f"Misclassified ({len(wrong)}):", "", gallery_markdown(wrong[:top]),
                  "HDF5 artifacts: " + ", ".join(f"{stage} `{named(path)}`"
                                                 for stage, path in artifacts.get(name, {}).items()),
                  ""]
    lines += ["## Files", "", f"- index of this run: `{named(folder / REPORT.index)}`",
              f"- metrics: `{named(folder / REPORT.metrics)}`", ""]
    size, rule = table["image_size"].iloc[0], table["mask_binarisation"].iloc[0]
    return Published(metric_rows(table), f"MuSc metrics (x100), {dataset}; image size {size}, masks {rule}",
                     "\n".join(lines))
