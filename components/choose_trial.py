"""KFP component: the sweep's winner on validation (never on test), and the sweep report."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Input, Markdown, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def choose_trial(
    config_json: str,
    run_id: str,
    sweep_uri: str,
    trials: Input[list[Model]],
    model: Output[Model],
    report: Output[HTML],
    report_markdown: Output[Markdown],
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("winner", int)]):
    """``trials``: the last rung's trial artifacts; ``model`` gets the winner's fine-tune result, for evaluate."""
    from pathlib import Path

    from ftpipe import task
    from ftpipe.results import TrainTrialResult
    from ftpipe.steps import choose_trial as step

    last_rung = [TrainTrialResult.from_json(text) for text in (Path(t.path).read_text() for t in trials) if text]
    result = task.run_step(
        "choose_trial",
        config_json,
        run_id,
        lambda config, out, storage: step.run(config, last_rung, sweep_uri, storage=storage),
        step.LIBRARIES,
    )
    if isinstance(result, task.Stopped):
        return result.outputs(model, report, report_markdown, winner=-1)
    task.write_result(model, result.finetuned, model_uri=result.finetuned.model_uri, trial=result.winner["trial"])
    task.copy_report(config_json, result.report_html_uri, report)
    task.copy_report(config_json, result.report_markdown_uri, report_markdown)
    return task.succeeded(result.winner["trial"])
