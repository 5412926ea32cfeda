"""The real all-MiniLM-L6-v2 on the SMS spam sample, every artifact on a real S3 server: probe, then one epoch."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from ftpipe.config import parse_config
from ftpipe.steps import finetune, select_model
from ftpipe.storage import join

LABELS = ["ham", "spam"]  # as the sms_splits fixture names them


def test_probe_selects_minilm_from_s3_over_a_random_tiny_bert(minilm_path, tiny_bert_dir, s3_storage, sms_splits):
    minilm_uri = join(sms_splits.root, "models", "minilm")
    s3_storage.upload_dir(minilm_path, minilm_uri)
    config = parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "sms-spam"},
            "candidates": [
                {"name": "tiny", "source": tiny_bert_dir},
                {"name": "minilm", "source": minilm_uri},  # downloaded by resolve_source; licence from its card
            ],
            "selection": {"probe_train_rows": 256, "probe_validation_rows": 150, "allowed_licenses": ["apache-2.0"]},
        }
    )
    result = select_model.run(
        config, sms_splits.train, sms_splits.validation, LABELS, join(sms_splits.root, "select"), storage=s3_storage
    )

    assert result.selected.name == "minilm" and result.selected.source == minilm_uri
    assert result.selected.license == "apache-2.0" and result.selected.num_parameters > 20_000_000
    assert result.selected.probe_value >= 0.85 and [item.name for item in result.ranking] == ["minilm", "tiny"]
    assert s3_storage.exists(result.report_html_uri)


def test_one_epoch_of_minilm_clearly_beats_the_majority_baseline(minilm_path, s3_storage, sms_splits):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, validation = sms_splits.root, sms_splits.validation_frame
    uris = {"train": sms_splits.train, "validation": sms_splits.validation}
    config = parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "sms-spam"},
            "candidates": [{"name": "minilm", "source": minilm_path, "license": "apache-2.0"}],
            "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-4, "max_length": 64},
        }
    )

    output_uri = join(root, "finetune")
    result = finetune.run(config, uris["train"], uris["validation"], LABELS, "minilm", output_uri, storage=s3_storage)

    assert result.model_uri == join(output_uri, "model") and result.epochs_trained == 1.0
    assert s3_storage.list(join(output_uri, "checkpoints")) == []  # the preemption mirror is cleaned up
    assert s3_storage.exists(result.log_uri) and s3_storage.exists(result.report_html_uri)
    with s3_storage.local_copy(result.model_uri, directory=True) as model_dir:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    model.eval()
    texts = validation["text"].tolist()
    with torch.inference_mode():
        predicted = np.concatenate(
            [
                model(**tokenizer(texts[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt"))
                .logits.argmax(-1)
                .numpy()
                for i in range(0, len(texts), 64)
            ]
        )
    truth = validation["label_id"].to_numpy()
    baseline = max(np.mean(truth == 0), np.mean(truth == 1))  # 0.75
    accuracy = accuracy_score(truth, predicted)
    assert accuracy >= baseline + 0.15, f"accuracy {accuracy:.3f} vs majority baseline {baseline:.3f}"
    assert f1_score(truth, predicted, average="macro") >= 0.85
    assert result.best_metric_name == "f1_macro" and result.best_metric_value >= 0.85
