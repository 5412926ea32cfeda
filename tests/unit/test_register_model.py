"""register_model: one new immutable version with metadata and card, the alias moved, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftpipe import __version__
from ftpipe.config import parse_config
from ftpipe.errors import RegistryError
from ftpipe.registry import ModelRegistry
from ftpipe.results import CandidateScore, CleanDataResult, EvaluateResult, FinetuneResult, SelectModelResult
from ftpipe.steps import register_model
from ftpipe.storage import Storage

LABELS = ["ham", "spam"]


@pytest.fixture
def trained(tiny_bert_dir, tmp_path) -> str:
    """A fine-tuned model as finetune leaves it: save_pretrained + tokenizer, id2label set."""
    from split_files import load_classifier
    from transformers import AutoTokenizer

    directory = tmp_path / "trained"
    load_classifier(tiny_bert_dir, id2label=dict(enumerate(LABELS))).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(directory)
    return str(directory)


def make_config(tmp_path: Path, tiny_bert_dir: str, **registry):
    return parse_config(
        {
            "data": {"uri": "s3://data/sms.csv"},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "spam-filter", **registry},
        }
    )


def make_evaluation(model_uri: str, passed: bool = True) -> EvaluateResult:
    per_class = {label: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 5} for label in LABELS}
    return EvaluateResult(
        model_uri=model_uri,
        test_uri="s3://ftpipe/runs/r1/clean_data/test.parquet",
        task="text_classification",
        labels=LABELS,
        primary_metric="f1_macro",
        metrics={"accuracy": 0.9, "f1_macro": 0.9, "n_examples": 10, "per_class": per_class},
        confusion_matrix=[[5, 0], [1, 4]],
        production=None,
        gate_metric="f1_macro",
        gate_passed=passed,
        reasons=["passed: accuracy 0.9000 >= min_accuracy 0.0000"]
        + ([] if passed else ["failed: f1_macro 0.9000 < min_f1_macro 0.9500"]),
        report_html_uri="s3://ftpipe/runs/r1/evaluate/report.html",
        report_markdown_uri="s3://ftpipe/runs/r1/evaluate/report.md",
        report_json_uri="s3://ftpipe/runs/r1/evaluate/report.json",
        predictions_uri="s3://ftpipe/runs/r1/evaluate/predictions.parquet",
    )


LINEAGE = {
    "data_fingerprint": "fp-1234",
    "data_uris": {"test": "s3://ftpipe/runs/r1/clean_data/test.parquet"},
    "base_model": "tiny",
    "base_model_source": "/models/tiny",
    "cleaning": {"rows_train": 80, "rejected_empty": 2},
}


def test_registers_a_version_with_metadata_card_and_alias(tmp_path, tiny_bert_dir, trained):
    config = make_config(tmp_path, tiny_bert_dir)
    result = register_model.run(config, trained, make_evaluation(trained), {**LINEAGE}, "run-1")

    assert (result.model_name, result.version, result.aliases_set) == ("spam-filter", 1, ["staging"])
    registry = ModelRegistry(Storage(), config.registry.uri)
    assert registry.resolve_alias("spam-filter", "staging").version == 1
    assert registry.get_alias("spam-filter", "staging").history[0].note == "run run-1"
    assert result.version_uri.endswith("spam-filter/versions/000001.json")

    metadata = Storage().read_json(result.metadata_uri)
    assert metadata["metrics"]["f1_macro"] == 0.9
    assert metadata["gate"]["passed"] is True and metadata["gate"]["production"] is None
    assert metadata["data"]["fingerprint"] == "fp-1234"
    assert metadata["data"]["uris"]["source"] == "s3://data/sms.csv"  # from the config
    assert metadata["data"]["labels"] == LABELS
    assert metadata["cleaning"] == {"rows_train": 80, "rejected_empty": 2}
    assert metadata["base_model"] == {"name": "tiny", "source": "/models/tiny", "license": None, "parameters": None}
    assert metadata["config"] == config.model_dump(mode="json")
    assert metadata["run_id"] == "run-1" and metadata["ftpipe_version"] == __version__
    assert metadata["registered_at"].endswith("+00:00")
    assert metadata["hyperparameters"]["learning_rate"] == config.training.learning_rate
    assert registry.get_version("spam-filter", 1).metadata == metadata

    card = Storage().read_text(result.model_card_uri)
    assert "fp-1234" in card and "run-1" in card and "| `rejected_empty` | 2 |" in card

    from split_files import load_classifier

    loaded = load_classifier(str(registry.download("spam-filter", 1, tmp_path / "out")))
    assert loaded.config.id2label == {0: "ham", 1: "spam"}


def test_licence_comes_from_the_base_model(tmp_path, tiny_bert_dir, trained):
    config = make_config(tmp_path, tiny_bert_dir)
    lineage = {**LINEAGE, "base_model_source": tiny_bert_dir}  # its README says apache-2.0
    result = register_model.run(config, trained, make_evaluation(trained), lineage, "run-1")
    front = yaml.safe_load(Storage().read_text(result.model_card_uri).split("---\n", 2)[1])
    assert front["license"] == "apache-2.0"


def test_each_run_adds_a_version_and_moves_the_alias_forward(tmp_path, tiny_bert_dir, trained):
    config = make_config(tmp_path, tiny_bert_dir, alias_on_register="candidate")
    first = register_model.run(config, trained, make_evaluation(trained), LINEAGE, "run-1")
    second = register_model.run(config, trained, make_evaluation(trained), LINEAGE, "run-2")
    assert (first.version, second.version) == (1, 2)
    assert first.model_uri != second.model_uri
    registry = ModelRegistry(Storage(), config.registry.uri)
    assert registry.list_aliases("spam-filter") == {"candidate": 2}

    quiet = make_config(tmp_path, tiny_bert_dir, alias_on_register=None)
    third = register_model.run(quiet, trained, make_evaluation(trained), LINEAGE, "run-3")
    assert third.aliases_set == []
    assert registry.list_aliases("spam-filter") == {"candidate": 2}


def test_a_retry_after_the_commit_registers_nothing_twice(tmp_path, tiny_bert_dir, trained):
    config = make_config(tmp_path, tiny_bert_dir)
    first = register_model.run(config, trained, make_evaluation(trained), LINEAGE, "run-1")
    retried = register_model.run(config, trained, make_evaluation(trained), LINEAGE, "run-1")
    assert retried.version == first.version == 1 and retried.model_uri == first.model_uri
    assert [v.version for v in ModelRegistry(Storage(), config.registry.uri).list_versions("spam-filter")] == [1]


def test_the_alias_never_moves_back_to_an_older_version(tmp_path, tiny_bert_dir, trained):
    config = make_config(tmp_path, tiny_bert_dir)

    class RacingRegistry(ModelRegistry):
        def register(self, name, *args, **kwargs):
            mine = super().register(name, *args, **kwargs)
            newer = super().register(name, *args)  # a concurrent run commits and promotes a newer version
            self.set_alias(name, "staging", newer.version)
            return mine

    registry = RacingRegistry(Storage(), config.registry.uri)
    result = register_model.run(config, trained, make_evaluation(trained), LINEAGE, "run-1", registry=registry)
    assert result.version == 1 and result.aliases_set == []
    assert registry.resolve_alias("spam-filter", "staging").version == 2


def test_refuses_a_failed_gate_or_another_model(tmp_path, tiny_bert_dir, trained):
    config = make_config(tmp_path, tiny_bert_dir)
    with pytest.raises(RegistryError, match=r"gate failed.*failed: f1_macro 0.9000 < min_f1_macro 0.9500"):
        register_model.run(config, trained, make_evaluation(trained, passed=False), LINEAGE, "run-1")
    with pytest.raises(RegistryError, match="the evaluation scored /elsewhere"):
        register_model.run(config, trained, make_evaluation("/elsewhere"), LINEAGE, "run-1")
    with pytest.raises(ValueError, match="lineage lacks data_fingerprint"):
        register_model.run(config, trained, make_evaluation(trained), {"base_model": "x"}, "run-1")
    assert ModelRegistry(Storage(), config.registry.uri).list_models() == []


def _cleaned() -> CleanDataResult:
    return CleanDataResult(
        output_uri="s3://r/clean",
        train_uri="s3://r/train.parquet",
        validation_uri="s3://r/validation.parquet",
        test_uri="s3://r/test.parquet",
        quarantine_uri="s3://r/quarantine.parquet",
        report_json_uri="s3://r/report.json",
        report_markdown_uri="s3://r/report.md",
        report_html_uri="s3://r/report.html",
        fingerprint="fp",
        labels=LABELS,
        counts={"train": 80, "test": 10},
        rejected={"empty_text": 2},
    )


def _selection() -> SelectModelResult:
    selected = CandidateScore(
        name="minilm",
        source="/m",
        license="mit",
        num_parameters=7,
        probe_metric="f1_macro",
        probe_value=0.9,
        probe_details={"f1_macro": 0.9, "accuracy": 0.9},
        score=0.88,
        probe_seconds=1.0,
    )
    return SelectModelResult(
        selected=selected,
        ranking=[selected],
        skipped=[],
        report_markdown_uri="m",
        report_html_uri="h",
        report_json_uri="j",
    )


def _finetuned() -> FinetuneResult:
    return FinetuneResult(
        model_uri="s3://r/model",
        base_model_name="minilm",
        base_model_source="/m",
        labels=LABELS,
        num_parameters=9,
        best_metric_name="f1_macro",
        best_metric_value=0.8,
        epochs_trained=2.0,
        global_steps=20,
        train_seconds=3.0,
        train_examples_per_second=50.0,
        stopped_early=False,
        resumed_from_checkpoint=None,
        notes=[],
        log_uri="l",
        report_html_uri="h",
        report_markdown_uri="m",
    )


def test_lineage_of_the_earlier_steps_results():
    cleaned, selection, trained = _cleaned(), _selection(), _finetuned()
    lineage = register_model.lineage_of(cleaned, selection, trained)
    assert lineage["data_fingerprint"] == "fp"
    assert lineage["data_uris"]["test"] == "s3://r/test.parquet" and lineage["data_uris"]["cleaned"] == "s3://r/clean"
    assert lineage["cleaning"] == {"rows_train": 80, "rows_test": 10, "rejected_empty_text": 2}
    assert (lineage["base_model"], lineage["base_model_source"], lineage["base_model_license"]) == (
        "minilm",
        "/m",
        "mit",
    )
    assert lineage["base_model_parameters"] == 9  # with the new head, as trained
    assert lineage["training"]["best_metric_value"] == 0.8 and lineage["training"]["global_steps"] == 20
    assert lineage["labels"] == LABELS


def test_the_entry_and_the_card_carry_the_runs_cost_line(tmp_path, tiny_bert_dir, trained, capsys):
    """Each step's wall seconds (as ftpipe.task.run_step records them), the GPUs and tokens of the fine-tune, priced
    from config.cost: in metadata.json (so in `ftpipe registry show`), the card's Cost section and nowhere made up."""
    import json

    from ftpipe.cli import main

    config = parse_config(
        {
            "data": {"uri": "s3://data/sms.csv"},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "spam-filter"},
            "cost": {"accelerator_hour_price": {"NVIDIA H200": 5.0}, "currency": "EUR"},
        }
    )
    cleaned = _cleaned().model_copy(update={"wall_seconds": 2.5})
    selection = _selection().model_copy(update={"wall_seconds": 11.0})
    finetuned = _finetuned().model_copy(
        update={"wall_seconds": 720.0, "accelerators": 2, "accelerator": "NVIDIA H200", "tokens_seen": 48_000}
    )
    lineage = register_model.lineage_of(cleaned, selection, finetuned, {"fingerprint_data": 0.75, "compare_data": 1.25})
    evaluation = make_evaluation(trained).model_copy(update={"wall_seconds": 6.0})
    result = register_model.run(config, trained, evaluation, lineage, "run-1")

    entry = Storage().read_json(result.metadata_uri)["cost"]
    assert entry["step_seconds"] == {
        "fingerprint_data": 0.75,
        "clean_data": 2.5,
        "compare_data": 1.25,
        "select_model": 11.0,
        "finetune": 720.0,
        "evaluate": 6.0,
    }
    assert entry["accelerator_hours"] == 0.4 and entry["tokens_seen"] == 48_000  # 720 s on 2 GPUs
    assert entry["estimated_cost"] == 2.0 and entry["currency"] == "EUR" and entry["priced_as"] == "NVIDIA H200"
    line = (
        "0.4 accelerator-hours requested (2 x NVIDIA H200, 720.0 s of fine-tuning); 48,000 training tokens seen; "
        "estimated EUR 2.00 at 5 per accelerator-hour (NVIDIA H200); wall time per step: fingerprint_data 0.8 s, "
        "clean_data 2.5 s, compare_data 1.2 s, select_model 11.0 s, finetune 720.0 s, evaluate 6.0 s."
    )
    assert entry["line"] == line and result.cost_line == line
    assert f"## Cost\n\n{line}\n" in Storage().read_text(result.model_card_uri)

    capsys.readouterr()
    assert main(["registry", "show", "spam-filter", "--registry-uri", config.registry.uri]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["cost"] == entry

    # without a price for the GPU: the figures, and no estimate
    unpriced = config.model_copy(update={"cost": config.cost.model_copy(update={"accelerator_hour_price": {}})})
    again = register_model.run(unpriced, trained, evaluation, lineage, "run-2")
    entry = Storage().read_json(again.metadata_uri)["cost"]
    assert entry["estimated_cost"] is None and entry["accelerator_hours"] == 0.4
    assert "; no price set for NVIDIA H200 in cost.accelerator_hour_price;" in entry["line"]
