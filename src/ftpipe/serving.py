"""Serving a registered version on KServe: the manifest ``ftpipe serve-manifest`` writes.

    ftpipe serve-manifest NAME [--alias production | --version N] --config RUN.yaml [-o FILE]
    kubectl apply --server-side -f FILE

:func:`manifests` gives three objects, in the order they are applied:

- a ``ServiceAccount`` (``serving.service_account``, default ``<name>-kserve``) whose ``secrets`` names the S3
  Secret (``cluster.s3_secret_name``): KServe's storage initializer reads the credentials of the Secrets its
  predictor's ServiceAccount names;
- that ``Secret``'s metadata alone, with KServe's S3 annotations (``serving.kserve.io/s3-endpoint``,
  ``s3-usehttps``, ``s3-region``) from ``storage``: no ``data``, so no credential is ever in the file, and a
  server-side apply adds the annotations to the Secret the cluster already has, keeping its keys (a client-side
  ``kubectl apply`` of a Secret it created with data would drop them: use ``--server-side``);
- the ``InferenceService`` (serving.kserve.io/v1beta1): ``modelFormat: huggingface`` (KServe's Hugging Face
  runtime), ``storageUri`` the version's S3 prefix, the runtime's arguments from the task
  (:meth:`ftpipe.tasks.base.Task.huggingface_server_args`), GPUs of ``cluster.gpu_resource`` on
  ``cluster.node_selector`` with ``cluster.tolerations``, and labels naming the registered version.

KServe reads the Secret's keys by the names in its own ``inferenceservice-config`` (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` by default, ftpipe's defaults too). The runtime loads plain ``from_pretrained`` weights:
a version holding a LoRA adapter alone is refused (``ftpipe registry export NAME VERSION --merged DIR`` writes the
merged model). The objects validate offline against KServe v0.20.0's CRD (``k8s/schemas``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import yaml

from ftpipe import __version__
from ftpipe.config import PipelineConfig
from ftpipe.errors import ConfigError, RegistryError
from ftpipe.registry import ModelRegistry, RegisteredVersion
from ftpipe.storage import is_s3
from ftpipe.tasks import get_task

ENDPOINT_ANNOTATION = "serving.kserve.io/s3-endpoint"
HTTPS_ANNOTATION = "serving.kserve.io/s3-usehttps"
REGION_ANNOTATION = "serving.kserve.io/s3-region"
MODEL_LABEL = "ftpipe.io/model"
VERSION_LABEL = "ftpipe.io/model-version"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def resolve_version(
    registry: ModelRegistry, name: str, alias: str | None = None, version: int | None = None
) -> RegisteredVersion:
    """The version to serve: ``version`` when given, else the one ``alias`` (default ``production``) points at."""
    if version is not None:
        return registry.get_version(name, version)
    alias = alias or "production"
    found = registry.resolve_alias(name, alias)
    if found is None:
        known = registry.list_aliases(name)
        hint = f"aliases: {', '.join(f'{a} -> {v}' for a, v in known.items())}" if known else "it has no aliases"
        raise RegistryError(f"model '{name}' has no alias '{alias}' ({hint}); name a version with --version")
    return found


def service_name(config: PipelineConfig) -> str:
    """The InferenceService's name: ``serving.name``, else the registered model's name as a DNS-1035 label."""
    if config.serving.name:
        return config.serving.name
    name = re.sub(r"[^a-z0-9-]+", "-", config.registry.model_name).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}"
    if len(name) > 63 or not _DNS_1035.match(name):
        raise ConfigError(
            f"registry.model_name {config.registry.model_name!r} makes no Kubernetes name: set serving.name"
        )
    return name


def s3_annotations(config: PipelineConfig) -> dict[str, str]:
    """KServe's S3 annotations of the Secret, from ``storage`` (no endpoint: AWS S3 itself)."""
    annotations = {REGION_ANNOTATION: config.storage.region}
    endpoint = config.storage.endpoint_url
    if endpoint:
        parts = urlsplit(endpoint)
        annotations[ENDPOINT_ANNOTATION] = parts.netloc or endpoint
        annotations[HTTPS_ANNOTATION] = "0" if parts.scheme == "http" else "1"
    return annotations


