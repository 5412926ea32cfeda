"""Fine-tuning on several nodes: a Kubeflow Trainer v2 TrainJob, created and followed by the fine-tune task.

With ``cluster.nodes`` above 1 the fine-tune task trains nothing itself: ftpipe.training.launch calls
:func:`train_on_nodes`, which creates a TrainJob on the ``torch-distributed`` ClusterTrainingRuntime
(``cluster.trainer_runtime``) that runs ``torchrun -m ftpipe.training.launch SPEC_URI`` on ``cluster.nodes``
pods, each with ``cluster.gpu_count`` GPUs, in the same image, with the same S3 Secret, node selector and
tolerations as the task. It then follows the TrainJob to its end, forwards node 0's log lines to this
module's logger as they arrive, and deletes the TrainJob whatever the outcome (done, failed, cancelled), so
that it never outlives its launcher and a retry of the task starts clean. Each way of failing ends in one
:class:`~ftpipe.errors.ClusterError` line; a preempted or evicted node, or an API server that does not
answer, is a :class:`~ftpipe.errors.ClusterUnavailable`, which KFP retries.

The Kubernetes calls (the ``kubernetes`` client; the launcher's Role is k8s/components/trainer):

    POST/GET/DELETE /apis/trainer.kubeflow.org/v1alpha1/namespaces/NS/trainjobs[/NAME]
    GET             /api/v1/namespaces/NS/pods?labelSelector=jobset.sigs.k8s.io/jobset-name=NAME,...
    GET             /api/v1/namespaces/NS/pods/POD/log?container=node&follow=true

The TrainJob API is the one of kubeflow/trainer v2.3.0 (the schema in k8s/schemas/trainjob-v1alpha1.json).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftpipe import __version__
from ftpipe.config import PipelineConfig
from ftpipe.errors import ClusterError, ClusterUnavailable

if TYPE_CHECKING:
    import kubernetes

logger = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
# The replicated job, and its container, that the torch-distributed runtime runs the trainer in (Trainer's
# constants.Node): the names its torch plugin looks for when it sets the trainer's env and command.
NODE = "node"
# Labels JobSet puts on every pod of a TrainJob (the JobSet is named after the TrainJob); node 0 is the pod
# of completion index 0 of the `node` job, whose rank 0 writes the result and whose address is the
# rendezvous (PET_MASTER_ADDR <name>-node-0-0.<name>).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# A preempted or drained trainer gets SIGTERM: it saves a checkpoint and mirrors it to S3 before it exits
# (ftpipe.training.callbacks), which takes minutes for a large model; Kubernetes' default is 30 s.
TERMINATION_GRACE_SECONDS = 300
SHARED_MEMORY_VOLUME = "dshm"
# Who owns the TrainJob's runtime patch (Trainer keys the patches by manager).
PATCH_MANAGER = "ftpipe.launcher"
# The container of a KFP task pod that runs the component (beside Argo's `wait`).
KFP_CONTAINER = "main"
# Where a pod's service account namespace is mounted (the launcher's default namespace).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# What the TrainJob's name must match (its CRD's rules: an RFC 1035 label of at most 63 characters).
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX_LENGTH = 63
# A pod gone this way was taken away from a healthy job (preemption, drain, node failure): a retry may succeed.
DISRUPTION_REASONS = {"Evicted", "Preempting", "NodeLost", "NodeShutdown", "Shutdown", "Terminated"}
# How long a TrainJob left by an earlier attempt may take to go away before it is replaced.
REPLACE_TIMEOUT_S = 300.0


def trainer_command(spec_uri: str) -> list[str]:
    """The trainer container's command on every node.

    The torch-distributed runtime's torch plugin (kubeflow/trainer pkg/runtime/framework/plugins/torch) does not
    rewrite the command (only torchtune's is), it sets PET_NNODES, PET_NPROC_PER_NODE (numProcPerNode),
    PET_NODE_RANK (the pod's completion index), PET_MASTER_ADDR and PET_MASTER_PORT (node 0, port 29500) in
    the trainer container, which torchrun reads as the defaults of --nnodes, --nproc-per-node, --node-rank,
    --master-addr and --master-port. So the command must start torchrun, and pass none of those flags.
    """
    return ["torchrun", "-m", "ftpipe.training.launch", spec_uri]


def trainer_environment(config: PipelineConfig) -> list[dict[str, Any]]:
    """The trainer container's env: what every KFP task of the pipeline gets (pipelines.ftpipe_pipeline)."""
    cluster = config.cluster
    credentials = {
        "AWS_ACCESS_KEY_ID": cluster.s3_secret_access_key_id_key,
        "AWS_SECRET_ACCESS_KEY": cluster.s3_secret_secret_access_key_key,
    }
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": cluster.s3_secret_name, "key": key}}}
        for name, key in credentials.items()
    ]
    env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if config.storage.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": config.storage.endpoint_url})
    return env


def trainjob_manifest(
    config: PipelineConfig, spec_uri: str, job_name: str, namespace: str, image: str | None = None
) -> dict[str, Any]:
    """The TrainJob that runs the fine-tuning described by ``spec_uri`` on ``cluster.nodes`` nodes.

    The trainers run in ``image``, else ``cluster.image``, else ``ftpipe:<version>``. Each node gets
    ``cluster.gpu_count`` GPUs (one torchrun process each; one process on a CPU node), the fine-tune task's
    CPU and memory requests, node selector and tolerations, and the S3 credentials from the Secret. The pod
    settings the TrainJob's ``trainer`` has no field for go in a runtime patch of the `node` job's pods
    (``runtimePatches``, Trainer >= 2.3: the patchable pod fields are a fixed list).
    """
    cluster = config.cluster
    if not NAME_PATTERN.match(job_name) or len(job_name) > NAME_MAX_LENGTH:
        raise ValueError(f"{job_name!r} is no TrainJob name (an RFC 1035 label of at most 63 characters)")
    resources: dict[str, Any] = {"requests": {"cpu": cluster.finetune_cpu, "memory": cluster.finetune_memory}}
    if cluster.gpu_count > 0:
        resources["limits"] = {cluster.gpu_resource: cluster.gpu_count}
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        # Pod Security `restricted`, as every ftpipe workload (the image runs as uid 10001).
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": NODE,
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                # NCCL and torch's data loader workers share memory through /dev/shm, 64 MiB in a container.
                "volumeMounts": [{"name": SHARED_MEMORY_VOLUME, "mountPath": "/dev/shm"}],
            }
        ],
        "volumes": [{"name": SHARED_MEMORY_VOLUME, "emptyDir": {"medium": "Memory"}}],
    }
    if cluster.node_selector:
        pod["nodeSelector"] = dict(sorted(cluster.node_selector.items()))
    if cluster.tolerations:
        pod["tolerations"] = [toleration.model_dump(exclude_none=True) for toleration in cluster.tolerations]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": job_name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "ftpipe", "app.kubernetes.io/managed-by": PATCH_MANAGER},
        },
        "spec": {
            "runtimeRef": {"name": cluster.trainer_runtime},
            "trainer": {
                "image": image or cluster.image or f"ftpipe:{__version__}",
                "command": trainer_command(spec_uri),
                "numNodes": cluster.nodes,
                # Explicit: the runtime's `auto` would count CPUs on a node without GPUs.
                "numProcPerNode": max(1, cluster.gpu_count),
                "resourcesPerNode": resources,
                "env": trainer_environment(config),
            },
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }


