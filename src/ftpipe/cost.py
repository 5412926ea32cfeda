"""The cost line of a run: wall time per step, accelerator-hours requested, training tokens seen, an estimate.

register_model builds it from the earlier steps' results (:func:`step_seconds` and :func:`trainings` read them,
:func:`summarize` adds them up and prices them with ``config.cost``) into the registry entry's ``cost`` and the
model card's Cost section. Plain arithmetic over figures the steps measured: each step's ``wall_seconds``
(``ftpipe.task.run_step``), the GPUs each fine-tune held and the tokens its Trainer counted.

- Accelerator-hours: each fine-tune's wall seconds (its task's, model loading and upload included: the pod holds
  its GPUs all along) times the GPUs it held over every node, which on Kubernetes are the pod's request,
  ``cluster.gpu_count`` x ``cluster.nodes``; a sweep adds up its trials, failed ones included. On CPU: 0.
- The estimate prices only that training: accelerator-hours at ``cost.accelerator_hour_price`` of the GPU type,
  or a CPU fine-tune's hours per node at ``cost.cpu_hour_price``. The other steps' pods are listed by their wall
  time but not priced. A price missing for what the run used gives no estimate, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ftpipe.config import CostConfig
from ftpipe.results import CleanDataResult, FinetuneResult, SelectModelResult

SECONDS_PER_HOUR = 3600.0


def step_seconds(
    cleaned: CleanDataResult,
    selection: SelectModelResult,
    trained: FinetuneResult,
    data_check_seconds: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The wall seconds of each step before evaluate, in the order they ran.

    ``data_check_seconds``: fingerprint_data's and compare_data's, which have no result to carry them. A sweep's
    fine-tuning is its trials' (train_trial, summed) and choose_trial's; clean_data's are those of the run that
    cleaned the data when the task came from KFP's cache.
    """
    checks = data_check_seconds or {}
    seconds = {
        "fingerprint_data": checks.get("fingerprint_data"),
        "clean_data": cleaned.wall_seconds,
        "compare_data": checks.get("compare_data"),
        "select_model": selection.wall_seconds,
    }
    if trained.sweep:
        seconds["train_trial"] = round(sum(trial["seconds"] for trial in trained.sweep["trials"]), 3)
        seconds["choose_trial"] = trained.sweep.get("choose_seconds")
    else:
        seconds["finetune"] = trained.wall_seconds
    return {step: value for step, value in seconds.items() if value is not None}


def trainings(trained: FinetuneResult) -> list[dict[str, Any]]:
    """Each fine-tune of the run (one, or a sweep's trials): its wall seconds, GPUs held, nodes and tokens seen."""
    if trained.sweep:
        return [
            {
                "seconds": trial["seconds"],
                "accelerators": trial.get("accelerators", 0),
                "accelerator": trial.get("accelerator"),
                "nodes": 1,  # a trial trains in its own pod
                "tokens_seen": trial.get("tokens_seen"),
            }
            for trial in trained.sweep["trials"]
        ]
    # outside a pipeline task there is no wall time of the step: the training loop's is the closest lower bound
    seconds = trained.wall_seconds if trained.wall_seconds is not None else trained.train_seconds
    return [
        {
            "seconds": seconds,
            "accelerators": trained.accelerators,
            "accelerator": trained.accelerator,
            "nodes": trained.nodes,
            "tokens_seen": trained.tokens_seen,
        }
    ]


