"""evaluate: metrics on models whose predictions we control, the gate, and the production comparison."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.errors import DataError, ModelError, RegistryError
from ftpipe.registry import ModelRegistry
from ftpipe.results import BaselineScore, EvaluateResult, ProductionComparison
from ftpipe.steps import evaluate, register_model
from ftpipe.storage import Storage
from ftpipe.tasks import get_task
from ftpipe.tasks.bootstrap import percentile_interval, resample_chunks
from ftpipe.tasks.text_classification import classification_scores, predict_outputs

LABELS = ["ham", "spam"]
TEXTS = [
    ("see you at lunch", "ham"),
    ("ok", "ham"),
    ("can you pick up some milk on the way home tonight please", "ham"),
    ("running late, start without me", "ham"),
    ("thanks!", "ham"),
    ("the meeting moved to friday afternoon", "ham"),
    ("WIN a FREE prize now, text CLAIM to 80085", "spam"),
    ("urgent: your account is suspended, click the link", "spam"),
    ("free entry", "spam"),
    ("congratulations you have been selected for a cash reward of 1000 pounds call now", "spam"),
]  # 6 ham, 4 spam


def make_test_split(path: Path, rows=TEXTS, labels=LABELS) -> str:
    frame = pd.DataFrame(rows, columns=["text", "label"])
    frame["label_id"] = [labels.index(label) if label in labels else -1 for label in frame["label"]]
    frame.to_parquet(path, index=False)
    return str(path)


def constant_model(tiny_bert_dir: str, directory: Path, labels: list[str], answer: str) -> str:
    """A classifier that always predicts ``answer``: zero head weights, a bias that picks one class."""
    import torch
    from split_files import load_classifier
    from transformers import AutoTokenizer

    model = load_classifier(tiny_bert_dir, id2label=dict(enumerate(labels)))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[labels.index(answer)] = 5.0
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(directory)
    return str(directory)


def make_config(tmp_path: Path, **gate):
    return parse_config(
        {
            "data": {"uri": "data.csv"},
            "candidates": [{"name": "tiny", "source": "tiny"}],
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "spam-filter"},
            "training": {"eval_batch_size": 3, "max_length": 32},
            "gate": gate,
        }
    )


@pytest.fixture
def test_uri(tmp_path) -> str:
    return make_test_split(tmp_path / "test.parquet")


@pytest.fixture
def always_ham(tiny_bert_dir, tmp_path) -> str:
    return constant_model(tiny_bert_dir, tmp_path / "always-ham", LABELS, "ham")


@pytest.fixture
def always_spam(tiny_bert_dir, tmp_path) -> str:
    return constant_model(tiny_bert_dir, tmp_path / "always-spam", LABELS, "spam")


def make_production(config, model_dir: str) -> int:
    registry = ModelRegistry(Storage(), config.registry.uri)
    version = registry.register(config.registry.model_name, model_dir, {}, "card")
    registry.set_alias(config.registry.model_name, "production", version.version)
    return version.version


# Always "ham" on 6 ham / 4 spam: accuracy 0.6; ham P=0.6 R=1 F1=0.75; spam all 0; macro-F1 0.375.
# Always "spam": accuracy 0.4; spam P=0.4 R=1 F1=4/7; macro-F1 2/7.
HAM_F1, SPAM_F1 = 0.375, 2 / 7


def test_compute_metrics_matches_a_hand_computation():
    metrics = classification_scores([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # a: P=1 R=2/3 F1=0.8; b: P=1/2 R=1/2 F1=1/2; c: P=1/2 R=1 F1=2/3
    assert metrics["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": 0.8, "support": 3}
    assert metrics["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert metrics["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert metrics["n_examples"] == 6
    task = get_task(make_config(Path(".")))
    truth = pd.DataFrame({"label_id": [0, 0, 0, 1, 1, 2]})
    predicted = pd.DataFrame({"predicted": ["a", "a", "b", "b", "c", "c"]})
    assert task.confusion(truth, predicted, ["a", "b", "c"]) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # A label the model does not know (-1) is wrong for its row and nobody's false positive.
    assert classification_scores([0, 1], [-1, 1], ["a", "b"])["accuracy"] == 0.5


def test_batched_predictions_match_one_by_one(tiny_bert_dir):
    from split_files import load_classifier
    from transformers import AutoTokenizer

    model = load_classifier(tiny_bert_dir, num_labels=3)  # random head: every text scores differently
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = [text for text, _ in TEXTS]
    options = {"max_length": 32, "activation": "softmax"}
    batched = predict_outputs(model, tokenizer, texts, batch_size=4, **options)
    single = np.vstack([predict_outputs(model, tokenizer, [t], batch_size=1, **options) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (len(texts), 3)


TRAIN = [
    *[
        (f"{text} {i}", "ham")
        for i, text in enumerate(["see you at home", "ok thanks", "lunch later?", "on my way"] * 6)
    ],
    *[
        (f"{text} {i}", "spam")
        for i, text in enumerate(["win a free prize", "claim your cash now", "free entry text"] * 4)
    ],
]  # 24 ham, 12 spam


@pytest.fixture
def train_uri(tmp_path) -> str:
    return make_test_split(tmp_path / "train.parquet", rows=TRAIN)


def test_resampled_metrics_match_the_task_metrics_on_every_resample():
    rng = np.random.default_rng(3)
    n = 1000
    truth = rng.integers(0, 3, n)
    guess = np.where(rng.random(n) < 0.7, truth, rng.integers(-1, 3, n))  # -1: a label outside the label set
    labels = ["a", "b", "c"]
    frame = pd.DataFrame({"label_id": truth})
    predictions = pd.DataFrame({"predicted": [labels[i] if i >= 0 else "other" for i in guess]})
    task = get_task(make_config(Path(".")))
    started = time.perf_counter()
    weights = np.concatenate(list(resample_chunks(n, 1000, seed=0)))
    resampled = task.resampled_metrics(frame, predictions, labels, weights)
    assert time.perf_counter() - started < 2.0  # 1,000 resamples of 1,000 rows: matrix products, not a loop
    assert weights.shape == (1000, n) and (weights.sum(axis=1) == n).all()
    ones = task.resampled_metrics(frame, predictions, labels, np.ones((1, n), dtype=np.int32))
    full = task.test_metrics(frame, predictions, labels)  # scikit-learn
    for resample in (7, 500):
        rows = np.repeat(np.arange(n), weights[resample])
        drawn = task.test_metrics(frame.iloc[rows], predictions.iloc[rows], labels)
        for name in task.settings.metrics:
            assert ones[name][0] == pytest.approx(full[name], abs=1e-12)
            assert resampled[name][resample] == pytest.approx(drawn[name], abs=1e-12)
    # the same seed draws the same resamples, whatever the chunk size
    assert (np.concatenate(list(resample_chunks(n, 1000, seed=0, max_cells=3000))) == weights).all()


def test_regression_resampled_metrics_match_scipy_with_ties():
    config = parse_config({**make_config(Path(".")).model_dump(mode="json"), "task": {"type": "regression"}})
    task = get_task(config)
    rng = np.random.default_rng(4)
    truth = np.round(rng.normal(size=400), 1)  # many ties: the ranks are mid-ranks
    frame = pd.DataFrame({"target_label": truth})
    predictions = pd.DataFrame({"predicted_label": np.round(truth + rng.normal(size=400), 1)})
    weights = np.concatenate(list(resample_chunks(400, 200, seed=1)))
    resampled = task.resampled_metrics(frame, predictions, ["label"], weights)
    for resample in (0, 123):
        rows = np.repeat(np.arange(400), weights[resample])
        drawn = task.test_metrics(frame.iloc[rows], predictions.iloc[rows], ["label"])  # scipy and scikit-learn
        for name in ("rmse", "mae", "pearson", "spearman"):
            assert resampled[name][resample] == pytest.approx(drawn[name], abs=1e-10)


def test_run_scores_the_model_its_intervals_and_the_baselines(tmp_path, test_uri, train_uri, always_ham):
    config = make_config(tmp_path, bootstrap_resamples=500)
    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"), train_uri=train_uri)

    assert result.metrics["accuracy"] == pytest.approx(0.6)
    assert result.metrics["f1_macro"] == pytest.approx(HAM_F1)
    assert result.metrics["per_class"]["spam"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}
    assert result.confusion_matrix == [[6, 0], [4, 0]]
    assert result.labels == LABELS and result.production is None and result.bootstrap_resamples == 500
    for name in ("accuracy", "f1_macro"):
        low, high = result.intervals[name]
        assert low <= result.metrics[name] <= high and low < high
    majority, linear = result.baselines
    assert (majority.name, majority.kind, majority.required) == ("majority", "constant", True)
    assert (linear.name, linear.kind, linear.required) == ("tfidf_logistic", "linear", True)
    assert "always 'ham', the most frequent label of train (24 of 36 rows)" in majority.description
    # Always "ham" is the majority baseline itself: the same scores, a paired difference of exactly 0.
    assert majority.metrics["f1_macro"] == pytest.approx(HAM_F1) and majority.delta_intervals["f1_macro"] == [0, 0]
    assert not result.gate_passed
    assert (
        "failed: f1_macro 0.3750 vs the majority baseline 0.3750 (always 'ham', the most frequent label of train (24 "
        "of 36 rows)): improvement +0.0000, 95% paired interval [+0.0000, +0.0000]; needs the improvement and its "
        "lower bound above 0"
    ) in result.reasons
    assert result.reasons[-1] == "note: no production version of 'spam-filter' (alias 'production' unset)"
    storage = Storage()
    page = storage.read_text(result.report_html_uri)
    assert "<img" in page and "data:image/png;base64," in page and "FAILED" in page and "majority baseline" in page
    markdown = storage.read_text(result.report_markdown_uri)
    assert "| spam | 0.0000 | 0.0000 | 0.0000 | 4 |" in markdown
    assert "| metric | this model | 95% interval | majority baseline | tfidf_logistic baseline |" in markdown
    assert EvaluateResult.from_json(storage.read_text(result.report_json_uri)) == result
    predictions = pd.read_parquet(result.predictions_uri)
    assert predictions["predicted"].tolist() == ["ham"] * 10 == predictions["majority_predicted"].tolist()
    assert predictions["text"].tolist() == [text for text, _ in TEXTS]  # original order kept
    assert (predictions["predicted"] == predictions["label"]).sum() == 6


def test_a_model_that_answers_the_majority_class_is_never_registered(tmp_path, tiny_bert_dir, always_ham):
    """The user's case: 48 rows, 7 of them test; always "ham" scores accuracy 0.71 and macro-F1 0.42 there."""
    rows = [(f"message number {i}", "ham" if i % 7 < 5 else "spam") for i in range(48)]
    train_uri = make_test_split(tmp_path / "train48.parquet", rows=rows[:41])
    test_uri = make_test_split(tmp_path / "test48.parquet", rows=rows[41:])  # 5 ham, 2 spam
    config = make_config(tmp_path)  # no production model: nothing but the baselines to beat
    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"), train_uri=train_uri)
    assert round(result.metrics["accuracy"], 2) == 0.71 and round(result.metrics["f1_macro"], 2) == 0.42
    assert not result.gate_passed
    failed = [reason for reason in result.reasons if reason.startswith("failed")]
    assert failed and failed[0].startswith("failed: f1_macro 0.4167 vs the majority baseline 0.4167 (always 'ham'")

    lineage = {"data_fingerprint": "f", "base_model": "tiny", "base_model_source": tiny_bert_dir}
    with pytest.raises(RegistryError, match="the evaluation gate failed.*majority baseline"):
        register_model.run(config, always_ham, result, lineage, "run-48")
    assert ModelRegistry(Storage(), config.registry.uri).list_models() == []


