"""The model registry on a local path: versions, immutability, aliases, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftpipe.errors import PreconditionFailed, RegistryError, StorageError
from ftpipe.registry import ModelRegistry
from ftpipe.storage import Storage


def _model_dir(root: Path, marker: str) -> Path:
    directory = root / f"model-{marker}"
    (directory / "sub").mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"marker": marker}))
    (directory / "model.safetensors").write_bytes(marker.encode() * 100)
    (directory / "sub" / "vocab.txt").write_text("a\nb\n")
    (directory / ".complete").touch()  # hidden files stay out of a version
    (directory / "README.md").write_text("old card")  # replaced by the version's card
    return directory


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(Storage(), str(tmp_path / "registry"))


def test_register_numbers_versions_and_stores_files_card_and_metadata(registry, tmp_path):
    first = registry.register("spam", _model_dir(tmp_path, "a"), {"accuracy": 0.9}, "# card a")
    second = registry.register("spam", _model_dir(tmp_path, "b"), {"accuracy": 0.95}, "# card b")

    assert (first.version, second.version) == (1, 2)
    assert first.model_uri != second.model_uri
    assert {f.path for f in first.files} == {
        "config.json",
        "model.safetensors",
        "sub/vocab.txt",
        "metadata.json",
        "README.md",
    }
    assert registry.storage.read_text(first.model_card_uri) == "# card a"
    assert registry.storage.read_json(first.metadata_uri) == {"accuracy": 0.9}
    assert first.metadata == {"accuracy": 0.9}
    assert registry.list_models() == ["spam"]
    assert [v.version for v in registry.list_versions("spam")] == [1, 2]
    assert registry.get_version("spam", "v2") == second
    assert registry.get_version("spam", "000002") == second
    assert registry.latest_version("spam") == second
    assert registry.model_uri("spam", 1) == first.model_uri
    assert first.manifest_uri.endswith("spam/versions/000001.json")


def test_download_returns_the_exact_files(registry, tmp_path):
    registry.register("spam", _model_dir(tmp_path, "a"), {}, "card")
    target = registry.download("spam", 1, tmp_path / "out")
    assert (target / "model.safetensors").read_bytes() == b"a" * 100
    assert (target / "sub" / "vocab.txt").read_text() == "a\nb\n"
    assert (target / "README.md").read_text() == "card"
    assert not (target / ".complete").exists()


def test_a_version_is_immutable(registry, tmp_path):
    version = registry.register("spam", _model_dir(tmp_path, "a"), {}, "card")
    # The manifest is the commit point and is written create-only: it can never be replaced.
    with pytest.raises(PreconditionFailed):
        registry.storage.write_bytes(version.manifest_uri, b"{}", if_none_match=True)
    # Registering again makes a new version and leaves the old one as it was.
    registry.register("spam", _model_dir(tmp_path, "b"), {}, "other card")
    assert registry.get_version("spam", 1) == version
    # Files changed behind the registry's back are caught on download.
    registry.storage.write_bytes(version.model_uri + "/model.safetensors", b"tampered")
    with pytest.raises(RegistryError, match="corrupted: model.safetensors"):
        registry.download("spam", 1, tmp_path / "out")


def test_only_committed_versions_are_visible(registry, tmp_path):
    # A blob with no manifest (a crashed registration) is not a version.
    registry.storage.write_bytes(registry.uri + "/spam/blobs/deadbeef/config.json", b"{}")
    assert registry.list_models() == []
    with pytest.raises(RegistryError, match="unknown model 'spam'"):
        registry.list_versions("spam")
    assert registry.register("spam", _model_dir(tmp_path, "a"), {}, "card").version == 1


def test_a_failed_upload_leaves_no_version_and_no_files(tmp_path):
    class Flaky(Storage):
        calls = 0

        def upload_file(self, path, uri):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise StorageError("disk full")
            super().upload_file(path, uri)

    registry = ModelRegistry(Flaky(), str(tmp_path / "registry"))
    with pytest.raises(StorageError, match="disk full"):
        registry.register("spam", _model_dir(tmp_path, "a"), {}, "card")
    assert registry.list_models() == []
    assert registry.storage.list(registry.uri) == []


def test_a_lost_commit_race_takes_the_next_number(registry, tmp_path):
    registry.register("spam", _model_dir(tmp_path, "a"), {}, "card")
    real_numbers = registry._version_numbers
    # Another writer commits version 2 between our listing and our commit.
    stale = iter([[1]])

    def numbers_then_race(name):
        listed = next(stale, None)
        if listed is not None:
            registry.storage.write_bytes(registry._manifest_uri(name, 2), b'{"other": "writer"}', if_none_match=True)
            return listed
        return real_numbers(name)

    registry._version_numbers = numbers_then_race
    version = registry.register("spam", _model_dir(tmp_path, "b"), {}, "card b")
    assert version.version == 3
    assert registry.storage.read_json(registry._manifest_uri("spam", 2)) == {"other": "writer"}


def test_aliases_move_and_keep_history(registry, tmp_path):
    for marker in "abc":
        registry.register("spam", _model_dir(tmp_path, marker), {"marker": marker}, "card")
    assert registry.resolve_alias("spam", "production") is None

    registry.set_alias("spam", "production", 1, note="first")
    registry.set_alias("spam", "production", 3)
    registry.set_alias("spam", "staging", 2)

    assert registry.resolve_alias("spam", "production").metadata == {"marker": "c"}
    assert registry.list_aliases("spam") == {"production": 3, "staging": 2}
    record = registry.get_alias("spam", "production")
    assert [(h.previous, h.version, h.note) for h in record.history] == [(None, 1, "first"), (1, 3, None)]
    # Setting it where it already is changes nothing.
    assert registry.set_alias("spam", "production", 3).history == record.history


def test_alias_compare_and_swap(registry, tmp_path):
    for marker in "ab":
        registry.register("spam", _model_dir(tmp_path, marker), {}, "card")
    registry.set_alias("spam", "production", 1, expected=None)
    with pytest.raises(RegistryError, match="points to version 1, not nothing"):
        registry.set_alias("spam", "production", 2, expected=None)
    with pytest.raises(RegistryError, match="points to version 1, not version 2"):
        registry.set_alias("spam", "production", 2, expected=2)
    assert registry.set_alias("spam", "production", 2, expected=1).version == 2
    # only_forward never moves an alias back.
    assert registry.set_alias("spam", "production", 1, only_forward=True).version == 2


def test_alias_write_loses_a_race_then_retries_on_fresh_state(registry, tmp_path):
    for marker in "abc":
        registry.register("spam", _model_dir(tmp_path, marker), {}, "card")
    registry.set_alias("spam", "production", 1)
    storage = registry.storage
    real_write = storage.write_json
    raced = []

    def write_after_a_rival(uri, value, **kwargs):
        if not raced:  # a rival moves the alias between our read and our write
            raced.append(True)
            ModelRegistry(Storage(), registry.uri).set_alias("spam", "production", 2, note="rival")
        return real_write(uri, value, **kwargs)

    storage.write_json = write_after_a_rival
    record = registry.set_alias("spam", "production", 3)
    assert record.version == 3
    assert [(h.previous, h.version) for h in record.history] == [(None, 1), (1, 2), (2, 3)]

    # With `expected`, a lost race is an error instead of a retry.
    raced.clear()
    storage.write_json = write_after_a_rival
    with pytest.raises(RegistryError, match="moved by another writer"):
        registry.set_alias("spam", "production", 1, expected=3)
    assert registry.get_alias("spam", "production").version == 2


def test_errors_are_one_clear_line(registry, tmp_path):
    with pytest.raises(RegistryError, match=r"unknown model 'spam' .*registry is empty"):
        registry.get_version("spam", 1)
    registry.register("spam", _model_dir(tmp_path, "a"), {}, "card")
    registry.register("spam", _model_dir(tmp_path, "b"), {}, "card")
    errors = []
    for call in (
        lambda: registry.get_version("spam", 7),
        lambda: registry.get_version("ham", 1),
        lambda: registry.set_alias("spam", "production", 9),
        lambda: registry.get_alias("spam", "production"),
        lambda: registry.download("spam", 5, tmp_path / "x"),
        lambda: registry.get_version("spam", "latest"),
        lambda: registry.set_alias("spam", "Bad Alias", 1),
        lambda: registry.register("Bad Name", _model_dir(tmp_path, "c"), {}, "card"),
        lambda: registry.register("spam", tmp_path / "missing", {}, "card"),
        lambda: registry.register("spam", tmp_path / "empty-dir-that-exists", {}, "card"),
    ):
        (tmp_path / "empty-dir-that-exists").mkdir(exist_ok=True)
        with pytest.raises(RegistryError) as error:
            call()
        errors.append(str(error.value))
    assert all("\n" not in message for message in errors)
    assert errors[0] == "unknown version 7 of model 'spam' (versions: 1-2)"
    assert errors[1].startswith("unknown model 'ham'") and "registered models: spam" in errors[1]
    assert errors[2] == "unknown version 9 of model 'spam' (versions: 1-2)"
    assert errors[3] == "unknown alias 'production' of model 'spam' (it has no aliases)"
    assert "no model files" in errors[9]


def test_resolve_alias_of_an_unknown_model_is_none(registry):
    assert registry.resolve_alias("never-registered", "production") is None


def test_a_registered_model_loads_with_from_pretrained(registry, tmp_path, tiny_bert_dir):
    from split_files import load_classifier

    model_dir = tmp_path / "trained"
    load_classifier(tiny_bert_dir, id2label={0: "ham", 1: "spam"}).save_pretrained(model_dir)
    version = registry.register("spam", model_dir, {}, "---\nlicense: apache-2.0\n---\n# card\n")
    assert version.model_uri.startswith(registry.uri)
    loaded = load_classifier(str(registry.download("spam", version.version, tmp_path / "out")))
    assert loaded.config.id2label == {0: "ham", 1: "spam"}


def test_a_commit_whose_answer_was_lost_is_not_registered_twice(tmp_path):
    class LostAnswer(Storage):
        def write_bytes(self, uri, data, **kwargs):
            etag = super().write_bytes(uri, data, **kwargs)
            if "/versions/" in uri:  # the write landed, but the client saw a 412 from its retry
                raise PreconditionFailed(f"conditional write lost a race on {uri}")
            return etag

    registry = ModelRegistry(LostAnswer(), str(tmp_path / "registry"))
    version = registry.register("spam", _model_dir(tmp_path, "a"), {"run": 1}, "card")
    assert version.version == 1
    assert [v.version for v in registry.list_versions("spam")] == [1]


def test_a_keyed_registration_retried_after_its_commit_returns_its_version(registry, tmp_path):
    first = registry.register("spam", _model_dir(tmp_path, "a"), {"try": 1}, "card", key="run-1")
    other = registry.register("spam", _model_dir(tmp_path, "b"), {}, "card", key="run-2")
    # the retry of run-1 (its card and metadata are written anew, with another time in them): the same version
    again = registry.register("spam", tmp_path / "model-a", {"try": 2}, "card, again", key="run-1")
    assert again == first and other.version == 2
    assert [v.version for v in registry.list_versions("spam")] == [1, 2]
    assert registry.get_version("spam", 1).metadata == {"try": 1}
    # other model files under the same key, or no key at all: a new version
    (tmp_path / "model-a" / "model.safetensors").write_bytes(b"retrained")
    assert registry.register("spam", tmp_path / "model-a", {}, "card", key="run-1").version == 3
    assert registry.register("spam", _model_dir(tmp_path, "c"), {}, "card").version == 4
    assert registry.register("spam", tmp_path / "model-c", {}, "card").version == 5


def test_a_broken_manifest_is_a_clear_error(registry, tmp_path):
    registry.register("spam", _model_dir(tmp_path, "a"), {}, "card")
    registry.storage.write_bytes(registry.uri + "/spam/versions/000002.json", b"{not json")
    with pytest.raises(RegistryError, match=r"version manifest .*000002.json is not valid JSON"):
        registry.get_version("spam", 2)
    # the next registration skips the taken number (and a keyed one is not stopped by the broken manifest)
    assert registry.register("spam", _model_dir(tmp_path, "b"), {}, "card").version == 3
    assert registry.register("spam", tmp_path / "model-b", {}, "card", key="run-9").version == 4
