"""report.html of a category and index.html of a dataset: one file each, with its CSS and its small
sorting script inline and every link relative, so the artifacts folder opens offline (no CDN)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..method.metrics import METRIC_NAMES
from .evaluation import ANOMALOUS, NORMAL, metric_text
from .gallery import Entry, entries
from ..store.catalog import REPORT
from ..store.naming import link as relative  # every link relative to the page's folder

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 6px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;background:#f3f3f3;user-select:none}
table.sortable th[data-dir=asc]:after{content:" \\25B2"}table.sortable th[data-dir=desc]:after{content:" \\25BC"}
tr.miss td{background:#fde8e8}
.figures{display:flex;flex-wrap:wrap;gap:8px}.figures figure{margin:0}.figures img{max-width:100%}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
.card{margin:0;border:2px solid #ccc;border-radius:4px;padding:4px;font-size:.8em;width:194px}
.card.anomalous{border-color:#e8a33d}.card.miss{border-color:#d22;background:#fde8e8}
.card img{display:block;width:194px;height:96px}
.tag{display:inline-block;padding:0 4px;border-radius:3px;color:#fff;font-size:.9em}
.tag.anomalous{background:#c60}.tag.normal{background:#397}.tag.miss{background:#d22}
.card.guard{border-color:#80c;border-style:dashed}.tag.guard{background:#80c}
code{font-size:.85em}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, column) {
    th.addEventListener('click', function () {
      var dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      var body = table.tBodies[0], rows = Array.from(body.rows);
      function key(row) {
        var cell = row.cells[column], v = cell.dataset.value !== undefined ? cell.dataset.value : cell.innerText;
        var n = parseFloat(v); return isNaN(n) || !/^-?[0-9.eE+-]+$/.test(v.trim()) ? v.toLowerCase() : n;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), c = x < y ? -1 : x > y ? 1 : 0; return dir === 'asc' ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}"
            f"<script>{SORT_SCRIPT}</script></body></html>")


def markdown_page(markdown_file: Path, title: str = "MuSc report") -> Path:
    """The .html beside a Markdown report: the same content, with its figures, in a browser."""
    import markdown
    target = Path(markdown_file).with_suffix(".html")
    target.write_text(page(title, markdown.markdown(Path(markdown_file).read_text(), extensions=["tables"])))
    return target


def metrics_html(table: pd.DataFrame) -> str:
    """The metrics (x100, 2 decimals, n/a where not computed) with the settings beside them."""
    columns = [c for c in table.columns if c != "not_computed" or table[c].astype(str).str.len().any()]
    head = "".join(f"<th>{esc(c)}</th>" for c in [table.index.name or "", *columns])
    rows = []
    for index, row in table.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if column in METRIC_NAMES:
                cells.append(f"<td class='num'>{metric_text(value, scale=1)}</td>")
            else:
                cells.append(f"<td>{esc(value)}</td>")
        rows.append(f"<tr><td>{esc(index)}</td>{''.join(cells)}</tr>")
    return f"<table class='metrics'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def card(entry: Entry, folder: Path) -> str:
    classes = " ".join(["card", ANOMALOUS if entry.decision == ANOMALOUS else NORMAL,
                        "miss" if entry.misclassified else "", "guard" if entry.guard else ""]).strip()
    classes = " ".join(classes.split())
    image = (f"<img src='{esc(relative(entry.thumb, folder))}' alt='{esc(entry.name)}'>" if entry.thumb else "")
    if image and entry.overlay:
        image = f"<a href='{esc(relative(entry.overlay, folder))}'>{image}</a>"
    miss = " <span class='tag miss'>misclassified</span>" if entry.misclassified else ""
    return (f"<figure class='{classes}' data-rank='{entry.rank}' data-name='{esc(entry.name)}' "
            f"data-score='{entry.score!r}'>{image}<figcaption><b>#{entry.rank}</b> {esc(entry.name)}<br>"
            f"score {entry.score:.4f} <span class='tag {esc(entry.decision)}'>{esc(entry.decision)}</span><br>"
            f"truth: {esc(entry.truth)}{miss}"
            + (f"<br><span class='tag guard'>{esc(entry.guard)}</span> pool score {entry.pool_score:.4f}"
               if entry.guard else "")
            + (f"<br><i>{esc(entry.region_note)}</i>" if entry.region_note else "") + "</figcaption></figure>")


def gallery_html(items: Sequence[Entry], folder: Path) -> str:
    return "<div class='gallery'>" + "".join(card(e, folder) for e in items) + "</div>"


PER_IMAGE_COLUMNS = ("rank", "name", "defect_type", "truth", "decision", "score_rscin", "score_raw",
                     "score_norm", "defect_pixels")


def per_image_html(per_image: pd.DataFrame, items: Sequence[Entry], folder: Path) -> str:
    """Every image as a row; click a column head to sort by it (numbers sort as numbers)."""
    by_name = per_image.set_index("name")
    shown = PER_IMAGE_COLUMNS + (("pool_score", "guard") if "guard" in per_image.columns else ())
    head = "".join(f"<th>{c}</th>" for c in shown) + "<th>overlay</th>"
    rows = []
    for entry in items:
        row = by_name.loc[entry.name]
        values = {"rank": entry.rank, "name": entry.name, "defect_type": row["defect_type"], "truth": entry.truth,
                  "decision": entry.decision, "score_rscin": row["score_rscin"], "score_raw": row["score_raw"],
                  "score_norm": row["score_norm"], "defect_pixels": row.get("defect_pixels", ""),
                  "pool_score": entry.pool_score if entry.pool_score is not None else "", "guard": entry.guard}
        cells = []
        for column in shown:
            value = values[column]
            if isinstance(value, float):
                cells.append(f"<td class='num' data-value='{float(value)!r}'>{value:.4f}</td>")
            elif column in ("rank", "defect_pixels"):
                cells.append(f"<td class='num'>{esc(value)}</td>")
            else:
                cells.append(f"<td>{esc(value)}</td>")
        link = f"<a href='{esc(relative(entry.overlay, folder))}'>png</a>" if entry.overlay else ""
        rows.append(f"<tr class='{'miss' if entry.misclassified else ''}'>{''.join(cells)}<td>{link}</td></tr>")
    return (f"<table class='sortable per-image'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def category_page(folder: Path, title: str, table: pd.DataFrame, figures: dict[str, str], notes: Sequence[str],
                  artifacts: dict[str, str], per_image: pd.DataFrame) -> Path:
    """report.html of one category: metrics, thresholds, figures, the gallery (worst first), the
    sortable per-image table, the artifacts."""
    items = entries(per_image)
    missed = sum(e.misclassified for e in items)
    body = [f"<h2>Metrics (x100)</h2>{metrics_html(table)}"]
    if notes:
        body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    body.append("<h2>Figures</h2><div class='figures'>" + "".join(
        f"<figure><img src='{esc(relative(p, folder))}' alt='{esc(n)}'><figcaption>{esc(n)}</figcaption></figure>"
        for n, p in figures.items()) + "</div>")
    body.append(f"<h2 id='gallery'>Gallery: {len(items)} images, highest score first"
                f" ({missed} misclassified, marked red)</h2>"
                "<p>Each thumbnail: the image, and the image under its anomaly map (ground truth outlined in"
                " white). Click it for the full overlay.</p>" + gallery_html(items, folder))
    body.append(f"<h2>Per-image results</h2><p>Click a column head to sort. "
                f"<a href='per_image.csv'>per_image.csv</a></p>{per_image_html(per_image, items, folder)}")
    body.append("<h2>Artifacts</h2><ul>" + "".join(
        f"<li>{esc(k)}: <a href='{esc(relative(v, folder))}'><code>{esc(relative(v, folder))}</code></a></li>"
        for k, v in artifacts.items()) + "</ul>")
    target = folder / REPORT.html
    target.write_text(page(title, "".join(body)))
    return target


def dataset_index(folder: Path, title: str, table: pd.DataFrame, figures: dict[str, str],
                  categories: dict[str, str], shown: int = 5) -> Path:
    """index.html of a dataset run: the metrics, the bar chart, and per category a link to its
    report and its most anomalous images."""
    from .gallery import read_per_image
    body = [f"<h2>Metrics (x100)</h2>{metrics_html(table)}", "<div class='figures'>" + "".join(
        f"<img src='{esc(relative(p, folder))}' alt='{esc(n)}'>" for n, p in figures.items()) + "</div>"]
    for name, outputs in categories.items():
        items = entries(read_per_image(outputs))
        report = relative(Path(outputs) / REPORT.html, folder)
        missed = sum(e.misclassified for e in items)
        body.append(f"<h2>{esc(name)}</h2><p><a href='{esc(report)}'>report</a> · {len(items)} images, "
                    f"{sum(e.decision == ANOMALOUS for e in items)} judged anomalous, {missed} misclassified. "
                    f"Highest scores:</p>" + gallery_html(items[:shown], folder))
        wrong = [e for e in items if e.misclassified]
        if wrong:
            body.append(f"<p>Misclassified ({len(wrong)}{', first ' + str(shown) if len(wrong) > shown else ''}):</p>"
                        + gallery_html(wrong[:shown], folder))
    target = folder / REPORT.index
    target.write_text(page(title, "".join(body)))
    return target
