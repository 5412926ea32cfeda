"""KFP component: test metrics and the gate against the current production model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate(
    config_json: str,
    run_id: str,
    cleaned: Input[Dataset],
    model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    report_markdown: Output[Markdown],
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("gate_passed", bool)]):
    """Returns whether the gate passed; the reasons are in the evaluation artifact and the report."""
    from ftpipe import task
    from ftpipe.results import CleanDataResult, FinetuneResult
    from ftpipe.steps import evaluate as step

    data = task.read_result(cleaned, CleanDataResult)
    trained = task.read_result(model, FinetuneResult)
    result = task.run_step(
        "evaluate",
        config_json,
        run_id,
        lambda config, out, storage: step.run(
            config,
            data.test_uri,
            data.labels,
            trained.model_uri,
            out,
            storage=storage,
            run_id=run_id,
            train_uri=data.train_uri,  # the baselines are fitted on it
        ),
        step.LIBRARIES,
    )
    if isinstance(result, task.Stopped):
        return result.outputs(evaluation, metrics, confusion, report, report_markdown, gate_passed=False)
    task.write_result(evaluation, result, gate_passed=result.gate_passed, gate_reasons="\n".join(result.reasons))
    task.log_metrics(metrics, result.metrics)  # the task's scalar metrics; details (per class, ...) are in the report
    for baseline in result.baselines:  # beside the model's, as the report has them
        task.log_metrics(metrics, {f"baseline_{baseline.name}_{key}": value for key, value in baseline.metrics.items()})
    if result.production is not None:
        metrics.log_metric("production_version", result.production.version)
    if result.confusion_matrix:  # only tasks with one confusion matrix (single-label classification) have it
        confusion.log_confusion_matrix(result.labels, result.confusion_matrix)
    task.copy_report(config_json, result.report_html_uri, report)
    task.copy_report(config_json, result.report_markdown_uri, report_markdown)
    return task.succeeded(result.gate_passed)
