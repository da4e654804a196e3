"""The evaluate stage's outputs: tables against metrics computed directly, thresholds, figures,
rebuilding reports from artifacts alone, the Prefect artifacts."""
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

import musc
from conftest import TINY_CONFIG
from musc import store
from musc.outputs import evaluation, reports
from musc.method.metrics import METRIC_NAMES
from musc.outputs.rebuild import rebuild_reports


def test_f1_optimal_threshold_on_constructed_scores():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 0.65, 0.9])
    threshold = evaluation.f1_optimal_threshold(labels, scores)
    best = max(f1_score(labels, scores >= t) for t in scores)
    assert f1_score(labels, scores >= threshold) == pytest.approx(best)
    assert threshold == 0.5  # flags 0.5, 0.6, 0.65, 0.7, 0.9: F1 = 8/9, the best cut
    separable = evaluation.f1_optimal_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert separable == 0.8


def test_robust_threshold_flags_outliers_only():
    scores = np.array([10.0, 10.5, 9.5, 10.2, 9.8, 10.1, 30.0])
    threshold = evaluation.robust_threshold(scores)
    median, mad = 10.1, np.median(np.abs(scores - 10.1)) * 1.4826
    assert threshold == pytest.approx(median + 3.5 * mad)
    assert (scores >= threshold).tolist() == [False] * 6 + [True]


def test_threshold_rule_choice():
    assert evaluation.choose_threshold([0, 1], [0.2, 0.9], fixed=0.5) == (0.5, "fixed (config)")
    assert evaluation.choose_threshold([0, 1, 1], [0.1, 0.8, 0.9])[1].startswith("F1-optimal")
    assert "unsupervised" in evaluation.choose_threshold([-1, -1, -1], [0.1, 0.2, 0.3])[1]
    assert "unsupervised" in evaluation.choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])[1]


def test_tables_match_metrics_computed_directly(reference_run):
    result, _ = reference_run
    extract = store.open_artifact(result["extract"]["path"])
    classify = store.open_artifact(result["classify"]["path"])
    labels, scores = extract.read("labels"), classify.read("image_scores")
    direct = musc.compute_metrics(labels, scores, extract.read("masks"), classify.read("maps"))
    outputs = Path(result["outputs"])
    table = pd.read_csv(outputs / "metrics.csv", index_col="category")
    for name, value in direct.items():
        assert table.loc["fabric", name] == pytest.approx(value * 100, abs=1e-9), name
    assert table.loc["fabric", "image_size"] == TINY_CONFIG["image_size"]
    assert table.loc["fabric", "mask_binarisation"] == "truncate"
    markdown = (outputs / "metrics.md").read_text()
    assert f"{direct['pixel_auroc'] * 100:.2f}" in markdown and f"{direct['image_ap'] * 100:.2f}" in markdown

    per_image = pd.read_csv(outputs / "per_image.csv")
    assert list(per_image.columns[:9]) == ["path", "name", "defect_type", "label", "score_raw", "score_rscin",
                                           "score_norm", "decision", "map_png"]
    np.testing.assert_allclose(per_image["score_rscin"], scores, rtol=1e-12)
    np.testing.assert_allclose(per_image["score_raw"], classify.read("image_scores_raw"), rtol=1e-12)
    assert per_image["label"].tolist() == labels.tolist()
    evaluation = store.open_artifact(result["evaluate"]["path"]).attrs
    flagged = per_image["decision"] == "anomalous"
    assert (per_image.loc[flagged, "score_rscin"] >= evaluation["threshold"]).all()
    assert (per_image.loc[~flagged, "score_rscin"] < evaluation["threshold"]).all()
    assert per_image["score_norm"].min() == 0 and per_image["score_norm"].max() == 1
    for column in ("map_png", "mask_png"):
        assert all((outputs / p).stat().st_size > 0 for p in per_image[column])  # named from its folder


def test_metrics_that_cannot_be_computed_are_not_zero():
    labels = np.array([-1, -1, -1])
    metrics, notes = evaluation.evaluate_arrays(labels, np.array([0.1, 0.5, 0.2]), np.zeros((3, 4, 4)),
                                            np.random.rand(3, 4, 4), np.zeros(3, bool))
    assert all(np.isnan(v) for v in metrics.values())
    assert notes == {"image": "labels unknown", "pixel": "no ground-truth masks"}
    table = reports.metrics_table({"x": metrics}, {"x": notes}, 64, "truncate")
    assert "n/a" in reports.table_markdown(table) and "labels unknown" in table.loc["x", "not_computed"]


