"""evaluate: test metrics of the fine-tuned model, with intervals and baselines, and the gate that decides whether it
may be registered.

Run it as ``run(config, test_uri, labels, model_uri, output_uri, train_uri=...)``. The task (``ftpipe.tasks``)
predicts the test split and computes its metrics (text_classification: accuracy, macro-F1 and per-class
precision/recall/F1/support with scikit-learn; regression: RMSE, MAE, Pearson, Spearman; ...). When the
registry's ``production`` alias of ``config.registry.model_name`` is set, that version is scored on the very same
rows, and so are the task's baselines (``Task.baselines``): a constant one (the majority class of train, its mean,
``O`` for every word, the most frequent completion) and, for classification and regression, TF-IDF word 1-2 grams
and a linear model trained on the train split ``train_uri``.

Every test metric gets a 95% percentile interval from ``gate.bootstrap_resamples`` bootstrap resamples of the test
rows (seeded by ``gate.bootstrap_seed``; ``Task.resampled_metrics`` scores all resamples at once from per-row
counts). The model, production and the baselines are scored on the same resamples, so that each difference has a
*paired* interval: the noise that the test rows share cancels out.

The gate passes when every check passes:

- each ``gate.thresholds`` bound on the point estimate: a floor for a metric where higher is better, a ceiling where
  lower is;
- the constant baseline, on the gate metric (``gate.metric``, else the task's primary metric): the improvement
  over it and the lower bound of its paired interval both above 0. A model that does not beat "always the same
  answer" by more than the noise has learned nothing this test split can show, production model or not;
- the linear baseline, on the gate metric: the improvement above 0 (its interval is reported, not required: a
  fine-tuned model is often only a little better than TF-IDF, which a few hundred test rows cannot resolve);
  ``gate.linear_baseline: report`` turns this check into a note;
- with a production model: "no worse", the lower bound of the paired interval of the improvement over production
  at least ``-gate.tolerance``, on the task's comparison metric, in the metric's direction.

When the production model's outputs differ from the new one's (a label added, removed or renamed), the task
says which metric stays comparable (text_classification: accuracy over this test split, predictions matched
by label name, a model being wrong on every row whose label it cannot predict), and the reasons say so.

Reported beside the gate, never required by it: where the task predicts probabilities (``Task.reliability``), the
expected calibration error of its scores (``metrics["ece"]``, 15 equal-width bins; top-label confidence for one
label per text, every (text, label) score for multi-label) with its reliability diagram (``metrics["calibration"]``);
and the primary metric per slice of the test rows (``metrics["slices"]``, ``Task.slice_metrics``: by text length at
its quartiles), for the model and production alike. The per-label numbers are the task's own (``per_class``).

Every check, passed or failed, is one line in ``reasons`` with its numbers (``passed: ...``,
``failed: ...``, or ``note: ...`` for context); register_model stores them, the intervals and the baselines'
scores in the registry entry. Under ``output_uri`` it writes ``report.html`` (the task's pictures and tables, the
verdict, the baselines beside the model), ``report.md``, ``report.json`` (this result) and ``predictions.parquet``
(one row per test row, with the production model's and the baselines' predictions).
"""

from __future__ import annotations

import gc
import io
import logging
import math
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftpipe import models, reports, tracking
from ftpipe.config import PipelineConfig
from ftpipe.errors import DataError, ModelError
from ftpipe.registry import ModelRegistry
from ftpipe.results import BaselineScore, EvaluateResult, ProductionComparison
from ftpipe.steps import MODEL_LIBRARIES, REPORT_LIBRARIES, TOKENIZER_LIBRARIES
from ftpipe.steps.select_model import read_checked_split
from ftpipe.storage import Storage, join
from ftpipe.tasks import Task, get_task
from ftpipe.tasks.base import CONSTANT, Baseline, first_line
from ftpipe.tasks.bootstrap import percentile_interval, resample_chunks
from ftpipe.tasks.calibration import BINS
from ftpipe.training import adapters

logger = logging.getLogger(__name__)

LIBRARIES = (*MODEL_LIBRARIES, *TOKENIZER_LIBRARIES, "sklearn.metrics", *REPORT_LIBRARIES)

