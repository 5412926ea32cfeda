"""Export of registry versions (ftpipe.export): to a real `mlflow server`'s Model Registry, with the model on the real
S3 server, and to the Kubeflow Model Registry's REST API (tests/model_registry_fake_server.py), each read back.

Both record the version by reference to its S3 prefix, tagged with the ftpipe name, version, run id and metrics;
a second export of the same version adds nothing; a registry that fails is one warning and register_model still
registers, and `ftpipe registry sync` exports a version again, failing in one line.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
import yaml
from model_registry_fake_server import FakeModelRegistry
from test_tracking_mlflow import mlflow_server  # noqa: F401 - the real MLflow server fixture, shared

from ftpipe import cli, s3server, tracking
from ftpipe.config import parse_config
from ftpipe.errors import RegistryError
from ftpipe.export import export_version
from ftpipe.registry import ModelRegistry
from ftpipe.results import EvaluateResult
from ftpipe.steps import register_model
from ftpipe.storage import Storage

PER_CLASS = {label: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 8} for label in ("ham", "spam")}
METRICS = {"accuracy": 0.875, "f1_macro": 0.8125, "n_examples": 16, "per_class": PER_CLASS}


def _config(registry_uri: str, **sections):
    return parse_config(
        {
            "data": {"uri": "s3://data/sms.csv"},
            "registry": {"uri": registry_uri, "model_name": "spam-filter"},
            "candidates": [{"name": "tiny", "source": "unused"}],
            **sections,
        }
    )


def _register(registry: ModelRegistry, tmp_path: Path, marker: str, run_id: str = "run-7"):
    model = tmp_path / f"model-{marker}"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (model / "model.safetensors").write_bytes(marker.encode() * 64)
    metadata = {"task": "text_classification", "primary_metric": "f1_macro", "metrics": METRICS, "run_id": run_id,
                "data": {"fingerprint": "fp-1"}, "base_model": {"source": "all-MiniLM-L6-v2"}}  # fmt: skip
    return registry.register("spam-filter", model, metadata, "# card", key=run_id)


@pytest.fixture
def s3_registry(s3_storage) -> ModelRegistry:
    return ModelRegistry(s3_storage, f"s3://ftpipe/export-{uuid.uuid4().hex[:8]}")


# -- MLflow ---------------------------------------------------------------------------------------------


def test_a_version_lands_in_mlflows_model_registry_by_its_s3_uri(mlflow_server, s3_registry, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    config = _config(s3_registry.uri, tracking={"mlflow_uri": mlflow_server}, export={"mlflow": True})
    first = _register(s3_registry, tmp_path, "a")
    assert export_version(config, first, "run-7", ["staging"]) == {"mlflow": "models:/spam-filter/1"}

    client = MlflowClient(mlflow_server)
    exported = client.get_model_version("spam-filter", "1")
    assert exported.source == first.model_uri and first.model_uri.startswith("s3://ftpipe/export-")
    assert exported.tags["ftpipe.model_name"] == "spam-filter" and exported.tags["ftpipe.version"] == "1"
    assert exported.tags["ftpipe.run_id"] == "run-7" and exported.tags["ftpipe.format"] == "huggingface"
    assert exported.tags["ftpipe.model_uri"] == first.model_uri
    assert float(exported.tags["metric.accuracy"]) == 0.875 and float(exported.tags["metric.f1_macro"]) == 0.8125
    assert "metric.per_class" not in exported.tags
    assert "f1_macro 0.8125" in exported.description
    parent = tracking.Tracker(config, "run-7").parent_id()  # the pipeline run's parent run, which it links to
    assert exported.run_id == parent
    assert client.get_model_version_by_alias("spam-filter", "staging").version == "1"

    # a retried register_model task exports nothing twice; the next version is the next MLflow version
    assert export_version(config, first, "run-7", ["staging"]) == {"mlflow": "models:/spam-filter/1"}
    second = _register(s3_registry, tmp_path, "b", run_id="run-8")
    assert export_version(config, second, "run-8", []) == {"mlflow": "models:/spam-filter/2"}
    versions = client.search_model_versions("name = 'spam-filter'")
    assert sorted((v.version, v.source) for v in versions) == [("1", first.model_uri), ("2", second.model_uri)]
    assert client.get_model_version_by_alias("spam-filter", "staging").version == "1"


def test_an_mlflow_server_that_does_not_answer_is_one_warning(s3_registry, tmp_path, caplog):
    nobody = f"http://127.0.0.1:{s3server.free_port()}"
    config = _config(s3_registry.uri, tracking={"mlflow_uri": nobody}, export={"mlflow": True})
    version = _register(s3_registry, tmp_path, "a")
    with caplog.at_level(logging.WARNING):
        assert export_version(config, version, "run-7") == {}
    (warning,) = [record for record in caplog.records if record.levelno >= logging.WARNING]
    message = warning.getMessage()
    assert "\n" not in message and nobody in message and "spam-filter version 1" in message


# -- the Kubeflow Model Registry --------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["v1", "v1alpha3"])
def test_a_version_lands_in_the_kubeflow_model_registry(api_version, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    version = _register(registry, tmp_path, "a")
    with FakeModelRegistry() as fake:
        target = {"url": fake.url + "/", "author": "ml-platform", "api_version": api_version}
        config = _config(registry.uri, export={"kubeflow_model_registry": target},
                         cluster={"s3_secret_name": "team-s3", "namespace": "team"})  # fmt: skip
        done = export_version(config, version, "run-7")
        assert done == {"kubeflow_model_registry": f"{fake.url}: spam-filter 1 (model version 2)"}
        again = export_version(config, version, "run-7")  # a retried task: found, nothing added
        assert again == done
    assert fake.api_versions == {api_version}
    assert all(request.headers["Authorization"] == "Bearer sa-token-123" for request in fake.requests)
    (model,) = fake.models.values()
    assert model["name"] == "spam-filter" and model["owner"] == "ml-platform"
    (model_version,) = fake.versions.values()
    assert model_version["name"] == "1" and model_version["registeredModelId"] == model["id"]
    assert model_version["author"] == "ml-platform"
    properties = model_version["customProperties"]
    assert properties["metric_accuracy"] == {"metadataType": "MetadataDoubleValue", "double_value": 0.875}
    assert properties["metric_f1_macro"]["double_value"] == 0.8125 and "metric_per_class" not in properties
    assert properties["ftpipe_run_id"] == {"metadataType": "MetadataStringValue", "string_value": "run-7"}
    assert properties["ftpipe_model_uri"]["string_value"] == version.model_uri
    assert properties["ftpipe_data_fingerprint"]["string_value"] == "fp-1"
    (artifact,) = fake.artifacts[model_version["id"]]
    assert artifact["uri"] == version.model_uri and artifact["artifactType"] == "model-artifact"
    assert artifact["modelFormatName"] == "huggingface" and artifact["modelFormatVersion"]
    assert (artifact["modelSourceKind"], artifact["modelSourceClass"]) == ("kfp", "pipelinerun")
    assert (artifact["modelSourceId"], artifact["modelSourceGroup"]) == ("run-7", "team")
    assert artifact["storageKey"] == "team-s3"


def _evaluation(model_uri: str) -> EvaluateResult:
    return EvaluateResult(
        model_uri=model_uri, test_uri="s3://ftpipe/runs/r1/test.parquet", task="text_classification",
        labels=["ham", "spam"], primary_metric="f1_macro", metrics=METRICS, confusion_matrix=[[5, 0], [1, 4]],
        production=None, gate_metric="f1_macro", gate_passed=True, reasons=["passed"],
        report_html_uri="r.html", report_markdown_uri="r.md", report_json_uri="r.json", predictions_uri="p.parquet",
    )  # fmt: skip


LINEAGE = {"data_fingerprint": "fp-1", "base_model": "tiny", "base_model_source": "/models/tiny"}


def test_register_model_exports_after_its_commit_and_a_refusal_only_warns(tiny_bert_dir, tmp_path, caplog):
    from split_files import load_classifier

    trained = tmp_path / "trained"
    load_classifier(tiny_bert_dir, id2label={0: "ham", 1: "spam"}).save_pretrained(trained)
    with FakeModelRegistry() as fake:
        target = {"url": fake.url, "author": "ml-platform"}
        config = _config(str(tmp_path / "registry"), export={"kubeflow_model_registry": target})
        result = register_model.run(config, str(trained), _evaluation(str(trained)), dict(LINEAGE), "run-1")
        (model_version,) = fake.versions.values()
        (artifact,) = fake.artifacts[model_version["id"]]
        assert artifact["uri"] == result.model_uri and artifact["modelSourceId"] == "run-1"

        fake.refuse = 503
        with caplog.at_level(logging.WARNING):
            second = register_model.run(config, str(trained), _evaluation(str(trained)), dict(LINEAGE), "run-2")
    assert second.version == 2 and second.aliases_set == ["staging"]  # registered all the same
    warnings = [record.getMessage() for record in caplog.records if record.name == "ftpipe.export"]
    assert len(warnings) == 1 and "HTTP 503" in warnings[0] and fake.url in warnings[0]
    assert len(fake.versions) == 1


def test_registry_sync_exports_a_version_again_and_fails_in_one_line(tmp_path, capsys):
    registry = ModelRegistry(Storage(), str(tmp_path / "registry"))
    _register(registry, tmp_path, "a")
    with FakeModelRegistry() as fake:
        config_file = tmp_path / "run.yaml"
        config_file.write_text(yaml.safe_dump({
            "data": {"uri": "x.csv"}, "registry": {"uri": registry.uri, "model_name": "spam-filter"},
            "candidates": [{"name": "tiny", "source": "unused"}],
            "export": {"kubeflow_model_registry": {"url": fake.url, "author": "me"}},
        }))  # fmt: skip
        assert cli.main(["registry", "sync", "spam-filter", "1", "--config", str(config_file)]) == 0
        assert capsys.readouterr().out.strip() == f"spam-filter version 1: {fake.url}: spam-filter 1 (model version 2)"
        fake.refuse = 401
        assert cli.main(["registry", "sync", "spam-filter", "1", "--config", str(config_file)]) == 2
        error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "HTTP 401" in error[0] and "Kubeflow Model Registry" in error[0]
    with pytest.raises(RegistryError):
        export_version(_config(registry.uri, export={"kubeflow_model_registry": {"url": fake.url, "author": "me"}}),
                       registry.get_version("spam-filter", 1), "run-7", strict=True)  # fmt: skip
