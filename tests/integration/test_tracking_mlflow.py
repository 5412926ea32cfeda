"""MLflow tracking against a real `mlflow server` (SQLite backend, local artifact root), read back with its client.

A fine-tune and a sweep trial of one pipeline run land as two nested runs under one parent run, with their params,
per-step metric histories (one validation value per evaluation, at its optimizer step) and model URIs; evaluate and
register_model log to the parent. Tracking off never imports mlflow, and a server that does not answer only warns.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from split_files import LABELS, write_split

from ftpipe import s3server, tracking
from ftpipe.config import parse_config
from ftpipe.results import RegisterModelResult
from ftpipe.steps import evaluate, finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on a free port for this module; its URI."""
    directory = tmp_path_factory.mktemp("mlflow")
    port = s3server.free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        "--default-artifact-root", str(directory / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # the first start creates the SQLite schema (alembic migrations)
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"mlflow server did not start: {(directory / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield uri
    os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


def make_config(tmp_path: Path, mlflow_uri: str | None, **training):
    settings = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0, **training}
    return parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "spam-filter"},
            "candidates": [{"name": "tiny", "source": "unused"}],
            "training": settings,
            "tracking": {"mlflow_uri": mlflow_uri},
        }
    )


def with_source(config, source: str):
    return config.model_copy(update={"candidates": [config.candidates[0].model_copy(update={"source": source})]})


@pytest.fixture
def splits(tmp_path):
    return {
        "train_uri": write_split(tmp_path / "train.parquet", 48, seed=1),
        "validation_uri": write_split(tmp_path / "validation.parquet", 16, seed=2),
        "test_uri": write_split(tmp_path / "test.parquet", 16, seed=3),
    }


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(point.step, point.value) for point in client.get_metric_history(run_id, key)]


