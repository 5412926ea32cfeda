"""finetune: train the selected candidate on the cleaned splits with the Hugging Face Trainer.

The selected candidate gets the task's head (``id2label``/``label2id`` from the labels); every
hyper-parameter comes from ``config.training``, and those it leaves unset from the recipe fitted to the
data and the model (``ftpipe.training.recipe``: length, epochs, learning rate, warm-up, evaluation
interval). Texts are tokenized once up front without padding; batches are padded dynamically (and grouped
by length when ``group_by_length`` is on). The validation split is evaluated each epoch (or every
``eval_steps``), early stopping watches ``metric_for_best_model`` and the best evaluation's weights are
the ones saved.

Speed (each a ``config.training`` switch, on by default where it leaves results unchanged): fused AdamW,
SDPA attention, as many torch threads as CPUs the pod may use; on a CUDA GPU, bf16 mixed precision (fp16
where bf16 is missing), TF32 for the fp32 parts and padding to multiples of 8, plus ``gpu_batch_size`` (off
by default) to grow the batch until it fills the GPU. ``torch_compile`` is off by default: on 2 CPU cores
compiling took about 100 s and the compiled steps were no faster. Importing this module is light (transformers
loads inside :func:`run`), as the evaluate and register_model tasks import it for :class:`FinetuneResult`.

Adapters (``training.adapter``: lora, qlora; ``ftpipe.training.adapters``): the loaded model is wrapped before
training; before saving, the adapter is merged into its weights (the saved model is the same plain directory) or,
with ``training.adapter_save: adapter``, saved alone with a reference to its exact base.

Preemption: checkpoints are written to a local work directory and mirrored to
``<output_uri>/checkpoints/`` after each save, each one marked complete only once all of its files
are up. When a run starts and complete checkpoints exist there, it downloads them and resumes from
the newest one, so a retried pod on a preempted GPU node goes on where the last one stopped. The
mirror is removed once the final model and reports are written.

Outputs under ``output_uri``: ``model/`` (safetensors weights, config with ``id2label``, tokenizer,
model card), ``train_log.json`` (the Trainer's log history), ``report.md`` and ``report.html`` (loss
and validation curves). Run it as ``run(config, train_uri, validation_uri, labels, output_uri,
candidate=name)``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpipe import models, reports, tracking
from ftpipe.config import CandidateConfig, FinetuneConfig, PipelineConfig
from ftpipe.errors import ConfigError, Interrupted, ModelError
from ftpipe.results import CandidateScore, FinetuneResult
from ftpipe.steps import MODEL_LIBRARIES, REPORT_LIBRARIES, TOKENIZER_LIBRARIES
from ftpipe.steps.select_model import (
    available_cpus,
    candidate_license,
    ensure_pad_token,
    find_candidate,
    read_checked_split,
)
from ftpipe.storage import Storage, full_disk_errors, join
from ftpipe.tasks import Task, get_task
from ftpipe.tasks.base import TRUNCATION, stratified_sample
from ftpipe.training import adapters, launch, metric_keys
from ftpipe.training.checkpoints import delete_prefix, restore_checkpoints, steps_redone
from ftpipe.training.recipe import Recipe, derive, fit_max_length, fit_truncation

if TYPE_CHECKING:  # transformers (and torch) load inside run(): importing this module stays light
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

LIBRARIES = (
    *MODEL_LIBRARIES,
    *TOKENIZER_LIBRARIES,
    "transformers.trainer",
    "datasets",
    "sklearn.metrics",
    *REPORT_LIBRARIES,
)

SAVE_TOTAL_LIMIT = 2  # the newest checkpoint (to resume) and the best one (to load at the end)

# Config attributes that hold a dropout probability, across model families (BERT/RoBERTa/ELECTRA/DeBERTa,
# DistilBERT, BART, GPT-2, T5, Llama-like). ``training.dropout`` overrides every one a model has.
DROPOUT_ATTRIBUTES = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "seq_classif_dropout",
    "pooler_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "dropout_rate",
)


# -- small pure helpers -------------------------------------------------------------------------


def precision_flags(cuda_available: bool, bf16_supported: bool, precision: str = "auto") -> dict[str, bool]:
    """The Trainer's ``bf16``/``fp16`` flags for ``training.precision``.

    ``auto`` is mixed precision only on CUDA: bf16 where the GPU has it (no loss scaling needed), else fp16; fp32 on
    CPU. ``fp32``, ``bf16`` and ``fp16`` force one (bf16 also runs on CPUs, fp16 needs CUDA).

    Raises:
        ConfigError: ``fp16`` without CUDA, or ``bf16`` on a CUDA GPU without it.
    """
    if precision == "auto":
        if not cuda_available:
            return {"bf16": False, "fp16": False}
        return {"bf16": True, "fp16": False} if bf16_supported else {"bf16": False, "fp16": True}
    if precision == "fp16" and not cuda_available:
        raise ConfigError("training.precision fp16 needs a CUDA GPU: use bf16 or fp32 on CPU")
    if precision == "bf16" and cuda_available and not bf16_supported:
        raise ConfigError("training.precision bf16: this GPU has no bf16 support; use fp16 or auto")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def allow_tf32(cuda_capability: tuple[int, int] | None) -> bool | None:
    """TF32 matmuls for the fp32 parts on an Ampere or newer GPU (compute capability 8.0+); None leaves the default."""
    return True if cuda_capability is not None and cuda_capability >= (8, 0) else None


MAX_GPU_BATCH = 1024
# Training memory per parameter: fp32 weights, gradients and AdamW's two moments.
_BYTES_PER_PARAMETER = 16
# Activation memory kept for the backward pass, bytes per token per layer per hidden unit, with 16-bit activations
# and fused (SDPA) attention that keeps no score matrix (Korthikanti et al., "Reducing Activation Recomputation in
# Large Transformer Models", 2022: 34 s b h per layer, plus 5 a s^2 b for the attention scores left out here).
_ACTIVATION_BYTES = 34


def fill_gpu_batch_size(
    free_bytes: int,
    *,
    num_parameters: int,
    hidden_size: int,
    num_layers: int,
    max_length: int,
    base: int,
    share: float = 0.8,
    cap: int = MAX_GPU_BATCH,
) -> int:
    """The largest power-of-two multiple of ``base`` (at most ``cap``) whose estimated memory fits ``share`` of a GPU.

    The estimate is deliberately pessimistic: every text at ``max_length`` tokens. Never less than ``base``.
    """
    budget = free_bytes * share - num_parameters * _BYTES_PER_PARAMETER
    per_example = max_length * hidden_size * num_layers * _ACTIVATION_BYTES
    batch = base
    while batch * 2 <= cap and batch * 2 * per_example <= budget:
        batch *= 2
    return batch


def dropout_overrides(model_config: Any, dropout: float | None) -> dict[str, float]:
    """``{attribute: dropout}`` for each dropout attribute the model config has (empty when not overriding)."""
    if dropout is None:
        return {}
    found = {}
    for name in DROPOUT_ATTRIBUTES:
        value = getattr(model_config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = dropout
    return found


# -- steps of the step --------------------------------------------------------------------------


def _load_model(task: Task, candidate: CandidateConfig, resolved: str, head: dict[str, Any], training: FinetuneConfig):
    """The candidate with the task's new head, dropout overridden where asked (in 4-bit for QLoRA)."""
    import torch
    from transformers import AutoConfig

    try:
        base_config = AutoConfig.from_pretrained(resolved, trust_remote_code=candidate.trust_remote_code)
    except Exception as error:  # noqa: BLE001 - transformers raises many types for "cannot load"
        raise ModelError(f"cannot load model {candidate.source}: {str(error).strip().splitlines()[0]}") from None
    overrides = dropout_overrides(base_config, training.dropout)
    if training.dropout is not None and not overrides:
        logger.warning("training.dropout is set but %s has no known dropout setting; left as is", candidate.name)
    load = functools.partial(
        task.load_model,
        resolved,
        trust_remote_code=candidate.trust_remote_code,
        ignore_mismatched_sizes=True,  # a checkpoint that already has a head of another size gets a new one
        **head,
        **overrides,
        **adapters.quantization_settings(training, torch.cuda.is_available()),
    )
    if training.attention == "auto":
        return load()
    try:
        return load(attn_implementation=training.attention)
    except ModelError as error:
        if training.attention != "sdpa":
            raise
        logger.warning("%s: no SDPA attention (%s); using the model's default", candidate.name, error)
    from transformers import set_seed

    set_seed(training.seed)  # the new head's initial weights as they would have been
    return load()


