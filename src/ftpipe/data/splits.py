"""The seeded train/validation/test split of one file, stratified on the task's key where its strata allow it."""

from __future__ import annotations

from typing import Any

import numpy as np

from ftpipe.config import SplitConfig
from ftpipe.errors import DataError


def carve(
    positions: np.ndarray,
    strata: np.ndarray | None,
    size: float,
    seed: int,
    what: str,
    notes: list[str],
    names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split ``positions`` into (rest, part), stratified on ``strata`` (per row) where the stratum sizes allow it.

    ``names``: what each stratum value stands for (e.g. the labels), for the notes.
    """
    from sklearn.model_selection import train_test_split

    if strata is not None:
        key = strata[positions].astype(np.int64)
        values, counts = np.unique(key, return_counts=True)
        rare = values[counts < 2]
        if rare.size:
            shown = [repr(names[value]) if names else str(value) for value in rare[:5].tolist()]
            notes.append(
                f"splitting off {what}: {'label(s)' if names else 'strata'} {', '.join(shown)}"
                f"{', ...' if rare.size > 5 else ''} have a single row and are not stratified"
            )
            in_rare = np.isin(key, rare)
            key[in_rare] = key.min() - 1 if in_rare.sum() >= 2 else int(values[np.argmax(counts)])
        try:
            rest, part = train_test_split(positions, test_size=size, random_state=seed, stratify=key)
            return rest, part, True
        except ValueError as error:
            notes.append(f"splitting off {what}: a stratified split is impossible ({error}); used a random split")
    try:
        rest, part = train_test_split(positions, test_size=size, random_state=seed)
    except ValueError:
        raise DataError(
            f"only {len(positions)} rows left after cleaning: too few to split into train/validation/test"
        ) from None
    return rest, part, False


def split_positions(
    ordered: np.ndarray, strata: np.ndarray | None, split: SplitConfig, size: int, names: list[str] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split codes (0 train, 1 validation, 2 test, -1 elsewhere) for ``size`` rows, of which ``ordered`` take part.

    ``ordered`` must be in an order that depends only on the rows' content, so that the split does too.
    """
    codes = np.full(size, -1, dtype=np.int8)
    notes: list[str] = []
    rest, test, test_stratified = carve(
        ordered, strata, split.test_fraction, split.seed, "the test split", notes, names
    )
    validation_share = split.validation_fraction / (1.0 - split.test_fraction)
    train, validation, validation_stratified = carve(
        rest, strata, validation_share, split.seed, "the validation split", notes, names
    )
    codes[train], codes[validation], codes[test] = 0, 1, 2
    info = {
        "mode": "split from one file",
        "stratified": strata is not None and test_stratified and validation_stratified,
        "validation_fraction": split.validation_fraction,
        "test_fraction": split.test_fraction,
        "seed": split.seed,
        "notes": notes,
    }
    return codes, info
