"""The artifacts store: verification records that cannot be fooled, keys, reports and clean that stay
under their root, inspect that writes nothing, stale and copied artifacts."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from musc import store
from musc.inputs.config import MuscConfig
from musc.outputs.rebuild import clean_artifacts, rebuild_reports
from musc.store import digests, verification

from conftest import RUN_FLAGS, run_category, run_musc

pytestmark = pytest.mark.usefixtures("fresh_process_memory")  # each test sees the store as a new command


def recraft(path, **attrs):
    """Change attributes of an artifact and re-seal it (a new manifest): a crafted, 'valid' artifact."""
    with h5py.File(path, "r+") as f:
        for name, value in attrs.items():
            f.attrs[name] = value
    store.manifest_path(path).write_text(json.dumps({"sha256": store.file_sha256(path),
                                                     "size": Path(path).stat().st_size, "stage": "evaluate"}))


def test_report_writes_beside_the_artifact_it_reads_not_where_the_artifact_says(reference_run, tmp_path):
    result, artifacts = reference_run
    original = Path(result["outputs"]) / "report.md"
    before = original.stat().st_mtime_ns
    copy = tmp_path / "copy"
    shutil.copytree(artifacts, copy)
    evaluate = next(copy.rglob("evaluate/*.h5"))
    recraft(evaluate, outputs=str(tmp_path / "elsewhere"))  # a crafted artifact: writes must not follow it
    (evaluate.with_suffix("") / "report.md").unlink()
    rebuilt = rebuild_reports(copy)
    assert rebuilt.written == [evaluate.with_suffix("") / "report.html"]
    assert (evaluate.with_suffix("") / "report.md").is_file()
    assert original.stat().st_mtime_ns == before and not (tmp_path / "elsewhere").exists()


@pytest.mark.slow
def test_report_skips_stale_evaluate_artifacts_and_clean_removes_what_no_run_uses(run_copy, tmp_path):
    copy = run_copy
    current = sorted(copy.rglob("*.h5"))
    evaluate = next(copy.rglob("evaluate/*.h5"))
    stale = evaluate.with_name("00000000057a1e00.h5")  # an earlier run's evaluation: its classify is gone
    shutil.copy(evaluate, stale)
    recraft(stale, inputs=json.dumps({"extract": "0" * 64, "classify": "1" * 64}))
    shutil.copytree(evaluate.with_suffix(""), stale.with_suffix(""))
    orphan = copy / "mvtec_ad/fabric/extract/00000000deadbeef.h5"  # parts of images that changed since
    store.write_part(orphan, "batch_00000", {"indices": np.zeros(0, dtype=np.int64)})
    (orphan.parent / ".00000000deadbeef.h5.lock").write_text("")

    report = run_musc("report", copy, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"report: {evaluate.with_suffix('') / 'report.html'}" in report.stdout
    assert f"skipped (stale): {stale}" in report.stderr and "musc clean" in report.stderr

    dry = run_musc("clean", copy, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    listed = {Path(line.split(": ", 1)[1]) for line in dry.stdout.splitlines() if line.startswith("would remove")}
    assert listed == {stale, store.manifest_path(stale), store.verification_record(stale), stale.with_suffix(""),
                      store.parts_dir(orphan), orphan.parent / ".00000000deadbeef.h5.lock"}
    assert stale.exists() and store.parts_dir(orphan).exists()
    removed, busy = clean_artifacts(copy)
    assert set(removed) == listed and not busy
    assert sorted(copy.rglob("*.h5")) == current and all(store.valid_digest(p) for p in current)
    assert rebuild_reports(copy).skipped == []


@pytest.mark.usefixtures("prefect_harness")
def test_clean_refuses_a_folder_that_is_not_a_musc_artifacts_folder(tmp_path):
    theirs = tmp_path / "photos" / "2026" / "score" / "holiday"
    theirs.mkdir(parents=True)
    with pytest.raises(store.ArtifactError, match="not a musc artifacts folder"):
        clean_artifacts(tmp_path / "photos")
    assert theirs.is_dir()


def test_clean_touches_only_entries_named_by_our_keys(run_copy, tmp_path):
    copy = run_copy
    mine = copy / "mvtec_ad" / "fabric" / "score" / "notes"
    mine.mkdir()
    removed, _ = clean_artifacts(copy)
    assert mine.is_dir() and mine not in removed


def test_a_rerun_draws_again_a_report_folder_deleted_since(reference_run, tiny_dataset, tmp_path):
    result, artifacts = reference_run
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    outputs = copy / Path(result["outputs"]).relative_to(artifacts)
    shutil.rmtree(outputs)
    rerun = run_category(tiny_dataset, copy)
    assert Path(rerun["outputs"]) == outputs
    assert (outputs / "per_image.csv").is_file() and (outputs / "report.html").is_file()


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_a_read_only_artifacts_folder_names_itself(tiny_dataset, tmp_path):
    target = tmp_path / "readonly"
    target.mkdir()
    mounted = os.geteuid() == 0 and not subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                                         str(target)], capture_output=True).returncode
    if not mounted:
        target.chmod(0o555)
    try:
        result = run_musc("run", "--dataset", "mvtec_ad", "--root", tiny_dataset, *RUN_FLAGS, "--artifacts", target,
                          cwd=tmp_path)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        target.chmod(0o755)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: artifacts: cannot write to {target} ({'Read-only file system' if mounted else 'Permission denied'}): "
        "give a writable --artifacts folder"]


@pytest.mark.slow
def test_inspect_names_the_file_of_a_non_json_attribute_and_reads_only_what_it_shows(run_copy, tmp_path):
    copy = run_copy
    evaluate = next(copy.rglob("evaluate/*.h5"))
    with h5py.File(evaluate, "r+") as f:  # a crafted ranking of 10^13 entries (80 TB if read whole)
        del f["ranking"]
        f.create_dataset("ranking", shape=(10 ** 13,), dtype="int64", chunks=(4096,), fillvalue=0)
    recraft(evaluate)
    shown = run_musc("inspect", evaluate, "--top", "2", cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "top 2 most anomalous" in shown.stdout and "(10000000000000,)" in shown.stdout
    recraft(evaluate, config="{not json")
    broken = run_musc("inspect", evaluate, cwd=tmp_path)
    assert broken.returncode == 2
    assert broken.stderr.strip().splitlines() == [f"error: {evaluate}: attribute 'config' is not valid JSON "
                                                  f"(not an artifact of ours?)"]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_orphan_parts_of_images_that_changed_are_removed_by_the_next_extraction(tiny_dataset,
                                                                                 tmp_path):
    orphan = tmp_path / "artifacts/mvtec_ad/fabric/extract/00000000deadbeef.h5"  # a crashed run's, other images
    store.write_part(orphan, "batch_00000", {"indices": np.zeros(0, dtype=np.int64)})
    result = run_category(tiny_dataset, tmp_path / "artifacts")
    assert not store.parts_dir(orphan).exists()
    assert not list((tmp_path / "artifacts").rglob("*.parts"))
    assert store.valid_digest(result["extract"]["path"]) is not None


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


def test_pixel_metrics_with_only_empty_masks_are_not_computed_not_zero():
    from musc.outputs import evaluation
    labels = np.array([0, 0, 1, 1])
    masks = np.zeros((4, 4, 4))  # the anomalous images' masks hold no defect pixel
    metrics, notes = evaluation.evaluate_arrays(labels, np.array([0.1, 0.2, 0.8, 0.9]), masks,
                                                np.random.default_rng(0).random((4, 4, 4)), np.ones(4, bool))
    assert all(np.isnan(metrics[name]) for name in ("pixel_auroc", "pixel_ap", "pixel_aupro"))
    assert notes == {"pixel": "only one class in the masks (no defect pixels: every mask is empty)"}
    assert metrics["image_auroc"] == 1.0


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


def test_non_ascii_names_get_valid_distinct_artifact_keys():
    import re

    from prefect.types.names import LOWERCASE_LETTERS_NUMBERS_AND_DASHES_ONLY_REGEX as VALID

    from tasks.ui import artifact_key
    keys = [artifact_key("folder", name, "metrics") for name in ("Gehäuse", "部品", "部品2", "gehause")]
    assert all(re.fullmatch(VALID, key) for key in keys), keys
    assert len(set(keys)) == 4
    assert keys[0].startswith("musc-folder-gehause-metrics-") and keys[3] == "musc-folder-gehause-metrics"
    assert artifact_key("mvtec_ad", "fabric", "extract", "progress") == "musc-mvtec-ad-fabric-extract-progress"


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

    from musc.inputs.datasets import load_category
    from musc.stages import Run, build_all, valid_ref

    from conftest import TINY_CONFIG
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



@pytest.mark.slow
def test_every_dataset_of_every_artifact_describes_itself(reference_run, pool_file):
    """Meaning, declared shape and axis names from the schema on each dataset: what h5dump -A,
    HDFView or h5py show a person who opens a file without our code."""
    _, artifacts = reference_run
    files = [p for p in artifacts.rglob("*.h5") if ".parts" not in str(p)] + [pool_file]
    seen = set()
    for path in files:
        with h5py.File(path, "r") as f:
            schema = store.STAGES[f.attrs["stage"]]

            def check(name, item, path=path, schema=schema):
                if isinstance(item, h5py.Dataset):
                    declared = schema.field(name)
                    assert item.attrs["description"] == declared.meaning, (path, name)
                    assert [axis.label for axis in item.dims] == list(declared.dimensions(item.ndim) or
                                                                      [""] * item.ndim), (path, name)
                    seen.add((schema.name, name))
            f.visititems(check)
    assert {"extract", "aggregate", "score", "classify", "evaluate", "pool"} <= {stage for stage, _ in seen}
    with h5py.File(next(p for p in files if "/score/" in str(p)), "r") as f:
        assert [axis.label for axis in f["scores"].dims] == ["layers", "N", "L"]
    if shutil.which("h5dump") is None:
        pytest.skip("h5dump (hdf5-tools) not installed: checked through h5py only")
    evaluation = next(p for p in files if "/evaluate/" in str(p))
    dumped = subprocess.run(["h5dump", "-A", str(evaluation)], capture_output=True, text=True, check=True).stdout
    with h5py.File(evaluation, "r") as f:
        datasets = []
        f.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
    assert dumped.count('ATTRIBUTE "description"') == len(datasets) > 0
    assert store.STAGES["evaluate"].field("ranking").meaning in dumped


@pytest.mark.slow
def test_inspect_json_resolves_the_inputs_to_their_files(run_copy, tmp_path):
    copy = run_copy
    [evaluation] = copy.rglob("evaluate/*.h5")
    result = run_musc("inspect", "--json", evaluation, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert document["stage"] == "evaluate" and document["digest"] == store.file_sha256(evaluation)
    assert set(document["inputs"]) == {"extract", "classify"}
    for role, entry in document["inputs"].items():
        found = Path(entry["file"])
        assert found.parent == copy / evaluation.parent.parent.relative_to(copy) / role  # beside it, in the copy
        assert store.file_sha256(found) == entry["digest"]
    assert document["datasets"]["ranking"]["description"] == store.STAGES["evaluate"].field("ranking").meaning
    assert document["attrs"]["metrics"]["image_auroc"] is not None
    [classify] = copy.rglob("classify/*.h5")
    classify.write_bytes(classify.read_bytes()[:-10])  # the input changed: named, not a traceback
    again = json.loads(run_musc("inspect", "--json", evaluation, cwd=tmp_path).stdout)
    assert again["inputs"]["classify"]["file"] is None and "missing or changed" in again["inputs"]["classify"]["why"]
    assert again["inputs"]["extract"]["file"] == document["inputs"]["extract"]["file"]


@pytest.mark.slow
def test_each_category_points_to_its_latest_run_relative_to_its_folder(reference_run, tmp_path):
    result, artifacts = reference_run
    evaluation = Path(result["evaluate"]["path"])
    folder = evaluation.parent.parent
    latest = json.loads((folder / store.catalog.LATEST).read_text())
    assert folder / latest["evaluate"] == evaluation and (folder / latest["report"]).is_file()
    assert latest["report"] == f"evaluate/{evaluation.stem}/report.html"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", latest["flow_run"])  # the
    # newest run of the category (other tests run it again on these artifacts: not always the fixture's)
    moved = tmp_path / "moved"
    shutil.copytree(artifacts, moved)  # relative: the pointer still holds in a moved root
    again = json.loads((moved / folder.relative_to(artifacts) / store.catalog.LATEST).read_text())
    assert (moved / folder.relative_to(artifacts) / again["evaluate"]).is_file()
