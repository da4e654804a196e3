"""Reliability, third pass (issue 21): verification records that could be fooled, numbers at the
boundary, folders that escape their root, names that collide. Each test reproduces a failure the
issue reported (or a sibling of it)."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from musc import store
from musc.store import digests, verification


def write_sample(path, value=0.0, here=False):
    """A small artifact, as another process (a run before this command) would have written it: this
    process keeps no memory of the digest it wrote, unless ``here``."""
    digest = store.write_artifact(path, "pool", {"r": 1}, {"aggregate": "abc"},
                                  {"features_r1": np.full((3, 4), value), "names": ["a", "b", "c"],
                                   "digests": ["0", "1", "2"], "added": np.zeros(3), "self_scores": np.zeros(3),
                                   "sources": ["run a", "run a", "run a"]},
                                  attrs={"pool_id": "test"}, code_version="test")
    if not here:
        verification._verified.pop(str(path), None)
    return digest


def test_an_artifact_is_hashed_once_by_the_process_that_writes_it(tmp_path, monkeypatch):
    """The writer hashes what it writes (the temporary file, before the rename) and trusts that digest
    in memory while the file keeps its identity (a replacement is another inode): a stage's output
    is not read back to be hashed again by the process that made it; another process hashes it."""
    reads = []
    original = digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda p: reads.append(p) or original(p))
    path = tmp_path / "k.h5"
    digest = write_sample(path, here=True)
    assert len(reads) == 1 and store.verify(path) == digest and len(reads) == 1
    store.forget()  # another process
    assert store.verify(path) == digest and len(reads) == 2


def edit_in_place_keeping_size_and_mtime(path):
    """Flip one byte in the middle, keep the size and set the modification time back (what a careless
    copy tool, or a hostile user, does); only the status-change time shows it."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as handle:  # same inode
        handle.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def settle():
    """Wait until the files just written have timestamps older than the file system's resolution."""
    time.sleep(digests.FINE_TIMESTAMP_NS / 1e9 + 0.05)


@pytest.fixture(autouse=True)
def fresh_process_memory():
    store.forget()
    store.forget()
    yield
    store.forget()
    store.forget()


# 1. Records that cannot be fooled ------------------------------------------------------------------

def test_an_artifact_edited_in_place_after_verification_is_refused_and_not_recorded(tmp_path):
    path = tmp_path / "k.h5"
    write_sample(path)
    settle()
    store.verify(path)  # verified (remembered in this process, recorded beside it)
    record = store.verification_record(path)
    assert record.is_file()
    old_record = record.read_text()
    edit_in_place_keeping_size_and_mtime(path)
    with pytest.raises(store.ArtifactError, match="digest mismatch"):
        store.verify(path)  # the same process: its memory of the old file must not vouch for the new one
    assert record.read_text() == old_record  # the edited file's identity was not recorded
    store.forget()
    with pytest.raises(store.ArtifactError, match="digest mismatch"):
        store.verify(path)  # a later command: the record does not vouch for it either


def test_the_file_digest_cache_follows_the_file_not_its_name_size_and_mtime(tmp_path):
    image = tmp_path / "part.png"
    image.write_bytes(b"A" * 1000)
    settle()
    first = store.file_digest(image)
    edit_in_place_keeping_size_and_mtime(image)
    assert store.file_digest(image) == store.file_sha256(image) != first
    replaced = tmp_path / "other.png"
    replaced.write_bytes(b"B" * 1000)
    os.utime(replaced, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns))
    os.replace(replaced, image)  # another inode under the same name, size and mtime
    assert store.file_digest(image) == store.file_sha256(image)


def test_an_identity_younger_than_the_timestamp_resolution_is_hashed_each_time_and_never_recorded(
        tmp_path, monkeypatch):
    """On a file system with coarse timestamps an in-place change in the same tick as the last write
    keeps the identity: until the tick has passed, the file is hashed, not trusted."""
    path = tmp_path / "k.h5"
    write_sample(path)
    monkeypatch.setattr(digests, "FINE_TIMESTAMP_NS", 3_600 * 10**9)  # as if the resolution were an hour
    reads = []
    original = digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda p: reads.append(p) or original(p))
    digest = store.verify(path)
    assert store.verify(path) == digest and len(reads) == 2  # hashed both times: nothing remembered
    assert not store.verification_record(path).exists()
    monkeypatch.setattr(digests, "FINE_TIMESTAMP_NS", 0)  # now the tick has passed
    assert store.verify(path) == digest and store.verification_record(path).is_file()
    assert store.verify(path) == digest and len(reads) == 3  # trusted from here on


