"""Hyper-parameter sweeps: the config's checks, trial records on storage, sampling, halving, the winner."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from ftpipe import sweep
from ftpipe.config import parse_config
from ftpipe.errors import ConfigError, PreconditionFailed, SweepError
from ftpipe.storage import Storage
from ftpipe.sweep import TrialRecord

LR = {"type": "log_uniform", "low": 1e-5, "high": 1e-3}
CANDIDATE = {"type": "categorical", "choices": ["small", "large"]}
DROPOUT_FOR_LARGE = {"type": "uniform", "low": 0.0, "high": 0.3, "when": {"candidate": "large"}}


def make_config(sweep_section=None, **sections):
    """A valid config with two candidates, 4 epochs and the given sweep section (merged over a default)."""
    data = {
        "data": {"uri": "x.csv"},
        "candidates": [{"name": "small", "source": "s"}, {"name": "large", "source": "l"}],
        "registry": {"model_name": "m"},
        "training": {"epochs": 4.0},
        "sweep": {"space": {"training.learning_rate": LR}, "trials": 4, **(sweep_section or {})},
        **sections,
    }
    return parse_config(data)


def record(trial, value, *, rung=0, state="complete", params=None, metric="f1_macro", direction="higher"):
    return TrialRecord(
        trial=trial,
        rung=rung,
        params=params if params is not None else {"training.learning_rate": 1e-4},
        budget=1.0,
        state=state,
        metric=metric,
        value=value,
        direction=direction,
        model_uri=f"s3://b/trial-{trial}",
        seconds=1.5,
    )


def sampled_records(config, values):
    """Records of rung 0 for the config's first sampled trials, with the given validation values."""
    planned = sweep.plan_rung(config, [], 0)
    return [record(p.trial, value, params=p.params) for p, value in zip(planned, values, strict=False)]


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"space": {"training.learnig_rate": LR}}, "sweep.space.training.learnig_rate: unknown setting"),
        ({"space": {"model.depth": LR}}, "sweep.space.model.depth: unknown setting"),
        ({"space": {"candidate": {"type": "categorical", "choices": ["small", "huge"]}}},
         "sweep.space.candidate: ['huge'] are not names in `candidates`"),
        ({"space": {"candidate": {"type": "uniform", "low": 0, "high": 1}}},
         "sweep.space.candidate: the candidate is categorical"),
        ({"space": {"training.learning_rate": {"type": "log_uniform", "low": 0, "high": 1e-3}}},
         "sweep.space.training.learning_rate.log_uniform.low: Input should be greater than 0"),
        ({"space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 1e-5}}},
         "sweep.space.training.learning_rate.log_uniform: Value error, `low` (0.001) must be below `high`"),
        ({"space": {"training.dropout": {"type": "uniform", "low": 0.1, "high": 1.5}}},
         "sweep.space.training.dropout: 1.5 does not fit training.dropout: Input should be less than 1"),
        ({"space": {"training.batch_size": {"type": "uniform", "low": 8, "high": 64}}},
         "sweep.space.training.batch_size: 8.000000000000002 does not fit training.batch_size"),
        ({"space": {"training.batch_size": {"type": "int", "low": 0, "high": 64}}},
         "sweep.space.training.batch_size: 0 does not fit training.batch_size: Input should be greater than"),
        ({"space": {"training.attention": {"type": "categorical", "choices": ["sdpa", "flash"]}}},
         "sweep.space.training.attention: 'flash' does not fit training.attention"),
        ({"space": {"training.metric_for_best_model": {"type": "categorical", "choices": ["loss"]}}},
         "sweep.space.training.metric_for_best_model: training.metric_for_best_model cannot be swept"),
        ({"rungs": [{"trials": 4, "budget": 0.5}, {"trials": 4, "budget": 1.0}]},
         "sweep.rungs: Value error, trials must strictly decrease from rung to rung (4, 4)"),
        ({"rungs": [{"trials": 4, "budget": 0.5}, {"trials": 2, "budget": 0.4}, {"trials": 1, "budget": 1.0}]},
         "sweep.rungs: Value error, budgets must strictly increase from rung to rung (0.5, 0.4)"),
        ({"rungs": [{"trials": 4, "budget": 0.25}, {"trials": 2, "budget": 0.5}]},
         "sweep.rungs: Value error, the last rung's budget must be 1.0"),
        ({"rungs": [{"trials": 9, "budget": 0.34}, {"trials": 3, "budget": 1.0}]},
         "sweep.rungs: Value error, the first rung's trials (9) must equal `trials` (4)"),
        ({"rungs": [{"trials": 4, "budget": 0}]}, "sweep.rungs.0.budget: Input should be greater than 0"),
        ({"sampler": "grid"},
         "sweep.sampler: Value error, grid needs every parameter categorical or an int with a `step`; "
         "space.training.learning_rate is log_uniform"),
        ({"sampler": "grid", "space": {"training.batch_size": {"type": "int", "low": 8, "high": 32}}},
         "space.training.batch_size is int without a step"),
        ({"sampler": "grid", "space": {"training.batch_size": {"type": "int", "low": 8, "high": 16, "step": 8}}},
         "sweep: Value error, `trials` (4) exceeds the 2 points of the grid"),
        ({"space": {"training.batch_size": {"type": "int", "low": 8, "high": 30, "step": 8}}},
         "is not a multiple of `step` (8)"),
        ({"space": {"training.dropout": {**DROPOUT_FOR_LARGE, "when": {"training.nope": 1}}}},
         "sweep.space.training.dropout.when.training.nope: unknown setting 'training.nope'"),
        ({"space": {"training.dropout": DROPOUT_FOR_LARGE}},
         "sweep.space.training.dropout.when.candidate: `candidate` is not in sweep.space"),
        ({"space": {"candidate": CANDIDATE, "training.dropout": {**DROPOUT_FOR_LARGE, "when": {"candidate": "x"}}}},
         "sweep.space.training.dropout.when.candidate: 'x' is not one of sweep.space.candidate's choices"),
        ({"space": {"training.dropout": {**DROPOUT_FOR_LARGE, "when": {"training.dropout": 0.1}}}},
         "space.training.dropout.when: a parameter cannot depend on itself"),
        ({"space": {"training.dropout": {**DROPOUT_FOR_LARGE, "when": {"training.weight_decay": 0.0}},
                    "training.weight_decay": {"type": "uniform", "low": 0, "high": 0.1,
                                              "when": {"training.dropout": 0}}}},
         "conditions form a cycle (training.dropout -> training.weight_decay -> training.dropout)"),
        ({"sampler": "qmc", "space": {"candidate": CANDIDATE, "training.dropout": DROPOUT_FOR_LARGE}},
         "sweep.sampler: Value error, qmc takes no conditional parameters (space.training.dropout has `when`)"),
        ({"trials": 0}, "sweep.trials: Input should be greater than or equal to 1"),
        ({"parallelism": 0}, "sweep.parallelism: Input should be greater than or equal to 1"),
        ({"early_stop_ratio": 1.5}, "sweep.early_stop_ratio: Input should be less than or equal to 1"),
        ({"samplr": "tpe"}, "sweep.samplr: unknown key"),
    ],
)
def test_an_invalid_sweep_fails_naming_the_path(section, expected):
    with pytest.raises(ConfigError) as error:
        make_config(section)
    assert expected in str(error.value)


