"""regression: one or several numeric targets per text (``AutoModelForSequenceClassification``, MSE).

Data: the targets are ``task.target_columns`` (default: ``data.label_column`` alone). A cell is a number when
it is a JSON/Parquet number or a text such as ``2.5``, `` -1 ``, ``1e-3`` or ``+.5`` (CSV cells are read as
text); blank or missing cells are quarantined as ``missing_target``, anything else (``1,5``, ``abc``, ``NA``,
``inf``, ``true``, a list) as ``not_a_number``. A row is quarantined when any of its targets is. The split is
stratified on ``task.strata`` quantile bins of the first target, computed on the training rows.

Cleaned splits hold ``text`` and one float64 column per target, ``target_<name>`` (``target_sentiment`` for a
target column ``sentiment``): the prefix keeps a target named ``text`` apart from the text. A row's key (for
de-duplication and conflicting-target detection) is the canonical text of its target values (each float's
``repr``, joined by ``", "``).

Model: a regression head with ``num_labels`` = the number of targets, ``problem_type="regression"`` and
``id2label`` = the target names, trained with MSE on standardised targets ((y - mean) / scale, with each
target's mean and standard deviation on the train split, a scale of 1 where it is 0). The mean and scale are
saved in the model's ``config.json`` as ``ftpipe_target_mean`` and ``ftpipe_target_scale`` (lists in
``id2label`` order); every prediction and metric is mapped back to the original units with them.

Metrics (each averaged over the targets, with per-target values under ``per_target``): ``rmse`` (primary,
lower is better), ``mae`` (lower), ``pearson`` and ``spearman`` (higher; scipy.stats; 0 where the predictions
or the truth are constant, as a correlation is undefined there). Probe: ridge regression (scikit-learn
``RidgeCV``) on mean-pooled frozen embeddings, scored by the Spearman correlation on validation.

Predictions: ``predicted_<name>`` per target of the model, in the original units. A production model that
lacks a target of this run (renamed or added) is infinitely wrong on it (RMSE and MAE ``inf``, correlations
NaN), and the gate then compares RMSE whatever ``gate.metric`` says.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.config import LOWER
from ftpipe.errors import DataError, ModelError
from ftpipe.tasks.base import (
    CONSTANT,
    LINEAR,
    TEXT,
    Baseline,
    ProbeScore,
    Table,
    Targets,
    Task,
    embed,
    keys_of,
    reason_codes,
    require_columns,
    tfidf_features,
)
from ftpipe.tasks.text_classification import load_for_prediction, predict_outputs, tokenized

MEAN, SCALE = "ftpipe_target_mean", "ftpipe_target_scale"  # model config attributes, in id2label order
TARGET_PREFIX, PREDICTED_PREFIX = "target_", "predicted_"
METRICS = ("rmse", "mae", "pearson", "spearman")
# A plain decimal number: what float() accepts minus "inf", "nan", "1_000" and other forms a data file rarely means.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_MISSING, _NOT_A_NUMBER = "missing_target", "not_a_number"
_OUTLIER_STDS = 6.0  # a training value this many standard deviations out dominates a squared-error loss
_FEW_VALUES = 5  # a target with at most this many distinct training values is probably classes


def target_column(name: str) -> str:
    """The cleaned splits' column of target ``name``."""
    return TARGET_PREFIX + name


def predicted_column(name: str) -> str:
    """The predictions' column of target ``name``."""
    return PREDICTED_PREFIX + name


