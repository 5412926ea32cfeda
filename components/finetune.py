"""KFP component: fine-tune the selected model with a new classification head."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def finetune(
    config_json: str,
    run_id: str,
    cleaned: Input[Dataset],
    selection: Input[Artifact],
    model: Output[Model],
    training_metrics: Output[Metrics],
    report: Output[HTML],
    report_markdown: Output[Markdown],
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str)]):
    from ftpipe import task
    from ftpipe.results import CleanDataResult, SelectModelResult
    from ftpipe.steps import finetune as step

    data = task.read_result(cleaned, CleanDataResult)
    chosen = task.read_result(selection, SelectModelResult)
    result = task.run_step(
        "finetune",
        config_json,
        run_id,
        lambda config, out, storage: step.run(
            config,
            chosen.train_uri or data.train_uri,  # select_model's copy without suspected mislabels (quarantine)
            data.validation_uri,
            data.labels,
            chosen.selected,
            out,
            storage=storage,
            run_id=run_id,
        ),
        step.LIBRARIES,
    )
    if isinstance(result, task.Stopped):
        return result.outputs(model, training_metrics, report, report_markdown)
    task.write_result(model, result, model_uri=result.model_uri, base_model=result.base_model_source)
    task.log_metrics(
        training_metrics,
        {
            f"best_validation_{result.best_metric_name}": result.best_metric_value,
            "epochs_trained": result.epochs_trained,
            "train_examples_per_second": result.train_examples_per_second,
        },
    )
    task.copy_report(config_json, result.report_html_uri, report)
    task.copy_report(config_json, result.report_markdown_uri, report_markdown)
    return task.succeeded()
