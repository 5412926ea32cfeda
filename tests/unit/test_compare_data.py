"""fingerprint_data and compare_data: the cache key for cleaning, the skip for unchanged data, the drift check."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import DriftConfig, parse_config
from ftpipe.data import drift
from ftpipe.errors import ConfigError, DataError, ModelError
from ftpipe.registry import ModelRegistry
from ftpipe.results import DriftTest
from ftpipe.steps import compare_data, fingerprint_data
from ftpipe.storage import Storage
from ftpipe.tasks import get_task


def _config(tmp_path, **cleaning):
    return parse_config(
        {
            "data": {"uri": str(tmp_path / "data.csv")},
            "cleaning": cleaning,
            "candidates": [{"name": "m", "source": str(tmp_path / "model")}],
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "m"},
        }
    )


def test_the_data_key_changes_with_the_data_and_the_recipe_only(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\na,x\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    first = fingerprint_data.run(_config(tmp_path)).key
    assert fingerprint_data.run(_config(tmp_path)).key == first
    (tmp_path / "data.csv").write_text("text,label\na,x\nb,y\n")  # new data under the same URI
    second = fingerprint_data.run(_config(tmp_path)).key
    assert second != first
    assert fingerprint_data.run(_config(tmp_path, lowercase=True)).key != second


def test_the_data_key_covers_the_tokenizer_files_but_not_the_weights(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\na,x\n")
    with pytest.raises(ModelError, match="tokenizer not found"):  # here, not in clean_data, whose cache keeps failures
        fingerprint_data.run(_config(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (model / "model.safetensors").write_bytes(b"weights")
    first = fingerprint_data.run(_config(tmp_path)).key
    (model / "model.safetensors").write_bytes(b"other weights")
    assert fingerprint_data.run(_config(tmp_path)).key == first
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\nnew\n")  # the tokenizer replaced in place
    assert fingerprint_data.run(_config(tmp_path)).key != first


def test_the_data_key_needs_the_data(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(DataError, match="dataset not found"):
        fingerprint_data.run(_config(tmp_path))


def _register(registry: ModelRegistry, tmp_path, fingerprint: str) -> int:
    model = tmp_path / f"model-{fingerprint}"
    model.mkdir()
    (model / "config.json").write_text("{}")
    version = registry.register("m", model, {"data": {"fingerprint": fingerprint}}, "# card\n")
    return version.version


def test_training_runs_until_production_has_seen_this_data(tmp_path):
    config = _config(tmp_path)
    registry = ModelRegistry(Storage(), config.registry.uri)
    assert compare_data.run(config, "abc", registry=registry).changed  # nothing in production

    version = _register(registry, tmp_path, "abc")
    registry.set_alias("m", "production", version)
    unchanged = compare_data.run(config, "abc", registry=registry)
    assert not unchanged.changed and unchanged.production_version == version
    assert "skipping fine-tuning and registration" in unchanged.message

    assert compare_data.run(config, "abc", force=True, registry=registry).changed
    assert compare_data.run(config, "new", registry=registry).changed


# -- the drift check (ftpipe.data.drift) and retrain_when --------------------------------------------------------

FILM = "film plot actor scene director cinema script cast sequel screen drama comedy".split()
PHONE = "phone battery app update screen charger signal wifi camera price store delivery".split()
COMMON = "the a is was very really not good bad great awful fine".split()
# 400 texts a side for the vocabulary and classifier (100 permutations, p down to 1/101: a second or two); the label
# and length tests use every row, 1,000 a side, so that a chance difference between halves stays below min_effect
FAST = DriftConfig(sample_rows=400)


def _texts(rng: np.random.Generator, topic: list[str], rows: int, words: tuple[int, int]) -> list[str]:
    """Texts of ``words`` words each, half from ``topic``, half from the shared filler words."""
    texts = []
    for length in rng.integers(*words, size=rows):
        chosen = [rng.choice(topic) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(length)]
        texts.append(" ".join(chosen))
    return texts


def _table(seed: int, topic: list[str], rows: int, positive: float, words: tuple[int, int]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(rows) < positive, "pos", "neg")
    return pd.DataFrame({"text": _texts(rng, topic, rows, words), "label": labels})


def _halves(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two disjoint random halves: a resample of the same data."""
    order = np.random.default_rng(seed).permutation(len(frame))
    half = len(frame) // 2
    return frame.iloc[order[:half]].reset_index(drop=True), frame.iloc[order[half:]].reset_index(drop=True)


