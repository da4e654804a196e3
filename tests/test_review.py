"""musc review and the line's records, keyed by identity: a day's flagged parts listed in the
terminal; verdicts recorded in the verdict history of the pool the day was scored against, by the
part's content, with reviewer and note; re-scoring keeps them; two parts seen at one path are two
parts; a pool reached through a symlink keeps one history; a moved pool is found with --pool, another
pool is refused; bad input is one line and writes nothing."""
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from musc.store import file_digest, manifest_path


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def copy_pool(source, target):
    shutil.copy(source, target)
    shutil.copy(manifest_path(source), manifest_path(target))
    return target


IMAGES = ("good/000.png", "hole/000.png", "stain/001.png", "good/001.png")


@pytest.fixture
def day(pool_file, tiny_dataset, tmp_path):
    """A day of four parts scored against a copy of the pool, two of them flagged (a fixed threshold
    between the good parts and the defective ones), in tmp_path/results."""
    from musc.reference_pool import DecisionRule, score_new_images
    pool = copy_pool(pool_file, tmp_path / "line3.h5")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    paths = []
    for image in IMAGES:
        target = incoming / image.replace("/", "_")
        shutil.copy(tiny_dataset / "fabric/test" / image, target)
        paths.append(str(target))
    probe = score_new_images(pool, paths, tmp_path / "probe", DecisionRule(threshold=0.0), day="2026-12-01")
    scores = {row["path"]: row["score"] for row in probe.rows}
    threshold = (max(scores[paths[0]], scores[paths[3]]) + min(scores[paths[1]], scores[paths[2]])) / 2
    scored = score_new_images(pool, paths, tmp_path / "results", DecisionRule(threshold=threshold), day="2026-12-01")
    assert [row["decision"] for row in scored.rows] == ["normal", "anomalous", "anomalous", "normal"]
    return pool, tmp_path / "results", paths, threshold


def history(pool) -> pd.DataFrame:
    return pd.read_csv(Path(pool).with_name(Path(pool).stem + ".verdicts.csv"), keep_default_na=False)


def test_review_lists_flagged_parts_and_records_verdicts_by_part(day):
    from musc.reference_pool import PoolFile
    pool, results, paths, _ = day
    listed = cli("review", results)
    assert listed.exit_code == 0, listed.output
    assert "2026-12-01: 2 flagged of 4 part(s)" in listed.stdout
    lines = [line for line in listed.stdout.splitlines() if line.startswith("  ")]
    scores = pd.read_csv(results / "scores.csv").set_index("path")["score"]
    assert [line.split()[0] for line in lines] == sorted(paths[1:3], key=lambda p: -scores[p])  # highest first
    assert all("not reviewed" in line for line in lines)

    first = cli("review", results, "--good", "stain_001.png", "--defect", paths[1], "--note", "seen at the bench",
                "--reviewer", "ana")
    assert first.exit_code == 0, first.output
    table = pd.read_csv(results / "scores.csv", keep_default_na=False)
    assert list(table.columns) == ["path", "part", "score", "decision", "verdict", "map_png"]
    assert list(table["verdict"]) == ["", "defect", "good", ""]
    recorded = history(pool)
    assert list(recorded.columns) == ["pool_id", "day", "part", "name", "verdict", "reviewer", "note", "time", "score",
                                      "decision"]
    assert set(recorded["pool_id"]) == {PoolFile(pool).id} and set(recorded["reviewer"]) == {"ana"}
    assert sorted(zip(recorded["part"], recorded["name"], recorded["verdict"])) == sorted(
        [(file_digest(paths[1]), paths[1], "defect"), (file_digest(paths[2]), paths[2], "good")])
    assert set(recorded["note"]) == {"seen at the bench"} and set(recorded["decision"]) == {"anomalous"}

    again = cli("review", results, "--good", paths[1], "--reviewer", "ana")  # a later verdict: it stands
    assert again.exit_code == 0, again.output
    assert list(pd.read_csv(results / "scores.csv", keep_default_na=False)["verdict"]) == ["", "good", "good", ""]
    assert list(history(pool).query("name == @paths[1]")["verdict"]) == ["defect", "good"]  # both kept
    same = cli("review", results, "--good", paths[1], "--reviewer", "ana")  # the same verdict again: not duplicated
    assert same.exit_code == 0 and "each part had that verdict already" in same.stdout, same.output
    assert len(history(pool)) == 3


