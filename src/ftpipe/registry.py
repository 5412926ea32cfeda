"""The model registry: immutable numbered versions and movable aliases, on S3 or a local path.

Everything goes through :class:`ftpipe.storage.Storage`, so the same code serves an ``s3://`` prefix
in a pipeline run and a local directory in tests. Layout under the registry URI::

    <name>/blobs/<uuid>/...              the files of one version (model, tokenizer, README.md, metadata.json)
    <name>/versions/<NNNNNN>.json        the version manifest: the commit point
    <name>/aliases/<alias>.json          where an alias points now, with its history

How a version appears atomically or not at all: :meth:`ModelRegistry.register` uploads the files under a
fresh staging prefix (``blobs/<uuid>/``) that no reader looks at, then commits by creating the manifest
with a create-only conditional write (S3 ``IfNoneMatch='*'``). Two runs that pick the same number race
on that one write; the loser gets ``PreconditionFailed`` and takes the next number, reusing its already
uploaded files, so concurrent registrations always end as distinct, complete versions. Readers only see
versions whose manifest exists; a crash before the commit leaves an orphaned blob and no version. Given a
``key`` (register_model passes the run id, which a retried task keeps), ``register`` first looks for a version
committed with that key and the same model files and returns it: a task that died after its commit, before it
answered or moved an alias, gets its version back on the retry instead of a duplicate.

Manifests store paths relative to ``<name>/`` plus the size and SHA-256 of every file, so a registry
prefix can be copied elsewhere whole, and :meth:`ModelRegistry.download` refuses a tampered version.

Aliases (``staging``, ``production``, any name) move by compare-and-swap: the alias file is replaced only
if its ETag is still the one read (or created only if it was absent). A lost race is retried on fresh
state; with ``expected=`` a caller asks for a strict move (fail instead of retry when the alias no longer
points where the caller thinks). Every move is appended to the alias file's ``history``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import EllipsisType
from typing import Any

from pydantic import BaseModel, ConfigDict

from ftpipe.errors import PreconditionFailed, RegistryError, StorageError
from ftpipe.storage import Storage, is_s3, join, local_path

MANIFEST_FORMAT = 1
MODEL_CARD_FILE = "README.md"
METADATA_FILE = "metadata.json"
COMMIT_ATTEMPTS = 64  # distinct version numbers tried before giving up; only reached under extreme contention
ALIAS_ATTEMPTS = 20  # compare-and-swap retries of one alias move

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_MANIFEST = re.compile(r"^(\d{6,})\.json$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisteredFile(_Frozen):
    """One file of a version, relative to its model prefix."""

    path: str
    size: int
    sha256: str


class RegisteredVersion(_Frozen):
    """One committed, immutable version of a registered model."""

    name: str
    version: int
    created_at: str
    manifest_uri: str
    model_uri: str
    model_card_uri: str
    metadata_uri: str
    files: list[RegisteredFile]
    metadata: dict[str, Any]


class AliasChange(_Frozen):
    """One move of an alias."""

    version: int
    previous: int | None
    at: str
    note: str | None = None


class AliasRecord(_Frozen):
    """Where an alias points, and every place it pointed before (oldest first)."""

    name: str
    alias: str
    version: int
    updated_at: str
    history: list[AliasChange]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise RegistryError(f"invalid {kind} {value!r}: use lower-case letters, digits, '.', '_' and '-'")
    return value


def _parse_version(version: int | str) -> int:
    text = str(version).strip()
    if text.lower().startswith("v"):
        text = text[1:]
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(f"invalid version {version!r}: versions are positive integers")
    return int(text)


def _parse_manifest(uri: str, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise RegistryError(f"version manifest {uri} is not valid JSON") from None
    missing = [
        key
        for key in ("version", "created_at", "blob", "files")
        if not isinstance(manifest, dict) or key not in manifest
    ]
    if missing:
        raise RegistryError(f"version manifest {uri} lacks {', '.join(missing)}")
    return manifest


def _model_files(directory: Path) -> list[str]:
    """Relative paths of the model's files: hidden files and our own card/metadata left out."""
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.as_posix() in {MODEL_CARD_FILE, METADATA_FILE}:
            continue  # replaced by the card and metadata of this version
        found.append(relative.as_posix())
    return found


