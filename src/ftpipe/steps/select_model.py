"""select_model: pick the candidate to fine-tune with a cheap frozen-embedding probe.

Each candidate of ``config.candidates`` is resolved (s3:// prefixes are downloaded), checked against the
constraints of ``config.selection`` (allowed licences, maximum parameter count) and loaded as a bare
encoder, safetensors only, with ``trust_remote_code`` only where that candidate turns it on. A
candidate that cannot be resolved, loaded or probed, or that breaks a constraint, is skipped with a
warning and listed in the report with its reason.

The probe is the task's (``Task.probe``): features of the frozen encoder for up to ``probe_train_rows``
stratified training rows feed a cheap scikit-learn model (text_classification: a logistic regression on
mean-pooled embeddings, scored by macro-F1), scored on up to ``probe_validation_rows`` validation rows.
Candidates are ranked by ``probe_value - cost_weight * log10(num_parameters)``, so a much larger model must
earn its cost.

Run it as ``run(config, train_uri, validation_uri, labels, output_uri)``; it writes ``report.md``,
``report.html`` and ``report.json`` (the ranking table) under ``output_uri``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ftpipe import models, reports
from ftpipe.config import CandidateConfig, PipelineConfig
from ftpipe.errors import DataError, FtpipeError, ModelError
from ftpipe.results import CandidateScore, SelectModelResult, SkippedCandidate
from ftpipe.steps import MODEL_LIBRARIES, REPORT_LIBRARIES, TOKENIZER_LIBRARIES
from ftpipe.storage import Storage, join
from ftpipe.tasks import Task, get_task
from ftpipe.tasks.base import first_line, stratified_sample

logger = logging.getLogger(__name__)

LIBRARIES = (
    *MODEL_LIBRARIES,
    *TOKENIZER_LIBRARIES,
    "sklearn.linear_model",
    "sklearn.model_selection",
    *REPORT_LIBRARIES,
)

PROBE_BATCH_SIZE = 32


class _Skip(Exception):
    """A candidate breaks a constraint or cannot be used; the message is the reason."""


# -- helpers shared with finetune ---------------------------------------------------------------


def read_split(storage: Storage, uri: str, name: str) -> pd.DataFrame:
    """Read one cleaned split as written (the task checks its columns: ``Task.check_split``).

    Raises:
        DataError: the file cannot be read.
    """
    with storage.local_copy(uri) as path:
        try:
            return pd.read_parquet(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises many types for "not parquet"
            raise DataError(f"cannot read the {name} split {uri}: {first_line(error)}") from None


def read_checked_split(storage: Storage, uri: str, name: str, task: Task, labels: Sequence[str]) -> pd.DataFrame:
    """A cleaned split, read and checked by the task against ``labels``."""
    return task.check_split(read_split(storage, uri, name), labels, name)


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota (a Kubernetes CPU limit) or the affinity mask."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def ensure_pad_token(tokenizer) -> None:
    """Decoder-only tokenizers often have no pad token; batching needs one (EOS serves, masked out)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def find_candidate(config: PipelineConfig, name: str | None) -> CandidateConfig:
    """The candidate called ``name`` (the first one when None).

    Raises:
        ModelError: no candidate has that name.
    """
    if name is None:
        return config.candidates[0]
    for candidate in config.candidates:
        if candidate.name == name:
            return candidate
    known = ", ".join(c.name for c in config.candidates)
    raise ModelError(f"no candidate named {name!r} in the config (candidates: {known})")


def candidate_license(candidate: CandidateConfig, resolved: str) -> str | None:
    """The declared licence, else the model card's ``license:``, lower-cased; None when unknown."""
    if candidate.license:
        return candidate.license.strip().lower()
    return models.read_license(resolved) if Path(resolved).is_dir() else None


# -- the probe ----------------------------------------------------------------------------------


