"""`ftpipe serve-manifest` on a registry on the real S3 server: the production version's InferenceService, written
to a file that validates against KServe's CRD schema, with its storageUri the version's S3 prefix and no credential.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from ftpipe import cli
from ftpipe.registry import ModelRegistry

SCHEMA = Path(__file__).parents[2] / "k8s" / "schemas" / "inferenceservice-v1beta1.json"


def test_the_production_versions_manifest_from_an_s3_registry(s3_storage, s3_server, tmp_path, capsys):
    registry = ModelRegistry(s3_storage, f"s3://ftpipe/serve-{uuid.uuid4().hex[:8]}")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"]}))
    (model / "model.safetensors").write_bytes(b"w" * 64)
    for run in ("run-1", "run-2"):
        registry.register("ner", model, {"run_id": run, "task": "token_classification"}, "# card", key=run)
    registry.set_alias("ner", "production", 1)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "task": {"type": "token_classification"},
        "data": {"uri": "x.conll"}, "registry": {"uri": registry.uri, "model_name": "ner"},
        "candidates": [{"name": "tiny", "source": "unused"}],
        "storage": {"endpoint_url": s3_server.endpoint_url},
        "cluster": {"namespace": "ml", "node_selector": {"pool": "gpu"}},
    }))  # fmt: skip
    output = tmp_path / "out" / "ner.yaml"

    assert cli.main(["serve-manifest", "ner", "--config", str(config), "-o", str(output)]) == 0
    assert "ner version 1" in capsys.readouterr().out
    documents = list(yaml.safe_load_all(output.read_text()))
    isvc = documents[-1]
    assert isvc["kind"] == "InferenceService" and isvc["metadata"]["namespace"] == "ml"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == registry.get_version("ner", 1).model_uri
    assert "--task=token_classification" in isvc["spec"]["predictor"]["model"]["args"]
    text = output.read_text()
    assert s3_server.access_key_id not in text and s3_server.secret_access_key not in text
    checker = Path(sys.executable).parent / "check-jsonschema"
    checker = str(checker) if checker.exists() else shutil.which("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (make install adds it to .venv)")
    isvc_file = tmp_path / "isvc.json"
    isvc_file.write_text(json.dumps(isvc))
    checked = subprocess.run([checker, "--schemafile", str(SCHEMA), str(isvc_file)], capture_output=True, text=True,
                             timeout=300, env={**os.environ})  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert cli.main(["serve-manifest", "ner", "--version", "2", "--config", str(config)]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed[-1]["metadata"]["labels"]["ftpipe.io/model-version"] == "2"
