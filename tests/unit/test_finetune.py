"""finetune on a tiny random BERT: saved model, logs and reports, early stopping, resume from mirrored checkpoints."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from split_files import LABELS, write_split
from transformers import TrainerCallback

from ftpipe.config import parse_config
from ftpipe.errors import DataError, Interrupted, ModelError
from ftpipe.results import CandidateScore
from ftpipe.steps import finetune
from ftpipe.training.checkpoints import MIRROR_MARKER

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def splits(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(
        train=write_split(tmp_path / "train.parquet", 48, seed=1),
        validation=write_split(tmp_path / "validation.parquet", 16, seed=2),
        output=str(tmp_path / "out"),
    )


def make_config(source: str, **training):
    settings = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0, **training}
    return parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "test"},
            "candidates": [{"name": "tiny", "source": source}],
            "training": settings,
        }
    )


def test_trains_and_saves_a_model_that_reloads_and_predicts(tiny_bert_dir, splits):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = make_config(tiny_bert_dir, dropout=0.25, label_smoothing=0.1)
    selected = CandidateScore(  # as select_model hands it over
        name="tiny",
        source=tiny_bert_dir,
        license="apache-2.0",
        num_parameters=1,
        probe_metric="f1_macro",
        probe_value=0.5,
        probe_details={"f1_macro": 0.5, "accuracy": 0.5},
        score=0.4,
        probe_seconds=0.1,
    )
    result = finetune.run(config, splits.train, splits.validation, LABELS, selected, splits.output)

    assert result.base_model_name == "tiny" and result.base_model_source == tiny_bert_dir
    assert result.labels == LABELS
    assert result.global_steps == 12 and result.epochs_trained == 2.0  # 48 rows / batch 8 = 6 steps per epoch
    assert not result.stopped_early and result.resumed_from_checkpoint is None
    assert result.best_metric_name == "f1_macro" and 0.0 <= result.best_metric_value <= 1.0
    assert result.num_parameters > 0 and result.train_seconds > 0 and result.train_examples_per_second > 0

    model_dir = Path(result.model_uri)
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin"))
    assert "license: apache-2.0" in (model_dir / "README.md").read_text()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert model.config.label2id == {"ham": 0, "spam": 1}
    assert model.config.hidden_dropout_prob == 0.25 and model.config.attention_probs_dropout_prob == 0.25
    with torch.inference_mode():
        logits = model(**tokenizer(["win a free prize", "see you at lunch"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2)
    assert {model.config.id2label[int(i)] for i in logits.argmax(-1)} <= set(LABELS)

    log = json.loads(Path(result.log_uri).read_text())
    assert any("loss" in entry for entry in log)
    evaluations = [entry for entry in log if "eval_f1_macro" in entry]
    assert [entry["epoch"] for entry in evaluations] == [1.0, 2.0]
    assert all("eval_accuracy" in entry for entry in evaluations)
    html = Path(result.report_html_uri).read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "best validation f1_macro" in Path(result.report_markdown_uri).read_text()
    assert not (Path(splits.output) / "checkpoints").exists()  # the mirror is removed after success
    assert finetune.FinetuneResult.from_json(result.to_json()) == result
    # max_length was left unset: fitted to the texts, saved with the model, and shown with its reason
    length_line = next(line for line in result.recipe if line.startswith("max_length = "))
    assert "of the training texts fit in" in length_line
    assert tokenizer.model_max_length == int(length_line.split()[2]) < 512
    assert "epochs = 2 (set in the config)" in result.recipe
    assert "truncation = head (every training text fits the model's window of 512 tokens)" in result.recipe
    assert model.config.ftpipe_truncation == "head"
    assert "## Recipe" in Path(result.report_markdown_uri).read_text()
    # temperature scaling (training.calibrate, on by default) fitted on validation, saved, and in the report
    temperature = model.config.ftpipe_temperature
    assert 0.1 <= temperature <= 10 and temperature != 1.0
    (note,) = [line for line in result.notes if line.startswith("temperature scaling")]
    assert f"T = {temperature:.4f}" in note and "fitted on 16 validation rows" in note
    assert note in Path(result.report_markdown_uri).read_text()


def test_head_tail_truncation_is_saved_with_the_model(tiny_bert_dir, splits):
    from transformers import AutoConfig

    config = make_config(tiny_bert_dir, epochs=1, max_length=8, truncation="head_tail")
    result = finetune.run(config, splits.train, splits.validation, LABELS, "tiny", splits.output)
    assert "truncation = head_tail (set in the config)" in result.recipe
    assert AutoConfig.from_pretrained(result.model_uri).ftpipe_truncation == "head_tail"


def test_early_stopping_ends_training_when_validation_stops_improving(tiny_bert_dir, splits):
    # A vanishing learning rate leaves the predictions, hence macro-F1, identical after every epoch.
    config = make_config(tiny_bert_dir, epochs=6, learning_rate=1e-12, early_stopping_patience=1)
    result = finetune.run(config, splits.train, splits.validation, LABELS, "tiny", splits.output)

    assert result.stopped_early
    assert result.epochs_trained == 2.0 and result.global_steps == 12
    evaluations = [entry for entry in json.loads(Path(result.log_uri).read_text()) if "eval_loss" in entry]
    assert len(evaluations) == 2


class Preempted(Exception):
    """Stands in for the pod being killed."""


class PreemptAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise Preempted(f"preempted after saving step {state.global_step}")


class FirstStep(TrainerCallback):
    def __init__(self) -> None:
        self.first_step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = state.global_step


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_resumes_from_mirrored_checkpoints_after_preemption(adapter, tiny_bert_dir, splits, tmp_path):
    config = make_config(tiny_bert_dir, epochs=2, adapter=adapter)
    with pytest.raises(Preempted):
        finetune.run(
            config, splits.train, splits.validation, LABELS, "tiny", splits.output, callbacks=[PreemptAfterSave(6)]
        )
    mirror = Path(splits.output) / "checkpoints"
    assert (mirror / "checkpoint-6" / MIRROR_MARKER).is_file()
    assert (mirror / "checkpoint-6" / "optimizer.pt").is_file()
    if adapter == "lora":  # the checkpoint holds the adapter and the head, not the frozen base
        assert (mirror / "checkpoint-6" / "adapter_model.safetensors").is_file()
    # A later checkpoint whose upload was cut off (no completion marker) must be ignored.
    (mirror / "checkpoint-12").mkdir()
    (mirror / "checkpoint-12" / "config.json").write_text("{}")

    first = FirstStep()
    result = finetune.run(
        config, splits.train, splits.validation, LABELS, "tiny", splits.output, work_dir=tmp_path, callbacks=[first]
    )

    assert result.resumed_from_checkpoint == str(mirror / "checkpoint-6")
    assert first.first_step == 7  # went on after the mirrored step, did not start over
    assert result.global_steps == 12 and result.epochs_trained == 2.0
    log = json.loads(Path(result.log_uri).read_text())
    assert [entry["epoch"] for entry in log if "eval_loss" in entry] == [1.0, 2.0]  # history kept across pods
    assert not list(tmp_path.glob("ftpipe-finetune-*"))  # the local work dir is removed
    assert not mirror.exists()
    assert result.adapter == adapter and not (Path(result.model_uri) / "adapter_config.json").exists()
    # the tokens seen come back with the checkpoint's trainer state: both epochs, not only the steps after it
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.model_uri)
    per_epoch = sum(map(len, tokenizer(pd.read_parquet(splits.train)["text"].tolist(), truncation=True)["input_ids"]))
    assert result.tokens_seen == 2 * per_epoch


def test_resume_after_early_stopping_had_decided_does_not_train_on(tiny_bert_dir, splits):
    config = make_config(tiny_bert_dir, epochs=6, learning_rate=1e-12, early_stopping_patience=1)
    with pytest.raises(Preempted):  # early stopping decides at epoch 2; the pod dies right after the save
        finetune.run(
            config, splits.train, splits.validation, LABELS, "tiny", splits.output, callbacks=[PreemptAfterSave(12)]
        )
    first = FirstStep()
    result = finetune.run(config, splits.train, splits.validation, LABELS, "tiny", splits.output, callbacks=[first])

    assert result.resumed_from_checkpoint is not None and first.first_step is None  # not a single step more
    assert result.stopped_early and result.global_steps == 12 and result.epochs_trained == 2.0
    assert (Path(result.model_uri) / "model.safetensors").is_file()


class SigtermAt(TrainerCallback):
    """Sends this process SIGTERM at the end of one step, as the kubelet does when a node drains."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_and_mirrors_a_checkpoint_then_the_retry_trains_on_from_it(tiny_bert_dir, splits):
    config = make_config(tiny_bert_dir, epochs=2, checkpoint_every_steps=None)  # saves at epochs only (6, 12)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM .* at step 4 of 12"):
        finetune.run(config, splits.train, splits.validation, LABELS, "tiny", splits.output, callbacks=[SigtermAt(3)])
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the process's own again
    mirror = Path(splits.output) / "checkpoints"
    assert sorted(path.name for path in mirror.glob("checkpoint-*")) == ["checkpoint-4"]  # the next step's end
    assert (mirror / "checkpoint-4" / MIRROR_MARKER).is_file() and (mirror / "checkpoint-4" / "optimizer.pt").is_file()
    assert not (Path(splits.output) / "model").exists()  # an interrupted run registers nothing

    first = FirstStep()
    result = finetune.run(config, splits.train, splits.validation, LABELS, "tiny", splits.output, callbacks=[first])
    assert result.resumed_from_checkpoint == str(mirror / "checkpoint-4") and first.first_step == 5
    assert result.global_steps == 12 and result.steps_redone == 0 and not result.stopped_early


