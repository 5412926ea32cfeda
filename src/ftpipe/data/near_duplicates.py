"""Near-duplicate texts: MinHash signatures of word shingles, matched through datasketch's LSH index.

clean_data calls :func:`signatures` once on the distinct cleaned texts, then :func:`near_copies` (within a split:
every text near an earlier kept one is a copy of it) and :func:`near_matches` (validation/test texts near a train
text). Two texts are near when the Jaccard similarity of their sets of word shingles (``shingle`` consecutive
words of the lower-cased text, punctuation removed; a text of fewer words is one shingle of all of them) is at
least ``threshold``, as estimated by the share of equal MinHash values; datasketch's
:class:`~datasketch.MinHashLSH` picks its bands and rows for that threshold and finds the candidates, and each
candidate is checked on the signatures before it counts.

The signatures are computed for all texts at once with numpy (a per-text ``MinHash.update`` in Python would
take most of a million-row run): words are hashed once per distinct word, shingles are combined from their
words' hashes, and each of the :data:`NUM_PERM` hash functions is a multiply-shift hash (Dietzfelbinger et al.
1997: ``(a * x + b) mod 2**64``, its top 32 bits, ``a`` odd), a universal family, applied to every shingle.
"""

from __future__ import annotations

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


def _index(threshold: float):
    from datasketch import MinHashLSH

    # Bands tuned against false negatives: every candidate is checked on its signature anyway, so a false positive
    # costs one comparison, a false negative a copy missed. At 0.7 this takes 20 bands of 6 values: a pair at the
    # threshold is a candidate 92% of the time (44% with datasketch's even weights), one at 0.5 27%.
    return MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=(0.1, 0.9))


def _lean(signature: np.ndarray):
    from datasketch import LeanMinHash

    # The index only reads the values (its bands); the scheme names their 32-bit width.
    return LeanMinHash(seed=0, hashvalues=signature, scheme="affine32")


def _best(candidates: list[int], signature: np.ndarray, others: np.ndarray, threshold: float) -> tuple[int, float]:
    """The candidate (an index into ``others``' rows) most like ``signature`` at ``threshold`` or above (ties: the
    lowest), or (-1, 0)."""
    if not candidates:
        return -1, 0.0
    found = np.asarray(sorted(candidates), dtype=np.int64)
    similarity = (others[found] == signature).mean(axis=1)
    best = int(np.argmax(similarity))
    return (int(found[best]), float(similarity[best])) if similarity[best] >= threshold else (-1, 0.0)


def near_copies(signatures_: np.ndarray, group: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Which items are near-copies of an item kept before them, visiting the items (signature rows) in order.

    Only items of the same ``group`` (int64 per item: a split and a target) are compared. An item near no kept
    item is kept and indexed; a later one near it is its copy and is not indexed (so a chain of small edits does
    not drift away from what was kept). Returns the kept item each item copies (-1: none) and the estimated
    similarity.
    """
    copy_of = np.full(len(signatures_), -1, dtype=np.int64)
    similarity = np.zeros(len(signatures_), dtype=np.float64)
    indexes: dict[int, object] = {}
    for item, name in enumerate(group.tolist()):
        index = indexes.get(name)
        if index is None:
            index = indexes[name] = _index(threshold)
        signature = signatures_[item]
        lean = _lean(signature)
        kept, score = _best(index.query(lean), signature, signatures_, threshold)  # type: ignore[attr-defined]
        if kept >= 0:
            copy_of[item], similarity[item] = kept, score
        else:
            index.insert(item, lean, check_duplication=False)  # type: ignore[attr-defined]
    return copy_of, similarity


def near_matches(reference: np.ndarray, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``queries`` (signatures), the most similar row of ``reference`` at ``threshold`` or above.

    Returns (the matched row of ``reference`` or -1, the estimated similarity), one per query.
    """
    matched = np.full(len(queries), -1, dtype=np.int64)
    similarity = np.zeros(len(queries), dtype=np.float64)
    if not len(reference) or not len(queries):
        return matched, similarity
    index = _index(threshold)
    with index.insertion_session() as session:
        for item in range(len(reference)):
            session.insert(item, _lean(reference[item]), check_duplication=False)
    for item in range(len(queries)):
        signature = queries[item]
        matched[item], similarity[item] = _best(index.query(_lean(signature)), signature, reference, threshold)
    return matched, similarity
