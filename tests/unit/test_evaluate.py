"""evaluate: metrics on models whose predictions we control, the gate, and the production comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.errors import DataError, ModelError
from ftpipe.registry import ModelRegistry
from ftpipe.results import EvaluateResult, ProductionComparison
from ftpipe.steps import evaluate
from ftpipe.storage import Storage
from ftpipe.tasks import get_task
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


def test_run_scores_the_model_and_writes_reports(tmp_path, test_uri, always_ham):
    config = make_config(tmp_path)
    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"))

    assert result.metrics["accuracy"] == pytest.approx(0.6)
    assert result.metrics["f1_macro"] == pytest.approx(HAM_F1)
    assert result.metrics["per_class"]["spam"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}
    assert result.confusion_matrix == [[6, 0], [4, 0]]
    assert result.labels == LABELS
    assert result.production is None
    assert result.gate_passed
    assert result.reasons == [
        "passed: no production version of 'spam-filter' (alias 'production' unset): nothing to beat",
    ]
    storage = Storage()
    page = storage.read_text(result.report_html_uri)
    assert "<img" in page and "data:image/png;base64," in page and "PASSED" in page
    assert "| spam | 0.0000 | 0.0000 | 0.0000 | 4 |" in storage.read_text(result.report_markdown_uri)
    assert EvaluateResult.from_json(storage.read_text(result.report_json_uri)) == result
    predictions = pd.read_parquet(result.predictions_uri)
    assert predictions["predicted"].tolist() == ["ham"] * 10
    assert predictions["text"].tolist() == [text for text, _ in TEXTS]  # original order kept
    assert (predictions["predicted"] == predictions["label"]).sum() == 6


def test_gate_absolute_thresholds(tmp_path, test_uri, always_ham):
    config = make_config(tmp_path, thresholds={"accuracy": 0.7, "f1_macro": 0.375})
    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"))
    assert not result.gate_passed
    assert "failed: accuracy 0.6000 < threshold 0.7000" in result.reasons
    assert "passed: f1_macro 0.3750 >= threshold 0.3750" in result.reasons  # equal to the floor passes
    assert "FAILED" in Storage().read_text(result.report_html_uri)


def test_gate_decision_with_tolerance(tmp_path):
    metrics = {"accuracy": 0.80, "f1_macro": 0.70, "per_class": {"a": {}, "b": {}}}

    def production(f1: float) -> ProductionComparison:
        return ProductionComparison(
            version=4, model_uri="x", labels=["a", "b"], same_labels=True, compared_metric="f1_macro",
            metrics={"accuracy": 0.9, "f1_macro": f1}, delta={"accuracy": -0.1, "f1_macro": 0.70 - f1},
        )  # fmt: skip

    lenient = make_config(tmp_path, tolerance=0.05)
    task = get_task(lenient)
    passed, reasons = evaluate.gate_decision(lenient, task, metrics, production(0.74))
    assert passed
    assert reasons[-1] == (
        "passed: f1_macro 0.7000 >= production v4 f1_macro 0.7400 - tolerance 0.0500 = 0.6900 (delta -0.0400)"
    )
    passed, reasons = evaluate.gate_decision(lenient, task, metrics, production(0.76))
    assert not passed
    assert reasons[-1].startswith("failed: f1_macro 0.7000 < production v4 f1_macro 0.7600 - tolerance 0.0500")
    assert evaluate.gate_decision(make_config(tmp_path), task, metrics, production(0.70))[0]  # a tie passes


def test_production_is_scored_on_the_same_split(tmp_path, test_uri, always_ham, always_spam):
    config = make_config(tmp_path)
    assert make_production(config, always_spam) == 1

    result = evaluate.run(config, test_uri, LABELS, always_ham, str(tmp_path / "out"))
    production = result.production
    assert production.version == 1 and production.same_labels and production.compared_metric == "f1_macro"
    assert production.metrics["accuracy"] == pytest.approx(0.4)
    assert production.metrics["f1_macro"] == pytest.approx(SPAM_F1)
    assert production.delta["accuracy"] == pytest.approx(0.2)
    assert result.gate_passed
    assert result.reasons[-1].startswith("passed: f1_macro 0.3750 >= production v1 f1_macro 0.2857")
    assert pd.read_parquet(result.predictions_uri)["production_predicted"].tolist() == ["spam"] * 10
    assert "production v1" in Storage().read_text(result.report_html_uri)


def test_worse_than_production_fails_unless_within_tolerance(tmp_path, test_uri, always_ham, always_spam):
    make_production(make_config(tmp_path), always_ham)
    strict = evaluate.run(make_config(tmp_path), test_uri, LABELS, always_spam, str(tmp_path / "a"))
    assert not strict.gate_passed
    assert strict.reasons[-1].startswith("failed: f1_macro 0.2857 < production v1 f1_macro 0.3750")
    lenient = evaluate.run(make_config(tmp_path, tolerance=0.1), test_uri, LABELS, always_spam, str(tmp_path / "b"))
    assert lenient.gate_passed
    by_accuracy = evaluate.run(make_config(tmp_path, metric="accuracy", tolerance=0.1), test_uri, LABELS,
                               always_spam, str(tmp_path / "c"))  # fmt: skip
    assert not by_accuracy.gate_passed  # accuracy 0.4 < 0.6 - 0.1
    assert by_accuracy.gate_metric == "accuracy"


def test_a_production_model_with_other_labels_is_compared_on_accuracy(tmp_path, test_uri, tiny_bert_dir, always_spam):
    config = make_config(tmp_path)  # gate metric f1_macro, but the label sets differ
    old = constant_model(tiny_bert_dir, tmp_path / "old", ["ham", "promo", "spam"], "promo")
    make_production(config, old)

    result = evaluate.run(config, test_uri, LABELS, always_spam, str(tmp_path / "out"))
    assert not result.production.same_labels
    assert result.production.compared_metric == result.gate_metric == "accuracy"
    assert result.production.metrics["accuracy"] == 0.0  # "promo" is never right here
    assert any(r.startswith("note: production v1 has outputs ['ham', 'promo', 'spam']") for r in result.reasons)
    assert result.reasons[-1].startswith("passed: accuracy 0.4000 >= production v1 accuracy 0.0000")
    assert result.gate_passed


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
