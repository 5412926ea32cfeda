"""select_model: pick the candidate to fine-tune with a cheap frozen-embedding probe.

Each candidate of ``config.candidates`` is resolved (s3:// prefixes are downloaded), checked against the
constraints of ``config.selection`` (allowed licences, maximum parameter count) and loaded as a bare
encoder, safetensors only, with ``trust_remote_code`` only where that candidate turns it on. A
candidate that cannot be resolved, loaded or probed, or that breaks a constraint, is skipped with a
warning and listed in the report with its reason.

The probe: mean-pooled embeddings of the frozen encoder for up to ``probe_train_rows`` stratified
training rows feed a scikit-learn logistic regression, scored by macro-F1 on up to
``probe_validation_rows`` validation rows. Candidates are ranked by
``probe_f1_macro - cost_weight * log10(num_parameters)``, so a much larger model must earn its cost.

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

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from ftpipe import models, reports
from ftpipe.config import CandidateConfig, PipelineConfig
from ftpipe.errors import DataError, FtpipeError, ModelError
from ftpipe.steps import MODEL_LIBRARIES, REPORT_LIBRARIES, TOKENIZER_LIBRARIES, StepResult
from ftpipe.storage import Storage, join

logger = logging.getLogger(__name__)

LIBRARIES = (
    *MODEL_LIBRARIES,
    *TOKENIZER_LIBRARIES,
    "sklearn.linear_model",
    "sklearn.model_selection",
    *REPORT_LIBRARIES,
)

SPLIT_COLUMNS = ("text", "label", "label_id")
PROBE_BATCH_SIZE = 32


class CandidateScore(BaseModel):
    """One candidate that passed the constraints, with its probe results."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str
    license: str | None
    num_parameters: int
    probe_f1_macro: float
    probe_accuracy: float
    score: float
    probe_seconds: float


class SkippedCandidate(BaseModel):
    """One candidate left out, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str
    reason: str


class SelectModelResult(StepResult):
    """The chosen candidate, the full ranking (best first) and the skipped candidates."""

    selected: CandidateScore
    ranking: list[CandidateScore]
    skipped: list[SkippedCandidate]
    report_markdown_uri: str
    report_html_uri: str
    report_json_uri: str


class _Skip(Exception):
    """A candidate breaks a constraint or cannot be used; the message is the reason."""


# -- helpers shared with finetune ---------------------------------------------------------------


def read_split(storage: Storage, uri: str, name: str) -> pd.DataFrame:
    """Read one cleaned split (parquet with ``text``, ``label``, ``label_id``).

    Raises:
        DataError: the file cannot be read or lacks a column.
    """
    with storage.local_copy(uri) as path:
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises many types for "not parquet"
            raise DataError(f"cannot read the {name} split {uri}: {first_line(error)}") from None
    missing = [column for column in SPLIT_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"the {name} split {uri} lacks column(s) {', '.join(missing)}")
    frame = frame[list(SPLIT_COLUMNS)].copy()
    frame["text"] = frame["text"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame["label_id"] = frame["label_id"].astype("int64")
    return frame.reset_index(drop=True)


def check_split(frame: pd.DataFrame, labels: Sequence[str], name: str) -> None:
    """Fail with one line when a split is empty or its labels do not match ``labels``.

    Raises:
        DataError: no rows, fewer than two labels, a ``label_id`` out of range, or a ``label`` that is not
            ``labels[label_id]``.
    """
    if len(labels) < 2:
        raise DataError(f"need at least two labels, got {list(labels)}")
    if frame.empty:
        raise DataError(f"the {name} split has no rows")
    ids = frame["label_id"]
    out_of_range = sorted(set(ids[(ids < 0) | (ids >= len(labels))].tolist()))
    if out_of_range:
        raise DataError(
            f"label count mismatch: the {name} split has label_id {out_of_range[:5]} but only {len(labels)} "
            f"labels were given ({', '.join(labels)})"
        )
    expected = np.asarray(labels, dtype=object)[ids.to_numpy()]
    wrong = frame["label"].to_numpy(dtype=object) != expected
    if wrong.any():
        row = frame[wrong].iloc[0]
        raise DataError(
            f"label mismatch in the {name} split: label_id {row['label_id']} should be "
            f"{labels[row['label_id']]!r} but the row says {row['label']!r} ({int(wrong.sum())} rows disagree)"
        )


def stratified_sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most ``rows`` rows keeping the label proportions (plain random when a class is too small)."""
    if rows >= len(frame):
        return frame.reset_index(drop=True)
    from sklearn.model_selection import train_test_split

    try:
        sample, _ = train_test_split(frame, train_size=rows, stratify=frame["label_id"], random_state=seed)
    except ValueError:  # a class with a single row: keep one row of every class, fill the rest at random
        firsts = frame.groupby("label_id", sort=False).head(1)
        rest = frame.drop(index=firsts.index)
        sample = pd.concat([firsts, rest.sample(n=max(0, rows - len(firsts)), random_state=seed)])
    return sample.reset_index(drop=True)


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


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


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


