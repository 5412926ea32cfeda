"""ftpipe.cost: the run's cost line (accelerator-hours, tokens seen, the estimate), its prices, its measurements."""

from __future__ import annotations

from pathlib import Path

import pytest
from split_files import LABELS, write_split

from ftpipe import cost, task
from ftpipe.config import CostConfig, parse_config
from ftpipe.errors import ConfigError
from ftpipe.results import FinetuneResult, FingerprintDataResult

H100 = "NVIDIA H100 80GB HBM3"


def _run(seconds: float, accelerators: int = 0, accelerator: str | None = None, nodes: int = 1, tokens=1000):
    return {
        "seconds": seconds,
        "accelerators": accelerators,
        "accelerator": accelerator,
        "nodes": nodes,
        "tokens_seen": tokens,
    }


STEPS = {"clean_data": 3.25, "select_model": 10.0, "finetune": 1800.0, "evaluate": 4.0}


def test_a_gpu_fine_tune_is_priced_at_its_gpus_hours():
    prices = CostConfig(accelerator_hour_price={H100: 4.0, "nvidia-a100": 2.5}, cpu_hour_price=0.2)
    summary = cost.summarize(prices, STEPS, [_run(1800.0, accelerators=2, accelerator=H100, tokens=123456)])

    assert summary["accelerator_hours"] == 1.0  # half an hour on two GPUs
    assert summary["cpu_hours"] == 0.0
    assert (summary["priced_as"], summary["accelerator_hour_price"]) == (H100, 4.0)
    assert summary["estimated_cost"] == 4.0 and summary["no_estimate"] is None
    assert summary["tokens_seen"] == 123456
    assert summary["line"] == (
        f"1 accelerator-hours requested (2 x {H100}, 1,800.0 s of fine-tuning); 123,456 training tokens seen; "
        f"estimated USD 4.00 at 4 per accelerator-hour ({H100}); wall time per step: clean_data 3.2 s, "
        "select_model 10.0 s, finetune 1,800.0 s, evaluate 4.0 s."
    )


def test_a_sweep_adds_up_its_trials_failed_ones_included():
    """Priced by the node selector's GPU label when CUDA's name is not in the table; a failed trial saw no tokens."""
    prices = CostConfig(accelerator_hour_price={"nvidia-h100-80gb": 3.0}, currency="EUR")
    trials = [
        _run(600.0, 1, H100, tokens=5000),
        _run(1200.0, 1, H100, tokens=7000),
        _run(30.0, 1, H100, tokens=None),  # failed: it held its GPU all the same
    ]
    selector = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    summary = cost.summarize(prices, {"train_trial": 1830.0}, trials, selector)

    assert summary["accelerator_hours"] == pytest.approx(1830 / 3600, abs=1e-6)
    assert summary["estimated_cost"] == pytest.approx(3.0 * 1830 / 3600, abs=1e-6)
    assert summary["tokens_seen"] == 12000 and summary["trainings"] == 3
    assert summary["priced_as"] == "nvidia-h100-80gb"
    assert "(1 x NVIDIA H100 80GB HBM3, 1,830.0 s of fine-tuning over 3 trials)" in summary["line"]
    assert "estimated EUR 1.52 at 3 per accelerator-hour (nvidia-h100-80gb)" in summary["line"]


def test_cost_accelerator_names_the_price_whatever_the_gpu_reports():
    prices = CostConfig(accelerator_hour_price={H100: 4.0, "reserved-h100": 1.5}, accelerator="reserved-h100")
    summary = cost.summarize(prices, {}, [_run(3600.0, 1, H100)])
    assert (summary["priced_as"], summary["estimated_cost"]) == ("reserved-h100", 1.5)


def test_no_price_for_what_the_run_used_gives_no_estimate():
    gpu = cost.summarize(CostConfig(cpu_hour_price=0.1), STEPS, [_run(3600.0, 1, "NVIDIA H200")])
    assert gpu["estimated_cost"] is None and gpu["accelerator_hours"] == 1.0
    assert gpu["no_estimate"] == "no price set for NVIDIA H200 in cost.accelerator_hour_price"
    assert "; no price set for NVIDIA H200 in cost.accelerator_hour_price;" in gpu["line"]

    cpu = cost.summarize(CostConfig(accelerator_hour_price={H100: 4.0}), STEPS, [_run(90.0)])
    assert cpu["estimated_cost"] is None and cpu["device"] == "CPU"
    assert cpu["line"].startswith("0 accelerator-hours (CPU, 90.0 s of fine-tuning); 1,000 training tokens seen; ")
    assert "no price set for CPU training in cost.cpu_hour_price" in cpu["line"]

    nothing = cost.summarize(CostConfig(), {}, [])
    assert nothing["estimated_cost"] is None and nothing["no_estimate"] == "no fine-tune recorded"
    assert nothing["line"].endswith("wall time per step: not recorded.")


def test_a_cpu_fine_tune_is_priced_per_node_hour():
    summary = cost.summarize(CostConfig(cpu_hour_price=0.5), {}, [_run(1800.0, nodes=2)])
    assert (summary["accelerator_hours"], summary["cpu_hours"], summary["estimated_cost"]) == (0.0, 1.0, 0.5)
    assert "estimated USD 0.50 at 0.5 per CPU hour" in summary["line"]
    # under a cent it keeps two significant digits rather than reading 0.00
    assert "estimated USD 0.0014 at" in cost.summarize(CostConfig(cpu_hour_price=0.5), {}, [_run(10.0)])["line"]


