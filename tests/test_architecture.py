"""The layers the folders promise: musc/ is a library without Prefect, flows or tasks; tasks and
flows take settings objects, not long lists of values; the code cites only documents it ships."""
import ast
import functools
import re
import subprocess
import sys

import pytest

from conftest import ROOT

LAYERS_ABOVE_THE_LIBRARY = ("prefect", "prefect_dask", "flows", "tasks")


@functools.lru_cache(maxsize=None)
def parsed(path):
    """A module's syntax tree, parsed once for all the checks (they only read it)."""
    return ast.parse(path.read_text())


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
        for node in ast.walk(parsed(path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in LAYERS_ABOVE_THE_LIBRARY]
    assert not offenders, offenders


def is_command(node):
    """A typer command (``@app.command(...)``): its parameters are the command line's flags."""
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
               for d in getattr(node, "decorator_list", []))


def test_no_task_or_flow_function_takes_more_than_seven_parameters():
    too_long = []
    for path in python_files("tasks", "flows"):
        for node in ast.walk(parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                arguments = node.args
                count = (len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
                         + (arguments.vararg is not None) + (arguments.kwarg is not None))
                if count > 7 and not is_command(node):
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


def _calls(folders, name):
    """Files (relative) whose code calls ``name(...)`` (a function or attribute of that name)."""
    found = set()
    for path in python_files(*folders):
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if callee == name:
                    found.add(str(path.relative_to(ROOT)))
    return found


def _strings(folders, pattern):
    """Files (relative) with a string in their code, not in a docstring, that matches ``pattern``."""
    found = set()
    for path in python_files(*folders):
        tree = parsed(path)
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and re.search(pattern, node.value)):
                found.add(str(path.relative_to(ROOT)))
    return found


CODE = ("musc", "tasks", "flows", "bench")


def _definitions(folders, name):
    """Files (relative) that define a module-level function or class called ``name``."""
    return {str(path.relative_to(ROOT)) for path in python_files(*folders)
            for node in parsed(path).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name}


def _under(files, *folders):
    return all(any(f.startswith(folder + "/") for folder in folders) for f in files)


def test_the_key_recipe_is_written_once():
    """One key object (StageKey) hashes a stage's settings and inputs with the store's one digest of
    JSON-able items; only stages use them (extract also hashes its image list, one of its recorded
    inputs). Nothing above the stages makes keys."""
    assert _definitions(CODE, "StageKey") == {"musc/stages/key.py"}
    assert _definitions(CODE, "stable_hash") == {"musc/store/digests.py"}
    assert _calls(CODE, "stable_hash") and _under(_calls(CODE, "stable_hash"), "musc/stages")
    assert _calls(CODE, "StageKey") and _under(_calls(CODE, "StageKey"), "musc/stages")


def test_the_layout_and_the_input_roles_are_written_once():
    """File and folder names of an artifacts root (side files, parts, locks, the dataset report, the
    roles such as score_0) appear only in the store (its catalog, and the format document its schema
    writes); Prefect's server lock lies in Prefect's home, not in an artifacts root."""
    found = _strings(CODE, r"\.parts|\.verified|\.lock\b|^_report$|\.tmp-|score_\{|\bscore_\d")
    assert found and _under(found - {"flows/server.py"}, "musc/store")


def test_the_stage_graph_is_walked_from_its_one_declaration():
    """Every stage a key names is declared in the one graph; stages are submitted through one stage
    runner by flows (tasks stay a thin face that walks nothing); benchmarks build stages without
    Prefect's task layer."""
    from musc.stages import graph
    walkers = _calls(("flows", "tasks", "bench"), "walk")
    assert walkers and _under(walkers, "flows", "bench") and not _calls(("tasks",), "walk")
    assert _calls(("flows", "tasks"), "run_stage") and _under(_calls(("flows", "tasks"), "run_stage"), "flows")
    for path in python_files("bench"):
        assert not re.search(r"^\s*(from|import) tasks\b", path.read_text(), re.M), path
    named = {node.args[0].value for path in python_files("musc/stages")
             for node in ast.walk(parsed(path))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "StageKey" and node.args
             and isinstance(node.args[0], ast.Constant)}
    assert named and named <= set(graph.STAGE_SPECS), named - set(graph.STAGE_SPECS)


