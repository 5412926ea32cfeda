"""Training machinery shared by every task: checkpoints and their S3 mirror, Trainer callbacks."""

from __future__ import annotations

from typing import Any


def metric_keys(entry: dict[str, Any]) -> dict[str, str]:
    """``{log key: metric name}`` of the validation metrics in one evaluation's log entry (the task's, and loss)."""
    timing = ("runtime", "samples_per_second", "steps_per_second")
    return {
        key: key.removeprefix("eval_")
        for key, value in entry.items()
        if key.startswith("eval_") and key.removeprefix("eval_") not in timing and isinstance(value, int | float)
    }
