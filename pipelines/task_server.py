"""Warm task starts for local runs: each task forks from one interpreter that has imported the ML stack.

Every KFP task is a new Python process, and the libraries a step works with (torch, transformers,
scikit-learn, matplotlib) take 3-4 s to import on this project's 2-core reference machine, in each of the
four model tasks: most of a local run's overhead (``python -m bench.overhead`` measures it). So
``ftpipe run --local`` starts one task server for the run. It imports those libraries once, then runs each
task's ``python3 -m kfp.dsl.executor_main ...`` in a fork of itself (``os.fork``: the imported modules are
shared copy-on-write), with the task's own stdin, stdout, stderr, working directory and environment.

KFP's local runner still does everything else (executor input, artifact paths, outputs, the DAG). The one
thing swapped is the interpreter it starts for a task: its SubprocessRunner replaces ``python3`` in the task
command with ``sys.executable`` through ``replace_python_executable`` and offers no setting for it, so
:func:`warm_task_starts` wraps that function to put in a launcher that runs ``pipelines.task_client``.
A task runs cold, exactly as KFP would run it, when the server cannot take it (see ``task_client``) or
its environment differs from the server's; ``FTPIPE_WARM_START=0`` turns the server off. On a cluster
each task is its own pod and none of this is used.

Forking after these imports is what PyTorch's DataLoader workers and ``datasets.map(num_proc=...)`` do
every day: importing starts no Python threads, and the server never runs a torch op or a tokenizer.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import runpy
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

WARM_START_ENV = "FTPIPE_WARM_START"
# Set by the shell of the task command rather than by the runner: they may differ between server and task
# (bash's checkwinsize sets COLUMNS and LINES after a command it ran: seen before stop_run's task).
_SHELL_VARIABLES = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES"})
_ACCEPT_POLL_S = 1.0  # how often an idle server checks that the run that started it is still there


def preload() -> None:
    """Import what tasks import: the KFP executor, ftpipe's task code, every step and its libraries."""
    from ftpipe.steps import STEP_NAMES
    from ftpipe.task import load_libraries

    steps = [f"ftpipe.steps.{name}" for name in STEP_NAMES]
    load_libraries(["kfp.dsl.executor_main", *steps])
    load_libraries([library for step in steps for library in getattr(sys.modules[step], "LIBRARIES", ())])


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} task server: {message}", flush=True)


