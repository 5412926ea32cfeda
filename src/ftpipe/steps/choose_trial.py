"""choose_trial: the sweep's winner, the best complete trial of the last rung on validation, and its report.

The test split is never looked at: evaluate scores the winner alone, and only the winner may be registered.
The report lists every trial (settings, budget, validation metric), the rungs and the importance of each swept
setting (fANOVA over rung 0); the result carries the same, for the registry entry and the model card.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ftpipe import reports, sweep
from ftpipe.config import PipelineConfig
from ftpipe.errors import SweepError
from ftpipe.results import ChooseTrialResult, TrainTrialResult
from ftpipe.steps import REPORT_LIBRARIES
from ftpipe.storage import Storage, join

LIBRARIES = REPORT_LIBRARIES


def run(
    config: PipelineConfig, last_rung: Sequence[TrainTrialResult], sweep_uri: str, storage: Storage | None = None
) -> ChooseTrialResult:
    """The winner among the records under ``sweep_uri``; ``last_rung``: the last rung's trial results.

    Raises:
        SweepError: no trial of the last rung completed.
    """
    started = time.perf_counter()
    storage = storage or Storage(config.storage)
    records = sweep.read_records(storage, sweep_uri)
    best = sweep.winner(config, records)
    finetuned = next(
        (result.finetuned for result in last_rung if result.finetuned and result.finetuned.model_uri == best.model_uri),
        None,
    )
    if finetuned is None:
        raise SweepError(f"the winning trial {best.trial} is not among the last rung's results")
    importances = sweep.parameter_importances(config, records)
    space = {path: param.model_dump(mode="json") for path, param in config.sweep.space.items()}
    trials = [record.model_dump(mode="json") for record in records]
    hyperparameters = sweep.apply_params(config, best.params, 1.0).training.model_dump(mode="json")
    document = _document(config, records, best, importances)
    uris = {"md": join(sweep_uri, "report.md"), "html": join(sweep_uri, "report.html")}
    storage.write_text(uris["md"], document.markdown(), content_type="text/markdown")
    storage.write_text(uris["html"], document.html(), content_type="text/html")
    finetuned = finetuned.model_copy(
        update={
            "sweep": {
                "winner": best.model_dump(mode="json"),
                "trials": trials,
                "importances": importances,
                "space": space,
                "hyperparameters": hyperparameters,
                # this step's own time, for the cost line: the task writes `finetuned`, not this result
                "choose_seconds": round(time.perf_counter() - started, 3),
            }
        }
    )
    return ChooseTrialResult(
        winner=best.model_dump(mode="json"),
        finetuned=finetuned,
        trials=trials,
        importances=importances,
        space=space,
        report_html_uri=uris["html"],
        report_markdown_uri=uris["md"],
    )


def _document(
    config: PipelineConfig, records: list[sweep.TrialRecord], best: sweep.TrialRecord, importances: dict[str, float]
) -> reports.Document:
    metric = config.best_model_metric
    paths = list(config.sweep.space)
    document = reports.Document("Sweep")
    document.items(
        [
            f"winner: trial {best.trial} ({', '.join(f'{k} = {v}' for k, v in best.params.items())}), "
            f"validation {metric} {best.value:.4f}",
            f"sampler {config.sweep.sampler}, {len(config.sweep.rungs)} rung(s): "
            + ", ".join(f"{rung.trials} trials at {rung.budget:g} of the epochs" for rung in config.sweep.rungs),
            "the test split chose nothing: evaluate scores the winner alone",
        ]
    )
    rows = [
        [record.rung, record.trial, *(record.params.get(path, "-") for path in paths), f"{record.budget:g}",
         record.state, "-" if record.value is None else f"{record.value:.4f}", f"{record.seconds:.0f}"]
        for record in records
    ]
    document.section("Trials").table(["rung", "trial", *paths, "budget", "state", metric, "seconds"], rows)
    if importances:
        document.section("Importance of each setting (fANOVA, rung 0)").table(
            ["setting", "importance"], [[path, f"{value:.3f}"] for path, value in importances.items()]
        )
    scored = [record for record in records if record.value is not None]
    if scored:
        document.section(f"Validation {metric} against each setting")
        for path in paths:
            document.image(_setting_chart(scored, path, metric), f"validation {metric} against {path}")
    return document


def _setting_chart(records: list[sweep.TrialRecord], path: str, metric: str) -> str:
    """The trials' validation metric against one setting, a colour per rung (categories on their own ticks)."""
    figure, axes = reports.new_figure(5.0, 3.0)
    values = [record.params.get(path) for record in records]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None)
    categories = sorted({str(v) for v in values if v is not None}) if not numeric else []
    for rung in sorted({record.rung for record in records}):
        points = [(v, r.value) for v, r in zip(values, records, strict=True) if v is not None and r.rung == rung]
        if points:
            xs = [v if numeric else categories.index(str(v)) for v, _ in points]
            axes.scatter(xs, [value for _, value in points], label=f"rung {rung}", alpha=0.8)
    if numeric and path.endswith("learning_rate"):
        axes.set_xscale("log")
    if categories:
        axes.set_xticks(range(len(categories)), categories)
    axes.set_xlabel(path)
    axes.set_ylabel(f"validation {metric}")
    axes.grid(alpha=0.3)
    axes.legend()
    return reports.figure_to_data_uri(figure)
