"""token_classification: reading token/tag rows, quarantine reasons, splits, sub-word alignment, seqeval metrics,
the probe, and a real Trainer run wired as finetune does it, then predict and the card's snippet."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import TokenClassificationTask, parse_config
from ftpipe.data.conll import read_conll
from ftpipe.errors import ConfigError, DataError
from ftpipe.tasks import TASKS
from ftpipe.tasks.token_classification import (
    TaggedRow,
    TokenClassification,
    iob2_problem,
    repair_iob2,
    sequence_scores,
)
from ftpipe.text import STR, clean_texts

REGISTERED = "token_classification" in TASKS
ASSETS = Path(__file__).parents[2] / "assets"
LABELS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def make_config(task: dict | None = None, data: dict | None = None, **sections):
    document = {
        "data": {"uri": "unused.jsonl", "text_column": "tokens", "label_column": "tags", **(data or {})},
        "candidates": [{"name": "tiny", "source": "unused"}],
        "registry": {"model_name": "test"},
        **sections,
    }
    if REGISTERED:
        return parse_config({**document, "task": {"type": "token_classification", **(task or {})}})
    # Until ftpipe.config's task union and ftpipe.tasks.TASKS list this task, its settings are put in directly.
    return parse_config(document).model_copy(update={"task": TokenClassificationTask(**(task or {}))})


def reasons_of(task, targets) -> list[str | None]:
    return [task.target_reasons[code - 1] if code else None for code in targets.reason]


def read_and_encode(tokens: list, tags: list, train=None, task=None, data=None, cleaning=None):
    """read_rows then encode_targets, as clean_data calls them (train: every row unless given)."""
    sections = {"cleaning": cleaning} if cleaning else {}
    task_object = TokenClassification(make_config(task, data, **sections))
    text, raw = task_object.read_rows(pd.DataFrame({"tokens": tokens, "tags": tags}))
    train = np.ones(len(tokens), dtype=bool) if train is None else np.asarray(train)
    return task_object, text, raw, task_object.encode_targets(raw, train)


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    """Through parquet and back, as the steps read a split (list cells come back as numpy arrays)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return pd.read_parquet(io.BytesIO(buffer.getvalue()))


FIRST = ["anna", "tom", "lena", "omar", "ines"]
LAST = ["berg", "reed", "zyxtrom", "okafor", "lund"]
CITIES = ["paris", "oslo", "lima", "quixville", "turku"]
ORGS = [("acme", "corp"), ("blue", "bank"), ("vortexa", "labs")]
FILLER = ["the", "met", "today", "said", "near", "with", "and", "then", "visited", "from"]


def synthetic_split(rows: int, seed: int, long_every: int = 0) -> pd.DataFrame:
    """Sentences of people (B-PER I-PER), organisations (B-ORG I-ORG) and cities (B-LOC) among filler words."""
    rng = random.Random(seed)
    texts, tag_lists = [], []
    for i in range(rows):
        parts = [
            ([rng.choice(FIRST), rng.choice(LAST)], ["B-PER", "I-PER"]),
            (list(rng.choice(ORGS)), ["B-ORG", "I-ORG"]),
            ([rng.choice(CITIES)], ["B-LOC"]),
        ]
        rng.shuffle(parts)
        tokens, tags = [f"s{seed}n{i}"], ["O"]
        for words, labels in parts[: rng.choice([1, 2, 3])]:
            filler = rng.choices(FILLER, k=rng.choice([1, 2]))
            tokens += [*filler, *words]
            tags += ["O"] * len(filler) + labels
        if long_every and i % long_every == 0:
            tokens += FILLER * 2  # beyond max_length below: truncated
            tags += ["O"] * (2 * len(FILLER))
        texts.append(" ".join(tokens))
        tag_lists.append(tags)
    return pd.DataFrame({"text": texts, "tags": tag_lists})


# -- reading rows and encoding targets ----------------------------------------------------------------------


