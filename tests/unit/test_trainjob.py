"""The multi-node launcher (ftpipe.training.trainjob) against a local Kubernetes API server.

No cluster runs here: tests/kubernetes_fake_server.py speaks the endpoints the launcher uses, and plays scripted
TrainJob lifecycles (done, failed, preempted, cancelled) and API refusals (RBAC, Trainer not installed). The
manifest's validation against the Trainer CRD's schema is in test_k8s_manifests.py.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import threading
import time

import pytest
from kubernetes_fake_server import FakeKubernetes, condition, pod, terminated

from ftpipe.config import parse_config
from ftpipe.errors import ClusterError, ClusterUnavailable, ConfigError
from ftpipe.training import trainjob
from ftpipe.training.trainjob import train_on_nodes, trainjob_manifest

JOB = "ftpipe-run-1-finetune"
NS = "team-ml"
SPEC = "s3://ftpipe/runs/run-1/finetune/trainjob-spec.json"
API = "/apis/trainer.kubeflow.org/v1alpha1"
TRAINJOB_PATH = f"{API}/namespaces/{NS}/trainjobs"
POLL = 0.01
RUNNING: list = []
COMPLETE = [condition("Complete", "Completed", "jobset completed successfully")]
FAILED = [condition("Failed", "FailedJobs", "jobset failed due to one or more job failures")]


def make_config(storage: dict | None = None, **cluster):
    return parse_config(
        {
            "data": {"uri": "s3://data/sms.csv"},
            "registry": {"model_name": "sms"},
            "candidates": [{"name": "tiny", "source": "s3://models/tiny"}],
            "storage": {"endpoint_url": "http://s3.test:8333"} if storage is None else storage,
            "cluster": {"nodes": 2, "gpu_count": 4, **cluster},
        }
    )


def node_zero(phase="Running", name=f"{JOB}-node-0-0-abcde", **status):
    return pod(name, JOB, 0, phase, **status)


def by_name(*pods) -> dict:
    return {p["metadata"]["name"]: p for p in pods}


def launch(kube: FakeKubernetes, config=None, **kwargs) -> None:
    train_on_nodes(config or make_config(), SPEC, job_name=JOB, namespace=NS, api_client=kube.api_client(),
                   poll_seconds=POLL, **kwargs)


def forwarded(caplog) -> list[str]:
    return [r.getMessage().removeprefix("[node 0] ") for r in caplog.records if r.getMessage().startswith("[node 0]")]


@pytest.fixture(autouse=True)
def _launcher_logs(caplog):
    caplog.set_level(logging.INFO, logger="ftpipe.training.trainjob")


# -- the manifest -------------------------------------------------------------------------------------------


def test_manifest_runs_torchrun_on_every_node_with_the_tasks_image_secret_and_placement():
    config = make_config(
        image="registry.test/ftpipe:1.2.3-cuda", gpu_resource="amd.com/gpu", finetune_cpu="8", finetune_memory="64Gi",
        s3_secret_name="team-s3", s3_secret_access_key_id_key="id", s3_secret_secret_access_key_key="secret",
        node_selector={"pool": "a100", "zone": "b"}, tolerations=[{"key": "gpu", "operator": "Exists"}],
        trainer_runtime="torch-distributed-a100",
    )
    manifest = trainjob_manifest(config, SPEC, JOB, NS)
    assert manifest["metadata"]["name"] == JOB and manifest["metadata"]["namespace"] == NS
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed-a100"}
    trainer = spec["trainer"]
    assert trainer["image"] == "registry.test/ftpipe:1.2.3-cuda"
    assert trainer["command"] == ["torchrun", "-m", "ftpipe.training.launch", SPEC]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"amd.com/gpu": 4}}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in trainer["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "team-s3", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "team-s3", "key": "secret"}}
    assert env["AWS_ENDPOINT_URL"] == "http://s3.test:8333" and env["HF_HUB_OFFLINE"] == "1"
    assert not any(name.startswith("PET_") for name in env)  # Trainer's webhook rejects them: the runtime sets them
    (patch,) = spec["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    pod_spec = job["template"]["spec"]["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == trainjob.TERMINATION_GRACE_SECONDS == 300
    assert pod_spec["nodeSelector"] == {"pool": "a100", "zone": "b"}
    assert pod_spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert [c["name"] for c in pod_spec["containers"]] == ["node"]


def test_manifest_on_cpu_nodes_asks_for_no_gpu_and_one_process_per_node():
    manifest = trainjob_manifest(make_config(gpu_count=0, nodes=3), SPEC, JOB, NS)
    trainer = manifest["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 1)
    assert "limits" not in trainer["resourcesPerNode"]
    assert trainer["image"].startswith("ftpipe:")


def test_trainer_env_is_what_every_pipeline_task_gets():
    from pipelines.ftpipe_pipeline import task_environment

    for config in (make_config(), make_config(storage={})):
        env = {e["name"]: e["value"] for e in trainjob.trainer_environment(config) if "value" in e}
        assert env == task_environment(config)


@pytest.mark.parametrize("cluster", [{"nodes": 0}, {"nodes": 65}, {"trainer_runtime": ""}, {"nodes": "two"}])
def test_cluster_settings_of_several_nodes_are_checked(cluster):
    with pytest.raises(ConfigError, match=f"cluster.{next(iter(cluster))}"):
        make_config(**cluster)


def test_an_invalid_name_is_refused():
    for name in ("Run_1", "1-run", "x" * 64, "run-"):
        with pytest.raises(ValueError, match="no TrainJob name"):
            trainjob_manifest(make_config(), SPEC, name, NS)
    trainjob_manifest(make_config(), SPEC, "r" * 63, NS)


def test_namespace_defaults_to_the_service_accounts_then_default(tmp_path, monkeypatch):
    monkeypatch.setattr(trainjob, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "missing")
    assert trainjob.current_namespace() == "default"
    (tmp_path / "namespace").write_text("kubeflow-user\n")
    monkeypatch.setattr(trainjob, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    with FakeKubernetes(lifecycle=[COMPLETE]) as kube:
        train_on_nodes(make_config(), SPEC, job_name=JOB, api_client=kube.api_client(), poll_seconds=POLL)
        assert kube.requests_to("POST")[0].path == f"{API}/namespaces/kubeflow-user/trainjobs"
        train_on_nodes(make_config(namespace="from-config"), SPEC, job_name=JOB, api_client=kube.api_client(),
                       poll_seconds=POLL)
        assert kube.requests_to("POST")[1].path == f"{API}/namespaces/from-config/trainjobs"


def test_trainers_run_the_image_of_the_task_pod_they_are_launched_from(tmp_path, monkeypatch):
    """`ftpipe compile --image` sets the task's image, not cluster.image: the launcher reads its own pod's."""
    (tmp_path / "namespace").write_text(NS)
    monkeypatch.setattr(trainjob, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    monkeypatch.setenv("HOSTNAME", "ftpipe-run-1-finetune-launcher")
    launcher = pod("ftpipe-run-1-finetune-launcher", "none")
    launcher["spec"]["containers"] = [{"name": "wait", "image": "argoexec:v3.5"},
                                      {"name": "main", "image": "registry.test/ftpipe:compiled"}]
    with FakeKubernetes(lifecycle=[COMPLETE], pods=by_name(launcher)) as kube:
        train_on_nodes(make_config(image="registry.test/ftpipe:config"), SPEC, job_name=JOB,
                       api_client=kube.api_client(), poll_seconds=POLL)
        assert kube.requests_to("POST")[0].body["spec"]["trainer"]["image"] == "registry.test/ftpipe:compiled"
        del kube.pods["ftpipe-run-1-finetune-launcher"]  # unreadable: cluster.image
        train_on_nodes(make_config(image="registry.test/ftpipe:config"), SPEC, job_name=JOB,
                       api_client=kube.api_client(), poll_seconds=POLL)
        assert kube.requests_to("POST")[1].body["spec"]["trainer"]["image"] == "registry.test/ftpipe:config"


# -- done ---------------------------------------------------------------------------------------------------


def test_success_creates_follows_forwards_node_zero_logs_as_they_arrive_and_deletes(caplog):
    lines = [f"step {i} loss {1 / (i + 1):.3f}" for i in range(5)]
    # The TrainJob completes only once node 0's whole log was read: the lines must come while it runs.
    kube = FakeKubernetes(lifecycle=[RUNNING, COMPLETE], hold_until_logs_served=1, log_delay=0.02,
                          on_log_served={node_zero()["metadata"]["name"]: "Succeeded"})
    kube.pods = by_name(node_zero(), pod(f"{JOB}-node-0-1-fghij", JOB, 1))
    kube.logs = {f"{JOB}-node-0-0-abcde": lines, f"{JOB}-node-0-1-fghij": ["rank 4: not forwarded"]}
    with kube:
        launch(kube)
    (post,) = kube.requests_to("POST")
    assert post.path == TRAINJOB_PATH and post.body == trainjob_manifest(make_config(), SPEC, JOB, NS)
    assert forwarded(caplog) == lines
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index(f"[node 0] {lines[-1]}") < messages.index(f"TrainJob {NS}/{JOB} completed")
    (delete,) = kube.requests_to("DELETE")
    assert delete.path == f"{TRAINJOB_PATH}/{JOB}" and delete.body["propagationPolicy"] == "Foreground"
    (logs,) = [r for r in kube.requests if r.path.endswith("/log")]
    # The client sends Python's "True", which the API server's strconv.ParseBool reads as true.
    assert logs.query["container"] == "node" and logs.query["follow"].lower() == "true"
    (listing,) = {r.query["labelSelector"] for r in kube.requests if r.path.endswith("/pods")}
    assert set(listing.split(",")) == {f"jobset.sigs.k8s.io/jobset-name={JOB}",
                                       "jobset.sigs.k8s.io/replicatedjob-name=node",
                                       "batch.kubernetes.io/job-completion-index=0"}


def test_a_broken_log_stream_is_followed_again_without_repeating_lines(caplog):
    lines = [f"line {i}" for i in range(6)]
    name = node_zero()["metadata"]["name"]
    kube = FakeKubernetes(lifecycle=[RUNNING, COMPLETE], hold_until_logs_served=1, pods={name: node_zero()},
                          logs={name: lines}, break_log_after={name: 3}, on_log_served={name: "Succeeded"})
    with kube:
        launch(kube)
    assert forwarded(caplog) == lines
    assert len([r for r in kube.requests if r.path.endswith("/log")]) == 2


def test_a_node_zero_pod_replaced_by_its_job_is_followed_too(caplog):
    first, second = f"{JOB}-node-0-0-aaaaa", f"{JOB}-node-0-0-bbbbb"
    kube = FakeKubernetes(lifecycle=[RUNNING, COMPLETE], hold_until_logs_served=2, on_log_served={second: "Succeeded"})
    kube.pods = {first: node_zero("Failed", first, created="2026-12-04T01:00:00Z")}
    kube.logs = {first: ["first pod"], second: ["second pod"]}
    with kube:
        runner = threading.Thread(target=launch, args=(kube,))
        runner.start()
        deadline = time.monotonic() + 10
        while first not in kube.served and time.monotonic() < deadline:
            time.sleep(0.005)
        kube.pods[second] = node_zero("Running", second, created="2026-12-04T01:05:00Z")
        runner.join(10)
    assert not runner.is_alive()
    assert forwarded(caplog) == ["first pod", "second pod"]


# -- failed -------------------------------------------------------------------------------------------------


def test_failure_is_one_line_with_the_condition_and_the_pods_reason_and_the_trainjob_is_deleted():
    kube = FakeKubernetes(lifecycle=[RUNNING, FAILED])
    kube.pods = by_name(
        node_zero("Failed", containerStatuses=terminated(137, "OOMKilled")),
        pod(f"{JOB}-node-0-1-fghij", JOB, 1, "Failed",
            containerStatuses=terminated(2, "Error", "Traceback...\nDataError: column 'text' is empty\n")),
    )
    with kube, pytest.raises(ClusterError) as caught:
        launch(kube)
    error = caught.value
    assert type(error) is ClusterError and not error.transient
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"TrainJob {NS}/{JOB} failed (FailedJobs: jobset failed due to one or more job failures)")
    assert f"{JOB}-node-0-0-abcde: OOMKilled, exit code 137 (raise cluster.finetune_memory)" in message
    assert f"{JOB}-node-0-1-fghij: Error, exit code 2: DataError: column 'text' is empty" in message
    assert len(kube.requests_to("DELETE")) == 1 and not kube.trainjobs


@pytest.mark.parametrize(
    "status",
    [
        {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                         "message": "Preempted by a higher-priority pod"}]},
        {"reason": "Evicted", "message": "The node was low on resource: ephemeral-storage."},
    ],
    ids=["preempted", "evicted"],
)
def test_a_preempted_or_evicted_node_is_a_transient_failure_for_kfp_to_retry(status):
    kube = FakeKubernetes(lifecycle=[FAILED], pods=by_name(node_zero("Failed", **status)))
    with kube, pytest.raises(ClusterUnavailable) as caught:
        launch(kube)
    assert caught.value.transient
    assert status.get("reason", "PreemptionByScheduler") in str(caught.value)
    assert len(kube.requests_to("DELETE")) == 1


def test_a_trainjob_deleted_by_someone_else_is_one_clear_error():
    kube = FakeKubernetes(lifecycle=[RUNNING])
    with kube:
        runner_error = []

        def run():
            try:
                launch(kube)
            except ClusterError as error:
                runner_error.append(error)

        runner = threading.Thread(target=run)
        runner.start()
        while kube.trainjob_gets() < 2:
            time.sleep(0.005)
        kube.trainjobs.clear()
        runner.join(10)
    (error,) = runner_error
    assert "was deleted while it ran" in str(error)


# -- cancelled ----------------------------------------------------------------------------------------------


def _after_gets(kube: FakeKubernetes, count: int, action) -> threading.Thread:
    def wait_then_act():
        while kube.trainjob_gets() < count:
            time.sleep(0.005)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_sigterm_while_following_deletes_the_trainjob_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    kube = FakeKubernetes(lifecycle=[RUNNING], pods=by_name(node_zero()), logs={node_zero()["metadata"]["name"]: []})
    with kube:
        _after_gets(kube, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(ClusterUnavailable, match="SIGTERM"):
            launch(kube)
        (delete,) = kube.requests_to("DELETE")
    assert delete.path == f"{TRAINJOB_PATH}/{JOB}" and not kube.trainjobs
    assert signal.getsignal(signal.SIGTERM) is before


def test_keyboard_interrupt_while_following_deletes_the_trainjob_and_is_raised_again():
    kube = FakeKubernetes(lifecycle=[RUNNING])
    with kube:
        _after_gets(kube, 3, _thread.interrupt_main)
        with pytest.raises(KeyboardInterrupt):
            launch(kube)
    assert len(kube.requests_to("DELETE")) == 1 and not kube.trainjobs


# -- a TrainJob left by an earlier attempt ------------------------------------------------------------------


def test_a_running_trainjob_of_an_earlier_attempt_with_the_same_trainer_is_followed():
    kube = FakeKubernetes(lifecycle=[RUNNING, COMPLETE])
    kube.trainjobs[(NS, JOB)] = trainjob_manifest(make_config(), SPEC, JOB, NS)
    with kube:
        launch(kube)
    assert len(kube.requests_to("POST")) == 1  # answered 409
    assert len(kube.requests_to("DELETE")) == 1 and not kube.trainjobs


@pytest.mark.parametrize(
    ("config", "conditions"),
    [(make_config(), FAILED), (make_config(), COMPLETE), (make_config(gpu_count=8), []), (make_config(), None)],
    ids=["failed", "complete", "another-trainer", "being-deleted"],
)
def test_a_finished_or_different_trainjob_of_an_earlier_attempt_is_replaced(config, conditions):
    kube = FakeKubernetes(lifecycle=[COMPLETE], linger_gets=2)
    old = trainjob_manifest(config, SPEC, JOB, NS)
    if conditions is None:
        old["metadata"]["deletionTimestamp"] = "2026-12-04T01:00:00Z"
        conditions = []
    kube.trainjobs[(NS, JOB)] = {**old, "status": {"conditions": conditions}}
    with kube:
        launch(kube)
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kube.requests if "/trainjobs" in r.path]
    assert calls[:3] == [("POST", "trainjobs"), ("GET", JOB), ("DELETE", JOB)]
    assert calls.count(("POST", "trainjobs")) == 2 and calls[-1] == ("DELETE", JOB)
    first_new_post = calls.index(("POST", "trainjobs"), 1)
    assert calls[first_new_post - 1] == ("GET", JOB)  # waited until the old one was gone (404)


# -- the API refuses ----------------------------------------------------------------------------------------


def test_missing_rbac_is_one_error_naming_the_permission_and_the_component():
    kube = FakeKubernetes()
    kube.forbid("create", "trainjobs")
    with kube, pytest.raises(ClusterError) as caught:
        launch(kube)
    message = str(caught.value)
    assert not caught.value.transient and "\n" not in message
    assert f"forbids the launcher to create trainjobs.trainer.kubeflow.org in namespace {NS}" in message
    assert 'cannot create resource "trainjobs"' in message and "k8s/components/trainer" in message
    assert not kube.requests_to("DELETE")  # nothing was created


def test_missing_get_permission_fails_and_still_deletes_what_it_created():
    kube = FakeKubernetes()
    kube.forbid("get", "trainjobs")
    with kube, pytest.raises(ClusterError, match="forbids the launcher to get trainjobs"):
        launch(kube)
    assert len(kube.requests_to("DELETE")) == 1


def test_trainer_not_installed_is_one_clear_error():
    kube = FakeKubernetes(trainer_installed=False)
    with kube, pytest.raises(ClusterError) as caught:
        launch(kube)
    assert str(caught.value).startswith("Kubeflow Trainer v2 is not installed")
    assert "torch-distributed ClusterTrainingRuntime" in str(caught.value)
    assert not caught.value.transient


def test_an_api_server_failing_on_its_side_is_transient():
    kube = FakeKubernetes()
    kube.fail("POST", "/trainjobs", 503)
    with kube, pytest.raises(ClusterUnavailable, match="did not answer to create"):
        launch(kube)


def test_an_unreachable_api_server_is_transient():
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard: nothing listens
    configuration.retries = 0
    with pytest.raises(ClusterUnavailable, match="did not answer"):
        train_on_nodes(make_config(), SPEC, job_name=JOB, namespace=NS, api_client=client.ApiClient(configuration),
                       poll_seconds=POLL)


def test_unreadable_logs_are_a_warning_not_a_failure(caplog):
    kube = FakeKubernetes(lifecycle=[RUNNING, RUNNING, COMPLETE], pods=by_name(node_zero()),
                          logs={node_zero()["metadata"]["name"]: ["x"]})
    kube.forbid("get", "pods/log")
    with kube:
        launch(kube)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not forwarding node 0's logs" in w and "pods/log" in w for w in warnings), warnings
    assert forwarded(caplog) == []