@pytest.mark.parametrize("name", ["block_row", "block_votes", "tile_sets", "stitch", "forward",
                                  "load_image", "load_mask", "layout", "check_fields"])
def test_each_shared_step_is_defined_once_and_used_beyond_its_module(name):
    """The steps the batch and the line share (tiles' votes into rows, MSM's block scores, which rows
    score each other, where tiles lie and how maps are stitched, the backbone's forward, reading an
    image or a mask, a dataset's layout, a settings check) are each written once and called from
    elsewhere, never rewritten beside it."""
    defined = _definitions(("musc",), name)
    assert len(defined) == 1, defined
    assert _calls(CODE, name) - defined, f"{name} is defined in {defined} and used nowhere else"


def test_images_are_cut_into_tiles_by_the_tiling_object_only():
    for path in python_files("musc"):
        if path.name != "tiling.py":
            assert ".crop(" not in path.read_text(), path


def test_each_setting_default_is_written_once():
    """MuscConfig declares each setting's default; stage settings take theirs from it by name (an
    annotated field with a literal default in a stage settings class would be a second one)."""
    from musc.inputs import config
    import dataclasses
    declared = {f.name for f in dataclasses.fields(config.MuscConfig)}
    tree = ast.parse((ROOT / "musc/inputs/config.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name != "MuscConfig":
            for item in node.body:
                if (isinstance(item, ast.AnnAssign) and getattr(item.target, "id", "") in declared
                        and isinstance(item.value, ast.Constant)):
                    pytest.fail(f"{node.name}.{item.target.id} repeats MuscConfig's default")


def test_modules_stay_one_concern_in_size():
    """No module of the library, the tasks or the flows grows past ~400 lines: a module that long
    holds more than one concern and is split by concern."""
    long = {str(p.relative_to(ROOT)): n for p in python_files("musc", "tasks", "flows")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_a_quick_test_that_takes_too_long_fails_naming_its_time():
    """The conftest check that keeps ``slow`` honest: a passing test not marked slow that took over
    the limit is turned into a failure that names its time; a slow one, or a quick one, is left alone."""
    import conftest

    class Item:
        nodeid = "tests/x.py::test_x"

        def __init__(self, slow):
            self.slow = slow

        def get_closest_marker(self, name):
            return object() if name == "slow" and self.slow else None

    class Call:
        when = "call"

        def __init__(self, duration):
            self.duration = duration

    class Report:
        outcome, longrepr = "passed", None

        @property
        def passed(self):
            return self.outcome == "passed"

    def judged(slow, duration):
        report = Report()
        hook = conftest.pytest_runtest_makereport(Item(slow), Call(duration))
        next(hook)
        with pytest.raises(StopIteration):
            hook.send(type("Outcome", (), {"get_result": lambda self: report})())
        return report
    limit = conftest.quick_limit()
    late = judged(False, limit + 1)
    assert late.outcome == "failed" and "tests/x.py::test_x took" in late.longrepr and "slow" in late.longrepr
    assert judged(True, limit + 1).outcome == "passed"
    assert judged(False, min(1.0, limit / 2)).outcome == "passed"


def import_graph() -> dict[str, set[str]]:
    """Which module imports which, over musc, tasks and flows: every import statement, at the top or
    inside a function, each to the most specific module it names (``from . import x``: the module x)."""
    modules = {}
    for path in python_files("musc", "tasks", "flows"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def test_no_import_cycle_anywhere():
    """No module reaches itself through its imports (lazy ones included): each layer and each module
    stands on those below it."""
    graph, cycles, state = import_graph(), [], {}

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"
    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles[:3]
    assert "musc.stages.graph" in graph["musc.stages.preflight"]  # the graph is read, not empty