def test_every_quarantine_reason_in_order():
    tokens = [
        ["EU", "rejects", "German", "call"],  # 0 good
        '["Peter", "Blackburn"]',  # 1 good: a JSON list in a string
        "Paris is nice",  # 2 good: whitespace-separated string (CSV)
        None,  # 3 missing tokens: clean_data quarantines it as missing_text (text NaN)
        7,  # 4 malformed_tokens
        '["a", "b"',  # 5 malformed_tokens: starts like JSON, is not
        ["a", "b"],  # 6 missing_tags
        ["a", "b"],  # 7 malformed_tags: a blank tag
        ["a", "<br>"],  # 8 empty_token after HTML stripping
        ["New York", "x"],  # 9 space_in_token
        ["<a", "href=x>"],  # 10 unstable_tokens: markup across two tokens
        ["a", "b", "c"],  # 11 tag_count_mismatch
        ["x", "y"],  # 12 unknown_tag: a type no training row has (row 12 is not a training row)
        ["x", "y"],  # 13 invalid_iob2: I-PER without B-PER
        ["Mr", "X"],  # 14 invalid_iob2: a tag that is not IOB2
    ]
    tags = [
        ["B-ORG", "O", "B-MISC", "O"],
        '["B-PER", "I-PER"]',
        "B-LOC O O",
        ["O"],
        ["O"],
        ["O"],
        None,
        ["O", " "],
        ["O", "O"],
        ["B-LOC", "O"],
        ["O", "O"],
        ["O", "O"],
        ["B-FOO", "O"],
        ["I-PER", "O"],
        ["PER", "O"],
    ]
    train = [True] * 12 + [False, True, True]
    task, text, raw, targets = read_and_encode(tokens, tags, train=train)
    assert reasons_of(task, targets) == [
        None,
        None,
        None,
        None,
        "malformed_tokens",
        "malformed_tokens",
        "missing_tags",
        "malformed_tags",
        "empty_token",
        "space_in_token",
        "unstable_tokens",
        "tag_count_mismatch",
        "unknown_tag",
        "invalid_iob2",
        "invalid_iob2",
    ]
    assert task.target_reasons == (
        "malformed_tokens",
        "missing_tags",
        "malformed_tags",
        "empty_token",
        "space_in_token",
        "unstable_tokens",
        "tag_count_mismatch",
        "unknown_tag",
        "invalid_iob2",
    )
    assert text[:3].tolist() == ["EU rejects German call", "Peter Blackburn", "Paris is nice"]
    assert pd.isna(text[3])
    # Rows whose tokens cannot be used show them as read (JSON), for quarantine.parquet.
    assert text[8] == '["a", "<br>"]' and text[9] == '["New York", "x"]' and text[4] == "7"
    assert str(raw[7]) == '["O", " "]' and str(raw[1]) == '["B-PER", "I-PER"]'
    # Labels: O, then B-/I- of every entity type of the usable training rows, sorted by type.
    assert targets.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert targets.vocabulary == ['["B-LOC","O","O"]', '["B-ORG","O","B-MISC","O"]', '["B-PER","I-PER"]', '["O"]']
    assert targets.key.tolist()[:4] == [1, 2, 0, 3] and set(targets.key[4:]) == {-1}
    assert any("'PER'" in note for note in targets.notes)
    # The text of a usable row comes out of clean_data's own cleaning unchanged.
    usable = np.flatnonzero(targets.reason == 0)
    again = clean_texts(pd.Series(text[usable], dtype=STR), task.config.cleaning)
    assert again.tolist()[:3] == text[usable].tolist()[:3]


def test_tokens_are_cleaned_one_by_one_and_tags_mapped():
    tokens = [["Cafe\u0301", "&amp;", "  co\u200b  ", 1990.0], ["LOW", "case"]]
    tags = [[0, 1.0, 2, 0], ["0", "0"]]
    mapping = {"0": "O", "1": "B-ORG", "2": "I-ORG"}
    task, text, raw, targets = read_and_encode(
        tokens, tags, data={"label_mapping": mapping}, cleaning={"lowercase": True}
    )
    # NFKC composes e + combining acute, HTML entities are unescaped, invisible characters and edge spaces go.
    assert text.tolist() == ["caf\u00e9 & co 1990", "low case"]
    assert reasons_of(task, targets) == [None, None]
    assert raw[0].tags == ("O", "B-ORG", "I-ORG", "O")
    assert targets.labels == ["O", "B-ORG", "I-ORG"]


