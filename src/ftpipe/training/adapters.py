"""Parameter-efficient fine-tuning: LoRA and QLoRA adapters (peft) around any task's model.

``training.adapter: lora`` freezes the pre-trained weights and trains low-rank updates of the projections peft
targets by default for the model's family (or ``training.lora_target_modules``); the task head stays fully trained
(peft's ``modules_to_save`` for the task types that have one). ``qlora`` does the same on a base quantised to 4-bit
NF4 by bitsandbytes, which needs a CUDA GPU.

What is saved (``training.adapter_save``): ``merged``, the adapter folded into the weights, so the registered model
is a plain ``from_pretrained`` directory whatever trained it; or ``adapter``, peft's adapter files (the trained
head included) with the model's config and :data:`BASE_REFERENCE`, naming the base's source and the SHA-256 of its
weights. :func:`merged_copy` turns the latter back into a plain directory, after checking that the base found at
that source is still the one the adapter was trained on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpipe.config import FinetuneConfig
from ftpipe.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from ftpipe.storage import Storage

if TYPE_CHECKING:
    from ftpipe.tasks.base import Task

logger = logging.getLogger(__name__)

NONE, LORA, QLORA = "none", "lora", "qlora"
MERGED, ADAPTER = "merged", "adapter"  # training.adapter_save
BASE_REFERENCE = "ftpipe_base_model.json"  # in an adapter-only model directory: {"source", "weights_sha256"}
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", BASE_REFERENCE)


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
        # Checkpointing, when on, is the Trainer's (training.gradient_checkpointing), set up the same way for all.
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


def weights_digest(directory: str | Path) -> str:
    """SHA-256 over a model directory's weight files (names and contents), the identity of its weights."""
    digest = hashlib.sha256()
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise ModelError(f"no safetensors weights in {directory}")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def save(model: Any, model_dir: str | Path, how: str, base_source: str, base_dir: str) -> str:
    """Save the trained model as ``how`` says (``training.adapter_save``); returns what was saved, merged or adapter.

    The adapter alone needs a base that loads as the trained model: one built differently (an encoder-decoder
    warm-started from an encoder) is saved merged, with a warning.
    """
    from peft import PeftModel
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    if how == ADAPTER and isinstance(model, PeftModel):
        trained = model.get_base_model()
        trained_config = copy.deepcopy(trained.config)
        # The class to rebuild: the base's own config names its bare architecture (BertModel), not the head's.
        trained_config.architectures = [type(trained).__name__]
        base_type = AutoConfig.from_pretrained(base_dir).model_type
        if base_type == trained_config.model_type:
            model.save_pretrained(model_dir)
            if hasattr(trained_config, "quantization_config"):  # QLoRA: the merged copy is full precision
                del trained_config.quantization_config
            trained_config.save_pretrained(model_dir)  # the head's settings (labels), to rebuild it on the base
            if trained.can_generate():
                trained.generation_config.save_pretrained(model_dir)
            adapter_config = model_dir / "adapter_config.json"
            settings = json.loads(adapter_config.read_text())
            settings["base_model_name_or_path"] = base_source  # not the finetune pod's local copy
            adapter_config.write_text(json.dumps(settings, indent=2))
            reference = {"source": base_source, "weights_sha256": weights_digest(base_dir)}
            (model_dir / BASE_REFERENCE).write_text(json.dumps(reference, indent=2))
            return ADAPTER
        logger.warning(
            "training.adapter_save adapter: the trained %s was built from a %s base, so the adapter alone cannot be "
            "loaded onto it; saving merged weights",
            trained_config.model_type,
            base_type,
        )
    merged(model).save_pretrained(model_dir)
    return MERGED


def is_adapter_dir(model_dir: str | Path) -> bool:
    return (Path(model_dir) / BASE_REFERENCE).is_file()


def adapter_bytes(model_dir: str | Path) -> int:
    return sum(path.stat().st_size for path in Path(model_dir).glob("adapter_*") if path.is_file())


def merged_copy(model_dir: str | Path, destination: str | Path, storage: Storage) -> Path:
    """Write an adapter-only model directory as a plain ``from_pretrained`` one: its base, fetched from the source
    it names, with the adapter merged in.

    Raises:
        ModelError: the base cannot be fetched or loaded, or its weights are not the ones the adapter trained on.
    """
    import transformers
    from peft import PeftModel

    from ftpipe.models import load_pretrained, resolve_source

    model_dir, destination = Path(model_dir), Path(destination)
    reference = json.loads((model_dir / BASE_REFERENCE).read_text())
    base_dir = resolve_source(reference["source"], storage)
    if weights_digest(base_dir) != reference["weights_sha256"]:
        raise ModelError(
            f"the base model at {reference['source']} is not the one this adapter was trained on "
            "(the SHA-256 of its weights differs)"
        )
    config = transformers.AutoConfig.from_pretrained(model_dir)
    architecture = getattr(transformers, (config.architectures or ["AutoModel"])[0])
    base = load_pretrained(architecture, base_dir, config=config)
    plain = merged(PeftModel.from_pretrained(base, str(model_dir)))
    destination.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(destination)
    for path in model_dir.iterdir():  # the tokenizer, the card, the trained model's generation settings
        if path.is_file() and path.name not in _ADAPTER_FILES and path.name != "config.json":
            shutil.copyfile(path, destination / path.name)
    return destination


@contextlib.contextmanager
def loadable(model_dir: str, storage: Storage) -> Iterator[str]:
    """A plain ``from_pretrained`` directory of ``model_dir`` while the block runs (merged first if adapter-only)."""
    if not is_adapter_dir(model_dir):
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="ftpipe-merged-") as scratch:
        yield str(merged_copy(model_dir, scratch, storage))
