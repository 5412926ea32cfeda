"""token_classification: a tag for every token, named entities (IOB2) or plain tags (AutoModelForTokenClassification).

Data: a row is a sentence. ``data.text_column`` holds its tokens, ``data.label_column`` its tags, one per token:
each a list (JSON Lines, Parquet, CoNLL column files via ``ftpipe.data.conll``), a string holding a JSON list,
or a string of whitespace-separated items (CSV). Tags are read as text (``3`` and ``3.0`` are ``"3"``) and mapped
through ``data.label_mapping``, so the integer tags of Hugging Face exports can be named. Every token gets the
cleaning every text gets (:func:`ftpipe.text.clean_texts` with ``config.cleaning``), one token at a time; the
row's text is its cleaned tokens joined by single spaces, which clean_data cleans again (unchanged), counts,
de-duplicates and checks for leakage. Rows are quarantined, in this order, for

- ``malformed_tokens``: the tokens cell is not a list (e.g. a number, or a string that starts like JSON but is
  not a JSON list);
- ``missing_tags``, ``malformed_tags``: no tags cell; a tags cell that is not a list, or holds a blank tag;
- ``empty_token``: a token that is empty after cleaning (blank, or only markup/invisible characters). Dropping it
  would shift every later tag onto the wrong token, so the row goes;
- ``space_in_token``: a token with whitespace inside (``New York`` as one token): splitting it would need a tag
  for the new token, so the row goes;
- ``unstable_tokens``: the joined text changes when cleaned again (markup spanning tokens, ``<a`` ``href=x>``, or
  a doubly escaped entity, ``&amp;amp;``), which would break the alignment of text and tags;
- ``tag_count_mismatch``: not one tag per token;
- ``unknown_tag``: a tag outside ``task.tags``, or (without it) outside the tags of the training rows;
- ``invalid_iob2`` (IOB2 only): a tag that is not ``O``/``B-X``/``I-X``, or an ``I-X`` that does not continue an
  X entity. seqeval's strict IOB2 scoring, used for every metric here, would not count such an entity at all,
  so the row is quarantined rather than trained on; ``task.repair_iob2`` rewrites those ``I-X`` as ``B-X``
  instead (which converts IOB1 data). When most training rows use tags that are not IOB2 at all, clean_data
  stops with a DataError suggesting ``task.scheme: plain``.

The labels (model outputs) are ``task.tags`` in config order or, without it, IOB2: ``O`` then ``B-X``, ``I-X``
of every entity type of the training rows, sorted by type (both prefixes of a type, so that every continuation
of a ``B-X`` sub-word has an ``I-X`` to train on); plain: the sorted tags with ``O`` first. A row's key is its
tag sequence as JSON (two rows with the same text and different tags conflict). The split of one file is
stratified on the rarest entity type (by training frequency) of each sentence, sentences without an entity in
a stratum of their own, so rare types reach validation and test; plain tags split at random. Cleaned splits
hold ``text`` and ``tags`` (a list of strings); ``check_split`` rebuilds ``tokens`` as ``text.split(" ")``.

Model: a token-classification head with ``id2label`` from the labels. Words are tokenized with
``is_split_into_words=True``; the first sub-word of a word carries its tag and the rest are ignored by the loss
(-100), or with ``task.label_all_subwords`` every sub-word carries it (continuations of ``B-X`` get ``I-X``).
Sentences longer than ``training.max_length`` sub-words are truncated: the words cut off are neither trained on
nor scored during validation, and ``predict`` tags them ``O`` (its ``truncated_words`` column counts them).

Metrics (word level, a word's prediction being that of its first sub-word). IOB2: seqeval in strict IOB2 mode,
entity-level ``precision``, ``recall`` and ``f1`` (micro over entities; primary), ``f1_macro`` over entity types,
per-type scores (``per_class``) and ``token_accuracy`` (share of words with the right tag). A predicted tag that
is not IOB2 (from a production model with other tags) counts as ``O`` for the entities and as wrong for the
token accuracy. Plain: scikit-learn per tag; ``precision``/``recall``/``f1`` are micro-averaged and ``f1_macro``
macro-averaged over every tag except ``O`` (the background tag, where there is one; with no ``O``, micro-F1
equals the token accuracy), ``per_class`` over every tag. The confusion matrix is tag by tag over words (rows
true, columns predicted, in label order; predictions outside the labels are left out of it).

Probe: the frozen encoder's last hidden state at the first sub-word of each word (at most
:data:`PROBE_TRAIN_WORDS` sampled training words), a balanced logistic regression, scored by the macro-F1 over
the tags of the validation words (``token_f1_macro``; entity F1 is too coarse to rank encoders on a few hundred
sentences, and is reported beside it for IOB2).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.errors import DataError, ModelError
from ftpipe.tasks.base import (
    CONSTANT,
    TEXT,
    Baseline,
    ProbeScore,
    Table,
    Targets,
    Task,
    cell_text,
    device,
    keys_of,
    reason_codes,
    require_columns,
    sorted_by_length,
)
from ftpipe.tasks.text_classification import load_for_prediction, per_class_table

logger = logging.getLogger(__name__)

TAGS = "tags"
TOKENS = "tokens"
OUTSIDE = "O"
IGNORED = -100  # the label PyTorch's cross-entropy (and the collator's padding) skips
PROBE_TRAIN_WORDS = 20_000  # a linear probe on 384-768 features needs no more; caps the probe's CPU time
_IOB2_TAG = re.compile(r"[BI]-\S+")
_PROBLEMS = ("malformed_tokens", "missing_tags", "malformed_tags", "empty_token", "space_in_token", "unstable_tokens")


@dataclass(frozen=True, slots=True)
class TaggedRow:
    """A row's raw target as :meth:`TokenClassification.read_rows` found it.

    Attributes:
        tags: the tags as text, mapped through ``data.label_mapping`` (None when missing or malformed).
        problem: the first quarantine reason found while reading (one of ``_PROBLEMS`` or ``tag_count_mismatch``).
        cell: the tags cell as read, shown in quarantine.parquet (``str`` of this object).
    """

    tags: tuple[str, ...] | None
    problem: str | None
    cell: Any

    def __str__(self) -> str:
        return _show(self.cell)


def _show(cell: Any) -> str:
    if isinstance(cell, np.ndarray):
        cell = cell.tolist()
    if isinstance(cell, list | tuple):
        return json.dumps([None if _missing(item) else str(item) for item in cell], ensure_ascii=False)
    return "" if _missing(cell) else str(cell)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


_MALFORMED = object()


def _items(cell: Any) -> list[Any] | None | object:
    """The items of a list cell: a list/array, a JSON list in a string, or a whitespace-separated string.

    None when the cell is missing, ``_MALFORMED`` when it is not a list of anything.
    """
    if isinstance(cell, np.ndarray | list | tuple):
        return list(cell)
    if _missing(cell):
        return None
    if not isinstance(cell, str):
        return _MALFORMED
    text = cell.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return _MALFORMED
        return value if isinstance(value, list) else _MALFORMED
    return text.split()


def _token_text(value: Any) -> str:
    """A token as text: missing is "" (an empty token), ``1990.0`` (JSON/Parquet floats) is ``"1990"``."""
    if _missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def canonical(tags: Sequence[str]) -> str:
    """A tag sequence as text, the row's key: JSON, so that no tag can run into the next."""
    return json.dumps(list(tags), ensure_ascii=False, separators=(",", ":"))


