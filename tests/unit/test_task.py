"""ftpipe.task: what every pipeline task does around its step."""

from __future__ import annotations

import gc
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftpipe import task
from ftpipe.config import parse_config
from ftpipe.errors import DataError, StorageUnavailable


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_load_libraries_imports_them_and_leaves_the_collector_on_with_them_frozen(unfrozen):
    gc.unfreeze()
    sys.modules.pop("colorsys", None)
    task.load_libraries(["colorsys"])
    assert "colorsys" in sys.modules
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_load_libraries_restores_the_collector_when_an_import_fails(unfrozen):
    with pytest.raises(ModuleNotFoundError):
        task.load_libraries(["no_such_module_here"])
    assert gc.isenabled()


def test_what_the_step_built_is_frozen_at_exit():
    """Sparing the interpreter's final collections the step's objects: see load_libraries."""
    script = (
        "import atexit, gc\n"
        # registered first, so it runs last: after load_libraries' hook
        "atexit.register(lambda: print('step objects frozen:', gc.get_freeze_count() - loaded >= 900))\n"
        "from ftpipe import task\n"
        "task.load_libraries(['json'])\n"
        "loaded = gc.get_freeze_count()\n"
        "built_by_the_step = [[i] for i in range(1000)]\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "step objects frozen: True"


def _config_json(tmp_path) -> str:
    return parse_config(
        {
            "data": {"uri": str(tmp_path / "data.csv")},
            "candidates": [{"name": "m", "source": str(tmp_path / "model")}],
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "m"},
            "storage": {"artifact_root": str(tmp_path / "runs")},
        }
    ).to_json()


@dataclass
class _Artifact:
    path: str
    metadata: dict = field(default_factory=dict)


def test_a_user_error_is_returned_as_stopped_not_raised(tmp_path, monkeypatch, capsys):
    """Retrying it would fail the same way after each back-off: the DAG ends the run instead (defect 3)."""
    monkeypatch.setenv(task.ERROR_FILE_ENV, str(tmp_path / "errors.txt"))

    def every_row_a_duplicate(config, out, storage):
        raise DataError("no usable rows: all 12 rows are duplicates")

    stopped = task.run_step("clean_data", _config_json(tmp_path), "run-1", every_row_a_duplicate)
    assert stopped == task.Stopped("clean_data: no usable rows: all 12 rows are duplicates")
    assert capsys.readouterr().err == f"ftpipe: error: {stopped.problem}\n"
    report = _Artifact(str(tmp_path / "out" / "report.html"))
    assert stopped.outputs(report, fingerprint="") == (False, stopped.problem, "")
    assert Path(report.path).read_text() == ""  # every declared output exists, for KFP to upload

    with pytest.raises(SystemExit) as stop:
        task.stop_run(stopped.problem)
    assert stop.value.code == 2
    assert (tmp_path / "errors.txt").read_text().splitlines()[-1] == stopped.problem
    task.stop_run("")  # after the last step, with nothing to stop


def test_a_transient_error_fails_the_task_so_that_kfp_retries_it(tmp_path, capsys):
    def s3_does_not_answer(config, out, storage):
        raise StorageUnavailable("S3 endpoint http://127.0.0.1:1 does not answer")

    with pytest.raises(SystemExit) as failed:
        task.run_step("clean_data", _config_json(tmp_path), "run-1", s3_does_not_answer)
    assert failed.value.code == 3
    assert "does not answer" in capsys.readouterr().err
    assert task.succeeded("abc") == (True, "", "abc")


def test_log_metrics_leaves_out_what_kfp_cannot_store():
    from google.protobuf import json_format, struct_pb2
    from kfp.dsl import Metrics

    metrics = Metrics(name="metrics", uri="unused")
    task.log_metrics(metrics, {"accuracy": 0.9, "perplexity": float("nan"), "rmse": float("inf"), "p_value": None,
                               "passed": True, "steps": 12})
    assert metrics.metadata == {"accuracy": 0.9, "steps": 12}
    json_format.ParseDict(metrics.metadata, struct_pb2.Struct())  # what the KFP executor does; NaN would raise
