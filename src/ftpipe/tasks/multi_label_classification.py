"""multi_label_classification: any number of labels per text (``AutoModelForSequenceClassification``, sigmoid head).

Data: ``data.label_column`` holds a row's labels, as

- a JSON list: a list cell from JSON Lines or Parquet (``["billing", "bug"]``), or a string that parses as a
  JSON array (``'["billing", "bug"]'`` in a CSV);
- otherwise a string of labels separated by ``task.label_delimiter`` (default ``|``): ``billing | bug``.
  Spaces around each label are stripped and empty parts ignored, so ``"a||b|"`` is ``a`` and ``b``.

Numbers are labels too (``[1, 3]`` are ``"1"`` and ``"3"``; a JSON ``1.0`` is ``"1"``); a label that occurs
twice in a row counts once. Each label then goes through ``data.label_mapping`` (a label mapped to ``""`` is
removed from its row). The label set (the model's outputs, in order) is ``data.labels`` when set, else the
sorted labels of the training rows.

Quarantine reasons, in the order they apply:

- ``missing_label``: no cell, a blank one, or no label at all (``""``, ``"|"``, ``[]``). A row with an empty
  label set is **not** read as "none of the labels": a blank cell is far more often a row nobody annotated
  than a deliberate negative, and training on it as all-negative would teach the model to predict nothing.
  To train "none of these" rows, give them an explicit label (e.g. ``none``); it becomes an output like any
  other.
- ``malformed_label``: a cell that is neither text, a number nor a list of those (a JSON object, a nested
  list, a boolean), or a string that starts with ``[`` or ``{`` but is not a JSON array (a truncated or
  mis-quoted list, or a ``{"label": 1}`` object, is far more likely than a label name that starts so).
- ``unknown_label``: a label outside ``data.labels`` (without ``data.labels``: a validation or test label that
  no training row has).
- ``unseen_label``: a label of ``data.labels`` that no training row carries (with one file to split: no row
  at all), so the model could never learn it. Per ``task.unseen_labels``, the rows carrying it are quarantined
  (``quarantine``), or the label is removed from their label sets (``drop``) and only rows left with no label
  are quarantined. Either way a note names the label, and it is not an output of the model.

The key of a row (de-duplication, conflicting labels, the data fingerprint) is its label set as canonical
text: the JSON list of its sorted labels. The split is stratified on each row's **rarest label** (by its
number of training rows; ties go to the earlier label): most label sets have too few rows to be strata of
their own (20 labels make thousands of combinations), whereas stratifying on the rarest label puts rows of
every rare label into each split, which the frequent labels reach anyway. Cleaned splits hold ``text``,
``labels`` (the row's labels, in label-set order) and ``label_ids`` (their indexes).

Model: a new classification head with ``problem_type="multi_label_classification"`` (sigmoid outputs, binary
cross-entropy on multi-hot float targets). Validation metrics during training use a threshold of 0.5. After
training, :meth:`MultiLabelClassification.finalize` chooses decision thresholds on the validation split with
the best weights: one per label (each label's best F1) or one shared (the best micro-F1), per
``task.thresholds``. Among equally good thresholds the one nearest 0.5 wins, and a label without validation
positives keeps 0.5. They are saved in the model's ``config.json`` as ``ftpipe_thresholds`` (a list in label
order), and prediction uses them (0.5 where a model has none). Before the thresholds, with ``training.calibrate``,
one temperature shared by all labels is fitted on validation (least binary cross-entropy of ``sigmoid(logits / T)``,
``ftpipe.tasks.calibration``) and saved as ``ftpipe_temperature``; the thresholds are chosen on, and prediction
compares them with, the calibrated scores, so the decisions are those the raw scores would give with the thresholds
moved along. One shared T rather than one per label: a label with a handful of validation positives cannot support
a temperature of its own. A text may get no label at all. Predictions
are ``predicted`` (the list of labels) and ``probabilities`` (the sigmoid scores, in the model's label order).

Test metrics (scikit-learn): micro-F1 (primary), macro-F1, subset accuracy (exact label set), micro precision
and recall, samples-F1 (F1 per text, averaged), and per label precision/recall/F1/support and the 2x2 counts.
A production model with other outputs: a label it cannot predict counts as missed on every row that has it,
and each label it predicts outside the label set counts as a false positive (in the micro, samples and subset
scores; the macro and per-label scores cover the label set only). There is no single confusion matrix.
The gate compares ``f1_macro`` only between models with the same outputs; otherwise it falls back to
``f1_micro``.

Probe: one-vs-rest logistic regressions (balanced class weights) on mean-pooled frozen embeddings, scored by
micro-F1 at 0.5 on validation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.errors import DataError, ModelError
from ftpipe.tasks import calibration
from ftpipe.tasks.base import (
    CONSTANT,
    LINEAR,
    TEXT,
    Baseline,
    ProbeScore,
    Table,
    Targets,
    Task,
    cell_text,
    embed,
    keys_of,
    reason_codes,
    require_columns,
    tfidf_features,
)
from ftpipe.tasks.text_classification import load_for_prediction, per_class_table, predict_outputs, tokenized

LABELS, LABEL_IDS = "labels", "label_ids"
THRESHOLDS = "ftpipe_thresholds"  # the model config attribute holding the decision thresholds, in label order
THRESHOLDS_MODE = "ftpipe_thresholds_mode"
DEFAULT_THRESHOLD = 0.5
_MALFORMED = "malformed"  # a parse result: the cell is not a label list
_SHOWN = 20  # labels listed by name in a report line before "..."


# -- reading label cells ------------------------------------------------------------------------------------


def _label_text(value: Any) -> str | None | bool:
    """One element of a label list as text; None where blank or missing, False where it is no label at all."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, str | int | float | np.integer | np.floating):
        return False
    if isinstance(value, np.generic):
        value = value.item()
    return cell_text(value)


