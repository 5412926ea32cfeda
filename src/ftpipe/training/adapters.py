"""Parameter-efficient fine-tuning: LoRA and QLoRA adapters (peft) around any task's model.

``training.adapter: lora`` freezes the pre-trained weights and trains low-rank updates of the projections peft
targets by default for the model's family (or ``training.lora_target_modules``); the task head stays fully trained
(peft's ``modules_to_save`` for the task types that have one). ``qlora`` does the same on a base quantised to 4-bit
NF4 by bitsandbytes, which needs a CUDA GPU. The adapter is merged into the weights before the model is saved, so
the registered model is a plain ``from_pretrained`` directory whatever trained it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ftpipe.config import FinetuneConfig
from ftpipe.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from ftpipe.tasks.base import Task

logger = logging.getLogger(__name__)

NONE, LORA, QLORA = "none", "lora", "qlora"


def quantization_settings(training: FinetuneConfig, cuda_available: bool) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load the base in 4-bit for QLoRA (empty otherwise).

    Raises:
        ConfigError: QLoRA without a CUDA GPU (bitsandbytes' 4-bit kernels are CUDA only).
    """
    if training.adapter != QLORA:
        return {}
    if not cuda_available:
        raise ConfigError(
            "training.adapter qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); use `lora` on CPU nodes"
        )
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    }


def wrap(model: Any, training: FinetuneConfig, task: Task) -> Any:
    """The model with trainable adapters (``training.adapter`` lora or qlora), or the model itself (none).

    The adapted modules: ``training.lora_target_modules``, else the task's default (``Task.lora_targets``), else
    peft's default for the model family.

    Raises:
        ModelError: peft cannot adapt this model (no default target modules for its family, or a name in
            ``training.lora_target_modules`` that matches no module).
    """
    if training.adapter == NONE:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if training.adapter == QLORA:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    settings = LoraConfig(
        task_type=task.peft_task_type,
        r=training.lora_rank,
        lora_alpha=training.lora_alpha,
        lora_dropout=training.lora_dropout,
        target_modules=training.lora_target_modules or task.lora_targets,
        use_rslora=training.lora_rslora,
        use_dora=training.lora_dora,
    )
    try:
        adapted = get_peft_model(model, settings)
    except ValueError as error:  # peft's "Please specify `target_modules`" / "Target modules ... not found"
        text = str(error).strip().splitlines()[0]
        raise ModelError(f"cannot add {training.adapter} adapters to {model.config.model_type}: {text}") from None
    trainable, total = adapted.get_nb_trainable_parameters()
    logger.info(
        "%s adapters (r=%d, alpha=%g) on %s: %s of %s parameters train (%.2f%%)",
        training.adapter,
        training.lora_rank,
        training.lora_alpha,
        ", ".join(sorted(adapted.peft_config["default"].target_modules)),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return adapted


def trainable_parameters(model: Any) -> int:
    """Parameters the optimizer updates."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def merged(model: Any) -> Any:
    """The plain model to save: the adapter folded into the base weights (a model without one as it is)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    plain = model.merge_and_unload()
    if getattr(plain, "is_quantized", False):  # QLoRA: save full-precision weights, loadable without bitsandbytes
        plain = plain.dequantize()
    return plain
