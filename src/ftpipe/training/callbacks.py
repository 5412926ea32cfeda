"""Trainer callbacks of the fine-tune step: the checkpoint mirror, periodic checkpoints, a record of how far
training got, concise progress lines, and the early stop of a hopeless sweep trial."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftpipe.errors import PreconditionFailed, StorageError
from ftpipe.storage import Storage, join
from ftpipe.training import launch, metric_keys
from ftpipe.training.checkpoints import MIRROR_MARKER, PROGRESS_RECORD, delete_prefix, mirrored_checkpoints

logger = logging.getLogger("ftpipe.steps.finetune")  # the step's log, where users look for progress


class CheckpointMirror(TrainerCallback):
    """After each save, copy the new checkpoint to ``prefix_uri`` and drop the ones the Trainer rotated away."""

    def __init__(self, storage: Storage, prefix_uri: str) -> None:
        self.storage = storage
        self.prefix_uri = prefix_uri

    def on_save(self, args, state, control, **kwargs):
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        target = join(self.prefix_uri, local.name)
        if not launch.on_first_node():  # its RNG state is on this node's disk only
            rng_state = local / f"rng_state_{launch.rank()}.pth"
            if rng_state.is_file():
                self.storage.upload_file(rng_state, join(target, rng_state.name))
        launch.barrier()  # every process has written its part of the checkpoint (its RNG state) before the upload
        if not state.is_world_process_zero or not local.is_dir():
            return
        started = time.perf_counter()
        self.storage.upload_dir(local, target)
        marker = {"global_step": state.global_step, "epoch": state.epoch}
        self.storage.write_json(join(target, MIRROR_MARKER), marker)
        kept = {path.name for path in Path(args.output_dir).glob("checkpoint-*")}
        for step, uri in mirrored_checkpoints(self.storage, self.prefix_uri).items():
            if f"checkpoint-{step}" not in kept:
                delete_prefix(self.storage, uri, first=MIRROR_MARKER)
        logger.info("mirrored %s to %s (%.1f s)", local.name, target, time.perf_counter() - started)

class PeriodicCheckpoint(TrainerCallback):
    """Save a checkpoint every ``every_steps`` optimizer steps or ``every_minutes`` minutes, whichever comes first.

    The evaluations' own saves count: the clock and the step count restart at each save. With several processes
    the decision is shared (any one due saves all), since a save is collective.
    """

    def __init__(self, every_steps: int | None, every_minutes: float | None) -> None:
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self._saved_at = time.monotonic()
        self._saved_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._saved_at, self._saved_step = time.monotonic(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            return
        due = bool(self.every_steps and state.global_step - self._saved_step >= self.every_steps) or bool(
            self.every_seconds and time.monotonic() - self._saved_at >= self.every_seconds
        )
        if launch.any_process(due):
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self._saved_at, self._saved_step = time.monotonic(), state.global_step


class SigtermCheckpoint(TrainerCallback):
    """On SIGTERM (a node drain, a spot preemption), save a checkpoint at the end of the current step and stop.

    The step's own save mirrors it to S3 as any other (CheckpointMirror.on_save), and the stop comes only after it,
    so the checkpoint does not read as "training had stopped" (which a resumed run honours: early stopping). With
    several processes the decision is shared, so every rank saves and stops at the same step. transformers'
    ``enable_jit_checkpoint`` does the same with a timer per process, which can leave the ranks at different steps,
    and saves without the Trainer's on_save, so nothing would mirror the checkpoint.

    ``stopped_at`` is the step it stopped at (None: no SIGTERM, or one that came after the last step).
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.stopped_at: int | None = None
        self._previous: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # where Python lets a signal be caught
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.requested.set()

    def on_step_end(self, args, state, control, **kwargs):
        if launch.any_process(self.requested.is_set()):
            control.should_save = True
            self.stopped_at = state.global_step

    def on_save(self, args, state, control, **kwargs):
        if self.stopped_at is not None:
            control.should_training_stop = True
            logger.info("SIGTERM: checkpoint-%d saved; training stops for the retry to resume", self.stopped_at)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # a stop mid-epoch ends the epoch: no evaluation or save there, no time left
            control.should_evaluate = control.should_save = False

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class ProgressRecord(TrainerCallback):
    """Leave the newest optimizer step reached in S3 every second or so, so that a resumed run can say how many steps
    it redoes (those between its checkpoint and where the lost pod got to).

    A thread of the main process writes it, so that training never waits on S3 for it; a failed write is only
    logged, since the record is for the report and training should not stop for it.
    """

    def __init__(self, storage: Storage, prefix_uri: str, every_seconds: float = 1.0) -> None:
        self.storage = storage
        self.uri = join(prefix_uri, PROGRESS_RECORD)
        self.every_seconds = every_seconds
        self._reached: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._stop.clear()
            self._writer = threading.Thread(target=self._write_now_and_then, name="ftpipe-progress", daemon=True)
            self._writer.start()

    def on_step_end(self, args, state, control, **kwargs):
        self._reached = {"global_step": state.global_step, "epoch": state.epoch}

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Stop the writer (also when training ended in an exception, which skips on_train_end)."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def _write_now_and_then(self) -> None:
        written = None
        while not self._stop.wait(self.every_seconds):
            reached = self._reached
            if reached is None or reached == written:
                continue
            try:
                self.storage.write_json(self.uri, reached)
                written = reached
            except StorageError as error:
                logger.warning("could not record progress at step %d: %s", reached["global_step"], error)


class ProgressLog(TrainerCallback):
    """Concise progress lines in the step's log (the Trainer's own progress bar is turned off), from the main
    process only: every rank's lines would be the same."""

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        if not state.is_world_process_zero:
            return
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
        if not state.is_world_process_zero:
            return
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
        if not state.is_world_process_zero:
            return
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
        if self.evaluated or value is None or self.ratio is None:
            return
        self.evaluated = True
        others: list[float] = []
        hopeless = False
        if state.is_world_process_zero:
            uri = sweep.first_evaluation_uri(self.sweep_uri, self.rung, self.trial)
            try:
                self.storage.write_json(uri, {"trial": self.trial, "value": float(value)}, if_none_match=True)
            except PreconditionFailed:  # a retried trial: its first attempt's metric stands
                pass
            rung = sweep.first_evaluations(self.storage, self.sweep_uri, self.rung)
            others = [metric for trial, metric in rung.items() if trial != self.trial]
            hopeless = sweep.should_stop_early(float(value), others, self.direction, self.ratio)
        if launch.any_process(hopeless):  # every process stops, or none does
            control.should_training_stop = True
            self.stopped = True
            logger.info(
                "trial %d stops: first validation %s %.4f is far from its rung's median of %d other trial(s)",
                self.trial, self.metric, value, len(others),
            )
