"""Deployments that travel: prefect.yaml's pull steps find the code on the worker's machine (nothing of
the deploying machine is kept), the git_clone and Docker variants in deploy/ are what ``prefect
deploy`` reads and hold the same deployments, and ``pip install .`` (the Dockerfile's install step)
runs ``musc demo`` away from the checkout."""
import asyncio
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, prefect

PREFECT_FILES = {"process": ROOT / "prefect.yaml", "git": ROOT / "deploy" / "prefect.git.yaml",
                 "docker": ROOT / "deploy" / "prefect.docker.yaml"}
POOLS = {"process": "musc-pool", "git": "musc-pool", "docker": "musc-docker"}
HEARTBEAT = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def read(kind: str) -> dict:
    return yaml.safe_load(PREFECT_FILES[kind].read_text())


def prefect_model(kind: str):
    """The file read with Prefect's own model of a prefect file (what ``prefect deploy`` validates)."""
    models = pytest.importorskip("prefect.cli.deploy._models", reason="this Prefect keeps its prefect.yaml model elsewhere")
    return models.PrefectYamlModel.model_validate(read(kind))


def test_the_heartbeat_variable_is_prefects_setting(monkeypatch):
    from prefect.settings import Settings
    monkeypatch.setenv(HEARTBEAT, "30")
    assert Settings().flows.heartbeat_frequency == 30


@pytest.mark.parametrize("kind", sorted(PREFECT_FILES))
def test_each_prefect_file_holds_the_same_deployments_with_heartbeats(kind):
    """Every file read with Prefect's model: the deployments of prefect.yaml (names, entrypoints,
    tags, schedules, one nightly run at a time, the same parameters but the demo's folders, absolute
    where there is no checkout), each on its pool with a flow-run heartbeat every 30 s."""
    model, process = prefect_model(kind), prefect_model("process")
    by_name = {d.name: d for d in model.deployments}
    assert list(by_name) == ["musc-demo", "mvtec-nightly", "visa-nightly", "daily-folder"]
    for reference in process.deployments:
        deployment = by_name[reference.name]
        for field in ("entrypoint", "tags", "schedules", "concurrency_limit"):
            assert getattr(deployment, field) == getattr(reference, field), (kind, reference.name, field)
        if reference.name == "musc-demo" and kind != "process":
            assert all(Path(p).is_absolute() for p in deployment.parameters.values()), deployment.parameters
        else:
            assert deployment.parameters == reference.parameters, (kind, reference.name)
        assert deployment.work_pool.name == POOLS[kind]
        env = deployment.work_pool.job_variables["env"]
        assert env[HEARTBEAT] == "30" and int(env[HEARTBEAT]) >= 30  # Prefect's least
        if "nightly" in reference.name:
            assert env["CUDA_VISIBLE_DEVICES"] == "0"


def test_the_process_pull_steps_read_the_code_place_on_the_worker(monkeypatch, tmp_path):
    """``prefect deploy`` fills a pull step's placeholders from build and push outputs and its own
    environment (prefect/cli/deploy/_core.py: apply_values(pull_steps, step_outputs,
    remove_notset=False), and apply_values reads every "{{ $VAR }}" from os.environ): done here as
    it does it, on a deploying machine whose MUSC_FLOW_HOME is elsewhere, nothing of it is kept. The
    flow run's own pull steps then find the worker's MUSC_FLOW_HOME, or fail naming it."""
    from prefect.deployments.steps import core
    from prefect.utilities.templating import apply_values

    async def as_it_is(template, *args, **kwargs):  # no block or variable placeholders: no server needed
        return template
    monkeypatch.setattr(core, "resolve_block_document_references", as_it_is)
    monkeypatch.setattr(core, "resolve_variables", as_it_is)
    monkeypatch.chdir(tmp_path)  # the pull steps change directory; back after the test

    pull = prefect_model("process").pull
    monkeypatch.setenv("MUSC_FLOW_HOME", "/deploying/machine/musc-flow")
    deployed = apply_values(pull, {}, remove_notset=False)
    assert "/deploying/machine" not in json.dumps(deployed)
    # what the former step ({{ $MUSC_FLOW_HOME }}) became when deployed
    assert apply_values([{"directory": "{{ $MUSC_FLOW_HOME }}"}], {}, remove_notset=False) == \
        [{"directory": "/deploying/machine/musc-flow"}]

    checkout = tmp_path / "worker checkout"
    checkout.mkdir()
    monkeypatch.setenv("MUSC_FLOW_HOME", str(checkout))
    output = asyncio.run(core.run_steps(deployed, print_function=lambda *a: None))
    assert output["directory"] == str(checkout) and Path.cwd() == checkout

    monkeypatch.delenv("MUSC_FLOW_HOME")
    with pytest.raises(core.StepExecutionError) as failed:
        asyncio.run(core.run_steps(deployed, print_function=lambda *a: None))
    assert "MUSC_FLOW_HOME: is not set on the worker" in str(failed.value.__cause__)


