"""evaluate: test metrics of the fine-tuned model and the gate that decides whether it may be registered.

Run it as ``run(config, test_uri, labels, model_uri, output_uri)``. It predicts the test split in batches
(texts sorted by token count, padded per batch, under ``torch.inference_mode``), computes accuracy,
macro-F1 and per-class precision/recall/F1/support with scikit-learn, and, when the registry's
``production`` alias of ``config.registry.model_name`` is set, downloads that version and scores it on
the very same rows.

The gate passes when every check passes:

- ``accuracy >= gate.min_accuracy`` and ``f1_macro >= gate.min_f1_macro`` (absolute floors);
- with a production model: ``new[gate.metric] >= production[gate.metric] - gate.tolerance``.

When the production model's label set differs from the new one (a label added, removed or renamed),
per-class and macro scores of the two are not comparable, so the comparison falls back to **accuracy**
on this test split, whatever ``gate.metric`` says: both models' predictions are matched by label name,
and a model is simply wrong on every row whose label it cannot predict. The reasons say so. This lets a
deliberate label change through when the new model really is right more often, instead of blocking
every run until someone moves the alias by hand.

Every check, passed or failed, is one line in ``reasons`` with its numbers (``passed: ...``,
``failed: ...``, or ``note: ...`` for context). Under ``output_uri`` it writes ``report.html`` (confusion
matrix picture, per-class table, verdict), ``report.md``, ``report.json`` (this result) and
``predictions.parquet`` (one row per test text, with the production model's prediction when there is one).
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
from pydantic import BaseModel, ConfigDict

from ftpipe import models, reports
from ftpipe.config import GateConfig, PipelineConfig
from ftpipe.errors import DataError, ModelError
from ftpipe.registry import ModelRegistry
from ftpipe.steps import MODEL_LIBRARIES, REPORT_LIBRARIES, TOKENIZER_LIBRARIES, StepResult
from ftpipe.storage import Storage, join

logger = logging.getLogger(__name__)

LIBRARIES = (*MODEL_LIBRARIES, *TOKENIZER_LIBRARIES, "sklearn.metrics", *REPORT_LIBRARIES)

PRODUCTION_ALIAS = "production"
_EPSILON = 1e-9  # float slack so that "equal to the threshold" passes


class ProductionComparison(BaseModel):
    """The production version scored on the same test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    model_uri: str
    labels: list[str]
    same_labels: bool
    compared_metric: str
    metrics: dict[str, Any]
    delta: dict[str, float]  # new minus production, for accuracy and f1_macro


class EvaluateResult(StepResult):
    """Test metrics, the gate verdict with its reasons, and where the reports are."""

    model_uri: str
    test_uri: str
    labels: list[str]
    metrics: dict[str, Any]  # accuracy, f1_macro, precision_macro, recall_macro, f1_weighted, n_examples, per_class
    confusion_matrix: list[list[int]]  # rows: true label, columns: predicted label, in `labels` order
    production: ProductionComparison | None
    gate_metric: str
    gate_passed: bool
    reasons: list[str]
    report_html_uri: str
    report_markdown_uri: str
    report_json_uri: str
    predictions_uri: str


# -- data and inference ---------------------------------------------------------------------------


