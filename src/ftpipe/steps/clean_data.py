"""Step 1 of the pipeline: read labelled text, clean it, split it, and quarantine what cannot be used.

``run(config, output_uri)`` reads CSV, JSON Lines or Parquet from S3 or a local path (either one
file, which it splits into train/validation/test stratified by label, or the user's own three
splits, kept as given), cleans every text, checks every label, filters by token length with the
tokenizer of the model to be trained, removes duplicates and train/evaluation leakage, and writes
under ``output_uri``::

    train.parquet  validation.parquet  test.parquet   text, label (name), label_id (class index)
    quarantine.parquet                                 every rejected row: source_split, row, text, label, reason
    report.json  report.md  report.html               counts, label distributions, token lengths, fingerprint

Nothing is dropped silently: each input row is either kept in exactly one split or quarantined with
exactly one reason, the first that applies in this order (the order of :data:`REASONS`):

1. ``missing_text``: the text cell is empty or null.
2. ``empty_text`` / ``too_short``: nothing, or fewer than ``cleaning.min_chars`` characters, is left after cleaning.
3. ``missing_label`` / ``unknown_label``: no label, or one (after ``data.label_mapping``) outside ``data.labels``.
4. ``too_few_tokens`` / ``too_many_tokens``: outside ``cleaning.min_tokens`` .. ``cleaning.max_tokens``, counted
   with special tokens, as the model will see the text.
5. ``conflicting_labels`` (with ``cleaning.deduplicate``): the same cleaned text occurs with different labels
   anywhere in the input. Every copy is quarantined: there is no way to tell which label is right, and keeping
   one copy would train (or score) the model on a coin toss.
6. ``duplicate`` (with ``cleaning.deduplicate``): an exact copy of an earlier row's cleaned text (and label);
   the first copy is kept. With the user's own splits this is per split; copies across splits are leakage.
7. ``leakage`` (with ``cleaning.remove_leakage``): a validation or test row whose cleaned text is also in the
   cleaned train split.

Cleaning a text (:func:`clean_texts`): HTML tags removed (script/style bodies and comments too) and entities
unescaped, Unicode normalised (``cleaning.unicode_form``), control characters turned into spaces and invisible
format characters (soft hyphen, zero-width space, word joiner, BOM) deleted, whitespace runs collapsed to one
space and stripped, optionally lower-cased. Work is vectorised (pyarrow string kernels) and the expensive
per-row parts run only on the rows that need them: cleaning once per distinct raw text (HTML on texts with ``<``
or ``&``, Unicode normalisation on non-ASCII texts), tokenization once per distinct cleaned text, and only for
the texts that might break ``min_tokens``..``max_tokens``: for WordPiece and byte-level BPE tokenizers a bound on
the token count from the characters (:class:`TokenBound`) proves the others fit, so they are not tokenized, and
the report's token-length statistics come from a seeded sample of them (``cleaning.token_stats_sample``; the
report says so). The kept and quarantined rows are exactly those of tokenizing every text.

A single file is split after cleaning and de-duplication, so duplicates never straddle splits, and the split
depends only on the set of rows and the seed, not on their order in the file. Labels are read as text
(``0`` stays ``"0"``; a float ``1.0`` from JSON or Parquet becomes ``"1"``).

Everything is computed and checked before the first byte is written: bad input ends in one
:class:`~ftpipe.errors.DataError` (or :class:`~ftpipe.errors.StorageError`) and no output at all.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.config import CleanDataConfig, DataConfig, PipelineConfig
from ftpipe.errors import DataError, StorageError
from ftpipe.steps import REPORT_LIBRARIES, TOKENIZER_LIBRARIES, StepResult
from ftpipe.storage import Storage, join

logger = logging.getLogger(__name__)

LIBRARIES = (*TOKENIZER_LIBRARIES, "sklearn.model_selection", *REPORT_LIBRARIES)

SPLITS = ("train", "validation", "test")
REASONS = (
    "missing_text",
    "empty_text",
    "too_short",
    "missing_label",
    "unknown_label",
    "too_few_tokens",
    "too_many_tokens",
    "conflicting_labels",
    "duplicate",
    "leakage",
)
_REASON = {name: code for code, name in enumerate(REASONS, start=1)}  # 0 means "kept"

# Input names, as they appear in quarantine.parquet's `source_split`: codes 0-2 are the user's own
# splits (and double as split codes), 3 is one file that clean_data splits itself.
_SOURCES = (*SPLITS, "data")
_SINGLE = 3

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

# pandas' default string dtype: pyarrow-backed, NaN for missing. Its .str methods run as pyarrow
# kernels (RE2 regexes), so the patterns below avoid \s, \b and \u escapes, which would make pandas
# fall back to a per-row Python loop; characters above U+00FF are written literally instead.
_STR = pd.StringDtype("pyarrow", na_value=np.nan)
# Every Unicode whitespace character (as str.isspace() sees it) and every C0/C1 control character.
_SPACE_OR_CONTROL = "[\\x00-\\x20\\x7f-\\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
# Invisible format characters that only split or decorate words: deleted, not turned into spaces.
_INVISIBLE = "[\\xad\u200b\u2060\ufeff]"
_HTML_MARKUP = (
    "(?is)<(?:script|style)(?:[\\t\\n\\f\\r /][^>]*)?>.*?</(?:script|style)[^>]*>"  # with their bodies
    "|<!--.*?-->"
    "|</?[a-z][a-z0-9:-]*(?:[\\t\\n\\f\\r /][^<>]*)?>"  # start/end/self-closing tags, not "a <3 b"
    "|<![a-z][^<>]*>"  # <!DOCTYPE ...>
)

_TOKENIZE_BATCH = 1024  # measured: larger batches are no faster on 2 cores, and hold more memory
_HISTOGRAM_BINS = 40


class CleanDataResult(StepResult):
    """What clean_data wrote and what the next steps need to know about it."""

    output_uri: str
    train_uri: str
    validation_uri: str
    test_uri: str
    quarantine_uri: str
    report_json_uri: str
    report_markdown_uri: str
    report_html_uri: str
    fingerprint: str
    """sha256 hex of the cleaned splits' content (text, label, split); independent of row order within a split."""
    labels: list[str]
    """Label names in class-index order (``label_id`` indexes this list)."""
    counts: dict[str, int]
    """Rows per split after cleaning."""
    rejected: dict[str, int]
    """Quarantined rows per reason (every reason in :data:`REASONS`, zeros included)."""


