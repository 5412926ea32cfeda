"""Submit the compiled pipeline to a KFP cluster: one run now, or a recurring run on a cron schedule.

``ftpipe submit`` and ``ftpipe schedule`` call into this module. Both compile the DAG for the config
(the same YAML ``ftpipe compile`` writes) and send it inline through ``kfp.Client``, so no pipeline
has to be uploaded first; the config travels as the ``config_json`` run parameter.

Authentication is KFP's own: a token given explicitly is sent as ``Authorization: Bearer``; without
one, ``KF_PIPELINES_SA_TOKEN_PATH`` names a token file that KFP's
``ServiceAccountTokenVolumeCredentials`` reads again before every request (a projected token rotates).
``KF_PIPELINES_ENDPOINT`` and ``KF_PIPELINES_UI_ENDPOINT`` are honoured as ``kfp.Client`` does.

The KFP v2beta1 API has no call that updates a recurring run, so replacing a schedule is: disable
the recurring runs of that name in the experiment (they stop triggering), create the new one, then
delete the old ones. If the server rejects the new one, the old ones are enabled again, so a failed
update never leaves a model without its schedule.

Every failure a user can cause (server down, wrong address, refused credentials, a bad cron) ends
in one :class:`~ftpipe.errors.FtpipeError` naming the problem.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import kfp
import kfp_server_api
import urllib3
from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, ServiceAccountTokenVolumeCredentials

from ftpipe.config import PipelineConfig
from ftpipe.errors import FtpipeError
from pipelines.runner import compile_pipeline

HOST_ENV = "KF_PIPELINES_ENDPOINT"  # read by kfp.Client when no host is given; we read it the same way
UI_HOST_ENV = "KF_PIPELINES_UI_ENDPOINT"
CONNECT_TIMEOUT_S = 10.0
# Creating a run sends the whole pipeline spec; a busy API server may take a while to answer.
READ_TIMEOUT_S = 120.0
CONFIG_PARAMETER = "config_json"
CONNECTING = "checking the KFP API"


class KfpError(FtpipeError):
    """The KFP API answered with an error, or with something that is not the KFP API."""

    exit_code = 3


class KfpUnreachable(KfpError):
    """The KFP API server does not answer (refused, unknown host, timed out, TLS failure)."""


class KfpAuthError(KfpError):
    """The KFP API refused the credentials (HTTP 401 or 403), or asked for a login."""


class KfpNotFound(KfpError):
    """The KFP API answered 404: a wrong address, or an object that does not exist."""


class InvalidCron(FtpipeError):
    """The cron expression is not a valid standard five-field cron."""


class InvalidKfpHost(FtpipeError):
    """No KFP host was given, or it is not an http(s) URL."""


# -- cron -------------------------------------------------------------------------------------

_MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_WEEKDAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, lowest, highest, names, `?` allowed): the five standard fields, bounded as KFP's scheduler
# (robfig/cron) bounds them; day of week runs 0-6 with 0 for Sunday.
_CRON_FIELDS = (
    ("minute", 0, 59, {}, False),
    ("hour", 0, 23, {}, False),
    ("day of month", 1, 31, {}, True),
    ("month", 1, 12, _MONTHS, False),
    ("day of week", 0, 6, _WEEKDAYS, True),
)
_CRON_PART = re.compile(r"^(?P<span>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>[0-9]+))?$")
_CRON_HINT = 'give five fields: minute hour day-of-month month day-of-week, e.g. "0 3 * * 1" for Mondays at 03:00'


def kfp_cron(expression: str) -> str:
    """Validate a standard five-field cron and return KFP's six-field form (seconds first).

    Raises:
        InvalidCron: naming the field that is wrong.
    """
    fields = expression.split()
    if len(fields) != 5:
        count = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
        seconds = " (ftpipe adds the seconds field KFP wants)" if len(fields) == 6 else ""
        raise InvalidCron(f'invalid cron "{expression}": {count}; {_CRON_HINT}{seconds}')
    for text, (name, low, high, names, question_mark) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            problem = _cron_part_problem(part, low, high, names, question_mark)
            if problem:
                raise InvalidCron(f'invalid cron "{expression}": {name} field "{text}": {problem}; {_CRON_HINT}')
    return "0 " + " ".join(fields)


def _cron_part_problem(part: str, low: int, high: int, names: dict[str, int], question_mark: bool) -> str | None:
    match = _CRON_PART.match(part)
    if match is None:
        return f'"{part}" is not a value, a range, a list or a step'
    span, step = match["span"], match["step"]
    if step is not None and int(step) == 0:
        return "a step must be at least 1"
    if span == "?":
        return None if question_mark and step is None else '"?" only stands alone in a day field'
    if span == "*":
        return None
    values = []
    for token in span.split("-"):
        value = int(token) if token.isdigit() else names.get(token.lower())
        if value is None:
            return f'"{token}" is not a number' + (" or a name" if names else "")
        if not low <= value <= high:
            return f"{value} is outside {low}-{high}"
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        return f'range "{span}" runs backwards'
    return None


# -- the client -------------------------------------------------------------------------------


class _Client(kfp.Client):
    """``kfp.Client`` with timeouts, fewer retries, and one health check that fails fast.

    ``kfp.Client`` sends requests without a timeout, and its health check retries five times five
    seconds apart and logs a traceback for each failure; here a server that does not answer is
    reported after one attempt, and every request times out.
    """

    def __init__(self, **kwargs) -> None:
        self.healthz: kfp_server_api.V2beta1GetHealthzResponse | None = None
        super().__init__(**kwargs)  # may call get_kfp_healthz (single-user context, no namespace)
        # The generated REST client offers no default timeout: give its connection pools one.
        pool_manager = self._healthz_api.api_client.rest_client.pool_manager
        pool_manager.connection_pool_kw["timeout"] = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)

    def _load_config(self, *args, **kwargs) -> kfp_server_api.Configuration:
        config = super()._load_config(*args, **kwargs)
        # Retry a failed connection once; never resend a request the server may have acted on.
        config.retries = urllib3.Retry(total=3, connect=1, read=0, backoff_factor=0.5)
        return config

    def get_kfp_healthz(self, sleep_duration: int = 5) -> kfp_server_api.V2beta1GetHealthzResponse:
        if self.healthz is None:
            api_client = self._healthz_api.api_client
            healthz = self._healthz_api.healthz_service_get_healthz(
                _request_timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
            )
            content_type = api_client.last_response.getheader("content-type") or ""
            if "json" not in content_type:
                # An authenticating proxy (Dex, oauth2-proxy, IAP) redirects to its login page.
                raise KfpAuthError(
                    f"KFP at {self._existing_config.host} answered with {content_type or 'no content type'}, not "
                    f"the KFP API: a login page? Give a token (--token, or {KF_PIPELINES_SA_TOKEN_ENV}), or "
                    "point --host at the API rather than the web UI"
                )
            self.healthz = healthz
        return self.healthz


@dataclass(frozen=True)
class Connection:
    """Where the KFP API is and how to authenticate to it."""

    host: str
    token: str | None = None
    namespace: str | None = None

    @classmethod
    def resolve(cls, host: str | None, token: str | None = None, namespace: str | None = None) -> Connection:
        """Fill in the host from ``KF_PIPELINES_ENDPOINT`` and check it is a URL."""
        host = host or os.environ.get(HOST_ENV)
        if not host:
            raise InvalidKfpHost(f"no KFP host: pass --host URL or set {HOST_ENV}")
        if not re.match(r"^https?://[^/\s]+", host):
            raise InvalidKfpHost(f'KFP host "{host}" is not a URL: give http://HOST[:PORT] or https://HOST[:PORT]')
        return cls(host.rstrip("/"), token or None, namespace or None)

    @property
    def ui_host(self) -> str:
        """Base of the links printed for people (``KF_PIPELINES_UI_ENDPOINT`` wins, as in ``kfp.Client``)."""
        return (os.environ.get(UI_HOST_ENV) or self.host).rstrip("/")

    def _auth(self) -> dict:
        if self.token:
            return {"existing_token": self.token}
        token_path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV)
        if token_path:
            try:
                Path(token_path).read_text(encoding="utf-8")
            except OSError as error:
                raise KfpAuthError(f"{KF_PIPELINES_SA_TOKEN_ENV}={token_path}: {error.strerror or error}") from None
            return {"credentials": ServiceAccountTokenVolumeCredentials(token_path)}
        return {}

    def client(self) -> _Client:
        """A ``kfp.Client`` that has checked the server answers as the KFP API."""
        kwargs = {"host": self.host, **self._auth()}
        if self.namespace:
            kwargs["namespace"] = self.namespace  # else kfp keeps the one in ~/.config/kfp/context.json
        with self.calling(CONNECTING):
            client = _Client(**kwargs)
            healthz = client.get_kfp_healthz()
        if healthz.multi_user and not client.get_user_namespace():
            raise KfpError(f"KFP at {self.host} is multi-user: pass --namespace (your Kubeflow profile namespace)")
        return client

    @contextlib.contextmanager
    def calling(self, action: str) -> Iterator[None]:
        """Turn what kfp and urllib3 raise while ``action`` into one :class:`KfpError`; keep kfp quiet.

        ``kfp.Client`` prints links for notebooks, warns about server versions and lets urllib3 log
        each retry: the CLI prints its own summary instead.
        """
        retry_log = logging.getLogger("urllib3.connectionpool")
        previous_level = retry_log.level
        retry_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore", FutureWarning)
                yield
        except kfp_server_api.ApiException as error:
            raise _api_error(self, action, error) from None
        except urllib3.exceptions.HTTPError as error:
            raise KfpUnreachable(f"KFP at {self.host} does not answer ({_network_reason(error)})") from None
        except ValueError as error:  # kfp's own checks, e.g. two experiments with one name
            raise KfpError(f"KFP at {self.host}, {action}: {error}") from None
        finally:
            retry_log.setLevel(previous_level)


def _api_error(connection: Connection, action: str, error: kfp_server_api.ApiException) -> KfpError:
    where = f"KFP at {connection.host}"
    if not error.status:  # raised by the client itself: a TLS failure
        return KfpUnreachable(f"{where} does not answer ({_one_line(str(error.reason))})")
    status = f"HTTP {error.status} {error.reason or ''}".strip()
    message = _server_message(error.body)
    detail = f": {message}" if message else ""
    if error.status in (401, 403):
        hint = (
            "check the token and its access to the namespace"
            if connection.token or os.environ.get(KF_PIPELINES_SA_TOKEN_ENV)
            else f"give a token (--token, or {KF_PIPELINES_SA_TOKEN_ENV})"
        )
        return KfpAuthError(f"{where} refused the credentials while {action} ({status}{detail}); {hint}")
    if error.status == 404:
        hint = f"; is {connection.host} the KFP API (v2beta1)?" if action == CONNECTING else ""
        return KfpNotFound(f"{where} answered {status} while {action}{detail}{hint}")
    return KfpError(f"{where} answered {status} while {action}{detail}")


def _server_message(body: str | bytes | None) -> str:
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
    except ValueError:
        return "" if "<html" in text.lower() else _one_line(text)
    if isinstance(data, dict):
        return _one_line(str(data.get("message") or data.get("error") or ""))
    return ""


def _network_reason(error: urllib3.exceptions.HTTPError) -> str:
    reason = getattr(error, "reason", None) or error
    cause = reason.__cause__ or reason.__context__
    if isinstance(cause, OSError) and cause.strerror:  # refused, unknown host, unreachable network
        return cause.strerror.lower()
    # Checked after the cause: urllib3's NewConnectionError is a ConnectTimeoutError too.
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return "timed out"
    return _one_line(str(reason).rsplit(": ", 1)[-1])


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- submit and schedule ----------------------------------------------------------------------


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    url: str


@dataclass(frozen=True)
class ScheduledRun:
    recurring_run_id: str
    name: str
    experiment_id: str
    experiment_name: str
    cron: str
    kfp_cron: str
    replaced: tuple[str, ...]
    url: str


def default_experiment(config: PipelineConfig) -> str:
    """One experiment per registered model, so its runs and schedules are found together."""
    return f"ftpipe-{config.registry.model_name}"


def default_schedule_name(config: PipelineConfig) -> str:
    return f"ftpipe-{config.registry.model_name}"


@contextlib.contextmanager
def _compiled(config: PipelineConfig, image: str | None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ftpipe-submit-") as directory:
        yield str(compile_pipeline(config, Path(directory) / "pipeline.yaml", image=image))


def _experiment(client: _Client, connection: Connection, name: str) -> str:
    with connection.calling(f'finding or creating experiment "{name}"'):
        return client.create_experiment(name=name, namespace=connection.namespace).experiment_id


def submit_run(
    config: PipelineConfig,
    connection: Connection,
    *,
    experiment: str | None = None,
    run_name: str | None = None,
    image: str | None = None,
    service_account: str | None = None,
) -> SubmittedRun:
    """Compile the DAG for ``config`` and start one run of it in ``experiment`` (created if needed)."""
    experiment = experiment or default_experiment(config)
    run_name = run_name or f"ftpipe-{config.registry.model_name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with _compiled(config, image) as package:
        client = connection.client()
        experiment_id = _experiment(client, connection, experiment)
        with connection.calling(f'creating run "{run_name}"'):
            run = client.run_pipeline(
                experiment_id=experiment_id,
                job_name=run_name,
                pipeline_package_path=package,
                params={CONFIG_PARAMETER: config.to_json()},
                service_account=service_account,
            )
    return SubmittedRun(
        run_id=run.run_id,
        run_name=run_name,
        experiment_id=experiment_id,
        experiment_name=experiment,
        url=f"{connection.ui_host}/#/runs/details/{run.run_id}",
    )


def schedule_run(
    config: PipelineConfig,
    connection: Connection,
    cron: str,
    *,
    name: str | None = None,
    experiment: str | None = None,
    image: str | None = None,
    service_account: str | None = None,
) -> ScheduledRun:
    """Create, or replace, the recurring run ``name`` in ``experiment``: one run at a time, no catch-up."""
    six_fields = kfp_cron(cron)
    name = name or default_schedule_name(config)
    experiment = experiment or default_experiment(config)
    with _compiled(config, image) as package:
        client = connection.client()
        experiment_id = _experiment(client, connection, experiment)
        existing = _recurring_runs_named(client, connection, experiment_id, name)
        for old in existing:
            with connection.calling(f'disabling recurring run "{name}" ({old})'):
                client.disable_recurring_run(old)
        try:
            with connection.calling(f'creating recurring run "{name}"'):
                created = client.create_recurring_run(
                    experiment_id=experiment_id,
                    job_name=name,
                    description=f"ftpipe retraining of {config.registry.model_name}; cron {cron}",
                    cron_expression=six_fields,
                    max_concurrency=1,  # a retrain never overlaps the previous one
                    no_catchup=True,  # after a pause, run once, not once per missed slot
                    params={CONFIG_PARAMETER: config.to_json()},
                    pipeline_package_path=package,
                    enabled=True,
                    service_account=service_account,
                )
        except KfpError:
            for old in existing:
                with contextlib.suppress(KfpError), connection.calling("re-enabling the previous schedule"):
                    client.enable_recurring_run(old)
            raise
        for old in existing:
            with connection.calling(f'deleting the previous recurring run "{name}" ({old})'):
                client.delete_recurring_run(old)
    return ScheduledRun(
        recurring_run_id=created.recurring_run_id,
        name=name,
        experiment_id=experiment_id,
        experiment_name=experiment,
        cron=cron,
        kfp_cron=six_fields,
        replaced=tuple(existing),
        url=f"{connection.ui_host}/#/recurringrun/details/{created.recurring_run_id}",
    )


def _recurring_runs_named(client: _Client, connection: Connection, experiment_id: str, name: str) -> list[str]:
    name_filter = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found: list[str] = []
    page_token = ""
    with connection.calling(f'listing recurring runs named "{name}"'):
        while True:
            page = client.list_recurring_runs(
                experiment_id=experiment_id, filter=name_filter, page_size=100, page_token=page_token
            )
            # The server filters by name already; checking again costs nothing.
            found += [r.recurring_run_id for r in page.recurring_runs or () if r.display_name == name]
            page_token = page.next_page_token or ""
            if not page_token:
                return found