def summarize(
    cost: CostConfig,
    steps: Mapping[str, float],
    runs: Sequence[Mapping[str, Any]],
    node_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``cost`` object of a registry entry, its one-line summary under ``line``.

    Args:
        cost: the price table (``config.cost``).
        steps: wall seconds per step, in the order they ran.
        runs: the fine-tunes (:func:`trainings`).
        node_selector: ``config.cluster.node_selector``, whose values may name the GPU type to price.
    """
    gpu_runs = [run for run in runs if run["accelerators"]]
    accelerator_hours = sum(run["seconds"] * run["accelerators"] for run in runs) / SECONDS_PER_HOUR
    cpu_hours = sum(run["seconds"] * run["nodes"] for run in runs if not run["accelerators"]) / SECONDS_PER_HOUR
    counted = [run["tokens_seen"] for run in runs if run["tokens_seen"] is not None]
    accelerator = next((run["accelerator"] for run in gpu_runs if run["accelerator"]), None)
    priced_as, accelerator_price = _accelerator_price(cost, accelerator, node_selector or {})

    missing = []
    if gpu_runs and accelerator_price is None:
        missing.append(
            f"no price set for {cost.accelerator or accelerator or 'this GPU'} in cost.accelerator_hour_price"
        )
    if cpu_hours and cost.cpu_hour_price is None:
        missing.append("no price set for CPU training in cost.cpu_hour_price")
    if not runs:
        missing.append("no fine-tune recorded")
    estimate = None
    if not missing:
        estimate = accelerator_hours * (accelerator_price or 0.0) + cpu_hours * (cost.cpu_hour_price or 0.0)
    summary = {
        "step_seconds": dict(steps),
        "device": accelerator or ("GPU" if gpu_runs else "CPU"),
        "trainings": len(runs),
        "training_seconds": round(sum(run["seconds"] for run in runs), 3),
        "accelerators": max((run["accelerators"] for run in runs), default=0),  # per fine-tune, over its nodes
        "accelerator_hours": round(accelerator_hours, 6),
        "cpu_hours": round(cpu_hours, 6),
        "tokens_seen": sum(counted) if counted else None,
        "currency": cost.currency,
        "priced_as": priced_as,
        "accelerator_hour_price": accelerator_price,
        "cpu_hour_price": cost.cpu_hour_price,
        "estimated_cost": None if estimate is None else round(estimate, 6),
        "no_estimate": "; ".join(missing) or None,
    }
    return {**summary, "line": line(summary)}


def _accelerator_price(
    cost: CostConfig, accelerator: str | None, node_selector: Mapping[str, str]
) -> tuple[str | None, float | None]:
    """The key of the price table the run's GPUs are priced at, and the price (None, None: no price for them)."""
    keys = [cost.accelerator] if cost.accelerator else [accelerator, *node_selector.values()]
    key = next((key for key in keys if key in cost.accelerator_hour_price), None)
    return key, None if key is None else cost.accelerator_hour_price[key]


def line(summary: Mapping[str, Any]) -> str:
    """One line: accelerator-hours (or CPU), tokens seen, the estimate or why there is none, seconds per step."""
    runs = summary["trainings"]
    held = f"{summary['training_seconds']:,.1f} s of fine-tuning" + (f" over {runs} trials" if runs > 1 else "")
    if summary["accelerator_hours"]:
        usage = (
            f"{summary['accelerator_hours']:.4g} accelerator-hours requested "
            f"({summary['accelerators']} x {summary['device']}, {held})"
        )
    else:
        usage = f"0 accelerator-hours (CPU, {held})"
    tokens = summary["tokens_seen"]
    seen = "training tokens not counted" if tokens is None else f"{tokens:,} training tokens seen"
    if summary["estimated_cost"] is None:
        priced = summary["no_estimate"]
    else:
        rate = (
            f"{summary['accelerator_hour_price']:g} per accelerator-hour ({summary['priced_as']})"
            if summary["accelerator_hours"]
            else f"{summary['cpu_hour_price']:g} per CPU hour"
        )
        priced = f"estimated {summary['currency']} {_money(summary['estimated_cost'])} at {rate}"
    per_step = ", ".join(f"{step} {seconds:,.1f} s" for step, seconds in summary["step_seconds"].items())
    return f"{usage}; {seen}; {priced}; wall time per step: {per_step or 'not recorded'}."


def _money(amount: float) -> str:
    # two decimals, except below a cent, where they would read 0.00 for a short run that did cost something
    return f"{amount:,.2f}" if amount >= 0.01 or amount == 0 else f"{amount:.2g}"


def metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The figures as MLflow metrics of the pipeline run (what is not known left out)."""
    figures = {
        "cost_accelerator_hours": summary["accelerator_hours"],
        "cost_cpu_hours": summary["cpu_hours"],
        "cost_tokens_seen": summary["tokens_seen"],
        "cost_estimated": summary["estimated_cost"],
        **{f"wall_seconds_{step}": seconds for step, seconds in summary["step_seconds"].items()},
    }
    return {name: float(value) for name, value in figures.items() if value is not None}
