"""The token-count bound that lets clean_data skip tokenizing texts that provably fit: never below the true count,
and the same kept and quarantined rows as tokenizing every text, on real data and on crafted edge cases."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import CleanDataConfig, parse_config
from ftpipe.steps import clean_data
from ftpipe.text import clean_texts, count_tokens_where_needed, token_bound, token_lengths

ASSETS = Path(__file__).parents[1] / "assets"

EDGE_CASES = [
    "a" * 300,  # one long word: a single [UNK] for WordPiece, many pieces for BPE
    "supercalifragilisticexpialidocious" * 6,
    " ".join(["a"] * 200),  # many one-letter words
    " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] * (i % 7 + 1) for i in range(150)),
    "!" * 120 + "?" * 50,  # punctuation runs: one token per character
    "I loved it 😀😀😀 🎉🎉 👍🏽 👨‍👩‍👧‍👦 ❤️ 🇫🇷",  # emoji, skin tones, ZWJ sequences, flags
    "😀" * 80,
    "这部电影非常好看，我很喜欢它的故事和演员。" * 5,  # CJK: one token per character for BERT
    "東京タワーは高い。カタカナとひらがなも。",
    "한국어 문장은 어떻게 토큰화될까요? 아주 재미있는 영화였습니다." * 3,  # Hangul
    "Ça été très ÉLÉGANT, naïve café résumé façade Ångström ﬁnal ǅemal İstanbul",
    "e\u0301e\u0301e\u0301 a\u0308o\u0308u\u0308 combining marks",
    "مرحبا بكم في السينما، الفيلم كان رائعا جدا",  # Arabic
    "Привет, это был очень хороший фильм!",
    "ﷺ ﷻ ㍿ ℌ ① ⑩ ㎞ ﬀ",  # characters that expand under compatibility normalization
    "x" * 99 + " " + "y" * 101,  # around max_input_chars_per_word
    "[CLS] [SEP] [MASK] [PAD] [UNK] special tokens typed into the text",
    "1234567890 3.14159 1,000,000 $5.99 100% #hashtag @user http://example.com/a?b=c&d=e",
    "\t tabs\tand\u00a0non-breaking\u2009thin\u3000ideographic spaces ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒮𝒸𝓇𝒾𝓅𝓉 and 🀄 from the astral planes",
]


def real_texts() -> list[str]:
    """The cleaned, distinct texts of the SMS sample, plus the edge cases, cleaned as clean_data cleans them."""
    frame = pd.read_csv(ASSETS / "sms-spam-sample.csv")
    texts = pd.Series(frame["text"].astype(str).tolist() + EDGE_CASES)
    cleaned = clean_texts(texts, CleanDataConfig())
    return list(dict.fromkeys(text for text in cleaned if text))


def random_unicode_texts(count: int, seed: int) -> list[str]:
    """Texts of random code points from every plane (surrogates left out), words separated by spaces."""
    rng = random.Random(seed)
    ranges = [(0x21, 0x7E), (0xA0, 0x2FF), (0x300, 0x36F), (0x370, 0x1FFF), (0x2000, 0x2BFF), (0x3000, 0x9FFF),
              (0xAC00, 0xD7A3), (0xF900, 0xFFFD), (0x10000, 0x1FAFF), (0x20000, 0x2A6DF)]  # fmt: skip
    texts = []
    for _ in range(count):
        words = []
        for _ in range(rng.randint(1, 12)):
            low, high = rng.choice(ranges)
            words.append("".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 15))))
        texts.append(" ".join(words))
    return texts


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_path):
    from ftpipe.models import load_tokenizer

    return load_tokenizer(minilm_path)


def byte_level_tokenizer(add_prefix_space: bool, texts: list[str], split_digits: bool = False):
    """A small GPT-2-style byte-level BPE tokenizer trained here on ``texts``, as transformers wraps it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    if split_digits:  # a splitter before ByteLevel: each piece may get its own prefix space
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", backend.token_to_id("<s>")), ("</s>", backend.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


