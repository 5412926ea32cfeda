"""multi_label_classification: label cells, quarantine reasons, splits, thresholds, metrics, a real Trainer run."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import MultiLabelClassificationTask, parse_config
from ftpipe.errors import ConfigError, DataError, ModelError
from ftpipe.tasks import TASKS
from ftpipe.tasks.multi_label_classification import (
    THRESHOLDS,
    MultiLabelClassification,
    best_threshold,
    choose_thresholds,
    parse_labels,
)

REGISTERED = "multi_label_classification" in TASKS
LABELS = ["billing", "bug", "praise"]
WORDS = {"billing": ["invoice", "refund", "charge"], "bug": ["crash", "error", "broken"], "praise": ["great", "love"]}


def make_config(task: dict | None = None, data: dict | None = None, **sections):
    document = {
        "data": {"uri": "unused.csv", "label_column": "labels", **(data or {})},
        "candidates": [{"name": "tiny", "source": "unused"}],
        "registry": {"model_name": "test"},
        **sections,
    }
    if REGISTERED:
        return parse_config({**document, "task": {"type": "multi_label_classification", **(task or {})}})
    # Until ftpipe.config's task union and ftpipe.tasks.TASKS list this task, its settings are put in directly.
    return parse_config(document).model_copy(update={"task": MultiLabelClassificationTask(**(task or {}))})


def reasons_of(task, targets) -> list[str | None]:
    return [task.target_reasons[code - 1] if code else None for code in targets.reason]


def encode(cells, train=None, task=None, data=None):
    task_object = MultiLabelClassification(make_config(task, data))
    raw = np.empty(len(cells), dtype=object)
    raw[:] = cells
    train = np.ones(len(cells), dtype=bool) if train is None else np.asarray(train)
    return task_object, task_object.encode_targets(raw, train)


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    """Through parquet and back, as the steps read a split (list cells come back as numpy arrays)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return pd.read_parquet(io.BytesIO(buffer.getvalue()))


def synthetic_split(rows: int, seed: int) -> pd.DataFrame:
    """Texts made of each label's words; one or two labels per row."""
    rng = random.Random(seed)
    texts, label_lists = [], []
    for i in range(rows):
        labels = sorted(rng.sample(LABELS, rng.choice([1, 1, 2])), key=LABELS.index)
        texts.append(" ".join(word for label in labels for word in rng.choices(WORDS[label], k=3)) + f" {seed}-{i}")
        label_lists.append(labels)
    ids = [[LABELS.index(label) for label in labels] for labels in label_lists]
    return pd.DataFrame({"text": texts, "labels": label_lists, "label_ids": ids})


# -- label cells ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("bug|billing", ("bug", "billing")),
        ("  bug |  billing ", ("bug", "billing")),
        ("bug||billing|", ("bug", "billing")),
        ('["bug", "billing"]', ("bug", "billing")),
        (["bug", "billing"], ("bug", "billing")),
        (np.array(["bug"], dtype=object), ("bug",)),
        ([1, 3.0, None, " "], ("1", "3")),
        (np.array([2, 5]), ("2", "5")),
        (7, ("7",)),
        ("|", ()),
        ("[]", ()),
        ([], ()),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
        ("   ", None),
        ('["bug", "billing"', "malformed"),
        ('{"bug": 1}', "malformed"),
        ({"bug": 1}, "malformed"),
        ([["bug"]], "malformed"),
        ([True], "malformed"),
    ],
)
def test_parse_labels_reads_delimited_strings_json_lists_and_list_cells(cell, expected):
    assert parse_labels(cell, "|") == expected


def test_another_delimiter():
    assert parse_labels("bug; billing;", ";") == ("bug", "billing")
    assert parse_labels("bug|billing", ";") == ("bug|billing",)


# -- encode_targets --------------------------------------------------------------------------------------


