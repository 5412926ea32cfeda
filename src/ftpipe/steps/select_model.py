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

Label noise (``selection.label_noise``, default ``report``): for the selected candidate, the probe's own
train features are cross-validated (``selection.label_noise_folds`` stratified folds, seeded) and
confident learning (cleanlab, ``ftpipe.data.label_noise``) flags the probed train rows whose given label the
out-of-fold probe doubts; the report, the result and the log list them with their suggested labels. Only the
probed rows are checked (``probe_train_rows``). A task whose probe hands back no class features
(``ProbeScore.train_features``: every task but text_classification) is marked ``not_applicable``. With
``quarantine``, ``train.parquet`` (the cleaned train split less the suspects) and ``label_issues.parquet``
(the rows taken out, with the reason ``label_issue`` and the suggested label) are written under this step's
``output_uri`` - the cleaned artifact is shared by every run that caches it and is never changed - and
``SelectModelResult.train_uri`` points finetune at the new split.

Run it as ``run(config, train_uri, validation_uri, labels, output_uri)``; it writes ``report.md``,
``report.html`` and ``report.json`` (the ranking table and the suspected mislabels) under ``output_uri``.
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ftpipe import models, reports
from ftpipe.config import CandidateConfig, PipelineConfig
from ftpipe.data import label_noise
from ftpipe.errors import DataError, FtpipeError, ModelError
from ftpipe.results import CandidateScore, SelectModelResult, SkippedCandidate, SuspectedLabel
from ftpipe.steps import MODEL_LIBRARIES, REPORT_LIBRARIES, TOKENIZER_LIBRARIES
from ftpipe.storage import Storage, join
from ftpipe.tasks import Task, get_task
from ftpipe.tasks.base import TEXT, ProbeFeatures, first_line, stratified_sample

logger = logging.getLogger(__name__)