def _training_arguments(
    config: PipelineConfig,
    task: Task,
    output_dir: Path,
    train_rows: int,
    recipe: Recipe,
    max_steps: int = -1,
    batch_size: int | None = None,
    **task_arguments: Any,
):
    import torch
    import transformers

    training = config.training
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    batch_size = batch_size or training.batch_size
    steps_per_epoch = math.ceil(train_rows / (batch_size * launch.world_size() * training.gradient_accumulation_steps))
    return getattr(transformers, task.trainer_classes()[0])(
        output_dir=str(output_dir),
        learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=training.eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        warmup_steps=recipe.warmup_steps,
        weight_decay=training.weight_decay,
        label_smoothing_factor=training.label_smoothing,
        seed=training.seed,
        data_seed=training.seed,
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        eval_strategy="epoch" if recipe.eval_steps is None else "steps",
        eval_steps=recipe.eval_steps,
        save_strategy="epoch" if recipe.eval_steps is None else "steps",
        save_steps=recipe.eval_steps,
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 10),  # about ten points per epoch on the loss curve
        logging_first_step=True,
        load_best_model_at_end=True,
        metric_for_best_model=config.best_model_metric,
        greater_is_better=task.higher_is_better(config.best_model_metric),
        save_total_limit=SAVE_TOTAL_LIMIT,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience count survives a resume
        report_to=[],
        push_to_hub=False,
        disable_tqdm=True,  # ProgressLog writes concise lines instead of carriage-return bars in pod logs
        # The attention masks' sum over every batch (summed over the processes), for the run's cost line; a batch
        # without one (SFT's packed batches) counts its tokens other than the pad token.
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,  # tokenized in memory already: worker processes would only add start-up time
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,
        optim="adamw_torch_fused" if training.fused_optimizer else "adamw_torch",
        torch_compile=training.torch_compile,
        gradient_checkpointing=training.gradient_checkpointing,
        # Non-reentrant: works with frozen inputs (LoRA's frozen embeddings) without forcing their gradients.
        gradient_checkpointing_kwargs={"use_reentrant": False} if training.gradient_checkpointing else None,
        tf32=allow_tf32(torch.cuda.get_device_capability() if cuda else None),
        **distributed_settings(training, cuda, launch.world_size(), launch.nodes()),
        **precision_flags(cuda, bf16, training.precision),
        **task_arguments,
    )


