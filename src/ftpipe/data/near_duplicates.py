"""Near-duplicate texts: MinHash signatures of word shingles, bucketed by LSH with datasketch's band parameters.

clean_data calls :func:`signatures` once on the distinct cleaned texts, then :func:`near_copies` (within a split:
every text near an earlier kept one is a copy of it) and :func:`near_matches` (validation/test texts near a train
text). Two texts are near when the Jaccard similarity of their sets of word shingles (``shingle`` consecutive
words of the lower-cased text, punctuation removed; a text of fewer words is one shingle of all of them) is at
least ``threshold``, as estimated by the share of equal MinHash values. Candidates come from LSH buckets: the
signature is cut into bands (how many, of how many values: datasketch's ``MinHashLSH`` optimum for the
threshold, see :func:`bands`), and texts with an equal band share a bucket; each candidate is checked on the
signatures before it counts.

Everything runs over all texts at once with numpy, not text by text: a per-text ``MinHash.update`` and
``MinHashLSH.insert``/``query`` in Python took 58 s of a 1,000,000-row clean_data run (500,000 distinct texts) on 2
cores. Words are hashed once per distinct word, shingles are combined from their words' hashes, and each of the
:data:`NUM_PERM` hash functions is a multiply-shift hash (Dietzfelbinger et al. 1997: ``(a * x + b) mod 2**64``,
its top 32 bits, ``a`` odd), a universal family, applied to every shingle.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

# 128 values: the estimate of a Jaccard similarity near 0.9 has a standard error of about 0.03, and LSH has
# enough bands at any threshold; more costs time linearly for little gain.
NUM_PERM = 128
_CHUNK_SHINGLES = 1 << 13  # shingles hashed at once: 8 MiB of uint64s, in cache (measured faster than 2**15-2**18)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # the golden-ratio odd constant of Fibonacci hashing


def _words(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The hash of each word of every text (flattened, uint64) and the texts' offsets into it."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(np.asarray(texts, dtype=object), type=pa.large_string())
    array = pc.replace_substring_regex(pc.utf8_lower(array), "[[:punct:]]+", " ")
    split = pc.utf8_split_whitespace(array)
    flat = split.flatten()
    words = np.asarray(pc.utf8_length(flat)) > 0  # leading or trailing spaces split off empty strings
    offsets = np.asarray(split.offsets, dtype=np.int64)
    per_text = np.bincount(np.repeat(np.arange(len(array)), np.diff(offsets))[words], minlength=len(array))
    offsets = np.concatenate(([0], np.cumsum(per_text)))
    encoded = pc.dictionary_encode(flat.filter(pa.array(words)))
    vocabulary = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    per_word = pd.util.hash_array(vocabulary, categorize=False).astype(np.uint64)
    codes = np.asarray(encoded.indices, dtype=np.int64)
    return per_word[codes], offsets


def signatures(texts: Sequence[str], shingle: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures, ``(len(texts), NUM_PERM)`` uint32, and whether each text has a word at all.

    A text without words (punctuation only) has no shingles and a meaningless signature: it is never near another.
    """
    hashes, offsets = _words(texts)
    count = np.diff(offsets)
    n = len(count)
    result = np.full((n, NUM_PERM), np.iinfo(np.uint32).max, dtype=np.uint32)
    has_words = count > 0
    if not has_words.any():
        return result, has_words
    # Shingles: one per start position with `shingle` words left in its text, or the text's first word when it is
    # shorter than that (one shingle of all its words). Combined order-sensitively: multiply by the mix constant,
    # add the next word's hash, all modulo 2**64.
    text_of = np.repeat(np.arange(n), count)
    position = np.arange(len(hashes)) - offsets[text_of]
    length = count[text_of]
    starts = np.flatnonzero((position + shingle <= length) | ((position == 0) & (length < shingle)))
    combined = np.zeros(len(starts), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for step in range(shingle):
            inside = position[starts] + step < length[starts]
            word = hashes[np.minimum(starts + step, len(hashes) - 1)]
            combined = np.where(inside, combined * _MIX + word, combined)
        # a final avalanche (splitmix64's finaliser) so that similar combined values hash apart
        combined ^= combined >> np.uint64(30)
        combined *= np.uint64(0xBF58476D1CE4E5B9)
        combined ^= combined >> np.uint64(27)
        combined *= np.uint64(0x94D049BB133111EB)
        combined ^= combined >> np.uint64(31)
    owner = text_of[starts]
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
    # Chunks of whole texts (a text's minimum is taken within one chunk), of about _CHUNK_SHINGLES shingles.
    ends = np.cumsum(np.bincount(owner, minlength=n))  # each text's shingles end here (owner is sorted)
    text = 0
    while text < n:
        begin = int(ends[text - 1]) if text else 0
        stop = max(text + 1, int(np.searchsorted(ends, begin + _CHUNK_SHINGLES, side="right")))
        here = np.arange(text, stop)[has_words[text:stop]]
        if len(here):
            end = int(ends[stop - 1])
            # (hash function, shingle): each text's shingles are contiguous in a row, which reduceat runs along fast
            values = np.multiply(a[:, None], combined[None, begin:end])  # wraps modulo 2**64, as it should
            np.add(values, b[:, None], out=values)
            np.right_shift(values, np.uint64(32), out=values)
            first = np.concatenate(([begin], ends[here[:-1]])) - begin
            result[here] = np.minimum.reduceat(values, first, axis=1).T
        text = stop
    return result, has_words


@functools.cache
def bands(threshold: float) -> tuple[int, int]:
    """datasketch's LSH bands and rows per band for ``threshold`` over :data:`NUM_PERM` values.

    Tuned against false negatives: every candidate is checked on its signature anyway, so a false positive costs one
    comparison, a false negative a copy missed. At 0.7 this gives 20 bands of 6 values: a pair at the threshold
    is a candidate 92% of the time (44% with datasketch's even weights), one at 0.5 27%.
    """
    from datasketch import MinHashLSH

    index = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=(0.1, 0.9))
    return index.b, index.r