def test_without_a_train_split_the_required_linear_baseline_fails(tmp_path, test_uri, always_ham):
    result = evaluate.run(make_config(tmp_path), test_uri, LABELS, always_ham, str(tmp_path / "out"))
    assert [baseline.name for baseline in result.baselines] == ["majority"]
    assert "the most frequent label of test (no train split given)" in result.baselines[0].description
    assert result.reasons[-1] == (
        "failed: the tfidf_logistic baseline is required (gate.linear_baseline: require) but evaluate was given no "
        "train split to fit it on"
    )


def test_gate_absolute_thresholds(tmp_path, test_uri, train_uri, always_ham):
    config = make_config(tmp_path, thresholds={"accuracy": 0.7, "f1_macro": 0.375}, bootstrap_resamples=100)
    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"), train_uri=train_uri)
    assert not result.gate_passed
    assert result.reasons[:2] == [
        "failed: accuracy 0.6000 < threshold 0.7000",
        "passed: f1_macro 0.3750 >= threshold 0.3750",  # equal to the floor passes
    ]
    assert "FAILED" in Storage().read_text(result.report_html_uri)


def _baseline(kind: str, f1: float, interval: list[float], required: bool = True) -> BaselineScore:
    return BaselineScore(
        name="majority" if kind == "constant" else "tfidf_logistic", kind=kind, description="d", required=required,
        compared_metric="f1_macro", metrics={"f1_macro": f1}, intervals={"f1_macro": [f1 - 0.1, f1 + 0.1]},
        delta={"f1_macro": 0.70 - f1}, delta_intervals={"f1_macro": interval},
    )  # fmt: skip


