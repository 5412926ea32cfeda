"""KFP component: the key clean_data is cached on (input ETags and the cleaning recipe)."""

from typing import NamedTuple

from kfp import dsl

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def fingerprint_data(config_json: str, run_id: str) -> NamedTuple(
    "Outputs", [("ok", bool), ("problem", str), ("key", str), ("seconds", float)]
):
    """Returns the key and the step's wall seconds (for the run's cost line); never cached itself, since it is what
    detects new data under the same URI."""
    from ftpipe import task
    from ftpipe.steps import fingerprint_data as step

    result = task.run_step(
        "fingerprint_data", config_json, run_id, lambda config, out, storage: step.run(config, storage)
    )
    if isinstance(result, task.Stopped):
        return result.outputs(key="", seconds=0.0)
    return task.succeeded(result.key, result.wall_seconds)
