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
    keys = {p: MuscConfig(msm_precision=p).score.key() for p in ("fp32", "bf16", "bf16-fast")}
    assert keys["fp32"] == keys["bf16"] != keys["bf16-fast"]
    with pytest.raises(ValueError, match="msm_precision"):
        MuscConfig(msm_precision="fp16")


def test_fast_mode_stays_within_its_stated_bounds(tiny_dataset):
    from musc.inputs.backbones import load_backbone
    from musc.inputs.datasets import load_category, load_image, load_mask
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


def test_overlays_are_redrawn_only_when_what_they_show_changes(tmp_path):
    from PIL import Image
    from musc.outputs.figures import render_overlays
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    maps = rng.random((3, 32, 32))
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[1, 8:20, 8:20] = 1
    folder = tmp_path / "overlays"
    folder.mkdir()
    args = (folder, [str(p) for p in paths], ["a/0.png", "a/1.png", "b/2.png"])
    rest = (masks, np.array([False, True, False]), np.array([0.1, 0.9, 0.2]), "image")
    written = render_overlays(*args, maps, *rest)
    assert [os.path.basename(p) for p in written] == ["a__0.png", "a__1.png", "b__2.png"]
    with Image.open(written[1]) as picture:
        assert picture.width > 2 * 256 and picture.height > 256
    stamps = [os.stat(p).st_mtime_ns for p in written]
    assert render_overlays(*args, maps, *rest) == written
    assert [os.stat(p).st_mtime_ns for p in written] == stamps  # nothing redrawn
    maps[2, 0, 0] += 1.0
    render_overlays(*args, maps, *rest)
    changed = [os.stat(p).st_mtime_ns != s for p, s in zip(written, stamps)]
    assert changed == [False, False, True]
    os.remove(written[0])
    render_overlays(*args, maps, *rest)
    assert os.path.isfile(written[0])


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