def assert_same_points(logged: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """Same steps, in order, and the same values (stored as doubles)."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected])


def test_a_finetune_and_a_trial_nest_under_the_pipeline_runs_parent(mlflow_server, tiny_bert_dir, splits, tmp_path):
    from mlflow import MlflowClient

    config = with_source(make_config(tmp_path, mlflow_uri=mlflow_server), tiny_bert_dir)
    trial_config = config.model_copy(
        update={"training": config.training.model_copy(update={"learning_rate": 2e-3, "epochs": 1.0})}
    )
    trial = {"trial": 3, "rung": 1, "params": {"training.learning_rate": 2e-3}, "budget": 0.5}
    common = dict(train_uri=splits["train_uri"], validation_uri=splits["validation_uri"], labels=LABELS,
                  candidate="tiny", run_id="run-1")  # fmt: skip
    plain = finetune.run(config, output_uri=str(tmp_path / "plain"), **common)
    trialled = finetune.run(trial_config, output_uri=str(tmp_path / "trial"), trial=trial, **common)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ftpipe-spam-filter")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`ftpipe.run_id` = 'run-1'")
    parents = [run for run in runs if run.data.tags.get(tracking.NAME_TAG) == tracking.PARENT_NAME]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    assert parent.info.run_name == "run-1" and "mlflow.parentRunId" not in parent.data.tags
    nested = {run.info.run_name: run for run in runs if run is not parent}
    assert set(nested) == {"finetune", "trial-3-rung-1"}

    for name, result, learning_rate, evaluations in (
        ("finetune", plain, "0.001", [6, 12]),  # 48 rows / batch 8: 6 steps an epoch, evaluated each epoch
        ("trial-3-rung-1", trialled, "0.002", [6]),
    ):
        run = nested[name]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["learning_rate"] == learning_rate
        assert run.data.params["candidate"] == "tiny" and run.data.params["batch_size"] == "8"
        assert run.data.params["early_stopping_patience"] == "2"  # the training config, every field
        assert run.data.tags["ftpipe.model_uri"] == result.model_uri
        assert run.data.tags["ftpipe.train_log_uri"] == result.log_uri
        log = json.loads(Path(result.log_uri).read_text())
        evaluated = [(entry["step"], entry["eval_loss"]) for entry in log if "eval_loss" in entry]
        assert [step for step, _ in evaluated] == evaluations
        assert_same_points(history(client, run.info.run_id, "validation_loss"), evaluated)
        f1 = history(client, run.info.run_id, "validation_f1_macro")
        assert [step for step, _ in f1] == evaluations
        trained = [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]
        assert_same_points(history(client, run.info.run_id, "train_loss"), trained)
        assert [step for step, _ in history(client, run.info.run_id, "learning_rate")] == [s for s, _ in trained]
        best = client.get_metric_history(run.info.run_id, "best_validation_f1_macro")
        assert [point.value for point in best] == pytest.approx([result.best_metric_value])
    trial_params = nested["trial-3-rung-1"].data.params
    assert trial_params["trial.trial"] == "3" and trial_params["trial.rung"] == "1"
    assert trial_params["trial.params.training.learning_rate"] == "0.002"
    assert "trial.trial" not in nested["finetune"].data.params

    # evaluate and register_model log on the parent run
    evaluation = evaluate.run(config, splits["test_uri"], LABELS, plain.model_uri, str(tmp_path / "eval"),
                              run_id="run-1")  # fmt: skip
    registered = RegisterModelResult(model_name="spam-filter", version=4, version_uri="v", model_uri="m/4",
                                     model_card_uri="c", metadata_uri="d", aliases_set=["staging"])  # fmt: skip
    tracking.log_registration(config, "run-1", registered, {"cost_tokens_seen": 12494.0, "wall_seconds_finetune": 5.5})
    parent = client.get_run(parent.info.run_id)
    assert (parent.data.metrics["cost_tokens_seen"], parent.data.metrics["wall_seconds_finetune"]) == (12494.0, 5.5)
    assert parent.data.metrics["test_accuracy"] == pytest.approx(evaluation.metrics["accuracy"])
    assert parent.data.metrics["test_f1_macro"] == pytest.approx(evaluation.metrics["f1_macro"])
    assert parent.data.tags["ftpipe.gate"] == ("passed" if evaluation.gate_passed else "failed")
    assert parent.data.tags["ftpipe.gate_reasons"] == "\n".join(evaluation.reasons)
    assert parent.data.tags["ftpipe.evaluated_model_uri"] == plain.model_uri
    assert parent.data.tags["ftpipe.registered_version"] == "4"
    assert parent.info.status == "FINISHED"
    after = client.search_runs([experiment.experiment_id], filter_string="tags.`ftpipe.run_id` = 'run-1'")
    assert len(after) == 3  # no second parent


def test_tasks_creating_the_parent_at_once_settle_on_one(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    config = make_config(tmp_path, mlflow_uri=mlflow_server)
    barrier = threading.Barrier(4)
    found: list[str | None] = []

    def task() -> None:
        tracker = tracking.Tracker(config, "run-race")
        tracker.experiment_id()
        barrier.wait()
        found.append(tracker.call("finding the parent", tracker.parent_id))

    threads = [threading.Thread(target=task) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ftpipe-spam-filter")
    live = client.search_runs([experiment.experiment_id], filter_string="tags.`ftpipe.run_id` = 'run-race'")
    assert len(live) == 1
    assert found == [live[0].info.run_id] * 4


def test_tracking_off_never_imports_mlflow(tiny_bert_dir, splits, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from ftpipe import tracking
        from ftpipe.config import parse_config
        from ftpipe.steps import finetune

        config = parse_config({{
            "data": {{"uri": "unused.csv"}},
            "registry": {{"uri": {str(tmp_path / "registry")!r}, "model_name": "spam-filter"}},
            "candidates": [{{"name": "tiny", "source": {tiny_bert_dir!r}}}],
            "training": {{"epochs": 1, "batch_size": 16, "warmup_ratio": 0.0}},
        }})
        assert config.tracking.mlflow_uri is None
        finetune.run(config, {splits["train_uri"]!r}, {splits["validation_uri"]!r}, ["ham", "spam"], "tiny",
                     {str(tmp_path / "out")!r}, run_id="run-1", trial={{"trial": 0, "rung": 0}})
        tracking.log_evaluation(config, "run-1", None)
        tracking.log_registration(config, "run-1", None)
        print("MLFLOW LOADED" if any(name.split(".")[0] == "mlflow" for name in sys.modules) else "NO MLFLOW")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "NO MLFLOW"


def test_a_server_that_does_not_answer_only_warns(tiny_bert_dir, splits, tmp_path, caplog):
    nobody = f"http://127.0.0.1:{s3server.free_port()}"
    config = with_source(make_config(tmp_path, mlflow_uri=nobody, epochs=1), tiny_bert_dir)
    with caplog.at_level(logging.WARNING, logger="ftpipe.tracking"):
        result = finetune.run(config, splits["train_uri"], splits["validation_uri"], LABELS, "tiny",
                              str(tmp_path / "out"), run_id="run-1")  # fmt: skip
    assert Path(result.model_uri, "model.safetensors").is_file()
    warnings = [record for record in caplog.records if record.name == "ftpipe.tracking"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert nobody in warnings[0].getMessage() and "does not answer" in warnings[0].getMessage()
