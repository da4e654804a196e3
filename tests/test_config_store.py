"""Run configuration validation and the artifact format."""
import json

import h5py
import numpy as np
import pytest

from musc import MuscConfig, store
from musc.inputs.config import ConfigError


def test_defaults_are_the_papers():
    cfg = MuscConfig()
    assert (cfg.backbone, cfg.pretrained, cfg.image_size) == ("ViT-L-14-336", "openai", 518)
    assert cfg.layers == (5, 11, 17, 23) and cfg.r_list == (1, 3, 5)
    assert (cfg.topmin_min, cfg.topmin_max, cfg.divide_num) == (0.0, 0.3, 1)
    assert cfg.k_list_for("mvtec_ad") == (1, 2, 3) and cfg.k_list_for("visa") == (1, 8, 9)
    assert cfg.k_list_for("btad") == (1, 2, 3)


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("image_size: 336\nr_list: [1, 3]\nk_list: [1, 8, 9]\n")
    cfg = MuscConfig.from_yaml(path)
    assert cfg.image_size == 336 and cfg.r_list == (1, 3) and cfg.k_list_for("mvtec_ad") == (1, 8, 9)
    assert MuscConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("values,field", [
    ({"r_list": []}, "r_list"), ({"r_list": [2]}, "r_list"), ({"topmin_max": 1.5}, "topmin_max"),
    ({"topmin_max": 0}, "topmin_max"), ({"image_size": "big"}, "image_size"), ({"layers": []}, "layers"),
    ({"layers": [-1]}, "layers"), ({"device": "tpu"}, "device"), ({"batch_size": 0}, "batch_size"),
    ({"colour": "red"}, "configuration"), ({"k_list": [-1]}, "k_list"), ({"msm_precision": "fp16"}, "msm_precision"),
])
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        MuscConfig.from_dict(values)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("r_list: [1, 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        MuscConfig.from_yaml(path)
    path.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        MuscConfig.from_yaml(path)


def write_sample(path):
    return store.write_artifact(path, "pool", {"r": 1}, {"aggregate": "abc"},
                                {"features_r1": np.arange(12.0).reshape(3, 4), "names": ["a", "b", "c"],
                                 "digests": ["0", "1", "2"], "added": np.zeros(3), "self_scores": np.zeros(3)},
                                code_version="test")


def test_artifact_round_trip_and_provenance(tmp_path):
    path = tmp_path / "score" / "k.h5"
    digest = write_sample(path)
    artifact = store.open_artifact(path, "pool", digest)
    assert artifact.config == {"r": 1} and artifact.inputs == {"aggregate": "abc"}
    np.testing.assert_array_equal(artifact.read("features_r1"), np.arange(12.0).reshape(3, 4))
    assert list(artifact.read("names")) == ["a", "b", "c"]
    assert artifact.attrs["complete"] and artifact.attrs["schema_version"] == store.SCHEMA_VERSION
    assert json.loads(store.manifest_path(path).read_text())["sha256"] == digest == store.file_sha256(path)
    assert not list(path.parent.glob(".*tmp*"))
    assert store.describe(path)["datasets"]["features_r1"].startswith("(3, 4)")
    assert "degree r" in store.describe(path)["meanings"]["features_r1"]  # from the schema


def test_the_schema_guards_writers_and_readers(tmp_path):
    with pytest.raises(ValueError, match="'extra' is not declared for stage 'score'"):
        store.write_artifact(tmp_path / "a.h5", "score", {}, {}, {"scores": np.zeros(2), "extra": np.zeros(2)})
    with pytest.raises(ValueError, match="stage 'score' needs dataset 'scores'"):
        store.write_artifact(tmp_path / "b.h5", "score", {}, {}, {})
    assert not list(tmp_path.iterdir())  # nothing half-written stays
    store.write_artifact(tmp_path / "c.h5", "score", {}, {}, {"scores": np.zeros(2)})
    with pytest.raises(store.ArtifactError, match="'score_s' is not a dataset of score artifacts"):
        store.open_artifact(tmp_path / "c.h5").read("score_s")


def test_the_artifact_format_document_is_generated_from_the_schema():
    from conftest import ROOT
    from musc.store import schema
    assert (ROOT / "docs" / "ARTIFACTS.md").read_text() == schema.markdown(), \
        "regenerate it: python -m musc.store.schema > docs/ARTIFACTS.md"


def test_an_artifact_records_the_run_that_made_it_only_inside_one(tmp_path):
    import json
    write_sample(tmp_path / "alone.h5")
    assert "made_by" not in store.open_artifact(tmp_path / "alone.h5").attrs
    with store.made_by({"flow_run": "0f3c", "deployment": "mvtec-nightly"}):
        write_sample(tmp_path / "run.h5")
    with store.made_by({"flow_run": "0f3d", "deployment": ""}):  # started by hand: no deployment named
        write_sample(tmp_path / "hand.h5")
    assert json.loads(store.open_artifact(tmp_path / "run.h5").attrs["made_by"]) == {
        "flow_run": "0f3c", "deployment": "mvtec-nightly"}
    assert json.loads(store.open_artifact(tmp_path / "hand.h5").attrs["made_by"]) == {"flow_run": "0f3d"}
    write_sample(tmp_path / "after.h5")
    assert "made_by" not in store.open_artifact(tmp_path / "after.h5").attrs


def test_reader_refuses_partial_foreign_or_corrupt_files(tmp_path):
    path = tmp_path / "k.h5"
    write_sample(path)
    with pytest.raises(store.ArtifactError, match="expected 'extract'"):
        store.open_artifact(path, "extract")
    with pytest.raises(store.ArtifactError, match="is not the expected"):
        store.open_artifact(path, "pool", digest="0" * 64)
    truncated = path.read_bytes()[:-10]
    path.write_bytes(truncated)
    with pytest.raises(store.ArtifactError, match="truncated"):
        store.verify(path)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(store.ArtifactError, match="no valid manifest"):
        store.verify(foreign)
    assert store.valid_digest(tmp_path / "missing.h5") is None


def test_a_failed_write_leaves_the_previous_artifact_intact(tmp_path, monkeypatch):
    path = tmp_path / "k.h5"
    digest = write_sample(path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store.digests, "file_sha256", disk_full)
    with pytest.raises(store.NoSpaceError, match="no space left on the device; free some space"):
        write_sample(path)
    monkeypatch.undo()
    assert store.verify(path, "pool") == digest
    assert not list(tmp_path.glob(".*tmp*"))


def test_every_deployment_parameter_has_a_description_for_the_run_form():
    """What a deployment's run form shows: each parameter of each deployed flow, and each field of
    the run configuration, with a description (Prefect reads the docstring's Args and the fields'
    descriptions into the parameter schema)."""
    import yaml
    from prefect.utilities.callables import parameter_schema

    import importlib

    import flows
    from conftest import ROOT
    deployed = {tuple(d["entrypoint"].replace(".py:", ":").replace("/", ".").split(":"))
                for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert {name for _, name in deployed} == {"demo_flow", "nightly_dataset_flow", "daily_folder_flow"}
    for module, name in deployed:
        schema = parameter_schema(getattr(importlib.import_module(module), name).fn).model_dump()
        missing = [p for p, field in schema["properties"].items() if not field.get("description")]
        assert not missing, (name, missing)
        for definition in schema.get("definitions", {}).values():
            blank = [p for p, field in definition.get("properties", {}).items()
                     if not field.get("description") and definition.get("title") == "MuscConfig"]
            assert not blank, (name, blank)
    config = parameter_schema(flows.dataset_flow.fn).model_dump()["definitions"]["MuscConfig"]
    assert len(config["properties"]) >= 20  # every MuscConfig field is in the form


def test_prefect_yaml_is_what_prefect_deploy_reads_with_tags_and_one_nightly_at_a_time():
    """Read with Prefect's own model of prefect.yaml (what ``prefect deploy`` validates): every
    deployment tagged, the heavy nightly ones limited to one run at a time with their devices set."""
    import yaml

    from conftest import ROOT
    models = pytest.importorskip("prefect.cli.deploy._models", reason="this Prefect keeps its prefect.yaml model elsewhere")
    model = models.PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    by_name = {d.name: d for d in model.deployments}
    assert all("musc" in (d.tags or []) for d in model.deployments)
    for name in ("mvtec-nightly", "visa-nightly"):
        assert by_name[name].concurrency_limit == 1
        assert by_name[name].work_pool.job_variables["env"]["CUDA_VISIBLE_DEVICES"] == "0"