def test_every_quarantine_reason_and_keys_that_ignore_label_order():
    cells = [
        "bug|billing",
        ["billing", "bug"],  # the same set as the row above: the same key
        '["praise"]',
        None,
        "",
        "[]",
        '["bug"',
        {"bug": 1},
        "bug|spam",  # spam is not in data.labels
        "praise|refund",  # refund: a label of data.labels that no training row has (see train below)
        "billing",
    ]
    train = [True] * 9 + [False, True]  # row 9 is not a training row: refund has none
    task, targets = encode(cells, train=train, data={"labels": ["billing", "bug", "praise", "refund"]})
    assert reasons_of(task, targets) == [
        None,
        None,
        None,
        "missing_label",
        "missing_label",
        "missing_label",
        "malformed_label",
        "malformed_label",
        "unknown_label",
        "unseen_label",
        None,
    ]
    assert targets.labels == ["billing", "bug", "praise"]  # refund is not an output
    assert targets.vocabulary == ['["billing", "bug"]', '["billing"]', '["praise"]']
    assert targets.key.tolist() == [0, 0, 2, -1, -1, -1, -1, -1, -1, -1, 1]
    assert len(targets.notes) == 1
    assert "'refund'" in targets.notes[0] and "quarantined as unseen_label" in targets.notes[0]
    # strata: the rarest label of each row by training rows (billing 3, bug 2, praise 1)
    assert targets.strata.tolist() == [1, 1, 2, -1, -1, -1, -1, -1, -1, -1, 0]
    assert targets.strata_names == targets.labels


def test_unseen_labels_drop_keeps_the_rest_of_the_set_and_quarantines_rows_left_empty():
    cells = ["bug|refund", "refund", "billing", "bug"]
    train = [False, False, True, True]  # no training row has refund
    task, targets = encode(cells, train, task={"unseen_labels": "drop"}, data={"labels": ["billing", "bug", "refund"]})
    assert reasons_of(task, targets) == [None, "unseen_label", None, None]
    assert targets.labels == ["billing", "bug"]
    # "bug|refund" became {bug}: a duplicate of the last row's target
    assert targets.key[0] == targets.key[3]
    assert "dropped" in targets.notes[0] and "(2 rows;" in targets.notes[0]


def test_without_data_labels_the_label_set_is_the_sorted_labels_of_train():
    cells = ["praise|bug", "billing", "bug", "spam"]  # the last row is a test row with a label train lacks
    task, targets = encode(cells, train=[True, True, True, False])
    assert targets.labels == ["billing", "bug", "praise"]
    assert reasons_of(task, targets) == [None, None, None, "unknown_label"]


def test_label_mapping_renames_merges_and_removes_labels():
    cells = ["0|1", "1|2", "2|x", "x"]
    task, targets = encode(cells, data={"label_mapping": {"0": "billing", "1": "bug", "2": "bug", "x": ""}})
    assert targets.labels == ["billing", "bug"]
    assert reasons_of(task, targets) == [None, None, None, "missing_label"]
    assert targets.vocabulary == ['["billing", "bug"]', '["bug"]']
    assert targets.key.tolist() == [0, 1, 1, -1]


def test_a_note_names_labels_the_mapping_does_not_produce():
    _, targets = encode(["0|1", "1|other"], data={"label_mapping": {"0": "billing", "1": "bug"}})
    assert targets.labels == ["billing", "bug", "other"]
    assert "'other'" in targets.notes[0] and "data.labels" in targets.notes[0]


def test_data_errors_for_one_label_or_no_labels():
    with pytest.raises(DataError, match="needs at least two"):
        encode(["bug", "bug|bug", " bug "])
    with pytest.raises(DataError, match=r"no training row has a usable label set \(3 missing_label, 1 malformed"):
        encode(["", None, "|", "[oops"])
    with pytest.raises(DataError, match=r"no training row has a usable label set \(2 unknown_label\)"):
        encode(["spam", "ham|bug"], data={"labels": ["billing", "bug"]})
    with pytest.raises(DataError, match="needs at least two"):
        encode(["bug|billing", "billing"], data={"labels": ["billing", "bug", "praise"]}, train=[False, True])


# -- split columns, check_split, the report ---------------------------------------------------------------


def test_split_columns_round_trip_through_parquet_and_check_split():
    task, targets = encode(["bug|billing", "praise", "praise|bug", "billing"])
    rows = np.array([0, 2, 3])
    frame = roundtrip(pd.DataFrame({"text": ["a", "b", "c"], **task.split_columns(targets, rows)}))
    checked = task.check_split(frame, targets.labels, "train")
    assert checked["labels"].tolist() == [["billing", "bug"], ["bug", "praise"], ["billing"]]
    assert checked["label_ids"].tolist() == [[0, 1], [1, 2], [0]]
    # the rarest label of each row in this split: billing 2, bug 2, praise 1 rows (a tie goes to the lower index)
    assert task.strata(checked).tolist() == [0, 2, 0]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"text": ["a"]}), "lacks column"),
        (pd.DataFrame({"text": ["a"], "labels": [["spam"]]}), "outside the label set"),
        (pd.DataFrame({"text": ["a"], "labels": [[]]}), "without labels"),
        (pd.DataFrame({"text": ["a"], "labels": ["bug"]}), "not lists of labels"),
        (pd.DataFrame({"text": ["a"], "labels": [["bug"]], "label_ids": [[0]]}), "label mismatch"),
        (pd.DataFrame({"text": ["a"], "labels": [["bug"]], "label_ids": [["x"]]}), "not lists of integers"),
        (pd.DataFrame({"text": [], "labels": []}), "no rows"),
    ],
)
def test_check_split_rejects_bad_splits(frame, message):
    task = MultiLabelClassification(make_config())
    with pytest.raises(DataError, match=message):
        task.check_split(frame, LABELS, "test")