def _check(old: pd.DataFrame, new: pd.DataFrame, settings: DriftConfig = FAST) -> dict[str, DriftTest]:
    tests = drift.check(old["text"], new["text"], {"label": old["label"]}, {"label": new["label"]}, settings)
    return {test.name: test for test in tests}


def test_shifted_text_drifts_on_every_test_and_a_resample_on_none():
    old, resample = _halves(_table(1, FILM, 2000, positive=0.5, words=(5, 15)))
    shifted = _table(2, PHONE, 1000, positive=0.85, words=(15, 30))

    drifted = _check(old, shifted)
    assert set(drifted) == {"label:label", "text_length", "unseen_words", "vocabulary", "classifier"}
    assert all(test.drifted for test in drifted.values()), drifted
    assert drifted["classifier"].statistic > 0.95 and drifted["classifier"].p_value == pytest.approx(1 / 101)
    assert drifted["label:label"].method.startswith("chi-square") and drifted["label:label"].p_value < 1e-6

    same = _check(old, resample)
    assert not any(test.drifted for test in same.values()), same
    assert 0.4 < same["classifier"].statistic < 0.6 and same["classifier"].p_value > 0.05
    assert same["unseen_words"].statistic == 0.0  # 23 words of two letters or more: all seen in 400 texts
    assert same["vocabulary"].statistic < 0.1 < drifted["vocabulary"].statistic - 0.5


def test_each_test_has_its_own_threshold():
    old, new = _halves(_table(1, FILM, 2000, positive=0.5, words=(5, 15)))
    longer = new.assign(text=new["text"] + " the end")  # two more words per text, nothing else
    tests = _check(old, longer)
    assert tests["text_length"].drifted and 0.15 < tests["text_length"].statistic < 0.3  # 5-14 words, 2 more: 0.2
    assert not tests["label:label"].drifted
    lenient = _check(old, longer, FAST.model_copy(update={"min_effect": 0.3}))
    assert not lenient["text_length"].drifted  # as significant, but below the effect asked for


def test_numeric_targets_get_a_ks_test_and_lists_are_counted_item_by_item():
    rng = np.random.default_rng(0)
    settings = DriftConfig()
    same = drift.label_test("score", pd.Series(rng.normal(0, 1, 500)), pd.Series(rng.normal(0, 1, 500)), settings)
    moved = drift.label_test("score", pd.Series(rng.normal(0, 1, 500)), pd.Series(rng.normal(1, 1, 500)), settings)
    assert same.method == moved.method == "two-sample Kolmogorov-Smirnov"
    assert not same.drifted and moved.drifted and moved.statistic > 0.3

    old = pd.Series([["sports"], ["sports", "politics"], ["politics"]] * 100)
    new = pd.Series([["sports"], ["weather"], ["sports", "weather"]] * 100)
    lists = drift.label_test("labels", old, new, settings)
    assert lists.drifted and "weather" in lists.detail and lists.method.startswith("chi-square")
    assert not drift.label_test("labels", old, old.sample(frac=1, random_state=0), settings).drifted

    missing = drift.label_test("target_b", None, pd.Series([1.0, 2.0]), settings)
    assert missing.drifted and "production's train split has no target" in missing.detail


def test_too_few_rows_for_the_classifier_is_said_not_guessed():
    tiny = pd.Series(["one two", "three four", "five six"])
    test = drift.classifier_test(list(tiny), list(tiny), DriftConfig())
    assert not test.drifted and test.p_value is None and test.detail.startswith("not run: 3 rows a side")


def _drift_config(tmp_path, retrain_when: str, **drift_settings):
    """A config whose drift check is quick: these tests are of the decision (the shifted data drifts on every
    test; with 20 permutations the classifier alone never can)."""
    config = _config(tmp_path)
    settings = {"sample_rows": 200, "permutations": 20, **drift_settings, "retrain_when": retrain_when}
    return config.model_copy(update={"drift": DriftConfig(**settings)})


def _production(tmp_path, registry: ModelRegistry, train: pd.DataFrame, fingerprint: str = "old") -> str:
    """A production version trained on ``train``, its split recorded as register_model records it."""
    uri = str(tmp_path / "production-train.parquet")
    train.to_parquet(uri)
    model = tmp_path / "model-production"
    model.mkdir()
    (model / "config.json").write_text("{}")
    metadata = {"data": {"fingerprint": fingerprint, "uris": {"train": uri}}}
    registry.set_alias("m", "production", registry.register("m", model, metadata, "# card\n").version)
    return uri


