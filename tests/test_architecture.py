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


def is_command(node):
    """A typer command (``@app.command(...)``): its parameters are the command line's flags."""
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
               for d in getattr(node, "decorator_list", []))


def test_no_task_or_flow_function_takes_more_than_seven_parameters():
    too_long = []
    for path in python_files("tasks", "flows"):
        for node in ast.walk(ast.parse(path.read_text())):
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
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if callee == name:
                    found.add(str(path.relative_to(ROOT)))
    return found


def _strings(folders, pattern):
    """Files (relative) with a string in their code, not in a docstring, that matches ``pattern``."""
    found = set()
    for path in python_files(*folders):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and re.search(pattern, node.value)):
                found.add(str(path.relative_to(ROOT)))
    return found


CODE = ("musc", "tasks", "flows", "bench")


def test_the_key_recipe_is_written_once():
    """Only the key object hashes a stage's settings and inputs (extract also hashes its image list,
    which is one of its recorded inputs)."""
    from musc.stages import STAGE_SPECS
    assert _calls(CODE, "stable_hash") == {"musc/stages/key.py", "musc/stages/extract.py"}
    assert _calls(CODE, "StageKey") <= {f"musc/stages/{s}.py" for s in STAGE_SPECS}  # each stage's own module


def test_the_layout_and_the_input_roles_are_written_once():
    """File and folder names of an artifacts root (side files, parts, locks, the dataset report, the
    roles such as score_0) appear only in the catalog (and in the format document the schema writes)."""
    assert _strings(CODE, r"\.parts|\.verified|\.lock\b|^_report$|\.tmp-|score_\{|\bscore_\d") <= {
        "musc/store/catalog.py", "musc/store/schema.py",
        "flows/server.py"}  # its lock lies in Prefect's home, not in an artifacts root


def test_the_stage_graph_is_walked_from_its_one_declaration():
    """Stages are submitted through one stage runner (the category flow's, over musc.stages.walk: a
    category's batch, and the daily flow's line); benchmarks build stages without importing Prefect's
    task layer. Every stage is declared in the one graph."""
    assert _calls(("flows", "tasks", "bench"), "walk") == {"flows/category.py", "flows/daily.py", "bench/gpu_paper.py",
                                                          "bench/evaluate.py", "bench/tiling.py"}
    assert _calls(("flows", "tasks"), "run_stage") == {"flows/category.py", "flows/daily.py"}
    for path in python_files("bench"):
        assert not re.search(r"^\s*(from|import) tasks\b", path.read_text(), re.M), path
    graph = (ROOT / "musc/stages/graph.py").read_text()
    for stage in ("extract", "aggregate", "score", "classify", "evaluate", "guard", "features", "pool_score",
                  "decide"):
        assert f'StageSpec("{stage}"' in graph


def test_the_vote_assembly_and_the_msm_settings_are_written_once():
    """Tiles' votes become rows of votes in one function (block_row), used by the in-memory MSM, the
    score stage and the pool; one settings type (ScoreSettings) carries the MSM settings."""
    assert _calls(CODE, "block_row") == {"musc/method/msm.py", "musc/reference_pool/scoring.py"}
    assert _calls(CODE, "block_scores") >= {"musc/method/msm.py", "musc/stages/score.py"}
    declared = [str(p.relative_to(ROOT)) for p in python_files("musc")
                for node in ast.walk(ast.parse(p.read_text()))
                if isinstance(node, ast.ClassDef) and any(isinstance(item, ast.AnnAssign)
                                                          and getattr(item.target, "id", "") == "topmin_max"
                                                          for item in node.body)]
    assert sorted(declared) == ["musc/inputs/config.py", "musc/inputs/config.py"]  # MuscConfig and ScoreSettings


def test_the_tiling_facts_are_written_once():
    """Which rows score each other (``tile_sets``), where tiles lie and how their maps are stitched
    (``ImageTiling``, ``tile_boxes``, ``stitch``) and the backbone's forward of images or tiles
    (``forward``) are each used by the batch's stages and by the pool, never rewritten beside them."""
    assert _calls(CODE, "tile_sets") == {"musc/stages/score.py", "musc/reference_pool/pool.py"}
    assert _calls(CODE, "tile_boxes") <= {"musc/method/tiling.py", "bench/tiling.py"}
    assert _calls(CODE, "stitch") <= {"musc/method/tiling.py", "musc/stages/classify.py", "musc/reference_pool/scoring.py"}
    assert _calls(CODE, "forward") == {"musc/stages/extract.py", "musc/stages/features.py"}
    for path in python_files("musc"):  # images are cut into tiles by the tiling object only
        if path.name != "tiling.py":
            assert ".crop(" not in path.read_text(), path


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
        for node in ast.walk(ast.parse(path.read_text())):
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
