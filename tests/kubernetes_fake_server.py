"""A local stand-in for the Kubernetes API server: the calls the multi-node launcher makes.

It serves, on 127.0.0.1 and a port the OS picks, what ``ftpipe.training.trainjob`` uses, answering as the
real server does (Status bodies for errors, a bare ``404 page not found`` for an API group it does not serve,
a log stream that stays open while the container runs):

    POST   /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs
    GET    /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}
    DELETE /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}
    GET    /api/v1/namespaces/{ns}/pods?labelSelector=k=v,...
    GET    /api/v1/namespaces/{ns}/pods/{pod}
    GET    /api/v1/namespaces/{ns}/pods/{pod}/log?container=...&follow=true

A TrainJob it creates plays a scripted ``lifecycle``: its status conditions, one list per GET (the last one
repeats); with ``hold_until_logs_served`` N, the first stays until N pod logs were served to their end, so
that a TrainJob completes only after the launcher read them. One the test puts in ``trainjobs`` with a status
keeps it. Pods are plain dicts (``pod(...)``); a pod's log
is served line by line (``log_delay`` apart), and ``on_log_served`` marks it finished afterwards.
Every request is recorded. ``forbid(verb, resource)`` answers 403 as RBAC does; ``trainer_installed=False``
makes the trainer.kubeflow.org group unknown; ``fail(method, path_suffix, status)`` makes a route answer
an error. Serving, parsing a request and writing the reply are ``fake_http``'s; this module holds the API.

    with FakeKubernetes(lifecycle=[[running], [complete]]) as kube:
        train_on_nodes(config, uri, job_name="x", namespace="ns", api_client=kube.api_client())
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from fake_http import LocalHttpServer, read_request, reply

TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")
VERBS = {"POST": "create", "DELETE": "delete"}


def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict[str, Any]:
    return {
        "type": kind, "status": status, "reason": reason or kind, "message": message,
        "lastTransitionTime": "2026-12-04T01:00:00Z",
    }


def pod(name: str, job: str, index: int = 0, phase: str = "Running", uid: str | None = None,
        created: str = "2026-12-04T01:00:00Z", **status: Any) -> dict[str, Any]:
    """A pod of TrainJob ``job``'s `node` replicated job, completion index ``index``."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "ns", "uid": uid or f"uid-{name}", "creationTimestamp": created,
            "labels": {
                "jobset.sigs.k8s.io/jobset-name": job,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": str(index),
            },
        },
        "spec": {"containers": [{"name": "node", "image": "ftpipe:test"}]},
        "status": {"phase": phase, **status},
    }


