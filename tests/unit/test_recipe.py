"""ftpipe.training.recipe: training settings fitted to the data where the config leaves them unset."""

from __future__ import annotations

import pytest

from ftpipe.config import FinetuneConfig
from ftpipe.errors import ConfigError
from ftpipe.training.recipe import derive, fit_max_length, fit_truncation

MINILM = 22_700_000


def _recipe(rows: int, parameters: int = MINILM, **settings):
    training = FinetuneConfig(**settings)
    return derive(training, train_rows=rows, batch_size=16, num_parameters=parameters, max_length=(64, "given"))


def test_a_small_set_trains_for_many_epochs_and_is_evaluated_about_ten_times():
    recipe = _recipe(100)  # 7 steps per epoch: 500 steps would take 72 epochs, more than the cap
    assert recipe.epochs == 50 and recipe.total_steps == 350
    assert recipe.eval_steps == 35
    assert "at most 50 epochs" in recipe.reasons["epochs"]


def test_a_mid_sized_set_trains_enough_steps_evaluated_each_epoch():
    recipe = _recipe(1000)  # 63 steps per epoch: 8 epochs give 504 steps
    assert recipe.epochs == 8 and recipe.total_steps == 504 and recipe.eval_steps is None
    assert "at least 500 optimizer steps at 63 per epoch" in recipe.reasons["epochs"]
    assert _recipe(3000).epochs == 3  # 188 steps per epoch: 3 epochs already give 564


def test_a_large_set_is_capped_in_steps_and_evaluated_by_steps():
    recipe = _recipe(5_000_000)  # 312,500 steps per epoch
    assert recipe.epochs == 0.1 and recipe.total_steps == 31_250
    assert recipe.eval_steps == 2000
    assert "at most 30000 optimizer steps" in recipe.reasons["epochs"]


@pytest.mark.parametrize(
    ("parameters", "rate", "warmup"),
    [(MINILM, 1e-4, 0.06), (110_000_000, 5e-5, 0.06), (335_000_000, 3e-5, 0.1), (1_300_000_000, 2e-5, 0.1)],
)
def test_learning_rate_and_warmup_by_model_size(parameters, rate, warmup):
    recipe = _recipe(3000, parameters)
    assert recipe.learning_rate == rate
    assert recipe.warmup_steps == pytest.approx(warmup * recipe.total_steps, abs=1)


def test_every_explicit_setting_wins_and_says_so():
    recipe = _recipe(100, learning_rate=3e-4, epochs=4, warmup_ratio=0.0, eval_steps=5)
    assert (recipe.learning_rate, recipe.epochs, recipe.warmup_steps, recipe.eval_steps) == (3e-4, 4, 0, 5)
    assert recipe.total_steps == 28
    assert all(recipe.reasons[name] == "set in the config" for name in ("learning_rate", "epochs", "eval_steps"))
    assert recipe.lines()[0] == "learning_rate = 0.0003 (set in the config)"


def test_max_length_fits_most_texts_in_multiples_of_eight_within_the_window():
    unset = FinetuneConfig()
    lengths = [20] * 95 + [41, 45, 50, 300, 900]
    length, reason = fit_max_length(unset, lengths, window=512)
    assert length == 56 and "98% of the training texts fit in 50 tokens, the longest has 900" in reason
    assert fit_max_length(unset, [5, 6, 7], window=512)[0] == 32  # never below 32
    long_texts = [600] * 50 + [100] * 50
    length, reason = fit_max_length(unset, long_texts, window=512)
    assert length == 512 and "50.0% of them are longer and are cut (truncation)" in reason
    assert fit_max_length(FinetuneConfig(max_length=200), lengths, window=512) == (200, "set in the config")


def test_texts_longer_than_the_window_lose_their_middle_where_the_task_reads_them_whole():
    auto = FinetuneConfig()
    long_texts = [600] * 3 + [100] * 97
    assert fit_truncation(auto, long_texts, 512, head_tail=True) == (
        "head_tail",
        "3 training texts are longer than the model's window of 512 tokens",
    )
    # texts cut at a fitted max_length below the window keep their head, as do tasks that tag every token
    assert fit_truncation(auto, [100] * 100, 512, head_tail=True)[0] == "head"
    assert fit_truncation(auto, long_texts, 512, head_tail=False) == (
        "head",
        "this task keeps each text's first tokens",
    )
    assert fit_truncation(FinetuneConfig(truncation="head"), long_texts, 512, head_tail=True) == (
        "head",
        "set in the config",
    )
    with pytest.raises(ConfigError, match="training.truncation: head_tail cuts a text's middle"):
        fit_truncation(FinetuneConfig(truncation="head_tail"), long_texts, 512, head_tail=False)
    recipe = derive(
        auto,
        train_rows=100,
        batch_size=16,
        num_parameters=MINILM,
        max_length=(512, "given"),
        truncation=("head_tail", "why"),
    )
    assert recipe.truncation == "head_tail" and "truncation = head_tail (why)" in recipe.lines()