def safetensors_parameter_count(model_dir: str) -> int | None:
    """Parameters stored in a directory's safetensors files, read from their headers (no weights loaded)."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with open(file, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for key, entry in header.items():
            if key != "__metadata__":
                total += math.prod(entry.get("shape", []))
    return total


def _score_candidate(
    candidate: CandidateConfig,
    config: PipelineConfig,
    storage: Storage,
    task: Task,
    train: pd.DataFrame,
    validation: pd.DataFrame,
) -> CandidateScore:
    """Check one candidate's constraints and probe it; raises _Skip with the reason when it is left out."""
    import torch

    selection = config.selection
    try:
        resolved = models.resolve_source(candidate.source, storage)
    except FtpipeError as error:
        if error.transient:  # S3 failing now says nothing about the candidate: the task is retried instead
            raise
        raise _Skip(str(error)) from None

    license_id = candidate_license(candidate, resolved)
    if selection.allowed_licenses is not None:
        allowed = {item.strip().lower() for item in selection.allowed_licenses}
        if license_id is None:
            raise _Skip("licence unknown (declare `license:` on the candidate or in its model card)")
        if license_id not in allowed:
            raise _Skip(f"licence {license_id} is not in selection.allowed_licenses ({', '.join(sorted(allowed))})")

    stored = safetensors_parameter_count(resolved)
    if selection.max_parameters is not None and stored is not None and stored > selection.max_parameters:
        raise _Skip(f"{stored:,} parameters exceed selection.max_parameters={selection.max_parameters:,}")

    try:
        tokenizer = models.load_tokenizer(resolved, trust_remote_code=candidate.trust_remote_code)
        encoder = task.load_probe_model(resolved, trust_remote_code=candidate.trust_remote_code)
    except ModelError as error:
        raise _Skip(str(error)) from None
    num_parameters = models.count_parameters(encoder)
    if selection.max_parameters is not None and num_parameters > selection.max_parameters:
        raise _Skip(f"{num_parameters:,} parameters exceed selection.max_parameters={selection.max_parameters:,}")

    ensure_pad_token(tokenizer)
    encoder.eval()
    if torch.cuda.is_available():
        encoder.to("cuda")
    started = time.perf_counter()
    try:
        probed = task.probe(encoder, tokenizer, train, validation)
    except DataError:
        raise  # the data, not this candidate: no other candidate could do better
    except Exception as error:  # noqa: BLE001 - a model without a usable encoder forward is skipped, not fatal
        raise _Skip(f"probe failed: {type(error).__name__}: {first_line(error)}") from None
    finally:
        del encoder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    score = probed.value - selection.cost_weight * math.log10(max(num_parameters, 1))
    logger.info(
        "candidate %s: %s parameters, probe %s %.4f, score %.4f (%.1f s)",
        candidate.name,
        f"{num_parameters:,}",
        probed.metric,
        probed.value,
        score,
        seconds,
    )
    return CandidateScore(
        name=candidate.name,
        source=candidate.source,
        license=license_id,
        num_parameters=num_parameters,
        probe_metric=probed.metric,
        probe_value=round(probed.value, 6),
        probe_details={key: round(float(value), 6) for key, value in probed.details.items()},
        score=round(score, 6),
        probe_seconds=round(seconds, 3),
    )


# -- the step -----------------------------------------------------------------------------------


def run(
    config: PipelineConfig,
    train_uri: str,
    validation_uri: str,
    labels: Sequence[str],
    output_uri: str,
    storage: Storage | None = None,
) -> SelectModelResult:
    """Rank ``config.candidates`` by the probe and pick the best one.

    Args:
        config: the pipeline config (``candidates`` and ``selection`` are used).
        train_uri: cleaned train split (parquet: text, label, label_id).
        validation_uri: cleaned validation split, same columns.
        labels: label names in class-index order.
        output_uri: prefix (s3:// or local) for the reports.
        storage: storage to use; one built from ``config.storage`` when None.

    Raises:
        DataError: a split cannot be read, is empty, has a single class or labels that do not match.
        ModelError: every candidate was skipped (the message lists each reason).
    """
    import torch

    storage = storage or Storage(config.storage)
    task = get_task(config)
    labels = list(labels)
    train = read_checked_split(storage, train_uri, "train", task, labels)
    validation = read_checked_split(storage, validation_uri, "validation", task, labels)

    selection = config.selection
    seed = config.training.seed
    train = stratified_sample(train, selection.probe_train_rows, seed, task.strata(train))
    validation = stratified_sample(validation, selection.probe_validation_rows, seed, task.strata(validation))
    if not torch.cuda.is_available():
        torch.set_num_threads(available_cpus())
    logger.info(
        "probing %d candidate(s) on %d train / %d validation rows",
        len(config.candidates),
        len(train),
        len(validation),
    )

    ranking: list[CandidateScore] = []
    skipped: list[SkippedCandidate] = []
    for candidate in config.candidates:
        try:
            ranking.append(_score_candidate(candidate, config, storage, task, train, validation))
        except _Skip as reason:
            logger.warning("skipping candidate %s (%s): %s", candidate.name, candidate.source, reason)
            skipped.append(SkippedCandidate(name=candidate.name, source=candidate.source, reason=str(reason)))

    if not ranking:
        details = "; ".join(f"{item.name}: {item.reason}" for item in skipped)
        raise ModelError(f"no usable candidate model ({details})")
    # Best score first; ties go to the smaller model, then to the config's order (sort is stable).
    ranking.sort(key=lambda item: (-item.score, item.num_parameters))
    selected = ranking[0]
    logger.info("selected candidate %s (score %.4f)", selected.name, selected.score)

    uris = {kind: join(output_uri, f"report.{kind}") for kind in ("md", "html", "json")}
    storage.write_text(uris["md"], _markdown(selected, ranking, skipped), content_type="text/markdown")
    storage.write_text(uris["html"], _html(selected, ranking, skipped, selection.cost_weight), content_type="text/html")
    storage.write_json(
        uris["json"],
        {
            "selected": selected.model_dump(),
            "ranking": [item.model_dump() for item in ranking],
            "skipped": [item.model_dump() for item in skipped],
            "cost_weight": selection.cost_weight,
            "probe_train_rows": len(train),
            "probe_validation_rows": len(validation),
        },
    )
    return SelectModelResult(
        selected=selected,
        ranking=ranking,
        skipped=skipped,
        report_markdown_uri=uris["md"],
        report_html_uri=uris["html"],
        report_json_uri=uris["json"],
    )