def test_gate_decision_on_paired_intervals(tmp_path):
    metrics = {"accuracy": 0.80, "f1_macro": 0.70, "per_class": {"a": {}, "b": {}}}

    def production(f1: float, interval: list[float]) -> ProductionComparison:
        return ProductionComparison(
            version=4, model_uri="x", labels=["a", "b"], same_labels=True, compared_metric="f1_macro",
            metrics={"accuracy": 0.9, "f1_macro": f1}, delta={"accuracy": -0.1, "f1_macro": 0.70 - f1},
            delta_intervals={"f1_macro": interval},
        )  # fmt: skip

    lenient = make_config(tmp_path, tolerance=0.05)
    task = get_task(lenient)
    # worse on the point estimate, but the lower bound of the paired difference is within the tolerance
    passed, reasons = evaluate.gate_decision(lenient, task, metrics, production(0.74, [-0.049, -0.03]))
    assert passed
    assert reasons[-1] == (
        "passed: f1_macro 0.7000 vs production v4 0.7400: improvement -0.0400, 95% paired interval "
        "[-0.0490, -0.0300]; lower bound -0.0490 >= -0.0500 (minus gate.tolerance)"
    )
    # better on the point estimate, but the paired lower bound is below -tolerance: not shown to be no worse
    passed, reasons = evaluate.gate_decision(lenient, task, metrics, production(0.69, [-0.06, 0.08]))
    assert not passed and reasons[-1].endswith("lower bound -0.0600 < -0.0500 (minus gate.tolerance)")
    strict = make_config(tmp_path)
    assert evaluate.gate_decision(strict, task, metrics, production(0.70, [0.0, 0.0]))[0]  # identical predictions
    assert not evaluate.gate_decision(strict, task, metrics, production(0.69, [-0.01, 0.03]))[0]

    # a constant baseline: beaten only when the point estimate and the paired lower bound are both above 0
    assert evaluate.gate_decision(strict, task, metrics, None, baselines=[_baseline("constant", 0.4, [0.2, 0.4])])[0]
    passed, reasons = evaluate.gate_decision(
        strict, task, metrics, None, [], [_baseline("constant", 0.6, [-0.01, 0.2])]
    )
    assert not passed and reasons[0].startswith("failed: f1_macro 0.7000 vs the majority baseline 0.6000 (d)")
    # a linear baseline: the point estimate must be better (required), or it is a note (gate.linear_baseline: report)
    assert evaluate.gate_decision(strict, task, metrics, None, [], [_baseline("linear", 0.69, [-0.05, 0.07])])[0]
    passed, reasons = evaluate.gate_decision(strict, task, metrics, None, [], [_baseline("linear", 0.75, [-0.1, 0])])
    assert not passed
    assert reasons[0] == (
        "failed: f1_macro 0.7000 vs the tfidf_logistic baseline 0.7500 (d): improvement -0.0500, 95% paired interval "
        "[-0.1000, +0.0000] (not significant on these rows); needs an improvement above 0"
    )
    reported = _baseline("linear", 0.75, [-0.1, 0], required=False)
    passed, reasons = evaluate.gate_decision(strict, task, metrics, None, [], [reported])
    assert passed and reasons[0].startswith("note: f1_macro 0.7000 vs the tfidf_logistic baseline 0.7500")
    assert reasons[0].endswith("reported only (gate.linear_baseline: report)")


