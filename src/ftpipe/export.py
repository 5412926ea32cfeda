"""Each new registry version recorded in other model registries too: MLflow's and the Kubeflow Model Registry.

register_model calls :func:`export_version` after the ftpipe registry has committed the version and moved its
alias; ``config.export`` says where to (both off by default). Both record a reference, never a copy: the version's
S3 prefix (``model_uri``), which stays the source of truth for its files, lineage and aliases.

- MLflow (``export.mlflow``, on the server of ``tracking.mlflow_uri``): a model version of the registered model
  ``export.mlflow_model_name`` (default ``registry.model_name``) whose source is the S3 prefix, linked to the
  pipeline run's parent MLflow run, tagged ``ftpipe.model_name``, ``ftpipe.version``, ``ftpipe.run_id``,
  ``ftpipe.model_uri``, ``ftpipe.task``, ``ftpipe.format`` and one ``metric.<name>`` per test metric; the aliases
  register_model set (``staging``) are set on it too. ``MlflowClient.create_model_version`` with an S3 source is
  the cheap way: logging a transformers-flavour model would copy the weights into MLflow's artifact store.
- Kubeflow Model Registry (``export.kubeflow_model_registry``): the registered model (created, owned by ``author``,
  when missing), a model version named after the ftpipe version number, and its model artifact: ``uri`` the S3
  prefix, ``modelFormatName`` huggingface, ``storageKey`` the S3 Secret's name, the pipeline run as its source
  (``modelSourceKind`` kfp, ``modelSourceId`` the run id), metrics and lineage as custom properties. Spoken over
  its REST API (``/api/model_registry/<api_version>/...``, with the bearer token in the file
  ``$KF_PIPELINES_SA_TOKEN_PATH`` names, when set) with ``requests``: the ``model-registry`` client would bring
  aiohttp and apply ``nest_asyncio`` to the task's whole process for these three calls.

Both are idempotent: a retried register_model task finds the version it exported and adds nothing. A failed
export is one warning line and the step goes on: the version is registered, its alias moved, and failing the task
now would make KFP retry a step whose work is done (``ftpipe registry sync NAME VERSION --config FILE`` exports a
version again by hand).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
from typing import Any
from urllib.parse import urlsplit

from ftpipe import __version__, tracking
from ftpipe.config import KubeflowModelRegistryConfig, PipelineConfig
from ftpipe.errors import RegistryError
from ftpipe.registry import RegisteredVersion

logger = logging.getLogger(__name__)

MODEL_FORMAT = "huggingface"
_TIMEOUT_S = 30.0
_MAX_TAG_CHARS = 5000  # what ftpipe.tracking keeps of a tag (MLflow stores at most 8,000 characters)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _metrics(version: RegisteredVersion) -> dict[str, float]:
    metrics = version.metadata.get("metrics") or {}
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def export_version(
    config: PipelineConfig,
    version: RegisteredVersion,
    run_id: str | None,
    aliases: list[str] | None = None,
    *,
    strict: bool = False,
) -> dict[str, str]:
    """Record ``version`` in the registries ``config.export`` names; ``{registry: where it went}`` of those done.

    A registry that fails gets one warning and is left out of the answer, or with ``strict`` (``ftpipe registry
    sync``) raises :class:`~ftpipe.errors.RegistryError`.
    """
    exports = []
    if config.export.mlflow:
        where = f"the MLflow Model Registry at {config.tracking.mlflow_uri}"
        exports.append(("mlflow", where, lambda: to_mlflow(config, version, run_id, aliases or [])))
    target = config.export.kubeflow_model_registry
    if target is not None:
        where = f"the Kubeflow Model Registry at {target.url}"
        exports.append(
            ("kubeflow_model_registry", where, lambda: to_kubeflow_model_registry(config, target, version, run_id))
        )
    done: dict[str, str] = {}
    for key, where, export in exports:
        try:
            done[key] = export()
        except Exception as error:  # noqa: BLE001 - the ftpipe registry has the version: an export must not fail it
            problem = f"exporting {version.name} version {version.version} to {where} failed: {_first_line(error)}"
            if strict:
                raise RegistryError(problem) from None
            logger.warning("%s (the version is registered in ftpipe's registry; `ftpipe registry sync` retries)",
                           problem)  # fmt: skip
    return done


# -- MLflow -----------------------------------------------------------------------------------------------


def mlflow_tags(version: RegisteredVersion, run_id: str | None) -> dict[str, str]:
    tags = {
        "ftpipe.model_name": version.name,
        "ftpipe.version": str(version.version),
        "ftpipe.model_uri": version.model_uri,
        "ftpipe.manifest_uri": version.manifest_uri,
        "ftpipe.task": str(version.metadata.get("task", "text_classification")),
        "ftpipe.format": MODEL_FORMAT,
        "ftpipe.ftpipe_version": str(version.metadata.get("ftpipe_version", __version__)),
    }
    if run_id:
        tags["ftpipe.run_id"] = run_id
    tags.update({f"metric.{name}": repr(value) for name, value in _metrics(version).items()})
    return {key: value[:_MAX_TAG_CHARS] for key, value in tags.items()}


def to_mlflow(config: PipelineConfig, version: RegisteredVersion, run_id: str | None, aliases: list[str]) -> str:
    """Register ``version`` in MLflow's Model Registry (module docstring); ``models:/<name>/<mlflow version>``."""
    from mlflow.exceptions import MlflowException

    tracker = tracking.Tracker(config, run_id)
    client = tracker.client()  # checks that the server answers, and caps MLflow's retries
    name = config.export.mlflow_model_name or version.name
    try:
        client.create_registered_model(name, tags={"ftpipe.registry_uri": config.registry.uri})
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = client.search_model_versions(f"name = '{name}' and tags.`ftpipe.version` = '{version.version}'")
    mine = [found_version for found_version in found if found_version.tags.get("ftpipe.model_uri") == version.model_uri]
    if mine:
        registered = mine[0]
        logger.info(
            "%s version %d is already MLflow model version %s", version.name, version.version, registered.version
        )
    else:
        mlflow_run = tracker.parent_id() if run_id else None  # the pipeline run's parent run, when it has one
        primary = version.metadata.get("primary_metric")
        value = _metrics(version).get(primary) if primary else None
        described = f", test {primary} {value:.4f}" if value is not None else ""
        registered = client.create_model_version(
            name,
            source=version.model_uri,
            run_id=mlflow_run,
            tags=mlflow_tags(version, run_id),
            description=f"ftpipe {version.name} version {version.version} ({version.model_uri}){described}",
        )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, registered.version)
    where = f"models:/{name}/{registered.version}"
    logger.info("exported %s version %d to MLflow as %s", version.name, version.version, where)
    return where