def _from_list(values: Any) -> tuple[str, ...] | str:
    names = []
    for value in values:
        name = _label_text(value)
        if name is False:
            return _MALFORMED
        if name is not None:
            names.append(name)
    return tuple(names)


def parse_labels(cell: Any, delimiter: str) -> tuple[str, ...] | str | None:
    """The labels of one raw cell: a tuple of names (possibly empty), None where missing, or ``"malformed"``.

    Args:
        cell: a list (JSON Lines), a numpy array (Parquet), a string (delimited or a JSON array) or a number.
        delimiter: what separates the labels of a delimited string.
    """
    if isinstance(cell, list | tuple | np.ndarray):
        return _from_list(cell)
    if not isinstance(cell, str):
        name = _label_text(cell)
        if name is False:
            return _MALFORMED  # a JSON object, or another value that is no label
        return None if name is None else (name,)
    text = cell.strip()
    if not text:
        return None
    if text.startswith(("[", "{")):
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            return _MALFORMED
        return _from_list(values) if isinstance(values, list) else _MALFORMED
    return tuple(part.strip() for part in text.split(delimiter) if part.strip())


def canonical(names: Sequence[str]) -> str:
    """The canonical text of a label set: the JSON list of its sorted distinct labels."""
    return json.dumps(sorted(set(names)), ensure_ascii=False)


def as_tuple(cell: Any) -> Any:
    """A list cell (a list, or the numpy array Parquet gives) as a hashable tuple; any other value as it is.

    ``ndarray.tolist()`` first: iterating a numpy object array element by element is several times slower.
    """
    kind = type(cell)
    if kind is list or kind is tuple:  # the common cases first: this runs once per row
        return tuple(cell)
    if isinstance(cell, np.ndarray):
        return tuple(cell.tolist())
    if isinstance(cell, list | tuple):
        return tuple(cell)
    return cell


