"""KFP component: the trials of one sweep rung, as a list the DAG's ParallelFor runs."""

from typing import NamedTuple

from kfp import dsl

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def plan_trials(
    config_json: str, run_id: str, rung: int, after: list
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("trials", list), ("sweep_uri", str)]):
    """``after``: the rung below's trial outcomes (only so that this rung waits for them; rung 0: []).

    ``sweep_uri`` goes to the trials: inside a ParallelFor, KFP's local runner gives the run id an iteration suffix.
    """
    from ftpipe import task
    from ftpipe.steps import plan_trials as step
    from ftpipe.sweep import sweep_uri

    result = task.run_step(
        "plan_trials",
        config_json,
        run_id,
        lambda config, out, storage: step.run(config, rung, sweep_uri(config, run_id), storage=storage),
    )
    if isinstance(result, task.Stopped):
        return result.outputs(trials=[], sweep_uri="")
    return task.succeeded(result.trials, result.sweep_uri)