# -- Kubeflow Model Registry ------------------------------------------------------------------------------


def _property(value: Any) -> dict[str, Any]:
    """A Model Registry custom property (its MetadataValue: a double for numbers, else a string)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"metadataType": "MetadataDoubleValue", "double_value": float(value)}
    return {"metadataType": "MetadataStringValue", "string_value": str(value)}


class _ModelRegistryApi:
    """The few REST calls of the Kubeflow Model Registry's OpenAPI that an export makes."""

    def __init__(self, target: KubeflowModelRegistryConfig) -> None:
        import requests

        self.base = f"{target.url}/api/model_registry/{target.api_version}"
        self.session = requests.Session()
        token_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
        if token_path and os.path.isfile(token_path):
            with open(token_path, encoding="utf-8") as handle:
                self.session.headers["Authorization"] = f"Bearer {handle.read().strip()}"

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        response = self.session.request(method, f"{self.base}{path}", timeout=_TIMEOUT_S, **kwargs)
        if response.status_code == 404 and method == "GET":
            return None
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {str(message).strip()[:300]}")
        return response.json()

    def get(self, path: str, **params: str) -> dict[str, Any] | None:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        found = self._call("POST", path, json=body)
        assert found is not None
        return found


def to_kubeflow_model_registry(
    config: PipelineConfig, target: KubeflowModelRegistryConfig, version: RegisteredVersion, run_id: str | None
) -> str:
    """Record ``version`` in a Kubeflow Model Registry (module docstring); ``<url>: <model> <version> (<id>)``."""
    api = _ModelRegistryApi(target)
    name = target.model_name or version.name
    model = api.get("/registered_model", name=name) or api.post(
        "/registered_models",
        {
            "name": name,
            "owner": target.author,
            "description": f"ftpipe model {version.name} (registry {config.registry.uri})",
            "customProperties": {"ftpipe_registry_uri": _property(config.registry.uri)},
        },
    )
    number = str(version.version)
    properties = {f"metric_{key}": _property(value) for key, value in _metrics(version).items()}
    metadata = version.metadata
    lineage = {
        "ftpipe_version": version.version,
        "ftpipe_model_uri": version.model_uri,
        "ftpipe_manifest_uri": version.manifest_uri,
        "ftpipe_task": metadata.get("task", "text_classification"),
        "ftpipe_run_id": run_id,
        "ftpipe_primary_metric": metadata.get("primary_metric"),
        "ftpipe_data_fingerprint": (metadata.get("data") or {}).get("fingerprint"),
        "ftpipe_base_model": (metadata.get("base_model") or {}).get("source"),
    }
    properties.update({key: _property(value) for key, value in lineage.items() if value is not None})
    model_version = api.get("/model_version", name=number, parentResourceId=str(model["id"])) or api.post(
        "/model_versions",
        {
            "name": number,
            "registeredModelId": str(model["id"]),
            "author": target.author,
            "description": f"ftpipe {version.name} version {number}, registered {version.created_at}",
            "customProperties": properties,
        },
    )
    listed = api.get(f"/model_versions/{model_version['id']}/artifacts") or {}
    if not any(artifact.get("uri") == version.model_uri for artifact in listed.get("items") or []):
        key = urlsplit(version.model_uri).path.lstrip("/")
        try:
            format_version = importlib.metadata.version("transformers")
        except importlib.metadata.PackageNotFoundError:
            format_version = "unknown"
        artifact = {
            "artifactType": "model-artifact",
            "name": f"{name}-{number}",
            "uri": version.model_uri,
            "modelFormatName": MODEL_FORMAT,
            "modelFormatVersion": format_version,
            "storageKey": config.cluster.s3_secret_name,
            "storagePath": key,
            "modelSourceKind": "kfp",
            "modelSourceClass": "pipelinerun",
            "modelSourceName": f"ftpipe-{version.name}",
            "customProperties": {"ftpipe_task": _property(lineage["ftpipe_task"])},
        }
        if run_id:
            artifact["modelSourceId"] = run_id
        if config.cluster.namespace:
            artifact["modelSourceGroup"] = config.cluster.namespace
        api.post(f"/model_versions/{model_version['id']}/artifacts", artifact)
    where = f"{target.url}: {name} {number} (model version {model_version['id']})"
    logger.info("exported %s version %d to the Kubeflow Model Registry at %s", version.name, version.version, where)
    return where
