"""Scenario 3: the S3 server stopped for 25 s while fine-tuning mirrors a checkpoint, and again at register_model's
commit.

The test runs its own SeaweedFS server (the session's one stays up for the other tests) behind
:class:`fault_proxy.S3Proxy`; when the proxy sees the request that starts the fault, it stops the server (which
:class:`fault_proxy.Outage` starts again 25 s later, on the same port, data and keys) and drops that request.

Storage's botocore retries (``storage.max_attempts`` 3, standard mode: about 5 s of back-off in all) cannot outlast
25 s, so the step ends with one transient line (StorageUnavailable: the task fails and KFP retries it, after its
back-off of 30 s by default, when the server is back). The test then runs the step again as that retry: fine-tuning
resumes from the last checkpoint marked complete, the registration commits exactly one version. Throughout, no
checkpoint is marked complete without every file the Trainer wrote for it, and no version is visible half-made.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fault_proxy import Outage, S3Proxy

from ftpipe import s3server
from ftpipe.config import StorageConfig, parse_config
from ftpipe.errors import StorageUnavailable
from ftpipe.registry import ModelRegistry
from ftpipe.storage import Storage, join
from ftpipe.training.checkpoints import MIRROR_MARKER

OUTAGE_S = 25.0
BUCKETS = ("ftpipe",)
LABELS = ["ham", "spam"]


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A SeaweedFS server of this module's own, which its tests stop and start again."""
    directory = tmp_path_factory.mktemp("seaweedfs-outage")
    state = s3server.start(directory, buckets=BUCKETS)
    yield directory, state
    s3server.stop(directory)


@pytest.fixture
def outage_setup(own_server, monkeypatch):
    """(proxy, outage, direct storage): the AWS variables point at the proxy in front of the test's server."""
    directory, state = own_server
    state = s3server.read_state(directory) or state
    proxy = S3Proxy(state.endpoint_url)
    for name, value in {**state.env(), "AWS_ENDPOINT_URL": proxy.url}.items():
        monkeypatch.setenv(name, value)
    direct = Storage(StorageConfig(endpoint_url=state.endpoint_url))
    yield proxy, Outage(directory, state, BUCKETS), direct
    proxy.close()


def _checkpoint_files(storage: Storage, mirror_uri: str) -> dict[str, dict[str, str]]:
    """``{checkpoint-N: {file: ETag}}`` of what is mirrored now."""
    found: dict[str, dict[str, str]] = {}
    for uri, etag in storage.etags(mirror_uri).items():
        relative = uri[len(mirror_uri.rstrip("/")) + 1 :]
        if "/" in relative:
            checkpoint, name = relative.split("/", 1)
            found.setdefault(checkpoint, {})[name] = etag
    return found


def _half_marked(mirrored: dict[str, dict[str, str]], written: dict[str, set[str]]) -> list[str]:
    """Checkpoints marked complete that lack a file the Trainer wrote for them."""
    return [
        name for name, files in mirrored.items() if MIRROR_MARKER in files and not written[name] <= set(files)
    ]


