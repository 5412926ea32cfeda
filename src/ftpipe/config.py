"""Strict configuration for one ftpipe pipeline run.

One YAML file holds everything a run needs except credentials, which come from the environment
(or, on Kubernetes, from the Secret named in ``cluster.s3_secret_name``). Every model is frozen and
rejects unknown keys, so a typo in a config file is an error that names the field path, never a
silently ignored setting. ``ftpipe config schema`` prints the JSON schema of :class:`PipelineConfig`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ftpipe.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config model: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(StrictModel):
    """How the cleaned data is split when the user gives one file only."""

    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of rows for validation.")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of rows for the test split.")
    seed: int = Field(42, description="Seed of the stratified split, so reruns split identically.")


class DataConfig(StrictModel):
    """Where the labelled text is and how to read it."""

    uri: str | None = Field(
        None, description="One dataset (s3://, file:// or a local path), split by ftpipe into train/validation/test."
    )
    train_uri: str | None = Field(None, description="The user's own train split (instead of `uri`).")
    validation_uri: str | None = Field(None, description="The user's own validation split.")
    test_uri: str | None = Field(None, description="The user's own test split.")
    format: Literal["auto", "csv", "jsonl", "parquet", "conll"] = Field(
        "auto",
        description="File format; `auto` goes by the file extension (.conll, .bio and .iob are CoNLL column files).",
    )
    text_column: str = Field(
        "text",
        description="Column holding the input text (token_classification: the list of tokens; causal_lm_sft and "
        "seq2seq: the prompt or source text).",
    )
    label_column: str = Field(
        "label",
        description="Column holding the target: the label (text_classification), the labels "
        "(multi_label_classification), the score (regression, unless task.target_columns names others), the list "
        "of tags (token_classification), the completion or target text (causal_lm_sft, seq2seq).",
    )
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="The allowed labels, in class-index order. Rows with any other label are quarantined. "
        "When omitted, the sorted labels of the training data are used.",
    )
    label_mapping: dict[str, str] | None = Field(
        None, description="Maps raw label values (as text, e.g. '0') to label names (e.g. 'ham') before validation."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        own = [self.train_uri, self.validation_uri, self.test_uri]
        if self.uri is None and not all(own):
            raise ValueError("give either `uri` or all of `train_uri`, `validation_uri` and `test_uri`")
        if self.uri is not None and any(own):
            raise ValueError("give either `uri` or the three split URIs, not both")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("`labels` contains duplicates")
        return self


class CleanDataConfig(StrictModel):
    """What clean_data does to each row."""

    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] = Field("NFKC", description="Unicode normalisation form.")
    strip_html: bool = Field(True, description="Remove HTML tags and unescape entities.")
    lowercase: bool = Field(False, description="Lower-case the text (leave off for cased tokenizers).")
    deduplicate: bool = Field(True, description="Drop exact duplicates of the normalised text.")
    remove_leakage: bool = Field(True, description="Drop validation/test rows whose text also occurs in train.")
    near_duplicate_threshold: float | None = Field(
        0.7,
        gt=0,
        le=1,
        description="Jaccard similarity of word shingles (MinHash LSH) from which two cleaned texts are near-copies: "
        "within a split, a near-copy of a kept text with the same target is quarantined as `near_duplicate` (with "
        "`deduplicate`); a validation or test text near a train text as `near_leakage` (with `remove_leakage`). "
        "0.7 with 2-word shingles finds most copies edited in 1-3 words of a 10-30 word text while no two unrelated "
        "texts of the benchmark's data reach it; 0.9 finds hardly any (see README, Near-duplicates). None: off.",
    )
    near_duplicate_shingle: int = Field(
        2,
        ge=1,
        le=8,
        description="Words per shingle for near-duplicates (a text with fewer words is one shingle). 1 ignores word "
        "order; 3 or more misses short edited texts (one changed word changes that many shingles).",
    )
    min_chars: int = Field(1, ge=1, description="Rows shorter than this after cleaning are quarantined.")
    max_chars: int | None = Field(
        100_000,
        ge=1,
        description="Rows whose text as read is longer than this many characters are quarantined as `too_long`, "
        "before they are cleaned or tokenized (a 5 MB cell is a broken quote or a pasted file, not an example; "
        "100,000 characters is some 25,000 tokens, far past any encoder's window). None: no limit.",
    )
    min_rows_per_label: int = Field(
        2,
        ge=1,
        description="Rows of a label with fewer usable rows than this (in train; in the whole file when ftpipe "
        "splits it) are quarantined as `rare_label` and listed in the report: a label seen once can be neither "
        "split nor learned. Tasks whose split strata are their labels only (text_classification, "
        "multi_label_classification: each row's rarest label); it does not apply to regression, token "
        "classification or the generative tasks. 1 turns it off.",
    )
    min_tokens: int = Field(1, ge=1, description="Rows with fewer tokens than this are quarantined.")
    max_tokens: int = Field(512, ge=1, description="Rows with more tokens than this are quarantined.")
    tokenizer: str | None = Field(
        None, description="Tokenizer source for the length filter; defaults to the first candidate's source."
    )
    token_stats_sample: int | None = Field(
        10_000,
        ge=100,
        description="Texts that provably fit min_tokens..max_tokens (a bound from their characters, for WordPiece "
        "and byte-level BPE tokenizers) are not tokenized: only those that might not fit are, plus a seeded sample "
        "of this many for the report's token-length statistics. The kept and quarantined rows are the same as with "
        "every text tokenized. None tokenizes every text (exact statistics, slower on large data).",
    )

    @model_validator(mode="after")
    def _token_bounds(self) -> CleanDataConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError("`min_tokens` must not exceed `max_tokens`")
        return self


class CandidateConfig(StrictModel):
    """One pre-trained model that may be fine-tuned."""

    name: str = Field(description="Short name used in reports.", pattern=r"^[A-Za-z0-9._-]+$")
    source: str = Field(description="A local directory, an s3:// prefix or a Hugging Face hub id.")
    license: str | None = Field(
        None, description="Licence of the weights; when omitted, read from the model card's `license:`."
    )
    trust_remote_code: bool = Field(
        False, description="Run the model's own code. Off unless this candidate is named explicitly."
    )


class SelectModelConfig(StrictModel):
    """Constraints and the probe that rank candidates."""

    max_parameters: int | None = Field(None, gt=0, description="Candidates with more parameters are skipped.")
    allowed_licenses: list[str] | None = Field(
        None, description="Licences (lower-case SPDX ids) that may be used; None allows any."
    )
    probe_train_rows: int = Field(512, ge=8, description="Train rows for the frozen-embedding probe.")
    probe_validation_rows: int = Field(512, ge=8, description="Validation rows that score the probe.")
    probe_max_length: int = Field(128, ge=8, description="Max tokens per text in the probe.")
    cost_weight: float = Field(
        0.02,
        ge=0,
        description="Probe macro-F1 given up per tenfold increase in parameters when ranking (cost term).",
    )
    label_noise: Literal["report", "quarantine", "off"] = Field(
        "report",
        description="Suspected mislabels among the probed train rows (confident learning on the selected "
        "candidate's out-of-fold probe probabilities; single-label tasks only): `report` lists them, "
        "`quarantine` also trains on a copy of the train split without them, `off` skips the check.",
    )
    label_noise_folds: int = Field(
        5, ge=2, le=20, description="Cross-validation folds of the out-of-fold probe probabilities."
    )


class FinetuneConfig(StrictModel):
    """Hyper-parameters of the fine-tune step (Hugging Face Trainer).

    Settings left unset (None) are fitted to the data and the model by ``ftpipe.training.recipe``, which logs
    each derived value with its reason; a value set here always wins.
    """

    learning_rate: float | None = Field(
        None, gt=0, description="None: by model size (1e-4 up to 50M parameters, 5e-5 to 150M, then 3e-5, 2e-5)."
    )
    epochs: float | None = Field(
        None,
        gt=0,
        description="Maximum epochs; early stopping may end sooner. None: 3, or more to reach 500 optimizer steps "
        "on small sets (at most 50 epochs and 30,000 steps).",
    )
    batch_size: int = Field(
        16, ge=1, description="Per-device train batch size (with several processes, each takes this many rows)."
    )
    eval_batch_size: int = Field(64, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float | None = Field(
        None, ge=0, lt=1, description="Share of the steps the learning rate warms up over; None: 6% (10% above 150M)."
    )
    weight_decay: float = Field(0.01, ge=0)
    dropout: float | None = Field(None, ge=0, lt=1, description="Overrides the model's dropout when set.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing (text_classification only).")
    max_length: int | None = Field(
        None,
        ge=8,
        description="Texts are truncated to this many tokens. None: the length 98% of the training texts fit in "
        "(a multiple of 8, at least 32, at most the model's window); the model is saved with it.",
    )
    truncation: Literal["auto", "head", "head_tail"] = Field(
        "auto",
        description="How a text longer than max_length is cut: `head` keeps its first tokens, `head_tail` its first "
        "and last halves (Sun et al. 2019 found it best for long texts), for the tasks that read each text as a "
        "whole (text and multi-label classification, regression; the others keep their own way). auto: head_tail "
        "where texts are longer than the model's window, otherwise head. The model is saved with the choice.",
    )
    calibrate: bool = Field(
        True,
        description="Temperature scaling for the classifiers (text and multi-label classification): after training, "
        "one temperature T dividing the logits is fitted on the validation split (least NLL), saved in the model's "
        "config.json as ftpipe_temperature and applied to every prediction, so that scores are calibrated "
        "probabilities (the predicted labels do not change). false: the scores as the head gives them (T = 1).",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Evaluate on validation (and checkpoint) every this many steps. None: every epoch, or about "
        "10 times in all when that is more often (small sets), at most every 2,000 steps (large sets).",
    )
    seed: int = 42
    early_stopping_patience: int = Field(2, ge=1, description="Evaluations without improvement before stopping.")
    metric_for_best_model: str | None = Field(
        None,
        description="Validation metric that early stopping watches and that picks the saved weights: one of the "
        "task's metrics, or `loss`; None: the task's primary metric (its direction comes from the task).",
    )
    max_train_rows: int | None = Field(None, ge=1, description="Use at most this many training rows.")
    train_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Train on this share of the training rows (a stratified sample; before max_train_rows). A "
        "sweep over it (e.g. a grid of 0.1, 0.25, 0.5, 1.0) is a learning curve: does more labelled data help?",
    )
    group_by_length: bool = Field(True, description="Batch texts of similar length to cut padding.")
    # Parameter-efficient fine-tuning (peft). Flat settings, so that a sweep can vary them (`when` the adapter is on).
    adapter: Literal["none", "lora", "qlora"] = Field(
        "none",
        description="`none`: full fine-tuning; `lora`: low-rank adapters on the attention (and, per family, MLP) "
        "projections while the pre-trained weights stay frozen, the task head fully trained; `qlora`: LoRA on a "
        "4-bit NF4 base (bitsandbytes, CUDA GPUs only).",
    )
    adapter_save: Literal["merged", "adapter"] = Field(
        "merged",
        description="What a version holds when an adapter trained: `merged` weights (a plain `from_pretrained` "
        "directory), or the `adapter` alone (with the trained head) and a reference to its exact base model (source "
        "and SHA-256 of its weights). `ftpipe registry export NAME VERSION --merged DIR` writes a plain directory "
        "from either. Without an adapter the whole model is saved either way.",
    )
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Module names (or suffixes) to adapt; None: peft's default for the model family (BERT: query, "
        "value; Llama: q_proj, v_proj; ...), never the task head.",
    )
    lora_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha / sqrt(r).")
    lora_dora: bool = Field(False, description="DoRA: weight-decomposed low-rank adaptation (slower, often better).")
    # Speed. Each switch below is on by default where it leaves the results unchanged (up to float rounding).
    fused_optimizer: bool = Field(
        True, description="AdamW as one fused kernel per step (CPU and CUDA); off: PyTorch's per-tensor loop."
    )
    attention: Literal["sdpa", "flash_attention_2", "eager", "auto"] = Field(
        "sdpa",
        description="Attention kernel: `sdpa` (PyTorch's scaled_dot_product_attention; a model without it falls "
        "back to its default, with a warning), `flash_attention_2` (the flash-attn package, CUDA GPUs with bf16 or "
        "fp16 only: anywhere else finetune stops with transformers' reason), `eager` (the model's own matmul-softmax "
        "code), `auto` (transformers' choice).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="`auto`: bf16 mixed precision on a CUDA GPU that has it, fp16 on older CUDA GPUs, fp32 on CPU. "
        "`bf16` on a CPU runs on AMX / AVX-512-BF16 where the CPU has them; `fp16` needs a CUDA GPU.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them: much less activation "
        "memory (longer sequences or larger batches on a GPU) for a second forward pass through each layer. Same "
        "results.",
    )
    torch_compile: bool = Field(
        False,
        description="Compile the model with torch.compile. Off by default: compiling takes minutes on a small CPU "
        "and pays for itself only on long runs.",
    )
    gpu_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None,
        description="Per-device train batch size on a CUDA GPU: a number, `auto` (the largest power-of-two multiple "
        "of `batch_size` whose estimated memory fits the GPU, at most 1024), or None to keep `batch_size`. Off by "
        "default: larger batches mean fewer optimizer steps, which changes training.",
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads when training on CPU; None: the CPUs this process may use."
    )
    # Scale-out in one pod and preemption (ftpipe.training.launch, ftpipe.training.callbacks).
    processes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Training processes in the fine-tune pod, launched with torchrun (distributed data parallel): "
        "None: one per CUDA GPU the pod sees, one on a CPU. Above 1 on a CPU node, the processes talk over gloo "
        "(for tests and CPU nodes), each with its share of the CPUs.",
    )
    distributed_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend with several processes; `auto`: nccl on CUDA, else gloo."
    )
    fsdp: bool = Field(
        False,
        description="Shard the weights, gradients and optimizer state across the GPUs (FSDP full_shard, wrapped "
        "per transformer layer) instead of copying the whole model to each (DDP): for models that do not fit one "
        "GPU. Needs CUDA and more than one process.",
    )
    checkpoint_every_steps: int | None = Field(
        1000,
        ge=1,
        description="Save (and mirror to S3) a checkpoint every this many optimizer steps, besides each evaluation; "
        "None: only at evaluations.",
    )
    checkpoint_every_minutes: float | None = Field(
        10.0,
        gt=0,
        description="Save a checkpoint when this many minutes passed since the last one, whichever of the two "
        "comes first: a preempted node loses at most about this much training. None: no time-based checkpoints.",
    )


class GateConfig(StrictModel):
    """When a newly trained model may be registered."""

    metric: str | None = Field(
        None, description="Test metric compared with production: one of the task's; None: its primary metric."
    )
    tolerance: float = Field(
        0.0,
        ge=0,
        description="How much worse than the production model the new one may be, in the metric's units: the lower "
        "bound of the 95% paired bootstrap interval of its improvement over production on the test rows must be at "
        "least -tolerance. With 0 a model must be shown to be no worse (identical predictions pass; an equally good "
        "retrain on a few hundred rows usually needs 0.01-0.02).",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Absolute bounds on test metrics, {metric: bound}: a floor for a metric where higher is "
        "better (accuracy, f1_macro), a ceiling where lower is better (rmse, mae).",
    )
    bootstrap_resamples: int = Field(
        1000,
        ge=20,
        description="Bootstrap resamples of the test rows behind every 95% interval and the paired comparisons "
        "with production and the baselines (percentile intervals; 1,000 is the usual count for 95% bounds).",
    )
    bootstrap_seed: int = Field(0, description="Seed of the resamples: the same test split gets the same intervals.")
    linear_baseline: Literal["require", "report"] = Field(
        "require",
        description="`require`: the model must beat the TF-IDF + linear baseline trained on the train split on the "
        "gate metric; `report`: its scores are reported, its comparison is a note. The constant baseline "
        "(majority class, mean) is always required.",
    )


class DriftConfig(StrictModel):
    """What makes a scheduled run fine-tune, and compare_data's drift check of the cleaned train split against the
    production version's (see ``ftpipe.data.drift``)."""

    retrain_when: Literal["new_data", "drift", "always"] = Field(
        "new_data",
        description="`new_data`: fine-tune when the cleaned data's fingerprint differs from production's; `drift`: "
        "only when the drift check finds the new train split drifted from production's (a changed fingerprint "
        "alone is not enough); `always`: every run. With no production version every run fine-tunes, and a run's "
        "`force_retrain` always does. Where production's training data cannot be read, `drift` falls back to "
        "`new_data` with a warning.",
    )
    check: bool = Field(
        True,
        description="Run the drift check whenever the fingerprint changed and production's training data can be "
        "read, so the report shows it even when `retrain_when` does not depend on it. `drift` runs it regardless.",
    )
    significance: float = Field(
        0.01, gt=0, lt=1, description="p-value below which the label, length and classifier tests find a difference."
    )
    min_effect: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Smallest KS statistic (length, numeric labels) or Cramer's V (class labels) that counts as "
        "drift: with thousands of rows a difference too small to matter is still significant.",
    )
    max_unseen_excess: float = Field(
        0.05,
        gt=0,
        le=1,
        description="How far the share of the new data's word occurrences unseen in production's may exceed the "
        "same share between two samples of production's own data (of the same size) before the vocabulary "
        "drifted. Movie-review snippets against tweets: 0.11 over the snippets' own.",
    )
    max_vocabulary_excess: float = Field(
        0.1,
        gt=0,
        le=1,
        description="How far the Jensen-Shannon distance (base 2, 0..1) between the most common words' frequencies "
        "may exceed the distance between two samples of production's own data before the vocabulary drifted. "
        "Snippets against tweets: 0.37 over the snippets' own.",
    )
    min_auc: float = Field(
        0.6,
        gt=0.5,
        le=1,
        description="Cross-validated AUC of the classifier telling the two samples apart at or above which (and "
        "p below `significance`) the texts drifted; 0.5 is chance.",
    )
    sample_rows: int = Field(
        5000, ge=50, description="Most rows drawn from each side (seeded) for the vocabulary and classifier tests."
    )
    permutations: int = Field(
        100,
        ge=10,
        description="Label permutations behind the classifier's p-value (the smallest p it can give is "
        "1 / (permutations + 1)); each refits the cross-validated classifier.",
    )
    seed: int = Field(0, description="Seed of the samples, folds and permutations: the same data, the same figures.")


