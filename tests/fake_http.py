"""The HTTP plumbing the local stand-ins for API servers share (``kfp_fake_server``, ``kubernetes_fake_server``).

A fake subclasses ``LocalHttpServer`` and defines ``_handle(handler)``, called for every GET, POST and DELETE;
``with fake:`` serves it on 127.0.0.1 and a port the OS picks, in a daemon thread, until the block ends, and
``fake.url`` is where it answers. ``read_request(handler)`` parses what was sent; ``reply(handler, status,
payload)`` answers a dict as JSON or a str as text. What each fake serves (routes, state, scripted behaviour)
stays in its own module.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, NamedTuple, Self
from urllib.parse import parse_qs, urlsplit


class IncomingRequest(NamedTuple):
    method: str
    path: str
    query: dict[str, str]  # a repeated parameter keeps its last value, as the real servers read it
    headers: dict[str, str]
    body: Any  # the decoded JSON body, None when there is none


def read_request(handler: BaseHTTPRequestHandler) -> IncomingRequest:
    url = urlsplit(handler.path)
    length = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(length) if length else b""
    body = json.loads(raw) if raw else None
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    return IncomingRequest(handler.command, url.path, query, dict(handler.headers.items()), body)


def reply(handler: BaseHTTPRequestHandler, status: int, payload: Any, text_type: str = "text/plain") -> None:
    """Answer ``payload``: a str as ``text_type`` (an HTML page, a bare error line), anything else as JSON."""
    if isinstance(payload, str):
        data, content_type = payload.encode(), text_type
    else:
        data, content_type = json.dumps(payload).encode(), "application/json"
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class LocalHttpServer:
    thread_name: ClassVar[str] = "fake-http"
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, f"{type(self).__name__} is not started: use it in a with block"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._handle(self)

            do_POST = do_DELETE = do_GET

            def log_message(self, *args):
                pass  # a test's output shows its own failures, not every request served

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Daemon threads: a request still being served (a log stream that stays open) never blocks the exit.
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
