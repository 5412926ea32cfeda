"""Training on several processes: ``torchrun`` in one pod, the worker each process runs, and their collectives.

With more than one training process (``training.processes``; when unset, one per CUDA GPU the pod sees), the
fine-tune step does not train in its own process. :func:`run_on_processes` writes a :class:`FinetuneSpec` and
starts ``torchrun`` with that many processes, and each runs :func:`main`: one rank of the Trainer's distributed
data parallel training (DDP; FSDP with ``training.fsdp``), over nccl on GPUs and gloo on CPUs. Every rank trains on
its share of each batch; only rank 0 writes checkpoints, the model, the reports and the result, which it leaves
(or the error that stopped it) as JSON where the launcher reads it back. With ``cluster.nodes`` above 1 the same
worker runs on every node of a Kubeflow Trainer TrainJob instead (:func:`run_on_nodes`,
``ftpipe.training.trainjob``).

The helpers at the end (:func:`rank`, :func:`barrier`, :func:`any_process`, ...) are what finetune and its
callbacks need to stay correct with several processes; in a single process each is a no-op.

Run a worker as ``python -m torch.distributed.run --nproc-per-node N -m ftpipe.training.launch SPEC_URI``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ftpipe import errors
from ftpipe.errors import FtpipeError, TrainingProcessesFailed

if TYPE_CHECKING:
    from ftpipe.config import FinetuneConfig
    from ftpipe.results import FinetuneResult
    from ftpipe.storage import Storage

logger = logging.getLogger("ftpipe.steps.finetune")  # the step's log, where users look for progress

WORKER_MODULE = "ftpipe.training.launch"


class FinetuneSpec(BaseModel):
    """Everything a training process needs to run ``finetune.run`` as one rank, and where rank 0 leaves its result."""

    config_json: str
    train_uri: str
    validation_uri: str
    labels: list[str]
    candidate: str
    output_uri: str
    result_uri: str
    run_id: str | None = None
    trial: dict[str, Any] | None = None
    work_dir: str | None = None


def processes_wanted(training: FinetuneConfig) -> int:
    """How many training processes the pod runs: ``training.processes``, else one per CUDA GPU it sees."""
    if training.processes is not None:
        return training.processes
    import torch

    return max(1, torch.cuda.device_count())


def backend(training: FinetuneConfig) -> str:
    if training.distributed_backend != "auto":
        return training.distributed_backend
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


# -- launchers ----------------------------------------------------------------------------------------------


def run_on_processes(spec: FinetuneSpec, processes: int, storage: Storage) -> FinetuneResult:
    """Train with ``processes`` ranks on this machine (torchrun) and return rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="ftpipe-torchrun-", dir=spec.work_dir) as scratch:
        result_path = Path(scratch) / "result.json"
        spec_path = Path(scratch) / "spec.json"
        # The ranks share one work directory: the checkpoints one of them saves are the ones all of them load.
        spec = spec.model_copy(update={"result_uri": str(result_path), "work_dir": scratch})
        spec_path.write_text(spec.model_dump_json(), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # one machine: a local rendezvous on a free port
            f"--nproc-per-node={processes}",
            "-m",
            WORKER_MODULE,
            str(spec_path),
        ]
        logger.info("training on %d processes (%s): %s", processes, "torchrun", " ".join(command[1:]))
        returncode = _run_passing_sigterm(command)
        return read_result(storage, str(result_path), returncode)


def run_on_nodes(spec: FinetuneSpec, nodes: int, storage: Storage, job_name: str) -> FinetuneResult:
    """Train on ``nodes`` nodes as a Kubeflow Trainer TrainJob and return rank 0's result (left in S3)."""
    from ftpipe.config import config_from_json
    from ftpipe.storage import join
    from ftpipe.training import trainjob

    config = config_from_json(spec.config_json)
    spec_uri = join(spec.output_uri, "launch", "spec.json")
    spec = spec.model_copy(update={"result_uri": join(spec.output_uri, "launch", "result.json"), "work_dir": None})
    storage.write_text(spec_uri, spec.model_dump_json(), content_type="application/json")
    if storage.exists(spec.result_uri):  # a retried launcher: the last attempt's outcome is not this one's
        storage.delete(spec.result_uri)
    logger.info("training on %d nodes as TrainJob %s", nodes, job_name)
    trainjob.train_on_nodes(config, spec_uri, job_name=job_name)
    return read_result(storage, spec.result_uri, 0)


def job_name_for(output_uri: str) -> str:
    """A TrainJob name of its own for each fine-tune (a DNS label), the same on every retry of it."""
    return "ftpipe-" + hashlib.sha256(output_uri.encode()).hexdigest()[:12]