class RegistryConfig(StrictModel):
    """The model registry on S3."""

    uri: str = Field("s3://ftpipe/registry", description="Prefix under which every registered model lives.")
    model_name: str = Field(description="Registered model name.", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    alias_on_register: str | None = Field(
        "staging", description="Alias moved to each new version; None leaves aliases alone."
    )


class StorageConfig(StrictModel):
    """S3-compatible storage. Credentials never go here: they come from the environment."""

    endpoint_url: str | None = Field(
        None,
        description="S3 endpoint. When None: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else the embedded server "
        "started by `ftpipe s3 up`, else AWS itself.",
    )
    region: str = "us-east-1"
    artifact_root: str = Field("s3://ftpipe/runs", description="Prefix for every artifact a run writes.")
    connect_timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(
        3, ge=0, description="boto3's retries of an S3 call (its standard retry mode) before a task fails."
    )


class TrackingConfig(StrictModel):
    """Experiment tracking in MLflow, besides the KFP UI (``ftpipe.tracking``). Off unless ``mlflow_uri`` is set."""

    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking server (http:// or https://), or a local file store (file: or a path); None: "
        "off. Credentials come from the environment (MLFLOW_TRACKING_TOKEN, or _USERNAME and _PASSWORD).",
    )
    experiment: str | None = Field(
        None, min_length=1, description="MLflow experiment the runs go to; None: `ftpipe-<registry.model_name>`."
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _tracking_uri(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        scheme, sep, rest = uri.partition("://")
        if sep and scheme in ("http", "https"):
            if not rest.split("/", 1)[0]:
                raise ValueError(f"{uri!r} names no host")
            return uri
        if uri.startswith("file:") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
            return uri  # a file store: file:/path, file:///path or a plain local path
        raise ValueError(f"{uri!r}: use an http:// or https:// tracking server, or file: / a local path")


# A Kubernetes object name that KServe accepts for an InferenceService (a DNS-1035 label).
_K8S_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class ServingConfig(StrictModel):
    """The KServe InferenceService that `ftpipe serve-manifest` writes for a registered version (``ftpipe.serving``).

    GPUs are of ``cluster.gpu_resource`` and the pods go on ``cluster.node_selector`` with ``cluster.tolerations``;
    the model is read with the S3 credentials of ``cluster.s3_secret_name``.
    """

    name: str | None = Field(
        None,
        max_length=63,
        pattern=_K8S_NAME,
        description="InferenceService name; None: registry.model_name with '.' and '_' made '-'.",
    )
    namespace: str | None = Field(
        None, description="Namespace of the InferenceService; None: cluster.namespace, else kubectl's current one."
    )
    service_account: str | None = Field(
        None,
        max_length=253,
        description="ServiceAccount the predictor runs as, which names the S3 Secret; None: <name>-kserve.",
    )
    runtime: str | None = Field(
        None,
        description="ServingRuntime to use; None: KServe picks the one serving modelFormat huggingface "
        "(kserve-huggingfaceserver).",
    )
    gpu_count: int | None = Field(
        None, ge=0, description="GPUs per replica; None: 1 when cluster.gpu_count is above 0, else none."
    )
    cpu: str = Field("1", description="CPU request of each replica.")
    memory: str = Field("4Gi", description="Memory request and limit of each replica.")
    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 lets KServe scale to zero).")
    max_replicas: int | None = Field(None, ge=1, description="Most replicas; None: KServe's default.")


class KubeflowModelRegistryConfig(StrictModel):
    """A Kubeflow Model Registry that register_model also records each new version in (its REST API)."""

    url: str = Field(description="The registry's REST endpoint, e.g. https://model-registry.kubeflow.svc:8443.")
    author: str = Field(min_length=1, description="Author of the model versions (and owner of new models).")
    api_version: Literal["v1", "v1alpha3"] = Field(
        "v1", description="REST API version: v1 (Model Registry from mid-2026), v1alpha3 (earlier releases)."
    )
    model_name: str | None = Field(None, min_length=1, description="Registered model name; None: registry.model_name.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("http", "https") or not rest.split("/", 1)[0]:
            raise ValueError(f"{url!r}: use an http:// or https:// URL with a host")
        return url.rstrip("/")


class ExportConfig(StrictModel):
    """Other model registries that register_model records each new version in, after the ftpipe registry's commit
    (``ftpipe.export``): by reference to the version's S3 files, which stay the source of truth."""

    mlflow: bool = Field(
        False, description="Register each version in the MLflow Model Registry of tracking.mlflow_uri."
    )
    mlflow_model_name: str | None = Field(
        None, min_length=1, description="MLflow registered model name; None: registry.model_name."
    )
    kubeflow_model_registry: KubeflowModelRegistryConfig | None = Field(
        None, description="Record each version in this Kubeflow Model Registry; None: off."
    )


class Toleration(StrictModel):
    """A Kubernetes toleration, as in a pod spec."""

    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ClusterConfig(StrictModel):
    """How the compiled pipeline runs on Kubernetes. Ignored by the local runner."""

    image: str | None = Field(None, description="Component image; defaults to ftpipe:<package version>.")
    s3_secret_name: str = Field("ftpipe-s3-credentials", description="Secret with the S3 credentials.")
    s3_secret_access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", description="Key of the access key id.")
    s3_secret_secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", description="Key of the secret key.")
    gpu_count: int = Field(1, ge=0, description="GPUs for the fine-tune task (0 runs it on CPU).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the accelerator.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels for the fine-tune task.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations for the fine-tune task.")
    finetune_cpu: str = Field("4", description="CPU request of the fine-tune task.")
    finetune_memory: str = Field("16G", description="Memory request of the fine-tune task.")
    finetune_retries: int = Field(
        2, ge=0, description="Retries of the fine-tune task (preempted GPU nodes, S3 not answering)."
    )
    step_retries: int = Field(
        3, ge=0, description="Retries of the other steps (S3 not answering or throttling, a lost pod)."
    )
    retry_backoff_s: int = Field(
        30, ge=1, le=600, description="Wait before a task's first retry; doubled for each next one, up to 10 min."
    )
    # Several nodes (ftpipe.training.trainjob): the fine-tune task launches a Kubeflow Trainer v2 TrainJob.
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Nodes the fine-tuning runs on, each with gpu_count GPUs, finetune_cpu and finetune_memory. "
        "Above 1 the fine-tune task creates a Kubeflow Trainer v2 TrainJob and follows it (Trainer v2 and the "
        "RBAC of k8s/components/trainer must be installed).",
    )
    trainer_runtime: str = Field(
        "torch-distributed",
        min_length=1,
        description="ClusterTrainingRuntime the TrainJob runs on (Kubeflow Trainer's torch-distributed: torchrun "
        "on every node, rendezvous on node 0).",
    )
    namespace: str | None = Field(
        None,
        description="Namespace of the TrainJob; None: the fine-tune task's own (its service account's namespace).",
    )


# A price: finite and not negative.
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class CostConfig(StrictModel):
    """Prices for the run's estimated cost (``ftpipe.cost``): no price for what the run used, no estimate."""

    accelerator_hour_price: dict[str, Price] = Field(
        default_factory=dict,
        description="Price of one GPU for one hour, by accelerator type. The type a run is priced at: `accelerator` "
        "when set, else the GPU name the fine-tune ran on as CUDA reports it (`NVIDIA H100 80GB HBM3`), else a "
        "value of `cluster.node_selector` (GKE's `cloud.google.com/gke-accelerator: nvidia-h100-80gb`).",
    )
    cpu_hour_price: Price | None = Field(
        None,
        description="Price of one hour of a fine-tune on CPU only, per node (the fine-tune pod, or this machine "
        "when run locally); None: no estimate for a CPU run.",
    )
    accelerator: str | None = Field(
        None,
        min_length=1,
        description="The key of `accelerator_hour_price` that a GPU run is priced at; None: found from the GPU the "
        "fine-tune ran on or the node selector (see `accelerator_hour_price`).",
    )
    currency: str = Field("USD", min_length=1, description="The currency of the prices, named in the cost line.")

    @field_validator("accelerator")
    @classmethod
    def _has_a_price(cls, accelerator: str | None, info: ValidationInfo) -> str | None:
        prices = info.data.get("accelerator_hour_price", {})  # validated before it: declared first
        if accelerator is not None and accelerator not in prices:
            raise ValueError(f"{accelerator!r} has no price in cost.accelerator_hour_price ({', '.join(prices)})")
        return accelerator


# A value a categorical parameter or a condition may take (what Optuna's CategoricalDistribution accepts).
Scalar = bool | int | float | str | None


class _SweepParam(StrictModel):
    """What every distribution of a sweep's search space has: an optional condition."""

    when: dict[str, Scalar] | None = Field(
        None,
        min_length=1,
        description="Sample this parameter only when every named setting equals its value: another parameter of "
        "the space (`candidate`, `training.<field>`) or a fixed `training.<field>` of the config. Otherwise the "
        "trial does not set it and the config's value stays.",
    )


class LogUniformParam(_SweepParam):
    """A float drawn uniformly on a log scale (learning rates, weight decay)."""

    type: Literal["log_uniform"] = "log_uniform"
    low: float = Field(gt=0, description="Smallest value (> 0: its logarithm is taken).")
    high: float = Field(gt=0, description="Largest value.")

    @model_validator(mode="after")
    def _ordered(self) -> LogUniformParam:
        if self.low >= self.high:
            raise ValueError(f"`low` ({self.low}) must be below `high` ({self.high})")
        return self


class UniformParam(_SweepParam):
    """A float drawn uniformly between two bounds (dropout, warm-up ratio)."""

    type: Literal["uniform"] = "uniform"
    low: float = Field(description="Smallest value.")
    high: float = Field(description="Largest value.")

    @model_validator(mode="after")
    def _ordered(self) -> UniformParam:
        if self.low >= self.high:
            raise ValueError(f"`low` ({self.low}) must be below `high` ({self.high})")
        return self


class IntParam(_SweepParam):
    """An integer between two bounds, both included (batch size, max length)."""

    type: Literal["int"] = "int"
    low: int = Field(description="Smallest value.")
    high: int = Field(description="Largest value (included).")
    step: int | None = Field(None, ge=1, description="Only low, low + step, ... high; a grid needs it.")
    log: bool = Field(False, description="Draw on a log scale (low must then be >= 1, and no step).")

    @model_validator(mode="after")
    def _ordered(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"`low` ({self.low}) must not exceed `high` ({self.high})")
        if self.log and (self.low < 1 or self.step not in (None, 1)):
            raise ValueError("`log` needs `low` >= 1 and no `step`")
        if self.step is not None and (self.high - self.low) % self.step:
            raise ValueError(f"`high` - `low` ({self.high - self.low}) is not a multiple of `step` ({self.step})")
        return self


class CategoricalParam(_SweepParam):
    """One of a list of values (a candidate's name, an attention kernel, a batch size)."""

    type: Literal["categorical"] = "categorical"
    choices: list[Scalar] = Field(min_length=1, description="The values to choose from.")

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Scalar]) -> list[Scalar]:
        if len({json.dumps(choice) for choice in choices}) != len(choices):
            raise ValueError("contains duplicates")
        return choices


