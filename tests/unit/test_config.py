"""Config files: valid ones load, every invalid fixture fails with a message naming the field path."""

from pathlib import Path

import pytest

from ftpipe.config import config_from_json, config_schema, load_config, parse_config
from ftpipe.errors import ConfigError

CONFIGS = Path(__file__).parents[1] / "assets" / "configs"
INVALID = sorted((CONFIGS / "invalid").glob("*.yaml"))
EXAMPLES = sorted((Path(__file__).parents[2] / "pipelines" / "examples").glob("*.yaml"))


def test_minimal_config_fills_documented_defaults():
    config = load_config(CONFIGS / "valid-minimal.yaml")
    assert config.training.epochs is None and config.training.learning_rate is None  # fitted to the data
    assert config.cleaning.unicode_form == "NFKC"
    assert config.tokenizer_source == "./models/tiny"
    assert config.cluster.s3_secret_name == "ftpipe-s3-credentials"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    load_config(path)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_configs_fail_with_the_field_path(path):
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_missing_and_malformed_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_config_round_trips_through_the_pipeline_parameter():
    config = load_config(CONFIGS / "valid-minimal.yaml")
    assert config_from_json(config.to_json()) == config


def test_schema_documents_every_field():
    schema = config_schema()
    training = schema["$defs"]["FinetuneConfig"]["properties"]
    assert "learning_rate" in training and "early_stopping_patience" in training
    assert schema["$defs"]["CleanDataConfig"]["properties"]["max_tokens"]["description"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"gate": {"metric": "rmse"}}, "gate.metric"),
        ({"gate": {"thresholds": {"rmse": 0.5}}}, "gate.thresholds.rmse"),
        ({"training": {"metric_for_best_model": "spearman"}}, "training.metric_for_best_model"),
    ],
)
def test_a_metric_the_task_lacks_fails_naming_the_path(section, path):
    base = {"data": {"uri": "x.csv"}, "candidates": [{"name": "a", "source": "a"}], "registry": {"model_name": "m"}}
    with pytest.raises(ConfigError, match=rf"{path}: .* is not a metric of task text_classification"):
        parse_config({**base, **section})


def test_the_task_metrics_default_to_its_primary_one():
    base = {"data": {"uri": "x.csv"}, "candidates": [{"name": "a", "source": "a"}], "registry": {"model_name": "m"}}
    config = parse_config({**base, "training": {"metric_for_best_model": "loss"}})
    assert config.gate_metric == "f1_macro" and config.best_model_metric == "loss"
    assert config.task.direction("loss") == "lower" and config.task.direction("accuracy") == "higher"


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com/prefix", "file:///tmp/mlruns",
                                 "/tmp/mlruns", "mlruns"])
def test_tracking_takes_a_server_or_a_file_store(uri):
    base = {"data": {"uri": "d.csv"}, "candidates": [{"name": "a", "source": "./a"}], "registry": {"model_name": "m"}}
    assert parse_config(base).tracking.mlflow_uri is None  # off by default
    assert parse_config({**base, "tracking": {"mlflow_uri": uri}}).tracking.mlflow_uri == uri
    with pytest.raises(ConfigError, match="tracking.mlflow_uri: .*'http://' names no host"):
        parse_config({**base, "tracking": {"mlflow_uri": "http://"}})
