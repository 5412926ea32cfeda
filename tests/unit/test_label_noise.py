"""Label noise: confident learning on out-of-fold probe probabilities, alone and inside select_model."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from split_files import LABELS, write_split

from ftpipe.config import parse_config
from ftpipe.data import label_noise
from ftpipe.errors import ConfigError
from ftpipe.results import SelectModelResult
from ftpipe.steps import clean_data, select_model
from ftpipe.tasks.base import ProbeFeatures


def _probe_classifier():
    """The text_classification probe's classifier (the module takes any scikit-learn classifier)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))


def _blobs(per_class: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters in 16 dimensions, one per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(classes, 16))
    truth = np.repeat(np.arange(classes), per_class)
    return centres[truth] + rng.normal(0, 1, size=(len(truth), 16)), truth


def _flip(truth: np.ndarray, share: float, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(truth), size=round(share * len(truth)), replace=False))
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, classes, size=len(flipped))) % classes  # always another
    return given, flipped


def test_injected_flips_in_separable_features_are_found_with_their_true_labels():
    features, truth = _blobs(100, 3, seed=0)
    given, flipped = _flip(truth, 0.05, 3, seed=1)
    issues = label_noise.find_label_issues(ProbeFeatures(features, given, _probe_classifier()), folds=5, seed=0)

    assert issues.checked_rows == 300 and issues.folds == 5 and issues.note is None
    assert sorted(issues.positions.tolist()) == flipped.tolist()  # 15 flips: all found, nothing else flagged
    assert (issues.given == given[issues.positions]).all()
    assert (issues.suggested == truth[issues.positions]).all()  # the suggestion is the label before the flip
    assert (np.diff(issues.given_probability) >= 0).all()  # ranked by self-confidence, the most doubtful first
    assert (issues.confidence > issues.given_probability).all()


def test_clean_labels_flag_nothing_and_the_result_is_seeded():
    features, truth = _blobs(60, 2, seed=2)
    probe = ProbeFeatures(features, truth, _probe_classifier())
    assert label_noise.find_label_issues(probe, folds=5, seed=0).positions.tolist() == []

    given, _ = _flip(truth, 0.1, 2, seed=3)
    noisy = ProbeFeatures(features + np.random.default_rng(4).normal(0, 4, features.shape), given, _probe_classifier())
    first = label_noise.find_label_issues(noisy, folds=5, seed=7)
    again = label_noise.find_label_issues(noisy, folds=5, seed=7)
    assert first.positions.tolist() == again.positions.tolist() and len(first.positions) > 0
    np.testing.assert_array_equal(
        label_noise.out_of_fold_probabilities(noisy, 5, 7), label_noise.out_of_fold_probabilities(noisy, 5, 7)
    )


def test_a_class_absent_from_the_probed_rows_keeps_the_label_names():
    features, truth = _blobs(40, 2, seed=5)
    truth = np.where(truth == 1, 2, 0)  # classes 0 and 2 of ["ham", "unused", "spam"]: 1 is never probed
    given = truth.copy()
    given[[3, 50]] = [2, 0]
    issues = label_noise.find_label_issues(ProbeFeatures(features, given, _probe_classifier()), folds=5, seed=0)
    rows = np.arange(1000, 1080)  # where each probed row sits in the train split
    texts = [f"text {i}" for i in range(80)]
    listed = label_noise.suspects(issues, rows, texts, ["ham", "unused", "spam"])

    assert {(item.row, item.given, item.suggested, item.text) for item in listed} == {
        (1003, "spam", "ham", "text 3"),
        (1050, "ham", "spam", "text 50"),
    }
    assert len(label_noise.suspects(issues, rows, texts, ["ham", "unused", "spam"], limit=1)) == 1


def test_too_few_rows_of_a_class_is_a_note_and_folds_shrink_to_the_smallest_class():
    features, truth = _blobs(30, 2, seed=6)
    single = truth.copy()
    single[single == 1] = 0
    single[0] = 1  # one row of class 1: nothing to cross-validate it against
    issues = label_noise.find_label_issues(ProbeFeatures(features, single, _probe_classifier()), folds=5, seed=0)
    assert issues.note is not None and "smallest with 1 row" in issues.note and len(issues.positions) == 0

    few = np.zeros(len(truth), dtype=np.int64)
    few[np.flatnonzero(truth == 1)[:3]] = 1  # three rows of class 1
    issues = label_noise.find_label_issues(ProbeFeatures(features, few, _probe_classifier()), folds=5, seed=0)
    assert issues.note is None and issues.folds == 3


def test_excerpt_and_without_rows():
    assert label_noise.excerpt("a\n  b\tc") == "a b c"
    long = label_noise.excerpt("x" * 500)
    assert len(long) == label_noise.EXCERPT_CHARACTERS and long.endswith("…")
    frame = pd.DataFrame({"text": list("abcde")})
    assert label_noise.without_rows(frame, [1, 3])["text"].tolist() == ["a", "c", "e"]


def test_the_setting_is_checked():
    base = {"data": {"uri": "x.csv"}, "registry": {"model_name": "t"}, "candidates": [{"name": "m", "source": "m"}]}
    assert parse_config(base).selection.label_noise == "report"
    with pytest.raises(ConfigError, match="selection.label_noise"):
        parse_config({**base, "selection": {"label_noise": "drop"}})
    with pytest.raises(ConfigError, match="selection.label_noise_folds"):
        parse_config({**base, "selection": {"label_noise_folds": 1}})


# -- inside select_model (the tiny random BERT) ------------------------------------------------------------