def test_repair_iob2_turns_iob1_into_iob2():
    assert iob2_problem(["O", "I-PER", "I-PER"]) == "transition"
    assert iob2_problem(["B-PER", "I-LOC"]) == "transition"
    assert iob2_problem(["B-PER", "I-PER", "O"]) is None
    assert iob2_problem(["NN"]) == "format"
    assert repair_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == (
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-ORG",
    )
    task, _, _, targets = read_and_encode(
        [["a", "b"], ["c", "d"]], [["I-PER", "O"], ["B-LOC", "O"]], task={"repair_iob2": True}
    )
    assert reasons_of(task, targets) == [None, None]
    assert targets.vocabulary[targets.key[0]] == '["B-PER","O"]'
    assert "rewrote a stray I-X as B-X in 1 rows" in targets.notes[0]


def test_configured_tags_keep_their_order_and_quarantine_others():
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    task, _, _, targets = read_and_encode(
        [["a", "b"], ["c"], ["d"]], [["B-PER", "I-PER"], ["B-ORG"], ["O"]], task={"tags": tags}
    )
    assert targets.labels == tags
    assert reasons_of(task, targets) == [None, "unknown_tag", None]
    frames = {"train": pd.DataFrame({"text": ["a b", "d"], "tags": [["B-PER", "I-PER"], ["O"]]})}
    assert task.data_warnings(frames, targets) == [
        "tag(s) with no training tokens: 'B-LOC'",
        "entity types with fewer than 20 training entities: PER (1)",
    ]


def test_plain_tags_and_the_hint_when_iob2_is_wrong():
    tokens, tags = [["the", "dog"], ["a", "cat", "ran"]], [["DT", "NN"], ["DT", "NN", "VB"]]
    task, _, _, targets = read_and_encode(tokens, tags, task={"scheme": "plain"})
    assert targets.labels == ["DT", "NN", "VB"] and targets.strata is None
    _, _, _, with_o = read_and_encode([["x", "y"]] * 2, [["O", "NN"], ["VB", "O"]], task={"scheme": "plain"})
    assert with_o.labels == ["O", "NN", "VB"]
    with pytest.raises(DataError, match="are not IOB2.*set task.scheme: plain"):
        read_and_encode(tokens, tags)


def test_data_that_cannot_be_used_at_all():
    with pytest.raises(DataError, match="holds no lists of tokens"):
        read_and_encode([1, 2], [["O"], ["O"]])
    with pytest.raises(DataError, match="every tag is O"):
        read_and_encode([["a"], ["b"]], [["O"], ["O"]])
    with pytest.raises(DataError, match="only one tag"):
        read_and_encode([["a"], ["b"]], [["NN"], ["NN"]], task={"scheme": "plain"})
    with pytest.raises(DataError, match="data.labels is for classification tasks"):
        TokenClassification(make_config(data={"labels": ["O", "B-X"]})).input_columns()


