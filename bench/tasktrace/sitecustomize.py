"""Per-process timings for the pipeline-overhead benchmark (bench/overhead.py); inert unless it asks for them.

bench/overhead.py puts this folder on PYTHONPATH and sets FTPIPE_BENCH_TRACE to a folder before the KFP local
runner starts its tasks, so every Python process of a task (the KFP executor, started cold or forked from
pipelines/task_server.py's warm server) loads this file at start-up or inherits it. It records, and writes
as ``<pid>.json`` at exit:

- the process's creation and exit times;
- the time spent importing modules (outermost imports only);
- for the KFP executor, the step's own call inside ``ftpipe.task.run_step`` (start and end) and, within and
  around it, the time in ``ftpipe.storage.Storage`` I/O (S3 transfers and listings) and in imports;
- the time ``ftpipe.task.load_libraries`` takes to load the step's libraries before the call.

Nothing here changes what a task does.
"""

from __future__ import annotations

import os
import time

_DIRECTORY = os.environ.get("FTPIPE_BENCH_TRACE")

if _DIRECTORY:
    import atexit
    import functools
    import importlib._bootstrap as _bootstrap
    import json
    import sys

    _record: dict = {
        "pid": os.getpid(),
        "site_loaded": time.time(),
        "import_s": 0.0,
        "import_in_step_s": 0.0,
        "libraries_s": 0.0,
        "storage_s": 0.0,
        "storage_in_step_s": 0.0,
        "storage_calls": 0,
        "steps": [],
        "imports": {},
    }
    _state = {"import_depth": 0, "storage_depth": 0, "in_step": False}
    _STORAGE_METHODS = (
        "check",
        "read_bytes",
        "write_bytes",
        "etag",
        "exists",
        "list",
        "delete",
        "upload_file",
        "download_file",
        "upload_dir",
        "download_dir",
    )

    def _created() -> float:
        """The process's creation time (seconds since the epoch), from /proc."""
        try:
            with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as handle:
                start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
            # /proc/stat's btime is whole seconds: the boot time from /proc/uptime is good to 10 ms
            with open("/proc/uptime", encoding="ascii") as handle:
                boot = time.time() - float(handle.read().split()[0])
            return boot + start_ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return _record["site_loaded"]

    def _patch_storage(module) -> None:
        for name in _STORAGE_METHODS:
            method = getattr(module.Storage, name, None)
            if method is None:
                continue

            @functools.wraps(method)
            def timed(*args, __method=method, **kwargs):
                outermost = _state["storage_depth"] == 0
                _state["storage_depth"] += 1
                started = time.perf_counter()
                try:
                    return __method(*args, **kwargs)
                finally:
                    _state["storage_depth"] -= 1
                    if outermost:
                        spent = time.perf_counter() - started
                        _record["storage_s"] += spent
                        _record["storage_calls"] += 1
                        if _state["in_step"]:
                            _record["storage_in_step_s"] += spent

            setattr(module.Storage, name, timed)

    def _patch_task(module) -> None:
        run_step = module.run_step

        @functools.wraps(run_step)
        def traced(step, config_json, run_id, call, libraries=()):
            def timed_call(config, output_uri, storage):
                entry = {"step": step, "start": time.time()}
                _record["steps"].append(entry)
                _state["in_step"] = True
                try:
                    return call(config, output_uri, storage)
                finally:
                    _state["in_step"] = False
                    entry["end"] = time.time()

            return run_step(step, config_json, run_id, timed_call, libraries)

        load_libraries = module.load_libraries

        @functools.wraps(load_libraries)
        def timed_load(modules):
            started = time.perf_counter()
            try:
                return load_libraries(modules)
            finally:
                _record["libraries_s"] += time.perf_counter() - started

        module.run_step = traced
        module.load_libraries = timed_load

    _PATCHES = {"ftpipe.storage": _patch_storage, "ftpipe.task": _patch_task}
    _original_find_and_load = _bootstrap._find_and_load

    def _find_and_load(name, import_):
        outermost = _state["import_depth"] == 0
        _state["import_depth"] += 1
        started = time.perf_counter()
        try:
            module = _original_find_and_load(name, import_)
        finally:
            _state["import_depth"] -= 1
            if outermost:
                spent = time.perf_counter() - started
                _record["import_s"] += spent
                _record["imports"][name] = round(spent, 3)
                if _state["in_step"]:
                    _record["import_in_step_s"] += spent
        patch = _PATCHES.get(name)
        if patch is not None:
            patch(module)
        return module

    _bootstrap._find_and_load = _find_and_load

    def _write() -> None:
        _record["created"] = _created()
        _record["exited"] = time.time()
        _record["argv"] = list(sys.argv)
        path = os.path.join(_DIRECTORY, f"{os.getpid()}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_record, handle)

    def _start_over() -> None:
        """A task forked from the warm task server is a process of its own: the server's imports are not its."""
        _record.update(pid=os.getpid(), site_loaded=time.time(), steps=[], imports={}, storage_calls=0, forked=True)
        for key in ("import_s", "import_in_step_s", "libraries_s", "storage_s", "storage_in_step_s"):
            _record[key] = 0.0

    atexit.register(_write)
    os.register_at_fork(after_in_child=_start_over)