def _new_train(tmp_path, frame: pd.DataFrame) -> str:
    uri = str(tmp_path / "new-train.parquet")
    frame.to_parquet(uri)
    return uri


def test_retrain_when_chooses_between_the_fingerprint_the_drift_check_and_always(tmp_path):
    old, resample = _halves(_table(1, FILM, 2000, positive=0.5, words=(5, 15)))
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    _production(tmp_path, registry, old)
    same_kind = _new_train(tmp_path, resample)

    def decide(when: str, train_uri: str, fingerprint: str = "new", **kwargs):
        config = _drift_config(tmp_path, when)
        return compare_data.run(config, fingerprint, registry=registry, train_uri=train_uri, **kwargs)

    new_data = decide("new_data", same_kind)  # the default: new rows are reason enough, the check only informs
    assert new_data.changed and new_data.drift_checked and new_data.drifted is False
    assert "data changed but not drifted since production version 1: training" in new_data.message

    quiet = decide("drift", same_kind)
    assert not quiet.changed and "skipping fine-tuning and registration" in quiet.message
    assert len(quiet.drift_tests) == 5 and quiet.production_train_uri.endswith("production-train.parquet")
    assert decide("drift", same_kind, force=True).changed
    assert decide("always", same_kind).changed

    unchanged = decide("drift", same_kind, fingerprint="old")  # the same data cannot have drifted: no check
    assert not unchanged.changed and not unchanged.drift_checked and unchanged.drifted is None

    shifted = decide("drift", _new_train(tmp_path, _table(2, PHONE, 1000, positive=0.85, words=(15, 30))))
    assert (
        shifted.changed and shifted.drifted and "data changed and drifted since production version 1" in shifted.message
    )

    off = compare_data.run(
        _drift_config(tmp_path, "new_data", check=False), "new", registry=registry, train_uri=same_kind
    )
    assert off.changed and not off.drift_checked


def test_unreadable_production_data_falls_back_to_the_fingerprint_with_a_warning(tmp_path, caplog):
    old, resample = _halves(_table(1, FILM, 2000, positive=0.5, words=(5, 15)))
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    production_uri = _production(tmp_path, registry, old)
    Path(production_uri).unlink()  # production's training data deleted since
    config = _drift_config(tmp_path, "drift")
    out = str(tmp_path / "out")

    result = compare_data.run(
        config, "new", registry=registry, train_uri=_new_train(tmp_path, resample), output_uri=out
    )
    assert result.changed and not result.drift_checked and result.drifted is None  # the fingerprint changed
    assert result.drift_warning.startswith("cannot read production version 1's training data: not found")
    assert "decided on the fingerprint" in result.message
    assert "the drift check is skipped" in caplog.text
    assert "warning: cannot read production version 1's training data" in (tmp_path / "out" / "report.md").read_text()

    Path(production_uri).write_text("not parquet")
    garbled = compare_data.run(config, "old", registry=registry, train_uri=_new_train(tmp_path, resample))
    assert not garbled.changed  # equal fingerprints: nothing to read, nothing to warn of
    assert compare_data.run(config, "new", registry=registry, train_uri=_new_train(tmp_path, resample)).drift_warning


def test_the_new_train_split_must_be_readable(tmp_path):
    old, _ = _halves(_table(1, FILM, 100, positive=0.5, words=(5, 15)))
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    _production(tmp_path, registry, old)
    (tmp_path / "bad.parquet").write_text("text,label\n")
    with pytest.raises(DataError, match="cannot read the new train split .*bad.parquet"):
        compare_data.run(
            _drift_config(tmp_path, "drift"), "new", registry=registry, train_uri=str(tmp_path / "bad.parquet")
        )


def test_the_report_shows_every_test_and_the_lengths(tmp_path):
    old, _ = _halves(_table(1, FILM, 2000, positive=0.5, words=(5, 15)))
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    _production(tmp_path, registry, old)
    shifted = _new_train(tmp_path, _table(2, PHONE, 1000, positive=0.85, words=(15, 30)))
    result = compare_data.run(
        _drift_config(tmp_path, "drift"), "new", registry=registry, train_uri=shifted, output_uri=str(tmp_path / "out")
    )
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert result.report_markdown_uri.endswith("report.md") and result.report_html_uri.endswith("report.html")
    assert "## Drift against production version 1: drifted" in markdown
    for test in result.drift_tests:
        assert f"| {test.name} |" in markdown
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and "classifier two-sample test" in html