def test_the_git_variant_clones_and_installs_the_clone():
    model = prefect_model("git")
    clone, install = model.pull
    assert clone["prefect.deployments.steps.git_clone"]["id"] == "clone"
    assert clone["prefect.deployments.steps.git_clone"]["repository"] == "{{ $MUSC_FLOW_GIT_URL }}"
    step = install["prefect.deployments.steps.pip_install_requirements"]
    assert step["directory"] == "{{ clone.directory }}"
    requirements = ROOT / step["requirements_file"]
    assert [line for line in requirements.read_text().splitlines() if line and not line.startswith("#")] == ["."]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_docker_variant_builds_pushes_and_runs_the_image():
    """Build and push with prefect-docker's steps (image name and tag from the environment), every
    deployment's container of the built image with the data volume, in the image's code folder."""
    from prefect.utilities.templating import apply_values
    model = prefect_model("docker")
    (build,), (push,) = model.build, model.push
    build = build["prefect_docker.deployments.steps.build_docker_image"]
    assert (build["id"], build["image_name"], build["tag"], build["dockerfile"]) == \
        ("build-image", "{{ $MUSC_IMAGE }}", "{{ $MUSC_IMAGE_TAG }}", "Dockerfile")
    assert build["buildargs"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert push["prefect_docker.deployments.steps.push_docker_image"]["image_name"] == "{{ build-image.image_name }}"
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile(), re.M).group(1)
    assert model.pull == [{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}]
    outputs = {"build-image": {"image_name": "registry.example.com/musc-flow", "tag": "abc123",
                               "image": "registry.example.com/musc-flow:abc123"}}
    for deployment in model.deployments:
        job = apply_values(deployment.work_pool.job_variables, outputs, warn_on_notset=True)
        assert job["image"] == "registry.example.com/musc-flow:abc123"
        assert "/data:/data" in job["volumes"]
        for value in deployment.parameters.values():
            if isinstance(value, str) and "/" in value and not Path(value).is_absolute():
                assert (ROOT / value).is_file() and not ignored(value, dockerignore()), value  # in the image


def test_the_dockerfile_installs_the_package_on_cpu_torch():
    text = dockerfile()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M) and "FROM ${BASE_IMAGE}" in text
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert re.search(r"^RUN pip install \. ", text, re.M) and "pip install -e" not in text
    patterns = dockerignore()
    for path in (".venv", ".git", "artifacts", "demo_data", "tests/fixtures", "flows/__pycache__/x.pyc", "x.egg-info"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "musc/inputs/demo_vit.json", "flows/demo.py", "tasks", "configs/paper.yaml",
                 "prefect.yaml", "deploy/requirements.git.txt"):
        assert not ignored(path, patterns), path


# The build context as ``docker build .`` sends it: the files .dockerignore does not name.

