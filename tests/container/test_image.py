"""The component image, built for real, and one pipeline component run inside it as KFP would run it.

The clean_data task (and the tasks it takes parameters from) is taken from the compiled pipeline: its
executor's container command and args (KFP's own lightweight-component bootstrap, then
``python3 -m kfp.dsl.executor_main``), with the executor input a KFP launcher would pass: its
parameters (the ``config_json`` pipeline parameter, upstream tasks' outputs), output artifact URIs
under the pipeline root (``s3://...`` URIs, which the executor maps to ``/s3/...`` paths, here a
mounted folder), the output parameter and executor output files. The container reaches
the real SeaweedFS test server over the host network, with the AWS_* variables a cluster would take
from the Secret.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import yaml

from ftpipe import __version__
from ftpipe.config import parse_config

ASSETS = Path(__file__).parents[1] / "assets"
SAMPLE = ASSETS / "sms-spam-sample.csv"


def _inspect(docker_engine, image: str) -> dict:
    return json.loads(docker_engine.run("image", "inspect", image).stdout)[0]


def _in_image(docker_engine, image: str, *command: str, **kwargs) -> str:
    return docker_engine.run("run", "--rm", "--network", "none", image, *command, **kwargs).stdout


def test_ftpipe_version_inside_the_image(docker_engine, ftpipe_image):
    assert ftpipe_image == f"ftpipe:{__version__}"
    assert _in_image(docker_engine, ftpipe_image, "ftpipe", "--version").strip() == f"ftpipe {__version__}"


def test_image_is_labelled_with_the_version_and_runs_offline_as_non_root(docker_engine, ftpipe_image):
    config = _inspect(docker_engine, ftpipe_image)["Config"]
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    assert "HF_HUB_OFFLINE=1" in config["Env"]
    assert config["User"] and config["User"].split(":")[0] not in ("", "0", "root")
    ids = _in_image(docker_engine, ftpipe_image, "sh", "-c", "id -u; id -g").split()
    assert ids[0] != "0" and ids[1] != "0"


def test_final_image_has_no_build_tools_caches_or_build_inputs(docker_engine, ftpipe_image):
    script = r"""
        for tool in gcc cc c++ g++ make; do command -v "$tool" && echo "TOOL $tool"; done
        for dir in /root/.cache/pip /home/ftpipe/.cache/pip /tmp/context /tmp/src /var/lib/apt/lists; do
            [ -n "$(ls -A "$dir" 2>/dev/null)" ] && echo "NONEMPTY $dir"
        done
        find / -xdev \( -name '*.whl' -o -name 'ca-bundle.crt' \) -print 2>/dev/null | sed 's/^/FILE /'
        true
    """
    found = _in_image(docker_engine, ftpipe_image, "sh", "-c", script).split("\n")
    assert [line for line in found if line.strip()] == []


def test_kfp_and_the_project_packages_are_installed_not_editable(docker_engine, ftpipe_image):
    script = (
        "import json, torch, kfp, ftpipe, components.clean_data, pipelines.ftpipe_pipeline;"
        "print(json.dumps([torch.__version__, kfp.__version__, ftpipe.__file__, components.__file__,"
        " pipelines.__file__]))"
    )
    torch_version, kfp_version, *files = json.loads(_in_image(docker_engine, ftpipe_image, "python3", "-c", script))
    assert torch_version.startswith("2.13.0")
    assert kfp_version == "2.17.3"
    assert all(path.startswith("/opt/ftpipe/lib/python3.11/site-packages/") for path in files), files


def _executor_input(component: dict, parameters: dict[str, str], pipeline_root: str, out: str) -> dict:
    """The executor input a KFP launcher hands a task: inputs, output artifacts under the root, files."""
    outputs = component["outputDefinitions"]
    return {
        "inputs": {"parameterValues": parameters},
        "outputs": {
            "artifacts": {
                name: {
                    "artifacts": [
                        {
                            "name": name,
                            "type": spec["artifactType"],
                            "uri": f"{pipeline_root}/{name}",
                            "metadata": {},
                        }
                    ]
                }
                for name, spec in outputs.get("artifacts", {}).items()
            },
            "parameters": {name: {"outputFile": f"{out}/parameters/{name}"} for name in outputs.get("parameters", {})},
            "outputFile": f"{out}/executor_output.json",
        },
    }


@pytest.fixture
def cleaning_inputs(s3_env, s3_storage, tiny_bert_dir):
    """The sample SMS data and a tiny tokenizer in S3, and a config that reads them."""
    key = uuid.uuid4().hex[:8]
    data_uri = f"s3://data/container-{key}/sms-spam-sample.csv"
    model_uri = f"s3://ftpipe/container-{key}/models/tiny-bert"
    s3_storage.upload_file(SAMPLE, data_uri)
    s3_storage.upload_dir(tiny_bert_dir, model_uri)
    return parse_config(
        {
            "data": {
                "uri": data_uri,
                "text_column": "text",
                "label_column": "spam",
                "labels": ["ham", "spam"],
                "label_mapping": {"0": "ham", "1": "spam"},
            },
            "cleaning": {"max_tokens": 256},
            "candidates": [{"name": "tiny-bert", "source": model_uri}],
            "registry": {"uri": f"s3://ftpipe/container-{key}/registry", "model_name": "sms-spam"},
            "storage": {"artifact_root": f"s3://ftpipe/container-{key}/runs"},
            "cluster": {"gpu_count": 0},
        }
    )


class _PipelineInContainers:
    """Runs tasks of a compiled pipeline in the image as a KFP launcher would: the executor's own container
    command and args, the executor input (parameters resolved from the pipeline parameters and the
    upstream tasks' outputs, output artifacts under an s3:// pipeline root that the executor maps to
    /s3/...), the task's environment variables, the S3 credentials from the environment."""

    def __init__(self, docker_engine, image: str, spec: dict, parameters: dict, tmp_path: Path):
        self.docker, self.image, self.spec, self.tmp_path = docker_engine, image, spec, tmp_path
        defaults = {name: definition.get("defaultValue")
                    for name, definition in spec["root"].get("inputDefinitions", {}).get("parameters", {}).items()}
        self.parameters = {**defaults, **parameters}
        self.run_id = f"container-{uuid.uuid4().hex[:8]}"
        self.outputs: dict[str, dict] = {}  # task -> its executor output
        # Every task, wherever it sits (the steps are nested in the If/Else guards that follow each one).
        self.tasks = dict(spec["root"]["dag"]["tasks"])
        for component in spec["components"].values():
            self.tasks.update(component.get("dag", {}).get("tasks", {}))

    def _channel(self, channel: str):
        """A parameter handed into a condition group: a pipeline parameter, or ``<task>-<output>`` of a task."""
        name = channel.removeprefix("pipelinechannel--")
        if name in self.parameters:
            return self.parameters[name]
        producer = max((task for task in self.tasks if name.startswith(f"{task}-")), key=len)
        return self.run(producer)["parameterValues"][name.removeprefix(f"{producer}-")]

    def run(self, name: str) -> dict:
        """Run ``name`` (its upstream tasks first) and return its executor output."""
        if name in self.outputs:
            return self.outputs[name]
        task = self.tasks[name]
        assert not task.get("inputs", {}).get("artifacts"), f"{name}: artifact inputs are not wired up here"
        values = {}
        for parameter, source in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in source:
                values[parameter] = self._channel(source["componentInputParameter"])
            elif "taskOutputParameter" in source:
                producer = source["taskOutputParameter"]
                upstream = self.run(producer["producerTask"])
                values[parameter] = upstream["parameterValues"][producer["outputParameterKey"]]
            else:
                constant = source["runtimeValue"]["constant"]
                values[parameter] = self.run_id if isinstance(constant, str) and "{{$" in constant else constant
        component = self.spec["components"][task["componentRef"]["name"]]
        container = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        assert container["image"] == self.image
        pipeline_root = f"s3://mlpipeline/v2/artifacts/{self.run_id}/{name}"
        out = f"/kfp-outputs/{name}"
        executor_input = _executor_input(component, values, pipeline_root, out)
        args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in container["args"]]
        assert "{{$}}" in container["args"] and not any("{{$" in arg for arg in args)
        mounts = {"s3": self.tmp_path / "s3", "kfp-outputs": self.tmp_path / "kfp-outputs"}
        for directory in mounts.values():
            directory.mkdir(exist_ok=True)
            directory.chmod(0o777)  # the image's user (not root) writes here, as in a pod's emptyDir
        secrets = {name: os.environ[name] for name in
                   ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        task_env = [f"{env['name']}={env['value']}" for env in container.get("env", [])]
        result = self.docker.run(
            "run", "--rm", "--network", "host",
            *(flag for name in secrets for flag in ("-e", name)),  # values from the environment, not argv
            *(flag for value in task_env for flag in ("-e", value)),
            *(flag for target, source in mounts.items() for flag in ("-v", f"{source}:/{target}")),
            "--entrypoint", container["command"][0],
            self.image, *container["command"][1:], *args,
            env=secrets, timeout=600, check=False,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        self.outputs[name] = json.loads((self.tmp_path / out.lstrip("/") / "executor_output.json").read_text())
        self.outputs[name]["artifact_dir"] = mounts["s3"] / pipeline_root.removeprefix("s3://")
        return self.outputs[name]


def test_clean_data_component_runs_in_the_container_as_kfp_runs_it(
    docker_engine, ftpipe_image, cleaning_inputs, s3_env, s3_storage, tmp_path
):
    from pipelines.runner import compile_pipeline

    config = cleaning_inputs
    compiled = compile_pipeline(config, tmp_path / "pipeline.yaml", image=ftpipe_image)
    spec = next(yaml.safe_load_all(compiled.read_text()))
    runner = _PipelineInContainers(docker_engine, ftpipe_image, spec, {"config_json": config.to_json()}, tmp_path)
    executor_output = runner.run("clean-data")  # and whatever it takes parameters from, first

    # KFP's outputs: the fingerprint parameter, the artifacts under the pipeline root.
    assert executor_output["parameterValues"]["ok"] is True and executor_output["parameterValues"]["problem"] == ""
    fingerprint = executor_output["parameterValues"]["fingerprint"]
    assert isinstance(fingerprint, str) and fingerprint
    artifact_dir = executor_output["artifact_dir"]
    cleaned = json.loads((artifact_dir / "cleaned").read_text())
    assert cleaned["fingerprint"] == fingerprint
    assert "<html" in (artifact_dir / "report").read_text().lower()
    assert (artifact_dir / "report_markdown").read_text().strip()

    # The step's own outputs, written by the container to the real S3 server under the run's artifact root.
    output_uri = cleaned["output_uri"].rstrip("/")
    assert output_uri.startswith(config.storage.artifact_root + "/") and output_uri.endswith("clean_data")
    written = {uri.removeprefix(output_uri + "/") for uri in s3_storage.list(output_uri)}
    expected = {"train.parquet", "validation.parquet", "test.parquet", "quarantine.parquet", "report.json",
                "report.md", "report.html"}
    assert expected <= written, written
    import pandas as pd

    with s3_storage.local_copy(cleaned["train_uri"]) as train_path:
        train = pd.read_parquet(train_path)
    assert len(train) > 300 and set(train.columns) >= {"text", "label"}
    assert set(train["label"]) == {"ham", "spam"}