def test_a_sweep_defaults_to_one_full_rung_of_tpe():
    config = make_config()
    assert config.sweep.sampler == "tpe" and config.sweep.parallelism == 1 and config.sweep.early_stop_ratio == 0.5
    assert [(rung.trials, rung.budget) for rung in config.sweep.rungs] == [(4, 1.0)]
    assert make_config(None, training={"epochs": 1}).sweep.seed == 42
    plain = parse_config({"data": {"uri": "x"}, "candidates": [{"name": "a", "source": "a"}],
                          "registry": {"model_name": "m"}})
    assert plain.sweep is None


def test_a_conditional_space_on_a_fixed_training_value_and_a_halving_ladder_are_valid():
    rungs = [{"trials": 9, "budget": 0.34}, {"trials": 3, "budget": 1.0}]
    config = make_config(
        {"trials": 9, "rungs": rungs,
         "space": {"training.dropout": {**DROPOUT_FOR_LARGE, "when": {"training.seed": 42}}}}
    )
    assert [rung.trials for rung in config.sweep.rungs] == [9, 3]
    assert parse_config(config.model_dump()) == config  # round trip through the pipeline parameter


# -- records on storage ---------------------------------------------------------------------------


def test_records_round_trip_through_local_storage_and_are_create_only(tmp_path):
    storage, prefix = Storage(), str(tmp_path / "sweep")
    assert sweep.read_records(storage, prefix) == []
    first = record(3, 0.81, params={"candidate": "large", "training.learning_rate": 2e-5, "training.dropout": 0.1})
    failed = record(1, None, state="failed")
    promoted = record(3, 0.84, rung=1)
    for each in (first, failed, promoted):
        sweep.write_record(storage, prefix, each)
    assert TrialRecord.from_json(first.to_json()) == first
    assert sweep.read_records(storage, prefix) == [failed, first, promoted]
    with pytest.raises(PreconditionFailed):
        sweep.write_record(storage, prefix, record(3, 0.99))  # a retried task: trial 3 keeps its first record
    assert sweep.read_records(storage, prefix)[1].value == 0.81
    assert sweep.record_uri(prefix, 1, 3).endswith("sweep/trials/rung-01/trial-00003.json")


