"""KFP component: end the run with the error a step met that no retry can cure (bad config or data)."""

from kfp import dsl

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def stop_run(problem: str):
    """Fails at once with ``problem`` when there is one; the DAG gives this task no retries (see ftpipe.task)."""
    from ftpipe import task

    task.stop_run(problem)