def _run_passing_sigterm(command: list[str]) -> int:
    """Run ``command``, passing a SIGTERM this process gets on to it (torchrun hands it to every rank, whose
    Trainer saves a checkpoint), and return its exit code."""
    child = subprocess.Popen(command)  # noqa: S603 - our own interpreter and module
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def read_result(storage: Storage, result_uri: str, returncode: int) -> FinetuneResult:
    """Rank 0's result, or the ftpipe error a rank stopped with, raised again here (with its class: its
    transient flag decides whether KFP retries)."""
    from ftpipe.results import FinetuneResult

    if not storage.exists(result_uri):
        raise TrainingProcessesFailed(
            f"the training processes ended (exit code {returncode}) without a result; their log above says why"
        )
    outcome = storage.read_json(result_uri)
    if "error" in outcome:
        kind = getattr(errors, outcome["error"]["type"], None)
        kind = kind if isinstance(kind, type) and issubclass(kind, FtpipeError) else TrainingProcessesFailed
        raise kind(outcome["error"]["message"])
    return FinetuneResult.model_validate(outcome["result"])


# -- the worker ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """One training process: read the spec, join the process group, run finetune as this rank."""
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description=main.__doc__)
    parser.add_argument("spec_uri", help="the FinetuneSpec JSON (a local path or s3:// URI)")
    arguments = parser.parse_args(argv)
    rank_env = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s rank {rank_env} %(name)s: %(message)s"
    )

    import torch
    import torch.distributed as dist

    from ftpipe.config import StorageConfig, config_from_json
    from ftpipe.steps import finetune
    from ftpipe.storage import Storage
    from ftpipe.task import report_error

    storage = Storage(StorageConfig())  # endpoint and credentials from the environment, as the task's
    try:
        spec = FinetuneSpec.model_validate_json(storage.read_text(arguments.spec_uri))
        config = config_from_json(spec.config_json)
        storage = Storage(config.storage)
    except FtpipeError as error:
        report_error(f"finetune: {error}")
        return error.exit_code
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend(config.training))
    try:
        result = finetune.run(
            config,
            spec.train_uri,
            spec.validation_uri,
            spec.labels,
            spec.candidate,
            spec.output_uri,
            storage=storage,
            work_dir=spec.work_dir,
            run_id=spec.run_id,
            trial=spec.trial,
        )
        if rank() == 0:
            storage.write_json(spec.result_uri, {"result": result.model_dump(mode="json")})
        return 0
    except FtpipeError as error:
        report_error(f"finetune: {error}")
        _leave_termination_message(f"finetune: {error}")
        with contextlib.suppress(FtpipeError):  # the first rank to fail says why; S3 may be what failed
            if not storage.exists(spec.result_uri):
                storage.write_json(
                    spec.result_uri, {"error": {"type": type(error).__name__, "message": str(error)}}
                )
        return error.exit_code
    finally:
        dist.destroy_process_group()


def _leave_termination_message(line: str) -> None:
    """Kubernetes makes a container's /dev/termination-log its termination message, which the TrainJob launcher
    puts in its error; the file exists only in a pod."""
    path = Path("/dev/termination-log")
    if path.is_file():
        with contextlib.suppress(OSError):
            path.write_text(line[:4096], encoding="utf-8")  # the kubelet keeps at most 4 KiB


# -- collectives finetune and its callbacks use; each a no-op in one process -----------------------------------


def _group() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def in_worker() -> bool:
    """Whether this process is one rank of a distributed training (started by :func:`main`)."""
    return _group() is not None


def rank() -> int:
    group = _group()
    return group.get_rank() if group else 0


def world_size() -> int:
    group = _group()
    return group.get_world_size() if group else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if _group() else 0


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) if _group() else 1


def nodes() -> int:
    return max(1, world_size() // local_world_size())


def on_first_node() -> bool:
    """Whether this rank runs on the node of rank 0 (torchrun numbers the ranks node by node)."""
    return rank() < local_world_size()


def barrier() -> None:
    group = _group()
    if group:
        group.barrier()


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank: one decision for all, where each deciding alone could deadlock."""
    group = _group()
    if not group:
        return flag
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if group.get_backend() == "nccl" else None
    value = torch.tensor([int(flag)], device=device)
    group.all_reduce(value, op=group.ReduceOp.MAX)
    return bool(value.item())


def from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value``, on every rank."""
    group = _group()
    if not group:
        return value
    box = [value]
    group.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def node_leader_first() -> Iterator[bool]:
    """Run the block on each node's first rank before the others (a download into a cache they then share);
    yields whether this rank is that first one."""
    leader = local_rank() == 0
    if not leader:
        barrier()
    try:
        yield leader
    finally:
        if leader:
            barrier()


if __name__ == "__main__":
    sys.exit(main())
