"""The content fingerprint of cleaned data: what compare_data matches against the production version's."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")


def digests(texts: Sequence[str]) -> np.ndarray:
    """sha256 of each text as a (n, 4) array of big-endian uint64 words (sortable, and exact for the fingerprint)."""
    joined = b"".join(hashlib.sha256(text.encode("utf-8")).digest() for text in texts)
    return np.frombuffer(joined, dtype=">u8").reshape(-1, 4).astype(np.uint64)


def content_order(words: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Positions sorted by (text digest, target key): an order that does not depend on the input order.

    The digest's first 128 bits decide; equal prefixes of different texts are as likely as a sha256 collision.
    """
    return np.lexsort((key, words[:, 1], words[:, 0]))


def fingerprint(vocabulary: list[str], split: np.ndarray, kept: np.ndarray, words: np.ndarray, key: np.ndarray) -> str:
    """sha256 hex of the kept rows' (text, target) per split, and of the targets' vocabulary; order-independent."""
    digest = hashlib.sha256(b"ftpipe.clean_data.v1\n")
    digest.update(json.dumps(vocabulary).encode("utf-8") + b"\n")
    for code, name in enumerate(SPLITS):
        members = np.flatnonzero(kept & (split == code))
        members = members[content_order(words[members], key[members])]
        records = np.empty((len(members), 5), dtype=">u8")
        records[:, :4] = words[members]
        records[:, 4] = key[members]
        digest.update(f"{name}\n{len(members)}\n".encode())
        digest.update(records.tobytes())
    return digest.hexdigest()
