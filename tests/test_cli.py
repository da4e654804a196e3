"""The `musc` command end to end: the demo, a run on real MVTec AD images, inspect, report, errors."""
from pathlib import Path

import pandas as pd
import pytest

from conftest import DEMO_BACKBONE, run_musc

pytestmark = pytest.mark.slow  # every test runs the command in a child process


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    result = run_musc("demo", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_demo_reaches_its_pixel_auroc(demo_run):
    cwd, result = demo_run
    table = pd.read_csv(cwd / "artifacts/mvtec_ad/_report/metrics.csv", index_col="category")
    assert set(table.index) == {"fabric", "washer", "mean"}
    assert (table["pixel_auroc"] > 90).all(), table["pixel_auroc"]
    assert "MuSc metrics" in result.stdout and "washer" in result.stdout


def test_demo_overlays_and_figures_exist(demo_run):
    cwd, _ = demo_run
    evaluate = next((cwd / "artifacts/mvtec_ad/fabric/evaluate").glob("*/"))
    per_image = pd.read_csv(evaluate / "per_image.csv")
    assert len(per_image) == 26 and set(per_image["decision"]) <= {"normal", "anomalous"}
    assert all((evaluate / p).stat().st_size > 1000 for p in per_image["map_png"])  # named from its folder
    for figure in ("histograms.png", "curves_image.png", "curves_pixel.png"):
        assert (evaluate / figure).stat().st_size > 1000
    assert (cwd / "artifacts/mvtec_ad/_report/metrics_bars.png").stat().st_size > 1000


def test_inspect_prints_stage_config_metrics_and_top_images(demo_run):
    cwd, _ = demo_run
    artifact = next((cwd / "artifacts/mvtec_ad/fabric/evaluate").glob("*.h5"))
    result = run_musc("inspect", artifact, "--top", "3", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "stage: evaluate" in result.stdout and "digest verified" in result.stdout
    assert "pixel_auroc" in result.stdout and "top 3 most anomalous" in result.stdout
    extract = next((cwd / "artifacts/mvtec_ad/fabric/extract").glob("*.h5"))
    result = run_musc("inspect", extract, cwd=cwd)
    assert "tokens" in result.stdout and "(4, 26, 257, 96)" in result.stdout


def test_report_is_rebuilt_from_artifacts_alone(demo_run):
    cwd, _ = demo_run
    evaluate = next((cwd / "artifacts/mvtec_ad/fabric/evaluate").glob("*/"))
    for name in ("report.md", "per_image.csv", "histograms.png"):
        (evaluate / name).unlink()
    result = run_musc("report", cwd / "artifacts", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert (evaluate / "report.md").read_text().startswith("# MuSc results")
    assert (evaluate / "histograms.png").stat().st_size > 1000


def _evaluation(cwd, category):
    """(per_image.csv, the evaluate artifact's attributes) of a demo category."""
    import h5py
    artifact = next((cwd / f"artifacts/mvtec_ad/{category}/evaluate").glob("*.h5"))
    with h5py.File(artifact) as f:
        attrs = dict(f.attrs)
    return pd.read_csv(artifact.with_suffix("") / "per_image.csv"), attrs


@pytest.mark.slow
def test_demo_terminal_shows_every_metric_of_the_csv_the_mean_and_the_flagged(demo_run):
    from musc.method.metrics import METRIC_NAMES
    from musc.outputs.ui_content import SHORT_NAMES
    cwd, result = demo_run
    table = pd.read_csv(cwd / "artifacts/mvtec_ad/_report/metrics.csv", index_col="category")
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "I-AUROC" in line)
    assert header.split() == ["category", "flagged", *(SHORT_NAMES[name] for name in METRIC_NAMES)]
    for category in ("fabric", "washer", "mean"):
        row = next(line.split() for line in lines if line.split()[:1] == [category])
        values = [f"{table.loc[category, name]:.2f}" for name in METRIC_NAMES]  # x100 in the CSV
        if category == "mean":
            assert row == ["mean", *values]
            continue
        per_image, attrs = _evaluation(cwd, category)
        flagged = int((per_image["decision"] == "anomalous").sum())
        assert row == [category, str(flagged), "of", str(len(per_image)), *values]
        said = next(line for line in lines if line.startswith(f"{category}: {flagged} of {len(per_image)} flagged"))
        value, rule = said.split(" at score >= ")[1].split(", ", 1)
        assert abs(float(value) - float(attrs["threshold"])) <= 1e-5 * abs(float(attrs["threshold"]))
        assert rule == attrs["threshold_rule"]
        assert ((per_image["score_rscin"] >= float(attrs["threshold"])) == (per_image["decision"] == "anomalous")).all()


@pytest.mark.slow
def test_report_rebuilds_the_dataset_page_and_prints_the_html_pages(demo_run):
    cwd, _ = demo_run
    index = cwd / "artifacts/mvtec_ad/_report/index.html"
    index.unlink()
    result = run_musc("report", cwd / "artifacts", cwd=cwd)
    assert result.returncode == 0, result.stderr
    page = index.read_text()
    pages = [Path(line.removeprefix("report: ")) for line in result.stdout.splitlines() if line.startswith("report: ")]
    assert sorted(p.parent.parent.parent.name for p in pages) == ["fabric", "washer"]
    assert all(p.name == "report.html" and p.is_file() for p in pages) and "report.md" not in result.stdout
    assert f"dataset page: {index}" in result.stdout
    for report in pages:  # the page links each category's report
        assert f"href='../{report.relative_to(index.parent.parent)}'" in page
    assert "washer" in page and "fabric" in page and "<table class='metrics'>" in page


def test_run_on_real_mvtec_bottle_reports_image_metrics(real_data, tmp_path):
    result = run_musc("run", "--dataset", "mvtec_ad", "--root", real_data, "--category", "bottle",
                      "--backbone", DEMO_BACKBONE, "--pretrained", "none", "--image-size", "128",
                      "--layers", "0,1,2,3", "--msm-precision", "bf16", "--artifacts", tmp_path / "artifacts",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "artifacts/mvtec_ad/_report/metrics.csv", index_col="category")
    assert 0 <= table.loc["bottle", "image_auroc"] <= 100
    assert pd.isna(table.loc["bottle", "pixel_auroc"])  # no masks: not computed, not zero
    assert "n/a" in result.stdout
    per_image = pd.read_csv(next((tmp_path / "artifacts/mvtec_ad/bottle/evaluate").glob("*/per_image.csv")))
    assert len(per_image) == 65 and per_image["label"].sum() == 45


@pytest.mark.parametrize("args,message", [
    (["run", "--dataset", "mvtec_ad", "--root", "/no/such/folder"], "root: dataset folder"),
    (["run", "--dataset", "kitti", "--root", "."], "dataset: unknown layout"),
    (["inspect", "missing.h5"], "missing.h5: no such artifact"),
])
def test_bad_input_gives_one_line_without_traceback(tmp_path, args, message):
    result = run_musc(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_configuration_is_rejected_before_any_work(tmp_path):
    (tmp_path / "data/cat/test/good").mkdir(parents=True)
    for flags, message in ((["--layers", "0,99"], "layers: block 99 is out of range"),
                           (["--msm-precision", "fp16"], "msm_precision: expected 'fp32' or 'bf16'")):
        result = run_musc("run", "--dataset", "mvtec_ad", "--root", tmp_path / "data", "--backbone", DEMO_BACKBONE,
                          "--pretrained", "none", "--image-size", "128", *flags, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = run_musc("run", "--dataset", "mvtec_ad", "--root", tmp_path / "data", "--backbone", DEMO_BACKBONE,
                      "--pretrained", "none", "--image-size", "100", cwd=tmp_path)
    assert "image_size: 100 is not a multiple of the patch size 8" in result.stderr
    assert not (tmp_path / "artifacts").exists()


def test_failure_inside_the_flow_keeps_the_traceback_off_the_terminal(tmp_path):
    good = tmp_path / "data/cat/test/good"
    good.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        (good / name).write_text("not an image")
    result = run_musc("run", "--dataset", "mvtec_ad", "--root", tmp_path / "data", "--backbone", DEMO_BACKBONE,
                      "--pretrained", "none", "--image-size", "64", "--layers", "0,1", "--artifacts",
                      tmp_path / "artifacts", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: category 'cat': only 0 readable image(s)" in result.stderr
    assert "Traceback" in (tmp_path / "artifacts/musc-errors.log").read_text()


@pytest.mark.slow
def test_first_contact_offline_says_the_cheap_errors_first_and_an_unreachable_hub_in_one_line(tiny_dataset, tmp_path):
    """The default backbone (open_clip's ViT-L-14-336 with the openai weights) with no model hub in
    reach: an unknown category is said before any weight is looked for, and the missing weights in
    one line naming `pretrained`, without retries or anything printed twice."""
    import socket
    with socket.socket() as probe:  # a local port nobody listens on: the hub is unreachable at once
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    offline = {"HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    unknown = run_musc("run", "--dataset", "mvtec_ad", "--root", tiny_dataset, "--category", "nope",
                       "--artifacts", tmp_path / "a", cwd=tmp_path, env=offline)
    assert unknown.returncode == 2 and "nope" in unknown.stderr, unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and "pretrained" not in unknown.stderr
    weights = run_musc("run", "--dataset", "mvtec_ad", "--root", tiny_dataset, "--category", "fabric",
                       "--artifacts", tmp_path / "a", cwd=tmp_path, env=offline)
    lines = weights.stderr.strip().splitlines()
    assert weights.returncode == 2 and len(lines) == 1, weights.stderr
    assert lines[0].startswith("error: pretrained:") and "unreachable" in lines[0] and "--pretrained" in lines[0]
    assert "Retrying" not in weights.stderr + weights.stdout
    assert not (tmp_path / "a" / "mvtec_ad").exists()  # nothing computed
