"""evaluate: test metrics of the fine-tuned model and the gate that decides whether it may be registered.

Run it as ``run(config, test_uri, labels, model_uri, output_uri)``. The task (``ftpipe.tasks``) predicts the
test split and computes its metrics (text_classification: accuracy, macro-F1 and per-class
precision/recall/F1/support with scikit-learn; regression: RMSE, MAE, Pearson, Spearman; ...). When the
registry's ``production`` alias of ``config.registry.model_name`` is set, that version is downloaded and
scored on the very same rows.

The gate passes when every check passes:

- each ``gate.thresholds`` bound: a floor for a metric where higher is better, a ceiling where lower is;
- with a production model: the new model is no worse than production by more than ``gate.tolerance`` on
  the gate metric (``gate.metric``, else the task's primary metric), in the metric's direction.

When the production model's outputs differ from the new one's (a label added, removed or renamed), the task
says which metric stays comparable (text_classification: accuracy over this test split, predictions matched
by label name, a model being wrong on every row whose label it cannot predict), and the reasons say so.

Every check, passed or failed, is one line in ``reasons`` with its numbers (``passed: ...``,
``failed: ...``, or ``note: ...`` for context). Under ``output_uri`` it writes ``report.html`` (the
task's pictures and tables, the verdict), ``report.md``, ``report.json`` (this result) and
``predictions.parquet`` (one row per test row, with the production model's prediction when there is one).
"""

from __future__ import annotations

import gc
import io
import logging
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftpipe import models, reports, tracking
from ftpipe.config import PipelineConfig
from ftpipe.errors import DataError, ModelError
from ftpipe.registry import ModelRegistry
from ftpipe.results import EvaluateResult, ProductionComparison
from ftpipe.steps import MODEL_LIBRARIES, REPORT_LIBRARIES, TOKENIZER_LIBRARIES
from ftpipe.steps.select_model import read_checked_split
from ftpipe.storage import Storage, join
from ftpipe.tasks import Task, get_task
from ftpipe.training import adapters

logger = logging.getLogger(__name__)

LIBRARIES = (*MODEL_LIBRARIES, *TOKENIZER_LIBRARIES, "sklearn.metrics", *REPORT_LIBRARIES)

PRODUCTION_ALIAS = "production"
_EPSILON = 1e-9  # float slack so that "equal to the threshold" passes

__all__ = ["EvaluateResult", "ProductionComparison", "gate_decision", "run"]


def _predict(task: Task, model_dir: str, frame: pd.DataFrame, storage: Storage) -> tuple[pd.DataFrame, list[str]]:
    """The task's predictions of a saved model (an adapter-only one merged onto its base), and its outputs."""
    with adapters.loadable(model_dir, storage) as plain_dir:
        predictions = task.predict(plain_dir, frame)
        gc.collect()  # the model is gone: free its memory before the next one loads
        return predictions, task.model_labels(plain_dir)


def _scalars(task: Task, metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(metrics[name]) for name in task.settings.metrics if name in metrics}