def test_periodic_checkpoints_come_every_n_steps_or_m_minutes(tiny_bert_dir, splits, monkeypatch):
    from transformers import TrainerControl, TrainerState

    from ftpipe.training import callbacks

    by_steps = callbacks.PeriodicCheckpoint(every_steps=5, every_minutes=None)
    state, control = TrainerState(), TrainerControl()
    by_steps.on_train_begin(None, state, control)
    due = []
    for step in range(1, 13):
        state.global_step, control.should_save = step, step == 6  # an epoch's own save at step 6 restarts the count
        by_steps.on_step_end(None, state, control)
        if control.should_save:
            due.append(step)
            by_steps.on_save(None, state, control)
    assert due == [5, 6, 11]

    clock = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    by_time = callbacks.PeriodicCheckpoint(every_steps=None, every_minutes=2)
    state, control = TrainerState(), TrainerControl()
    by_time.on_train_begin(None, state, control)
    due = []
    for step in range(1, 9):
        clock[0] += 30  # 30 s a step: due at 4 steps (2 minutes)
        state.global_step, control.should_save = step, False
        by_time.on_step_end(None, state, control)
        if control.should_save:
            due.append(step)
            by_time.on_save(None, state, control)
    assert due == [4, 8]


def test_no_train_rows_is_a_data_error(tiny_bert_dir, tmp_path, splits):
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str), "label_id": []}).to_parquet(
        empty
    )
    with pytest.raises(DataError, match="train split has no rows"):
        finetune.run(make_config(tiny_bert_dir), str(empty), splits.validation, LABELS, "tiny", splits.output)


