"""ftpipe.training.launch outside torchrun: how many processes, the result (or error) the ranks leave, and the
collectives' single-process behaviour."""

from __future__ import annotations

import json

import pytest

from ftpipe.config import FinetuneConfig
from ftpipe.errors import DataError, StorageUnavailable, TrainingProcessesFailed
from ftpipe.storage import Storage
from ftpipe.training import launch


def _storage() -> Storage:
    from ftpipe.config import StorageConfig

    return Storage(StorageConfig())


def test_a_rank_error_comes_back_with_its_class_so_its_transient_flag_decides_the_retry(tmp_path):
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"error": {"type": "DataError", "message": "train split: no rows"}}))
    with pytest.raises(DataError, match="train split: no rows"):
        launch.read_result(_storage(), str(result), 2)
    result.write_text(json.dumps({"error": {"type": "StorageUnavailable", "message": "S3 down"}}))
    with pytest.raises(StorageUnavailable) as error:
        launch.read_result(_storage(), str(result), 3)
    assert error.value.transient
    result.write_text(json.dumps({"error": {"type": "KeyError", "message": "not ours"}}))  # not an ftpipe error
    with pytest.raises(TrainingProcessesFailed, match="not ours"):
        launch.read_result(_storage(), str(result), 1)


def test_ranks_that_die_without_a_result_are_a_transient_failure_naming_the_exit_code(tmp_path):
    with pytest.raises(TrainingProcessesFailed, match=r"exit code -9") as error:
        launch.read_result(_storage(), str(tmp_path / "missing.json"), -9)
    assert error.value.transient


def test_processes_follow_the_setting_else_one_per_gpu_seen():
    import torch

    assert launch.processes_wanted(FinetuneConfig(processes=3)) == 3
    assert launch.processes_wanted(FinetuneConfig()) == max(1, torch.cuda.device_count())
    assert launch.backend(FinetuneConfig(distributed_backend="gloo")) == "gloo"
    assert launch.backend(FinetuneConfig()) == ("nccl" if torch.cuda.is_available() else "gloo")


def test_in_one_process_the_collectives_are_the_identity():
    assert not launch.in_worker()
    assert (launch.rank(), launch.world_size(), launch.local_world_size(), launch.nodes()) == (0, 1, 1, 1)
    assert launch.any_process(True) and not launch.any_process(False)
    assert launch.from_rank_zero({"a": 1}) == {"a": 1}
    with launch.node_leader_first() as leader:
        assert leader
    launch.barrier()


def test_a_trainjob_name_is_a_dns_label_and_the_same_for_every_retry():
    name = launch.job_name_for("s3://ftpipe/runs/run-1/finetune")
    assert name == launch.job_name_for("s3://ftpipe/runs/run-1/finetune") != launch.job_name_for("s3://x/y")
    assert len(name) <= 63 and name.replace("-", "").isalnum() and name.islower()
