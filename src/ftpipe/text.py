"""Text normalisation and token counting, shared by clean_data and every task that reads text.

:func:`clean_texts` is the cleaning every text gets before a model sees it (HTML, Unicode, control and
invisible characters, whitespace); :func:`count_tokens_where_needed` counts tokens only where a bound
from the characters (:class:`TokenBound`) cannot prove that a text fits.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.config import CleanDataConfig

logger = logging.getLogger(__name__)

# pandas' default string dtype: pyarrow-backed, NaN for missing. Its .str methods run as pyarrow
# kernels (RE2 regexes), so the patterns below avoid \s, \b and \u escapes, which would make pandas
# fall back to a per-row Python loop; characters above U+00FF are written literally instead.
STR = pd.StringDtype("pyarrow", na_value=np.nan)
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


def clean_texts(texts: pd.Series, cleaning: CleanDataConfig) -> pd.Series:
    """Clean every text the way clean_data does (see the module docstring); missing values become ``""``.

    Use it wherever text reaches a model trained on clean_data's output, so that it sees the same
    normalisation. Returns a new Series of pandas' ``str`` dtype with the same index.
    """
    s = texts.astype(STR).fillna("")
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
