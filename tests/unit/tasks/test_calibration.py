"""Temperature scaling and the expected calibration error (ftpipe.tasks.calibration), fitted and applied by the
classification tasks on real tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from split_files import load_classifier

from ftpipe.config import parse_config
from ftpipe.tasks import calibration, get_task
from ftpipe.tasks.base import length_buckets
from ftpipe.tasks.multi_label_classification import MultiLabelClassification

LABELS = ["ham", "spam"]
MULTI = "multi_label_classification"
VALIDATION = [("see you at lunch", "ham"), ("ok", "ham"), ("on my way", "ham"), ("thanks!", "ham"),
              ("call me later", "ham"), ("home soon", "ham"), ("WIN a FREE prize now", "spam"),
              ("free entry", "spam"), ("claim your cash", "spam"), ("urgent: click the link", "spam")]  # fmt: skip


def make_config(task: str = "text_classification", **training):
    return parse_config(
        {
            "task": {"type": task},
            "data": {"uri": "data.csv"},
            "candidates": [{"name": "tiny", "source": "tiny"}],
            "registry": {"model_name": "calibrated"},
            "training": {"eval_batch_size": 4, "max_length": 32, **training},
        }
    )


def overconfident(rows: int, seed: int, factor: float):
    """Logits of 3 classes whose softmax is the true distribution the labels are drawn from, scaled by ``factor``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(rows, 3))
    probabilities = calibration.softmax(logits)
    labels = np.array([rng.choice(3, p=row) for row in probabilities])
    return logits * factor, labels


def test_ece_of_a_small_example_by_hand():
    # bins of width 1/15: 0.95 and 0.95 in (14/15, 1], 0.55 in (8/15, 9/15], 0.25 in (3/15, 4/15]
    found = calibration.reliability([0.95, 0.95, 0.55, 0.25], [1, 0, 1, 0])
    # 2/4 |0.5 - 0.95| + 1/4 |1 - 0.55| + 1/4 |0 - 0.25| = 0.225 + 0.1125 + 0.0625
    assert found["ece"] == pytest.approx(0.4)
    assert found["rows"] == 4
    assert [(b["rows"], b["score"], b["observed"]) for b in found["bins"]] == [
        (1, 0.25, 0.0),
        (1, 0.55, 1.0),
        (2, pytest.approx(0.95), 0.5),
    ]
    assert found["bins"][0]["low"] == pytest.approx(3 / 15) and found["bins"][-1]["high"] == pytest.approx(1.0)
    # 0 and 1 fall in the first and the last bin; a perfectly calibrated set has ECE 0
    assert calibration.reliability([0.0, 1.0], [0, 1])["ece"] == 0.0
    assert [b["rows"] for b in calibration.reliability([0.0, 1.0], [0, 1])["bins"]] == [1, 1]


def test_temperature_undoes_overconfidence_and_leaves_calibrated_logits_alone():
    logits, labels = overconfident(4000, seed=0, factor=3.0)
    temperature = calibration.fit_temperature(logits, labels, "softmax")
    assert temperature == pytest.approx(3.0, rel=0.1)
    before, after = calibration.nll(logits, labels, "softmax"), calibration.nll(logits, labels, "softmax", temperature)
    assert after < before - 0.1
    ece_before, ece_after = (calibration.top_label_ece(logits, labels, t) for t in (1.0, temperature))
    assert ece_before > 0.1 and ece_after < 0.03
    # the minimum: a little either way is worse
    assert after < calibration.nll(logits, labels, "softmax", temperature * 1.05)
    assert after < calibration.nll(logits, labels, "softmax", temperature / 1.05)
    # the argmax never moves
    assert (calibration.softmax(logits, temperature).argmax(1) == logits.argmax(1)).all()

    calibrated, labels = overconfident(4000, seed=1, factor=1.0)
    assert calibration.fit_temperature(calibrated, labels, "softmax") == pytest.approx(1.0, abs=0.1)
    # under-confident scores (label smoothing does this) get T < 1
    assert calibration.fit_temperature(calibrated / 2, labels, "softmax") == pytest.approx(0.5, rel=0.1)


def test_sigmoid_temperature_is_shared_by_the_labels():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=2.0, size=(3000, 4))
    truth = (rng.random(logits.shape) < calibration.sigmoid(logits)).astype(np.int8)
    temperature = calibration.fit_temperature(logits * 2.5, truth, "sigmoid")
    assert temperature == pytest.approx(2.5, rel=0.1)
    assert calibration.pooled_ece(logits * 2.5, truth, temperature) < calibration.pooled_ece(logits * 2.5, truth) / 3
    # every validation row right with margin: the NLL falls all the way to the lower bound; T = 1 is kept
    logits, labels = np.array([[5.0, -5.0], [-5.0, 5.0], [3.0, 0.0]]), np.array([0, 1, 0])
    assert calibration.fit_temperature(logits, labels, "softmax") == pytest.approx(calibration.BOUNDS[0], rel=1e-3)
    model_config = SimpleNamespace()
    note = calibration.calibrate(model_config, logits, labels, "softmax")
    assert model_config.ftpipe_temperature == 1.0 and calibration.temperature_of(model_config) == 1.0
    assert note.startswith("temperature scaling: T = 1 kept") and "on 3 validation rows" in note
    # one confident mistake among them: an interior minimum, and a temperature above 1
    logits, labels = np.vstack([logits, [[4.0, 0.0]]]), np.append(labels, 1)
    note = calibration.calibrate(model_config, logits, labels, "softmax")
    assert model_config.ftpipe_temperature > 1.0 and f"T = {model_config.ftpipe_temperature:.4f}, fitted" in note


