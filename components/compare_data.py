"""KFP component: has the cleaned data changed since the production model was trained?"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def compare_data(
    config_json: str, run_id: str, cleaned: Input[Dataset], force: bool, decision: Output[Markdown]
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("changed", bool)]):
    """Returns True when fine-tuning should run; the decision says why, for the KFP UI."""
    from ftpipe import task
    from ftpipe.results import CleanDataResult
    from ftpipe.steps import compare_data as step

    data = task.read_result(cleaned, CleanDataResult)
    result = task.run_step(
        "compare_data",
        config_json,
        run_id,
        lambda config, out, storage: step.run(config, data.fingerprint, force, storage=storage),
    )
    if isinstance(result, task.Stopped):
        return result.outputs(decision, changed=False)
    task.write_text(decision, f"# Data check\n\n{result.message}\n", changed=result.changed)
    return task.succeeded(result.changed)
