"""Experiment tracking in MLflow, besides the KFP UI: on when ``tracking.mlflow_uri`` is set.

Every pipeline run has one parent MLflow run in the experiment ``tracking.experiment`` (default
``ftpipe-<registry.model_name>``), named after the pipeline run id and tagged ``ftpipe.run_id``. Each fine-tune is
a nested run under it, ``finetune``, or ``trial-<n>-rung-<r>`` for a sweep trial: the training settings as params
(the config's ``training`` section with the values the recipe fitted in place of those left unset, the candidate,
the trial's settings), per optimizer step the training loss, learning rate and gradient norm, per evaluation every
validation metric (``validation_<metric>``), and at the end the model's and the reports' URIs (tags
``ftpipe.model_uri``, ...). evaluate logs the test metrics (``test_<metric>``) and the gate's verdict on the parent
run, register_model the registered version.

No MLflow ids pass between tasks: each task finds the parent by its ``ftpipe.run_id`` tag
(``MlflowClient.search_runs``) and creates it when missing. When two tasks create it at once, each searches again
after creating and keeps the oldest (by start time, then run id), and a task whose own run lost deletes it, so every
task settles on the same one (each waits a second after creating before it looks, so that a run created at the
same moment by another task, whose start time may be earlier, is seen). Nested runs are found (a retried task goes
on in its run) and created the same way. Only ``MlflowClient`` calls with explicit run ids are made, never the
fluent ``mlflow.start_run`` state, so this works inside forked (warm-start) task processes.

Tracking never fails a step: mlflow is imported only when tracking is on, and a server that does not answer (checked
with its ``/health`` endpoint before the first call) or an MLflow call that fails logs one warning, after which that
step tracks nothing more. MLflow's own retries of a call are capped at ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (2 unless
set in the environment) and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (30 s unless set), so a server that dies mid-training
holds the step up for seconds, not minutes. A bad URI is a config error (``TrackingConfig``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ftpipe.config import PipelineConfig
from ftpipe.training import metric_keys

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from transformers import TrainerCallback

    from ftpipe.results import EvaluateResult, FinetuneResult, RegisterModelResult

logger = logging.getLogger(__name__)

RUN_ID_TAG = "ftpipe.run_id"  # the pipeline run id, on the parent run and every nested one
NAME_TAG = "ftpipe.name"  # `pipeline-run` on the parent; `finetune` or `trial-<n>-rung-<r>` on a nested run
PARENT_NAME = "pipeline-run"
_PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
_HEALTH_TIMEOUT_S = 5.0
# A run's start time comes from the client that creates it: waiting this long after creating before choosing the
# oldest means two tasks choose differently only if one's create call took longer than this to reach the server.
_SETTLE_S = 1.0
_MAX_TAG_CHARS = 5000  # MLflow stores at most 8,000 characters per tag value
_MAX_PARAM_CHARS = 500  # ... and 6,000 per param value; longer settings are cut, with a mark


def experiment_name(config: PipelineConfig) -> str:
    """The MLflow experiment a run's tracking goes to."""
    return config.tracking.experiment or f"ftpipe-{config.registry.model_name}"


def run_name(trial: Mapping[str, Any] | None) -> str:
    """The nested run's name: ``trial-<n>-rung-<r>`` for a sweep trial (a ``PlannedTrial`` dict), else ``finetune``."""
    return "finetune" if trial is None else f"trial-{trial['trial']}-rung-{trial['rung']}"