def entity_type(tag: str) -> str | None:
    """``PER`` for ``B-PER`` and ``I-PER``; None for ``O`` and anything that is not IOB2."""
    return tag[2:] if _IOB2_TAG.fullmatch(tag) else None


def iob2_problem(tags: Sequence[str]) -> str | None:
    """``"format"`` (a tag that is not O/B-X/I-X), ``"transition"`` (an I-X not continuing X) or None."""
    previous = None
    for tag in tags:
        if tag == OUTSIDE:
            previous = None
            continue
        if not _IOB2_TAG.fullmatch(tag):
            return "format"
        if tag[0] == "I" and previous != tag[2:]:
            return "transition"
        previous = tag[2:]
    return None


def repair_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """Every I-X that does not continue an X entity rewritten as B-X (the IOB1 to IOB2 conversion)."""
    repaired, previous = [], None
    for tag in tags:
        if _IOB2_TAG.fullmatch(tag):
            if tag[0] == "I" and previous != tag[2:]:
                tag = "B-" + tag[2:]
            previous = tag[2:]
        else:
            previous = None
        repaired.append(tag)
    return tuple(repaired)


def entities(tags: Sequence[str]) -> list[str]:
    """The entity type of each entity of a valid IOB2 sequence (one per B-X)."""
    return [tag[2:] for tag in tags if tag.startswith("B-")]


def _as_tag_lists(column: pd.Series) -> list[list[str]]:
    return [[str(tag) for tag in (row.tolist() if isinstance(row, np.ndarray) else row)] for row in column]


def sequence_scores(
    truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], labels: Sequence[str], scheme: str
) -> dict[str, Any]:
    """The task's metrics on word-level tag sequences (see the module docstring), ``n_examples`` and ``per_class``.

    Raises:
        DataError: a prediction's length differs from its sentence's.
    """
    truth = [list(row) for row in truth]
    predicted = [list(row) for row in predicted]
    if len(truth) != len(predicted):
        raise DataError(f"{len(predicted)} predicted tag sequences for {len(truth)} sentences")
    for index, (true_row, predicted_row) in enumerate(zip(truth, predicted, strict=True)):
        if len(true_row) != len(predicted_row):
            raise DataError(f"row {index}: {len(predicted_row)} predicted tags for {len(true_row)} words")
    flat_true = [tag for row in truth for tag in row]
    flat_predicted = [tag for row in predicted for tag in row]
    words = len(flat_true)
    accuracy = float(sum(a == b for a, b in zip(flat_true, flat_predicted, strict=True)) / words) if words else 0.0
    if scheme == "IOB2":
        scores = _entity_scores(truth, predicted, labels)
    else:
        scores = _tag_scores(flat_true, flat_predicted, labels)
    return {**scores, "token_accuracy": accuracy, "n_examples": len(truth), "n_words": words}


