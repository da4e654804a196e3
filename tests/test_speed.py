"""Speed features keep their promises: bf16-fast stays within its stated bounds and has its own score
key; overlays match matplotlib's colours and are redrawn only when they change; a cached rerun
imports no numerical library and never builds the backbone."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import DEMO_BACKBONE, ROOT, TINY_CONFIG

# bf16-fast's stated bounds (README, "bf16-fast"): every metric within 0.2 points of fp32, and no
# score (map value) further from fp32 than 1% of the fp32 map's range.
FAST_METRIC_POINTS = 0.2
FAST_SCORE_FRACTION = 0.01


def test_fast_mode_enters_the_score_key_and_exact_modes_share_it():
    from musc import MuscConfig
    from musc.stages import score
    ref = {"path": "/a/fabric/aggregate/x.h5", "digest": "d"}
    keys = {p: score.plan(ref, ref, MuscConfig(msm_precision=p).score, 1).key.value for p in ("fp32", "bf16", "bf16-fast")}
    assert keys["fp32"] == keys["bf16"] != keys["bf16-fast"]
    with pytest.raises(ValueError, match="msm_precision"):
        MuscConfig(msm_precision="fp16")


@pytest.mark.slow
def test_fast_mode_stays_within_its_stated_bounds(tiny_dataset):
    from musc.inputs.backbones import load_backbone
    from musc.inputs.datasets import load_category
    from musc.inputs.images import load_image, load_mask
    from musc.method.pipeline import score_images
    from musc.outputs.evaluation import evaluate_arrays
    category = load_category("mvtec_ad", str(tiny_dataset), "fabric")
    size = 128
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_backbone(DEMO_BACKBONE, "none", size, [0, 1, 2, 3], device="cpu")
    tokens, embeddings = model.extract(torch.stack([model.preprocess(load_image(s.path)) for s in category.samples]))
    labels = np.array([s.label for s in category.samples])
    masks = np.stack([load_mask(s.mask_path, size, category.mask_rule) for s in category.samples])
    has_mask = np.array([s.mask_path is not None for s in category.samples])
    runs = {}
    for precision in ("fp32", "bf16-fast"):
        result = score_images(tokens, embeddings, size, (1, 3), block_size=4, precision=precision)
        runs[precision] = result, evaluate_arrays(labels, result["image_scores"], masks, result["maps"], has_mask)[0]
    (exact, exact_metrics), (fast, fast_metrics) = runs["fp32"], runs["bf16-fast"]
    assert not np.array_equal(fast["maps"], exact["maps"])  # it really ran in bf16
    assert np.abs(fast["maps"] - exact["maps"]).max() <= FAST_SCORE_FRACTION * np.ptp(exact["maps"])
    for name, value in exact_metrics.items():
        assert abs(fast_metrics[name] - value) * 100 <= FAST_METRIC_POINTS, (name, value, fast_metrics[name])


def test_overlay_colours_are_matplotlibs_jet():
    from matplotlib import colormaps
    from musc.outputs.figures import heat_colours, jet_lut
    reference = colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255
    assert np.abs(jet_lut().astype(float) - reference).max() <= 0.501  # rounding to 8 bits
    values = np.linspace(-1, 2, 50).reshape(5, 10)
    expected = (colormaps["jet"](np.clip(values, 0, 1))[..., :3] * 255)
    assert np.abs(heat_colours(values, 0.0, 1.0).astype(float) - expected).max() <= 1


def test_pictures_are_redrawn_only_when_what_they_show_changes(tmp_path):
    from PIL import Image
    from musc.outputs.evaluation import EvaluationInputs
    from musc.outputs.figures import render_pictures
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    maps = rng.random((3, 32, 32))
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[1, 8:20, 8:20] = 1
    folder = tmp_path / "outputs"

    def inputs() -> EvaluationInputs:  # what render_pictures reads of them: the maps as they are now
        return EvaluationInputs(names=np.array(["a/0.png", "a/1.png", "b/2.png"]), paths=np.array([str(p) for p in paths]),
                                defect_types=np.array(["good"] * 3), labels=np.zeros(3, np.int64),
                                has_mask=np.array([False, True, False]), masks=masks, maps=maps, raw=maps.max(axis=(1, 2)),
                                scores=np.array([0.1, 0.9, 0.2]))
    pictures = render_pictures(folder, inputs(), "image")
    assert [os.path.relpath(p, folder).rsplit("-", 1)[0] for p in pictures.overlays] == [
        "overlays/a__0", "overlays/a__1", "overlays/b__2"]
    assert [os.path.relpath(p, folder).rsplit("-", 1)[0] for p in pictures.thumbs] == [
        "thumbs/a__0", "thumbs/a__1", "thumbs/b__2"]
    with Image.open(pictures.overlays[1]) as picture:
        assert picture.width > 2 * 256 and picture.height > 256
    with Image.open(pictures.thumbs[1]) as thumb:
        assert thumb.height < 128
    every = pictures.overlays + pictures.thumbs

    def redrawn(stamps):
        return [os.stat(p).st_mtime_ns != s for p, s in zip(every, stamps)]
    stamps = [os.stat(p).st_mtime_ns for p in every]
    assert render_pictures(folder, inputs(), "image") == pictures
    assert not any(redrawn(stamps))
    maps[2, 0, 0] += 1.0
    render_pictures(folder, inputs(), "image")
    assert redrawn(stamps) == [False, False, True] * 2  # the image whose map changed: overlay and thumb
    stamps = [os.stat(p).st_mtime_ns for p in every]
    os.remove(pictures.thumbs[0])
    render_pictures(folder, inputs(), "image")
    assert os.path.isfile(pictures.thumbs[0]) and redrawn(stamps)[1:3] == [False, False]
    assert not list(folder.rglob("*.tmp"))


@pytest.mark.slow
def test_the_run_path_imports_no_numerical_library_until_a_stage_computes():
    code = ("import sys, flows.cli, flows.category, flows.dataset, flows.demo, tasks, musc\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'timm', 'sklearn', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_preflight_skips_the_backbone_when_every_extract_artifact_is_valid(reference_run, tiny_dataset, monkeypatch):
    from flows import cli
    from flows.category import checked_category
    from musc import MuscConfig
    from musc.inputs import backbones
    _, artifacts = reference_run
    cfg = MuscConfig.from_dict(TINY_CONFIG)
    categories = [checked_category("mvtec_ad", str(tiny_dataset), "fabric", cfg, str(artifacts))]
    built = []
    monkeypatch.setattr(backbones, "backbone_for", lambda *a, **k: built.append(a))
    cli._preflight(cfg, categories, artifacts)
    assert built == []
    cli._preflight(cfg.replace(image_size=128), categories, artifacts)  # no artifact for these settings
    assert len(built) == 1


def test_only_category_runs_that_compute_send_flow_run_heartbeats(reference_run, tiny_dataset, tmp_path):
    from prefect.settings import get_current_settings
    from flows.category import checked_category
    from musc.stages import Run
    from musc.stages import reused_throughout as reused

    def reused_throughout(images, cfg, artifacts):
        return reused(Run(images, cfg, artifacts))
    from flows.dataset import _heartbeats_unless_reused
    from musc import MuscConfig
    _, artifacts = reference_run
    cfg = MuscConfig.from_dict(TINY_CONFIG)
    images = checked_category("mvtec_ad", str(tiny_dataset), "fabric", cfg, str(artifacts))
    assert reused_throughout(images, cfg, str(artifacts))
    assert not reused_throughout(images, cfg, str(tmp_path))  # nothing there
    assert not reused_throughout(images, cfg.replace(r_list=(1, 3, 5)), str(artifacts))  # no score for r=5
    assert not reused_throughout(images, cfg.replace(threshold=0.5), str(artifacts))  # another evaluate
    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None
    with _heartbeats_unless_reused(Run(images, cfg, str(artifacts))):
        assert get_current_settings().flows.heartbeat_frequency is None
    for changed, folder in ((cfg, tmp_path), (cfg.replace(r_list=(1, 3, 5)), artifacts)):
        with _heartbeats_unless_reused(Run(images, changed, str(folder))):
            assert get_current_settings().flows.heartbeat_frequency == default


@pytest.mark.slow
def test_the_commands_own_server_turns_heartbeats_off_and_a_given_server_keeps_them(tmp_path):
    code = ("from flows.server import temporary_server\n"
            "from prefect.settings import get_current_settings as current\n"
            "with temporary_server() as url:\n"
            "    print(url, current().api.url == url, current().flows.heartbeat_frequency)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    own = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert own.returncode == 0, own.stderr[-2000:]
    url, pointed, heartbeat = own.stdout.split()
    assert url.startswith("http://127.0.0.1:") and pointed == "True" and heartbeat == "None"
    given = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert given.returncode == 0, given.stderr[-2000:]
    assert given.stdout.split() == ["http://127.0.0.1:9/api", "True", "180"]


@pytest.mark.slow
def test_drawing_threads_import_nothing_once_the_drawing_modules_are_loaded(tmp_path):
    """Pictures are drawn in threads while the metrics import scikit-learn: a thread that imported a
    package at the same time could meet it half-initialised (it did: scipy, an ImportError)."""
    code = ("import sys, numpy as np\n"
            "from PIL import Image\n"
            "from musc.outputs import figures\n"
            "from musc.outputs.evaluation import EvaluationInputs\n"
            "figures.load_drawing_modules()\n"
            "folder = sys.argv[1]\n"
            "Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(folder + '/a.png')\n"
            "maps = np.random.default_rng(0).random((2, 32, 32)); masks = np.zeros((2, 32, 32), np.uint8)\n"
            "masks[1, 4:9, 4:9] = 1\n"
            "inputs = EvaluationInputs(np.array(['a.png', 'b.png']), np.array([folder + '/a.png', folder + '/missing.png']),\n"
            "                          np.array(['good', 'x']), np.array([0, 1]), np.array([False, True]), masks, maps,\n"
            "                          maps.max(axis=(1, 2)), np.array([0.1, 0.9]))\n"
            "before = set(sys.modules)\n"
            "figures.render_pictures(folder + '/out', inputs, 'image')\n"
            "print(sorted(set(sys.modules) - before))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len(list((tmp_path / "out").rglob("*.png"))) == 4