class Tracker:
    """One step's connection to the tracking server: finds the parent run, and turns off at the first failure."""

    def __init__(self, config: PipelineConfig, run_id: str | None) -> None:
        self.uri = config.tracking.mlflow_uri
        self.experiment = experiment_name(config)
        self.run_id = run_id
        self.on = self.uri is not None
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None

    def call(self, what: str, action: Callable[[], Any]) -> Any:
        """``action()``, or None, with one warning for the step, once tracking has failed."""
        if not self.on:
            return None
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - tracking is besides the KFP UI: it must never fail a step
            self.on = False
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            logger.warning("MLflow tracking at %s is off for this step: %s failed: %s", self.uri, what, first)
            return None

    def client(self) -> MlflowClient:
        if self._client is None:
            _check_answers(self.uri)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = client.create_experiment(self.experiment)
                except Exception:  # another task created it first
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def parent_id(self) -> str | None:
        """The parent run of this pipeline run, found by its tag or created; None without a run id."""
        if self._parent_id is None and self.run_id is not None:
            self._parent_id = self.get_or_create(PARENT_NAME, {})
        return self._parent_id

    def get_or_create(self, name: str, tags: Mapping[str, str]) -> str:
        """The oldest run of this pipeline run named ``name``, created when there is none (see the module docstring)."""
        client, experiment_id = self.client(), self.experiment_id()
        if self.run_id is None:  # outside a pipeline run: a run of its own, nothing to group it with
            return client.create_run(experiment_id, run_name=name, tags={NAME_TAG: name, **tags}).info.run_id
        tags = {RUN_ID_TAG: self.run_id, NAME_TAG: name, **tags}
        found = self._find(name)
        if found:
            return found[0]
        created = client.create_run(experiment_id, run_name=self.run_id if name == PARENT_NAME else name, tags=tags)
        time.sleep(_SETTLE_S)  # let a run another task created at the same moment show up before choosing
        found = self._find(name) or [created.info.run_id]
        if found[0] != created.info.run_id:  # another task created it at the same time, and earlier: use theirs
            client.delete_run(created.info.run_id)
        return found[0]

    def _find(self, name: str) -> list[str]:
        """The ids of this pipeline run's live runs named ``name``, oldest first (start time, then id)."""
        runs = self.client().search_runs(
            [self.experiment_id()],
            filter_string=f"tags.`{RUN_ID_TAG}` = '{self.run_id}' AND tags.`{NAME_TAG}` = '{name}'",
            max_results=100,
        )
        return [run.info.run_id for run in sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))]


def _check_answers(uri: str) -> None:
    """Raise ConnectionError unless the HTTP tracking server answers at all (any HTTP status will do)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=_HEALTH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # it answered (behind a proxy, say, /health may be refused): the calls themselves will tell
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"the server does not answer ({reason})") from None


# -- finetune: one nested run per fine-tune -------------------------------------------------------


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def metrics_of_log(logs: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of one Trainer log entry.

    A training entry gives ``train_loss``, ``learning_rate``, ``grad_norm`` and ``epoch``; an evaluation
    ``validation_<metric>`` for each of the task's metrics and the loss (timings left out); the summary at the end
    of training ``train_runtime``, ``train_samples_per_second``, ... with its mean loss as ``train_loss_mean``.
    """
    validation = metric_keys(logs)
    metrics = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or key.startswith("eval_"):
            continue
        name = {"loss": "train_loss", "train_loss": "train_loss_mean"}.get(key, key)
        metrics[name] = float(value)
    metrics.update({f"validation_{name}": float(logs[key]) for key, name in validation.items()})
    return metrics