def distinct_cells(cells: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Codes into the distinct cells of a column of label lists (as tuples): work per distinct set, not per row."""
    tuples = np.empty(len(cells), dtype=object)
    tuples[:] = [as_tuple(cell) for cell in cells]
    try:
        codes, uniques = pd.factorize(tuples, use_na_sentinel=False)
    except TypeError:  # an unhashable value inside a list: compare the cells by their text
        codes, _ = pd.factorize(np.array([repr(value) for value in tuples], dtype=object), use_na_sentinel=False)
        first = np.unique(codes, return_index=True)[1]
        return codes, [tuples[i] for i in first]
    return codes, list(uniques)


def multi_hot(label_lists: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """An int8 matrix (rows x labels): 1 where a row has the label; names outside ``labels`` are ignored."""
    index = {label: i for i, label in enumerate(labels)}
    codes, uniques = distinct_cells(label_lists)
    matrix = np.zeros((len(uniques), len(labels)), dtype=np.int8)
    for row, names in enumerate(uniques):
        for name in names:
            column = index.get(name)
            if column is not None:
                matrix[row, column] = 1
    return matrix[codes]


def rarest_label(matrix: np.ndarray, frequency: np.ndarray) -> np.ndarray:
    """Per row the index of its label with the lowest ``frequency`` (ties: the lower index); -1 for no label."""
    if matrix.shape[1] == 0:
        return np.full(matrix.shape[0], -1, dtype=np.int64)
    # Rank labels by (frequency, index): a row's rarest label is then the lowest rank it carries.
    order = np.lexsort((np.arange(len(frequency)), frequency))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    ranked = np.where(matrix.astype(bool), rank[None, :], len(order))
    best = ranked.min(axis=1)
    return np.where(best < len(order), order[np.minimum(best, len(order) - 1)], -1).astype(np.int64)


def _shown(names: Sequence[str]) -> str:
    listed = ", ".join(map(repr, names[:_SHOWN]))
    return listed + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


# -- scores -------------------------------------------------------------------------------------------------


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The decision threshold (predict ``score >= threshold``) with the best F1, and that F1.

    Candidates are 0.5, the midpoints between consecutive distinct scores and one point beyond either end, so a
    threshold never sits exactly on a validation score. Among equally good ones the nearest to 0.5 wins. Without
    positives F1 is 0 whatever the threshold: 0.5 stays.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth).astype(bool).ravel()
    positives = int(truth.sum())
    if positives == 0 or len(scores) == 0:
        return DEFAULT_THRESHOLD, 0.0
    distinct = np.unique(scores)
    candidates = np.concatenate(
        [[DEFAULT_THRESHOLD, distinct[0] / 2, (distinct[-1] + 1.0) / 2], (distinct[:-1] + distinct[1:]) / 2]
    )
    predicted = len(scores) - np.searchsorted(np.sort(scores), candidates, side="left")
    hits = positives - np.searchsorted(np.sort(scores[truth]), candidates, side="left")
    f1 = 2.0 * hits / (predicted + positives)
    good = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    chosen = good[np.argmin(np.abs(candidates[good] - DEFAULT_THRESHOLD))]
    return float(candidates[chosen]), float(f1[chosen])


def choose_thresholds(scores: np.ndarray, truth: np.ndarray, mode: str) -> list[float]:
    """Thresholds per label (``per_label``: each label's best F1; ``shared``: one, the best micro-F1)."""
    if mode == "shared":
        shared, _ = best_threshold(scores, truth)
        return [shared] * scores.shape[1]
    return [best_threshold(scores[:, j], truth[:, j])[0] for j in range(scores.shape[1])]


def multilabel_scores(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Micro/macro/samples F1, subset accuracy, micro precision/recall, per-label scores and 2x2 counts.

    ``truth`` and ``predicted`` are multi-hot matrices whose first ``len(labels)`` columns are ``labels``; any
    further columns are labels predicted outside the label set (never true): they count in the micro, samples
    and subset scores as false positives, not in the macro and per-label ones.
    """
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
        precision_score,
        recall_score,
    )

    indexes = list(range(len(labels)))
    everything = list(range(truth.shape[1]))
    common = {"y_true": truth, "y_pred": predicted, "zero_division": 0}
    precision, recall, f1, support = precision_recall_fscore_support(**common, labels=indexes, average=None)
    counts = multilabel_confusion_matrix(truth, predicted, labels=indexes)
    return {
        "f1_micro": float(f1_score(**common, labels=everything, average="micro")),
        "f1_macro": float(np.mean(f1)) if len(labels) else 0.0,
        "subset_accuracy": float(accuracy_score(truth, predicted)),
        "precision_micro": float(precision_score(**common, labels=everything, average="micro")),
        "recall_micro": float(recall_score(**common, labels=everything, average="micro")),
        "f1_samples": float(f1_score(**common, labels=everything, average="samples")),
        "n_examples": int(truth.shape[0]),
        "labels_per_row": float(truth[:, indexes].sum(axis=1).mean()) if len(truth) else 0.0,
        "predicted_per_row": float(predicted.sum(axis=1).mean()) if len(predicted) else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        # multilabel_confusion_matrix's 2x2 per label is [[tn, fp], [fn, tp]]
        "per_label_counts": {
            label: {
                "tp": int(counts[i, 1, 1]),
                "fp": int(counts[i, 0, 1]),
                "fn": int(counts[i, 1, 0]),
                "tn": int(counts[i, 0, 0]),
            }
            for i, label in enumerate(labels)
        },
    }


def resampled_multilabel_scores(
    truth: np.ndarray, predicted: np.ndarray, labelled: int, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`multilabel_scores`' averaged metrics on every bootstrap resample (``weights[b, i]``: draws of row i).

    Micro and macro scores come from per-label TP/FP/FN counts (one matrix product each), samples-F1 and subset
    accuracy from per-row values; the first ``labelled`` columns are the label set, the others count as false
    positives in the micro, samples and subset scores only, as in :func:`multilabel_scores`.
    """
    from ftpipe.tasks import bootstrap

    truth, predicted = truth.astype(np.float64), predicted.astype(np.float64)
    tp, fp, fn = truth * predicted, (1 - truth) * predicted, truth * (1 - predicted)
    tp_sum, fp_sum, fn_sum = (bootstrap.weighted_sum(weights, counts) for counts in (tp, fp, fn))  # [B, columns]
    total = weights.sum(axis=1).astype(np.float64)
    micro_tp, micro_fp, micro_fn = tp_sum.sum(axis=1), fp_sum.sum(axis=1), fn_sum.sum(axis=1)
    f1_label = bootstrap.ratio(2 * tp_sum[:, :labelled], 2 * tp_sum[:, :labelled] + fp_sum[:, :labelled]
                               + fn_sum[:, :labelled])  # fmt: skip
    row_f1 = bootstrap.ratio(2 * tp.sum(axis=1), truth.sum(axis=1) + predicted.sum(axis=1))
    exact = (truth == predicted).all(axis=1)
    return {
        "f1_micro": bootstrap.ratio(2 * micro_tp, 2 * micro_tp + micro_fp + micro_fn),
        "f1_macro": f1_label.mean(axis=1) if labelled else np.zeros(len(weights)),
        "subset_accuracy": bootstrap.weighted_sum(weights, exact) / total,
        "precision_micro": bootstrap.ratio(micro_tp, micro_tp + micro_fp),
        "recall_micro": bootstrap.ratio(micro_tp, micro_tp + micro_fn),
        "f1_samples": bootstrap.weighted_sum(weights, row_f1) / total,
    }


def _predictions(predicted: list[list[str]], scores: np.ndarray) -> pd.DataFrame:
    """A frame in :meth:`MultiLabelClassification.predict`'s format."""
    return pd.DataFrame(
        {
            "predicted": pd.Series([list(names) for names in predicted], dtype=object),
            "probabilities": pd.Series([row.tolist() for row in np.asarray(scores, dtype=float)], dtype=object),
        }
    )


def _column(values: list[Any], codes: np.ndarray) -> pd.Series:
    """An object Series of ``values[code]`` per row (list cells; rows with equal codes share one object)."""
    table = np.empty(len(values), dtype=object)
    table[:] = values
    return pd.Series(table[codes] if len(codes) else np.empty(0, dtype=object), dtype=object)


def _sigmoid(logits: Any) -> np.ndarray:
    from scipy.special import expit

    if isinstance(logits, tuple):
        logits = logits[0]
    return expit(np.asarray(logits, dtype=np.float64))


class MultiLabelClassification(Task):
    type = "multi_label_classification"
    target_reasons = ("missing_label", "malformed_label", "unknown_label", "unseen_label")
    pipeline_tag = "text-classification"
    huggingface_server_task = "sequence_classification"
    # the runtime knows only a softmax: a client takes the sigmoid of each logit and compares it with ftpipe_thresholds
    huggingface_server_output = "--return_raw_logits"
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    linear_baseline = "tfidf_logistic"
    label_strata = True  # the split is stratified on each row's rarest label
    head_tail_truncation = True

    # -- data ----------------------------------------------------------------------------------

    def encode_targets(self, raw: np.ndarray, train: np.ndarray) -> Targets:
        data, settings = self.config.data, self.settings
        mapping = data.label_mapping or {}
        train = np.asarray(train, dtype=bool)
        # Each distinct cell is read once (files repeat the same few label strings and lists), then each distinct
        # label set is checked once; rows only pick up the results.
        cell_codes, cells = distinct_cells(raw)
        cell_text = np.empty(len(cells), dtype=object)  # the canonical label set, None where there is none
        cell_reason = np.empty(len(cells), dtype=object)
        for code, cell in enumerate(cells):
            names = parse_labels(list(cell) if isinstance(cell, tuple) else cell, settings.label_delimiter)
            mapped = {mapping.get(name, name).strip() for name in names} - {""} if isinstance(names, tuple) else set()
            cell_text[code] = canonical(mapped) if mapped else None
            cell_reason[code] = "malformed_label" if names == _MALFORMED else None if mapped else "missing_label"
        reason = cell_reason[cell_codes]
        codes, distinct_texts = pd.factorize(pd.Series(cell_text[cell_codes], dtype=object), use_na_sentinel=True)
        sets = [json.loads(text) for text in distinct_texts]
        train_sets = np.bincount(codes[train & (codes >= 0)], minlength=len(sets))

        notes: list[str] = []
        if data.labels is not None:
            allowed = set(data.labels)
            unknown_set = np.array([not set(names) <= allowed for names in sets], dtype=bool)
            seen = self._train_counts(sets, train_sets * ~unknown_set)
            unseen = [label for label in data.labels if seen.get(label, 0) == 0]
            labels = [label for label in data.labels if label not in set(unseen)]
        else:
            seen = self._train_counts(sets, train_sets)
            labels = sorted(seen)
            unknown_set = np.array([not set(names) <= seen.keys() for names in sets], dtype=bool)
            unseen = []
            if mapping:
                unmapped = [label for label in labels if label not in set(mapping.values())]
                if unmapped:
                    notes.append(
                        f"label(s) {_shown(unmapped)} are not values of data.label_mapping but became outputs; "
                        "set data.labels to quarantine them instead"
                    )
        if not seen:
            problems = pd.Series(reason[train]).value_counts().to_dict()
            problems["unknown_label"] = int(train_sets[unknown_set].sum())
            found = ", ".join(f"{count} {name}" for name, count in problems.items() if count) or "no rows"
            raise DataError(
                f"no training row has a usable label set ({found}): check data.label_column, task.label_delimiter "
                f"({settings.label_delimiter!r}), data.label_mapping and data.labels"
            )
        if len(labels) < 2:
            raise DataError(
                f"the training data has {len(labels)} usable label(s) ({_shown(labels)}) after cleaning; a multi-label "
                "classifier needs at least two (check data.label_column, task.label_delimiter, data.label_mapping and "
                "data.labels)"
            )

        # Each distinct set: its reason, and the labels it keeps.
        unseen_set = set(unseen)
        set_reason: list[str | None] = []
        kept_sets: list[list[str]] = []
        for names, unknown in zip(sets, unknown_set, strict=True):
            kept = [name for name in names if name not in unseen_set]
            if unknown:
                set_reason.append("unknown_label")
            elif len(kept) < len(names) and (settings.unseen_labels == "quarantine" or not kept):
                set_reason.append("unseen_label")
            else:
                set_reason.append(None)
            kept_sets.append(kept)
        if unseen:
            rows_per_set = np.bincount(codes[codes >= 0], minlength=len(sets))
            carrying = sum(int(rows) for names, rows in zip(sets, rows_per_set, strict=True) if unseen_set & set(names))
            action = (
                "the rows carrying them are quarantined as unseen_label"
                if settings.unseen_labels == "quarantine"
                else "they are dropped from the label sets of the rows carrying them (rows left with no label are "
                "quarantined as unseen_label)"
            )
            notes.append(
                f"label(s) {_shown(unseen)} of data.labels occur in no training row, so the model cannot learn them "
                f"and does not output them; {action} ({carrying} rows; task.unseen_labels={settings.unseen_labels})"
            )

        has_set = codes >= 0
        per_set_reason = np.array(set_reason + [None], dtype=object)
        reason[has_set] = per_set_reason[codes[has_set]]
        usable = np.array([name is None for name in reason], dtype=bool)
        kept_texts = np.array([canonical(kept) if kept else None for kept in kept_sets] + [None], dtype=object)
        key, vocabulary = keys_of(kept_texts[codes], usable)

        # Strata: each row's rarest label by its number of usable training rows.
        matrix = multi_hot(kept_sets, labels)
        set_usable = np.array([r is None for r in set_reason], dtype=bool)
        frequency = (matrix * (train_sets * set_usable)[:, None]).sum(axis=0)
        per_set_stratum = np.append(rarest_label(matrix, frequency), -1)
        strata = np.where(usable, per_set_stratum[codes], -1).astype(np.int64)
        return Targets(
            reason=reason_codes(self.target_reasons, reason),
            key=key,
            vocabulary=vocabulary,
            labels=labels,
            strata=strata,
            strata_names=list(labels),
            notes=notes,
        )

    @staticmethod
    def _train_counts(sets: list[list[str]], rows_per_set: np.ndarray) -> dict[str, int]:
        counts: dict[str, int] = {}
        for names, rows in zip(sets, rows_per_set, strict=True):
            if rows:
                for name in names:
                    counts[name] = counts.get(name, 0) + int(rows)
        return counts

    def split_columns(self, targets: Targets, rows: np.ndarray) -> dict[str, Any]:
        index = {label: i for i, label in enumerate(targets.labels)}
        ids_of_key = [sorted(index[name] for name in json.loads(text)) for text in targets.vocabulary]
        names_of_key = [[targets.labels[i] for i in ids] for ids in ids_of_key]
        keys = targets.key[rows]
        return {LABELS: _column(names_of_key, keys).to_numpy(), LABEL_IDS: _column(ids_of_key, keys).to_numpy()}

    def strata(self, frame: pd.DataFrame) -> np.ndarray:
        labels = self._labels_of({"split": frame})
        matrix = multi_hot(frame[LABELS].tolist(), labels)
        return rarest_label(matrix, matrix.sum(axis=0))

    def drift_targets(self, frame: pd.DataFrame) -> dict[str, pd.Series]:
        return {LABELS: frame[LABELS]}  # lists: each label counted

    def describe_targets(self, frames: dict[str, pd.DataFrame]) -> Table:
        labels = self._labels_of(frames)
        counts = {name: multi_hot(frame[LABELS].tolist(), labels).sum(axis=0) for name, frame in frames.items()}
        rows: list[list[Any]] = [[label, *(int(counts[name][i]) for name in frames)] for i, label in enumerate(labels)]
        rows.append(
            ["(mean labels per row)", *(round(float(frame[LABELS].map(len).mean()), 3) for frame in frames.values())]
        )
        return Table(["label", *frames], rows)

    @staticmethod
    def _labels_of(frames: dict[str, pd.DataFrame]) -> list[str]:
        """The labels of cleaned split frames, in label-set order (by their ids)."""
        pairs: dict[int, str] = {}
        for frame in frames.values():
            codes, cells = distinct_cells(frame[LABELS].tolist())
            ids = frame[LABEL_IDS].to_numpy()
            for names, row in zip(cells, np.unique(codes, return_index=True)[1].tolist(), strict=True):
                for name, index in zip(names, as_tuple(ids[row]), strict=True):
                    pairs[int(index)] = str(name)
        return [pairs[index] for index in sorted(pairs)]

    def data_warnings(self, frames: dict[str, pd.DataFrame], targets: Targets) -> list[str]:
        warnings = list(targets.notes)
        train = frames["train"]
        counts = multi_hot(train[LABELS].tolist(), targets.labels).sum(axis=0)
        absent = [label for label, count in zip(targets.labels, counts, strict=True) if count == 0]
        if absent:
            warnings.append(
                f"label(s) with no training rows after the split: {_shown(absent)} (the model cannot learn them)"
            )
        everywhere = [label for label, count in zip(targets.labels, counts, strict=True) if count == len(train)]
        if everywhere:
            warnings.append(f"label(s) on every training row: {_shown(everywhere)} (nothing to learn about them)")
        present = counts[counts > 0]
        if len(present) and present.min() * 50 < present.max():
            rare, common = int(np.argmin(np.where(counts > 0, counts, np.inf))), int(np.argmax(counts))
            warnings.append(
                f"strong label imbalance in train: {targets.labels[common]!r} is on {int(counts[common])} rows, "
                f"{targets.labels[rare]!r} on {int(counts[rare])}"
            )
        return warnings

    # -- reading a split back --------------------------------------------------------------------

    def check_split(self, frame: pd.DataFrame, labels: Sequence[str], name: str) -> pd.DataFrame:
        require_columns(frame, (TEXT, LABELS), name)
        labels = list(labels)
        if len(labels) < 2:
            raise DataError(f"need at least two labels, got {labels}")
        index = {label: i for i, label in enumerate(labels)}
        codes, cells = distinct_cells(frame[LABELS].tolist())
        names_of, ids_of = [], []
        first_rows = np.unique(codes, return_index=True)[1]  # the first row of each distinct cell, for messages
        for cell, row in zip(cells, first_rows.tolist(), strict=True):
            if not isinstance(cell, tuple):
                raise DataError(
                    f"the {name} split's labels column holds {type(cell).__name__} values in row {row}, not lists of "
                    "labels (was it written by clean_data for multi_label_classification?)"
                )
            names = sorted({str(value) for value in cell}, key=lambda value: index.get(value, -1))
            outside = [value for value in names if value not in index]
            if outside:
                raise DataError(
                    f"the {name} split has label(s) {outside[:5]} (row {row}) outside the label set {_shown(labels)}"
                )
            if not names:
                raise DataError(f"the {name} split has a row without labels (row {row})")
            names_of.append(names)
            ids_of.append([index[value] for value in names])
        if LABEL_IDS in frame.columns:
            given_codes, given_cells = distinct_cells(frame[LABEL_IDS].tolist())
            width = len(given_cells)
            pairs, first = np.unique(codes.astype(np.int64) * width + given_codes, return_index=True)
            for pair, row in zip(pairs.tolist(), first.tolist(), strict=True):
                code, given_code = divmod(pair, width)
                try:
                    given_ids = sorted(int(value) for value in given_cells[given_code])
                except (TypeError, ValueError):
                    raise DataError(
                        f"the {name} split has label_ids that are not lists of integers (row {row})"
                    ) from None
                if given_ids != ids_of[code]:
                    raise DataError(
                        f"label mismatch in the {name} split: label_ids {given_ids} should be {ids_of[code]} for "
                        f"labels {names_of[code]} (row {row}; labels {_shown(labels)})"
                    )
        result = pd.DataFrame({TEXT: frame[TEXT].astype(str).to_numpy()})
        # Rows with the same labels share one list object: cheap, and nothing here mutates them.
        result[LABELS] = _column(names_of, codes)
        result[LABEL_IDS] = _column(ids_of, codes)
        return result

    # -- model ---------------------------------------------------------------------------------

    def head_settings(self, labels: Sequence[str], train: pd.DataFrame) -> dict[str, Any]:
        return {**super().head_settings(labels, train), "problem_type": "multi_label_classification"}

    def dataset(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, model_config: Any):
        order = [model_config.id2label[i] for i in range(model_config.num_labels)]
        # BCEWithLogits wants float targets of the logits' shape: one multi-hot row per text.
        targets = multi_hot(frame[LABELS].tolist(), order).astype(np.float32)
        return tokenized(frame[TEXT].tolist(), targets.tolist(), tokenizer, max_length, model_config)

    def compute_metrics(self, model_config: Any) -> Callable[[Any], dict[str, float]]:
        def compute(eval_prediction) -> dict[str, float]:
            truth = (np.asarray(eval_prediction.label_ids) >= 0.5).astype(np.int8)
            predicted = (_sigmoid(eval_prediction.predictions) >= DEFAULT_THRESHOLD).astype(np.int8)
            scores = multilabel_scores(truth, predicted, [str(i) for i in range(truth.shape[1])])
            return {name: scores[name] for name in self.settings.metrics}

        return compute

    def finalize(self, trainer: Any, validation_dataset: Any) -> list[str]:
        """Temperature scaling (``training.calibrate``: one T shared by every label's sigmoid), then the decision
        thresholds on the calibrated scores, which prediction compares them with."""
        mode = self.settings.thresholds
        output = trainer.predict(validation_dataset)
        truth = (np.asarray(output.label_ids) >= 0.5).astype(np.int8)
        config = trainer.model.config
        calibrated = []
        if self.config.training.calibrate:
            calibrated.append(calibration.calibrate(config, output.predictions, truth, "sigmoid"))
        else:
            calibration.forget_temperature(config)
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        scores = calibration.sigmoid(logits, calibration.temperature_of(config))
        labels = [str(config.id2label[i]) for i in range(scores.shape[1])]
        thresholds = choose_thresholds(scores, truth, mode)
        setattr(config, THRESHOLDS, [float(value) for value in thresholds])
        setattr(config, THRESHOLDS_MODE, mode)
        before = multilabel_scores(truth, (scores >= DEFAULT_THRESHOLD).astype(np.int8), labels)
        after = multilabel_scores(truth, (scores >= np.asarray(thresholds)[None, :]).astype(np.int8), labels)
        pairs = [f"{label}={value:.3f}" for label, value in zip(labels, thresholds, strict=True)]
        listed = ", ".join(pairs[:_SHOWN]) + (f", ... ({len(pairs)} in all)" if len(pairs) > _SHOWN else "")
        return [
            f"decision thresholds ({mode}, chosen on {len(truth)} validation rows, saved as {THRESHOLDS} in "
            f"config.json): {listed}",
            f"validation micro-F1 {before['f1_micro']:.4f} at 0.5 -> {after['f1_micro']:.4f} with these thresholds; "
            f"macro-F1 {before['f1_macro']:.4f} -> {after['f1_macro']:.4f} (measured on the rows the thresholds were "
            "chosen on, so the gain is optimistic: the test split shows the real one)",
            *calibrated,
        ]

    # -- probe ---------------------------------------------------------------------------------

    def probe(self, encoder: Any, tokenizer: Any, train: pd.DataFrame, validation: pd.DataFrame) -> ProbeScore:
        import warnings

        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        labels = self._labels_of({"train": train, "validation": validation})
        max_length = self.config.selection.probe_max_length
        train_x = embed(train[TEXT].tolist(), tokenizer, encoder, max_length)
        validation_x = embed(validation[TEXT].tolist(), tokenizer, encoder, max_length)
        train_y = multi_hot(train[LABELS].tolist(), labels)
        # Balanced weights: most labels are on a small share of rows, and unweighted regressions predict none.
        classifier = make_pipeline(
            StandardScaler(),
            OneVsRestClassifier(LogisticRegression(max_iter=2000, class_weight="balanced")),
        )
        with warnings.catch_warnings():
            # a label on all or none of the sampled train rows gets a constant predictor, with a warning
            warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
            classifier.fit(train_x, train_y)
            predicted = np.asarray(classifier.predict(validation_x), dtype=np.int8)
        scores = multilabel_scores(multi_hot(validation[LABELS].tolist(), labels), predicted, labels)
        details = {name: scores[name] for name in ("f1_micro", "f1_macro", "subset_accuracy")}
        return ProbeScore("f1_micro", scores["f1_micro"], details)

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, model_dir: str, frame: pd.DataFrame) -> pd.DataFrame:
        tokenizer, model = load_for_prediction(model_dir, self.model_class)
        names = self.model_labels(model_dir)
        if getattr(model.config, "problem_type", None) != "multi_label_classification":
            raise ModelError(
                f"the model at {model_dir} is not a multi-label classifier (problem_type "
                f"{getattr(model.config, 'problem_type', None)!r}); it cannot be scored as one"
            )
        thresholds = getattr(model.config, THRESHOLDS, None) or [DEFAULT_THRESHOLD] * len(names)
        if len(thresholds) != len(names):
            raise ModelError(
                f"the model at {model_dir} has {len(thresholds)} {THRESHOLDS} for {len(names)} labels in config.json"
            )
        training = self.config.training
        probabilities = predict_outputs(
            model,
            tokenizer,
            frame[TEXT].tolist(),
            batch_size=training.eval_batch_size,
            max_length=training.max_length,
            activation="sigmoid",
        )
        chosen = probabilities >= np.asarray(thresholds, dtype=np.float64)[None, :]
        predicted = [[names[j] for j in np.flatnonzero(row)] for row in chosen]
        return pd.DataFrame(
            {
                "predicted": pd.Series(predicted, dtype=object),
                "probabilities": pd.Series([row.tolist() for row in probabilities.astype(float)], dtype=object),
            }
        )

    def test_metrics(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        labels = list(labels)
        predicted = [list(map(str, names)) for names in predictions["predicted"]]
        outside = sorted({name for names in predicted for name in names} - set(labels))
        columns = labels + outside
        truth = multi_hot(frame[LABELS].tolist(), columns)
        return multilabel_scores(truth, multi_hot(predicted, columns), labels)

    def reliability(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, outputs: Sequence[str]
    ) -> dict[str, Any] | None:
        scores = np.array(predictions["probabilities"].tolist(), dtype=np.float64).reshape(len(predictions), -1)
        if scores.shape[1] != len(outputs):
            return None  # scores of another shape than the outputs named: nothing to pair them with
        truth = multi_hot(frame[LABELS].tolist(), list(outputs))
        found = calibration.reliability(scores, truth)
        return {"kind": "every (text, label) sigmoid score against the text having the label, pooled", **found}

    def comparison_metric(self, metric: str, same_labels: bool) -> str:
        # Macro-F1 averages over the label set, which another model's outputs do not share.
        return metric if same_labels or metric != "f1_macro" else "f1_micro"

    def metric_tables(self, metrics: dict[str, Any], production: dict[str, Any] | None) -> list[tuple[str, Table]]:
        counts = metrics.get("per_label_counts") or {}
        rows = [[label, c["tp"], c["fp"], c["fn"], c["tn"]] for label, c in counts.items()]
        return [
            ("Per label", per_class_table(metrics, production)),
            ("Per label counts (test split)", Table(["label", "TP", "FP", "FN", "TN"], rows)),
        ]

    def prediction_columns(self, predictions: pd.DataFrame) -> dict[str, Any]:
        return {
            "predicted": predictions["predicted"].map(list).to_numpy(),
            "probabilities": predictions["probabilities"].map(list).to_numpy(),
        }

    # -- bootstrap and baselines ---------------------------------------------------------------

    def resampled_metrics(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        labels = list(labels)
        predicted = [list(map(str, names)) for names in predictions["predicted"]]
        outside = sorted({name for names in predicted for name in names} - set(labels))
        columns = labels + outside
        truth = multi_hot(frame[LABELS].tolist(), columns)
        return resampled_multilabel_scores(truth, multi_hot(predicted, columns), len(labels), weights)

    def baselines(self, train: pd.DataFrame | None, test: pd.DataFrame, labels: Sequence[str]) -> list[Baseline]:
        """Each label's majority on train (a label on more than half the rows is always predicted, else never:
        usually the empty prediction), and TF-IDF word 1-2 grams + one logistic regression per label (balanced
        classes, 0.5 threshold) trained on train."""
        from sklearn.linear_model import LogisticRegression

        labels = list(labels)
        source = train if train is not None else test
        truth = multi_hot(source[LABELS].tolist(), labels)
        always = [label for j, label in enumerate(labels) if truth[:, j].mean() > 0.5]
        where = "train" if train is not None else "test (no train split given)"
        shown = ", ".join(map(repr, always)) if always else "no label"
        found = [
            Baseline(
                "majority",
                CONSTANT,
                f"always {shown}: each label's majority on {where}",
                _predictions([list(always)] * len(test), np.tile(truth.mean(axis=0), (len(test), 1))),
            )
        ]
        if train is not None:
            train_x, test_x = tfidf_features(train[TEXT].tolist(), test[TEXT].tolist())
            scores = np.zeros((len(test), len(labels)))
            for j in range(len(labels)):
                column = truth[:, j]
                if column.min() == column.max():  # every train row has it, or none: a constant
                    scores[:, j] = float(column[0])
                    continue
                model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(train_x, column)
                scores[:, j] = model.predict_proba(test_x)[:, 1]
            chosen = scores >= DEFAULT_THRESHOLD
            found.append(
                Baseline(
                    "tfidf_logistic",
                    LINEAR,
                    f"TF-IDF word 1-2 grams + a logistic regression per label (balanced, threshold "
                    f"{DEFAULT_THRESHOLD}) trained on {len(train)} train rows",
                    _predictions([[labels[j] for j in np.flatnonzero(row)] for row in chosen], scores),
                )
            )
        return found

    # -- model card ----------------------------------------------------------------------------

    def card_summary(self, labels: Sequence[str], metrics: dict[str, Any]) -> str:
        shown = ", ".join(f"`{label}`" for label in list(labels)[:_SHOWN]) + (", ..." if len(labels) > _SHOWN else "")
        return (
            f"A multi-label text classifier over {len(labels)} labels ({shown}): each text gets every label whose "
            f"sigmoid score reaches that label's decision threshold (chosen on the validation split, saved as "
            f"`{THRESHOLDS}` in `config.json`), possibly none. On the held-out test split it reaches micro-F1 "
            f"**{_number(metrics.get('f1_micro'))}**, macro-F1 **{_number(metrics.get('f1_macro'))}** and subset "
            f"accuracy (exact label set) **{_number(metrics.get('subset_accuracy'))}**."
        )

    def usage_snippet(self) -> str:
        return "\n".join(
            [
                "import torch",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "",
                "tokenizer = AutoTokenizer.from_pretrained(DIRECTORY)",
                "model = AutoModelForSequenceClassification.from_pretrained(DIRECTORY).eval()",
                "labels = [model.config.id2label[i] for i in range(model.config.num_labels)]",
                f'thresholds = getattr(model.config, "{THRESHOLDS}", None) or [0.5] * len(labels)',
                "",
                'texts = ["The app crashes every time I open my invoice", "Thanks, all good now"]',
                'batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")',
                f'temperature = getattr(model.config, "{calibration.TEMPERATURE}", None) or 1.0  # calibration',
                "with torch.inference_mode():",
                "    scores = (model(**batch).logits / temperature).sigmoid()",
                "for text, row in zip(texts, scores.tolist()):",
                "    chosen = [label for label, score, cut in zip(labels, row, thresholds) if score >= cut]",
                "    print(text, '->', chosen)",
            ]
        )


def _number(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(number) else f"{number:.4f}"