def test_an_unreadable_record_is_a_sweep_error(tmp_path):
    storage, prefix = Storage(), str(tmp_path)
    storage.write_text(sweep.record_uri(prefix, 0, 0), '{"trial": 0}')
    with pytest.raises(SweepError, match="unreadable sweep record .*trial-00000.json"):
        sweep.read_records(storage, prefix)


def test_a_complete_record_needs_a_value():
    with pytest.raises(ValueError, match="a complete trial needs"):
        record(0, None)
    with pytest.raises(ValueError, match="a complete trial needs"):
        record(0, math.nan)


# -- sampling rung 0 ------------------------------------------------------------------------------


def test_rung_zero_is_deterministic_and_sees_earlier_records():
    config = make_config({"space": {"training.learning_rate": LR, "training.batch_size": {"type": "int", "low": 8,
                                                                                         "high": 64, "step": 8}}})
    fresh = sweep.plan_rung(config, [], 0)
    assert [p.trial for p in fresh] == [0, 1, 2, 3] and {p.budget for p in fresh} == {1.0}
    assert sweep.plan_rung(config, [], 0) == fresh
    history = sampled_records(make_config({"trials": 5, "space": config.sweep.model_dump()["space"]}),
                              [0.5, 0.6, 0.7, 0.8, 0.9])
    after = sweep.plan_rung(config, history, 0)
    assert [p.trial for p in after] == [5, 6, 7, 8]
    assert [p.params for p in after] != [p.params for p in fresh]
    assert sweep.plan_rung(config, history, 0) == after
    assert sweep.suggest_rung(config, history, 0) == [p.params for p in after]
    reseeded = make_config({"seed": 7, "space": config.sweep.model_dump()["space"]})
    assert sweep.suggest_rung(reseeded, [], 0) != [p.params for p in fresh]


def test_tpe_leaves_its_random_start_once_enough_trials_are_recorded():
    config = make_config({"trials": 12})
    history = sampled_records(config, [1 - abs(math.log10(p.params["training.learning_rate"]) + 4) for p in
                                       sweep.plan_rung(config, [], 0)])
    assert len(history) == 12
    later = sweep.suggest_rung(make_config({"trials": 4}), history, 0)
    # the metric peaks at 1e-4: the model-based suggestions gather around it (log10 within 1 of -4)
    assert all(abs(math.log10(p["training.learning_rate"]) + 4) < 1 for p in later)


