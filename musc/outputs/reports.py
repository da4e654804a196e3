"""Reports a person reads: metrics tables (CSV, Markdown), report.md and report.html, and the
category outputs of the evaluate stage (per-image CSV, figures) written from its artifacts."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..method.metrics import METRIC_NAMES
from ..store import ArtifactError
from ..store.naming import link
from . import figures, gallery, guarding, html
from .evaluation import Evaluation, EvaluationInputs, evaluate, metric_text, threshold_text
from ..store.catalog import REPORT


def metrics_table(rows: dict[str, dict[str, float]], notes: dict[str, dict[str, str]],
                  image_size: int, mask_rule: str) -> pd.DataFrame:
    """One row per category plus the unweighted mean, x100, with the settings beside each row."""
    table = pd.DataFrame.from_dict(rows, orient="index")[list(METRIC_NAMES)] * 100
    if len(table) > 1:
        table.loc["mean"] = table.mean(axis=0, skipna=False)
    table["image_size"] = image_size
    table["mask_binarisation"] = mask_rule
    table["not_computed"] = [
        "; ".join(f"{k}: {v}" for k, v in notes.get(index, {}).items()) for index in table.index]
    table.index.name = "category"
    return table


def table_markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for name in METRIC_NAMES:
        shown[name] = shown[name].map(lambda v: metric_text(v, scale=1))
    header = "| " + " | ".join([shown.index.name or "", *shown.columns]) + " |"
    rule = "|" + "---|" * (len(shown.columns) + 1)
    lines = [header, rule] + ["| " + " | ".join([str(i), *map(str, row)]) + " |"
                              for i, row in zip(shown.index, shown.itertuples(index=False))]
    return "\n".join(lines) + "\n"


def write_report(folder: str | Path, title: str, table: pd.DataFrame, figures: dict[str, str],
                 per_image_csv: str | None, artifacts: dict[str, str], threshold: dict[str, Any] | None,
                 skipped: Sequence[str] = (), dataset_root: str = "") -> Path:
    """A Markdown report linking the table, figures and artifacts (each link relative to the report's
    folder: ``store.naming.link``)."""
    folder = Path(folder)
    lines = [f"# {title}", "", "## Metrics (x100)", "", table_markdown(table)]
    if len(skipped):
        lines += ["## Skipped images (unreadable)", ""] + [f"- {message}" for message in skipped] + [""]
    if threshold:
        lines += ["## Thresholds", ""] + threshold_lines(threshold) + [""]
    guard = guarding.guard_lines(guarding.read_guard(folder), gallery.read_per_image(folder)) if per_image_csv else []
    if guard:
        lines += ["## Systematic-defect guard (reference pool)", ""] + [f"- {line}" for line in guard] + [""]
    if per_image_csv:
        where = f" (image paths relative to the dataset root `{dataset_root}`)" if dataset_root else ""
        lines += ["## Per-image results", "", f"[{Path(per_image_csv).name}]({link(per_image_csv, folder)}){where}",
                  "", "Most anomalous first (image | heat map; [report.html](report.html) shows every image):", ""]
        for entry in gallery.entries(gallery.read_per_image(folder))[:GALLERY_IN_MARKDOWN]:
            thumb = f"![{entry.name}]({link(entry.thumb, folder)}) " if entry.thumb else ""
            miss = " **misclassified**" if entry.misclassified else ""
            mark = f" **{entry.guard}** (pool score {entry.pool_score:.4f})" if entry.guard else ""
            lines.append(f"- {thumb}#{entry.rank} {entry.name}: score {entry.score:.4f}, {entry.decision}, "
                         f"truth {entry.truth}{miss}{mark}")
        missing = [e for e in gallery.entries(gallery.read_per_image(folder))[GALLERY_IN_MARKDOWN:] if e.guard]
        lines += [f"- #{e.rank} {e.name}: score {e.score:.4f}, {e.decision}, truth {e.truth} **{e.guard}** "
                  f"(pool score {e.pool_score:.4f})" for e in missing]
        lines += [""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{name}]({link(path, folder)})" for name, path in figures.items()] + [""]
    lines += ["## Artifacts", ""] + [f"- {stage}: [{link(path, folder)}]({link(path, folder)})"
                                     for stage, path in artifacts.items()] + [""]
    report = folder / REPORT.markdown
    report.write_text("\n".join(lines))
    return report


GALLERY_IN_MARKDOWN = 12


def threshold_lines(threshold: dict[str, Any]) -> list[str]:
    lines = [f"- decision threshold on the image score: {threshold_text(threshold['value'], threshold['rule'])}; "
             f"a part is anomalous when its final score reaches it"]
    if "pixel_value" in threshold:
        lines += [f"- pixel threshold on the anomaly map (binary masks, defect_pixels): "
                  f"{threshold_text(threshold['pixel_value'], threshold['pixel_rule'])}; a separate threshold, so a "
                  f"part flagged by its score whose map stays below it has no defect region (the gallery says so)"]
    return lines


def evaluate_into(folder: str | Path, extract, classify, settings: Mapping[str, Any], evaluate_path: str = ""
                  ) -> tuple[Evaluation, Path]:
    """Evaluate a classify artifact and write every output into ``folder``: (the evaluation, the
    Markdown report's path). ``settings``: the evaluate artifact's recorded config
    (``EvaluateSettings.recorded``): ``threshold``, ``pixel_threshold`` (None: chosen from the data)
    and ``overlay_normalisation`` ('set' or 'image' scaling). The per-image pictures do not depend
    on the evaluation, so they are drawn in the background while the metrics are computed."""
    folder = Path(folder)
    if "overlay_normalisation" not in settings:
        raise ArtifactError(f"{evaluate_path or folder}: its config has no overlay_normalisation "
                            "(an evaluate artifact of an older version: run the category again)")
    inputs = EvaluationInputs.read(extract, classify)
    figures.load_drawing_modules()  # here: the metrics' imports run meanwhile, in this thread
    with ThreadPoolExecutor(max_workers=1) as background:
        pictures = background.submit(figures.render_pictures, folder, inputs, settings["overlay_normalisation"])
        decided = evaluate(inputs, settings.get("threshold"), settings.get("pixel_threshold"))
        report = write_outputs(extract, classify, inputs, decided, folder, pictures.result(), evaluate_path)
    return decided, report


def write_outputs(extract, classify, inputs: EvaluationInputs, evaluation: Evaluation, folder: str | Path,
                  pictures: figures.Pictures, evaluate_path: str = "") -> Path:
    """Per-image CSV, metrics CSV/Markdown, figures, report.md and report.html in ``folder``, from an
    extract and a classify artifact (their settings and paths), what was read from them, what the
    evaluation decided and the per-image pictures drawn. Returns the Markdown report's path."""
    folder = Path(folder)
    category = extract.config["category"]
    notes = evaluation.notes

    (folder / "binary_masks").mkdir(parents=True, exist_ok=True)
    per_image = evaluation.per_image.copy()  # its files named from its folder (store.naming.link)
    per_image.insert(per_image.columns.get_loc("decision") + 1, "map_png", [link(p, folder) for p in pictures.overlays])
    per_image["mask_png"] = [link(p, folder) for p in
                             figures.save_binary_masks(folder / "binary_masks", inputs, evaluation)]
    per_image["thumb_png"] = [link(p, folder) for p in pictures.thumbs]
    guard = guarding.read_guard(folder)  # a guard run on this evaluation before (musc run --reference)
    per_image = guarding.with_guard(per_image, guard)
    per_image.to_csv(folder / REPORT.per_image, index=False)
    table = metrics_table({category: evaluation.metrics}, {category: notes}, int(extract.config["image_size"]),
                          extract.attrs.get("mask_rule", ""))
    table.to_csv(folder / REPORT.metrics)
    (folder / REPORT.metrics_md).write_text(table_markdown(table))
    shown = {"score histograms (thresholds dashed)": figures.save_histograms(inputs, evaluation,
                                                                             folder / REPORT.histograms)}
    for kind, curves in evaluation.curves.items():
        shown[f"{kind} ROC/PR"] = figures.save_curves(curves, folder / REPORT.curves(kind), kind)
    title = f"MuSc results: {extract.config['dataset']} / {category}"
    artifacts = {stage: path for stage, path in (("extract", str(extract.path)), ("classify", str(classify.path)),
                                                 ("evaluate", evaluate_path)) if path}
    threshold = {"value": evaluation.threshold, "rule": evaluation.rule,
                 "pixel_value": evaluation.pixel_threshold, "pixel_rule": evaluation.pixel_rule}
    skipped = list(extract.read("skipped"))
    report = write_report(folder, title, table, shown, str(folder / REPORT.per_image), artifacts, threshold, skipped,
                          str(extract.attrs.get("root", "")))
    notes_shown = ([line[2:] for line in threshold_lines(threshold)] + guarding.guard_lines(guard, per_image)
                   + [f"skipped (unreadable): {m}" for m in skipped])
    html.category_page(folder, title, table, shown, notes_shown, artifacts, gallery.read_per_image(folder))
    return report


def dataset_report(folder: str | Path, dataset: str, metrics: Mapping[str, Mapping[str, float | None]],
                   outputs: Mapping[str, str], image_size: int, mask_rule: str) -> tuple[pd.DataFrame, Path]:
    """The dataset's page from its categories' evaluations, as a run and ``musc report`` make it:
    ``metrics``: category -> its metrics (fractions, None or NaN where not computed), ``outputs``:
    category -> its evaluate outputs folder. Returns (the metrics table, index.html)."""
    from .evaluation import metrics_from_json
    table = metrics_table({name: metrics_from_json(values) for name, values in metrics.items()}, {}, image_size,
                          mask_rule)
    return table, write_dataset_report(folder, dataset, table, dict(outputs))


def write_dataset_report(folder: str | Path, dataset: str, table: pd.DataFrame,
                         categories: dict[str, str]) -> Path:
    """The dataset's metrics (CSV, Markdown), bar chart, report.md (linking each category's report)
    and index.html (each category's report and most anomalous images), in ``folder``.
    ``categories``: name -> the category's evaluate outputs folder. Returns index.html."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / REPORT.metrics)
    (folder / REPORT.metrics_md).write_text(table_markdown(table))
    bars = folder / REPORT.bars
    if table[list(METRIC_NAMES)].notna().to_numpy().any():
        shown = {"metrics per category": figures.save_metric_bars(table, bars)}
    else:  # nothing computed (no labels): no empty chart; each category's page shows its scores
        shown = {}
        bars.unlink(missing_ok=True)
    reports = {name: str(Path(outputs) / REPORT.markdown) for name, outputs in categories.items()}
    write_report(folder, f"MuSc results: {dataset}", table, shown, None, reports, None)
    return html.dataset_index(folder, f"MuSc results: {dataset}", table, shown, categories)
