"""load_backbone against a plain open_clip forward with the reference settings (docs/METHOD.md section 2)."""
import functools
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip import factory as oc_factory, model as oc_model
from PIL import Image

import musc
from musc.inputs.config import ConfigError

TINY = Path(__file__).parent / "data" / "tiny_clip.json"
LAYERS = [2, 5, 8, 11]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 'pretrained' tiny CLIP at its native size 32, saved as a plain state dict."""
    open_clip.add_model_config(TINY)
    torch.manual_seed(123)
    model = open_clip.create_model("tiny_clip", pretrained=None)
    with torch.no_grad():  # a non-trivial positional embedding, so that its resize matters
        model.visual.positional_embedding.normal_(0, 1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def reference_forward(checkpoint, image_size, images, antialias=False, quick_gelu=False):
    original = oc_factory.resize_pos_embed
    oc_factory.resize_pos_embed = functools.partial(oc_model.resize_pos_embed, antialias=antialias)
    try:
        model = open_clip.create_model("tiny_clip", pretrained=str(checkpoint), force_image_size=image_size,
                                       force_quick_gelu=quick_gelu)
    finally:
        oc_factory.resize_pos_embed = original
    model.eval()
    with torch.no_grad():
        out = model.visual.forward_intermediates(images, indices=LAYERS, output_fmt="NLC",
                                                 output_extra_tokens=True)
        tokens = [torch.cat([p, t], 1) for p, t in zip(out["image_intermediates_prefix"], out["image_intermediates"])]
        embedding = model.encode_image(images, normalize=True)
    return tokens, embedding


@pytest.mark.parametrize("image_size", [48, 32])
def test_tokens_and_embedding_equal_reference_forward(checkpoint, image_size):
    torch.manual_seed(0)
    images = torch.randn(3, 3, image_size, image_size)
    backbone = musc.load_backbone(str(TINY), str(checkpoint), image_size, LAYERS, device="cpu")
    tokens, embedding = backbone.extract(images)
    expected_tokens, expected_embedding = reference_forward(checkpoint, image_size, images)
    grid = image_size // 8
    for ours, theirs in zip(tokens, expected_tokens):
        assert ours.shape == (3, 1 + grid * grid, 32)
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    torch.testing.assert_close(embedding, expected_embedding, atol=0, rtol=0)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(3))


def test_stock_antialiased_resize_differs(checkpoint):
    """The check above can fail: open_clip's default (antialiased) resize gives other tokens."""
    images = torch.randn(2, 3, 48, 48)
    ours, _ = musc.load_backbone(str(TINY), str(checkpoint), 48, LAYERS, device="cpu").extract(images)
    stock, _ = reference_forward(checkpoint, 48, images, antialias=True)
    assert (ours[0] - stock[0]).abs().max() > 1e-3


def test_quick_gelu_switch(checkpoint):
    images = torch.randn(2, 3, 48, 48)
    ours, _ = musc.load_backbone(str(TINY), str(checkpoint), 48, LAYERS, device="cpu",
                                 quick_gelu="true").extract(images)
    expected, _ = reference_forward(checkpoint, 48, images, quick_gelu=True)
    torch.testing.assert_close(ours[-1], expected[-1], atol=0, rtol=0)
    gelu, _ = musc.load_backbone(str(TINY), str(checkpoint), 48, LAYERS, device="cpu").extract(images)
    assert (gelu[-1] - ours[-1]).abs().max() > 1e-4


def test_random_init_is_seeded_and_warns():
    images = torch.randn(1, 3, 32, 32)
    with pytest.warns(UserWarning, match="random weights"):
        a = musc.load_backbone(str(TINY), "none", 32, LAYERS, device="cpu", seed=7).extract(images)
    with pytest.warns(UserWarning):
        b = musc.load_backbone(str(TINY), "none", 32, LAYERS, device="cpu", seed=7).extract(images)
    torch.testing.assert_close(a[0][0], b[0][0], atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,field", [
    (dict(model="no-such-model", pretrained="none", image_size=32, layers=[1]), "backbone"),
    (dict(model=str(TINY), pretrained="none", image_size=36, layers=[1]), "image_size"),
    (dict(model=str(TINY), pretrained="none", image_size=32, layers=[12]), "layers"),
    (dict(model=str(TINY), pretrained="/no/such/file.pt", image_size=32, layers=[1]), "pretrained"),
])
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        musc.load_backbone(device="cpu", **kwargs)


def test_a_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    bogus = tmp_path / "weights.pt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="^pretrained: .*not a readable checkpoint"):
        musc.load_backbone(str(TINY), str(bogus), 32, [1], device="cpu")


def test_a_checkpoint_of_another_model_is_rejected(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ConfigError, match="does not fit"):
        musc.load_backbone(str(TINY), str(other), 32, [1], device="cpu")


def test_preprocess_matches_open_clip_squash_transform():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    expected = open_clip.image_transform(48, is_train=False, resize_mode="squash")(image)
    torch.testing.assert_close(musc.preprocess(image, 48), expected, atol=1e-6, rtol=0)


def test_timm_dino_backbone_from_checkpoint(tmp_path):
    import timm
    torch.manual_seed(3)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64).eval()
    path = tmp_path / "dino.pt"
    torch.save(reference.state_dict(), path)
    backbone = musc.load_backbone("timm:vit_tiny_patch16_224", str(path), 64, [1, 3], device="cpu")
    images = torch.randn(2, 3, 64, 64)
    tokens, embedding = backbone.extract(images)
    assert [t.shape for t in tokens] == [(2, 17, 192)] * 2
    with torch.no_grad():
        expected = reference.get_intermediate_layers(images, n=[1, 3], return_prefix_tokens=True, norm=True)
    torch.testing.assert_close(tokens[1][:, 1:], expected[1][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(tokens[1][:, :1], expected[1][1], atol=1e-6, rtol=0)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))


class _Payload:
    def __reduce__(self):
        return (print, ("this code must never run",))


def test_a_pickle_with_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(ConfigError, match="^pretrained: .*not a readable checkpoint"):
        musc.load_backbone(str(TINY), str(path), 32, [1], device="cpu")
    assert "must never run" not in capsys.readouterr().out


def test_task_results_are_never_persisted_so_never_unpickled():
    import tasks
    for stage_task in (tasks.stage_task, tasks.tile_task):  # every stage runs through these two
        assert stage_task.persist_result is False
