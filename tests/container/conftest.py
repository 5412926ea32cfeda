"""The container tier: a real Docker engine, the real component image.

``docker_engine`` finds a Docker engine that answers (``DOCKER_HOST``, the private engine of
``docker/dockerd.sh``, the system socket) or starts one with ``docker/dockerd.sh start`` (which installs
Debian's docker.io when it is missing), and stops at the end of the session only the engine it started.
The tier is skipped, with the reason, only where no engine can be started at all. ``ftpipe_image``
builds the CPU image with ``docker/build.sh`` (``make image``), which keeps an image already built from
the same inputs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCKERD_SH = ROOT / "docker" / "dockerd.sh"
BUILD_SH = ROOT / "docker" / "build.sh"
# A cold build (base image by debootstrap, the whole stack from PyPI) takes several minutes.
BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DockerEngine:
    env: dict[str, str]  # the environment that points the docker CLI at the engine

    def run(self, *args: str, timeout: float = 300, check: bool = True, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["docker", *args], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result


def _answers(env: dict[str, str]) -> bool:
    if shutil.which("docker", path=env.get("PATH")) is None:
        return False
    try:
        return subprocess.run(["docker", "version"], env=env, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_engine() -> DockerEngine:
    base = dict(os.environ)
    candidates = []
    if base.get("DOCKER_HOST"):
        candidates.append(base["DOCKER_HOST"])
    private = subprocess.run(["bash", str(DOCKERD_SH), "env"], capture_output=True, text=True).stdout
    candidates += re.findall(r"DOCKER_HOST=(\S+)", private) + ["unix:///var/run/docker.sock"]
    for host in candidates:
        env = {**base, "DOCKER_HOST": host}
        if _answers(env):
            yield DockerEngine(env)
            return
    started = subprocess.run(["bash", str(DOCKERD_SH), "start"], capture_output=True, text=True, timeout=600)
    hosts = re.findall(r"DOCKER_HOST=(\S+)", started.stdout)
    if started.returncode != 0 or not hosts:
        pytest.skip(f"no Docker engine can be started here: {started.stderr.strip()[-500:]}")
    env = {**base, "DOCKER_HOST": hosts[-1]}
    try:
        yield DockerEngine(env)
    finally:
        subprocess.run(["bash", str(DOCKERD_SH), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def ftpipe_image(docker_engine) -> str:
    """The CPU component image ``ftpipe:<version>``, built (or kept, when up to date) by docker/build.sh."""
    result = subprocess.run(
        ["bash", str(BUILD_SH)], env=docker_engine.env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if result.returncode != 0:
        raise AssertionError(f"docker/build.sh failed ({result.returncode}):\n{result.stderr[-5000:]}")
    print((result.stderr.strip().splitlines() or [""])[-1])  # "built ... in N s, M MB" or "... is up to date"
    return result.stdout.strip().splitlines()[-1]