@pytest.mark.parametrize("sampler", ["tpe", "qmc", "random"])
def test_each_sampler_stays_in_range(sampler):
    space = {
        "training.learning_rate": LR,
        "training.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
        "training.batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
        "training.max_length": {"type": "int", "low": 32, "high": 512, "log": True},
        "candidate": CANDIDATE,
    }
    config = make_config({"sampler": sampler, "trials": 8, "space": space})
    params = sweep.suggest_rung(config, [], 0)
    assert len(params) == 8
    for each in params:
        assert set(each) == set(space)
        assert 1e-5 <= each["training.learning_rate"] <= 1e-3
        assert 0.0 <= each["training.warmup_ratio"] <= 0.2
        assert each["training.batch_size"] in range(8, 65, 8)
        assert 32 <= each["training.max_length"] <= 512 and isinstance(each["training.max_length"], int)
        assert each["candidate"] in ("small", "large")
    assert len({each["training.learning_rate"] for each in params}) == 8  # no point drawn twice
    history = [record(i, 0.5 + i / 100, params=p) for i, p in enumerate(params)]
    again = sweep.suggest_rung(config, history, 0)
    assert not {each["training.learning_rate"] for each in again} & {each["training.learning_rate"] for each in params}


def test_grid_walks_every_point_once():
    space = {"candidate": CANDIDATE, "training.batch_size": {"type": "int", "low": 8, "high": 24, "step": 8}}
    config = make_config({"sampler": "grid", "trials": 6, "space": space})
    params = sweep.suggest_rung(config, [], 0)
    points = {(each["candidate"], each["training.batch_size"]) for each in params}
    assert points == {(name, size) for name in ("small", "large") for size in (8, 16, 24)}
    half = make_config({"sampler": "grid", "trials": 3, "space": space})
    first = sweep.suggest_rung(half, [], 0)
    rest = sweep.suggest_rung(half, [record(i, 0.5, params=p) for i, p in enumerate(first)], 0)
    assert {tuple(p.values()) for p in first} | {tuple(p.values()) for p in rest} == {
        tuple(p.values()) for p in params
    }


def test_a_conditional_parameter_is_sampled_only_when_its_condition_holds():
    config = make_config({"trials": 12, "space": {"candidate": CANDIDATE, "training.dropout": DROPOUT_FOR_LARGE}})
    params = sweep.suggest_rung(config, [], 0)
    assert {p["candidate"] for p in params} == {"small", "large"}
    for each in params:
        assert ("training.dropout" in each) == (each["candidate"] == "large")
    history = [record(i, 0.5 + i / 100, params=p) for i, p in enumerate(params)]
    study, count = sweep._rebuilt_study(config, history)
    assert count == 12
    assert [set(trial.params) for trial in study.trials] == [set(p) for p in params]  # only what each trial had
    later = sweep.suggest_rung(config, history, 0)
    assert all(("training.dropout" in p) == (p["candidate"] == "large") for p in later)


def test_a_condition_on_a_fixed_training_value():
    off = make_config({"space": {"training.learning_rate": LR,
                                 "training.dropout": {**DROPOUT_FOR_LARGE, "when": {"training.seed": 1}}}})
    assert all("training.dropout" not in p for p in sweep.suggest_rung(off, [], 0))
    on = make_config({"space": {"training.learning_rate": LR,
                                "training.dropout": {**DROPOUT_FOR_LARGE, "when": {"training.seed": 42}}}})
    assert all("training.dropout" in p for p in sweep.suggest_rung(on, [], 0))


def test_records_that_break_the_space_are_refused():
    config = make_config({"space": {"candidate": CANDIDATE, "training.dropout": DROPOUT_FOR_LARGE}})
    with pytest.raises(SweepError, match=r"trial 0: sweep.space.training.dropout does not match its `when`"):
        sweep.plan_rung(config, [record(0, 0.5, params={"candidate": "small", "training.dropout": 0.1})], 0)
    with pytest.raises(SweepError, match=r"trial 0 has settings \['training.seed'\] that are not in sweep.space"):
        sweep.plan_rung(config, [record(0, 0.5, params={"candidate": "small", "training.seed": 1})], 0)
    with pytest.raises(SweepError, match="trial 0's settings do not fit sweep.space"):
        sweep.plan_rung(config, [record(0, 0.5, params={"candidate": "medium"})], 0)
    with pytest.raises(SweepError, match="trial 0 .* was scored on loss"):
        sweep.plan_rung(config, [record(0, 0.5, params={"candidate": "small"}, metric="loss")], 0)


# -- halving and the winner -----------------------------------------------------------------------


