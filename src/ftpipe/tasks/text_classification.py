"""text_classification: one label per text, binary or multi-class (``AutoModelForSequenceClassification``).

Data: ``data.label_column`` holds the label, read as text (``0`` stays ``"0"``; a float ``1.0`` from JSON or
Parquet becomes ``"1"``) and mapped through ``data.label_mapping``. Rows without a label are quarantined as
``missing_label``, rows whose label is outside ``data.labels`` (or, without it, outside the sorted labels of
the training rows) as ``unknown_label``. The split is stratified by label. Cleaned splits hold ``text``,
``label`` (its name) and ``label_id`` (its class index).

Model: a new classification head, ``id2label`` from the labels; cross-entropy (with
``training.label_smoothing``). Metrics: accuracy, macro/weighted F1, macro precision and recall, per-class
precision/recall/F1/support (scikit-learn), the confusion matrix, and the expected calibration error of the
top-label confidence (``ftpipe.tasks.calibration``: with ``training.calibrate``, :meth:`TextClassification.finalize`
fits a softmax temperature on validation after training, saved with the model and applied to every prediction).
Probe: a logistic regression with balanced class weights on mean-pooled frozen embeddings, scored by macro-F1; its
train features and classifier are handed back for the label-noise check (``selection.label_noise``: confident
learning on out-of-fold probabilities of the same probe).

The gate: when the production model's label set differs from the new one (a label added, removed or renamed),
per-class and macro scores of the two are not comparable, so the comparison falls back to **accuracy** on this
test split whatever ``gate.metric`` says; predictions are matched by label name, and a model is wrong on every
row whose label it cannot predict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.errors import DataError
from ftpipe.tasks import calibration
from ftpipe.tasks.base import (
    CONSTANT,
    LINEAR,
    TEXT,
    TRUNCATION,
    Baseline,
    ProbeFeatures,
    ProbeScore,
    Table,
    Targets,
    Task,
    cells_as_text,
    device,
    embed,
    encode,
    reason_codes,
    require_columns,
    tfidf_features,
)

SPLIT_COLUMNS = (TEXT, "label", "label_id")


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
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


def resampled_classification_scores(
    y_true: np.ndarray, y_pred: np.ndarray, classes: int, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`classification_scores`' averaged metrics on every bootstrap resample, from confusion counts.

    ``weights[b, i]`` is how often resample ``b`` drew row ``i``. Each resample's confusion matrix (a column more
    for predictions outside the label set, ``-1``) is one sparse product, and precision, recall and F1 follow
    from its counts as scikit-learn computes them with ``zero_division=0``: F1 = 2 TP / (support + predicted).
    """
    from ftpipe.tasks import bootstrap

    predicted = np.where(y_pred < 0, classes, y_pred)
    cells = bootstrap.one_hot_counts(weights, y_true * (classes + 1) + predicted, classes * (classes + 1))
    matrix = cells.reshape(len(weights), classes, classes + 1)
    tp = np.diagonal(matrix[:, :, :classes], axis1=1, axis2=2)
    support = matrix.sum(axis=2)
    predicted_count = matrix[:, :, :classes].sum(axis=1)
    precision = bootstrap.ratio(tp, predicted_count)
    recall = bootstrap.ratio(tp, support)
    f1 = bootstrap.ratio(2 * tp, support + predicted_count)
    total = support.sum(axis=1)
    return {
        "accuracy": bootstrap.ratio(tp.sum(axis=1), total),
        "f1_macro": f1.mean(axis=1),
        "precision_macro": precision.mean(axis=1),
        "recall_macro": recall.mean(axis=1),
        "f1_weighted": bootstrap.ratio((f1 * support).sum(axis=1), total),
    }


