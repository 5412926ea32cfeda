"""A local stand-in for the KFP API server: the v2beta1 REST calls ``kfp.Client`` 2.17 makes.

It serves, on 127.0.0.1 and a port the OS picks, what ``ftpipe submit`` and ``ftpipe schedule``
use, answering as the real server does (JSON field names included: the recurring-run list is
``recurringRuns``, errors are grpc-gateway ``{"code", "message"}`` bodies):

    GET    /apis/v2beta1/healthz
    GET    /apis/v2beta1/experiments                    (filter on display_name, namespace)
    POST   /apis/v2beta1/experiments
    POST   /apis/v2beta1/runs
    GET    /apis/v2beta1/recurringruns                  (experiment_id, filter on display_name, paging)
    POST   /apis/v2beta1/recurringruns
    POST   /apis/v2beta1/recurringruns/{id}:disable | :enable
    DELETE /apis/v2beta1/recurringruns/{id}

Every request is recorded (method, path, query, headers, JSON body) so tests check what was sent.
``token`` makes it demand ``Authorization: Bearer <token>``; ``fail(method, path, status)`` makes
one route answer an error; ``login_page`` makes it answer HTML like an authenticating proxy.
Serving, parsing a request and writing the reply are ``fake_http``'s; this module holds the API.

    with FakeKfp() as kfp:
        main(["submit", "--host", kfp.url, ...])
        kfp.requests_to("POST", "/apis/v2beta1/runs")
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from fake_http import LocalHttpServer, read_request, reply

API = "/apis/v2beta1"
_STATUS_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13}  # HTTP status -> gRPC code


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict | None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class FakeKfp(LocalHttpServer):
    token: str | None = None
    multi_user: bool = False
    login_page: bool = False
    page_size_limit: int = 100
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    failures: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    thread_name = "fake-kfp"

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- test helpers ----------------------------------------------------------------------

    def add_experiment(self, name: str, namespace: str | None = None) -> str:
        experiment_id = self._new_id("exp")
        self.experiments[experiment_id] = {
            "experiment_id": experiment_id, "display_name": name, "namespace": namespace or "",
            "storage_state": "AVAILABLE",
        }
        return experiment_id

    def add_recurring_run(self, experiment_id: str, name: str, cron: str = "0 0 1 * * *") -> str:
        recurring_run_id = self._new_id("rr")
        self.recurring_runs[recurring_run_id] = {
            "recurring_run_id": recurring_run_id, "display_name": name, "experiment_id": experiment_id,
            "mode": "ENABLE", "max_concurrency": "1", "trigger": {"cron_schedule": {"cron": cron}},
        }
        return recurring_run_id

    def fail(self, method: str, path: str, status: int, message: str = "refused by the test") -> None:
        """Make ``method path`` (e.g. ``"POST", "/apis/v2beta1/runs"``) answer ``status``."""
        self.failures[(method, path)] = (status, message)

    def requests_to(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def calls(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    # -- the API ---------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):04d}"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        request = Request(**read_request(handler)._asdict())
        with self._lock:
            self.requests.append(request)
            status, payload = self._answer(request)
        reply(handler, status, payload, text_type="text/html; charset=utf-8")  # the text is the login page

    def _answer(self, request: Request) -> tuple[int, dict | str]:
        if self.login_page:
            return 200, "<html><body>Log in to Kubeflow</body></html>"
        if self.token is not None and request.header("Authorization") != f"Bearer {self.token}":
            return _error(401, "Unauthenticated: request is not authenticated")
        if (request.method, request.path) in self.failures:
            return _error(*self.failures[(request.method, request.path)])
        route = (request.method, request.path.removeprefix(API))
        match route:
            case ("GET", "/healthz"):
                return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
            case ("GET", "/experiments"):
                return self._list_experiments(request)
            case ("POST", "/experiments"):
                return self._create_experiment(request)
            case ("POST", "/runs"):
                return self._create_run(request)
            case ("GET", "/recurringruns"):
                return self._list_recurring_runs(request)
            case ("POST", "/recurringruns"):
                return self._create_recurring_run(request)
            case ("POST", path) if path.startswith("/recurringruns/") and ":" in path:
                recurring_run_id, action = path.removeprefix("/recurringruns/").split(":", 1)
                if recurring_run_id not in self.recurring_runs or action not in ("enable", "disable"):
                    return _error(404, f"recurring run {recurring_run_id} not found")
                self.recurring_runs[recurring_run_id]["mode"] = action.upper()
                return 200, {}
            case ("DELETE", path) if path.startswith("/recurringruns/"):
                recurring_run_id = path.removeprefix("/recurringruns/")
                if self.recurring_runs.pop(recurring_run_id, None) is None:
                    return _error(404, f"recurring run {recurring_run_id} not found")
                return 200, {}
        return _error(404, "Not Found")

    def _list_experiments(self, request: Request) -> tuple[int, dict]:
        if self.multi_user and not request.query.get("namespace"):
            return _error(400, "Invalid input error: In multi-user mode, ListExperiment requires namespace")
        name = _display_name_filter(request.query)
        found = [
            e for e in self.experiments.values()
            if (name is None or e["display_name"] == name)
            and (not self.multi_user or e["namespace"] == request.query["namespace"])
        ]
        return 200, ({"experiments": found, "total_size": len(found)} if found else {})

    def _create_experiment(self, request: Request) -> tuple[int, dict]:
        body = request.body or {}
        if not body.get("display_name"):
            return _error(400, "Invalid input error: Experiment name is empty")
        experiment_id = self.add_experiment(body["display_name"], body.get("namespace"))
        return 200, self.experiments[experiment_id]

    def _create_run(self, request: Request) -> tuple[int, dict]:
        body = dict(request.body or {})
        if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
            return _error(400, "Invalid input error: a run needs a pipeline spec or a pipeline version")
        body.update(run_id=self._new_id("run"), state="PENDING")
        self.runs[body["run_id"]] = body
        return 200, body

    def _list_recurring_runs(self, request: Request) -> tuple[int, dict]:
        name = _display_name_filter(request.query)
        experiment_id = request.query.get("experiment_id")
        found = [
            r for r in self.recurring_runs.values()
            if (name is None or r["display_name"] == name)
            and (experiment_id is None or r["experiment_id"] == experiment_id)
        ]
        start = int(request.query.get("page_token") or 0)
        size = min(int(request.query.get("page_size") or 10), self.page_size_limit)
        page = found[start:start + size]
        answer: dict = {"recurringRuns": page, "total_size": len(found)} if page else {}
        if start + size < len(found):
            answer["next_page_token"] = str(start + size)
        return 200, answer

    def _create_recurring_run(self, request: Request) -> tuple[int, dict]:
        body = dict(request.body or {})
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron", "")
        if len(cron.split()) != 6:
            return _error(400, f"Invalid input error: invalid cron {cron!r}: expected 6 fields")
        body.update(recurring_run_id=self._new_id("rr"), status="ENABLED")
        self.recurring_runs[body["recurring_run_id"]] = body
        return 200, body


def _display_name_filter(query: dict[str, str]) -> str | None:
    if "filter" not in query:
        return None
    for predicate in json.loads(query["filter"]).get("predicates", []):
        if predicate.get("key") == "display_name" and predicate.get("operation") in ("EQUALS", 1):
            return predicate.get("stringValue") or predicate.get("string_value")
    return None


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": message, "code": _STATUS_CODES.get(status, 2), "message": message, "details": []}