def test_strata_put_each_sentence_by_its_rarest_entity_type():
    tokens = [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"], ["i"]]
    tags = [["B-PER", "B-LOC"], ["B-PER", "O"], ["B-PER", "O"], ["B-LOC", "O"], ["O"]]
    task, _, _, targets = read_and_encode(tokens, tags)
    # Training frequency: LOC 2, PER 3, so LOC ranks first (stratum 2), PER second (3); no entity is 0.
    assert targets.strata.tolist() == [2, 3, 3, 2, 0]
    assert targets.strata_names == [
        "no entity",
        "an entity type not in train",
        "rarest entity LOC",
        "rarest entity PER",
    ]
    split = task.split_columns(targets, np.array([0, 4]))
    assert split == {"tags": [["B-PER", "B-LOC"], ["O"]]}


def test_check_split_and_describe_targets():
    task = TokenClassification(make_config())
    frame = roundtrip(
        pd.DataFrame({"text": ["Anna lives in Oslo", "ok"], "tags": [["B-PER", "O", "O", "B-LOC"], ["O"]]})
    )
    checked = task.check_split(frame, LABELS, "train")
    assert checked["tokens"].tolist() == [["Anna", "lives", "in", "Oslo"], ["ok"]]
    assert checked["tags"].tolist() == [["B-PER", "O", "O", "B-LOC"], ["O"]]
    with pytest.raises(DataError, match="the test split's row 1 has 1 tokens and 2 tags"):
        task.check_split(pd.DataFrame({"text": ["a", "b"], "tags": [["O"], ["O", "O"]]}), LABELS, "test")
    with pytest.raises(DataError, match=r"row 0 has tag\(s\) \['B-FOO'\] outside the tags"):
        task.check_split(pd.DataFrame({"text": ["a"], "tags": [["B-FOO"]]}), LABELS, "test")
    with pytest.raises(DataError, match="lacks column"):
        task.check_split(pd.DataFrame({"text": ["a"]}), LABELS, "test")
    table = task.describe_targets({"train": frame, "test": frame.iloc[1:]})
    assert table.columns == ["", "train", "test"]
    assert table.rows == [
        ["sentences", 2, 1],
        ["tokens", 5, 1],
        ["tag O", 3, 1],
        ["tag B-LOC", 1, 0],
        ["tag B-PER", 1, 0],
        ["entities LOC", 1, 0],
        ["entities PER", 1, 0],
    ]
    assert task.strata(frame).tolist() == [2, 0]  # LOC and PER once each: LOC first by name


# -- metrics on crafted predictions ---------------------------------------------------------------------------

TRUTH = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "I-LOC"]]
PREDICTED = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-LOC", "O"]]


def test_entity_scores_by_hand():
    scores = sequence_scores(TRUTH, PREDICTED, LABELS, "IOB2")
    # Entities: 4 true (PER, LOC, ORG, LOC 2-3), 3 predicted (PER, ORG, LOC 2-2), 2 right.
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["f1_macro"] == pytest.approx(2 / 3)  # PER 1, ORG 1, LOC 0
    assert scores["token_accuracy"] == pytest.approx(6 / 8)
    assert scores["n_examples"] == 2 and scores["n_words"] == 8
    assert list(scores["per_class"]) == ["LOC", "ORG", "PER"]
    assert scores["per_class"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    # A tag that is not IOB2 (another model's) is no entity, and a wrong token.
    other = sequence_scores(TRUTH, [["B-PER", "I-PER", "NN", "B-LOC"], TRUTH[1]], LABELS, "IOB2")
    assert other["f1"] == 1.0 and other["token_accuracy"] == pytest.approx(7 / 8)
    # Strict IOB2: an entity that starts with I- is not one.
    strict = sequence_scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]], LABELS, "IOB2")
    assert strict["f1"] == 0.0 and strict["token_accuracy"] == 0.5
    with pytest.raises(DataError, match="row 0: 3 predicted tags for 4 words"):
        sequence_scores(TRUTH, [["O"] * 3, ["O"] * 4], LABELS, "IOB2")


def test_plain_tag_scores_by_hand():
    truth, predicted = [["NN", "VB", "O"], ["NN", "NN"]], [["NN", "NN", "O"], ["VB", "NN"]]
    scores = sequence_scores(truth, predicted, ["O", "NN", "VB"], "plain")
    # Over NN and VB (O left out): 2 right of 4 predicted and of 4 true.
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["f1"] == 0.5
    assert scores["f1_macro"] == pytest.approx(1 / 3)  # NN 2/3, VB 0
    assert scores["token_accuracy"] == pytest.approx(0.6)
    assert scores["per_class"]["NN"]["f1"] == pytest.approx(2 / 3)
    assert scores["per_class"]["O"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}