def terminated(exit_code: int, reason: str, message: str = "") -> list[dict[str, Any]]:
    """``containerStatuses`` of a trainer container that exited."""
    state = {"exitCode": exit_code, "reason": reason, **({"message": message} if message else {})}
    return [{"name": "node", "image": "ftpipe:test", "imageID": "", "ready": False, "restartCount": 0,
             "state": {"terminated": state}}]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class FakeKubernetes(LocalHttpServer):
    lifecycle: list[list[dict[str, Any]]] = field(default_factory=lambda: [[]])
    hold_until_logs_served: int = 0
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)
    log_delay: float = 0.0
    # A pod whose whole log was served: its new phase (a finished container's stream ends).
    on_log_served: dict[str, str] = field(default_factory=dict)
    # A pod's log stream breaks after this many lines, once (the container still runs).
    break_log_after: dict[str, int] = field(default_factory=dict)
    trainer_installed: bool = True
    trainjobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    # A deleted TrainJob is still there (being deleted, foreground) for this many GETs.
    linger_gets: int = 0

    thread_name = "fake-kubernetes"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._gets: dict[tuple[str, str], int] = {}
        self._lingering: dict[tuple[str, str], int] = {}
        self.served: list[str] = []  # pods whose whole log was served, in order

    # -- test helpers ----------------------------------------------------------------------

    def api_client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def forbid(self, verb: str, resource: str) -> None:
        self.forbidden.add((verb, resource))

    def fail(self, method: str, path_suffix: str, status: int) -> None:
        self.failures[(method, path_suffix)] = status

    def requests_to(self, method: str, suffix: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def trainjob_gets(self) -> int:
        return sum(1 for r in self.requests if r.method == "GET" and TRAINJOBS.match(r.path))

    # -- the API ---------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        incoming = read_request(handler)
        request = Request(incoming.method, incoming.path, incoming.query, incoming.body)
        with self._lock:
            self.requests.append(request)
        logs = PODS.match(request.path)
        if request.method == "GET" and logs and logs.group(3) and not self._refusal(request):
            self._stream_log(handler, logs.group(1), logs.group(2), request.query)
            return
        with self._lock:
            status, payload = self._refusal(request) or self._answer(request)
        reply(handler, status, payload)

    def _refusal(self, request: Request) -> tuple[int, Any] | None:
        for (method, suffix), status in self.failures.items():
            if request.method == method and request.path.endswith(suffix):
                reason = "InternalError" if status >= 500 else "BadRequest"
                return status, _status(status, reason, "refused by the test")
        jobs, pods = TRAINJOBS.match(request.path), PODS.match(request.path)
        if jobs and not self.trainer_installed:
            return 404, "404 page not found"
        if jobs:
            resource, group, namespace = "trainjobs", "trainer.kubeflow.org", jobs.group(1)
        elif pods:
            resource, group, namespace = ("pods/log" if pods.group(3) else "pods"), "", pods.group(1)
        else:
            return 404, "404 page not found"
        name = (jobs or pods).group(2)
        verb = VERBS.get(request.method) or ("get" if name else "list")
        if (verb, resource) in self.forbidden:
            base, _, sub = resource.partition("/")
            what = f"{base}.{group}" if group else base
            return 403, _status(
                403, "Forbidden",
                f'{what} "{name or ""}" is forbidden: User "system:serviceaccount:{namespace}:ftpipe-pipeline-runner" '
                f'cannot {verb} resource "{base}"{f" subresource {sub!r}" if sub else ""} in API group "{group}" in '
                f'the namespace "{namespace}"',
            )
        return None

    def _answer(self, request: Request) -> tuple[int, Any]:
        jobs = TRAINJOBS.match(request.path)
        if jobs:
            namespace, name = jobs.groups()
            if request.method == "POST":
                name = request.body["metadata"]["name"]
                if (namespace, name) in self.trainjobs:
                    return 409, _status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists')
                job = json.loads(json.dumps(request.body))
                job["metadata"].update(uid=f"uid-{name}", creationTimestamp="2026-12-04T01:00:00Z")
                self.trainjobs[(namespace, name)] = job
                self._gets[(namespace, name)] = 0
                return 201, job
            key = (namespace, name)
            if key not in self.trainjobs:
                return 404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
            if request.method == "DELETE":
                if self.linger_gets:
                    self._lingering[key] = self.linger_gets
                else:
                    del self.trainjobs[key]
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
            if key in self._lingering:
                self._lingering[key] -= 1
                if self._lingering[key] < 0:
                    del self._lingering[key], self.trainjobs[key]
                    return 404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
                return 200, self.trainjobs[key]
            job = self.trainjobs[key]
            if "status" in job:  # put there by the test: as it is
                return 200, job
            step = self._gets.get(key, 0)
            held = len(self.served) < self.hold_until_logs_served
            if not held:
                self._gets[key] = step + 1
            conditions = self.lifecycle[0 if held else min(step, len(self.lifecycle) - 1)]
            job = {**job, "status": {"conditions": conditions}}
            return 200, job
        pods = PODS.match(request.path)
        namespace, name, _ = pods.groups()
        if name:
            if name not in self.pods:
                return 404, _status(404, "NotFound", f'pods "{name}" not found')
            return 200, self.pods[name]
        wanted = dict(pair.split("=", 1) for pair in request.query.get("labelSelector", "").split(",") if pair)
        items = [p for p in self.pods.values() if wanted.items() <= p["metadata"]["labels"].items()]
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _stream_log(self, handler: BaseHTTPRequestHandler, namespace: str, name: str, query: dict[str, str]) -> None:
        """The log, line by line, as a follow=true stream does: the body ends when the container does."""
        if name not in self.pods:
            reply(handler, 404, _status(404, "NotFound", f'pods "{name}" not found'))
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Connection", "close")
        handler.end_headers()
        lines = self.logs.get(name, [])
        cut = self.break_log_after.pop(name, None)
        for number, line in enumerate(lines):
            if cut is not None and number == cut:
                handler.close_connection = True
                return  # the stream breaks; the container still runs
            handler.wfile.write(f"{line}\n".encode())
            handler.wfile.flush()
            time.sleep(self.log_delay)
        with self._lock:
            if name in self.on_log_served:
                self.pods[name]["status"]["phase"] = self.on_log_served[name]
            self.served.append(name)
        handler.close_connection = True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