def test_label_count_mismatch_is_a_data_error(tiny_bert_dir, tmp_path, splits):
    three = tmp_path / "three.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["ham", "spam", "other"], "label_id": [0, 1, 2]}).to_parquet(three)
    with pytest.raises(DataError, match=r"train split has label\(s\) \['other'\] outside the label set"):
        finetune.run(make_config(tiny_bert_dir), str(three), splits.validation, LABELS, "tiny", splits.output)


def test_a_model_that_cannot_load_is_a_model_error(tmp_path, splits, minilm_path):
    from transformers import AutoTokenizer

    broken = tmp_path / "broken"
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(broken)  # a tokenizer but no weights, no config
    with pytest.raises(ModelError, match="cannot load model"):
        finetune.run(make_config(str(broken)), splits.train, splits.validation, LABELS, "tiny", splits.output)
    with pytest.raises(ModelError, match="no candidate named 'other'"):
        finetune.run(make_config(str(broken)), splits.train, splits.validation, LABELS, "other", splits.output)


def test_precision_is_mixed_only_on_cuda():
    assert finetune.precision_flags(cuda_available=False, bf16_supported=True) == {"bf16": False, "fp16": False}
    assert finetune.precision_flags(cuda_available=True, bf16_supported=True) == {"bf16": True, "fp16": False}
    assert finetune.precision_flags(cuda_available=True, bf16_supported=False) == {"bf16": False, "fp16": True}


def test_dropout_override_covers_the_model_family():
    from transformers import BertConfig, DistilBertConfig

    assert finetune.dropout_overrides(BertConfig(), None) == {}
    bert = finetune.dropout_overrides(BertConfig(), 0.3)
    assert bert == {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3}  # classifier_dropout is None
    distil = finetune.dropout_overrides(DistilBertConfig(), 0.3)
    assert {"dropout", "attention_dropout", "seq_classif_dropout"} <= set(distil)


def test_train_fraction_then_max_train_rows_cut_the_train_split():
    from ftpipe.config import FinetuneConfig

    assert finetune.train_rows_used(FinetuneConfig(), 1000) == 1000
    assert finetune.train_rows_used(FinetuneConfig(train_fraction=0.25), 1000) == 250
    assert finetune.train_rows_used(FinetuneConfig(train_fraction=0.25, max_train_rows=100), 1000) == 100
    assert finetune.train_rows_used(FinetuneConfig(train_fraction=0.5, max_train_rows=900), 1000) == 500
    assert finetune.train_rows_used(FinetuneConfig(train_fraction=1.0), 1000) == 1000


