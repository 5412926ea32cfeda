"""Hyper-parameter sweeps: sample trials, halve them rung by rung, pick the winner on validation.

A sweep (``config.sweep``) trains many fine-tunes of one config with sampled settings. Rung 0 trains
``sweep.trials`` sampled trials on ``rungs[0].budget`` of the epochs; each next rung trains the best
``rungs[i].trials`` of the rung below, with the same settings, on a larger share; the winner is the best
complete trial of the last rung by the validation metric early stopping watches (``config.best_model_metric``).
The test split is never looked at. One rung at budget 1.0 (the default) is a plain sweep.

How the pipeline drives it, one task per line::

    planned = plan_rung(config, read_records(storage, prefix), rung)       # the rung's trials
    trial_config = apply_params(config, trial.params, trial.budget)        # one per trial, then finetune
    write_record(storage, prefix, TrialRecord(...))                        # each trial, when it ends
    best = winner(config, read_records(storage, prefix))                   # after the last rung

No Optuna database: every call rebuilds an in-memory study from the records on storage (one JSON object
per trial and rung under the sweep prefix, written create-only), so a retried task sees every earlier trial
and samples exactly what its first attempt sampled. Optuna is imported inside the functions that use it, so
importing this module (or ``ftpipe.config``) stays light.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ftpipe.config import (
    HIGHER,
    LOWER,
    CategoricalParam,
    IntParam,
    LogUniformParam,
    PipelineConfig,
    Scalar,
    SweepConfig,
    UniformParam,
    parse_config,
)
from ftpipe.errors import ConfigError, SweepError
from ftpipe.storage import Storage, join

if TYPE_CHECKING:
    import optuna

MIN_EPOCHS = 0.1
"""Fewest epochs a trial on a budget below 1.0 trains: less gives the metric too few steps to mean anything
(a config whose full ``training.epochs`` is below this keeps its own value)."""

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"

_ABSENT = object()  # a conditional parameter a trial did not sample


class TrialRecord(BaseModel):
    """What one trial did on one rung: written once, when the trial ends, and never replaced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trial: int = Field(ge=0, description="Trial number; a promoted trial keeps its number on every rung.")
    rung: int = Field(ge=0, description="Rung index (0: the sampled trials).")
    params: dict[str, Scalar] = Field(description="The sampled settings, {sweep.space path: value}.")
    budget: float = Field(gt=0, le=1, description="Share of the full epochs this trial trained for.")
    state: Literal["complete", "pruned", "failed"] = Field(
        description="`complete`: trained to its budget; `pruned`: stopped early as hopeless; `failed`: no result."
    )
    metric: str = Field(description="Validation metric the value is of.")
    value: float | None = Field(description="Its best validation value; None when failed or never evaluated.")
    direction: Literal["higher", "lower"] = Field(description="Which way the metric is better.")
    model_uri: str | None = Field(None, description="Where the trial's model is (None when none was kept).")
    seconds: float = Field(ge=0, description="Wall-clock seconds the trial took.")
    accelerators: int = Field(0, ge=0, description="GPUs the trial's pod held (0: it trained on CPU).")
    accelerator: str | None = Field(None, description="Their type, as CUDA names it; None on CPU.")
    tokens_seen: int | None = Field(
        None, ge=0, description="Non-padding input tokens the trial's Trainer processed; None when it failed."
    )

    @model_validator(mode="after")
    def _complete_has_a_value(self) -> TrialRecord:
        if self.state == COMPLETE and (self.value is None or math.isnan(self.value)):
            raise ValueError("a complete trial needs a (non-NaN) value")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        return cls.model_validate_json(text)


class PlannedTrial(BaseModel):
    """One trial a rung trains: its number, settings and budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trial: int
    rung: int
    params: dict[str, Scalar]
    budget: float


# -- records on storage ---------------------------------------------------------------------------


def sweep_uri(config: PipelineConfig, run_id: str) -> str:
    """The prefix a run's sweep keeps its trial records, trial models and report under."""
    return join(config.storage.artifact_root, run_id, "sweep")