def test_describe_targets_and_data_warnings():
    task, targets = encode(["bug|billing", "bug", "bug|praise", "bug"])
    frames = {
        "train": pd.DataFrame({"text": ["a", "b"], **task.split_columns(targets, np.array([0, 1]))}),
        "test": pd.DataFrame({"text": ["c"], **task.split_columns(targets, np.array([2]))}),
    }
    table = task.describe_targets(frames)
    assert table.columns == ["label", "train", "test"]
    assert table.rows == [["billing", 1, 0], ["bug", 2, 1], ["praise", 0, 1], ["(mean labels per row)", 1.5, 2.0]]
    warnings = task.data_warnings(frames, targets)
    assert any("no training rows after the split: 'praise'" in line for line in warnings)
    assert any("on every training row: 'bug'" in line for line in warnings)


# -- thresholds and metrics ---------------------------------------------------------------------------------


def test_best_threshold_by_hand():
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    truth = np.array([1, 0, 1, 0, 0])
    # at 0.25 (between 0.2 and 0.3): 3 predicted, 2 right: F1 = 4/5; at 0.5 only 0.5
    assert best_threshold(scores, truth) == pytest.approx((0.25, 0.8))
    # every threshold between 0.2 and 0.7 is perfect: the nearest to 0.5 is 0.5 itself
    assert best_threshold(np.array([0.9, 0.7, 0.2]), np.array([1, 1, 0])) == pytest.approx((0.5, 1.0))
    assert best_threshold(np.array([0.9, 0.1]), np.array([0, 0])) == (0.5, 0.0)  # no positives: keep 0.5


def test_choose_thresholds_per_label_or_shared():
    scores = np.array([[0.9, 0.40], [0.8, 0.30], [0.3, 0.35], [0.2, 0.05]])
    truth = np.array([[1, 1], [1, 1], [0, 1], [0, 0]])
    # label 0 is separable around 0.5; label 1 needs 0.30 in and 0.05 out: their midpoint 0.175
    assert choose_thresholds(scores, truth, "per_label") == pytest.approx([0.5, 0.175])
    # shared, over all cells: 0.25 takes the 5 positives and one negative (0.3): micro-F1 10/11
    assert choose_thresholds(scores, truth, "shared") == pytest.approx([0.25, 0.25])


