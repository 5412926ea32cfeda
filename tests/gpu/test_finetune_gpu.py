"""The fine-tune step's GPU path on a real CUDA GPU: mixed precision, TF32, fused AdamW, padding to multiples of 8,
and a batch size grown to fill the GPU. Skipped where there is no CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from split_files import LABELS, write_split

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

def test_gpu_training_uses_mixed_precision_fused_kernels_and_a_filled_batch(tiny_bert_dir, tmp_path):
    from transformers import TrainerCallback

    from ftpipe.config import parse_config
    from ftpipe.steps import finetune

    seen = {}

    class Inspect(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
            seen.update(
                bf16=args.bf16,
                fp16=args.fp16,
                optim=str(args.optim),
                batch=args.per_device_train_batch_size,
                tf32=torch.backends.cuda.matmul.allow_tf32,
                device=next(model.parameters()).device.type,
            )
            batch = next(iter(train_dataloader))
            seen["padded_length"] = batch["input_ids"].shape[1]

    config = parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "gpu"},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "training": {"epochs": 1, "batch_size": 8, "gpu_batch_size": "auto", "learning_rate": 1e-3},
        }
    )
    train = write_split(tmp_path / "train.parquet", 256, 1, max_filler=30)
    validation = write_split(tmp_path / "validation.parquet", 32, 2, max_filler=30)
    result = finetune.run(config, train, validation, LABELS, "tiny", str(tmp_path / "out"), callbacks=[Inspect()])

    bf16 = torch.cuda.is_bf16_supported()
    assert seen["device"] == "cuda" and seen["bf16"] == bf16 and seen["fp16"] == (not bf16)
    assert "fused" in seen["optim"]
    assert seen["batch"] >= 8 and seen["batch"] % 8 == 0  # grown from batch_size to fill the GPU
    assert seen["padded_length"] % 8 == 0  # tensor-core friendly padding
    if torch.cuda.get_device_capability() >= (8, 0):
        assert seen["tf32"]
    assert result.global_steps >= 1 and (Path(result.model_uri) / "model.safetensors").is_file()


def test_qlora_trains_on_a_4bit_base_and_saves_full_precision_weights(tiny_bert_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoConfig

    from ftpipe.config import parse_config
    from ftpipe.steps import finetune

    config = parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "gpu"},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "training": {
                "epochs": 1, "batch_size": 8, "adapter": "qlora", "lora_target_modules": ["query", "value"],
                "gradient_checkpointing": True,
            },
        }
    )
    train = write_split(tmp_path / "train.parquet", 64, 1)
    validation = write_split(tmp_path / "validation.parquet", 16, 2)
    result = finetune.run(config, train, validation, LABELS, "tiny", str(tmp_path / "out"))

    assert result.adapter == "qlora" and result.trainable_parameters < result.num_parameters
    saved = AutoConfig.from_pretrained(result.model_uri)
    assert getattr(saved, "quantization_config", None) is None  # merged, dequantised: loads without bitsandbytes


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_one_process_per_gpu_over_nccl_trains_and_saves_a_plain_model(fsdp, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ftpipe.config import parse_config
    from ftpipe.steps import finetune

    config = parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "gpu"},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            # processes unset: one per GPU the process sees
            "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "fsdp": fsdp},
        }
    )
    train = write_split(tmp_path / "train.parquet", 256, 1, max_filler=30)
    validation = write_split(tmp_path / "validation.parquet", 32, 2, max_filler=30)
    result = finetune.run(config, train, validation, LABELS, "tiny", str(tmp_path / "out"))

    assert result.processes == torch.cuda.device_count()
    assert result.global_steps == -(-256 // (8 * result.processes))
    model = AutoModelForSequenceClassification.from_pretrained(result.model_uri)  # gathered whole, even sharded
    assert model.config.id2label == {0: LABELS[0], 1: LABELS[1]}