class TrainingRun:
    """The nested MLflow run of one fine-tune; every method is a no-op when tracking is off.

    The run is created when training begins, on the main process only (``state.is_world_process_zero``).
    """

    def __init__(
        self,
        config: PipelineConfig,
        run_id: str | None,
        trial: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.tracker = Tracker(config, run_id)
        self.name = run_name(trial)
        settings = config.training.model_dump(mode="json")
        if trial is not None:
            settings |= {f"trial.{key}": trial[key] for key in ("trial", "rung", "budget") if key in trial}
            settings |= {f"trial.params.{key}": value for key, value in (trial.get("params") or {}).items()}
        self.params = {key: _param_value(value) for key, value in {**settings, **(params or {})}.items()}
        self.tags = {"ftpipe.kind": "trial" if trial is not None else "finetune"}
        self.mlflow_run_id: str | None = None

    def callbacks(self) -> list[TrainerCallback]:
        """The Trainer callback that logs to this run: ``[callback]``, or ``[]`` when tracking is off."""
        return [_callback_class()(self)] if self.tracker.on else []

    def begin(self) -> None:
        """Create (or, in a retried task, find) the nested run and log the params."""

        def begin() -> None:
            client, parent = self.tracker.client(), self.tracker.parent_id()
            tags = {**self.tags, **({_PARENT_TAG: parent} if parent else {})}
            self.mlflow_run_id = self.tracker.get_or_create(self.name, tags)
            client.update_run(self.mlflow_run_id, status="RUNNING")
            self._log_batch(params=self.params)

        self.tracker.call("starting the run", begin)

    def log(self, logs: Mapping[str, Any], step: int) -> None:
        """Log one Trainer log entry's metrics at optimizer step ``step``."""
        metrics = metrics_of_log(logs)
        if self.mlflow_run_id is not None and metrics:
            self.tracker.call(f"logging step {step}", lambda: self._log_batch(metrics=metrics, step=step))

    def finish(self, result: FinetuneResult) -> None:
        """Log the model's and the reports' URIs and the best validation value; end the run as finished."""
        if self.mlflow_run_id is None:
            return

        def finish() -> None:
            tags = {
                "ftpipe.model_uri": result.model_uri,
                "ftpipe.train_log_uri": result.log_uri,
                "ftpipe.report_html_uri": result.report_html_uri,
            }
            metrics = {
                f"best_validation_{result.best_metric_name}": result.best_metric_value,
                "epochs_trained": result.epochs_trained,
            }
            self._log_batch(metrics=metrics, tags=tags, step=result.global_steps)
            self.tracker.client().set_terminated(self.mlflow_run_id, "FINISHED")

        self.tracker.call("ending the run", finish)

    def fail(self) -> None:
        """End the run as failed (training raised)."""
        if self.mlflow_run_id is not None:
            client = self.tracker.client
            self.tracker.call("ending the run", lambda: client().set_terminated(self.mlflow_run_id, "FAILED"))

    def _log_batch(self, **values: Any) -> None:
        _log_batch(self.tracker.client(), self.mlflow_run_id, **values)


def _log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    step: int = 0,
) -> None:
    """One ``log_batch`` call (each tag value cut to what MLflow stores)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, step) for key, value in (metrics or {}).items()],
        params=[Param(key, value) for key, value in (params or {}).items()],
        tags=[RunTag(key, value[:_MAX_TAG_CHARS]) for key, value in (tags or {}).items()],
    )


@functools.cache
def _callback_class() -> type[TrainerCallback]:
    """The Trainer callback type (built on first use: transformers loads only where training runs)."""
    from transformers import TrainerCallback

    class MlflowTracking(TrainerCallback):
        """Logs a fine-tune to its nested MLflow run (:class:`TrainingRun`)."""

        def __init__(self, run: TrainingRun) -> None:
            self.run = run

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.run.begin()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                self.run.log(logs, state.global_step)

    return MlflowTracking


# -- evaluate and register_model: on the parent run -------------------------------------------------


def log_evaluation(config: PipelineConfig, run_id: str | None, result: EvaluateResult) -> None:
    """Log the test metrics (``test_<metric>``) and the gate's verdict on the pipeline run's parent run."""
    tracker = Tracker(config, run_id)
    if not tracker.on or run_id is None:
        return
    metrics = {
        f"test_{name}": float(value)
        for name, value in result.metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
    if result.production is not None:
        metrics["production_version"] = float(result.production.version)
    tags = {
        "ftpipe.gate": "passed" if result.gate_passed else "failed",
        "ftpipe.gate_metric": result.gate_metric,
        "ftpipe.gate_reasons": "\n".join(result.reasons),
        "ftpipe.evaluated_model_uri": result.model_uri,
        "ftpipe.evaluation_report_uri": result.report_html_uri,
    }

    def log() -> None:
        parent = tracker.parent_id()
        _log_batch(tracker.client(), parent, metrics=metrics, tags=tags)
        tracker.client().set_terminated(parent, "FINISHED")  # what comes after (registering) only adds tags

    tracker.call("logging the evaluation", log)


def log_registration(
    config: PipelineConfig, run_id: str | None, result: RegisterModelResult, metrics: Mapping[str, float] | None = None
) -> None:
    """Tag the pipeline run's parent run with the registered version, and log ``metrics`` (the run's cost) on it."""
    tracker = Tracker(config, run_id)
    if not tracker.on or run_id is None:
        return
    tags = {
        "ftpipe.registered_model": result.model_name,
        "ftpipe.registered_version": str(result.version),
        "ftpipe.registered_model_uri": result.model_uri,
    }
    tracker.call(
        "logging the registration",
        lambda: _log_batch(tracker.client(), tracker.parent_id(), tags=tags, metrics=metrics),
    )
