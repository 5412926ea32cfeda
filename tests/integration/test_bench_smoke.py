"""`make bench-smoke`: each benchmark runs on small data and reports its figures. Never a timing threshold."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]

EXPECTED = {
    "finetune": {
        "naive_examples_per_s",
        "ftpipe_examples_per_s",
        "speedup",
        "peak_fp32_gflops",
        "ftpipe_utilisation",
        "naive_accuracy",
        "ftpipe_accuracy",
        "naive_peak_rss_mib",
        "ftpipe_peak_rss_mib",
    },
    "clean_data": {"naive_rows_per_s", "ftpipe_rows_per_s", "ratio", "naive_peak_rss_mib", "ftpipe_peak_rss_mib"},
    "overhead": {
        "dag_wall_s",
        "steps_work_s",
        "overhead_s",
        "clean_data_overhead_s",
        "register_model_overhead_s",
        "tasks_started_warm",
        "task_server_ready_s",
        "cold_overhead_s",
        "overhead_vs_cold",
    },
    "sft": {
        "naive_tokens_per_s",
        "ftpipe_tokens_per_s",
        "speedup",
        "ftpipe_utilisation",
        "lora_tokens_per_s",
        "lora_vs_full",
        "naive_peak_rss_mib",
        "ftpipe_peak_rss_mib",
        "lora_peak_rss_mib",
    },
}


def test_every_benchmark_runs_and_reports(tmp_path, minilm_path):
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = {
        line.split()[0].removeprefix("bench="): line
        for line in completed.stdout.splitlines()
        if line.startswith("bench=")
    }
    assert set(lines) == set(EXPECTED)
    for name, keys in EXPECTED.items():
        printed = dict(pair.split("=", 1) for pair in lines[name].split())
        assert keys <= set(printed), f"{name} lacks {sorted(keys - set(printed))}"
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["bench"] == name and keys <= set(record["figures"])
        assert record["machine"]["cpus"] >= 1
        for key in keys:
            assert float(record["figures"][key]) >= 0, (name, key)
    overhead = json.loads((tmp_path / "overhead.json").read_text())
    assert overhead["figures"]["registered"] is True  # the tiny model passed the gate: the whole DAG ran
    assert overhead["figures"]["cold_registered"] is True
    # the baseline run started every task cold, ftpipe's default run every task warm
    assert overhead["figures"]["cold_tasks_started_warm"] == 0
    # the seven steps and the stop_run after register_model (which always runs, and had nothing to stop)
    assert overhead["figures"]["tasks_started_warm"] == overhead["figures"]["tasks"] == 8


@pytest.mark.parametrize("argv", [["--only", "nope"]])
def test_unknown_benchmark_is_refused(argv):
    completed = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 2 and "unknown benchmark" in completed.stderr


def test_bench_gpu_without_cuda_says_so_and_exits_cleanly():
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, even on a machine that has one
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("no CUDA GPU: bench-gpu measures nothing here")
    assert len(completed.stdout.strip().splitlines()) == 1


def test_bench_gpu_runs_every_phase_on_tiny_shapes(tmp_path):
    """The whole code path on the CPU: the three single-device phases and the DDP scaling run (2 gloo processes)."""
    report_path = tmp_path / "gpu.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--device", "cpu", "--tiny", "--procs", "2", "--json", str(report_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    phases = ("bert", "sft-full", "sft-lora")
    for name in phases:
        pattern = rf"^# phase {name}: ([\d.]+) samples/s, (\d+) tokens/s, .*peak unknown"
        printed = re.search(pattern, completed.stdout, re.M)
        assert printed and float(printed[1]) > 0 and int(printed[2]) > 0, name
    scaling = r"^# scaling: BERT-base DDP over 2 CPU processes, [\d.]+ samples/s; efficiency"
    assert re.search(scaling, completed.stdout, re.M)
    summary = next(line for line in completed.stdout.splitlines() if line.startswith("bench=gpu "))
    figures = dict(pair.split("=", 1) for pair in summary.split()[1:])
    for name in phases:
        key = name.replace("-", "_")
        assert float(figures[f"{key}_tokens_per_s"]) > 0 and figures[f"{key}_mfu"] == "peak_unknown"
    report = json.loads(report_path.read_text())
    assert list(report["phases"]) == list(phases) and report["peak_bf16_tflops"] is None
    assert report["phases"]["sft-full"]["packed"] and report["phases"]["sft-lora"]["packed"]
    lora, full = report["phases"]["sft-lora"], report["phases"]["sft-full"]
    assert 0 < lora["trainable"] < full["trainable"] == full["parameters"]
    assert report["scaling"]["processes"] == 2 and report["scaling"]["efficiency"] > 0