def test_the_figures_as_mlflow_metrics_leave_out_what_is_unknown():
    summary = cost.summarize(CostConfig(), {"finetune": 12.5}, [_run(12.5, tokens=None)])
    assert cost.metrics(summary) == {
        "cost_accelerator_hours": 0.0,
        "cost_cpu_hours": round(12.5 / 3600, 6),
        "wall_seconds_finetune": 12.5,
    }


BASE = {"data": {"uri": "x.csv"}, "candidates": [{"name": "m", "source": "m"}], "registry": {"model_name": "m"}}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"accelerator_hour_price": {"nvidia-h100": -1.0}},
            "cost.accelerator_hour_price.nvidia-h100: Input should be greater than or equal to 0",
        ),
        ({"cpu_hour_price": -0.5}, "cost.cpu_hour_price: Input should be greater than or equal to 0"),
        (
            {"accelerator_hour_price": {"h100": float("inf")}},
            "cost.accelerator_hour_price.h100: Input should be a finite",
        ),
        (
            {"accelerator": "a100", "accelerator_hour_price": {"h100": 2.0}},
            "cost.accelerator: Value error, 'a100' has no price in cost.accelerator_hour_price (h100)",
        ),
        ({"price": 3}, "cost.price: unknown key"),
    ],
)
def test_a_bad_price_table_fails_naming_its_path(section, message):
    with pytest.raises(ConfigError) as error:
        parse_config({**BASE, "cost": section})
    assert message in str(error.value)


def test_by_default_there_is_no_price_and_so_no_estimate():
    config = parse_config(BASE)
    assert config.cost == CostConfig() and config.cost.accelerator_hour_price == {}
    assert config.cost.cpu_hour_price is None and config.cost.currency == "USD"


def test_run_step_records_the_steps_wall_seconds(tmp_path):
    config_json = parse_config({**BASE, "storage": {"artifact_root": str(tmp_path / "runs")}}).to_json()

    def fingerprint(config, out, storage):
        import time

        time.sleep(0.05)
        return FingerprintDataResult(key="k", inputs={})

    result = task.run_step("fingerprint_data", config_json, "run-1", fingerprint)
    assert 0.05 <= result.wall_seconds < 5
    assert FingerprintDataResult.from_json(result.to_json()).wall_seconds == result.wall_seconds


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_fine_tune_counts_every_epochs_non_padding_tokens(tiny_bert_dir, tmp_path):
    """tokens_seen is the attention masks' sum over every batch trained: each epoch sees every train row once, so it
    is the epochs times the train rows' token counts (after truncation to the recipe's max_length), padding apart."""
    from transformers import AutoTokenizer

    from ftpipe.steps import finetune

    train = write_split(tmp_path / "train.parquet", 40, seed=3)
    validation = write_split(tmp_path / "validation.parquet", 16, seed=4)
    config = parse_config(
        {
            **BASE,
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "training": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0},
        }
    )
    result = finetune.run(config, train, validation, LABELS, "tiny", str(tmp_path / "out"))

    import pandas as pd

    tokenizer = AutoTokenizer.from_pretrained(result.model_uri)  # model_max_length: the recipe's max_length
    texts = pd.read_parquet(train)["text"].tolist()
    per_epoch = sum(len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"])
    # rows of different lengths in one batch: padding was there for the mask to leave out
    assert len({len(ids) for ids in tokenizer(texts)["input_ids"]}) > 1
    assert result.epochs_trained == 3.0 and not result.stopped_early
    assert result.tokens_seen == 3 * per_epoch
    assert (result.accelerators, result.accelerator, result.nodes) == (0, None, 1)  # CPU here
    assert "| training tokens seen | " + f"{3 * per_epoch:,}" in Path(result.report_markdown_uri).read_text()

    summary = cost.summarize(config.cost, {}, cost.trainings(result))
    assert summary["tokens_seen"] == 3 * per_epoch and summary["accelerator_hours"] == 0.0
    assert summary["line"].startswith("0 accelerator-hours (CPU, ")


def test_trainings_fall_back_to_the_training_loops_seconds_outside_a_task():
    fields = {
        "model_uri": "m",
        "base_model_name": "b",
        "base_model_source": "s",
        "labels": LABELS,
        "num_parameters": 1,
        "best_metric_name": "f1_macro",
        "best_metric_value": 0.5,
        "epochs_trained": 1.0,
        "global_steps": 3,
        "train_seconds": 7.5,
        "train_examples_per_second": 1.0,
        "stopped_early": False,
        "resumed_from_checkpoint": None,
        "notes": [],
        "log_uri": "l",
        "report_html_uri": "h",
        "report_markdown_uri": "m",
        "accelerators": 4,
        "accelerator": H100,
        "nodes": 2,
        "tokens_seen": 99,
    }
    (alone,) = cost.trainings(FinetuneResult(**fields))
    assert alone == _run(7.5, 4, H100, nodes=2, tokens=99)
    (in_task,) = cost.trainings(FinetuneResult(**fields, wall_seconds=20.0))
    assert in_task["seconds"] == 20.0