def test_test_metrics_confusion_and_tables():
    task = TokenClassification(make_config())
    frame = pd.DataFrame({"text": [" ".join("w" * len(row)) for row in TRUTH], "tags": TRUTH})
    predictions = pd.DataFrame({"predicted": PREDICTED, "truncated_words": [0, 1]})
    metrics = task.test_metrics(frame, predictions, LABELS)
    assert metrics["f1"] == pytest.approx(4 / 7) and metrics["truncated_words"] == 1
    assert all(isinstance(metrics[name], float) for name in task.settings.metrics)
    matrix = task.confusion(frame, predictions, LABELS)
    expected = np.zeros((7, 7), dtype=int)
    for true, guess in [("B-PER", "B-PER"), ("I-PER", "I-PER"), ("O", "O"), ("B-LOC", "O")]:
        expected[LABELS.index(true), LABELS.index(guess)] += 1
    for true, guess in [("B-ORG", "B-ORG"), ("O", "O"), ("B-LOC", "B-LOC"), ("I-LOC", "O")]:
        expected[LABELS.index(true), LABELS.index(guess)] += 1
    assert matrix == expected.tolist()
    [(title, table)] = task.metric_tables(metrics, metrics)
    assert title == "Per entity type (strict IOB2)"
    assert table.columns == ["entity type", "precision", "recall", "F1", "support", "F1 production"]
    assert table.rows[0] == ["LOC", 0.0, 0.0, 0.0, 2, 0.0]
    assert task.comparison_metric("f1", same_labels=False) == "f1"
    summary = task.card_summary(LABELS, metrics)
    assert "3 entity types (`LOC`, `ORG`, `PER`)" in summary and "F1 **0.5714**" in summary


