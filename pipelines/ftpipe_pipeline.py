"""The ftpipe DAG: clean_data -> select_model -> finetune -> evaluate -[gate]-> register_model.

The DAG is built from a config so that the Kubernetes settings a platform engineer chooses (image
tag, GPU request, node selector, tolerations, the Secret holding the S3 credentials, retries) are
baked into the compiled YAML, while the config itself travels as the ``config_json`` pipeline
parameter (its default is the config compiled in; a run may override it). No credential value is
ever part of the config or the YAML: tasks read them from the Secret as environment variables.
"""


from kfp import dsl, kubernetes

from components import DEFAULT_IMAGE, with_image
from components.clean_data import clean_data
from components.evaluate import evaluate
from components.finetune import finetune
from components.register_model import register_model
from components.select_model import select_model
from ftpipe.config import ClusterConfig, PipelineConfig

# Back-off between retries of a task: S3 hiccups and preempted nodes clear up within minutes.
RETRY_BACKOFF = "30s"
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


def _on_gpu_node(task: dsl.PipelineTask, cluster: ClusterConfig) -> dsl.PipelineTask:
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


def build_pipeline(config: PipelineConfig, image: str | None = None):
    """The pipeline for ``config``, its tasks running in ``image`` (default ``ftpipe:<version>``)."""
    cluster = config.cluster
    image = image or cluster.image or DEFAULT_IMAGE
    clean_data_op, select_model_op, finetune_op, evaluate_op, register_model_op = (
        with_image(component, image)
        for component in (clean_data, select_model, finetune, evaluate, register_model)
    )

    def configure(task: dsl.PipelineTask, retries: int, name: str) -> dsl.PipelineTask:
        _with_s3_credentials(task, cluster)
        if config.storage.endpoint_url:
            task.set_env_variable("AWS_ENDPOINT_URL", config.storage.endpoint_url)
        task.set_env_variable("HF_HUB_OFFLINE", "1")
        task.set_retry(
            retries, backoff_duration=RETRY_BACKOFF, backoff_factor=RETRY_BACKOFF_FACTOR,
            backoff_max_duration=RETRY_BACKOFF_MAX,
        )
        # Every task's output depends on S3 state the cache cannot see (new data under the same URI,
        # the registry's production alias), so none is served from cache.
        task.set_caching_options(False)
        return task.set_display_name(name)

    @dsl.pipeline(
        name=f"ftpipe-{config.registry.model_name}",
        description="Clean labelled text, select a pre-trained transformer, fine-tune, evaluate against "
        "production and register it when it is no worse.",
    )
    def ftpipe_pipeline(config_json: str = config.to_json()):
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        cleaning = configure(
            clean_data_op(config_json=config_json, run_id=run_id), cluster.step_retries, "clean_data"
        )
        selecting = configure(
            select_model_op(config_json=config_json, run_id=run_id, cleaned=cleaning.outputs["cleaned"]),
            cluster.step_retries,
            "select_model",
        )
        training = configure(
            finetune_op(
                config_json=config_json,
                run_id=run_id,
                cleaned=cleaning.outputs["cleaned"],
                selection=selecting.outputs["selection"],
            ),
            cluster.finetune_retries,
            "finetune",
        )
        _on_gpu_node(training, cluster)
        evaluating = configure(
            evaluate_op(
                config_json=config_json,
                run_id=run_id,
                cleaned=cleaning.outputs["cleaned"],
                model=training.outputs["model"],
            ),
            cluster.step_retries,
            "evaluate",
        )
        with dsl.If(evaluating.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition
            configure(
                register_model_op(
                    config_json=config_json,
                    run_id=run_id,
                    cleaned=cleaning.outputs["cleaned"],
                    selection=selecting.outputs["selection"],
                    model=training.outputs["model"],
                    evaluation=evaluating.outputs["evaluation"],
                ),
                cluster.step_retries,
                "register_model",
            )

    return ftpipe_pipeline
