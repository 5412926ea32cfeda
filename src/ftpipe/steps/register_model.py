"""register_model: store a model that passed the gate as a new immutable registry version.

Run it as ``run(config, model_uri, evaluation, lineage, run_id)``, only after evaluate's gate passed: it
refuses (RegistryError) otherwise, and when ``evaluation`` scored another model than ``model_uri``. One
new version of ``config.registry.model_name`` holds the model files, ``metadata.json`` (``metrics``,
``gate`` with the production comparison, ``data`` with its fingerprint and URIs, ``base_model`` with its
source and licence, ``cleaning``, ``hyperparameters``, the full ``config``, ``run_id``, ``ftpipe_version``,
``registered_at`` in UTC) and the model card (``README.md``), committed atomically by
:class:`ftpipe.registry.ModelRegistry`.
Then ``config.registry.alias_on_register`` (if set) moves to the new version, forward only: when a
concurrent run already moved it to a newer version, it stays there. The registration is keyed on ``run_id``: a
retry of the task whose first attempt committed (then died before it answered or moved the alias) gets that
version back and moves the alias, instead of registering the model twice.

``lineage`` is a dict (see :func:`lineage_of`, which builds it from the earlier steps' results):

- ``data_fingerprint`` (required), ``data_uris`` ({role: uri}), ``labels``;
- ``base_model`` (candidate name, required), ``base_model_source`` (required), ``base_model_license``;
- ``cleaning`` (flat counts from clean_data), ``hyperparameters`` (default: ``config.training``),
  ``training`` (best validation metric, epochs trained, ...);
- ``step_seconds`` ({step: wall seconds}) and ``trainings`` (each fine-tune's seconds, GPUs and tokens seen), from
  which, with evaluate's seconds and ``config.cost``, the entry's ``cost`` and the card's Cost line are made
  (:mod:`ftpipe.cost`; register_model's own time is not in them: the entry is committed before the step ends).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ftpipe import __version__, cost, models, tracking
from ftpipe.config import PipelineConfig
from ftpipe.errors import RegistryError
from ftpipe.export import export_version
from ftpipe.model_card import render_model_card
from ftpipe.registry import ModelRegistry
from ftpipe.results import (
    CleanDataResult,
    EvaluateResult,
    FinetuneResult,
    RegisterModelResult,
    SelectModelResult,
)
from ftpipe.storage import Storage
from ftpipe.tasks import get_task

logger = logging.getLogger(__name__)

REQUIRED_LINEAGE = ("data_fingerprint", "base_model", "base_model_source")


def lineage_of(
    cleaned: CleanDataResult,
    selection: SelectModelResult,
    trained: FinetuneResult,
    data_check_seconds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The lineage dict from the results of clean_data, select_model and finetune; ``data_check_seconds``: the
    wall seconds of fingerprint_data and compare_data, steps without a result artifact."""
    data_uris = {
        "cleaned": cleaned.output_uri,
        "train": selection.train_uri or cleaned.train_uri,  # select_model's copy when it quarantined mislabels
        "validation": cleaned.validation_uri,
        "test": cleaned.test_uri,
        "quarantine": cleaned.quarantine_uri,
    }
    if selection.label_issues_uri is not None:
        data_uris["label_issues"] = selection.label_issues_uri
    cleaning = {f"rows_{split}": rows for split, rows in cleaned.counts.items()}
    cleaning |= {f"rejected_{reason}": rows for reason, rows in cleaned.rejected.items()}
    training = trained.model_dump(
        include={
            "best_metric_name",
            "best_metric_value",
            "epochs_trained",
            "global_steps",
            "train_seconds",
            "train_examples_per_second",
            "stopped_early",
            "resumed_from_checkpoint",
            "adapter",
            "trainable_parameters",
            "saved_as",
            "adapter_bytes",
            "tokens_seen",
        }
    )
    # The model trained: select_model's choice, or (in a sweep) the winning trial's candidate, which it ranked too.
    base = next((score for score in selection.ranking if score.name == trained.base_model_name), None)
    lineage = {
        "data_fingerprint": cleaned.fingerprint,
        "data_uris": data_uris,
        "labels": list(cleaned.labels),
        "cleaning": cleaning,
        "base_model": trained.base_model_name,
        "base_model_source": trained.base_model_source,
        "base_model_license": base.license if base else None,
        "base_model_parameters": trained.num_parameters,
        "training": training,
        "step_seconds": cost.step_seconds(cleaned, selection, trained, data_check_seconds),
        "trainings": cost.trainings(trained),
    }
    if trained.sweep:  # the winner's own settings, and the sweep that chose it
        lineage["hyperparameters"] = trained.sweep["hyperparameters"]
        lineage["sweep"] = {key: value for key, value in trained.sweep.items() if key != "hyperparameters"}
    return lineage


