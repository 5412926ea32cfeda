"""ftpipe.data.conll: CoNLL column files, one row per sentence; bad lines are one DataError naming file and line."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile
from pathlib import Path

import pytest

from ftpipe.config import parse_config
from ftpipe.data.conll import read_conll
from ftpipe.errors import DataError
from ftpipe.steps import clean_data

ASSETS = Path(__file__).parents[1] / "assets"
CONLL_2003_STYLE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def read(path: Path):
    return read_conll(path, tokens_column="tokens", tags_column="tags")


def test_sentences_first_and_last_columns_docstart_skipped(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL_2003_STYLE, encoding="utf-8")
    frame = read(path)
    assert list(frame.columns) == ["tokens", "tags"]
    assert frame["tokens"].tolist() == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert frame["tags"].tolist() == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"], ["B-LOC"]]


def test_tabs_keep_a_token_with_a_space_and_blank_lines_may_hold_whitespace(tmp_path):
    path = tmp_path / "data.bio"
    # A BOM, CRLF line ends, several blank lines in a row, a whitespace-only line, a trailing tab.
    path.write_bytes("\ufeffNew York\tB-LOC\r\nis\tO\t\r\n\r\n \t \r\n\r\nok\tO\r\n".encode())
    frame = read(path)
    assert frame["tokens"].tolist() == [["New York", "is"], ["ok"]]
    assert frame["tags"].tolist() == [["B-LOC", "O"], ["O"]]


def test_a_line_with_one_column_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.conll"
    path.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.conll, line 2: only one column \('rejects'\)"):
        read(path)


@pytest.mark.parametrize(
    ("suffix", "opener"), [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)], ids=["gz", "bz2", "xz"]
)
def test_compressed_files(tmp_path, suffix, opener):
    path = tmp_path / f"train.conll{suffix}"
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write(CONLL_2003_STYLE)
    assert len(read(path)) == 3


def test_a_zip_with_one_file_and_one_with_two(tmp_path):
    good = tmp_path / "one.conll.zip"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("train.conll", CONLL_2003_STYLE)
    assert len(read(good)) == 3
    bad = tmp_path / "two.conll.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("a.conll", CONLL_2003_STYLE)
        archive.writestr("b.conll", CONLL_2003_STYLE)
    with pytest.raises(DataError, match="exactly one file, it holds 2"):
        read(bad)


def test_an_empty_file_has_no_rows_and_non_utf8_raises_for_the_caller(tmp_path):
    empty = tmp_path / "empty.conll"
    empty.write_text("\n\n-DOCSTART- O\n\n", encoding="utf-8")
    frame = read(empty)
    assert frame.empty and list(frame.columns) == ["tokens", "tags"]
    latin = tmp_path / "latin.conll"
    latin.write_bytes("Müller B-PER\n".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):  # readers.read_source turns it into a DataError naming the file
        read(latin)


def test_the_real_hironsan_sample():
    """25 sentences of a real Japanese IOB2 corpus (MIT; see the asset's LICENSE file): 10 or 12 columns a line."""
    frame = read(ASSETS / "hironsan-ner-sample.conll")
    assert len(frame) == 25
    assert sum(len(tokens) for tokens in frame["tokens"]) == 519
    assert all(len(tokens) == len(tags) for tokens, tags in zip(frame["tokens"], frame["tags"], strict=True))
    assert frame["tokens"][0][:3] == ["2005", "年", "7"]
    assert frame["tags"][0][:3] == ["B-DAT", "I-DAT", "I-DAT"]
    tags = {tag for row in frame["tags"] for tag in row}
    assert tags == {"O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-DAT", "I-DAT"}


def _config(tmp_path: Path, task_type: str, uri: Path, model: str):
    return parse_config(
        {
            "task": {"type": task_type},
            "data": {"uri": str(uri), "text_column": "tokens", "label_column": "tags"},
            "candidates": [{"name": "any", "source": model}],
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "ner"},
            "storage": {"artifact_root": str(tmp_path / "runs")},
        }
    )


def test_clean_data_reads_conll_by_its_extension_and_tasks_that_want_numbers_say_so(tmp_path, tiny_bert_dir):
    packed = tmp_path / "sample.conll.gz"
    packed.write_bytes(gzip.compress((ASSETS / "hironsan-ner-sample.conll").read_bytes()))
    cleaned = clean_data.run(_config(tmp_path, "token_classification", packed, tiny_bert_dir), str(tmp_path / "clean"))
    assert sum(cleaned.counts.values()) + sum(cleaned.rejected.values()) == 25
    assert cleaned.counts["train"] > 0 and "B-DAT" in cleaned.labels

    with pytest.raises(DataError, match="no training row has a numeric target in 'tags'"):
        clean_data.run(_config(tmp_path, "regression", packed, tiny_bert_dir), str(tmp_path / "clean-regression"))
