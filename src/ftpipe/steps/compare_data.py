"""compare_data: is there anything new to learn from since the production model was trained?

Run it as ``run(config, fingerprint, train_uri=..., output_uri=...)``. It compares the cleaned data's
fingerprint with the one recorded in the metadata of the registry's ``production`` version and, when they
differ, runs the drift check (``ftpipe.data.drift``) of the new cleaned train split against the one production
was trained on (``data.uris.train`` of its metadata, as register_model records it). ``config.drift.retrain_when``
then decides ``changed``, which gates fine-tuning and registration in the DAG:

- ``new_data`` (the default): fine-tune when the fingerprint changed;
- ``drift``: only when the drift check finds drift; equal fingerprints are no drift (the data is the same);
- ``always``: every run.

With no production version every run fine-tunes; a run's ``force`` (``force_retrain``) always does. When
production's training data cannot be read (deleted, or a version registered before the URI was recorded), the
decision falls back to the fingerprint, with a warning in the log, the result and the report: never a failed run
over a check that only informs. The new train split itself must be readable (a DataError otherwise).

Writes ``report.md`` and ``report.html`` under ``output_uri`` (when given): the decision and every test's
statistic, p-value and rule, with the text lengths of both sides drawn.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ftpipe.config import PipelineConfig
from ftpipe.errors import DataError, FtpipeError
from ftpipe.registry import ModelRegistry, RegisteredVersion
from ftpipe.reports import Document
from ftpipe.results import CompareDataResult, DriftTest
from ftpipe.steps import REPORT_LIBRARIES
from ftpipe.storage import Storage, join

logger = logging.getLogger(__name__)
PRODUCTION_ALIAS = "production"
TEXT = "text"
LIBRARIES = ("scipy.stats", "sklearn.linear_model", "sklearn.feature_extraction.text", *REPORT_LIBRARIES)


def read_split(storage: Storage, uri: str, name: str) -> pd.DataFrame:
    """A cleaned split (parquet) with its ``text`` column.

    Raises:
        DataError: the file is not a readable parquet file with a ``text`` column and rows.
        StorageError: it cannot be fetched.
    """
    with storage.local_copy(uri) as path:
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises many types for "not parquet"
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"cannot read the {name} {uri}: {first}") from None
    if TEXT not in frame.columns:
        raise DataError(f"the {name} {uri} has no {TEXT!r} column (it has {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise DataError(f"the {name} {uri} has no rows")
    return frame


def _production_train(
    storage: Storage, production: RegisteredVersion
) -> tuple[pd.DataFrame | None, str | None, str | None]:
    """Production's recorded train split, its URI, and a warning instead of the frame when it cannot be read."""
    uri = (production.metadata.get("data", {}).get("uris") or {}).get("train")
    if not uri:
        return None, None, f"production version {production.version} records no train split URI"
    try:
        return read_split(storage, uri, f"train split of production version {production.version}"), uri, None
    except FtpipeError as error:
        if error.transient:  # S3 not answering: the task's retry may read it, so do not decide without it
            raise
        return None, uri, f"cannot read production version {production.version}'s training data: {error}"


def run(
    config: PipelineConfig,
    fingerprint: str,
    force: bool = False,
    storage: Storage | None = None,
    registry: ModelRegistry | None = None,
    train_uri: str | None = None,
    output_uri: str | None = None,
) -> CompareDataResult:
    """Decide whether this run fine-tunes (see the module docstring).

    Args:
        fingerprint: the cleaned data's fingerprint (clean_data).
        force: the run's ``force_retrain``.
        train_uri: the new cleaned train split; None skips the drift check (the fingerprint decides).
        output_uri: where the reports go; None writes none.

    Raises:
        DataError: the new train split cannot be read.
    """
    storage = storage or Storage(config.storage)
    registry = registry or ModelRegistry(storage, config.registry.uri)
    settings = config.drift
    name = config.registry.model_name
    production = registry.resolve_alias(name, PRODUCTION_ALIAS)
    recorded = None if production is None else production.metadata.get("data", {}).get("fingerprint")
    same = production is not None and recorded == fingerprint

    tests: list[DriftTest] = []
    warning = production_uri = None
    frames: dict[str, pd.DataFrame] = {}
    wanted = settings.check or settings.retrain_when == "drift"
    if production is not None and not same and wanted and train_uri:
        new = read_split(storage, train_uri, "new train split")
        old, production_uri, warning = _production_train(storage, production)
        if old is None:
            logger.warning("%s: the drift check is skipped, the fingerprint decides", warning)
        else:
            from ftpipe.data import drift
            from ftpipe.tasks import get_task

            task = get_task(config)
            tests = drift.check(old[TEXT], new[TEXT], task.drift_targets(old), task.drift_targets(new), settings)
            frames = {f"production (v{production.version})": old, "new": new}
    checked = bool(frames)
    drifted = any(test.drifted for test in tests) if checked else None
    changed, message = _decide(config, production, same, force, drifted, fingerprint)
    if warning and settings.retrain_when == "drift" and not same:
        message += f" ({warning}: decided on the fingerprint)"
    logger.info(message)
    for test in tests:
        logger.info(
            "drift %s: %s %.4g%s -> %s",
            test.name,
            test.method,
            test.statistic,
            "" if test.p_value is None else f" (p {test.p_value:.3g})",
            "drift" if test.drifted else "no drift",
        )

    uris: dict[str, str | None] = {"report_markdown_uri": None, "report_html_uri": None}
    result = CompareDataResult(
        changed=changed,
        fingerprint=fingerprint,
        production_version=None if production is None else production.version,
        production_fingerprint=recorded,
        message=message,
        retrain_when=settings.retrain_when,
        drift_checked=checked,
        drifted=drifted,
        drift_tests=tests,
        drift_warning=warning,
        production_train_uri=production_uri,
    )
    if output_uri is not None:
        document = report(result, frames)
        uris = {
            "report_markdown_uri": join(output_uri, "report.md"),
            "report_html_uri": join(output_uri, "report.html"),
        }
        storage.write_text(
            uris["report_markdown_uri"], document.markdown(), content_type="text/markdown; charset=utf-8"
        )
        storage.write_text(uris["report_html_uri"], document.html(), content_type="text/html; charset=utf-8")
        result = result.model_copy(update=uris)
    return result


