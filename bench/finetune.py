"""Benchmark 1: fine-tuning throughput of ftpipe's fine-tune step against a naive training loop.

Both train the bundled all-MiniLM-L6-v2 for one pass over the same rows of a real dataset (the VADER
movie-review snippets, label = sign of the score), with the same batch size, hence the same number of
optimizer steps, in the same process, one after the other:

- naive: every batch padded to ``max_length`` (128), plain ``torch.optim.AdamW`` (PyTorch's default
  implementation), fp32, a bare loop; the same recipe as ftpipe's defaults (weight decay 0.01, 10% linear
  warm-up then linear decay, gradient norm clipped at 1), so that the accuracies compare engineering only;
- ftpipe: ``ftpipe.steps.finetune.run`` with its defaults (the Hugging Face Trainer, texts tokenized
  once, length-grouped batches padded to their own longest text, fused AdamW, SDPA attention, ...).

Throughput is examples per second of the training loop itself (for ftpipe, from the first to the last
optimizer step, as a Trainer callback sees it: the per-epoch validation and checkpoint come after).
The whole ``trainer.train()`` figure, validation and checkpoint included, is reported beside it.

Useful-FLOP utilisation = 6 x non-embedding parameters x real (unpadded) tokens per second / peak, where
the peak is the machine's measured fp32 matrix-multiply rate (torch, large square matmuls, best of
two measurements: before and after the runs). On a CUDA GPU the bench also reports MFU against the GPU's
published dense bf16 peak.

    python -m bench.finetune                 # the full run (about 5 minutes on 2 cores)
    python -m bench.finetune --smoke         # a few steps on the checked-in SMS sample: checks it runs
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    OtherLoad,
    PeakMemory,
    dataset,
    emit,
    matmul_peak_gflops,
    minilm_path,
    quiet_libraries,
    release_memory,
)
from bench.gpu import published_bf16_tflops  # the one table of published GPU peaks, with its sources


def non_embedding_parameters(model) -> int:
    """Parameters outside the embedding tables (the ones every token multiplies through)."""
    embedding = {id(p) for module in model.modules() if _is_embedding(module) for p in module.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def _is_embedding(module) -> bool:
    import torch

    return isinstance(module, torch.nn.Embedding)


def split_rows(frame, train_rows: int, validation_rows: int, seed: int):
    """Stratified, seeded train and validation rows (text, label, label_id) out of one labelled frame."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    labels = sorted(frame["label"].unique())
    frame = frame.assign(label_id=frame["label"].map({name: i for i, name in enumerate(labels)}).astype("int64"))
    train, rest = train_test_split(frame, train_size=train_rows, stratify=frame["label"], random_state=seed)
    validation_rows = min(validation_rows, len(rest))
    if validation_rows < len(rest):
        rest, _ = train_test_split(rest, train_size=validation_rows, stratify=rest["label"], random_state=seed)
    reset = dict(drop=True)
    return labels, pd.DataFrame(train).reset_index(**reset), pd.DataFrame(rest).reset_index(**reset)


# -- the naive loop -----------------------------------------------------------------------------


