"""Trainer callbacks of the fine-tune step: the checkpoint mirror, concise progress lines, and the early stop of
a hopeless sweep trial."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from ftpipe.errors import PreconditionFailed
from ftpipe.storage import Storage, join
from ftpipe.training import metric_keys
from ftpipe.training.checkpoints import MIRROR_MARKER, delete_prefix, mirrored_checkpoints

logger = logging.getLogger("ftpipe.steps.finetune")  # the step's log, where users look for progress


class CheckpointMirror(TrainerCallback):
    """After each save, copy the new checkpoint to ``prefix_uri`` and drop the ones the Trainer rotated away."""

    def __init__(self, storage: Storage, prefix_uri: str) -> None:
        self.storage = storage
        self.prefix_uri = prefix_uri

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not local.is_dir():
            return
        started = time.perf_counter()
        target = join(self.prefix_uri, local.name)
        self.storage.upload_dir(local, target)
        marker = {"global_step": state.global_step, "epoch": state.epoch}
        self.storage.write_json(join(target, MIRROR_MARKER), marker)
        kept = {path.name for path in Path(args.output_dir).glob("checkpoint-*")}
        for step, uri in mirrored_checkpoints(self.storage, self.prefix_uri).items():
            if f"checkpoint-{step}" not in kept:
                delete_prefix(self.storage, uri, first=MIRROR_MARKER)
        logger.info("mirrored %s to %s (%.1f s)", local.name, target, time.perf_counter() - started)

class ProgressLog(TrainerCallback):
    """Concise progress lines in the step's log (the Trainer's own progress bar is turned off)."""

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        resumed = f", resuming at step {state.global_step}" if state.global_step else ""
        logger.info(
            "training %d steps over %g epoch(s), batch %d x %d accumulation%s",
            state.max_steps,
            args.num_train_epochs,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            resumed,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        elapsed = time.perf_counter() - self._started
        if "loss" in logs:
            logger.info(
                "step %d/%d  epoch %.2f  loss %.4f  lr %.2e  %.0f s",
                state.global_step,
                state.max_steps,
                state.epoch or 0.0,
                logs["loss"],
                logs.get("learning_rate", float("nan")),
                elapsed,
            )
        elif "eval_loss" in logs:
            scores = "  ".join(f"{name} {logs[key]:.4f}" for key, name in metric_keys(logs).items())
            logger.info("epoch %.2f validation: %s", state.epoch or 0.0, scores)

    def on_train_end(self, args, state, control, **kwargs):
        logger.info(
            "training ended at step %d/%d, epoch %.2f, best %s %s",
            state.global_step,
            state.max_steps,
            state.epoch or 0.0,
            args.metric_for_best_model,
            state.best_metric,
        )


class HopelessTrialStop(TrainerCallback):
    """Stop a sweep trial at its first validation when it is far worse than its rung's other trials so far.

    The trial leaves its first metric under the sweep prefix (create-only) and reads those the rung's other trials
    left; ``ftpipe.sweep.should_stop_early`` decides with ``sweep.early_stop_ratio``. Later evaluations are not
    looked at: a trial that starts well enough trains to its budget, where early stopping proper takes over.
    """

    def __init__(
        self, storage: Storage, sweep_uri: str, rung: int, trial: int, metric: str, direction: str, ratio: float | None
    ) -> None:
        self.storage, self.sweep_uri, self.rung, self.trial = storage, sweep_uri, rung, trial
        self.metric, self.direction, self.ratio = metric, direction, ratio
        self.evaluated = False
        self.stopped = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        from ftpipe import sweep

        value = (metrics or {}).get(f"eval_{self.metric}")
        if self.evaluated or value is None or self.ratio is None or not state.is_world_process_zero:
            return
        self.evaluated = True
        uri = sweep.first_evaluation_uri(self.sweep_uri, self.rung, self.trial)
        try:
            self.storage.write_json(uri, {"trial": self.trial, "value": float(value)}, if_none_match=True)
        except PreconditionFailed:  # a retried trial: its first attempt's metric stands
            pass
        rung = sweep.first_evaluations(self.storage, self.sweep_uri, self.rung)
        others = [metric for trial, metric in rung.items() if trial != self.trial]
        if sweep.should_stop_early(float(value), others, self.direction, self.ratio):
            control.should_training_stop = True
            self.stopped = True
            logger.info(
                "trial %d stops: first validation %s %.4f is far from its rung's median of %d other trial(s)",
                self.trial, self.metric, value, len(others),
            )
