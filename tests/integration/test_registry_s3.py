"""The model registry against a real SeaweedFS server: concurrent commits, alias races, atomic visibility."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ftpipe.config import StorageConfig
from ftpipe.errors import PreconditionFailed, RegistryError
from ftpipe.registry import ModelRegistry
from ftpipe.storage import Storage

WRITERS = 4


def _model_dir(root: Path, marker: str) -> Path:
    directory = root / f"model-{marker}"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"marker": marker}))
    (directory / "model.safetensors").write_bytes(marker.encode() * 5000)
    return directory


class RacingStorage(Storage):
    """Holds every writer at a barrier just before its first write to a matching key, then lets all go."""

    def __init__(self, barrier: threading.Barrier, key_part: str) -> None:
        super().__init__(StorageConfig())
        self.barrier = barrier
        self.key_part = key_part
        self.held = False
        self.lost_races = 0
        self.client  # noqa: B018 - boto3 clients must be created outside the threads

    def write_bytes(self, uri, data, **kwargs):
        if self.key_part in uri and not self.held:
            self.held = True
            self.barrier.wait(timeout=60)
        try:
            return super().write_bytes(uri, data, **kwargs)
        except PreconditionFailed:
            self.lost_races += 1
            raise


@pytest.fixture
def registry_uri(s3_env) -> str:
    return f"s3://ftpipe/registry-{uuid.uuid4().hex[:8]}"


def test_concurrent_registrations_get_distinct_complete_versions(registry_uri, tmp_path):
    barrier = threading.Barrier(WRITERS)
    storages = [RacingStorage(barrier, "/versions/") for _ in range(WRITERS)]
    sources = [_model_dir(tmp_path, str(i)) for i in range(WRITERS)]

    def register(i: int):
        registry = ModelRegistry(storages[i], registry_uri)
        return registry.register("spam", sources[i], {"writer": i}, f"card {i}")

    with ThreadPoolExecutor(WRITERS) as pool:
        versions = list(pool.map(register, range(WRITERS)))

    assert sorted(v.version for v in versions) == [1, 2, 3, 4]
    assert sum(s.lost_races for s in storages) >= WRITERS - 1  # they really raced on the same numbers
    reader = ModelRegistry(Storage(), registry_uri)
    assert [v.version for v in reader.list_versions("spam")] == [1, 2, 3, 4]
    for i, version in enumerate(versions):
        stored = reader.get_version("spam", version.version)
        assert stored.metadata == {"writer": i}
        target = reader.download("spam", version.version, tmp_path / f"out-{i}")  # checksums verified
        assert json.loads((target / "config.json").read_text()) == {"marker": str(i)}
        assert (target / "README.md").read_text() == f"card {i}"


def test_alias_compare_and_swap_race_has_one_winner(registry_uri, tmp_path):
    setup = ModelRegistry(Storage(), registry_uri)
    for i in range(WRITERS + 1):
        setup.register("spam", _model_dir(tmp_path, str(i)), {}, "card")
    setup.set_alias("spam", "production", 1)

    barrier = threading.Barrier(WRITERS)
    storages = [RacingStorage(barrier, "/aliases/") for _ in range(WRITERS)]

    def promote(i: int):
        try:
            return ModelRegistry(storages[i], registry_uri).set_alias("spam", "production", i + 2, expected=1)
        except RegistryError as error:
            return error

    with ThreadPoolExecutor(WRITERS) as pool:
        outcomes = list(pool.map(promote, range(WRITERS)))

    winners = [o for o in outcomes if not isinstance(o, RegistryError)]
    assert len(winners) == 1
    assert all("moved by another writer" in str(o) for o in outcomes if isinstance(o, RegistryError))
    record = setup.get_alias("spam", "production")
    assert record.version == winners[0].version
    assert [(h.previous, h.version) for h in record.history] == [(None, 1), (1, winners[0].version)]


def test_concurrent_alias_moves_lose_no_update(registry_uri, tmp_path):
    setup = ModelRegistry(Storage(), registry_uri)
    for i in range(WRITERS):
        setup.register("spam", _model_dir(tmp_path, str(i)), {}, "card")

    barrier = threading.Barrier(WRITERS)
    storages = [RacingStorage(barrier, "/aliases/") for _ in range(WRITERS)]

    def move(i: int):
        return ModelRegistry(storages[i], registry_uri).set_alias("spam", "staging", i + 1, note=f"writer {i}")

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(move, range(WRITERS)))

    record = setup.get_alias("spam", "staging")
    assert sorted(h.note for h in record.history) == [f"writer {i}" for i in range(WRITERS)]
    assert record.version == record.history[-1].version
    assert [h.previous for h in record.history[1:]] == [h.version for h in record.history[:-1]]
    assert sum(s.lost_races for s in storages) >= 1


def test_nothing_is_visible_before_the_commit(registry_uri, tmp_path):
    staged, release = threading.Event(), threading.Event()

    class PausingStorage(Storage):
        def write_bytes(self, uri, data, **kwargs):
            if "/versions/" in uri:  # the commit: pause here, with every file already uploaded
                staged.set()
                assert release.wait(timeout=60)
            return super().write_bytes(uri, data, **kwargs)

    writer_storage = PausingStorage()
    writer_storage.client  # noqa: B018 - create the boto3 client outside the thread
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            ModelRegistry(writer_storage, registry_uri).register, "spam", _model_dir(tmp_path, "a"), {}, "card"
        )
        assert staged.wait(timeout=60)
        reader = ModelRegistry(Storage(), registry_uri)
        uploaded = reader.storage.list(registry_uri)
        assert any(uri.endswith("/model.safetensors") for uri in uploaded)
        assert reader.list_models() == []
        with pytest.raises(RegistryError, match="unknown model 'spam'"):
            reader.get_version("spam", 1)
        assert reader.resolve_alias("spam", "staging") is None
        release.set()
        version = future.result(timeout=60)
    assert reader.get_version("spam", 1) == version


def test_a_registered_model_loads_from_s3(registry_uri, tmp_path, tiny_bert_dir):
    from split_files import load_classifier

    from ftpipe.models import resolve_source

    model_dir = tmp_path / "trained"
    load_classifier(tiny_bert_dir, id2label={0: "ham", 1: "spam"}).save_pretrained(model_dir)
    registry = ModelRegistry(Storage(), registry_uri)
    version = registry.register("spam", model_dir, {"run_id": "r1"}, "# card\n")
    registry.set_alias("spam", "production", version.version)
    found = registry.resolve_alias("spam", "production")
    assert found == version
    model = load_classifier(resolve_source(registry.model_uri("spam", found.version), registry.storage))
    assert model.config.id2label == {0: "ham", 1: "spam"}


def test_export_writes_a_merged_version_as_it_is_and_never_over_a_directory(registry_uri, tmp_path, tiny_bert_dir):
    from split_files import load_classifier

    from ftpipe.cli import main

    model_dir = tmp_path / "trained"
    load_classifier(tiny_bert_dir, id2label={0: "ham", 1: "spam"}).save_pretrained(model_dir)
    ModelRegistry(Storage(), registry_uri).register("spam", model_dir, {}, "# card\n")
    exported, missing = tmp_path / "exported", tmp_path / "missing"

    def export(version: str, destination: Path) -> int:
        command = ["registry", "export", "spam", version, "--merged", str(destination)]
        return main([*command, "--registry-uri", registry_uri])

    assert export("1", exported) == 0
    assert load_classifier(str(exported)).config.id2label == {0: "ham", 1: "spam"}
    assert (exported / "README.md").read_text() == "# card\n"
    # A directory with files in it is left alone; a version that does not exist writes nothing.
    assert export("1", exported) != 0
    assert export("7", missing) != 0 and not missing.exists()
