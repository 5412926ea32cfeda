"""clean_data on small files written here: cleaning, every rejection reason, splits, fingerprint, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import CleanDataConfig, PipelineConfig, parse_config
from ftpipe.config import parse_config as _parse_config
from ftpipe.data.readers import resolve_format
from ftpipe.errors import DataError, StorageError
from ftpipe.results import CleanDataResult
from ftpipe.steps import clean_data
from ftpipe.steps.clean_data import reasons as _reasons
from ftpipe.tasks.text_classification import TextClassification
from ftpipe.text import clean_texts, token_lengths

REASONS = _reasons(
    TextClassification(
        _parse_config(
            {"data": {"uri": "x.csv"}, "candidates": [{"name": "m", "source": "m"}], "registry": {"model_name": "m"}}
        )
    )
)

ASSETS = Path(__file__).parents[1] / "assets"


@pytest.fixture
def make_config(tiny_bert_dir):
    """A config whose tokenizer (first candidate) is the tiny test BERT's (the real MiniLM vocabulary)."""

    def make(data: dict, **cleaning) -> PipelineConfig:
        raw = {
            "data": data,
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "registry": {"model_name": "test-model"},
        }
        if cleaning:
            raw["cleaning"] = cleaning
        return parse_config(raw)

    return make


@pytest.fixture(autouse=True)
def _fast_pictures(request, monkeypatch):
    """Skip PNG encoding (most of a small run's time) unless a test asks for ``real_pictures``; plots still draw."""
    if "real_pictures" in request.fixturenames:
        return
    import matplotlib.pyplot as plt

    def no_png(figure):
        plt.close(figure)
        return "data:image/png;base64,"

    monkeypatch.setattr("ftpipe.reports.figure_to_data_uri", no_png)


@pytest.fixture
def real_pictures():
    """Render the report's pictures for real."""


def write(frame: pd.DataFrame, path: Path) -> str:
    """Write ``frame`` in the format the file name says; returns the path as a string."""
    name = path.name
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith((".jsonl", ".jsonl.gz")):
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif name.endswith(".json"):
        frame.to_json(path, orient="records", force_ascii=False)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def dataset(per_label: dict[str, int], offset: int = 0) -> pd.DataFrame:
    """Distinct, clean texts: ``per_label`` rows of each label."""
    rows = []
    for label, count in per_label.items():
        rows += [{"text": f"message {offset + i} about topic {label}", "label": label} for i in range(count)]
    return pd.DataFrame(rows)


def read_outputs(result: CleanDataResult) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(getattr(result, f"{name}_uri")) for name in ("train", "validation", "test", "quarantine")
    }


def label_distribution(report: dict) -> dict[str, dict[str, int]]:
    """{split: {label: rows}} from the report's target table (label, train, validation, test)."""
    table = report["target_distribution"]
    return {split: {row[0]: row[1 + i] for row in table["rows"]} for i, split in enumerate(table["columns"][1:])}


def check_invariants(result: CleanDataResult, input_rows: int) -> dict:
    """Counts add up, files agree with the result, report.json agrees with both."""
    frames = read_outputs(result)
    report = json.loads(Path(result.report_json_uri).read_text())
    assert set(result.rejected) == set(REASONS)
    kept = sum(result.counts.values())
    quarantined = sum(result.rejected.values())
    assert kept + quarantined == input_rows
    assert report["rows"] == {"input": input_rows, "kept": kept, "quarantined": quarantined}
    assert report["counts"] == result.counts and report["rejected"] == result.rejected
    assert report["fingerprint"] == result.fingerprint and report["labels"] == result.labels
    assert len(frames["quarantine"]) == quarantined
    assert frames["quarantine"]["reason"].value_counts().to_dict() == {k: v for k, v in result.rejected.items() if v}
    for split in ("train", "validation", "test"):
        frame = frames[split]
        assert list(frame.columns) == ["text", "label", "label_id"]
        assert len(frame) == result.counts[split] > 0
        assert frame["label_id"].dtype == np.int64
        assert (frame["label"] == [result.labels[i] for i in frame["label_id"]]).all()
        assert sum(label_distribution(report)[split].values()) == len(frame)
    return report