def _entity_scores(truth: list[list[str]], predicted: list[list[str]], labels: Sequence[str]) -> dict[str, Any]:
    import warnings

    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    # seqeval's strict mode raises on a tag without a B-/I- prefix: such a prediction is no entity.
    predicted = [[tag if tag == OUTSIDE or _IOB2_TAG.fullmatch(tag) else OUTSIDE for tag in row] for row in predicted]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning for types never predicted: they score 0
        report = classification_report(truth, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    macro = report.pop("macro avg")
    report.pop("weighted avg", None)
    order = list(dict.fromkeys([t for t in (entity_type(tag) for tag in labels) if t] + sorted(report)))
    per_class = {
        name: {
            "precision": float(report[name]["precision"]),
            "recall": float(report[name]["recall"]),
            "f1": float(report[name]["f1-score"]),
            "support": int(report[name]["support"]),
        }
        for name in order
        if name in report
    }
    return {
        "f1": float(micro["f1-score"]),
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1_macro": float(macro["f1-score"]) if per_class else 0.0,
        "per_class": per_class,
    }


def _tag_scores(flat_true: list[str], flat_predicted: list[str], labels: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(labels)
    scored = [label for label in labels if label != OUTSIDE] or labels
    precision, recall, f1, _ = precision_recall_fscore_support(
        flat_true, flat_predicted, labels=scored, average="micro", zero_division=0
    )
    _, _, macro_f1, _ = precision_recall_fscore_support(
        flat_true, flat_predicted, labels=scored, average="macro", zero_division=0
    )
    each = precision_recall_fscore_support(flat_true, flat_predicted, labels=labels, zero_division=0)
    per_class = {
        label: {
            "precision": float(each[0][i]),
            "recall": float(each[1][i]),
            "f1": float(each[2][i]),
            "support": int(each[3][i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "f1_macro": float(macro_f1),
        "per_class": per_class,
    }


def resampled_sequence_scores(
    truth: list[list[str]], predicted: list[list[str]], labels: Sequence[str], scheme: str, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`sequence_scores`' metrics on every bootstrap resample of the sentences (``weights[b, i]``: draws of
    sentence i), from counts per sentence and type, which add up over the sentences of a resample.

    IOB2: the types are entity types; a type counts towards the macro average in a resample where it is true or
    predicted at least once (seqeval's report lists those). Otherwise: the types are the tags, micro and macro
    over ``labels`` without ``O`` (all of them when that leaves none), as :func:`_tag_scores`.
    """
    from ftpipe.tasks import bootstrap

    if scheme == "IOB2":
        from seqeval.scheme import IOB2, Entities

        cleaned = [[tag if tag == OUTSIDE or _IOB2_TAG.fullmatch(tag) else OUTSIDE for tag in row] for row in predicted]
        true_sets = [{(e.start, e.end, e.tag) for e in row} for row in Entities(truth, IOB2, suffix=False).entities]
        predicted_sets = [
            {(e.start, e.end, e.tag) for e in row} for row in Entities(cleaned, IOB2, suffix=False).entities
        ]
        types = sorted({entity[2] for row in true_sets + predicted_sets for entity in row})
        index = {name: j for j, name in enumerate(types)}
        counts = np.zeros((3, len(truth), len(types)))  # true, predicted, right
        for i, (true_row, predicted_row) in enumerate(zip(true_sets, predicted_sets, strict=True)):
            for layer, entities in enumerate((true_row, predicted_row, true_row & predicted_row)):
                for entity in entities:
                    counts[layer, i, index[entity[2]]] += 1
        scored = np.arange(len(types))
    else:
        labels = list(labels)
        index = {name: j for j, name in enumerate(labels)}
        counts = np.zeros((3, len(truth), len(labels)))
        for i, (true_row, predicted_row) in enumerate(zip(truth, predicted, strict=True)):
            for true_tag, predicted_tag in zip(true_row, predicted_row, strict=True):
                if true_tag in index:
                    counts[0, i, index[true_tag]] += 1
                if predicted_tag in index:
                    counts[1, i, index[predicted_tag]] += 1
                if true_tag == predicted_tag and true_tag in index:
                    counts[2, i, index[true_tag]] += 1
        scored = np.array([j for j, name in enumerate(labels) if name != OUTSIDE] or list(range(len(labels))))
    true_sum, predicted_sum, right_sum = (bootstrap.weighted_sum(weights, layer) for layer in counts)  # [B, types]
    true_sum, predicted_sum, right_sum = true_sum[:, scored], predicted_sum[:, scored], right_sum[:, scored]
    micro_right, micro_predicted, micro_true = right_sum.sum(axis=1), predicted_sum.sum(axis=1), true_sum.sum(axis=1)
    per_type = bootstrap.ratio(2 * right_sum, true_sum + predicted_sum)
    if scheme == "IOB2":
        present = (true_sum + predicted_sum) > 0
        macro = bootstrap.ratio((per_type * present).sum(axis=1), present.sum(axis=1))
    else:
        macro = per_type.mean(axis=1) if per_type.shape[1] else np.zeros(len(weights))
    words = np.array([len(row) for row in truth], dtype=np.float64)
    right_words = np.array(
        [sum(a == b for a, b in zip(t, p, strict=True)) for t, p in zip(truth, predicted, strict=True)]
    )
    return {
        "f1": bootstrap.ratio(2 * micro_right, micro_true + micro_predicted),
        "precision": bootstrap.ratio(micro_right, micro_predicted),
        "recall": bootstrap.ratio(micro_right, micro_true),
        "token_accuracy": bootstrap.ratio(
            bootstrap.weighted_sum(weights, right_words), bootstrap.weighted_sum(weights, words)
        ),
        "f1_macro": macro,
    }


@dataclass
class _Encoded:
    """What :meth:`TokenClassification.dataset` built, kept so that validation can be scored per word."""

    labels: list[list[int]]  # per row, per sub-word: the training label (-100 ignored)
    firsts: list[np.ndarray]  # per row: the position of each kept word's first sub-word
    words: int
    truncated: int


def _word_starts(word_ids: Sequence[int | None]) -> list[tuple[int, int]]:
    """(position, word index) of the first sub-word of every word in one encoded row."""
    starts, previous = [], None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            starts.append((position, word))
        previous = word
    return starts


def _fast_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer, checked for ``word_ids`` (fast tokenizers only) and given a pad token where it lacks one."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"token_classification needs a fast (Rust) tokenizer to align tags with sub-words; "
            f"{type(tokenizer).__name__} is not one"
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models ship without a pad token
    return tokenizer


def _tokens_of(frame: pd.DataFrame) -> list[list[str]]:
    if TOKENS in frame.columns:
        return [list(row) for row in frame[TOKENS]]
    return [text.split(" ") for text in frame[TEXT].astype(str)]


class TokenClassification(Task):
    type = "token_classification"
    target_reasons = (*_PROBLEMS, "tag_count_mismatch", "unknown_tag", "invalid_iob2")
    pipeline_tag = "token-classification"
    huggingface_server_task = "token_classification"
    model_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"

    def __init__(self, config) -> None:
        super().__init__(config)
        self._encoded: dict[int, _Encoded] = {}  # id(dataset) -> what it holds, for validation metrics

    @property
    def iob2(self) -> bool:
        return self.settings.scheme == "IOB2"

    # -- data ----------------------------------------------------------------------------------

    def input_columns(self) -> dict[str, str]:
        if self.config.data.labels is not None:
            raise DataError(
                "data.labels is for classification tasks; token_classification takes its tag set from task.tags"
            )
        return super().input_columns()

    def read_rows(self, frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
        """The sentences' cleaned tokens joined by spaces, and a :class:`TaggedRow` per row.

        A row whose tokens cannot be used as they are gets its raw tokens as text (as JSON), so that
        quarantine.parquet shows them; its :class:`TaggedRow` carries the reason.

        Raises:
            DataError: no row of the file holds a list of tokens (the wrong column, or not token data at all).
        """
        from ftpipe.text import STR, clean_texts

        data = self.config.data
        token_cells = frame[data.text_column].to_numpy(dtype=object)
        tag_cells = frame[data.label_column].to_numpy(dtype=object)
        token_lists = [_items(cell) for cell in token_cells]
        if len(token_lists) and not any(isinstance(items, list) for items in token_lists):
            example = next((cell for cell in token_cells if not _missing(cell)), None)
            raise DataError(
                f"data.text_column {data.text_column!r} holds no lists of tokens (e.g. {_show(example)[:60]!r}); "
                "token_classification needs a list of tokens per row (a list, a JSON list, or a CoNLL file)"
            )
        raw_tokens = [
            [_token_text(token) for token in items] if isinstance(items, list) else [] for items in token_lists
        ]
        # Each distinct token is cleaned once: a corpus repeats its few thousand commonest tokens endlessly.
        codes, distinct = pd.factorize(pd.Series([token for row in raw_tokens for token in row], dtype=object))
        cleaned_distinct = clean_texts(pd.Series(distinct, dtype=STR), self.config.cleaning).to_numpy(dtype=object)
        cleaned_flat = cleaned_distinct[codes] if len(codes) else np.empty(0, dtype=object)
        bounds = np.cumsum([0] + [len(row) for row in raw_tokens])
        joined = [" ".join(cleaned_flat[bounds[i] : bounds[i + 1]]) for i in range(len(raw_tokens))]
        again = clean_texts(pd.Series(joined, dtype=STR), self.config.cleaning).to_numpy(dtype=object)

        mapping = data.label_mapping or {}
        texts: list[Any] = []
        targets = np.empty(len(frame), dtype=object)
        for i, (items, tag_cell) in enumerate(zip(token_lists, tag_cells, strict=True)):
            tags, problem = self._tags_of(tag_cell, mapping)
            if items is None:
                texts.append(np.nan)
            elif items is _MALFORMED:
                problem = "malformed_tokens"
                texts.append(_show(token_cells[i]))
            else:
                tokens = cleaned_flat[bounds[i] : bounds[i + 1]]
                token_problem = None
                if any(token == "" for token in tokens):
                    token_problem = "empty_token"
                elif any(" " in token for token in tokens):
                    token_problem = "space_in_token"
                elif again[i] != joined[i]:
                    token_problem = "unstable_tokens"
                problem = problem or token_problem
                if problem is None and len(tags) != len(tokens):
                    problem = "tag_count_mismatch"
                texts.append(json.dumps(raw_tokens[i], ensure_ascii=False) if token_problem else joined[i])
            targets[i] = TaggedRow(tags, problem, tag_cell)
        return pd.Series(texts, index=frame.index, dtype=object), targets

    @staticmethod
    def _tags_of(cell: Any, mapping: dict[str, str]) -> tuple[tuple[str, ...] | None, str | None]:
        items = _items(cell)
        if items is None:
            return None, "missing_tags"
        if items is _MALFORMED:
            return None, "malformed_tags"
        tags = [cell_text(item) for item in items]
        if any(tag is None for tag in tags):
            return None, "malformed_tags"
        return tuple(mapping.get(tag, tag) for tag in tags), None

    def encode_targets(self, raw: np.ndarray, train: np.ndarray) -> Targets:
        n = len(raw)
        rows: list[TaggedRow] = [
            value if isinstance(value, TaggedRow) else TaggedRow(None, "malformed_tags", value) for value in raw
        ]
        reason = np.array([row.problem for row in rows], dtype=object)
        tags: list[tuple[str, ...] | None] = [row.tags for row in rows]
        notes: list[str] = []
        if self.iob2:
            tags, reason = self._check_iob2(tags, reason, train, notes)
        usable = reason == None  # noqa: E711 - elementwise over an object array
        labels = self._labels([tags[i] for i in np.flatnonzero(usable & train)])
        known = set(labels)
        for i in np.flatnonzero(usable):
            if not known.issuperset(tags[i]):
                reason[i] = "unknown_tag"
        usable = reason == None  # noqa: E711
        texts = np.array([canonical(t) if ok else "" for t, ok in zip(tags, usable, strict=True)], dtype=object)
        key, vocabulary = keys_of(texts, usable)
        strata, strata_names = None, None
        if self.iob2:
            strata, strata_names = self._strata([tags[i] if usable[i] else () for i in range(n)], usable & train)
        return Targets(
            reason=reason_codes(self.target_reasons, reason),
            key=key,
            vocabulary=vocabulary,
            labels=labels,
            strata=strata,
            strata_names=strata_names,
            notes=notes,
        )

    def _check_iob2(
        self, tags: list[tuple[str, ...] | None], reason: np.ndarray, train: np.ndarray, notes: list[str]
    ) -> tuple[list[tuple[str, ...] | None], np.ndarray]:
        """Rows with a non-IOB2 tag or transition marked ``invalid_iob2`` (or repaired); raises on plain-tag data."""
        reason = reason.copy()
        tags = list(tags)
        repaired, not_iob2, checked_train, format_train = 0, Counter(), 0, 0
        for i, row in enumerate(tags):
            if reason[i] is not None:
                continue
            problem = iob2_problem(row)
            if problem == "transition" and self.settings.repair_iob2:
                tags[i], problem = repair_iob2(row), None
                repaired += 1
            if train[i]:
                checked_train += 1
                format_train += problem == "format"
            if problem == "format":
                not_iob2.update(tag for tag in row if tag != OUTSIDE and not _IOB2_TAG.fullmatch(tag))
            if problem is not None:
                reason[i] = "invalid_iob2"
        shown = ", ".join(repr(tag) for tag, _ in not_iob2.most_common(5))
        if checked_train and format_train * 2 > checked_train:
            raise DataError(
                f"{format_train} of {checked_train} training rows have tags that are not IOB2 (O, B-TYPE, I-TYPE), "
                f"e.g. {shown}: for plain tags (parts of speech, ...) set task.scheme: plain"
            )
        if not_iob2:
            notes.append(f"tags that are not IOB2 (rows quarantined as invalid_iob2): {shown}")
        if repaired:
            notes.append(f"task.repair_iob2 rewrote a stray I-X as B-X in {repaired} rows")
        return tags, reason

    def _labels(self, train_tags: list[tuple[str, ...]]) -> list[str]:
        if self.settings.tags is not None:
            return list(self.settings.tags)
        if not train_tags:
            raise DataError("no usable training rows left after cleaning (see the quarantine reasons)")
        seen = set().union(*train_tags)
        if self.iob2:
            types = sorted({entity_type(tag) for tag in seen} - {None})
            if not types:
                raise DataError("the training rows hold no entity (every tag is O): nothing to learn")
            return [OUTSIDE, *(f"{prefix}-{name}" for name in types for prefix in "BI")]
        ordered = sorted(seen - {OUTSIDE})
        labels = [OUTSIDE, *ordered] if OUTSIDE in seen else ordered
        if len(labels) < 2:
            raise DataError(f"the training rows have only one tag ({labels[0]!r}): a tagger needs at least two")
        return labels

    @staticmethod
    def _strata(tags: list[Sequence[str]], train: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Per row, 2 + the rank of its rarest entity type by training frequency (1: a type unseen in train, 0: no
        entity), and what each stratum value stands for."""
        frequency = Counter(name for i in np.flatnonzero(train) for name in entities(tags[i]))
        # Ties go by name, so that the strata depend on the content only.
        ranked = sorted(frequency, key=lambda name: (frequency[name], name))
        rank = {name: r for r, name in enumerate(ranked)}
        strata = np.zeros(len(tags), dtype=np.int64)
        for i, row in enumerate(tags):
            found = entities(row)
            if found:
                strata[i] = 2 + min(rank.get(name, -1) for name in found)
        return strata, ["no entity", "an entity type not in train", *(f"rarest entity {name}" for name in ranked)]

    def split_columns(self, targets: Targets, rows: np.ndarray) -> dict[str, Any]:
        vocabulary = targets.vocabulary
        return {TAGS: [json.loads(vocabulary[key]) for key in targets.key[rows]]}

    def strata(self, frame: pd.DataFrame) -> np.ndarray | None:
        if not self.iob2:
            return None
        tags = _as_tag_lists(frame[TAGS])
        return self._strata(tags, np.ones(len(tags), dtype=bool))[0]

    def drift_targets(self, frame: pd.DataFrame) -> dict[str, pd.Series]:
        return {TAGS: frame[TAGS]}  # lists: each tag counted

    def describe_targets(self, frames: dict[str, pd.DataFrame]) -> Table:
        counts = {
            name: Counter(tag for row in _as_tag_lists(frame[TAGS]) for tag in row) for name, frame in frames.items()
        }
        every = set().union(*counts.values())
        order = [OUTSIDE] if OUTSIDE in every else []
        order += sorted(every - {OUTSIDE}, key=lambda tag: (entity_type(tag) or tag, tag))
        rows: list[list[Any]] = [
            ["sentences", *(len(frame) for frame in frames.values())],
            ["tokens", *(sum(counts[name].values()) for name in frames)],
        ]
        rows += [[f"tag {tag}", *(counts[name].get(tag, 0) for name in frames)] for tag in order]
        if self.iob2:
            spans = {
                name: Counter(kind for row in _as_tag_lists(frame[TAGS]) for kind in entities(row))
                for name, frame in frames.items()
            }
            for kind in sorted(set().union(*spans.values())):
                rows.append([f"entities {kind}", *(spans[name].get(kind, 0) for name in frames)])
        return Table(["", *frames], rows)

    def data_warnings(self, frames: dict[str, pd.DataFrame], targets: Targets) -> list[str]:
        warnings = list(targets.notes)
        train_tags = _as_tag_lists(frames["train"][TAGS])
        seen = Counter(tag for row in train_tags for tag in row)
        # An I-X the labels complete for a B-X is expected to be absent (single-token entities only).
        absent = [tag for tag in targets.labels if not seen[tag] and not (self.iob2 and tag.startswith("I-"))]
        if absent:
            warnings.append(f"tag(s) with no training tokens: {', '.join(map(repr, absent))}")
        if self.iob2:
            kinds = Counter(kind for row in train_tags for kind in entities(row))
            rare = [f"{kind} ({count})" for kind, count in sorted(kinds.items()) if count < 20]
            if rare:
                warnings.append(f"entity types with fewer than 20 training entities: {', '.join(rare)}")
        return warnings

    # -- reading a split back --------------------------------------------------------------------

    def check_split(self, frame: pd.DataFrame, labels: Sequence[str], name: str) -> pd.DataFrame:
        require_columns(frame, (TEXT, TAGS), name)
        if len(labels) < 2:
            raise DataError(f"need at least two tags, got {list(labels)}")
        texts = frame[TEXT].astype(str).tolist()
        tokens = [text.split(" ") for text in texts]
        try:
            tags = _as_tag_lists(frame[TAGS])
        except TypeError:
            raise DataError(f"the {name} split's tags column does not hold lists of tags") from None
        known = set(labels)
        for row, (words, row_tags) in enumerate(zip(tokens, tags, strict=True)):
            if len(words) != len(row_tags):
                raise DataError(
                    f"the {name} split's row {row} has {len(words)} tokens and {len(row_tags)} tags: "
                    "the text must be the tokens joined by single spaces"
                )
            unknown = sorted(set(row_tags) - known)
            if unknown:
                raise DataError(
                    f"the {name} split's row {row} has tag(s) {unknown[:5]} outside the tags {list(labels)}"
                )
        return pd.DataFrame({TEXT: texts, TOKENS: tokens, TAGS: tags})

    # -- model ---------------------------------------------------------------------------------

    def dataset(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, model_config: Any):
        import datasets

        tokenizer = _fast_tokenizer(tokenizer)
        label2id = {str(name): int(index) for name, index in model_config.label2id.items()}
        words = _tokens_of(frame)
        tags = _as_tag_lists(frame[TAGS])
        encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        every_subword = self.settings.label_all_subwords
        all_labels, firsts, kept = [], [], 0
        for row, row_tags in enumerate(tags):
            ids = [label2id[tag] for tag in row_tags]
            # A continuation of B-X is inside the entity: I-X (where the tag set has it; else ignored).
            inside = [
                label2id.get("I-" + tag[2:], IGNORED) if tag.startswith("B-") else label2id[tag] for tag in row_tags
            ]
            word_ids = encoding.word_ids(row)
            starts = _word_starts(word_ids)
            labels = [IGNORED] * len(word_ids)
            for position, word in enumerate(word_ids):
                if word is not None and every_subword:
                    labels[position] = inside[word] if self.iob2 else ids[word]
            for position, word in starts:
                labels[position] = ids[word]
            all_labels.append(labels)
            firsts.append(np.array([position for position, _ in starts], dtype=np.int64))
            kept += len(starts)
        columns = {key: list(values) for key, values in encoding.items()}
        dataset = datasets.Dataset.from_dict({**columns, "labels": all_labels})
        total = sum(len(row) for row in tags)
        if kept < total:
            logger.info(
                "%d of %d words lie beyond max_length=%d sub-words and are ignored (truncated)",
                total - kept,
                total,
                max_length,
            )
        self._encoded[id(dataset)] = _Encoded(all_labels, firsts, total, total - kept)
        return dataset

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None, model: Any = None):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(_fast_tokenizer(tokenizer), pad_to_multiple_of=pad_to_multiple_of)

    def _match(self, label_ids: np.ndarray) -> _Encoded | None:
        """The dataset whose labels these are (the Trainer pads them with -100), if one was built here."""
        for encoded in self._encoded.values():
            if len(encoded.labels) != len(label_ids):
                continue
            if all(
                len(row) <= label_ids.shape[1]
                and np.array_equal(label_ids[i, : len(row)], row)
                and (label_ids[i, len(row) :] == IGNORED).all()
                for i, row in enumerate(encoded.labels)
            ):
                return encoded
        return None

    def compute_metrics(self, model_config: Any) -> Callable[[Any], dict[str, float]]:
        id2label = {int(index): str(name) for index, name in model_config.id2label.items()}
        labels = [id2label[index] for index in sorted(id2label)]
        scheme = self.settings.scheme
        names = tuple(self.settings.metrics)

        def compute(eval_prediction) -> dict[str, float]:
            logits = eval_prediction.predictions
            if isinstance(logits, tuple):
                logits = logits[0]
            predicted = np.asarray(logits).argmax(axis=-1)
            label_ids = np.asarray(eval_prediction.label_ids)
            encoded = self._match(label_ids) if self.settings.label_all_subwords else None
            truth_rows, predicted_rows = [], []
            for i in range(len(label_ids)):
                if encoded is not None:
                    positions = encoded.firsts[i]
                else:  # first sub-words only carry a label (or no dataset matched: every labelled sub-word)
                    positions = np.flatnonzero(label_ids[i] != IGNORED)
                truth_rows.append([id2label[int(k)] for k in label_ids[i, positions]])
                predicted_rows.append([id2label[int(k)] for k in predicted[i, positions]])
            scores = sequence_scores(truth_rows, predicted_rows, labels, scheme)
            return {name: float(scores[name]) for name in names}

        return compute

    def finalize(self, trainer: Any, validation_dataset: Any) -> list[str]:
        encoded = self._encoded.get(id(validation_dataset))
        if encoded is None or not encoded.truncated:
            return []
        return [
            f"{encoded.truncated} of {encoded.words} validation words lie beyond training.max_length and were not "
            "scored (the test split's are tagged O)"
        ]

    # -- probe ---------------------------------------------------------------------------------

    def _word_features(self, encoder: Any, tokenizer: Any, words: list[list[str]], max_length: int):
        """Per sentence: the encoder's last hidden state at each kept word's first sub-word (words x hidden)."""
        import torch

        tokenizer = _fast_tokenizer(tokenizer)
        run_on = next(encoder.parameters()).device
        order = sorted_by_length([" ".join(row) for row in words])
        features: list[np.ndarray] = [np.empty((0, 0), dtype=np.float32)] * len(words)
        with torch.inference_mode():
            for start in range(0, len(order), 32):
                rows = order[start : start + 32]
                batch = tokenizer(
                    [words[i] for i in rows],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                )
                hidden = encoder(**{key: value.to(run_on) for key, value in batch.items()}).last_hidden_state
                hidden = hidden.float().cpu().numpy()
                for b, row in enumerate(rows):
                    positions = [position for position, _ in _word_starts(batch.word_ids(b))]
                    features[row] = hidden[b, positions]
        return features

    def probe(self, encoder: Any, tokenizer: Any, train: pd.DataFrame, validation: pd.DataFrame) -> ProbeScore:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        max_length = self.config.selection.probe_max_length
        train_tags, validation_tags = _as_tag_lists(train[TAGS]), _as_tag_lists(validation[TAGS])
        train_features = self._word_features(encoder, tokenizer, _tokens_of(train), max_length)
        train_x = np.concatenate([f for f in train_features if len(f)])
        train_y = np.array([tag for f, tags in zip(train_features, train_tags, strict=True) for tag in tags[: len(f)]])
        if len(train_y) > PROBE_TRAIN_WORDS:
            chosen = np.random.default_rng(self.config.data.split.seed).choice(
                len(train_y), PROBE_TRAIN_WORDS, replace=False
            )
            train_x, train_y = train_x[chosen], train_y[chosen]
        if len(set(train_y)) < 2:
            return ProbeScore("token_f1_macro", 0.0, {"token_f1_macro": 0.0, "token_accuracy": 0.0})
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
        classifier.fit(train_x, train_y)
        validation_features = self._word_features(encoder, tokenizer, _tokens_of(validation), max_length)
        kept = [len(f) for f in validation_features]
        found = [str(tag) for tag in classifier.predict(np.concatenate([f for f in validation_features if len(f)]))]
        bounds = np.cumsum([0, *kept])
        # Words beyond the probe's max length get O, as predict gives them.
        predicted_rows = [
            found[bounds[i] : bounds[i + 1]] + [OUTSIDE] * (len(tags) - kept[i])
            for i, tags in enumerate(validation_tags)
        ]
        truth = [tag for row in validation_tags for tag in row]
        predicted = [tag for row in predicted_rows for tag in row]
        present = sorted(set(truth))
        f1 = float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0))
        details = {"token_f1_macro": f1, "token_accuracy": float(accuracy_score(truth, predicted))}
        if self.iob2:
            details["entity_f1"] = sequence_scores(validation_tags, predicted_rows, present, "IOB2")["f1"]
        return ProbeScore("token_f1_macro", f1, details)

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, model_dir: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Per row, ``predicted`` (a tag per word, from its first sub-word) and ``truncated_words``.

        Words beyond ``training.max_length`` sub-words get ``O``, and ``truncated_words`` counts them.
        """
        import torch

        tokenizer, model = load_for_prediction(model_dir, self.model_class)
        tokenizer = _fast_tokenizer(tokenizer)
        names = self.model_labels(model_dir)
        if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        training = self.config.training
        words = _tokens_of(frame)
        order = sorted_by_length([" ".join(row) for row in words])
        run_on = device()
        model.to(run_on).eval()
        predicted: list[list[str]] = [[] for _ in words]
        truncated = np.zeros(len(words), dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, len(order), training.eval_batch_size):
                rows = order[start : start + training.eval_batch_size]
                batch = tokenizer(
                    [words[i] for i in rows],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=training.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = model(**{key: value.to(run_on) for key, value in batch.items()}).logits
                best = logits.argmax(dim=-1).cpu().numpy()
                for b, row in enumerate(rows):
                    tags = [names[int(best[b, position])] for position, _ in _word_starts(batch.word_ids(b))]
                    truncated[row] = len(words[row]) - len(tags)
                    predicted[row] = tags + [OUTSIDE] * int(truncated[row])
        return pd.DataFrame({"predicted": predicted, "truncated_words": truncated})

    def test_metrics(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        scores = sequence_scores(
            _as_tag_lists(frame[TAGS]), _as_tag_lists(predictions["predicted"]), labels, self.settings.scheme
        )
        if "truncated_words" in predictions.columns:
            scores["truncated_words"] = int(predictions["truncated_words"].sum())
        return scores

    def confusion(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> list[list[int]]:
        from sklearn.metrics import confusion_matrix

        truth = [tag for row in _as_tag_lists(frame[TAGS]) for tag in row]
        predicted = [tag for row in _as_tag_lists(predictions["predicted"]) for tag in row]
        return confusion_matrix(truth, predicted, labels=list(labels)).astype(int).tolist()

    def metric_tables(self, metrics: dict[str, Any], production: dict[str, Any] | None) -> list[tuple[str, Table]]:
        title = "Per entity type (strict IOB2)" if self.iob2 else "Per tag"
        table = per_class_table(metrics, production)
        table.columns[0] = "entity type" if self.iob2 else "tag"
        return [(title, table)]

    def prediction_columns(self, predictions: pd.DataFrame) -> dict[str, Any]:
        return {
            "predicted": [list(map(str, row)) for row in predictions["predicted"]],
            "truncated_words": predictions["truncated_words"].to_numpy(dtype=np.int64),
        }

    # -- bootstrap and baselines ---------------------------------------------------------------

    def resampled_metrics(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """:meth:`test_metrics` on every resample of the sentences, from per-sentence counts: entities (strict
        IOB2, as seqeval finds them) or tags, true, predicted and right, per type; words and words right."""
        return resampled_sequence_scores(
            _as_tag_lists(frame[TAGS]), _as_tag_lists(predictions["predicted"]), labels, self.settings.scheme, weights
        )

    def baselines(self, train: pd.DataFrame | None, test: pd.DataFrame, labels: Sequence[str]) -> list[Baseline]:
        """Every word tagged ``O`` (outside any entity; the most frequent tag of train where there is no ``O``).

        A tagger that does not beat it finds no entity at all. There is no linear baseline: TF-IDF features of a
        whole text say nothing about one word's tag, and a per-word model is a project of its own.
        """
        if OUTSIDE in labels:
            tag, why = OUTSIDE, "outside any entity"
        else:
            source = train if train is not None else test
            tag = Counter(tag for row in _as_tag_lists(source[TAGS]) for tag in row).most_common(1)[0][0]
            why = "the most frequent tag of " + ("train" if train is not None else "test")
        words = _tokens_of(test)
        predictions = pd.DataFrame(
            {"predicted": [[tag] * len(row) for row in words], "truncated_words": np.zeros(len(words), dtype=np.int64)}
        )
        return [Baseline("all_" + tag.lower(), CONSTANT, f"every word tagged {tag!r} ({why})", predictions)]

    # -- model card ----------------------------------------------------------------------------

    def card_summary(self, labels: Sequence[str], metrics: dict[str, Any]) -> str:
        if self.iob2:
            kinds = list(dict.fromkeys(t for t in (entity_type(tag) for tag in labels) if t))
            return (
                f"A named-entity tagger (IOB2 tags) for {len(kinds)} entity types "
                f"({', '.join(f'`{kind}`' for kind in kinds)}). On the held-out test split it reaches entity-level "
                f"F1 **{float(metrics['f1']):.4f}** (precision {float(metrics['precision']):.4f}, recall "
                f"{float(metrics['recall']):.4f}; seqeval, strict IOB2) and token accuracy "
                f"**{float(metrics['token_accuracy']):.4f}**."
            )
        return (
            f"A token tagger over {len(labels)} tags ({', '.join(f'`{tag}`' for tag in labels)}). On the held-out "
            f"test split it reaches token accuracy **{float(metrics['token_accuracy']):.4f}** and macro-F1 over tags "
            f"**{float(metrics['f1_macro']):.4f}**."
        )

    def usage_snippet(self) -> str:
        return "\n".join(
            [
                "from transformers import pipeline",
                "",
                'tagger = pipeline("token-classification", model=DIRECTORY, aggregation_strategy="simple")',
                'for entity in tagger("Angela Merkel visited the Siemens plant in Munich on Tuesday."):',
                '    print(entity["entity_group"], entity["word"], round(float(entity["score"]), 3))',
            ]
        )