def read_test_split(storage: Storage, uri: str, labels: Sequence[str]) -> pd.DataFrame:
    """The test split (``text``, ``label``; ``label_id`` checked when present), with ``label_id`` set.

    Raises:
        DataError: unreadable, a column missing, no rows, or a label outside ``labels``.
    """
    with storage.local_copy(uri) as path:
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises many types for "not parquet"
            raise DataError(f"cannot read the test split {uri}: {_first_line(error)}") from None
    missing = [column for column in ("text", "label") if column not in frame.columns]
    if missing:
        raise DataError(f"the test split {uri} lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise DataError(f"the test split {uri} has no rows")
    result = pd.DataFrame({"text": frame["text"].astype(str), "label": frame["label"].astype(str)})
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(result["label"]) - set(index))
    if unknown:
        raise DataError(f"the test split {uri} has label(s) {unknown[:5]} outside the label set {list(labels)}")
    result["label_id"] = result["label"].map(index).astype("int64")
    if "label_id" in frame.columns:
        try:
            given = frame["label_id"].astype("int64").to_numpy()
        except (TypeError, ValueError):
            raise DataError(f"the test split {uri} has a label_id that is not an integer") from None
        wrong = given != result["label_id"].to_numpy()
        if wrong.any():
            raise DataError(
                f"label mismatch in the test split {uri}: {int(wrong.sum())} row(s) have a label_id that is not "
                f"the index of their label in {list(labels)}"
            )
    return result.reset_index(drop=True)


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def model_labels(model) -> list[str]:
    """The model's labels in class-index order, from its config's ``id2label``."""
    id2label = {int(key): str(value) for key, value in (model.config.id2label or {}).items()}
    return [id2label.get(index, f"LABEL_{index}") for index in range(model.config.num_labels)]


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict_proba(model, tokenizer, texts: Sequence[str], *, batch_size: int, max_length: int) -> np.ndarray:
    """Class probabilities (rows in ``texts`` order), predicted in batches of similar length."""
    import torch

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship without a pad token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the head finds each text's last token by it
    texts = list(texts)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding per batch
    device = _device()
    model.to(device).eval()
    probabilities = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
            probabilities[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probabilities


def _predict_names(
    model_dir: str, texts: Sequence[str], config: PipelineConfig
) -> tuple[list[str], np.ndarray, list[str]]:
    """Predicted label names, confidences and the model's own labels."""
    tokenizer = models.load_tokenizer(model_dir)
    model = models.load_classifier(model_dir)
    names = model_labels(model)
    probabilities = predict_proba(
        model, tokenizer, texts, batch_size=config.training.eval_batch_size, max_length=config.training.max_length
    )
    del model
    gc.collect()
    best = probabilities.argmax(axis=1)
    return [names[i] for i in best], probabilities.max(axis=1), names


# -- metrics and the gate -------------------------------------------------------------------------


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted scores and per-class precision/recall/F1/support.

    A prediction of ``-1`` (a label outside ``labels``) counts as wrong for its row's true class.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    indexes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=indexes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=indexes, average="macro", zero_division=0)),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=indexes, average="weighted", zero_division=0)),
        "n_examples": len(y_true),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
    }


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(n_labels))).astype(int).tolist()


def gate_decision(
    gate: GateConfig, metrics: dict[str, Any], production: ProductionComparison | None, model_name: str = "model"
) -> tuple[bool, list[str]]:
    """Apply the gate; returns (passed, one line per check with its numbers)."""
    reasons: list[str] = []
    passed = True

    def check(ok: bool, text: str) -> None:
        nonlocal passed
        passed = passed and ok
        reasons.append(("passed: " if ok else "failed: ") + text)

    for metric, floor in (("accuracy", gate.min_accuracy), ("f1_macro", gate.min_f1_macro)):
        value = float(metrics[metric])
        ok = value + _EPSILON >= floor
        check(ok, f"{metric} {value:.4f} {'>=' if ok else '<'} min_{metric} {floor:.4f}")
    if production is None:
        check(True, f"no production version of '{model_name}' (alias '{PRODUCTION_ALIAS}' unset): nothing to beat")
        return passed, reasons
    if not production.same_labels:
        reasons.append(
            f"note: production v{production.version} has labels {production.labels}, this model "
            f"{list(metrics['per_class'])}: compared on accuracy over this test split (a model is wrong on every "
            f"row whose label it cannot predict), not on {gate.metric}"
        )
    metric = production.compared_metric
    new, old = float(metrics[metric]), float(production.metrics[metric])
    threshold = old - gate.tolerance
    ok = new + _EPSILON >= threshold
    check(
        ok,
        f"{metric} {new:.4f} {'>=' if ok else '<'} production v{production.version} {metric} {old:.4f} "
        f"- tolerance {gate.tolerance:.4f} = {threshold:.4f} (delta {new - old:+.4f})",
    )
    return passed, reasons