def record_uri(prefix: str, rung: int, trial: int) -> str:
    """Where the record of one trial on one rung lives under a sweep prefix."""
    return join(prefix, "trials", f"rung-{rung:02d}", f"trial-{trial:05d}.json")


def write_record(storage: Storage, prefix: str, record: TrialRecord) -> str:
    """Write a trial's record create-only; returns its URI.

    Raises:
        PreconditionFailed: the trial already has a record on this rung (a retried task never overwrites one).
    """
    uri = record_uri(prefix, record.rung, record.trial)
    storage.write_json(uri, record.model_dump(mode="json"), if_none_match=True)
    return uri


def read_records(storage: Storage, prefix: str) -> list[TrialRecord]:
    """Every record under a sweep prefix, sorted by rung and trial number ([] when there is none yet)."""
    records = []
    for uri in storage.list(join(prefix, "trials")):
        if not uri.endswith(".json"):
            continue
        try:
            records.append(TrialRecord.model_validate(storage.read_json(uri)))
        except ValueError as error:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
            raise SweepError(f"unreadable sweep record {uri}: {error}") from None
    return sorted(records, key=lambda record: (record.rung, record.trial))


def first_evaluation_uri(prefix: str, rung: int, trial: int) -> str:
    """Where a trial leaves its first validation metric, for the early stop of hopeless trials in its rung."""
    return join(prefix, "first-evaluations", f"rung-{rung:02d}", f"trial-{trial:05d}.json")


def first_evaluations(storage: Storage, prefix: str, rung: int) -> dict[int, float]:
    """{trial: its first validation metric} of the rung's trials that have evaluated once."""
    found = {}
    for uri in storage.list(join(prefix, "first-evaluations", f"rung-{rung:02d}")):
        if uri.endswith(".json"):
            entry = storage.read_json(uri)
            found[int(entry["trial"])] = float(entry["value"])
    return found


# -- planning a rung ------------------------------------------------------------------------------


def plan_rung(config: PipelineConfig, records: list[TrialRecord], rung_index: int) -> list[PlannedTrial]:
    """The trials of one rung, numbered.

    Rung 0 asks the configured sampler for ``rungs[0].trials`` new trials, numbered after every recorded one,
    once an in-memory study holds every record; the same config and records give the same trials. A later rung
    promotes the best ``rungs[i].trials`` complete trials of rung ``i - 1`` (by the validation metric in its
    direction, ties to the lower trial number), keeping their numbers and settings.
    """
    sweep = _sweep(config)
    if not 0 <= rung_index < len(sweep.rungs):
        raise SweepError(f"the sweep has rungs 0 to {len(sweep.rungs) - 1}, not {rung_index}")
    rung = sweep.rungs[rung_index]
    _check_records(config, records)
    if rung_index == 0:
        first = max((record.trial for record in records), default=-1) + 1
        sampled = _sample(config, records, rung.trials)
        return [PlannedTrial(trial=first + i, rung=0, params=params, budget=rung.budget) for i, params in
                enumerate(sampled)]
    below = _ranked([record for record in records if record.rung == rung_index - 1], _direction(config))
    if not below:
        raise SweepError(f"no trial of rung {rung_index - 1} completed: nothing to promote to rung {rung_index}")
    return [
        PlannedTrial(trial=record.trial, rung=rung_index, params=dict(record.params), budget=rung.budget)
        for record in below[: rung.trials]
    ]


def suggest_rung(config: PipelineConfig, records: list[TrialRecord], rung_index: int) -> list[dict[str, Any]]:
    """The settings of one rung's trials, in the order of :func:`plan_rung` (which also numbers them)."""
    return [planned.params for planned in plan_rung(config, records, rung_index)]