def test_report_rebuilds_from_artifacts_without_a_backbone(reference_run, monkeypatch):
    result, artifacts = reference_run
    outputs = Path(result["outputs"])
    for name in ("report.md", "metrics.csv", "curves_pixel.png"):
        (outputs / name).unlink()
    for module in ("open_clip", "timm", "musc.inputs.backbones"):
        monkeypatch.setitem(sys.modules, module, None)  # any import of a backbone would now fail
    written = rebuild_reports(artifacts)
    assert outputs / "report.html" in written.written and (outputs / "report.md").is_file()
    assert written.pages == [artifacts / "mvtec_ad/_report/index.html"]  # the root holds the dataset's page
    assert "fabric" in written.pages[0].read_text()
    assert rebuild_reports(artifacts / "mvtec_ad/fabric").pages == []  # one category: not the dataset's page
    html = (outputs / "report.html").read_text()
    assert "<table class='metrics'>" in html and "curves_pixel.png" in html and "thumbs/" in html
    assert (outputs / "curves_pixel.png").stat().st_size > 0 and (outputs / "metrics.csv").exists()


@pytest.mark.slow
def test_dataset_flow_publishes_prefect_artifacts(prefect_harness, tiny_dataset, tmp_path):
    from prefect.artifacts import Artifact
    from flows import dataset_flow
    result = dataset_flow("mvtec_ad", str(tiny_dataset), ["fabric"], TINY_CONFIG, str(tmp_path))
    table = Artifact.get("musc-mvtec-ad-metrics")
    assert table is not None and table.type == "table" and "P-AUROC" in str(table.data)
    markdown = Artifact.get("musc-mvtec-ad-report")
    assert markdown.type == "markdown" and "MuSc results" in markdown.data
    assert "data:image/png;base64," in markdown.data and "](metrics_bars.png)" not in markdown.data
    category = Artifact.get("musc-mvtec-ad-fabric-report")
    assert category.type == "markdown" and "/evaluate/" in category.data  # the HDF5 paths behind it
    assert Path(result["report"]).name == "index.html" and Path(result["table"]).is_file()
    assert (tmp_path / "mvtec_ad/_report/metrics_bars.png").stat().st_size > 0


def test_ui_table_values_are_strings_with_two_decimals():
    from musc.outputs import ui_content
    table = reports.metrics_table({"a": {n: 1 / 3 for n in METRIC_NAMES}, "b": {n: float("nan") for n in METRIC_NAMES}},
                                  {}, 64, "truncate")
    rows = ui_content.metric_rows(table)
    assert [r["category"] for r in rows] == ["a", "b", "mean"]
    assert rows[0]["I-AUROC"] == "33.33" and rows[1]["P-AUPRO"] == "n/a" and rows[2]["I-AP"] == "n/a"
    assert len(rows[0]) == 1 + len(METRIC_NAMES)  # narrow: no settings columns (they are in the description)


def test_gallery_is_worst_first_and_marks_misclassified_images():
    from musc.outputs import gallery
    per_image = pd.DataFrame({"name": ["a", "b", "c", "d"], "defect_type": ["good", "crack", "good", "x"],
                              "label": pd.array([0, 1, 0, None], dtype="Int64"), "score_rscin": [0.2, 0.1, 0.9, 0.5],
                              "decision": ["normal", "normal", "anomalous", "anomalous"]})
    items = gallery.entries(per_image)
    assert [e.name for e in items] == ["c", "d", "a", "b"] and [e.rank for e in items] == [1, 2, 3, 4]
    assert {e.name for e in items if e.misclassified} == {"c", "b"}  # d: truth unknown
    assert items[3].truth == "anomalous (crack)" and items[1].truth == "unknown"