def test_a_model_that_learned_beats_the_majority_on_paired_resamples(tmp_path):
    task = get_task(make_config(tmp_path))
    truth = np.array([0] * 35 + [1] * 15)
    frame = pd.DataFrame({"label_id": truth})
    learned = pd.DataFrame({"predicted": [LABELS[i] for i in truth[:45]] + ["ham"] * 5})  # wrong on 5 spam rows
    majority = pd.DataFrame({"predicted": ["ham"] * 50})
    sets = {"model": learned, "majority": majority, "again": majority}
    resampled = evaluate.bootstrap(task, frame, sets, LABELS, resamples=1000, seed=0)
    difference = resampled["model"]["f1_macro"] - resampled["majority"]["f1_macro"]
    assert percentile_interval(difference)[0] > 0.3  # far from the noise
    assert (resampled["majority"]["accuracy"] == resampled["again"]["accuracy"]).all()  # the same resamples
    assert (
        evaluate.bootstrap(task, frame, sets, LABELS, 1000, 0)["model"]["f1_macro"] == resampled["model"]["f1_macro"]
    ).all()


def test_production_is_scored_on_the_same_split(tmp_path, test_uri, train_uri, always_ham, always_spam):
    config = make_config(tmp_path, linear_baseline="report")
    assert make_production(config, always_spam) == 1

    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"), train_uri=train_uri)
    production = result.production
    assert production.version == 1 and production.same_labels and production.compared_metric == "f1_macro"
    assert production.metrics["accuracy"] == pytest.approx(0.4)
    assert production.metrics["f1_macro"] == pytest.approx(SPAM_F1)
    assert production.delta["accuracy"] == pytest.approx(0.2)
    low, high = production.delta_intervals["accuracy"]
    assert low <= 0.2 <= high and production.intervals["accuracy"][0] <= 0.4 <= production.intervals["accuracy"][1]
    # better on the point estimate, but 10 rows cannot show that it is no worse: the paired interval is wide
    assert result.reasons[-1].startswith(
        "failed: f1_macro 0.3750 vs production v1 0.2857: improvement +0.0893, 95% paired interval [-0.1810, +0.3828]"
    )
    assert not result.gate_passed  # it is still no better than the majority class
    assert pd.read_parquet(result.predictions_uri)["production_predicted"].tolist() == ["spam"] * 10
    assert "production v1" in Storage().read_text(result.report_html_uri)


