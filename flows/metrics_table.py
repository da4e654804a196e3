"""The run's metrics on the terminal, as the UI's table shows them: one table where it fits, the
image-level then the pixel-level metrics in as many tables as it takes where it does not (measured
with rich), every value whole; then each category's threshold and rule, and the report page."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def print_metrics(result: dict) -> None:
    """The run's metrics as the UI's table shows them (every metric of metrics.csv, short names,
    x100, the mean row), with the images flagged anomalous per category; then each category's
    threshold and its rule, and the report page."""
    import pandas as pd

    from musc.outputs.evaluation import threshold_text
    from musc.outputs.ui_content import LEGEND, metric_rows
    from musc.outputs.summary import flagged_text, unlabeled_lines
    rows = metric_rows(pd.read_csv(result["table"], index_col="category"))
    outcomes = result["categories"]
    out = Console(markup=False)

    def metrics_table(names: list[str], title: str, caption: str | None) -> Table:
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("category", no_wrap=True, min_width=8)
        for name in ["flagged", *names]:
            table.add_column(name, justify="right", no_wrap=True)
        for row in rows:
            outcome = outcomes.get(row["category"])  # none for the mean row
            if outcome is None:
                table.add_section()
            table.add_row(row["category"], flagged_text(outcome) if outcome else "", *(row[name] for name in names))
        return table

    def fits(names: list[str]) -> bool:
        return Measurement.get(out, out.options.update_width(10**5), metrics_table(names, "", None)).maximum <= out.width

    names, groups = list(rows[0])[1:], []
    if fits(names):
        groups = [names]
    else:  # a narrow terminal: the image-level metrics, then the pixel-level ones, as many tables as it takes
        for level in ("I-", "P-"):
            for name in (n for n in names if n.startswith(level)):
                if groups and groups[-1][0][:2] == level and fits(groups[-1] + [name]):
                    groups[-1].append(name)
                else:
                    groups.append([name])
    if any(value != "n/a" for row in rows for value in list(row.values())[1:]):
        for index, group in enumerate(groups):
            out.print(metrics_table(group, "MuSc metrics (x100)" if index == 0 else "",
                                    LEGEND if index == len(groups) - 1 else None))
    else:  # nothing could be computed (no labels, no masks): no table of n/a
        out.print("MuSc: no labels or masks, so no metrics; what the run decided:", highlight=False)
    for name, outcome in outcomes.items():
        out.print(f"{name}: {flagged_text(outcome)} flagged anomalous, at score >= "
                  f"{threshold_text(outcome['threshold'], outcome['threshold_rule'])}", highlight=False, soft_wrap=True)
        if all(value is None for value in outcome["metrics"].values()):
            for line in unlabeled_lines(name, outcome["outputs"]):
                out.print(line, highlight=False, soft_wrap=True)
        if outcome.get("guard_marked"):  # --reference: what the batch's blind spot may hide
            out.print(f"{name}: warning: {len(outcome['guard_marked'])} image(s) flagged by the reference pool and "
                      f"called normal by the batch: {', '.join(outcome['guard_marked'])}", highlight=False, soft_wrap=True)
    out.print(f"report: {result['report']}", highlight=False, soft_wrap=True)