def _decide(
    config: PipelineConfig,
    production: RegisteredVersion | None,
    same: bool,
    force: bool,
    drifted: bool | None,
    fingerprint: str,
) -> tuple[bool, str]:
    """``changed`` and the one line that says why."""
    name, when = config.registry.model_name, config.drift.retrain_when
    if production is None:
        return True, f"no production version of '{name}': training"
    version = production.version
    data = "data unchanged" if same else "data changed"
    if drifted is not None:
        data += " and drifted" if drifted else " but not drifted"
    data += f" since production version {version}"
    if force:
        return True, f"{data}, forced: training"
    if when == "always":
        return True, f"{data}, drift.retrain_when is always: training"
    train = drifted if when == "drift" and drifted is not None else not same
    if train:
        return True, f"{data}: training"
    unchanged = f" (fingerprint {fingerprint[:12]})" if same else f" (drift.retrain_when is {when})"
    return False, f"{data}{unchanged}: skipping fine-tuning and registration"


def _lengths_figure(frames: dict[str, pd.DataFrame]) -> str:
    """Words per text on each side, as shares of its rows (the sides differ in size)."""
    import numpy as np

    from ftpipe.data.drift import word_counts
    from ftpipe.reports import figure_to_data_uri, new_figure

    counts = {side: word_counts(frame[TEXT]) for side, frame in frames.items()}
    top = max(1.0, max(float(np.percentile(values, 99)) for values in counts.values() if len(values)))
    edges = np.linspace(0, top, 41)
    figure, axes = new_figure()
    for side, values in counts.items():
        weights = np.full(len(values), 1.0 / max(len(values), 1))
        axes.hist(np.clip(values, 0, top), bins=edges, weights=weights, histtype="step", linewidth=1.5, label=side)
    axes.set_xlabel("words per text (the longest 1% drawn at the right edge)")
    axes.set_ylabel("share of the split's rows")
    axes.set_title("Text lengths: production's train split and the new one")
    axes.legend()
    return figure_to_data_uri(figure)


def _cell(value: float | None) -> Any:
    return "" if value is None else float(f"{value:.4g}")


def report(result: CompareDataResult, frames: dict[str, pd.DataFrame]) -> Document:
    """The data check's report: the decision, then each drift test against production's train split."""
    document = Document("Data check").text(result.message)
    decision = [
        f"drift.retrain_when: {result.retrain_when}",
        f"fingerprint: {result.fingerprint}",
        f"production version: {result.production_version if result.production_version is not None else 'none'}",
        f"production fingerprint: {result.production_fingerprint or 'none'}",
    ]
    if result.production_train_uri:
        decision.append(f"production's train split: {result.production_train_uri}")
    document.section("Decision").items(decision)
    if result.drift_warning:
        document.items([f"warning: {result.drift_warning}; the drift check did not run"], css="warning")
    if not result.drift_checked:
        if not result.drift_warning:
            why = (
                "there is no production version"
                if result.production_version is None
                else "the data is what production was trained on"
                if result.fingerprint == result.production_fingerprint
                else "it is off (drift.check) or no train split was given"
            )
            document.section("Drift").text(f"The drift check did not run: {why}.")
        return document
    verdict = "drifted" if result.drifted else "not drifted"
    document.section(f"Drift against production version {result.production_version}: {verdict}")
    document.text(
        "The new cleaned train split against the one the production model was trained on. A test finds "
        "drift when its rule holds; the data drifted when any test does (see ftpipe.data.drift)."
    )
    document.table(
        ["test", "method", "statistic", "p-value", "rule", "drift", "detail"],
        [
            [t.name, t.method, _cell(t.statistic), _cell(t.p_value), t.rule, "yes" if t.drifted else "no", t.detail]
            for t in result.drift_tests
        ],
    )
    if frames:
        document.image(_lengths_figure(frames), "words per text on each side")
    return document