def _license(config: PipelineConfig, lineage: dict[str, Any], model_dir: Path) -> str | None:
    """The base model's licence: from the lineage, the candidate's config, or a model card's front matter."""
    if lineage.get("base_model_license"):
        return str(lineage["base_model_license"]).lower()
    for candidate in config.candidates:
        if candidate.name == lineage["base_model"] and candidate.license:
            return candidate.license.lower()
    found = models.read_license(str(model_dir))
    if found:
        return found
    source = Path(str(lineage["base_model_source"]))
    return models.read_license(str(source)) if source.is_dir() else None


def _model_labels(model_dir: Path) -> list[str] | None:
    try:
        id2label = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("id2label") or {}
    except (OSError, ValueError):
        return None
    return [str(id2label[key]) for key in sorted(id2label, key=int)] if id2label else None


def run(
    config: PipelineConfig,
    model_uri: str,
    evaluation: EvaluateResult,
    lineage: dict[str, Any],
    run_id: str,
    storage: Storage | None = None,
    registry: ModelRegistry | None = None,
) -> RegisterModelResult:
    """Register ``model_uri`` as the next version of ``config.registry.model_name``.

    Raises:
        RegistryError: the gate failed, the evaluation is of another model, or the registry refuses.
        ValueError: ``lineage`` lacks a required key (a wiring bug, not a user error).
    """
    name = config.registry.model_name
    if not evaluation.gate_passed:
        failed = [reason for reason in evaluation.reasons if reason.startswith("failed")] or evaluation.reasons
        raise RegistryError(f"the evaluation gate failed, so '{name}' is not registered: {'; '.join(failed)}")
    if evaluation.model_uri.rstrip("/") != model_uri.rstrip("/"):
        raise RegistryError(f"the evaluation scored {evaluation.model_uri}, not {model_uri}: not registered")
    missing = [key for key in REQUIRED_LINEAGE if not lineage.get(key)]
    if missing:
        raise ValueError(f"lineage lacks {', '.join(missing)}")
    storage = storage or Storage(config.storage)
    registry = registry or ModelRegistry(storage, config.registry.uri)
    task = get_task(config)

    data_uris = dict(lineage.get("data_uris") or {})
    if "source" not in data_uris and config.data.uri:
        data_uris = {"source": config.data.uri, **data_uris}
    hyperparameters = dict(lineage.get("hyperparameters") or config.training.model_dump(mode="json"))
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    gate = {
        "passed": evaluation.gate_passed,
        "metric": evaluation.gate_metric,
        "tolerance": config.gate.tolerance,
        "thresholds": dict(config.gate.thresholds),
        "reasons": evaluation.reasons,
        "linear_baseline": config.gate.linear_baseline,
        "bootstrap_resamples": evaluation.bootstrap_resamples,
        "intervals": evaluation.intervals,  # the model's 95% bootstrap intervals per test metric
        "baselines": [baseline.model_dump() for baseline in evaluation.baselines],
        "production": evaluation.production.model_dump() if evaluation.production else None,
    }
    steps = dict(lineage.get("step_seconds") or {})
    if evaluation.wall_seconds is not None:
        steps["evaluate"] = evaluation.wall_seconds
    costs = cost.summarize(config.cost, steps, lineage.get("trainings") or [], config.cluster.node_selector)

    with storage.local_copy(model_uri, directory=True) as model_dir:
        saved_labels = _model_labels(model_dir)
        if saved_labels is not None and set(saved_labels) != set(evaluation.labels):
            raise RegistryError(
                f"the model at {model_uri} has labels {saved_labels}, the evaluation {evaluation.labels}: "
                "not registered"
            )
        license = _license(config, lineage, model_dir)
        metadata = {
            "model_name": name,
            "task": config.task.type,
            "primary_metric": evaluation.primary_metric,
            "labels": evaluation.labels,
            "metrics": evaluation.metrics,
            "confusion_matrix": evaluation.confusion_matrix,
            "gate": gate,
            "evaluation": {
                "test_uri": evaluation.test_uri,
                "report_html_uri": evaluation.report_html_uri,
                "report_json_uri": evaluation.report_json_uri,
                "predictions_uri": evaluation.predictions_uri,
            },
            "data": {
                "fingerprint": lineage["data_fingerprint"],
                "uris": data_uris,
                "labels": list(lineage.get("labels") or evaluation.labels),
            },
            "base_model": {
                "name": lineage["base_model"],
                "source": lineage["base_model_source"],
                "license": license,
                "parameters": lineage.get("base_model_parameters"),
            },
            "cleaning": lineage.get("cleaning") or {},
            "training": lineage.get("training") or {},
            "hyperparameters": hyperparameters,
            "sweep": lineage.get("sweep"),
            "cost": costs,
            "source_model_uri": model_uri,
            "config": config.model_dump(mode="json"),
            "run_id": run_id,
            "ftpipe_version": __version__,
            "registered_at": created_at,
        }
        card = render_model_card(
            model_name=name,
            base_model=lineage["base_model"],
            base_model_source=lineage["base_model_source"],
            license=license,
            labels=evaluation.labels,
            metrics=evaluation.metrics,
            data_fingerprint=lineage["data_fingerprint"],
            data_uris=data_uris,
            cleaning=lineage.get("cleaning") or {},
            hyperparameters=hyperparameters,
            sweep=lineage.get("sweep"),
            gate=gate,
            cost_line=costs["line"],
            run_id=run_id,
            created_at=created_at,
            pipeline_tag=task.pipeline_tag,
            summary=task.card_summary(evaluation.labels, evaluation.metrics),
            usage=task.usage_snippet(),
            usage_note=_adapter_note(name, lineage),
            metric_names=list(task.settings.metrics),
        )
        # keyed on the run: a retry of this task after its commit (a pod lost before it moved the alias) gets the
        # same version back instead of registering the model twice
        version = registry.register(name, model_dir, metadata, card, key=run_id)
    logger.info("registered %s version %d at %s", name, version.version, version.model_uri)

    aliases_set = []
    alias = config.registry.alias_on_register
    if alias:
        record = registry.set_alias(name, alias, version.version, only_forward=True, note=f"run {run_id}")
        if record.version == version.version:
            aliases_set.append(alias)
        else:
            logger.warning("alias %s of %s stays on the newer version %d", alias, name, record.version)
    result = RegisterModelResult(
        model_name=name,
        version=version.version,
        version_uri=version.manifest_uri,
        model_uri=version.model_uri,
        model_card_uri=version.model_card_uri,
        metadata_uri=version.metadata_uri,
        aliases_set=aliases_set,
        cost_line=costs["line"],
    )
    tracking.log_registration(config, run_id, result, cost.metrics(costs))  # a no-op unless tracking.mlflow_uri is set
    export_version(config, version, run_id, aliases_set)  # MLflow / Kubeflow Model Registry, when config.export says
    return result


def _adapter_note(name: str, lineage: dict[str, Any]) -> str:
    """What the card says of a version that holds an adapter alone (nothing for merged weights)."""
    training = lineage.get("training") or {}
    if training.get("saved_as") != "adapter":
        return ""
    return (
        f"This version holds a {training['adapter']} adapter and the trained head ({training['adapter_bytes']:,} "
        f"bytes), not merged weights: its base is `{lineage['base_model_source']}`, pinned by the SHA-256 of its "
        f"weights in `ftpipe_base_model.json`. `ftpipe registry export {name} VERSION --merged DIRECTORY` writes "
        "the plain model below, or load the adapter onto that base with peft's `PeftModel.from_pretrained`."
    )
