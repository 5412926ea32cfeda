"""train_trial: fine-tune one trial of a sweep on its settings and budget, and record how it did.

The trial's config is the run's with the trial's settings applied (``ftpipe.sweep.apply_params``): its candidate
(or select_model's choice when the candidate is not swept) trains for its rung's share of the epochs, the full
epochs being ``training.epochs`` or what the recipe fits to the data. The record (``TrialRecord``) is written
create-only under the sweep prefix, so a retried task never overwrites another trial's.

A trial whose first validation metric is far worse than its rung's median so far stops there and is recorded as
pruned (``sweep.early_stop_ratio``; see ``ftpipe.training.callbacks.HopelessTrialStop``): it is never promoted.

A trial that meets a deterministic error (a sampled setting that does not fit the model, say) is recorded as
failed and the sweep goes on without it; a transient error fails the task, for KFP to retry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from ftpipe import sweep
from ftpipe.config import PipelineConfig
from ftpipe.errors import FtpipeError, PreconditionFailed
from ftpipe.results import CandidateScore, TrainTrialResult
from ftpipe.steps import finetune
from ftpipe.storage import Storage, join
from ftpipe.training.recipe import fit_epochs

logger = logging.getLogger(__name__)

LIBRARIES = finetune.LIBRARIES


def trial_uri(sweep_uri: str, trial: sweep.PlannedTrial) -> str:
    """Where one trial on one rung writes its model and reports."""
    return join(sweep_uri, f"rung-{trial.rung:02d}", f"trial-{trial.trial:05d}")


def _hopeless_trial_stop(config, storage, sweep_uri, trial, direction):
    from ftpipe.training.callbacks import HopelessTrialStop  # transformers loads with it: inside the task only

    ratio = config.sweep.early_stop_ratio if config.sweep else None
    return HopelessTrialStop(storage, sweep_uri, trial.rung, trial.trial, config.best_model_metric, direction, ratio)


def run(
    config: PipelineConfig,
    trial: sweep.PlannedTrial,
    train_uri: str,
    validation_uri: str,
    labels: Sequence[str],
    train_rows: int,
    selected: CandidateScore,
    sweep_uri: str,
    storage: Storage | None = None,
    run_id: str | None = None,
) -> TrainTrialResult:
    """Train ``trial`` and write its record; returns the record and the fine-tune's result (None if it failed)."""
    storage = storage or Storage(config.storage)
    direction = config.task.direction(config.best_model_metric)
    started = time.perf_counter()
    finetuned = None
    hopeless = _hopeless_trial_stop(config, storage, sweep_uri, trial, direction)
    try:
        at_full_budget = sweep.apply_params(config, trial.params, 1.0).training
        rows = finetune.train_rows_used(at_full_budget, train_rows)
        epochs, _ = fit_epochs(at_full_budget, train_rows=rows, batch_size=at_full_budget.batch_size)
        trial_config = sweep.apply_params(config, trial.params, trial.budget, epochs=epochs)
        candidate = trial.params.get("candidate", selected.name)
        epochs = trial_config.training.epochs
        logger.info("trial %d on rung %d: %s, %g epochs", trial.trial, trial.rung, trial.params, epochs)
        output_uri = trial_uri(sweep_uri, trial)
        finetuned = finetune.run(
            trial_config,
            train_uri,
            validation_uri,
            labels,
            str(candidate),
            output_uri,
            storage=storage,
            callbacks=[hopeless],
            run_id=run_id,  # tracking: the trial is a nested run of the pipeline run's
            trial=trial.model_dump(mode="json"),
        )
    except FtpipeError as error:
        if error.transient:
            raise
        logger.warning("trial %d failed, the sweep goes on without it: %s", trial.trial, error)
    value = finetuned.best_metric_value if finetuned else None
    complete = value is not None and not math.isnan(value)
    record = sweep.TrialRecord(
        trial=trial.trial,
        rung=trial.rung,
        params=trial.params,
        budget=trial.budget,
        state=(sweep.PRUNED if hopeless.stopped else sweep.COMPLETE) if complete else sweep.FAILED,
        metric=config.best_model_metric,
        value=value if complete else None,
        direction=direction,
        model_uri=finetuned.model_uri if finetuned else None,
        seconds=round(time.perf_counter() - started, 3),
        **finetune.held_accelerators(),  # a failed trial held them too
        tokens_seen=finetuned.tokens_seen if finetuned else None,
    )
    try:
        sweep.write_record(storage, sweep_uri, record)
    except PreconditionFailed:  # a retry of a task whose first attempt recorded the trial: that record stands
        logger.info("trial %d on rung %d was recorded before; keeping that record", trial.trial, trial.rung)
    return TrainTrialResult(record=record.model_dump(mode="json"), finetuned=finetuned)
