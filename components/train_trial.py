"""KFP component: fine-tune one trial of a sweep and record how it did."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_trial(
    config_json: str,
    run_id: str,
    trial: dict,
    sweep_uri: str,
    cleaned: Input[Dataset],
    selection: Input[Artifact],
    model: Output[Model],
) -> str:
    """Returns the trial's state (``complete`` or ``failed``); a failed trial does not stop the sweep."""
    from ftpipe import task
    from ftpipe.results import CleanDataResult, SelectModelResult
    from ftpipe.steps import train_trial as step
    from ftpipe.sweep import PlannedTrial

    data = task.read_result(cleaned, CleanDataResult)
    chosen = task.read_result(selection, SelectModelResult)
    planned = PlannedTrial.model_validate(trial)
    result = task.run_step(
        "train_trial",
        config_json,
        run_id,
        lambda config, out, storage: step.run(
            config,
            planned,
            chosen.train_uri or data.train_uri,  # select_model's copy without suspected mislabels (quarantine)
            data.validation_uri,
            data.labels,
            data.counts["train"] if chosen.train_rows is None else chosen.train_rows,
            chosen.selected,
            sweep_uri,
            storage=storage,
            run_id=run_id,
        ),
        step.LIBRARIES,
    )
    if isinstance(result, task.Stopped):  # not even the trial's config could be built: a failed trial
        result.outputs(model)
        return "failed"
    task.write_result(model, result, trial=planned.trial, rung=planned.rung, state=result.record["state"])
    return result.record["state"]
