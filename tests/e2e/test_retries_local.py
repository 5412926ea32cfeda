"""Which failures KFP retries: a user error ends the run at once, a dropped S3 connection is retried.

Both runs go through the whole compiled DAG with KFP's local runner (which honours the retry policy and its
back-off) and the real SeaweedFS server, on a dataset whose rows are all one duplicate, so that clean_data
always stops the run with a user error and no model is trained.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from tcp_pipe import pipe

from ftpipe.cli import main


def _dataset_of_duplicates(s3_storage, prefix: str, tmp_path: Path) -> str:
    data = tmp_path / "duplicates.csv"
    data.write_text("text,label\n" + "the same message,ham\n" * 40)
    s3_storage.upload_file(data, f"{prefix}/duplicates.csv")
    return f"{prefix}/duplicates.csv"


@pytest.fixture
def config_file(s3_storage, tiny_bert_dir, tmp_path, request):
    prefix = f"s3://ftpipe/e2e/{request.node.name}"
    config = {
        "data": {"uri": _dataset_of_duplicates(s3_storage, prefix, tmp_path)},
        "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
        "registry": {"uri": f"{prefix}/registry", "model_name": "retries"},
        "storage": {"artifact_root": f"{prefix}/runs"},
        # the defaults: 3 retries of each step, the first after 30 s (the waits that defect 3 was about)
        "cluster": {"step_retries": 3, "retry_backoff_s": 30},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config_file: Path, capsys) -> tuple[int, list[str], str, float]:
    started = time.monotonic()
    code = main(["run", "--local", "--config", str(config_file)])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    log_path = Path(err[-1].rsplit("(full log: ", 1)[1].rstrip(")"))
    return code, err, log_path.read_text(), seconds


def _executions(log: str, task: str) -> int:
    """How often the local runner started ``task`` (a regular expression): once, plus once per retry."""
    return len(re.findall(rf"Executing task \x1b\[96m'{task}'", log))


def test_a_user_error_ends_the_run_at_once_without_retries(config_file, s3_storage, capsys):
    code, err, log, seconds = _run(config_file, capsys)
    print(f"user error with step_retries 3: run ended in {seconds:.1f} s")  # 226 s before, with three back-offs
    assert code == 2
    assert err[-1].startswith("ftpipe: error: clean_data:"), err
    assert _executions(log, "clean-data") == 1
    assert _executions(log, r"stop-run-\d+") == 1  # clean_data's stop_run: the run ends through the DAG
    assert _executions(log, "select-model") == 0
    assert s3_storage.list(yaml.safe_load(config_file.read_text())["registry"]["uri"]) == []


class _FlakyProxy:
    """A TCP proxy to the S3 server that drops the connection of the ``drop_at``-th ``drop_request``.

    A real network fault: boto3 sees the connection closed before any answer, as when S3 restarts.
    Only a connection's first request is looked at (each task process opens its own connections).
    """

    def __init__(self, target: str, drop_request: bytes, drop_at: int) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.drop_request = drop_request
        self.drop_at = drop_at
        self.matched = 0
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = client.recv(65536)
        if first.startswith(self.drop_request):
            self.matched += 1
        if self.matched == self.drop_at and not self.dropped:
            self.dropped += 1
            client.close()
            return
        upstream = socket.create_connection(self.target)
        upstream.sendall(first)
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_s3_connection_is_retried_with_backoff(config_file, s3_env, capsys):
    """fingerprint_data's first request, a HEAD of the dataset, loses its connection: KFP retries the task.

    The run's preflight (in this process) sends its HEAD of the dataset on a connection it opened before,
    so the first connection that starts with one is fingerprint_data's.
    """
    config = yaml.safe_load(config_file.read_text())
    key = config["data"]["uri"].removeprefix("s3://")
    proxy = _FlakyProxy(s3_env.endpoint_url, f"HEAD /{key} ".encode(), drop_at=1)
    # botocore's own retries off, so that the retry is KFP's; a short back-off keeps the test short
    config["storage"].update(endpoint_url=proxy.url, max_attempts=0)
    config["cluster"]["retry_backoff_s"] = 2
    config_file.write_text(yaml.safe_dump(config))
    try:
        code, err, log, seconds = _run(config_file, capsys)
    finally:
        proxy.close()
    print(f"dropped connection: retried, run ended in {seconds:.1f} s")
    assert proxy.dropped == 1
    assert _executions(log, "fingerprint-data") == 2
    assert "fingerprint_data: S3 error on" in log  # the first attempt's line, before KFP's retry
    assert err[-1].startswith("ftpipe: error: clean_data:"), err  # the run then went on, to the data's user error
    assert _executions(log, "clean-data") == 1