def held_accelerators() -> dict[str, Any]:
    """The GPUs training holds (``accelerators``, over every node) and their type (``accelerator``): those CUDA
    shows this process, which on Kubernetes are exactly the pod's request (``cluster.gpu_count``); none on CPU."""
    import torch

    if not torch.cuda.is_available():
        return {"accelerators": 0, "accelerator": None}
    return {"accelerators": torch.cuda.device_count() * launch.nodes(), "accelerator": torch.cuda.get_device_name(0)}


def distributed_settings(training: FinetuneConfig, cuda: bool, world_size: int, nodes: int) -> dict[str, Any]:
    """The Trainer's settings for ``world_size`` processes on ``nodes`` nodes (none for one process).

    Raises:
        ConfigError: ``training.fsdp`` without CUDA or without several processes.
    """
    if training.fsdp and (not cuda or world_size < 2):
        raise ConfigError("training.fsdp shards a model across GPUs: it needs CUDA and more than one process")
    if world_size < 2:
        return {}
    settings: dict[str, Any] = {
        "ddp_backend": launch.backend(training),
        # Each node keeps its own copy of every checkpoint: at the end, every rank loads the best one from its disk.
        "save_on_each_node": nodes > 1,
        # Each rank's loss is the mean over its own rows. The default (True) multiplies it by the number of processes
        # for a loss that divides by the token count of the whole global batch; the encoders' heads do not, so their
        # gradients and logged losses came out twice too large on two processes.
        "average_tokens_across_devices": False,
    }
    if training.fsdp:
        # Wrapped per transformer layer (the model's _no_split_modules); the full state dict is gathered on rank 0
        # to save, so the saved model is the same plain directory.
        settings |= {"fsdp": "full_shard auto_wrap", "fsdp_config": {"state_dict_type": "FULL_STATE_DICT"}}
    return settings


