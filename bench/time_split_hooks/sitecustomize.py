"""Timing hooks for bench/time_split.py, loaded by every Python process of a measured run (this
folder is put first on PYTHONPATH, with MUSC_TIME_SPLIT naming a folder for the results): the CPU
time of each thread inside a stage's own work (its ``build``, and ``compute_tile`` for the score
stage's tiles, the evaluate stage's pictures drawn in threads), HDF5 calls (h5py files, datasets, groups) and file hashing (``file_sha256``), each
counted once (a call inside another counts for the inner one only). Every second and at exit the
process writes its totals and its whole CPU time to <folder>/<pid>.json; what the process spent
outside these is the orchestration (Prefect, the flow, task threads, the server) and its start-up."""
import os

if os.environ.get("MUSC_TIME_SPLIT"):
    import atexit
    import functools
    import json
    import resource
    import sys
    import threading
    import time

    _FOLDER = os.environ["MUSC_TIME_SPLIT"]
    _TOTALS: dict[str, float] = {}
    _LOCK = threading.Lock()
    _LOCAL = threading.local()
    _FIRST = {}

    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def _timed(category, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            stack = getattr(_LOCAL, "stack", None)
            if stack is None:
                stack = _LOCAL.stack = []
            if category.startswith("stage") and "stage" not in _FIRST:
                _FIRST["stage"] = _cpu()
            stack.append(0.0)  # the time of the calls inside this one
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                inner = stack.pop()
                with _LOCK:
                    _TOTALS[category] = _TOTALS.get(category, 0.0) + spent - inner
                if stack:
                    stack[-1] += spent
        return wrapper

    def _dump() -> None:
        record = {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[:3], "cpu": _cpu(), "before_first_stage": _FIRST.get("stage"),
                  "totals": dict(_TOTALS)}
        path = os.path.join(_FOLDER, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as handle:
            json.dump(record, handle)
        os.replace(path + ".tmp", path)

    def _dumping() -> None:
        while True:
            time.sleep(1.0)
            _dump()

    def _install() -> None:
        import importlib

        import h5py
        for owner, names in ((h5py.File, ("__init__", "close", "flush")),
                             (h5py.Dataset, ("__getitem__", "__setitem__", "read_direct", "resize")),
                             (h5py.Group, ("create_dataset", "__getitem__", "__contains__", "require_dataset"))):
            for name in names:
                setattr(owner, name, _timed("hdf5", getattr(owner, name)))
        from musc.store import digests
        digests.file_sha256 = _timed("hashing", digests.file_sha256)
        for stage in ("extract", "aggregate", "score", "classify", "evaluate"):
            module = importlib.import_module(f"musc.stages.{stage}")
            module.build = _timed(f"stage {stage}", module.build)
        score = importlib.import_module("musc.stages.score")
        score.compute_tile = _timed("stage score", score.compute_tile)
        figures = importlib.import_module("musc.outputs.figures")  # the evaluate stage's pictures, drawn in threads
        for name in ("load_image", "save_overlay", "thumbnail_picture"):
            setattr(figures, name, _timed("stage evaluate", getattr(figures, name)))

    _install()
    atexit.register(_dump)
    threading.Thread(target=_dumping, daemon=True, name="time-split").start()