# -- the step -------------------------------------------------------------------------------------


def run(
    config: PipelineConfig,
    test_uri: str,
    labels: Sequence[str],
    model_uri: str,
    output_uri: str,
    storage: Storage | None = None,
    registry: ModelRegistry | None = None,
) -> EvaluateResult:
    """Score ``model_uri`` on the test split, compare with production, apply the gate, write the reports.

    Raises:
        DataError: the test split is unreadable or does not fit ``labels``.
        ModelError: a model cannot be loaded, or the new model's labels are not ``labels``.
        RegistryError: the production version cannot be read from the registry.
    """
    storage = storage or Storage(config.storage)
    registry = registry or ModelRegistry(storage, config.registry.uri)
    labels = [str(label) for label in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DataError(f"need at least two distinct labels, got {labels}")
    test = read_test_split(storage, test_uri, labels)
    texts = test["text"].tolist()
    y_true = test["label_id"].to_numpy()
    index = {label: i for i, label in enumerate(labels)}

    logger.info("evaluating %s on %d test rows", model_uri, len(test))
    predicted, confidence, new_labels = _predict_names(models.resolve_source(model_uri, storage), texts, config)
    if set(new_labels) != set(labels):
        raise ModelError(
            f"the model at {model_uri} predicts labels {new_labels}, but the test split's labels are {labels}"
        )
    y_pred = np.array([index[name] for name in predicted])
    metrics = compute_metrics(y_true, y_pred, labels)
    matrix = confusion(y_true, y_pred, len(labels))

    predictions = test.assign(
        predicted=predicted, predicted_id=y_pred, confidence=confidence.astype(float), correct=y_pred == y_true
    )
    production = None
    found = registry.resolve_alias(config.registry.model_name, PRODUCTION_ALIAS)
    if found is not None:
        logger.info("scoring production version %d of %s on the same rows", found.version, found.name)
        with tempfile.TemporaryDirectory(prefix="ftpipe-production-") as scratch:
            registry.download(found.name, found.version, scratch)
            prod_names, _, prod_labels = _predict_names(scratch, texts, config)
        prod_pred = np.array([index.get(name, -1) for name in prod_names])
        prod_metrics = compute_metrics(y_true, prod_pred, labels)
        same = set(prod_labels) == set(labels)
        production = ProductionComparison(
            version=found.version,
            model_uri=found.model_uri,
            labels=prod_labels,
            same_labels=same,
            compared_metric=config.gate.metric if same else "accuracy",
            metrics=prod_metrics,
            delta={key: metrics[key] - prod_metrics[key] for key in ("accuracy", "f1_macro")},
        )
        predictions = predictions.assign(production_predicted=prod_names, production_correct=prod_pred == y_true)

    passed, reasons = gate_decision(config.gate, metrics, production, config.registry.model_name)
    logger.info("gate %s: %s", "passed" if passed else "failed", "; ".join(reasons))

    result = EvaluateResult(
        model_uri=model_uri,
        test_uri=test_uri,
        labels=labels,
        metrics=metrics,
        confusion_matrix=matrix,
        production=production,
        gate_metric=production.compared_metric if production else config.gate.metric,
        gate_passed=passed,
        reasons=reasons,
        report_html_uri=join(output_uri, "report.html"),
        report_markdown_uri=join(output_uri, "report.md"),
        report_json_uri=join(output_uri, "report.json"),
        predictions_uri=join(output_uri, "predictions.parquet"),
    )
    buffer = io.BytesIO()
    predictions.to_parquet(buffer, index=False)
    storage.write_bytes(result.predictions_uri, buffer.getvalue(), content_type="application/vnd.apache.parquet")
    storage.write_bytes(result.report_json_uri, result.to_json().encode("utf-8"), content_type="application/json")
    storage.write_text(result.report_markdown_uri, render_markdown(result), content_type="text/markdown; charset=utf-8")
    storage.write_text(result.report_html_uri, render_html(result), content_type="text/html; charset=utf-8")
    return result


# -- reports --------------------------------------------------------------------------------------


def _comparison_rows(result: EvaluateResult) -> tuple[list[str], list[list[Any]]]:
    keys = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted")
    if result.production is None:
        return ["metric", "this model"], [[key, result.metrics[key]] for key in keys]
    prod = result.production
    return (
        ["metric", "this model", f"production v{prod.version}", "delta"],
        [[key, result.metrics[key], prod.metrics[key], result.metrics[key] - prod.metrics[key]] for key in keys],
    )


def _per_class_rows(result: EvaluateResult) -> tuple[list[str], list[list[Any]]]:
    columns = ["label", "precision", "recall", "F1", "support"]
    if result.production is not None:
        columns.append(f"F1 production v{result.production.version}")
    rows = []
    for label in result.labels:
        scores = result.metrics["per_class"][label]
        row: list[Any] = [label, scores["precision"], scores["recall"], scores["f1"], scores["support"]]
        if result.production is not None:
            row.append(result.production.metrics["per_class"][label]["f1"])
        rows.append(row)
    return columns, rows


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


def render_markdown(result: EvaluateResult) -> str:
    columns, rows = _comparison_rows(result)
    class_columns, class_rows = _per_class_rows(result)
    matrix_rows = [[label, *counts] for label, counts in zip(result.labels, result.confusion_matrix, strict=True)]
    return "\n".join(
        [
            "# Evaluation",
            "",
            f"Gate **{_verdict(result)}** (metric `{result.gate_metric}`), model `{result.model_uri}`, "
            f"{result.metrics['n_examples']} test rows from `{result.test_uri}`.",
            "",
            *[f"- {reason}" for reason in result.reasons],
            "",
            "## Metrics",
            "",
            reports.markdown_table(columns, rows),
            "",
            "## Per class",
            "",
            reports.markdown_table(class_columns, class_rows),
            "",
            "## Confusion matrix (rows: true, columns: predicted)",
            "",
            reports.markdown_table(["true \\ predicted", *result.labels], matrix_rows),
            "",
        ]
    )


def render_html(result: EvaluateResult) -> str:
    import html

    columns, rows = _comparison_rows(result)
    class_columns, class_rows = _per_class_rows(result)
    css = "pass" if result.gate_passed else "fail"
    reasons = "".join(
        f"<li class='{'fail' if reason.startswith('failed') else ''}'>{html.escape(reason)}</li>"
        for reason in result.reasons
    )
    verdict = (
        f"<p>Gate: <span class='{css}'>{_verdict(result)}</span> (metric <code>{html.escape(result.gate_metric)}"
        f"</code>) for <code>{html.escape(result.model_uri)}</code> on {result.metrics['n_examples']} test rows "
        f"from <code>{html.escape(result.test_uri)}</code>.</p><ul>{reasons}</ul>"
    )
    matrix_rows = [[label, *counts] for label, counts in zip(result.labels, result.confusion_matrix, strict=True)]
    picture = reports.html_image(confusion_figure(result.labels, result.confusion_matrix), "confusion matrix")
    return reports.html_page(
        "Evaluation",
        [
            ("Verdict", verdict),
            ("Metrics", reports.html_table(columns, rows)),
            ("Confusion matrix", picture + reports.html_table(["true \\ predicted", *result.labels], matrix_rows)),
            ("Per class", reports.html_table(class_columns, class_rows)),
        ],
    )
