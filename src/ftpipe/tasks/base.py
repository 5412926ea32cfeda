"""The task protocol: everything that differs between kinds of fine-tuning, and nothing else.

A task (text classification, regression, ...) is one subclass of :class:`Task` in its own module under
``ftpipe.tasks``, registered in :data:`ftpipe.tasks.TASKS` under its ``config.task.type``. The steps
(clean_data, select_model, finetune, evaluate, register_model) are orchestration: they call the task for

- the data: which columns to read, what a target cell means and which rows to quarantine for it, the key
  the split is stratified on, the columns of the cleaned splits and their summary in the report;
- the model: the ``AutoModelFor...`` head and its label mapping, tokenization and the collator, the
  validation metrics, anything fitted on validation after training (thresholds);
- the probe select_model ranks candidates by;
- prediction and test metrics, the primary metric and its direction, the confusion matrix where one exists,
  the calibration of predicted probabilities, the test rows' slices, the scalar metrics the KFP UI shows;
- the model card's ``pipeline_tag``, summary and "how to use" snippet.

Heavy libraries (torch, transformers, datasets, scikit-learn) are imported inside the methods, so that
importing a task stays light. Every method gets plain data (pandas frames, numpy arrays, URIs of local
directories) and never touches S3 itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ftpipe.config import HIGHER, PipelineConfig, TaskSettings
from ftpipe.errors import DataError
from ftpipe.reports import Table

# Columns every cleaned split has; a task adds its own (``Task.split_columns``).
TEXT = "text"


@dataclass(frozen=True)
class Targets:
    """What a task made of the raw target cells of every input row (clean_data's step 3).

    Attributes:
        reason: int8 per row: 0 when the target is usable, else 1 + an index into ``Task.target_reasons``.
        key: int64 per row, an index into ``vocabulary`` (-1 where ``reason`` is not 0). Two rows have equal
            targets exactly when their keys are equal: de-duplication and conflicting-label detection compare
            keys, and the data fingerprint hashes them together with ``vocabulary``.
        vocabulary: the distinct targets as canonical text, in an order that depends only on the set of
            targets (sorted, or the configured label order), never on the order of the input rows.
        labels: the model's outputs in output order: the classes, the target columns, the tags.
        strata: int64 per row, the key a single file's train/validation/test split is stratified on (its
            values among the usable rows; anything where ``reason`` is not 0); None splits at random.
        notes: lines for the report (labels seen only outside train, a label dropped, ...).
    """

    reason: np.ndarray
    key: np.ndarray
    vocabulary: list[str]
    labels: list[str]
    strata: np.ndarray | None = None
    strata_names: list[str] | None = None  # what each stratum value stands for, for the report's notes
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProbeFeatures:
    """What a single-label probe was fitted on, kept for the label-noise check (``ftpipe.data.label_noise``) so
    that the train rows are not embedded twice."""

    features: np.ndarray
    """One row of frozen-encoder features per probed train row."""
    given: np.ndarray
    """The class index each row is labelled with."""
    classifier: Any
    """An unfitted copy of the probe's scikit-learn classifier (it has ``predict_proba``)."""


@dataclass(frozen=True)
class ProbeScore:
    """How well a frozen encoder's features predict the target: ``value`` is higher-is-better."""

    metric: str
    value: float
    details: dict[str, float]
    train_features: ProbeFeatures | None = None
    """Set by tasks with one class per row; None where a label-noise check does not apply to the task."""