def _receive_request(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _flags, _address = socket.recv_fds(connection, 8, 3)
    try:
        if len(header) != 8 or len(fds) != 3:
            raise ValueError("malformed request")
        size, body = int.from_bytes(header, "big"), b""
        while len(body) < size:
            chunk = connection.recv(min(1 << 20, size - len(body)))
            if not chunk:
                raise ValueError("request cut short")
            body += chunk
        return json.loads(body), fds
    except Exception:
        for fd in fds:
            os.close(fd)
        raise


def cold_reason(request: Mapping[str, Any], environment: Mapping[str, str]) -> str | None:
    """Why a task must run cold rather than in a fork of this server, or None when it can run warm."""
    args = request["args"]
    if len(args) < 2 or args[0] != "-m":
        return f"not a `python -m` command: {shlex.join(args[:3])}"
    names = (set(request["env"]) | set(environment)) - _SHELL_VARIABLES
    differing = sorted(name for name in names if request["env"].get(name) != environment.get(name))
    if differing:
        return f"its environment differs from the server's in {', '.join(differing)}"
    return None


def _reply(connection: socket.socket, **message: Any) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


def _wait(pid: int, connection: socket.socket) -> int:
    """The task's exit code; a client that goes away (its runner stopped it) takes the task down with it."""
    pidfd = os.pidfd_open(pid)
    watched = [pidfd, connection]
    try:
        while True:
            readable, _, _ = select.select(watched, [], [])
            if pidfd in readable:
                break
            if connection in readable and not connection.recv(1):
                _log(f"the client of task process {pid} went away: stopping it")
                os.kill(pid, signal.SIGTERM)
                watched.remove(connection)
    finally:
        os.close(pidfd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def serve(listener: socket.socket, parent_pid: int) -> dict[str, Any]:
    """Serve tasks until the run that started it ends; returns only in a forked task process, its request."""
    started = time.monotonic()
    environment = dict(os.environ)  # before the imports: scikit-learn, for one, sets variables as it loads
    preload()
    _log(f"ready in {time.monotonic() - started:.1f} s")
    listener.settimeout(_ACCEPT_POLL_S)
    while os.getppid() == parent_pid:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        connection.settimeout(None)
        try:
            request, fds = _receive_request(connection)
            reason = cold_reason(request, environment)
            if reason:
                for fd in fds:
                    os.close(fd)
                _log(f"task runs cold: {reason}")
                _reply(connection, cold=reason)
                connection.close()
                continue
        except (OSError, ValueError, KeyError, TypeError) as error:
            _log(f"bad request: {error!r}")
            connection.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            connection.close()
            request["fds"] = fds
            return request
        for fd in fds:
            os.close(fd)
        _see_task_through(pid, connection)
    raise SystemExit(0)


def _see_task_through(pid: int, connection: socket.socket) -> None:
    """Tell the client the task's pid, then its exit code; without a client to tell, stop the task."""
    status = None
    try:
        _reply(connection, forked=pid)
        status = _wait(pid, connection)
        _reply(connection, exit=status)
    except OSError as error:
        _log(f"lost the client of task process {pid}: {error}")
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    finally:
        connection.close()


def run_task(request: Mapping[str, Any]) -> None:
    """In the forked process: become ``python -m MODULE ARGS...`` with the task's stdio, directory and env."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, target in zip(request["fds"], (0, 1, 2), strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    # The rest of the environment is the server's, equal to the task's (cold_reason) plus what imports set.
    for name in _SHELL_VARIABLES:
        if name in request["env"]:
            os.environ[name] = request["env"][name]
        else:
            os.environ.pop(name, None)
    module, *arguments = request["args"][1:]
    sys.argv = [module, *arguments]
    sys.path.insert(0, os.getcwd())  # as `python -m` does; the server itself runs with -P, without it
    runpy.run_module(module, run_name="__main__", alter_sys=True)


# The interpreter word of the task command's shell script, and nothing else: KFP's own replacement swaps the text
# `python3` in every argument, so a path like .../lib/python3.11/site-packages/... in the config was corrupted.
_INTERPRETER = re.compile(r"(?<![\w./-])python3(?= -m kfp\.dsl\.executor_main\b)")


def replace_interpreter(full_command: list[str], executable: str) -> list[str]:
    """``full_command`` with its interpreter (the ``python3`` that runs KFP's executor) replaced, args untouched."""
    return [_INTERPRETER.sub(lambda _: shlex.quote(executable), element) for element in full_command]


@contextlib.contextmanager
def _interpreter_only(executable: str) -> Iterator[None]:
    """While the block runs, KFP's local runner starts tasks with ``executable`` and leaves their arguments alone."""
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.replace_python_executable
    subprocess_task_handler.replace_python_executable = lambda command, _executable: replace_interpreter(
        command, executable
    )
    try:
        yield
    finally:
        subprocess_task_handler.replace_python_executable = original


@contextlib.contextmanager
def warm_task_starts(log_path: Path, environment: Mapping[str, str]) -> Iterator[Path | None]:
    """Run the local runner's tasks in forks of a task server while the block runs; yields the launcher.

    ``environment``: what KFP adds to a task's environment (the pipeline's env settings), so that the
    server's environment, and so the modules it imports, see what a cold task would.
    """
    # fork and pidfd_open (to wait for a task and its client at once) are Linux's: elsewhere tasks run cold.
    if os.environ.get(WARM_START_ENV, "1") == "0" or not hasattr(os, "pidfd_open"):
        with _interpreter_only(sys.executable):
            yield None
        return

    directory = Path(tempfile.mkdtemp(prefix="ftpipe-tasks-"))  # short: a socket path has 107 bytes at most
    socket_path = directory / "server.sock"
    # Listening before the server starts: tasks that come while it imports wait in the backlog.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(16)
    launcher = directory / "python3"
    client = Path(__file__).with_name("task_client.py")
    launcher.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(sys.executable)} -I -S {shlex.quote(str(client))} {shlex.quote(str(socket_path))} "
        f'{shlex.quote(sys.executable)} "$@"\n'
    )
    launcher.chmod(0o700)
    # The variable the task command sets before `python3`: kfp then skips importing its client.
    server_environment = {**os.environ, **environment, "_KFP_RUNTIME": "true"}
    with open(log_path, "a", encoding="utf-8") as log:
        # -P: a folder named `pipelines` where the user stands must not hide this one.
        # A session of its own: Ctrl-C reaches a task through its client (as it reaches a cold task), once.
        server = subprocess.Popen(
            [sys.executable, "-P", "-m", "pipelines.task_server", str(listener.fileno()), str(os.getpid())],
            pass_fds=[listener.fileno()],
            env=server_environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    listener.close()
    try:
        with _interpreter_only(str(launcher)):
            yield launcher
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    listener, parent_pid = socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2])
    request = serve(listener, parent_pid)
    try:
        run_task(request)
    except KeyboardInterrupt:
        # As the interpreter ends a `python -m` that Ctrl-C stopped: the traceback, the exit handlers, then
        # death by SIGINT (status 130 to a shell) rather than exit status 1.
        traceback.print_exc()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    main()
