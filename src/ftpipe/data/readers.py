"""Reading labelled data files: CSV/TSV, JSON Lines (or one JSON array), Parquet and CoNLL column files.

Each reader returns the columns the task asks for, as read, in file order; bad input ends in one
:class:`~ftpipe.errors.DataError` naming the file and the setting that named it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import lzma
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ftpipe.config import DataConfig
from ftpipe.errors import DataError, StorageError
from ftpipe.storage import Storage

logger = logging.getLogger(__name__)

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".conll": "conll",
    ".bio": "conll",
    ".iob": "conll",
}


def resolve_format(uri: str, data_format: str = "auto") -> str:
    """``csv``, ``jsonl``, ``parquet`` or ``conll``: ``data_format`` itself, or what the extension of ``uri`` says.

    Raises:
        DataError: ``auto`` and the extension is not one ftpipe knows.
    """
    if data_format != "auto":
        return data_format
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    found = _EXTENSIONS.get(Path(name).suffix)
    if found is None:
        raise DataError(
            f"cannot tell the format of {uri} from its extension: use .csv, .tsv, .jsonl, .json, .parquet "
            "or .conll/.bio/.iob "
            "(optionally compressed, e.g. .csv.gz), or set data.format"
        )
    return found


# Input names, as they appear in quarantine.parquet's `source_split`: codes 0-2 are the user's own
# splits (and double as split codes), 3 is one file that clean_data splits itself.
SPLITS = ("train", "validation", "test")
SOURCES = (*SPLITS, "data")
SINGLE = 3


@dataclass
class Source:
    """One input file and the setting that named it."""

    code: int  # index into SOURCES
    setting: str  # the config field that named it, for messages
    uri: str


def sources(data: DataConfig) -> list[Source]:
    """The input files of ``config.data``: one to split, or the user's own three splits."""
    if data.uri is not None:
        return [Source(SINGLE, "data.uri", data.uri)]
    return [
        Source(0, "data.train_uri", data.train_uri or ""),
        Source(1, "data.validation_uri", data.validation_uri or ""),
        Source(2, "data.test_uri", data.test_uri or ""),
    ]


def _missing_column_error(source: Source, columns: Sequence[str], wanted: dict[str, str]) -> DataError:
    missing = [f"{name!r} ({setting})" for name, setting in wanted.items() if name not in columns]
    have = ", ".join(repr(str(c)) for c in columns) or "none"
    return DataError(f"{source.setting} {source.uri} has no column {' or '.join(missing)}; its columns are: {have}")


_RAGGED_WARNING = "Length of header or names does not match length of data"


def _read_csv(path: Path, source: Source, wanted: dict[str, str]) -> pd.DataFrame:
    """The file's columns as text; a row with more fields than the header is a DataError naming its line.

    Without ``usecols`` (which makes pandas drop a row's extra fields without a word) and with
    ``index_col=False`` (else pandas takes the first column for an index when the first data row has one field
    too many, and every column shifts), pandas' C parser raises on a later long row and warns on a long first
    one; either way the file is then read again with the csv module to find the row's physical line.
    """
    options: dict[str, Any] = {"sep": "\t"} if ".tsv" in path.name.lower() else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=_RAGGED_WARNING, category=pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,  # "NA", "null", "nan" are texts (and labels) here, not missing values
                na_values=[""],
                encoding="utf-8",
                index_col=False,
                **options,
            )
    except (pd.errors.ParserWarning, pd.errors.ParserError) as error:
        found = _long_row(path, options.get("sep", ","))
        if found is None:
            if isinstance(error, pd.errors.ParserWarning):
                raise pd.errors.ParserError(str(error)) from None
            raise
        line, row, fields, header = found
        raise DataError(
            f"{source.setting} {source.uri} line {line} (data row {row}) has {fields} fields where the header has "
            f"{header}: quote a text that holds the delimiter ({options.get('sep', ',')!r})"
        ) from None
    if not set(wanted) <= set(frame.columns):
        header = pd.read_csv(path, nrows=0, encoding="utf-8", **options).columns
        raise _missing_column_error(source, list(header), wanted)
    return frame