def test_heat_thumbnail_shows_the_image_and_its_map():
    from musc.outputs import figures
    image = np.full((32, 32, 3), 100, np.uint8)
    heat = np.zeros((16, 16))
    heat[4:8, 4:8] = 1.0
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    thumb = np.asarray(figures.thumbnail_picture(image, heat, mask, 0.0, 1.0, size=32))
    assert thumb.shape == (32, 66, 3)
    assert (thumb[:, :32] == 100).all()  # the picture as it is
    assert thumb[:, 34:].std() > 10  # the heat map over it, with the outline


def test_overlays_and_thumbnails_outline_the_mask_the_same_way():
    from musc.outputs import figures
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 5:9] = 1    # a 4 x 4 square: its outline is its 12 border pixels
    mask[12:, 0:3] = 1    # touching the image's corner: outlined only where it meets the background
    ring = np.zeros((16, 16), bool)
    ring[4:8, 5:9] = True
    ring[5:7, 6:8] = False
    ring[12, 0:3] = ring[12:, 2] = True
    assert (figures.contour(mask) == ring).all()
    image = np.full((16, 16, 3), 40, np.uint8)
    heat = np.zeros((16, 16))  # everything the same dark blue: white marks only the outline
    for scale in (1, 3):  # the thumbnail's panels, and the overlay's enlarged ones
        picture, blended = figures.overlay_panels(image, heat, mask, 0.0, 1.0, scale)
        white = (np.asarray(blended) == 255).all(axis=2)
        assert (white == ring.repeat(scale, axis=0).repeat(scale, axis=1)).all(), scale
        assert (np.asarray(picture) == 40).all()
    overlay = np.asarray(figures.overlay_picture(image, heat, mask, 0.0, 1.0))
    panel = overlay[16:16 + 256, 2 * 8 + 256:2 * 8 + 2 * 256]  # the right panel: below the titles, after a gap
    assert ((panel == 255).all(axis=2) == ring.repeat(16, axis=0).repeat(16, axis=1)).all()  # enlarged to 256 px


def test_one_metric_display_everywhere():
    assert evaluation.metric_text(1 / 3) == "33.33" and evaluation.metric_text(0.98765) == "98.77"
    assert evaluation.metric_text(None) == "n/a" and evaluation.metric_text(float("nan")) == "n/a"
    assert evaluation.metric_text(33.333, scale=1) == "33.33"  # a metrics table's value, already x100
    assert evaluation.decision_words([1, 0, 1]).tolist() == ["anomalous", "normal", "anomalous"]


def test_reports_refuse_an_evaluate_config_without_the_overlay_setting(tmp_path):
    with pytest.raises(store.ArtifactError, match="overlay_normalisation"):
        reports.evaluate_into(tmp_path, None, None, {"threshold": None, "overlays": "set"}, "old.h5")


def test_progress_jobs_rate_eta_and_throttled_prefect_updates(monkeypatch):
    from musc.progress import Throttle, Tracker
    from tasks import ui as publish
    clock = iter([0.0, 0.5, 1.0, 2.5, 3.0, 5.0])
    throttle = Throttle(2.0, clock=lambda: next(clock))
    assert [throttle.ready() for _ in range(6)] == [True, False, False, True, False, True]

    sent = []
    listener = publish.PrefectProgress(interval=3600)
    monkeypatch.setattr(listener, "create", lambda job: listener.artifacts.__setitem__(id(job), ("id", Throttle(3600))))
    monkeypatch.setattr(publish.PrefectProgress, "send", staticmethod(lambda i, job: sent.append(job.percent)))
    tracker = Tracker()
    tracker.add_listener(listener)
    with tracker.job("fabric", "extract", 10, "images", "mvtec_ad") as job:
        assert tracker.job("fabric", "extract", 10, "images") is job  # code further down finds the same job
        for _ in range(10):
            job.advance()
        assert job.rate > 0 and job.eta == 0
    assert sent == [10.0, 100.0]  # the first update, then throttled until the end
    assert "10/10 images" in publish.describe(job) and "done in" in publish.describe(job)
    assert tracker.find("fabric", "extract") is None
    with pytest.raises(RuntimeError), tracker.job("fabric", "score", 4, "tiles") as failing:
        raise RuntimeError("boom")
    assert failing.note == "failed"
    assert publish.artifact_key("mvtec_ad", "fabric", "extract", "progress") == "musc-mvtec-ad-fabric-extract-progress"


