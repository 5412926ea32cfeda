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


def _conditions_above(spec: dict) -> dict[str, list[str]]:
    """Each task's name, with the trigger conditions of the groups it sits in, outermost first."""
    found: dict[str, list[str]] = {}

    def walk(dag: dict, conditions: list[str]) -> None:
        for name, task in dag["tasks"].items():
            found[name] = conditions
            inner = spec["components"][task["componentRef"]["name"]].get("dag")
            if inner is not None:
                condition = task.get("triggerPolicy", {}).get("condition")  # none on an If/Else pair's group
                walk(inner, [*conditions, condition] if condition else conditions)

    walk(spec["root"]["dag"], [])
    return found


def test_compiled_pipeline_loads_back_with_every_step_and_its_conditions(tmp_path):
    output = _compile(tmp_path)
    loaded = kfp_components.load_component_from_file(str(output))
    assert loaded.name == "ftpipe-sms-spam"
    spec = yaml.safe_load(output.read_text().split("\n---\n")[0])
    tasks = _all_tasks(spec)
    assert STEPS <= set(tasks)
    above = _conditions_above(spec)

    def ok(step: str) -> str:
        return f"inputs.parameter_values['pipelinechannel--{step}-ok'] == true"

    changed = "inputs.parameter_values['pipelinechannel--compare-data-changed'] == true"
    gate = "inputs.parameter_values['pipelinechannel--evaluate-gate_passed'] == true"
    assert above["fingerprint-data"] == []
    assert above["select-model"] == [ok("fingerprint-data"), ok("clean-data"), ok("compare-data"), changed]
    assert above["finetune"] == [*above["select-model"], ok("select-model")]
    assert above["register-model"] == [*above["finetune"], ok("finetune"), ok("evaluate"), gate]
    model = tasks["evaluate"]["inputs"]["artifacts"]["model"]  # from finetune, through the conditions above it
    assert model["componentInputArtifact"] == "pipelinechannel--finetune-model"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"config_json", "force_retrain"}


def test_a_step_that_meets_a_user_error_ends_the_run_in_stop_run_without_retries(tmp_path):
    """Every step but the last is followed by an If on its `ok` output, whose Else stops the run (defect 3)."""
    spec = yaml.safe_load(_compile(tmp_path).read_text().split("\n---\n")[0])
    tasks = _all_tasks(spec)
    above = _conditions_above(spec)
    stops = {task["taskInfo"]["name"]: (key, task) for key, task in tasks.items() if key.startswith("stop-run")}
    assert set(stops) == {f"stop_run ({step.replace('-', '_')})" for step in STEPS}
    for step in STEPS:
        key, stop = stops[f"stop_run ({step.replace('-', '_')})"]
        problem = stop["inputs"]["parameters"]["problem"]
        assert problem.get("taskOutputParameter", {}).get("producerTask") == step or problem.get(
            "componentInputParameter"
        ) == f"pipelinechannel--{step}-problem"
        assert "retryPolicy" not in stop and not stop.get("cachingOptions", {}).get("enableCache")
        if step != "register-model":  # the last step: its stop_run always runs, and succeeds on no problem
            assert above[key] == [*above[step], f"!(inputs.parameter_values['pipelinechannel--{step}-ok'] == true)"]
    assert all(tasks[step]["retryPolicy"]["maxRetryCount"] > 0 for step in STEPS)


def test_only_clean_data_is_cached_and_on_the_data_key(tmp_path):
    tasks = _all_tasks(yaml.safe_load(_compile(tmp_path).read_text().split("\n---\n")[0]))
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"clean-data"}
    clean_inputs = tasks["clean-data"]["inputs"]["parameters"]
    assert clean_inputs["data_key"]["componentInputParameter"] == "pipelinechannel--fingerprint-data-key"
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
    assert tasks["clean-data"]["retryPolicy"]["backoffDuration"] == "30s"


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


def test_a_sweep_compiles_to_one_parallel_for_per_rung_feeding_the_winner_to_evaluate(tmp_path):
    output = tmp_path / "sweep.yaml"
    example = Path(__file__).parents[2] / "pipelines" / "examples" / "sms-spam-sweep.yaml"
    assert main(["compile", "--config", str(example), "-o", str(output)]) == 0
    spec = yaml.safe_load(output.read_text().split("\n---\n")[0])
    tasks = _all_tasks(spec)
    loops = {key: task for key, task in tasks.items() if "parameterIterator" in task}
    assert len(loops) == 2  # the two rungs
    assert {task["parameterIterator"]["items"]["inputParameter"] for task in loops.values()} == {
        "pipelinechannel--plan-trials-trials",
        "pipelinechannel--plan-trials-2-trials",
    }
    assert "finetune" not in tasks and {"plan-trials", "plan-trials-2", "choose-trial"} <= set(tasks)
    model = tasks["evaluate"]["inputs"]["artifacts"]["model"]
    assert model["componentInputArtifact"] == "pipelinechannel--choose-trial-model"
    platform = list(yaml.safe_load_all(output.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    assert platform["executors"]["exec-train-trial"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}


def test_training_pods_carry_the_grace_period_label_and_a_trainjob_launcher_takes_no_gpu(tmp_path):
    from pipelines.ftpipe_pipeline import TRAINING_POD_LABEL

    one_node = list(yaml.safe_load_all(_compile(tmp_path).read_text()))
    platform = one_node[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-finetune"]["podMetadata"]["labels"] == dict([TRAINING_POD_LABEL])
    assert "podMetadata" not in platform["exec-evaluate"]

    config = yaml.safe_load(EXAMPLE.read_text())
    config["cluster"] = {**config.get("cluster", {}), "nodes": 2, "gpu_count": 8}
    several = tmp_path / "several-nodes.yaml"
    several.write_text(yaml.safe_dump(config))
    output = tmp_path / "several.yaml"
    assert main(["compile", "--config", str(several), "-o", str(output)]) == 0
    documents = list(yaml.safe_load_all(output.read_text()))
    launcher = documents[0]["deploymentSpec"]["executors"]["exec-finetune"]["container"]
    assert "accelerator" not in launcher.get("resources", {})  # the TrainJob's pods hold the GPUs, not the launcher
    launcher_platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    assert "nodeSelector" not in launcher_platform and "tolerations" not in launcher_platform
    assert "secretAsEnv" in launcher_platform  # it still writes the TrainJob's spec to S3
