"""What the Prefect UI shows: artifacts on the run the user started, and progress artifacts.

Artifacts created in a subflow hang on that subflow only; the run a person started (``musc demo``,
``musc run``, a deployment's run) is found by walking up the parent task runs, and
:func:`publish` attaches an artifact to it explicitly.

Progress: :class:`PrefectProgress` listens to ``musc.progress.TRACKER`` and keeps one progress
artifact per long stage (extract: images, score: tiles) of each category, created at 0 % on the
run the user started and updated at most every ``interval`` seconds, with the rate and the time
left in its description.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import unicodedata
from uuid import UUID

from musc.progress import TRACKER, Job, Throttle, format_seconds

PROGRESS_STAGES = ("extract", "score")
PROGRESS_INTERVAL_S = 2.0
log = logging.getLogger("musc.publish")


def artifact_key(*parts: str) -> str:
    """Prefect keys hold lowercase ASCII letters, digits and dashes: 'musc-mvtec-ad-fabric-metrics'.
    Other letters are spelt in ASCII where Unicode can ('Gehäuse' -> 'gehause'), dropped where it
    cannot ('部品'); such a key ends with a short digest of the real name, so that two names never
    share one (the real name is in the artifact's text)."""
    text = "-".join(["musc", *[str(p) for p in parts if p]])
    spelt = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    key = "-".join(filter(None, "".join(c if c.isalnum() else "-" for c in spelt).split("-")))
    if not text.isascii():
        key += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return key


def ui_link(path: str) -> str:
    """A page of the Prefect UI: absolute where the server's UI address is known, else relative to
    the UI that shows the artifact holding the link (the same host)."""
    from prefect.settings import get_current_settings
    base = get_current_settings().ui_url
    return f"{str(base).rstrip('/')}{path}" if base else path


_roots: dict[UUID, UUID] = {}


def root_flow_run_id() -> UUID | None:
    """The flow run at the top of the current one (itself when it is not a subflow)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        from prefect.context import TaskRunContext
        task_context = TaskRunContext.get()
        current = task_context.task_run.flow_run_id if task_context else None
    else:
        current = context.flow_run.id
    if current is None or current in _roots:
        return _roots.get(current, current)
    run_id = current
    with get_client(sync_client=True) as client:
        for _ in range(16):  # a chain of subflows is short; stop on anything odd
            parent_task = client.read_flow_run(run_id).parent_task_run_id
            if parent_task is None:
                break
            run_id = client.read_task_run(parent_task).flow_run_id
    _roots[current] = run_id
    return run_id


_origins: dict[UUID, tuple[str, str, str]] = {}


def run_origin() -> tuple[str, str, str]:
    """(the id of the flow run the user started, its deployment's name or '' when started by hand,
    its flow's name); empty outside a run or when the API cannot tell."""
    try:
        root = root_flow_run_id()
        if root is None:
            return "", "", ""
        if root not in _origins:
            from prefect.client.orchestration import get_client
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(root)
                deployment = client.read_deployment(run.deployment_id).name if run.deployment_id else ""
                _origins[root] = (str(root), deployment, client.read_flow(run.flow_id).name)
        return _origins[root]
    except Exception:  # noqa: BLE001 - a record and a key part: never fail the work for them
        return "", "", ""


def run_source() -> str:
    """What started the run, as batch artifact keys name it, so that each history stays apart: the
    deployment's name ('mvtec-nightly'), 'demo' for musc demo, '' for a run started by hand."""
    _, deployment, flow = run_origin()
    return (deployment or ("demo" if flow == "musc-demo" else "")).removeprefix("musc-")


def made_by() -> dict[str, str]:
    """What HDF5 artifacts record of the run that made them (``store.made_by``)."""
    run, deployment, _ = run_origin()
    return {"flow_run": run, "deployment": deployment}


def publish(kind: str, key: str, content, description: str, on_root: bool = True) -> UUID | None:
    """A 'markdown' or 'table' artifact on the run the user started (on_root) or the current run.
    The results are on disk already: a Prefect API failure here is a warning, not a failed run."""
    from prefect.artifacts import MarkdownArtifact, TableArtifact
    try:
        target = root_flow_run_id() if on_root else None
        if kind == "markdown":
            artifact = MarkdownArtifact(key=key, markdown=content, description=description, flow_run_id=target)
        else:
            artifact = TableArtifact(key=key, table=content, description=description, flow_run_id=target)
        return artifact.create(_sync=True).id
    except Exception as error:  # noqa: BLE001 - the API is beside the point of the run
        log.warning(f"could not publish the Prefect artifact {key!r} ({type(error).__name__}: {error})")
        return None


class PrefectProgress:
    """A progress artifact per long stage, throttled; never fails the work it reports on."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.interval = interval
        self.artifacts: dict[int, tuple[UUID, Throttle]] = {}
        self.lock = threading.Lock()

    def update(self, job: Job, event: str) -> None:
        if job.stage not in PROGRESS_STAGES:
            return
        if event == "start":
            self.create(job)
            return
        with self.lock:
            entry = self.artifacts.get(id(job))
        if entry is None:
            return
        artifact_id, throttle = entry
        if event == "end" or throttle.ready():
            self.send(artifact_id, job)
        if event == "end":
            with self.lock:
                self.artifacts.pop(id(job), None)

    def create(self, job: Job) -> None:
        from prefect.artifacts import ProgressArtifact
        from prefect.context import get_run_context
        from prefect.exceptions import MissingContextError
        try:
            get_run_context()
        except MissingContextError:
            return  # not inside a flow run: nothing to attach it to
        try:
            created = ProgressArtifact(key=artifact_key(run_source(), job.dataset, job.label, job.stage, "progress"),
                                       progress=0.0, description=describe(job),
                                       flow_run_id=root_flow_run_id()).create(_sync=True)
        except Exception as error:  # noqa: BLE001 - the UI is a view, the run goes on
            log.debug("progress artifact not created: %s", error)
            return
        throttle = Throttle(self.interval)
        throttle.ready()
        with self.lock:
            self.artifacts[id(job)] = (created.id, throttle)

    @staticmethod
    def send(artifact_id: UUID, job: Job) -> None:
        from prefect.artifacts import update_progress_artifact
        try:
            update_progress_artifact(artifact_id, job.percent, description=describe(job))
        except Exception as error:  # noqa: BLE001
            log.debug("progress artifact not updated: %s", error)


def describe(job: Job) -> str:
    """'fabric extract: 120/400 images, 2.3 images/s, 2m01s left' (the progress artifact's description)."""
    text = f"{job.label} {job.stage}: {job.done}/{job.total} {job.unit}"
    if job.rate:
        text += f", {job.rate:.1f} {job.unit}/s"
    if job.ended is not None:
        text += f", done in {format_seconds(job.elapsed)}" if not job.note else f", {job.note}"
    elif job.eta is not None:
        text += f", {format_seconds(job.eta)} left"
    return text


PREFECT_PROGRESS = PrefectProgress()
TRACKER.add_listener(PREFECT_PROGRESS)
