"""Errors a user can cause, each ending in one clear line and a non-zero exit.

Anything raised as an :class:`FtpipeError` is shown by the CLI (and by the KFP components) as its
message alone; any other exception is a bug in ftpipe and keeps its traceback.

Most of them are deterministic: the same config and data fail the same way again, so a pipeline task that
meets one ends the run at once instead of being retried. Only :class:`StorageUnavailable` (S3 does not
answer, or is throttling or failing on its side) and :class:`Interrupted` (a fine-tune stopped by SIGTERM, its
checkpoint saved) are ``transient``: the task fails and KFP retries it with back-off, as it does for a pod that
dies (a preempted node).
"""


class FtpipeError(Exception):
    """A problem the user can fix; the message says what it is."""

    exit_code = 2
    transient = False  # True: retrying the same work may succeed (see the module docstring)


class ConfigError(FtpipeError):
    """The config file is missing, unreadable or invalid."""


class DataError(FtpipeError):
    """The dataset is missing, unreadable, or lacks a column or usable rows."""


class StorageError(FtpipeError):
    """S3 or a local path cannot be reached, read or written."""

    exit_code = 3


class StorageUnavailable(StorageError):
    """S3 does not answer, times out, throttles or fails on its side (5xx): worth retrying later."""

    transient = True


class PreconditionFailed(StorageError):
    """A conditional write lost a race (the object exists, or changed since it was read)."""


class Interrupted(FtpipeError):
    """Training stopped on SIGTERM (a node drain or spot preemption) after saving a checkpoint: the retry resumes."""

    exit_code = 143  # 128 + SIGTERM, what a process killed by it reports
    transient = True


class TrainingProcessesFailed(FtpipeError):
    """A training process died without an ftpipe error (out of memory, a lost peer, a crash): a retry resumes."""

    exit_code = 4
    transient = True


class ModelError(FtpipeError):
    """A model cannot be loaded or does not fit the task."""


class RegistryError(FtpipeError):
    """A registry name, version or alias does not exist or cannot be changed."""


class SweepError(FtpipeError):
    """A sweep cannot go on: no trial of a rung completed, or its records do not fit its config."""


class ClusterError(FtpipeError):
    """Kubernetes refused or failed the work: a missing permission or operator, a failed TrainJob."""

    exit_code = 5


class ClusterUnavailable(ClusterError):
    """A training node was preempted or evicted, or the Kubernetes API does not answer: a retry may succeed."""

    transient = True
