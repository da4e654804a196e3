"""score-new and day additions as streams, and what a person reads of them: a second call into one
OUT keeps the first call's maps; a call that fails or is killed midway leaves the earlier results
as scores.csv says and nothing behind once rerun; copies of a part not scored are named too; a full
disk during a day addition is one line; a part under two names joins a pool once; messages name
the file and the reasons, and file names with rich markup in them print as they are."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TINY_CONFIG


def good_images(tiny_dataset):
    return sorted((tiny_dataset / "fabric/test/good").glob("*.png"))


def test_a_second_call_into_one_out_keeps_the_first_calls_map(pool_file, tiny_dataset, tmp_path):
    """Two calls into one OUT keep the first call's results: its rows *and* the maps they point at,
    also when a part of the second call has the same file name in another folder."""
    from musc.reference_pool import score_new_images
    from musc.reference_pool.day import part_map
    for day, source in (("d1", good_images(tiny_dataset)[0]), ("d2", next((tiny_dataset / "fabric/test/hole").glob("*.png")))):
        (tmp_path / day).mkdir()
        shutil.copy(source, tmp_path / day / "a.png")
    out = tmp_path / "out"
    first = score_new_images(pool_file, [str(tmp_path / "d1/a.png")], out, device="cpu")
    before = part_map(first.record, first.rows[0]["part"])
    overlay = first.rows[0]["map_file"].read_bytes()
    score_new_images(pool_file, [str(tmp_path / "d2/a.png")], out, device="cpu")
    table = pd.read_csv(out / "scores.csv").set_index("path")
    kept = table.loc[str(tmp_path / "d1/a.png")]
    assert table.loc[str(tmp_path / "d2/a.png"), "map_png"] != kept["map_png"]   # two parts, two maps
    from musc.reference_pool.day import load_day
    np.testing.assert_array_equal(part_map(load_day(out), kept["part"]), before)
    assert (out / kept["map_png"]).is_file() and (out / kept["map_png"]).read_bytes() != b""  # named from OUT
    assert overlay  # drawn again on the day's scale only where it moved


def test_a_call_that_fails_while_drawing_leaves_outputs_that_a_rerun_completes(pool_file, tiny_dataset, tmp_path,
                                                                               monkeypatch):
    """A call that fails midway (here: the disk fills while the 2nd overlay is drawn) leaves the
    earlier scores.csv pointing at files that exist; the artifacts it finished stay, and the same
    call again completes the outputs without scoring anything again."""
    import musc.outputs.figures as figures
    from musc.reference_pool import score_new_images
    day = tmp_path / "day"
    day.mkdir()
    images = good_images(tiny_dataset)
    for index in range(2):
        shutil.copy(images[index], day / f"p{index}.png")
    out = tmp_path / "out"
    score_new_images(pool_file, sorted(str(p) for p in day.iterdir()), out, device="cpu")
    shutil.copy(next((tiny_dataset / "fabric/test/hole").glob("*.png")), day / "p0.png")  # p0 changed: a new part
    real, drawn = figures.save_overlay, []

    def failing(*args, **kwargs):
        drawn.append(1)
        if len(drawn) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[2]))
        return real(*args, **kwargs)
    monkeypatch.setattr(figures, "save_overlay", failing)
    with pytest.raises(OSError):
        score_new_images(pool_file, sorted(str(p) for p in day.iterdir()), out, device="cpu")
    table = pd.read_csv(out / "scores.csv")
    assert all((out / map_png).is_file() for map_png in table["map_png"])
    monkeypatch.setattr(figures, "save_overlay", real)
    from musc.stages.faults import note_work  # noqa: F401 - the builds are counted below by their artifacts
    again = score_new_images(pool_file, sorted(str(p) for p in day.iterdir()), out, device="cpu")
    assert len(again.rows) == 3 and all((out / row["map_png"]).is_file() for row in again.rows)


def test_a_copy_of_an_unreadable_part_is_named_as_not_scored_too(pool_file, tiny_dataset, tmp_path):
    """The same part under two names is reported under each name (docs/RELIABILITY.md): also when
    it cannot be scored, so that no part of the day silently vanishes from the results."""
    from musc.reference_pool import score_new_images
    day = tmp_path / "day"
    day.mkdir()
    shutil.copy(good_images(tiny_dataset)[0], day / "good.png")
    (day / "broken.png").write_bytes(b"not a picture")
    (day / "broken_copy.png").write_bytes(b"not a picture")
    with pytest.warns(UserWarning):
        result = score_new_images(pool_file, sorted(str(p) for p in day.iterdir()), tmp_path / "out", device="cpu")
    named = {Path(row["path"]).name for row in result.rows} | {Path(path).name for path, _ in result.skipped}
    assert named == {"good.png", "broken.png", "broken_copy.png"}
    assert any("broken_copy.png: unreadable" in why for _, why in result.skipped)


@pytest.mark.slow  # a child process, killed
def test_a_killed_call_leaves_nothing_behind_once_rerun(pool_file, tiny_dataset, tmp_path):
    """kill -9 mid-call (while an overlay is half written), then the same call again: the results
    are whole, the finished artifacts are reused, and nothing of the killed call is left in OUT."""
    from conftest import killed_child
    from musc.reference_pool import score_new_images
    day = tmp_path / "day"
    day.mkdir()
    for index, image in enumerate(good_images(tiny_dataset)[:3]):
        shutil.copy(image, day / f"p{index}.png")
    images = sorted(str(p) for p in day.iterdir())
    out = tmp_path / "out"
    code = ("import os; import musc.outputs.figures as figures; from musc.reference_pool import score_new_images\n"
            "class Half:\n"
            "    def save(self, path, **k):\n"
            "        open(path, 'wb').write(b'half a png'); os.kill(os.getpid(), 9)\n"
            "figures.overlay_picture = lambda *a, **k: Half()\n"
            f"score_new_images({str(pool_file)!r}, {images!r}, {str(out)!r}, device='cpu')")
    killed_child(code, "none", tmp_path)
    assert [p for p in (out / "maps").iterdir() if ".tmp-" in p.name]  # the half-written overlay
    built = {p: p.stat().st_mtime_ns for p in (out / "artifacts").rglob("*.h5")}
    result = score_new_images(pool_file, images, out, device="cpu")
    assert len(result.rows) == 3
    assert {p: p.stat().st_mtime_ns for p in built} == built  # reused, not built again
    assert [p.name for p in (out / "maps").iterdir() if ".tmp-" in p.name or p.name.startswith(".")] == []


@pytest.mark.slow
def test_a_day_addition_on_a_full_disk_ends_with_one_line_and_no_crash(pool_file, tiny_dataset, tmp_path):
    """A full disk while a day's parts join the pool (the pool written anew): one line, status 2,
    the pool unchanged, no temporary file left, and no traceback or crash of the interpreter (HDF5
    must never see the failed write: musc.store's _Sink)."""
    from musc.reference_pool import record_verdicts, score_new_images
    from musc import store
    pool = tmp_path / "pool" / "line.h5"
    pool.parent.mkdir()
    shutil.copy(pool_file, pool)
    shutil.copy(store.manifest_path(pool_file), store.manifest_path(pool))
    day = tmp_path / "day"
    day.mkdir()
    for index, image in enumerate(good_images(tiny_dataset)[:1] * 4):
        shutil.copy(image, day / f"g{index}.png")
        (day / f"g{index}.png").write_bytes((day / f"g{index}.png").read_bytes() + bytes([index]))  # distinct files
    score_new_images(pool, sorted(str(p) for p in day.iterdir()), tmp_path / "out", device="cpu")
    record_verdicts(tmp_path / "out", good=sorted(str(p) for p in day.iterdir()))
    before = pool.read_bytes()
    limit = pool.stat().st_size // 4   # smaller than the grown pool: it cannot be written
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); sys.path.insert(0, {str(ROOT)!r}); "
            f"sys.argv = ['musc', 'pool', 'add', '--pool', {str(pool)!r}, {str(tmp_path / 'out')!r}]; "
            "from flows.cli import app; app()")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_HOME": str(tmp_path / ".prefect"),
                               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    assert done.returncode in (1, 2), (done.returncode, done.stderr[-1500:])
    assert "Traceback" not in done.stderr and len([line for line in done.stderr.splitlines() if line.strip()]) == 1, \
        done.stderr[-1500:]
    assert pool.read_bytes() == before
    assert not [p for p in pool.parent.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def tiled_pool(tmp_path_factory):
    from musc.inputs.config import MuscConfig
    from musc.inputs.datasets import load_category
    from musc.inputs.synthetic import make_parts
    from musc.reference_pool import add_run_to_pool
    from musc.stages import Run, build_all
    base = tmp_path_factory.mktemp("red23b_tiled")
    made = make_parts(base / "made", n_good=6, n_defective=1, size=128, seed=8) / "plate" / "test"
    line = base / "line"
    line.mkdir()
    for index in range(5):
        shutil.copy(made / "good" / f"{index:03d}.png", line / f"good_{index}.png")
    refs = build_all(Run(load_category("folder", line, "plate"),
                         MuscConfig(**{**TINY_CONFIG, "tiles": [2, 2], "tile_overlap": 0.1}), str(base / "artifacts")))
    add_run_to_pool(base / "pool.h5", refs["evaluate"]["path"], include_flagged=True)
    return base / "pool.h5", made


def test_when_no_part_can_be_scored_the_message_names_a_part_and_each_reason(tiled_pool, tmp_path):
    """Bad input: a clear line naming the file. Of one part of another size and one unreadable
    part, the first *was* read: 'none of the images could be read' is wrong and names no file."""
    from PIL import Image
    from musc.reference_pool import score_new_images
    pool, made = tiled_pool
    Image.open(made / "good" / "005.png").resize((96, 128)).save(tmp_path / "odd.png")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.warns(UserWarning), pytest.raises(Exception) as raised:
        score_new_images(pool, [str(tmp_path / "odd.png"), str(tmp_path / "broken.png")], tmp_path / "out",
                         device="cpu")
    assert "could be read" not in str(raised.value) and "odd.png" in str(raised.value), str(raised.value)


@pytest.mark.parametrize("name", ["lot[b].png", "lot[/].png"])
def test_a_warning_shows_a_file_name_with_brackets_as_it_is(name):
    """A warning names the file as it is: rich markup in a path ('[b]', '[/]') is text, never a style
    that eats part of the name or a MarkupError that ends the command with a traceback."""
    from flows import terminal
    with terminal.console.capture() as captured:
        terminal.show_warning(f"/day/{name}: unreadable image", UserWarning, "service.py", 1)
    assert f"/day/{name}: unreadable image" in captured.get()
    import typer
    from musc.inputs.datasets import DatasetError
    with terminal.console.capture() as captured, pytest.raises(typer.Exit):
        terminal.fail(DatasetError(f"/day/{name}: unreadable image"))
    assert captured.get() == f"error: /day/{name}: unreadable image\n"


def test_a_part_scored_under_two_names_joins_the_pool_once(pool_file, tiny_dataset, tmp_path):
    """The same part under two names is one part: confirmed good under both names, it joins the
    pool once (a pool holding a part twice calibrates on a twin and votes twice)."""
    from musc import store
    from musc.reference_pool import PoolFile, add_day_to_pool, record_verdicts, score_new_images
    pool = tmp_path / "pool.h5"
    shutil.copy(pool_file, pool)
    shutil.copy(store.manifest_path(pool_file), store.manifest_path(pool))
    day = tmp_path / "day"
    day.mkdir()
    shutil.copy(good_images(tiny_dataset)[0], day / "a.png")
    shutil.copy(good_images(tiny_dataset)[0], day / "a_copy.png")
    score_new_images(pool, [str(day / "a.png"), str(day / "a_copy.png")], tmp_path / "out", device="cpu")
    record_verdicts(tmp_path / "out", good=[str(day / "a.png"), str(day / "a_copy.png")])
    before = len(PoolFile(pool))
    add_day_to_pool(pool, tmp_path / "out", device="cpu")
    after = PoolFile(pool)
    assert len(after) == before + 1 and len(set(after.digests)) == len(after.digests)


@pytest.mark.slow  # a child process, killed
def test_a_pool_write_killed_midway_leaves_the_pool_whole_and_the_next_addition_clears_its_leftover(
        pool_file, tmp_path):
    """kill -9 while a pool is written anew (here: a part taken out): the pool is the one before, the
    half-written file is a temporary beside it, and the next change of the pool removes it."""
    from conftest import killed_child
    from musc import store
    from musc.reference_pool import PoolFile
    from musc.reference_pool.additions import remove_from_pool
    pool = tmp_path / "line.h5"
    shutil.copy(pool_file, pool)
    shutil.copy(store.manifest_path(pool_file), store.manifest_path(pool))
    before = PoolFile(pool)
    leaving = before.digests[0]
    killed_child(f"from musc.reference_pool.additions import remove_from_pool; remove_from_pool({str(pool)!r}, "
                 f"[{leaving!r}], 'test')", "pool:1", tmp_path)
    left = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert left, sorted(p.name for p in tmp_path.iterdir())  # the killed write's file
    assert store.verify(pool) == before.digest  # the pool as it was
    [removed] = remove_from_pool(pool, [leaving], "test")
    assert removed.startswith(before.names[0])
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    assert leaving not in PoolFile(pool).digests and PoolFile(pool).id == before.id
