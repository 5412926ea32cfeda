"""Scenarios 4 and 5: 20 registrations of one model at once; the registering process killed at each phase.

Both run against the session's real SeaweedFS server. In scenario 5 a real child process runs the register_model
step, as a pipeline pod does, through :class:`fault_proxy.S3Proxy`, which SIGKILLs it when it sees the request that
starts a phase, before that request reaches S3; then the task is run again, as KFP retries it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fault_proxy import S3Proxy

from ftpipe.errors import RegistryError
from ftpipe.registry import ModelRegistry
from ftpipe.storage import Storage

WRITERS = 20
CHILD = Path(__file__).with_name("register_child.py")


def _small_model(root: Path, marker: str) -> Path:
    directory = root / f"model-{marker}"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"marker": marker}))
    (directory / "model.safetensors").write_bytes(marker.encode() * 20_000)
    return directory


def _writer(uri: str, index: int, source: str, barrier, results) -> None:
    """One of the concurrent registrations (a forked process with a boto3 client of its own)."""
    try:
        registry = ModelRegistry(Storage(), uri)
        barrier.wait(timeout=120)
        version = registry.register("spam", source, {"writer": index}, f"card {index}", key=f"run-{index}")
        # an unconditional move (retried on fresh state when another writer wins), as `registry promote` does
        registry.set_alias("spam", "candidate", version.version, note=f"writer {index}")
        # a strict compare-and-swap, repeated on the state read again after each lost race
        conflicts = 0
        for _ in range(10 * WRITERS):  # each round has a winner: at most WRITERS - 1 losses
            current = registry.resolve_alias("spam", "production")
            try:
                registry.set_alias(
                    "spam", "production", version.version, expected=current.version if current else None,
                    note=f"writer {index}",
                )
                break
            except RegistryError as error:
                assert "another writer" in str(error), error
                conflicts += 1
        else:
            raise AssertionError(f"writer {index} lost {conflicts} compare-and-swap races in a row")
        results.put((index, version.version, conflicts, None))
    except BaseException as error:  # noqa: BLE001 - reported to the test
        results.put((index, None, 0, f"{type(error).__name__}: {error}"))


def test_20_concurrent_registrations_get_20_versions_and_every_alias_move(s3_env, tmp_path, fault_table):
    uri = f"s3://ftpipe/faults-{uuid.uuid4().hex[:8]}/registry"
    sources = [str(_small_model(tmp_path, str(i))) for i in range(WRITERS)]
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    processes = [
        context.Process(target=_writer, args=(uri, i, sources[i], barrier, results)) for i in range(WRITERS)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert [error for *_, error in outcomes if error] == []

    reader = ModelRegistry(Storage(), uri)
    versions = reader.list_versions("spam")
    assert [v.version for v in versions] == list(range(1, WRITERS + 1))
    assert sorted(number for _, number, _, _ in outcomes) == list(range(1, WRITERS + 1))  # one each, all distinct
    by_writer = {index: number for index, number, _, _ in outcomes}
    for version in versions:  # each version is its writer's, whole (download checks every SHA-256)
        writer = version.metadata["writer"]
        assert by_writer[writer] == version.version
        target = reader.download("spam", version.version, tmp_path / f"out-{version.version}")
        assert json.loads((target / "config.json").read_text()) == {"marker": str(writer)}

    moves = 0
    for alias in ("candidate", "production"):
        record = reader.get_alias("spam", alias)
        notes = sorted(change.note for change in record.history)
        assert notes == sorted(f"writer {i}" for i in range(WRITERS)), alias  # every move is in the history
        assert [change.previous for change in record.history] == [None] + [c.version for c in record.history[:-1]]
        assert record.version == record.history[-1].version and 1 <= record.version <= WRITERS
        moves += len(record.history)
    conflicts = sum(conflicts for _, _, conflicts, _ in outcomes)
    fault_table.add(
        scenario="4 concurrent registrations",
        injected=f"{WRITERS} processes register one model name at once, each moves 2 aliases",
        outcome=f"versions 1-{WRITERS}, each its writer's; {moves} alias moves in the histories",
        versions_registered=len(versions),
        alias_moves=moves,
        cas_conflicts=conflicts,
        data_lost=0,
    )


# -- scenario 5 ------------------------------------------------------------------------------------------------------


@pytest.fixture
def trained(tiny_bert_dir, tmp_path) -> str:
    from split_files import load_classifier
    from transformers import AutoTokenizer

    directory = tmp_path / "trained"
    load_classifier(tiny_bert_dir, id2label={0: "ham", 1: "spam"}).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(directory)
    return str(directory)


def _register_task(args: dict, path: Path, endpoint: str) -> subprocess.Popen:
    path.write_text(json.dumps(args))
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


PHASES = (
    # (phase, the request that the kill comes before, how many such requests pass first)
    ("files uploading", r"^PUT /ftpipe/.*/blobs/[0-9a-f]+/", 2),
    ("files uploaded, manifest not written", r"^PUT /ftpipe/.*/versions/\d+\.json$", 0),
    ("committed, alias not moved", r"^PUT /ftpipe/.*/aliases/staging\.json$", 0),
)


def test_a_register_task_killed_at_each_phase_leaves_no_half_version_and_the_retry_registers_one(
    s3_env, trained, tmp_path, fault_table
):
    root = f"s3://ftpipe/faults-{uuid.uuid4().hex[:8]}"
    config = {
        "data": {"uri": f"{root}/data.csv"},
        "candidates": [{"name": "tiny", "source": "/models/tiny"}],
        "registry": {"uri": f"{root}/registry", "model_name": "spam-filter", "alias_on_register": "staging"},
    }
    reader = ModelRegistry(Storage(), f"{root}/registry")
    proxy = S3Proxy(s3_env.endpoint_url)
    killed, visible_before = [], []
    try:
        for number, (phase, pattern, passing) in enumerate(PHASES, start=1):
            run_id = f"run-{number}"
            args = {"config": config, "model_dir": trained, "run_id": run_id}
            task = _register_task(args, tmp_path / f"{run_id}.json", proxy.url)
            seen = []

            def kill(request: str, task=task, seen=seen, passing=passing) -> bool:
                seen.append(request)
                if len(seen) <= passing:
                    return False
                os.kill(task.pid, signal.SIGKILL)
                return True  # the request never reaches S3

            rule = proxy.on(pattern, kill, times=passing + 1)
            _, err = task.communicate(timeout=120)
            assert task.returncode == -signal.SIGKILL, (phase, err)
            assert rule.fired == passing + 1
            killed.append(phase)

            # what a reader sees now: only whole versions, the alias only on a whole version
            visible = [v.version for v in reader.list_versions("spam-filter")] if reader.list_models() else []
            committed = number if phase.startswith("committed") else number - 1
            assert visible == list(range(1, committed + 1)), phase
            staging = reader.resolve_alias("spam-filter", "staging")
            assert (staging.version if staging else 0) == number - 1, phase
            for version in visible:  # every visible version is complete: each file's SHA-256 checked
                reader.download("spam-filter", version, tmp_path / f"check-{number}-{version}")
            visible_before.append(len(visible))

            retry = _register_task(args, tmp_path / f"{run_id}.json", proxy.url)
            out, err = retry.communicate(timeout=120)
            assert retry.returncode == 0, err
            assert int(out.split()[-1]) == number
    finally:
        proxy.close()

    versions = reader.list_versions("spam-filter")
    runs = Counter(version.metadata["run_id"] for version in versions)
    assert [v.version for v in versions] == [1, 2, 3]
    assert runs == {"run-1": 1, "run-2": 1, "run-3": 1}  # one version per run: no duplicate, none lost
    record = reader.get_alias("spam-filter", "staging")
    assert [(change.previous, change.version) for change in record.history] == [(None, 1), (1, 2), (2, 3)]
    blobs = {uri.split("/blobs/")[1].split("/")[0] for uri in reader.storage.list(f"{root}/registry/spam-filter/blobs")}
    orphans = len(blobs) - len(versions)
    fault_table.add(
        scenario="5 register_model killed",
        injected="SIGKILL of the task at: " + "; ".join(killed),
        outcome="no half version ever visible; each retry registered exactly one",
        kills=len(killed),
        versions_registered=len(versions),
        duplicates=sum(count - 1 for count in runs.values()),
        orphan_blobs=orphans,
        data_lost=0,
    )
