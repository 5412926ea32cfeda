"""The ftpipe command, called in-process: exit codes and one-line errors."""

import json
from pathlib import Path

import pytest

from ftpipe import __version__
from ftpipe.cli import main

CONFIGS = Path(__file__).parents[1] / "assets" / "configs"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ftpipe {__version__}"


def test_config_validate_and_schema(capsys):
    assert main(["config", "validate", str(CONFIGS / "valid-minimal.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "PipelineConfig"


@pytest.mark.parametrize("path", sorted((CONFIGS / "invalid").glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_config_is_one_line_and_exit_2(path, capsys):
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftpipe: error: invalid config") and err.count("\n") == 1


def test_s3_status_without_a_server(capsys):
    assert main(["s3", "status"]) == 1
    assert "down" in capsys.readouterr().out


def test_registry_against_an_endpoint_that_does_not_answer(monkeypatch, capsys):
    from ftpipe.s3server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main(["registry", "list"]) == 3
    err = capsys.readouterr().err
    assert "does not answer" in err and err.count("\n") == 1


def test_models_derive_keeps_the_first_layers(tiny_bert_dir, tmp_path, capsys):
    from safetensors import safe_open
    from transformers import AutoConfig

    assert main(["models", "derive", tiny_bert_dir, str(tmp_path / "one"), "--layers", "1"]) == 0
    assert AutoConfig.from_pretrained(tmp_path / "one").num_hidden_layers == 1
    with safe_open(tmp_path / "one" / "model.safetensors", "pt") as weights:
        assert not [key for key in weights.keys() if "pooler" in key]  # re-initialised when fine-tuned
    assert main(["models", "derive", tiny_bert_dir, str(tmp_path / "x"), "--layers", "5"]) == 2
    assert "--layers must be between 1 and 1" in capsys.readouterr().err
