"""KFP component: store the model as a new immutable registry version (runs only past the gate)."""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def register_model(
    config_json: str,
    run_id: str,
    cleaned: Input[Dataset],
    selection: Input[Artifact],
    model: Input[Model],
    evaluation: Input[Artifact],
    registered: Output[Artifact],
    model_card: Output[Markdown],
    fingerprint_seconds: Optional[float] = None,  # noqa: UP045 - KFP reads typing.Optional, not float | None
    compare_seconds: Optional[float] = None,  # noqa: UP045
) -> NamedTuple("Outputs", [("ok", bool), ("problem", str), ("version", int)]):
    """Returns the new version number. ``fingerprint_seconds``, ``compare_seconds``: the wall seconds of
    fingerprint_data and compare_data, which have no result artifact, for the cost line."""
    from ftpipe import task
    from ftpipe.results import CleanDataResult, EvaluateResult, FinetuneResult, SelectModelResult
    from ftpipe.steps import register_model as step

    trained = task.read_result(model, FinetuneResult)
    lineage = step.lineage_of(
        task.read_result(cleaned, CleanDataResult),
        task.read_result(selection, SelectModelResult),
        trained,
        {"fingerprint_data": fingerprint_seconds, "compare_data": compare_seconds},
    )
    evaluated = task.read_result(evaluation, EvaluateResult)
    result = task.run_step(
        "register_model",
        config_json,
        run_id,
        lambda config, out, storage: step.run(config, trained.model_uri, evaluated, lineage, run_id, storage=storage),
    )
    if isinstance(result, task.Stopped):
        return result.outputs(registered, model_card, version=0)
    task.write_result(registered, result, model_name=result.model_name, version=result.version)
    task.copy_report(config_json, result.model_card_uri, model_card)
    return task.succeeded(result.version)
