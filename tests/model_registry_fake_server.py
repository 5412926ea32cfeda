"""A local stand-in for the Kubeflow Model Registry's REST API: the endpoints ftpipe.export calls, in memory.

Served under both ``/api/model_registry/v1`` and ``/v1alpha3``, as the real server's OpenAPI has them:

- ``GET /registered_model?name=`` and ``GET /model_version?name=&parentResourceId=``: the one found, or 404;
- ``POST /registered_models``, ``POST /model_versions`` (``registeredModelId`` must exist, a version name is unique
  within its model: 409) and ``POST /model_versions/{id}/artifacts``: 201 with the stored object, which gets a
  string ``id``, ``createTimeSinceEpoch`` and ``state``; a field the create schema does not have is a 400, as is a
  custom property that is not a MetadataValue;
- ``GET /model_versions/{id}/artifacts``: the version's artifacts as a list (``items``, ``size``).

``refuse`` (an HTTP status) answers every request with it, as a registry that is down or refuses the token would.
``requests`` records what came in, for the tests to read back.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from fake_http import IncomingRequest, LocalHttpServer, read_request, reply

PREFIX = re.compile(r"^/api/model_registry/(v1|v1alpha3)(/.*)$")
ARTIFACTS = re.compile(r"^/model_versions/([^/]+)/artifacts$")
# The fields of the create schemas (model-registry's OpenAPI: RegisteredModelCreate, ModelVersionCreate,
# ModelArtifactCreate).
COMMON = {"customProperties", "description", "externalId", "name", "state"}
FIELDS = {
    "registered_models": COMMON | {"readme", "maturity", "language", "tasks", "provider", "logo", "license",
                                   "licenseLink", "libraryName", "owner"},
    "model_versions": COMMON | {"author", "registeredModelId"},
    "artifacts": COMMON | {"artifactType", "modelFormatName", "storageKey", "storagePath", "modelFormatVersion",
                           "serviceAccountName", "modelSourceKind", "modelSourceClass", "modelSourceGroup",
                           "modelSourceId", "modelSourceName", "uri"},
}  # fmt: skip
VALUE_TYPES = {"MetadataStringValue": "string_value", "MetadataDoubleValue": "double_value",
               "MetadataIntValue": "int_value", "MetadataBoolValue": "bool_value"}  # fmt: skip


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class FakeModelRegistry(LocalHttpServer):
    refuse: int | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by model version id
    requests: list[IncomingRequest] = field(default_factory=list)
    api_versions: set[str] = field(default_factory=set)
    thread_name = "fake-model-registry"

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        incoming = read_request(handler)
        with self._lock:
            self.requests.append(incoming)
            try:
                if self.refuse is not None:
                    raise Refused(self.refuse, "refused")
                match = PREFIX.match(incoming.path)
                if not match:
                    raise Refused(404, f"no route {incoming.path}")
                self.api_versions.add(match.group(1))
                status, payload = self._route(incoming.method, match.group(2), incoming.query, incoming.body)
            except Refused as refused:
                status, payload = refused.status, {"code": str(refused.status), "message": str(refused)}
        reply(handler, status, payload)

    def _stored(self, kind: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        unknown = set(body) - FIELDS[kind]
        if unknown:
            raise Refused(400, f"unknown fields {sorted(unknown)}")
        if not body.get("name"):
            raise Refused(400, "name is required")
        for key, value in (body.get("customProperties") or {}).items():
            kind_of = VALUE_TYPES.get(value.get("metadataType")) if isinstance(value, dict) else None
            if kind_of is None or set(value) != {"metadataType", kind_of}:
                raise Refused(400, f"custom property {key!r} is not a MetadataValue: {value!r}")
        now = str(int(time.time() * 1000))
        return {**body, "id": str(next(self._ids)), "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now,
                "state": body.get("state", "LIVE")}  # fmt: skip

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/registered_model":
            found = [model for model in self.models.values() if model["name"] == query.get("name")]
            if not found:
                raise Refused(404, f"no registered model named {query.get('name')!r}")
            return 200, found[0]
        if method == "POST" and path == "/registered_models":
            if any(model["name"] == (body or {}).get("name") for model in self.models.values()):
                raise Refused(409, "a registered model of that name exists")
            model = self._stored("registered_models", body)
            self.models[model["id"]] = model
            return 201, model
        if method == "GET" and path == "/model_version":
            found = [version for version in self.versions.values()
                     if version["name"] == query.get("name") and version["registeredModelId"] == query.get(
                         "parentResourceId")]  # fmt: skip
            if not found:
                raise Refused(404, "no such model version")
            return 200, found[0]
        if method == "POST" and path == "/model_versions":
            version = self._stored("model_versions", body)
            if version.get("registeredModelId") not in self.models:
                raise Refused(400, "registeredModelId names no registered model")
            if any(other["name"] == version["name"] and other["registeredModelId"] == version["registeredModelId"]
                   for other in self.versions.values()):  # fmt: skip
                raise Refused(409, "a version of that name exists")
            self.versions[version["id"]] = version
            return 201, version
        artifacts = ARTIFACTS.match(path)
        if artifacts:
            version_id = artifacts.group(1)
            if version_id not in self.versions:
                raise Refused(404, "no such model version")
            if method == "GET":
                items = self.artifacts.get(version_id, [])
                return 200, {"items": items, "size": len(items), "pageSize": 100, "nextPageToken": ""}
            if method == "POST":
                artifact = self._stored("artifacts", body)
                self.artifacts.setdefault(version_id, []).append(artifact)
                return 201, artifact
        raise Refused(404, f"no route {method} {path}")
