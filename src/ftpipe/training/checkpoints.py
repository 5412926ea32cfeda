"""Checkpoints mirrored to S3, so that a retried pod on a preempted GPU node resumes where the last one stopped.

Each checkpoint the Trainer saves is uploaded under ``<output_uri>/checkpoints/checkpoint-<step>/`` and marked
complete (:data:`MIRROR_MARKER`) only once all of its files are up; a run that finds complete checkpoints
downloads them and resumes from the newest.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftpipe.storage import Storage, is_s3, join, local_path

logger = logging.getLogger(__name__)

MIRROR_MARKER = "ftpipe-checkpoint-complete.json"
PROGRESS_RECORD = "progress.json"  # the newest step a run reached (callbacks.ProgressRecord), beside the checkpoints
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def _relative(uri: str, prefix_uri: str) -> str:
    base = prefix_uri.rstrip("/") + "/" if is_s3(prefix_uri) else str(local_path(prefix_uri)).rstrip("/") + "/"
    return uri[len(base) :] if uri.startswith(base) else uri


def mirrored_checkpoints(storage: Storage, prefix_uri: str) -> dict[int, str]:
    """``{global_step: uri}`` of the complete checkpoints mirrored under ``prefix_uri``."""
    found = {}
    for uri in storage.list(prefix_uri):
        parts = _relative(uri, prefix_uri).split("/")
        match = _CHECKPOINT_NAME.fullmatch(parts[0])
        if len(parts) == 2 and parts[1] == MIRROR_MARKER and match:
            found[int(match.group(1))] = join(prefix_uri, parts[0])
    return found


def delete_prefix(storage: Storage, prefix_uri: str, first: str | None = None) -> None:
    """Delete every object under a prefix (``first`` before the rest, so a marker goes before its files)."""
    objects = storage.list(prefix_uri)
    if first is not None:
        objects.sort(key=lambda uri: not uri.endswith("/" + first))
    for uri in objects:
        storage.delete(uri)
    if not is_s3(prefix_uri):
        shutil.rmtree(local_path(prefix_uri), ignore_errors=True)



@dataclass(frozen=True)
class Restored:
    """A mirrored checkpoint downloaded to resume from."""

    path: Path
    uri: str
    global_step: int
    epoch: float
    stop_decided: bool  # early stopping had already ended training when this checkpoint was saved


def restore_checkpoints(storage: Storage, prefix_uri: str, directory: Path) -> Restored | None:
    """Download the complete mirrored checkpoints into ``directory``; the newest one, or None when there are none."""
    mirrored = mirrored_checkpoints(storage, prefix_uri)
    if not mirrored:
        return None
    for step, uri in sorted(mirrored.items()):
        storage.download_dir(uri, directory / f"checkpoint-{step}")
    newest_step = max(mirrored)
    newest = directory / f"checkpoint-{newest_step}"
    # The Trainer recorded the best checkpoint as an absolute path on the old pod: point it here.
    state_file = newest / "trainer_state.json"
    state = json.loads(state_file.read_text())
    best = state.get("best_model_checkpoint")
    if best:
        here = directory / Path(best).name
        state["best_model_checkpoint"] = str(here) if here.is_dir() else None
        state_file.write_text(json.dumps(state, indent=2))
    control = (state.get("stateful_callbacks") or {}).get("TrainerControl") or {}
    stop_decided = bool((control.get("args") or {}).get("should_training_stop"))
    logger.info("resuming from %s (step %d)", mirrored[newest_step], newest_step)
    return Restored(newest, mirrored[newest_step], newest_step, float(state.get("epoch") or 0.0), stop_decided)


def steps_redone(storage: Storage, prefix_uri: str, restored: Restored | None) -> int | None:
    """How many optimizer steps an earlier attempt had trained past the checkpoint this run starts from.

    From the progress the attempt recorded (every second or so, so a lower bound by at most that much), and from
    the checkpoint itself (the attempt got at least that far); None when no earlier attempt left either.
    """
    uri = join(prefix_uri, PROGRESS_RECORD)
    if not storage.exists(uri):
        return 0 if restored else None
    reached = int(storage.read_json(uri).get("global_step") or 0)
    return max(0, reached - (restored.global_step if restored else 0))
