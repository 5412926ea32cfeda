"""Suspected mislabels in a train split: confident learning on a probe's out-of-fold probabilities.

select_model already embeds its probed train rows with each candidate's frozen encoder; for the selected one,
the same linear probe (``ProbeFeatures.classifier``) is cross-validated on those features (stratified K-fold,
seeded, scikit-learn's ``cross_val_predict``), so that every row gets class probabilities from a probe that
never saw it. cleanlab's ``find_label_issues`` (confident learning: per-class thresholds on those
probabilities, pruned by the estimated noise rates) flags the rows whose given label the probe disbelieves,
ranked by self-confidence (the probability of the given label, lowest first).

Used by ``ftpipe.steps.select_model`` under ``selection.label_noise`` (``report``, ``quarantine`` or ``off``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftpipe.results import SuspectedLabel
from ftpipe.tasks.base import ProbeFeatures

logger = logging.getLogger(__name__)

LABEL_ISSUES_LISTED = 100
"""Suspects listed in the result and the report (the count and the quarantine cover them all)."""
EXCERPT_CHARACTERS = 160


@dataclass(frozen=True)
class LabelIssues:
    """The outcome of one check; ``positions`` index the checked rows, most doubtful first."""

    checked_rows: int
    positions: np.ndarray
    given: np.ndarray  # per flagged row: its given class
    suggested: np.ndarray  # per flagged row: the most probable class other than the given one
    confidence: np.ndarray  # per flagged row: the out-of-fold probability of ``suggested``
    given_probability: np.ndarray  # per flagged row: the out-of-fold probability of the given class
    folds: int
    note: str | None = None  # why nothing could be checked, when so


def out_of_fold_probabilities(probe: ProbeFeatures, folds: int, seed: int) -> np.ndarray:
    """Class probabilities of every row from the probe fitted on the other folds (columns: the sorted classes
    present in ``probe.given``)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(clone(probe.classifier), probe.features, probe.given, cv=splitter, method="predict_proba")


def find_label_issues(probe: ProbeFeatures, folds: int, seed: int) -> LabelIssues:
    """Flag the rows of ``probe`` whose given class confident learning doubts.

    Folds shrink to the smallest class's row count (stratified K-fold needs a row of each class in every fold);
    a class with a single row leaves nothing to cross-validate, and the check says so in ``note``.
    """
    import cleanlab.filter

    given = np.asarray(probe.given, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    nothing = dict(positions=empty, given=empty, suggested=empty, confidence=np.zeros(0), given_probability=np.zeros(0))
    # Classes absent from the probed rows have no column: compact the present ones to 0..k-1 for cleanlab.
    classes, compact = np.unique(given, return_inverse=True)
    smallest = int(np.bincount(compact).min()) if len(given) else 0
    if len(classes) < 2 or smallest < 2:
        note = (
            f"needs two or more classes with at least two probed rows each; the probed rows hold {len(classes)} "
            f"class(es), the smallest with {smallest} row(s)"
        )
        return LabelIssues(len(given), folds=0, note=note, **nothing)
    folds = min(folds, smallest)
    compact_probe = ProbeFeatures(probe.features, compact, probe.classifier)
    probabilities = out_of_fold_probabilities(compact_probe, folds, seed)
    # n_jobs=1: cleanlab otherwise forks a multiprocessing pool, and a fork of a process whose torch threads are
    # running can hang forever (it did, in the test suite); the work is a few array operations anyway.
    positions = cleanlab.filter.find_label_issues(
        labels=compact, pred_probs=probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    positions = np.asarray(positions, dtype=np.int64)
    flagged = probabilities[positions].copy()
    given_probability = flagged[np.arange(len(positions)), compact[positions]]
    flagged[np.arange(len(positions)), compact[positions]] = -1.0  # a suggestion must differ from the given label
    best_other = flagged.argmax(axis=1)
    return LabelIssues(
        checked_rows=len(given),
        positions=positions,
        given=given[positions],
        suggested=classes[best_other],
        confidence=flagged[np.arange(len(positions)), best_other],
        given_probability=given_probability,
        folds=folds,
    )


def suspects(
    issues: LabelIssues, rows: np.ndarray, texts: Sequence[str], labels: Sequence[str], limit: int | None = None
) -> list[SuspectedLabel]:
    """The flagged rows as result records: ``rows`` maps each checked row to its position in the train split,
    ``texts`` are the checked rows' texts and ``labels`` the class names."""
    listed = len(issues.positions) if limit is None else min(limit, len(issues.positions))
    return [
        SuspectedLabel(
            row=int(rows[position]),
            text=excerpt(texts[position]),
            given=labels[int(given)],
            suggested=labels[int(suggested)],
            confidence=round(float(confidence), 4),
            given_probability=round(float(given_probability), 4),
        )
        for position, given, suggested, confidence, given_probability in zip(
            issues.positions[:listed],
            issues.given[:listed],
            issues.suggested[:listed],
            issues.confidence[:listed],
            issues.given_probability[:listed],
            strict=True,
        )
    ]


def excerpt(text: str) -> str:
    """One line of at most EXCERPT_CHARACTERS characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= EXCERPT_CHARACTERS else flat[: EXCERPT_CHARACTERS - 1] + "…"


def without_rows(frame: pd.DataFrame, rows: Sequence[int]) -> pd.DataFrame:
    """``frame`` less the rows at positions ``rows`` (the index is positions, as read from parquet)."""
    keep = np.ones(len(frame), dtype=bool)
    keep[np.asarray(list(rows), dtype=np.int64)] = False
    return frame[keep].reset_index(drop=True)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as a parquet file, without the pandas index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()
