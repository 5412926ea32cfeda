"""Reading CoNLL column files (CoNLL-2003, BIO/IOB exports of annotation tools) into one row per sentence.

The format, as most tools write it: one token per line, its columns separated by tabs or by spaces; the first
column is the token and the last one its tag (the columns between, e.g. part-of-speech and chunk tags, are
ignored). A blank line ends a sentence; ``-DOCSTART-`` lines (document boundaries in CoNLL-2003) are skipped.
A line that holds a tab is split on tabs only, so that a token with a space inside (``New York<TAB>B-LOC``)
stays one token (and is then quarantined by the task, rather than silently cut to ``New``); other lines are
split on any run of whitespace. Comment lines are not part of the format: a line ``# text`` is a token ``#``.

Files may be compressed (``.gz``, ``.bz2``, ``.xz``, or a ``.zip`` holding one file), as
``ftpipe.data.readers`` allows for every format. Called by ``readers.read_source`` for ``data.format: conll``
or the extensions ``.conll``, ``.bio`` and ``.iob``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pandas as pd

from ftpipe.errors import DataError

DOCSTART = "-DOCSTART-"


def _open_text(path: Path) -> IO[str]:
    """The file as UTF-8 text (a byte-order mark dropped), decompressed by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) != 1:
            archive.close()
            raise DataError(f"{path.name}: a zipped CoNLL file must hold exactly one file, it holds {len(members)}")
        return io.TextIOWrapper(archive.open(members[0]), encoding="utf-8-sig", newline=None)
    if suffix == ".zst":
        raise DataError(f"{path.name}: zstandard-compressed CoNLL files are not supported; use .gz, .bz2 or .xz")
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix)
    if opener is None:
        return open(path, encoding="utf-8-sig", newline=None)  # noqa: SIM115 - closed by the caller's `with`
    return opener(path, "rt", encoding="utf-8-sig", newline=None)


def _sentences(lines: Iterator[str], name: str) -> Iterator[tuple[list[str], list[str]]]:
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.rstrip()
        if not stripped.strip():
            if tokens:
                yield tokens, tags
                tokens, tags = [], []
            continue
        columns = stripped.split("\t") if "\t" in stripped else stripped.split()
        if columns[0].strip() == DOCSTART:
            continue
        if len(columns) < 2:
            raise DataError(
                f"{name}, line {number}: only one column ({stripped.strip()[:40]!r}); a CoNLL line holds a token and "
                "its tag (the last column), separated by a tab or spaces"
            )
        tokens.append(columns[0])
        tags.append(columns[-1].strip())
    if tokens:
        yield tokens, tags


def read_conll(path: Path, *, tokens_column: str, tags_column: str) -> pd.DataFrame:
    """One row per sentence of a CoNLL column file: its tokens and its tags, each a list of strings.

    Args:
        path: a local file, possibly compressed (``.gz``, ``.bz2``, ``.xz``, ``.zip``).
        tokens_column: the name of the tokens column in the result (``data.text_column``).
        tags_column: the name of the tags column (``data.label_column``).

    Returns:
        A frame with the two columns, sentences in file order (empty when the file holds none).

    Raises:
        DataError: a line has only one column (naming the file and line number), or a zip holds several files.
        UnicodeDecodeError: the file is not UTF-8 (``read_source`` turns it into a DataError).
    """
    if tokens_column == tags_column:
        raise DataError(f"the tokens and tags columns are both {tokens_column!r}")
    with _open_text(Path(path)) as handle:
        rows = list(_sentences(iter(handle), Path(path).name))
    return pd.DataFrame(
        {tokens_column: [tokens for tokens, _ in rows], tags_column: [tags for _, tags in rows]},
        columns=[tokens_column, tags_column],
    )
