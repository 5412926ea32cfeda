"""Every step's typed result: frozen, JSON round-trippable, passed between pipeline tasks as KFP artifacts.

Light on purpose (pydantic only): a task that reads an earlier step's result imports this module, never
the step itself with its libraries.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

ResultT = TypeVar("ResultT", bound="StepResult")


class StepResult(BaseModel):
    """Base of every step's result: frozen, JSON round-trippable."""

    # NaN stays NaN through JSON (pydantic writes null by default, which no float field reads back): a metric a
    # baseline cannot have (perplexity of a constant answer), a validation metric no evaluation produced.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    # Set by ftpipe.task.run_step around every step (libraries loaded included), for the cost line of the run
    # (ftpipe.cost); None where the step ran outside a pipeline task.
    wall_seconds: float | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls: type[ResultT], text: str) -> ResultT:
        return cls.model_validate_json(text)


class _Record(BaseModel):
    # NaN stays NaN through JSON (pydantic writes null by default, which no float field reads back): a metric a
    # baseline cannot have (perplexity of a constant answer), a validation metric no evaluation produced.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class FingerprintDataResult(StepResult):
    """The key and what went into it."""

    key: str
    inputs: dict[str, str]  # input URI -> ETag


class CleanDataResult(StepResult):
    """What clean_data wrote and what the next steps need to know about it."""

    output_uri: str
    train_uri: str
    validation_uri: str
    test_uri: str
    quarantine_uri: str
    report_json_uri: str
    report_markdown_uri: str
    report_html_uri: str
    fingerprint: str
    """sha256 hex of the cleaned splits' content (text, target, split); independent of row order within a split."""
    labels: list[str]
    """The model's outputs in order: classes, labels, target columns or tags, as the task says."""
    counts: dict[str, int]
    """Rows per split after cleaning."""
    rejected: dict[str, int]
    """Quarantined rows per reason (every reason of the run's task, zeros included)."""


class DriftTest(_Record):
    """One test of the drift check (``ftpipe.data.drift``): new train split against production's."""

    name: str  # label:<column> | text_length | unseen_words | vocabulary | classifier
    method: str  # the test, in words (chi-square, two-sample KS, ...)
    statistic: float  # Cramer's V, the KS statistic, a share, a distance or a cross-validated AUC
    p_value: float | None  # None for the vocabulary figures, which are no test
    rule: str  # when it counts as drift, with the configured thresholds
    drifted: bool
    detail: str = ""  # the sample sizes and what was compared


class CompareDataResult(StepResult):
    """Whether to train, and why."""

    changed: bool
    fingerprint: str
    production_version: int | None
    production_fingerprint: str | None
    message: str
    retrain_when: str = "new_data"  # drift.retrain_when of the run
    drift_checked: bool = False  # the drift check ran (a production version's training data was read)
    drifted: bool | None = None  # any test found drift; None when the check did not run
    drift_tests: list[DriftTest] = []
    drift_warning: str | None = None  # why the check could not run (production's training data unreadable, ...)
    production_train_uri: str | None = None  # the training data the check compared with
    report_markdown_uri: str | None = None
    report_html_uri: str | None = None


class CandidateScore(_Record):
    """One candidate that passed the constraints, with its probe results."""

    name: str
    source: str
    license: str | None
    num_parameters: int
    probe_metric: str
    probe_value: float
    probe_details: dict[str, float]
    score: float
    probe_seconds: float


class SkippedCandidate(_Record):
    """One candidate left out, and why."""

    name: str
    source: str
    reason: str


class SuspectedLabel(_Record):
    """A train row whose label the selected candidate's out-of-fold probe doubts (confident learning)."""

    row: int  # position in the cleaned train split
    text: str  # an excerpt
    given: str
    suggested: str  # the most probable label other than the given one
    confidence: float  # out-of-fold probability of the suggested label
    given_probability: float  # out-of-fold probability of the given label (its self-confidence)


class SelectModelResult(StepResult):
    """The chosen candidate, the full ranking (best first), the skipped candidates and suspected mislabels."""

    selected: CandidateScore
    ranking: list[CandidateScore]
    skipped: list[SkippedCandidate]
    report_markdown_uri: str
    report_html_uri: str
    report_json_uri: str
    label_noise: str = "off"  # report | quarantine | off (the setting) | not_applicable (the task has no classes)
    label_noise_checked_rows: int = 0  # the probed train rows that were checked
    label_issue_count: int = 0
    label_issues: list[SuspectedLabel] = []  # the most doubtful first, at most LABEL_ISSUES_LISTED
    train_uri: str | None = None  # quarantine: the train split without the suspects, for finetune; else None
    train_rows: int | None = None  # quarantine: the rows of train_uri
    label_issues_uri: str | None = None  # quarantine: the rows taken out, with their suggested labels