def test_a_data_uri_keeps_the_rare_hot_colours_of_a_heat_map(tmp_path):
    """A heat-map thumbnail is mostly grey image and blue map; its few hot (red, orange) pixels are
    the part that matters and must keep their colour in the UI's smaller palette PNG."""
    import base64
    import io

    from PIL import Image

    from musc.outputs.figures import heat_colours
    from musc.outputs.gallery import data_uri
    from musc.outputs.ui_content import THUMB_COLOURS
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(60, 200, (96, 96, 1)), 3, axis=2).astype(np.uint8)
    values = rng.random((96, 96)) * 0.3
    values[40:46, 50:58] = np.linspace(0.85, 1.0, 48).reshape(6, 8)  # a small defect, 0.5 % of the pixels
    thumb = np.concatenate([grey, heat_colours(values, 0.0, 1.0)], axis=1)
    path = tmp_path / "thumb.png"
    Image.fromarray(thumb).save(path)
    uri = data_uri(path, colors=THUMB_COLOURS)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)
    original = thumb.astype(int)
    hot = (original[..., 0] > 180) & (original[..., 2] < 100)
    assert hot.sum() >= 30
    assert np.abs(shown[hot] - original[hot]).max() <= 24  # hot stays hot: red and orange, not grey or navy
    assert abs(int(((shown[..., 0] > 180) & (shown[..., 2] < 100)).sum()) - int(hot.sum())) <= 0.1 * hot.sum()
    assert np.abs(shown - original).mean() < 4
    assert len(uri) < len(data_uri(path))  # still smaller than the full-colour PNG


def test_runs_are_named_by_what_they_are_and_log_a_summary(prefect_harness, tiny_dataset, tmp_path):
    """Read back through the Prefect API: the dataset run is named by its dataset and how many
    categories it scores, its category subflow by the category; each logs the counts at its end."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter
    from prefect.logging.handlers import APILogHandler
    from flows import dataset_flow
    state = dataset_flow("mvtec_ad", str(tiny_dataset), None, TINY_CONFIG, str(tmp_path), return_state=True)
    result = state.result()
    APILogHandler().flush()  # the logs sent before they are read back
    top = state.state_details.flow_run_id
    per_image = pd.read_csv(Path(result["categories"]["fabric"]["outputs"]) / "per_image.csv")
    flagged = int((per_image["decision"] == "anomalous").sum())
    with get_client(sync_client=True) as client:
        assert re.fullmatch(r"mvtec_ad: 1 category \d{4}-\d\d-\d\d \d\d:\d\d", client.read_flow_run(top).name)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[top])))
        assert [run.name.split(" ")[0] for run in children] == ["fabric"]
        logs = {run: [log.message for log in client.read_logs(LogFilter(flow_run_id={"any_": [run]}))]
                for run in (top, children[0].id)}
    assert any(message.startswith(f"fabric: {len(per_image)} images, {flagged} flagged anomalous (threshold ")
               and message.endswith("report.html") for message in logs[children[0].id]), logs[children[0].id]
    assert any(message.startswith(f"mvtec_ad: 1 category, {len(per_image)} images, {flagged} flagged anomalous")
               and message.endswith("index.html") for message in logs[top]), logs[top]
    assert result["categories"]["fabric"]["flagged"] == flagged


def test_batch_artifact_keys_keep_each_source_apart(monkeypatch):
    """A deployment's runs, the demo and runs started by hand publish under keys of their own, so
    that the demo never lands in a nightly deployment's history."""
    from tasks import ui
    for origin, source in ((("1", "mvtec-nightly", "musc-dataset"), "mvtec-nightly"),
                           (("2", "musc-demo", "musc-demo"), "demo"),  # the demo deployment
                           (("3", "", "musc-demo"), "demo"),  # musc demo
                           (("4", "", "musc-dataset"), ""),  # musc run
                           (("", "", ""), "")):  # outside a run
        monkeypatch.setattr(ui, "run_origin", lambda origin=origin: origin)
        assert ui.run_source() == source
        assert ui.artifact_key(ui.run_source(), "mvtec_ad") == "-".join(filter(None, ["musc", source, "mvtec-ad"]))
    monkeypatch.setattr(ui, "run_origin", lambda: ("4", "", "musc-dataset"))
    assert ui.made_by() == {"flow_run": "4", "deployment": ""}