def test_test_metrics_by_hand_with_a_prediction_outside_the_label_set():
    task = MultiLabelClassification(make_config())
    frame = pd.DataFrame({"labels": [["billing", "bug"], ["bug"], ["praise"], ["billing", "praise"], ["bug"]]})
    predictions = pd.DataFrame(
        {"predicted": [["billing"], ["bug", "praise"], [], ["billing", "praise", "spam"], ["bug"]]}
    )
    metrics = task.test_metrics(frame, predictions, LABELS)
    # TP 5 (billing 2, bug 2, praise 1), FP 2 (praise on row 1, spam on row 3), FN 2 (bug row 0, praise row 2)
    assert metrics["f1_micro"] == pytest.approx(5 / 7)
    assert metrics["precision_micro"] == pytest.approx(5 / 7)
    assert metrics["recall_micro"] == pytest.approx(5 / 7)
    assert metrics["f1_macro"] == pytest.approx((1.0 + 0.8 + 0.5) / 3)
    assert metrics["subset_accuracy"] == pytest.approx(1 / 5)  # row 3 is not exact: spam
    assert metrics["f1_samples"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 0.8 + 1) / 5)
    assert metrics["n_examples"] == 5
    assert metrics["per_class"]["bug"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert metrics["per_class"]["praise"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert metrics["per_label_counts"]["bug"] == {"tp": 2, "fp": 0, "fn": 1, "tn": 2}
    assert set(metrics["per_class"]) == set(LABELS)
    assert task.confusion(frame, predictions, LABELS) == []
    titles = [title for title, _ in task.metric_tables(metrics, metrics)]
    assert titles == ["Per label", "Per label counts (test split)"]
    assert task.comparison_metric("f1_macro", same_labels=False) == "f1_micro"
    assert task.comparison_metric("f1_macro", same_labels=True) == "f1_macro"
    assert task.comparison_metric("subset_accuracy", same_labels=False) == "subset_accuracy"


def test_a_production_model_without_a_label_misses_it():
    task = MultiLabelClassification(make_config())
    frame = pd.DataFrame({"labels": [["billing", "praise"], ["praise"]]})
    metrics = task.test_metrics(frame, pd.DataFrame({"predicted": [["billing"], []]}), LABELS)
    assert metrics["recall_micro"] == pytest.approx(1 / 3)
    assert metrics["per_class"]["praise"]["recall"] == 0.0


# -- the model: a real Trainer run wired as finetune does it, then predict and the card's snippet -----------------


def test_train_thresholds_save_predict_and_the_snippet(tiny_bert_dir, tmp_path, one_torch_thread, capsys):
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    config = make_config(training={"max_length": 32, "eval_batch_size": 16})
    task = MultiLabelClassification(config)
    train = task.check_split(roundtrip(synthetic_split(48, seed=1)), LABELS, "train")
    validation = task.check_split(roundtrip(synthetic_split(16, seed=2)), LABELS, "validation")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = task.load_model(tiny_bert_dir, **task.head_settings(LABELS, train))
    assert model.config.problem_type == "multi_label_classification"
    train_dataset = task.dataset(train, tokenizer, 32, model.config)
    validation_dataset = task.dataset(validation, tokenizer, 32, model.config)
    assert train_dataset[0]["labels"] == [float(label in train["labels"][0]) for label in LABELS]
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "checkpoints"),
        learning_rate=1e-3,
        num_train_epochs=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=task.primary_metric,
        greater_is_better=task.higher_is_better(task.primary_metric),
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        data_collator=task.collator(tokenizer, None),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(model.config),
    )
    trainer.train()
    evaluation = trainer.evaluate()
    assert {f"eval_{name}" for name in task.settings.metrics} <= set(evaluation)
    notes = task.finalize(trainer, validation_dataset)
    thresholds = trainer.model.config.ftpipe_thresholds
    assert len(thresholds) == 3 and all(0 < value < 1 for value in thresholds)
    assert notes[0].startswith("decision thresholds (per_label, chosen on 16 validation rows")
    assert "validation micro-F1" in notes[1]
    temperature = trainer.model.config.ftpipe_temperature  # training.calibrate is on by default
    assert notes[2].startswith(f"temperature scaling: T = {temperature:.4f}")

    model_dir = tmp_path / "model"
    trainer.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved[THRESHOLDS] == pytest.approx(thresholds)

    predictions = task.predict(str(model_dir), validation)
    assert len(predictions) == len(validation)
    probabilities = np.array(predictions["probabilities"].tolist())
    expected = [[LABELS[j] for j in range(3) if row[j] >= thresholds[j]] for row in probabilities]
    assert predictions["predicted"].tolist() == expected
    metrics = task.test_metrics(validation, predictions, LABELS)
    assert all(isinstance(metrics[name], float) for name in task.settings.metrics)
    columns = task.prediction_columns(predictions)
    roundtrip(validation.assign(**columns))  # parquet-friendly
    summary = task.card_summary(LABELS, metrics)
    assert f"micro-F1 **{metrics['f1_micro']:.4f}**" in summary

    # The saved thresholds decide: all-zero thresholds predict every label, and without any 0.5 applies.
    for value, predicted in ((0.0, [LABELS] * len(validation)), (None, None)):
        config_json = dict(saved)
        if value is None:
            config_json.pop(THRESHOLDS)
        else:
            config_json[THRESHOLDS] = [value] * 3
        (model_dir / "config.json").write_text(json.dumps(config_json))
        again = task.predict(str(model_dir), validation)
        expected = predicted or [[LABELS[j] for j in range(3) if row[j] >= 0.5] for row in probabilities]
        assert again["predicted"].tolist() == expected

    capsys.readouterr()
    exec(compile(task.usage_snippet(), "usage-snippet", "exec"), {"DIRECTORY": str(model_dir)})  # noqa: S102
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and all(" -> [" in line for line in printed)

    config_json = dict(saved, **{THRESHOLDS: [0.5, 0.5]})
    (model_dir / "config.json").write_text(json.dumps(config_json))
    with pytest.raises(ModelError, match="2 ftpipe_thresholds for 3 labels"):
        task.predict(str(model_dir), validation)
    (model_dir / "config.json").write_text(json.dumps(dict(saved, problem_type="single_label_classification")))
    with pytest.raises(ModelError, match="not a multi-label classifier"):
        task.predict(str(model_dir), validation)


