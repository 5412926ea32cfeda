"""Each task's bootstrap metrics (equal to its test metrics on every resample) and its baselines for the gate."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.tasks import get_task
from ftpipe.tasks.bootstrap import resample_chunks

ROWS = 600


def task_of(task_type: str, **settings):
    return get_task(
        parse_config(
            {
                "task": {"type": task_type, **settings},
                "data": {"uri": "data.jsonl"},
                "candidates": [{"name": "tiny", "source": "tiny"}],
                "registry": {"uri": "registry", "model_name": "m"},
            }
        )
    )


def assert_resamples_match(task, frame, predictions, labels, resamples=300, drawn=(0, 17, 299)):
    weights = np.concatenate(list(resample_chunks(len(frame), resamples, seed=2)))
    started = time.perf_counter()
    resampled = task.resampled_metrics(frame, predictions, labels, weights)
    seconds = time.perf_counter() - started
    assert set(resampled) == set(task.settings.metrics)
    for resample in drawn:
        rows = np.repeat(np.arange(len(frame)), weights[resample])
        expected = task.test_metrics(frame.iloc[rows].reset_index(drop=True),
                                     predictions.iloc[rows].reset_index(drop=True), labels)  # fmt: skip
        for name in task.settings.metrics:
            assert resampled[name][resample] == pytest.approx(expected[name], abs=1e-10), name
    return seconds


def test_multi_label_resamples_match_scikit_learn():
    rng = np.random.default_rng(5)
    labels = ["billing", "bug", "praise"]
    truth = rng.random((ROWS, 3)) < [0.5, 0.2, 0.05]
    guess = np.where(rng.random((ROWS, 3)) < 0.8, truth, ~truth)
    frame = pd.DataFrame({"labels": [[labels[j] for j in np.flatnonzero(row)] for row in truth]})
    predicted = [[labels[j] for j in np.flatnonzero(row)] for row in guess]
    predicted[3] = [*predicted[3], "spam"]  # outside the label set: a false positive for micro, samples and subset
    predictions = pd.DataFrame({"predicted": pd.Series(predicted, dtype=object)})
    task = task_of("multi_label_classification")
    assert assert_resamples_match(task, frame, predictions, labels, resamples=1000) < 2.0


def test_multi_label_baselines_predict_each_labels_majority_and_a_linear_model():
    task = task_of("multi_label_classification")
    words = {"billing": "invoice refund", "bug": "crash error", "praise": "great love"}
    rows = [["billing"], ["billing", "bug"], ["billing"], ["praise"], ["billing", "praise"]] * 8
    frame = pd.DataFrame({"text": [" ".join(words[name] for name in row) for row in rows], "labels": rows})
    majority, linear = task.baselines(frame, frame, ["billing", "bug", "praise"])
    assert majority.predictions["predicted"].map(list).tolist() == [["billing"]] * 40  # billing on 4 of 5 rows
    assert linear.kind == "linear" and linear.predictions["predicted"].map(list).tolist() == rows  # words say it
    assert task.test_metrics(frame, linear.predictions, ["billing", "bug", "praise"])["f1_micro"] == 1.0


def test_regression_and_classification_baselines():
    texts = [f"{'superb moving' if i % 2 else 'dull awful'} film {i}" for i in range(40)]
    regression = task_of("regression")
    frame = pd.DataFrame({"text": texts, "target_label": [3.0 if i % 2 else -3.0 for i in range(40)]})
    mean, ridge = regression.baselines(frame, frame.iloc[:4], ["label"])
    assert mean.predictions["predicted_label"].tolist() == [0.0] * 4 and "mean of train (label 0)" in mean.description
    assert np.sign(ridge.predictions["predicted_label"]).tolist() == [-1, 1, -1, 1]
    classification = task_of("text_classification")
    frame = pd.DataFrame({"text": texts, "label": ["pos" if i % 2 else "neg" for i in range(40)]})
    frame.loc[0, "label"] = "pos"  # 21 pos, 19 neg
    majority, logistic = classification.baselines(frame, frame.iloc[2:6], ["neg", "pos"])
    assert majority.predictions["predicted"].tolist() == ["pos"] * 4
    assert logistic.predictions["predicted"].tolist() == ["neg", "pos", "neg", "pos"]
    assert classification.baselines(None, frame.iloc[:3], ["neg", "pos"])[0].description.endswith(
        "most frequent label of test (no train split given) (2 of 3 rows)"
    )


def test_token_classification_baseline_tags_every_word_outside():
    task = task_of("token_classification")
    frame = pd.DataFrame({"tokens": [["Ada", "met", "Alan"], ["in", "Paris"]],
                          "tags": [["B-PER", "O", "B-PER"], ["O", "B-LOC"]]})  # fmt: skip
    (outside,) = task.baselines(frame, frame, ["O", "B-LOC", "B-PER"])
    assert outside.kind == "constant" and outside.predictions["predicted"].tolist() == [["O"] * 3, ["O"] * 2]
    metrics = task.test_metrics(frame, outside.predictions, ["O", "B-LOC", "B-PER"])
    assert metrics["f1"] == 0.0 and metrics["token_accuracy"] == pytest.approx(2 / 5)
    assert task.linear_baseline is None


@pytest.mark.parametrize("task_type", ["causal_lm_sft", "seq2seq"])
def test_generative_baseline_answers_the_most_frequent_train_completion(task_type):
    task = task_of(task_type)
    train = pd.DataFrame({"text": ["a", "b", "c", "d"], "completion": ["ham", "spam", "ham", "eggs"]})
    test = pd.DataFrame({"text": ["e", "f"], "completion": ["ham", "spam"]})
    (frequent,) = task.baselines(train, test, ["completion"])
    assert frequent.kind == "constant" and frequent.predictions["predicted"].tolist() == ["ham", "ham"]
    metrics = task.test_metrics(test, frequent.predictions, ["completion"])
    assert metrics["exact_match"] == 0.5 and np.isnan(metrics["perplexity"])  # no likelihoods: not compared
    assert task.linear_baseline is None


@pytest.mark.parametrize("task_type", ["causal_lm_sft", "seq2seq"])
def test_generative_resamples_match_sacrebleu_and_rouge(task_type):
    rng = np.random.default_rng(6)
    words = ["red", "green", "blue", "cat", "dog", "sun"]
    references = [" ".join(rng.choice(words, 3)) for _ in range(150)]
    generated = [text if rng.random() < 0.3 else " ".join(rng.choice(words, rng.integers(1, 5))) for text in references]
    frame = pd.DataFrame({"text": ["prompt"] * 150, "completion": references})
    predictions = pd.DataFrame(
        {"predicted": generated, "nll": rng.random(150) * 5, "completion_tokens": rng.integers(1, 6, 150)}
    )
    seconds = assert_resamples_match(task_of(task_type), frame, predictions, ["completion"], resamples=300)
    assert seconds < 5.0


@pytest.mark.parametrize("scheme", ["IOB2", "plain"])
def test_token_classification_resamples_match_seqeval_and_scikit_learn(scheme):
    rng = np.random.default_rng(7)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"] if scheme == "IOB2" else ["O", "PER", "LOC", "ORG"]
    truth, predicted = [], []
    for _ in range(300):
        length = int(rng.integers(1, 8))
        if scheme == "IOB2":
            row = []
            for _ in range(length):  # valid IOB2: an I- only after its own B- or I-
                kind = rng.choice(["O", "PER", "LOC"])
                inside = row and row[-1] != "O" and row[-1][2:] == kind and rng.random() < 0.5
                row.append("O" if kind == "O" else ("I-" if inside else "B-") + kind)
        else:
            row = list(rng.choice(tags, length, p=[0.6, 0.2, 0.15, 0.05]))
        truth.append(row)
        predicted.append([tag if rng.random() < 0.75 else str(rng.choice(tags)) for tag in row])  # some invalid I-
    frame = pd.DataFrame({"tokens": [[f"w{i}" for i in range(len(row))] for row in truth], "tags": truth})
    predictions = pd.DataFrame({"predicted": predicted, "truncated_words": np.zeros(300, dtype=np.int64)})
    task = task_of("token_classification", scheme=scheme, **({} if scheme == "IOB2" else {"tags": tags}))
    assert assert_resamples_match(task, frame, predictions, tags, resamples=1000) < 3.0