def manifests(config: PipelineConfig, version: RegisteredVersion) -> list[dict[str, Any]]:
    """The ServiceAccount, the Secret's annotations and the InferenceService serving ``version`` (module docstring).

    Raises:
        RegistryError: the version is not on S3, or holds a LoRA adapter alone.
        ConfigError: no Kubernetes name can be made of the model name.
    """
    from ftpipe.training.adapters import BASE_REFERENCE

    if not is_s3(version.model_uri):
        raise RegistryError(
            f"version {version.version} of '{version.name}' is at {version.model_uri}, not on S3: KServe reads "
            "storageUri from S3 (set registry.uri to an s3:// prefix)"
        )
    if any(entry.path == BASE_REFERENCE for entry in version.files):
        raise RegistryError(
            f"version {version.version} of '{version.name}' holds a LoRA adapter, not merged weights, which KServe's "
            f"Hugging Face runtime cannot load: `ftpipe registry export {version.name} {version.version} --merged "
            "DIR` writes the merged model"
        )
    serving, cluster = config.serving, config.cluster
    name = service_name(config)
    namespace = serving.namespace or cluster.namespace
    account = serving.service_account or f"{name}-kserve"
    labels = {
        "app.kubernetes.io/part-of": "ftpipe",
        "app.kubernetes.io/managed-by": "ftpipe",
        MODEL_LABEL: version.name,
        VERSION_LABEL: str(version.version),
    }

    def metadata(object_name: str, **extra: Any) -> dict[str, Any]:
        found = {"name": object_name, **({"namespace": namespace} if namespace else {}), **extra}
        return found

    gpus = serving.gpu_count if serving.gpu_count is not None else (1 if cluster.gpu_count > 0 else 0)
    requests: dict[str, Any] = {"cpu": serving.cpu, "memory": serving.memory}
    limits: dict[str, Any] = {"memory": serving.memory}
    if gpus:
        requests[cluster.gpu_resource] = limits[cluster.gpu_resource] = str(gpus)
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "args": [f"--model_name={name}", *get_task(config).huggingface_server_args()],
        "storageUri": version.model_uri,
        "resources": {"requests": requests, "limits": limits},
    }
    if serving.runtime:
        model["runtime"] = serving.runtime
    predictor: dict[str, Any] = {"serviceAccountName": account, "minReplicas": serving.min_replicas}
    if serving.max_replicas is not None:
        predictor["maxReplicas"] = serving.max_replicas
    if cluster.node_selector:
        predictor["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        predictor["tolerations"] = [t.model_dump(exclude_none=True) for t in cluster.tolerations]
    predictor["model"] = model
    annotations = {
        "ftpipe.io/model-uri": version.model_uri,
        "ftpipe.io/registered-at": version.created_at,
        "ftpipe.io/version": __version__,
    }
    run_id = version.metadata.get("run_id")
    if run_id:
        annotations["ftpipe.io/run-id"] = str(run_id)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(account, labels={"app.kubernetes.io/part-of": "ftpipe"}),
            "secrets": [{"name": cluster.s3_secret_name}],
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(cluster.s3_secret_name, annotations=s3_annotations(config)),
        },
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": metadata(name, labels=labels, annotations=annotations),
            "spec": {"predictor": predictor},
        },
    ]


def render(documents: list[dict[str, Any]], version: RegisteredVersion) -> str:
    """The objects as one multi-document YAML file, with a header saying what it serves and how to apply it."""
    header = (
        f"# {version.name} version {version.version} on KServe, by ftpipe {__version__} (ftpipe serve-manifest).\n"
        "# Apply with `kubectl apply --server-side -f FILE`: the Secret below carries KServe's S3 annotations only,\n"
        "# which a server-side apply adds to the existing Secret, keeping its credentials.\n"
    )
    return header + yaml.safe_dump_all(documents, sort_keys=False)