def test_s3_down_while_a_checkpoint_uploads_then_the_retry_resumes(
    outage_setup, tiny_bert_dir, tmp_path, one_torch_thread, fault_table
):
    from split_files import write_split
    from transformers import TrainerCallback

    from ftpipe.steps import finetune

    proxy, outage, direct = outage_setup
    root = f"s3://ftpipe/faults-{uuid.uuid4().hex[:8]}"
    splits = {}
    for name, rows, seed in (("train", 96, 0), ("validation", 32, 1)):
        splits[name] = join(root, f"{name}.parquet")
        direct.upload_file(write_split(tmp_path / f"{name}.parquet", rows, seed), splits[name])
    config = parse_config(
        {
            "data": {"uri": f"{root}/data.csv"},
            "registry": {"model_name": "spam"},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            # 12 steps an epoch, a checkpoint every 4: 6 checkpoints in 2 epochs; nothing stops early
            "training": {"epochs": 2, "batch_size": 8, "eval_steps": 4, "max_length": 32,
                         "early_stopping_patience": 100},
        }
    )
    output_uri = join(root, "finetune")
    mirror_uri = join(output_uri, "checkpoints")

    written: dict[str, set[str]] = {}  # checkpoint-N: the files the Trainer wrote for it
    reached = {"step": 0}

    class Watch(TrainerCallback):  # runs after ftpipe's own callbacks (the mirror), observes only
        def on_step_end(self, args, state, control, **kwargs):
            reached["step"] = max(reached["step"], state.global_step)

        def on_save(self, args, state, control, **kwargs):
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            written[local.name] = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}

    before: dict[str, dict[str, str]] = {}

    def stop_server(request: str) -> bool:
        before.update(_checkpoint_files(direct, mirror_uri))  # what was mirrored, read directly before the stop
        outage.begin(OUTAGE_S)
        return True

    # the second file of the second checkpoint: the first checkpoint is complete, the second half uploaded
    rule = proxy.on(r"^PUT /ftpipe/.*/checkpoints/checkpoint-8/", lambda request: None, times=1)
    proxy.on(r"^PUT /ftpipe/.*/checkpoints/checkpoint-8/", stop_server, times=1)

    arguments = (config, splits["train"], splits["validation"], LABELS, "tiny", output_uri)
    with pytest.raises(StorageUnavailable) as failure:
        finetune.run(*arguments, callbacks=[Watch()])
    gave_up_s = time.monotonic() - outage.stopped_at
    message = str(failure.value)
    assert "\n" not in message and failure.value.transient
    assert rule.fired == 1 and "checkpoint-4" in before
    outage.wait()
    failed_at = reached["step"]
    after = _checkpoint_files(direct, mirror_uri)
    assert {name for name, files in after.items() if MIRROR_MARKER in files} == {"checkpoint-4"}
    assert after["checkpoint-4"] == before["checkpoint-4"]  # the complete checkpoint came through the restart
    assert "checkpoint-8" in after and MIRROR_MARKER not in after["checkpoint-8"]  # half uploaded, never marked
    half_marked = _half_marked(after, written)
    assert half_marked == []

    # the task's retry, once the server is back
    result = finetune.run(*arguments, callbacks=[Watch()])
    assert result.resumed_from_checkpoint == join(mirror_uri, "checkpoint-4")
    assert result.global_steps == 24
    assert direct.exists(join(result.model_uri, "model.safetensors"))
    assert direct.list(mirror_uri) == []  # removed once the model was written
    steps_redone = failed_at - 4
    fault_table.add(
        scenario="3a S3 down, fine-tuning",
        injected=f"server stopped {outage.seconds:.0f} s, from the upload of checkpoint-8's 2nd file",
        outcome="one line (StorageUnavailable, transient); retry resumed from checkpoint-4, completed 24 steps",
        gave_up_after_s=round(gave_up_s, 1),
        steps_redone=steps_redone,
        half_marked_checkpoints=len(half_marked),
        data_lost=0,
    )
    print(f"scenario 3a: the failed attempt said: {message}")


def test_s3_down_at_the_register_commit_then_the_retry_registers_one(
    outage_setup, tiny_bert_dir, tmp_path, fault_table
):
    import register_child
    from split_files import load_classifier

    from ftpipe.steps import register_model

    proxy, outage, direct = outage_setup
    root = f"s3://ftpipe/faults-{uuid.uuid4().hex[:8]}"
    trained = tmp_path / "trained"
    load_classifier(tiny_bert_dir, id2label={0: "ham", 1: "spam"}).save_pretrained(trained)
    config = parse_config(
        {
            "data": {"uri": f"{root}/data.csv"},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "registry": {"uri": f"{root}/registry", "model_name": "spam-filter", "alias_on_register": "staging"},
        }
    )

    def stop_server(request: str) -> bool:
        outage.begin(OUTAGE_S)
        return True

    rule = proxy.on(r"^PUT /ftpipe/.*/versions/\d+\.json$", stop_server, times=1)
    evaluation = register_child.evaluation(str(trained))
    with pytest.raises(StorageUnavailable) as failure:
        register_model.run(config, str(trained), evaluation, register_child.LINEAGE, "run-1")
    gave_up_s = time.monotonic() - outage.stopped_at
    message = str(failure.value)
    assert "\n" not in message and failure.value.transient and rule.fired == 1
    outage.wait()

    reader = ModelRegistry(direct, f"{root}/registry")
    assert reader.list_models() == []  # the files were up, the commit never happened: no version
    assert reader.resolve_alias("spam-filter", "staging") is None

    result = register_model.run(config, str(trained), evaluation, register_child.LINEAGE, "run-1")
    assert result.version == 1 and result.aliases_set == ["staging"]
    assert [v.version for v in reader.list_versions("spam-filter")] == [1]
    reader.download("spam-filter", 1, tmp_path / "check")  # whole: every SHA-256 checked
    fault_table.add(
        scenario="3b S3 down, register_model",
        injected=f"server stopped {outage.seconds:.0f} s, from the manifest PUT (the commit)",
        outcome="one line (StorageUnavailable, transient); no version visible; retry registered version 1",
        gave_up_after_s=round(gave_up_s, 1),
        versions_registered=1,
        half_versions=0,
        data_lost=0,
    )
    print(f"scenario 3b: the failed attempt said: {message}")
