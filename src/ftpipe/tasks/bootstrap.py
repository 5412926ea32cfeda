"""Bootstrap resampling of a test split, shared by the tasks' :meth:`~ftpipe.tasks.base.Task.resampled_metrics`.

A resample is ``n`` rows drawn with replacement from the ``n`` test rows; it is represented by its **counts**, how
many times each row was drawn (an int matrix ``weights[b, i]``, one row per resample). Every metric that sums
something over rows (confusion counts, squared errors, n-gram statistics) is then one matrix product
``weights @ per_row_values``, for all resamples at once, instead of a Python loop calling scikit-learn 1,000 times.
Evaluate draws the counts once and scores the model, the production model and the baselines on the very same
resamples, which is what makes the differences between them *paired*.

``evaluate`` calls :func:`resample_chunks` and hands each chunk to the task; the chunks bound the memory a
resample matrix takes on a large test split (1,000 resamples of 100,000 rows would be 400 MB at once).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MAX_CELLS = 4_000_000  # resample-matrix cells per chunk: 16 MB of int32, and so many floats per intermediate


def resample_chunks(rows: int, resamples: int, seed: int, max_cells: int = MAX_CELLS) -> Iterator[np.ndarray]:
    """``resamples`` bootstrap resamples of ``rows`` rows as int32 count matrices, in chunks of whole resamples.

    The draws depend only on (rows, resamples, seed): the same every run, whatever the chunk size.
    """
    rng = np.random.default_rng(seed)
    per_chunk = max(1, max_cells // max(rows, 1))
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        drawn = rng.integers(0, rows, size=(count, rows))
        flat = (drawn + (np.arange(count) * rows)[:, None]).ravel()
        yield np.bincount(flat, minlength=count * rows).reshape(count, rows).astype(np.int32)


def weighted_sum(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``weights @ values`` in float64 (values per row, 1-D or 2-D)."""
    return weights.astype(np.float64) @ np.asarray(values, dtype=np.float64)


def one_hot_counts(weights: np.ndarray, codes: np.ndarray, size: int) -> np.ndarray:
    """How many rows of each code (0..size-1) every resample holds: ``[resamples, size]``."""
    from scipy import sparse

    n = len(codes)
    matrix = sparse.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, size))
    return np.asarray((matrix.T @ weights.T.astype(np.float64)).T)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def weighted_pearson(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation per resample of x and y (per row, or ``[resamples, rows]``); 0 where either is constant.

    0 for a constant vector matches ``regression._correlation`` (the correlation is undefined there).
    """
    w = weights.astype(np.float64)
    total = w.sum(axis=1)
    x = np.broadcast_to(np.asarray(x, dtype=np.float64), w.shape)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), w.shape)
    mean_x = (w * x).sum(axis=1) / total
    mean_y = (w * y).sum(axis=1) / total
    dx, dy = x - mean_x[:, None], y - mean_y[:, None]
    cov = (w * dx * dy).sum(axis=1)
    var_x, var_y = (w * dx * dx).sum(axis=1), (w * dy * dy).sum(axis=1)
    # relative floor: a resample of one distinct value has a variance of rounding noise, not 0
    floor_x = 1e-12 * np.maximum((w * x * x).sum(axis=1), 1e-300)
    floor_y = 1e-12 * np.maximum((w * y * y).sum(axis=1), 1e-300)
    constant = (var_x <= floor_x) | (var_y <= floor_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = cov / np.sqrt(var_x * var_y)
    return np.where(constant, 0.0, np.clip(value, -1.0, 1.0))


def weighted_midranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each row's rank among the rows of each resample (ties get their mean rank, as ``scipy.stats.rankdata``).

    A row drawn c times stands for c tied copies: its rank is (rows drawn with a smaller value) + (c + 1) / 2, and
    rows with equal values share their group's count.
    """
    distinct, group = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True)
    counts = one_hot_counts(weights, group, len(distinct))  # [resamples, distinct values]
    below = np.cumsum(counts, axis=1) - counts
    mid = below + (counts + 1) / 2
    return mid[:, group]


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``samples`` (NaN resamples ignored; NaN when all are)."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[~np.isnan(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)