LIBRARIES = (
    *MODEL_LIBRARIES,
    *TOKENIZER_LIBRARIES,
    "sklearn.linear_model",
    "sklearn.model_selection",
    "cleanlab",
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
) -> tuple[CandidateScore, ProbeFeatures | None]:
    """Check one candidate's constraints and probe it, with the probe's train features where the task has them;
    raises _Skip with the reason when it is left out."""
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
    scored = CandidateScore(
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
    return scored, probed.train_features


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
    # Sampling positions picks the same rows as sampling the frame, and keeps each probed row's place in the
    # cleaned split for the label-noise report and the quarantine.
    positions = pd.DataFrame({"row": np.arange(len(train))})
    train_rows = stratified_sample(positions, selection.probe_train_rows, seed, task.strata(train))["row"].to_numpy()
    cleaned_rows = len(train)
    train = train.iloc[train_rows].reset_index(drop=True)
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
    best_features: ProbeFeatures | None = None  # the best candidate's so far: one feature matrix in memory
    for candidate in config.candidates:
        try:
            scored, probe_features = _score_candidate(candidate, config, storage, task, train, validation)
        except _Skip as reason:
            logger.warning("skipping candidate %s (%s): %s", candidate.name, candidate.source, reason)
            skipped.append(SkippedCandidate(name=candidate.name, source=candidate.source, reason=str(reason)))
            continue
        if not ranking or _rank_key(scored) < min(_rank_key(item) for item in ranking):
            best_features = probe_features
        ranking.append(scored)

    if not ranking:
        details = "; ".join(f"{item.name}: {item.reason}" for item in skipped)
        raise ModelError(f"no usable candidate model ({details})")
    ranking.sort(key=_rank_key)
    selected = ranking[0]
    logger.info("selected candidate %s (score %.4f)", selected.name, selected.score)
    noise = _check_label_noise(
        config, storage, best_features, train, train_rows, labels, train_uri, output_uri, cleaned_rows
    )

    uris = {kind: join(output_uri, f"report.{kind}") for kind in ("md", "html", "json")}
    storage.write_text(uris["md"], _markdown(selected, ranking, skipped, noise), content_type="text/markdown")
    storage.write_text(
        uris["html"], _html(selected, ranking, skipped, selection.cost_weight, noise), content_type="text/html"
    )
    storage.write_json(
        uris["json"],
        {
            "selected": selected.model_dump(),
            "ranking": [item.model_dump() for item in ranking],
            "skipped": [item.model_dump() for item in skipped],
            "cost_weight": selection.cost_weight,
            "probe_train_rows": len(train),
            "probe_validation_rows": len(validation),
            "label_noise": noise.summary(),
        },
    )
    return SelectModelResult(
        selected=selected,
        ranking=ranking,
        skipped=skipped,
        report_markdown_uri=uris["md"],
        report_html_uri=uris["html"],
        report_json_uri=uris["json"],
        label_noise=noise.mode,
        label_noise_checked_rows=noise.checked_rows,
        label_issue_count=noise.count,
        label_issues=noise.listed,
        train_uri=noise.train_uri,
        train_rows=noise.train_rows,
        label_issues_uri=noise.issues_uri,
    )


def _rank_key(item: CandidateScore) -> tuple[float, int]:
    """Best score first; ties go to the smaller model, then to the config's order (sorting is stable)."""
    return (-item.score, item.num_parameters)


# -- label noise --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Noise:
    mode: str
    checked_rows: int = 0
    count: int = 0
    listed: list[SuspectedLabel] = field(default_factory=list)
    folds: int = 0
    note: str | None = None
    train_uri: str | None = None
    train_rows: int | None = None
    issues_uri: str | None = None

    def summary(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "checked_rows": self.checked_rows,
            "folds": self.folds,
            "count": self.count,
            "note": self.note,
            "train_uri": self.train_uri,
            "train_rows": self.train_rows,
            "label_issues_uri": self.issues_uri,
            "listed": [item.model_dump() for item in self.listed],
        }


def _check_label_noise(
    config: PipelineConfig,
    storage: Storage,
    probe: ProbeFeatures | None,
    train: pd.DataFrame,
    train_rows: np.ndarray,
    labels: Sequence[str],
    train_uri: str,
    output_uri: str,
    cleaned_rows: int,
) -> _Noise:
    """Run ``selection.label_noise`` on the selected candidate's probe features (see the module docstring)."""
    mode = config.selection.label_noise
    if mode == "off":
        return _Noise("off")
    if probe is None:
        logger.info("label noise: not checked, %s has no single class per row", config.task.type)
        return _Noise("not_applicable", note=f"does not apply to {config.task.type} (no single class per row)")
    started = time.perf_counter()
    issues = label_noise.find_label_issues(probe, config.selection.label_noise_folds, config.training.seed)
    if issues.note is not None:
        logger.warning("label noise: not checked, %s", issues.note)
        return _Noise(mode, checked_rows=issues.checked_rows, note=issues.note)
    texts = train[TEXT].tolist()
    every = label_noise.suspects(issues, train_rows, texts, labels)
    logger.info(
        "label noise: %d suspected mislabel(s) among %d probed train rows of %d (%d folds, %.1f s)",
        len(every),
        issues.checked_rows,
        cleaned_rows,
        issues.folds,
        time.perf_counter() - started,
    )
    for item in every[:10]:
        logger.info(
            "label noise: row %d given %r, suggested %r (p=%.2f): %s",
            item.row,
            item.given,
            item.suggested,
            item.confidence,
            item.text,
        )
    noise = _Noise(
        mode,
        checked_rows=issues.checked_rows,
        count=len(every),
        listed=every[: label_noise.LABEL_ISSUES_LISTED],
        folds=issues.folds,
    )
    if mode != "quarantine" or not every:
        return noise
    # The cleaned split as written (every column), less the suspects; the cleaned artifact itself stays as it is.
    cleaned = read_split(storage, train_uri, "train")
    kept = label_noise.without_rows(cleaned, [item.row for item in every])
    taken = cleaned.iloc[[item.row for item in every]].reset_index(drop=True)
    taken = taken.assign(
        row=[item.row for item in every],
        reason="label_issue",
        suggested_label=[item.suggested for item in every],
        confidence=[item.confidence for item in every],
    )
    uris = {"train": join(output_uri, "train.parquet"), "issues": join(output_uri, "label_issues.parquet")}
    storage.write_bytes(uris["issues"], label_noise.parquet_bytes(taken))
    storage.write_bytes(uris["train"], label_noise.parquet_bytes(kept))
    logger.info(
        "label noise: quarantined %d row(s); finetune trains on %s (%d rows)", len(every), uris["train"], len(kept)
    )
    return replace(noise, train_uri=uris["train"], train_rows=len(kept), issues_uri=uris["issues"])


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


_ISSUE_COLUMNS = ("train row", "given", "suggested", "p(suggested)", "p(given)", "text")


def _issue_rows(noise: _Noise) -> list[list[object]]:
    return [
        [item.row, item.given, item.suggested, f"{item.confidence:.3f}", f"{item.given_probability:.3f}", item.text]
        for item in noise.listed
    ]


def _noise_summary(noise: _Noise, selected: CandidateScore) -> str:
    """One plain-text paragraph on what the label-noise check did."""
    if noise.mode == "off":
        return "Not checked (selection.label_noise: off)."
    if noise.note is not None:
        return f"Not checked: {noise.note}."
    text = (
        f"{noise.count} suspected mislabel(s) among the {noise.checked_rows} probed train rows: confident learning "
        f"(cleanlab) on out-of-fold probabilities of {selected.name}'s probe ({noise.folds} stratified folds)."
    )
    if noise.count > len(noise.listed):
        text += f" The {len(noise.listed)} most doubtful are listed."
    if noise.train_uri is not None:
        text += f" Quarantined: finetune trains on {noise.train_uri}; the rows taken out are in {noise.issues_uri}."
    elif noise.count:
        text += " Reported only (selection.label_noise: report); training uses every row."
    return text


def _markdown(
    selected: CandidateScore,
    ranking: Sequence[CandidateScore],
    skipped: Sequence[SkippedCandidate],
    noise: _Noise,
) -> str:
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
    parts += ["", "## Label noise", "", _noise_summary(noise, selected)]
    if noise.listed:
        parts += ["", reports.markdown_table(_ISSUE_COLUMNS, _issue_rows(noise))]
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
    noise: _Noise,
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
    noise_body = f"<p>{html.escape(_noise_summary(noise, selected))}</p>"
    if noise.listed:
        noise_body += reports.html_table(_ISSUE_COLUMNS, _issue_rows(noise))
    sections.append(("Label noise", noise_body))
    return reports.html_page("Model selection", sections)