def _noisy_split(path: Path, rows: int, flips: list[int]) -> str:
    """Texts whose words give the label away (plain enough for a random tiny BERT), ``flips`` labelled wrong."""
    rng = random.Random(11)
    words = (["lunch", "mum", "later", "ok"], ["free", "prize", "win", "cash"])
    label_ids = np.arange(rows) % 2
    texts = [" ".join(rng.choices(words[label], k=4)) + f" {rng.choice(['see', 'you', 'now'])}" for label in label_ids]
    label_ids[flips] = 1 - label_ids[flips]
    pd.DataFrame({"text": texts, "label": [LABELS[i] for i in label_ids], "label_id": label_ids}).to_parquet(path)
    return str(path)


FLIPS = [5, 30, 61, 90]


@pytest.fixture
def noisy(tmp_path):
    return {
        "train": _noisy_split(tmp_path / "train.parquet", 120, FLIPS),
        "validation": write_split(tmp_path / "validation.parquet", 24, seed=2),
        "out": str(tmp_path / "out"),
    }


def _config(source: str, **selection):
    return parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "test"},
            "candidates": [{"name": "small", "source": source}],
            "selection": selection,
        }
    )


def test_select_model_reports_suspected_mislabels(tiny_bert_dir, noisy, one_torch_thread):
    result = select_model.run(_config(tiny_bert_dir), noisy["train"], noisy["validation"], LABELS, noisy["out"])

    assert result.label_noise == "report" and result.label_noise_checked_rows == 120
    assert result.label_issue_count == len(result.label_issues) > 0
    cleaned = pd.read_parquet(noisy["train"])
    flagged = {item.row for item in result.label_issues}
    assert set(FLIPS) <= flagged and len(flagged) <= 2 * len(FLIPS)  # every injected flip, few others
    for item in result.label_issues:
        assert item.given == cleaned["label"][item.row] != item.suggested
        assert cleaned["text"][item.row].startswith(item.text.rstrip("…"))
    assert result.train_uri is None and result.label_issues_uri is None  # reported only: training uses every row
    assert not Path(noisy["out"], "train.parquet").exists()
    html = Path(result.report_html_uri).read_text()
    assert "<h2>Label noise</h2>" in html and f"<td>{FLIPS[0]}</td>" in html
    assert "## Label noise" in Path(result.report_markdown_uri).read_text()
    stored = json.loads(Path(result.report_json_uri).read_text())["label_noise"]
    assert stored["count"] == result.label_issue_count and stored["folds"] == 5
    assert SelectModelResult.from_json(result.to_json()) == result


def test_row_ids_point_into_the_cleaned_split_when_the_probe_samples_it(tiny_bert_dir, noisy, one_torch_thread):
    config = _config(tiny_bert_dir, probe_train_rows=60)
    result = select_model.run(config, noisy["train"], noisy["validation"], LABELS, noisy["out"])

    assert result.label_noise_checked_rows == 60 and result.label_issues
    cleaned = pd.read_parquet(noisy["train"])
    for item in result.label_issues:
        assert cleaned["label"][item.row] == item.given and cleaned["text"][item.row].startswith(item.text)
    assert max(item.row for item in result.label_issues) < 120


def test_quarantine_trains_on_a_new_split_and_leaves_the_cleaned_one(tiny_bert_dir, noisy, one_torch_thread):
    before = hashlib.sha256(Path(noisy["train"]).read_bytes()).hexdigest()
    config = _config(tiny_bert_dir, label_noise="quarantine")
    result = select_model.run(config, noisy["train"], noisy["validation"], LABELS, noisy["out"])

    assert hashlib.sha256(Path(noisy["train"]).read_bytes()).hexdigest() == before
    assert result.label_noise == "quarantine" and result.train_uri == str(Path(noisy["out"], "train.parquet"))
    cleaned, kept = pd.read_parquet(noisy["train"]), pd.read_parquet(result.train_uri)
    taken = pd.read_parquet(result.label_issues_uri)
    assert len(kept) == result.train_rows == 120 - result.label_issue_count
    assert len(kept) + len(taken) == len(cleaned)  # every row kept or quarantined exactly once
    assert list(kept.columns) == list(cleaned.columns)
    assert set(taken["row"]) == {item.row for item in result.label_issues} and set(taken["reason"]) == {"label_issue"}
    assert set(kept["text"]) | set(taken["text"]) == set(cleaned["text"])
    assert "Quarantined: finetune trains on" in Path(result.report_markdown_uri).read_text()


def test_off_skips_the_check(tiny_bert_dir, noisy, one_torch_thread):
    result = select_model.run(
        _config(tiny_bert_dir, label_noise="off"), noisy["train"], noisy["validation"], LABELS, noisy["out"]
    )
    assert (result.label_noise, result.label_issue_count, result.label_issues) == ("off", 0, [])
    assert "Not checked (selection.label_noise: off)" in Path(result.report_markdown_uri).read_text()


def test_a_task_without_one_class_per_row_is_not_applicable(tiny_bert_dir, tmp_path, one_torch_thread):
    rng = random.Random(0)
    words = {True: ["superb", "moving", "funny"], False: ["dull", "awful", "boring"]}
    rows = []
    for i in range(60):
        score = rng.uniform(-4, 4)
        rows.append({"text": " ".join(rng.choices(words[score > 0], k=5)) + f" {i}", "label": round(score, 3)})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = parse_config(
        {
            "task": {"type": "regression"},
            "data": {"uri": str(data)},
            "registry": {"model_name": "test"},
            "candidates": [{"name": "small", "source": tiny_bert_dir}],
            "selection": {"label_noise": "quarantine"},
        }
    )
    cleaned = clean_data.run(config, str(tmp_path / "clean"))
    result = select_model.run(config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, str(tmp_path / "sel"))
    assert result.label_noise == "not_applicable" and result.train_uri is None and result.label_issues == []
    assert "does not apply to regression" in Path(result.report_markdown_uri).read_text()