class FinetuneResult(StepResult):
    """Where the fine-tuned model is and how its training went."""

    model_uri: str
    base_model_name: str
    base_model_source: str
    labels: list[str]
    num_parameters: int
    best_metric_name: str  # the validation metric that chose the saved weights (config.best_model_metric)
    best_metric_value: float
    epochs_trained: float
    global_steps: int
    train_seconds: float
    train_examples_per_second: float
    stopped_early: bool
    resumed_from_checkpoint: str | None
    steps_redone: int | None = None  # steps an interrupted attempt had trained past that checkpoint (a lower bound)
    processes: int = 1  # training processes (torchrun ranks) over every node
    nodes: int = 1  # the nodes training ran on
    # The GPUs training held: those visible on a node (on Kubernetes exactly what the pod requested, cluster.gpu_count)
    # times the nodes; 0 on CPU. accelerator: their type as CUDA names it (None on CPU).
    accelerators: int = 0
    accelerator: str | None = None
    tokens_seen: int | None = None  # non-padding input tokens the Trainer processed, every epoch and process
    notes: list[str]  # what the task fitted on validation after training (thresholds, ...)
    recipe: list[str] = []  # each training setting, with where it came from (ftpipe.training.recipe)
    adapter: str = "none"  # training.adapter: none (full fine-tuning), lora or qlora
    trainable_parameters: int | None = None  # what the optimizer updated (all of num_parameters without an adapter)
    saved_as: str = "merged"  # what the model directory holds: merged weights, or the adapter alone (see adapters)
    adapter_bytes: int | None = None  # the adapter files' size, when saved alone
    # The sweep that chose this model (choose_trial): winner, trials, importances, space, hyperparameters.
    sweep: dict[str, Any] | None = None
    log_uri: str
    report_html_uri: str
    report_markdown_uri: str


class ProductionComparison(_Record):
    """The production version scored on the same test split."""

    version: int
    model_uri: str
    labels: list[str]
    same_labels: bool
    compared_metric: str
    metrics: dict[str, Any]
    delta: dict[str, float]  # new minus production, for each of the task's metrics
    intervals: dict[str, list[float]] = {}  # metric -> [low, high], its 95% bootstrap interval on these rows
    # metric -> [low, high]: 95% paired bootstrap interval of new minus production over the same resamples
    delta_intervals: dict[str, list[float]] = {}


class BaselineScore(_Record):
    """A baseline (majority class, mean, TF-IDF + linear model) scored on the same test rows as the model."""

    name: str
    kind: str  # constant | linear
    description: str
    required: bool  # the gate requires the model to beat it (constant always; linear unless gate.linear_baseline)
    compared_metric: str  # the gate metric it is compared on
    metrics: dict[str, float]
    intervals: dict[str, list[float]]  # metric -> [low, high], 95% bootstrap interval
    delta: dict[str, float]  # the model minus the baseline
    delta_intervals: dict[str, list[float]]  # metric -> [low, high]: 95% paired bootstrap interval of the delta


class EvaluateResult(StepResult):
    """Test metrics, the gate verdict with its reasons, and where the reports are."""

    model_uri: str
    test_uri: str
    task: str
    labels: list[str]
    primary_metric: str
    metrics: dict[str, Any]  # every metric of the task, n_examples, and the task's details (per_class, ...)
    confusion_matrix: list[list[int]]  # rows: true label, columns: predicted label, in `labels` order; [] for none
    production: ProductionComparison | None
    gate_metric: str
    gate_passed: bool
    reasons: list[str]
    report_html_uri: str
    report_markdown_uri: str
    report_json_uri: str
    predictions_uri: str
    intervals: dict[str, list[float]] = {}  # metric -> [low, high], the model's 95% bootstrap interval
    baselines: list[BaselineScore] = []  # on the same test rows and resamples
    bootstrap_resamples: int = 0  # resamples behind the intervals (0: none computed)


class RegisterModelResult(StepResult):
    """The version just registered and the aliases moved to it."""

    model_name: str
    version: int
    version_uri: str  # the version manifest (its commit point)
    model_uri: str  # the prefix with the model files; from_pretrained loads it once downloaded
    model_card_uri: str
    metadata_uri: str
    aliases_set: list[str]
    cost_line: str = ""  # the entry's cost.line (ftpipe.cost), which `ftpipe run --local` prints


class PlanTrialsResult(StepResult):
    """The trials one rung of a sweep trains (``ftpipe.sweep.PlannedTrial`` as plain dicts, for a ParallelFor)."""

    rung: int
    trials: list[dict[str, Any]]
    sweep_uri: str  # where the records are: the trials and the winner's choice read and write there


class TrainTrialResult(StepResult):
    """One trial of a sweep: its record, and the fine-tune's result when it trained."""

    record: dict[str, Any]  # ftpipe.sweep.TrialRecord
    finetuned: FinetuneResult | None


class ChooseTrialResult(StepResult):
    """The sweep's winner on validation, with every trial, for the registry and the model card."""

    winner: dict[str, Any]  # its TrialRecord
    finetuned: FinetuneResult
    trials: list[dict[str, Any]]  # every TrialRecord, by rung and trial
    importances: dict[str, float]
    space: dict[str, Any]
    report_html_uri: str
    report_markdown_uri: str
