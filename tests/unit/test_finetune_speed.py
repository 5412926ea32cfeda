"""The fine-tune step's speed settings: lean import, fused optimizer, attention kernel, precision, GPU batch size.

The GPU-only paths are tested here through their pure logic; tests/gpu runs them on a real GPU.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from ftpipe.config import FinetuneConfig, parse_config
from ftpipe.errors import ConfigError, ModelError
from ftpipe.steps import finetune
from ftpipe.tasks import get_task
from ftpipe.training.recipe import derive


def test_importing_the_step_module_loads_neither_torch_nor_transformers():
    """evaluate and register_model import it for FinetuneResult alone: seconds saved in each of their tasks."""
    code = (
        "import sys, ftpipe.steps.finetune as f; "
        "heavy = sorted({'torch', 'transformers', 'datasets', 'accelerate'} & set(sys.modules)); "
        "assert not heavy, heavy; f.FinetuneResult"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_callbacks_are_trainer_callbacks():
    from transformers import TrainerCallback

    from ftpipe.training.callbacks import CheckpointMirror, ProgressLog

    assert issubclass(CheckpointMirror, TrainerCallback) and issubclass(ProgressLog, TrainerCallback)


def test_speed_settings_default_on_and_can_be_switched_off():
    training = FinetuneConfig()
    assert training.fused_optimizer and training.attention == "sdpa" and training.precision == "auto"
    assert not training.torch_compile and training.gpu_batch_size is None and training.cpu_threads is None
    with pytest.raises(ConfigError, match="gpu_batch_size"):
        parse_config(
            {
                "data": {"uri": "x.csv"},
                "registry": {"model_name": "m"},
                "candidates": [{"name": "a", "source": "a"}],
                "training": {"gpu_batch_size": 0},
            }  # fmt: skip
        )


def _config(tiny_bert_dir: str = "t", **training):
    return parse_config(
        {
            "data": {"uri": "x.csv"},
            "registry": {"model_name": "m"},
            "candidates": [{"name": "t", "source": tiny_bert_dir}],
            "training": training,
        }
    )


def _recipe(config, rows: int):
    return derive(config.training, train_rows=rows, batch_size=16, num_parameters=4_000_000, max_length=(64, "test"))


def test_training_arguments_carry_the_speed_settings(tmp_path):
    config = _config()
    arguments = finetune._training_arguments(config, get_task(config), tmp_path, 160, _recipe(config, 160))
    assert arguments.optim == "adamw_torch_fused" and not arguments.torch_compile
    assert not arguments.bf16 and not arguments.fp16  # fp32 on this CPU
    assert arguments.train_sampling_strategy == "group_by_length"
    plain_config = _config(fused_optimizer=False)
    plain = finetune._training_arguments(
        plain_config, get_task(plain_config), tmp_path, 160, _recipe(plain_config, 160), batch_size=32
    )
    assert plain.optim == "adamw_torch" and plain.per_device_train_batch_size == 32


@pytest.mark.parametrize(
    ("cuda", "bf16_supported", "precision", "expected"),
    [
        (False, False, "auto", {"bf16": False, "fp16": False}),
        (True, True, "auto", {"bf16": True, "fp16": False}),
        (True, False, "auto", {"bf16": False, "fp16": True}),
        (True, True, "fp32", {"bf16": False, "fp16": False}),
        (False, False, "bf16", {"bf16": True, "fp16": False}),  # AMX / AVX-512-BF16 CPUs
        (True, True, "fp16", {"bf16": False, "fp16": True}),
    ],
)
def test_precision_flags(cuda, bf16_supported, precision, expected):
    assert finetune.precision_flags(cuda, bf16_supported, precision) == expected


def test_impossible_precisions_are_config_errors():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        finetune.precision_flags(False, False, "fp16")
    with pytest.raises(ConfigError, match="no bf16 support"):
        finetune.precision_flags(True, False, "bf16")


def test_tf32_only_from_ampere_on():
    assert finetune.allow_tf32(None) is None
    assert finetune.allow_tf32((7, 5)) is None  # T4: left as it is
    assert finetune.allow_tf32((8, 0)) is True and finetune.allow_tf32((9, 0)) is True


def test_fill_gpu_batch_size():
    minilm = {"num_parameters": 22_700_000, "hidden_size": 384, "num_layers": 6, "max_length": 128, "base": 16}
    assert finetune.fill_gpu_batch_size(80 * 2**30, **minilm) == finetune.MAX_GPU_BATCH  # H100: the cap
    large = {"num_parameters": 335_000_000, "hidden_size": 1024, "num_layers": 24, "max_length": 512, "base": 16}
    on_t4 = finetune.fill_gpu_batch_size(15 * 2**30, **large)
    on_h100 = finetune.fill_gpu_batch_size(80 * 2**30, **large)
    assert 16 <= on_t4 < on_h100 < finetune.MAX_GPU_BATCH
    assert on_h100 % 16 == 0 and (on_h100 // 16) & (on_h100 // 16 - 1) == 0  # a power-of-two multiple of base
    # estimated: 16 B/parameter + 34 B per token, layer and hidden unit; it fits in the share of the memory
    assert on_h100 * 512 * 1024 * 24 * 34 + 335_000_000 * 16 <= 0.8 * 80 * 2**30
    assert finetune.fill_gpu_batch_size(2**30, **large) == 16  # never below the configured batch size


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_attention_kernel_is_the_configured_one(tiny_bert_dir, attention):
    config = _config(tiny_bert_dir, attention=attention)
    task = get_task(config)
    model = finetune._load_model(
        task, config.candidates[0], tiny_bert_dir, task.head_settings(["a", "b"], None), config.training
    )
    assert model.config._attn_implementation == attention


def test_a_model_without_sdpa_falls_back_to_its_default(tiny_bert_dir, monkeypatch, caplog):
    from ftpipe import models

    load = models.load_pretrained
    calls = []

    def no_sdpa(auto_class, source, **kwargs):
        calls.append(kwargs.get("attn_implementation"))
        if kwargs.get("attn_implementation") == "sdpa":
            raise ModelError("cannot load model: does not support an attention implementation through sdpa")
        return load(auto_class, source, **kwargs)

    monkeypatch.setattr(models, "load_pretrained", no_sdpa)
    config = _config(tiny_bert_dir)
    task = get_task(config)
    with caplog.at_level(logging.WARNING, logger="ftpipe.steps.finetune"):
        model = finetune._load_model(
            task, config.candidates[0], tiny_bert_dir, task.head_settings(["a", "b"], None), config.training
        )
    assert calls == ["sdpa", None] and model.config.num_labels == 2
    assert "no SDPA attention" in caplog.text