PRODUCTION_ALIAS = "production"
MODEL = "model"  # the new model's key among the prediction sets that are bootstrapped together
_EPSILON = 1e-9  # float slack so that "equal to the threshold" passes

__all__ = ["BaselineScore", "EvaluateResult", "ProductionComparison", "bootstrap", "gate_decision", "run"]


def _predict(task: Task, model_dir: str, frame: pd.DataFrame, storage: Storage) -> tuple[pd.DataFrame, list[str]]:
    """The task's predictions of a saved model (an adapter-only one merged onto its base), and its outputs."""
    with adapters.loadable(model_dir, storage) as plain_dir:
        predictions = task.predict(plain_dir, frame)
        gc.collect()  # the model is gone: free its memory before the next one loads
        return predictions, task.model_labels(plain_dir)


def _scalars(task: Task, metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(metrics[name]) for name in task.settings.metrics if name in metrics}


def bootstrap(
    task: Task,
    test: pd.DataFrame,
    prediction_sets: dict[str, pd.DataFrame],
    labels: Sequence[str],
    resamples: int,
    seed: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Every metric of every prediction set on the same ``resamples`` bootstrap resamples of the test rows.

    Returns ``{set name: {metric: values per resample}}``. The resamples are drawn once (``seed``) and shared by
    all sets, so that the difference of two sets on one resample is a paired difference.
    """
    parts: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in prediction_sets}
    for weights in resample_chunks(len(test), resamples, seed):
        for name, predictions in prediction_sets.items():
            for metric, values in task.resampled_metrics(test, predictions, labels, weights).items():
                parts[name].setdefault(metric, []).append(np.asarray(values, dtype=np.float64))
    return {
        name: {metric: np.concatenate(chunks) for metric, chunks in metrics.items()} for name, metrics in parts.items()
    }


def _intervals(resampled: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {metric: list(percentile_interval(values)) for metric, values in resampled.items()}


def _delta_intervals(new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> dict[str, list[float]]:
    with np.errstate(invalid="ignore"):  # inf - inf (a model lacking a target on both sides) is NaN: left out
        return {metric: list(percentile_interval(new[metric] - old[metric])) for metric in new if metric in old}


def _improvement(task: Task, metric: str, delta: float, interval: Sequence[float] | None) -> tuple[float, float, float]:
    """(point, low, high) of the improvement of the new model in the metric's direction (delta = new - other)."""
    low, high = interval if interval else (delta, delta)
    if task.higher_is_better(metric):
        return delta, low, high
    return -delta, -high, -low


def _interval_text(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]"


def gate_decision(
    config: PipelineConfig,
    task: Task,
    metrics: dict[str, Any],
    production: ProductionComparison | None,
    labels: Sequence[str] = (),
    baselines: Sequence[BaselineScore] = (),
) -> tuple[bool, list[str]]:
    """Apply the gate; returns (passed, one line per check with its numbers).

    The checks, in order: each ``gate.thresholds`` bound (on the point estimate); each baseline, on the gate
    metric (a constant baseline: the improvement and the lower bound of its 95% paired interval both above 0; a
    linear one: the improvement above 0, or a note under ``gate.linear_baseline: report``); production, on its
    compared metric (the lower bound of the paired 95% interval of the improvement at least ``-gate.tolerance``).
    """
    gate, model_name = config.gate, config.registry.model_name
    reasons: list[str] = []
    passed = True

    def check(ok: bool, text: str) -> None:
        nonlocal passed
        passed = passed and ok
        reasons.append(("passed: " if ok else "failed: ") + text)

    for metric, bound in gate.thresholds.items():
        value = float(metrics[metric])
        if task.higher_is_better(metric):
            ok = value + _EPSILON >= bound
            check(ok, f"{metric} {value:.4f} {'>=' if ok else '<'} threshold {bound:.4f}")
        else:
            ok = value - _EPSILON <= bound
            check(ok, f"{metric} {value:.4f} {'<=' if ok else '>'} threshold {bound:.4f}")

    metric = config.gate_metric
    for baseline in baselines:
        new, theirs = float(metrics[metric]), float(baseline.metrics.get(metric, float("nan")))
        head = f"{metric} {new:.4f} vs the {baseline.name} baseline {theirs:.4f} ({baseline.description})"
        if not math.isfinite(theirs):
            reasons.append(f"note: {head}: the baseline has no {metric}, not compared")
            continue
        point, low, high = _improvement(task, metric, new - theirs, baseline.delta_intervals.get(metric))
        numbers = f"improvement {point:+.4f}, 95% paired interval {_interval_text(low, high)}"
        if baseline.kind == CONSTANT:
            # A constant answer has learned nothing but the targets' distribution: the model must beat it by more
            # than the noise of this test split, not only on the point estimate.
            ok = point > _EPSILON and low > 0
            check(ok, f"{head}: {numbers}{'' if ok else '; needs the improvement and its lower bound above 0'}")
            continue
        # A linear model on TF-IDF is often nearly as good: requiring a significant win over it on a few hundred
        # test rows would reject models that are as good or better; the point estimate must be better.
        if low > 0:
            significance = "significantly better"
        elif high < 0:
            significance = "significantly worse"
        else:
            significance = "not significant on these rows"
        ok = point > _EPSILON
        text = f"{head}: {numbers} ({significance})"
        if baseline.required:
            check(ok, f"{text}{'' if ok else '; needs an improvement above 0'}")
        else:
            reasons.append(f"note: {text}; reported only (gate.linear_baseline: report)")

    if production is None:
        reasons.append(f"note: no production version of '{model_name}' (alias '{PRODUCTION_ALIAS}' unset)")
        return passed, reasons
    metric = production.compared_metric
    if not production.same_labels:
        reasons.append(
            f"note: production v{production.version} has outputs {production.labels}, this model "
            f"{list(labels)}: compared on {metric} over this test split (a model is wrong on "
            f"every row whose label it cannot predict), not on {config.gate_metric}"
        )
    new, old = float(metrics[metric]), float(production.metrics[metric])
    point, low, high = _improvement(task, metric, new - old, production.delta_intervals.get(metric))
    # "No worse": the lower bound of the paired improvement is at least -tolerance. Identical predictions (an
    # interval of exactly 0) pass with tolerance 0; a merely equal model needs a tolerance to pass.
    ok = low + _EPSILON >= -gate.tolerance if math.isfinite(low) else point + _EPSILON >= -gate.tolerance
    check(
        ok,
        f"{metric} {new:.4f} vs production v{production.version} {old:.4f}: improvement {point:+.4f}, 95% paired "
        f"interval {_interval_text(low, high)}; lower bound {low:+.4f} {'>=' if ok else '<'} -{gate.tolerance:.4f} "
        "(minus gate.tolerance)",
    )
    return passed, reasons


def run(
    config: PipelineConfig,
    test_uri: str,
    labels: Sequence[str],
    model_uri: str,
    output_uri: str,
    storage: Storage | None = None,
    registry: ModelRegistry | None = None,
    run_id: str | None = None,
    train_uri: str | None = None,
) -> EvaluateResult:
    """Score ``model_uri`` on the test split, compare with production and the baselines, apply the gate, report.

    ``train_uri`` is the cleaned train split the baselines are fitted on; without it the constant baseline is
    fitted on the test rows (harder to beat) and a required linear baseline fails the gate, as it cannot be
    trained.

    With ``tracking.mlflow_uri`` set, the test metrics and the verdict go to the MLflow run of pipeline run
    ``run_id`` too (``ftpipe.tracking``; nothing is tracked when ``run_id`` is None).

    Raises:
        DataError: the test or train split is unreadable or does not fit ``labels``.
        ModelError: a model cannot be loaded, or the new model's outputs are not ``labels``.
        RegistryError: the production version cannot be read from the registry.
    """
    storage = storage or Storage(config.storage)
    registry = registry or ModelRegistry(storage, config.registry.uri)
    task = get_task(config)
    gate = config.gate
    labels = [str(label) for label in labels]
    if not labels or len(set(labels)) != len(labels):
        raise DataError(f"need distinct model outputs, got {labels}")
    test = read_checked_split(storage, test_uri, "test", task, labels)
    train = read_checked_split(storage, train_uri, "train", task, labels) if train_uri else None

    logger.info("evaluating %s on %d test rows", model_uri, len(test))
    predictions, new_labels = _predict(task, models.resolve_source(model_uri, storage), test, storage)
    if set(new_labels) != set(labels):
        raise ModelError(f"the model at {model_uri} predicts {new_labels}, but the test split's outputs are {labels}")
    metrics = _with_details(task, test, predictions, labels, new_labels)
    matrix = task.confusion(test, predictions, labels)
    table = test.assign(**task.prediction_columns(predictions))

    prediction_sets = {MODEL: predictions}
    found = registry.resolve_alias(config.registry.model_name, PRODUCTION_ALIAS)
    if found is not None:
        logger.info("scoring production version %d of %s on the same rows", found.version, found.name)
        with tempfile.TemporaryDirectory(prefix="ftpipe-production-") as scratch:
            registry.download(found.name, found.version, scratch)
            prod_predictions, prod_labels = _predict(task, scratch, test, storage)
        prediction_sets[PRODUCTION_ALIAS] = prod_predictions
        prod_columns = task.prediction_columns(prod_predictions)
        table = table.assign(**{f"production_{name}": values for name, values in prod_columns.items()})
    baselines = _baselines(task, train, test, labels)
    prediction_sets |= {f"baseline:{baseline.name}": baseline.predictions for baseline in baselines}
    resampled = bootstrap(task, test, prediction_sets, labels, gate.bootstrap_resamples, gate.bootstrap_seed)

    new_scalars = _scalars(task, metrics)
    production = None
    if found is not None:
        prod_metrics = _with_details(task, test, prediction_sets[PRODUCTION_ALIAS], labels, prod_labels)
        prod_scalars = _scalars(task, prod_metrics)
        same = set(prod_labels) == set(labels)
        production = ProductionComparison(
            version=found.version,
            model_uri=found.model_uri,
            labels=prod_labels,
            same_labels=same,
            compared_metric=task.comparison_metric(config.gate_metric, same),
            metrics=prod_metrics,
            delta={key: new_scalars[key] - prod_scalars[key] for key in new_scalars if key in prod_scalars},
            intervals=_intervals(resampled[PRODUCTION_ALIAS]),
            delta_intervals=_delta_intervals(resampled[MODEL], resampled[PRODUCTION_ALIAS]),
        )
    scores = []
    for baseline in baselines:
        theirs = _scalars(task, task.test_metrics(test, baseline.predictions, labels))
        key = f"baseline:{baseline.name}"
        scores.append(
            BaselineScore(
                name=baseline.name,
                kind=baseline.kind,
                description=baseline.description,
                required=baseline.kind == CONSTANT or gate.linear_baseline == "require",
                compared_metric=config.gate_metric,
                metrics=theirs,
                intervals=_intervals(resampled[key]),
                delta={name: new_scalars[name] - theirs[name] for name in new_scalars if name in theirs},
                delta_intervals=_delta_intervals(resampled[MODEL], resampled[key]),
            )
        )
        table = table.assign(
            **{
                f"{baseline.name}_{name}": values
                for name, values in task.prediction_columns(baseline.predictions).items()
            }
        )

    passed, reasons = gate_decision(config, task, metrics, production, labels, scores)
    if train is None and task.linear_baseline and gate.linear_baseline == "require":
        passed = False
        reasons.append(
            f"failed: the {task.linear_baseline} baseline is required (gate.linear_baseline: require) but evaluate was "
            "given no train split to fit it on"
        )
    logger.info("gate %s: %s", "passed" if passed else "failed", "; ".join(reasons))

    result = EvaluateResult(
        model_uri=model_uri,
        test_uri=test_uri,
        task=config.task.type,
        labels=labels,
        primary_metric=task.primary_metric,
        metrics=metrics,
        confusion_matrix=matrix,
        production=production,
        gate_metric=production.compared_metric if production else config.gate_metric,
        gate_passed=passed,
        reasons=reasons,
        report_html_uri=join(output_uri, "report.html"),
        report_markdown_uri=join(output_uri, "report.md"),
        report_json_uri=join(output_uri, "report.json"),
        predictions_uri=join(output_uri, "predictions.parquet"),
        intervals=_intervals(resampled[MODEL]),
        baselines=scores,
        bootstrap_resamples=gate.bootstrap_resamples,
    )
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    storage.write_bytes(result.predictions_uri, buffer.getvalue(), content_type="application/vnd.apache.parquet")
    storage.write_bytes(result.report_json_uri, result.to_json().encode("utf-8"), content_type="application/json")
    document = report_document(result, task)
    storage.write_text(result.report_markdown_uri, document.markdown(), content_type="text/markdown; charset=utf-8")
    storage.write_text(result.report_html_uri, document.html(), content_type="text/html; charset=utf-8")
    tracking.log_evaluation(config, run_id, result)
    return result


def _with_details(
    task: Task, test: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], outputs: Sequence[str]
) -> dict[str, Any]:
    """The task's test metrics, with the slices (``slices``) and, where the task predicts probabilities, the
    expected calibration error (``ece``, reported, never gated) and its reliability bins (``calibration``)."""
    metrics = task.test_metrics(test, predictions, labels)
    found = task.reliability(test, predictions, outputs)
    if found is not None:
        metrics["ece"] = found["ece"]
        metrics["calibration"] = found
    metrics["slices"] = task.slice_metrics(test, predictions, labels)
    return metrics


