"""KFP component: clean, validate and split the labelled text."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def clean_data(
    config_json: str,
    data_key: str,
    cleaned: Output[Dataset],
    report: Output[HTML],
    report_markdown: Output[Markdown],
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("fingerprint", str)]):
    """Returns the content fingerprint of the cleaned splits.

    Takes the data key from fingerprint_data instead of the run id, so that the task can be cached:
    same inputs and recipe, same key, same outputs (written under that key, not under one run).
    """
    from ftpipe import task
    from ftpipe.steps import clean_data as step

    result = task.run_step("clean_data", config_json, f"data-{data_key}", step.run, step.LIBRARIES)
    if isinstance(result, task.Stopped):
        return result.outputs(cleaned, report, report_markdown, fingerprint="")
    task.write_result(
        cleaned,
        result,
        data_uri=result.output_uri,
        quarantine_uri=result.quarantine_uri,
        fingerprint=result.fingerprint,
        **{f"rows_{split}": rows for split, rows in result.counts.items()},
        **{f"rejected_{reason}": rows for reason, rows in result.rejected.items()},
    )
    task.copy_report(config_json, result.report_html_uri, report)
    task.copy_report(config_json, result.report_markdown_uri, report_markdown)
    return task.succeeded(result.fingerprint)