def unigram_tokenizer(texts: list[str]):
    """A SentencePiece-style (Metaspace, Unigram) tokenizer: a family the bound does not claim to understand."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def assert_bound_holds(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    bound = token_bound(tokenizer)
    assert bound is not None
    exact = token_lengths(tokenizer, texts)
    upper = bound.upper(texts)
    below = [(text[:60], int(u), int(e)) for text, u, e in zip(texts, upper, exact, strict=True) if u < e]
    assert not below, f"bound below the true count: {below[:5]}"
    return upper, exact


def test_wordpiece_bound_holds_on_real_text_and_edge_cases(minilm_tokenizer):
    texts = real_texts()
    upper, exact = assert_bound_holds(minilm_tokenizer, texts)
    assert token_bound(minilm_tokenizer).specials == 2
    # It is a useful bound, not a vacuous one: on everyday text it is a few times the true count.
    ordinary = np.asarray([text.isascii() for text in texts])
    assert np.median(upper[ordinary] / exact[ordinary]) < 6


def test_wordpiece_bound_holds_on_random_unicode_from_every_plane(minilm_tokenizer):
    texts = random_unicode_texts(3000, seed=7)
    assert_bound_holds(minilm_tokenizer, texts)


def test_wordpiece_normalizer_is_character_wise(minilm_tokenizer):
    """What the bound rests on: a text's normalized length is the sum of its characters' normalized lengths."""
    bound = token_bound(minilm_tokenizer)
    normalize = minilm_tokenizer.backend_tokenizer.normalizer.normalize_str
    for text in random_unicode_texts(2000, seed=11) + real_texts():
        normalized = normalize(text)
        assert len(normalized) - normalized.count(" ") == sum(bound.weight(char) for char in text), text[:60]


@pytest.mark.parametrize(("add_prefix_space", "split_digits"), [(False, False), (True, False), (True, True)])
def test_byte_level_bpe_bound_holds(add_prefix_space, split_digits):
    texts = real_texts() + random_unicode_texts(1000, seed=3) + ["1 22 333 4444 " * 20, "9" * 200]
    tokenizer = byte_level_tokenizer(add_prefix_space, texts[:400], split_digits)
    bound = token_bound(tokenizer)
    assert bound is not None and bound.per_byte and bound.specials >= 2
    assert bound.byte_factor == (2 if add_prefix_space and split_digits else 1)
    assert_bound_holds(tokenizer, texts)


def test_unknown_families_are_tokenized_in_full():
    texts = real_texts()
    tokenizer = unigram_tokenizer(texts)
    assert token_bound(tokenizer) is None
    counts, info = count_tokens_where_needed(tokenizer, texts, 1, 10, sample=100, seed=0)
    assert info == {"counted": len(texts), "of": len(texts), "sampled": False}
    assert (counts == token_lengths(tokenizer, texts)).all()


@pytest.mark.parametrize(("min_tokens", "max_tokens"), [(1, 512), (1, 40), (1, 12), (2, 25), (3, 512), (6, 30)])
def test_shortcut_decides_every_text_as_full_tokenization_does(minilm_tokenizer, min_tokens, max_tokens):
    texts = real_texts()
    exact = token_lengths(minilm_tokenizer, texts)
    counts, info = count_tokens_where_needed(minilm_tokenizer, texts, min_tokens, max_tokens, sample=100, seed=5)
    assert info["sampled"]
    if min_tokens <= 2 and max_tokens >= 512:  # room to skip: most texts are provably inside the bounds
        assert info["counted"] < len(texts) / 2
    counted = counts >= 0
    assert (counts[counted] == exact[counted]).all()
    # a text not counted provably fits; every text that does not fit was counted
    assert ((exact >= min_tokens) & (exact <= max_tokens))[~counted].all()
    assert counted[(exact < min_tokens) | (exact > max_tokens)].all()


@pytest.mark.parametrize(("min_tokens", "max_tokens"), [(1, 30), (4, 20), (1, 512)])
def test_clean_data_gives_the_same_rows_with_and_without_the_shortcut(tmp_path, minilm_path, min_tokens, max_tokens):
    frame = pd.read_csv(ASSETS / "sms-spam-sample.csv")
    edge = pd.DataFrame({"spam": [i % 2 for i in range(len(EDGE_CASES))], "text": EDGE_CASES})
    data = pd.concat([frame, edge, frame.head(50)], ignore_index=True)  # some duplicates too
    path = tmp_path / "data.csv"
    data.to_csv(path, index=False)
    outputs = {}
    for name, sample in (("full", None), ("shortcut", 100)):
        config = parse_config(
            {
                "data": {"uri": str(path), "text_column": "text", "label_column": "spam"},
                "candidates": [{"name": "minilm", "source": minilm_path}],
                "registry": {"model_name": "bound"},
                "cleaning": {"min_tokens": min_tokens, "max_tokens": max_tokens, "token_stats_sample": sample},
            }
        )
        result = clean_data.run(config, str(tmp_path / name))
        quarantine = pd.read_parquet(result.quarantine_uri).sort_values(["source_split", "row"])
        report = json.loads(Path(result.report_json_uri).read_text())
        outputs[name] = (result, quarantine.reset_index(drop=True), report["token_lengths"]["counted"])
    (full, full_quarantine, full_counted), (fast, fast_quarantine, fast_counted) = outputs["full"], outputs["shortcut"]
    assert fast.fingerprint == full.fingerprint and fast.counts == full.counts and fast.rejected == full.rejected
    pd.testing.assert_frame_equal(fast_quarantine, full_quarantine)
    assert not full_counted["sampled"] and full_counted["counted"] == full_counted["of"]
    assert fast_counted["sampled"]
    if min_tokens > 2:  # above what [CLS] text [SEP] is sure to have: every text is counted
        assert fast_counted["counted"] == fast_counted["of"]
    for split in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(getattr(fast, f"{split}_uri")), pd.read_parquet(getattr(full, f"{split}_uri"))
        )


def test_wordpiece_without_a_space_dropping_pre_tokenizer_counts_spaces(minilm_tokenizer):
    """A WordPiece vocabulary fed whole texts (spaces kept): the bound counts spaces too, and still holds."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = minilm_tokenizer.get_vocab()
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=1000))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Punctuation()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    bound = token_bound(tokenizer)
    assert bound is not None and not bound.spaces_free and bound.specials == 0
    assert_bound_holds(tokenizer, real_texts() + random_unicode_texts(500, seed=13))
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])  # composes: not per char
    assert token_bound(PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")) is None
