"""Benchmark 3: pipeline overhead, the wall time of a local DAG run outside the steps' own work.

Runs the whole DAG (clean_data, select_model, finetune, evaluate, register_model) with KFP's local runner,
exactly as ``ftpipe run --local`` does, against a private SeaweedFS server started here, on a few hundred
rows of the checked-in SMS sample and a tiny 2-layer BERT (random weights, the real MiniLM tokenizer) that
the run downloads from S3 like any candidate.

It runs the DAG twice: first with every task a fresh interpreter, as KFP's local runner starts them by
default (``FTPIPE_WARM_START=0``, the baseline, reported as ``cold_*``), then as ``ftpipe run --local``
does by default, each task a fork of the warm task server (pipelines/task_server.py).

Each task's Python process is timed from the inside (bench/tasktrace/sitecustomize.py, loaded through
PYTHONPATH): process creation and exit, imports, the step call inside ``ftpipe.task.run_step``, and the
``Storage`` (S3) calls. A step's own work is its call minus the imports and S3 transfers inside it; the
overhead is everything else: interpreter and library start-up (the task server's included), artifact
passing, S3 transfers, and the local runner's own work between tasks.

    python -m bench.overhead              # 400 rows
    python -m bench.overhead --smoke      # the same with 200 rows
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, REPO, SMS_SAMPLE, OtherLoad, emit, minilm_path, quiet_libraries

TRACE_PATH = Path(__file__).parent / "tasktrace"
STEPS = ("clean_data", "select_model", "finetune", "evaluate", "register_model")


def tiny_model(directory: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the real MiniLM tokenizer (as the tests' tiny_bert_dir)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny benchmark BERT\n")
    return directory


def pipeline_config(prefix: str, model_uri: str, data_uri: str) -> dict[str, Any]:
    return {
        "data": {
            "uri": data_uri,
            "text_column": "text",
            "label_column": "spam",
            "labels": ["ham", "spam"],
            "label_mapping": {"0": "ham", "1": "spam"},
        },
        "candidates": [{"name": "tiny", "source": model_uri}],
        "selection": {"probe_train_rows": 64, "probe_validation_rows": 32},
        # Eight epochs at 3e-3, no early stop: what the tiny random BERT needs to beat the majority baseline, which
        # the gate requires before register_model runs (one epoch, or stopping while it still answered "ham" to
        # everything, learnt nothing); TF-IDF is only reported, as the tiny model may lose to it.
        "training": {
            "epochs": 8, "batch_size": 16, "max_length": 64, "learning_rate": 3e-3, "early_stopping_patience": 8,
        },
        "gate": {"linear_baseline": "report"},
        "registry": {"uri": f"{prefix}/registry", "model_name": "overhead-bench"},
        "storage": {"artifact_root": f"{prefix}/runs"},
    }


def _task_name(record: dict[str, Any]) -> str | None:
    if record["steps"]:
        return record["steps"][0]["step"]
    argv = record.get("argv") or []
    if "--function_to_execute" in argv:
        return argv[argv.index("--function_to_execute") + 1]
    return None


def summarise(records: list[dict[str, Any]], dag_seconds: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-task and total figures from the task processes' records (in start order)."""
    tasks: list[dict[str, Any]] = []
    for record in sorted(records, key=lambda record: record["created"]):
        name = _task_name(record)
        if name is None:  # not a task's executor (a helper a command might start)
            continue
        wall = record["exited"] - record["created"]
        step = record["steps"][0] if record["steps"] else None
        step_s = (step["end"] - step["start"]) if step and "end" in step else 0.0
        work = max(0.0, step_s - record["import_in_step_s"] - record["storage_in_step_s"])
        tasks.append(
            {
                "task": name,
                "started": "warm" if record.get("forked") else "cold",
                "process_s": round(wall, 2),
                "startup_s": round((step["start"] - record["created"]) if step else wall, 2),
                "imports_s": round(record["import_s"], 2),
                # the libraries the step needs for its work: loaded up front (ftpipe.task) or inside the step
                "step_libraries_s": round(record["libraries_s"] + record["import_in_step_s"], 2),
                "s3_s": round(record["storage_s"], 2),
                "s3_calls": record["storage_calls"],
                "step_work_s": round(work, 2),
                "overhead_s": round(wall - work, 2),
                "slowest_imports": dict(sorted(record["imports"].items(), key=lambda item: -item[1])[:6]),
            }
        )
    work_total = sum(task["step_work_s"] for task in tasks)
    figures = {
        "dag_wall_s": round(dag_seconds, 1),
        "steps_work_s": round(work_total, 1),
        "overhead_s": round(dag_seconds - work_total, 1),
        "tasks": len(tasks),
        "tasks_started_warm": sum(task["started"] == "warm" for task in tasks),
        "imports_s": round(sum(task["imports_s"] for task in tasks), 1),
        "s3_s": round(sum(task["s3_s"] for task in tasks), 1),
        "runner_between_tasks_s": round(max(0.0, dag_seconds - sum(task["process_s"] for task in tasks)), 1),
    }
    for task in tasks:
        figures[f"{task['task']}_overhead_s"] = task["overhead_s"]
    return figures, tasks