def current_namespace() -> str:
    """The namespace of this pod's service account, or ``default`` outside a pod."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def train_on_nodes(
    config: PipelineConfig,
    spec_uri: str,
    *,
    job_name: str,
    namespace: str | None = None,
    api_client: kubernetes.client.ApiClient | None = None,
    poll_seconds: float = 10.0,
) -> None:
    """Run the fine-tuning of ``spec_uri`` as TrainJob ``job_name`` and return once it completed.

    Namespace: ``namespace``, else ``cluster.namespace``, else this pod's own. Image: this pod's (the one the
    pipeline was compiled with, ``ftpipe compile --image`` included), else ``cluster.image``. A TrainJob of
    that name left by an earlier attempt (its launcher killed before it could delete it) is followed if it
    runs the same trainer and has not finished, else replaced. The TrainJob is deleted however this ends: completed,
    failed (:class:`ClusterError` with the reason, :class:`ClusterUnavailable` for a preempted or evicted
    node), SIGTERM (the run cancelled, or this pod's node drained: :class:`ClusterUnavailable`) or
    KeyboardInterrupt (raised again).
    """
    from kubernetes import client

    namespace = namespace or config.cluster.namespace or current_namespace()
    api = _TrainJobApi(api_client or _api_client(), namespace, job_name, config.cluster.trainer_runtime)
    manifest = trainjob_manifest(config, spec_uri, job_name, namespace, api.own_image())
    interrupted = False
    try:
        with _sigterm_raises():
            api.create_or_adopt(manifest, poll_seconds)
            logs = _NodeZeroLogs(client.CoreV1Api(api.api_client), namespace, job_name, poll_seconds)
            logs.start()
            try:
                job = api.wait_for_end(poll_seconds)
            except BaseException:
                logs.stop(timeout=0)  # cancelled: delete at once, within the pod's grace period
                raise
            logs.stop(timeout=max(5.0, 3 * poll_seconds))  # the rest of node 0's log (its stream ends by itself)
            failed = _condition(job, "Failed")
            if failed is not None:
                raise api.failure(failed)
            logger.info("TrainJob %s/%s completed", namespace, job_name)
    except _Terminated:
        interrupted = True
        raise ClusterUnavailable(
            f"TrainJob {namespace}/{job_name}: the launcher got SIGTERM (the run was cancelled or its node is "
            "draining); the TrainJob is deleted"
        ) from None
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if api.exists or interrupted:  # interrupted while creating: it may exist (a 404 is ignored)
            with _signals_ignored():
                api.delete()


class _Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt, through every ``finally``, without being caught."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (KFP/Argo cancelling the run stops the pod with it) raises :class:`_Terminated` meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a caller on another thread handles its own
        return

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second SIGTERM or Ctrl-C must not interrupt the TrainJob's deletion."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _api_client() -> kubernetes.client.ApiClient:
    """A client for the cluster this runs in (its service account), else for the current kubeconfig context."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except (config.ConfigException, OSError) as error:
            raise ClusterError(f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({error})") from None
    return client.ApiClient(configuration)


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The TrainJob's condition ``kind`` (Complete, Failed, Suspended) when it is True."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _api_message(error: Exception) -> str:
    """The API server's own message (the ``message`` of its Status body), else its status line."""
    body = getattr(error, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return message or (body.strip() if isinstance(body, str) and body.strip() else str(getattr(error, "reason", error)))


def _cluster_error(error: Exception, verb: str, resource: str, namespace: str) -> ClusterError:
    """One line for an API call that failed: what was refused, why, and what to do about it."""
    status = getattr(error, "status", None)
    message = _api_message(error)
    if status == 403:
        return ClusterError(
            f"Kubernetes forbids the launcher to {verb} {resource} in namespace {namespace} ({message}): apply "
            "k8s/components/trainer, whose Role grants the pipeline runner's service account what it needs"
        )
    if status == 401:
        return ClusterError(f"Kubernetes does not accept the launcher's credentials ({message})")
    if not status or status == 429 or status >= 500:
        return ClusterUnavailable(f"the Kubernetes API did not answer to {verb} {resource} in {namespace}: {message}")
    return ClusterError(f"Kubernetes refused to {verb} {resource} in namespace {namespace} ({status}: {message})")


def _not_installed(error: Exception) -> bool:
    """A 404 for the TrainJob collection itself: the API server knows no trainer.kubeflow.org/v1alpha1.

    Its answer to an unknown API group is a bare ``404 page not found``, not the Status of a missing object.
    """
    try:
        json.loads(getattr(error, "body", None) or "")
    except ValueError:
        return True
    return False


class _TrainJobApi:
    """The TrainJob ``name`` in ``namespace``, through CustomObjectsApi, each failure one ftpipe error."""

    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str, name: str, runtime: str) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.runtime = runtime
        self.objects = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.resource = f"{PLURAL}.{GROUP}"
        self.exists = False  # created or adopted by this launcher: delete it at the end

    def own_image(self) -> str | None:
        """The image of the KFP task this runs in (its container ``main``), None outside a pod or if unknown."""
        pod_name = os.environ.get("HOSTNAME")
        if not pod_name or not SERVICE_ACCOUNT_NAMESPACE.exists():
            return None
        try:
            pod = self.core.read_namespaced_pod(pod_name, current_namespace())
        except Exception as error:  # the image is a default: cluster.image, or ftpipe:<version>, stays
            logger.warning("could not read this pod's image (%s); the trainers run cluster.image", error)
            return None
        images = {container.name: container.image for container in pod.spec.containers}
        return images.get(KFP_CONTAINER)

    def _call(self, verb: str, call: Any, *args: Any, passthrough: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``; an API error becomes one ftpipe error, except a status in ``passthrough``."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call(*args, **kwargs)
        except ApiException as error:
            if error.status in passthrough:
                raise
            if error.status == 404 and _not_installed(error):
                raise ClusterError(
                    f"Kubeflow Trainer v2 is not installed: the cluster serves no {GROUP}/{VERSION} {PLURAL} "
                    f"(install Trainer with its {self.runtime} ClusterTrainingRuntime, see the README)"
                ) from None
            raise _cluster_error(error, verb, self.resource, self.namespace) from None
        except (HTTPError, OSError) as error:
            raise ClusterUnavailable(f"the Kubernetes API did not answer to {verb} {self.resource}: {error}") from None

    def get(self, passthrough: tuple[int, ...] = ()) -> dict[str, Any]:
        return self._call(
            "get", self.objects.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, self.name,
            passthrough=passthrough,
        )

    def create(self, manifest: dict[str, Any], passthrough: tuple[int, ...] = ()) -> None:
        self._call(
            "create", self.objects.create_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, manifest,
            passthrough=passthrough,
        )

    def create_or_adopt(self, manifest: dict[str, Any], poll_seconds: float) -> None:
        """Create the TrainJob, or follow one an earlier attempt left that runs the same trainer and is not done.

        Any other TrainJob of the name (another trainer, being deleted, or finished: the retry cleared the result
        it wrote) is deleted and created anew once it is gone.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            self.create(manifest, passthrough=(409,))
            self.exists = True
            logger.info("created TrainJob %s/%s", self.namespace, self.name)
            return
        except ApiException:  # 409: it exists
            pass
        existing = self.get()
        spec = existing.get("spec") or {}
        same_work = spec.get("trainer") == manifest["spec"]["trainer"] and (
            (spec.get("runtimeRef") or {}).get("name") == manifest["spec"]["runtimeRef"]["name"]
        )
        self.exists = True
        finished = _condition(existing, "Failed") or _condition(existing, "Complete")
        going = (existing.get("metadata") or {}).get("deletionTimestamp")  # an earlier attempt deleted it
        if same_work and not finished and not going:
            logger.info("following TrainJob %s/%s, left by an earlier attempt of this task", self.namespace, self.name)
            return
        logger.info("replacing TrainJob %s/%s, left by an earlier attempt of this task", self.namespace, self.name)
        self.delete()
        deadline = time.monotonic() + REPLACE_TIMEOUT_S
        while True:
            try:
                self.get(passthrough=(404,))
            except ApiException:  # 404: gone
                break
            if time.monotonic() > deadline:
                raise ClusterUnavailable(
                    f"TrainJob {self.namespace}/{self.name} of an earlier attempt was not gone "
                    f"{REPLACE_TIMEOUT_S:.0f} s after its deletion"
                )
            time.sleep(poll_seconds)
        self.exists = False
        self.create(manifest)
        self.exists = True
        logger.info("created TrainJob %s/%s", self.namespace, self.name)

    def wait_for_end(self, poll_seconds: float) -> dict[str, Any]:
        """The TrainJob once it is Complete or Failed; Suspended (Kueue waiting for quota) is only logged."""
        from kubernetes.client.exceptions import ApiException

        suspended = False
        while True:
            try:
                job = self.get(passthrough=(404,))
            except ApiException:
                raise ClusterError(
                    f"TrainJob {self.namespace}/{self.name} was deleted while it ran (not by this launcher)"
                ) from None
            if _condition(job, "Complete") or _condition(job, "Failed"):
                return job
            if bool(_condition(job, "Suspended")) != suspended:
                suspended = not suspended
                logger.info("TrainJob %s/%s %s", self.namespace, self.name,
                            "is suspended (waiting for quota)" if suspended else "resumed")
            time.sleep(poll_seconds)

    def delete(self) -> None:
        """Delete the TrainJob; Kubernetes deletes its JobSet, Jobs and pods first (foreground propagation)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(
                "delete", self.objects.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                self.name, body=client.V1DeleteOptions(propagation_policy="Foreground"), passthrough=(404,),
            )
            logger.info("deleted TrainJob %s/%s", self.namespace, self.name)
        except ClusterError as error:
            # The outcome is decided already (done, failed, cancelled): say what is left, do not hide that outcome.
            logger.error("TrainJob %s/%s is left behind, delete it by hand: %s", self.namespace, self.name, error)
        except ApiException:  # 404: gone already
            pass

    def failure(self, failed: dict[str, Any]) -> ClusterError:
        """The error for the Failed condition ``failed`` and what ended the pods; transient for a disruption."""
        reason = f"{failed.get('reason') or 'Failed'}: {failed.get('message') or ''}".rstrip(": ")
        try:
            selector = f"{JOBSET_NAME_LABEL}={self.name}"
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except Exception as error:  # a detail: the condition says what failed
            logger.warning("could not read the pods of TrainJob %s/%s: %s", self.namespace, self.name, error)
            pods = []
        details, disrupted = [], False
        for pod in sorted(pods, key=lambda pod: pod.metadata.name):
            detail, disruption = _pod_failure(pod)
            if detail:
                details.append(f"{pod.metadata.name}: {detail}")
                disrupted = disrupted or disruption
        text = f"TrainJob {self.namespace}/{self.name} failed ({reason})"
        if details:
            text += "; " + "; ".join(details)
        return ClusterUnavailable(text) if disrupted else ClusterError(text)


def _pod_failure(pod: Any) -> tuple[str, bool]:
    """What ended ``pod`` badly, and whether it was a disruption (preemption, eviction, a lost node)."""
    status = pod.status
    for condition in status.conditions or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return f"{condition.reason}: {condition.message or ''}".rstrip(": "), True
    if status.reason in DISRUPTION_REASONS:
        return f"{status.reason}: {status.message or ''}".rstrip(": "), True
    for container in status.container_statuses or []:
        terminated = container.state.terminated if container.state else None
        if terminated is not None and terminated.exit_code:
            detail = f"{terminated.reason or 'Error'}, exit code {terminated.exit_code}"
            if terminated.reason == "OOMKilled":
                detail += " (raise cluster.finetune_memory)"
            if terminated.message:
                detail += f": {terminated.message.strip().splitlines()[-1]}"
            return detail, False
    if status.phase == "Failed":
        return f"{status.reason or 'Failed'}: {status.message or ''}".rstrip(": "), False
    return "", False


class _NodeZeroLogs(threading.Thread):
    """Forwards the log lines of node 0's trainer to this module's logger as they arrive.

    Follows the newest node-0 pod (the Job replaces a failed one), reconnecting when a stream breaks while
    its pod still runs; lines forwarded before are skipped on the new stream (it starts at the pod's first
    line). A failure to read logs is a warning, never the run's failure.
    """

    def __init__(self, core: kubernetes.client.CoreV1Api, namespace: str, name: str, poll_seconds: float) -> None:
        super().__init__(name=f"logs-{name}", daemon=True)
        self.core = core
        self.namespace = namespace
        self.selector = f"{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE},{COMPLETION_INDEX_LABEL}=0"
        self.poll_seconds = poll_seconds
        self.forwarded: dict[str, int] = {}  # pod uid -> lines forwarded
        self.finished: set[str] = set()  # pods whose stream ended after they did
        self.stopping = threading.Event()  # the TrainJob ended: forward what is left, then stop
        self.closed = False  # stop now
        self._response: Any = None

    def stop(self, timeout: float) -> None:
        """Forward what is left for up to ``timeout`` s (a finished pod's stream ends by itself), then stop."""
        self.stopping.set()
        self.join(timeout)
        self.closed = True
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self.closed:
            pod = None
            try:
                pod = self._node_zero()
                if pod is not None:
                    self._forward(pod)
                    continue
            except ApiException as error:
                if error.status in (401, 403):
                    logger.warning("not forwarding node 0's logs: %s",
                                   _cluster_error(error, "read", "pods/log", self.namespace))
                    return
                # 400 (its container is still starting) or 404 (the pod was just replaced): try again shortly
            except Exception as error:  # a broken stream: follow again
                logger.debug("node 0's log stream broke: %s", error)
            if self.stopping.is_set() and pod is None:
                return  # the TrainJob ended and every node-0 pod's log is forwarded
            if self.stopping.wait(self.poll_seconds) and self.closed:
                return

    def _node_zero(self) -> Any:
        """Node 0's newest started pod whose log is not all forwarded yet; None if there is none."""
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        pods = [pod for pod in pods if pod.metadata.uid not in self.finished and pod.status.phase != "Pending"]
        return max(pods, key=lambda pod: pod.metadata.creation_timestamp.timestamp(), default=None)

    def _forward(self, pod: Any) -> None:
        uid, seen = pod.metadata.uid, self.forwarded.get(pod.metadata.uid, 0)
        self._response = self.core.read_namespaced_pod_log(
            pod.metadata.name, self.namespace, container=NODE, follow=True, _preload_content=False
        )
        count = 0
        try:
            for raw in self._response:
                count += 1
                if count > seen:
                    logger.info("[node 0] %s", raw.decode("utf-8", "replace").rstrip("\r\n"))
                    self.forwarded[uid] = count
        finally:
            self._response.release_conn()
            self._response = None
        # The stream ended: the container exited, or the connection broke while it runs (then follow again).
        phase = self.core.read_namespaced_pod(pod.metadata.name, self.namespace).status.phase
        if phase in ("Succeeded", "Failed"):
            self.finished.add(uid)


def main(argv: list[str] | None = None) -> int:
    """Print the TrainJob the launcher would create, as YAML (to review it, or `kubectl apply --dry-run`)."""
    import argparse

    import yaml

    from ftpipe.config import load_config
    from ftpipe.errors import FtpipeError

    parser = argparse.ArgumentParser(prog="python -m ftpipe.training.trainjob", description=main.__doc__)
    parser.add_argument("config", help="the pipeline config (YAML)")
    parser.add_argument("spec_uri", help="the worker spec the trainers read (s3:// or a path)")
    parser.add_argument("--name", required=True, help="the TrainJob's name")
    parser.add_argument("--namespace", default=None, help="default: cluster.namespace, else this pod's, else default")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except FtpipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    namespace = args.namespace or config.cluster.namespace or current_namespace()
    print(yaml.safe_dump(trainjob_manifest(config, args.spec_uri, args.name, namespace), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