def _device_batch_size(training: FinetuneConfig, model: Any, num_parameters: int, max_length: int) -> int:
    """The per-device train batch size on a CUDA GPU (``training.gpu_batch_size``)."""
    if training.gpu_batch_size is None:
        return training.batch_size
    if training.gpu_batch_size != "auto":
        return training.gpu_batch_size
    import torch

    free, _ = torch.cuda.mem_get_info()
    config = model.config
    batch = fill_gpu_batch_size(
        free,
        num_parameters=num_parameters,
        hidden_size=int(getattr(config, "hidden_size", None) or getattr(config, "d_model", 1024)),
        num_layers=int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 24)),
        max_length=max_length,
        base=training.batch_size,
    )
    logger.info("gpu_batch_size auto: %d per device (%.1f GiB free)", batch, free / 2**30)
    return batch


def _train_rows_wanted(training: FinetuneConfig, rows: int) -> list[int]:
    """The sample sizes to cut the train split down to, in order: ``train_fraction``, then ``max_train_rows``."""
    wanted = []
    if training.train_fraction is not None and training.train_fraction < 1:
        rows = max(1, round(rows * training.train_fraction))
        wanted.append(rows)
    if training.max_train_rows is not None and training.max_train_rows < rows:
        wanted.append(training.max_train_rows)
    return wanted


def train_rows_used(training: FinetuneConfig, rows: int) -> int:
    """How many of ``rows`` training rows finetune trains on."""
    return ([rows, *_train_rows_wanted(training, rows)])[-1]


# Enough texts for the length quantile the recipe takes, and few enough to tokenize in a second.
_LENGTH_SAMPLE = 10_000


def _token_lengths(task: Task, tokenizer: Any, train: Any, seed: int) -> list[int]:
    """The untruncated lengths, in the model's tokens (special tokens included), of a sample of the train rows."""
    if len(train) > _LENGTH_SAMPLE:
        train = train.sample(_LENGTH_SAMPLE, random_state=seed)
    return task.token_lengths(tokenizer, train)


