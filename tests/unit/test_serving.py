"""The KServe manifest of a registered version (ftpipe.serving), checked offline.

The InferenceService validates against KServe v0.20.0's CRD schema (k8s/schemas, ``check-jsonschema``), the
ServiceAccount and Secret against Kubernetes' own (``kubernetes-validate --strict``); the runtime's arguments are
those KServe's Hugging Face server takes for each task; no credential reaches the manifest; an adapter-only or
local version is refused with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftpipe import cli, serving
from ftpipe.config import parse_config
from ftpipe.errors import RegistryError
from ftpipe.registry import ModelRegistry, RegisteredFile, RegisteredVersion
from ftpipe.storage import Storage
from ftpipe.tasks import TASKS, task_class

ROOT = Path(__file__).parents[2]
SCHEMA = ROOT / "k8s" / "schemas" / "inferenceservice-v1beta1.json"
KUBERNETES_VERSION = "1.33.0"
# KServe v0.20.0, python/huggingfaceserver/huggingfaceserver/task.py: SUPPORTED_TASKS (by MLTask name, as --task
# is parsed: MLTask[name])
KSERVE_HF_TASKS = {
    "sequence_classification",
    "token_classification",
    "fill_mask",
    "text_generation",
    "text2text_generation",
    "text_embedding",
    "time_series_forecast",
}
SENTINEL_KEY_ID = "AKIA-SERVE-SENTINEL-ID"
SENTINEL_SECRET = "serve-sentinel-secret-value"


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (make install adds it to .venv)")
    return found


def _check_jsonschema(document: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "isvc.json"
    path.write_text(json.dumps(document))
    return subprocess.run([_tool("check-jsonschema"), "--schemafile", str(SCHEMA), str(path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _config(task: dict | None = None, **sections):
    data = {
        "data": {"uri": "unused.csv"},
        "registry": {"uri": "s3://ftpipe/registry", "model_name": "spam_filter.v2"},
        "candidates": [{"name": "tiny", "source": "unused"}],
        "storage": {"endpoint_url": "http://seaweedfs.kubeflow.svc:8333", "region": "eu-west-1"},
        **sections,
    }
    if task:
        data["task"] = task
    return parse_config(data)


def _version(files=("config.json", "model.safetensors"), uri="s3://ftpipe/registry/spam_filter.v2/blobs/abc"):
    return RegisteredVersion(
        name="spam_filter.v2", version=3, created_at="2026-12-04T05:00:00+00:00",
        manifest_uri="s3://ftpipe/registry/spam_filter.v2/versions/000003.json", model_uri=uri,
        model_card_uri=f"{uri}/README.md", metadata_uri=f"{uri}/metadata.json",
        files=[RegisteredFile(path=path, size=1, sha256="0" * 64) for path in files],
        metadata={"run_id": "run-42", "task": "text_classification"},
    )  # fmt: skip


def _by_kind(documents: list[dict]) -> dict[str, dict]:
    return {document["kind"]: document for document in documents}


@pytest.mark.parametrize("task_type", sorted(TASKS))
def test_every_task_names_a_task_kserves_huggingface_runtime_serves(task_type):
    args = task_class(task_type)(_config({"type": task_type})).huggingface_server_args()
    assert args[0] == "--backend=huggingface"
    task_args = [arg for arg in args if arg.startswith("--task=")]
    assert len(task_args) == 1 and task_args[0].removeprefix("--task=") in KSERVE_HF_TASKS
    assert set(args[2:]) <= {"--return_probabilities", "--return_raw_logits"}


CASES = {
    "text_classification": (None, {}, "sequence_classification", ["--return_probabilities"]),
    "token_classification": ({"type": "token_classification"}, {"cluster": {
        "gpu_count": 4, "gpu_resource": "amd.com/gpu", "node_selector": {"pool": "gpu"}, "namespace": "team",
        "s3_secret_name": "team-s3",
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "serving": {"name": "ner", "gpu_count": 2, "min_replicas": 0, "max_replicas": 3, "runtime": "hf-gpu",
                    "service_account": "ner-sa"}}, "token_classification", []),
    "causal_lm_sft": ({"type": "causal_lm_sft"}, {"cluster": {"gpu_count": 0}}, "text_generation", []),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_manifest_validates_against_kserves_crd_and_holds_no_secret(case, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SENTINEL_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL_SECRET)
    task, sections, hf_task, output = CASES[case]
    config = _config(task, **sections)
    documents = serving.manifests(config, _version())
    text = serving.render(documents, _version())
    assert SENTINEL_KEY_ID not in text and SENTINEL_SECRET not in text
    assert list(yaml.safe_load_all(text)) == documents
    assert [d["kind"] for d in documents] == ["ServiceAccount", "Secret", "InferenceService"]
    kinds = _by_kind(documents)

    result = _check_jsonschema(kinds["InferenceService"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    core = tmp_path / "core.yaml"
    core.write_text(yaml.safe_dump_all([kinds["ServiceAccount"], kinds["Secret"]]))
    validated = subprocess.run([_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(core)],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert validated.returncode == 0, validated.stdout + validated.stderr

    secret = kinds["Secret"]
    assert set(secret) == {"apiVersion", "kind", "metadata"}  # no data, no stringData, no type
    assert secret["metadata"]["name"] == config.cluster.s3_secret_name
    assert secret["metadata"]["annotations"] == {
        "serving.kserve.io/s3-region": "eu-west-1",
        "serving.kserve.io/s3-endpoint": "seaweedfs.kubeflow.svc:8333",
        "serving.kserve.io/s3-usehttps": "0",
    }
    account = kinds["ServiceAccount"]
    assert account["secrets"] == [{"name": config.cluster.s3_secret_name}]
    isvc = kinds["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["storageUri"] == "s3://ftpipe/registry/spam_filter.v2/blobs/abc"
    name = isvc["metadata"]["name"]
    assert model["args"] == [f"--model_name={name}", "--backend=huggingface", f"--task={hf_task}", *output]
    assert isvc["metadata"]["labels"]["ftpipe.io/model"] == "spam_filter.v2"
    assert isvc["metadata"]["labels"]["ftpipe.io/model-version"] == "3"
    assert isvc["metadata"]["annotations"]["ftpipe.io/run-id"] == "run-42"
    resources = model["resources"]
    if case == "text_classification":  # the defaults: the model name made a DNS label, one GPU, no namespace
        assert name == "spam-filter-v2" and account["metadata"]["name"] == "spam-filter-v2-kserve"
        assert resources["limits"] == {"memory": "4Gi", "nvidia.com/gpu": "1"}
        assert "namespace" not in isvc["metadata"] and "nodeSelector" not in predictor
    elif case == "token_classification":  # every setting
        assert name == "ner" and account["metadata"]["name"] == "ner-sa" and model["runtime"] == "hf-gpu"
        assert {d["metadata"]["namespace"] for d in documents} == {"team"}
        assert resources["requests"]["amd.com/gpu"] == resources["limits"]["amd.com/gpu"] == "2"
        assert predictor["nodeSelector"] == {"pool": "gpu"}
        assert predictor["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 3)
    else:  # a CPU cluster: no GPU asked for
        assert not any("gpu" in key for key in resources["requests"]) and "maxReplicas" not in predictor


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"]["predictor"]["model"].update(storageUrl="s3://x"),  # a typo
        lambda d: d["spec"]["predictor"]["model"]["modelFormat"].update(name=["huggingface"]),
        lambda d: d["spec"]["predictor"].update(minReplicas="1"),
        lambda d: d["spec"]["predictor"]["model"].update(args="--task=x"),
        lambda d: d.update(status={}),
    ],
    ids=["unknown-field", "model-format-list", "replicas-string", "args-string", "status"],
)
def test_the_crd_schema_rejects_what_the_api_server_would(break_it, tmp_path):
    (isvc,) = [d for d in serving.manifests(_config(), _version()) if d["kind"] == "InferenceService"]
    break_it(isvc)
    assert _check_jsonschema(isvc, tmp_path).returncode != 0


def test_an_adapter_only_version_is_refused_with_the_way_out():
    with pytest.raises(RegistryError) as raised:
        serving.manifests(_config(), _version(files=("adapter_model.safetensors", "ftpipe_base_model.json")))
    message = str(raised.value)
    assert "\n" not in message and "adapter" in message
    assert "ftpipe registry export spam_filter.v2 3 --merged" in message


def test_a_version_off_s3_is_refused():
    with pytest.raises(RegistryError, match="not on S3"):
        serving.manifests(_config(), _version(uri="/tmp/registry/spam/blobs/abc"))


def test_aws_s3_itself_gets_only_the_region():
    config = _config(storage={"region": "us-east-2"})
    assert serving.s3_annotations(config) == {"serving.kserve.io/s3-region": "us-east-2"}
    https = _config(storage={"endpoint_url": "https://s3.example.test"})
    assert serving.s3_annotations(https)["serving.kserve.io/s3-usehttps"] == "1"


def test_the_command_names_a_missing_alias_in_one_line(tmp_path, capsys):
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    registry.register("spam", model, {}, "card")
    registry.set_alias("spam", "staging", 1)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"uri": "x.csv"}, "registry": {"uri": str(tmp_path / "registry"), "model_name": "spam"},
        "candidates": [{"name": "tiny", "source": "unused"}],
    }))  # fmt: skip
    assert cli.main(["serve-manifest", "spam", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no alias 'production'" in error[0] and "staging -> 1" in error[0]
    assert cli.main(["serve-manifest", "spam", "--version", "1", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "not on S3" in error[0]