def per_class_table(metrics: dict[str, Any], production: dict[str, Any] | None, version: str = "") -> Table:
    """Precision, recall, F1 and support per class (and production's F1 beside them)."""
    columns = ["label", "precision", "recall", "F1", "support"]
    if production is not None:
        columns.append(f"F1 production{version}")
    rows = []
    for label, scores in metrics["per_class"].items():
        row: list[Any] = [label, scores["precision"], scores["recall"], scores["f1"], scores["support"]]
        if production is not None:
            row.append(production["per_class"].get(label, {}).get("f1", float("nan")))
        rows.append(row)
    return Table(columns, rows)


_ACTIVATIONS = {
    "softmax": lambda logits: logits.softmax(dim=-1),
    "sigmoid": lambda logits: logits.sigmoid(),
    "identity": lambda logits: logits,
}


def predict_outputs(
    model, tokenizer, texts: Sequence[str], *, batch_size: int, max_length: int | None, activation: str
):
    """The head's outputs per text (``softmax``, ``sigmoid`` or ``identity`` of the logits divided by the model's
    calibration temperature, 1 where it has none), in batches of similar length."""
    import torch

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship without a pad token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the head finds each text's last token by it
    texts = list(texts)
    truncation = getattr(model.config, TRUNCATION, "head")  # as the model was trained
    temperature = calibration.temperature_of(model.config)  # fitted on validation by finalize
    encoded = encode(tokenizer, texts, max_length or tokenizer.model_max_length, truncation)
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")  # little padding per batch
    run_on = device()
    model.to(run_on).eval()
    outputs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad(
                {key: [values[i] for i in rows] for key, values in encoded.items()}, return_tensors="pt"
            )
            logits = model(**{key: value.to(run_on) for key, value in batch.items()}).logits.float() / temperature
            outputs[rows] = _ACTIVATIONS[activation](logits).cpu().numpy()
    return outputs


def tokenized(texts: list[str], targets: list[Any], tokenizer: Any, max_length: int, model_config: Any):
    """A ``datasets.Dataset`` of unpadded token ids and ``labels``, tokenized once, in batches, cut as the model's
    config says (``ftpipe_truncation``)."""
    import datasets

    truncation = getattr(model_config, TRUNCATION, "head")
    dataset = datasets.Dataset.from_dict({"text": texts, "labels": targets})
    return dataset.map(
        lambda batch: encode(tokenizer, batch["text"], max_length, truncation),
        batched=True,
        remove_columns=["text"],
        keep_in_memory=True,
    )


def load_for_prediction(model_dir: str, model_class: str):
    """Tokenizer and model of a saved model directory."""
    import transformers

    from ftpipe.models import load_pretrained, load_tokenizer

    return load_tokenizer(model_dir), load_pretrained(getattr(transformers, model_class), model_dir)