def gate_decision(
    config: PipelineConfig,
    task: Task,
    metrics: dict[str, Any],
    production: ProductionComparison | None,
    labels: Sequence[str] = (),
) -> tuple[bool, list[str]]:
    """Apply the gate; returns (passed, one line per check with its numbers)."""
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
    if production is None:
        check(True, f"no production version of '{model_name}' (alias '{PRODUCTION_ALIAS}' unset): nothing to beat")
        return passed, reasons
    metric = production.compared_metric
    if not production.same_labels:
        reasons.append(
            f"note: production v{production.version} has outputs {production.labels}, this model "
            f"{list(labels)}: compared on {metric} over this test split (a model is wrong on "
            f"every row whose label it cannot predict), not on {config.gate_metric}"
        )
    new, old = float(metrics[metric]), float(production.metrics[metric])
    if task.higher_is_better(metric):
        threshold = old - gate.tolerance
        ok = new + _EPSILON >= threshold
        relation, sign = (">=" if ok else "<"), "-"
    else:
        threshold = old + gate.tolerance
        ok = new - _EPSILON <= threshold
        relation, sign = ("<=" if ok else ">"), "+"
    check(
        ok,
        f"{metric} {new:.4f} {relation} production v{production.version} {metric} {old:.4f} "
        f"{sign} tolerance {gate.tolerance:.4f} = {threshold:.4f} (delta {new - old:+.4f})",
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
) -> EvaluateResult:
    """Score ``model_uri`` on the test split, compare with production, apply the gate, write the reports.

    With ``tracking.mlflow_uri`` set, the test metrics and the verdict go to the MLflow run of pipeline run
    ``run_id`` too (``ftpipe.tracking``; nothing is tracked when ``run_id`` is None).

    Raises:
        DataError: the test split is unreadable or does not fit ``labels``.
        ModelError: a model cannot be loaded, or the new model's outputs are not ``labels``.
        RegistryError: the production version cannot be read from the registry.
    """
    storage = storage or Storage(config.storage)
    registry = registry or ModelRegistry(storage, config.registry.uri)
    task = get_task(config)
    labels = [str(label) for label in labels]
    if not labels or len(set(labels)) != len(labels):
        raise DataError(f"need distinct model outputs, got {labels}")
    test = read_checked_split(storage, test_uri, "test", task, labels)

    logger.info("evaluating %s on %d test rows", model_uri, len(test))
    predictions, new_labels = _predict(task, models.resolve_source(model_uri, storage), test, storage)
    if set(new_labels) != set(labels):
        raise ModelError(f"the model at {model_uri} predicts {new_labels}, but the test split's outputs are {labels}")
    metrics = task.test_metrics(test, predictions, labels)
    matrix = task.confusion(test, predictions, labels)
    table = test.assign(**task.prediction_columns(predictions))

    production = None
    found = registry.resolve_alias(config.registry.model_name, PRODUCTION_ALIAS)
    if found is not None:
        logger.info("scoring production version %d of %s on the same rows", found.version, found.name)
        with tempfile.TemporaryDirectory(prefix="ftpipe-production-") as scratch:
            registry.download(found.name, found.version, scratch)
            prod_predictions, prod_labels = _predict(task, scratch, test, storage)
        prod_metrics = task.test_metrics(test, prod_predictions, labels)
        same = set(prod_labels) == set(labels)
        new_scalars, prod_scalars = _scalars(task, metrics), _scalars(task, prod_metrics)
        production = ProductionComparison(
            version=found.version,
            model_uri=found.model_uri,
            labels=prod_labels,
            same_labels=same,
            compared_metric=task.comparison_metric(config.gate_metric, same),
            metrics=prod_metrics,
            delta={key: new_scalars[key] - prod_scalars[key] for key in new_scalars if key in prod_scalars},
        )
        prod_columns = task.prediction_columns(prod_predictions)
        table = table.assign(**{f"production_{name}": values for name, values in prod_columns.items()})

    passed, reasons = gate_decision(config, task, metrics, production, labels)
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


# -- reports --------------------------------------------------------------------------------------


def _comparison_table(result: EvaluateResult, task: Task) -> reports.Table:
    keys = [name for name in task.settings.metrics if name in result.metrics]
    if result.production is None:
        return reports.Table(["metric", "this model"], [[key, result.metrics[key]] for key in keys])
    prod = result.production
    return reports.Table(
        ["metric", "this model", f"production v{prod.version}", "delta"],
        [[key, result.metrics[key], prod.metrics.get(key, float("nan")), prod.delta.get(key, float("nan"))]
         for key in keys],
    )


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


def report_document(result: EvaluateResult, task: Task) -> reports.Document:
    """report.md and report.html, from one document."""
    document = reports.Document("Evaluation")
    document.section("Verdict").text(
        f"Gate {_verdict(result)} (metric `{result.gate_metric}`), model `{result.model_uri}`, "
        f"{result.metrics['n_examples']} test rows from `{result.test_uri}`."
    )
    document.items(result.reasons)
    comparison = _comparison_table(result, task)
    document.section("Metrics").table(comparison.columns, comparison.rows)
    if result.confusion_matrix:
        document.section("Confusion matrix (rows: true, columns: predicted)")
        document.image(confusion_figure(result.labels, result.confusion_matrix), "confusion matrix")
        rows = [[label, *counts] for label, counts in zip(result.labels, result.confusion_matrix, strict=True)]
        document.table(["true \\ predicted", *result.labels], rows)
    production = result.production.metrics if result.production else None
    for title, table in task.metric_tables(result.metrics, production):
        document.section(title).table(table.columns, table.rows)
    return document
