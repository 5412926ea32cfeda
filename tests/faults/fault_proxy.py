"""Tools of the fault-injection suite: a TCP proxy in front of S3 that acts on chosen requests, and S3 outages.

:class:`S3Proxy` forwards every connection to the real server and reads the request lines going through it (on
every request of a kept-alive connection, not only the first). A rule names a request (a regular expression over
``METHOD /bucket/key``) and an action run when the request is seen, before any byte of it is forwarded: kill the
registering process, stop the server. When the action returns True the request is never forwarded and the
connection is closed, as when a pod dies mid-request. No test hook lives in ftpipe's own code.

:class:`Outage` stops a test's own SeaweedFS server and starts it again, on the same port, data directory and keys,
after a given time.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tcp_pipe import pipe

from ftpipe import s3server

_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (/[^ ?]*)(?:\?[^ ]*)? HTTP/1\.1\r\n")
_TAIL = 2048  # bytes of a connection's stream kept to find a request line cut between two reads


@dataclass
class Rule:
    pattern: re.Pattern[str]
    action: Callable[[str], bool | None]
    times: int = 1  # how often the rule may fire
    fired: int = 0
    seen: list[str] = field(default_factory=list)


class S3Proxy:
    """A TCP proxy to ``target`` (an ``http://host:port`` URL) that runs an action on the requests it is told of."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.rules: list[Rule] = []
        self.requests: list[str] = []  # "METHOD /bucket/key" of every request forwarded or stopped
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def on(self, pattern: str, action: Callable[[str], bool | None], times: int = 1) -> Rule:
        """Run ``action(request)`` when a request matching ``pattern`` (``METHOD /bucket/key``) arrives.

        The action returns True to drop the request and close its connection, anything else to forward it.
        """
        rule = Rule(re.compile(pattern), action, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _match(self, request: str) -> Rule | None:
        with self._lock:
            self.requests.append(request)
            for rule in self.rules:
                if rule.fired < rule.times and rule.pattern.search(request):
                    rule.fired += 1
                    rule.seen.append(request)
                    return rule
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        tail = b""
        try:
            while data := client.recv(65536):
                window = tail + data
                for found in _REQUEST_LINE.finditer(window):
                    if found.end() <= len(tail):
                        continue  # seen with the previous read
                    request = f"{found.group(1).decode()} {found.group(2).decode()}"
                    rule = self._match(request)
                    if rule is not None and rule.action(request):
                        return  # dropped: the finally closes both sides
                tail = window[-_TAIL:]
                if upstream is None:
                    try:
                        upstream = socket.create_connection(self.target, timeout=5)
                        upstream.settimeout(None)
                    except OSError:
                        return  # the server is down: the client sees its connection closed
                    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def close(self) -> None:
        self.listener.close()


class Outage:
    """Stop a SeaweedFS server started by :func:`ftpipe.s3server.start` on ``directory``; start it again later."""

    def __init__(self, directory: Path, state: s3server.ServerState, buckets: tuple[str, ...]) -> None:
        self.directory = directory
        self.port = int(state.endpoint_url.rsplit(":", 1)[1])
        self.buckets = buckets
        self.state = state
        self.stopped_at: float | None = None
        self.restarted_at: float | None = None
        self._thread: threading.Thread | None = None
        self._begun = threading.Event()
        self.error: BaseException | None = None

    def begin(self, seconds: float) -> None:
        """Stop the server now (returns once it is down) and start it again ``seconds`` after it was told to stop.

        Clients may fail while this still waits for the server to exit: :meth:`wait` waits for this too.
        """
        self.stopped_at = time.monotonic()
        self._thread = threading.Thread(target=self._restart, args=(seconds,), daemon=True)
        self._begun.set()
        s3server.stop(self.directory)
        self._thread.start()

    def _restart(self, seconds: float) -> None:
        time.sleep(max(0.0, self.stopped_at + seconds - time.monotonic()))
        try:
            self.state = s3server.start(self.directory, s3_port=self.port, buckets=self.buckets)
            self.restarted_at = time.monotonic()
        except BaseException as error:  # noqa: BLE001 - reported by wait()
            self.error = error

    @property
    def seconds(self) -> float:
        """How long the server was down (so far, while it still is)."""
        if self.stopped_at is None:
            return 0.0
        return (self.restarted_at or time.monotonic()) - self.stopped_at

    def wait(self, timeout_s: float = 120) -> None:
        """Wait until the outage has begun and the server is back; raises what starting it again raised."""
        assert self._begun.wait(timeout_s), "the outage never began"
        deadline = time.monotonic() + timeout_s
        while not self._thread.ident and time.monotonic() < deadline:  # begin() is still stopping the server
            time.sleep(0.1)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self.error is not None:
            raise self.error
        assert self.restarted_at is not None, "the S3 server did not come back"