def dockerignore() -> list[str]:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "the test reads no ! exceptions"
    return patterns


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves out ``relative`` (a path from the root), as Docker reads the
    patterns used there: a path from the root (``*`` within one name), or **/name for a name at any
    depth; a folder left out leaves out all it holds."""
    parts = Path(relative).parts
    for end in range(1, len(parts) + 1):
        for pattern in patterns:
            if pattern.startswith("**/"):
                hit = fnmatch.fnmatchcase(parts[end - 1], pattern[3:])
            else:
                names = Path(pattern).parts
                hit = len(names) == end and all(map(fnmatch.fnmatchcase, parts[:end], names))
            if hit:
                return True
    return False


def build_context(target: Path) -> Path:
    patterns = dockerignore()
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not ignored(str(here / d), patterns)]
        for name in files:
            if not ignored(str(here / name), patterns) and (Path(folder) / name).is_file():
                (target / here).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, target / here / name)
    return target


def run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_non_editable_install_runs_the_demo_away_from_the_checkout(tmp_path):
    """A wheel of the build context, installed into a new virtual environment (its dependencies
    those of the project's environment, through a .pth file, nothing downloaded), runs ``musc
    demo`` in a folder outside the checkout: the package, not the checkout, is what runs."""
    context = build_context(tmp_path / "context")
    assert (context / "musc" / "inputs" / "demo_vit.json").is_file() and not (context / "tests").exists()
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, context])
    wheel, = wheels.glob("musc_flow-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    # the package first, into the bare environment (the project's environment is not visible yet, so
    # pip neither finds its editable musc-flow installed nor touches it) ...
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel])
    # ... and what the git route's pip step would install from a clone: this package, from its
    # folder (asked of the project's environment, which has setuptools; --dry-run changes nothing)
    report = tmp_path / "report.json"
    run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--no-build-isolation",
         "--report", report, "-r", "deploy/requirements.git.txt"], cwd=context)
    assert [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]] == ["musc-flow"]
    # then the dependencies: the project's environment's packages, after the new environment's own
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PREFECT_API_URL", "VIRTUAL_ENV")}
    env.update(PREFECT_HOME=str(elsewhere / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="200",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = json.loads(run([python, "-c", "import json, musc, flows, tasks, torch; print(json.dumps("
                                         "[musc.__file__, flows.__file__, tasks.__file__, torch.__file__]))"],
                           cwd=elsewhere, env=env).stdout)
    assert all(Path(p).is_relative_to(venv) for p in where[:3]), where  # not the checkout's editable install
    assert not Path(where[3]).is_relative_to(venv)  # the dependencies: the project's environment's

    result = run([venv / "bin" / "musc", "demo"], cwd=elsewhere, env=env, timeout=900)
    assert (elsewhere / "demo_data" / "fabric" / "test").is_dir()
    assert (elsewhere / "artifacts" / "mvtec_ad" / "_report" / "index.html").is_file(), result.stdout[-2000:]
    assert len(list(elsewhere.glob("artifacts/mvtec_ad/*/evaluate/*.h5"))) == 2


@pytest.mark.slow
def test_prefect_deploy_keeps_no_path_of_the_deploying_machine(server):
    """A real ``prefect deploy --all`` of prefect.yaml from a shell whose MUSC_FLOW_HOME is the
    deploying machine's: no deployment holds it; every one sends heartbeats every 30 s. Then the
    git variant, deployed the same way, holds the repository it was given."""
    import httpx
    prefect(server, "work-pool", "create", "musc-pool", "--type", "process")
    deploying = "/deploying/machine/musc-flow"
    prefect(server, "deploy", "--all", env={"MUSC_FLOW_HOME": deploying})
    deployments = httpx.post(f"{server['api']}/deployments/filter", json={}).json()
    assert len(deployments) == 4
    for deployment in deployments:
        assert deploying not in json.dumps(deployment), deployment["name"]
        assert deployment["job_variables"]["env"][HEARTBEAT] == "30"
        assert [next(iter(step)) for step in deployment["pull_steps"]] == [
            "prefect.deployments.steps.run_shell_script", "prefect.deployments.steps.set_working_directory"]

    url = "https://git.example.com/musc/musc-flow.git"
    prefect(server, "deploy", "--all", "--prefect-file", "deploy/prefect.git.yaml",
            env={"MUSC_FLOW_GIT_URL": url, "MUSC_FLOW_GIT_BRANCH": "main"})
    deployments = httpx.post(f"{server['api']}/deployments/filter", json={}).json()
    assert len(deployments) == 4
    for deployment in deployments:
        clone = deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]
        assert (clone["repository"], clone["branch"]) == (url, "main")
        assert deployment["job_variables"]["env"][HEARTBEAT] == "30"
