"""The training recipe fitted to the data: what finetune uses where ``config.training`` leaves a setting unset.

One fixed recipe cannot suit 100 rows and 5 million. Measured on held-out TREC questions (see the README),
two epochs at 5e-5 left all-MiniLM-L6-v2 far below a TF-IDF baseline: the model had taken too few optimizer
steps to leave its starting point. So each unset setting is derived, and logged with its reason:

- ``max_length``: the length (in the candidate's own tokens) that 98% of the training texts fit in, rounded up
  to a multiple of 8, at least 32 and at most the model's window; most text sets are far shorter than 512, and
  attention costs grow with it.
- ``truncation``: where texts are longer than the model's window, the tasks that read a text as a whole cut its
  middle (``head_tail``: the first and last halves of the window), since the start and the end of a long text
  carry most of what decides its label (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": head
  plus tail beat head-only and tail-only on IMDb and Yelp); otherwise ``head`` (texts cut at the fitted length
  are only the longest 2%, whose heads suffice).
- ``epochs``: enough for at least :data:`MIN_STEPS` optimizer steps (small sets need more epochs, not fewer:
  Mosbach et al. 2021, "On the stability of fine-tuning BERT"), at least :data:`BASE_EPOCHS`, and at most
  :data:`MAX_STEPS` steps or :data:`MAX_EPOCHS` epochs; early stopping ends sooner when validation stops
  improving.
- ``learning_rate`` by model size: small encoders such as MiniLM (22M parameters) train well at 1e-4, base
  models (about 110M) at 5e-5, large ones at 2e-5 to 3e-5 (the values of the BERT, RoBERTa and MiniLM papers).
  With an adapter (LoRA, QLoRA) :data:`ADAPTER_LEARNING_RATE` whatever the size: only the small low-rank
  matrices (and the head) train, from zero, and need larger steps (Hu et al. 2021; Dettmers et al. 2023).
- ``warmup_ratio``: 6% of the steps (the RoBERTa recipe), 10% for models above 150M parameters.
- Evaluation (and so checkpoint) interval: every epoch while that gives at most :data:`MAX_EVALUATIONS`
  evaluations of epochs of at most :data:`MAX_EVAL_INTERVAL` steps; otherwise every ``total /
  MAX_EVALUATIONS`` steps (many short epochs of a small set), capped at :data:`MAX_EVAL_INTERVAL` steps (large
  sets, where an epoch is too long to wait for an early stop or a checkpoint).

Every explicit setting wins over its derived value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ftpipe.config import FinetuneConfig
from ftpipe.errors import ConfigError

MIN_STEPS = 500
BASE_EPOCHS = 3.0
MAX_EPOCHS = 50.0
MAX_STEPS = 30_000
MAX_EVALUATIONS = 10
MAX_EVAL_INTERVAL = 2_000
LENGTH_QUANTILE = 0.98
MIN_LENGTH = 32
# (largest parameter count, learning rate): the first row whose bound the model is under.
LEARNING_RATES = ((50e6, 1e-4), (150e6, 5e-5), (400e6, 3e-5), (math.inf, 2e-5))
ADAPTER_LEARNING_RATE = 2e-4


@dataclass(frozen=True)
class Recipe:
    """The settings finetune trains with, each from the config or derived (``reasons`` say which and why)."""

    learning_rate: float
    epochs: float
    warmup_steps: int
    max_length: int
    eval_steps: int | None  # None: evaluate (and save a checkpoint) once per epoch
    total_steps: int
    truncation: str = "head"
    reasons: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One ``setting = value (why)`` line per setting, for the log and the report."""
        values = {
            "learning_rate": f"{self.learning_rate:g}",
            "epochs": f"{self.epochs:g}",
            "warmup_steps": str(self.warmup_steps),
            "max_length": str(self.max_length),
            "truncation": self.truncation,
            "eval_steps": "every epoch" if self.eval_steps is None else str(self.eval_steps),
        }
        return [f"{name} = {value} ({self.reasons[name]})" for name, value in values.items()]


def fit_max_length(training: FinetuneConfig, token_lengths: Sequence[int], window: int) -> tuple[int, str]:
    """``training.max_length``, or the length the texts fit in (see the module docstring), and the reason."""
    if training.max_length is not None:
        return training.max_length, "set in the config"
    lengths = np.asarray(token_lengths)
    if len(lengths) == 0:
        return min(window, 128), "no training texts to measure"
    fits = int(np.quantile(lengths, LENGTH_QUANTILE, method="inverted_cdf"))  # the least length that many fit in
    chosen = min(window, max(MIN_LENGTH, math.ceil(fits / 8) * 8))
    longest = int(lengths.max())
    reason = f"{LENGTH_QUANTILE:.0%} of the training texts fit in {fits} tokens, the longest has {longest}"
    if chosen == window and fits > window:
        share = float((lengths > window).mean())
        reason += f"; the model's window is {window}: {share:.1%} of them are longer and are cut (truncation)"
    return chosen, reason


