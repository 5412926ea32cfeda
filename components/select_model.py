"""KFP component: rank the candidate models by a cheap probe on the cleaned data."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def select_model(
    config_json: str,
    run_id: str,
    cleaned: Input[Dataset],
    selection: Output[Artifact],
    report: Output[HTML],
    report_markdown: Output[Markdown],
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("selected", str)]):
    """Returns the name of the selected candidate."""
    from ftpipe import task
    from ftpipe.results import CleanDataResult
    from ftpipe.steps import select_model as step

    data = task.read_result(cleaned, CleanDataResult)
    result = task.run_step(
        "select_model",
        config_json,
        run_id,
        lambda config, out, storage: step.run(
            config, data.train_uri, data.validation_uri, data.labels, out, storage=storage
        ),
        step.LIBRARIES,
    )
    if isinstance(result, task.Stopped):
        return result.outputs(selection, report, report_markdown, selected="")
    task.write_result(
        selection,
        result,
        selected=result.selected.name,
        source=result.selected.source,
        num_parameters=result.selected.num_parameters,
        skipped=len(result.skipped),
    )
    task.copy_report(config_json, result.report_html_uri, report)
    task.copy_report(config_json, result.report_markdown_uri, report_markdown)
    return task.succeeded(result.selected.name)
