"""The ftpipe DAG.

    fingerprint_data -> clean_data -> compare_data -[data changed]-> select_model -> finetune
        -> evaluate -[gate passed]-> register_model

With ``config.sweep``, finetune's place is taken by the sweep's rungs (plan_trials, a ParallelFor of
train_trial, Collected into the next rung) and choose_trial, whose winner evaluate scores.

Each step is followed by a guard: a step that met a deterministic error (bad config or data, a missing
model) returns ``ok`` false instead of failing, and the guard's other branch runs stop_run, which fails
the run at once with that error; retries with back-off are kept for what a retry can cure (S3 not
answering or throttling, a pod lost with its node). See ftpipe.task.

clean_data is cached on the key fingerprint_data computes (input ETags and the cleaning recipe), so a
scheduled run on unchanged data reuses the cleaned splits; every other task talks to state the cache
cannot see (the registry's production alias, a GPU run) and is never served from cache. When the
cleaned data is what the production model was trained on, compare_data stops the run before the GPU
is asked for, unless the run sets ``force_retrain``.

The DAG is built from a config so that the Kubernetes settings a platform engineer chooses (image
tag, GPU request, node selector, tolerations, the Secret holding the S3 credentials, retries) are
baked into the compiled YAML, while the config itself travels as the ``config_json`` pipeline
parameter (its default is the config compiled in; a run may override it). No credential value is
ever part of the config or the YAML: tasks read them from the Secret as environment variables.
"""

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from kfp import dsl, kubernetes

from components import DEFAULT_IMAGE, with_image
from components.choose_trial import choose_trial
from components.clean_data import clean_data
from components.compare_data import compare_data
from components.evaluate import evaluate
from components.finetune import finetune
from components.fingerprint_data import fingerprint_data
from components.plan_trials import plan_trials
from components.register_model import register_model
from components.select_model import select_model
from components.stop_run import stop_run
from components.train_trial import train_trial
from ftpipe.config import ClusterConfig, PipelineConfig

# Back-off between retries of a task (from cluster.retry_backoff_s): S3 hiccups and preempted nodes clear up
# within minutes. Only transient failures fail a task, so only they are retried (see ftpipe.task).
RETRY_BACKOFF_FACTOR = 2.0
RETRY_BACKOFF_MAX = "10m"


def _with_s3_credentials(task: dsl.PipelineTask, cluster: ClusterConfig) -> dsl.PipelineTask:
    return kubernetes.use_secret_as_env(
        task,
        secret_name=cluster.s3_secret_name,
        secret_key_to_env={
            cluster.s3_secret_access_key_id_key: "AWS_ACCESS_KEY_ID",
            cluster.s3_secret_secret_access_key_key: "AWS_SECRET_ACCESS_KEY",
        },
    )


# The label of the pods that train: k8s/components/grace-period gives them a termination grace period long enough
# to save and upload a checkpoint on SIGTERM (KFP has no setting of its own for a task pod's grace period).
TRAINING_POD_LABEL = ("ftpipe.io/training", "true")


