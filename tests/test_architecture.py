"""The layers the folders promise: musc/ is a library without Prefect, flows or tasks; tasks and
flows take settings objects, not long lists of values; the code cites only documents it ships."""
import ast
import re
import subprocess
import sys

import pytest

from conftest import ROOT

LAYERS_ABOVE_THE_LIBRARY = ("prefect", "prefect_dask", "flows", "tasks")


def python_files(*folders):
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.slow
def test_every_library_module_imports_with_prefect_unimportable():
    code = f"""
import importlib, importlib.abc, pkgutil, sys
sys.path.insert(0, {str(ROOT)!r})
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {LAYERS_ABOVE_THE_LIBRARY!r}:
            raise ImportError("the library must not import " + name)
sys.meta_path.insert(0, Refuse())
import musc
names = [m.name for m in pkgutil.walk_packages(musc.__path__, "musc.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 20  # every module of the package was imported


def test_no_library_module_imports_an_upper_layer_even_lazily():
    offenders = []
    for path in python_files("musc"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in LAYERS_ABOVE_THE_LIBRARY]
    assert not offenders, offenders


def test_no_task_or_flow_function_takes_more_than_seven_parameters():
    too_long = []
    for path in python_files("tasks", "flows"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                arguments = node.args
                count = (len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
                         + (arguments.vararg is not None) + (arguments.kwarg is not None))
                if count > 7:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {getattr(node, 'name', 'lambda')} ({count})")
    assert not too_long, too_long


def test_the_code_cites_only_sections_of_documents_it_ships():
    method = (ROOT / "docs" / "METHOD.md").read_text()
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)?)[. ]", method, flags=re.M))
    assert {"1", "2", "3", "4", "5", "6", "7", "8", "9"} <= sections
    cited = []
    for path in python_files("musc", "tasks", "flows", "tests", "bench"):
        text = path.read_text()
        assert "MUSC_SPEC" not in text or path.name == "test_architecture.py", f"{path} cites a file outside the repository"
        cited += [(path, s) for s in re.findall(r"docs/METHOD\.md(?:,)? (?:section )?(\d+(?:\.\d+)?)", text)]
    assert cited, "the method modules cite docs/METHOD.md"
    missing = [f"{p.relative_to(ROOT)}: section {s}" for p, s in cited if s not in sections]
    assert not missing, missing
