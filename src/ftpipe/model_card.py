"""Hugging Face style model cards (``README.md``) for registered models, with their full lineage.

:func:`render_model_card` is a plain function of its inputs: it reads nothing and writes nothing. The
card starts with YAML front matter that the Hub and ``ftpipe.models.read_license`` understand (licence
from the base model, ``base_model``, tags, metrics in ``model-index`` form), then says in Markdown where
the model came from: base model and its source, data fingerprint and URIs, labels, cleaning counts,
hyper-parameters, test metrics, the gate's comparison with the production version, the pipeline run id,
the ftpipe version and the time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from ftpipe import __version__
from ftpipe.reports import markdown_table

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_hub_id(source: str) -> bool:
    """Whether ``source`` looks like a Hugging Face hub id (``org/name``) rather than a path or URI."""
    return "://" not in source and not source.startswith((".", "/", "~")) and bool(_HUB_ID.match(source))


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    if value is None:
        return "-"
    return str(value)


def _signed(value: Any) -> str:
    return f"{value:+.4f}" if isinstance(value, float) else _value(value)


def _pairs(mapping: Mapping[str, Any]) -> str:
    if not mapping:
        return "_none recorded_"
    rows = [
        [f"`{key}`", f"{value:.6g}" if isinstance(value, float) else _value(value)] for key, value in mapping.items()
    ]
    return markdown_table(["", "value"], rows)


def _front_matter(
    *,
    model_name: str,
    base_model: str,
    base_model_source: str,
    license: str | None,
    labels: Sequence[str],
    metrics: Mapping[str, Any],
    dataset_name: str,
    dataset_uri: str | None,
    tags: Sequence[str],
    pipeline_tag: str,
    metric_names: Sequence[str],
) -> str:
    front: dict[str, Any] = {}
    if license:
        front["license"] = license.lower()
    front["base_model"] = base_model_source if is_hub_id(base_model_source) else base_model
    front["library_name"] = "transformers"
    front["pipeline_tag"] = pipeline_tag
    front["tags"] = list(dict.fromkeys(["ftpipe", pipeline_tag, *tags]))
    dataset: dict[str, Any] = {"name": dataset_name, "type": dataset_name, "split": "test"}
    if dataset_uri:
        dataset["args"] = {"uri": dataset_uri}
    results = [
        {"type": name, "value": round(float(metrics[name]), 6), "name": name}
        for name in metric_names
        if isinstance(metrics.get(name), int | float)
    ]
    front["model-index"] = [
        {
            "name": model_name,
            "results": [
                {
                    "task": {"type": pipeline_tag, "name": pipeline_tag.replace("-", " ").capitalize()},
                    "dataset": dataset,
                    "metrics": results,
                }
            ],
        }
    ]
    front["ftpipe"] = {"labels": list(labels)}
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def render_model_card(
    *,
    model_name: str,
    base_model: str,
    base_model_source: str,
    license: str | None,
    labels: Sequence[str],
    metrics: Mapping[str, Any],
    data_fingerprint: str,
    data_uris: Mapping[str, str] | Sequence[str],
    cleaning: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    gate: Mapping[str, Any] | None,
    sweep: Mapping[str, Any] | None = None,
    cost_line: str = "",
    run_id: str,
    ftpipe_version: str = __version__,
    created_at: datetime | str | None = None,
    dataset_name: str | None = None,
    tags: Sequence[str] = (),
    pipeline_tag: str = "text-classification",
    summary: str = "",
    usage: str = "",
    usage_note: str = "",
    metric_names: Sequence[str] = ("accuracy", "f1_macro"),
) -> str:
    """The card (README.md text) of one fine-tuned model.

    Args:
        model_name: registered model name.
        base_model: name of the pre-trained model it was fine-tuned from (the candidate's name).
        base_model_source: where the base model came from (hub id, directory or s3:// prefix).
        license: licence of the base model's weights (SPDX id); None when unknown.
        labels: the label set, in class-index order.
        metrics: test metrics: ``accuracy``, ``f1_macro``, optionally ``precision_macro``,
            ``recall_macro``, ``n_examples`` and ``per_class`` ({label: {precision, recall, f1, support}}).
        data_fingerprint: fingerprint of the cleaned data the model was trained and tested on.
        data_uris: the data it came from and the splits written ({role: uri} or a list of URIs).
        cleaning: counts from clean_data (rows read, kept, quarantined by reason, ...).
        hyperparameters: the training settings.
        sweep: the sweep that chose this model, if one did: ``winner`` and ``trials`` (TrialRecords as dicts),
            ``importances`` and ``space``.
        gate: ``passed`` (bool), ``metric``, ``tolerance``, ``reasons`` (list of str) and ``production``
            (None, or ``version``, ``metrics``, ``delta``, ``same_labels``, ``compared_metric``).
        cost_line: the run's cost (``ftpipe.cost.line``); no Cost section when empty.
        run_id: the pipeline run that produced the model.
        ftpipe_version: the ftpipe version that ran it.
        created_at: when (UTC); now when omitted.
        dataset_name: a short dataset name for ``model-index``; the fingerprint's first 12 characters when omitted.
        tags: extra tags for the front matter.
        pipeline_tag: the Hugging Face task name (the task's ``pipeline_tag``).
        summary: what the model does and how well (the task's ``card_summary``).
        usage: Python that loads the model from ``DIRECTORY`` and predicts (the task's ``usage_snippet``).
        usage_note: a paragraph before it (how to get ``DIRECTORY`` when the version is not a plain model).
        metric_names: the task's test metrics, in the order to list them.
    """
    if isinstance(created_at, datetime):
        created = created_at.astimezone(UTC).isoformat(timespec="seconds")
    else:
        created = created_at or datetime.now(UTC).isoformat(timespec="seconds")
    uris = dict(data_uris) if isinstance(data_uris, Mapping) else {str(i): uri for i, uri in enumerate(data_uris)}
    dataset = dataset_name or f"ftpipe-data-{data_fingerprint.split(':')[-1][:12]}"
    dataset_uri = uris.get("source") or uris.get("uri") or next(iter(uris.values()), None)

    lines = [
        _front_matter(
            model_name=model_name,
            base_model=base_model,
            base_model_source=base_model_source,
            license=license,
            labels=labels,
            metrics=metrics,
            dataset_name=dataset,
            dataset_uri=dataset_uri,
            tags=tags,
            pipeline_tag=pipeline_tag,
            metric_names=metric_names,
        ),
        f"# {model_name}",
        "",
        f"Fine-tuned from `{base_model}` by the ftpipe pipeline (run `{run_id}`). {summary}".rstrip(),
        "",
        "## Lineage",
        "",
        markdown_table(
            ["", "value"],
            [
                ["Base model", f"`{base_model}`"],
                ["Base model source", f"`{base_model_source}`"],
                ["Licence (from the base model)", license or "unknown: the base model names none"],
                ["Data fingerprint", f"`{data_fingerprint}`"],
                *[[f"Data: {role}", f"`{uri}`"] for role, uri in uris.items()],
                ["Pipeline run", f"`{run_id}`"],
                ["ftpipe version", ftpipe_version],
                ["Created (UTC)", created],
            ],
        ),
        "",
        "## Outputs",
        "",
        markdown_table(["id", "output"], [[index, label] for index, label in enumerate(labels)]),
        "",
        "## Data cleaning",
        "",
        _pairs(cleaning),
        "",
        "## Hyper-parameters",
        "",
        _pairs(hyperparameters),
        "",
        *_sweep_section(sweep),
        "## Test metrics",
        "",
        _metrics_section(metrics, labels, metric_names),
        "",
        "## Gate",
        "",
        _gate_section(gate, metrics, metric_names),
        "",
        *(["## Cost", "", cost_line, ""] if cost_line else []),
        "## How to use",
        "",
        *([usage_note, ""] if usage_note else []),
        "```python",
        "# DIRECTORY: where ftpipe's `registry download` (ModelRegistry.download) put this version",
        usage,
        "```",
        "",
        "## Limitations",
        "",
        "The metrics above hold for data like the test split (same source, same cleaning); texts longer than the "
        "training `max_length` are truncated. Check the per-class numbers before relying on rare labels.",
        "",
    ]
    return "\n".join(lines)


def _sweep_section(sweep: Mapping[str, Any] | None) -> list[str]:
    """The sweep's trials and the winner (chosen on validation), as lines; none when no sweep chose the model."""
    if not sweep:
        return []
    winner = sweep["winner"]
    paths = list(sweep["space"])
    rows = [
        [t["rung"], t["trial"], *(_value(t["params"].get(path, "-")) for path in paths), _value(t["budget"]),
         t["state"], "-" if t["value"] is None else f"{t['value']:.4f}"]
        for t in sweep["trials"]
    ]
    importances = ", ".join(f"{path} {value:.2f}" for path, value in sweep.get("importances", {}).items())
    return [
        "## Sweep",
        "",
        f"Trial {winner['trial']} won on validation {winner['metric']} ({winner['value']:.4f}); the test split chose "
        f"nothing. Importance of each setting: {importances or 'too few trials to tell'}.",
        "",
        markdown_table(["rung", "trial", *paths, "budget", "state", f"validation {winner['metric']}"], rows),
        "",
    ]


def _metrics_section(metrics: Mapping[str, Any], labels: Sequence[str], metric_names: Sequence[str]) -> str:
    overall = [[key, metrics[key]] for key in (*metric_names, "n_examples") if key in metrics]
    parts = [markdown_table(["metric", "value"], overall)]
    per_class = metrics.get("per_class") or {}
    if per_class:
        rows = [
            [label, scores["precision"], scores["recall"], scores["f1"], scores["support"]]
            for label, scores in per_class.items()
        ]
        parts += ["", markdown_table(["label", "precision", "recall", "F1", "support"], rows)]
    return "\n".join(parts + _calibration_and_slices(metrics))


def _calibration_and_slices(metrics: Mapping[str, Any]) -> list[str]:
    """The test split's expected calibration error and the primary metric per slice, where evaluate gave them."""
    parts = []
    if isinstance(metrics.get("ece"), int | float):
        parts += [
            "",
            f"Expected calibration error of the predicted probabilities on the test split: **{metrics['ece']:.4f}** "
            "(15 equal-width bins; the scores are temperature-scaled on validation where `ftpipe_temperature` is in "
            "`config.json`).",
        ]
    for slicing, rows in (metrics.get("slices") or {}).items():
        if rows:
            table = [[row["slice"], row["rows"], _value(row["value"])] for row in rows]
            parts += [
                "",
                f"By {slicing.replace('_', ' ')}:",
                "",
                markdown_table(["slice", "rows", rows[0]["metric"]], table),
            ]
    return parts


def _gate_section(gate: Mapping[str, Any] | None, metrics: Mapping[str, Any], metric_names: Sequence[str]) -> str:
    if not gate:
        return "_No gate was recorded._"
    verdict = "passed" if gate.get("passed") else "failed"
    parts = [
        f"The registration gate **{verdict}** (metric `{gate.get('metric', '-')}`, "
        f"tolerance {_value(gate.get('tolerance'))})."
    ]
    production = gate.get("production")
    if production:
        prod_metrics = production.get("metrics") or {}
        delta = production.get("delta") or {}
        rows = [
            [key, _value(metrics.get(key)), _value(prod_metrics.get(key)), _signed(delta.get(key))]
            for key in metric_names
            if key in metrics
        ]
        parts += [
            "",
            f"Compared with production version {production.get('version')} on the same test split"
            + (
                ""
                if production.get("same_labels", True)
                else f" (different outputs: compared on {production.get('compared_metric')})"
            )
            + ":",
            "",
            markdown_table(["metric", "this model", f"production v{production.get('version')}", "delta"], rows),
        ]
    else:
        parts += ["", "There was no production model to compare with."]
    reasons = gate.get("reasons") or []
    if reasons:
        parts += ["", *[f"- {reason}" for reason in reasons]]
    return "\n".join(parts)