def test_scoring_a_day_again_keeps_its_verdicts_and_a_late_part_joins_it(day, tiny_dataset):
    from musc.reference_pool import DecisionRule, score_new_images
    pool, results, paths, threshold = day
    assert cli("review", results, "--defect", paths[1], "--good", paths[2]).exit_code == 0
    late = Path(paths[0]).with_name("late.png")
    shutil.copy(tiny_dataset / "fabric/test/scratch/000.png", late)
    again = score_new_images(pool, [*paths, str(late)], results, DecisionRule(threshold=threshold), day="2026-12-01")
    verdicts = {row["path"]: row["verdict"] for row in again.rows}
    assert verdicts == {paths[0]: "", paths[1]: "defect", paths[2]: "good", paths[3]: "", str(late): ""}
    table = pd.read_csv(results / "scores.csv", keep_default_na=False).set_index("path")
    assert table.loc[paths[1], "verdict"] == "defect" and table.loc[str(late), "verdict"] == ""


def test_two_parts_seen_at_one_path_are_two_parts(day, tiny_dataset):
    """A camera that writes cam/part.png for every part: each content scored is a part of its own,
    with its row and overlay; a verdict on one never lands on the other."""
    from musc.reference_pool import DecisionRule, score_new_images
    pool, results, paths, threshold = day
    camera = Path(paths[0]).parent / "cam.png"
    shutil.copy(tiny_dataset / "fabric/test/hole/001.png", camera)
    first_part = file_digest(camera)
    score_new_images(pool, [camera], results, DecisionRule(threshold=threshold), day="2026-12-01")
    shutil.copy(tiny_dataset / "fabric/test/good/002.png", camera)
    second = score_new_images(pool, [camera], results, DecisionRule(threshold=threshold), day="2026-12-01")
    rows = [row for row in second.rows if row["path"] == str(camera)]
    assert {row["part"] for row in rows} == {first_part, file_digest(camera)} and len(rows) == 2
    assert rows[0]["map_png"] != rows[1]["map_png"] and all((results / row["map_png"]).is_file() for row in rows)
    ambiguous = cli("review", results, "--defect", str(camera))
    assert ambiguous.exit_code == 2 and "2 parts of 2026-12-01 were seen at this path" in ambiguous.stderr
    assert ambiguous.stderr.count("\n") == 1
    assert cli("review", results, "--defect", first_part[:12]).exit_code == 0
    table = pd.read_csv(results / "scores.csv", keep_default_na=False)
    assert dict(zip(table["part"], table["verdict"]))[first_part] == "defect"
    assert dict(zip(table["part"], table["verdict"]))[file_digest(camera)] == ""


def test_a_pool_reached_through_a_symlink_keeps_one_history(pool_file, tiny_dataset, tmp_path):
    from musc.reference_pool import DecisionRule, score_new_images
    from musc.reference_pool.rule import DecisionRule as Rule
    from musc.reference_pool.verdicts import evidence
    from musc.reference_pool import PoolFile
    real = copy_pool(pool_file, tmp_path / "line3-v1.h5")
    current = tmp_path / "current.h5"
    current.symlink_to(real.name)
    parts = [str(tiny_dataset / "fabric/test" / image) for image in ("hole/000.png", "good/000.png")]
    score_new_images(current, parts, tmp_path / "d1", DecisionRule(threshold=0.0), day="2026-12-01")
    assert cli("review", tmp_path / "d1", "--defect", "000.png").exit_code != 0  # two parts of that file name
    assert cli("review", tmp_path / "d1", "--defect", parts[0], "--good", parts[1]).exit_code == 0
    assert (tmp_path / "line3-v1.verdicts.csv").is_file() and not (tmp_path / "current.verdicts.csv").exists()
    learnt = evidence(PoolFile(current))  # what the reviewed rule reads through the link: the same history
    assert (learnt.defect, learnt.good) == (1, 1)
    assert Rule(rule="reviewed").apply(PoolFile(current), learnt)[1].startswith("reviewed: F1-optimal")