def _band_keys(signatures_: np.ndarray, group: np.ndarray | None, threshold: float) -> np.ndarray:
    """One uint64 key per (band, item): the band's values (and the item's group) combined; equal keys, one bucket."""
    count, rows = bands(threshold)
    keys = np.empty((count, len(signatures_)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(count):
            key = np.zeros(len(signatures_), dtype=np.uint64) if group is None else group.astype(np.uint64)
            for column in range(band * rows, (band + 1) * rows):
                key = key * _MIX + signatures_[:, column].astype(np.uint64)
            keys[band] = key
    return keys


def _similarity(signatures_: np.ndarray, left: np.ndarray, right: np.ndarray, other: np.ndarray | None = None):
    """The share of equal values of each pair (left[i], right[i]), in blocks (a pair is 128 comparisons)."""
    other = signatures_ if other is None else other
    result = np.empty(len(left), dtype=np.float64)
    for start in range(0, len(left), 1 << 16):
        part = slice(start, start + (1 << 16))
        result[part] = (signatures_[left[part]] == other[right[part]]).mean(axis=1)
    return result


def near_copies(signatures_: np.ndarray, group: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Which items are near-copies of an item kept before them, visiting the items (signature rows) in order.

    Only items of the same ``group`` (int64 per item: a split and a target) are compared. Candidates come from
    LSH buckets (:func:`bands`): in each band an item is compared with the first and the previous item of its
    bucket, all buckets at once with numpy. Then, in order, an item with a candidate at ``threshold`` or above
    that was kept is a copy of the most similar such candidate; the others are kept. A copy is never what a later
    item copies, so a chain of small edits does not drift away from what was kept. Returns the kept item each
    item copies (-1: none) and the estimated similarity.
    """
    n = len(signatures_)
    copy_of = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n, dtype=np.float64)
    if n < 2:
        return copy_of, similarity
    later, earlier = [], []
    for keys in _band_keys(signatures_, group, threshold):
        order = np.argsort(keys, kind="stable")  # by bucket, then by visiting order
        sorted_keys = keys[order]
        same = sorted_keys[1:] == sorted_keys[:-1]
        starts = np.flatnonzero(np.concatenate(([True], ~same)))
        bucket_first = order[starts[np.cumsum(np.concatenate(([True], ~same))) - 1]]
        members = np.flatnonzero(np.concatenate(([False], same)))  # not the first of their bucket
        later += [order[members], order[members]]
        earlier += [bucket_first[members], order[members - 1]]
    if not later:
        return copy_of, similarity
    pairs = np.unique(np.stack([np.concatenate(later), np.concatenate(earlier)], axis=1), axis=0)
    scores = _similarity(signatures_, pairs[:, 0], pairs[:, 1])
    near = scores >= threshold
    pairs, scores = pairs[near], scores[near]
    # Greedy, in visiting order, over the pairs that pass: a candidate counts only if it was kept.
    kept = np.ones(n, dtype=bool)
    bounds = np.searchsorted(pairs[:, 0], np.arange(n + 1))
    for item in np.unique(pairs[:, 0]).tolist():
        start, end = bounds[item], bounds[item + 1]
        candidates, values = pairs[start:end, 1], scores[start:end]
        alive = kept[candidates]
        if alive.any():
            best = int(np.argmax(np.where(alive, values, -1.0)))
            copy_of[item], similarity[item] = int(candidates[best]), float(values[best])
            kept[item] = False
    return copy_of, similarity


def near_matches(reference: np.ndarray, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``queries`` (signatures), the most similar row of ``reference`` at ``threshold`` or above.

    Candidates: in each LSH band, the first reference row of the query's bucket. Returns (the matched row of
    ``reference`` or -1, the estimated similarity), one per query.
    """
    matched = np.full(len(queries), -1, dtype=np.int64)
    similarity = np.zeros(len(queries), dtype=np.float64)
    if not len(reference) or not len(queries):
        return matched, similarity
    query_items, reference_items = [], []
    for reference_keys, query_keys in zip(
        _band_keys(reference, None, threshold), _band_keys(queries, None, threshold), strict=True
    ):
        order = np.argsort(reference_keys, kind="stable")
        sorted_keys = reference_keys[order]
        at = np.minimum(np.searchsorted(sorted_keys, query_keys), len(order) - 1)
        hit = sorted_keys[at] == query_keys
        query_items.append(np.flatnonzero(hit))
        reference_items.append(order[at[hit]])
    pairs = np.unique(np.stack([np.concatenate(query_items), np.concatenate(reference_items)], axis=1), axis=0)
    if not len(pairs):
        return matched, similarity
    scores = _similarity(queries, pairs[:, 0], pairs[:, 1], reference)
    near = scores >= threshold
    pairs, scores = pairs[near], scores[near]
    # the best per query: sort by (query, -score) and take each query's first
    order = np.lexsort((-scores, pairs[:, 0]))
    pairs, scores = pairs[order], scores[order]
    first = np.concatenate(([True], pairs[1:, 0] != pairs[:-1, 0])) if len(pairs) else np.zeros(0, dtype=bool)
    matched[pairs[first, 0]], similarity[pairs[first, 0]] = pairs[first, 1], scores[first]
    return matched, similarity