class TextClassification(Task):
    type = "text_classification"
    target_reasons = ("missing_label", "unknown_label")
    pipeline_tag = "text-classification"
    huggingface_server_task = "sequence_classification"
    huggingface_server_output = "--return_probabilities"  # softmax without ftpipe_temperature: same argmax
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    linear_baseline = "tfidf_logistic"
    label_strata = True  # the split is stratified on the label itself
    head_tail_truncation = True

    # -- data ----------------------------------------------------------------------------------

    def encode_targets(self, raw: np.ndarray, train: np.ndarray) -> Targets:
        data = self.config.data
        mapping = data.label_mapping or {}
        texts = cells_as_text(raw)
        codes, raw_names = pd.factorize(pd.Series(texts, dtype=object), use_na_sentinel=True)
        mapped_names = np.array([mapping.get(name, name) for name in raw_names] + [None], dtype=object)
        mapped = mapped_names[codes]
        labels = self._labels(mapped[train & (codes >= 0)])
        index_of = {name: i for i, name in enumerate(labels)}
        key = np.array([index_of.get(name, -1) for name in mapped_names], dtype=np.int64)[codes]
        reason = np.where(codes < 0, "missing_label", np.where(key < 0, "unknown_label", None))
        notes = []
        if data.labels is None and data.label_mapping:
            unmapped = [label for label in labels if label not in set(data.label_mapping.values())]
            if unmapped:
                notes.append(
                    f"label(s) {', '.join(map(repr, unmapped))} are not values of data.label_mapping but became "
                    "classes; set data.labels to quarantine them instead"
                )
        return Targets(
            reason_codes(self.target_reasons, reason), key, list(labels), list(labels), key, list(labels), notes
        )

    def _labels(self, train_labels: np.ndarray) -> list[str]:
        data = self.config.data
        if data.labels is not None:
            return list(data.labels)
        seen = sorted(set(pd.unique(train_labels)))
        if not seen:
            raise DataError("no usable training rows left after cleaning (every row lacks a text or a label)")
        if len(seen) == 1:
            raise DataError(
                f"the training data has only one label ({seen[0]!r}) after cleaning; a classifier needs at least "
                "two (check data.label_column, data.label_mapping and data.labels)"
            )
        return seen

    def split_columns(self, targets: Targets, rows: np.ndarray) -> dict[str, Any]:
        ids = targets.key[rows]
        return {"label": np.asarray(targets.labels, dtype=object)[ids], "label_id": ids.astype(np.int64)}

    def strata(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["label_id"].to_numpy(dtype=np.int64)

    def drift_targets(self, frame: pd.DataFrame) -> dict[str, pd.Series]:
        return {"label": frame["label"]}

    def describe_targets(self, frames: dict[str, pd.DataFrame]) -> Table:
        labels = self._labels_of(frames)
        counts = {name: frame["label"].value_counts() for name, frame in frames.items()}
        return Table(
            ["label", *frames], [[label, *(int(counts[name].get(label, 0)) for name in frames)] for label in labels]
        )

    @staticmethod
    def _labels_of(frames: dict[str, pd.DataFrame]) -> list[str]:
        pairs = pd.concat([frame[["label_id", "label"]] for frame in frames.values()]).drop_duplicates()
        return pairs.sort_values("label_id")["label"].tolist()

    def data_warnings(self, frames: dict[str, pd.DataFrame], targets: Targets) -> list[str]:
        warnings = list(targets.notes)
        train_counts = frames["train"]["label"].value_counts()
        absent = [label for label in targets.labels if train_counts.get(label, 0) == 0]
        if absent:
            warnings.append(f"label(s) with no training rows: {', '.join(map(repr, absent))}")
        if len(train_counts) and train_counts.min() * 20 < train_counts.max():
            warnings.append(
                f"strong class imbalance in train: {train_counts.idxmax()!r} has {train_counts.max()} rows, "
                f"{train_counts.idxmin()!r} {train_counts.min()}"
            )
        return warnings

    def check_split(self, frame: pd.DataFrame, labels: Sequence[str], name: str) -> pd.DataFrame:
        require_columns(frame, (TEXT, "label"), name)
        if len(labels) < 2:
            raise DataError(f"need at least two labels, got {list(labels)}")
        result = pd.DataFrame({TEXT: frame[TEXT].astype(str), "label": frame["label"].astype(str)})
        index = {label: i for i, label in enumerate(labels)}
        unknown = sorted(set(result["label"]) - set(index))
        if unknown:
            raise DataError(f"the {name} split has label(s) {unknown[:5]} outside the label set {list(labels)}")
        result["label_id"] = result["label"].map(index).astype("int64")
        if "label_id" in frame.columns:
            try:
                given = frame["label_id"].astype("int64").to_numpy()
            except (TypeError, ValueError):
                raise DataError(f"the {name} split has a label_id that is not an integer") from None
            wrong = given != result["label_id"].to_numpy()
            if wrong.any():
                row = int(np.flatnonzero(wrong)[0])
                raise DataError(
                    f"label mismatch in the {name} split: label_id {given[row]} should be "
                    f"{result['label_id'].iloc[row]} for label {result['label'].iloc[row]!r} "
                    f"({int(wrong.sum())} rows disagree with the labels {list(labels)})"
                )
        return result.reset_index(drop=True)

    # -- model ---------------------------------------------------------------------------------

    def dataset(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, model_config: Any):
        return tokenized(frame[TEXT].tolist(), frame["label_id"].tolist(), tokenizer, max_length, model_config)

    def compute_metrics(self, model_config: Any) -> Callable[[Any], dict[str, float]]:
        from sklearn.metrics import accuracy_score, f1_score

        def compute(eval_prediction) -> dict[str, float]:
            logits = eval_prediction.predictions
            if isinstance(logits, tuple):
                logits = logits[0]
            predicted = np.asarray(logits).argmax(axis=-1)
            references = np.asarray(eval_prediction.label_ids)
            return {
                "accuracy": float(accuracy_score(references, predicted)),
                "f1_macro": float(f1_score(references, predicted, average="macro", zero_division=0)),
                "f1_weighted": float(f1_score(references, predicted, average="weighted", zero_division=0)),
            }

        return compute

    def finalize(self, trainer: Any, validation_dataset: Any) -> list[str]:
        """Temperature scaling on validation (``training.calibrate``): the softmax of ``logits / T`` with least NLL."""
        if not self.config.training.calibrate:
            calibration.forget_temperature(trainer.model.config)
            return []
        output = trainer.predict(validation_dataset)
        return [calibration.calibrate(trainer.model.config, output.predictions, output.label_ids, "softmax")]

    # -- probe ---------------------------------------------------------------------------------

    def probe(self, encoder: Any, tokenizer: Any, train: pd.DataFrame, validation: pd.DataFrame) -> ProbeScore:
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if train["label_id"].nunique() < 2:
            raise DataError("the train split has a single label; the probe needs at least two")
        max_length = self.config.selection.probe_max_length
        train_x = embed(train[TEXT].tolist(), tokenizer, encoder, max_length)
        validation_x = embed(validation[TEXT].tolist(), tokenizer, encoder, max_length)
        # Balanced class weights: the ranking metric is macro-F1, which rewards the minority classes.
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        given = train["label_id"].to_numpy()
        features = ProbeFeatures(train_x, given, clone(classifier))  # cloned before the fit: unfitted
        classifier.fit(train_x, given)
        predicted = classifier.predict(validation_x)
        truth = validation["label_id"].to_numpy()
        f1 = float(f1_score(truth, predicted, average="macro", zero_division=0))
        details = {"f1_macro": f1, "accuracy": float(accuracy_score(truth, predicted))}
        return ProbeScore("f1_macro", f1, details, train_features=features)

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, model_dir: str, frame: pd.DataFrame) -> pd.DataFrame:
        tokenizer, model = load_for_prediction(model_dir, self.model_class)
        names = self.model_labels(model_dir)
        training = self.config.training
        probabilities = predict_outputs(
            model,
            tokenizer,
            frame[TEXT].tolist(),
            batch_size=training.eval_batch_size,
            max_length=training.max_length,
            activation="softmax",
        )
        best = probabilities.argmax(axis=1)
        return pd.DataFrame({"predicted": [names[i] for i in best], "confidence": probabilities.max(axis=1)})

    def _predicted_ids(self, predictions: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
        index = {label: i for i, label in enumerate(labels)}
        return np.array([index.get(name, -1) for name in predictions["predicted"]], dtype=np.int64)

    def test_metrics(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        return classification_scores(frame["label_id"].to_numpy(), self._predicted_ids(predictions, labels), labels)

    def confusion(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> list[list[int]]:
        from sklearn.metrics import confusion_matrix

        matrix = confusion_matrix(
            frame["label_id"].to_numpy(), self._predicted_ids(predictions, labels), labels=list(range(len(labels)))
        )
        return matrix.astype(int).tolist()

    def reliability(self, frame: pd.DataFrame, predictions: pd.DataFrame, outputs: Sequence[str]) -> dict[str, Any]:
        correct = predictions["predicted"].astype(str).to_numpy() == frame["label"].astype(str).to_numpy()
        found = calibration.reliability(predictions["confidence"].to_numpy(np.float64), correct)
        return {"kind": "top-label confidence against the predicted label being right", **found}

    def comparison_metric(self, metric: str, same_labels: bool) -> str:
        return metric if same_labels else "accuracy"

    def metric_tables(self, metrics: dict[str, Any], production: dict[str, Any] | None) -> list[tuple[str, Table]]:
        return [("Per class", per_class_table(metrics, production))]

    def prediction_columns(self, predictions: pd.DataFrame) -> dict[str, Any]:
        return {"predicted": predictions["predicted"].to_numpy(), "confidence": predictions["confidence"].astype(float)}

    # -- bootstrap and baselines ---------------------------------------------------------------

    def resampled_metrics(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        return resampled_classification_scores(
            frame["label_id"].to_numpy(), self._predicted_ids(predictions, labels), len(labels), weights
        )

    def baselines(self, train: pd.DataFrame | None, test: pd.DataFrame, labels: Sequence[str]) -> list[Baseline]:
        """The majority class of train, and TF-IDF word 1-2 grams + logistic regression trained on train.

        The logistic regression is scikit-learn's default (L2, C=1) with balanced class weights, as the probe:
        the gate metric is usually macro-F1, which the minority classes weigh in.
        """
        from sklearn.linear_model import LogisticRegression

        source = train if train is not None else test
        counts = source["label"].value_counts()
        majority = str(counts.index[0])  # value_counts: most frequent first, ties in first-seen order
        where = "train" if train is not None else "test (no train split given)"
        found = [
            Baseline(
                "majority",
                CONSTANT,
                f"always {majority!r}, the most frequent label of {where} ({counts.iloc[0]} of {len(source)} rows)",
                pd.DataFrame({"predicted": [majority] * len(test), "confidence": np.ones(len(test))}),
            )
        ]
        if train is not None and train["label"].nunique() >= 2:
            train_x, test_x = tfidf_features(train[TEXT].tolist(), test[TEXT].tolist())
            model = LogisticRegression(max_iter=2000, class_weight="balanced")
            model.fit(train_x, train["label"].to_numpy(dtype=str))
            probabilities = model.predict_proba(test_x)
            best = probabilities.argmax(axis=1)
            predicted = [str(model.classes_[i]) for i in best]
            found.append(
                Baseline(
                    "tfidf_logistic",
                    LINEAR,
                    f"TF-IDF word 1-2 grams + logistic regression (balanced) trained on {len(train)} train rows",
                    pd.DataFrame({"predicted": predicted, "confidence": probabilities.max(axis=1)}),
                )
            )
        return found

    # -- model card ----------------------------------------------------------------------------

    def card_summary(self, labels: Sequence[str], metrics: dict[str, Any]) -> str:
        return (
            f"A text classifier over {len(labels)} labels ({', '.join(f'`{label}`' for label in labels)}). On the "
            f"held-out test split it reaches accuracy **{float(metrics['accuracy']):.4f}** and macro-F1 "
            f"**{float(metrics['f1_macro']):.4f}**."
        )

    def usage_snippet(self) -> str:
        return "\n".join(
            [
                "from transformers import pipeline",
                "",
                "# the pipeline's scores are the raw softmax; ftpipe's own predictions divide the logits by",
                f"# model.config.{calibration.TEMPERATURE} first (temperature scaling): the top label is the same",
                'classifier = pipeline("text-classification", model=DIRECTORY)',
                'print(classifier(["Congratulations, you won a prize! Call now", "See you at lunch?"]))',
            ]
        )