# -- public helpers ---------------------------------------------------------------------------------


def resolve_format(uri: str, data_format: str = "auto") -> str:
    """``csv``, ``jsonl`` or ``parquet``: ``data_format`` itself, or what the extension of ``uri`` says.

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
            f"cannot tell the format of {uri} from its extension: use .csv, .jsonl, .json or .parquet "
            "(optionally compressed, e.g. .csv.gz), or set data.format"
        )
    return found


def clean_texts(texts: pd.Series, cleaning: CleanDataConfig) -> pd.Series:
    """Clean every text the way clean_data does (see the module docstring); missing values become ``""``.

    Use it wherever text reaches a model trained on clean_data's output, so that it sees the same
    normalisation. Returns a new Series of pandas' ``str`` dtype with the same index.
    """
    s = texts.astype(_STR).fillna("")
    if cleaning.strip_html:
        tagged = s.str.contains("<", regex=False)
        if tagged.any():
            s.loc[tagged] = s[tagged].str.replace(_HTML_MARKUP, " ", regex=True)
        escaped = s.str.contains("&", regex=False)
        if escaped.any():
            s.loc[escaped] = [html.unescape(text) for text in s[escaped]]
    non_ascii = ~s.str.isascii()  # ASCII text is invariant under every normal form and has no invisible chars
    if non_ascii.any():
        s.loc[non_ascii] = s[non_ascii].str.normalize(cleaning.unicode_form).str.replace(_INVISIBLE, "", regex=True)
    s = s.str.replace(_SPACE_OR_CONTROL, " ", regex=True).str.strip(" ")
    if cleaning.lowercase:
        s = s.str.lower()
    return s


def token_lengths(tokenizer: Any, texts: Sequence[str], batch_size: int = _TOKENIZE_BATCH) -> np.ndarray:
    """Tokens per text, special tokens included, never truncated or padded (whatever the tokenizer's defaults)."""
    lengths = np.zeros(len(texts), dtype=np.int64)
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        from tokenizers import Tokenizer

        # A private copy: tokenizer.json files often switch truncation/padding on, which would cap the count.
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    else:
        logger.warning("tokenizer %s is not a fast tokenizer: token counting will be slow", type(tokenizer).__name__)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        if backend is not None:
            counts = [len(encoding) for encoding in encode(batch, add_special_tokens=True)]
        else:
            ids = tokenizer(batch, add_special_tokens=True, truncation=False, padding=False)["input_ids"]
            counts = [len(row) for row in ids]
        lengths[start : start + len(batch)] = counts
    return lengths


# Pre-tokenizers that only cut a text into pieces (or drop separators): they never add characters.
_SPLITTING_PRE_TOKENIZERS = frozenset(
    {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits", "Split", "CharDelimiterSplit"}
)
_SPACE_DROPPING_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
# Normalizers that map each character on its own (no composition across characters), so the normalized length
# of a text is the sum of the normalized lengths of its characters.
_CHARWISE_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFD", "NFKD", "StripAccents", "Strip"})


@dataclass(frozen=True)
class TokenBound:
    """A provable upper bound on a tokenizer's count (special tokens included) of any text, from its characters.

    Two tokenizer families are understood; :func:`token_bound` returns None for the others (then every text is
    tokenized):

    - WordPiece (BERT and its kin) after a character-wise normalizer and a splitting pre-tokenizer: every token
      covers at least one character of the normalized text, other than a space, or is the one ``[UNK]`` of a whole
      word. So tokens <= specials + the sum over the text's characters of what each one normalizes to (spaces not
      counted), which ``weights`` holds (measured with the tokenizer's own normalizer, one character at a time).
    - byte-level BPE (GPT-2, RoBERTa, Llama 3) without a normalizer: every token covers at least one UTF-8 byte,
      and ``add_prefix_space`` adds one space to the text (ByteLevel alone) or at most one per piece (after a
      splitter): tokens <= specials + ``prefix`` + ``byte_factor`` x bytes.

    ``specials`` is what the post-processor adds to every text, so no text has fewer tokens than that.
    """

    specials: int
    per_byte: bool  # byte-level BPE: the bound is in UTF-8 bytes
    byte_factor: int = 1
    prefix: int = 0
    normalize: Any = None  # WordPiece: the tokenizer's normalizer (None: characters are kept as they are)
    spaces_free: bool = True  # WordPiece: the pre-tokenizer drops spaces, so they never become tokens
    weights: dict[str, int] = field(default_factory=dict)  # WordPiece: character -> tokens it may add at most

    def weight(self, char: str) -> int:
        """How many tokens one character can account for at most (WordPiece)."""
        found = self.weights.get(char)
        if found is None:
            text = self.normalize(char) if self.normalize is not None else char
            found = self.weights[char] = len(text) - (text.count(" ") if self.spaces_free else 0)
        return found

    def upper(self, texts: Sequence[str]) -> np.ndarray:
        """The bound for each text (vectorised: pyarrow kernels, plus one pass over the non-ASCII characters)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        array = pa.array(texts, type=pa.large_string()) if not isinstance(texts, pa.Array) else texts
        if self.per_byte:
            nbytes = pc.binary_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
            return self.specials + self.prefix + self.byte_factor * nbytes
        counted = pc.utf8_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
        if self.spaces_free:
            counted -= pc.count_substring(array, " ").to_numpy(zero_copy_only=False).astype(np.int64)
        ascii_weight = max(self.weight(chr(code)) for code in range(0x80))
        bound = self.specials + ascii_weight * counted
        non_ascii = np.flatnonzero(~pc.string_is_ascii(array).to_numpy(zero_copy_only=False))
        if len(non_ascii):
            seen = set("".join(array.take(pa.array(non_ascii)).to_pylist()))
            heaviest = max(ascii_weight, *(self.weight(char) for char in seen))
            bound[non_ascii] = self.specials + heaviest * counted[non_ascii]
        return bound


def _post_processor_specials(backend: Any) -> int:
    processor = backend.post_processor
    return int(processor.num_special_tokens_to_add(False)) if processor is not None else 0


def _components(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The parts of a (possibly ``Sequence``) normalizer or pre-tokenizer spec."""
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        parts = spec.get("normalizers") or spec.get("pretokenizers") or []
        return [part for item in parts for part in _components(item)]
    return [spec]


def token_bound(tokenizer: Any) -> TokenBound | None:
    """The :class:`TokenBound` of a fast tokenizer whose family it understands, else None (tokenize everything)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
        specials = _post_processor_specials(backend)
    except Exception:  # noqa: BLE001 - an exotic backend: no shortcut, count every text
        return None
    model = (spec.get("model") or {}).get("type")
    normalizers = _components(spec.get("normalizer"))
    pre_tokenizers = _components(spec.get("pre_tokenizer"))
    added = [token.get("content") or "" for token in spec.get("added_tokens") or []]
    if model == "WordPiece":
        if not all(part.get("type") in _CHARWISE_NORMALIZERS for part in normalizers):
            return None
        if not all(part.get("type") in _SPLITTING_PRE_TOKENIZERS for part in pre_tokenizers):
            return None
        normalizer = backend.normalizer
        bound = TokenBound(
            specials,
            per_byte=False,
            normalize=normalizer.normalize_str if normalizer else None,
            spaces_free=any(part.get("type") in _SPACE_DROPPING_PRE_TOKENIZERS for part in pre_tokenizers),
        )
        # An added token matched in the text is one token: its characters must account for at least that much.
        if any(sum(bound.weight(char) for char in content) < 1 for content in added):
            return None
        return bound
    if model == "BPE" and not normalizers:
        kinds = [part.get("type") for part in pre_tokenizers]
        if "ByteLevel" not in kinds or not all(
            kind == "ByteLevel" or kind in _SPLITTING_PRE_TOKENIZERS for kind in kinds
        ):
            return None
        prefix = any(part.get("add_prefix_space") for part in pre_tokenizers if part.get("type") == "ByteLevel")
        # A prefix space per piece: at most one per byte, except when ByteLevel alone sees the whole text (one).
        factor = 2 if prefix and len(kinds) > 1 else 1
        return TokenBound(specials, per_byte=True, byte_factor=factor, prefix=1 if prefix and factor == 1 else 0)
    return None


def count_tokens_where_needed(
    tokenizer: Any, texts: Sequence[str], min_tokens: int, max_tokens: int, sample: int | None, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Token counts (``-1`` where not counted) for the length filter and the report, and how they were got.

    Every text that could break ``min_tokens``..``max_tokens`` is tokenized; the others provably cannot (see
    :class:`TokenBound`) and only a seeded sample of ``sample`` of them is tokenized, for the report's statistics.
    With ``sample`` None, with no bound for this tokenizer, or with as few texts as ``sample``, every text is.
    The kept and quarantined rows are exactly those of tokenizing every text.
    """
    total = len(texts)
    bound = token_bound(tokenizer) if sample is not None and total > sample else None
    if bound is None:
        return token_lengths(tokenizer, texts), {"counted": total, "of": total, "sampled": False}
    could_break = np.ones(total, dtype=bool) if min_tokens > bound.specials else bound.upper(texts) > max_tokens
    rest = np.flatnonzero(~could_break)
    chosen = np.random.default_rng(seed).choice(rest, size=min(sample, len(rest)), replace=False)
    which = np.sort(np.concatenate([np.flatnonzero(could_break), chosen]))
    counts = np.full(total, -1, dtype=np.int64)
    texts = np.asarray(texts, dtype=object)
    counts[which] = token_lengths(tokenizer, texts[which])
    info = {
        "counted": int(len(which)),
        "of": total,
        "sampled": True,
        "sample": int(len(chosen)),
        "sample_seed": seed,
        "bounded_out": int(len(rest)),
    }
    return counts, info


# -- reading ----------------------------------------------------------------------------------------


@dataclass
class _Source:
    code: int  # index into _SOURCES
    setting: str  # the config field that named it, for messages
    uri: str


def _sources(data: DataConfig) -> list[_Source]:
    if data.uri is not None:
        return [_Source(_SINGLE, "data.uri", data.uri)]
    return [
        _Source(0, "data.train_uri", data.train_uri or ""),
        _Source(1, "data.validation_uri", data.validation_uri or ""),
        _Source(2, "data.test_uri", data.test_uri or ""),
    ]


def _missing_column_error(source: _Source, columns: Sequence[str], data: DataConfig) -> DataError:
    wanted = {data.text_column: "data.text_column", data.label_column: "data.label_column"}
    missing = [f"{name!r} ({setting})" for name, setting in wanted.items() if name not in columns]
    have = ", ".join(repr(str(c)) for c in columns) or "none"
    return DataError(f"{source.setting} {source.uri} has no column {' or '.join(missing)}; its columns are: {have}")


def _read_csv(path: Path, source: _Source, data: DataConfig) -> pd.DataFrame:
    wanted = {data.text_column, data.label_column}
    options: dict[str, Any] = {"sep": "\t"} if ".tsv" in path.name.lower() else {}
    frame = pd.read_csv(
        path,
        usecols=lambda column: column in wanted,
        dtype=str,
        keep_default_na=False,  # "NA", "null", "nan" are texts (and labels) here, not missing values
        na_values=[""],
        encoding="utf-8",
        **options,
    )
    if not wanted <= set(frame.columns):
        header = pd.read_csv(path, nrows=0, encoding="utf-8", **options).columns
        raise _missing_column_error(source, list(header), data)
    return frame


def _starts_with_array(path: Path) -> bool:
    """Whether a JSON file holds one array of records rather than JSON Lines (looks at its first bytes)."""
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
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


def _read_parquet(path: Path, source: _Source, data: DataConfig) -> pd.DataFrame:
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if data.text_column not in columns or data.label_column not in columns:
        raise _missing_column_error(source, columns, data)
    return pd.read_parquet(path, columns=list(dict.fromkeys([data.text_column, data.label_column])))


def _read_source(source: _Source, data: DataConfig, storage: Storage) -> pd.DataFrame:
    """The text and label columns of one input file, as read (rows in file order)."""
    import pyarrow as pa

    data_format = resolve_format(source.uri, data.format)
    try:
        with storage.local_copy(source.uri) as path:
            if path.is_dir():
                raise DataError(f"{source.setting} {source.uri} is a directory, not a {data_format} file")
            try:
                if data_format == "csv":
                    frame = _read_csv(path, source, data)
                elif data_format == "jsonl":
                    frame = _read_jsonl(path)
                else:
                    frame = _read_parquet(path, source, data)
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
        raise StorageError(f"{source.setting}: {error}") from None
    if data.text_column not in frame.columns or data.label_column not in frame.columns:
        raise _missing_column_error(source, [str(c) for c in frame.columns], data)
    if len(frame) == 0:
        raise DataError(f"{source.setting} {source.uri} has no data rows")
    logger.info("read %d rows from %s", len(frame), source.uri)
    return frame.reset_index(drop=True)


def _label_text(value: Any) -> str | None:
    """A raw label value as text: ``1.0`` (JSON/Parquet floats) is ``"1"``, blanks are missing."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def _labels_as_text(raw: pd.Series) -> np.ndarray:
    """Object array of label strings (None where missing); converts each distinct value once."""
    try:
        codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    except TypeError:  # unhashable values (lists from JSON): compare them by their text
        codes, uniques = pd.factorize(raw.astype(_STR), use_na_sentinel=True)
    names = np.array([_label_text(value) for value in uniques] + [None], dtype=object)
    return names[codes]  # code -1 (missing) picks the trailing None


# -- the step ---------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Every input row of every source, in input order, with its fate so far."""

    source: np.ndarray  # int8 code into _SOURCES
    row: np.ndarray  # int64, 0-based position among the source file's data rows
    raw_text: pd.Series  # as read (str dtype, NaN when missing)
    raw_label: np.ndarray  # object: label as text before the mapping, None when missing
    reason: np.ndarray = field(init=False)  # int8: 0 kept, else 1 + index into REASONS

    def __post_init__(self) -> None:
        self.reason = np.zeros(len(self.source), dtype=np.int8)

    @property
    def alive(self) -> np.ndarray:
        return self.reason == 0

    def reject(self, mask: np.ndarray, reason: str) -> int:
        """Quarantine the still-alive rows in ``mask`` for ``reason``; returns how many."""
        hit = np.asarray(mask, dtype=bool) & (self.reason == 0)
        self.reason[hit] = _REASON[reason]
        return int(hit.sum())

    def rejected(self) -> dict[str, int]:
        counts = np.bincount(self.reason, minlength=len(REASONS) + 1)
        return {name: int(counts[code]) for name, code in _REASON.items()}

    def rejected_by_source(self) -> dict[str, dict[str, int]]:
        result = {}
        for code in np.unique(self.source):
            counts = np.bincount(self.reason[self.source == code], minlength=len(REASONS) + 1)
            result[_SOURCES[code]] = {name: int(counts[c]) for name, c in _REASON.items() if counts[c]}
        return result


def _rejection_summary(rows: _Rows) -> str:
    counts = {name: n for name, n in rows.rejected().items() if n}
    return ", ".join(f"{n} {name}" for name, n in counts.items()) or "none rejected"


def _load_rows(sources: list[_Source], data: DataConfig, storage: Storage) -> _Rows:
    if data.text_column == data.label_column:
        raise DataError(f"data.text_column and data.label_column are both {data.text_column!r}")
    parts = []
    for source in sources:
        frame = _read_source(source, data, storage)
        parts.append((source, frame))
    texts = [frame[data.text_column].astype(_STR) for _, frame in parts]
    return _Rows(
        source=np.concatenate([np.full(len(frame), s.code, dtype=np.int8) for s, frame in parts]),
        row=np.concatenate([np.arange(len(frame), dtype=np.int64) for _, frame in parts]),
        raw_text=pd.concat(texts, ignore_index=True) if len(texts) > 1 else texts[0],
        raw_label=np.concatenate([_labels_as_text(frame[data.label_column]) for _, frame in parts]),
    )


def _resolve_labels(rows: _Rows, mapped: np.ndarray, data: DataConfig) -> list[str]:
    if data.labels is not None:
        return list(data.labels)
    train = rows.alive & ((rows.source == 0) | (rows.source == _SINGLE)) & pd.notna(mapped)
    seen = sorted(set(pd.unique(mapped[train])))
    if not seen:
        raise DataError(f"no usable training rows left after cleaning ({_rejection_summary(rows)})")
    if len(seen) == 1:
        raise DataError(
            f"the training data has only one label ({seen[0]!r}) after cleaning; a classifier needs at least two "
            "(check data.label_column, data.label_mapping and data.labels)"
        )
    return seen


def _digests(texts: Sequence[str]) -> np.ndarray:
    """sha256 of each text as a (n, 4) array of big-endian uint64 words (sortable, and exact for the fingerprint)."""
    joined = b"".join(hashlib.sha256(text.encode("utf-8")).digest() for text in texts)
    return np.frombuffer(joined, dtype=">u8").reshape(-1, 4).astype(np.uint64)


def _content_order(words: np.ndarray, label_id: np.ndarray) -> np.ndarray:
    """Positions sorted by (text digest, label id): an order that does not depend on the input order.

    The digest's first 128 bits decide; equal prefixes of different texts are as likely as a sha256 collision.
    """
    return np.lexsort((label_id, words[:, 1], words[:, 0]))


def _carve(
    positions: np.ndarray, label_id: np.ndarray, size: float, seed: int, what: str, labels: list[str], notes: list[str]
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split ``positions`` into (rest, part), stratified by label where the class sizes allow it."""
    from sklearn.model_selection import train_test_split

    key = label_id[positions].astype(np.int64)
    counts = np.bincount(key, minlength=len(labels))
    rare = np.flatnonzero((counts > 0) & (counts < 2))
    if rare.size:
        notes.append(
            f"splitting off {what}: label(s) {', '.join(repr(labels[i]) for i in rare)} have a single row and "
            "are not stratified"
        )
        in_rare = np.isin(key, rare)
        key[in_rare] = -1 if in_rare.sum() >= 2 else int(np.argmax(counts))
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


def _split_single(
    rows: _Rows, label_id: np.ndarray, words: np.ndarray, config: PipelineConfig, labels: list[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Assign the alive rows of one file to train/validation/test; returns the split codes and a report entry."""
    split_config = config.data.split
    split = np.full(len(rows.source), -1, dtype=np.int8)
    alive = np.flatnonzero(rows.alive)
    alive = alive[_content_order(words[alive], label_id[alive])]
    notes: list[str] = []
    rest, test, test_stratified = _carve(
        alive, label_id, split_config.test_fraction, split_config.seed, "the test split", labels, notes
    )
    validation_share = split_config.validation_fraction / (1.0 - split_config.test_fraction)
    train, validation, validation_stratified = _carve(
        rest, label_id, validation_share, split_config.seed, "the validation split", labels, notes
    )
    split[train], split[validation], split[test] = 0, 1, 2
    info = {
        "mode": "split from one file",
        "stratified": test_stratified and validation_stratified,
        "validation_fraction": split_config.validation_fraction,
        "test_fraction": split_config.test_fraction,
        "seed": split_config.seed,
        "notes": notes,
    }
    return split, info


def _fingerprint(
    labels: list[str], split: np.ndarray, kept: np.ndarray, words: np.ndarray, label_id: np.ndarray
) -> str:
    digest = hashlib.sha256(b"ftpipe.clean_data.v1\n")
    digest.update(json.dumps(labels).encode("utf-8") + b"\n")
    for code, name in enumerate(SPLITS):
        members = np.flatnonzero(kept & (split == code))
        members = members[_content_order(words[members], label_id[members])]
        records = np.empty((len(members), 5), dtype=">u8")
        records[:, :4] = words[members]
        records[:, 4] = label_id[members]
        digest.update(f"{name}\n{len(members)}\n".encode())
        digest.update(records.tobytes())
    return digest.hexdigest()


def _tokenizer_for(config: PipelineConfig, storage: Storage) -> Any:
    from ftpipe.models import load_tokenizer, resolve_source

    source = config.tokenizer_source
    trust = any(c.trust_remote_code for c in config.candidates if c.source == source)
    return load_tokenizer(resolve_source(source, storage), trust_remote_code=trust)


def run(config: PipelineConfig, output_uri: str, storage: Storage | None = None) -> CleanDataResult:
    """Clean the dataset named in ``config.data`` and write splits, quarantine and reports under ``output_uri``.

    Raises:
        DataError: a file is unreadable, lacks a column, or too few usable rows are left.
        StorageError: an input cannot be fetched or an output cannot be written.
        ModelError: the tokenizer for the length filter cannot be loaded.
    """
    storage = storage or Storage(config.storage)
    data, cleaning = config.data, config.cleaning
    sources = _sources(data)
    rows = _load_rows(sources, data, storage)
    n = len(rows.source)

    # 1-2: text, cleaned once per distinct raw text (exact copies are common, and cleaning is the costly part)
    rows.reject(rows.raw_text.isna().to_numpy(), "missing_text")
    raw_code, raw_distinct = pd.factorize(rows.raw_text, use_na_sentinel=True)
    cleaned = clean_texts(pd.Series(raw_distinct, dtype=_STR), cleaning)
    clean_code, distinct = pd.factorize(cleaned, use_na_sentinel=True)
    has_text = raw_code >= 0
    text_code = np.full(n, -1, dtype=np.int64)  # index into `distinct`, -1 for a missing text
    text_code[has_text] = clean_code[raw_code[has_text]]
    lengths = np.zeros(n, dtype=np.int64)
    lengths[has_text] = pd.Series(distinct, dtype=_STR).str.len().to_numpy(dtype=np.int64)[text_code[has_text]]
    distinct = np.asarray(distinct, dtype=object)
    del raw_code, raw_distinct, cleaned, clean_code, has_text
    rows.reject(lengths == 0, "empty_text")
    rows.reject(lengths < cleaning.min_chars, "too_short")

    # 3: labels
    mapping = data.label_mapping or {}
    codes, raw_names = pd.factorize(rows.raw_label, use_na_sentinel=True)
    mapped_names = np.array([mapping.get(name, name) for name in raw_names] + [None], dtype=object)
    mapped = mapped_names[codes]
    rows.reject(codes < 0, "missing_label")
    labels = _resolve_labels(rows, mapped, data)
    index_of = {name: i for i, name in enumerate(labels)}
    label_id = np.array([index_of.get(name, -1) for name in mapped_names], dtype=np.int64)[codes]
    rows.reject(label_id < 0, "unknown_label")

    # 4: token lengths, once per distinct cleaned text, and only where they could break a bound (-1: not counted)
    alive = rows.alive
    tokens = np.full(n, -1, dtype=np.int64)
    token_info: dict[str, Any] = {"counted": 0, "of": 0, "sampled": False}
    present = np.unique(text_code[alive])
    if len(present):
        per_text = np.full(len(distinct), -1, dtype=np.int64)
        per_text[present], token_info = count_tokens_where_needed(
            _tokenizer_for(config, storage),
            distinct[present],
            cleaning.min_tokens,
            cleaning.max_tokens,
            cleaning.token_stats_sample,
            data.split.seed,
        )
        logger.info(
            "counted the tokens of %d of %d distinct texts with %s",
            token_info["counted"],
            token_info["of"],
            config.tokenizer_source,
        )
        tokens[alive] = per_text[text_code[alive]]
    rows.reject(alive & (tokens >= 0) & (tokens < cleaning.min_tokens), "too_few_tokens")
    rows.reject(alive & (tokens > cleaning.max_tokens), "too_many_tokens")

    # 5-6: conflicting labels and duplicates, on the cleaned text
    single = data.uri is not None
    if cleaning.deduplicate:
        alive = np.flatnonzero(rows.alive)
        pairs = np.unique(text_code[alive] * len(labels) + label_id[alive])
        per_text = np.bincount(pairs // len(labels), minlength=len(distinct))
        rows.reject(np.isin(text_code, np.flatnonzero(per_text > 1)), "conflicting_labels")
        alive = np.flatnonzero(rows.alive)
        scope = text_code[alive] * len(_SOURCES) + rows.source[alive]  # per file: a text may recur across splits
        _, first = np.unique(scope, return_index=True)
        duplicate = np.ones(n, dtype=bool)
        duplicate[alive[first]] = False
        rows.reject(duplicate, "duplicate")

    if not rows.alive.any():
        raise DataError(f"no rows left after cleaning: all {n} input rows were rejected ({_rejection_summary(rows)})")

    # content digests of the surviving distinct texts: the split order and the fingerprint
    words = np.zeros((n, 4), dtype=np.uint64)
    alive = np.flatnonzero(rows.alive)
    present = np.unique(text_code[alive])
    present_words = np.zeros((len(distinct), 4), dtype=np.uint64)
    present_words[present] = _digests(distinct[present])
    words[alive] = present_words[text_code[alive]]

    if single:
        split, split_info = _split_single(rows, label_id, words, config, labels)
    else:
        split = np.where(rows.alive, rows.source, -1).astype(np.int8)
        split_info = {"mode": "the user's own splits, kept as given", "stratified": None, "notes": []}

    # 7: leakage
    if cleaning.remove_leakage:
        in_train = np.zeros(len(distinct), dtype=bool)
        in_train[text_code[rows.alive & (split == 0)]] = True
        evaluation = rows.alive & (split > 0)
        rows.reject(evaluation & in_train[np.maximum(text_code, 0)], "leakage")

    kept = rows.alive
    counts = {name: int((kept & (split == code)).sum()) for code, name in enumerate(SPLITS)}
    for name, count in counts.items():
        if count == 0:
            raise DataError(
                f"the {name} split is empty after cleaning ({counts['train']} train, {counts['validation']} "
                f"validation, {counts['test']} test rows kept; {_rejection_summary(rows)})"
            )
    rejected = rows.rejected()
    assert sum(counts.values()) + sum(rejected.values()) == n, "every input row is kept or quarantined"

    fingerprint = _fingerprint(labels, split, kept, words, label_id)
    frames = {
        name: _split_frame(distinct, text_code, label_id, labels, kept & (split == code))
        for code, name in enumerate(SPLITS)
    }
    warnings = _warnings(frames, labels, rows, data)
    report = _report(
        config,
        sources,
        rows,
        frames,
        labels,
        counts,
        rejected,
        split_info,
        tokens,
        token_info,
        split,
        kept,
        fingerprint,
        warnings,
    )
    uris = {name: join(output_uri, f"{name}.parquet") for name in (*SPLITS, "quarantine")}
    for kind, extension in (("json", "json"), ("markdown", "md"), ("html", "html")):
        uris[f"report_{kind}"] = join(output_uri, f"report.{extension}")
    report["outputs"] = uris
    markdown, page = _render(report, frames, tokens, split, kept)

    # Everything is known to be good: write. report.json goes last, as the sign that the rest is complete.
    with tempfile.TemporaryDirectory(prefix="ftpipe-clean-") as scratch:
        for name, frame in frames.items():
            _write_parquet(storage, frame, Path(scratch) / f"{name}.parquet", uris[name])
        _write_parquet(storage, _quarantine_frame(rows), Path(scratch) / "quarantine.parquet", uris["quarantine"])
    storage.write_text(uris["report_markdown"], markdown, content_type="text/markdown; charset=utf-8")
    storage.write_text(uris["report_html"], page, content_type="text/html; charset=utf-8")
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
        fingerprint=fingerprint,
        labels=labels,
        counts=counts,
        rejected=rejected,
    )


# -- outputs ----------------------------------------------------------------------------------------


def _split_frame(
    distinct: np.ndarray, text_code: np.ndarray, label_id: np.ndarray, labels: list[str], mask: np.ndarray
) -> pd.DataFrame:
    ids = label_id[mask]
    return pd.DataFrame(
        {
            "text": distinct[text_code[mask]],
            "label": np.asarray(labels, dtype=object)[ids],
            "label_id": ids.astype(np.int64),
        }
    )


def _quarantine_frame(rows: _Rows) -> pd.DataFrame:
    mask = rows.reason > 0
    return pd.DataFrame(
        {
            "source_split": np.asarray(_SOURCES, dtype=object)[rows.source[mask]],
            "row": rows.row[mask],
            "text": rows.raw_text[mask].to_numpy(dtype=object, na_value=None),
            "label": rows.raw_label[mask],
            "reason": np.asarray(("",) + REASONS, dtype=object)[rows.reason[mask]],
        }
    )


def _write_parquet(storage: Storage, frame: pd.DataFrame, path: Path, uri: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [(column, pa.int64() if frame[column].dtype.kind in "iu" else pa.string()) for column in frame.columns]
    )
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)
    storage.upload_file(path, uri)


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


def _warnings(frames: dict[str, pd.DataFrame], labels: list[str], rows: _Rows, data: DataConfig) -> list[str]:
    warnings = []
    if data.labels is None and data.label_mapping:
        unmapped = [label for label in labels if label not in set(data.label_mapping.values())]
        if unmapped:
            warnings.append(
                f"label(s) {', '.join(map(repr, unmapped))} are not values of data.label_mapping but became classes; "
                "set data.labels to quarantine them instead"
            )
    train_counts = frames["train"]["label"].value_counts()
    absent = [label for label in labels if train_counts.get(label, 0) == 0]
    if absent:
        warnings.append(f"label(s) with no training rows: {', '.join(map(repr, absent))}")
    if len(train_counts) and train_counts.min() * 20 < train_counts.max():
        warnings.append(
            f"strong class imbalance in train: {train_counts.idxmax()!r} has {train_counts.max()} rows, "
            f"{train_counts.idxmin()!r} {train_counts.min()}"
        )
    total = len(rows.source)
    quarantined = int((rows.reason > 0).sum())
    if quarantined * 4 > total:
        warnings.append(f"{quarantined} of {total} input rows ({quarantined / total:.0%}) were quarantined")
    return warnings


def _report(
    config: PipelineConfig,
    sources: list[_Source],
    rows: _Rows,
    frames: dict[str, pd.DataFrame],
    labels: list[str],
    counts: dict[str, int],
    rejected: dict[str, int],
    split_info: dict[str, Any],
    tokens: np.ndarray,
    token_info: dict[str, Any],
    split: np.ndarray,
    kept: np.ndarray,
    fingerprint: str,
    warnings: list[str],
) -> dict[str, Any]:
    counted = kept & (tokens >= 0)  # every kept row, or those of the texts in the sample (see token_info)
    lengths = {name: tokens[counted & (split == code)] for code, name in enumerate(SPLITS)}
    everything = np.concatenate(list(lengths.values()))
    low, high = (int(everything.min()), int(everything.max())) if len(everything) else (0, 0)
    edges = np.linspace(low, high + 1, min(_HISTOGRAM_BINS, high - low + 1) + 1)
    return {
        "step": "clean_data",
        "inputs": {
            source.setting: {"uri": source.uri, "format": resolve_format(source.uri, config.data.format)}
            for source in sources
        },
        "columns": {"text": config.data.text_column, "label": config.data.label_column},
        "label_mapping": config.data.label_mapping,
        "labels": labels,
        "rows": {
            "input": len(rows.source),
            "kept": sum(counts.values()),
            "quarantined": sum(rejected.values()),
        },
        "input_rows": {_SOURCES[code]: int((rows.source == code).sum()) for code in np.unique(rows.source)},
        "counts": counts,
        "rejected": rejected,
        "rejected_by_source": rows.rejected_by_source(),
        "label_distribution": {
            name: {label: int(frame["label"].eq(label).sum()) for label in labels} for name, frame in frames.items()
        },
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
        "fingerprint": fingerprint,
        "warnings": warnings,
    }


def _figures(report: dict[str, Any], tokens: np.ndarray, split: np.ndarray, kept: np.ndarray) -> dict[str, str]:
    """The report's pictures as data: URIs (token lengths, label shares, rejections)."""
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

    labels = report["labels"]
    figure, axes = new_figure(max(6.0, 1.2 * len(labels) + 2), 3.5)
    width = 0.8 / len(SPLITS)
    for offset, name in enumerate(SPLITS):
        counts = report["label_distribution"][name]
        total = max(1, sum(counts.values()))
        positions = np.arange(len(labels)) + (offset - 1) * width
        axes.bar(positions, [counts[label] / total for label in labels], width, label=name)
    axes.set_xticks(np.arange(len(labels)), labels, rotation=30 if len(labels) > 6 else 0)
    axes.set_ylabel("share of the split")
    axes.set_title("Label distribution per split")
    axes.legend()
    pictures["labels"] = figure_to_data_uri(figure)

    reasons = {name: n for name, n in report["rejected"].items() if n}
    if reasons:
        figure, axes = new_figure(6.0, 0.4 * len(reasons) + 1.2)
        axes.barh(list(reasons), list(reasons.values()), color="#b00020")
        axes.invert_yaxis()
        axes.set_xlabel("rows quarantined")
        axes.set_title("Why rows were quarantined")
        pictures["rejected"] = figure_to_data_uri(figure)
    return pictures


def _tables(report: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    rows = report["rows"]
    labels = report["labels"]
    stats = report["token_lengths"]["per_split"]
    tables = {
        "summary": (["", "rows"], [[key, rows[key]] for key in ("input", "kept", "quarantined")]),
        "splits": (["split", "rows"], [[name, count] for name, count in report["counts"].items()]),
        "rejected": (["reason", "rows"], [[name, n] for name, n in report["rejected"].items()]),
        "labels": (
            ["label", *SPLITS],
            [[label, *(report["label_distribution"][name][label] for name in SPLITS)] for label in labels],
        ),
        "tokens": (
            ["split", "min", "median", "mean", "p95", "max"],
            [[name, *(stats[name].get(key, "") for key in ("min", "median", "mean", "p95", "max"))] for name in SPLITS],
        ),
    }
    return tables


def _render(
    report: dict[str, Any], frames: dict[str, pd.DataFrame], tokens: np.ndarray, split: np.ndarray, kept: np.ndarray
) -> tuple[str, str]:
    """report.md and report.html."""
    from ftpipe.reports import html_image, html_page, html_table, markdown_table

    tables = _tables(report)
    split_info = report["split"]
    split_lines = [f"Mode: {split_info['mode']}."]
    if split_info.get("stratified") is not None:
        split_lines.append(
            f"Stratified by label: {'yes' if split_info['stratified'] else 'no'} "
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

    sections_md = [
        "# clean_data report",
        markdown_table(*tables["summary"]),
        "## Splits\n\n" + markdown_table(*tables["splits"]) + "\n\n" + "\n".join(f"- {line}" for line in split_lines),
        "## Quarantined rows by reason\n\n" + markdown_table(*tables["rejected"]),
        "## Label distribution\n\nLabels in class-index order: "
        + ", ".join(f"`{label}`" for label in report["labels"])
        + "\n\n"
        + markdown_table(*tables["labels"]),
        "## Token lengths\n\n" + token_line + "\n\n" + markdown_table(*tables["tokens"]),
    ]
    if report["warnings"]:
        sections_md.append("## Warnings\n\n" + "\n".join(f"- {w}" for w in report["warnings"]))
    sections_md.append(f"## Fingerprint\n\n`{report['fingerprint']}`")
    markdown = "\n\n".join(sections_md) + "\n"

    pictures = _figures(report, tokens, split, kept)
    rejected_image = html_image(pictures["rejected"], "rejections") if "rejected" in pictures else ""
    escape = html.escape
    sections_html = [
        ("Summary", html_table(*tables["summary"])),
        (
            "Splits",
            html_table(*tables["splits"])
            + "<ul>"
            + "".join(f"<li>{escape(line)}</li>" for line in split_lines)
            + "</ul>",
        ),
        ("Quarantined rows by reason", html_table(*tables["rejected"]) + rejected_image),
        ("Label distribution", html_table(*tables["labels"]) + html_image(pictures["labels"], "label distribution")),
        (
            "Token lengths",
            f"<p>{escape(token_line)}</p>" + html_table(*tables["tokens"]) + html_image(pictures["tokens"], "tokens"),
        ),
    ]
    if report["warnings"]:
        sections_html.append(
            ("Warnings", "<ul>" + "".join(f"<li class='fail'>{escape(w)}</li>" for w in report["warnings"]) + "</ul>")
        )
    sections_html.append(("Fingerprint", f"<code>{escape(report['fingerprint'])}</code>"))
    return markdown, html_page("clean_data report", sections_html)
