"""choose_trial: the sweep's winner, the best complete trial of the last rung on validation, and its report.

The test split is never looked at: evaluate scores the winner alone, and only the winner may be registered.
The report lists every trial (settings, budget, validation metric), the rungs and the importance of each swept
setting (fANOVA over rung 0); the result carries the same, for the registry entry and the model card.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftpipe import reports, sweep
from ftpipe.config import PipelineConfig
from ftpipe.errors import SweepError
from ftpipe.results import ChooseTrialResult, TrainTrialResult
from ftpipe.storage import Storage, join


def run(
    config: PipelineConfig, last_rung: Sequence[TrainTrialResult], sweep_uri: str, storage: Storage | None = None
) -> ChooseTrialResult:
    """The winner among the records under ``sweep_uri``; ``last_rung``: the last rung's trial results.

    Raises:
        SweepError: no trial of the last rung completed.
    """
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
    finetuned = finetuned.model_copy(
        update={
            "sweep": {
                "winner": best.model_dump(mode="json"),
                "trials": trials,
                "importances": importances,
                "space": space,
                "hyperparameters": hyperparameters,
            }
        }
    )
    document = _document(config, records, best, importances)
    uris = {"md": join(sweep_uri, "report.md"), "html": join(sweep_uri, "report.html")}
    storage.write_text(uris["md"], document.markdown(), content_type="text/markdown")
    storage.write_text(uris["html"], document.html(), content_type="text/html")
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
    return document
