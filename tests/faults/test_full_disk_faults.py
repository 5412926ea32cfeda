"""Scenario 6: the task's work directory on a full disk.

Each step runs as a pipeline task does (:mod:`step_child`, through ``ftpipe.task.run_step``) in a child process
with a mount namespace of its own, where a small tmpfs is mounted as its temporary directory (``TMPDIR``, where
the steps keep their scratch files: finetune's checkpoints and model, clean_data's splits before upload). The
step must end with one clear line naming the directory, a non-zero exit and no traceback, and leave nothing
half-written in S3: no model, no checkpoint marked complete, no split without the rest.

Mounting needs root or an unprivileged user namespace (``unshare --mount --map-root-user``); where neither
works the tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ftpipe.storage import join
from ftpipe.training.checkpoints import MIRROR_MARKER, PROGRESS_RECORD

CHILD = Path(__file__).with_name("step_child.py")
LABELS = ["ham", "spam"]


def _unshare() -> list[str]:
    """The command prefix that gives a child a mount namespace of its own in which it may mount a tmpfs."""
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare` command: cannot mount a small tmpfs for the full-disk scenario")
    prefix = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run(
        [*prefix, "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', "/mnt"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.strip()}")
    return prefix


def _run_on_small_disk(args: dict, directory: Path, megabytes: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run step_child with ``TMPDIR`` on a tmpfs of ``megabytes`` MB mounted at ``directory``, seen by it alone."""
    directory.mkdir()
    arguments = tmp_path / f"{args['step']}-args.json"
    arguments.write_text(json.dumps(args))
    mount = f'mount -t tmpfs -o size={megabytes}m tmpfs "$0" && exec "$@"'
    command = [*_unshare(), "sh", "-c", mount, str(directory), sys.executable, str(CHILD), str(arguments)]
    env = {**os.environ, "TMPDIR": str(directory)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ftpipe: error:")]


def _one_no_space_line(done, disk: Path) -> list[str]:
    """The step failed with exactly one error line, naming the full directory, and no traceback."""
    errors = _error_lines(done.stderr)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and "no space left" in errors[0] and str(disk) in errors[0], errors
    return errors


def test_finetune_on_a_full_work_directory_fails_with_one_line_and_writes_nothing_half(
    s3_storage, tiny_bert_dir, tmp_path, fault_table
):
    from split_files import write_split

    fault_table.scenario = "6a full disk, finetune"
    root = f"s3://ftpipe/faults-{uuid.uuid4().hex[:8]}"
    uris = {}
    for name, rows, seed in (("train", 64, 0), ("validation", 32, 1)):
        uris[name] = join(root, f"{name}.parquet")
        s3_storage.upload_file(write_split(tmp_path / f"{name}.parquet", rows, seed), uris[name])
    config = {
        "data": {"uri": f"{root}/data.csv"},
        "registry": {"model_name": "spam"},
        "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
        "storage": {"artifact_root": f"{root}/runs"},
        "training": {"epochs": 1, "batch_size": 8, "eval_steps": 4, "max_length": 32, "early_stopping_patience": 100},
    }
    args = {"step": "finetune", "config": config, "run_id": "run-1", "train_uri": uris["train"],
            "validation_uri": uris["validation"], "labels": LABELS}
    disk = tmp_path / "work"
    # 6 MB: the model's 4 MB of weights fit, a checkpoint's 12 MB (weights and AdamW's two moments) do not
    done = _run_on_small_disk(args, disk, 6, tmp_path)
    errors = _one_no_space_line(done, disk)

    written = s3_storage.list(f"{root}/runs")
    assert [uri for uri in written if "/model/" in uri or uri.endswith(MIRROR_MARKER)] == []
    assert [uri for uri in written if not uri.endswith(PROGRESS_RECORD)] == []  # how far it got, and nothing else
    fault_table.add(
        scenario="6a full disk, finetune",
        injected="TMPDIR (the work directory) on a 6 MB tmpfs: the first checkpoint does not fit",
        outcome=f"exit {done.returncode}, one line: {errors[0][:60]}...",
        objects_in_s3=len(written),
        data_lost=0,
    )


def _random_texts(path: Path, rows: int) -> Path:
    """A CSV of texts that barely compress (80 hex digits each, about 86 bytes a row), half ham, half spam."""
    import random

    rng = random.Random(0)
    lines = [f"{rng.getrandbits(320):080x},{'spam' if i % 2 else 'ham'}" for i in range(rows)]
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    return path


def test_clean_data_on_a_full_work_directory_fails_with_one_line_and_uploads_no_split(
    s3_storage, tiny_bert_dir, tmp_path, fault_table
):
    # the small train split fits in the work directory, the large validation one does not
    data = _random_texts(tmp_path / "texts.csv", 20_000)
    root = f"s3://ftpipe/faults-{uuid.uuid4().hex[:8]}"
    config = {
        "data": {"uri": str(data), "split": {"validation_fraction": 0.4, "test_fraction": 0.4}},
        "registry": {"model_name": "spam"},
        "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
        "storage": {"artifact_root": f"{root}/runs"},
    }
    disk = tmp_path / "work"
    done = _run_on_small_disk({"step": "clean_data", "config": config, "run_id": "run-1"}, disk, 1, tmp_path)
    errors = _one_no_space_line(done, disk)
    written = s3_storage.list(f"{root}/runs")
    assert written == []  # not one split without the others (nor any report)
    fault_table.add(
        scenario="6b full disk, clean_data",
        injected="TMPDIR on a 1 MB tmpfs: the 0.3 MB train split fits, the validation split does not",
        outcome=f"exit {done.returncode}, one line: {errors[0][:60]}...",
        objects_in_s3=len(written),
        data_lost=0,
    )


def test_clean_data_of_a_dataset_larger_than_the_work_directory_fails_with_one_line(
    s3_storage, tiny_bert_dir, tmp_path, fault_table
):
    root = f"s3://ftpipe/faults-{uuid.uuid4().hex[:8]}"
    data = _random_texts(tmp_path / "texts.csv", 25_000)  # 2.2 MB, downloaded into the work directory to be read
    s3_storage.upload_file(data, f"{root}/texts.csv")
    config = {
        "data": {"uri": f"{root}/texts.csv"},
        "registry": {"model_name": "spam"},
        "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
        "storage": {"artifact_root": f"{root}/runs"},
    }
    disk = tmp_path / "work"
    done = _run_on_small_disk({"step": "clean_data", "config": config, "run_id": "run-1"}, disk, 1, tmp_path)
    errors = _one_no_space_line(done, disk)
    written = s3_storage.list(f"{root}/runs")
    assert written == []
    fault_table.add(
        scenario="6c full disk, input download",
        injected="a 2.2 MB dataset on S3, TMPDIR on a 1 MB tmpfs: its download does not fit",
        outcome=f"exit {done.returncode}, one line: {errors[0][:60]}...",
        objects_in_s3=len(written),
        data_lost=0,
    )