def test_whole_second_timestamps_are_trusted_only_after_two_seconds():
    second = 1_700_000_000 * 10**9
    assert not digests.settled((second, second), at_ns=second + 1_500_000_000)  # FAT: 2 s apart
    assert digests.settled((second, second), at_ns=second + 2_000_000_001)
    fine = second + 123_456_789
    assert digests.settled((fine, fine), at_ns=fine + 10**9 // 5)
    assert not digests.settled((fine, fine), at_ns=fine + 1_000_000)  # within a kernel tick


def test_a_record_not_made_from_a_hash_after_the_identity_settled_is_not_trusted(tmp_path):
    """A record made in the tick of the last write (or forged, or of an older format) does not vouch."""
    path = tmp_path / "k.h5"
    write_sample(path)
    settle()
    identity = verification._identity(path)
    forged = {"identity": list(identity), "digest": "f" * 64, "stage": "pool",
              "schema_version": store.SCHEMA_VERSION, "hashed_at_ns": max(identity)}
    record = store.verification_record(path)
    record.write_text(json.dumps(forged))
    assert store.verify(path) == store.file_sha256(path)
    store.forget()
    forged.pop("hashed_at_ns")
    record.write_text(json.dumps(forged))
    assert store.verify(path) == store.file_sha256(path)


def test_reading_an_artifact_read_only_writes_nothing_beside_it(tmp_path):
    path = tmp_path / "k.h5"
    write_sample(path)
    settle()
    before = sorted(p.name for p in tmp_path.iterdir())
    store.describe(path)
    store.open_artifact(path, "pool", record=False)
    with store.read_only():
        store.verify(path)
        store.valid_digest(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_musc_inspect_writes_nothing_beside_the_file(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    path = tmp_path / "k.h5"
    write_sample(path)
    settle()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0 and "digest verified" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# 4. Numbers at the boundary ------------------------------------------------------------------------

from musc.inputs.config import ConfigError, MuscConfig  # noqa: E402


@pytest.mark.parametrize("field, value", [("divide_num", 1_000_000_000), ("image_size", 10**20), ("seed", 10**23),
                                          ("seed", 2**32), ("batch_size", 10**9), ("block_size", 10**9),
                                          ("aligned_radius", 10**9)])
def test_huge_integer_settings_are_refused_naming_the_field(field, value, tmp_path):
    with pytest.raises(ConfigError, match=rf"^{field}: must be <= \d+"):
        MuscConfig(**{field: value})
    config = tmp_path / "c.yaml"
    config.write_text(f"{field}: {value}\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^{field}: must be <= "):
        MuscConfig.from_yaml(config)
    assert time.monotonic() - started < 5


def test_the_largest_allowed_integers_still_pass():
    MuscConfig(divide_num=1000, image_size=4096, seed=2**32 - 1, batch_size=1024, block_size=4096)


@pytest.mark.parametrize("text", ["threshold: .nan", "threshold: .inf", "pixel_threshold: -.inf", "threshold: .NaN"])
def test_nan_and_infinite_thresholds_in_a_config_are_refused(text, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"^{text.split(':')[0]}: expected a finite number"):
        MuscConfig.from_yaml(config)


@pytest.mark.parametrize("threshold, rate, field", [(float("nan"), 0.01, "threshold"), (float("inf"), 0.01, "threshold"),
                                                    (None, float("nan"), "false_alarm_rate"),
                                                    (None, 1.0, "false_alarm_rate"), ("0.5", 0.01, "threshold")])
def test_a_decision_rule_refuses_nan_infinity_and_rates_outside_0_1(threshold, rate, field):
    from musc.reference_pool import DecisionRule
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        DecisionRule(threshold, rate)
    DecisionRule(0.5, 0.0)
    DecisionRule(None, 0.99)


def test_score_new_refuses_a_nan_threshold_naming_the_option(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    pool = tmp_path / "pool.h5"
    pool.write_bytes(b"not read: the options are checked first")
    image = tmp_path / "part.png"
    image.write_bytes(b"")
    result = CliRunner().invoke(app, ["score-new", "--pool", str(pool), "--threshold", "nan", "--out",
                                      str(tmp_path / "out"), str(image)])
    assert result.exit_code != 0 and "error: threshold: expected a finite number, got nan" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_an_aligned_radius_beyond_the_patch_grid_is_refused():
    from conftest import TINY_CONFIG
    from musc.inputs.backbone_spec import check_degrees
    cfg = MuscConfig.from_dict({**TINY_CONFIG, "aligned_radius": 100})  # 64 px / patch 8: an 8 x 8 grid
    with pytest.raises(ConfigError, match=r"^aligned_radius: 100 reaches beyond the patch grid \(8 x 8"):
        check_degrees(cfg.extract, cfg.r_list, cfg.aligned_radius)
    check_degrees(cfg.extract, cfg.r_list, 7)


def test_divide_num_beyond_the_images_is_refused_at_once(tiny_dataset):
    from musc.inputs.datasets import DatasetError, load_category
    images = load_category("mvtec_ad", tiny_dataset, "fabric")
    started = time.monotonic()
    with pytest.raises(DatasetError, match=r"^divide_num: splitting \d+ images into 1000 subsets"):
        images.check_size((1, 2, 3), 1000, 0)
    assert time.monotonic() - started < 1


BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
layers: *g
"""


def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB)
    with pytest.raises(ConfigError) as caught:
        MuscConfig.from_yaml(config)
    message = str(caught.value)
    assert message.startswith(f"{config}: not valid YAML (alias *a refused") and len(message) < 300


def test_duplicate_yaml_keys_are_refused_naming_the_file_and_key(tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text("seed: 1\nimage_size: 64\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \(duplicate key 'seed' \(line 3"):
        MuscConfig.from_yaml(config)


def test_a_huge_value_gives_a_short_error_line(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text("device: [" + ",".join(["1"] * 100_000) + "]\n")
    with pytest.raises(ConfigError) as caught:
        MuscConfig.from_yaml(config)
    assert str(caught.value).startswith("device: expected text") and len(str(caught.value)) < 300


def test_a_config_with_a_bom_reads(tmp_path):
    config = tmp_path / "bom.yaml"
    config.write_bytes("\ufeffseed: 3\n".encode())
    assert MuscConfig.from_yaml(config).seed == 3


def test_pixel_metrics_with_only_empty_masks_are_not_computed_not_zero():
    from musc.outputs import evaluation
    labels = np.array([0, 0, 1, 1])
    masks = np.zeros((4, 4, 4))  # the anomalous images' masks hold no defect pixel
    metrics, notes = evaluation.evaluate_arrays(labels, np.array([0.1, 0.2, 0.8, 0.9]), masks,
                                                np.random.default_rng(0).random((4, 4, 4)), np.ones(4, bool))
    assert all(np.isnan(metrics[name]) for name in ("pixel_auroc", "pixel_ap", "pixel_aupro"))
    assert notes == {"pixel": "only one class in the masks (no defect pixels: every mask is empty)"}
    assert metrics["image_auroc"] == 1.0


def test_labels_csv_with_a_utf8_bom_reads(tmp_path):
    from PIL import Image

    from musc.inputs.datasets import load_category
    root = tmp_path / "plant"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(root / name)
    (root / "labels.csv").write_bytes("\ufeffimage,label\na.png,0\nb.png,0\nc.png,1\n".encode())
    samples = load_category("folder", root, "plant").samples
    assert {Path(s.path).name: s.label for s in samples} == {"a.png": 0, "b.png": 0, "c.png": 1}


def test_history_days_sort_as_dates_and_a_rerun_of_a_day_replaces_it(tmp_path):
    from musc.reference_pool.daily import append_history
    history = tmp_path / "line.history.csv"
    for day in ("2026-11-10", "2026-11-8", "2026-11-9", "2026-11-08"):
        rows = append_history(history, {"day": day, "count": 1, "anomalous": 0, "anomalous_rate": 0.0,
                                        "score_q50": 0.1, "score_q90": 0.1, "score_q99": 0.1, "score_max": 0.1,
                                        "threshold": 0.5, "pool_size": 3})
    assert list(rows["day"]) == ["2026-11-08", "2026-11-9", "2026-11-10"]
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("day", ["2026-13-01", "yesterday", "2026/11/08", ""])
def test_a_malformed_day_is_refused_naming_day(day):
    from musc.reference_pool.daily import parse_day
    with pytest.raises(ConfigError, match=r"^day: expected a date YYYY-MM-DD"):
        parse_day(day)


# 5. Folders ----------------------------------------------------------------------------------------

def test_musc_clean_never_follows_a_symlinked_category_or_stage_folder_out_of_the_root(tmp_path):
    from musc.outputs.rebuild import clean_artifacts
    root = store.mark_artifacts_root(tmp_path / "artifacts")
    elsewhere = tmp_path / "elsewhere"
    victims = []
    for folder in ("cat/extract", "stage"):
        (elsewhere / folder).mkdir(parents=True)
        victims.append(elsewhere / folder / "0123456789abcdef.h5")
        victims[-1].write_bytes(b"someone else's file")
    (root / "mvtec_ad").mkdir()
    (root / "mvtec_ad" / "linked").symlink_to(elsewhere / "cat")               # a symlinked category
    (root / "mvtec_ad" / "real").mkdir()
    (root / "mvtec_ad" / "real" / "score").symlink_to(elsewhere / "stage")     # a symlinked stage folder
    (root / "mvtec_ad" / "alias").symlink_to(root / "mvtec_ad" / "real")       # inside, but another name
    own = root / "mvtec_ad" / "real" / "classify" / "fedcba9876543210.h5"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"stale")  # no intact run uses it: removed
    with pytest.warns(UserWarning, match="a symlink") as caught:
        removed, busy = clean_artifacts(root)
    assert all(victim.read_bytes() == b"someone else's file" for victim in victims)
    assert removed == [own] and not own.exists() and busy == []
    warned = sorted(str(w.message).split(":")[0] for w in caught)
    assert warned == [str(root / "mvtec_ad" / f) for f in ("alias/classify", "alias/score", "linked/extract", "real/score")]


@pytest.mark.parametrize("link", ["day", "image"])
def test_the_daily_listing_never_reads_through_a_symlink_out_of_its_root(tmp_path, link):
    from musc.inputs.datasets import DatasetError
    from musc.reference_pool.daily import day_images
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"png")
    root = tmp_path / "incoming"
    root.mkdir()
    if link == "day":
        (root / "2026-11-08").symlink_to(outside)
        with pytest.raises(DatasetError, match=r"2026-11-08 leads out of .*incoming \(a symlink"):
            day_images(root, "2026-11-08")
    else:
        (root / "2026-11-08").mkdir()
        (root / "2026-11-08" / "part.png").write_bytes(b"png")
        (root / "2026-11-08" / "linked.png").symlink_to(outside / "secret.png")
        (root / "2026-11-08" / "loop.png").symlink_to("loop.png")  # a symlink loop: named, never a crash
        images, skipped = day_images(root, "2026-11-08")
        assert images == [str(root / "2026-11-08" / "part.png")]
        assert [path for path, _ in skipped] == [str(root / "2026-11-08" / name) for name in ("linked.png", "loop.png")]
        assert "leads out of" in skipped[0][1] and "a symlink loop" in skipped[1][1]


def test_the_daily_flow_refuses_nan_and_a_bad_day_before_any_work(tmp_path):
    from flows.daily import daily_folder_flow
    from musc.reference_pool import DecisionRule
    with pytest.raises(ConfigError, match="^threshold: expected a finite number"):
        daily_folder_flow.fn(pool=str(tmp_path / "p.h5"), root=str(tmp_path), day="2026-11-08",
                             decision=DecisionRule(threshold=float("nan")))
    with pytest.raises(ConfigError, match="^day: expected a date YYYY-MM-DD, got '2026-11-31'"):
        daily_folder_flow.fn(pool=str(tmp_path / "p.h5"), root=str(tmp_path), day="2026-11-31",
                             decision={"threshold": 0.5})


@pytest.mark.parametrize("content", [b"day,count\n2026-11-08,3\n", b"\x00\xff\xfe garbage",
                                     b"day,count,anomalous,anomalous_rate,score_q50,score_q90,score_q99,score_max,"
                                     b"threshold,pool_size\nnot-a-day,1,0,0,0,0,0,0,0.5,3\n", b"\n"])
def test_a_corrupt_history_fails_the_day_before_scoring_in_one_line_naming_the_file(tmp_path, content,
                                                                                     monkeypatch):
    import flows.daily
    from musc.reference_pool.daily import HistoryError
    (tmp_path / "in" / "2026-11-08").mkdir(parents=True)
    (tmp_path / "in" / "2026-11-08" / "part.png").write_bytes(b"png")
    history = tmp_path / "line.history.csv"
    history.write_bytes(content)
    monkeypatch.setattr(flows.daily, "prepare", lambda *a, **k: pytest.fail("scored despite the history"))
    with pytest.raises(HistoryError) as caught:
        flows.daily.daily_folder_flow.fn(pool=str(tmp_path / "line.h5"), root=str(tmp_path / "in"), day="2026-11-08",
                                        decision={"threshold": 0.5})
    assert str(caught.value).startswith(f"{history}: ") and "\n" not in str(caught.value)
    assert history.read_bytes() == content and not list(tmp_path.glob(".*tmp*"))


def test_an_empty_history_file_starts_a_new_history_with_a_warning(tmp_path):
    from musc.reference_pool.daily import append_history
    history = tmp_path / "line.history.csv"
    history.write_bytes(b"")
    with pytest.warns(UserWarning, match="line.history.csv: empty history file"):
        rows = append_history(history, {"day": "2026-11-08", "count": 1, "anomalous": 0, "anomalous_rate": 0.0,
                                        "score_q50": 0.1, "score_q90": 0.1, "score_q99": 0.1, "score_max": 0.1,
                                        "threshold": 0.5, "pool_size": 3})
    assert list(rows["day"]) == ["2026-11-08"] and len(history.read_text().splitlines()) == 2


def test_a_full_disk_while_writing_the_history_names_the_folder_and_leaves_no_temporary_file(tmp_path,
                                                                                              monkeypatch):
    import errno

    import pandas as pd

    from musc.reference_pool.daily import append_history
    from musc.store import NoSpaceError

    def full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"day,co")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    history = tmp_path / "line.history.csv"
    with pytest.raises(NoSpaceError, match=f"^{tmp_path}: no space left"):
        append_history(history, {"day": "2026-11-08", "count": 1, "anomalous": 0, "anomalous_rate": 0.0,
                                 "score_q50": 0.1, "score_q90": 0.1, "score_q99": 0.1, "score_max": 0.1,
                                 "threshold": 0.5, "pool_size": 3})
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_non_ascii_names_get_valid_distinct_artifact_keys():
    from prefect.types.names import LOWERCASE_LETTERS_NUMBERS_AND_DASHES_ONLY_REGEX as VALID

    from tasks.ui import artifact_key
    import re
    keys = [artifact_key("folder", name, "metrics") for name in ("Gehäuse", "部品", "部品2", "gehause")]
    assert all(re.fullmatch(VALID, key) for key in keys), keys
    assert len(set(keys)) == 4
    assert keys[0].startswith("musc-folder-gehause-metrics-") and keys[3] == "musc-folder-gehause-metrics"
    assert artifact_key("mvtec_ad", "fabric", "extract", "progress") == "musc-mvtec-ad-fabric-extract-progress"


def test_two_lines_pools_of_one_file_name_publish_under_distinct_keys_and_resources(tmp_path):
    import flows.daily
    from tasks.ui import artifact_key
    pools = [tmp_path / line / "pool.h5" for line in ("line1", "line2")]
    keys = [artifact_key("daily", flows.daily.pool_name(pool)) for pool in pools]
    assert len(set(keys)) == 2 and all(key.startswith("musc-daily-pool-") for key in keys)
    resources = [flows.daily.pool_resource(pool, "id")["prefect.resource.id"] for pool in pools]
    assert len(set(resources)) == 2 and all(r.startswith("musc.pool.pool-") for r in resources)
    assert all(flows.daily.pool_resource(pool)["prefect.resource.name"] == "pool.h5" for pool in pools)
    relative = os.path.relpath(tmp_path / "line1" / "pool.h5")
    assert flows.daily.pool_name(relative) == flows.daily.pool_name(tmp_path / "line1" / "pool.h5")


SERVE = """
import httpx
from flows.server import temporary_server
with temporary_server() as url:
    assert httpx.get(url + "/health", timeout=30).status_code == 200
print("served")
"""


@pytest.mark.slow
def test_commands_started_together_on_one_new_prefect_home_all_run(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "new_home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    started = [subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=400)[0] for process in started]
    assert [process.returncode for process in started] == [0, 0, 0], outputs
    assert all("served" in output for output in outputs)


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory, prefect_harness):
    from conftest import run_category
    artifacts = tmp_path_factory.mktemp("run")
    result = run_category(tiny_dataset, artifacts)
    return result, artifacts


@pytest.mark.slow
def test_musc_report_refuses_to_write_through_a_symlinked_report_folder(finished_run, tmp_path):
    from musc.outputs.rebuild import rebuild_reports
    from musc.store import report_folder as outputs_folder
    result, artifacts = finished_run
    evaluation = Path(result["evaluate"]["path"])
    folder = outputs_folder(evaluation)
    moved = tmp_path / "moved"
    folder.rename(moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder.symlink_to(elsewhere)
    try:
        for target in (evaluation, artifacts):
            with pytest.raises(store.ArtifactError, match="a symlink .* refusing to write through it"):
                rebuild_reports(target)
        assert list(elsewhere.iterdir()) == []
        folder.unlink()
        folder.mkdir()
        (folder / "report.md").symlink_to(elsewhere / "report.md")  # a file in it, linked out
        with pytest.raises(store.ArtifactError, match="report.md: a symlink"):
            rebuild_reports(evaluation)
        assert list(elsewhere.iterdir()) == []
    finally:
        if folder.is_symlink():
            folder.unlink()
        else:
            import shutil
            shutil.rmtree(folder)
        moved.rename(folder)


@pytest.mark.slow
def test_musc_inspect_of_an_evaluate_artifact_writes_no_record_anywhere(finished_run):
    from typer.testing import CliRunner

    from flows.cli import app
    result, artifacts = finished_run
    time.sleep(0.2)
    for record in artifacts.rglob(".*.verified"):
        record.unlink()
    store.forget()
    before = sorted(str(p) for p in artifacts.rglob("*"))
    shown = CliRunner().invoke(app, ["inspect", result["evaluate"]["path"]])
    assert shown.exit_code == 0 and "top 5 most anomalous" in shown.output, shown.output
    assert sorted(str(p) for p in artifacts.rglob("*")) == before


@pytest.mark.slow
def test_a_temporary_server_start_waits_for_another_start_on_the_same_prefect_home(tmp_path):
    """Deterministic: while another start holds the Prefect home's start lock, a command waits on
    it (the kernel lists the blocked request in /proc/locks) and has started no server."""
    import fcntl
    import subprocess
    import sys

    from conftest import ROOT
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(home / ".musc-server-start.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        process = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        inode = os.fstat(held.fileno()).st_ino
        deadline = time.monotonic() + 120
        waiting = False
        while time.monotonic() < deadline and process.poll() is None and not waiting:
            waiting = any("->" in line and f" {process.pid} " in line and f":{inode} " in line
                          for line in Path("/proc/locks").read_text().splitlines())
            time.sleep(0.1)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        started_servers = children.read_text().split() if children.exists() else []
        fcntl.flock(held, fcntl.LOCK_UN)
    output = process.communicate(timeout=300)[0]
    assert waiting and started_servers == [], output
    assert process.returncode == 0 and "served" in output, output


def test_musc_report_on_a_folder_skips_a_symlinked_evaluate_folder_with_a_warning(tmp_path):
    from musc.outputs.rebuild import rebuild_reports
    root = store.mark_artifacts_root(tmp_path / "artifacts")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "0123456789abcdef.h5").write_bytes(b"not ours")
    (root / "mvtec_ad" / "fabric").mkdir(parents=True)
    (root / "mvtec_ad" / "fabric" / "evaluate").symlink_to(elsewhere)
    with pytest.warns(UserWarning, match=r"fabric/evaluate: a symlink \(to .*elsewhere\)"):
        with pytest.raises(store.ArtifactError, match="no evaluate artifacts found"):
            rebuild_reports(root)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["0123456789abcdef.h5"]


def test_an_artifact_copied_under_another_key_is_not_used_and_is_rebuilt(tiny_dataset, tmp_path, caplog):
    """Another run's artifact (with its manifest) copied under this run's key: its record does not give
    the key it sits under, so it is not used; the stage is rebuilt, with a warning naming the file."""
    import shutil

    from conftest import TINY_CONFIG
    from musc.inputs.datasets import load_category
    from musc.stages import Run, build_all, valid_ref
    images = load_category("mvtec_ad", str(tiny_dataset), "fabric")
    ours = build_all(Run(images, MuscConfig(**{**TINY_CONFIG, "k_list": [1, 2, 3]}), str(tmp_path)))
    theirs = build_all(Run(images, MuscConfig(**{**TINY_CONFIG, "k_list": [1]}), str(tmp_path)))
    victim, foreign = Path(ours["classify"]["path"]), Path(theirs["classify"]["path"])
    expected = store.open_artifact(victim).read("image_scores")
    assert not np.allclose(expected, store.open_artifact(foreign).read("image_scores"))  # they do differ
    for suffix in (".h5", ".json"):
        shutil.copyfile(foreign.with_suffix(suffix), victim.with_suffix(suffix))
    store.verification_record(victim).unlink(missing_ok=True)
    assert store.valid_digest(victim) is not None  # intact as a file: only its record gives it away
    with caplog.at_level("WARNING", logger="musc"):
        assert valid_ref("classify", victim) is None
    assert str(victim) in caplog.text and "key" in caplog.text
    again = build_all(Run(images, MuscConfig(**{**TINY_CONFIG, "k_list": [1, 2, 3]}), str(tmp_path)))
    assert again["classify"]["path"] == str(victim)
    np.testing.assert_array_equal(store.open_artifact(victim).read("image_scores"), expected)


# Issue 21, items 2 and 3: the pool's inputs checked, names that never collide -------------------------

def _pool_of(path, names, seed):
    import torch

    from musc.reference_pool.pool import Images, PoolSettings, write_pool
    torch.manual_seed(seed)
    features = {1: torch.nn.functional.normalize(torch.randn(1, len(names), 16, 8), dim=-1).numpy()}
    images = Images(list(names), list(names), np.zeros(len(names)),
                    lambda r, layer, indices: features[r][layer, np.sort(indices)], (16, 8))
    write_pool(path, PoolSettings("fabric", {"image_size": 32, "layers": [0]}, (1,)), [images], 10, {})
    return features


def test_a_pool_named_like_its_manifest_is_refused(tmp_path):
    from musc.reference_pool.pool import PoolError, PoolFile
    for name in ("pool.json", "pool", "pool.hdf5"):
        with pytest.raises(PoolError, match=r"^pool: .* must be an \.h5 file"):
            _pool_of(tmp_path / name, "abc", 0)
        with pytest.raises(PoolError, match=r"^pool: "):
            PoolFile(tmp_path / name)
    assert not list(tmp_path.iterdir())  # nothing written, no manifest overwritten


def test_a_pool_replaced_while_it_is_read_is_read_as_it_was_opened(tmp_path):
    """score-new holds a snapshot: a `pool add` that replaces the file meanwhile (atomic rename)
    cannot mix the new file's features with the old file's size, names and calibration."""
    from musc.reference_pool.pool import PoolFile
    path = tmp_path / "pool.h5"
    old = _pool_of(path, "abcd", 0)
    opened = PoolFile(path)
    _pool_of(path, "xy", 1)  # replaced: fewer images, other features
    assert len(opened) == 4 and opened.names == list("abcd")
    np.testing.assert_array_equal(opened.reader(1, 0)(0, 4).numpy(), old[1][0])
    assert PoolFile(path).names == list("xy")  # a new reader sees the new pool


def test_score_new_refuses_a_backbone_file_that_is_not_the_pools(tmp_path):
    """The pool records the SHA-256 of its model config / weights file; the file now at that path
    (edited since, or a relative path found from another folder) must be the same."""
    import shutil

    from conftest import DEMO_BACKBONE
    from musc.inputs.backbone_spec import backbone_settings
    from musc.inputs.config import ExtractSettings
    from musc.reference_pool.pool import PoolError, PoolSettings
    from musc.reference_pool.pool import pool_backbone
    model = tmp_path / "vit.json"
    shutil.copyfile(DEMO_BACKBONE, model)
    recorded = backbone_settings(ExtractSettings(str(model), "none", 64, (0, 1), device="cpu"))

    class Pool:  # what pool_backbone reads of a pool
        path = tmp_path / "pool.h5"
        settings = PoolSettings("fabric", recorded, (1,))
    assert pool_backbone(Pool, "cpu").backbone == str(model)  # the same file: accepted
    model.write_text(model.read_text().replace('"width"', '"width" ', 1))  # edited in place
    with pytest.raises(PoolError, match=r"^backbone: .*vit\.json is not the file the pool pool\.h5 was made with"):
        pool_backbone(Pool, "cpu")
    model.unlink()
    with pytest.raises(PoolError, match="no such file"):
        pool_backbone(Pool, "cpu")


def test_the_same_part_by_two_names_is_scored_once_and_reported_for_each(tmp_path):
    import shutil

    from musc.reference_pool.line import identify
    part = tmp_path / "part.png"
    part.write_bytes(b"\x89PNG one part")
    copy = tmp_path / "copy.png"
    shutil.copyfile(part, copy)
    link = tmp_path / "link.png"
    link.symlink_to(part)
    other = tmp_path / "other.png"
    other.write_bytes(b"\x89PNG another part")
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    parts, unreadable = identify([part, copy, link, other, part, loop])
    assert parts[str(part)] is parts[str(copy)] is parts[str(link)] and parts[str(part)].names == (
        str(part), str(copy), str(link))
    assert parts[str(other)].digest == store.file_sha256(other) and parts[str(other)].names == (str(other),)
    assert [name for name, _ in unreadable] == [str(loop)] and "cannot be read" in unreadable[0][1]


def test_score_new_output_is_never_an_input_folder(tmp_path):
    from musc.reference_pool.line import output_folder
    from musc.reference_pool.pool import PoolError
    day = tmp_path / "2026-12-01"
    day.mkdir()
    (day / "a.png").write_bytes(b"x")
    with pytest.raises(PoolError, match=r"^out: .*2026-12-01 holds the input images \(first: .*a\.png\)"):
        output_folder(day, [day / "a.png"])
    with pytest.raises(PoolError, match=r"^out: .*holds the input images"):
        output_folder(tmp_path, [day / "a.png"])  # a folder above them too
    out = output_folder(tmp_path / "results", [day / "a.png"])
    assert (out / store.ARTIFACTS_MARKER).is_file()  # never listed as inputs later


def test_musc_clean_leaves_a_category_alone_while_a_run_of_it_is_going_on(tmp_path):
    """A run holds its category's run marker (shared) from its first stage to its last; clean needs
    it alone, so what the run is building (not yet part of any intact chain) is kept, and cleaned
    once the run has ended."""
    from musc.outputs.rebuild import clean_artifacts
    root = store.mark_artifacts_root(tmp_path / "artifacts")
    stray = root / "mvtec_ad" / "fabric" / "aggregate" / ("0" * 16 + ".h5")
    store.write_artifact(stray, "aggregate", {}, {}, {"features": np.zeros((1, 1, 1, 1), np.float32)})
    with store.running(root / "mvtec_ad" / "fabric"):
        removed, busy = clean_artifacts(root)
        assert removed == [] and busy == [stray] and stray.is_file()
    removed, busy = clean_artifacts(root)
    assert stray in removed and busy == [] and not stray.exists()


def test_an_artifacts_folder_inside_an_image_folder_drops_no_image(tmp_path):
    from musc.inputs.datasets import load_category
    from musc.inputs.synthetic import make_dataset
    data = make_dataset(tmp_path / "data", n_good=4, n_per_defect=1, size=32, seed=1, categories=("fabric",))
    before = [s.name for s in load_category("mvtec_ad", data, "fabric").samples]
    artifacts = store.mark_artifacts_root(data / "fabric" / "test" / "good" / "artifacts")
    (artifacts / "overlay.png").write_bytes((data / "fabric" / "test" / "good" / "000.png").read_bytes())
    after = [s.name for s in load_category("mvtec_ad", data, "fabric", exclude=[artifacts]).samples]
    assert after == before  # the good images beside it stay; nothing of ours is listed
