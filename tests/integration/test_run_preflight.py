"""`ftpipe run --local` refuses to start, with one line, when storage or the data cannot be reached."""

import pytest
import yaml

from ftpipe import s3server
from ftpipe.cli import main


@pytest.fixture
def config_file(tmp_path):
    def write(**storage):
        config = {
            "data": {"uri": "s3://ftpipe/preflight/data.csv"},
            "candidates": [{"name": "m", "source": str(tmp_path)}],
            "registry": {"uri": "s3://ftpipe/preflight/registry", "model_name": "m"},
            "storage": {"artifact_root": "s3://ftpipe/preflight/runs", "max_attempts": 1, **storage},
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    return write


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_endpoint_that_does_not_answer(config_file, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    path = config_file(endpoint_url=f"http://127.0.0.1:{s3server.free_port()}")
    assert main(["run", "--local", "--config", path]) == 3
    assert "does not answer" in _one_line(capsys)


def test_refused_credentials(config_file, s3_env, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    assert main(["run", "--local", "--config", config_file()]) == 3
    assert "refused the credentials" in _one_line(capsys)


def test_missing_dataset(config_file, s3_env, capsys):
    assert main(["run", "--local", "--config", config_file()]) == 3
    assert "dataset not found: s3://ftpipe/preflight/data.csv" in _one_line(capsys)