def naive_loop(model_path: str, train, validation, *, batch_size: int, max_length: int, lr: float, seed: int):
    """Pad everything to ``max_length``, plain AdamW, fp32; returns timings and the validation accuracy."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(frame):
        batch = tokenizer(
            frame["text"].tolist(), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch["labels"] = torch.tensor(frame["label_id"].to_numpy())
        return batch

    train_batch, validation_batch = encode(train), encode(validation)
    num_labels = int(max(train["label_id"].max(), validation["label_id"].max())) + 1
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels).to(device)
    # The same recipe as ftpipe's defaults (weight decay 0.01, 10% linear warm-up then linear decay, gradients
    # clipped at norm 1), so the accuracies compare the engineering, not two sets of hyper-parameters.
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = math.ceil(len(train) / batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * steps), steps)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    sync()
    started = last = time.perf_counter()
    step_seconds = []
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        inputs = {key: value[index].to(device) for key, value in train_batch.items()}
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        sync()
        now = time.perf_counter()
        step_seconds.append(now - last)
        last = now
    seconds = time.perf_counter() - started

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(validation), 64):
            inputs = {key: value[start : start + 64].to(device) for key, value in validation_batch.items()}
            labels = inputs.pop("labels")
            correct += int((model(**inputs).logits.argmax(-1) == labels).sum())
    return {
        "steps": steps,
        "seconds": seconds,
        "median_step_seconds": statistics.median(step_seconds),
        "accuracy": correct / len(validation),
        "model": model,
    }


# -- ftpipe's step ------------------------------------------------------------------------------


def _loop_timer():
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        """Wall time of the training loop proper: each epoch from its first step to its last (not the evaluation)."""

        def __init__(self) -> None:
            self.seconds = 0.0
            self.step_seconds: list[float] = []
            self._epoch_started = self._last = 0.0

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._sync()
            self._epoch_started = self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            now = time.perf_counter()
            self.step_seconds.append(now - self._last)
            self._last = now

        def on_epoch_end(self, args, state, control, **kwargs):
            self._sync()
            self.seconds += time.perf_counter() - self._epoch_started

        @staticmethod
        def _sync() -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

    return LoopTimer()


def ftpipe_step(model_path: str, labels: list[str], train, validation, work: Path, *, training: dict[str, Any]):
    """``ftpipe.steps.finetune.run`` on local files; returns its result, the loop time and the validation accuracy."""
    from ftpipe.config import parse_config
    from ftpipe.steps import finetune

    train.to_parquet(work / "train.parquet")
    validation.to_parquet(work / "validation.parquet")
    config = parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "bench"},
            "candidates": [{"name": "minilm", "source": model_path, "license": "apache-2.0"}],
            "training": {"epochs": 1, **training},
        }
    )
    timer = _loop_timer()
    started = time.perf_counter()
    result = finetune.run(
        config,
        str(work / "train.parquet"),
        str(work / "validation.parquet"),
        labels,
        "minilm",
        str(work / "out"),
        work_dir=work,
        callbacks=[timer],
    )
    step_seconds = time.perf_counter() - started
    log = json.loads(Path(result.log_uri).read_text())
    evaluations = [entry for entry in log if "eval_accuracy" in entry]
    return {
        "result": result,
        "loop_seconds": timer.seconds,
        "median_step_seconds": statistics.median(timer.step_seconds),
        "step_seconds": step_seconds,
        "accuracy": evaluations[-1]["eval_accuracy"],
    }


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="movie-reviews", choices=["movie-reviews", "sms-sample"])
    parser.add_argument("--train-rows", type=int, default=1600, help="one pass = train-rows / batch-size steps")
    parser.add_argument("--validation-rows", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--peak-seconds", type=float, default=3.0, help="per peak measurement (two of them)")
    parser.add_argument("--model", default=None, help="model directory (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--out", type=Path, default=None, help="folder for finetune.json (default out/bench)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on the SMS sample: checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.data, args.train_rows, args.validation_rows, args.peak_seconds = "sms-sample", 48, 32, 0.3

    quiet_libraries()
    import torch
    from transformers import AutoTokenizer

    from ftpipe.steps.select_model import available_cpus

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(available_cpus())
    model_path = args.model or minilm_path()
    labels, train, validation = split_rows(dataset(args.data), args.train_rows, args.validation_rows, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoded = tokenizer(train["text"].tolist(), truncation=True, max_length=args.max_length)["input_ids"]
    real_tokens = sum(len(ids) for ids in encoded)

    load = OtherLoad().start()
    peaks = [matmul_peak_gflops(args.peak_seconds)]
    gpu_memory_mib = {}
    release_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as naive_memory:
        naive = naive_loop(
            model_path,
            train,
            validation,
            batch_size=args.batch_size,
            max_length=args.max_length,
            lr=args.lr,
            seed=args.seed,
        )
    non_embedding = non_embedding_parameters(naive.pop("model"))
    if cuda:
        gpu_memory_mib["naive"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    release_memory()
    with tempfile.TemporaryDirectory(prefix="ftpipe-bench-") as scratch, PeakMemory() as ftpipe_memory:
        ours = ftpipe_step(
            model_path,
            labels,
            train,
            validation,
            Path(scratch),
            training={
                "batch_size": args.batch_size,
                "learning_rate": args.lr,
                "max_length": args.max_length,
                "seed": args.seed,
            },
        )
    if cuda:
        gpu_memory_mib["ftpipe"] = torch.cuda.max_memory_allocated() / 2**20
    peaks.append(matmul_peak_gflops(args.peak_seconds))
    peak = max(peaks)
    load.stop()

    result = ours["result"]
    rows = len(train)
    naive_rate = rows / naive["seconds"]
    ftpipe_rate = rows / ours["loop_seconds"]
    useful = 6 * non_embedding * real_tokens  # FLOPs of one pass, forward and backward, padding not counted
    figures: dict[str, Any] = {
        "data": args.data,
        "model": Path(args.model).name if args.model else "all-MiniLM-L6-v2",
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu x{torch.get_num_threads()}",
        "train_rows": rows,
        "validation_rows": len(validation),
        "steps": naive["steps"],
        "ftpipe_steps": result.global_steps,
        "batch_size": args.batch_size,
        "real_tokens_per_example": round(real_tokens / rows, 1),
        "non_embedding_params": non_embedding,
        "peak_fp32_gflops": round(peak, 1),
        "naive_examples_per_s": round(naive_rate, 2),
        "ftpipe_examples_per_s": round(ftpipe_rate, 2),
        "speedup": round(ftpipe_rate / naive_rate, 2),
        "ftpipe_train_call_examples_per_s": result.train_examples_per_second,
        "naive_utilisation": round(useful / naive["seconds"] / (peak * 1e9), 3),
        "ftpipe_utilisation": round(useful / ours["loop_seconds"] / (peak * 1e9), 3),
        "naive_accuracy": round(naive["accuracy"], 4),
        "ftpipe_accuracy": round(float(ours["accuracy"]), 4),
        "naive_peak_rss_mib": round(naive_memory.peak_mib),
        "ftpipe_peak_rss_mib": round(ftpipe_memory.peak_mib),
        "speedup_median_step": round(naive["median_step_seconds"] / ours["median_step_seconds"], 2),
        "naive_loop_s": round(naive["seconds"], 1),
        "ftpipe_loop_s": round(ours["loop_seconds"], 1),
        "ftpipe_step_s": round(ours["step_seconds"], 1),
        "others_cpu_share": round(load.share, 2),
    }
    if cuda:
        published = published_bf16_tflops(torch.cuda.get_device_name(0))
        figures["peak_is"] = "measured fp32 matmul on the GPU (TF32 off)"
        figures["naive_peak_gpu_mem_mib"] = round(gpu_memory_mib["naive"])
        figures["ftpipe_peak_gpu_mem_mib"] = round(gpu_memory_mib["ftpipe"])
        if published:
            figures["published_bf16_tflops"] = published
            figures["ftpipe_mfu_bf16"] = round(useful / ours["loop_seconds"] / (published * 1e12), 4)
    emit("finetune", figures, args.out, peaks_gflops=[round(p, 1) for p in peaks])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