def test_worse_than_production_fails_unless_within_tolerance(tmp_path, test_uri, always_ham, always_spam):
    make_production(make_config(tmp_path), always_ham)
    strict = evaluate.run(make_config(tmp_path), test_uri, LABELS, always_spam, str(tmp_path / "a"))
    assert strict.reasons[-2].startswith("failed: f1_macro 0.2857 vs production v1 0.3750: improvement -0.0893")
    lenient = evaluate.run(make_config(tmp_path, tolerance=0.5), test_uri, LABELS, always_spam, str(tmp_path / "b"))
    assert lenient.reasons[-2].startswith("passed: f1_macro 0.2857 vs production v1 0.3750")
    by_accuracy = evaluate.run(make_config(tmp_path, metric="accuracy", tolerance=0.1), test_uri, LABELS,
                               always_spam, str(tmp_path / "c"))  # fmt: skip
    assert by_accuracy.reasons[-2].startswith("failed: accuracy 0.4000 vs production v1 0.6000")
    assert by_accuracy.gate_metric == "accuracy"


def test_a_production_model_with_other_labels_is_compared_on_accuracy(tmp_path, test_uri, tiny_bert_dir, always_spam):
    config = make_config(tmp_path, linear_baseline="report")  # gate metric f1_macro, but the label sets differ
    old = constant_model(tiny_bert_dir, tmp_path / "old", ["ham", "promo", "spam"], "promo")
    make_production(config, old)

    result = evaluate.run(config, test_uri, LABELS, always_spam, str(tmp_path / "out"))
    assert not result.production.same_labels
    assert result.production.compared_metric == result.gate_metric == "accuracy"
    assert result.production.metrics["accuracy"] == 0.0  # "promo" is never right here
    assert any(r.startswith("note: production v1 has outputs ['ham', 'promo', 'spam']") for r in result.reasons)
    assert result.reasons[-1].startswith("passed: accuracy 0.4000 vs production v1 0.0000: improvement +0.4000")


