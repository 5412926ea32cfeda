"""Compile the DAG to the YAML a KFP cluster takes, or run it here with KFP's own local runner.

``ftpipe compile`` and ``ftpipe run --local`` call into this module (``ftpipe submit`` and ``schedule``
into ``pipelines.submit``), so ``ftpipe`` imports ``kfp`` only for the commands that need it.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ftpipe import s3server
from ftpipe.config import PipelineConfig
from ftpipe.errors import FtpipeError, StorageError
from ftpipe.results import EvaluateResult, RegisterModelResult
from ftpipe.steps.fingerprint_data import input_uris
from ftpipe.storage import Storage, is_s3
from ftpipe.task import ERROR_FILE_ENV
from pipelines.ftpipe_pipeline import build_pipeline, task_environment
from pipelines.task_server import warm_task_starts


def compile_pipeline(config: PipelineConfig, output: str | Path, image: str | None = None) -> Path:
    """Write the compiled pipeline YAML for ``config`` to ``output``."""
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config, image), str(output))
    return output


class PipelineFailed(FtpipeError):
    """A task of a local run failed."""


@dataclass(frozen=True)
class LocalRunResult:
    run_dir: Path
    data_check: str  # compare_data's decision, as shown in the KFP UI
    log_path: Path  # all the local runner printed
    evaluation: EvaluateResult | None  # None when the data had not changed and training was skipped
    registered: RegisterModelResult | None
    seconds: float


def preflight(config: PipelineConfig) -> None:
    """Fail before any task starts when storage or the input data cannot be reached."""
    storage = Storage(config.storage)
    for uri in (config.storage.artifact_root, config.registry.uri):
        storage.check(uri)
    for uri in input_uris(config):
        if not storage.exists(uri):
            raise StorageError(f"dataset not found: {uri}")


def _local_environment(config: PipelineConfig) -> None:
    """Give the task processes what the cluster would give them through the Secret."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uses_s3 = any(is_s3(uri) for uri in (config.storage.artifact_root, config.registry.uri))
    embedded = s3server.read_state()
    if uses_s3 and embedded is not None and not os.environ.get("AWS_ACCESS_KEY_ID") and not config.storage.endpoint_url:
        os.environ.update(embedded.env())


def run_local(config: PipelineConfig, work_dir: Path | None = None, force_retrain: bool = False) -> LocalRunResult:
    """Run the whole DAG with ``kfp.local.SubprocessRunner(use_venv=False)`` and collect its results.

    The tasks start warm, as forks of one interpreter that has imported their libraries (pipelines.task_server).
    """
    from kfp import local

    _local_environment(config)
    preflight(config)
    work_dir = Path(work_dir or s3server.home_dir() / "local-runs")
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=work_dir))
    error_file = run_dir / "errors.txt"
    os.environ[ERROR_FILE_ENV] = str(error_file)
    # The base image is only a tag here: tasks run in this interpreter, which has ftpipe installed.
    logging.getLogger("kfp").setLevel(logging.WARNING)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir))
    started = time.monotonic()
    log_path = run_dir / "pipeline.log"
    # kfp.local swaps builtins.print (indenting task output) and the root logger's handlers per task, saving and
    # restoring them around each; the iterations of a ParallelFor run in threads, whose restores interleave and
    # can leave an indenting print and a handler on this run's closed log behind. Restored here after the run.
    original_print, root_handlers, root_level = builtins.print, logging.root.handlers[:], logging.root.level
    try:
        with (
            warm_task_starts(run_dir / "task-server.log", task_environment(config)),
            open(log_path, "w", encoding="utf-8") as log,
            contextlib.redirect_stdout(_ConsoleFilter(log)) as console,
            warnings.catch_warnings(),
        ):
            # Expected here, by design: the image is a tag and the Kubernetes settings are for clusters.
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
            build_pipeline(config)(config_json=config.to_json(), force_retrain=force_retrain)
        if console.misread:
            # kfp.local treats a condition it cannot evaluate as false and goes on: the run would "succeed" with
            # every task after it skipped, as if the data had not changed or the gate had failed.
            raise PipelineFailed(
                f"KFP's local runner skipped the tasks after a condition it could not evaluate "
                f"({console.misread[0]}) (full log: {log_path})"
            )
    except RuntimeError as error:
        message = error_file.read_text().strip() if error_file.exists() else ""
        reason = message.splitlines()[-1] if message else f"pipeline failed: {error}"
        raise PipelineFailed(f"{reason} (full log: {log_path})") from None
    finally:
        os.environ.pop(ERROR_FILE_ENV, None)
        builtins.print = original_print
        logging.root.handlers[:] = root_handlers
        logging.root.setLevel(root_level)
    seconds = time.monotonic() - started
    decision = _output_file(run_dir, "compare-data/decision")
    return LocalRunResult(
        run_dir=run_dir,
        log_path=log_path,
        data_check=decision.read_text().splitlines()[-1] if decision else "",
        evaluation=_optional_result(run_dir, "evaluate/evaluation", EvaluateResult),
        registered=_optional_result(run_dir, "register-model/registered", RegisterModelResult),
        seconds=seconds,
    )


class _ConsoleFilter(io.TextIOBase):
    """Everything the local runner prints goes to the log file; the console gets the progress lines.

    KFP's executor logs each task's whole executor input (the config JSON included) and the local
    runner echoes it; kept in the log, those dumps would drown the steps' own progress on screen.
    """

    _QUIET = ("Got executor_input", "Looking for component", "Loading KFP component", "Wrote executor output",
              "Found credentials", "Did not write output")

    _SHOWN = (" - INFO - Executing task", "finished with status", " - WARNING - ", " - ERROR - ")
    # What kfp.local logs when it cannot read the value a dsl.If tests (it then skips the branch).
    _MISREAD = ("Could not resolve", "Condition evaluation failed")

    def __init__(self, log) -> None:
        self.log = log
        self.console = sys.stdout
        self.pending = ""
        self.misread: list[str] = []

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if " - WARNING - " in line and any(marker in line for marker in self._MISREAD):
                self.misread.append(line.split(" - WARNING - ", 1)[1].strip())
            if self._shown(line.strip()):
                self.console.write(line.strip() + "\n")
        return len(text)

    def _shown(self, line: str) -> bool:
        if line.startswith("[KFP Executor"):
            return not any(noise in line for noise in self._QUIET)
        return any(marker in line for marker in self._SHOWN)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()


def _output_file(run_dir: Path, suffix: str) -> Path | None:
    """A task's output file in the local runner's layout (<root>/<run>/<task>/<output>), if it ran."""
    found = sorted(run_dir.glob(f"*/{suffix}"))
    return found[0] if found else None


def _optional_result(run_dir: Path, suffix: str, result_type):
    path = _output_file(run_dir, suffix)
    return result_type.from_json(path.read_text()) if path else None
