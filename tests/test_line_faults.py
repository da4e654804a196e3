"""Faults the daily line meets: malformed days and histories, NaN thresholds, pools replaced or misnamed,
backbones that are not the pool's, one part under two names, outputs that would be read back as inputs."""
import os
from pathlib import Path

import numpy as np
import pytest

from musc import store
from musc.inputs.config import ConfigError

pytestmark = pytest.mark.usefixtures("fresh_process_memory")  # each test sees the store as a new command


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

    from musc.inputs.backbone_spec import backbone_settings
    from musc.inputs.config import ExtractSettings
    from musc.reference_pool.pool import PoolError, PoolSettings, pool_backbone

    from conftest import DEMO_BACKBONE
    model = tmp_path / "vit.json"
    model.write_text(Path(DEMO_BACKBONE).read_text() + "\n")  # a model of the user's (musc's own is found by its digest)
    recorded = backbone_settings(ExtractSettings(str(model), "none", 64, (0, 1), device="cpu"))

    class Pool:  # what pool_backbone reads of a pool
        path = tmp_path / "pool.h5"
        settings = PoolSettings("fabric", recorded, (1,))
        model_files = []
    assert recorded["backbone"] == "vit.json"  # its name and its digest, not where it lay
    assert pool_backbone(Pool, "cpu").backbone == str(model)  # the same file, beside the pool: accepted
    model.write_text(model.read_text().replace('"width"', '"width" ', 1))  # edited in place
    with pytest.raises(ConfigError, match=r"^backbone: the pool pool\.h5 was made with vit\.json \(SHA-256 "
                                          r"[0-9a-f]{12}\), found in none of .*vit\.json is another file; give"):
        pool_backbone(Pool, "cpu")
    model.unlink()
    with pytest.raises(ConfigError, match="found in none of .*--backbone PATH"):
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



@pytest.mark.parametrize("content, empty", [(b"", True), (b"\x00\xff\xfe\x89PNG garbage", False),
                                            (b"day,count\n2026-11-08,3\n", False), (b"\xef\xbb\xbf", False)])
def test_a_verdict_history_that_is_empty_or_not_one_is_named_never_a_traceback(tmp_path, content, empty):
    """A 0-byte history holds no verdicts (a new one starts); a binary file, or one of another
    table, is refused in one line naming it and saying what to do."""
    from musc.reference_pool.errors import HistoryError
    from musc.reference_pool.verdicts import read_records, standing
    path = tmp_path / "line.verdicts.csv"
    path.write_bytes(content)
    if empty:
        assert read_records(path).empty and standing(path, "pool-id").empty
        return
    with pytest.raises(HistoryError) as refused:
        standing(path, "pool-id")
    message = str(refused.value)
    assert message.startswith(f"{path}: not a") and "move it away" in message and "\n" not in message