def apply_params(
    config: PipelineConfig, params: dict[str, Any], budget: float, *, epochs: float | None = None
) -> PipelineConfig:
    """The config one trial trains: its settings applied, its candidate alone, its share of the epochs.

    ``training.<field>`` values replace the config's; ``candidate`` leaves only that candidate in
    ``candidates`` (so select_model and finetune take it); ``training.epochs`` becomes the full epochs times
    ``budget``, at least :data:`MIN_EPOCHS`. The full epochs are the trial's ``training.epochs`` (swept or set),
    else ``epochs`` (e.g. what ``ftpipe.training.recipe`` derived), else none: fine at budget 1.0 (the recipe
    decides at fine-tune time), a config error below it. The result has no ``sweep``: it is one plain run. The
    whole config is validated again, so a value out of its field's bounds is a :class:`ConfigError` naming it.
    """
    if not 0 < budget <= 1:
        raise ConfigError(f"a trial's budget must be in (0, 1], not {budget}")
    data = config.model_dump()
    for path, value in params.items():
        if path == "candidate":
            chosen = [candidate for candidate in data["candidates"] if candidate["name"] == value]
            if not chosen:
                raise ConfigError(f"invalid config <sweep trial>: candidate: {value!r} is not a name in `candidates`")
            data["candidates"] = chosen
        elif path.startswith("training.") and path.count(".") == 1:
            data["training"][path.partition(".")[2]] = value
        else:
            raise ConfigError(f"invalid config <sweep trial>: {path}: not a sweep setting (`candidate`, training.*)")
    full = data["training"].get("epochs") or epochs
    if budget < 1:
        if full is None:
            raise ConfigError(
                "invalid config <sweep trial>: training.epochs: a rung on a budget below 1.0 trains a share of the "
                "epochs, so they must be known: set training.epochs (or pass the derived epochs)"
            )
        full = max(full * budget, min(full, MIN_EPOCHS))
    data["training"]["epochs"] = full
    data["sweep"] = None
    return parse_config(data, "<sweep trial>")


def winner(config: PipelineConfig, records: list[TrialRecord]) -> TrialRecord:
    """The best complete trial of the last rung on validation (ties to the lower trial number)."""
    sweep = _sweep(config)
    _check_records(config, records)
    last = len(sweep.rungs) - 1
    ranked = _ranked([record for record in records if record.rung == last], _direction(config))
    if not ranked:
        raise SweepError(f"no trial of the last rung ({last}) completed: the sweep has no winner")
    return ranked[0]


def should_stop_early(
    first_metric: float, rung_metrics_so_far: list[float], direction: str, ratio: float | None
) -> bool:
    """Whether a trial is hopeless after its first validation: far worse than its rung's median so far.

    With ``m`` the median of the first validation metrics of the rung's other trials so far, a trial stops when
    its first metric is below ``m - (1 - ratio) * |m|`` for a higher-is-better metric (``ratio * m`` when
    ``m > 0``: with 0.5, under half the median), or above ``m + (1 / ratio - 1) * |m|`` for a lower-is-better one
    (``m / ratio`` when ``m > 0``: with 0.5, over twice the median). The ``|m|`` form keeps the rule pointing the
    right way for metrics that may be negative (pearson). A NaN metric (a diverged trial) always stops; NaNs
    among the others are left out. No others yet, or ``ratio`` None: never stops.
    """
    if direction not in (HIGHER, LOWER):
        raise ValueError(f"direction must be {HIGHER!r} or {LOWER!r}, not {direction!r}")
    if ratio is None:
        return False
    if math.isnan(first_metric):
        return True
    others = [value for value in rung_metrics_so_far if not math.isnan(value)]
    if not others:
        return False
    median = statistics.median(others)
    if direction == HIGHER:
        return first_metric < median - (1 - ratio) * abs(median)
    return first_metric > median + (1 / ratio - 1) * abs(median)


def parameter_importances(config: PipelineConfig, records: list[TrialRecord], rung: int = 0) -> dict[str, float]:
    """How much each swept setting mattered to the validation metric, summing to 1 (fANOVA, seeded).

    Computed over the complete trials of one rung (rung 0 by default: the most trials, all on the same budget)
    and over the settings every one of them has (a conditional setting only some trials sampled is left out).
    Fewer than two such trials or no such setting: ``{}``; one setting: it has all the importance.
    """
    sweep = _sweep(config)
    _check_records(config, records)
    done = [record for record in records if record.rung == rung and record.state == COMPLETE]
    if len(done) < 2:
        return {}
    shared = [path for path in sweep.space if all(path in record.params for record in done)]
    if len(shared) <= 1:
        return dict.fromkeys(shared, 1.0)
    if all(record.value == done[0].value for record in done):
        return dict.fromkeys(shared, 1 / len(shared))  # nothing to explain: no setting mattered more
    import optuna

    study = _new_study(config, sampler=optuna.samplers.RandomSampler(seed=sweep.seed))
    distributions = _distributions(sweep)
    for record in done:
        study.add_trial(
            optuna.trial.create_trial(
                value=record.value,
                params=record.params,
                distributions={path: distributions[path] for path in record.params},
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=sweep.seed)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator, params=shared)
    return {path: float(value) for path, value in importances.items()}


