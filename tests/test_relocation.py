"""A batch run's outputs travel (musc/store/naming.py): they name images relative to the dataset root,
the files they made relative to the file naming them, and the dataset root and the artifacts folder
as the person gave them, so no file under the artifacts root (text, HDF5 attributes and datasets)
names a folder of the worker that nobody typed; an artifacts root moved (with its dataset or
alone) is reported, inspected and browsed where it is now."""
import json
import re
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import ROOT, run_musc
from musc.store import naming

LINK = re.compile(r"\]\(([^)\s]+)\)|(?:src|href)='([^']+)'")  # Markdown and HTML links
FILE_COLUMNS = ("map_png", "mask_png", "thumb_png")


def cli(*args):
    from flows.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


def named_in(folder: Path, needles: list[str], allowed=lambda path, where, value: False) -> list[str]:
    """Where the files under ``folder`` name any of ``needles``: a text file's bytes (``where``:
    "text", ``value``: the needle); an HDF5 file's attributes and string datasets; each hit
    ``allowed(path, where, value)`` left out."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix != ".h5":
            found += [f"{path}: {n}" for n in needles if n.encode() in path.read_bytes()
                      and not allowed(path, "text", n)]
            continue
        values = []
        with h5py.File(path, "r") as f:
            values += [(f"attr {k}", v) for k, v in f.attrs.items()]

            def visit(name, item):
                values.extend((f"{name} attr {k}", v) for k, v in item.attrs.items())
                if isinstance(item, h5py.Dataset) and item.dtype.kind in "OSU":
                    values.extend((name, v) for v in item.asstr()[()].ravel().tolist())
            f.visititems(visit)
        for where, value in values:
            text = value.decode() if isinstance(value, bytes) else str(value)
            found += [f"{path} {where}: {text[:200]}" for n in needles
                      if n in text and not allowed(path, where, text)]
    return found


def backbone_file(path, where, value) -> bool:
    """The extract's records of the backbone and its files (named by the backbone's own rule)."""
    return path.parent.name == "extract" and where in ("attr config", "attr model_files", "attr backbone")


def links_of(page: Path) -> list[Path]:
    """The files a report page (Markdown or HTML) links to, found from its folder."""
    targets = [a or b for a, b in LINK.findall(page.read_text())]
    return [page.parent / t for t in targets if not t.startswith(("data:", "http:", "https:", "#"))]


def assert_reports_resolve_under(root: Path) -> int:
    """Every link of every report page, and every file per_image.csv names, is a file under ``root``
    (its folder as it is now). Returns how many were checked."""
    checked = 0
    for page in [*root.rglob("report.md"), *root.rglob("report.html"), *root.rglob("index.html")]:
        for target in links_of(page):
            assert target.is_file() and target.resolve().is_relative_to(root.resolve()), (page, target)
            checked += 1
    for table in root.rglob("per_image.csv"):
        per_image = pd.read_csv(table, keep_default_na=False)
        for column in FILE_COLUMNS:
            for name in per_image[column]:
                assert not Path(name).is_absolute(), (table, column, name)
                assert (table.parent / name).is_file(), (table, column, name)
                checked += 1
    return checked


# The rule ------------------------------------------------------------------------------------------

def test_the_rule_names_images_from_the_root_and_made_files_from_the_file_naming_them(tmp_path):
    root = tmp_path / "data"
    (root / "fabric/test/good").mkdir(parents=True)
    image = root / "fabric/test/good/000.png"
    image.write_bytes(b"x")
    assert naming.image_name(image, root) == "fabric/test/good/000.png"
    assert naming.image_file("fabric/test/good/000.png", root) == image
    assert naming.image_name(tmp_path / "elsewhere.png", root) == str(tmp_path / "elsewhere.png")
    report = tmp_path / "a/m/fabric/evaluate/k"
    assert naming.link(report / "overlays/x.png", report) == "overlays/x.png"
    assert naming.link(tmp_path / "a/m/fabric/extract/e.h5", report) == "../../extract/e.h5"
    assert naming.link(report, report.parent) == "k"  # the evaluate's outputs, from its own folder
    assert naming.linked("../../extract/e.h5", report).resolve() == (tmp_path / "a/m/fabric/extract/e.h5").resolve()
    assert naming.linked(str(image), report) == image  # an absolute name (an older output) as it is
    assert naming.as_given(Path("artifacts")) == "artifacts" and naming.as_given("/x/y") == "/x/y"
    assert naming.under_given(tmp_path / "a/m/_report/index.html", tmp_path / "a", "out") == "out/m/_report/index.html"
    assert naming.under_given("/w/a/f.h5", "/w/a", None) == "/w/a/f.h5"


def test_a_relative_dataset_root_is_found_from_where_the_artifacts_root_lies_now(tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    (moved / "data").mkdir(parents=True)
    (moved / "out/artifacts").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a person (or a worker) in another folder
    assert naming.started_in("artifacts", moved / "artifacts") == moved
    assert naming.started_in("out/artifacts", moved / "out/artifacts") == moved
    assert naming.started_in("./out/../artifacts", moved / "artifacts") == moved
    assert naming.started_in("../artifacts", moved / "artifacts") is None  # cannot tell
    assert naming.started_in(str(moved / "out/artifacts"), moved / "out/artifacts") is None
    assert naming.dataset_root("data", "out/artifacts", moved / "out/artifacts") == moved / "data"
    assert naming.dataset_root(str(moved / "data"), "artifacts", "/nowhere/artifacts") == moved / "data"
    (elsewhere / "data").mkdir()  # not beside the artifacts: the current folder's
    assert naming.dataset_root("data", "../artifacts", moved / "artifacts") == elsewhere / "data"
    assert naming.dataset_root("data", "artifacts", tmp_path / "gone/artifacts") == elsewhere / "data"


# A finished run, and its artifacts root moved ---------------------------------------------------------

def test_no_output_of_a_run_names_a_folder_nobody_typed(reference_run, tiny_dataset):
    """The reference run was given its dataset root and artifacts folder absolute: the extract records
    them so (and the backbone file, given absolute), the report names the root its per-image paths
    start from, and nothing else names them or the checkout."""
    result, artifacts = reference_run

    def typed(path, where, value):
        return backbone_file(path, where, value) or path.parent.name == "extract" and (
            (where == "attr root" and value == str(tiny_dataset))
            or (where == "attr artifacts" and value == str(artifacts))) or (
            path.name == "report.md" and where == "text" and value == str(tiny_dataset))
    assert named_in(artifacts, [str(tiny_dataset), str(artifacts), str(ROOT)], typed) == []
    with h5py.File(result["extract"]["path"], "r") as extract:
        assert extract.attrs["root"] == str(tiny_dataset) and extract.attrs["artifacts"] == str(artifacts)
        paths = extract["paths"].asstr()[()]
    assert all(not Path(p).is_absolute() and (tiny_dataset / p).is_file() for p in paths)
    with h5py.File(result["evaluate"]["path"], "r") as evaluation:
        assert evaluation.attrs["outputs"] == Path(result["evaluate"]["path"]).stem
    per_image = pd.read_csv(Path(result["outputs"]) / "per_image.csv")
    assert all((tiny_dataset / p).is_file() for p in per_image["path"])


def test_a_moved_artifacts_root_is_browsed_reported_and_inspected_where_it_is(reference_run, run_copy, tiny_dataset):
    result, original = reference_run
    assert assert_reports_resolve_under(run_copy) > 30  # the pages as the run wrote them, moved
    reported = cli("report", run_copy)
    assert reported.exit_code == 0, reported.output
    assert "dataset page" in reported.output
    assert assert_reports_resolve_under(run_copy) > 30  # and as musc report draws them there
    assert named_in(run_copy, [str(original)], lambda path, where, value: where == "attr artifacts") == []
    evaluation = next(run_copy.rglob("evaluate/*.h5"))
    shown = cli("inspect", evaluation, "--json")
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert document["located"] == {"outputs": str(evaluation.with_suffix(""))}
    assert all(Path(entry["file"]).is_relative_to(run_copy) for entry in document["inputs"].values())
    extract = json.loads(cli("inspect", next(run_copy.rglob("extract/*.h5")), "--json").stdout)
    assert extract["located"] == {"root": str(tiny_dataset)}  # given absolute: as it was given


def test_the_ui_names_the_files_under_the_artifacts_folder_as_given(run_copy):
    from musc.outputs import ui_content
    outputs = next(run_copy.rglob("evaluate/*/"))
    artifacts = {"evaluate": str(outputs.with_suffix(".h5"))}
    content = ui_content.category_content(outputs, "mvtec_ad / fabric", artifacts,
                                          named=lambda path: naming.under_given(path, run_copy, "artifacts"))
    assert str(run_copy) not in content.markdown
    assert f"`artifacts/{outputs.relative_to(run_copy).as_posix()}/report.html`" in content.markdown
    assert content.markdown.count("data:image/png;base64,") >= 4  # the thumbnails found from per_image.csv


# The command line, end to end ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_demo_typed_relative_names_no_folder_and_works_moved_with_its_dataset(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    done = run_musc("demo", "--data", "demo_data", "--artifacts", "artifacts", cwd=site)
    assert done.returncode == 0, done.stderr[-3000:]
    artifacts = site / "artifacts"
    assert named_in(artifacts, [str(tmp_path), str(ROOT)], backbone_file) == []
    extract = next(artifacts.rglob("extract/*.h5"))
    with h5py.File(extract, "r") as f:
        assert (f.attrs["root"], f.attrs["artifacts"]) == ("demo_data", "artifacts")
    assert assert_reports_resolve_under(artifacts) > 100
    overlays = {p.name: p.stat().st_mtime_ns for p in artifacts.rglob("overlays/*.png")}

    # another machine's layout: both moved, the first site gone; commands run from elsewhere
    moved = tmp_path / "elsewhere" / "b"
    moved.mkdir(parents=True)
    for name in ("artifacts", "demo_data"):
        shutil.move(str(site / name), str(moved / name))
    shutil.rmtree(site)
    away = tmp_path / "away"
    away.mkdir()
    reported = run_musc("report", moved / "artifacts", cwd=away)
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert assert_reports_resolve_under(moved / "artifacts") > 100
    # the images were found where they are now: nothing drawn again (a missing image is drawn anew, blank)
    assert {p.name: p.stat().st_mtime_ns for p in (moved / "artifacts").rglob("overlays/*.png")} == overlays
    shown = run_musc("inspect", "--json", moved / "artifacts" / extract.relative_to(artifacts), cwd=away)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert json.loads(shown.stdout)["located"] == {"root": str(moved / "demo_data")}
    assert named_in(moved / "artifacts", [str(tmp_path), str(ROOT)], backbone_file) == []
