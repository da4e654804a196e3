"""The CUDA paths, checked against the CPU: fp16-autocast extraction, MSM tiles on the GPU, and the
demo end to end. Marked ``gpu`` and skipped without a CUDA device; ``bash bench/gpu_check.sh`` runs
them (with -s, so the measured deviations are printed) and the paper-settings benchmark."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import DEMO_BACKBONE

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device: run bash bench/gpu_check.sh on a GPU machine")]


def _backbone(model, image_size, layers, device):
    from musc.inputs.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(model, "none", image_size, layers, device=device, seed=0)


@pytest.mark.parametrize("model, image_size, layers", [(DEMO_BACKBONE, 128, (0, 1, 2, 3)),
                                                        ("ViT-B-16", 224, (2, 5, 8, 11))])
def test_fp16_autocast_extraction_stays_close_to_fp32(model, image_size, layers):
    torch.manual_seed(1)
    images = torch.randn(4, 3, image_size, image_size)
    gpu_tokens, gpu_embedding = _backbone(model, image_size, layers, "cuda").extract(images)
    cpu_tokens, cpu_embedding = _backbone(model, image_size, layers, "cpu").extract(images)
    assert all(t.dtype == torch.float32 for t in gpu_tokens) and gpu_embedding.dtype == torch.float32
    for layer, gpu, cpu in zip(layers, gpu_tokens, cpu_tokens):
        relative = float((gpu - cpu).norm() / cpu.norm())
        cosine = float(F.cosine_similarity(gpu, cpu, dim=-1).min())
        print(f"\n{model} block {layer}: fp16-autocast vs fp32 tokens: relative deviation {relative:.2e}, "
              f"max |diff| {float((gpu - cpu).abs().max()):.2e}, smallest token cosine {cosine:.6f}")
        assert relative < 2e-2 and cosine > 0.999
    assert float(F.cosine_similarity(gpu_embedding, cpu_embedding, dim=-1).min()) > 0.999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_msm_tiles_on_the_gpu_equal_the_cpu(precision):
    from musc.method.msm import mutual_scores, tile_minima
    torch.manual_seed(0)
    Z = F.normalize(torch.randn(13, 196, 128), dim=-1)
    cpu = mutual_scores(Z, block_size=4, precision=precision)
    gpu = mutual_scores(Z.cuda(), block_size=4, precision=precision)  # bf16: the GPU computes fp32
    assert gpu.device.type == "cuda"
    print(f"\nMSM ({precision}) GPU vs CPU: max |diff| {float((gpu.cpu() - cpu).abs().max()):.2e}")
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    for same in (True, False):
        a, b = (Z[:4], Z[:4]) if same else (Z[:4], Z[4:9])
        for on_gpu, on_cpu in zip(tile_minima(a.cuda(), b.cuda(), same_block=same), tile_minima(a, b, same_block=same)):
            assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5, rtol=0)


def test_score_tile_task_runs_on_the_gpu(tmp_path, monkeypatch):
    """The score stage's tile (musc/stages/score.py) with device cuda writes the CPU's votes."""
    import types
    from musc import MuscConfig, store
    from musc.method.blocks import Tile
    from musc.stages import score
    torch.manual_seed(0)
    features = F.normalize(torch.randn(1, 6, 64, 32), dim=-1).numpy()
    aggregate = tmp_path / "aggregate" / "a.h5"
    digest = store.write_artifact(aggregate, "aggregate", {}, {}, {}, fill=lambda f: f.create_dataset("features", data=features))
    tile = Tile(0, 0, 1, (0, 1, 2), (3, 4, 5))
    monkeypatch.setattr(score, "tile_layout", lambda plan: types.SimpleNamespace(kept=()))  # a lone tile: no rows to reduce
    votes = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / device / "score" / "s.h5"
        plan = score.plan({"path": str(aggregate), "digest": digest}, {"path": "", "digest": ""},
                          MuscConfig(device=device, block_size=3).score, 1)
        plan = type(plan)(plan.stage, plan.key, str(path), plan.label, plan.needs)
        assert score.compute_tile(plan, tile)
        votes[device] = [store.read_part(path, score.half_name(plan, tile, side))[field]
                         for side, field in ((0, "votes_a"), (1, "votes_b"))]
    for side in (0, 1):  # the tile's two halves: block A's votes against B, and B's against A
        np.testing.assert_allclose(votes["cuda"][side], votes["cpu"][side], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_demo_end_to_end_on_the_gpu_matches_the_cpu(prefect_harness, tmp_path):
    from flows import category_flow
    from flows.demo import DEMO_CONFIG
    from musc.inputs.synthetic import make_dataset
    data = make_dataset(tmp_path / "data", seed=0)
    metrics = {}
    for device in ("cpu", "cuda"):
        for category in ("fabric", "washer"):
            result = category_flow("mvtec_ad", str(data), category, {**DEMO_CONFIG, "device": device},
                                   str(tmp_path / f"artifacts_{device}"))
            metrics[device, category] = result["metrics"]
    for category in ("fabric", "washer"):
        cpu, gpu = metrics["cpu", category], metrics["cuda", category]
        deltas = {k: (gpu[k] - cpu[k]) * 100 for k in cpu if cpu[k] is not None}
        print(f"\n{category}: GPU - CPU metrics (points): " + ", ".join(f"{k} {v:+.3f}" for k, v in deltas.items()))
        assert all(abs(v) <= 0.5 for v in deltas.values()), deltas