# -- text cleaning ---------------------------------------------------------------------------------


def test_clean_texts_html_unicode_controls_whitespace():
    texts = pd.Series(
        [
            "<p>Hello&nbsp;<b>World</b></p><script>var x = 1 < 2;</script>",
            "Fish &amp; chips &lt;b&gt; a <3 b",
            "ﬁne ＡＢＣ\u00a0café",
            "tab\tand\nnew\r\nlines   and  spaces ",
            "ctrl\x00char\x1fhere\x94there",
            "zero\u200bwidth soft\u00adhyphen \ufeffbom",
            "<!-- comment --> <!DOCTYPE html>  ",
            None,
        ]
    )
    cleaned = clean_texts(texts, CleanDataConfig()).tolist()
    assert cleaned == [
        "Hello World",
        "Fish & chips <b> a <3 b",  # entities unescaped after tags are removed: an escaped tag is text
        "fine ABC café",
        "tab and new lines and spaces",
        "ctrl char here there",
        "zerowidth softhyphen bom",
        "",
        "",
    ]


def test_clean_texts_options():
    texts = pd.Series(["<b>Ünïcode</b> &amp; MORE"])
    assert clean_texts(texts, CleanDataConfig(lowercase=True)).tolist() == ["ünïcode & more"]
    assert clean_texts(texts, CleanDataConfig(strip_html=False)).tolist() == ["<b>Ünïcode</b> &amp; MORE"]
    decomposed = clean_texts(pd.Series(["é"]), CleanDataConfig(unicode_form="NFD")).tolist()[0]
    assert decomposed == "e\u0301"


def test_token_lengths_count_special_tokens_and_never_truncate(tiny_bert_dir):
    from ftpipe.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    long_text = " ".join(["word"] * 700)
    lengths = token_lengths(tokenizer, ["hello world", long_text, "hi"], batch_size=2)
    assert lengths.tolist() == [4, 702, 3]  # [CLS] ... [SEP]


def test_resolve_format():
    assert resolve_format("s3://b/data.csv") == "csv"
    assert resolve_format("/x/data.CSV.gz") == "csv"
    assert resolve_format("file:///x/data.jsonl") == "jsonl"
    assert resolve_format("data.json.bz2") == "jsonl"
    assert resolve_format("data.parquet") == "parquet"
    assert resolve_format("data.txt", "csv") == "csv"
    with pytest.raises(DataError, match="set data.format"):
        resolve_format("data.txt")


# -- one file, split here ----------------------------------------------------------------------------


def test_single_file_stratified_split_and_outputs(tmp_path, make_config, real_pictures):
    uri = write(dataset({"ham": 160, "spam": 40}), tmp_path / "data.csv")
    result = clean_data.run(make_config({"uri": uri}), str(tmp_path / "out"))

    assert result.labels == ["ham", "spam"]
    assert result.counts == {"train": 160, "validation": 20, "test": 20}
    report = check_invariants(result, 200)
    for split, size in result.counts.items():
        assert label_distribution(report)[split]["spam"] == size // 5  # 20 % spam in every split
    assert report["split"]["stratified"] is True
    assert result.output_uri == str(tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")} == {
        "train.parquet",
        "validation.parquet",
        "test.parquet",
        "quarantine.parquet",
        "report.json",
        "report.md",
        "report.html",
    }
    page = Path(result.report_html_uri).read_text()
    assert page.count("data:image/png;base64,") == 2  # token lengths and labels (no rejections here)
    assert result.fingerprint in page and result.fingerprint in Path(result.report_markdown_uri).read_text()
    assert CleanDataResult.from_json(result.to_json()) == result
    texts = pd.concat([pd.read_parquet(getattr(result, f"{s}_uri"))["text"] for s in ("train", "validation", "test")])
    assert texts.is_unique and len(texts) == 200


