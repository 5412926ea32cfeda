"""select_model on tiny random BERTs: the probe ranks candidates, constraints and broken models are skipped."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from split_files import LABELS, write_split

from ftpipe import models
from ftpipe.config import parse_config
from ftpipe.errors import DataError, ModelError, StorageUnavailable
from ftpipe.steps import select_model
from ftpipe.storage import Storage
from ftpipe.tasks.base import stratified_sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def splits(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(
        train=write_split(tmp_path / "train.parquet", 48, seed=1),
        validation=write_split(tmp_path / "validation.parquet", 24, seed=2),
        output=str(tmp_path / "out"),
    )


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_bert_dir) -> SimpleNamespace:
    """Candidates beside the tiny BERT: a wider one (MIT), one without a card, one with pickle weights only."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("candidates")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)

    wide = root / "wide"
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    )
    BertModel(config).save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    (wide / "README.md").write_text("---\nlicense: MIT\n---\n# wider test BERT\n")

    no_card = root / "no-card"
    shutil.copytree(tiny_bert_dir, no_card, ignore=shutil.ignore_patterns("README.md"))

    pickled = root / "pickled"
    model = BertModel.from_pretrained(tiny_bert_dir)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # no safetensors: must be refused
    tokenizer.save_pretrained(pickled)
    return SimpleNamespace(small=tiny_bert_dir, wide=str(wide), no_card=str(no_card), pickled=str(pickled))


def make_config(candidates: list[dict], **selection):
    return parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "test"},
            "candidates": candidates,
            "selection": selection,
        }
    )


def test_probe_ranks_candidates_by_score_and_writes_reports(model_dirs, splits):
    config = make_config(
        [{"name": "wide", "source": model_dirs.wide}, {"name": "small", "source": model_dirs.small}], cost_weight=0.05
    )
    result = select_model.run(config, splits.train, splits.validation, LABELS, splits.output)

    assert {item.name for item in result.ranking} == {"wide", "small"} and result.skipped == []
    assert result.selected == result.ranking[0]
    assert result.ranking[0].score >= result.ranking[1].score
    for item in result.ranking:
        assert item.score == pytest.approx(item.probe_value - 0.05 * math.log10(item.num_parameters), abs=1e-5)
        assert item.probe_metric == "f1_macro" and 0.0 <= item.probe_details["accuracy"] <= 1.0
        assert item.probe_seconds > 0
    by_name = {item.name: item for item in result.ranking}
    assert by_name["wide"].num_parameters > by_name["small"].num_parameters
    assert by_name["wide"].license == "mit" and by_name["small"].license == "apache-2.0"

    markdown = Path(result.report_markdown_uri).read_text()
    assert "| 1 | " + result.selected.name in markdown
    assert json.loads(Path(result.report_json_uri).read_text())["selected"]["name"] == result.selected.name
    assert "data:image/png;base64," in Path(result.report_html_uri).read_text()
    assert select_model.SelectModelResult.from_json(result.to_json()) == result


def test_candidates_that_break_a_constraint_or_cannot_load_are_skipped(model_dirs, splits, tmp_path, caplog):
    small_parameters = select_model.safetensors_parameter_count(model_dirs.small)
    candidates = [
        {"name": "small", "source": model_dirs.small},
        {"name": "wide", "source": model_dirs.wide},  # MIT is allowed, but it is too large
        {"name": "non-commercial", "source": model_dirs.small, "license": "CC-BY-NC-4.0"},  # declared wins
        {"name": "no-card", "source": model_dirs.no_card},
        {"name": "pickled", "source": model_dirs.pickled, "license": "apache-2.0"},
        {"name": "missing", "source": str(tmp_path / "nowhere")},
    ]
    config = make_config(candidates, max_parameters=small_parameters + 1000, allowed_licenses=["apache-2.0", "mit"])
    with caplog.at_level("WARNING", logger="ftpipe.steps.select_model"):
        result = select_model.run(config, splits.train, splits.validation, LABELS, splits.output)

    assert [item.name for item in result.ranking] == ["small"] and result.selected.name == "small"
    reasons = {item.name: item.reason for item in result.skipped}
    assert list(reasons) == ["wide", "non-commercial", "no-card", "pickled", "missing"]
    assert "exceed selection.max_parameters" in reasons["wide"]
    assert "licence cc-by-nc-4.0 is not in selection.allowed_licenses" in reasons["non-commercial"]
    assert "licence unknown" in reasons["no-card"]
    assert "cannot load model" in reasons["pickled"]
    assert "model directory not found" in reasons["missing"]
    assert sum("skipping candidate" in record.message for record in caplog.records) == 5

    markdown = Path(result.report_markdown_uri).read_text()
    assert "## Skipped" in markdown and "non-commercial" in markdown and "licence unknown" in markdown
    assert len(json.loads(Path(result.report_json_uri).read_text())["skipped"]) == 5