SweepParam = Annotated[LogUniformParam | UniformParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Rung(StrictModel):
    """One rung of successive halving: how many trials train, on what share of the training budget."""

    trials: int = Field(ge=1, description="Trials trained on this rung (the best of the rung below).")
    budget: float = Field(gt=0, le=1, description="Share of `training.epochs` each trial trains for.")


class SweepConfig(StrictModel):
    """A hyper-parameter sweep: many fine-tunes of sampled settings, the best on validation wins.

    The trials of rung 0 are sampled (`trials` of them); each next rung trains the best trials of the rung below
    (by the validation metric early stopping watches) on a larger share of the epochs. The test split is never
    looked at: the winner is the best complete trial of the last rung on validation.
    """

    space: dict[str, SweepParam] = Field(
        min_length=1,
        description="Search space, {setting path: distribution}: `training.<field>` (any fine-tune setting but "
        "`metric_for_best_model`) or `candidate` (categorical over the names in `candidates`).",
    )
    sampler: Literal["tpe", "qmc", "random", "grid"] = Field(
        "tpe",
        description="Optuna sampler of rung 0: `tpe` (Bayesian, after 10 random trials), `qmc` (scrambled Sobol), "
        "`random`, `grid` (every combination; only categorical and stepped int parameters).",
    )
    trials: int = Field(ge=1, description="Trials sampled and trained on rung 0 (the first rung's `trials`).")
    parallelism: int = Field(1, ge=1, description="Trials trained at the same time.")
    seed: int = Field(42, description="Seed of the sampler, so a rerun with the same records samples the same.")
    rungs: list[Rung] = Field(
        None,
        min_length=1,
        validate_default=True,
        description="Successive halving: trials strictly decreasing (the first is `trials`), budgets increasing, "
        "the last 1.0. Default: one rung of `trials` at budget 1.0 (no halving).",
    )
    early_stop_ratio: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description="A trial whose first validation metric is worse than this fraction of its rung's median so far "
        "stops (for a lower-is-better metric: worse than median / ratio); None never stops a trial early.",
    )

    @field_validator("rungs", mode="before")
    @classmethod
    def _one_rung_by_default(cls, rungs: Any, info: Any) -> Any:
        if rungs is None:  # a missing or invalid `trials` fails on its own; the placeholder keeps errors to one
            return [{"trials": info.data.get("trials", 1), "budget": 1.0}]
        return rungs

    @field_validator("rungs")
    @classmethod
    def _halving(cls, rungs: list[Rung], info: Any) -> list[Rung]:
        trials = info.data.get("trials")
        if trials is not None and rungs[0].trials != trials:
            raise ValueError(f"the first rung's trials ({rungs[0].trials}) must equal `trials` ({trials})")
        for lower, upper in zip(rungs, rungs[1:], strict=False):
            if upper.trials >= lower.trials:
                raise ValueError(f"trials must strictly decrease from rung to rung ({lower.trials}, {upper.trials})")
            if upper.budget <= lower.budget:
                raise ValueError(f"budgets must strictly increase from rung to rung ({lower.budget}, {upper.budget})")
        if rungs[-1].budget != 1.0:
            raise ValueError(f"the last rung's budget must be 1.0 (the full training), not {rungs[-1].budget}")
        return rungs

    @field_validator("sampler")
    @classmethod
    def _sampler_fits_the_space(cls, sampler: str, info: Any) -> str:
        space = info.data.get("space") or {}
        if sampler == "qmc":  # a Sobol point has one coordinate per parameter, every trial
            for path, param in space.items():
                if param.when is not None:
                    raise ValueError(f"qmc takes no conditional parameters (space.{path} has `when`); use tpe")
        if sampler != "grid":
            return sampler
        for path, param in space.items():
            if not (isinstance(param, CategoricalParam) or (isinstance(param, IntParam) and param.step is not None)):
                raise ValueError(
                    f"grid needs every parameter categorical or an int with a `step`; space.{path} is {param.type}"
                    + (" without a step" if isinstance(param, IntParam) else "")
                )
            if param.when is not None:
                raise ValueError(f"grid takes no conditional parameters (space.{path} has `when`)")
        return sampler

    @model_validator(mode="after")
    def _conditions_form_no_cycle(self) -> SweepConfig:
        self.sampling_order()
        if self.sampler == "grid" and self.trials > self.grid_size:
            raise ValueError(f"`trials` ({self.trials}) exceeds the {self.grid_size} points of the grid")
        return self

    def sampling_order(self) -> list[str]:
        """The space's paths in an order where each comes after the parameters its condition names."""
        order: list[str] = []
        visiting: list[str] = []

        def visit(path: str) -> None:
            if path in order:
                return
            if path in visiting:
                raise ValueError(f"space.{path}.when: conditions form a cycle ({' -> '.join([*visiting, path])})")
            visiting.append(path)
            for other in self.space[path].when or {}:
                if other == path:
                    raise ValueError(f"space.{path}.when: a parameter cannot depend on itself")
                if other in self.space:
                    visit(other)
            visiting.pop()
            order.append(path)

        for path in self.space:
            visit(path)
        return order

    @property
    def grid_size(self) -> int:
        """Points of the grid (every combination of every parameter's values)."""
        size = 1
        for param in self.space.values():
            if isinstance(param, CategoricalParam):
                size *= len(param.choices)
            elif isinstance(param, IntParam) and param.step is not None:
                size *= (param.high - param.low) // param.step + 1
        return size