LADDER = {"trials": 5, "rungs": [{"trials": 5, "budget": 0.25}, {"trials": 3, "budget": 0.5},
                                 {"trials": 1, "budget": 1.0}]}


def test_promotion_takes_the_best_higher_is_better_with_ties_to_the_lower_number():
    config = make_config(LADDER)
    rung0 = [record(0, 0.70), record(1, 0.90), record(2, 0.80), record(3, 0.90), record(4, 0.95),
             record(5, None, state="failed"), record(6, 0.99, state="pruned")]
    planned = sweep.plan_rung(config, rung0, 1)
    assert [p.trial for p in planned] == [4, 1, 3]
    assert {p.budget for p in planned} == {0.5} and {p.rung for p in planned} == {1}
    assert planned[0].params == rung0[4].params


def test_promotion_in_a_lower_is_better_metric():
    config = make_config(LADDER, training={"epochs": 4.0, "metric_for_best_model": "loss"})
    rung0 = [record(i, value, metric="loss", direction="lower") for i, value in enumerate([0.3, 0.1, 0.2, 0.1, 0.5])]
    assert [p.trial for p in sweep.plan_rung(config, rung0, 1)] == [1, 3, 2]
    rung1 = [record(i, value, rung=1, metric="loss", direction="lower") for i, value in [(1, 0.09), (3, 0.05),
                                                                                           (2, 0.05)]]
    assert [p.trial for p in sweep.plan_rung(config, rung0 + rung1, 2)] == [2]
    assert sweep.winner(config, rung0 + rung1 + [record(2, 0.04, rung=2, metric="loss", direction="lower")]).trial == 2


def test_promotion_needs_a_complete_trial_and_a_rung_that_exists():
    config = make_config(LADDER)
    with pytest.raises(SweepError, match="no trial of rung 0 completed: nothing to promote to rung 1"):
        sweep.plan_rung(config, [record(0, None, state="failed")], 1)
    with pytest.raises(SweepError, match="the sweep has rungs 0 to 2, not 3"):
        sweep.plan_rung(config, [], 3)


def test_the_winner_comes_from_the_last_rung_only():
    config = make_config(LADDER)
    records = [record(0, 0.99), record(1, 0.80), record(1, 0.85, rung=1), record(2, 0.82, rung=1),
               record(1, 0.86, rung=2), record(2, 0.90, rung=2, state="pruned")]
    best = sweep.winner(config, records)
    assert (best.trial, best.rung, best.value) == (1, 2, 0.86)
    with pytest.raises(SweepError, match=r"no trial of the last rung \(2\) completed"):
        sweep.winner(config, records[:4])


# -- a trial's config -----------------------------------------------------------------------------


def test_apply_params_sets_the_settings_the_candidate_and_the_share_of_epochs():
    config = make_config({"space": {"candidate": CANDIDATE, "training.learning_rate": LR}})
    trial = sweep.apply_params(config, {"candidate": "large", "training.learning_rate": 3e-5}, 0.25)
    assert trial.training.learning_rate == 3e-5 and trial.training.epochs == 1.0
    assert [c.name for c in trial.candidates] == ["large"] and trial.sweep is None
    assert trial.registry == config.registry and config.training.epochs == 4.0  # the original is untouched
    assert sweep.apply_params(config, {"training.epochs": 10}, 0.5).training.epochs == 5.0
    assert sweep.apply_params(config, {}, 0.01).training.epochs == sweep.MIN_EPOCHS
    tiny = make_config(training={"epochs": 0.05})
    assert sweep.apply_params(tiny, {}, 0.5).training.epochs == 0.05


def test_apply_params_without_set_epochs_needs_them_below_a_full_budget():
    config = make_config()
    unset = config.model_copy(update={"training": config.training.model_copy(update={"epochs": None})})
    with pytest.raises(ConfigError, match="training.epochs: a rung on a budget below 1.0 trains a share"):
        sweep.apply_params(unset, {}, 0.5)
    assert sweep.apply_params(unset, {}, 0.5, epochs=6.0).training.epochs == 3.0  # e.g. the recipe's epochs
    assert sweep.apply_params(unset, {"training.epochs": 2.0}, 0.5, epochs=6.0).training.epochs == 1.0


