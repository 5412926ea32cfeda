"""`ftpipe compile`: the YAML a platform engineer uploads, loaded back with the KFP SDK."""

from pathlib import Path

import yaml
from kfp import components as kfp_components

from ftpipe.cli import main

EXAMPLE = Path(__file__).parents[2] / "pipelines" / "examples" / "sms-spam.yaml"
STEPS = {"fingerprint-data", "clean-data", "compare-data", "select-model", "finetune", "evaluate", "register-model"}


def _compile(tmp_path, *extra):
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--config", str(EXAMPLE), "-o", str(output), *extra]) == 0
    return output


def _all_tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_compiled_pipeline_loads_back_with_every_step_and_both_conditions(tmp_path):
    output = _compile(tmp_path)
    loaded = kfp_components.load_component_from_file(str(output))
    assert loaded.name == "ftpipe-sms-spam"
    spec = yaml.safe_load(output.read_text().split("\n---\n")[0])
    tasks = _all_tasks(spec)
    assert STEPS <= set(tasks)
    data_changed = spec["root"]["dag"]["tasks"]["condition-1"]
    assert "compare-data-Output" in data_changed["triggerPolicy"]["condition"]
    training = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert {"select-model", "finetune", "evaluate", "condition-2"} <= set(training)
    assert "evaluate-Output" in training["condition-2"]["triggerPolicy"]["condition"]
    assert "register-model" in spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(tasks["evaluate"]["dependentTasks"]) == {"finetune"}
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"config_json", "force_retrain"}


def test_only_clean_data_is_cached_and_on_the_data_key(tmp_path):
    tasks = _all_tasks(yaml.safe_load(_compile(tmp_path).read_text().split("\n---\n")[0]))
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"clean-data"}
    clean_inputs = tasks["clean-data"]["inputs"]["parameters"]
    assert clean_inputs["data_key"]["taskOutputParameter"]["producerTask"] == "fingerprint-data"
    assert "run_id" not in clean_inputs  # a per-run input would make the cache never hit


def test_gpu_node_settings_go_to_finetune_only(tmp_path):
    output = _compile(tmp_path)
    documents = list(yaml.safe_load_all(output.read_text()))
    executors = documents[0]["deploymentSpec"]["executors"]
    finetune = executors["exec-finetune"]["container"]
    assert finetune["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert str(finetune["resources"]["accelerator"]["resourceCount"]) == "1"
    assert "accelerator" not in executors["exec-evaluate"]["container"].get("resources", {})
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-finetune"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert platform["exec-finetune"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeSelector" not in platform["exec-clean-data"]


def test_every_task_reads_s3_credentials_from_the_named_secret_and_no_value_leaks(tmp_path, monkeypatch):
    secret_value = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-must-not-leak")
    output = _compile(tmp_path, "--image", "registry.example.com/ftpipe:9.9.9")
    text = output.read_text()
    assert secret_value not in text and "AKIA-must-not-leak" not in text
    documents = list(yaml.safe_load_all(text))
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in {f"exec-{step}" for step in STEPS}:
        secret = platform[name]["secretAsEnv"][0]
        assert secret["secretName"] == "ftpipe-s3-credentials"
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    executors = documents[0]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example.com/ftpipe:9.9.9"}


def test_retries_are_set_with_backoff(tmp_path):
    spec = yaml.safe_load(_compile(tmp_path).read_text().split("\n---\n")[0])
    tasks = _all_tasks(spec)
    assert tasks["finetune"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["clean-data"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["clean-data"]["retryPolicy"]["backoffFactor"] == 2.0


def test_compile_of_an_invalid_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {uri: x.csv}\ncandidates: []\nregistry: {model_name: m}\n")
    assert main(["compile", "--config", str(bad), "-o", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "candidates" in err
    assert not (tmp_path / "p.yaml").exists()


def test_every_task_shows_its_step_name_in_the_kfp_ui(tmp_path):
    tasks = _all_tasks(yaml.safe_load(_compile(tmp_path).read_text().split("\n---\n")[0]))
    names = {key: task["taskInfo"]["name"] for key, task in tasks.items() if key in STEPS}
    assert names == {step: step.replace("-", "_") for step in STEPS}