def parse_number(cell: Any) -> float | str:
    """A target cell as a finite float, or the quarantine reason (``missing_target`` or ``not_a_number``)."""
    if cell is None or cell is pd.NA:
        return _MISSING
    if isinstance(cell, bool | np.bool_):  # JSON true/false are ints to Python, never scores
        return _NOT_A_NUMBER
    if isinstance(cell, str):
        text = cell.strip()
        if not text:
            return _MISSING
        if not _NUMBER.fullmatch(text):
            return _NOT_A_NUMBER
        cell = text
    elif isinstance(cell, float | np.floating) and math.isnan(cell):
        return _MISSING  # a null in Parquet, JSON or a pandas frame
    elif not isinstance(cell, int | float | np.integer | np.floating | Decimal):
        return _NOT_A_NUMBER
    try:
        value = float(cell)
    except (OverflowError, ValueError):
        return _NOT_A_NUMBER
    return value + 0.0 if math.isfinite(value) else _NOT_A_NUMBER  # + 0.0 turns -0.0 into 0.0: one key


def parse_column(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, NaN where unusable; object array of reasons, None where usable) of one target's cells.

    Each distinct cell is parsed once.
    """
    is_bool = np.fromiter((isinstance(cell, bool | np.bool_) for cell in cells), dtype=bool, count=len(cells))
    if is_bool.any():  # True hashes like 1: factorized together, one of them would take the other's meaning
        cells = np.where(is_bool, "true or false", cells)
    try:
        codes, uniques = pd.factorize(pd.Series(cells, dtype=object), use_na_sentinel=True)
        parsed = [parse_number(cell) for cell in uniques] + [_MISSING]  # code -1 (None, NaN) picks the last
    except TypeError:  # unhashable cells (lists from JSON): none of them is a number
        codes = np.arange(len(cells))
        parsed = [parse_number(cell) for cell in cells] + [_MISSING]
    values = np.array([p if isinstance(p, float) else np.nan for p in parsed], dtype=np.float64)
    reasons = np.array([None if isinstance(p, float) else p for p in parsed], dtype=object)
    return values[codes], reasons[codes]


def canonical(values: np.ndarray) -> np.ndarray:
    """The canonical text of each row's target values (a 2-D float array): their ``repr``s joined by ``", "``."""
    return np.array([", ".join(repr(float(v)) for v in row) for row in values], dtype=object)