def test_retrain_when_is_validated(tmp_path):
    data = _config(tmp_path).model_dump(mode="json")
    assert data["drift"]["retrain_when"] == "new_data"  # the default: today's fingerprint decision
    with pytest.raises(ConfigError, match="drift.retrain_when"):
        parse_config({**data, "drift": {"retrain_when": "sometimes"}})


def test_vocabulary_figures_are_judged_against_production_s_own_at_the_same_size():
    """Few texts from a large vocabulary: many words of a resample are unseen, yet it is no drift."""
    rng = np.random.default_rng(0)
    zipf = 1.0 / np.arange(1, 5001)

    def texts(offset: int, rows: int) -> pd.Series:
        ids = rng.choice(5000, size=(rows, 12), p=zipf / zipf.sum()) + offset
        return pd.Series([" ".join(f"w{i}" for i in row) for row in ids])

    old = texts(0, 300)
    same = {t.name: t for t in drift.vocabulary_tests(*drift.vocabulary_samples(old, texts(0, 150), 5000, 0), FAST)}
    assert same["unseen_words"].statistic > 0.2  # far above a fixed threshold of 0.15...
    assert not same["unseen_words"].drifted and not same["vocabulary"].drifted  # ...but production's own is as high
    shifted = texts(2500, 150)  # half the words new, and the most common ones all new
    moved = {t.name: t for t in drift.vocabulary_tests(*drift.vocabulary_samples(old, shifted, 5000, 0), FAST)}
    assert moved["unseen_words"].drifted and moved["vocabulary"].drifted
    assert "production's own" in moved["vocabulary"].rule


def test_empty_production_data_is_a_warning_and_an_empty_new_split_an_error(tmp_path):
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    _production(tmp_path, registry, pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}))
    config = _drift_config(tmp_path, "drift")
    new = _new_train(tmp_path, _table(2, PHONE, 50, positive=0.5, words=(5, 10)))
    result = compare_data.run(config, "new", registry=registry, train_uri=new)
    assert result.changed and result.drift_warning.endswith("production-train.parquet has no rows")
    empty = str(tmp_path / "empty.parquet")
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(empty)
    with pytest.raises(DataError, match="the new train split .*empty.parquet has no rows"):
        compare_data.run(config, "new", registry=registry, train_uri=empty)
    missing = drift.label_test("score", pd.Series([np.nan, np.nan]), pd.Series([1.0, 2.0]), DriftConfig())
    assert not missing.drifted and missing.detail == "not run: target score has no values on a side"


@pytest.mark.parametrize(
    ("task", "column", "old", "new", "method"),
    [
        ({"type": "text_classification"}, "label", ["a", "b"] * 50, ["a"] * 90 + ["b"] * 10, "chi-square"),
        ({"type": "regression"}, "target_label", [0.0, 1.0] * 50, [3.0, 4.0] * 50, "two-sample Kolmogorov"),
        ({"type": "multi_label_classification"}, "labels", [["a"], ["a", "b"]] * 50, [["c"]] * 100, "chi-square"),
        ({"type": "token_classification"}, "tags", [["O", "B-PER"]] * 100, [["O", "B-LOC"]] * 100, "chi-square"),
    ],
)
def test_each_task_names_its_targets_and_the_dtype_chooses_the_test(tmp_path, task, column, old, new, method):
    config = parse_config({**_config(tmp_path).model_dump(mode="json"), "task": task})
    frames = []
    for values in (old, new):  # through parquet, as compare_data reads them: list cells come back as arrays
        path = tmp_path / f"{len(frames)}.parquet"
        pd.DataFrame({"text": [f"text {i}" for i in range(len(values))], column: values}).to_parquet(path)
        frames.append(compare_data.read_split(Storage(), str(path), "split"))
    targets = [get_task(config).drift_targets(frame) for frame in frames]
    assert list(targets[0]) == [column.removeprefix("target_") if task["type"] == "regression" else column]
    (name,) = targets[0]
    test = drift.label_test(name, targets[0][name], targets[1][name], DriftConfig())
    assert test.method.startswith(method) and test.drifted
    assert not drift.label_test(name, targets[0][name], targets[0][name], DriftConfig()).drifted


def test_the_generative_tasks_leave_their_free_text_targets_to_the_text_tests(tmp_path):
    config = parse_config({**_config(tmp_path).model_dump(mode="json"), "task": {"type": "seq2seq"}})
    assert get_task(config).drift_targets(pd.DataFrame({"text": ["a"], "completion": ["b"]})) == {}
