"""Issue 30 reviewed as a demanding user would use it (outputs that travel, model files found by
digest, musc automations install): each test one defect found, and kept fixed. Marked slow: those
that start the musc command."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_BACKBONE, run_musc


def user_model(folder: Path) -> Path:
    """A model file of the user's: the demo's model written anew (not musc's own file, by content)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vit.json"
    path.write_text(json.dumps(json.loads(Path(DEMO_BACKBONE).read_text()), indent=5))
    return path


def test_a_run_typed_with_a_relative_model_file_records_it_relative(tmp_path, monkeypatch):
    """`musc run --backbone models/vit.json` named the model in the extract's model_files absolute (a
    folder of the worker no person typed)."""
    from musc.inputs.backbone_spec import model_files, recorded_model_files
    from musc.inputs.config import MuscConfig
    user_model(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    settings = MuscConfig.from_dict({"backbone": "models/vit.json", "pretrained": "none", "image_size": 64,
                                     "layers": [0, 1]}).extract
    folder = tmp_path / "artifacts" / "mvtec_ad" / "fabric" / "extract"
    names = json.loads(model_files(settings, folder))
    assert names == ["../../../../models/vit.json"]
    assert [p.resolve() for p in recorded_model_files(json.dumps(names), folder)] == [tmp_path / "models/vit.json"]


def write_pool_of(path: Path, model: Path) -> None:
    from musc.inputs.backbone_spec import backbone_settings
    from musc.inputs.config import MuscConfig
    from musc.reference_pool import Images, PoolSettings, write_pool
    settings = MuscConfig.from_dict({"backbone": str(model), "pretrained": "none", "image_size": 64,
                                     "layers": [0, 1], "r_list": [1]}).extract
    features = np.random.default_rng(0).random((3, 2, 64, 8), dtype=np.float32)
    names = [f"{i}.png" for i in range(3)]
    write_pool(path, PoolSettings("fabric", backbone_settings(settings), (1,)),
               [Images(names, names, np.zeros(3), lambda r, layer, idx: features[np.sort(idx), layer], (64, 8))],
               10, {}, model_files=[model])


def test_a_pool_reached_through_a_link_finds_its_model_file(tmp_path, monkeypatch):
    """A pool file linked from another folder (site/pool.h5 -> store/deep/pool.h5): its model_files hint
    is written from its real folder, and was read from the link's: score-new refused a model file that
    never moved."""
    from musc.reference_pool.pool import PoolFile, pool_backbone
    from musc.store.digests import file_digest
    model = user_model(tmp_path / "site" / "models")
    real = tmp_path / "store" / "deep" / "pool.h5"
    real.parent.mkdir(parents=True)
    write_pool_of(real, model)
    (tmp_path / "site" / "pool.h5").symlink_to(real)
    monkeypatch.chdir(tmp_path / "site")
    monkeypatch.delenv("MUSC_MODELS", raising=False)
    found = pool_backbone(PoolFile(Path("pool.h5")), "cpu")
    assert file_digest(found.backbone) == file_digest(model)


def test_musc_models_naming_a_missing_folder_is_said(tmp_path, monkeypatch):
    """MUSC_MODELS=/a/typo: the refusal said only '$MUSC_MODELS', not that it names no folder."""
    from musc.inputs.backbone_spec import model_file
    from musc.inputs.config import ConfigError
    missing = tmp_path / "no-such-models"
    monkeypatch.setenv("MUSC_MODELS", str(missing))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        model_file("pretrained", "ckpt.pt", "0" * 64)
    assert "\n" not in str(refused.value) and f"MUSC_MODELS names no such folder {missing}" in str(refused.value)


@pytest.mark.slow
def test_score_new_with_a_backbone_path_that_is_not_there_says_so(pool_file, tiny_dataset, tmp_path):
    """`musc score-new --backbone /no/such/file.pt` was passed over without a word (a typo hid behind
    'found in none of ...', or behind a model found elsewhere)."""
    image = tiny_dataset / "fabric/test/good/000.png"
    result = run_musc("score-new", "--pool", pool_file, image, "--out", "day", "--device", "cpu",
                      "--backbone", "no/such/model.pt", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == ["error: --backbone: no such file or folder no/such/model.pt"] \
        or result.stdout.strip().splitlines()[-1] == "error: --backbone: no such file or folder no/such/model.pt", \
        result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "day").exists()


def test_automations_default_file_found_without_a_checkout(tmp_path, monkeypatch):
    """musc installed from a wheel (the Docker image, a git-clone worker) holds no configs/: `musc
    automations install` looked only beside the installed package and failed on its default file."""
    from flows import cli_automations
    from flows.cli_automations import AutomationError, default_files
    shipped = Path(cli_automations.CONFIGS) / "automation-crashed.yaml"
    monkeypatch.setattr(cli_automations, "CONFIGS", tmp_path / "site-packages" / "configs")
    monkeypatch.delenv("MUSC_FLOW_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AutomationError, match="configs/automation-crashed.yaml: not found in .*MUSC_FLOW_HOME"):
        default_files()
    home = tmp_path / "checkout"
    (home / "configs").mkdir(parents=True)
    (home / "configs" / shipped.name).write_text(shipped.read_text())
    monkeypatch.setenv("MUSC_FLOW_HOME", str(home))
    assert default_files() == [home / "configs" / shipped.name]
    monkeypatch.delenv("MUSC_FLOW_HOME")
    monkeypatch.chdir(home)  # the image's working directory, a clone's
    assert [p.resolve() for p in default_files()] == [(home / "configs" / shipped.name).resolve()]


@pytest.mark.parametrize("content, said", [
    (b"\xff\xfe\x00automations", "not a text file"),
    (b"automations: [1]\n", "automations[0]: Input should be"),
])
def test_a_bad_automation_file_is_one_line_naming_it(tmp_path, content, said):
    """A file that is not UTF-8 was 'error: UnicodeDecodeError: ...' naming no file; an entry that is
    not a mapping was 'not a Prefect automation: : Input ...' naming no entry."""
    from flows.cli_automations import AutomationError, declared
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(AutomationError) as refused:
        declared(path)
    assert str(refused.value).startswith(f"{path}: ") and said in str(refused.value)
    assert "\n" not in str(refused.value)
    assert os.fspath(path) in str(refused.value)
