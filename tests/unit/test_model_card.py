"""Model cards: Hugging Face front matter and the full lineage in the body."""

from __future__ import annotations

from datetime import UTC, datetime

import yaml

from ftpipe import __version__, models
from ftpipe.model_card import is_hub_id, render_model_card

METRICS = {
    "accuracy": 0.9512,
    "f1_macro": 0.9034,
    "precision_macro": 0.91,
    "recall_macro": 0.9,
    "n_examples": 123,
    "per_class": {
        "ham": {"precision": 0.97, "recall": 0.98, "f1": 0.975, "support": 100},
        "spam": {"precision": 0.85, "recall": 0.82, "f1": 0.8347, "support": 23},
    },
}
GATE = {
    "passed": True,
    "metric": "f1_macro",
    "tolerance": 0.01,
    "reasons": ["passed: accuracy 0.9512 >= min_accuracy 0.9000", "passed: f1_macro 0.9034 >= production v3 ..."],
    "production": {
        "version": 3,
        "metrics": {"accuracy": 0.94, "f1_macro": 0.89},
        "delta": {"accuracy": 0.0112, "f1_macro": 0.0134},
        "same_labels": True,
    },
}


def card(**overrides) -> str:
    inputs = dict(
        model_name="spam-filter",
        base_model="minilm",
        base_model_source="/models/all-MiniLM-L6-v2",
        license="Apache-2.0",
        labels=["ham", "spam"],
        metrics=METRICS,
        data_fingerprint="sha256:0123456789abcdef0123",
        data_uris={"source": "s3://data/sms.csv", "test": "s3://ftpipe/runs/r1/clean_data/test.parquet"},
        cleaning={"rows_read": 600, "rows_train": 480, "rejected_duplicate": 7},
        hyperparameters={"learning_rate": 5e-5, "epochs": 3.0, "batch_size": 16},
        gate=GATE,
        run_id="run-42",
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    inputs.update(overrides)
    return render_model_card(**inputs)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_front_matter_is_hugging_face_metadata(tmp_path):
    text = card()
    front = front_matter(text)
    assert front["license"] == "apache-2.0"
    assert front["base_model"] == "minilm"  # a local source is no hub id: the candidate name stands in
    assert front["pipeline_tag"] == "text-classification"
    assert {"ftpipe", "text-classification"} <= set(front["tags"])
    [entry] = front["model-index"]
    assert entry["name"] == "spam-filter"
    [result] = entry["results"]
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"]["split"] == "test"
    values = {metric["name"]: metric["value"] for metric in result["metrics"]}
    assert values["accuracy"] == 0.9512 and values["f1_macro"] == 0.9034
    # the licence of a registered model is readable where select_model looks for it
    (tmp_path / "README.md").write_text(text)
    assert models.read_license(str(tmp_path)) == "apache-2.0"


def test_body_carries_the_lineage():
    text = card()
    for expected in (
        "# spam-filter",
        "/models/all-MiniLM-L6-v2",
        "sha256:0123456789abcdef0123",
        "s3://data/sms.csv",
        "s3://ftpipe/runs/r1/clean_data/test.parquet",
        "| `rejected_duplicate` | 7 |",
        "| `learning_rate` | 5e-05 |",
        "| spam | 0.8500 | 0.8200 | 0.8347 | 23 |",
        "| 1 | spam |",
        "The registration gate **passed**",
        "production version 3",
        "| f1_macro | 0.9034 | 0.8900 | +0.0134 |",
        "- passed: accuracy 0.9512 >= min_accuracy 0.9000",
        "`run-42`",
        f"| ftpipe version | {__version__} |",
        "2025-01-02T03:04:05+00:00",
    ):
        assert expected in text, expected


def test_hub_ids_unknown_licence_and_no_production():
    text = card(base_model_source="sentence-transformers/all-MiniLM-L6-v2", license=None,
                gate={**GATE, "production": None}, data_uris=["s3://data/a.csv"])  # fmt: skip
    front = front_matter(text)
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "license" not in front
    assert "unknown: the base model names none" in text
    assert "There was no production model to compare with." in text
    assert "s3://data/a.csv" in text


def test_is_hub_id():
    assert is_hub_id("bert-base-uncased") and is_hub_id("org/model.v2")
    assert not any(map(is_hub_id, ["/abs/path", "./rel", "s3://b/k", "file:///x", "a/b/c"]))


def test_calibration_and_slices_from_evaluate_are_in_the_test_metrics():
    slices = [
        {"slice": "2-20 chars", "min_chars": 2, "max_chars": 20, "rows": 62, "metric": "f1_macro", "value": 0.88},
        {"slice": "21-160 chars", "min_chars": 21, "max_chars": 160, "rows": 61, "metric": "f1_macro", "value": 0.93},
    ]
    text = card(metrics={**METRICS, "ece": 0.0312, "calibration": {"bins": []}, "slices": {"text_length": slices}})
    assert "Expected calibration error of the predicted probabilities on the test split: **0.0312**" in text
    assert "By text length:\n\n| slice | rows | f1_macro |" in text
    assert "| 21-160 chars | 61 | 0.9300 |" in text
    assert "calibration error" not in card()  # a card from metrics without them (older evaluations) has neither
    assert "By text length" not in card()
