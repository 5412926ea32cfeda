"""S3 and local file I/O behind one small interface: URIs in, files out.

This is the only module that talks to boto3. A URI is either ``s3://bucket/key`` or a local path
(``file://`` prefix optional). Every failure a user can cause (an endpoint that does not answer,
refused credentials, a missing object or bucket) becomes a :class:`StorageError` with one clear line;
what a retry may cure (no answer, timeouts, throttling, 5xx, once botocore's own retries ran out) is a
:class:`StorageUnavailable`, so that pipeline tasks fail and are retried only for those.

A step's local scratch files (checkpoints, a model before upload, splits before upload) are written inside
:func:`full_disk_errors`, which reports a full disk there as one StorageError line naming the directory, whatever
the library that met it raised.

Endpoint and credentials, in order: the config's ``endpoint_url``, the standard AWS environment
variables, then the embedded server started by ``ftpipe s3 up``. Credentials are never read from a
config file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpipe import s3server
from ftpipe.config import StorageConfig
from ftpipe.errors import FtpipeError, PreconditionFailed, StorageError, StorageUnavailable

# Error codes S3 servers send when they shed load (AWS, MinIO, SeaweedFS, Ceph).
_THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
                     "ServiceUnavailable", "InternalError", "TooManyRequests"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3(uri: str) -> S3Location:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"not an s3:// URI with a bucket: {uri}")
    return S3Location(bucket, key)


def local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(uri: str, *parts: str) -> str:
    """Join path segments onto a URI or local path with single slashes."""
    base = uri.rstrip("/")
    tail = "/".join(part.strip("/") for part in parts if part)
    return f"{base}/{tail}" if tail else base


class Storage:
    """Reads and writes objects by URI, on S3-compatible storage or the local file system."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig()
        self._client: Any = None
        self.endpoint_url: str | None = None

    # -- connection ---------------------------------------------------------------------------

    def _connection_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"region_name": os.environ.get("AWS_DEFAULT_REGION") or self.config.region}
        endpoint = (
            self.config.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        has_env_keys = bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))
        if endpoint is None or not has_env_keys:
            embedded = s3server.read_state()
            if embedded is not None and (endpoint is None or endpoint == embedded.endpoint_url):
                endpoint = embedded.endpoint_url
                if not has_env_keys:
                    settings["aws_access_key_id"] = embedded.access_key_id
                    settings["aws_secret_access_key"] = embedded.secret_access_key
        settings["endpoint_url"] = endpoint
        return settings

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            settings = self._connection_settings()
            self.endpoint_url = settings["endpoint_url"]
            # A session of its own: boto3's default session caches the first credentials it resolves.
            self._client = boto3.session.Session().client(
                "s3",
                config=Config(
                    connect_timeout=self.config.connect_timeout_s,
                    read_timeout=60,
                    retries={"max_attempts": self.config.max_attempts, "mode": "standard"},
                    s3={"addressing_style": "path"},
                ),
                **settings,
            )
        return self._client

    @contextlib.contextmanager
    def _s3_errors(self, uri: str) -> Iterator[None]:
        """Turn boto3's exceptions into one clear StorageError line (StorageUnavailable where a retry may help)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except S3UploadFailedError as error:  # the transfer manager wraps the ClientError it met
            cause = error.__context__
            if isinstance(cause, ClientError | BotoCoreError):
                raise self._storage_error(cause, uri) from None
            raise StorageUnavailable(f"S3 error on {uri}: {error}") from None
        except (ClientError, BotoCoreError) as error:
            raise self._storage_error(error, uri) from None

    def _storage_error(self, error: Exception, uri: str) -> StorageError:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(error, EndpointConnectionError):
            return StorageUnavailable(
                f"S3 endpoint {self.endpoint_url} does not answer (is the server up? `ftpipe s3 up` starts "
                "the embedded one)"
            )
        if isinstance(error, NoCredentialsError):
            return StorageError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `ftpipe s3 up`"
            )
        if not isinstance(error, ClientError):  # timeouts, dropped connections: botocore's retries ran out
            return StorageUnavailable(f"S3 error on {uri}: {error}")
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status == 412:
            return PreconditionFailed(f"conditional write lost a race on {uri}")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return StorageError(f"not found: {uri}")
        if code == "NoSuchBucket":
            return StorageError(f"bucket does not exist: {parse_s3(uri).bucket} (for {uri})")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"}:
            return StorageError(f"S3 at {self.endpoint_url or 'AWS'} refused the credentials for {uri} ({code})")
        if status >= 500 or status == 429 or code in _THROTTLING_CODES:
            return StorageUnavailable(f"S3 at {self.endpoint_url or 'AWS'} is unavailable for {uri}: {code} {error}")
        return StorageError(f"S3 error on {uri}: {code} {error}")

    def check(self, uri: str) -> None:
        """Fail early, with one line, when the storage behind ``uri`` cannot be reached or used."""
        if not is_s3(uri):
            return
        location = parse_s3(uri)
        with self._s3_errors(uri):
            self.client.head_bucket(Bucket=location.bucket)

    # -- objects ------------------------------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            location = parse_s3(uri)
            with self._s3_errors(uri):
                return self.client.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
        path = local_path(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"not found: {uri}") from None
        except OSError as error:
            raise StorageError(f"cannot read {uri}: {error.strerror}") from None

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write one object whole; returns its ETag.

        Args:
            if_none_match: only create, never replace (raises PreconditionFailed if it exists).
            if_match: only replace the version with this ETag (compare-and-swap).
        """
        if is_s3(uri):
            location = parse_s3(uri)
            extra: dict[str, Any] = {}
            if content_type:
                extra["ContentType"] = content_type
            if if_none_match:
                extra["IfNoneMatch"] = "*"
            if if_match is not None:
                extra["IfMatch"] = if_match
            with self._s3_errors(uri):
                answer = self.client.put_object(Bucket=location.bucket, Key=location.key, Body=data, **extra)
            return answer["ETag"].strip('"')
        return _write_local(local_path(uri), data, if_none_match=if_none_match, if_match=if_match)

    def write_text(self, uri: str, text: str, **kwargs: Any) -> str:
        return self.write_bytes(uri, text.encode("utf-8"), **kwargs)

    def write_json(self, uri: str, value: Any, **kwargs: Any) -> str:
        text = json.dumps(value, indent=2, sort_keys=True, default=str)
        return self.write_bytes(uri, text.encode("utf-8"), content_type="application/json", **kwargs)

    def etag(self, uri: str) -> str | None:
        """The object's ETag, or None when it does not exist."""
        if is_s3(uri):
            location = parse_s3(uri)
            from botocore.exceptions import ClientError

            try:
                with self._s3_errors(uri):
                    answer = self.client.head_object(Bucket=location.bucket, Key=location.key)
            except StorageError as error:
                if str(error).startswith("not found"):
                    return None
                raise
            except ClientError:  # pragma: no cover - _s3_errors converts every ClientError
                raise
            return answer["ETag"].strip('"')
        path = local_path(uri)
        return _md5(path.read_bytes()) if path.is_file() else None

    def exists(self, uri: str) -> bool:
        return self.etag(uri) is not None

    def list(self, prefix_uri: str) -> list[str]:
        """Every object under a prefix (recursively), as full URIs, sorted."""
        if is_s3(prefix_uri):
            return sorted(self._s3_listing(prefix_uri))
        root = local_path(prefix_uri)
        if not root.is_dir():
            return []
        return sorted(
            str(path) for path in root.rglob("*") if path.is_file() and not path.name.startswith((".tmp-", ".lock-"))
        )

    def etags(self, prefix_uri: str) -> dict[str, str]:
        """``{uri: ETag}`` of every object under a prefix, from the listing itself on S3 (no request per object)."""
        if is_s3(prefix_uri):
            return dict(sorted(self._s3_listing(prefix_uri).items()))
        return {uri: _md5(Path(uri).read_bytes()) for uri in self.list(prefix_uri)}

    def _s3_listing(self, prefix_uri: str) -> dict[str, str]:
        location = parse_s3(prefix_uri)
        prefix = location.key.rstrip("/") + "/" if location.key else ""
        found: dict[str, str] = {}
        with self._s3_errors(prefix_uri):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[f"s3://{location.bucket}/{item['Key']}"] = item["ETag"].strip('"')
        return found

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            location = parse_s3(uri)
            with self._s3_errors(uri):
                self.client.delete_object(Bucket=location.bucket, Key=location.key)
        else:
            local_path(uri).unlink(missing_ok=True)

    # -- files and directories ----------------------------------------------------------------

    def upload_file(self, path: str | Path, uri: str) -> None:
        if is_s3(uri):
            location = parse_s3(uri)
            with self._s3_errors(uri):
                # boto3's transfer manager: multipart and parallel parts for large files.
                self.client.upload_file(str(path), location.bucket, location.key)
            return
        target = local_path(uri)
        with _writing(target, f"cannot copy {path} to {uri}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = _temporary_beside(target)
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)

    def download_file(self, uri: str, path: str | Path) -> Path:
        path = Path(path)
        with _writing(path, f"cannot write {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            if is_s3(uri):
                location = parse_s3(uri)
                with self._s3_errors(uri):
                    self.client.download_file(location.bucket, location.key, str(path))
                return path
            source = local_path(uri)
            if not source.is_file():
                raise StorageError(f"not found: {uri}")
            shutil.copyfile(source, path)
            return path

    def upload_dir(self, directory: str | Path, prefix_uri: str) -> list[str]:
        """Upload every file under ``directory``; returns the URIs written."""
        directory = Path(directory)
        written = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            uri = join(prefix_uri, path.relative_to(directory).as_posix())
            self.upload_file(path, uri)
            written.append(uri)
        return written

    def download_dir(self, prefix_uri: str, directory: str | Path) -> Path:
        """Copy every object under a prefix into ``directory``, keeping relative paths."""
        directory = Path(directory)
        objects = self.list(prefix_uri)
        if not objects:
            raise StorageError(f"nothing found under {prefix_uri}")
        base = prefix_uri.rstrip("/") + "/"
        if not is_s3(prefix_uri):
            base = str(local_path(prefix_uri)).rstrip("/") + "/"
        for uri in objects:
            self.download_file(uri, directory / uri[len(base) :])
        return directory

    @contextlib.contextmanager
    def local_copy(self, uri: str, *, directory: bool = False) -> Iterator[Path]:
        """A local path holding the object (or prefix) at ``uri``; temporary when it came from S3."""
        if not is_s3(uri):
            path = local_path(uri)
            if not path.exists():
                raise StorageError(f"not found: {uri}")
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="ftpipe-") as scratch:
            if directory:
                yield self.download_dir(uri, Path(scratch) / "dir")
            else:
                yield self.download_file(uri, Path(scratch) / Path(parse_s3(uri).key).name)