# -- reports ------------------------------------------------------------------------------------

_RANK_COLUMNS = ("rank", "candidate", "parameters", "licence", "probe metric", "probe value", "score", "probe s")


def _rank_rows(ranking: Sequence[CandidateScore]) -> list[list[object]]:
    return [
        [
            position,
            item.name,
            f"{item.num_parameters:,}",
            item.license or "unknown",
            item.probe_metric,
            item.probe_value,
            item.score,
            f"{item.probe_seconds:.1f}",
        ]
        for position, item in enumerate(ranking, start=1)
    ]


def _skip_rows(skipped: Sequence[SkippedCandidate]) -> list[list[object]]:
    return [[item.name, item.source, item.reason] for item in skipped]


def _markdown(selected: CandidateScore, ranking: Sequence[CandidateScore], skipped: Sequence[SkippedCandidate]) -> str:
    parts = [
        "# Model selection",
        "",
        f"Selected: **{selected.name}** (`{selected.source}`), score {selected.score:.4f}.",
        "",
        "## Ranking",
        "",
        reports.markdown_table(_RANK_COLUMNS, _rank_rows(ranking)),
    ]
    if skipped:
        parts += ["", "## Skipped", "", reports.markdown_table(("candidate", "source", "reason"), _skip_rows(skipped))]
    return "\n".join(parts) + "\n"


def _score_chart(ranking: Sequence[CandidateScore]) -> str:
    figure, axes = reports.new_figure(6.0, 0.6 + 0.45 * len(ranking))
    names = [item.name for item in reversed(ranking)]
    probe_label = f"probe {ranking[0].probe_metric}"
    axes.barh(names, [item.probe_value for item in reversed(ranking)], color="#9ab", label=probe_label)
    axes.barh(names, [item.score for item in reversed(ranking)], color="#246", height=0.4, label="score")
    axes.set_xlabel("value")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.3 / len(ranking)), ncol=2, fontsize="small")
    return reports.figure_to_data_uri(figure)


def _html(
    selected: CandidateScore,
    ranking: Sequence[CandidateScore],
    skipped: Sequence[SkippedCandidate],
    cost_weight: float,
) -> str:
    import html

    summary = (
        f"<p>Selected <b>{html.escape(selected.name)}</b> (<code>{html.escape(selected.source)}</code>). "
        f"Score = probe {html.escape(selected.probe_metric)} &minus; {cost_weight:g} &times; log10(parameters).</p>"
    )
    sections = [
        ("Selected", summary),
        ("Ranking", reports.html_table(_RANK_COLUMNS, _rank_rows(ranking))),
        ("Scores", reports.html_image(_score_chart(ranking), "probe macro-F1 and score per candidate")),
    ]
    if skipped:
        sections.append(("Skipped", reports.html_table(("candidate", "source", "reason"), _skip_rows(skipped))))
    return reports.html_page("Model selection", sections)