def _baselines(task: Task, train: pd.DataFrame | None, test: pd.DataFrame, labels: Sequence[str]) -> list[Baseline]:
    """The task's baselines; a linear model that cannot be fitted on this text is one clear error line."""
    try:
        return task.baselines(train, test, labels)
    except ValueError as error:  # scikit-learn's "empty vocabulary" and the like
        raise DataError(f"cannot fit the baselines on the train split: {first_line(error)}") from None


# -- reports --------------------------------------------------------------------------------------


def _interval_cell(interval: Sequence[float] | None) -> str:
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""


def _comparison_table(result: EvaluateResult, task: Task) -> reports.Table:
    """One row per metric: the model with its 95% interval, each baseline, production and the paired delta."""
    keys = [name for name in task.settings.metrics if name in result.metrics]
    columns = ["metric", "this model", "95% interval"]
    columns += [f"{baseline.name} baseline" for baseline in result.baselines]
    prod = result.production
    if prod is not None:
        columns += [f"production v{prod.version}", "delta", "delta 95% paired interval"]
    rows = []
    for key in keys:
        row: list[Any] = [key, result.metrics[key], _interval_cell(result.intervals.get(key))]
        row += [baseline.metrics.get(key, float("nan")) for baseline in result.baselines]
        if prod is not None:
            row += [prod.metrics.get(key, float("nan")), prod.delta.get(key, float("nan")),
                    _interval_cell(prod.delta_intervals.get(key))]  # fmt: skip
        rows.append(row)
    return reports.Table(columns, rows)