_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_DISK_TEXTS = ("no space left on device", "storagefull", "disk quota exceeded")
FULL_DISK_FREE_BYTES = 1 << 20  # less than this free after a failed write: the disk was full


def _disk_full(error: BaseException, directory: Path) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_DISK_ERRNOS:
            return True
        if any(text in str(seen).lower() for text in _FULL_DISK_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    try:  # torch.save only says "unexpected pos N vs M" when its write came up short: look at the disk itself
        return shutil.disk_usage(directory).free < FULL_DISK_FREE_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def full_disk_errors(directory: str | Path) -> Iterator[None]:
    """Report a full disk under ``directory`` as one :class:`StorageError` line that names it.

    Libraries meet a full disk in their own ways: Python's writes raise OSError(ENOSPC) or (EDQUOT), safetensors a
    SafetensorError that names ``StorageFull``, ``torch.save`` a RuntimeError without errno ("unexpected pos"). Any
    exception but an ftpipe error that carries one of those, or that is raised while the directory's file system has
    under 1 MiB free, becomes that line. Use it inside the temporary directory's own ``with`` (so that the check
    sees the disk before the directory is removed); it is deterministic (no retry gets a bigger disk).
    """
    directory = Path(directory)
    try:
        yield
    except FtpipeError:
        raise
    except Exception as error:
        if not _disk_full(error, directory):
            raise
        try:
            usage = shutil.disk_usage(directory)
            size = f" ({usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.0f} MB)"
        except OSError:
            size = ""
        raise StorageError(
            f"no space left on device in the work directory {directory}{size}: give the task more disk (its "
            "ephemeral storage, or a larger volume for its temporary directory)"
        ) from error


@contextlib.contextmanager
def _writing(path: Path, failure: str) -> Iterator[None]:
    """A local write to ``path``: a full disk said as :func:`full_disk_errors` says it, any other OSError as
    ``failure`` and its reason, one line each."""
    try:
        with full_disk_errors(path.parent):
            yield
    except OSError as error:
        raise StorageError(f"{failure}: {error.strerror or error}") from None


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _temporary_beside(path: Path) -> Path:
    """A fresh name in the target's directory, so the final os.replace/os.link stays atomic."""
    return path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex}")


def _write_local(path: Path, data: bytes, *, if_none_match: bool, if_match: str | None) -> str:
    """Atomic local write with the same conditional semantics as S3 (a lock file serialises CAS)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _temporary_beside(path)
        temporary.write_bytes(data)
        if if_none_match:
            try:
                os.link(temporary, path)  # link fails if the target exists: an atomic create-only
            except FileExistsError:
                raise PreconditionFailed(f"conditional write lost a race on {path}") from None
            finally:
                temporary.unlink(missing_ok=True)
            return _md5(data)
        with open(path.with_name(f".lock-{path.name}"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if if_match is not None:
                current = _md5(path.read_bytes()) if path.is_file() else None
                if current != if_match:
                    temporary.unlink(missing_ok=True)
                    raise PreconditionFailed(f"conditional write lost a race on {path}")
            os.replace(temporary, path)
        return _md5(data)
    except PreconditionFailed:
        raise
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error.strerror}") from None