def run_dag(prefix: str, model_uri: str, data_uri: str, work: Path, log, warm: bool) -> dict[str, Any]:
    """One traced local run of the whole DAG; its figures, the per-task records under "tasks_detail"."""
    from ftpipe.config import parse_config
    from pipelines.runner import run_local
    from pipelines.task_server import WARM_START_ENV

    trace = work / "trace"
    trace.mkdir(parents=True)
    os.environ["FTPIPE_BENCH_TRACE"] = str(trace)
    os.environ[WARM_START_ENV] = "1" if warm else "0"
    config = parse_config(pipeline_config(prefix, model_uri, data_uri))
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        result = run_local(config, work_dir=work / "runs")
    figures, tasks = summarise([json.loads(path.read_text()) for path in trace.glob("*.json")], result.seconds)
    server_log = result.run_dir / "task-server.log"
    ready = re.search(r"ready in ([0-9.]+) s", server_log.read_text()) if server_log.exists() else None
    # The server imports once for all tasks, inside the DAG's wall time (tasks that come meanwhile wait).
    figures["task_server_ready_s"] = float(ready.group(1)) if ready else None
    figures["registered"] = result.registered is not None
    figures["tasks_detail"] = tasks
    return figures


def import_seconds(module: str) -> float:
    """Wall time of a fresh interpreter that imports ``module`` (the best of three)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=REPO)
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="rows of the SMS sample to run the DAG on")
    parser.add_argument("--out", type=Path, default=None, help="folder for overhead.json (default out/bench)")
    parser.add_argument("--smoke", action="store_true", help="200 rows")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows = 200
    quiet_libraries()
    import pandas as pd

    from ftpipe import s3server
    from ftpipe.storage import Storage

    out_dir = Path(args.out or OUT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "overhead-tasks.log"
    saved_environ = dict(os.environ)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ftpipe-bench-overhead-") as scratch:
        work = Path(scratch)
        os.environ.update(FTPIPE_HOME=str(work / "home"), FTPIPE_CACHE=str(work / "cache"))
        state = s3server.start(work / "s3", buckets=("ftpipe",))
        try:
            os.environ.update(state.env())
            storage = Storage()
            inputs = "s3://ftpipe/bench-overhead/inputs"
            pd.read_csv(SMS_SAMPLE).head(args.rows).to_csv(work / "data.csv", index=False)
            storage.upload_file(work / "data.csv", f"{inputs}/data.csv")
            storage.upload_dir(tiny_model(work / "tiny"), f"{inputs}/models/tiny")

            # `python -m bench...` puts the repository root first on sys.path, where docker/ (the image build
            # files) would shadow the `docker` package that kfp.local imports: resolve packages as an installed
            # ftpipe does.
            sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != REPO]
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRACE_PATH), os.environ.get("PYTHONPATH")]))
            with open(log_path, "w", encoding="utf-8") as log, OtherLoad() as load:
                # The baseline first: every task a fresh interpreter, as KFP's local runner starts them by default.
                for mode in ("cold", "warm"):
                    prefix = f"s3://ftpipe/bench-overhead/{mode}"  # its own runs and registry: nothing is reused
                    runs[mode] = run_dag(
                        prefix, f"{inputs}/models/tiny", f"{inputs}/data.csv", work / mode, log, mode == "warm"
                    )
        finally:
            s3server.stop(work / "s3")
            os.environ.clear()
            os.environ.update(saved_environ)

    figures = {key: value for key, value in runs["warm"].items() if key != "tasks_detail"}
    for key in ("dag_wall_s", "overhead_s", "imports_s", "tasks_started_warm", "registered"):
        figures[f"cold_{key}"] = runs["cold"][key]
    figures["overhead_vs_cold"] = round(figures["overhead_s"] / runs["cold"]["overhead_s"], 2)
    figures["rows"] = args.rows
    figures["import_finetune_module_s"] = round(import_seconds("ftpipe.steps.finetune"), 2)
    figures["import_python_s"] = round(import_seconds("os"), 2)
    figures["others_cpu_share"] = round(load.share, 2)
    tasks = {mode: run["tasks_detail"] for mode, run in runs.items()}
    emit("overhead", figures, args.out, tasks=tasks, task_log=str(log_path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