def test_a_moved_pool_is_found_with_pool_and_another_pool_is_refused(day, pool_file, tmp_path):
    from musc.reference_pool import PoolFile, write_pool
    pool, results, paths, _ = day
    moved = tmp_path / "elsewhere" / "line3.h5"
    moved.parent.mkdir()
    shutil.move(pool, moved), shutil.move(manifest_path(pool), manifest_path(moved))
    lost = cli("review", results, "--defect", paths[1])
    assert lost.exit_code == 2 and "give --pool" in lost.stderr and lost.stderr.count("\n") == 1, lost.output
    found = cli("review", results, "--defect", paths[1], "--pool", moved)
    assert found.exit_code == 0, found.output
    assert list(history(moved)["verdict"]) == ["defect"]
    rebuilt = tmp_path / "rebuilt.h5"  # the same settings and images, made anew: another pool
    other = PoolFile(moved)
    write_pool(rebuilt, other.settings, [other.images()], 50, {})
    refused = cli("review", results, "--good", paths[2], "--pool", rebuilt)
    assert refused.exit_code == 2 and "not the pool 2026-12-01 was scored against" in refused.stderr
    assert not rebuilt.with_name("rebuilt.verdicts.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--good", "part_9.png"], "part_9.png: no part of that name was scored on 2026-12-01"),
    (["--good", "stain_001.png", "--defect", "part_9.png"], "part_9.png: no part of that name"),
    (["--good", "stain_001.png", "--defect", "stain_001.png"], "stain_001.png: given both --good and --defect"),
])
def test_a_bad_verdict_is_one_line_and_writes_nothing(day, args, message):
    pool, results, _, _ = day
    before = (results / "scores.csv").read_bytes()
    refused = cli("review", results, *args)
    assert refused.exit_code == 2 and message in refused.stderr, refused.output
    assert refused.stderr.count("\n") == 1
    assert (results / "scores.csv").read_bytes() == before
    assert not Path(pool).with_name("line3.verdicts.csv").exists()


def test_a_folder_that_is_not_a_day_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "day.json").write_text('{"day": "2026-12-01", "pool": "line3.h5"}')
    for folder, message in ((tmp_path / "empty", "no day.json here"), (tmp_path / "missing", "no such day folder"),
                            (tmp_path / "old", "an earlier version of musc-flow")):
        refused = cli("review", folder, "--good", "x.png")
        assert refused.exit_code == 2 and message in refused.stderr and refused.stderr.count("\n") == 1, refused.output


def test_a_part_confirmed_defective_after_it_joined_leaves_the_pool(day):
    """Pool membership follows verdicts both ways: a part confirmed good joins the pool; confirmed
    defective later, it leaves it, named, and the pool keeps its identity and recalibrates."""
    from musc.reference_pool import PoolFile, add_day_to_pool
    pool, results, paths, _ = day
    before = PoolFile(pool)
    assert cli("review", results, "--good", paths[0], "--good", paths[1]).exit_code == 0
    add_day_to_pool(pool, results)
    joined = PoolFile(pool)
    assert len(joined) == len(before) + 2 and file_digest(paths[1]) in joined.digests
    later = cli("review", results, "--defect", paths[1], "--note", "a crack seen under the light")
    assert later.exit_code == 0, later.output
    assert f"left the pool line3.h5: {paths[1]} (confirmed defective on 2026-12-01)" in later.stdout
    after = PoolFile(pool)
    assert file_digest(paths[1]) not in after.digests and file_digest(paths[0]) in after.digests
    assert after.id == before.id and len(after) == len(before) + 1 and len(after.self_scores) == len(after)


def test_a_days_parts_join_only_the_pool_of_their_category_and_identity(day, tmp_path):
    """Parts confirmed good on a day scored against one pool never join another: a pool of another
    category, or another pool of the same category, is refused in one line, and left as it was."""
    from musc.reference_pool import PoolFile, PoolSettings, write_pool
    pool, results, paths, _ = day
    assert cli("review", results, "--good", paths[0]).exit_code == 0
    ours = PoolFile(pool)
    for name, category in (("gadget.h5", "gadget"), ("other.h5", ours.settings.category)):
        other = tmp_path / name
        write_pool(other, PoolSettings(category, ours.settings.features, ours.settings.r_list, ours.settings.score),
                   [ours.images()], 50, {})
        before = other.read_bytes()
        refused = cli("pool", "add", "--pool", other, results)
        assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output
        assert ("category 'gadget'" in refused.stderr) if category == "gadget" else ("not the pool" in refused.stderr)
        assert other.read_bytes() == before