# Settings a sweep cannot vary: trials scored on different metrics could not be compared.
_UNSWEPT_TRAINING = {"metric_for_best_model"}


HIGHER, LOWER = "higher", "lower"  # which way a metric is better


class TaskSettings(StrictModel):
    """What every task config says about its metrics: their names and directions, and the primary one."""

    metrics: ClassVar[dict[str, str]]
    """Test and validation metric names of the task, each ``higher`` or ``lower`` (is better)."""
    primary_metric: ClassVar[str]
    """The gate uses it unless the config names another."""

    def direction(self, metric: str) -> str:
        return LOWER if metric == "loss" else self.metrics[metric]

    @property
    def validation_metric(self) -> str:
        """Early stopping and sweeps watch it on validation unless the config names another: the primary metric,
        except where that one needs what training does not compute (generation)."""
        return self.primary_metric


class TextClassificationTask(TaskSettings):
    """Sequence classification: one label per text, binary or multi-class."""

    metrics: ClassVar[dict[str, str]] = {
        name: HIGHER for name in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro")
    }
    primary_metric: ClassVar[str] = "f1_macro"
    type: Literal["text_classification"] = "text_classification"


class MultiLabelClassificationTask(TaskSettings):
    """Any number of labels per text (a delimited string or a JSON list in `data.label_column`)."""

    metrics: ClassVar[dict[str, str]] = {
        name: HIGHER
        for name in ("f1_micro", "f1_macro", "subset_accuracy", "precision_micro", "recall_micro", "f1_samples")
    }
    primary_metric: ClassVar[str] = "f1_micro"
    type: Literal["multi_label_classification"] = "multi_label_classification"
    label_delimiter: str = Field(
        "|", min_length=1, description="Separates the labels of a row given as one string (JSON lists need none)."
    )
    thresholds: Literal["per_label", "shared"] = Field(
        "per_label",
        description="Decision thresholds chosen on validation: one per label (the best F1 of each) or one shared "
        "threshold (the best micro-F1).",
    )
    unseen_labels: Literal["quarantine", "drop"] = Field(
        "quarantine",
        description="A label (in data.labels) that never occurs in train: `quarantine` the rows that carry it, or "
        "`drop` it from their label sets (rows left with no label are then quarantined too). Either way the report "
        "names it.",
    )