def _baseline_table(result: EvaluateResult) -> reports.Table:
    rows = []
    for baseline in result.baselines:
        key = baseline.compared_metric
        rows.append(
            [
                baseline.name,
                baseline.description,
                "required" if baseline.required else "reported",
                key,
                baseline.metrics.get(key, float("nan")),
                _interval_cell(baseline.intervals.get(key)),
                _interval_cell(baseline.delta_intervals.get(key)),
            ]
        )
    columns = ["baseline", "what it predicts", "gate", "metric", "value", "95% interval", "model - baseline 95%"]
    return reports.Table(columns, rows)


def _verdict(result: EvaluateResult) -> str:
    return "PASSED" if result.gate_passed else "FAILED"


def confusion_figure(labels: Sequence[str], matrix: list[list[int]]) -> str:
    """The confusion matrix as a PNG data URI (counts in the cells, shaded by share of the true label)."""
    size = max(3.5, 0.6 * len(labels) + 2.0)
    figure, axes = reports.new_figure(size + 1.0, size)
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels=labels)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    for row in range(len(labels)):
        for column in range(len(labels)):
            axes.text(
                column,
                row,
                str(int(counts[row, column])),
                ha="center",
                va="center",
                color="white" if shares[row, column] > 0.5 else "black",
            )
    figure.colorbar(image, ax=axes, label="share of the true label")
    axes.set_title("Confusion matrix (test split)")
    return reports.figure_to_data_uri(figure)


