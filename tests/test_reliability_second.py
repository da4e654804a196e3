"""Reliability, second pass (issue 12): outputs read back as inputs, paths that escape the artifacts
root, a full disk, a temporary server outliving its run, stale artifacts, huge images, errors that
came late or named the wrong thing. Each test reproduces the failure the issue reported."""
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import DEMO_BACKBONE, TINY_CONFIG, run_category, run_musc
from musc import store
from musc.inputs.config import ConfigError, MuscConfig
from musc.inputs.datasets import DatasetError, list_categories, load_category
from musc.inputs.images import UnreadableImage, load_image, load_mask
from musc.outputs.rebuild import clean_artifacts, rebuild_reports

pytestmark = pytest.mark.usefixtures("prefect_harness")  # flows in this process talk to one test server

TINY_DATA = Path(__file__).parent / "data" / "tiny_clip.json"
RUN_FLAGS = ["--backbone", DEMO_BACKBONE, "--pretrained", "none", "--image-size", "64", "--layers", "0,1,2,3",
             "--device", "cpu"]


def png(path, width, height):
    """A valid all-black 8-bit grayscale PNG of any size, a few KB, written without holding it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    packer, row, body = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        body.append(packer.compress(row))
    body.append(packer.flush())
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                           + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return Path(path)


def recraft(path, **attrs):
    """Change attributes of an artifact and re-seal it (a new manifest): a crafted, 'valid' artifact."""
    with h5py.File(path, "r+") as f:
        for name, value in attrs.items():
            f.attrs[name] = value
    store.manifest_path(path).write_text(json.dumps({"sha256": store.file_sha256(path),
                                                     "size": Path(path).stat().st_size, "stage": "evaluate"}))


# 1. Outputs fed back as inputs ---------------------------------------------------------------------

@pytest.mark.slow
def test_folder_layout_run_twice_with_its_artifacts_inside_scores_the_same_images(tiny_dataset,
                                                                                 tmp_path):
    from flows import category_flow
    data = tmp_path / "plant"
    shutil.copytree(tiny_dataset / "fabric" / "test", data)
    runs = [category_flow("folder", str(data), "plant", TINY_CONFIG, str(data / "artifacts")) for _ in range(2)]
    assert any((data / "artifacts").rglob("overlays/*.png"))  # outputs that a listing could have taken
    names = [list(store.open_artifact(run["extract"]["path"]).read("names")) for run in runs]
    assert names[0] == names[1] and len(names[0]) == 12 and not any("artifacts" in n for n in names[0])
    assert runs[0]["classify"]["digest"] == runs[1]["classify"]["digest"]


def test_a_folder_marked_as_artifacts_is_never_listed_whatever_the_layout(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    old = data / "runs"  # an earlier run's artifacts, inside the dataset, shaped like a category
    shutil.copytree(data / "fabric" / "test", old / "test")
    store.mark_artifacts_root(old)
    assert list_categories("mvtec_ad", data) == ["fabric"]
    nested = data / "fabric" / "test" / "good" / "musc_out"
    shutil.copytree(data / "fabric" / "test" / "good", nested)
    store.mark_artifacts_root(nested)
    assert len(load_category("folder", data / "fabric" / "test").samples) == 12


# 2. Paths that escape --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x/y", "/tmp/elsewhere", "a/b", "..", "."])
def test_a_category_name_that_leads_elsewhere_is_refused(tiny_dataset, name):
    with pytest.raises(DatasetError, match="^category: .* is not a plain folder name"):
        load_category("mvtec_ad", tiny_dataset, name)
    with pytest.raises(store.ArtifactError, match="^category: "):
        store.artifact_path("/tmp/artifacts", "mvtec_ad", name, "extract", "0123")


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


# 3. Disk full ----------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_disk_full_ends_with_one_line_naming_the_folder_and_the_rerun_recovers(tiny_dataset, small_disk, tmp_path):
    args = ["run", "--dataset", "mvtec_ad", "--root", tiny_dataset, *RUN_FLAGS, "--artifacts", small_disk / "a"]
    full = run_musc(*args, cwd=tmp_path)
    assert full.returncode == 2, full.stderr[-3000:]  # not 139 (a segmentation fault in HDF5's teardown)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(small_disk / "a") in errors[0] and "no space left" in errors[0], errors
    assert "free some space" in errors[0] and "Logging error" not in full.stderr
    assert not list(small_disk.rglob(".*.tmp-*"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_musc(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_log_file_that_cannot_be_written_is_said_in_the_line_not_in_logging_tracebacks(tmp_path, capsys):
    from flows.terminal import TracebacksToFile as _TracebacksToFile
    for log_file in (Path("/dev/full"), tmp_path / "a_file" / "musc-errors.log"):  # disk full; no folder
        (tmp_path / "a_file").write_text("")
        stream = logging.StreamHandler(sys.stdout)
        stream.addFilter(_TracebacksToFile(log_file))
        log = logging.getLogger(f"musc-test-{log_file.name}")
        log.addHandler(stream)
        for _ in range(20):
            try:
                raise RuntimeError("the real cause")
            except RuntimeError:
                log.exception("stage failed")
        log.removeHandler(stream)
        out, err = capsys.readouterr()
        assert "Logging error" not in err and "Traceback" not in out + err
        assert out.count("stage failed (traceback not saved: ") == 20, out


# 4. The temporary server dies with the run; no "Error flushing events" ------------------------------

def _children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _alive(pid):
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_run_leaves_no_prefect_server_running(tiny_dataset, tmp_path):
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / ".prefect"),
           "MUSC_FAULT": "extract:1"}  # the run SIGKILLs itself after its first batch
    env.pop("PREFECT_API_URL", None)
    run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--dataset", "mvtec_ad", "--root", tiny_dataset,
                            *RUN_FLAGS, "--artifacts", tmp_path / "artifacts"], env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    servers = set()
    while run.poll() is None:
        servers.update(_children(run.pid))
        time.sleep(0.05)
    assert run.returncode == -signal.SIGKILL
    assert servers, "the run started no server process"
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in servers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the temporary Prefect server outlived its run"


@pytest.mark.slow
def test_a_run_of_hundreds_of_tile_tasks_ends_cleanly(tiny_dataset, tmp_path):
    (tmp_path / "run.yaml").write_text("block_size: 1\nr_list: [1, 3, 5]\n")  # 12 images: 234 tile tasks
    result = run_musc("run", "--dataset", "mvtec_ad", "--root", tiny_dataset, *RUN_FLAGS, "--config",
                      tmp_path / "run.yaml", "--artifacts", tmp_path / "artifacts", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(re.findall(r"Task run 'score r=\d tile \d+:\d+-\d+' - Finished", result.stderr)) >= 234
    assert "Error flushing events" not in result.stderr and "Traceback" not in result.stderr


# 5. Stale evaluate artifacts: report what is current; musc clean ---------------------------------------

@pytest.mark.slow
def test_report_skips_stale_evaluate_artifacts_and_clean_removes_what_no_run_uses(reference_run, tmp_path):
    _, artifacts = reference_run
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
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


def test_clean_refuses_a_folder_that_is_not_a_musc_artifacts_folder(tmp_path):
    theirs = tmp_path / "photos" / "2026" / "score" / "holiday"
    theirs.mkdir(parents=True)
    with pytest.raises(store.ArtifactError, match="not a musc artifacts folder"):
        clean_artifacts(tmp_path / "photos")
    assert theirs.is_dir()


def test_clean_touches_only_entries_named_by_our_keys(reference_run, tmp_path):
    _, artifacts = reference_run
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
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


# 6. Image size limit; masks through symlinks ------------------------------------------------------------

def test_an_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path):
    big = png(tmp_path / "big.png", 13000, 13000)  # 169 megapixels, below Pillow's own limit
    assert big.stat().st_size < 300_000
    with pytest.raises(UnreadableImage, match=re.escape(f"{big}: image of 13000 x 13000 pixels is above the limit")):
        load_image(big)


@pytest.mark.slow
def test_a_huge_mask_is_refused_naming_it(tmp_path):
    huge = png(tmp_path / "000_mask.png", 30000, 30000)
    with pytest.raises(UnreadableImage, match=re.escape(f"{huge}: mask of more than 100 megapixels is above")):
        load_mask(huge, 64, "truncate")


def test_a_mask_reached_through_a_symlink_outside_the_root_is_refused_like_an_image(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "fabric" / "test" / "hole", data)
    (data / "masks").mkdir()
    outside = shutil.copy(tiny_dataset / "fabric" / "ground_truth" / "hole" / "000_mask.png", tmp_path / "secret.png")
    (data / "masks" / "000.png").symlink_to(outside)
    with pytest.raises(DatasetError, match="^mask: .*000.png points outside the dataset root"):
        load_category("folder", data)


# 7. Errors that came late or named the wrong thing ----------------------------------------------------------

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
        f"error: artifacts: cannot write to {target} ({'Read-only file system' if mounted else 'Permission denied'})"]


@pytest.mark.parametrize("text", ["abc", "1e-9"])
def test_a_number_written_as_text_names_its_field(tmp_path, text):
    (tmp_path / "run.yaml").write_text(f"topmin_max: {text}\n")
    with pytest.raises(ConfigError, match=f"^topmin_max: expected a number, got '{text}'"):
        MuscConfig.from_yaml(tmp_path / "run.yaml")


def test_divide_num_larger_than_the_set_is_refused_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="^divide_num: splitting 12 images into 20 subsets"):
        run_category(tiny_dataset, tmp_path / "artifacts", divide_num=20)
    assert not (tmp_path / "artifacts").exists()


def test_a_label_other_than_0_or_1_is_refused_when_listing(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "fabric" / "test" / "good", data)
    (data / "labels.csv").write_text("image,label\n000.png,0\n001.png,2\n")
    with pytest.raises(DatasetError, match=re.escape(f"{data / 'labels.csv'}: line 3 needs") + ".*got '2'"):
        load_category("folder", data)


def _tiny_state():
    from musc.inputs.backbones import load_backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(str(TINY_DATA), "none", 32, [0, 1], device="cpu").model.state_dict()


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path):
    from musc.inputs.backbones import load_backbone
    state = _tiny_state()
    state["visual.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ConfigError, match="^pretrained: .*nan.pt holds non-finite values .* in visual.conv1.weight"):
        load_backbone(str(TINY_DATA), str(tmp_path / "nan.pt"), 32, [0, 1], device="cpu")


def test_a_positional_embedding_of_the_wrong_length_is_one_line_naming_pretrained(tmp_path):
    from musc.inputs.backbones import load_backbone
    state = _tiny_state()
    state["visual.positional_embedding"] = state["visual.positional_embedding"][:-3]  # 1 + 16 - 3 rows
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(ConfigError, match="^pretrained: .*short.pt does not fit .*visual.positional_embedding"):
        load_backbone(str(TINY_DATA), str(tmp_path / "short.pt"), 64, [0, 1], device="cpu")


@pytest.mark.slow
def test_inspect_names_the_file_of_a_non_json_attribute_and_reads_only_what_it_shows(reference_run, tmp_path):
    _, artifacts = reference_run
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
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


# 8. Small ones ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_orphan_parts_of_images_that_changed_are_removed_by_the_next_extraction(tiny_dataset,
                                                                                 tmp_path):
    orphan = tmp_path / "artifacts/mvtec_ad/fabric/extract/00000000deadbeef.h5"  # a crashed run's, other images
    store.write_part(orphan, "batch_00000", {"indices": np.zeros(0, dtype=np.int64)})
    result = run_category(tiny_dataset, tmp_path / "artifacts")
    assert not store.parts_dir(orphan).exists()
    assert not list((tmp_path / "artifacts").rglob("*.parts"))
    assert store.valid_digest(result["extract"]["path"]) is not None


def test_a_degree_larger_than_the_patch_grid_is_refused_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"^r_list: degree 9 is larger than the patch grid \(8 x 8"):
        run_category(tiny_dataset, tmp_path / "artifacts", r_list=[1, 9])
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("layers", [(1.5,), ("a",), [0, 1.5], "a", (True, 1)])
def test_layers_that_are_not_integers_are_refused(layers):
    with pytest.raises(ConfigError, match="^layers: expected a list of integers"):
        MuscConfig(layers=layers)


def test_the_missing_mask_warning_is_given_once(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "fabric/ground_truth/hole/000_mask.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):  # the command line checks the category, then the flow, per category
            load_category("mvtec_ad", data, "fabric")
    assert [str(w.message) for w in caught if "have no mask" in str(w.message)] == [
        "category 'fabric': 1 anomalous image(s) have no mask (first: hole/000.png); pixel metrics leave them out"]