def test_no_candidate_left_is_a_model_error_listing_each_reason(model_dirs, splits, tmp_path):
    config = make_config(
        [{"name": "pickled", "source": model_dirs.pickled}, {"name": "missing", "source": str(tmp_path / "nowhere")}]
    )
    with pytest.raises(ModelError, match=r"no usable candidate model \(pickled: cannot load model .*; missing: model"):
        select_model.run(config, splits.train, splits.validation, LABELS, splits.output)


def test_trust_remote_code_only_for_the_candidate_that_sets_it(model_dirs, splits, monkeypatch):
    seen: list[tuple[str, bool]] = []
    original = models.load_encoder

    def recording_load_encoder(source, *, trust_remote_code=False, auto_class="AutoModel"):
        seen.append((source, trust_remote_code))
        return original(source, trust_remote_code=trust_remote_code, auto_class=auto_class)

    monkeypatch.setattr(models, "load_encoder", recording_load_encoder)
    config = make_config(
        [
            {"name": "plain", "source": model_dirs.small},
            {"name": "trusted", "source": model_dirs.wide, "trust_remote_code": True},
        ]
    )
    select_model.run(config, splits.train, splits.validation, LABELS, splits.output)
    assert seen == [(model_dirs.small, False), (model_dirs.wide, True)]


def test_bad_splits_are_data_errors(model_dirs, tmp_path, splits):
    config = make_config([{"name": "small", "source": model_dirs.small}])
    one_class = write_split(tmp_path / "one-class.parquet", 16, seed=3, labels=(0,))
    with pytest.raises(DataError, match="single label"):
        select_model.run(config, one_class, splits.validation, LABELS, splits.output)
    no_label = tmp_path / "no-label.parquet"
    pd.DataFrame({"text": ["a"], "label_id": [0]}).to_parquet(no_label)
    with pytest.raises(DataError, match="lacks column"):
        select_model.run(config, str(no_label), splits.validation, LABELS, splits.output)
    with pytest.raises(DataError, match="label mismatch"):
        select_model.run(config, splits.train, splits.validation, ["spam", "ham"], splits.output)


def test_stratified_sample_keeps_label_proportions(splits):
    frame = select_model.read_split(Storage(), splits.train, "train")  # 24 ham, 24 spam
    sample = stratified_sample(frame, 12, 0, frame["label_id"].to_numpy())
    assert len(sample) == 12 and sample["label_id"].value_counts().to_dict() == {0: 6, 1: 6}
    assert len(stratified_sample(frame, 500, 0, frame["label_id"].to_numpy())) == 48


def test_parameter_count_from_safetensors_header_matches_the_loaded_model(model_dirs):
    encoder = models.load_encoder(model_dirs.wide)
    assert select_model.safetensors_parameter_count(model_dirs.wide) == models.count_parameters(encoder)
    assert select_model.safetensors_parameter_count(model_dirs.pickled) is None


def test_a_candidate_that_s3_cannot_serve_now_fails_the_task_instead_of_being_skipped(model_dirs, splits, monkeypatch):
    """Skipping it would pick another model because of a hiccup; the task fails and KFP retries it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    config = parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "test"},
            "candidates": [
                {"name": "on-s3", "source": "s3://models/base/minilm"},
                {"name": "small", "source": model_dirs.small},
            ],
            "storage": {"endpoint_url": "http://127.0.0.1:9", "connect_timeout_s": 0.5, "max_attempts": 0},
        }
    )
    with pytest.raises(StorageUnavailable, match="cannot fetch model s3://models/base/minilm.*does not answer"):
        select_model.run(config, splits.train, splits.validation, LABELS, splits.output)