# -- the study ------------------------------------------------------------------------------------


def _sweep(config: PipelineConfig) -> SweepConfig:
    if config.sweep is None:
        raise ConfigError("the config has no `sweep` section")
    return config.sweep


def _direction(config: PipelineConfig) -> str:
    return config.task.direction(config.best_model_metric)


def _ranked(records: list[TrialRecord], direction: str) -> list[TrialRecord]:
    """Complete records, best first by value in the direction, ties to the lower trial number."""
    done = [record for record in records if record.state == COMPLETE and record.value is not None]
    sign = -1.0 if direction == HIGHER else 1.0
    return sorted(done, key=lambda record: (sign * record.value, record.trial))


def _check_records(config: PipelineConfig, records: list[TrialRecord]) -> None:
    metric, direction = config.best_model_metric, _direction(config)
    for record in records:
        if record.metric != metric or record.direction != direction:
            raise SweepError(
                f"trial {record.trial} (rung {record.rung}) was scored on {record.metric} ({record.direction} is "
                f"better), this sweep on {metric} ({direction}): records of another sweep under this prefix?"
            )


def _distributions(sweep: SweepConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    converted: dict[str, Any] = {}
    for path, param in sweep.space.items():
        if isinstance(param, LogUniformParam):
            converted[path] = FloatDistribution(param.low, param.high, log=True)
        elif isinstance(param, UniformParam):
            converted[path] = FloatDistribution(param.low, param.high)
        elif isinstance(param, IntParam):
            converted[path] = IntDistribution(param.low, param.high, log=param.log, step=param.step or 1)
        else:
            converted[path] = CategoricalDistribution(param.choices)
    return converted


def _grid(sweep: SweepConfig) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for path, param in sweep.space.items():
        if isinstance(param, CategoricalParam):
            grid[path] = list(param.choices)
        elif isinstance(param, IntParam) and param.step is not None:
            grid[path] = list(range(param.low, param.high + 1, param.step))
    return grid


def _sampler(sweep: SweepConfig, earlier: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded.

    TPE and random sampling are seeded with the sweep's seed plus the number of trials already recorded: a
    fresh in-memory study restarts a sampler's random stream, so without that a sweep extended with more
    trials would draw its first points again. QMC keeps the sweep's seed (one scrambled Sobol sequence) and
    :func:`_sample` skips the points already drawn; the grid goes through its points in one seeded order.
    """
    import optuna

    shifted = sweep.seed + earlier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sweep.sampler == "tpe":
            # constant_liar: the rung's trials are asked together, before any result; it spreads them apart.
            return optuna.samplers.TPESampler(seed=shifted, constant_liar=True)
        if sweep.sampler == "random":
            return optuna.samplers.RandomSampler(seed=shifted)
        if sweep.sampler == "qmc":
            return optuna.samplers.QMCSampler(
                seed=sweep.seed,
                scramble=True,
                independent_sampler=optuna.samplers.RandomSampler(seed=shifted),
                warn_independent_sampling=False,
                warn_asynchronous_seeding=False,
            )
        return optuna.samplers.GridSampler(_grid(sweep), seed=sweep.seed)


def _new_study(config: PipelineConfig, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if _direction(config) == HIGHER else "minimize"
    return optuna.create_study(direction=direction, sampler=sampler)


def _condition_holds(config: PipelineConfig, when: dict[str, Scalar] | None, values: dict[str, Any]) -> bool:
    sweep = _sweep(config)
    for path, expected in (when or {}).items():
        if path in sweep.space:
            actual = values.get(path, _ABSENT)
        else:  # a fixed training.<field> (the config refuses anything else)
            actual = getattr(config.training, path.partition(".")[2])
        if actual is _ABSENT or actual != expected or isinstance(actual, bool) != isinstance(expected, bool):
            return False
    return True


def _rebuilt_trial(config: PipelineConfig, latest: TrialRecord, distributions: dict[str, Any]) -> Any:
    """An Optuna trial from a trial's latest record: what the sampler learns from it.

    Complete on the last rung: COMPLETE with its value. Complete on a lower rung (not promoted, or not yet):
    PRUNED with its value as the intermediate value of that rung, as Optuna's own pruners leave a trial.
    Pruned: PRUNED likewise; failed: FAIL. Only the settings the trial had are carried.
    """
    import optuna
    from optuna.trial import TrialState

    sweep = _sweep(config)
    order = sweep.sampling_order()
    unknown = sorted(set(latest.params) - set(sweep.space))
    if unknown:
        raise SweepError(f"trial {latest.trial} has settings {unknown} that are not in sweep.space")
    for path in order:  # a conditional setting is there exactly when its condition held
        if (path in latest.params) != _condition_holds(config, sweep.space[path].when, latest.params):
            raise SweepError(f"trial {latest.trial}: sweep.space.{path} does not match its `when` condition")
    last = len(sweep.rungs) - 1
    if latest.state == FAILED:
        state, value, intermediate = TrialState.FAIL, None, None
    elif latest.state == COMPLETE and latest.rung == last:
        state, value, intermediate = TrialState.COMPLETE, latest.value, None
    else:
        state, value = TrialState.PRUNED, None
        intermediate = None if latest.value is None or math.isnan(latest.value) else {latest.rung: latest.value}
    try:
        return optuna.trial.create_trial(
            state=state,
            value=value,
            params=dict(latest.params),
            distributions={path: distributions[path] for path in latest.params},
            intermediate_values=intermediate,
        )
    except ValueError as error:
        raise SweepError(f"trial {latest.trial}'s settings do not fit sweep.space: {error}") from None


def _rebuilt_study(config: PipelineConfig, records: list[TrialRecord]) -> tuple[optuna.Study, int]:
    """An in-memory study holding every recorded trial once (its latest rung), and how many that is."""
    sweep = _sweep(config)
    latest: dict[int, TrialRecord] = {}
    for record in sorted(records, key=lambda record: (record.trial, record.rung)):
        latest[record.trial] = record
    study = _new_study(config, _sampler(sweep, len(latest)))
    distributions = _distributions(sweep)
    for number in sorted(latest):
        study.add_trial(_rebuilt_trial(config, latest[number], distributions))
    return study, len(latest)


def _sample(config: PipelineConfig, records: list[TrialRecord], count: int) -> list[dict[str, Any]]:
    """Ask the rebuilt study for ``count`` trials, define-by-run, a conditional setting only where it holds."""
    import optuna

    sweep = _sweep(config)
    study, earlier = _rebuilt_study(config, records)
    order = sweep.sampling_order()
    sampled = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sweep.sampler == "qmc":  # move the Sobol sequence past the points the recorded trials took
            for _ in range(earlier):  # (QMC draws a point at a trial's first suggestion; no conditions here)
                burnt = study.ask()
                for path in order:
                    _suggest(burnt, path, sweep.space[path])
                study.tell(burnt, state=optuna.trial.TrialState.FAIL)
        for _ in range(count):
            trial = study.ask()
            values: dict[str, Any] = {}
            for path in order:
                param = sweep.space[path]
                if _condition_holds(config, param.when, values):
                    values[path] = _suggest(trial, path, param)
            sampled.append(values)
    return sampled


def _suggest(trial: optuna.Trial, path: str, param: Any) -> Any:
    if isinstance(param, LogUniformParam):
        return trial.suggest_float(path, param.low, param.high, log=True)
    if isinstance(param, UniformParam):
        return trial.suggest_float(path, param.low, param.high)
    if isinstance(param, IntParam):
        return trial.suggest_int(path, param.low, param.high, step=param.step or 1, log=param.log)
    return trial.suggest_categorical(path, param.choices)