def constant_classifier(tiny_bert_dir: str, directory: Path, bias: list[float]) -> str:
    """A classifier whose logits are ``bias`` for every text: zero head weights."""
    import torch
    from transformers import AutoTokenizer

    model = load_classifier(tiny_bert_dir, id2label=dict(enumerate(LABELS)))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(directory)
    return str(directory)


def test_finalize_fits_saves_and_prediction_applies_the_temperature(tiny_bert_dir, tmp_path, one_torch_thread):
    """Logits [1, 0] on every row of 6 ham and 4 spam: softmax gives 'ham' 0.731 where 60% are ham. The NLL is least
    where softmax([1, 0] / T) = [0.6, 0.4], T = 1 / ln 1.5; the calibrated confidence is then exactly 0.6."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from ftpipe.models import load_pretrained

    task = get_task(make_config())
    source = constant_classifier(tiny_bert_dir, tmp_path / "constant", [1.0, 0.0])
    frame = pd.DataFrame(VALIDATION, columns=["text", "label"])
    validation = task.check_split(frame, LABELS, "validation")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = load_pretrained(AutoModelForSequenceClassification, source)
    arguments = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, data_collator=task.collator(tokenizer, None))
    notes = task.finalize(trainer, task.dataset(validation, tokenizer, 32, model.config))

    expected = 1 / math.log(1.5)
    assert model.config.ftpipe_temperature == pytest.approx(expected, rel=1e-4)
    assert len(notes) == 1 and f"T = {expected:.4f}" in notes[0] and "fitted on 10 validation rows" in notes[0]
    raw = 1 / (1 + math.exp(-1))  # 0.7311: ECE |0.6 - 0.7311| before, 0 after
    assert f"ECE (15 bins) {raw - 0.6:.4f} -> 0.0000" in notes[0]

    model_dir = tmp_path / "calibrated"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    assert json.loads((model_dir / "config.json").read_text())["ftpipe_temperature"] == pytest.approx(expected)
    predictions = task.predict(str(model_dir), validation)
    assert predictions["confidence"].to_numpy() == pytest.approx(np.full(10, 0.6), abs=1e-5)
    assert (predictions["predicted"] == "ham").all()
    found = task.reliability(validation, predictions, LABELS)
    assert found["ece"] == pytest.approx(0.0, abs=1e-5)
    # the model as it was (no temperature, as models saved before calibration): T = 1, the raw softmax
    uncalibrated = task.predict(source, validation)
    assert uncalibrated["confidence"].to_numpy() == pytest.approx(np.full(10, raw), abs=1e-5)
    assert task.reliability(validation, uncalibrated, LABELS)["ece"] == pytest.approx(raw - 0.6, abs=1e-5)

    # off: no pass over validation, and a temperature inherited from the base (an earlier ftpipe model) is dropped
    assert get_task(make_config(calibrate=False)).finalize(trainer, None) == []
    assert not hasattr(model.config, "ftpipe_temperature")
    model.save_pretrained(model_dir)
    assert "ftpipe_temperature" not in json.loads((model_dir / "config.json").read_text())


def test_multi_label_thresholds_are_chosen_on_the_calibrated_scores():
    task = MultiLabelClassification(make_config(MULTI))
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=2.0, size=(400, 2))
    truth = (rng.random(logits.shape) < calibration.sigmoid(logits)).astype(np.int8)
    output = SimpleNamespace(predictions=logits * 3.0, label_ids=truth.astype(np.float32))
    model_config = SimpleNamespace(id2label={0: "a", 1: "b"})
    trainer = SimpleNamespace(predict=lambda dataset: output, model=SimpleNamespace(config=model_config))
    notes = task.finalize(trainer, None)
    temperature = model_config.ftpipe_temperature
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert notes[-1].startswith("temperature scaling: T = ") and "decision thresholds" in notes[0]
    # the same decisions as thresholds chosen on the raw scores: F1 per label only depends on the scores' order
    raw = MultiLabelClassification(make_config(MULTI, calibrate=False))
    raw_config = SimpleNamespace(id2label={0: "a", 1: "b"})
    raw.finalize(SimpleNamespace(predict=lambda dataset: output, model=SimpleNamespace(config=raw_config)), None)
    assert not hasattr(raw_config, "ftpipe_temperature")
    calibrated = calibration.sigmoid(logits * 3.0, temperature) >= np.asarray(model_config.ftpipe_thresholds)
    uncalibrated = calibration.sigmoid(logits * 3.0) >= np.asarray(raw_config.ftpipe_thresholds)
    assert (calibrated == uncalibrated).mean() > 0.99  # ties between equally good thresholds may break otherwise
    predictions = pd.DataFrame({"probabilities": list(calibration.sigmoid(logits * 3.0, temperature))})
    frame = pd.DataFrame({"labels": [[name for name, on in zip("ab", row, strict=True) if on] for row in truth]})
    found = task.reliability(frame, predictions, ["a", "b"])
    assert found["rows"] == 800 and found["ece"] < 0.05
    assert task.reliability(frame, predictions, ["a"]) is None  # scores that do not fit the outputs named


def test_length_buckets_split_at_the_quartiles_and_cover_every_row():
    texts = ["x" * n for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    codes, buckets = length_buckets(texts)
    assert [b["slice"] for b in buckets] == ["1-3 chars", "4-6 chars", "7-9 chars", "10-12 chars"]
    assert np.bincount(codes).tolist() == [3, 3, 3, 3]
    # ties: as many buckets as distinct cuts, none empty
    codes, buckets = length_buckets(["a"] * 9 + ["long text"])
    assert [b["slice"] for b in buckets] == ["1-1 chars", "9-9 chars"] and np.bincount(codes).tolist() == [9, 1]
    assert length_buckets([])[1] == []