class RegressionTask(TaskSettings):
    """One or several numeric targets per text (MSE on a standardised target)."""

    metrics: ClassVar[dict[str, str]] = {"rmse": LOWER, "mae": LOWER, "pearson": HIGHER, "spearman": HIGHER}
    primary_metric: ClassVar[str] = "rmse"
    type: Literal["regression"] = "regression"
    target_columns: list[str] | None = Field(
        None, min_length=1, description="Columns holding the numeric targets; None: `data.label_column` alone."
    )
    strata: int = Field(
        10,
        ge=1,
        le=100,
        description="Quantile bins (of the train rows) of the first target that the split and the samples of "
        "select_model and finetune are stratified on; 1 splits at random.",
    )

    @field_validator("target_columns")
    @classmethod
    def _distinct_targets(cls, columns: list[str] | None) -> list[str] | None:
        if columns is not None and len(set(columns)) != len(columns):
            raise ValueError("names a column more than once")
        return columns


class TokenClassificationTask(TaskSettings):
    """A tag for every token (named entities, parts of speech): lists of tokens and tags, or CoNLL files."""

    metrics: ClassVar[dict[str, str]] = {
        name: HIGHER for name in ("f1", "precision", "recall", "token_accuracy", "f1_macro")
    }
    primary_metric: ClassVar[str] = "f1"
    type: Literal["token_classification"] = "token_classification"
    scheme: Literal["IOB2", "plain"] = Field(
        "IOB2",
        description="`IOB2`: B-/I- entity tags and O, scored at entity level (seqeval, strict); `plain`: one tag per "
        "token (e.g. parts of speech), scored per token.",
    )
    label_all_subwords: bool = Field(
        False,
        description="Train on every sub-word of a token (continuations of B-X get I-X); off: the first sub-word "
        "carries the tag and the rest are ignored by the loss.",
    )
    tags: list[str] | None = Field(
        None,
        min_length=2,
        description="The tag set, in output order; rows with another tag are quarantined. IOB2: `O` and B-X/I-X "
        "tags, `O` among them. None: the tags of train (IOB2: `O`, then B-X and I-X of every entity type seen, "
        "sorted by type; plain: sorted, `O` first).",
    )
    repair_iob2: bool = Field(
        False,
        description="IOB2 only: rewrite an I-X that does not continue an X entity (after O, another type, or at the "
        "start) as B-X, which turns IOB1 data (e.g. the original CoNLL-2003 files) into IOB2; off: quarantine such "
        "rows as `invalid_iob2`.",
    )

    @model_validator(mode="after")
    def _tag_set(self) -> TokenClassificationTask:
        if self.tags is None:
            return self
        if len(set(self.tags)) != len(self.tags):
            raise ValueError("`tags` contains duplicates")
        if self.scheme == "IOB2":
            wrong = [tag for tag in self.tags if tag != "O" and not re.fullmatch(r"[BI]-\S+", tag)]
            if wrong:
                raise ValueError(f"`tags` {wrong[:5]} are not IOB2 tags (O, B-TYPE, I-TYPE); or set scheme: plain")
            if "O" not in self.tags:
                raise ValueError("`tags` must contain O in the IOB2 scheme")
        return self