def reliability_figure(found: dict[str, Any]) -> str:
    """The reliability diagram as a PNG data URI: observed frequency against mean score per bin, the diagonal
    (perfect calibration), and the rows per bin below."""
    bins = found["bins"]
    figure, (axes, counts) = reports.new_figure(5.0, 5.5, rows=2, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"] if bins else 1.0
    axes.bar(centres, [b["observed"] for b in bins], width=width * 0.9, color="tab:blue", label="observed")
    axes.plot([b["score"] for b in bins], [b["observed"] for b in bins], "o", color="tab:orange", ms=4,
              label="mean score of the bin")  # fmt: skip
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title=f"Reliability (ECE {found['ece']:.4f})")
    axes.legend(loc="upper left", fontsize="small")
    counts.bar(centres, [b["rows"] for b in bins], width=width * 0.9, color="tab:grey")
    counts.set(xlabel="predicted probability (bin)", ylabel="rows")
    return reports.figure_to_data_uri(figure)


def _calibration_section(document: reports.Document, result: EvaluateResult) -> None:
    found = result.metrics.get("calibration")
    if not found:
        return
    production = result.production.metrics.get("ece") if result.production else None
    beside = f"; production v{result.production.version}: {production:.4f}" if production is not None else ""
    document.section("Calibration").text(
        f"Expected calibration error {found['ece']:.4f} over {found['rows']} scores in {BINS} equal-width bins "
        f"({found['kind']}){beside}. Reported, not gated: the scores are temperature-scaled on validation when "
        "training.calibrate is on (the fine-tune report gives T)."
    )
    document.image(reliability_figure(found), "reliability diagram")
    rows = [[f"{b['low']:.3f}-{b['high']:.3f}", b["rows"], b["score"], b["observed"]] for b in found["bins"]]
    document.table(["bin", "rows", "mean score", "observed"], rows)