def _long_row(path: Path, delimiter: str) -> tuple[int, int, int, int] | None:
    """(physical line, data row from 1, fields, header fields) of the first row longer than the header, if any.

    Read with the csv module, whose ``line_num`` counts physical lines, so a quoted text spanning several lines
    moves the count on by all of them; the row's line is the one it starts on.
    """
    import csv

    opener = _OPENERS.get(path.suffix.lower())
    if opener is None and path.suffix.lower() in _COMPRESSION_SUFFIXES:
        return None  # no line numbers through zip/zstd/tar: pandas' own message stands
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # the default 128 KiB per field would stop at a long (too_long) text
    try:
        with (opener or open)(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return None
            start = reader.line_num + 1
            for row, record in enumerate(reader, start=1):
                if len(record) > len(header):
                    return start, row, len(record), len(header)
                start = reader.line_num + 1
    except (csv.Error, OSError, EOFError, UnicodeDecodeError):
        return None
    finally:
        csv.field_size_limit(limit)
    return None


def _starts_with_array(path: Path) -> bool:
    """Whether a JSON file holds one array of records rather than JSON Lines (looks at its first bytes)."""
    opener = _OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as handle:
            head = handle.read(4096)
    except (OSError, EOFError, lzma.LZMAError):
        return False  # let pandas report the problem
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def _read_jsonl(path: Path) -> pd.DataFrame:
    frame = pd.read_json(path, lines=not _starts_with_array(path), dtype=False, convert_dates=False)
    if not isinstance(frame, pd.DataFrame):
        raise ValueError("expected JSON Lines (one object per line) or an array of objects")
    return frame


def _read_parquet(path: Path, source: Source, wanted: dict[str, str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if not set(wanted) <= set(columns):
        raise _missing_column_error(source, columns, wanted)
    return pd.read_parquet(path, columns=list(wanted))


def _read_conll(path: Path, source: Source, wanted: dict[str, str]) -> pd.DataFrame:
    """Tokens and tags under the names ``data.text_column`` and ``data.label_column`` give them."""
    from ftpipe.data.conll import read_conll

    by_setting = {setting: column for column, setting in wanted.items()}
    # Any other wanted column (say task.target_columns) is then reported missing by read_source.
    return read_conll(
        path,
        tokens_column=by_setting.get("data.text_column", "tokens"),
        tags_column=by_setting.get("data.label_column", "tags"),
    )


_READERS = {"csv": _read_csv, "parquet": _read_parquet, "conll": _read_conll}


@contextlib.contextmanager
def _reading(source: Source, data_format: str) -> Iterator[None]:
    """Turns what reading ``source`` can raise into one DataError (or StorageError) naming it."""
    import pyarrow as pa

    try:
        yield
    except DataError:
        raise
    except UnicodeDecodeError as error:
        raise DataError(
            f"{source.setting} {source.uri} is not UTF-8 text (byte {error.start}): save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{source.setting} {source.uri} is empty") from None
    except OSError as error:
        raise StorageError(f"cannot read {source.uri}: {error.strerror or error}") from None
    except (ValueError, pa.ArrowException, pd.errors.ParserError, EOFError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot read {source.setting} {source.uri} as {data_format}: {message}") from None


def _csv_batches(path: Path, source: Source, wanted: dict[str, str], rows: int) -> Iterator[pd.DataFrame]:
    """:func:`_read_csv` in batches of ``rows`` rows (the same options, checks and messages)."""
    options: dict[str, Any] = {"sep": "\t"} if ".tsv" in path.name.lower() else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=_RAGGED_WARNING, category=pd.errors.ParserWarning)
            reader = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8",
                index_col=False,
                chunksize=rows,
                **options,
            )
            with reader:
                for frame in reader:
                    if not set(wanted) <= set(frame.columns):
                        header = pd.read_csv(path, nrows=0, encoding="utf-8", **options).columns
                        raise _missing_column_error(source, list(header), wanted)
                    yield frame
    except (pd.errors.ParserWarning, pd.errors.ParserError) as error:
        found = _long_row(path, options.get("sep", ","))
        if found is None:
            if isinstance(error, pd.errors.ParserWarning):
                raise pd.errors.ParserError(str(error)) from None
            raise
        line, row, fields, header = found
        raise DataError(
            f"{source.setting} {source.uri} line {line} (data row {row}) has {fields} fields where the header has "
            f"{header}: quote a text that holds the delimiter ({options.get('sep', ',')!r})"
        ) from None


def _parquet_batches(path: Path, source: Source, wanted: dict[str, str], rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    if not set(wanted) <= set(file.schema_arrow.names):
        raise _missing_column_error(source, file.schema_arrow.names, wanted)
    for batch in file.iter_batches(batch_size=rows, columns=list(wanted)):
        yield pa.Table.from_batches([batch]).to_pandas()


def _jsonl_batches(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    if _starts_with_array(path):  # one JSON array cannot be read in parts
        yield _read_jsonl(path)
        return
    with pd.read_json(path, lines=True, dtype=False, convert_dates=False, chunksize=rows) as reader:
        yield from reader


def iter_source(
    source: Source, data_format: str, wanted: dict[str, str], storage: Storage, rows: int
) -> Iterator[pd.DataFrame]:
    """:func:`read_source` in batches of at most ``rows`` rows, in file order, so that a large file is never whole
    in memory (CSV, JSON Lines and Parquet; a JSON array and CoNLL are read whole, then cut).

    Raises the same errors, with the same messages, as :func:`read_source`; a batch may have been yielded before
    an error in a later part of the file.
    """
    data_format = resolve_format(source.uri, data_format)
    total = 0
    try:
        with storage.local_copy(source.uri) as path, _reading(source, data_format):
            if path.is_dir():
                raise DataError(f"{source.setting} {source.uri} is a directory, not a {data_format} file")
            if data_format == "csv":
                batches = _csv_batches(path, source, wanted, rows)
            elif data_format == "parquet":
                batches = _parquet_batches(path, source, wanted, rows)
            elif data_format == "jsonl":
                batches = _jsonl_batches(path, rows)
            else:
                whole = _READERS[data_format](path, source, wanted)
                batches = (whole.iloc[start : start + rows] for start in range(0, max(1, len(whole)), rows))
            for frame in batches:
                if not set(wanted) <= set(frame.columns):
                    raise _missing_column_error(source, [str(c) for c in frame.columns], wanted)
                if len(frame) == 0:
                    continue
                total += len(frame)
                yield frame[list(wanted)].reset_index(drop=True)
    except StorageError as error:
        raise type(error)(f"{source.setting}: {error}") from None
    if total == 0:
        raise DataError(f"{source.setting} {source.uri} has no data rows")
    logger.info("read %d rows from %s", total, source.uri)


def read_source(source: Source, data_format: str, wanted: dict[str, str], storage: Storage) -> pd.DataFrame:
    """The ``wanted`` columns ({column: setting that names it}) of one input file, as read (rows in file order).

    Raises:
        DataError: the file is a directory, not UTF-8, empty, unreadable as ``data_format`` or lacks a column.
        StorageError: it cannot be fetched.
    """
    import pyarrow as pa

    data_format = resolve_format(source.uri, data_format)
    try:
        with storage.local_copy(source.uri) as path:
            if path.is_dir():
                raise DataError(f"{source.setting} {source.uri} is a directory, not a {data_format} file")
            try:
                if data_format == "jsonl":
                    frame = _read_jsonl(path)
                else:
                    frame = _READERS[data_format](path, source, wanted)
            except DataError:
                raise
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{source.setting} {source.uri} is not UTF-8 text (byte {error.start}): save it as UTF-8"
                ) from None
            except pd.errors.EmptyDataError:
                raise DataError(f"{source.setting} {source.uri} is empty") from None
            except OSError as error:
                raise StorageError(f"cannot read {source.uri}: {error.strerror or error}") from None
            except (ValueError, pa.ArrowException, pd.errors.ParserError, EOFError) as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise DataError(f"cannot read {source.setting} {source.uri} as {data_format}: {message}") from None
    except StorageError as error:
        raise type(error)(f"{source.setting}: {error}") from None  # the same kind: a transient one stays one
    if not set(wanted) <= set(frame.columns):
        raise _missing_column_error(source, [str(c) for c in frame.columns], wanted)
    if len(frame) == 0:
        raise DataError(f"{source.setting} {source.uri} has no data rows")
    logger.info("read %d rows from %s", len(frame), source.uri)
    return frame[list(wanted)].reset_index(drop=True)