def fit_truncation(
    training: FinetuneConfig, token_lengths: Sequence[int], window: int, *, head_tail: bool
) -> tuple[str, str]:
    """``training.truncation``, or how texts longer than the model's ``window`` are cut (see the module
    docstring), and the reason. ``head_tail``: whether the task may cut a text's middle
    (``Task.head_tail_truncation``).

    Raises:
        ConfigError: ``head_tail`` is asked of a task that cannot cut a text's middle.
    """
    if training.truncation == "head_tail" and not head_tail:
        raise ConfigError(
            "training.truncation: head_tail cuts a text's middle, which this task cannot do (each token is tagged, "
            "or the task cuts its own inputs); use head or auto"
        )
    if training.truncation != "auto":
        return training.truncation, "set in the config"
    if not head_tail:
        return "head", "this task keeps each text's first tokens"
    longer = int((np.asarray(token_lengths, dtype=np.int64) > window).sum())
    if longer:
        return "head_tail", f"{longer} training texts are longer than the model's window of {window} tokens"
    return "head", f"every training text fits the model's window of {window} tokens"


def _learning_rate(training: FinetuneConfig, num_parameters: int) -> tuple[float, str]:
    if training.learning_rate is not None:
        return training.learning_rate, "set in the config"
    if training.adapter != "none":
        return ADAPTER_LEARNING_RATE, f"for {training.adapter} adapters (only they and the head train)"
    rate = next(rate for bound, rate in LEARNING_RATES if num_parameters <= bound)
    return rate, f"for a model of {num_parameters / 1e6:.0f}M parameters"


def fit_epochs(training: FinetuneConfig, *, train_rows: int, batch_size: int) -> tuple[float, str]:
    """``training.epochs``, or enough of them for ``train_rows`` rows (see the module docstring), and the reason."""
    steps_per_epoch = _steps_per_epoch(training, train_rows, batch_size)
    if training.epochs is not None:
        return training.epochs, "set in the config"
    wanted = max(BASE_EPOCHS, MIN_STEPS / steps_per_epoch)
    cap = min(MAX_EPOCHS, MAX_STEPS / steps_per_epoch)
    if wanted > cap:
        limit = f"{MAX_EPOCHS:g} epochs" if cap == MAX_EPOCHS else f"{MAX_STEPS} optimizer steps"
        epochs, why = max(0.01, round(cap, 2)), f"at most {limit} at {steps_per_epoch} steps per epoch"
    elif wanted > BASE_EPOCHS:
        epochs, why = math.ceil(wanted), f"at least {MIN_STEPS} optimizer steps at {steps_per_epoch} per epoch"
    else:
        epochs, why = BASE_EPOCHS, f"{BASE_EPOCHS:g} epochs of {steps_per_epoch} steps give at least {MIN_STEPS}"
    return float(epochs), why + "; early stopping may end sooner"


def _steps_per_epoch(training: FinetuneConfig, train_rows: int, batch_size: int) -> int:
    return max(1, math.ceil(train_rows / (batch_size * training.gradient_accumulation_steps)))


def derive(
    training: FinetuneConfig,
    *,
    train_rows: int,
    batch_size: int,
    num_parameters: int,
    max_length: tuple[int, str],
    truncation: tuple[str, str] = ("head", "texts keep their first tokens"),
) -> Recipe:
    """The recipe for ``train_rows`` rows, trained in batches of ``batch_size`` (per device).

    ``max_length``: :func:`fit_max_length`'s answer (the GPU batch size depends on it, so it comes first);
    ``truncation``: :func:`fit_truncation`'s.
    """
    max_length, length_reason = max_length
    learning_rate, rate_reason = _learning_rate(training, num_parameters)
    steps_per_epoch = _steps_per_epoch(training, train_rows, batch_size)
    epochs, epochs_reason = fit_epochs(training, train_rows=train_rows, batch_size=batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))

    if training.warmup_ratio is not None:
        warmup_ratio, warmup_reason = training.warmup_ratio, "set in the config"
    else:
        warmup_ratio = 0.1 if num_parameters > 150e6 else 0.06
        warmup_reason = f"{warmup_ratio:.0%} of {total_steps} steps, for a model of {num_parameters / 1e6:.0f}M"
    warmup_steps = math.ceil(warmup_ratio * total_steps)

    evaluations = total_steps / steps_per_epoch
    if training.eval_steps is not None:
        eval_steps, eval_reason = training.eval_steps, "set in the config"
    elif evaluations <= MAX_EVALUATIONS and steps_per_epoch <= MAX_EVAL_INTERVAL:
        eval_steps, eval_reason = None, f"{math.ceil(evaluations)} epochs of {steps_per_epoch} steps"
    else:
        eval_steps = min(MAX_EVAL_INTERVAL, math.ceil(total_steps / MAX_EVALUATIONS))
        eval_reason = f"{total_steps} steps in {evaluations:g} epochs: about {MAX_EVALUATIONS} evaluations"
        if eval_steps == MAX_EVAL_INTERVAL:
            eval_reason = f"epochs of {steps_per_epoch} steps are long: every {MAX_EVAL_INTERVAL} steps at most"
    return Recipe(
        learning_rate=learning_rate,
        epochs=epochs,
        warmup_steps=warmup_steps,
        max_length=max_length,
        eval_steps=eval_steps,
        total_steps=total_steps,
        truncation=truncation[0],
        reasons={
            "learning_rate": rate_reason,
            "epochs": epochs_reason,
            "warmup_steps": warmup_reason,
            "max_length": length_reason,
            "truncation": truncation[1],
            "eval_steps": eval_reason,
        },
    )
