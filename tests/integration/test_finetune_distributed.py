"""finetune on two processes (torchrun, DDP over gloo on this CPU) against one, the real MiniLM on a real S3 server.

The same global batch (2 x 8 rows against 1 x 16) gives the same optimizer steps; the two runs' validation metric
and loss agree within noise, and only rank 0 writes (checkpoints, model, reports). A SIGTERM stops every rank at
one checkpoint, which holds each rank's RNG state, and the retry resumes from it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from ftpipe.config import parse_config
from ftpipe.errors import Interrupted
from ftpipe.steps import finetune
from ftpipe.storage import join
from ftpipe.training.checkpoints import mirrored_checkpoints

LABELS = ["ham", "spam"]  # as the sms_splits fixture names them


def _config(minilm_path: str, processes: int, batch_size: int):
    return parse_config(
        {
            "data": {"uri": "unused.csv"},
            "registry": {"model_name": "sms-spam"},
            "candidates": [{"name": "minilm", "source": minilm_path, "license": "apache-2.0"}],
            "training": {
                "epochs": 1,
                "batch_size": batch_size,
                "learning_rate": 1e-4,
                "max_length": 64,
                "processes": processes,
                "distributed_backend": "gloo",
                "checkpoint_every_steps": 10,  # 29 steps: periodic checkpoints at 10 and 20, then the epoch's at 29
            },
        }
    )


def test_two_gloo_processes_train_as_one_does_and_only_rank_zero_writes(minilm_path, s3_storage, sms_splits, capfd):
    splits = (sms_splits.train, sms_splits.validation, LABELS, "minilm")
    single = finetune.run(
        _config(minilm_path, 1, 16), *splits, join(sms_splits.root, "single"), storage=s3_storage
    )
    capfd.readouterr()
    two = finetune.run(_config(minilm_path, 2, 8), *splits, join(sms_splits.root, "two"), storage=s3_storage)
    log = capfd.readouterr().err

    assert (single.processes, two.processes) == (1, 2)
    assert two.global_steps == single.global_steps == 29
    # tokens seen, summed over the ranks: one process sees the 450 rows once (12,494 tokens here); two shard 58 batches
    # of 8 (accelerate's even_batches), the 14 rows past 450 repeated from the epoch's start, each at most 64 tokens
    assert 0 <= two.tokens_seen - single.tokens_seen <= (29 * 16 - 450) * 64, (single.tokens_seen, two.tokens_seen)
    assert abs(two.best_metric_value - single.best_metric_value) <= 0.03, (two, single)
    losses = [
        [entry["eval_loss"] for entry in s3_storage.read_json(result.log_uri) if "eval_loss" in entry][-1]
        for result in (single, two)
    ]
    assert abs(losses[0] - losses[1]) <= 0.1 * losses[0], losses  # one loss scale: not summed over the processes

    mirrored = re.findall(r"rank (\d) ftpipe\.steps\.finetune: mirrored (checkpoint-\d+)", log)
    assert mirrored == [("0", "checkpoint-10"), ("0", "checkpoint-20"), ("0", "checkpoint-29")], log[-3000:]
    assert len(re.findall(r"rank \d ftpipe\.steps\.finetune: fine-tuned model at", log)) == 1
    assert "rank 0 ftpipe.steps.finetune: fine-tuned model at" in log

    def names(result):
        return sorted(uri.rsplit("/", 1)[1] for uri in s3_storage.list(result.model_uri))

    assert names(two) == names(single) and "model.safetensors" in names(two)
    assert s3_storage.list(join(sms_splits.root, "two", "checkpoints")) == []  # the mirror is cleaned up once


def test_sigterm_stops_every_rank_at_one_checkpoint_and_the_retry_resumes_on_two(
    minilm_path, s3_storage, sms_splits, capfd
):
    config = _config(minilm_path, 2, 8)
    output_uri = join(sms_splits.root, "sigterm")
    mirror_uri = join(output_uri, "checkpoints")
    splits = (sms_splits.train, sms_splits.validation, LABELS, "minilm")

    def terminate_after_the_first_checkpoint():  # as the kubelet does to the task's process on a node drain
        deadline = time.monotonic() + 300
        while not mirrored_checkpoints(s3_storage, mirror_uri) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_the_first_checkpoint, daemon=True).start()
    with pytest.raises(Interrupted, match="stopped by SIGTERM"):
        finetune.run(config, *splits, output_uri, storage=s3_storage)
    stopped = sorted(mirrored_checkpoints(s3_storage, mirror_uri))
    assert stopped[0] == 10 and len(stopped) == 2 and 10 < stopped[1] < 29, stopped  # one more: the SIGTERM's
    checkpoint = join(mirror_uri, f"checkpoint-{stopped[1]}")
    files = {uri.rsplit("/", 1)[1] for uri in s3_storage.list(checkpoint)}
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "model.safetensors"} <= files  # both ranks' parts
    capfd.readouterr()

    resumed = finetune.run(config, *splits, output_uri, storage=s3_storage)
    log = capfd.readouterr().err
    assert resumed.resumed_from_checkpoint == checkpoint and resumed.processes == 2
    assert resumed.global_steps == 29 and resumed.steps_redone == 0
    assert f"resuming at step {stopped[1]}" in log
    assert resumed.best_metric_value >= 0.9