class Task(ABC):
    """One kind of fine-tuning. Subclasses set the class attributes and implement the abstract methods."""

    type: ClassVar[str]
    """The ``config.task.type`` this class serves."""
    target_reasons: ClassVar[tuple[str, ...]]
    """Quarantine reasons of this task's target checks, in the order they apply (after the text's own)."""
    pipeline_tag: ClassVar[str]
    """The model card's ``pipeline_tag`` (the Hugging Face task name)."""
    huggingface_server_task: ClassVar[str]
    """The ``--task`` of KServe's Hugging Face serving runtime for this head (its ``MLTask`` name, e.g.
    ``sequence_classification``), which ``ftpipe serve-manifest`` passes (:meth:`huggingface_server_args`)."""
    huggingface_server_output: ClassVar[str | None] = None
    """The runtime's output flag: ``--return_probabilities`` (a softmax over the classes), ``--return_raw_logits``
    (the head's outputs as they are), or None for its default (the argmax class per text or token, the generated
    text)."""
    model_class: ClassVar[str]
    """The ``transformers`` auto class of the head, e.g. ``AutoModelForSequenceClassification``."""
    probe_model_class: ClassVar[str] = "AutoModel"
    """The auto class select_model loads each candidate with for :meth:`probe` (the bare encoder by default)."""
    peft_task_type: ClassVar[str]
    """peft's ``TaskType`` of the head (``SEQ_CLS``, ...): which modules it keeps fully trained under LoRA."""
    lora_targets: ClassVar[str | None] = None
    """The modules LoRA adapts unless ``training.lora_target_modules`` names them: None for peft's default of the
    model family, or ``all-linear`` (every linear layer but the output layer)."""
    label_strata: ClassVar[bool] = False
    """``Targets.strata`` are indices into ``Targets.labels`` (a row's label, or its rarest one): clean_data then
    quarantines the rows of a label with fewer than ``cleaning.min_rows_per_label`` rows as ``rare_label``. False
    where the strata are something else (score bins, entity ranks, completions) or there are none."""
    linear_baseline: ClassVar[str | None] = None
    """The name of the task's linear baseline (``tfidf_logistic``), or None where it has none: the gate
    requires beating it (``gate.linear_baseline``), so evaluate needs the train split to fit it on."""
    head_tail_truncation: ClassVar[bool] = False
    """A row is one text read as a whole (a label or score for all of it), so a text longer than the window can
    lose its middle instead of its end (``training.truncation``); False where each token matters (tags) or the
    task cuts its own inputs (the generative tasks)."""
    one_target_per_text: ClassVar[bool] = True
    """A text with two different targets is a contradiction (quarantined as ``conflicting_labels``); False where
    one input may have several right outputs (a prompt and its replies)."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.settings: TaskSettings = config.task

    # -- metrics ----------------------------------------------------------------------------------

    @property
    def primary_metric(self) -> str:
        return self.settings.primary_metric

    def higher_is_better(self, metric: str) -> bool:
        return self.settings.direction(metric) == HIGHER

    def huggingface_server_args(self) -> list[str]:
        """The arguments KServe's Hugging Face serving runtime serves this task's models with.

        ``--backend=huggingface`` comes first: ``--task`` is an argument of that backend only (the runtime's vLLM
        backend, its default for generative models it supports, parses arguments of its own).
        """
        output = [self.huggingface_server_output] if self.huggingface_server_output else []
        return ["--backend=huggingface", f"--task={self.huggingface_server_task}", *output]

    # -- data (clean_data) -----------------------------------------------------------------------

    def input_columns(self) -> dict[str, str]:
        """``{column: config setting that names it}`` of every column to read, the text column first.

        Raises:
            DataError: two settings name the same column.
        """
        data = self.config.data
        if data.text_column == data.label_column:
            raise DataError(f"data.text_column and data.label_column are both {data.text_column!r}")
        return {data.text_column: "data.text_column", data.label_column: "data.label_column"}

    def read_rows(self, frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
        """The raw text (a Series of strings, NaN where missing) and the raw target cells (object array) of a file.

        The text goes through clean_data's text cleaning, token counting, de-duplication and leakage checks.
        """
        data = self.config.data
        return frame[data.text_column], frame[data.label_column].to_numpy(dtype=object)

    @abstractmethod
    def encode_targets(self, raw: np.ndarray, train: np.ndarray) -> Targets:
        """Check and encode every row's raw target.

        Args:
            raw: the raw target cells of every input row (from :meth:`read_rows`), in input order.
            train: bool per row: the row is still usable and will be (or may be, when clean_data splits one
                file) a training row. Vocabularies learnt from the data (the label set) come from these rows.

        Raises:
            DataError: the targets cannot be used at all (e.g. one class only).
        """

    @abstractmethod
    def split_columns(self, targets: Targets, rows: np.ndarray) -> dict[str, Any]:
        """The target columns of a cleaned split (besides ``text``) for the rows at positions ``rows``."""

    def strata(self, frame: pd.DataFrame) -> np.ndarray | None:
        """An int64 stratification key per row of a cleaned split frame (None: split and sample at random)."""
        return None

    def drift_targets(self, frame: pd.DataFrame) -> dict[str, pd.Series]:
        """The targets of a cleaned split that compare_data's drift check compares with production's, by name.

        A numeric Series gets a two-sample KS test, any other (a class, or a list of classes or tags per row) a
        chi-square test of its value counts (``ftpipe.data.drift.label_test``). None by default: the generative
        tasks' targets are free text, which the drift check's text tests cover.
        """
        return {}

    @abstractmethod
    def describe_targets(self, frames: dict[str, pd.DataFrame]) -> Table:
        """The report's table of the targets per split (label counts, score statistics, ...)."""

    def data_warnings(self, frames: dict[str, pd.DataFrame], targets: Targets) -> list[str]:
        """Warnings about the cleaned targets (imbalance, labels without training rows, ...)."""
        return []

    # -- reading a split back (select_model, finetune, evaluate) --------------------------------

    @abstractmethod
    def check_split(self, frame: pd.DataFrame, labels: Sequence[str], name: str) -> pd.DataFrame:
        """A cleaned split with its columns checked against ``labels`` and normalised to their types.

        Raises:
            DataError: a column is missing, the split is empty, or a target does not fit ``labels``.
        """

    # -- the model (finetune) --------------------------------------------------------------------

    def prepare_tokenizer(self, tokenizer: Any) -> None:
        """Fit a freshly loaded tokenizer to the task before any text is tokenized (it is saved with the model)."""
        return None

    def token_lengths(self, tokenizer: Any, frame: pd.DataFrame) -> list[int]:
        """Untruncated lengths, in tokens, of the sequences the model sees for each row (the recipe's max_length)."""
        return [len(ids) for ids in tokenizer(frame[TEXT].tolist(), add_special_tokens=True)["input_ids"]]

    def head_settings(self, labels: Sequence[str], train: pd.DataFrame) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments that shape the head (``num_labels``, ``id2label``, ...).

        Whatever a model needs at prediction time (e.g. a regression target's mean and scale) goes here too:
        extra keys become attributes of the model's config and are saved with it.
        """
        id2label = dict(enumerate(labels))
        return {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}

    def load_model(self, source: str, *, trust_remote_code: bool = False, **settings: Any):
        """The model with this task's head; ``settings`` from :meth:`head_settings` plus overrides.

        Raises:
            ModelError: it cannot be loaded.
        """
        import transformers

        from ftpipe.models import load_pretrained

        auto_class = getattr(transformers, self.model_class)
        return load_pretrained(auto_class, source, trust_remote_code=trust_remote_code, **settings)

    @abstractmethod
    def dataset(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, model_config: Any):
        """A ``datasets.Dataset`` of unpadded token ids and ``labels``, tokenized once, for the Trainer."""

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None, model: Any = None):
        """The Trainer's data collator: pads each batch to its own longest row."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    @abstractmethod
    def compute_metrics(self, model_config: Any) -> Callable[[Any], dict[str, float]]:
        """The Trainer's ``compute_metrics``: validation metrics (the names of ``settings.metrics``)."""

    def trainer_classes(self) -> tuple[str, str]:
        """Names in ``transformers`` of the training-arguments and trainer classes (``Seq2Seq...`` ones generate)."""
        return "TrainingArguments", "Trainer"

    def trainer_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Extra ``TrainingArguments`` and extra ``Trainer`` keyword arguments of this task (both empty by default)."""
        return {}, {}

    def finalize(self, trainer: Any, validation_dataset: Any) -> list[str]:
        """Fit what is chosen on validation after training (e.g. decision thresholds) into the model's config.

        Returns lines for the fine-tune report. Runs on the best weights, before they are saved.
        """
        return []

    # -- the probe (select_model) ----------------------------------------------------------------

    def load_probe_model(self, source: str, *, trust_remote_code: bool = False):
        """The model :meth:`probe` runs for a candidate: ``probe_model_class`` of its weights, no new head.

        A task whose model is not one ``from_pretrained`` call on the candidate (seq2seq warm-starts an
        encoder-decoder from an encoder) builds it here as it would for training.

        Raises:
            ModelError: it cannot be loaded.
        """
        from ftpipe import models

        return models.load_encoder(source, trust_remote_code=trust_remote_code, auto_class=self.probe_model_class)

    @abstractmethod
    def probe(self, encoder: Any, tokenizer: Any, train: pd.DataFrame, validation: pd.DataFrame) -> ProbeScore:
        """Fit a cheap model on the frozen encoder's features of ``train``, score it on ``validation``."""

    # -- prediction and test metrics (evaluate) --------------------------------------------------

    @abstractmethod
    def predict(self, model_dir: str, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's predictions for every row of a split, as columns (``predicted``, ...), same row order.

        Raises:
            ModelError: the model cannot be loaded or does not fit the task.
        """

    def model_labels(self, model_dir: str) -> list[str]:
        """The outputs of a saved model, in order (its ``id2label``)."""
        import json
        from pathlib import Path

        model_config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        id2label = model_config.get("id2label") or {}
        return [str(id2label[key]) for key in sorted(id2label, key=int)]

    @abstractmethod
    def test_metrics(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        """Every metric of ``settings.metrics`` (floats), ``n_examples``, and details (``per_class``, ...).

        ``predictions`` may come from another model (production) whose outputs differ from ``labels``: a
        prediction outside ``labels`` counts as wrong.
        """

    def confusion(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> list[list[int]]:
        """The confusion matrix (rows: true, columns: predicted, in ``labels`` order); empty where none exists."""
        return []

    def reliability(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, outputs: Sequence[str]
    ) -> dict[str, Any] | None:
        """Expected calibration error and the reliability bins of the predicted probabilities, or None where a task
        predicts none (this default): ``ece``, ``rows``, ``bins`` (``ftpipe.tasks.calibration.reliability``) and
        ``kind`` (what was binned). ``outputs`` are the predicting model's outputs in the order of its scores."""
        return None

    def slice_metrics(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        """The primary metric per slice of the test rows: ``{slicing: [{"slice", "rows", "value", ...}, ...]}``, each
        slicing's rows adding up to the test rows.

        This default slices by the text's length in characters, at its quartiles over these rows
        (:func:`length_buckets`): long texts are where truncation cuts, short ones where a model has least to go on.
        Per-label numbers are the task's own details (``per_class``).
        """
        codes, buckets = length_buckets(frame[TEXT].astype(str).tolist())
        primary = self.primary_metric
        rows = []
        for code, bucket in enumerate(buckets):
            where = np.flatnonzero(codes == code)
            metrics = self.test_metrics(
                frame.iloc[where].reset_index(drop=True), predictions.iloc[where].reset_index(drop=True), labels
            )
            rows.append(
                {**bucket, "rows": int(len(where)), "metric": primary, "value": float(metrics.get(primary, np.nan))}
            )
        return {"text_length": rows}

    def comparison_metric(self, metric: str, same_labels: bool) -> str:
        """The metric the gate compares with a production model whose outputs are (not) the same."""
        return metric

    def metric_tables(self, metrics: dict[str, Any], production: dict[str, Any] | None) -> list[tuple[str, Table]]:
        """Detail tables of the evaluation report besides the overall metrics ((title, table) pairs)."""
        return []

    def prediction_columns(self, predictions: pd.DataFrame) -> dict[str, Any]:
        """Columns of predictions.parquet from :meth:`predict`'s output (parquet-friendly types)."""
        return {column: predictions[column].to_numpy() for column in predictions.columns}

    # -- bootstrap and baselines (evaluate's gate) -----------------------------------------------

    def resampled_metrics(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Every metric of ``settings.metrics`` on each bootstrap resample of the test rows: ``{metric: [resamples]}``.

        ``weights[b, i]`` is how many times resample ``b`` drew row ``i`` (``ftpipe.tasks.bootstrap``); an all-ones
        row gives :meth:`test_metrics`' values. This default scores each resample with :meth:`test_metrics`, which
        is exact but slow; a task whose metrics are sums over rows overrides it with matrix products.
        """
        positions = np.arange(len(frame))
        scored: dict[str, list[float]] = {name: [] for name in self.settings.metrics}
        for counts in weights:
            rows = np.repeat(positions, counts)
            metrics = self.test_metrics(
                frame.iloc[rows].reset_index(drop=True), predictions.iloc[rows].reset_index(drop=True), labels
            )
            for name in scored:
                scored[name].append(float(metrics.get(name, float("nan"))))
        return {name: np.asarray(values, dtype=np.float64) for name, values in scored.items()}

    def baselines(self, train: pd.DataFrame | None, test: pd.DataFrame, labels: Sequence[str]) -> list[Baseline]:
        """Cheap models the fine-tuned one must beat on the same test rows, their predictions in :meth:`predict`'s
        format. ``train`` is the cleaned train split (None: not given; a constant baseline is then fitted on the
        test rows themselves, which only makes it harder to beat). None by default."""
        return []

    # -- the model card (register_model) ---------------------------------------------------------

    @abstractmethod
    def card_summary(self, labels: Sequence[str], metrics: dict[str, Any]) -> str:
        """One paragraph: what the model does and how well (its primary metric on the test split)."""

    @abstractmethod
    def usage_snippet(self) -> str:
        """Python that loads the registered model from ``DIRECTORY`` and predicts; it must run as printed."""


# -- helpers the tasks share ------------------------------------------------------------------------


CONSTANT, LINEAR = "constant", "linear"  # kinds of baseline: always required; required unless gate.linear_baseline


@dataclass(frozen=True)
class Baseline:
    """A cheap model's predictions of the test split, for the gate.

    Attributes:
        name: short and stable (``majority``, ``mean``, ``tfidf_logistic``, ...): the report's column, the reasons.
        kind: ``constant`` (one answer for every row, learned from nothing but the targets: a model that does not
            beat it has learned nothing) or ``linear`` (TF-IDF and a linear model trained on the train split).
        description: one line for the report: what it predicts.
        predictions: one row per test row, in :meth:`Task.predict`'s format.
    """

    name: str
    kind: str
    description: str
    predictions: pd.DataFrame


def tfidf_features(train_texts: Sequence[str], test_texts: Sequence[str]):
    """TF-IDF of word 1- and 2-grams fitted on train (sublinear term frequencies): (train matrix, test matrix).

    What a user would try first on text; it is cheap (seconds on 100,000 rows) and often strong.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    return vectorizer.fit_transform(list(train_texts)), vectorizer.transform(list(test_texts))


def reason_codes(reasons: Sequence[str], names: np.ndarray) -> np.ndarray:
    """int8 codes (0 for None, else 1 + index into ``reasons``) of an object array of reason names or None."""
    index = {name: code for code, name in enumerate(reasons, start=1)}
    return np.array([index[name] if name is not None else 0 for name in names], dtype=np.int8)


def keys_of(canonical: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Keys into the sorted distinct values of ``canonical`` (text per row) where ``usable``, -1 elsewhere."""
    keys = np.full(len(canonical), -1, dtype=np.int64)
    if usable.any():
        vocabulary, codes = np.unique(canonical[usable].astype(str), return_inverse=True)
        keys[usable] = codes
        return keys, [str(value) for value in vocabulary]
    return keys, []


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    """Raises DataError naming the columns a split lacks, or when it has no rows."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(f"the {name} split lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise DataError(f"the {name} split has no rows")


def head_and_tail(ids: Sequence[int], budget: int) -> list[int]:
    """At most ``budget`` of ``ids``: the first half and the last, the middle dropped.

    Where an input is longer than a model takes, its start (an instruction, a system turn, a title) and its end (the
    question, the turn that asks for the reply) carry most of what matters (Sun et al. 2019, "How to Fine-Tune BERT
    for Text Classification?", found head+tail truncation best for long texts).
    """
    if len(ids) <= budget:
        return list(ids)
    head = budget // 2
    return [*ids[:head], *ids[len(ids) - (budget - head) :]]


TRUNCATION = "ftpipe_truncation"
"""The model config's attribute naming how its texts were cut (``head`` or ``head_tail``): prediction cuts alike."""


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, truncation: str = "head") -> dict[str, list]:
    """Token ids (special tokens included) of each text, at most ``max_length``: its first ones (``head``), or
    its first and last halves (``head_tail``, :func:`head_and_tail`; the special tokens at either end stay)."""
    if truncation != "head_tail":
        return dict(tokenizer(list(texts), truncation=True, max_length=max_length))
    whole = tokenizer(list(texts), truncation=False, verbose=False)  # verbose: no "longer than the model" warning
    return {key: [head_and_tail(ids, max_length) for ids in rows] for key, rows in whole.items()}


def length_buckets(texts: Sequence[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Each text's bucket of character length, split at the lengths' quartiles (fewer buckets where quartiles tie),
    and each bucket as ``{"slice": "41-87 chars", "min_chars", "max_chars"}``; empty buckets are left out.

    A text of exactly a quartile's length falls in the bucket below it, so the buckets hold about a quarter each.
    """
    lengths = np.array([len(text) for text in texts], dtype=np.int64)
    if len(lengths) == 0:
        return lengths, []
    cuts = np.unique(np.floor(np.quantile(lengths, [0.25, 0.5, 0.75])).astype(np.int64))
    raw = np.searchsorted(cuts, lengths, side="left")  # bucket i: cuts[i-1] < length <= cuts[i]
    present = np.unique(raw)
    codes = np.searchsorted(present, raw)
    buckets = []
    for code in range(len(present)):
        inside = lengths[codes == code]
        low, high = int(inside.min()), int(inside.max())
        buckets.append({"slice": f"{low}-{high} chars", "min_chars": low, "max_chars": high})
    return codes, buckets


def sorted_by_length(texts: Sequence[str]) -> np.ndarray:
    """Positions of ``texts`` by length: batches of similar lengths need little padding."""
    return np.argsort([len(text) for text in texts], kind="stable")


def cell_text(value: Any) -> str | None:
    """A raw target cell as text: ``1.0`` (JSON/Parquet floats) is ``"1"``, blanks and NaN are missing (None)."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def cells_as_text(raw: np.ndarray) -> np.ndarray:
    """Object array of :func:`cell_text` of each cell; converts each distinct value once."""
    try:
        codes, uniques = pd.factorize(pd.Series(raw, dtype=object), use_na_sentinel=True)
    except TypeError:  # unhashable values (lists from JSON): compare them by their text
        codes, uniques = pd.factorize(pd.Series([None if v is None else str(v) for v in raw]), use_na_sentinel=True)
    names = np.array([cell_text(value) for value in uniques] + [None], dtype=object)
    return names[codes]  # code -1 (missing) picks the trailing None


def stratified_sample(frame: pd.DataFrame, rows: int, seed: int, strata: np.ndarray | None) -> pd.DataFrame:
    """At most ``rows`` rows keeping the shares of ``strata`` (plain random without strata or when one is tiny)."""
    if rows >= len(frame):
        return frame.reset_index(drop=True)
    if strata is None:
        return frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    from sklearn.model_selection import train_test_split

    try:
        sample, _ = train_test_split(frame, train_size=rows, stratify=strata, random_state=seed)
    except ValueError:  # a stratum with a single row: keep one row of every stratum, fill the rest at random
        firsts = frame.groupby(strata, sort=False).head(1)
        rest = frame.drop(index=firsts.index)
        sample = pd.concat([firsts, rest.sample(n=max(0, rows - len(firsts)), random_state=seed)])
    return sample.reset_index(drop=True)


def embed(texts: Sequence[str], tokenizer, encoder, max_length: int, batch_size: int = 32) -> np.ndarray:
    """Mean-pooled last hidden states of a frozen encoder, batched with texts sorted by length."""
    import torch

    device = next(encoder.parameters()).device
    order = sorted_by_length(texts)
    pooled: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch_texts = [texts[i] for i in order[start : start + batch_size]]
            batch = tokenizer(batch_texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            batch = {key: value.to(device) for key, value in batch.items()}
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled.append(mean.float().cpu().numpy())
    embeddings = np.empty((len(texts), pooled[0].shape[1]), dtype=np.float32)
    embeddings[order] = np.concatenate(pooled)
    return embeddings


def device():
    """The device models run on: the GPU where there is one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