def test_importing_the_sweep_module_leaves_optuna_unloaded():
    code = "import sys, ftpipe.config, ftpipe.sweep; assert 'optuna' not in sys.modules, 'optuna loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("params", "budget", "expected"),
    [
        ({"training.learning_rate": -1.0}, 1.0, "training.learning_rate: Input should be greater than 0"),
        ({"training.dropout": 1.2}, 1.0, "training.dropout: Input should be less than 1"),
        ({"training.learnig_rate": 1e-4}, 1.0, "training.learnig_rate: unknown key"),
        ({"candidate": "huge"}, 1.0, "candidate: 'huge' is not a name in `candidates`"),
        ({"data.uri": "y.csv"}, 1.0, "data.uri: not a sweep setting"),
        ({}, 0.0, "a trial's budget must be in (0, 1], not 0.0"),
        ({}, 1.5, "a trial's budget must be in (0, 1], not 1.5"),
    ],
)
def test_apply_params_rejects_a_bad_value_naming_the_path(params, budget, expected):
    with pytest.raises(ConfigError) as error:
        sweep.apply_params(make_config(), params, budget)
    assert expected in str(error.value)


# -- early stop and importances -------------------------------------------------------------------


def test_should_stop_early_in_both_directions():
    assert sweep.should_stop_early(0.3, [0.8, 0.7, 0.9], "higher", 0.5)  # under half the median 0.8
    assert not sweep.should_stop_early(0.41, [0.8, 0.7, 0.9], "higher", 0.5)
    assert sweep.should_stop_early(1.7, [0.8, 0.7, 0.9], "lower", 0.5)  # over twice the median 0.8
    assert not sweep.should_stop_early(1.59, [0.8, 0.7, 0.9], "lower", 0.5)
    assert sweep.should_stop_early(0.8, [0.7, 0.9], "higher", 1.0) is False  # ratio 1: worse than the median
    assert sweep.should_stop_early(0.79, [0.8], "higher", 1.0)
    assert sweep.should_stop_early(-0.5, [-0.2, -0.1, -0.2], "higher", 0.5)  # pearson: below -0.2 - 0.1
    assert not sweep.should_stop_early(-0.25, [-0.2, -0.1, -0.2], "higher", 0.5)
    assert not sweep.should_stop_early(0.0, [], "higher", 0.5)
    assert not sweep.should_stop_early(0.0, [0.9], "higher", None)
    assert sweep.should_stop_early(math.nan, [0.9], "lower", 0.5)
    assert not sweep.should_stop_early(0.5, [math.nan], "higher", 0.5)
    with pytest.raises(ValueError, match="direction must be"):
        sweep.should_stop_early(0.5, [0.5], "maximize", 0.5)


def test_importances_rank_the_setting_that_drives_the_metric():
    space = {"training.learning_rate": LR, "training.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2}}
    config = make_config({"sampler": "random", "trials": 16, "space": space})
    params = sweep.suggest_rung(config, [], 0)
    records = [record(i, -abs(math.log10(p["training.learning_rate"]) + 4), params=p) for i, p in enumerate(params)]
    importances = sweep.parameter_importances(config, records)
    assert set(importances) == set(space)
    assert importances["training.learning_rate"] > 0.8 > importances["training.warmup_ratio"]
    assert math.isclose(sum(importances.values()), 1.0)
    assert sweep.parameter_importances(config, records) == importances  # seeded


def test_importances_guard_the_small_cases():
    config = make_config()
    assert sweep.parameter_importances(config, []) == {}
    assert sweep.parameter_importances(config, [record(0, 0.5)]) == {}
    assert sweep.parameter_importances(config, [record(0, 0.5), record(1, 0.6)]) == {"training.learning_rate": 1.0}
    two = make_config({"space": {"training.learning_rate": LR, "candidate": CANDIDATE}})
    same = [record(i, 0.5, params={"training.learning_rate": 1e-4 * (i + 1), "candidate": "small"}) for i in range(3)]
    assert sweep.parameter_importances(two, same) == {"training.learning_rate": 0.5, "candidate": 0.5}