def test_an_adapter_saved_alone_merges_back_onto_its_exact_base(tiny_bert_dir, splits, tmp_path, capsys):
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftpipe.cli import main
    from ftpipe.registry import ModelRegistry
    from ftpipe.storage import Storage
    from ftpipe.training import adapters

    base = tmp_path / "base"  # a copy of its own, so that the test can change its weights afterwards
    shutil.copytree(tiny_bert_dir, base)
    config = make_config(str(base), epochs=1, adapter="lora", adapter_save="adapter")
    result = finetune.run(config, splits.train, splits.validation, LABELS, "tiny", splits.output)

    model_dir = Path(result.model_uri)
    assert result.saved_as == "adapter" and not (model_dir / "model.safetensors").exists()
    assert result.adapter_bytes == sum(p.stat().st_size for p in model_dir.glob("adapter_*"))
    reference = json.loads((model_dir / adapters.BASE_REFERENCE).read_text())
    assert reference == {"source": str(base), "weights_sha256": adapters.weights_digest(base)}
    assert "saved alone" in Path(result.report_markdown_uri).read_text()

    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    registry.register("adapted", model_dir, {"task": "text_classification"}, "card")
    exported = tmp_path / "exported"
    assert (
        main(
            [
                "registry",
                "export",
                "adapted",
                "1",
                "--merged",
                str(exported),
                "--registry-uri",
                str(tmp_path / "registry"),
            ]
        )
        == 0
    )
    assert "its adapter merged into its base" in capsys.readouterr().out
    assert (exported / "model.safetensors").is_file() and not (exported / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(exported)
    batch = tokenizer(["win a free prize", "see you at lunch"], padding=True, return_tensors="pt")
    plain = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    assert plain.config.id2label == {0: "ham", 1: "spam"}
    unmerged = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base, config=plain.config), str(model_dir)
    ).eval()
    with torch.inference_mode():
        assert torch.allclose(plain(**batch).logits, unmerged(**batch).logits, atol=1e-5)

    # The base changed since training: the adapter no longer fits it, and nothing is written.
    weights = AutoModelForSequenceClassification.from_pretrained(base)
    with torch.no_grad():
        next(weights.parameters()).add_(0.01)
    weights.save_pretrained(base)
    again = tmp_path / "again"
    assert (
        main(
            ["registry", "export", "adapted", "1", "--merged", str(again), "--registry-uri", str(tmp_path / "registry")]
        )
        != 0
    )
    assert "is not the one this adapter was trained on" in capsys.readouterr().err
    assert not again.exists()


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_gradient_checkpointing_trains_the_same_model(adapter, tiny_bert_dir, splits, tmp_path):
    class SeesCheckpointing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            plain = model.get_base_model() if hasattr(model, "get_base_model") else model
            seen.append(plain.is_gradient_checkpointing)

    losses, seen = {}, []
    for checkpointing in (False, True):
        config = make_config(tiny_bert_dir, epochs=1, adapter=adapter, gradient_checkpointing=checkpointing)
        output = str(tmp_path / str(checkpointing))
        result = finetune.run(
            config, splits.train, splits.validation, LABELS, "tiny", output, callbacks=[SeesCheckpointing()]
        )
        log = json.loads(Path(result.log_uri).read_text())
        losses[checkpointing] = [entry["loss"] for entry in log if "loss" in entry]
    assert seen == [False, True]
    assert len(losses[True]) > 1 and losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_flash_attention_where_it_cannot_run_is_one_model_error(tiny_bert_dir, splits):
    config = make_config(tiny_bert_dir, attention="flash_attention_2")
    with pytest.raises(ModelError, match="(?i)flash"):
        finetune.run(config, splits.train, splits.validation, LABELS, "tiny", splits.output)


def test_distributed_settings_and_where_fsdp_cannot_run():
    from ftpipe.config import FinetuneConfig
    from ftpipe.errors import ConfigError

    assert finetune.distributed_settings(FinetuneConfig(), cuda=False, world_size=1, nodes=1) == {}
    two = finetune.distributed_settings(FinetuneConfig(), cuda=False, world_size=2, nodes=1)
    assert two["ddp_backend"] == "gloo" and not two["save_on_each_node"] and "fsdp" not in two
    assert two["average_tokens_across_devices"] is False  # one loss scale, whatever the number of processes
    assert finetune.distributed_settings(FinetuneConfig(), cuda=True, world_size=16, nodes=2)["save_on_each_node"]
    sharded = finetune.distributed_settings(FinetuneConfig(fsdp=True), cuda=True, world_size=2, nodes=1)
    assert sharded["fsdp"] == "full_shard auto_wrap"
    for cuda, world_size in ((False, 2), (True, 1)):
        with pytest.raises(ConfigError, match="training.fsdp"):
            finetune.distributed_settings(FinetuneConfig(fsdp=True), cuda=cuda, world_size=world_size, nodes=1)
