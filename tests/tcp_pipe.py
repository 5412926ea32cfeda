"""The byte pump of the tests' TCP proxies (tests/faults/fault_proxy.py, tests/e2e/test_retries_local.py)."""

from __future__ import annotations

import socket


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either side closes, then close both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        sink.close()
        source.close()