def test_every_format_gives_the_same_result(tmp_path, make_config):
    frame = dataset({"a": 30, "b": 30})
    frame.loc[3, "text"] = "  <i>Ünïcode</i> &amp;   spaces  "
    results = {
        name: clean_data.run(make_config({"uri": write(frame, tmp_path / name)}), str(tmp_path / f"out-{name}"))
        for name in ("data.csv", "data.csv.gz", "data.jsonl", "data.json", "data.parquet")
    }
    assert len({result.fingerprint for result in results.values()}) == 1
    assert all(r.counts == {"train": 48, "validation": 6, "test": 6} for r in results.values())


def test_explicit_format_overrides_the_extension(tmp_path, make_config):
    path = tmp_path / "data.txt"
    dataset({"a": 20, "b": 20}).to_json(path, orient="records", lines=True)
    result = clean_data.run(make_config({"uri": f"file://{path}", "format": "jsonl"}), str(tmp_path / "out"))
    assert sum(result.counts.values()) == 40


def test_split_is_independent_of_row_order_and_follows_the_seed(tmp_path, make_config):
    frame = dataset({"a": 50, "b": 25, "c": 25})
    first = clean_data.run(make_config({"uri": write(frame, tmp_path / "a.csv")}), str(tmp_path / "o1"))
    shuffled = frame.sample(frac=1.0, random_state=7)
    second = clean_data.run(make_config({"uri": write(shuffled, tmp_path / "b.csv")}), str(tmp_path / "o2"))
    assert first.fingerprint == second.fingerprint
    assert set(pd.read_parquet(first.test_uri)["text"]) == set(pd.read_parquet(second.test_uri)["text"])
    reseeded = clean_data.run(make_config({"uri": str(tmp_path / "a.csv"), "split": {"seed": 1}}), str(tmp_path / "o3"))
    assert reseeded.fingerprint != first.fingerprint
    assert reseeded.counts == first.counts


def test_classes_too_small_to_stratify_fall_back_and_say_so(tmp_path, make_config):
    frame = pd.concat([dataset({"big": 40}), dataset({"tiny": 1, "pair": 2}, offset=100)], ignore_index=True)
    config = make_config({"uri": write(frame, tmp_path / "d.csv")}, min_rows_per_label=1)  # keep the singleton
    result = clean_data.run(config, str(tmp_path / "out"))
    report = check_invariants(result, 43)
    assert result.labels == ["big", "pair", "tiny"]
    notes = " ".join(report["split"]["notes"])
    assert "'tiny'" in notes and "not stratified" in notes
    assert "- splitting off" in Path(result.report_markdown_uri).read_text()


def test_a_label_seen_once_is_quarantined_as_rare_label(tmp_path, make_config, caplog):
    frame = pd.concat([dataset({"big": 40, "other": 20}), dataset({"tiny": 1, "pair": 2}, offset=100)])
    frame = pd.concat([frame, frame[frame["label"] == "tiny"]], ignore_index=True)  # an exact copy counts once
    result = clean_data.run(make_config({"uri": write(frame, tmp_path / "d.csv")}), str(tmp_path / "out"))
    report = check_invariants(result, 64)
    assert result.labels == ["big", "other", "pair"]  # learnt from the data: the rare label is no output
    assert result.rejected["rare_label"] == 1 and result.rejected["duplicate"] == 1
    quarantine = read_outputs(result)["quarantine"]
    assert quarantine.set_index("reason").loc["rare_label", "label"] == "tiny"
    assert report["rare_labels"] == {"tiny": 1}
    assert "`tiny` (1)" in Path(result.report_markdown_uri).read_text()
    assert "'tiny' (1)" in caplog.text and "min_rows_per_label" in caplog.text

    # the user's own splits: counted in train; the label's validation and test rows go too
    train = pd.concat([dataset({"a": 8, "b": 8}), dataset({"c": 1}, 50)], ignore_index=True)
    validation, test = dataset({"a": 2, "b": 2, "c": 1}, 100), dataset({"a": 2, "b": 2, "c": 2}, 200)
    splits = own_splits(tmp_path, train, validation, test)
    result = clean_data.run(make_config(splits), str(tmp_path / "own"))
    check_invariants(result, 17 + 5 + 6)
    assert result.rejected["rare_label"] == 4 and result.labels == ["a", "b"]
    named = clean_data.run(make_config({**splits, "labels": ["a", "b", "c"]}), str(tmp_path / "named"))
    assert named.labels == ["a", "b", "c"] and named.rejected["rare_label"] == 4  # named, yet too rare to learn
    off = clean_data.run(make_config(splits, min_rows_per_label=1), str(tmp_path / "off"))
    assert off.rejected["rare_label"] == 0 and off.labels == ["a", "b", "c"]
    with pytest.raises(DataError, match="every label has fewer than 9 rows \\(cleaning.min_rows_per_label"):
        clean_data.run(make_config(splits, min_rows_per_label=9), str(tmp_path / "strict"))  # a and b have 8
    assert not (tmp_path / "strict").exists()