def _on_gpu_node(task: dsl.PipelineTask, cluster: ClusterConfig) -> dsl.PipelineTask:
    """A task that trains, here in its own pod: its GPUs, CPU and memory, node selector and tolerations."""
    kubernetes.add_pod_label(task, *TRAINING_POD_LABEL)
    task.set_cpu_request(cluster.finetune_cpu).set_memory_request(cluster.finetune_memory)
    if cluster.gpu_count > 0:
        task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(cluster.gpu_count)
    for label, value in sorted(cluster.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in cluster.tolerations:
        kubernetes.add_toleration(
            task, key=toleration.key, operator=toleration.operator, value=toleration.value, effect=toleration.effect
        )
    return task


def task_environment(config: PipelineConfig) -> dict[str, str]:
    """The environment variables every task gets, besides the S3 credentials from the Secret."""
    environment = {"HF_HUB_OFFLINE": "1"}
    if config.storage.endpoint_url:
        environment["AWS_ENDPOINT_URL"] = config.storage.endpoint_url
    return environment


def build_pipeline(config: PipelineConfig, image: str | None = None):
    """The pipeline for ``config``, its tasks running in ``image`` (default ``ftpipe:<version>``)."""
    cluster = config.cluster
    image = image or cluster.image or DEFAULT_IMAGE
    steps = (
        fingerprint_data, clean_data, compare_data, select_model, finetune, evaluate, register_model, stop_run,
        plan_trials, train_trial, choose_trial,
    )
    (
        fingerprint_data_op,
        clean_data_op,
        compare_data_op,
        select_model_op,
        finetune_op,
        evaluate_op,
        register_model_op,
        stop_run_op,
        plan_trials_op,
        train_trial_op,
        choose_trial_op,
    ) = (with_image(component, image) for component in steps)

    def configure(task: dsl.PipelineTask, retries: int, name: str, cache: bool = False) -> dsl.PipelineTask:
        _with_s3_credentials(task, cluster)
        for variable, value in task_environment(config).items():
            task.set_env_variable(variable, value)
        task.set_retry(
            retries, backoff_duration=f"{cluster.retry_backoff_s}s", backoff_factor=RETRY_BACKOFF_FACTOR,
            backoff_max_duration=RETRY_BACKOFF_MAX,
        )
        task.set_caching_options(cache)
        return task.set_display_name(name)

    @contextlib.contextmanager
    def unless_stopped(task: dsl.PipelineTask, step: str) -> Iterator[None]:
        """The tasks added inside run only if ``task`` met no deterministic error; else the run stops at once.

        The step's task then succeeded with ``ok`` false (see ftpipe.task), so that KFP does not retry what
        would fail the same way again; stop_run, with no retries, fails the run with the step's error.
        """
        slug = re.sub(r"\W+", "-", step).strip("-")
        with dsl.If(task.outputs["ok"] == True, name=f"{slug}-ok"):  # noqa: E712 - a KFP condition
            yield
        with dsl.Else(name=f"{slug}-failed"):
            stop_after(task, step)

    def stop_after(task: dsl.PipelineTask, step: str) -> None:
        """stop_run on ``task``'s problem: fails (with no retries) when there is one."""
        stop_run_op(problem=task.outputs["problem"]).set_display_name(f"stop_run ({step})").set_caching_options(False)

    def sweep(step, config_json, run_id, cleaned, selection):
        """The rungs of ``config.sweep`` (fixed at compile time), then the winner's model (see ftpipe.sweep).

        Each rung: plan_trials lists its trials, a ParallelFor trains them (each its own fine-tune task, on a
        GPU node of its own), and the next rung's plan_trials waits for all of them (dsl.Collected).
        """
        done: Any = []
        for rung in range(len(config.sweep.rungs)):
            planning = step(
                plan_trials_op(config_json=config_json, run_id=run_id, rung=rung, after=done),
                f"plan_trials (rung {rung})",
            )
            with dsl.ParallelFor(planning.outputs["trials"], parallelism=config.sweep.parallelism) as trial:
                training = train_trial_op(
                    config_json=config_json,
                    run_id=run_id,
                    trial=trial,
                    sweep_uri=planning.outputs["sweep_uri"],
                    cleaned=cleaned,
                    selection=selection,
                )
                _on_gpu_node(configure(training, cluster.finetune_retries, f"train_trial (rung {rung})"), cluster)
            done = dsl.Collected(training.outputs["Output"])
        choosing = step(
            choose_trial_op(
                config_json=config_json,
                run_id=run_id,
                sweep_uri=planning.outputs["sweep_uri"],
                trials=dsl.Collected(training.outputs["model"]),
            ),
            "choose_trial",
        )
        return choosing.outputs["model"]

    @dsl.pipeline(
        name=f"ftpipe-{config.registry.model_name}",
        description="Clean labelled text, select a pre-trained transformer, fine-tune, evaluate against "
        "production and register it when it is no worse.",
    )
    def ftpipe_pipeline(config_json: str = config.to_json(), force_retrain: bool = False):
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        # Each task runs inside the conditions entered before it: the guards of the steps above it and the
        # data-changed and gate-passed decisions. The stack closes them, innermost first, at the end.
        with contextlib.ExitStack() as conditions:

            def step(task: dsl.PipelineTask, name: str, retries: int = cluster.step_retries, cache: bool = False):
                configure(task, retries, name, cache)
                conditions.enter_context(unless_stopped(task, name))
                return task

            fingerprinting = step(fingerprint_data_op(config_json=config_json, run_id=run_id), "fingerprint_data")
            cleaning = step(
                clean_data_op(config_json=config_json, data_key=fingerprinting.outputs["key"]), "clean_data", cache=True
            )
            cleaned = cleaning.outputs["cleaned"]
            comparing = step(
                compare_data_op(config_json=config_json, run_id=run_id, cleaned=cleaned, force=force_retrain),
                "compare_data",
            )
            conditions.enter_context(dsl.If(comparing.outputs["changed"] == True, name="data-changed"))  # noqa: E712
            selecting = step(select_model_op(config_json=config_json, run_id=run_id, cleaned=cleaned), "select_model")
            selection = selecting.outputs["selection"]
            if config.sweep is None:
                training = finetune_op(config_json=config_json, run_id=run_id, cleaned=cleaned, selection=selection)
                step(training, "finetune", cluster.finetune_retries)
                if cluster.nodes == 1:
                    _on_gpu_node(training, cluster)
                # else the task only launches and follows a TrainJob, whose pods take the GPU node settings
                model = training.outputs["model"]
            else:
                model = sweep(step, config_json, run_id, cleaned, selection)
            evaluating = step(
                evaluate_op(config_json=config_json, run_id=run_id, cleaned=cleaned, model=model), "evaluate"
            )
            conditions.enter_context(dsl.If(evaluating.outputs["gate_passed"] == True, name="gate-passed"))  # noqa: E712
            registering = register_model_op(
                config_json=config_json,
                run_id=run_id,
                cleaned=cleaned,
                selection=selection,
                model=model,
                evaluation=evaluating.outputs["evaluation"],
                fingerprint_seconds=fingerprinting.outputs["seconds"],
                compare_seconds=comparing.outputs["seconds"],
            )
            # Nothing follows registration, and an If with no task inside would compile to a component with no
            # implementation: its stop_run always runs (and succeeds when there is no problem).
            stop_after(configure(registering, cluster.step_retries, "register_model"), "register_model")

    return ftpipe_pipeline