class GenerationSettings(StrictModel):
    """Decoding of the test split (and of the model card's example): greedy or beam search, no sampling."""

    max_new_tokens: int = Field(64, ge=1, le=4096)
    num_beams: int = Field(1, ge=1, le=16)
    length_penalty: float = Field(1.0, description="Beam search only: >1 favours longer outputs, <1 shorter.")
    repetition_penalty: float = Field(1.0, ge=1.0)
    batch_size: int = Field(16, ge=1, description="Prompts generated for at once.")


class _GenerativeTask(TaskSettings):
    metrics: ClassVar[dict[str, str]] = {
        "exact_match": HIGHER,
        "rouge_l": HIGHER,
        "chrf": HIGHER,
        "bleu": HIGHER,
        "perplexity": LOWER,
    }
    scoring: Literal["free_text", "exact_match"] = Field(
        "free_text",
        description="How test generations are scored first: `free_text` by ROUGE-L (rouge-score), with chrF and "
        "BLEU (sacrebleu) beside it; `exact_match` (answers from a closed set, e.g. labels recast as instruction -> "
        "answer) by the share of generations equal to the reference after trimming and case folding, and the split "
        "is then stratified on the answer. All are computed either way.",
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    report_samples: int = Field(20, ge=0, le=1000, description="Test generations shown next to their references.")

    @property
    def validation_metric(self) -> str:
        return "loss"  # validation is scored without generating: its loss (and perplexity) per evaluation

    @property
    def primary_metric(self) -> str:  # type: ignore[override]  # chosen by `scoring`, not fixed per class
        return "exact_match" if self.scoring == "exact_match" else "rouge_l"


class CausalLMSFTTask(_GenerativeTask):
    """Supervised fine-tuning of a decoder (GPT-family) on prompt -> completion pairs, in the model's chat format."""

    type: Literal["causal_lm_sft"] = "causal_lm_sft"
    chat_template: bool = Field(
        True,
        description="Wrap each pair in the model's chat template (user turn, assistant turn); off, or for a model "
        "without one: `prompt_template` + completion + the end-of-sequence token.",
    )
    system_prompt: str | None = Field(
        None, description="A system turn before every prompt (chat template only), unless a conversation has its own."
    )
    messages_column: str | None = Field(
        None,
        description="Read conversations from this column instead of `data.text_column` and `data.label_column`: a "
        "list of `{role, content}` turns (roles system, user, assistant) per row, as JSON Lines or Parquet write it "
        "(or JSON text in a CSV cell). The last assistant turn is the completion, the turns before it the prompt.",
    )
    prompt_template: str = Field(
        "### Instruction:\n{prompt}\n\n### Response:\n",
        description="The text before the completion when no chat template is used; must contain `{prompt}`.",
    )
    completion_only_loss: bool = Field(
        True, description="The loss covers the completion (assistant) tokens only; off: the whole formatted text."
    )
    packing: bool = Field(
        True,
        description="Pack each batch into one sequence with positions restarting per example (padding-free), where "
        "the model's attention keeps the examples apart exactly (checked on the model before training); otherwise, "
        "or off, each batch is padded to its longest example.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError("must contain {prompt}")
        return template


class Seq2SeqTask(_GenerativeTask):
    """Fine-tuning of an encoder-decoder (T5, BART, Marian) on source -> target pairs; a BERT-family encoder is
    warm-started into one (its weights on both sides, new cross-attention)."""

    type: Literal["seq2seq"] = "seq2seq"
    source_prefix: str | None = Field(
        None,
        description="Text put before every source, as the model was pre-trained to expect (T5: `summarize: `, "
        "`translate English to German: `); None: the source as it is.",
    )


# The tasks with a module in ftpipe.tasks (ftpipe.tasks.TASKS), told apart by `type`.
Task = Annotated[
    TextClassificationTask
    | MultiLabelClassificationTask
    | RegressionTask
    | TokenClassificationTask
    | CausalLMSFTTask
    | Seq2SeqTask,
    Field(discriminator="type"),
]


class PipelineConfig(StrictModel):
    """Everything one ftpipe run needs (except credentials)."""

    task: Task = Field(default_factory=TextClassificationTask)
    data: DataConfig
    cleaning: CleanDataConfig = Field(default_factory=CleanDataConfig)
    candidates: list[CandidateConfig] = Field(min_length=1, description="Models to choose from, best guess first.")
    selection: SelectModelConfig = Field(default_factory=SelectModelConfig)
    training: FinetuneConfig = Field(default_factory=FinetuneConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig
    storage: StorageConfig = Field(default_factory=StorageConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    sweep: SweepConfig | None = Field(
        None, description="A hyper-parameter sweep over `training` settings and candidates; None trains once."
    )
    serving: ServingConfig = Field(default_factory=ServingConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, candidates: list[CandidateConfig]) -> list[CandidateConfig]:
        names = [c.name for c in candidates]
        if len(set(names)) != len(names):
            raise ValueError("candidate names must be unique")
        return candidates

    @model_validator(mode="after")
    def _metrics_of_the_task(self) -> PipelineConfig:
        known = self.task.metrics
        named = ", ".join(known)
        checks = [("gate.metric", self.gate.metric)]
        checks += [("training.metric_for_best_model", self.training.metric_for_best_model)]
        checks += [(f"gate.thresholds.{name}", name) for name in self.gate.thresholds]
        for path, metric in checks:
            allowed = metric in known or (metric == "loss" and path.startswith("training"))
            if metric is not None and not allowed:
                raise ValueError(f"{path}: {metric!r} is not a metric of task {self.task.type} (it has {named})")
        return self

    @model_validator(mode="after")
    def _mlflow_export_has_a_server(self) -> PipelineConfig:
        if self.export.mlflow and self.tracking.mlflow_uri is None:
            raise ValueError("export.mlflow: true needs tracking.mlflow_uri, the MLflow server to register in")
        return self

    @model_validator(mode="after")
    def _sweep_fits_the_config(self) -> PipelineConfig:
        if self.sweep is None:
            return self
        names = [candidate.name for candidate in self.candidates]
        for path, param in self.sweep.space.items():
            where = f"sweep.space.{path}"
            if path == "candidate":
                if not isinstance(param, CategoricalParam):
                    raise ValueError(f"{where}: the candidate is categorical over candidate names, not {param.type}")
                unknown = [choice for choice in param.choices if choice not in names]
                if unknown:
                    raise ValueError(f"{where}: {unknown} are not names in `candidates` ({', '.join(names)})")
            else:
                field = self._training_field(where, path)
                for value in _values_to_check(param):
                    self._check_training_value(where, field, value)
            for other, value in (param.when or {}).items():
                here = f"{where}.when.{other}"
                if other in self.sweep.space:
                    condition = self.sweep.space[other]
                    if isinstance(condition, CategoricalParam) and value not in condition.choices:
                        raise ValueError(f"{here}: {value!r} is not one of sweep.space.{other}'s choices")
                elif other == "candidate":
                    raise ValueError(
                        f"{here}: `candidate` is not in sweep.space (a fixed candidate is only known "
                        "after select_model)"
                    )
                else:
                    self._check_training_value(here, self._training_field(here, other), value)
        return self

    def _training_field(self, where: str, path: str) -> str:
        """The FinetuneConfig field a `training.<field>` path names."""
        prefix, _, field = path.partition(".")
        if prefix != "training" or field not in FinetuneConfig.model_fields:
            raise ValueError(
                f"{where}: unknown setting {path!r} (use `candidate` or training.<field>, one of "
                f"{', '.join(FinetuneConfig.model_fields)})"
            )
        if field in _UNSWEPT_TRAINING:
            raise ValueError(f"{where}: {path} cannot be swept: trials scored on different metrics do not compare")
        return field

    def _check_training_value(self, where: str, field: str, value: Any) -> None:
        try:
            FinetuneConfig.model_validate({**self.training.model_dump(), field: value})
        except ValidationError as error:
            problem = error.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where}: {value!r} does not fit training.{field}: {problem}") from None

    @property
    def gate_metric(self) -> str:
        """The test metric the gate compares with production."""
        return self.gate.metric or self.task.primary_metric

    @property
    def best_model_metric(self) -> str:
        """The validation metric that early stopping watches."""
        return self.training.metric_for_best_model or self.task.validation_metric

    @property
    def tokenizer_source(self) -> str:
        """Tokenizer used by the cleaning length filter."""
        return self.cleaning.tokenizer or self.candidates[0].source

    def to_json(self) -> str:
        """The config as compact JSON, the form passed between pipeline tasks."""
        return self.model_dump_json()


def _values_to_check(param: LogUniformParam | UniformParam | IntParam | CategoricalParam) -> list[Any]:
    """Values whose fit to a training field proves the whole range fits (field bounds are intervals)."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        return [param.low, param.high]
    # The float just above `low` is not a whole number, so an int field refuses a float distribution.
    return [param.low, param.high, math.nextafter(param.low, param.high)]


def _format_validation_error(source: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if not path:  # a check across sections: its message starts with the field path
            problems.append(message.removeprefix("Value error, "))
            continue
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{path}: {message}")
    return f"invalid config {source}: " + "; ".join(problems)


def parse_config(data: Any, source: str = "<config>") -> PipelineConfig:
    """Validate a mapping as a :class:`PipelineConfig`, raising :class:`ConfigError` naming the field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(source, error)) from None


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate one YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    return parse_config(data, str(path))


def config_from_json(text: str) -> PipelineConfig:
    """Rebuild the config passed between pipeline tasks."""
    return parse_config(json.loads(text), "<pipeline parameter>")


def config_schema() -> dict[str, Any]:
    """JSON schema of the config file."""
    return PipelineConfig.model_json_schema()


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A name usable as one path segment."""
    return _SAFE_NAME.sub("-", text).strip("-") or "unnamed"