def _window(model: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its position embeddings, or what its tokenizer declares."""
    limits = (tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None))
    return min((value for value in limits if value and value < 1_000_000), default=512)  # 1e30: "no limit"


def _model_card(
    task: Task, candidate: CandidateConfig, license_id: str | None, labels: list[str], metric: str, value: float
) -> str:
    front = ["---"]
    if license_id:
        front.append(f"license: {license_id}")
    front += ["library_name: transformers", f"pipeline_tag: {task.pipeline_tag}", "tags:", "- ftpipe", "---"]
    body = [
        f"# {candidate.name}, fine-tuned by ftpipe",
        "",
        f"Base model: `{candidate.source}`. Outputs, in order: {', '.join(labels)}.",
        f"Best validation {metric}: {value:.4f}.",
    ]
    return "\n".join(front + [""] + body) + "\n"


def _launch_elsewhere(
    config: PipelineConfig,
    train_uri: str,
    validation_uri: str,
    labels: list[str],
    candidate: str,
    output_uri: str,
    storage: Storage,
    work_dir: str | Path | None,
    callbacks: Sequence[TrainerCallback],
    run_id: str | None,
    trial: Mapping[str, Any] | None,
) -> FinetuneResult | None:
    """Train on several nodes (a TrainJob) or several processes (torchrun) when the config asks for it, and return
    rank 0's result; None when training runs here, in this process."""
    nodes, processes = config.cluster.nodes, launch.processes_wanted(config.training)
    if nodes == 1 and processes == 1:
        return None
    if callbacks:  # Python objects cannot travel to the ranks; a sweep spreads its trials over pods instead
        logger.warning("finetune with extra callbacks (a sweep trial) trains in one process, not %d", processes)
        return None
    spec = launch.FinetuneSpec(
        config_json=config.model_dump_json(),
        train_uri=train_uri,
        validation_uri=validation_uri,
        labels=labels,
        candidate=candidate,
        output_uri=output_uri,
        result_uri="",  # the launcher's to choose
        run_id=run_id,
        trial=dict(trial) if trial is not None else None,
        work_dir=str(work_dir) if work_dir is not None else None,
    )
    if nodes > 1:
        return launch.run_on_nodes(spec, nodes, storage, launch.job_name_for(output_uri))
    return launch.run_on_processes(spec, processes, storage)


@contextlib.contextmanager
def _scratch_directory(work_dir: str | Path | None, output_uri: str):
    """The local directory for checkpoints and the model before upload, removed at the end; a full disk there is
    one clear error (storage.full_disk_errors).

    One process: a temporary directory of its own. Several: one directory every rank on a node agrees on, made
    and removed by the node's first rank (the others write their RNG states into its checkpoints).
    """
    if not launch.in_worker():
        with tempfile.TemporaryDirectory(prefix="ftpipe-finetune-", dir=work_dir) as scratch, full_disk_errors(scratch):
            yield scratch
        return
    digest = hashlib.sha256(output_uri.encode()).hexdigest()[:12]
    scratch = Path(work_dir or tempfile.gettempdir()) / f"ftpipe-finetune-{digest}"
    with launch.node_leader_first() as leader:
        if leader:
            scratch.mkdir(parents=True, exist_ok=True)
    try:
        with full_disk_errors(scratch):
            yield str(scratch)
    finally:
        launch.barrier()
        if launch.local_rank() == 0:
            shutil.rmtree(scratch, ignore_errors=True)


def run(
    config: PipelineConfig,
    train_uri: str,
    validation_uri: str,
    labels: Sequence[str],
    candidate: CandidateScore | CandidateConfig | str,
    output_uri: str,
    *,
    storage: Storage | None = None,
    work_dir: str | Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    run_id: str | None = None,
    trial: Mapping[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune one candidate and upload the best model.

    Args:
        config: the pipeline config (``training`` and ``candidates`` are used).
        train_uri: cleaned train split (parquet: text, label, label_id).
        validation_uri: cleaned validation split, same columns.
        labels: label names in class-index order.
        output_uri: prefix (s3:// or local) for the model, checkpoints, log and reports.
        candidate: the candidate to train (select_model's ``selected``, a config candidate or its name); its
            settings (source, ``trust_remote_code``, licence) are those of the config candidate of that name.
        storage: storage to use; one built from ``config.storage`` when None.
        work_dir: local directory for checkpoints and the model before upload (a temporary one inside it is
            used and removed); the system temporary directory when None.
        callbacks: extra Trainer callbacks, run after ftpipe's own.
        run_id: the pipeline run this fine-tune belongs to: with ``tracking.mlflow_uri`` set, its MLflow run is
            nested under that pipeline run's (``ftpipe.tracking``); None (outside a pipeline) makes it a run of
            its own.
        trial: the sweep trial being trained (a ``PlannedTrial`` as a dict), which names the MLflow run and adds
            its settings to the params; None for a plain fine-tune.

    Raises:
        DataError: a split cannot be read, is empty, or its labels do not match ``labels``.
        ModelError: the candidate is unknown or its model or tokenizer cannot be loaded.
    """
    import datasets
    import torch
    import transformers
    from transformers import (
        EarlyStoppingCallback,
        PrinterCallback,
        set_seed,
    )
    from transformers.utils import logging as transformers_logging

    from ftpipe.training.callbacks import (
        CheckpointMirror,
        PeriodicCheckpoint,
        ProgressLog,
        ProgressRecord,
        SigtermCheckpoint,
    )

    # Progress bars become carriage-return noise in pod logs; ProgressLog reports progress instead.
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()

    storage = storage or Storage(config.storage)
    training = config.training
    task = get_task(config)
    labels = list(labels)
    chosen = find_candidate(config, candidate if isinstance(candidate, str) else candidate.name)
    if not launch.in_worker():
        launched = _launch_elsewhere(
            config,
            train_uri,
            validation_uri,
            labels,
            chosen.name,
            output_uri,
            storage,
            work_dir,
            callbacks,
            run_id,
            trial,
        )
        if launched is not None:
            return launched

    train = read_checked_split(storage, train_uri, "train", task, labels)
    validation = read_checked_split(storage, validation_uri, "validation", task, labels)
    for rows in _train_rows_wanted(training, len(train)):
        train = stratified_sample(train, rows, training.seed, task.strata(train))

    with launch.node_leader_first():  # one download into the model cache per node, which the other ranks then read
        resolved = models.resolve_source(chosen.source, storage)
    tokenizer = models.load_tokenizer(resolved, trust_remote_code=chosen.trust_remote_code)
    ensure_pad_token(tokenizer)
    task.prepare_tokenizer(tokenizer)
    set_seed(training.seed)  # before the model: the new head's initial weights come from this seed
    model = _load_model(task, chosen, resolved, task.head_settings(labels, train), training)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    num_parameters = models.count_parameters(model)
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(training.cpu_threads or max(1, available_cpus() // launch.local_world_size()))
    token_lengths, window = _token_lengths(task, tokenizer, train, training.seed), _window(model, tokenizer)
    max_length = fit_max_length(training, token_lengths, window)
    batch_size = _device_batch_size(training, model, num_parameters, max_length[0]) if cuda else training.batch_size
    recipe = derive(
        training,
        train_rows=len(train),
        batch_size=batch_size * launch.world_size(),  # the rows of one optimizer step, over every process
        num_parameters=num_parameters,
        max_length=max_length,
        truncation=fit_truncation(training, token_lengths, window, head_tail=task.head_tail_truncation),
    )
    for line in recipe.lines():
        logger.info("recipe: %s", line)
    tokenizer.model_max_length = recipe.max_length  # saved with the model: prediction truncates as training did
    setattr(model.config, TRUNCATION, recipe.truncation)  # and cuts a long text where training did
    tracked = tracking.TrainingRun(
        config,
        run_id,
        trial,
        params={
            **{
                name: getattr(recipe, name)
                for name in ("learning_rate", "epochs", "warmup_steps", "max_length", "truncation")
            },
            "eval_steps": recipe.eval_steps or "epoch",
            "batch_size": batch_size,
            "candidate": chosen.name,
            "adapter": training.adapter,
            "base_model_source": chosen.source,
            "num_parameters": num_parameters,
            "train_rows": len(train),
        },
    )

    model = adapters.wrap(model, training, task)
    trainable = adapters.trainable_parameters(model)
    train_dataset = task.dataset(train, tokenizer, recipe.max_length, model.config)
    validation_dataset = task.dataset(validation, tokenizer, recipe.max_length, model.config)
    logger.info(
        "fine-tuning %s (%s parameters) on %d train / %d validation rows, %d labels",
        chosen.name,
        f"{num_parameters:,}",
        len(train_dataset),
        len(validation_dataset),
        len(labels),
    )

    mirror_uri = join(output_uri, "checkpoints")
    main_process = launch.rank() == 0
    with _scratch_directory(work_dir, output_uri) as scratch:
        checkpoint_dir = Path(scratch) / "checkpoints"
        restored = None
        with launch.node_leader_first() as leader:
            if leader:
                checkpoint_dir.mkdir(exist_ok=True)
                restored = restore_checkpoints(storage, mirror_uri, checkpoint_dir)
        restored = launch.from_rank_zero(restored if launch.rank() == 0 else None)
        redone = steps_redone(storage, mirror_uri, restored) if main_process else None
        if restored or redone:
            logger.info(
                "resumed from %s: %s step(s) of the interrupted attempt redone",
                restored.uri if restored else "the start (no checkpoint was complete)",
                "an unknown number of" if redone is None else redone,
            )
        start_epoch = restored.epoch if restored else 0.0
        # When early stopping had already ended training, stop where it did (the Trainer would train on).
        max_steps = restored.global_step if restored and restored.stop_decided else -1

        task_arguments, trainer_arguments = task.trainer_settings()
        trainer_class = getattr(transformers, task.trainer_classes()[1])
        sigterm = SigtermCheckpoint()
        progress = ProgressRecord(storage, mirror_uri)
        trainer = trainer_class(
            model=model,
            args=_training_arguments(
                config, task, checkpoint_dir, len(train_dataset), recipe, max_steps, batch_size, **task_arguments
            ),
            train_dataset=train_dataset,
            eval_dataset=validation_dataset,
            # pads each batch to its own longest text (to a multiple of 8 on a GPU, the tensor cores' tile)
            data_collator=task.collator(tokenizer, pad_to_multiple_of=8 if cuda else None, model=model),
            processing_class=tokenizer,
            compute_metrics=task.compute_metrics(model.config),
            callbacks=[
                PeriodicCheckpoint(training.checkpoint_every_steps, training.checkpoint_every_minutes),
                sigterm,
                CheckpointMirror(storage, mirror_uri),
                progress,
                EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience),
                ProgressLog(),
                *tracked.callbacks(),
                *callbacks,
            ],
            **trainer_arguments,
        )
        trainer.remove_callback(PrinterCallback)  # it would print every log dict again

        started = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=str(restored.path) if restored else None)
        except BaseException:
            tracked.fail()
            raise
        finally:
            progress.close()
        train_seconds = time.perf_counter() - started
        state = trainer.state
        if sigterm.stopped_at is not None:
            tracked.fail()
            raise Interrupted(
                f"stopped by SIGTERM (a node drain or preemption) at step {sigterm.stopped_at} of {state.max_steps}, "
                f"its checkpoint saved under {mirror_uri}: a retry resumes from it"
            )

        metric_name = config.best_model_metric
        best_value = state.best_metric
        if best_value is None:  # no evaluation ran (cannot happen with per-epoch evaluation; kept safe)
            evaluations = [entry for entry in state.log_history if f"eval_{metric_name}" in entry]
            best_value = evaluations[-1][f"eval_{metric_name}"] if evaluations else float("nan")
        best_value = round(float(best_value), 6)
        epochs_trained = float(state.epoch or 0.0)
        examples = max(0.0, epochs_trained - start_epoch) * len(train_dataset)

        notes = task.finalize(trainer, validation_dataset)  # the best weights are loaded: fit what validation picks
        model_dir = Path(scratch) / "model"
        model_uri = join(output_uri, "model")
        saved_as = None
        if main_process:
            # transformers 5 writes safetensors only (the `safe_serialization` switch is gone).
            saved_as = adapters.save(trainer.model, model_dir, training.adapter_save, chosen.source, resolved)
            tokenizer.save_pretrained(model_dir)
            license_id = candidate_license(chosen, resolved)
            (model_dir / "README.md").write_text(
                _model_card(task, chosen, license_id, labels, metric_name, best_value), encoding="utf-8"
            )
            storage.upload_dir(model_dir, model_uri)
        saved_as = launch.from_rank_zero(saved_as)  # what rank 0 saved (adapters.save decides), in every result

        result_fields = dict(
            model_uri=model_uri,
            base_model_name=chosen.name,
            base_model_source=chosen.source,
            labels=labels,
            num_parameters=num_parameters,
            best_metric_name=metric_name,
            best_metric_value=best_value,
            epochs_trained=round(epochs_trained, 4),
            global_steps=state.global_step,
            train_seconds=round(train_seconds, 3),
            train_examples_per_second=round(examples / train_seconds, 3) if train_seconds > 0 else 0.0,
            stopped_early=state.global_step < state.max_steps or bool(restored and restored.stop_decided),
            resumed_from_checkpoint=restored.uri if restored else None,
            steps_redone=redone,
            processes=launch.world_size(),
            nodes=launch.nodes(),
            **held_accelerators(),
            tokens_seen=int(state.num_input_tokens_seen),
            notes=notes,
            recipe=recipe.lines(),
            adapter=training.adapter,
            trainable_parameters=trainable,
            saved_as=saved_as,
            adapter_bytes=adapters.adapter_bytes(model_dir) if main_process and saved_as == adapters.ADAPTER else None,
        )
        log_history = list(state.log_history)
        best_step = state.best_global_step
        launch.barrier()  # rank 0 saved the model before the others leave (and the shared directory goes)

    uris = {
        "log": join(output_uri, "train_log.json"),
        "md": join(output_uri, "report.md"),
        "html": join(output_uri, "report.html"),
    }
    result = FinetuneResult(
        **result_fields, log_uri=uris["log"], report_html_uri=uris["html"], report_markdown_uri=uris["md"]
    )
    if not main_process:
        return result  # its share of the training is done; rank 0 writes what there is to write
    storage.write_json(uris["log"], log_history)
    document = _document(result_fields, log_history, best_step)
    storage.write_text(uris["md"], document.markdown(), content_type="text/markdown")
    storage.write_text(uris["html"], document.html(), content_type="text/html")
    delete_prefix(storage, mirror_uri)  # everything is written: the preemption checkpoints are no longer needed
    tracked.finish(result)
    logger.info("fine-tuned model at %s (best %s %.4f)", model_uri, metric_name, best_value)
    return result


# -- reports ------------------------------------------------------------------------------------


def _summary_rows(fields: dict[str, Any]) -> list[list[object]]:
    return [
        ["base model", f"{fields['base_model_name']} ({fields['base_model_source']})"],
        ["labels", ", ".join(fields["labels"])],
        ["parameters", f"{fields['num_parameters']:,}"],
        ["trained", _trained(fields)],
        [f"best validation {fields['best_metric_name']}", fields["best_metric_value"]],
        ["epochs trained", fields["epochs_trained"]],
        ["optimizer steps", fields["global_steps"]],
        ["stopped early", "yes" if fields["stopped_early"] else "no"],
        ["resumed from", fields["resumed_from_checkpoint"] or "-"],
        ["steps redone after an interruption", "-" if fields["steps_redone"] is None else fields["steps_redone"]],
        ["training processes", fields["processes"]],
        ["GPUs held", f"{fields['accelerators']} x {fields['accelerator']}" if fields["accelerators"] else "none: CPU"],
        ["training tokens seen", f"{fields['tokens_seen']:,}"],
        ["train seconds (this run)", f"{fields['train_seconds']:.1f}"],
        ["train examples/s", f"{fields['train_examples_per_second']:.1f}"],
    ]


def _trained(fields: dict[str, Any]) -> str:
    if fields["adapter"] == adapters.NONE:
        return "every parameter (full fine-tuning)"
    share = fields["trainable_parameters"] / max(fields["num_parameters"], 1)
    trained = f"{fields['trainable_parameters']:,} parameters ({share:.2%})"
    if fields["saved_as"] == adapters.ADAPTER:
        return f"{fields['adapter']} adapters and the head: {trained}, saved alone ({fields['adapter_bytes']:,} bytes)"
    return f"{fields['adapter']} adapters and the head: {trained}, merged into the saved weights"


def _evaluations(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in log_history if "eval_loss" in entry]


def _evaluation_table(log_history: list[dict[str, Any]]) -> reports.Table:
    evaluations = _evaluations(log_history)
    keys = metric_keys(evaluations[-1]) if evaluations else {"eval_loss": "loss"}
    rows = [
        [f"{entry.get('epoch', 0.0):.2f}", entry.get("step", ""), *(entry.get(key, float("nan")) for key in keys)]
        for entry in evaluations
    ]
    return reports.Table(["epoch", "step", *(f"validation {name}" for name in keys.values())], rows)


def _loss_chart(log_history: list[dict[str, Any]]) -> str:
    figure, axes = reports.new_figure()
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    evaluations = [(entry["step"], entry["eval_loss"]) for entry in _evaluations(log_history) if "step" in entry]
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", color="#246")
    if evaluations:
        axes.plot(*zip(*evaluations, strict=True), "o-", label="validation loss", color="#c60")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    return reports.figure_to_data_uri(figure)


def _metric_chart(log_history: list[dict[str, Any]], metric: str, best_step: int | None) -> str:
    figure, axes = reports.new_figure()
    evaluations = _evaluations(log_history)
    epochs = [entry.get("epoch", 0.0) for entry in evaluations]
    keys = {key: name for key, name in (metric_keys(evaluations[-1]) if evaluations else {}).items() if name != "loss"}
    for key, name in keys.items():
        axes.plot(epochs, [entry.get(key, float("nan")) for entry in evaluations], "o-", label=name)
    chosen = [entry.get("epoch", 0.0) for entry in evaluations if best_step and entry.get("step") == best_step]
    if chosen:
        axes.axvline(chosen[0], color="#888", linestyle="--", label=f"saved (best {metric})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation")
    axes.grid(alpha=0.3)
    axes.legend()
    return reports.figure_to_data_uri(figure)


def _document(fields: dict[str, Any], log_history: list[dict[str, Any]], best_step: int | None) -> reports.Document:
    """report.md and report.html, from one document."""
    document = reports.Document(f"Fine-tuning {fields['base_model_name']}")
    document.section("Summary").table(("", "value"), _summary_rows(fields))
    document.items(fields["notes"])
    document.section("Recipe").items(fields["recipe"])
    document.section("Loss").image(_loss_chart(log_history), "training and validation loss per step")
    chart = _metric_chart(log_history, fields["best_metric_name"], best_step)
    document.section("Validation metrics").image(chart, "validation metrics per epoch")
    table = _evaluation_table(log_history)
    document.section("Validation per epoch").table(table.columns, table.rows)
    return document
