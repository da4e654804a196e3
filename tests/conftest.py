"""Fixtures and helpers shared by the test modules (they import the helpers from here; no test module
imports another's). Markers: ``slow`` on every test that starts a subprocess, a Prefect server or a
browser (``pytest -m "not slow"`` is the quick loop), ``gpu`` on those that need CUDA."""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import httpx
import pytest

from flows import PREFECT_STARTUP_SECONDS  # importing flows sets it for Prefect, before Prefect is imported

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A suite started in the background by a non-interactive shell (`bash .ci/run &`, nohup) inherits SIGINT
# ignored, and so would every server, worker and command the tests start: a Prefect worker stopped with
# SIGTERM forwards SIGINT to its child and then waits for it forever. Ctrl-C's usual meaning restored
# here reaches them all (an exec resets a handled signal to its default; only an ignored one stays).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Prefect's logging set up once here, on the session's stderr: set up first inside a CliRunner call, its
# console log handler would keep that call's captured stream, closed once the call ends (a later flow
# then fails writing its log lines). Its home is the session's own folder.
if "PREFECT_HOME" not in os.environ:  # the session's own, removed when it ends
    os.environ["PREFECT_HOME"] = __import__("tempfile").mkdtemp(prefix="musc-tests-prefect-")
    __import__("atexit").register(__import__("shutil").rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
from prefect.logging.configuration import setup_logging  # noqa: E402

setup_logging()

ROOT = Path(__file__).resolve().parents[1]
# generated output of the reference code, kept in the repository (tests/fixtures/README.md)
FIXTURE = ROOT / "tests" / "fixtures" / "musc_reference_small.h5"
# the real MVTec AD images stay outside the repository (their licence): ../shared beside it
SHARED = ROOT.parent / "shared"
REAL_DATA = SHARED / "data" / "real"
# set by .ci/run: there, missing real images are a failure, not a skip
REQUIRE_SHARED = "MUSC_REQUIRE_SHARED"
DEMO_BACKBONE = str(ROOT / "musc" / "inputs" / "demo_vit.json")
TINY_CONFIG = {"backbone": DEMO_BACKBONE, "pretrained": "none", "image_size": 64, "layers": [0, 1, 2, 3],
               "batch_size": 4, "block_size": 4, "device": "cpu", "r_list": [1, 3]}
PREFECT = str(Path(sys.executable).with_name("prefect"))


def as_flags(config: dict) -> list[str]:
    """``musc run``'s flags for the settings in ``config`` (lists as comma-separated values)."""
    flags = []
    for name, value in config.items():
        flags += [f"--{name.replace('_', '-')}",
                  ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return flags


# the tiny backbone and the device as ``musc run`` flags; the method's settings left to each test
RUN_FLAGS = as_flags({name: TINY_CONFIG[name] for name in ("backbone", "pretrained", "image_size", "layers", "device")})


@pytest.fixture(scope="session")
def reference():
    """Every dataset of the parity fixture, by name, and its root attributes under "attrs"."""
    with h5py.File(FIXTURE, "r") as f:
        data = {}
        f.visititems(lambda name, obj: data.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        data["attrs"] = dict(f.attrs)
    return data


@pytest.fixture(scope="session")
def real_data():
    """The real MVTec AD images (../shared/data/real); skipped, saying why, where they are absent
    (a clone on its own), failed where MUSC_REQUIRE_SHARED=1 (CI always has them)."""
    if not (REAL_DATA / "bottle").is_dir():
        message = f"the real MVTec AD images are not here: {REAL_DATA / 'bottle'} (../shared beside the repository)"
        if os.environ.get(REQUIRE_SHARED) == "1":
            pytest.fail(f"{message}; {REQUIRE_SHARED}=1 requires them")
        pytest.skip(message)
    return REAL_DATA


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect (ephemeral, temporary database) for the whole session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_SECONDS):
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from musc.inputs.synthetic import make_dataset
    return make_dataset(tmp_path_factory.mktemp("data"), n_good=6, n_per_defect=2, size=64, seed=1,
                        categories=("fabric",))


def snapshot(root):
    """Identity of every artifact file under root: a rewritten file gets a new inode/mtime."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in Path(root).rglob("*.h5") if ".parts" not in str(p)}


@pytest.fixture
def fresh_process_memory():
    """This process's memory of digests it wrote or verified dropped before and after a test: the test
    sees the store as a new command would."""
    from musc import store
    store.forget()
    yield
    store.forget()


def run_category(data, artifacts, **changes):
    from flows import category_flow
    return category_flow("mvtec_ad", str(data), "fabric", {**TINY_CONFIG, **changes}, str(artifacts))


def stage_files(snap, stage):
    return {k: v for k, v in snap.items() if f"/{stage}/" in k}


def read_all(ref):
    """Every dataset of an artifact, by name."""
    from musc import store
    artifact = store.open_artifact(ref["path"])
    out = {}
    with h5py.File(artifact.path) as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def assert_same_arrays(a, b):
    import numpy as np
    assert set(a) == set(b)
    for name in a:
        if a[name].dtype.kind in "fiub":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            assert list(a[name]) == list(b[name]), name


@pytest.fixture(scope="session")
def reference_run(prefect_harness, tiny_dataset, tmp_path_factory):
    """One uninterrupted local run of the tiny dataset, to compare other runs against."""
    artifacts = tmp_path_factory.mktemp("reference_artifacts")
    return run_category(tiny_dataset, artifacts), artifacts


@pytest.fixture
def run_copy(reference_run, tmp_path):
    """A copy of the reference run's artifacts root (tmp_path/artifacts), for a test to change."""
    import shutil
    copy = tmp_path / "artifacts"
    shutil.copytree(reference_run[1], copy)
    return copy


def run_musc(*args, cwd, env=None, timeout=600):
    """The ``musc`` command in a child process of its own (own Prefect home and temporary server);
    ``env``: variables to add."""
    environment = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(Path(cwd) / ".prefect"),
                   "COLUMNS": "200", **(env or {})}
    environment.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pool_file(tiny_dataset, tmp_path_factory):
    """A pool of the good images, extracted and aggregated as a run with TINY_CONFIG would."""
    import warnings

    import numpy as np
    import torch

    import musc
    from musc.inputs.backbone_spec import backbone_settings
    from musc.inputs.backbones import backbone_for
    from musc.inputs.config import MuscConfig
    from musc.inputs.images import load_image
    from musc.reference_pool import Images, PoolSettings, write_pool
    cfg = MuscConfig.from_dict({**TINY_CONFIG})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = backbone_for(cfg.extract)  # the run's own backbone, seed included: score-new extracts with it
    paths = sorted((tiny_dataset / "fabric/test/good").glob("*.png"))[1:]
    tokens, _ = backbone.extract(torch.stack([backbone.preprocess(load_image(p)) for p in paths]))
    features = {r: np.stack([musc.aggregate(t, r).numpy() for t in tokens]) for r in cfg.r_list}
    settings = PoolSettings("fabric", backbone_settings(cfg.extract), tuple(cfg.r_list))
    path = tmp_path_factory.mktemp("pool") / "line3.h5"
    write_pool(path, settings, [Images([p.name for p in paths], [p.name for p in paths], np.zeros(len(paths)),
                                       lambda r, layer, idx: features[r][layer, np.sort(idx)],
                                       features[1].shape[2:])], 50, {})
    return path


# A real `prefect server start` with deployments and a process worker (test_server.py, test_pool_server.py)

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from browser import free_port
    home = tmp_path_factory.mktemp("server_home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "MUSC_FLOW_HOME": str(ROOT),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2",
           "PREFECT_UI_ENABLED": "false"}
    logs = home / "server.log"
    process = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=open(logs, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    api = env["PREFECT_API_URL"]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("Prefect server did not start: " + logs.read_text()[-2000:])
        yield {"env": env, "api": api, "home": home}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """A server with its UI (headless-browser tests), in the shape of ``server`` and ``process_worker``."""
    import browser
    reason = browser.unavailable()
    if reason:
        pytest.skip(f"no headless browser: {reason}")
    with browser.PrefectServer() as srv:
        env = {**srv.client_env(), "MUSC_FLOW_HOME": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "2",
               "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
        yield {"env": env, "api": srv.api_url, "home": Path(srv.home), "url": srv.url}


def prefect(server, *args, timeout=180, env=None):
    """The ``prefect`` command against the server; its output, asserting it succeeded."""
    result = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, env={**server["env"], **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def wait_for(server, flow_run_id, states, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(f"{server['api']}/flow_runs/{flow_run_id}").json()
        if run["state"]["type"] in states:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} stayed {run['state']['type']}")


def api_post(api: str, route: str, body: dict, tries: int = 4):
    """POST ``body`` to the server's ``route``, its JSON; a 503 (the server's database busy, as under a
    loaded machine) is tried again after a pause, as Prefect's own client does, up to ``tries`` times."""
    for attempt in range(tries):
        response = httpx.post(f"{api}{route}", json=body, timeout=30)
        if response.status_code != 503 or attempt == tries - 1:
            break
        time.sleep(2 * (attempt + 1))
    response.raise_for_status()
    return response.json()


def find_deployment(api: str, name: str) -> dict:
    found = api_post(api, "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    assert found, f"deployment {name} not found"
    return found[0]


def start_run(server, deployment, **parameters):
    found = find_deployment(server["api"], deployment)
    return api_post(server["api"], f"/deployments/{found['id']}/create_flow_run", {"parameters": parameters})["id"]


@contextlib.contextmanager
def process_worker(server, deployments: list[str], failing_stage: str, folder: Path, env: dict | None = None):
    """Deploy from prefect.yaml and run a process worker on musc-pool; ``failing_stage`` fails once
    while the yielded marker file exists (MUSC_FAIL_ONCE); ``env``: more variables for the worker and
    its flow runs."""
    prefect(server, "work-pool", "create", "musc-pool", "--type", "process")
    prefect(server, "deploy", *deployments)
    marker = folder / f"fail-{failing_stage}-once"
    env = {**server["env"], "MUSC_FAIL_ONCE": f"{failing_stage}:{marker}", **(env or {})}
    process = subprocess.Popen([PREFECT, "worker", "start", "--pool", "musc-pool"], cwd=ROOT, env=env,
                               stdout=open(server["home"] / "worker.log", "w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield {"marker": marker}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def killed_child(code: str, fault: str, tmp_path, env=None) -> None:
    """Python ``code`` in a child process (its own process group, so that a Prefect server it
    started dies with it) that kills itself (SIGKILL) at the fault point ``fault`` (MUSC_FAULT);
    ``env``: variables to set (None: to unset)."""
    import contextlib
    import signal
    import subprocess
    environment = {**os.environ, **(env or {}), "MUSC_FAULT": fault}
    log = tmp_path / "child.log"
    with open(log, "w") as output:
        child = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
                                 env={k: v for k, v in environment.items() if v is not None}, stdout=output,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = child.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log.read_text()[-2000:]


def count_work(monkeypatch) -> dict:
    """Counts of extract batches and MSM tile computations from now on ({"batches", "tiles"})."""
    from musc.stages import extract, score
    calls = {"batches": 0, "tiles": 0}
    real_batch, real_tile = extract.extract_batch, score.tile_minima
    monkeypatch.setattr(extract, "extract_batch",
                        lambda *a: (calls.__setitem__("batches", calls["batches"] + 1), real_batch(*a))[1])
    monkeypatch.setattr(score, "tile_minima",
                        lambda *a, **k: (calls.__setitem__("tiles", calls["tiles"] + 1), real_tile(*a, **k))[1])
    return calls


def copy_pool(source, target):
    """A pool file and its manifest, copied (the same pool: its identity travels with it)."""
    import shutil

    from musc.store import manifest_path
    shutil.copy(source, target)
    shutil.copy(manifest_path(source), manifest_path(target))
    return Path(target)


def scored_day(pool, dataset, images, out, day="2026-12-01", threshold=None):
    """A day of new parts (``images``: names under the tiny dataset's fabric/test, copied into
    ``out``'s sibling folder incoming-<day>) scored against ``pool`` into ``out``; a fixed
    ``threshold``, or the calibrated rule. Returns (the day's view, the parts' paths)."""
    import shutil

    from musc.reference_pool import DecisionRule, score_new_images
    incoming = Path(out).parent / f"incoming-{day}"
    incoming.mkdir(exist_ok=True)
    paths = []
    for image in images:
        target = incoming / image.replace("/", "_")
        shutil.copy(Path(dataset) / "fabric/test" / image, target)
        paths.append(str(target))
    return score_new_images(pool, paths, out, DecisionRule(threshold=threshold), day=day, device="cpu"), paths


# ``slow`` kept honest: a test not marked slow whose call takes longer than this (scaled by the
# machine's load per core, so a busy shared machine does not fail it) fails, naming its time.
QUICK_TEST_SECONDS = float(os.environ.get("MUSC_QUICK_TEST_SECONDS", "10"))


def quick_limit() -> float:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return QUICK_TEST_SECONDS * max(1.0, load / (os.cpu_count() or 1))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed or item.get_closest_marker("slow"):
        return
    limit = quick_limit()
    if call.duration > limit:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {call.duration:.1f} s, over {limit:.1f} s for a test not marked "
                           f"slow: mark it @pytest.mark.slow, or make it quicker")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
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


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
