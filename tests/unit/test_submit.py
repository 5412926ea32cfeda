"""`ftpipe submit` and `ftpipe schedule` against a local fake of the KFP v2beta1 REST API.

The fake (tests/kfp_fake_server.py) records every request the real ``kfp.Client`` sends, so these
tests check the wire: the compiled spec, the ``config_json`` parameter, the experiment, the cron in
KFP's six-field form, ``max_concurrency`` and the ``Authorization`` header.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp_fake_server import API, FakeKfp

from ftpipe.cli import main
from ftpipe.config import load_config
from ftpipe.s3server import free_port

EXAMPLE = Path(__file__).parents[2] / "pipelines" / "examples" / "sms-spam.yaml"
STEPS = {"clean-data", "select-model", "finetune", "evaluate", "register-model"}


@pytest.fixture(autouse=True)
def _kfp_environment(monkeypatch, tmp_path):
    """No KFP settings from the developer's shell or ~/.config/kfp/context.json."""
    from kfp.client import client

    monkeypatch.setattr(client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in (
        "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_SA_TOKEN_PATH",
        "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_ID",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kfp_server():
    with FakeKfp() as server:
        yield server


def _submit(host: str, *extra: str) -> int:
    return main(["submit", "--host", host, "--config", str(EXAMPLE), *extra])


def _schedule(host: str, cron: str, *extra: str) -> int:
    return main(["schedule", "--host", host, "--config", str(EXAMPLE), "--cron", cron, *extra])


def _tasks(pipeline_spec: dict) -> set[str]:
    tasks = set(pipeline_spec["root"]["dag"]["tasks"])
    for component in pipeline_spec["components"].values():
        tasks |= set(component.get("dag", {}).get("tasks", {}))
    return tasks


def _assert_is_the_compiled_pipeline(body: dict) -> None:
    document = body["pipeline_spec"]
    spec, platform = document["pipeline_spec"], document["platform_spec"]  # both travel inline
    assert spec["pipelineInfo"]["name"] == "ftpipe-sms-spam"
    assert STEPS <= _tasks(spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-finetune"]["secretAsEnv"][0]["secretName"] == "ftpipe-s3-credentials"
    parameters = body["runtime_config"]["parameters"]
    assert json.loads(parameters["config_json"]) == json.loads(load_config(EXAMPLE).to_json())


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("ftpipe: error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err


# -- submit -----------------------------------------------------------------------------------


def test_submit_creates_the_experiment_sends_the_compiled_pipeline_and_prints_the_run_url(kfp_server, capsys):
    assert _submit(kfp_server.url, "--experiment", "nightly", "--run-name", "try-1", "--service-account", "sa-1") == 0
    assert kfp_server.calls() == [
        f"GET {API}/healthz", f"GET {API}/experiments", f"POST {API}/experiments", f"POST {API}/runs",
    ]
    lookup = kfp_server.requests_to("GET", f"{API}/experiments")[0]
    assert json.loads(lookup.query["filter"])["predicates"][0]["stringValue"] == "nightly"
    assert kfp_server.requests_to("POST", f"{API}/experiments")[0].body["display_name"] == "nightly"
    (experiment_id,) = kfp_server.experiments
    run = kfp_server.requests_to("POST", f"{API}/runs")[0]
    assert run.body["experiment_id"] == experiment_id
    assert run.body["display_name"] == "try-1"
    assert run.body["service_account"] == "sa-1"
    _assert_is_the_compiled_pipeline(run.body)
    assert all(r.header("Authorization") is None for r in kfp_server.requests)
    (run_id,) = kfp_server.runs
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{kfp_server.url}/#/runs/details/{run_id}"
    assert "nightly" in out[0] and "try-1" in out[0]


def test_submit_reuses_an_existing_experiment_and_sends_the_token(capsys):
    with FakeKfp(token="s3cr3t") as kfp_server:
        experiment_id = kfp_server.add_experiment("ftpipe-sms-spam")
        assert _submit(kfp_server.url, "--token", "s3cr3t", "--image", "registry.example.com/ftpipe:1.2.3") == 0
    assert not kfp_server.requests_to("POST", f"{API}/experiments")
    assert {r.header("Authorization") for r in kfp_server.requests} == {"Bearer s3cr3t"}
    run = kfp_server.requests_to("POST", f"{API}/runs")[0].body
    assert run["experiment_id"] == experiment_id
    executors = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example.com/ftpipe:1.2.3"}
    assert "s3cr3t" not in capsys.readouterr().out


def test_submit_reads_the_token_file_named_by_kfp_sa_token_path_and_the_host_from_kfp_endpoint(
    monkeypatch, tmp_path, capsys
):
    token_file = tmp_path / "token"
    token_file.write_text("projected-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    with FakeKfp(token="projected-token") as kfp_server:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_server.url)
        assert main(["submit", "--config", str(EXAMPLE)]) == 0
    assert {r.header("Authorization") for r in kfp_server.requests} == {"Bearer projected-token"}
    assert len(kfp_server.runs) == 1


def test_submit_in_a_multi_user_deployment_needs_and_uses_a_namespace(capsys):
    with FakeKfp(multi_user=True) as kfp_server:
        assert _submit(kfp_server.url) == 3
        assert "multi-user: pass --namespace" in _one_line_error(capsys)
        assert not kfp_server.requests_to("POST", f"{API}/runs")
        assert _submit(kfp_server.url, "--namespace", "team-a") == 0
    assert kfp_server.requests_to("GET", f"{API}/experiments")[-1].query["namespace"] == "team-a"
    assert kfp_server.requests_to("POST", f"{API}/experiments")[-1].body["namespace"] == "team-a"


# -- errors -----------------------------------------------------------------------------------


def test_a_server_that_does_not_answer_is_one_line_and_exit_3(capsys):
    host = f"http://127.0.0.1:{free_port()}"
    assert _submit(host) == 3
    err = _one_line_error(capsys)
    assert f"KFP at {host} does not answer" in err and "refused" in err
    assert capsys.readouterr().out == ""


def test_a_wrong_token_is_one_line_and_exit_3(capsys):
    with FakeKfp(token="right") as kfp_server:
        assert _submit(kfp_server.url, "--token", "wrong") == 3
        err = _one_line_error(capsys)
        assert "refused the credentials" in err and "401" in err and "wrong" not in err
        assert _submit(kfp_server.url) == 3
        assert "give a token (--token, or KF_PIPELINES_SA_TOKEN_PATH)" in _one_line_error(capsys)
    assert not kfp_server.runs


def test_a_forbidden_run_is_one_line_naming_the_step(kfp_server, capsys):
    kfp_server.fail("POST", f"{API}/runs", 403, "user is not allowed to create runs in namespace kubeflow")
    assert _submit(kfp_server.url, "--run-name", "r1") == 3
    err = _one_line_error(capsys)
    assert "HTTP 403" in err and 'creating run "r1"' in err and "not allowed to create runs" in err


def test_a_host_that_is_not_the_kfp_api_is_one_line(kfp_server, capsys):
    assert _submit(kfp_server.url + "/not-kfp") == 3
    assert "404" in (err := _one_line_error(capsys)) and "the KFP API" in err


def test_a_login_page_instead_of_the_api_is_one_line(capsys):
    with FakeKfp(login_page=True) as kfp_server:
        assert _submit(kfp_server.url) == 3
    assert "login page" in _one_line_error(capsys)


@pytest.mark.parametrize(("host", "problem"), [(None, "KF_PIPELINES_ENDPOINT"), ("kfp.example.com", "not a URL")])
def test_a_missing_or_schemeless_host_is_one_line(host, problem, capsys):
    assert main(["submit", "--config", str(EXAMPLE), *(["--host", host] if host else [])]) == 2
    assert problem in _one_line_error(capsys)


def test_an_unreadable_token_file_is_one_line(monkeypatch, kfp_server, tmp_path, capsys):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "missing"))
    assert _submit(kfp_server.url) == 3
    assert "KF_PIPELINES_SA_TOKEN_PATH" in _one_line_error(capsys)
    assert kfp_server.requests == []


# -- schedule ---------------------------------------------------------------------------------


def test_schedule_creates_a_recurring_run_that_never_overlaps(kfp_server, capsys):
    assert _schedule(kfp_server.url, "0 3 * * 1", "--experiment", "weekly", "--service-account", "sa-2") == 0
    (experiment_id,) = kfp_server.experiments
    listing = kfp_server.requests_to("GET", f"{API}/recurringruns")[0]
    assert listing.query["experiment_id"] == experiment_id
    assert json.loads(listing.query["filter"])["predicates"][0]["stringValue"] == "ftpipe-sms-spam"
    body = kfp_server.requests_to("POST", f"{API}/recurringruns")[0].body
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"  # KFP's six fields, seconds first
    assert int(body["max_concurrency"]) == 1
    assert body["service_account"] == "sa-2"
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["experiment_id"] == experiment_id and body["display_name"] == "ftpipe-sms-spam"
    _assert_is_the_compiled_pipeline(body)
    (recurring_run_id,) = kfp_server.recurring_runs
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("created recurring run 'ftpipe-sms-spam'") and "'0 0 3 * * 1'" in out[0]
    assert out[1] == f"{kfp_server.url}/#/recurringrun/details/{recurring_run_id}"


def test_schedule_replaces_the_recurring_run_of_the_same_name_in_that_experiment_only(capsys):
    with FakeKfp(page_size_limit=1) as kfp_server:  # one per page: the listing must follow next_page_token
        experiment_id = kfp_server.add_experiment("ftpipe-sms-spam")
        other_experiment = kfp_server.add_experiment("elsewhere")
        old = [kfp_server.add_recurring_run(experiment_id, "retrain") for _ in range(2)]
        keep = [
            kfp_server.add_recurring_run(experiment_id, "something-else"),
            kfp_server.add_recurring_run(other_experiment, "retrain"),
        ]
        assert _schedule(kfp_server.url, "30 2 1 * *", "--name", "retrain") == 0
    calls = kfp_server.calls()
    create = calls.index(f"POST {API}/recurringruns")
    assert all(calls.index(f"POST {API}/recurringruns/{rr}:disable") < create for rr in old)
    assert all(calls.index(f"DELETE {API}/recurringruns/{rr}") > create for rr in old)
    assert set(keep) <= set(kfp_server.recurring_runs) and not set(old) & set(kfp_server.recurring_runs)
    (new,) = (r for rr, r in kfp_server.recurring_runs.items() if rr not in keep)
    assert new["display_name"] == "retrain" and new["experiment_id"] == experiment_id
    assert new["trigger"]["cron_schedule"]["cron"] == "0 30 2 1 * *"
    assert capsys.readouterr().out.startswith(f"replaced recurring run 'retrain' (deleted {old[0]}, {old[1]})")


def test_schedule_restores_the_old_recurring_run_when_the_new_one_is_rejected(kfp_server, capsys):
    experiment_id = kfp_server.add_experiment("ftpipe-sms-spam")
    old = kfp_server.add_recurring_run(experiment_id, "ftpipe-sms-spam")
    kfp_server.fail("POST", f"{API}/recurringruns", 400, "Invalid input error: the spec is too large")
    assert _schedule(kfp_server.url, "0 3 * * 1") == 3
    assert "spec is too large" in _one_line_error(capsys)
    assert kfp_server.recurring_runs[old]["mode"] == "ENABLE"
    assert kfp_server.calls()[-2:] == [f"POST {API}/recurringruns", f"POST {API}/recurringruns/{old}:enable"]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 3 * * 1", "0 0 3 * * 1"),
        ("*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
        ("0 0 1,15 jan-jun ?", "0 0 0 1,15 jan-jun ?"),
        ("5/10 0 * * 0", "0 5/10 0 * * 0"),
    ],
)
def test_a_standard_cron_becomes_kfp_six_fields(cron, expected):
    from pipelines.submit import kfp_cron

    assert kfp_cron(cron) == expected


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("0 3 * *", "4 fields"),
        ("0 0 3 * * 1", "adds the seconds field"),
        ("@daily", "1 field;"),
        ("60 3 * * 1", "minute field"),
        ("0 24 * * *", "hour field"),
        ("0 3 0 * *", "day of month field"),
        ("0 3 * 13 *", "month field"),
        ("0 3 * * 7", "day of week field"),
        ("0 3 * JANX 1", "month field"),
        ("0 17-9 * * *", "runs backwards"),
        ("*/0 * * * *", "step"),
        ("0 ? * * *", "hour field"),
        ("0 3 * * 1;", "day of week field"),
    ],
)
def test_a_bad_cron_is_one_line_and_nothing_is_sent(cron, problem, kfp_server, capsys):
    assert _schedule(kfp_server.url, cron) == 2
    err = _one_line_error(capsys)
    assert f'invalid cron "{cron}"' in err and problem in err and "minute hour day-of-month" in err
    assert kfp_server.requests == []
