"""The ``python3`` of a local run's tasks: hands the task to the warm task server, or runs it cold.

``pipelines.task_server`` points KFP's local runner at a launcher script that runs this file as
``python -I -S task_client.py SOCKET PYTHON ARGS...``, where ARGS are what the task command passes to
``python3`` (``-m kfp.dsl.executor_main ...``). Standard library only, so that it starts in milliseconds.

The task runs in a fork of the server with this process's stdin, stdout, stderr, working directory and
environment, and this process exits with its status. Whenever the server cannot take the task (none is
listening, it died, the environment differs from its own), the task runs exactly as KFP would have run
it: ``PYTHON ARGS...`` in place of this process. Once the server has forked the task it is never run twice.
"""

import json
import os
import signal
import socket
import sys


def _run_cold(python: str, args: list[str]) -> None:
    os.execv(python, [python, *args])


def _read_replies(connection: socket.socket):
    buffered = b""
    while True:
        chunk = connection.recv(4096)
        if not chunk:
            return
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            yield json.loads(line)


def main() -> None:
    socket_path, python, *args = sys.argv[1:]
    request = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(socket_path)
        socket.send_fds(connection, [len(request).to_bytes(8, "big")], [0, 1, 2])
        connection.sendall(request)
        replies = _read_replies(connection)
        first = next(replies, None)
    except OSError:
        first = None
    if first is None or "cold" in first:
        connection.close()
        _run_cold(python, args)
    pid = first["forked"]

    def stop_task(signum, _frame):
        os.kill(pid, signum)

    # A runner that stops this process (timeout, Ctrl-C) stops the task, as it would stop a cold one.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop_task)
    last = next(replies, None)
    if last is None:  # its status is lost with the server: stop the task rather than leave it running unseen
        print(f"ftpipe: the warm task server stopped while task process {pid} ran; stopping it", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        sys.exit(1)
    status = last["exit"]
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
