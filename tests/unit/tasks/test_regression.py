"""The regression task: numeric target cells, standardised MSE training, metrics in the original units."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.errors import ConfigError, DataError, ModelError
from ftpipe.tasks import get_task
from ftpipe.tasks.regression import MEAN, SCALE, Regression, parse_column, parse_number


def _config(task: dict | None = None, **sections):
    return parse_config(
        {
            "task": {"type": "regression", **(task or {})},
            "data": {"uri": "reviews.csv", "label_column": "score"},
            "candidates": [{"name": "tiny", "source": "unused"}],
            "registry": {"model_name": "scores"},
            **sections,
        }
    )


def _task(**task) -> Regression:
    found = get_task(_config(task))
    assert isinstance(found, Regression)
    return found


def _split(texts, **targets) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, **{f"target_{name}": values for name, values in targets.items()}})


# -- config ---------------------------------------------------------------------------------------


def test_a_metric_the_task_lacks_is_a_config_error_naming_the_path():
    with pytest.raises(ConfigError, match=r"gate\.metric: 'accuracy' is not a metric of task regression"):
        _config(gate={"metric": "accuracy"})
    with pytest.raises(ConfigError, match=r"gate\.thresholds\.f1_macro"):
        _config(gate={"thresholds": {"f1_macro": 0.5}})
    config = _config(gate={"thresholds": {"rmse": 1.5, "spearman": 0.5}}, training={"metric_for_best_model": "mae"})
    assert config.gate_metric == "rmse" and config.best_model_metric == "mae"
    task = get_task(config)
    assert not task.higher_is_better("rmse") and not task.higher_is_better("mae")
    assert task.higher_is_better("pearson") and task.higher_is_better("spearman")


def test_target_columns_named_twice_are_a_config_error():
    with pytest.raises(ConfigError, match=r"task\.(regression\.)?target_columns: .*more than once"):
        _config({"target_columns": ["a", "a"]})


def test_input_columns_are_the_text_and_every_target():
    assert _task().input_columns() == {"text": "data.text_column", "score": "data.label_column"}
    several = _task(target_columns=["valence", "arousal"])
    assert several.input_columns() == {
        "text": "data.text_column",
        "valence": "task.target_columns",
        "arousal": "task.target_columns",
    }
    with pytest.raises(DataError, match="data.text_column 'text' is also a target column"):
        _task(target_columns=["valence", "text"]).input_columns()


# -- target cells ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("2.5", 2.5),
        (" 2.5 ", 2.5),
        ("1e-3", 0.001),
        ("-4", -4.0),
        ("+.5", 0.5),
        ("3.", 3.0),
        ("-0", 0.0),
        (3, 3.0),
        (-1.25, -1.25),
        (np.float32(0.5), 0.5),
        (np.int64(7), 7.0),
        (Decimal("1.5"), 1.5),
        ("", "missing_target"),
        ("   ", "missing_target"),
        (None, "missing_target"),
        (float("nan"), "missing_target"),
        (pd.NA, "missing_target"),
        ("1,5", "not_a_number"),
        ("abc", "not_a_number"),
        ("NA", "not_a_number"),
        ("nan", "not_a_number"),
        ("inf", "not_a_number"),
        ("1e999", "not_a_number"),
        (float("inf"), "not_a_number"),
        ("1_000", "not_a_number"),
        ("0x10", "not_a_number"),
        (True, "not_a_number"),
        ([1.0], "not_a_number"),
        ({"a": 1}, "not_a_number"),
    ],
)
def test_a_cell_is_a_finite_number_or_a_reason(cell, expected):
    assert parse_number(cell) == expected


def test_booleans_are_not_numbers_even_beside_ones():
    for cells in ([1, True, 0, False], [True, 1, False, 0]):
        values, reasons = parse_column(np.array(cells, dtype=object))
        by_cell = {repr(cell): reason for cell, reason in zip(cells, reasons.tolist(), strict=True)}
        assert by_cell == {"1": None, "True": "not_a_number", "0": None, "False": "not_a_number"}
        assert sorted(values[~np.isnan(values)].tolist()) == [0.0, 1.0]


def test_negative_zero_is_zero():
    assert math.copysign(1.0, parse_number("-0.0")) == 1.0


def test_a_column_of_lists_is_parsed_cell_by_cell():
    values, reasons = parse_column(np.array([[1], "2", None], dtype=object))
    assert np.isnan(values[0]) and values[1] == 2.0 and np.isnan(values[2])
    assert reasons.tolist() == ["not_a_number", None, "missing_target"]


def test_encode_targets_quarantines_bad_cells_and_keys_rows_by_their_values():
    task = _task(strata=2)
    raw = np.array(["1.5", " 2.5 ", "abc", None, "1,5", 1.5, "-0", "3", "0"], dtype=object)
    train = np.array([True, True, True, True, True, True, True, True, False])
    targets = task.encode_targets(raw, train)
    assert targets.reason.tolist() == [0, 0, 2, 1, 2, 0, 0, 0, 0]
    assert targets.vocabulary == ["0.0", "1.5", "2.5", "3.0"]  # sorted canonical text; "-0" is 0.0
    assert targets.key.tolist() == [1, 2, -1, -1, -1, 1, 0, 3, 0]
    assert targets.labels == ["score"]
    # two quantile bins of the usable train values (1.5, 2.5, 1.5, 0, 3): the median 1.5 splits them
    assert targets.strata[targets.reason == 0].tolist() == [1, 1, 1, 0, 1, 0]
    assert targets.strata_names == ["score < 1.5", "score >= 1.5"]
    columns = task.split_columns(targets, np.array([0, 1, 6, 7]))
    assert list(columns) == ["target_score"]
    assert columns["target_score"].tolist() == [1.5, 2.5, 0.0, 3.0]
    assert columns["target_score"].dtype == np.float64


def test_values_outside_the_training_range_are_noted():
    targets = _task().encode_targets(np.array(["1", "2", "9"], dtype=object), np.array([True, True, False]))
    assert targets.notes == ["target 'score': 1 validation/test row(s) lie outside the training range 1..2"]


def test_several_targets_come_as_one_dict_per_row_and_the_first_bad_one_names_the_reason():
    task = _task(target_columns=["valence", "arousal"])
    frame = pd.DataFrame(
        {
            "text": ["a", "b", "c", "d"],
            "valence": ["1", "oops", None, "2"],
            "arousal": [0.5, None, "x", 1e-3],
            "unused": [0, 0, 0, 0],
        }
    )
    text, raw = task.read_rows(frame)
    assert text.tolist() == ["a", "b", "c", "d"]
    assert raw.shape == (4,) and raw[0] == {"valence": "1", "arousal": 0.5}
    targets = task.encode_targets(raw, np.ones(4, dtype=bool))
    assert targets.reason.tolist() == [0, 2, 1, 0]
    assert targets.vocabulary == ["1.0, 0.5", "2.0, 0.001"]
    assert targets.labels == ["valence", "arousal"]
    columns = task.split_columns(targets, np.array([3, 0]))
    assert columns["target_valence"].tolist() == [2.0, 1.0]
    assert columns["target_arousal"].tolist() == [0.001, 0.5]


def test_targets_without_a_usable_training_value_are_one_data_error():
    task = _task()
    with pytest.raises(DataError, match=r"no training row has a numeric target in 'score' .*'1,5', 'high'"):
        task.encode_targets(np.array(["1,5", "high", "2"], dtype=object), np.array([True, True, False]))
    with pytest.raises(DataError, match=r"target 'score' has the same value \(4\) in every usable training row"):
        task.encode_targets(np.array(["4", "4.0", "x"], dtype=object), np.ones(3, dtype=bool))


def test_one_stratum_splits_at_random():
    task = _task(strata=1)
    targets = task.encode_targets(np.array(["1", "2", "3"], dtype=object), np.ones(3, dtype=bool))
    assert targets.strata is None
    assert task.strata(_split(["a", "b", "c"], score=[1.0, 2.0, 3.0])) is None


def test_strata_of_a_split_frame_are_its_own_quantile_bins():
    frame = _split([str(i) for i in range(8)], score=[0.0, 1, 2, 3, 4, 5, 6, 7])
    assert _task(strata=4).strata(frame).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


# -- splits and the report ------------------------------------------------------------------------


def test_check_split_normalises_the_columns_and_rejects_what_does_not_fit():
    task = _task()
    frame = pd.DataFrame({"text": ["a", "b"], "target_score": ["1.5", 2], "extra": [0, 0]})
    checked = task.check_split(frame, ["score"], "test")
    assert list(checked.columns) == ["text", "target_score"]
    assert checked["target_score"].dtype == np.float64 and checked["target_score"].tolist() == [1.5, 2.0]
    with pytest.raises(DataError, match="the train split lacks column"):
        task.check_split(frame, ["valence"], "train")
    with pytest.raises(DataError, match=r"column target_score has 1 value\(s\) that are not finite.*row 1: 'n/a'"):
        task.check_split(_split(["a", "b"], score=["1", "n/a"]), ["score"], "validation")
    with pytest.raises(DataError, match="has no rows"):
        task.check_split(_split([], score=[]), ["score"], "test")


def test_describe_targets_gives_count_mean_std_min_median_max_per_split_and_target():
    frames = {
        "train": _split(["a", "b", "c", "d"], score=[1.0, 2.0, 3.0, 6.0]),
        "validation": _split(["e"], score=[-1.0]),
    }
    table = _task().describe_targets(frames)
    assert table.columns == ["split", "target", "count", "mean", "std", "min", "median", "max"]
    assert table.rows[0] == ["train", "score", 4, 3.0, pytest.approx(math.sqrt(3.5)), 1.0, 2.5, 6.0]
    assert table.rows[1] == ["validation", "score", 1, -1.0, 0.0, -1.0, -1.0, -1.0]


def test_data_warnings_name_class_like_targets_and_outliers():
    task = _task()
    class_like = {"train": _split(list("abcdef"), score=[0.0, 1, 0, 1, 0, 1])}
    targets = task.encode_targets(np.array(["0", "1"], dtype=object), np.ones(2, dtype=bool))
    warnings = task.data_warnings(class_like, targets)
    assert warnings == [
        "target 'score' takes only 2 distinct values in train (0, 1): if they are classes, task.type "
        "text_classification fits better"
    ]
    values = [float(i % 7) for i in range(60)] + [1000.0]
    outlier = {"train": _split([str(i) for i in range(61)], score=values)}
    assert any(
        "1 training value(s) lie more than 6 standard deviations" in w for w in task.data_warnings(outlier, targets)
    )


# -- metrics --------------------------------------------------------------------------------------


def test_test_metrics_in_hand_checked_numbers():
    task = _task(target_columns=["a", "b"])
    frame = _split(list("wxyz"), a=[1.0, 2.0, 3.0, 4.0], b=[0.0, 0.0, 1.0, 1.0])
    predictions = pd.DataFrame({"predicted_a": [1.0, 2.0, 3.0, 5.0], "predicted_b": [0.0, 0.0, 1.0, 1.0]})
    metrics = task.test_metrics(frame, predictions, ["a", "b"])
    # a: errors 0, 0, 0, 1 -> RMSE 0.5, MAE 0.25; Pearson 6.5 / sqrt(5 * 8.75); ranks identical -> Spearman 1
    pearson_a = 6.5 / math.sqrt(5 * 8.75)
    assert metrics["per_target"]["a"] == pytest.approx(
        {"rmse": 0.5, "mae": 0.25, "pearson": pearson_a, "spearman": 1.0, "r2": 1 - 1 / 5}
    )
    assert metrics["per_target"]["b"] == pytest.approx(
        {"rmse": 0.0, "mae": 0.0, "pearson": 1.0, "spearman": 1.0, "r2": 1.0}
    )
    assert metrics["rmse"] == pytest.approx(0.25) and metrics["mae"] == pytest.approx(0.125)
    assert metrics["pearson"] == pytest.approx((pearson_a + 1) / 2) and metrics["spearman"] == pytest.approx(1.0)
    assert metrics["n_examples"] == 4
    assert all(isinstance(metrics[name], float) for name in task.settings.metrics)

    # A model that lacks target b (production, trained before it was added) is infinitely wrong on it.
    production = task.test_metrics(frame, predictions[["predicted_a"]], ["a", "b"])
    assert production["per_target"]["b"]["rmse"] == math.inf and math.isnan(production["per_target"]["b"]["pearson"])
    assert production["rmse"] == math.inf
    diverged = task.test_metrics(frame, predictions.assign(predicted_a=[1.0, np.nan, 2.0, 3.0]), ["a", "b"])
    assert diverged["per_target"]["a"]["rmse"] == math.inf and diverged["per_target"]["b"]["rmse"] == 0.0
    assert task.comparison_metric("spearman", same_labels=False) == "rmse"
    assert task.comparison_metric("mae", same_labels=False) == "mae"
    assert task.comparison_metric("spearman", same_labels=True) == "spearman"

    [(title, table)] = task.metric_tables(metrics, production)
    assert title == "Per target"
    assert table.columns == [
        "target",
        "RMSE",
        "MAE",
        "Pearson",
        "Spearman",
        "R2",
        "RMSE production",
        "Spearman production",
    ]
    assert table.rows[0][:2] == ["a", 0.5] and table.rows[1][6] == math.inf
    assert task.confusion(frame, predictions, ["a", "b"]) == []
    summary = task.card_summary(["a", "b"], metrics)
    assert "RMSE **0.2500**" in summary and "Spearman correlation **1.0000**" in summary and "`a`, `b`" in summary


def test_constant_predictions_have_zero_correlation():
    task = _task()
    metrics = task.test_metrics(
        _split(list("abc"), score=[1.0, 2.0, 4.0]), pd.DataFrame({"predicted_score": [2.0] * 3}), ["score"]
    )
    assert metrics["pearson"] == 0.0 and metrics["spearman"] == 0.0
    assert metrics["rmse"] == pytest.approx(math.sqrt(5 / 3)) and metrics["mae"] == pytest.approx(1.0)


def test_compute_metrics_maps_standardised_outputs_back_to_the_original_units():
    from transformers import BertConfig
    from transformers.trainer_utils import EvalPrediction

    task = _task()
    model_config = BertConfig(num_labels=1, id2label={0: "score"}, label2id={"score": 0})
    setattr(model_config, MEAN, [10.0])
    setattr(model_config, SCALE, [2.0])
    compute = task.compute_metrics(model_config)
    # truth 8, 10, 12, 14; predictions 8, 10, 12, 16 in original units
    result = compute(EvalPrediction(np.array([[-1.0], [0.0], [1.0], [3.0]]), np.array([-1.0, 0.0, 1.0, 2.0])))
    assert set(result) == set(task.settings.metrics)
    assert result["rmse"] == pytest.approx(1.0) and result["mae"] == pytest.approx(0.5)
    assert result["spearman"] == pytest.approx(1.0)


# -- the model, end to end ------------------------------------------------------------------------


def _movie_like(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good, bad = ["great", "moving", "superb", "fun"], ["dull", "awful", "boring", "flat"]
    texts, scores = [], []
    for i in range(n):
        score = float(rng.integers(-4, 5))
        words = rng.choice(good if score > 0 else bad, size=3)
        texts.append(f"film {i} " + " ".join(words))
        scores.append(score)
    return _split(texts, score=scores)


def test_finetune_flow_saves_a_model_that_predicts_in_the_original_units(tiny_bert_dir, tmp_path, one_torch_thread):
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    task = _task()
    labels = ["score"]
    train = task.check_split(_movie_like(48, 0), labels, "train")
    validation = task.check_split(_movie_like(16, 1), labels, "validation")
    settings = task.head_settings(labels, train)
    values = train["target_score"].to_numpy()
    assert settings["num_labels"] == 1 and settings["problem_type"] == "regression"
    assert settings["id2label"] == {0: "score"}
    assert settings[MEAN] == pytest.approx([values.mean()]) and settings[SCALE] == pytest.approx([values.std()])

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = task.load_model(tiny_bert_dir, ignore_mismatched_sizes=True, **settings)
    assert getattr(model.config, MEAN) == settings[MEAN]
    train_dataset = task.dataset(train, tokenizer, 32, model.config)
    validation_dataset = task.dataset(validation, tokenizer, 32, model.config)
    expected = (values[0] - values.mean()) / values.std()
    assert train_dataset[0]["labels"] == pytest.approx([expected], rel=1e-6)

    args = TrainingArguments(
        output_dir=str(tmp_path / "checkpoints"),
        num_train_epochs=1,
        max_steps=4,
        per_device_train_batch_size=16,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=4,
        load_best_model_at_end=True,
        metric_for_best_model=task.primary_metric,
        greater_is_better=task.higher_is_better(task.primary_metric),
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        data_collator=task.collator(tokenizer, None),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(model.config),
    )
    trainer.train()
    evaluated = trainer.evaluate()
    assert {f"eval_{name}" for name in task.settings.metrics} <= set(evaluated)
    notes = task.finalize(trainer, validation_dataset)
    assert len(notes) == 1 and notes[0].startswith("target 'score': trained on (y - ")
    saved = tmp_path / "model"
    trainer.model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)

    assert task.model_labels(str(saved)) == labels
    predictions = task.predict(str(saved), validation)
    assert list(predictions.columns) == ["predicted_score"] and len(predictions) == len(validation)
    # an untrained-ish head predicts near the training mean, in the original units (not near 0)
    assert abs(predictions["predicted_score"].mean() - values.mean()) < 3 * values.std()
    metrics = task.test_metrics(validation, predictions, labels)
    assert metrics["rmse"] == pytest.approx(evaluated["eval_rmse"], rel=1e-4)
    columns = task.prediction_columns(predictions)
    assert list(columns) == ["predicted_score"] and columns["predicted_score"].dtype == np.float64

    exec(task.usage_snippet(), {"DIRECTORY": str(saved)})  # noqa: S102 - the card's snippet runs as printed


def test_predict_rejects_a_model_without_the_standardisation(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(directory)
    with pytest.raises(ModelError, match="not an ftpipe regression model"):
        _task().predict(str(directory), _split(["a"], score=[1.0]))


def test_probe_scores_ridge_on_frozen_features_by_spearman(tiny_bert_dir, one_torch_thread):
    from transformers import AutoModel, AutoTokenizer

    task = _task()
    encoder = AutoModel.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    train = task.check_split(_movie_like(64, 2), ["score"], "train")
    validation = task.check_split(_movie_like(32, 3), ["score"], "validation")
    score = task.probe(encoder, tokenizer, train, validation)
    assert score.metric == "spearman" and score.value == score.details["spearman"]
    assert set(score.details) == {"rmse", "mae", "pearson", "spearman", "r2"}
    assert -1.0 <= score.value <= 1.0 and score.details["rmse"] > 0
