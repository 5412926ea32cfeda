"""What every pipeline task does around its step, kept here so the KFP components stay thin.

A task parses the config passed as a pipeline parameter, runs its step with the output prefix of
this run, and turns an error into one line (on stderr and, when ``FTPIPE_ERROR_FILE`` is set by
``ftpipe run --local``, in that file). KFP artifacts are duck-typed here (anything with ``.path`` and
``.metadata``), so this module needs no ``kfp`` import.

Every step component returns ``(ok, problem, ...)``, and the two kinds of error part there. A transient one
(:class:`~ftpipe.errors.StorageUnavailable`; a pod that dies with its node is another) fails the task, which
KFP then retries with back-off. A deterministic one (bad config or data, a missing column or model) would
fail the same way on every retry, each after a longer back-off: the task succeeds instead, with ``ok``
false and the error as ``problem``, and the DAG ends the run at once in :func:`stop_run`, a task without
retries that fails with that line.
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ftpipe.config import PipelineConfig, config_from_json
from ftpipe.errors import FtpipeError
from ftpipe.steps import StepResult, step_output_uri
from ftpipe.storage import Storage

ResultT = TypeVar("ResultT", bound=StepResult)
ERROR_FILE_ENV = "FTPIPE_ERROR_FILE"


def report_error(message: str) -> None:
    """Show a user error as one line, and leave it where `ftpipe run --local` can find it."""
    print(f"ftpipe: error: {message}", file=sys.stderr, flush=True)
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        with open(error_file, "a", encoding="utf-8") as handle:
            handle.write(message + "\n")


def load_libraries(modules: Sequence[str]) -> None:
    """Import a step's libraries up front with the cyclic garbage collector paused, then freeze them.

    torch, transformers and scikit-learn build long-lived objects as they import (845,000 for finetune's
    libraries); with the collector on, it walks that growing heap again and again, a fifth of the import time
    as measured here. Frozen, those objects are also skipped by every later collection: during the step, and
    at interpreter exit, where the final collections took 0.7 s of a model task's exit here.
    """
    gc.disable()
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        gc.freeze()
        gc.enable()
    atexit.unregister(gc.freeze)  # once, however often this runs
    atexit.register(gc.freeze)  # runs before the interpreter's final collections: skip what the step built too


def run_step(
    step: str,
    config_json: str,
    run_id: str,
    call: Callable[[PipelineConfig, str, Storage], ResultT],
    libraries: Sequence[str] = (),
) -> ResultT | Stopped:
    """Run ``call(config, output_uri, storage)`` for one step; an error ends it with one line.

    A transient error exits non-zero (KFP retries the task); a deterministic one comes back as
    :class:`Stopped`, which the component returns (see the module docstring). ``libraries`` are the heavy
    modules the step imports (``ftpipe.steps.<step>.LIBRARIES``): they load first, through
    :func:`load_libraries`. The result comes back with its ``wall_seconds``: from the start of this call (the
    libraries' import included) to the step's return, for the run's cost line (:mod:`ftpipe.cost`).
    """
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_libraries(libraries)
    try:
        config = config_from_json(config_json)
        result = call(config, step_output_uri(config, run_id, step), _storage(config_json))
        return result.model_copy(update={"wall_seconds": round(time.perf_counter() - started, 3)})
    except FtpipeError as error:
        report_error(f"{step}: {error}")
        if error.transient:
            raise SystemExit(error.exit_code) from None
        return Stopped(f"{step}: {error}")


@dataclass(frozen=True)
class Stopped:
    """A step met a deterministic error: its task succeeds with ``ok`` false, and the DAG stops the run."""

    problem: str

    def outputs(self, *artifacts: Any, **values: Any) -> tuple:
        """The component's return value ``(False, problem, *values)``, its output ``artifacts`` left empty.

        KFP uploads every output artifact a task declares, so each gets an empty file; ``values`` are the
        placeholders of the component's other outputs, in their order.
        """
        for artifact in artifacts:
            write_text(artifact, "")
        return (False, self.problem, *values.values())


def succeeded(*values: Any) -> tuple:
    """The return value ``(True, "", *values)`` of a step component whose step ran."""
    return (True, "", *values)


def stop_run(problem: str) -> None:
    """End the run with the line of the step that met a deterministic error (the stop_run task).

    An empty ``problem`` (after the last step, whose stop_run always runs) ends nothing.
    """
    if problem:
        report_error(problem)
        raise SystemExit(FtpipeError.exit_code)


def write_text(artifact: Any, text: str, **metadata: Any) -> None:
    """Fill a KFP artifact with text, and record metadata the KFP UI lists beside it."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(text, encoding="utf-8")
    artifact.metadata.update({key: value for key, value in metadata.items() if value is not None})


def write_result(artifact: Any, result: StepResult, **metadata: Any) -> None:
    """Store a step result in its KFP artifact (the next task reads it back)."""
    write_text(artifact, result.to_json(), **metadata)


def log_metrics(artifact: Any, values: Mapping[str, Any]) -> None:
    """Log each finite number of ``values`` on a KFP Metrics artifact, leaving out the rest (NaN, infinity, None).

    KFP stores a metric as a protobuf number, which cannot hold NaN: one such value fails the task after its step
    has run (a baseline without perplexity, a drift test that could not run). Every value is in the report.
    """
    for name, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            artifact.log_metric(name, value)


def read_result(artifact: Any, result_type: type[ResultT]) -> ResultT:
    return result_type.from_json(Path(artifact.path).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _storage(config_json: str) -> Storage:
    """One storage client per task, shared by the step and copy_report (a boto3 client takes 0.1 s to build)."""
    return Storage(config_from_json(config_json).storage)


def copy_report(config_json: str, report_uri: str, artifact: Any) -> None:
    """Copy an HTML/Markdown report from the run's storage into a KFP artifact the UI shows."""
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_bytes(_storage(config_json).read_bytes(report_uri))
    artifact.metadata["source_uri"] = report_uri