class ModelRegistry:
    """Versions and aliases of registered models under one URI (``s3://`` prefix or local path)."""

    def __init__(self, storage: Storage, uri: str) -> None:
        self.storage = storage
        self.uri = uri.rstrip("/")

    # -- layout -----------------------------------------------------------------------------


    def _read_if_exists(self, uri: str) -> bytes | None:
        """The object's bytes, or None when it does not exist; any other storage failure propagates."""
        try:
            return self.storage.read_bytes(uri)
        except StorageError:
            if self.storage.exists(uri):
                raise
            return None

    def _manifest_uri(self, name: str, version: int) -> str:
        return join(self.uri, name, "versions", f"{version:06d}.json")

    def _alias_uri(self, name: str, alias: str) -> str:
        return join(self.uri, name, "aliases", f"{alias}.json")

    def _relative_listing(self, prefix: str) -> list[str]:
        """Object names under ``prefix``, relative to it."""
        base = (prefix if is_s3(prefix) else str(local_path(prefix))).rstrip("/") + "/"
        return [uri[len(base) :] for uri in self.storage.list(prefix) if uri.startswith(base)]

    def _version_numbers(self, name: str) -> list[int]:
        numbers = []
        for relative in self._relative_listing(join(self.uri, name, "versions")):
            match = _MANIFEST.match(relative)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _unknown_model(self, name: str) -> RegistryError:
        known = self.list_models()
        hint = f"registered models: {', '.join(known)}" if known else "the registry is empty"
        return RegistryError(f"unknown model '{name}' in registry {self.uri} ({hint})")

    def _version_from_manifest(self, name: str, manifest: dict[str, Any]) -> RegisteredVersion:
        model_uri = join(self.uri, name, manifest["blob"])
        return RegisteredVersion(
            name=name,
            version=int(manifest["version"]),
            created_at=manifest["created_at"],
            manifest_uri=self._manifest_uri(name, int(manifest["version"])),
            model_uri=model_uri,
            model_card_uri=join(model_uri, MODEL_CARD_FILE),
            metadata_uri=join(model_uri, METADATA_FILE),
            files=[RegisteredFile(**entry) for entry in manifest["files"]],
            metadata=manifest.get("metadata", {}),
        )

    # -- reading ----------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """Names of the models with at least one committed version, sorted."""
        names = set()
        for relative in self._relative_listing(self.uri):
            parts = relative.split("/")
            if len(parts) == 3 and parts[1] == "versions" and _MANIFEST.match(parts[2]):
                names.add(parts[0])
        return sorted(names)

    def list_versions(self, name: str) -> list[RegisteredVersion]:
        """Every committed version of ``name``, oldest first.

        Raises:
            RegistryError: the model has no committed version.
        """
        _check_name("model name", name)
        numbers = self._version_numbers(name)
        if not numbers:
            raise self._unknown_model(name)
        return [self.get_version(name, number) for number in numbers]

    def latest_version(self, name: str) -> RegisteredVersion:
        """The newest committed version of ``name``."""
        _check_name("model name", name)
        numbers = self._version_numbers(name)
        if not numbers:
            raise self._unknown_model(name)
        return self.get_version(name, numbers[-1])

    def get_version(self, name: str, version: int | str) -> RegisteredVersion:
        """One committed version (``3``, ``"3"``, ``"000003"`` and ``"v3"`` all name version 3).

        Raises:
            RegistryError: unknown model or version.
        """
        _check_name("model name", name)
        number = _parse_version(version)
        uri = self._manifest_uri(name, number)
        data = self._read_if_exists(uri)
        if data is None:
            numbers = self._version_numbers(name)
            if not numbers:
                raise self._unknown_model(name)
            raise RegistryError(f"unknown version {number} of model '{name}' (versions: {_ranges(numbers)})")
        return self._version_from_manifest(name, _parse_manifest(uri, data))

    def _manifest_blob(self, uri: str) -> str | None:
        """The blob a manifest names, or None when it cannot be read."""
        try:
            manifest = json.loads(self.storage.read_bytes(uri))
        except (StorageError, ValueError):
            return None
        return manifest.get("blob") if isinstance(manifest, dict) else None

    def _read_manifest(self, name: str, number: int) -> dict[str, Any]:
        uri = self._manifest_uri(name, number)
        return _parse_manifest(uri, self.storage.read_bytes(uri))

    def model_uri(self, name: str, version: int | str) -> str:
        """The prefix holding the version's files; ``from_pretrained`` loads it once downloaded."""
        return self.get_version(name, version).model_uri

    def download(self, name: str, version: int | str, directory: str | Path) -> Path:
        """Copy a version's files into ``directory``, checking every size and SHA-256.

        Raises:
            RegistryError: unknown model or version, or a file that differs from the manifest.
        """
        found = self.get_version(name, version)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for entry in found.files:
            if entry.path.startswith("/") or ".." in entry.path.split("/"):
                raise RegistryError(f"version {found.version} of '{name}' has an unsafe file path: {entry.path}")
            target = self.storage.download_file(join(found.model_uri, entry.path), directory / entry.path)
            if target.stat().st_size != entry.size or _file_sha256(target) != entry.sha256:
                raise RegistryError(
                    f"version {found.version} of '{name}' is corrupted: {entry.path} differs from its manifest"
                )
        return directory

    # -- registering ------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model_dir: str | Path,
        metadata: dict[str, Any],
        model_card: str,
        *,
        key: str | None = None,
    ) -> RegisteredVersion:
        """Store ``model_dir`` (a local directory or an ``s3://`` prefix) as the next version of ``name``.

        The model card becomes the version's ``README.md`` and ``metadata`` its ``metadata.json`` (both
        replace files of those names in ``model_dir``). The version is visible only once complete.

        Args:
            key: makes the registration idempotent (register_model passes the pipeline run id): when a version
                committed with this key holds the same model files, that version is returned and nothing is
                written. A retried task whose first attempt committed, then died before it answered (or before
                it moved an alias), so gets its own version back instead of a duplicate.

        Raises:
            RegistryError: invalid name, empty model directory, or no free version number found.
        """
        _check_name("model name", name)
        source = str(model_dir)
        if is_s3(source):
            with self.storage.local_copy(source, directory=True) as path:
                return self._register_directory(name, path, source, metadata, model_card, key)
        path = local_path(source)
        if not path.is_dir():
            raise RegistryError(f"model directory not found: {source}")
        return self._register_directory(name, path, source, metadata, model_card, key)

    def _committed_with_key(self, name: str, key: str, model_files: list[dict[str, Any]]) -> RegisteredVersion | None:
        """The newest version committed with ``key`` whose model files (card and metadata aside) are these."""
        wanted = sorted((entry["path"], entry["size"], entry["sha256"]) for entry in model_files)
        for number in reversed(self._version_numbers(name)):
            try:
                manifest = self._read_manifest(name, number)
            except RegistryError:  # a broken manifest is no usable version, ours or not
                continue
            if manifest.get("key") != key:
                continue
            found = sorted(
                (entry["path"], entry["size"], entry["sha256"])
                for entry in manifest["files"]
                if entry["path"] not in {MODEL_CARD_FILE, METADATA_FILE}
            )
            if found == wanted:
                return self._version_from_manifest(name, manifest)
        return None

    def _register_directory(
        self,
        name: str,
        directory: Path,
        source: str,
        metadata: dict[str, Any],
        model_card: str,
        key: str | None = None,
    ) -> RegisteredVersion:
        files = _model_files(directory)
        if not files:
            raise RegistryError(f"no model files in {source}")
        model_entries = [
            {"path": relative, "size": path.stat().st_size, "sha256": _file_sha256(path)}
            for relative, path in ((relative, directory / relative) for relative in files)
        ]
        if key is not None:
            existing = self._committed_with_key(name, key, model_entries)
            if existing is not None:
                logger.info("version %d of %s is already committed with key %s", existing.version, name, key)
                return existing
        metadata_bytes = json.dumps(metadata, indent=2, sort_keys=True, default=str).encode("utf-8")
        card_bytes = model_card.encode("utf-8")
        blob = f"blobs/{uuid.uuid4().hex}"
        blob_uri = join(self.uri, name, blob)
        entries: list[dict[str, Any]] = []
        written: list[str] = []
        try:
            for entry in model_entries:
                entries.append(entry)
                uri = join(blob_uri, entry["path"])
                self.storage.upload_file(directory / entry["path"], uri)
                written.append(uri)
            for relative, data, content_type in (
                (METADATA_FILE, metadata_bytes, "application/json"),
                (MODEL_CARD_FILE, card_bytes, "text/markdown; charset=utf-8"),
            ):
                entries.append({"path": relative, "size": len(data), "sha256": _sha256(data)})
                uri = join(blob_uri, relative)
                self.storage.write_bytes(uri, data, content_type=content_type)
                written.append(uri)
        except BaseException:
            self._discard(written)  # nothing refers to the blob yet
            raise
        # From here on the blob stays even on failure: a commit whose answer was lost may have succeeded.
        return self._commit(name, blob, entries, metadata, key)

    def _commit(
        self, name: str, blob: str, entries: list[dict[str, Any]], metadata: dict[str, Any], key: str | None = None
    ) -> RegisteredVersion:
        numbers = self._version_numbers(name)
        number = numbers[-1] + 1 if numbers else 1
        for _ in range(COMMIT_ATTEMPTS):
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": name,
                "version": number,
                "created_at": _now(),
                "blob": blob,
                "files": entries,
                "metadata": metadata,
            }
            if key is not None:
                manifest["key"] = key
            data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8")
            uri = self._manifest_uri(name, number)
            try:
                self.storage.write_bytes(uri, data, content_type="application/json", if_none_match=True)
            except PreconditionFailed:
                # A retried request whose first try did succeed also ends here: then the version is ours.
                if self._manifest_blob(uri) == blob:
                    return self._version_from_manifest(name, self._read_manifest(name, number))
                numbers = self._version_numbers(name)
                number = max(number + 1, (numbers[-1] + 1) if numbers else 1)
                continue
            return self._version_from_manifest(name, json.loads(data))
        raise RegistryError(
            f"could not commit a new version of '{name}': {COMMIT_ATTEMPTS} version numbers were taken concurrently"
        )

    def _discard(self, uris: list[str]) -> None:
        """Best-effort removal of a staged blob that never became a version."""
        for uri in uris:
            try:
                self.storage.delete(uri)
            except StorageError:
                pass

    # -- aliases ----------------------------------------------------------------------------

    def _read_alias(self, name: str, alias: str) -> tuple[AliasRecord | None, str | None]:
        """The alias record and the ETag it was read at (a consistent pair), or (None, None)."""
        uri = self._alias_uri(name, alias)
        for _ in range(ALIAS_ATTEMPTS):
            before = self.storage.etag(uri)
            if before is None:
                return None, None
            data = self._read_if_exists(uri)
            if data is None:  # removed between the HEAD and the read
                continue
            # Every write appends a timestamped history entry, so content never repeats: an unchanged
            # ETag after the read means the bytes read are the object at that ETag.
            if self.storage.etag(uri) == before:
                try:
                    return AliasRecord.model_validate_json(data), before
                except ValueError:
                    raise RegistryError(f"alias file {uri} is not a valid alias record") from None
        raise RegistryError(f"alias '{alias}' of '{name}' keeps changing; try again")

    def list_aliases(self, name: str) -> dict[str, int]:
        """Every alias of ``name`` and the version it points to."""
        _check_name("model name", name)
        aliases = {}
        for relative in self._relative_listing(join(self.uri, name, "aliases")):
            if "/" in relative or relative.startswith(".") or not relative.endswith(".json"):
                continue
            record, _ = self._read_alias(name, relative[: -len(".json")])
            if record is not None:
                aliases[record.alias] = record.version
        return dict(sorted(aliases.items()))

    def get_alias(self, name: str, alias: str) -> AliasRecord:
        """The alias record with its history.

        Raises:
            RegistryError: the alias is not set.
        """
        _check_name("model name", name)
        _check_name("alias", alias)
        record, _ = self._read_alias(name, alias)
        if record is None:
            known = self.list_aliases(name)
            hint = f"aliases: {', '.join(known)}" if known else "it has no aliases"
            raise RegistryError(f"unknown alias '{alias}' of model '{name}' ({hint})")
        return record

    def resolve_alias(self, name: str, alias: str) -> RegisteredVersion | None:
        """The version an alias points to, or None when the alias (or the whole model) does not exist."""
        _check_name("model name", name)
        _check_name("alias", alias)
        record, _ = self._read_alias(name, alias)
        return None if record is None else self.get_version(name, record.version)

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int | str,
        *,
        expected: int | None | EllipsisType = ...,
        only_forward: bool = False,
        note: str | None = None,
    ) -> AliasRecord:
        """Point ``alias`` at ``version`` by compare-and-swap; returns the alias record now stored.

        Args:
            expected: the version the alias must point to now (None: must be unset). Left out, the move
                happens whatever the alias points to, retried on fresh state when another writer wins.
            only_forward: leave the alias alone when it already points to this or a newer version
                (so two runs registering at once never move it backwards).
            note: kept in the alias history (e.g. the pipeline run id).

        Raises:
            RegistryError: unknown model or version, an alias not at ``expected``, or too many lost races.
        """
        _check_name("alias", alias)
        target = self.get_version(name, version)
        uri = self._alias_uri(name, alias)
        for attempt in range(ALIAS_ATTEMPTS):
            current, etag = self._read_alias(name, alias)
            now_at = current.version if current else None
            if expected is not ... and expected != now_at:
                raise RegistryError(
                    f"alias '{alias}' of '{name}' points to {_describe(now_at)}, not {_describe(expected)}: "
                    "not moved (another writer moved it)"
                )
            if current is not None and (
                now_at == target.version or (only_forward and now_at is not None and now_at > target.version)
            ):
                return current
            stamp = _now()
            record = AliasRecord(
                name=name,
                alias=alias,
                version=target.version,
                updated_at=stamp,
                history=[
                    *(current.history if current else []),
                    AliasChange(version=target.version, previous=now_at, at=stamp, note=note),
                ],
            )
            try:
                self.storage.write_json(uri, record.model_dump(), if_none_match=etag is None, if_match=etag)
            except PreconditionFailed:
                if expected is not ...:
                    raise RegistryError(
                        f"alias '{alias}' of '{name}' was moved by another writer: not moved to {target.version}"
                    ) from None
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            return record
        raise RegistryError(f"alias '{alias}' of '{name}' lost {ALIAS_ATTEMPTS} races in a row; try again")


def _describe(version: int | None | EllipsisType) -> str:
    return "nothing (unset)" if version is None else f"version {version}"


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 5]`` as ``1-3, 5``."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(parts)