def test_inputs_that_do_not_fit_are_clear_errors(tmp_path, tiny_bert_dir, always_ham):
    config = make_config(tmp_path)
    odd = make_test_split(tmp_path / "odd.parquet", rows=[*TEXTS, ("hello", "promo")])
    with pytest.raises(DataError, match=r"label\(s\) \['promo'\] outside the label set"):
        evaluate.run(config, odd, LABELS, always_ham, str(tmp_path / "out"))
    three = make_test_split(tmp_path / "three.parquet", labels=["ham", "promo", "spam"])
    with pytest.raises(ModelError, match=r"predicts \['ham', 'spam'\], but the test split's outputs are"):
        evaluate.run(config, three, ["ham", "promo", "spam"], always_ham, str(tmp_path / "out"))
    with pytest.raises(DataError, match="cannot read the test split"):
        evaluate.run(config, always_ham + "/config.json", LABELS, always_ham, str(tmp_path / "out"))
    with pytest.raises(ModelError, match="cannot load"):
        evaluate.run(config, make_test_split(tmp_path / "t.parquet"), LABELS, str(tmp_path), str(tmp_path / "o"))


def test_a_metric_a_baseline_cannot_have_survives_the_json_round_trip_between_tasks():
    from ftpipe.results import BaselineScore

    nan = float("nan")
    score = BaselineScore(
        name="most_frequent", kind="constant", description="always the most frequent completion", required=True,
        compared_metric="exact_match", metrics={"exact_match": 0.1, "perplexity": nan},
        intervals={"perplexity": [nan, nan]}, delta={"perplexity": nan}, delta_intervals={"perplexity": [nan, nan]},
    )
    back = BaselineScore.model_validate_json(score.model_dump_json())  # evaluate's result, as register_model reads it
    assert back.metrics["exact_match"] == 0.1 and np.isnan(back.metrics["perplexity"])


def test_run_reports_calibration_and_slices_beside_production(tmp_path, test_uri, train_uri, always_ham, always_spam):
    config = make_config(tmp_path, bootstrap_resamples=50)
    make_production(config, always_spam)
    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"), train_uri=train_uri)

    # Logits [5, 0] on every row: confidence 1 / (1 + e^-5) in one bin, right on the 6 ham rows of 10.
    confidence = 1 / (1 + np.exp(-5.0))
    assert result.metrics["ece"] == pytest.approx(confidence - 0.6, abs=1e-5)
    (only,) = result.metrics["calibration"]["bins"]
    assert only["rows"] == 10 and only["observed"] == pytest.approx(0.6) and only["high"] == pytest.approx(1.0)
    assert result.production.metrics["ece"] == pytest.approx(confidence - 0.4, abs=1e-5)  # always 'spam': 4 right
    assert "ece" not in result.intervals and all("ece" not in reason for reason in result.reasons)  # not gated

    slices = result.metrics["slices"]["text_length"]
    assert sum(row["rows"] for row in slices) == len(TEXTS) and len(slices) == 4
    test = pd.read_parquet(test_uri)
    for row in slices:  # each bucket's macro-F1, recomputed from its own rows
        inside = test[test["text"].str.len().between(row["min_chars"], row["max_chars"])]
        assert len(inside) == row["rows"]
        ham = inside["label"].eq("ham").to_numpy()
        scores = classification_scores(inside["label_id"].to_numpy(), np.zeros(len(inside), dtype=int), LABELS)
        assert row["metric"] == "f1_macro" and row["value"] == pytest.approx(scores["f1_macro"])
        assert ham.any()  # the buckets mix the labels here: a bucket of one label would be a weak check
    production_slices = result.production.metrics["slices"]["text_length"]
    assert [row["slice"] for row in production_slices] == [row["slice"] for row in slices]

    markdown = Storage().read_text(result.report_markdown_uri)
    assert f"Expected calibration error {confidence - 0.6:.4f} over 10 scores in 15 equal-width bins" in markdown
    assert f"; production v1: {confidence - 0.4:.4f}" in markdown
    assert "## Slices: text length" in markdown and "| slice | rows | f1_macro | f1_macro production v1 |" in markdown
    page = Storage().read_text(result.report_html_uri)
    assert 'alt="reliability diagram"' in page
    assert EvaluateResult.from_json(Storage().read_text(result.report_json_uri)) == result