def embed(texts: Sequence[str], tokenizer, encoder, max_length: int, batch_size: int = PROBE_BATCH_SIZE) -> np.ndarray:
    """Mean-pooled last hidden states of a frozen encoder, batched with texts sorted by length."""
    import torch

    device = next(encoder.parameters()).device
    order = np.argsort([len(text) for text in texts], kind="stable")  # similar lengths together: less padding
    pooled: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch_texts = [texts[i] for i in order[start : start + batch_size]]
            batch = tokenizer(batch_texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            batch = {key: value.to(device) for key, value in batch.items()}
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled.append(mean.float().cpu().numpy())
    embeddings = np.empty((len(texts), pooled[0].shape[1]), dtype=np.float32)
    embeddings[order] = np.concatenate(pooled)
    return embeddings


def probe(
    train_x: np.ndarray, train_y: np.ndarray, validation_x: np.ndarray, validation_y: np.ndarray
) -> tuple[float, float]:
    """(macro-F1, accuracy) of a logistic regression on frozen embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Balanced class weights: the ranking metric is macro-F1, which rewards the minority classes.
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    classifier.fit(train_x, train_y)
    predicted = classifier.predict(validation_x)
    f1 = f1_score(validation_y, predicted, average="macro", zero_division=0)
    return float(f1), float(accuracy_score(validation_y, predicted))


def _score_candidate(
    candidate: CandidateConfig,
    config: PipelineConfig,
    storage: Storage,
    train: pd.DataFrame,
    validation: pd.DataFrame,
) -> CandidateScore:
    """Check one candidate's constraints and probe it; raises _Skip with the reason when it is left out."""
    import torch

    selection = config.selection
    try:
        resolved = models.resolve_source(candidate.source, storage)
    except FtpipeError as error:
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
        encoder = models.load_encoder(resolved, trust_remote_code=candidate.trust_remote_code)
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
        train_x = embed(train["text"].tolist(), tokenizer, encoder, selection.probe_max_length)
        validation_x = embed(validation["text"].tolist(), tokenizer, encoder, selection.probe_max_length)
    except Exception as error:  # noqa: BLE001 - a model without a usable encoder forward is skipped, not fatal
        raise _Skip(f"probe failed: {type(error).__name__}: {first_line(error)}") from None
    finally:
        del encoder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    f1, accuracy = probe(train_x, train["label_id"].to_numpy(), validation_x, validation["label_id"].to_numpy())
    seconds = time.perf_counter() - started
    score = f1 - selection.cost_weight * math.log10(max(num_parameters, 1))
    logger.info(
        "candidate %s: %s parameters, probe macro-F1 %.4f, accuracy %.4f, score %.4f (%.1f s)",
        candidate.name,
        f"{num_parameters:,}",
        f1,
        accuracy,
        score,
        seconds,
    )
    return CandidateScore(
        name=candidate.name,
        source=candidate.source,
        license=license_id,
        num_parameters=num_parameters,
        probe_f1_macro=round(f1, 6),
        probe_accuracy=round(accuracy, 6),
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
    labels = list(labels)
    train = read_split(storage, train_uri, "train")
    validation = read_split(storage, validation_uri, "validation")
    check_split(train, labels, "train")
    check_split(validation, labels, "validation")
    if train["label_id"].nunique() < 2:
        raise DataError("the train split has a single label; the probe needs at least two")

    selection = config.selection
    seed = config.training.seed
    train = stratified_sample(train, selection.probe_train_rows, seed)
    validation = stratified_sample(validation, selection.probe_validation_rows, seed)
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
            ranking.append(_score_candidate(candidate, config, storage, train, validation))
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

_RANK_COLUMNS = ("rank", "candidate", "parameters", "licence", "probe macro-F1", "probe accuracy", "score", "probe s")


def _rank_rows(ranking: Sequence[CandidateScore]) -> list[list[object]]:
    return [
        [
            position,
            item.name,
            f"{item.num_parameters:,}",
            item.license or "unknown",
            item.probe_f1_macro,
            item.probe_accuracy,
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
    axes.barh(names, [item.probe_f1_macro for item in reversed(ranking)], color="#9ab", label="probe macro-F1")
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
        f"Score = probe macro-F1 &minus; {cost_weight:g} &times; log10(parameters).</p>"
    )
    sections = [
        ("Selected", summary),
        ("Ranking", reports.html_table(_RANK_COLUMNS, _rank_rows(ranking))),
        ("Scores", reports.html_image(_score_chart(ranking), "probe macro-F1 and score per candidate")),
    ]
    if skipped:
        sections.append(("Skipped", reports.html_table(("candidate", "source", "reason"), _skip_rows(skipped))))
    return reports.html_page("Model selection", sections)
