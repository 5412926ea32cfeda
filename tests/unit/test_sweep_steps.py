"""plan_trials, train_trial and choose_trial on a tiny random BERT: records, failed trials, the winner."""

from __future__ import annotations

from pathlib import Path

import pytest
from split_files import LABELS, write_split

from ftpipe import cost
from ftpipe.config import parse_config
from ftpipe.errors import SweepError
from ftpipe.results import CandidateScore, CleanDataResult, SelectModelResult
from ftpipe.steps import choose_trial, plan_trials, train_trial
from ftpipe.storage import Storage
from ftpipe.sweep import PlannedTrial, read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tiny_bert_dir: str, tmp_path: Path):
    return parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "test"},
            "candidates": [
                {"name": "tiny", "source": tiny_bert_dir},
                {"name": "missing", "source": str(tmp_path / "no-such-model")},
            ],
            "training": {"epochs": 2, "batch_size": 8, "max_length": 32},
            "sweep": {
                "space": {
                    "training.learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
                    "candidate": {"type": "categorical", "choices": ["tiny", "missing"]},
                },
                "trials": 2,
                "rungs": [{"trials": 2, "budget": 0.5}, {"trials": 1, "budget": 1.0}],
            },
        }
    )


def test_trials_are_recorded_a_failed_one_does_not_stop_the_sweep_and_the_winner_is_chosen(tiny_bert_dir, tmp_path):
    config = _config(tiny_bert_dir, tmp_path)
    storage = Storage()
    sweep_uri = str(tmp_path / "sweep")
    train = write_split(tmp_path / "train.parquet", 32, seed=1)
    validation = write_split(tmp_path / "validation.parquet", 16, seed=2)
    selected = CandidateScore(
        name="tiny", source=tiny_bert_dir, license=None, num_parameters=1, probe_metric="f1_macro", probe_value=0.5,
        probe_details={}, score=0.5, probe_seconds=0.1,
    )
    planned = plan_trials.run(config, 0, sweep_uri, storage)
    assert len(planned.trials) == 2 and planned.sweep_uri == sweep_uri
    trials = [
        PlannedTrial(trial=0, rung=0, params={"training.learning_rate": 1e-3, "candidate": "tiny"}, budget=0.5),
        PlannedTrial(trial=1, rung=0, params={"training.learning_rate": 1e-3, "candidate": "missing"}, budget=0.5),
    ]
    results = [
        train_trial.run(config, trial, train, validation, LABELS, 32, selected, sweep_uri, storage) for trial in trials
    ]
    assert [result.record["state"] for result in results] == ["complete", "failed"]
    assert results[0].finetuned.epochs_trained == 1.0  # half of the 2 epochs
    assert results[1].finetuned is None and results[1].record["value"] is None
    again = train_trial.run(config, trials[0], train, validation, LABELS, 32, selected, sweep_uri, storage)
    assert again.record["state"] == "complete"  # a retried task keeps the first record
    recorded = [(r.rung, r.trial, r.state) for r in read_records(storage, sweep_uri)]
    assert recorded == [(0, 0, "complete"), (0, 1, "failed")]

    with pytest.raises(SweepError, match="no trial of the last rung"):
        choose_trial.run(config, results, sweep_uri, storage)
    promoted = plan_trials.run(config, 1, sweep_uri, storage).trials
    assert promoted == [{"trial": 0, "rung": 1, "params": trials[0].params, "budget": 1.0}]
    last = train_trial.run(
        config, PlannedTrial.model_validate(promoted[0]), train, validation, LABELS, 32, selected, sweep_uri, storage
    )
    chosen = choose_trial.run(config, [last], sweep_uri, storage)
    assert chosen.winner["trial"] == 0 and chosen.finetuned.model_uri == last.finetuned.model_uri
    assert chosen.finetuned.sweep["hyperparameters"]["learning_rate"] == 1e-3
    assert "| 1 | 0 |" in Path(chosen.report_markdown_uri).read_text()  # rung 1, trial 0 in the trials table

    # the cost line's figures: every trial's seconds and GPUs (a failed one's too), the tokens its Trainer saw
    first_tokens = results[0].finetuned.tokens_seen
    assert results[0].record["tokens_seen"] == first_tokens > 0 and results[1].record["tokens_seen"] is None
    assert last.record["tokens_seen"] == 2 * first_tokens  # the same 32 rows and max_length, twice the epochs
    assert all(record.accelerators == 0 for record in read_records(storage, sweep_uri))  # CPU here
    runs = cost.trainings(chosen.finetuned)
    assert [run["tokens_seen"] for run in runs] == [first_tokens, None, 2 * first_tokens]
    steps = cost.step_seconds(_cleaned_result(), _selection_result(selected), chosen.finetuned)
    assert list(steps) == ["train_trial", "choose_trial"]
    assert steps["train_trial"] == pytest.approx(sum(run["seconds"] for run in runs), abs=1e-3)
    assert 0 < steps["choose_trial"] < 60
    summary = cost.summarize(config.cost, steps, runs)
    assert summary["tokens_seen"] == 3 * first_tokens and summary["trainings"] == 3
    assert summary["line"].startswith("0 accelerator-hours (CPU, ") and " over 3 trials)" in summary["line"]


def _cleaned_result() -> CleanDataResult:
    """clean_data's result as a test that called no pipeline task has it: no wall seconds."""
    uris = {key: f"s3://r/{key}" for key in CleanDataResult.model_fields if key.endswith("_uri")}
    return CleanDataResult(**uris, fingerprint="fp", labels=LABELS, counts={}, rejected={})


def _selection_result(selected: CandidateScore) -> SelectModelResult:
    return SelectModelResult(
        selected=selected, ranking=[selected], skipped=[], report_markdown_uri="m", report_html_uri="h",
        report_json_uri="j",
    )


def test_a_trial_far_below_its_rungs_first_evaluations_stops_there(tmp_path):
    from transformers import TrainerControl, TrainerState

    from ftpipe.training.callbacks import HopelessTrialStop

    storage, sweep_uri = Storage(), str(tmp_path / "sweep")

    def first_evaluation(trial: int, value: float, direction: str = "higher") -> HopelessTrialStop:
        stop = HopelessTrialStop(storage, sweep_uri, 0, trial, "f1_macro", direction, 0.5)
        control = TrainerControl()
        stop.on_evaluate(None, TrainerState(), control, metrics={"eval_f1_macro": value})
        stop.on_evaluate(None, TrainerState(), control, metrics={"eval_f1_macro": 0.0})  # later ones: not looked at
        assert control.should_training_stop == stop.stopped
        return stop

    assert not first_evaluation(0, 0.90).stopped  # the first of its rung: nothing to compare with
    assert not first_evaluation(1, 0.80).stopped
    assert first_evaluation(2, 0.30).stopped  # under half the median (0.85)
    assert not first_evaluation(3, 0.50).stopped  # median of 0.9, 0.8, 0.3 is 0.8: 0.5 is above half of it
    assert HopelessTrialStop(storage, sweep_uri, 0, 9, "f1_macro", "higher", None).ratio is None