def _slices_section(document: reports.Document, result: EvaluateResult, task: Task) -> None:
    production = result.production.metrics.get("slices", {}) if result.production else {}
    for slicing, rows in (result.metrics.get("slices") or {}).items():
        if not rows:
            continue
        metric = rows[0]["metric"]
        theirs = {row["slice"]: row["value"] for row in production.get(slicing, [])}
        columns = ["slice", "rows", metric]
        if result.production is not None:
            columns.append(f"{metric} production v{result.production.version}")
        table = []
        for row in rows:
            cells = [row["slice"], row["rows"], row["value"]]
            if result.production is not None:
                cells.append(theirs.get(row["slice"], float("nan")))
            table.append(cells)
        title = slicing.replace("_", " ")
        document.section(f"Slices: {title}").text(
            f"{task.primary_metric} on the test rows split by {title}; a slice of few rows is noisy."
        )
        document.table(columns, table)


def report_document(result: EvaluateResult, task: Task) -> reports.Document:
    """report.md and report.html, from one document."""
    document = reports.Document("Evaluation")
    document.section("Verdict").text(
        f"Gate {_verdict(result)} (metric `{result.gate_metric}`), model `{result.model_uri}`, "
        f"{result.metrics['n_examples']} test rows from `{result.test_uri}`."
    )
    document.items(result.reasons)
    comparison = _comparison_table(result, task)
    document.section("Metrics").text(
        f"95% percentile intervals from {result.bootstrap_resamples} bootstrap resamples of the test rows; the "
        "baselines and production are scored on the same rows and resamples (paired)."
    )
    document.table(comparison.columns, comparison.rows)
    if result.baselines:
        baselines = _baseline_table(result)
        document.section("Baselines").table(baselines.columns, baselines.rows)
    if result.confusion_matrix:
        document.section("Confusion matrix (rows: true, columns: predicted)")
        document.image(confusion_figure(result.labels, result.confusion_matrix), "confusion matrix")
        rows = [[label, *counts] for label, counts in zip(result.labels, result.confusion_matrix, strict=True)]
        document.table(["true \\ predicted", *result.labels], rows)
    _calibration_section(document, result)
    production = result.production.metrics if result.production else None
    for title, table in task.metric_tables(result.metrics, production):
        document.section(title).table(table.columns, table.rows)
    _slices_section(document, result, task)
    return document