def test_too_few_rows_to_split_is_a_data_error(tmp_path, make_config):
    uri = write(dataset({"a": 1, "b": 1}), tmp_path / "d.csv")
    with pytest.raises(DataError, match="too few to split"):
        clean_data.run(make_config({"uri": uri}, min_rows_per_label=1), str(tmp_path / "out"))
    with pytest.raises(DataError, match="every label has fewer than 2 rows"):
        clean_data.run(make_config({"uri": uri}), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- the user's own splits ------------------------------------------------------------------------


def own_splits(tmp_path: Path, train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, ext="csv"):
    return {
        "train_uri": write(train, tmp_path / f"train.{ext}"),
        "validation_uri": write(validation, tmp_path / f"validation.{ext}"),
        "test_uri": write(test, tmp_path / f"test.{ext}"),
    }


def test_user_splits_are_kept_as_given(tmp_path, make_config):
    train, validation, test = dataset({"x": 10, "y": 5}), dataset({"x": 3, "y": 1}, 100), dataset({"y": 4}, 200)
    result = clean_data.run(make_config(own_splits(tmp_path, train, validation, test)), str(tmp_path / "out"))
    assert result.counts == {"train": 15, "validation": 4, "test": 4}
    outputs = read_outputs(result)
    for name, frame in (("train", train), ("validation", validation), ("test", test)):
        assert outputs[name]["text"].tolist() == frame["text"].tolist()
        assert outputs[name]["label"].tolist() == frame["label"].tolist()
    report = check_invariants(result, 23)
    assert report["split"]["stratified"] is None
    assert report["input_rows"] == {"train": 15, "validation": 4, "test": 4}


def test_every_rejection_reason_is_quarantined_with_its_source(tmp_path, make_config, real_pictures):
    train = pd.DataFrame(
        [
            ("kept one", "0"),  # row 0
            (None, "0"),  # 1 missing_text
            ("<p>  </p>", "1"),  # 2 empty_text
            ("ab", "1"),  # 3 too_short (min_chars 3)
            ("no label here", None),  # 4 missing_label
            ("label two", "2"),  # 5 unknown_label
            ("hey", "0"),  # 6 too_few_tokens: [CLS] hey [SEP] is 3 < 4
            (" ".join(["long"] * 30), "1"),  # 7 too_many_tokens (32 > 20)
            ("same words here", "0"),  # 8 conflicting_labels
            ("same  <b>words</b> here", "1"),  # 9 conflicting_labels (same cleaned text, other label)
            ("kept two", "1"),  # 10
            ("Kept two", "1"),  # 11 kept: case differs (lowercase is off)
            ("kept&nbsp;two", "1"),  # 12 duplicate of row 10 after cleaning
            ("kept three", "0"),  # 13
        ],
        columns=["text", "label"],
    )
    validation = pd.DataFrame([("kept one", "0"), ("valid one", "0"), ("valid two", "1")], columns=["text", "label"])
    test = pd.DataFrame(
        [("test one", "1"), ("kept three", "0"), ("test two", "0"), ("<b>" * 70, "0")], columns=["text", "label"]
    )  # test row 3: too_long (210 > max_chars 200 as read, though cleaning would leave nothing)
    config = make_config(
        {
            **own_splits(tmp_path, train, validation, test),
            "label_mapping": {"0": "ham", "1": "spam"},
            "labels": ["ham", "spam"],
        },
        min_chars=3,
        max_chars=200,
        min_tokens=4,
        max_tokens=20,
        near_duplicate_threshold=None,  # row 11 would be a near-copy of row 10 (tests of their own below)
    )
    result = clean_data.run(config, str(tmp_path / "out"))

    assert result.labels == ["ham", "spam"]
    assert result.rejected == {
        "missing_text": 1,
        "too_long": 1,
        "empty_text": 1,
        "too_short": 1,
        "missing_label": 1,
        "unknown_label": 1,
        "too_few_tokens": 1,
        "too_many_tokens": 1,
        "conflicting_labels": 2,
        "duplicate": 1,
        "near_duplicate": 0,
        "rare_label": 0,
        "leakage": 2,
        "near_leakage": 0,
    }
    assert result.counts == {"train": 4, "validation": 2, "test": 2}
    check_invariants(result, 21)
    quarantine = read_outputs(result)["quarantine"]
    assert list(quarantine.columns) == ["source_split", "row", "text", "label", "reason", "duplicate_of"]
    where = {(r.source_split, r.row): r.reason for r in quarantine.itertuples()}
    assert where == {
        ("train", 1): "missing_text",
        ("train", 2): "empty_text",
        ("train", 3): "too_short",
        ("train", 4): "missing_label",
        ("train", 5): "unknown_label",
        ("train", 6): "too_few_tokens",
        ("train", 7): "too_many_tokens",
        ("train", 8): "conflicting_labels",
        ("train", 9): "conflicting_labels",
        ("train", 12): "duplicate",
        ("validation", 0): "leakage",
        ("test", 1): "leakage",
        ("test", 3): "too_long",
    }
    original = quarantine.set_index(["source_split", "row"])
    assert original.loc[("train", 9), "text"] == "same  <b>words</b> here"  # the text as read, not cleaned
    assert original.loc[("train", 5), "label"] == "2"  # the label as read, before the mapping
    assert original.loc[("train", 12), "duplicate_of"] == 10  # the copy kept in its place
    assert original.loc[("validation", 0), "duplicate_of"] == 0 and original.loc[("test", 1), "duplicate_of"] == 13
    assert original["duplicate_of"].isna().sum() == len(original) - 3
    assert pd.isna(original.loc[("train", 1), "text"]) and pd.isna(original.loc[("train", 4), "label"])
    assert read_outputs(result)["train"]["text"].tolist() == ["kept one", "kept two", "Kept two", "kept three"]
    report = json.loads(Path(result.report_json_uri).read_text())
    assert report["rejected_by_source"]["test"] == {"too_long": 1, "leakage": 1}
    assert Path(result.report_html_uri).read_text().count("data:image/png;base64,") == 3


def test_a_5_mb_cell_is_quarantined_as_too_long_and_the_run_goes_on(tmp_path, make_config):
    frame = dataset({"a": 20, "b": 20})
    huge = ("lorem ipsum dolor <i>sit</i> amet " * 160_000)[: 5 * 2**20]  # 5 MiB in one cell, HTML and all
    frame.loc[7, "text"] = huge
    uri = write(frame, tmp_path / "d.csv")
    assert (tmp_path / "d.csv").stat().st_size > 5 * 2**20
    result = clean_data.run(make_config({"uri": uri}), str(tmp_path / "out"))
    check_invariants(result, 40)
    assert result.rejected["too_long"] == 1 and sum(result.rejected.values()) == 1
    assert sum(result.counts.values()) == 39
    quarantine = read_outputs(result)["quarantine"]
    assert quarantine.loc[0, "reason"] == "too_long" and quarantine.loc[0, "row"] == 7
    assert quarantine.loc[0, "text"] == huge  # the text as read, whole
    unlimited = clean_data.run(make_config({"uri": uri}, max_chars=None), str(tmp_path / "unlimited"))
    assert unlimited.rejected["too_long"] == 0 and unlimited.rejected["too_many_tokens"] == 1


def test_deduplicate_and_leakage_can_be_turned_off(tmp_path, make_config):
    train = pd.DataFrame([("a b c", "x"), ("a b c", "x"), ("d e f", "y"), ("d e f", "x"), ("g h", "y")])
    train.columns = ["text", "label"]
    validation = pd.DataFrame({"text": ["a b c", "v w"], "label": ["x", "y"]})
    test = pd.DataFrame({"text": ["g h", "t u"], "label": ["y", "x"]})
    splits = own_splits(tmp_path, train, validation, test)
    result = clean_data.run(make_config(splits, deduplicate=False, remove_leakage=False), str(tmp_path / "out"))
    assert sum(result.rejected.values()) == 0
    assert result.counts == {"train": 5, "validation": 2, "test": 2}
    default = clean_data.run(make_config(splits, min_rows_per_label=1), str(tmp_path / "out2"))  # one row a label
    assert default.rejected["duplicate"] == 1 and default.rejected["conflicting_labels"] == 2
    assert default.rejected["leakage"] == 2
    assert default.counts == {"train": 2, "validation": 1, "test": 1}


def test_duplicates_of_one_file_never_straddle_splits(tmp_path, make_config):
    frame = pd.concat([dataset({"a": 30, "b": 30})] * 3, ignore_index=True)
    result = clean_data.run(make_config({"uri": write(frame, tmp_path / "d.csv")}), str(tmp_path / "out"))
    assert result.rejected["duplicate"] == 120 and result.rejected["leakage"] == 0
    assert sum(result.counts.values()) == 60


def test_leakage_within_one_file_when_duplicates_are_kept(tmp_path, make_config):
    frame = pd.concat([dataset({"a": 50, "b": 50})] * 2, ignore_index=True)
    config = make_config({"uri": write(frame, tmp_path / "d.csv")}, deduplicate=False)
    result = clean_data.run(config, str(tmp_path / "out"))
    check_invariants(result, 200)
    outputs = read_outputs(result)
    train = set(outputs["train"]["text"])
    assert result.rejected["leakage"] > 0
    assert not train & (set(outputs["validation"]["text"]) | set(outputs["test"]["text"]))


# -- labels ------------------------------------------------------------------------------------------


def test_labels_given_set_the_class_order_and_reject_others(tmp_path, make_config):
    frame = pd.concat([dataset({"neg": 20, "pos": 20, "neutral": 3})], ignore_index=True)
    config = make_config({"uri": write(frame, tmp_path / "d.csv"), "labels": ["pos", "neg"]})
    result = clean_data.run(config, str(tmp_path / "out"))
    assert result.labels == ["pos", "neg"]
    assert result.rejected["unknown_label"] == 3
    train = pd.read_parquet(result.train_uri)
    assert set(zip(train["label"], train["label_id"], strict=True)) == {("pos", 0), ("neg", 1)}


def test_labels_are_inferred_from_train_only(tmp_path, make_config):
    train, validation, test = dataset({"a": 6, "b": 6}), dataset({"a": 2, "c": 2}, 100), dataset({"b": 2}, 200)
    result = clean_data.run(make_config(own_splits(tmp_path, train, validation, test)), str(tmp_path / "out"))
    assert result.labels == ["a", "b"]
    assert result.rejected["unknown_label"] == 2


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_numeric_labels_are_read_as_text_and_mapped(tmp_path, make_config, ext):
    frame = dataset({"0": 12, "1": 12})
    frame["label"] = frame["label"].astype(int)
    if ext == "parquet":
        frame["label"] = frame["label"].astype(float)  # 1.0 must read as "1"
    config = make_config(
        {**own_splits(tmp_path, frame, frame.iloc[:4], frame.iloc[-4:], ext), "label_mapping": {"0": "no", "1": "yes"}},
        remove_leakage=False,
    )
    result = clean_data.run(config, str(tmp_path / "out"))
    assert result.labels == ["no", "yes"]
    assert sum(result.rejected.values()) == 0


def test_unmapped_labels_become_classes_with_a_warning(tmp_path, make_config):
    frame = dataset({"0": 10, "1": 10, "2": 10})
    config = make_config({"uri": write(frame, tmp_path / "d.csv"), "label_mapping": {"0": "ham", "1": "spam"}})
    result = clean_data.run(config, str(tmp_path / "out"))
    assert result.labels == ["2", "ham", "spam"]
    report = json.loads(Path(result.report_json_uri).read_text())
    assert any("'2'" in warning and "data.labels" in warning for warning in report["warnings"])
    assert "## Warnings" in Path(result.report_markdown_uri).read_text()


def test_one_class_only_is_a_data_error(tmp_path, make_config):
    uri = write(dataset({"only": 20}), tmp_path / "d.csv")
    with pytest.raises(DataError, match="only one label \\('only'\\)"):
        clean_data.run(make_config({"uri": uri}), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- fingerprint -------------------------------------------------------------------------------------


def test_fingerprint_ignores_row_order_but_not_content(tmp_path, make_config):
    train, validation, test = (
        dataset({"a": 10, "b": 10}),
        dataset({"a": 3, "b": 3}, 100),
        dataset({"a": 3, "b": 3}, 200),
    )

    def fingerprint(name: str, tr: pd.DataFrame, va: pd.DataFrame, te: pd.DataFrame) -> str:
        directory = tmp_path / name
        directory.mkdir()
        return clean_data.run(make_config(own_splits(directory, tr, va, te)), str(directory / "out")).fingerprint

    base = fingerprint("base", train, validation, test)
    assert len(base) == 64 and int(base, 16) >= 0
    shuffle = lambda frame: frame.sample(frac=1.0, random_state=3)  # noqa: E731
    assert fingerprint("shuffled", shuffle(train), shuffle(validation), shuffle(test)) == base
    changed_text = train.copy()
    changed_text.loc[0, "text"] = "a different message"
    assert fingerprint("text", changed_text, validation, test) != base
    changed_label = train.copy()
    changed_label.loc[0, "label"] = "b"
    assert fingerprint("label", changed_label, validation, test) != base
    moved = pd.concat([test, validation.iloc[:1]])
    assert fingerprint("moved", train, validation.iloc[1:], moved) != base
    # cleaning-only differences (whitespace, entities) do not change the cleaned content
    noisy = train.copy()
    noisy["text"] = "  " + noisy["text"].str.replace(" ", "&nbsp;") + "\t"
    assert fingerprint("noisy", noisy, validation, test) == base


# -- bad input ---------------------------------------------------------------------------------------


def test_missing_file_is_a_storage_error_naming_it(tmp_path, make_config):
    with pytest.raises(StorageError, match="data.uri: not found: .*nope.csv"):
        clean_data.run(make_config({"uri": str(tmp_path / "nope.csv")}), str(tmp_path / "out"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.parquet", b"this is not parquet", "cannot read data.uri .*bad.parquet as parquet"),
        ("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": oops\n', "cannot read data.uri .*bad.jsonl as jsonl"),
        ("bad.csv", b"text,label\n\xff\xfe bad bytes,x\n", "is not UTF-8 text"),
        ("bad.csv", b'text,label\na,b\n"c,d,e\n', "cannot read data.uri .*bad.csv as csv"),
        ("empty.csv", b"", "is empty"),
        ("header.csv", b"text,label\n", "has no data rows"),
        ("data.txt", b"text,label\n", "set data.format"),
    ],
)
def test_unreadable_files_are_data_errors(tmp_path, make_config, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        clean_data.run(make_config({"uri": str(tmp_path / name)}), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        # the first data row: pandas would take its first field for an index and shift every column
        ("first.csv", "text,label\nhello, world,a\nfine,b\n", "line 2 \\(data row 1\\) has 3 fields"),
        # after a text with quoted newlines: the physical line, not the record's number (pandas says line 4)
        ("later.csv", 'text,label\nfine,a\n"multi\nline\ntext",b\nhello, world,a\nok,b\n', "line 6 \\(data row 3\\)"),
        ("later.tsv", "text\tlabel\nfine\ta\nhello\tworld\ta\tb\n", "line 3 \\(data row 2\\) has 4 fields"),
        ("later.csv.gz", "text,label\nfine,a\nok,b\nhello, world,a\n", "line 4 \\(data row 3\\)"),
    ],
)
def test_a_row_with_more_fields_than_the_header_names_its_line(tmp_path, make_config, name, content, where):
    import gzip

    data = content.encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(DataError, match=f"data.uri .*{name} {where}.* where the header has 2: quote a text") as error:
        clean_data.run(make_config({"uri": str(tmp_path / name)}), str(tmp_path / "out"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_ragged_csv_stops_ftpipe_run_with_one_line(tmp_path, tiny_bert_dir, capsys):
    import yaml

    from ftpipe.cli import main

    rows = "".join(f"message {i} about things,{'ab'[i % 2]}\n" for i in range(30))
    (tmp_path / "d.csv").write_text(f"text,label\n{rows}\"two\nlines\",a\nhello, world,b\n")
    config = {
        "data": {"uri": str(tmp_path / "d.csv")},
        "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
        "registry": {"uri": str(tmp_path / "registry"), "model_name": "m"},
        "storage": {"artifact_root": str(tmp_path / "runs")},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--local", "--config", str(tmp_path / "config.yaml")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("ftpipe: error: clean_data: data.uri ") and "d.csv line 34 (data row 32) has 3 fields" in err


def test_rows_with_fewer_fields_still_read(tmp_path, make_config):
    lines = [f"message {i} about things,{'ab'[i % 2]}" for i in range(40)] + ["a row with no label"]
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(lines) + "\n")
    result = clean_data.run(make_config({"uri": str(tmp_path / "d.csv")}), str(tmp_path / "out"))
    assert result.rejected["missing_label"] == 1 and sum(result.counts.values()) == 40


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_missing_columns_name_the_columns_that_exist(tmp_path, make_config, ext):
    frame = pd.DataFrame({"body": ["hello there"] * 3, "label": ["a", "b", "a"]})
    uri = write(frame, tmp_path / f"d.{ext}")
    with pytest.raises(DataError, match="no column 'text' \\(data.text_column\\); its columns are: 'body', 'label'"):
        clean_data.run(make_config({"uri": uri}), str(tmp_path / "out"))
    with pytest.raises(DataError, match="no column 'text' .* or 'category' \\(data.label_column\\)"):
        clean_data.run(make_config({"uri": uri, "label_column": "category"}), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_no_rows_left_after_cleaning(tmp_path, make_config):
    frame = pd.DataFrame({"text": ["<br>", "   ", None, "&nbsp;"], "label": ["a", "b", "a", "b"]})
    uri = write(frame, tmp_path / "d.csv")
    everything = "no rows left after cleaning: all 4 input rows were rejected \\(1 missing_text, 3 empty_text\\)"
    with pytest.raises(DataError, match=everything):
        clean_data.run(make_config({"uri": uri}), str(tmp_path / "out"))
    with pytest.raises(DataError, match="no rows left after cleaning: all 4 input rows were rejected"):
        clean_data.run(make_config({"uri": uri, "labels": ["a", "b"]}), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_split_left_empty_is_a_data_error(tmp_path, make_config):
    train, test = dataset({"a": 5, "b": 5}), dataset({"a": 2}, 100)
    config = make_config(own_splits(tmp_path, train, train.iloc[:3], test))  # validation is all leakage
    with pytest.raises(DataError, match="the validation split is empty after cleaning .*3 leakage"):
        clean_data.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- the real sample ---------------------------------------------------------------------------------


def test_sms_spam_sample(tmp_path, make_config):
    config = make_config(
        {
            "uri": str(ASSETS / "sms-spam-sample.csv"),
            "text_column": "text",
            "label_column": "spam",
            "label_mapping": {"0": "ham", "1": "spam"},
        }
    )
    result = clean_data.run(config, str(tmp_path / "out"))
    report = check_invariants(result, 600)
    assert result.labels == ["ham", "spam"]
    assert result.rejected["too_many_tokens"] == 1  # one 13,848-character row (a broken quote in the source)
    assert result.rejected["duplicate"] > 0
    assert sum(result.rejected.values()) < 20
    kept = sum(result.counts.values())
    assert result.counts["test"] == pytest.approx(kept * 0.1, abs=1)
    for split in ("train", "validation", "test"):
        shares = label_distribution(report)[split]
        assert shares["spam"] / result.counts[split] == pytest.approx(0.25, abs=0.02)
    again = clean_data.run(config, str(tmp_path / "again"))
    assert again.fingerprint == result.fingerprint