# -- the model ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("every_subword", [False, True])
def test_tags_align_with_sub_words(tiny_bert_dir, every_subword):
    from transformers import AutoConfig, AutoTokenizer

    task = TokenClassification(make_config(task={"label_all_subwords": every_subword}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model_config = AutoConfig.from_pretrained(tiny_bert_dir, **task.head_settings(LABELS, None))
    frame = task.check_split(
        pd.DataFrame(
            {"text": ["Zyxtrom Corp hired Anna", "Anna"], "tags": [["B-ORG", "I-ORG", "O", "B-PER"], ["B-PER"]]}
        ),
        LABELS,
        "train",
    )
    # [CLS] z ##yx ##trom corp hired anna [SEP]
    dataset = task.dataset(frame, tokenizer, 16, model_config)
    ids = {tag: LABELS.index(tag) for tag in LABELS}
    continuation = [ids["I-ORG"]] * 2 if every_subword else [-100, -100]
    assert dataset[0]["labels"] == [-100, ids["B-ORG"], *continuation, ids["I-ORG"], ids["O"], ids["B-PER"], -100]
    # Truncated to 5 sub-words: [CLS] z ##yx ##trom [SEP]; the three later words are cut off.
    short = task.dataset(frame, tokenizer, 5, model_config)
    assert short[0]["labels"] == [-100, ids["B-ORG"], *continuation, -100]
    assert task.finalize(None, short) == [
        "3 of 5 validation words lie beyond training.max_length and were not scored (the test split's are tagged O)"
    ]


def test_train_save_predict_and_the_snippet(tiny_bert_dir, tmp_path, one_torch_thread, capsys):
    from transformers import AutoTokenizer, Trainer

    from ftpipe.steps.finetune import _training_arguments
    from ftpipe.training.recipe import derive

    config = make_config(
        task={"label_all_subwords": True},
        training={"max_length": 16, "epochs": 2, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 1e-3},
    )
    task = TokenClassification(config)
    train = task.check_split(roundtrip(synthetic_split(48, seed=1)), LABELS, "train")
    validation = task.check_split(roundtrip(synthetic_split(16, seed=2, long_every=4)), LABELS, "validation")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = task.load_model(tiny_bert_dir, **task.head_settings(LABELS, train))
    assert model.config.id2label == dict(enumerate(LABELS))
    train_dataset = task.dataset(train, tokenizer, 16, model.config)
    validation_dataset = task.dataset(validation, tokenizer, 16, model.config)
    trainer = Trainer(
        model=model,
        args=_training_arguments(
            config,
            task,
            tmp_path / "checkpoints",
            len(train_dataset),
            derive(config.training, train_rows=48, batch_size=8, num_parameters=10**6, max_length=(16, "test")),
        ),
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        data_collator=task.collator(tokenizer, None),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(model.config),
    )
    trainer.train()
    evaluation = trainer.evaluate()
    assert {f"eval_{name}" for name in task.settings.metrics} <= set(evaluation)
    # Scored per word even though every sub-word was trained on: the validation labels were matched back.
    assert task._match(_padded(validation_dataset)) is not None
    notes = task.finalize(trainer, validation_dataset)
    assert notes and "validation words lie beyond training.max_length" in notes[0]

    model_dir = tmp_path / "model"
    trainer.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    predictions = task.predict(str(model_dir), validation)
    assert len(predictions) == len(validation)
    assert [len(row) for row in predictions["predicted"]] == [len(row) for row in validation["tokens"]]
    assert predictions["truncated_words"].sum() > 0
    long_row = int(np.argmax(predictions["truncated_words"].to_numpy()))
    cut = int(predictions["truncated_words"][long_row])
    assert predictions["predicted"][long_row][-cut:] == ["O"] * cut
    assert set(tag for row in predictions["predicted"] for tag in row) <= set(LABELS)
    metrics = task.test_metrics(validation, predictions, LABELS)
    assert all(isinstance(metrics[name], float) and 0 <= metrics[name] <= 1 for name in task.settings.metrics)
    columns = task.prediction_columns(predictions)
    assert roundtrip(pd.DataFrame(columns))["predicted"].map(len).tolist() == [len(t) for t in validation["tokens"]]

    capsys.readouterr()
    exec(compile(task.usage_snippet(), "usage-snippet", "exec"), {"DIRECTORY": str(model_dir)})  # noqa: S102
    printed = capsys.readouterr().out.strip().splitlines()
    assert all(line.split(" ")[0] in {"LOC", "ORG", "PER"} for line in printed)


def _padded(dataset) -> np.ndarray:
    """The dataset's labels padded with -100 to one length, as the Trainer hands them to compute_metrics."""
    rows = dataset["labels"]
    width = max(len(row) for row in rows)
    return np.array([row + [-100] * (width - len(row)) for row in rows])


def test_compute_metrics_scores_words(tiny_bert_dir):
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer

    task = TokenClassification(make_config(task={"label_all_subwords": True}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model_config = AutoConfig.from_pretrained(tiny_bert_dir, **task.head_settings(LABELS, None))
    frame = task.check_split(
        pd.DataFrame({"text": ["Zyxtrom Corp hired Anna"], "tags": [["B-ORG", "I-ORG", "O", "B-PER"]]}), LABELS, "v"
    )
    dataset = task.dataset(frame, tokenizer, 16, model_config)
    label_ids = _padded(dataset)
    assert task._match(label_ids) is not None
    # Predict the gold label at every position except ##yx (a continuation: not the word's prediction) and anna.
    predicted = np.where(label_ids == -100, 0, label_ids)
    predicted[0, 2] = LABELS.index("B-LOC")
    predicted[0, 6] = LABELS.index("O")
    logits = np.eye(len(LABELS))[predicted]
    scores = task.compute_metrics(model_config)(SimpleNamespace(predictions=logits, label_ids=label_ids))
    # Words: ORG right, PER missed: precision 1, recall 1/2, token accuracy 3/4.
    assert scores == pytest.approx(
        {"f1": 2 / 3, "precision": 1.0, "recall": 0.5, "token_accuracy": 0.75, "f1_macro": 0.5}
    )


def test_probe_on_first_sub_word_features(tiny_bert_dir, one_torch_thread):
    from transformers import AutoModel, AutoTokenizer

    task = TokenClassification(make_config(selection={"probe_max_length": 16}))
    encoder = AutoModel.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    train = task.check_split(synthetic_split(40, seed=3), LABELS, "train")
    validation = task.check_split(synthetic_split(20, seed=4, long_every=5), LABELS, "validation")
    score = task.probe(encoder, tokenizer, train, validation)
    assert score.metric == "token_f1_macro"
    assert set(score.details) == {"token_f1_macro", "token_accuracy", "entity_f1"}
    assert 0.0 < score.value <= 1.0 and score.value == score.details["token_f1_macro"]
    again = task.probe(encoder, tokenizer, train, validation)
    assert again.value == score.value  # deterministic


def test_the_real_hironsan_sample_reads_and_encodes():
    frame = read_conll(ASSETS / "hironsan-ner-sample.conll", tokens_column="tokens", tags_column="tags")
    task = TokenClassification(make_config())
    text, raw = task.read_rows(frame)
    targets = task.encode_targets(raw, np.ones(len(frame), dtype=bool))
    assert reasons_of(task, targets) == [None] * 25
    assert targets.labels == ["O", "B-DAT", "I-DAT", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    assert [len(t.split(" ")) for t in text] == [len(tokens) for tokens in frame["tokens"]]
    assert isinstance(raw[0], TaggedRow)


# -- config ---------------------------------------------------------------------------------------------------


def test_tag_set_settings_are_checked():
    with pytest.raises(ValueError, match="are not IOB2 tags"):
        TokenClassificationTask(tags=["O", "PER"])
    with pytest.raises(ValueError, match="must contain O"):
        TokenClassificationTask(tags=["B-PER", "I-PER"])
    with pytest.raises(ValueError, match="duplicates"):
        TokenClassificationTask(tags=["O", "B-PER", "O"])
    assert TokenClassificationTask(scheme="plain", tags=["NN", "VB"]).tags == ["NN", "VB"]


@pytest.mark.skipif(not REGISTERED, reason="needs token_classification in ftpipe.config and ftpipe.tasks")
def test_a_metric_the_task_lacks_is_a_config_error_naming_the_path():
    with pytest.raises(ConfigError, match=r"gate\.metric: 'accuracy' is not a metric of task token_classification"):
        make_config(gate={"metric": "accuracy"})
    with pytest.raises(ConfigError, match=r"gate\.thresholds\.f1_weighted"):
        make_config(gate={"thresholds": {"f1_weighted": 0.5}})
    assert make_config(gate={"metric": "token_accuracy"}).gate_metric == "token_accuracy"
    with pytest.raises(ConfigError, match=r"task\.token_classification.*must contain O"):
        make_config(task={"tags": ["B-PER", "I-PER"]})


def test_example_config_is_valid():
    import yaml

    from ftpipe.config import GateConfig

    document = yaml.safe_load((Path(__file__).parents[3] / "pipelines" / "examples" / "ner.yaml").read_text())
    if REGISTERED:
        config = parse_config(document, "ner.yaml")
    else:  # the rest as parsed, the task's own sections checked on their own
        task, gate = document.pop("task"), document.pop("gate")
        assert task.pop("type") == "token_classification"
        config = parse_config(document, "ner.yaml").model_copy(
            update={"task": TokenClassificationTask(**task), "gate": GateConfig(**gate)}
        )
    assert config.gate_metric in config.task.metrics and config.task.scheme == "IOB2"
    assert config.data.text_column == "tokens" and config.data.uri.endswith(".conll")


def test_contract_rows_are_json_lines_friendly():
    """The rows the contract test writes as JSON Lines read back as lists."""
    rows = synthetic_split(3, seed=9)
    lines = "".join(
        json.dumps({"tokens": t.split(" "), "tags": g}) + "\n" for t, g in zip(rows["text"], rows["tags"], strict=True)
    )
    frame = pd.read_json(io.StringIO(lines), lines=True)
    task = TokenClassification(make_config())
    text, raw = task.read_rows(frame)
    assert text.tolist() == rows["text"].tolist()
    assert [r.tags for r in raw] == [tuple(g) for g in rows["tags"]]
