"""seq2seq on tiny models: a BERT warm-started as bert2bert (MiniLM's real tokenizer), and a native tiny T5."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.errors import ModelError
from ftpipe.steps import clean_data, finetune, select_model
from ftpipe.tasks import get_task
from ftpipe.tasks.generation import NO_LABEL
from ftpipe.training import adapters

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]


def _config(tmp_path: Path, model_dir: str, task: dict | None = None, training: dict | None = None):
    return parse_config(
        {
            "task": {"type": "seq2seq", "generation": {"max_new_tokens": 6}, **(task or {})},
            "data": {"uri": str(tmp_path / "data.jsonl")},
            "candidates": [{"name": "tiny", "source": model_dir}],
            "selection": {"probe_train_rows": 16, "probe_validation_rows": 8},
            "training": {"epochs": 1, "batch_size": 8, "max_length": 16, **(training or {})},
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "s2s"},
            "storage": {"artifact_root": str(tmp_path / "runs")},
        }
    )


def _echo_rows(n: int = 40) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 3))
        rows.append({"text": f"{words} {i}", "label": words})
    return rows


def _cleaned(tmp_path: Path, config):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _echo_rows()))
    return clean_data.run(config, str(tmp_path / "clean"))


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory, tiny_bert_dir) -> str:
    """A 2-layer, 32-wide T5 (random weights) over MiniLM's vocabulary: the native encoder-decoder path."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _tokenizer(tiny_bert_dir)
    directory = tmp_path_factory.mktemp("tiny-t5")
    config = T5Config(
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_sources_and_labels_of_a_warm_started_bert(tiny_bert_dir, tmp_path):
    task = get_task(_config(tmp_path, tiny_bert_dir, task={"source_prefix": "echo: "}))
    model = task.load_model(tiny_bert_dir)
    assert type(model).__name__ == "EncoderDecoderModel"
    tokenizer = _tokenizer(tiny_bert_dir)
    assert model.config.decoder_start_token_id == tokenizer.cls_token_id
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.sep_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.max_new_tokens == 6 and model.generation_config.do_sample is False

    frame = pd.DataFrame(
        {
            "text": ["red cat", "one two three four five six seven"],
            "completion": ["red", "a b c d e f g h i j k l m n o p q r"],
        }
    )
    dataset = task.dataset(frame, tokenizer, 8, model.config)
    first = dataset[0]
    assert tokenizer.decode(first["input_ids"]) == "[CLS] echo : red cat [SEP]"
    assert first["labels"] == [*tokenizer("red", add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
    second = dataset[1]
    assert len(second["input_ids"]) == len(second["labels"]) == 8  # both truncated to max_length ...
    assert second["input_ids"][-1] == second["labels"][-1] == tokenizer.sep_token_id  # ... their end kept
    assert task.token_lengths(tokenizer, frame) == [6, 20]  # the longer side, untruncated (target with [CLS])

    batch = task.collator(tokenizer, None, model=model)([first, second])
    assert batch["decoder_input_ids"][0, 0] == tokenizer.cls_token_id  # the labels shifted behind the start
    assert batch["labels"][0, len(first["labels"]) :].eq(NO_LABEL).all()
    assert model(**batch).loss > 0


def test_bert2bert_is_probed_trained_and_saved_as_a_plain_seq2seq_model(tiny_bert_dir, tmp_path, one_torch_thread):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    config = _config(tmp_path, tiny_bert_dir, training={"dropout": 0.0})
    cleaned = _cleaned(tmp_path, config)
    selection = select_model.run(
        config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, str(tmp_path / "sel")
    )
    assert not selection.skipped and selection.selected.probe_metric == "negative_loss"
    assert selection.selected.probe_value < 0  # zero-shot: -loss of a random decoder head, about -log(vocabulary)
    trained = finetune.run(
        config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, selection.selected, str(tmp_path / "ft")
    )
    assert trained.best_metric_name == "loss" and trained.best_metric_value > 0

    model_dir = trained.model_uri
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    assert type(model).__name__ == "EncoderDecoderModel"
    assert model.config.encoder.hidden_dropout_prob == 0.0 == model.config.decoder.hidden_dropout_prob
    tokenizer = _tokenizer(model_dir)
    # WordPiece decoding rejoins contractions ("i ' m" otherwise), as saved with the tokenizer.
    assert tokenizer.decode(tokenizer("i'm here, aren't you?")["input_ids"], skip_special_tokens=True) == (
        "i'm here, aren't you?"
    )
    inputs = tokenizer(["red cat 3"], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs)  # the saved generation_config alone: start token, end, max_new_tokens
    assert output[0, 0] == tokenizer.cls_token_id and 1 < output.shape[1] <= 1 + 6

    task = get_task(config)
    # The saved weights are the best evaluation's, and the per-row NLL scores what the model's own loss does.
    nll, tokens = task._completion_nll(model, tokenizer, pd.read_parquet(cleaned.validation_uri), 16)
    assert nll.sum() / tokens.sum() == pytest.approx(trained.best_metric_value, abs=1e-4)
    test = pd.read_parquet(cleaned.test_uri)
    predicted = task.predict(model_dir, test)
    assert list(predicted.columns) == ["predicted", "nll", "completion_tokens"] and len(predicted) == len(test)
    assert (predicted["completion_tokens"] > 0).all() and (predicted["nll"] > 0).all()


def test_lora_adapts_every_linear_layer_of_bert2bert_by_default(tiny_bert_dir, tmp_path, one_torch_thread):
    from transformers import AutoModelForSeq2SeqLM

    config = _config(tmp_path, tiny_bert_dir, training={"adapter": "lora", "lora_rank": 4})
    cleaned = _cleaned(tmp_path, config)
    args = (cleaned.train_uri, cleaned.validation_uri, cleaned.labels, "tiny", str(tmp_path / "ft"))
    trained = finetune.run(config, *args)
    assert trained.adapter == "lora" and 0 < trained.trainable_parameters < trained.num_parameters
    model_dir = Path(trained.model_uri)
    assert not (model_dir / "adapter_config.json").exists()  # merged: a plain model directory
    assert AutoModelForSeq2SeqLM.from_pretrained(model_dir).config.is_encoder_decoder

    # peft has no default for the composite encoder-decoder: all-linear reaches the new cross-attention too.
    task = get_task(config)
    adapted = adapters.wrap(task.load_model(tiny_bert_dir), config.training, task)
    adapted_modules = {name for name, _ in adapted.named_modules() if name.endswith("lora_A")}
    assert any("crossattention" in name for name in adapted_modules)
    assert any(".encoder." in name for name in adapted_modules) and any(".decoder." in name for name in adapted_modules)


def test_a_decoder_only_model_is_refused_in_one_line(tiny_llama_dir, tmp_path):
    task = get_task(_config(tmp_path, tiny_llama_dir))
    with pytest.raises(ModelError, match="llama is a decoder-only model.*causal_lm_sft") as raised:
        task.load_model(tiny_llama_dir)
    assert "\n" not in str(raised.value)
    with pytest.raises(ModelError, match="decoder-only"):
        task.load_probe_model(tiny_llama_dir)


def test_a_native_t5_trains_and_generates(tiny_t5_dir, tmp_path, one_torch_thread):
    from transformers import AutoModelForSeq2SeqLM

    config = _config(tmp_path, tiny_t5_dir, task={"source_prefix": "echo: "})
    cleaned = _cleaned(tmp_path, config)
    trained = finetune.run(
        config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, "tiny", str(tmp_path / "ft")
    )
    model = AutoModelForSeq2SeqLM.from_pretrained(trained.model_uri)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert model.generation_config.decoder_start_token_id == 0 and model.generation_config.max_new_tokens == 6
    predicted = get_task(config).predict(trained.model_uri, pd.read_parquet(cleaned.test_uri))
    assert predicted["predicted"].map(type).eq(str).all() and (predicted["nll"] > 0).all()