def quantile_bins(values: np.ndarray, bins: int, fit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(int64 bin per value, the inner edges): ``bins`` quantile bins of ``values[fit]`` (all values by default).

    Tied quantiles merge their bins, so a target with few distinct values gets fewer, non-empty bins.
    """
    reference = values if fit is None else values[fit]
    reference = reference[np.isfinite(reference)]
    if bins < 2 or reference.size == 0:
        return np.zeros(len(values), dtype=np.int64), np.array([])
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    finite = np.where(np.isfinite(values), values, reference.min())
    return np.searchsorted(edges, finite, side="right").astype(np.int64), edges


def _bin_names(name: str, edges: np.ndarray) -> list[str]:
    shown = [f"{edge:.4g}" for edge in edges]
    if not shown:
        return [f"any {name}"]
    names = [f"{name} < {shown[0]}"]
    names += [f"{low} <= {name} < {high}" for low, high in zip(shown, shown[1:], strict=False)]
    return [*names, f"{name} >= {shown[-1]}"]


def _correlation(function: Callable[..., Any], truth: np.ndarray, predicted: np.ndarray) -> float:
    """Pearson or Spearman of two vectors; 0 where either is constant (the correlation is undefined there)."""
    if len(truth) < 2 or np.ptp(truth) == 0 or np.ptp(predicted) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant input: scipy warns and may still return NaN
        value = float(function(truth, predicted).statistic)
    return 0.0 if math.isnan(value) else value


def regression_scores(truth: np.ndarray, predicted: np.ndarray | None) -> dict[str, float]:
    """RMSE, MAE, Pearson, Spearman and R^2 of one target.

    ``predicted`` None (the model lacks the target) or not finite everywhere: infinite errors, NaN correlations.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    if predicted is None or not np.isfinite(predicted).all():  # no such output, or a diverged model's NaN/inf
        return {"rmse": math.inf, "mae": math.inf, "pearson": math.nan, "spearman": math.nan, "r2": math.nan}
    return {
        "rmse": float(math.sqrt(mean_squared_error(truth, predicted))),
        "mae": float(mean_absolute_error(truth, predicted)),
        "pearson": _correlation(pearsonr, truth, predicted),
        "spearman": _correlation(spearmanr, truth, predicted),
        "r2": float(r2_score(truth, predicted)) if len(truth) >= 2 else math.nan,
    }


def resampled_regression_scores(
    truth: np.ndarray, predicted: np.ndarray | None, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`regression_scores`' RMSE, MAE, Pearson and Spearman of one target on every bootstrap resample.

    Sums of squared and absolute errors are matrix products with the resample counts; Spearman is the Pearson
    correlation of each resample's own mid-ranks (a row drawn c times is c tied copies), as scipy ranks them.
    """
    from ftpipe.tasks import bootstrap

    resamples = len(weights)
    if predicted is None or not np.isfinite(predicted).all():
        infinite, missing = np.full(resamples, math.inf), np.full(resamples, math.nan)
        return {"rmse": infinite, "mae": infinite, "pearson": missing, "spearman": missing}
    errors = predicted - truth
    total = weights.sum(axis=1).astype(np.float64)
    return {
        "rmse": np.sqrt(bootstrap.weighted_sum(weights, errors**2) / total),
        "mae": bootstrap.weighted_sum(weights, np.abs(errors)) / total,
        "pearson": bootstrap.weighted_pearson(weights, truth, predicted),
        "spearman": bootstrap.weighted_pearson(
            weights, bootstrap.weighted_midranks(weights, truth), bootstrap.weighted_midranks(weights, predicted)
        ),
    }


def averaged(per_target: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric of :data:`METRICS` averaged over the targets."""
    return {metric: float(np.mean([scores[metric] for scores in per_target.values()])) for metric in METRICS}


def standardisation(model_config: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per output of a regression model's config.

    Raises:
        ModelError: the config lacks them or they do not match its outputs (not a model of this task).
    """
    mean, scale = getattr(model_config, MEAN, None), getattr(model_config, SCALE, None)
    outputs = int(getattr(model_config, "num_labels", 0))
    if mean is None or scale is None or len(mean) != outputs or len(scale) != outputs:
        raise ModelError(
            f"the model is not an ftpipe regression model: its config lacks {MEAN}/{SCALE} for its {outputs} outputs"
        )
    return np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)


class Regression(Task):
    type = "regression"
    target_reasons = (_MISSING, _NOT_A_NUMBER)
    pipeline_tag = "text-classification"  # the Hub's task for a sequence-classification head, regression included
    huggingface_server_task = "sequence_classification"
    # standardised scores: a client computes logit * ftpipe_target_scale + ftpipe_target_mean (config.json)
    huggingface_server_output = "--return_raw_logits"
    linear_baseline = "tfidf_ridge"
    head_tail_truncation = True
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    @property
    def targets(self) -> list[str]:
        """The target columns, in output order."""
        return list(self.settings.target_columns or [self.config.data.label_column])

    # -- data ----------------------------------------------------------------------------------

    def input_columns(self) -> dict[str, str]:
        text = self.config.data.text_column
        setting = "task.target_columns" if self.settings.target_columns else "data.label_column"
        if text in self.targets:
            raise DataError(f"data.text_column {text!r} is also a target column ({setting})")
        return {text: "data.text_column", **{column: setting for column in self.targets}}

    def read_rows(self, frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
        """The text and the raw target cells: the cell itself for one target, ``{column: cell}`` for several."""
        text = frame[self.config.data.text_column]
        if len(self.targets) == 1:
            return text, frame[self.targets[0]].to_numpy(dtype=object)
        raw = np.empty(len(frame), dtype=object)
        raw[:] = frame[self.targets].to_dict(orient="records")  # one dict per row: readable in quarantine.parquet
        return text, raw

    def _parse(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, n x targets float64; reason per row, None where every target is a number)."""
        names = self.targets
        values = np.full((len(raw), len(names)), np.nan, dtype=np.float64)
        reason = np.full(len(raw), None, dtype=object)
        for j, name in enumerate(names):
            cells = raw if len(names) == 1 else np.array([_cell(row, name) for row in raw], dtype=object)
            values[:, j], reasons = parse_column(cells)
            unset = np.array([r is None for r in reason], dtype=bool)
            reason[unset] = reasons[unset]  # the first target that fails names the row's reason
        return values, reason

    def encode_targets(self, raw: np.ndarray, train: np.ndarray) -> Targets:
        names = self.targets
        values, reason = self._parse(raw)
        usable = np.array([r is None for r in reason], dtype=bool)
        fit = usable & train
        if not fit.any():
            examples = pd.unique(pd.Series(raw[train], dtype=object).astype(str))[:3]
            raise DataError(
                f"no training row has a numeric target in {', '.join(map(repr, names))} (examples of its cells: "
                f"{', '.join(map(repr, examples))}); write numbers such as 2.5 or -1e-3"
            )
        for j, name in enumerate(names):
            column = values[fit, j]
            if np.ptp(column) == 0:
                raise DataError(
                    f"target {name!r} has the same value ({column[0]:g}) in every usable training row: nothing to "
                    "learn (check the target column)"
                )
        key, vocabulary = keys_of(canonical(values), usable)
        strata, strata_names = None, None
        if self.settings.strata > 1:
            strata, edges = quantile_bins(values[:, 0], self.settings.strata, fit)
            strata_names = _bin_names(names[0], edges)
        notes = []
        outside = usable & ~train
        if outside.any():
            low, high = values[fit].min(axis=0), values[fit].max(axis=0)
            for j, name in enumerate(names):
                beyond = outside & ((values[:, j] < low[j]) | (values[:, j] > high[j]))
                if beyond.any():
                    notes.append(
                        f"target {name!r}: {int(beyond.sum())} validation/test row(s) lie outside the training "
                        f"range {low[j]:g}..{high[j]:g}"
                    )
        return Targets(reason_codes(self.target_reasons, reason), key, vocabulary, names, strata, strata_names, notes)

    def split_columns(self, targets: Targets, rows: np.ndarray) -> dict[str, Any]:
        # The vocabulary is the canonical text of the values: parsing it back gives them exactly (repr round-trips).
        table = np.array([[float(v) for v in text.split(", ")] for text in targets.vocabulary], dtype=np.float64)
        table = table.reshape(len(targets.vocabulary), len(targets.labels))
        chosen = table[targets.key[rows]]
        return {target_column(name): chosen[:, j] for j, name in enumerate(targets.labels)}

    def strata(self, frame: pd.DataFrame) -> np.ndarray | None:
        if self.settings.strata < 2:
            return None
        column = target_column(self.targets[0])
        return quantile_bins(pd.to_numeric(frame[column]).to_numpy(np.float64), self.settings.strata)[0]

    def _names_of(self, frames: dict[str, pd.DataFrame]) -> list[str]:
        """The targets present in the split frames (the configured ones, else those the columns name)."""
        columns = next(iter(frames.values())).columns
        names = [name for name in self.targets if target_column(name) in columns]
        return names or [column[len(TARGET_PREFIX) :] for column in columns if column.startswith(TARGET_PREFIX)]

    def drift_targets(self, frame: pd.DataFrame) -> dict[str, pd.Series]:
        return {name: pd.to_numeric(frame[target_column(name)]) for name in self._names_of({"split": frame})}

    def describe_targets(self, frames: dict[str, pd.DataFrame]) -> Table:
        rows = []
        for name in self._names_of(frames):
            for split, frame in frames.items():
                values = frame[target_column(name)].to_numpy(np.float64)
                if values.size == 0:
                    rows.append([split, name, 0, *([float("nan")] * 5)])
                    continue
                rows.append(
                    [
                        split,
                        name,
                        int(values.size),
                        float(values.mean()),
                        float(values.std()),
                        float(values.min()),
                        float(np.median(values)),
                        float(values.max()),
                    ]
                )
        return Table(["split", "target", "count", "mean", "std", "min", "median", "max"], rows)

    def data_warnings(self, frames: dict[str, pd.DataFrame], targets: Targets) -> list[str]:
        warnings_ = list(targets.notes)
        train = frames["train"]
        for name in targets.labels:
            values = train[target_column(name)].to_numpy(np.float64)
            if values.size == 0:
                continue
            distinct = np.unique(values)
            if len(distinct) <= _FEW_VALUES:
                warnings_.append(
                    f"target {name!r} takes only {len(distinct)} distinct values in train "
                    f"({', '.join(f'{v:g}' for v in distinct)}): if they are classes, task.type "
                    "text_classification fits better"
                )
            std = values.std()
            if std > 0:
                far = np.abs(values - values.mean()) > _OUTLIER_STDS * std
                if far.any():
                    warnings_.append(
                        f"target {name!r}: {int(far.sum())} training value(s) lie more than {_OUTLIER_STDS:g} "
                        f"standard deviations from the mean (e.g. {values[far][0]:g}); squared error weighs them "
                        "heavily"
                    )
        return warnings_

    # -- reading a split back ------------------------------------------------------------------

    def check_split(self, frame: pd.DataFrame, labels: Sequence[str], name: str) -> pd.DataFrame:
        if not labels:
            raise DataError("a regression needs at least one target, got none")
        columns = [target_column(label) for label in labels]
        require_columns(frame, (TEXT, *columns), name)
        result = pd.DataFrame({TEXT: frame[TEXT].astype(str).to_numpy(dtype=object)})
        for column in columns:
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(values)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"the {name} split's column {column} has {int(bad.sum())} value(s) that are not finite numbers "
                    f"(row {row}: {frame[column].iloc[row]!r})"
                )
            result[column] = values
        return result

    def _values(self, frame: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
        return np.column_stack([frame[target_column(label)].to_numpy(np.float64) for label in labels])

    # -- model ---------------------------------------------------------------------------------

    def head_settings(self, labels: Sequence[str], train: pd.DataFrame) -> dict[str, Any]:
        values = self._values(train, labels)
        std = values.std(axis=0)
        settings = super().head_settings(labels, train)
        settings.update(
            problem_type="regression",
            **{MEAN: values.mean(axis=0).tolist(), SCALE: np.where(std > 0, std, 1.0).tolist()},
        )
        return settings

    def load_model(self, source: str, *, trust_remote_code: bool = False, **settings: Any):
        # from_pretrained hands keyword arguments that are not config attributes yet to the model's __init__,
        # which rejects them: the mean and scale go onto the config once the model is loaded.
        extra = {key: settings.pop(key) for key in (MEAN, SCALE) if key in settings}
        model = super().load_model(source, trust_remote_code=trust_remote_code, **settings)
        for key, value in extra.items():
            setattr(model.config, key, value)
        return model

    def dataset(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, model_config: Any):
        mean, scale = standardisation(model_config)
        labels = [model_config.id2label[i] for i in range(model_config.num_labels)]
        standardised = (self._values(frame, labels) - mean) / scale
        return tokenized(
            frame[TEXT].tolist(), standardised.astype(np.float32).tolist(), tokenizer, max_length, model_config
        )

    def compute_metrics(self, model_config: Any) -> Callable[[Any], dict[str, float]]:
        mean, scale = standardisation(model_config)
        names = [model_config.id2label[i] for i in range(model_config.num_labels)]

        def compute(eval_prediction) -> dict[str, float]:
            outputs = eval_prediction.predictions
            if isinstance(outputs, tuple):
                outputs = outputs[0]
            predicted = np.asarray(outputs, dtype=np.float64).reshape(-1, len(names)) * scale + mean
            truth = np.asarray(eval_prediction.label_ids, dtype=np.float64).reshape(-1, len(names)) * scale + mean
            per_target = {name: regression_scores(truth[:, j], predicted[:, j]) for j, name in enumerate(names)}
            return averaged(per_target)

        return compute

    def finalize(self, trainer: Any, validation_dataset: Any) -> list[str]:
        mean, scale = standardisation(trainer.model.config)
        return [
            f"target {trainer.model.config.id2label[j]!r}: trained on (y - {mean[j]:.6g}) / {scale[j]:.6g}; "
            f"predictions are mapped back to the original units ({MEAN}, {SCALE} in config.json)"
            for j in range(len(mean))
        ]

    # -- probe ---------------------------------------------------------------------------------

    def probe(self, encoder: Any, tokenizer: Any, train: pd.DataFrame, validation: pd.DataFrame) -> ProbeScore:
        """Ridge regression on the frozen embeddings, scored by the Spearman correlation on validation.

        Spearman (averaged over the targets) lies in -1..1 like the classification probes' F1, so the ranking's
        cost term weighs the same, and it does not depend on the targets' units. ``RidgeCV`` picks the penalty by
        efficient leave-one-out on train.
        """
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        labels = self._names_of({"train": train})
        max_length = self.config.selection.probe_max_length
        train_x = embed(train[TEXT].tolist(), tokenizer, encoder, max_length)
        validation_x = embed(validation[TEXT].tolist(), tokenizer, encoder, max_length)
        train_y, truth = self._values(train, labels), self._values(validation, labels)
        mean, std = train_y.mean(axis=0), train_y.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))
        ridge.fit(train_x, (train_y - mean) / scale)
        predicted = ridge.predict(validation_x).reshape(len(validation), len(labels)) * scale + mean
        per_target = {name: regression_scores(truth[:, j], predicted[:, j]) for j, name in enumerate(labels)}
        scores = averaged(per_target)
        scores["r2"] = float(np.mean([s["r2"] for s in per_target.values()]))
        return ProbeScore("spearman", scores["spearman"], scores)

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, model_dir: str, frame: pd.DataFrame) -> pd.DataFrame:
        tokenizer, model = load_for_prediction(model_dir, self.model_class)
        mean, scale = standardisation(model.config)
        names = self.model_labels(model_dir)
        training = self.config.training
        outputs = predict_outputs(
            model,
            tokenizer,
            frame[TEXT].tolist(),
            batch_size=training.eval_batch_size,
            max_length=training.max_length,
            activation="identity",
        )
        values = outputs.astype(np.float64) * scale + mean
        return pd.DataFrame({predicted_column(name): values[:, j] for j, name in enumerate(names)})

    def test_metrics(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        per_target = {}
        for name in labels:
            column = predicted_column(name)
            predicted = predictions[column].to_numpy(np.float64) if column in predictions.columns else None
            per_target[name] = regression_scores(frame[target_column(name)].to_numpy(np.float64), predicted)
        return {**averaged(per_target), "n_examples": len(frame), "per_target": per_target}

    def comparison_metric(self, metric: str, same_labels: bool) -> str:
        # A target the production model lacks makes its correlations NaN, which no comparison can pass; its
        # errors are infinite, which a lower-is-better comparison handles.
        return metric if same_labels or self.settings.direction(metric) == LOWER else "rmse"

    def metric_tables(self, metrics: dict[str, Any], production: dict[str, Any] | None) -> list[tuple[str, Table]]:
        columns = ["target", "RMSE", "MAE", "Pearson", "Spearman", "R2"]
        if production is not None:
            columns += ["RMSE production", "Spearman production"]
        rows = []
        for name, scores in metrics["per_target"].items():
            row: list[Any] = [name, *(scores[key] for key in ("rmse", "mae", "pearson", "spearman", "r2"))]
            if production is not None:
                theirs = production.get("per_target", {}).get(name, {})
                row += [theirs.get("rmse", math.inf), theirs.get("spearman", math.nan)]
            rows.append(row)
        return [("Per target", Table(columns, rows))]

    def prediction_columns(self, predictions: pd.DataFrame) -> dict[str, Any]:
        return {column: predictions[column].to_numpy(np.float64) for column in predictions.columns}

    # -- bootstrap and baselines ---------------------------------------------------------------

    def resampled_metrics(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        per_target = []
        for name in labels:
            column = predicted_column(name)
            predicted = predictions[column].to_numpy(np.float64) if column in predictions.columns else None
            per_target.append(resampled_regression_scores(frame[target_column(name)].to_numpy(np.float64),
                                                          predicted, weights))  # fmt: skip
        return {metric: np.mean([scores[metric] for scores in per_target], axis=0) for metric in METRICS}

    def baselines(self, train: pd.DataFrame | None, test: pd.DataFrame, labels: Sequence[str]) -> list[Baseline]:
        """Each target's train mean, and TF-IDF word 1-2 grams + ridge regression (alpha 1) trained on train."""
        from sklearn.linear_model import Ridge

        source = train if train is not None else test
        means = self._values(source, labels).mean(axis=0)
        where = "train" if train is not None else "test (no train split given)"
        shown = ", ".join(f"{name} {mean:.4g}" for name, mean in zip(labels, means, strict=True))
        found = [
            Baseline(
                "mean",
                CONSTANT,
                f"always the mean of {where} ({shown})",
                pd.DataFrame({predicted_column(name): np.full(len(test), means[j]) for j, name in enumerate(labels)}),
            )
        ]
        if train is not None and len(train) >= 2:
            train_x, test_x = tfidf_features(train[TEXT].tolist(), test[TEXT].tolist())
            values = self._values(train, labels)
            predicted = Ridge(alpha=1.0).fit(train_x, values - means).predict(test_x).reshape(len(test), -1) + means
            found.append(
                Baseline(
                    "tfidf_ridge",
                    LINEAR,
                    f"TF-IDF word 1-2 grams + ridge regression trained on {len(train)} train rows",
                    pd.DataFrame({predicted_column(name): predicted[:, j] for j, name in enumerate(labels)}),
                )
            )
        return found

    # -- model card ----------------------------------------------------------------------------

    def card_summary(self, labels: Sequence[str], metrics: dict[str, Any]) -> str:
        several = len(labels) > 1
        return (
            f"A text regression model predicting {len(labels)} numeric target{'s' if several else ''} "
            f"({', '.join(f'`{label}`' for label in labels)}). On the held-out test split it reaches RMSE "
            f"**{float(metrics['rmse']):.4f}** (in the target's units{', averaged over the targets' if several else ''}"
            f") and Spearman correlation **{float(metrics['spearman']):.4f}**."
        )

    def usage_snippet(self) -> str:
        return "\n".join(
            [
                "import torch",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "",
                "tokenizer = AutoTokenizer.from_pretrained(DIRECTORY)",
                "model = AutoModelForSequenceClassification.from_pretrained(DIRECTORY).eval()",
                "# The model predicts standardised targets: map them back to the original units.",
                f"mean = torch.tensor(model.config.{MEAN})",
                f"scale = torch.tensor(model.config.{SCALE})",
                "names = [model.config.id2label[i] for i in range(model.config.num_labels)]",
                'texts = ["A gorgeous, moving film.", "Dull, and far too long."]',
                "with torch.inference_mode():",
                "    length = min(tokenizer.model_max_length, 512)",
                '    batch = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")',
                "    scores = model(**batch).logits * scale + mean",
                "for text, row in zip(texts, scores.tolist()):",
                "    print(text, dict(zip(names, row)))",
            ]
        )


def _cell(row: Any, name: str) -> Any:
    """Target ``name`` of a multi-target raw cell (a ``{column: cell}`` dict from :meth:`Regression.read_rows`)."""
    return row.get(name) if isinstance(row, dict) else None