def test_finalize_with_a_shared_threshold():
    from types import SimpleNamespace

    # thresholds on the raw scores (calibration off: test_calibration checks them on calibrated ones)
    task = MultiLabelClassification(make_config(task={"thresholds": "shared"}, training={"calibrate": False}))
    probabilities = np.array([[0.9, 0.4], [0.8, 0.3], [0.3, 0.35], [0.2, 0.05]])
    output = SimpleNamespace(
        predictions=np.log(probabilities / (1 - probabilities)), label_ids=np.array([[1, 1], [1, 1], [0, 1], [0, 0]])
    )
    model_config = SimpleNamespace(id2label={0: "a", 1: "b"})
    trainer = SimpleNamespace(predict=lambda dataset: output, model=SimpleNamespace(config=model_config))
    notes = task.finalize(trainer, None)
    assert model_config.ftpipe_thresholds == pytest.approx([0.25, 0.25])
    assert model_config.ftpipe_thresholds_mode == "shared"
    assert "a=0.250, b=0.250" in notes[0]
    # at 0.5: TP 2, FP 0, FN 3 -> 4/7; at 0.25: TP 5, FP 1, FN 0 -> 10/11
    assert "micro-F1 0.5714 at 0.5 -> 0.9091" in notes[1]
    assert "chosen on 4 validation rows" in notes[0]


def test_probe_scores_micro_f1_on_frozen_embeddings(tiny_bert_dir, one_torch_thread):
    from transformers import AutoModel, AutoTokenizer

    task = MultiLabelClassification(make_config(selection={"probe_max_length": 32}))
    encoder = AutoModel.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    train = synthetic_split(40, seed=3)
    # no praise in train: its one-vs-rest model is a constant (sklearn warns; the probe goes on)
    train["labels"] = [[label for label in labels if label != "praise"] or ["bug"] for labels in train["labels"]]
    train["label_ids"] = [[LABELS.index(label) for label in labels] for labels in train["labels"]]
    score = task.probe(encoder, tokenizer, train, synthetic_split(16, seed=4))
    assert score.metric == "f1_micro"
    assert 0.0 <= score.value <= 1.0 and score.value == score.details["f1_micro"]
    assert set(score.details) == {"f1_micro", "f1_macro", "subset_accuracy"}


# -- config -------------------------------------------------------------------------------------------


def test_settings_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        MultiLabelClassificationTask(thresholds="mean")
    with pytest.raises(ValidationError):
        MultiLabelClassificationTask(label_delimiter="")
    with pytest.raises(ValidationError):
        MultiLabelClassificationTask(threshold="shared")  # a typo is an error, not ignored


@pytest.mark.skipif(not REGISTERED, reason="needs multi_label_classification in ftpipe.config and ftpipe.tasks")
def test_a_metric_the_task_lacks_is_a_config_error_naming_the_path():
    with pytest.raises(ConfigError, match=r"gate\.metric: 'accuracy' is not a metric of task multi_label"):
        make_config(gate={"metric": "accuracy"})
    with pytest.raises(ConfigError, match=r"gate\.thresholds\.f1_weighted"):
        make_config(gate={"thresholds": {"f1_weighted": 0.5}})
    assert make_config(gate={"metric": "subset_accuracy"}).gate_metric == "subset_accuracy"


def test_example_config_is_valid():
    import yaml

    path = Path(__file__).parents[3] / "pipelines" / "examples" / "multi-label.yaml"
    document = yaml.safe_load(path.read_text())
    assert document["task"]["type"] == "multi_label_classification"
    if REGISTERED:
        assert parse_config(document, str(path)).task.type == "multi_label_classification"
    else:  # the task section on its own, the rest without the task's metric names
        settings = {key: value for key, value in document.pop("task").items() if key != "type"}
        MultiLabelClassificationTask(**settings)
        document.pop("gate")
        parse_config(document, str(path))
