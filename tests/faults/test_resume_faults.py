"""Scenarios 1 and 2: the fine-tune task stopped at a random step (SIGTERM, then SIGKILL), then its retry.

The task runs in a process of its own (``finetune_child.py``, through ``ftpipe.task.run_step`` as the KFP component
does) on the real MiniLM, the SMS sample and the real S3 server, with a checkpoint every ``INTERVAL`` steps. The
fault lands at a step drawn at random (the seed is printed); the retry must resume from the newest complete
checkpoint, redo at most one checkpoint interval, and end within noise of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ftpipe.results import FinetuneResult
from ftpipe.storage import join
from ftpipe.training.checkpoints import mirrored_checkpoints

CHILD = Path(__file__).with_name("finetune_child.py")
LABELS = ["ham", "spam"]  # as the sms_splits fixture names them
INTERVAL = 10  # training.checkpoint_every_steps
TOTAL_STEPS = 58  # 2 epochs of 450 rows in batches of 16
NOISE = 0.02  # validation F1 of 150 rows: one row is 0.007


def _spec(tmp_path: Path, minilm_path: str, sms_splits, name: str) -> Path:
    spec = {
        "config": {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "sms-spam"},
            "candidates": [{"name": "minilm", "source": minilm_path, "license": "apache-2.0"}],
            "training": {
                "epochs": 2,
                "batch_size": 16,
                "learning_rate": 1e-4,
                "max_length": 64,
                "checkpoint_every_steps": INTERVAL,
            },
        },
        "train_uri": sms_splits.train,
        "validation_uri": sms_splits.validation,
        "labels": LABELS,
        "candidate": "minilm",
        "output_uri": join(sms_splits.root, name),
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _run(spec: Path, *, stop_at: int | None = None, sig: signal.Signals | None = None):
    """Run the task; with ``stop_at``, send ``sig`` once its log shows that optimizer step. Returns (exit code,
    stdout, stderr, the step logged last before the signal)."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    out_lines: list[str] = []
    reader = threading.Thread(target=lambda: out_lines.extend(child.stdout), daemon=True)
    reader.start()
    err_lines, signalled_at = [], None
    for line in child.stderr:
        err_lines.append(line)
        match = re.search(r"step (\d+)/\d+ ", line)
        if stop_at is not None and signalled_at is None and match and int(match.group(1)) >= stop_at:
            signalled_at = int(match.group(1))
            child.send_signal(sig)
    code = child.wait(timeout=600)
    reader.join(timeout=10)
    return code, "".join(out_lines), "".join(err_lines), signalled_at


def _last_validation_loss(storage, result: FinetuneResult) -> float:
    return [entry["eval_loss"] for entry in storage.read_json(result.log_uri) if "eval_loss" in entry][-1]


def _result(stdout: str) -> FinetuneResult:
    return FinetuneResult.model_validate_json(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def seed() -> int:
    value = int(os.environ.get("FTPIPE_FAULT_SEED", time.time_ns() % 10_000))
    print(f"fault steps drawn with seed {value} (FTPIPE_FAULT_SEED={value} repeats them)")
    return value


_UNINTERRUPTED: list[FinetuneResult] = []  # one uninterrupted run serves both scenarios (its data fixture is per test)


@pytest.fixture
def uninterrupted(tmp_path, minilm_path, sms_splits) -> FinetuneResult:
    if not _UNINTERRUPTED:
        code, out, err, _ = _run(_spec(tmp_path, minilm_path, sms_splits, "uninterrupted"))
        assert code == 0, err[-3000:]
        _UNINTERRUPTED.append(_result(out))
    return _UNINTERRUPTED[0]


@pytest.mark.parametrize(
    ("sig", "scenario"),
    [
        (signal.SIGTERM, "1 SIGTERM mid-training, then the retry"),
        (signal.SIGKILL, "2 SIGKILL mid-training, then the retry"),
    ],
    ids=["sigterm", "sigkill"],
)
def test_a_stopped_finetune_resumes_and_ends_as_an_uninterrupted_one(
    sig, scenario, seed, uninterrupted, tmp_path, minilm_path, sms_splits, s3_storage, fault_table
):
    stop_at = random.Random(seed * 31 + sig).randint(INTERVAL + 2, TOTAL_STEPS - 8)
    spec = _spec(tmp_path, minilm_path, sms_splits, f"stopped-{sig.name.lower()}")
    mirror_uri = join(json.loads(spec.read_text())["output_uri"], "checkpoints")

    code, _, err, signalled_at = _run(spec, stop_at=stop_at, sig=sig)
    assert signalled_at is not None, f"the task ended before step {stop_at}: {err[-2000:]}"
    complete = mirrored_checkpoints(s3_storage, mirror_uri)
    assert complete, "no complete checkpoint survived the fault"
    newest = max(complete)
    if sig == signal.SIGTERM:
        # The Trainer's JIT checkpoint: saved at the step it stopped at, mirrored, and the task failed as transient.
        assert code == 143, err[-2000:]
        assert "finetune: stopped by SIGTERM" in err and err.count("ftpipe: error:") == 1, err[-2000:]
        assert newest >= signalled_at
    else:
        assert code == -signal.SIGKILL
        assert signalled_at - INTERVAL <= newest <= signalled_at + 1  # the last periodic one (or one being saved)

    code, out, err, _ = _run(spec)  # the retry
    assert code == 0, err[-3000:]
    resumed = _result(out)
    assert resumed.resumed_from_checkpoint == join(mirror_uri, f"checkpoint-{newest}")
    assert f"resuming at step {newest}" in err
    redone = max(0, signalled_at - newest)  # what the fault cost, as the test saw it
    assert redone <= INTERVAL
    # The task records its progress every second, and may take one more step before the signal lands.
    assert resumed.steps_redone is not None and resumed.steps_redone <= redone + 1, (resumed.steps_redone, redone)
    assert resumed.global_steps == uninterrupted.global_steps
    delta = resumed.best_metric_value - uninterrupted.best_metric_value
    assert abs(delta) <= NOISE, (resumed.best_metric_value, uninterrupted.best_metric_value)
    # F1 sits near 1 on this set: the validation loss says more. With the optimizer, scheduler, RNG and data order
    # restored, the resumed run's is the uninterrupted run's up to float noise.
    losses = [_last_validation_loss(s3_storage, result) for result in (resumed, uninterrupted)]
    assert abs(losses[0] - losses[1]) <= 0.02 * losses[1], losses
    assert s3_storage.list(mirror_uri) == []  # the finished run cleaned its checkpoints up
    fault_table.add(
        scenario=scenario,
        injected=f"{sig.name} at step {signalled_at} of {TOTAL_STEPS}",
        outcome=f"retry resumed from checkpoint-{newest}, F1 {resumed.best_metric_value:.4f} "
        f"(uninterrupted {uninterrupted.best_metric_value:.4f})",
        steps_redone=redone,
        steps_redone_reported=resumed.steps_redone,
        metric_delta=round(delta, 4),
        validation_loss=f"{losses[0]:.4f} vs {losses[1]:.4f}",
        data_lost=0,
    )
