"""causal_lm_sft on a tiny Llama with SmolLM2's real tokenizer: formatting, masking, packing, cleaning, adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ftpipe.config import parse_config
from ftpipe.errors import ConfigError, DataError
from ftpipe.steps import clean_data, finetune
from ftpipe.tasks import get_task
from ftpipe.tasks.causal_lm_sft import fallback_chat_template, packing_is_exact
from ftpipe.tasks.generation import NO_LABEL, generation_scores


def _config(tmp_path: Path, model_dir: str, task: dict | None = None, training: dict | None = None, data=None):
    return parse_config(
        {
            "task": {"type": "causal_lm_sft", **(task or {})},
            "data": {"uri": str(data or tmp_path / "data.jsonl")},
            "candidates": [{"name": "tiny", "source": model_dir}],
            "training": {"epochs": 1, "batch_size": 4, "max_length": 64, **(training or {})},
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "sft"},
            "storage": {"artifact_root": str(tmp_path / "runs")},
        }
    )


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _pairs(n: int = 6) -> pd.DataFrame:
    prompts = [f"Is message {i} spam? {'win cash now' if i % 2 else 'see you at lunch'}" for i in range(n)]
    return pd.DataFrame({"text": prompts, "completion": ["spam" if i % 2 else "ham" for i in range(n)]})


def test_the_loss_covers_the_reply_and_the_prompt_is_what_generation_starts_from(tiny_llama_dir, tmp_path):
    task = get_task(_config(tmp_path, tiny_llama_dir))
    tokenizer = _tokenizer(tiny_llama_dir)
    task.prepare_tokenizer(tokenizer)
    frame = _pairs(2)
    dataset = task.dataset(frame, tokenizer, 64, None)
    prompt = task.prompt_texts(tokenizer, frame["text"].tolist())[0]
    assert prompt.endswith("<|im_start|>assistant\n")  # SmolLM2's own (ChatML) template
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids, labels = dataset[0]["input_ids"], dataset[0]["labels"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [NO_LABEL] * len(prompt_ids)
    reply = tokenizer.decode(ids[len(prompt_ids) :])
    assert reply.startswith("ham<|im_end|>")  # the reply and the end of the assistant's turn are learnt
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]

    whole = get_task(_config(tmp_path, tiny_llama_dir, task={"completion_only_loss": False}))
    assert whole.dataset(frame, tokenizer, 64, None)[0]["labels"] == ids
    # Too long: the reply stays whole, the prompt keeps its head (the system turn) and tail (the assistant's cue).
    cut = task.dataset(frame, tokenizer, 16, None)[0]
    reply_length = len(ids) - len(prompt_ids)
    assert len(cut["input_ids"]) == 16 and cut["input_ids"][-reply_length:] == ids[-reply_length:]
    kept = 16 - reply_length
    assert cut["input_ids"][: kept // 2] == prompt_ids[: kept // 2]
    assert cut["input_ids"][kept // 2 : kept] == prompt_ids[len(prompt_ids) - (kept - kept // 2) :]
    assert cut["labels"][-reply_length:] == ids[-reply_length:]


def test_a_model_without_a_chat_template_gets_the_prompt_template(tiny_llama_dir, tmp_path):
    tokenizer = _tokenizer(tiny_llama_dir)
    tokenizer.chat_template = None
    task = get_task(_config(tmp_path, tiny_llama_dir, task={"prompt_template": "Q: {prompt}\nA:"}))
    task.prepare_tokenizer(tokenizer)
    chat = [{"role": "user", "content": "2+2?"}]
    assert tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == "<|im_start|>Q: 2+2?\nA:"
    reply = tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": " 4"}], tokenize=False)
    assert reply == "<|im_start|>Q: 2+2?\nA: 4<|im_end|>"
    # The template survives saving: the registered model formats prompts the same way.
    tokenizer.save_pretrained(tmp_path / "saved")
    assert _tokenizer(str(tmp_path / "saved")).chat_template == fallback_chat_template("Q: {prompt}\nA:")


def test_packing_keeps_examples_apart_and_gives_the_padded_loss(tiny_llama_dir, tmp_path):
    task = get_task(_config(tmp_path, tiny_llama_dir))
    tokenizer = _tokenizer(tiny_llama_dir)
    task.prepare_tokenizer(tokenizer)
    model = task.load_model(tiny_llama_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():  # sharper than its near-uniform random start, so that attending elsewhere shows
        for weight in model.parameters():
            weight.mul_(8)
    assert packing_is_exact(model)
    dataset = task.dataset(_pairs(6), tokenizer, 64, None)
    features = [dataset[i] for i in range(len(dataset))]
    packed = task.collator(tokenizer, None, model=model)(features)
    padded = task.collator(tokenizer, None, model=None)(features)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed  # one row, no padding at all
    assert padded["input_ids"].shape[0] == 6
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).unsqueeze(0)}
    with torch.inference_mode():
        packed_loss, padded_loss, leaky_loss = (model(**batch).loss for batch in (packed, padded, leaky))
    # The same tokens predicted from the same contexts: the mean loss over the completion tokens agrees (up to
    # float summation order), where attending across examples (positions not restarting) moves it far more.
    assert abs(packed_loss - padded_loss) < 1e-3 * abs(leaky_loss - padded_loss)


def test_cleaning_keeps_other_replies_to_a_prompt_and_drops_copies(tiny_llama_dir, tmp_path):
    rows = [{"text": f"Question {i}: what is {i} plus one?", "label": str(i + 1)} for i in range(40)]
    rows += [dict(rows[0]), {**rows[0], "label": "One more than zero."}, {"text": "empty", "label": "<p></p>"}]
    rows += [{"text": "none", "label": None}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cleaned = clean_data.run(_config(tmp_path, tiny_llama_dir), str(tmp_path / "clean"))
    assert cleaned.labels == ["completion"]
    assert cleaned.rejected["duplicate"] == 1 and cleaned.rejected["conflicting_labels"] == 0
    assert cleaned.rejected["empty_completion"] == 1 and cleaned.rejected["missing_completion"] == 1
    assert sum(cleaned.counts.values()) == 41
    train = pd.read_parquet(cleaned.train_uri)
    assert list(train.columns) == ["text", "completion"]


def test_conversations_train_on_their_last_reply_with_every_turn_cleaned(tiny_llama_dir, tmp_path):
    def chat(i: int) -> list[dict]:
        return [
            {"role": "system", "content": "You sort <b>messages</b> &amp; answer in one word."},
            {"role": "user", "content": f"Message {i}:  caf\u0065\u0301 at  noon?"},  # e + combining accent
            {"role": "assistant", "content": "Which message?"},
            {"role": "User", "content": f"Number {i}, is it spam?"},
            {"role": "assistant", "content": "spam" if i % 2 else "ham"},
        ]

    rows = [{"messages": chat(i)} for i in range(30)]
    rows += [
        {"messages": [{"role": "user", "content": "no reply"}]},
        {"messages": [{"role": "assistant", "content": "nobody asked"}]},
        {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]},
        {"messages": "{not json"},
        {"messages": None},
        {"messages": chat(0)},  # a copy of the whole conversation
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = _config(tmp_path, tiny_llama_dir, task={"messages_column": "messages", "system_prompt": "Be brief."})
    # The 30 conversations differ in one number only: near-copies by construction, kept here (not what is tested).
    cleaning = config.cleaning.model_copy(update={"near_duplicate_threshold": None})
    config = config.model_copy(update={"cleaning": cleaning})
    cleaned = clean_data.run(config, str(tmp_path / "clean"))
    assert cleaned.rejected["missing_text"] == 5 and cleaned.rejected["duplicate"] == 1
    assert sum(cleaned.counts.values()) == 30
    train = pd.read_parquet(cleaned.train_uri)
    assert set(train["completion"]) <= {"spam", "ham"}

    task = get_task(config)
    turns = json.loads(train["text"].iloc[0])
    assert [turn["role"] for turn in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"] == "You sort messages & answer in one word."  # markup gone, entity decoded
    assert "café at noon?" in turns[1]["content"]  # NFKC composed, spaces collapsed
    tokenizer = _tokenizer(tiny_llama_dir)
    task.prepare_tokenizer(tokenizer)
    prompt = task.prompt_texts(tokenizer, [train["text"].iloc[0]])[0]
    # The conversation's own system turn wins over task.system_prompt; the earlier reply is context, not loss.
    assert "Be brief." not in prompt and prompt.count("<|im_start|>assistant") == 2
    assert prompt.endswith("<|im_start|>assistant\n")
    assert task.prompt_shown(train["text"].iloc[0]).startswith("system: You sort messages")


def test_a_column_of_no_conversations_is_one_clear_error(tiny_llama_dir, tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps({"messages": "hello"}) + "\n")
    config = _config(tmp_path, tiny_llama_dir, task={"messages_column": "messages"})
    with pytest.raises(DataError, match="no usable conversation .*conversation 1: not JSON"):
        clean_data.run(config, str(tmp_path / "clean"))


def test_the_completion_nll_of_a_padded_batch_is_each_rows_own_loss(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    task = get_task(_config(tmp_path, tiny_llama_dir))
    tokenizer = _tokenizer(tiny_llama_dir)
    task.prepare_tokenizer(tokenizer)
    frame = _pairs(6).assign(text=lambda f: f["text"] + pd.Series([" and more" * i for i in range(6)]))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    nll, tokens = task._completion_nll(model, tokenizer, frame, 64)  # rows of different lengths, padded together
    expected_nll, expected_tokens = [], []
    with torch.inference_mode():
        for row in task.dataset(frame, tokenizer, 64, None):
            scored = sum(label != NO_LABEL for label in row["labels"][1:])
            loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
            expected_nll.append(float(loss) * scored)
            expected_tokens.append(scored)
    assert list(tokens) == expected_tokens and nll == pytest.approx(expected_nll, rel=1e-4)


def test_generation_scores():
    scores = generation_scores(["spam", "The cat sat."], [" SPAM ", "the cat sat on the mat"])
    assert scores["exact_match"] == 0.5
    assert 0.5 < scores["rouge_l"] < 1 and 0 < scores["chrf"] <= 1 and 0 <= scores["bleu"] <= 1


def test_lora_trains_the_adapters_and_saves_a_plain_model(tiny_llama_dir, tmp_path, one_torch_thread):
    from transformers import AutoModelForCausalLM

    rows = [
        {"text": f"Spam or ham? {'win cash' if i % 2 else 'lunch at noon'} {i}", "label": "spam" if i % 2 else "ham"}
        for i in range(60)
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = _config(tmp_path, tiny_llama_dir, training={"adapter": "lora", "lora_rank": 4})
    cleaned = clean_data.run(config, str(tmp_path / "clean"))
    trained = finetune.run(
        config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, "tiny", str(tmp_path / "ft")
    )
    assert trained.adapter == "lora" and 0 < trained.trainable_parameters < trained.num_parameters / 5
    assert any(line.startswith("learning_rate = 0.0002 (for lora adapters") for line in trained.recipe)
    model_dir = Path(trained.model_uri)
    assert not (model_dir / "adapter_config.json").exists()  # merged: a plain from_pretrained directory
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tuned = AutoModelForCausalLM.from_pretrained(model_dir)
    changed = [name for name, weight in tuned.state_dict().items() if not torch.equal(weight, base.state_dict()[name])]
    # Every linear layer of the decoder (the generative tasks' default), never the embeddings or the output layer.
    assert {name.split(".")[-2] for name in changed} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"}


def test_qlora_without_a_gpu_is_a_config_error(tiny_llama_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    rows = [{"text": f"prompt {i}", "label": f"reply {i}"} for i in range(30)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = _config(tmp_path, tiny_llama_dir, training={"adapter": "qlora"})
    cleaned = clean_data.run(config, str(tmp_path / "clean"))
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        finetune.run(config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, "tiny", str(tmp_path / "ft"))
