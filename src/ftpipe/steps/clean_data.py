"""Step 1 of the pipeline: read labelled text, clean it, split it, and quarantine what cannot be used.

``run(config, output_uri)`` reads CSV, JSON Lines, Parquet or CoNLL files from S3 or a local path
(either one file, which it splits into train/validation/test stratified on the task's key, or the
user's own three splits, kept as given), cleans every text, has the task (``ftpipe.tasks``) check
every target, filters by token length with the tokenizer of the model to be trained, removes
duplicates and train/evaluation leakage, and writes under ``output_uri``::

    train.parquet  validation.parquet  test.parquet   text and the task's target columns (text_classification:
                                                       label, label_id)
    quarantine.parquet                                 every rejected row: source_split, row, text, label, reason,
                                                       duplicate_of (the row kept in a copy's place)
    report.json  report.md  report.html               counts, target distributions, token lengths, fingerprint

Nothing is dropped silently: each input row is either kept in exactly one split or quarantined with
exactly one reason, the first that applies in this order (the order of :data:`REASONS`):

1. ``missing_text``: the text cell is empty or null; ``too_long``: it holds more than ``cleaning.max_chars``
   characters as read (checked before any cleaning or tokenizing touches it).
2. ``empty_text`` / ``too_short``: nothing, or fewer than ``cleaning.min_chars`` characters, is left after cleaning.
3. the task's target reasons, in its order (``Task.target_reasons``): for text_classification ``missing_label`` /
   ``unknown_label``: no label, or one (after ``data.label_mapping``) outside ``data.labels``.
4. ``too_few_tokens`` / ``too_many_tokens``: outside ``cleaning.min_tokens`` .. ``cleaning.max_tokens``, counted
   with special tokens, as the model will see the text.
5. ``conflicting_labels`` (with ``cleaning.deduplicate``): the same cleaned text occurs with different targets
   anywhere in the input. Every copy is quarantined: there is no way to tell which label is right, and keeping
   one copy would train (or score) the model on a coin toss. Not for the generative tasks, where a prompt may
   have several right replies (``Task.one_target_per_text``).
6. ``duplicate`` (with ``cleaning.deduplicate``): an exact copy of an earlier row's cleaned text and target;
   the first copy is kept. With the user's own splits this is per split; copies across splits are leakage.
   ``near_duplicate`` (with ``cleaning.deduplicate`` and ``cleaning.near_duplicate_threshold``): what is left, a
   text whose word shingles (``cleaning.near_duplicate_shingle`` words) have a Jaccard similarity of at least the
   threshold with a kept text of the same file and target (MinHash LSH, :mod:`ftpipe.data.near_duplicates`).
   Texts are visited in content order (their digest), so which copy is kept does not depend on the row order.
7. ``rare_label`` (tasks whose split strata are their labels, ``Task.label_strata``): the row's label (multi-label:
   its rarest label) has fewer than ``cleaning.min_rows_per_label`` usable rows in train (in the whole file when
   it is split here): it can be neither split nor learned. Listed in the report and the log.
8. ``leakage`` (with ``cleaning.remove_leakage``): a validation or test row whose cleaned text is also in the
   cleaned train split; ``near_leakage``: one near a kept train text (any target), as for ``near_duplicate``.

``duplicate_of`` in the quarantine is the ``row`` kept in a copy's place: of the same file for ``duplicate`` and
``near_duplicate``, of the train file (or the one file) for ``leakage`` and ``near_leakage``.

Cleaning a text (:func:`ftpipe.text.clean_texts`): HTML tags removed (script/style bodies and comments too) and entities
unescaped, Unicode normalised (``cleaning.unicode_form``), control characters turned into spaces and invisible
format characters (soft hyphen, zero-width space, word joiner, BOM) deleted, whitespace runs collapsed to one
space and stripped, optionally lower-cased. Work is vectorised (pyarrow string kernels) and the expensive
per-row parts run only on the rows that need them: cleaning once per distinct raw text (HTML on texts with ``<``
or ``&``, Unicode normalisation on non-ASCII texts), tokenization once per distinct cleaned text, and only for
the texts that might break ``min_tokens``..``max_tokens``: for WordPiece and byte-level BPE tokenizers a bound on
the token count from the characters (:class:`ftpipe.text.TokenBound`) proves the others fit, so they are not
tokenized, and the report's token-length statistics come from a seeded sample of them
(``cleaning.token_stats_sample``; the report says so). The kept and quarantined rows are exactly those of
tokenizing every text.

A single file is split after cleaning and de-duplication, so duplicates never straddle splits, and the split
depends only on the set of rows and the seed, not on their order in the file.

Everything is computed and checked before the first byte is written: bad input ends in one
:class:`~ftpipe.errors.DataError` (or :class:`~ftpipe.errors.StorageError`) and no output at all.

The data is never whole in memory: the inputs are read in batches of ``_BATCH_ROWS`` rows
(:func:`ftpipe.data.readers.iter_source`; a JSON array and a CoNLL file are read whole, then cut). A first pass
cleans each batch and keeps, per row, fixed-width state only (source, row, reason, the code of its cleaned text,
its target cell, equal strings shared), and per distinct cleaned text its sha256, length, token count where one
is needed and MinHash signature (in a scratch file); it copies the batch's raw and cleaned texts to a scratch
Parquet file. Every global decision (conflicts, duplicates, near-duplicates, rare labels, the split, leakage, the
fingerprint) works on those arrays. A second pass reads the copy back batch by batch and writes each row to its
split or the quarantine, then the files are uploaded. What is held whole: the task's targets
(``Task.encode_targets`` sees every row's target cell; for text targets such as seq2seq's that is every target
text), the splits' target columns, and, during the near-duplicate step, the signatures of the texts compared
(512 bytes each). A batch's result is that of the whole file: tests/unit/test_clean_data_streaming.py.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftpipe import reports
from ftpipe.config import PipelineConfig
from ftpipe.data.fingerprint import content_order, digests, fingerprint
from ftpipe.data.near_duplicates import NUM_PERM
from ftpipe.data.readers import SINGLE, SOURCES, SPLITS, Source, iter_source, resolve_format, sources
from ftpipe.errors import DataError
from ftpipe.results import CleanDataResult
from ftpipe.steps import REPORT_LIBRARIES, TOKENIZER_LIBRARIES
from ftpipe.storage import Storage, full_disk_errors, join
from ftpipe.tasks import Task, get_task
from ftpipe.tasks.base import Targets
from ftpipe.text import STR, clean_texts

logger = logging.getLogger(__name__)

LIBRARIES = (*TOKENIZER_LIBRARIES, "sklearn.model_selection", *REPORT_LIBRARIES)

TEXT_REASONS = ("missing_text", "too_long", "empty_text", "too_short")
LENGTH_REASONS = ("too_few_tokens", "too_many_tokens")
DUPLICATE_REASONS = ("conflicting_labels", "duplicate", "near_duplicate")
LABEL_REASONS = ("rare_label",)  # only for tasks whose strata are labels (Task.label_strata)
LEAKAGE_REASONS = ("leakage", "near_leakage")
_NEAR_EXAMPLES = 5  # per reason, in the report
_HISTOGRAM_BINS = 40
# Rows read, cleaned and written at once: what is in memory of the texts, whatever the size of the data.
_BATCH_ROWS = 1 << 18
_SIGN_TEXTS = 1 << 15  # texts signed at once (near-duplicates)

__all__ = ["CleanDataResult", "reasons", "run"]


def reasons(task: Task) -> tuple[str, ...]:
    """Every quarantine reason of a run of ``task``, in the order they apply."""
    labels = LABEL_REASONS if task.label_strata else ()
    return (*TEXT_REASONS, *task.target_reasons, *LENGTH_REASONS, *DUPLICATE_REASONS, *labels, *LEAKAGE_REASONS)


@dataclass
class _Rows:
    """Every input row of every source, in input order, with its fate so far: fixed-width arrays, no texts."""

    reasons: tuple[str, ...]
    source: np.ndarray  # int8 code into SOURCES
    row: np.ndarray  # int64, 0-based position among the source file's data rows
    raw_target: np.ndarray  # object: the target cells as read (equal strings share one object)
    reason: np.ndarray  # int8: 0 kept, else 1 + index into reasons
    duplicate_of: np.ndarray = field(init=False)  # int64: the `row` kept in a copy's place (-1: not a copy)

    def __post_init__(self) -> None:
        self.duplicate_of = np.full(len(self.source), -1, dtype=np.int64)
        self.code = {name: code for code, name in enumerate(self.reasons, start=1)}

    @property
    def alive(self) -> np.ndarray:
        return self.reason == 0

    def reject(self, mask: np.ndarray, reason: str) -> int:
        """Quarantine the still-alive rows in ``mask`` for ``reason``; returns how many."""
        hit = np.asarray(mask, dtype=bool) & (self.reason == 0)
        self.reason[hit] = self.code[reason]
        return int(hit.sum())

    def reject_copies(self, positions: np.ndarray, kept: np.ndarray, reason: str) -> np.ndarray:
        """Quarantine the still-alive rows at ``positions`` as copies of the rows at ``kept`` (aligned with them).

        Returns a mask over ``positions``: the rows quarantined now.
        """
        hit = self.reason[positions] == 0
        self.reason[positions[hit]] = self.code[reason]
        self.duplicate_of[positions[hit]] = self.row[kept[hit]]
        return hit

    def reject_by_code(self, codes: np.ndarray, names: tuple[str, ...]) -> None:
        """Quarantine the still-alive rows with a non-zero code, 1 + an index into ``names``."""
        for index, name in enumerate(names, start=1):
            self.reject(codes == index, name)

    def rejected(self) -> dict[str, int]:
        counts = np.bincount(self.reason, minlength=len(self.reasons) + 1)
        return {name: int(counts[code]) for name, code in self.code.items()}

    def rejected_by_source(self) -> dict[str, dict[str, int]]:
        result = {}
        for code in np.unique(self.source):
            counts = np.bincount(self.reason[self.source == code], minlength=len(self.reasons) + 1)
            result[SOURCES[code]] = {name: int(counts[c]) for name, c in self.code.items() if counts[c]}
        return result

    def summary(self) -> str:
        counts = {name: n for name, n in self.rejected().items() if n}
        return ", ".join(f"{n} {name}" for name, n in counts.items()) or "none rejected"


class _Column:
    """A growable 1-d or 2-d numpy array (amortised doubling), for state appended batch by batch."""

    def __init__(self, dtype: Any, width: int | None = None) -> None:
        self.width, self.size = width, 0
        self.data = np.zeros((1024,) if width is None else (1024, width), dtype=dtype)

    def extend(self, values: np.ndarray) -> None:
        if self.size + len(values) > len(self.data):
            grown = np.zeros((max(2 * len(self.data), self.size + len(values)), *self.data.shape[1:]), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : self.size + len(values)] = values
        self.size += len(values)

    def values(self) -> np.ndarray:
        return self.data[: self.size]


class _Texts:
    """The distinct cleaned texts, in order of first occurrence in the input, by their sha256 (the text itself stays
    in the scratch copy): what clean_data needs of each, computed once per text.

    A text is known by the first 128 bits of its digest (as :func:`~ftpipe.data.fingerprint.content_order` already
    assumes): a hash table of Python strings would cost more than the rows' own state.
    """

    def __init__(self) -> None:
        self.words = _Column(np.uint64, 4)  # sha256 as 4 big-endian words
        self.length = _Column(np.int64)  # characters
        self.first_row = _Column(np.int64)  # the first input row (global position) with this text
        self.tokens = _Column(np.int64)  # -1: not counted (yet)
        self.could_break = _Column(bool)  # might break min_tokens..max_tokens (no bound proves it fits)
        self.signature = _Column(np.int64)  # row in the signature file, -1: none
        self.has_words = _Column(bool)
        self._keys = np.zeros(0, dtype=np.uint64)  # sorted first words of the digests
        self._ids = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.length.size

    def find(self, words: np.ndarray) -> np.ndarray:
        """The code of each text with these digests, -1 for those not seen yet."""
        found = np.full(len(words), -1, dtype=np.int64)
        if not len(self._keys):
            return found
        left = np.searchsorted(self._keys, words[:, 0], side="left")
        right = np.searchsorted(self._keys, words[:, 0], side="right")
        known = self.words.values()
        single = np.flatnonzero(right - left == 1)
        candidate = self._ids[left[single]]
        same = known[candidate, 1] == words[single, 1]
        found[single[same]] = candidate[same]
        for index in np.flatnonzero(right - left > 1).tolist():  # equal first words: as rare as a 64-bit collision
            ids = self._ids[left[index] : right[index]]
            match = ids[known[ids, 1] == words[index, 1]]
            found[index] = match[0] if len(match) else -1
        return found

    def add(self, words: np.ndarray, length: np.ndarray, first_row: np.ndarray) -> np.ndarray:
        """New texts (in first-occurrence order); returns their codes."""
        codes = np.arange(len(self), len(self) + len(words), dtype=np.int64)
        self.words.extend(words)
        self.length.extend(length)
        self.first_row.extend(first_row)
        for column, value in ((self.tokens, -1), (self.could_break, True), (self.signature, -1)):
            column.extend(np.full(len(words), value, dtype=column.data.dtype))
        self.has_words.extend(np.zeros(len(words), dtype=bool))
        order = np.argsort(words[:, 0], kind="stable")
        at = np.searchsorted(self._keys, words[order, 0])
        self._keys = np.insert(self._keys, at, words[order, 0])
        self._ids = np.insert(self._ids, at, codes[order])
        return codes


class _Tokens:
    """Token counts of the distinct texts: in the first pass those that might break a bound (all, without one);
    a seeded sample of the others for the report's statistics once every text is known (the second pass)."""

    def __init__(self, config: PipelineConfig, storage: Storage) -> None:
        self.config, self.storage = config, storage
        self.tokenizer: Any = None
        self.bound: Any = None

    def first(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(counts, -1 where not counted; whether each might break min_tokens..max_tokens)."""
        from ftpipe.text import token_bound, token_lengths

        cleaning = self.config.cleaning
        if self.tokenizer is None:
            self.tokenizer = _tokenizer_for(self.config, self.storage)
            self.bound = token_bound(self.tokenizer) if cleaning.token_stats_sample is not None else None
        counts = np.full(len(texts), -1, dtype=np.int64)
        if self.bound is None or cleaning.min_tokens > self.bound.specials:
            could_break = np.ones(len(texts), dtype=bool)
        else:
            could_break = self.bound.upper(texts) > cleaning.max_tokens
        if could_break.any():
            counts[could_break] = token_lengths(self.tokenizer, texts[could_break])
        return counts, could_break

    def pending(self, texts: _Texts, present: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The present texts still to count for the statistics, and the report's ``counted``; as
        :func:`ftpipe.text.count_tokens_where_needed` chooses them (the same seeded sample)."""
        total = len(present)
        sample = self.config.cleaning.token_stats_sample
        could_break = texts.could_break.values()[present]
        if self.bound is None or sample is None or total <= sample:
            return present[~could_break], {"counted": total, "of": total, "sampled": False}
        rest = np.flatnonzero(~could_break)
        chosen = np.random.default_rng(self.config.data.split.seed).choice(
            rest, size=min(sample, len(rest)), replace=False
        )
        info = {
            "counted": int(could_break.sum() + len(chosen)),
            "of": total,
            "sampled": True,
            "sample": int(len(chosen)),
            "sample_seed": self.config.data.split.seed,
            "bounded_out": int(len(rest)),
        }
        return present[np.sort(chosen)], info

    def count(self, strings: list[str]) -> np.ndarray:
        from ftpipe.text import token_lengths

        return token_lengths(self.tokenizer, strings)


class _NearCopies:
    """The near-duplicate steps (:mod:`ftpipe.data.near_duplicates`) over clean_data's rows, and their examples.

    Signatures (``NUM_PERM`` uint32 per distinct text, the largest per-text state) are computed in the first pass
    and appended to a scratch file; each step reads back only those of the texts it compares.
    """

    def __init__(self, threshold: float | None, shingle: int, path: Path) -> None:
        self.threshold, self.shingle, self.path = threshold, shingle, path
        self.written = 0  # signatures in the file
        self.signed = False
        self.slot = np.zeros(0, dtype=np.int64)  # per text: its signature's row in the file, -1: none (or no words)
        self.hashed = 0
        self.examples: dict[str, list[dict[str, Any]]] = {"near_duplicate": [], "near_leakage": []}
        self.pending: list[tuple[dict[str, Any], int, int]] = []  # (example, copy row, kept row): texts to fill in
        self.seconds = 0.0

    @property
    def enabled(self) -> bool:
        return self.threshold is not None

    def write(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signatures of new texts, appended to the file; returns their rows in it and whether each has words."""
        import time

        from ftpipe.data.near_duplicates import signatures

        started = time.perf_counter()
        has_words = np.zeros(len(strings), dtype=bool)
        with open(self.path, "ab") as handle:
            # in parts: signing holds some 40 int64 values per word of its texts at once
            for begin in range(0, len(strings), _SIGN_TEXTS):
                signed, has_words[begin : begin + _SIGN_TEXTS] = signatures(
                    strings[begin : begin + _SIGN_TEXTS], self.shingle
                )
                handle.write(np.ascontiguousarray(signed).tobytes())
        rows = np.arange(self.written, self.written + len(strings), dtype=np.int64)
        self.written += len(strings)
        self.seconds += time.perf_counter() - started
        return rows, has_words

    def sign(self, texts: _Texts, text_code: np.ndarray, alive: np.ndarray) -> None:
        """Every distinct text of the alive rows with a signature and words (slot -1 for the others)."""
        present = np.unique(text_code[alive])
        present = present[texts.has_words.values()[present] & (texts.signature.values()[present] >= 0)]
        self.slot = np.full(len(texts), -1, dtype=np.int64)
        self.slot[present] = texts.signature.values()[present]
        self.hashed, self.signed = len(present), True

    def _read(self, at: np.ndarray) -> np.ndarray:
        """The signatures at file rows ``at`` (in that order), reading the file once in order."""
        result = np.empty((len(at), NUM_PERM), dtype=np.uint32)
        order = np.argsort(at, kind="stable")
        ordered = at[order]
        chunk = 1 << 15  # 16 MiB of signatures at once
        with open(self.path, "rb") as handle:
            for start in range(0, self.written, chunk):
                low, high = np.searchsorted(ordered, [start, start + chunk])
                if low == high:
                    continue
                handle.seek(start * NUM_PERM * 4)
                count = min(chunk, self.written - start) * NUM_PERM
                block = np.fromfile(handle, dtype=np.uint32, count=count).reshape(-1, NUM_PERM)
                result[order[low:high]] = block[ordered[low:high] - start]
        return result

    def within_splits(self, rows: _Rows, text_code: np.ndarray, key: np.ndarray, width: int, texts: _Texts) -> None:
        """``near_duplicate``: a row near a kept row of its own file and target (the first in content order)."""
        import time

        from ftpipe.data.near_duplicates import near_copies

        assert self.signed and self.threshold is not None
        started = time.perf_counter()
        alive = np.flatnonzero(rows.alive & (self.slot[np.maximum(text_code, 0)] >= 0))
        # One item per (file, target, text): exact copies left (deduplicate off, or across files) are not near-copies.
        combo = (text_code[alive] * width + key[alive]) * len(SOURCES) + rows.source[alive]
        _, first, inverse = np.unique(combo, return_index=True, return_inverse=True)
        items = alive[first]
        # Visited in content order (text digest, target), so that which copy is kept does not depend on row order.
        order = content_order(texts.words.values()[text_code[items]], key[items])
        items = items[order]
        group = rows.source[items].astype(np.int64) * width + key[items]
        copy_of, similarity = near_copies(self._read(self.slot[text_code[items]]), group, self.threshold)
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        item_of_row = position[inverse]  # each alive row's item, in visiting order
        copied = copy_of[item_of_row] >= 0
        copies, kept = alive[copied], items[copy_of[item_of_row[copied]]]
        hit = rows.reject_copies(copies, kept, "near_duplicate")
        scores = similarity[item_of_row[copied]][hit]
        self._note("near_duplicate", rows, copies[hit], kept[hit], scores)
        self.seconds += time.perf_counter() - started

    def across_splits(self, rows: _Rows, text_code: np.ndarray, split: np.ndarray) -> None:
        """``near_leakage``: a validation or test row near a kept train row."""
        import time

        from ftpipe.data.near_duplicates import near_matches

        assert self.signed and self.threshold is not None
        started = time.perf_counter()
        signed = rows.alive & (self.slot[np.maximum(text_code, 0)] >= 0)
        train = np.flatnonzero(signed & (split == 0))
        evaluation = np.flatnonzero(signed & (split > 0))
        train_texts, train_first = np.unique(text_code[train], return_index=True)
        eval_texts, eval_inverse = np.unique(text_code[evaluation], return_inverse=True)
        matched, similarity = near_matches(
            self._read(self.slot[train_texts]), self._read(self.slot[eval_texts]), self.threshold
        )
        per_row = matched[eval_inverse]
        leaked = per_row >= 0
        copies, kept = evaluation[leaked], train[train_first[per_row[leaked]]]
        hit = rows.reject_copies(copies, kept, "near_leakage")
        scores = similarity[eval_inverse[leaked]][hit]
        self._note("near_leakage", rows, copies[hit], kept[hit], scores)
        self.seconds += time.perf_counter() - started

    def _note(self, reason: str, rows: _Rows, copies: np.ndarray, kept: np.ndarray, scores: np.ndarray) -> None:
        """Keep a few (kept text, quarantined text) examples for the report, the least similar first; their texts
        are filled in by the second pass (:meth:`fill`)."""
        for index in np.argsort(scores, kind="stable")[:_NEAR_EXAMPLES].tolist():
            copy, original = int(copies[index]), int(kept[index])
            example = {
                "kept": "",
                "quarantined": "",
                "similarity": round(float(scores[index]), 3),
                "source_split": SOURCES[rows.source[copy]],
                "row": int(rows.row[copy]),
                "kept_split": SOURCES[rows.source[original]],
                "duplicate_of": int(rows.row[original]),
            }
            self.examples[reason].append(example)
            self.pending.append((example, copy, original))

    def wanted(self) -> list[int]:
        return [position for _, copy, kept in self.pending for position in (copy, kept)]

    def fill(self, text_at: dict[int, str]) -> None:
        for example, copy, kept in self.pending:
            example["kept"], example["quarantined"] = text_at[kept], text_at[copy]

    def summary(self, rows: _Rows) -> dict[str, Any]:
        rejected = rows.rejected()
        return {
            "threshold": self.threshold,
            "shingle": self.shingle,
            "num_perm": NUM_PERM,
            "texts_hashed": self.hashed,
            "near_duplicate": rejected["near_duplicate"],
            "near_leakage": rejected["near_leakage"],
            "seconds": round(self.seconds, 2),
            "examples": self.examples,
        }


def _reject_rare_labels(rows: _Rows, task: Task, targets: Targets, minimum: int) -> tuple[Targets, dict[str, int]]:
    """Quarantine the rows of every label with fewer than ``minimum`` usable rows as ``rare_label``.

    Counted on the rows that are or may become training rows (the user's train split, or the whole file before it
    is split), after de-duplication, so that two copies of one text count once. The targets are then encoded again
    without those rows, so that a label learnt from the data (not named in ``data.labels``) is no output of the
    model. Returns the targets and ``{label: usable rows}`` of the labels quarantined.
    """
    strata = targets.strata
    assert strata is not None, "a task with label_strata gives strata"
    train = rows.alive & ((rows.source == 0) | (rows.source == SINGLE))
    per_label = np.bincount(strata[train & (strata >= 0)], minlength=len(targets.labels))
    rare = np.flatnonzero((per_label > 0) & (per_label < minimum))
    if not len(rare):
        return targets, {}
    found = {targets.labels[index]: int(per_label[index]) for index in rare}
    hit = rows.reject(rows.alive & np.isin(strata, rare), "rare_label")
    logger.warning(
        "quarantined %d rows of %d label(s) with fewer than %d rows (cleaning.min_rows_per_label): %s",
        hit,
        len(found),
        minimum,
        ", ".join(f"{label!r} ({count})" for label, count in found.items()),
    )
    train = rows.alive & ((rows.source == 0) | (rows.source == SINGLE))
    if not train.any():
        raise DataError(
            f"no training rows left: every label has fewer than {minimum} rows (cleaning.min_rows_per_label; "
            f"{rows.summary()})"
        )
    return task.encode_targets(rows.raw_target, train), found


def _tokenizer_for(config: PipelineConfig, storage: Storage) -> Any:
    from ftpipe.models import load_tokenizer, resolve_source

    source = config.tokenizer_source
    trust = any(c.trust_remote_code for c in config.candidates if c.source == source)
    return load_tokenizer(resolve_source(source, storage), trust_remote_code=trust)


def _shared_strings(cells: np.ndarray, canonical: dict[str, str]) -> np.ndarray:
    """The target cells with equal strings as one object (a label column repeats a few strings endlessly, and
    reading gives each row its own copy)."""
    if pd.api.types.infer_dtype(cells, skipna=True) != "string":
        return cells  # numbers, lists, dicts: kept as read
    codes, uniques = pd.factorize(cells, use_na_sentinel=True)
    shared = np.array([canonical.setdefault(value, value) for value in uniques], dtype=object)
    result = cells.copy()  # missing cells (None or NaN) stay as read
    result[codes >= 0] = shared[codes[codes >= 0]]
    return result


def _clean_batch(raw_text: pd.Series, cleaning: Any, code: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-2 on one batch: (reason codes so far, each row's index into the distinct cleaned texts or -1, those
    texts). Cleaned once per distinct raw text of the batch (exact copies are common, and cleaning is costly)."""
    reason = np.zeros(len(raw_text), dtype=np.int8)
    reason[raw_text.isna().to_numpy()] = code["missing_text"]
    usable = raw_text
    if cleaning.max_chars is not None:
        # A text over max_chars is quarantined as read: cleaning and tokenizing a multi-megabyte cell would cost more
        # than all the rest, and its cleaned form is never used.
        too_long = (raw_text.str.len() > cleaning.max_chars).to_numpy(dtype=bool, na_value=False)
        reason[too_long & (reason == 0)] = code["too_long"]
        usable = raw_text.mask(too_long)
    raw_code, raw_distinct = pd.factorize(usable, use_na_sentinel=True)
    cleaned = clean_texts(pd.Series(raw_distinct, dtype=STR), cleaning)
    clean_code, distinct = pd.factorize(cleaned, use_na_sentinel=True)
    local = np.full(len(raw_text), -1, dtype=np.int64)
    has_text = raw_code >= 0
    local[has_text] = clean_code[raw_code[has_text]]
    return reason, local, np.asarray(distinct, dtype=object)


def _first_pass(
    inputs: list[Source],
    config: PipelineConfig,
    task: Task,
    storage: Storage,
    scratch: Path,
    near: _NearCopies,
    tokens: _Tokens,
) -> tuple[_Rows, _Texts, np.ndarray, list[Path]]:
    """Read every input in batches; clean each batch's texts and keep fixed-width state per row and per distinct
    text (digest, length, tokens where they could break a bound, signature); copy each batch's raw and cleaned
    texts to a scratch Parquet file, which the second pass reads back. Returns the rows, the texts, each row's
    text code (-1: none) and the scratch files (one per input)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cleaning = config.cleaning
    all_reasons = reasons(task)
    code = {name: index for index, name in enumerate(all_reasons, start=1)}
    wanted = task.input_columns()
    texts = _Texts()
    parts: dict[str, list[np.ndarray]] = {"source": [], "row": [], "target": [], "reason": [], "text": []}
    canonical: dict[str, str] = {}
    copies, start = [], 0
    schema = pa.schema([("raw", pa.large_string()), ("clean", pa.large_string())])
    for source in inputs:
        copy = scratch / f"input-{source.code}.parquet"
        position = 0
        with pq.ParquetWriter(copy, schema) as writer:
            for frame in iter_source(source, config.data.format, wanted, storage, _BATCH_ROWS):
                raw_text, raw_target = task.read_rows(frame)
                raw_text = raw_text.astype(STR).reset_index(drop=True)
                n = len(raw_text)
                reason, local, distinct = _clean_batch(raw_text, cleaning, code)
                has_text = local >= 0
                words = digests(distinct)
                found = texts.find(words)
                new = np.flatnonzero(found < 0)
                if len(new):
                    _, first = np.unique(local[has_text], return_index=True)  # every code occurs
                    first = np.flatnonzero(has_text)[first]
                    lengths = pd.Series(distinct[new], dtype=STR).str.len().to_numpy(dtype=np.int64)
                    found[new] = texts.add(words[new], lengths, start + first[new])
                    _describe_new(texts, found[new], distinct[new], lengths, cleaning, tokens, near)
                text_code = np.where(has_text, found[np.maximum(local, 0)], -1)
                length = np.where(has_text, texts.length.values()[np.maximum(text_code, 0)], 0)
                reason[(length == 0) & (reason == 0)] = code["empty_text"]
                reason[(length < cleaning.min_chars) & (reason == 0)] = code["too_short"]
                clean_rows = pa.array(distinct, type=pa.large_string()).take(pa.array(local, mask=~has_text))
                table = pa.table({"raw": pa.array(raw_text, type=pa.large_string()), "clean": clean_rows})
                writer.write_table(table, row_group_size=n)
                parts["source"].append(np.full(n, source.code, dtype=np.int8))
                parts["row"].append(np.arange(position, position + n, dtype=np.int64))
                parts["target"].append(_shared_strings(np.asarray(raw_target, dtype=object), canonical))
                parts["reason"].append(reason)
                parts["text"].append(text_code)
                position += n
                start += n
        copies.append(copy)
    rows = _Rows(
        reasons=all_reasons,
        source=np.concatenate(parts["source"]),
        row=np.concatenate(parts["row"]),
        raw_target=np.concatenate(parts["target"]),
        reason=np.concatenate(parts["reason"]),
    )
    return rows, texts, np.concatenate(parts["text"]), copies


def _describe_new(
    texts: _Texts,
    codes: np.ndarray,
    strings: np.ndarray,
    lengths: np.ndarray,
    cleaning: Any,
    tokens: _Tokens,
    near: _NearCopies,
) -> None:
    """Tokens (where they could break a bound) and signatures of new texts that pass the text checks."""
    usable = np.flatnonzero((lengths > 0) & (lengths >= cleaning.min_chars))
    if not len(usable):
        return
    counts, could_break = tokens.first(strings[usable])
    texts.tokens.data[codes[usable]] = counts
    texts.could_break.data[codes[usable]] = could_break
    if near.enabled and (cleaning.deduplicate or cleaning.remove_leakage):
        at, has_words = near.write(strings[usable])
        texts.signature.data[codes[usable]] = at
        texts.has_words.data[codes[usable]] = has_words


def run(config: PipelineConfig, output_uri: str, storage: Storage | None = None) -> CleanDataResult:
    """Clean the dataset named in ``config.data`` and write splits, quarantine and reports under ``output_uri``.

    Raises:
        DataError: a file is unreadable, lacks a column, or too few usable rows are left.
        StorageError: an input cannot be fetched or an output cannot be written.
        ModelError: the tokenizer for the length filter cannot be loaded.
    """
    storage = storage or Storage(config.storage)
    with tempfile.TemporaryDirectory(prefix="ftpipe-clean-") as scratch:
        return _run(config, output_uri, storage, Path(scratch))


def _run(config: PipelineConfig, output_uri: str, storage: Storage, scratch: Path) -> CleanDataResult:
    data, cleaning = config.data, config.cleaning
    task = get_task(config)
    inputs = sources(data)
    near = _NearCopies(cleaning.near_duplicate_threshold, cleaning.near_duplicate_shingle, scratch / "signatures")
    counter = _Tokens(config, storage)
    # 1-2 (and the per-text work of 4 and 6b): the first pass
    with full_disk_errors(scratch):  # the scratch copy, and the signatures
        rows, texts, text_code, copies = _first_pass(inputs, config, task, storage, scratch, near, counter)
    n = len(rows.source)

    # 3: targets, checked and encoded by the task
    if not rows.alive.any():
        raise DataError(f"no rows left after cleaning: all {n} input rows were rejected ({rows.summary()})")
    train = rows.alive & ((rows.source == 0) | (rows.source == SINGLE))
    if not train.any():
        raise DataError(f"no usable training rows left after cleaning ({rows.summary()})")
    targets = task.encode_targets(rows.raw_target, train)
    rows.reject_by_code(targets.reason, task.target_reasons)
    key = targets.key

    # 4: token lengths, counted in the first pass where they could break a bound
    alive = rows.alive
    per_text = texts.tokens.values()
    token_info: dict[str, Any] = {"counted": 0, "of": 0, "sampled": False}
    pending = np.zeros(0, dtype=np.int64)  # texts to count in the second pass, for the statistics only
    present = np.unique(text_code[alive])
    if len(present):
        pending, token_info = counter.pending(texts, present)
        logger.info(
            "counted the tokens of %d of %d distinct texts with %s",
            token_info["counted"],
            token_info["of"],
            config.tokenizer_source,
        )
    row_tokens = np.where(alive, per_text[np.maximum(text_code, 0)], -1)
    rows.reject(alive & (row_tokens >= 0) & (row_tokens < cleaning.min_tokens), "too_few_tokens")
    rows.reject(alive & (row_tokens > cleaning.max_tokens), "too_many_tokens")
    del row_tokens

    # 5-6: conflicting targets and duplicates, on the cleaned text
    if cleaning.deduplicate:
        width = max(1, len(targets.vocabulary))
        if task.one_target_per_text:
            alive = np.flatnonzero(rows.alive)
            pairs = np.unique(text_code[alive] * width + key[alive])
            counts_per_text = np.bincount(pairs // width, minlength=len(texts))
            rows.reject(np.isin(text_code, np.flatnonzero(counts_per_text > 1)), "conflicting_labels")
        alive = np.flatnonzero(rows.alive)
        # A copy is the same text and target (with one target per text, the same text), within one file: a text
        # may recur across splits (that is leakage, below).
        example = text_code[alive] * width + key[alive]
        scope = example * len(SOURCES) + rows.source[alive]
        _, first, inverse = np.unique(scope, return_index=True, return_inverse=True)
        kept_row = alive[first][inverse]
        copies_mask = kept_row != alive
        rows.reject_copies(alive[copies_mask], kept_row[copies_mask], "duplicate")
        del example, scope, first, inverse, kept_row, copies_mask

    # 6b: near-duplicates, on what is left (MinHash of word shingles, signed once per distinct text in pass 1)
    threshold = cleaning.near_duplicate_threshold
    if threshold is not None and (cleaning.deduplicate or cleaning.remove_leakage) and rows.alive.any():
        near.sign(texts, text_code, rows.alive)
        if cleaning.deduplicate:
            near.within_splits(rows, text_code, key, max(1, len(targets.vocabulary)), texts)

    # rare labels: too few rows to split or learn from (before the split, which would otherwise fall back to an
    # unstratified one and leave the label's only row in one split)
    rare_labels: dict[str, int] = {}
    if task.label_strata and cleaning.min_rows_per_label > 1:
        targets, rare_labels = _reject_rare_labels(rows, task, targets, cleaning.min_rows_per_label)
        key = targets.key

    if not rows.alive.any():
        raise DataError(f"no rows left after cleaning: all {n} input rows were rejected ({rows.summary()})")

    # content digests of the surviving texts: the split order and the fingerprint
    alive = np.flatnonzero(rows.alive)
    if data.uri is not None:
        from ftpipe.data.splits import split_positions

        ordered = alive[content_order(texts.words.values()[text_code[alive]], key[alive])]
        split, split_info = split_positions(ordered, targets.strata, data.split, n, targets.strata_names)
        del ordered
    else:
        split = np.where(rows.alive, rows.source, -1).astype(np.int8)
        split_info = {"mode": "the user's own splits, kept as given", "stratified": None, "notes": []}

    # 7: leakage
    if cleaning.remove_leakage:
        train_rows = np.flatnonzero(rows.alive & (split == 0))[::-1]
        first_train = np.full(len(texts), -1, dtype=np.int64)  # a text's first train row (later ones overwritten)
        first_train[text_code[train_rows]] = train_rows
        leaked = np.flatnonzero(rows.alive & (split > 0) & (first_train[np.maximum(text_code, 0)] >= 0))
        rows.reject_copies(leaked, first_train[text_code[leaked]], "leakage")
        del train_rows, first_train, leaked
        if near.signed:
            near.across_splits(rows, text_code, split)

    kept = rows.alive
    counts = {name: int((kept & (split == code)).sum()) for code, name in enumerate(SPLITS)}
    for name, count in counts.items():
        if count == 0:
            raise DataError(
                f"the {name} split is empty after cleaning ({counts['train']} train, {counts['validation']} "
                f"validation, {counts['test']} test rows kept; {rows.summary()})"
            )
    rejected = rows.rejected()
    assert sum(counts.values()) + sum(rejected.values()) == n, "every input row is kept or quarantined"

    members = np.flatnonzero(kept)  # order-independent: see fingerprint (ties are equal records)
    data_fingerprint = fingerprint(
        targets.vocabulary,
        split[members],
        np.ones(len(members), dtype=bool),
        texts.words.values()[text_code[members]],
        key[members],
    )
    del members
    # The splits' target columns (the texts come in the second pass): what the report describes
    frames = {
        name: pd.DataFrame(task.split_columns(targets, np.flatnonzero(kept & (split == code))))
        for code, name in enumerate(SPLITS)
    }

    # Everything is decided: the second pass writes every split and the quarantine locally (a full disk then leaves
    # nothing in S3), and fetches the few texts the report still needs.
    first_rows = texts.first_row.values()
    wanted = sorted({*first_rows[pending].tolist(), *near.wanted()})
    text_at = _second_pass(copies, rows, split, frames, scratch, wanted)
    if len(pending):
        per_text[pending] = counter.count([text_at[position] for position in first_rows[pending].tolist()])
    near.fill(text_at)
    tokens = np.where(kept, per_text[np.maximum(text_code, 0)], -1)

    report = _report(
        config,
        task,
        inputs,
        rows,
        frames,
        targets,
        counts,
        rejected,
        split_info,
        tokens,
        token_info,
        split,
        kept,
        data_fingerprint,
    )
    report["rare_labels"] = rare_labels
    report["near_duplicates"] = near.summary(rows)
    uris = {name: join(output_uri, f"{name}.parquet") for name in (*SPLITS, "quarantine")}
    for kind, extension in (("json", "json"), ("markdown", "md"), ("html", "html")):
        uris[f"report_{kind}"] = join(output_uri, f"report.{extension}")
    report["outputs"] = uris
    document = _document(report, tokens, split, kept)

    # Every split was written locally before any is uploaded, and report.json goes last, as the sign that the rest
    # is complete.
    for name in (*SPLITS, "quarantine"):
        storage.upload_file(scratch / f"{name}.parquet", uris[name])
    storage.write_text(uris["report_markdown"], document.markdown(), content_type="text/markdown; charset=utf-8")
    storage.write_text(uris["report_html"], document.html(), content_type="text/html; charset=utf-8")
    storage.write_json(uris["report_json"], report)
    logger.info("clean_data: %d rows in, %s kept, %d quarantined", n, counts, sum(rejected.values()))
    return CleanDataResult(
        output_uri=output_uri,
        train_uri=uris["train"],
        validation_uri=uris["validation"],
        test_uri=uris["test"],
        quarantine_uri=uris["quarantine"],
        report_json_uri=uris["report_json"],
        report_markdown_uri=uris["report_markdown"],
        report_html_uri=uris["report_html"],
        fingerprint=data_fingerprint,
        labels=targets.labels,
        counts=counts,
        rejected=rejected,
    )


# -- outputs ----------------------------------------------------------------------------------------


def _second_pass(
    copies: list[Path],
    rows: _Rows,
    split: np.ndarray,
    frames: dict[str, pd.DataFrame],
    scratch: Path,
    wanted: list[int],
) -> dict[int, str]:
    """Read the scratch copies back batch by batch and write each kept row to its split's Parquet file and each
    rejected row to the quarantine's, in ``scratch``. Returns the cleaned texts of the rows at ``wanted``."""
    import pyarrow.parquet as pq

    kept = rows.alive
    # The splits' column types from all their target values (a text column of nulls stays a text column)
    schemas = {name: _schema(frame.assign(text="")[["text", *frame.columns]]) for name, frame in frames.items()}
    schemas["quarantine"] = _schema(_quarantine_frame(rows, np.zeros(1, dtype=np.int64), np.array(["x"], dtype=object)))
    done = dict.fromkeys(frames, 0)  # rows of each split written so far
    wanted_rows = np.asarray(wanted, dtype=np.int64)
    text_at: dict[int, str] = {}
    with full_disk_errors(scratch), contextlib.ExitStack() as stack:
        writers = {
            name: stack.enter_context(pq.ParquetWriter(scratch / f"{name}.parquet", schema))
            for name, schema in schemas.items()
        }
        start = 0
        for copy in copies:
            file = pq.ParquetFile(copy)
            for group in range(file.num_row_groups):
                batch = file.read_row_group(group)
                end = start + batch.num_rows
                here = slice(start, end)
                clean = batch.column("clean")
                for code, name in enumerate(SPLITS):
                    local = np.flatnonzero(kept[here] & (split[here] == code))
                    if not len(local):
                        continue
                    part = frames[name].iloc[done[name] : done[name] + len(local)].reset_index(drop=True)
                    done[name] += len(local)
                    part.insert(0, "text", clean.take(local).to_numpy(zero_copy_only=False))
                    writers[name].write_table(_table(part, schemas[name]), row_group_size=len(part))
                local = np.flatnonzero(~kept[here])
                if len(local):
                    raw = batch.column("raw").take(local).to_numpy(zero_copy_only=False)
                    frame = _quarantine_frame(rows, start + local, raw)
                    writers["quarantine"].write_table(_table(frame, schemas["quarantine"]), row_group_size=len(frame))
                at = wanted_rows[(wanted_rows >= start) & (wanted_rows < end)]
                for position, value in zip(at.tolist(), clean.take(at - start).to_pylist(), strict=True):
                    text_at[position] = value
                start = end
    return text_at


def _cell_text(value: Any) -> str | None:
    """A raw target cell as it was read, as text (lists and numbers too), for the quarantine file."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value if isinstance(value, str) else str(value.tolist() if isinstance(value, np.ndarray) else value)


def _quarantine_frame(rows: _Rows, positions: np.ndarray, raw_text: np.ndarray) -> pd.DataFrame:
    """The quarantine's rows at ``positions`` (their raw texts as read given)."""
    duplicate_of = rows.duplicate_of[positions]
    return pd.DataFrame(
        {
            "source_split": np.asarray(SOURCES, dtype=object)[rows.source[positions]],
            "row": rows.row[positions],
            "text": raw_text,
            "label": np.array([_cell_text(value) for value in rows.raw_target[positions]], dtype=object),
            "reason": np.asarray(("",) + rows.reasons, dtype=object)[rows.reason[positions]],
            # the row kept in a copy's place (duplicate, near_duplicate: in the same file; leakage, near_leakage: in
            # the train file, or the one file); empty for the other reasons
            "duplicate_of": pd.arrays.IntegerArray(duplicate_of, duplicate_of < 0),
        }
    )


def _schema(frame: pd.DataFrame) -> Any:
    """The Parquet schema of a frame's columns; a column of nulls is still a text column, not a column of nulls."""
    import pyarrow as pa

    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    for index, column in enumerate(schema):
        if pa.types.is_null(column.type):
            schema = schema.set(index, pa.field(column.name, pa.string()))
    return schema


def _table(frame: pd.DataFrame, schema: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def _token_stats(values: np.ndarray) -> dict[str, float | int]:
    if len(values) == 0:
        return {}
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": round(float(values.mean()), 2),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def _warnings(frames: dict[str, pd.DataFrame], task: Task, targets: Targets, rows: _Rows) -> list[str]:
    warnings = task.data_warnings(frames, targets)
    total = len(rows.source)
    quarantined = int((rows.reason > 0).sum())
    if quarantined * 4 > total:
        warnings.append(f"{quarantined} of {total} input rows ({quarantined / total:.0%}) were quarantined")
    return warnings


def _report(
    config: PipelineConfig,
    task: Task,
    inputs: list[Source],
    rows: _Rows,
    frames: dict[str, pd.DataFrame],
    targets: Targets,
    counts: dict[str, int],
    rejected: dict[str, int],
    split_info: dict[str, Any],
    tokens: np.ndarray,
    token_info: dict[str, Any],
    split: np.ndarray,
    kept: np.ndarray,
    data_fingerprint: str,
) -> dict[str, Any]:
    counted = kept & (tokens >= 0)  # every kept row, or those of the texts in the sample (see token_info)
    lengths = {name: tokens[counted & (split == code)] for code, name in enumerate(SPLITS)}
    everything = np.concatenate(list(lengths.values()))
    low, high = (int(everything.min()), int(everything.max())) if len(everything) else (0, 0)
    edges = np.linspace(low, high + 1, min(_HISTOGRAM_BINS, high - low + 1) + 1)
    distribution = task.describe_targets(frames)
    return {
        "step": "clean_data",
        "task": config.task.type,
        "inputs": {
            source.setting: {"uri": source.uri, "format": resolve_format(source.uri, config.data.format)}
            for source in inputs
        },
        "columns": task.input_columns(),
        "label_mapping": config.data.label_mapping,
        "labels": targets.labels,
        "rows": {
            "input": len(rows.source),
            "kept": sum(counts.values()),
            "quarantined": sum(rejected.values()),
        },
        "input_rows": {SOURCES[code]: int((rows.source == code).sum()) for code in np.unique(rows.source)},
        "counts": counts,
        "rejected": rejected,
        "rejected_by_source": rows.rejected_by_source(),
        "target_distribution": {"columns": distribution.columns, "rows": distribution.rows},
        "split": split_info,
        "token_lengths": {
            "tokenizer": config.tokenizer_source,
            "min_tokens": config.cleaning.min_tokens,
            "max_tokens": config.cleaning.max_tokens,
            # how many distinct texts were tokenized (all, or those near a bound plus a seeded sample)
            "counted": token_info,
            "per_split": {name: _token_stats(values) for name, values in lengths.items()},
            "histogram": {
                "bin_edges": [float(edge) for edge in edges],
                "counts": {name: np.histogram(values, bins=edges)[0].tolist() for name, values in lengths.items()},
            },
        },
        "cleaning": config.cleaning.model_dump(),
        "fingerprint": data_fingerprint,
        "warnings": _warnings(frames, task, targets, rows),
    }


def _figures(report: dict[str, Any], tokens: np.ndarray, split: np.ndarray, kept: np.ndarray) -> dict[str, str]:
    """The report's pictures as data: URIs (token lengths, target counts per split, rejections)."""
    from ftpipe.reports import figure_to_data_uri, new_figure

    pictures = {}
    histogram = report["token_lengths"]["histogram"]
    figure, axes = new_figure()
    axes.hist(
        [tokens[kept & (tokens >= 0) & (split == code)] for code in range(len(SPLITS))],
        bins=histogram["bin_edges"],
        stacked=True,
        label=list(SPLITS),
    )
    axes.set_xlabel("tokens per text (special tokens included)")
    axes.set_ylabel("rows")
    axes.set_title("Token lengths of the kept rows")
    axes.legend()
    pictures["tokens"] = figure_to_data_uri(figure)

    # A count table per split (label counts, tag counts) is drawn as shares of each split; others are not.
    distribution = report["target_distribution"]
    if distribution["columns"][1:] == list(SPLITS) and distribution["rows"]:
        names = [str(row[0]) for row in distribution["rows"]]
        values = np.array([row[1:] for row in distribution["rows"]], dtype=float)
        figure, axes = new_figure(max(6.0, 1.2 * len(names) + 2), 3.5)
        width = 0.8 / len(SPLITS)
        for offset, name in enumerate(SPLITS):
            positions = np.arange(len(names)) + (offset - 1) * width
            axes.bar(positions, values[:, offset] / max(1.0, values[:, offset].sum()), width, label=name)
        axes.set_xticks(np.arange(len(names)), names, rotation=30 if len(names) > 6 else 0)
        axes.set_ylabel("share of the split")
        axes.set_title(f"{distribution['columns'][0].capitalize()} distribution per split")
        axes.legend()
        pictures["targets"] = figure_to_data_uri(figure)

    reasons_hit = {name: n for name, n in report["rejected"].items() if n}
    if reasons_hit:
        figure, axes = new_figure(6.0, 0.4 * len(reasons_hit) + 1.2)
        axes.barh(list(reasons_hit), list(reasons_hit.values()), color="#b00020")
        axes.invert_yaxis()
        axes.set_xlabel("rows quarantined")
        axes.set_title("Why rows were quarantined")
        pictures["rejected"] = figure_to_data_uri(figure)
    return pictures


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _document(report: dict[str, Any], tokens: np.ndarray, split: np.ndarray, kept: np.ndarray) -> reports.Document:
    """report.md and report.html, from one document."""
    rows = report["rows"]
    stats = report["token_lengths"]["per_split"]
    split_info = report["split"]
    split_lines = [f"Mode: {split_info['mode']}."]
    if split_info.get("stratified") is not None:
        split_lines.append(
            f"Stratified: {'yes' if split_info['stratified'] else 'no'} "
            f"(validation {split_info['validation_fraction']}, test {split_info['test_fraction']}, "
            f"seed {split_info['seed']})."
        )
    split_lines += split_info["notes"]
    token_info = report["token_lengths"]
    token_line = (
        f"Tokenizer `{token_info['tokenizer']}`; rows outside {token_info['min_tokens']}..{token_info['max_tokens']} "
        "tokens are quarantined."
    )
    counted = token_info.get("counted") or {}
    if counted.get("sampled"):
        token_line += (
            f" The statistics below are of a seeded sample: {counted['counted']:,} of the {counted['of']:,} distinct "
            f"texts were tokenized (the {counted['sample']:,} sampled, seed {counted['sample_seed']}, and every one "
            "that might break a bound); the rest provably fit, by a bound on their token count from their characters."
        )
    pictures = _figures(report, tokens, split, kept)
    document = reports.Document("clean_data report")
    document.section("Summary").table(["", "rows"], [[key, rows[key]] for key in ("input", "kept", "quarantined")])
    document.text(f"Task: `{report['task']}`.")
    document.section("Splits").table(["split", "rows"], [[name, count] for name, count in report["counts"].items()])
    document.items(split_lines)
    document.section("Quarantined rows by reason")
    document.table(["reason", "rows"], [[name, n] for name, n in report["rejected"].items()])
    if report["rare_labels"]:
        minimum = report["cleaning"]["min_rows_per_label"]
        document.text(
            f"Labels with fewer than {minimum} rows (`rare_label`, every row quarantined): "
            + ", ".join(f"`{label}` ({count})" for label, count in report["rare_labels"].items())
            + "."
        )
    if "rejected" in pictures:
        document.image(pictures["rejected"], "rejections")
    distribution = report["target_distribution"]
    document.section("Targets")
    document.text("Model outputs, in order: " + ", ".join(f"`{label}`" for label in report["labels"]))
    document.table(distribution["columns"], distribution["rows"])
    if "targets" in pictures:
        document.image(pictures["targets"], "target distribution")
    document.section("Token lengths").text(token_line)
    document.table(
        ["split", "min", "median", "mean", "p95", "max"],
        [[name, *(stats[name].get(key, "") for key in ("min", "median", "mean", "p95", "max"))] for name in SPLITS],
    )
    document.image(pictures["tokens"], "tokens")
    near = report["near_duplicates"]
    if near["threshold"] is not None:
        document.section("Near-duplicates").text(
            f"MinHash LSH ({near['num_perm']} hash values) of {near['shingle']}-word shingles of the cleaned text: "
            f"{near['near_duplicate']} near-copies within a split and {near['near_leakage']} validation/test rows near "
            f"a train row quarantined, at Jaccard similarity {near['threshold']} or more "
            f"({near['texts_hashed']:,} distinct texts hashed in {near['seconds']} s)."
        )
        examples = [(reason, e) for reason, found in near["examples"].items() for e in found]
        if examples:
            document.table(
                ["reason", "similarity", "kept", "quarantined"],
                [[reason, e["similarity"], _shorten(e["kept"]), _shorten(e["quarantined"])] for reason, e in examples],
            )
    if report["warnings"]:
        document.section("Warnings").items(report["warnings"], css="fail")
    document.section("Fingerprint").text(f"`{report['fingerprint']}`")
    return document
