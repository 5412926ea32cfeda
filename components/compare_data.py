"""KFP component: has the cleaned data changed, or drifted, since the production model was trained?"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def compare_data(
    config_json: str,
    run_id: str,
    cleaned: Input[Dataset],
    force: bool,
    decision: Output[Markdown],
    report: Output[HTML],
    metrics: Output[Metrics],
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("changed", bool), ("seconds", float)]):
    """Returns True when fine-tuning should run, and the step's wall seconds (for the run's cost line); the decision
    says why, the report and metrics show the drift check."""
    import re

    from ftpipe import task
    from ftpipe.results import CleanDataResult
    from ftpipe.steps import compare_data as step

    data = task.read_result(cleaned, CleanDataResult)
    result = task.run_step(
        "compare_data",
        config_json,
        run_id,
        lambda config, out, storage: step.run(
            config, data.fingerprint, force, storage=storage, train_uri=data.train_uri, output_uri=out
        ),
        step.LIBRARIES,
    )
    if isinstance(result, task.Stopped):
        return result.outputs(decision, report, metrics, changed=False, seconds=0.0)
    # the decision's last line is the message (the local runner prints it)
    task.write_text(decision, f"# Data check\n\n{result.message}\n", changed=result.changed, drifted=result.drifted)
    task.copy_report(config_json, result.report_html_uri, report)
    metrics.log_metric("changed", float(result.changed))
    if result.drifted is not None:
        metrics.log_metric("drifted", float(result.drifted))
    for test in result.drift_tests:  # KFP metric names: letters, digits and underscores
        metric = re.sub(r"\W+", "_", test.name)
        task.log_metrics(metrics, {f"{metric}_statistic": test.statistic, f"{metric}_p_value": test.p_value})
    return task.succeeded(result.changed, result.wall_seconds)
