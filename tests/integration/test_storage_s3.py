"""Storage against a real SeaweedFS server: objects, prefixes, conditional writes, and clear failures."""

from pathlib import Path

import pytest

from ftpipe import s3server
from ftpipe.config import StorageConfig
from ftpipe.errors import PreconditionFailed, StorageError
from ftpipe.storage import Storage


def test_objects_and_directories_round_trip(s3_storage, tmp_path):
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(b"\0" * 10_000)
    written = s3_storage.upload_dir(source, "s3://ftpipe/t/model")
    assert written == ["s3://ftpipe/t/model/config.json", "s3://ftpipe/t/model/sub/weights.bin"]
    with s3_storage.local_copy("s3://ftpipe/t/model", directory=True) as copy:
        assert (copy / "sub" / "weights.bin").read_bytes() == b"\0" * 10_000
    assert s3_storage.list("s3://ftpipe/t/model") == written


def test_conditional_writes_are_real(s3_storage):
    uri = "s3://ftpipe/t/cas/alias.json"
    etag = s3_storage.write_text(uri, "v1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        s3_storage.write_text(uri, "again", if_none_match=True)
    s3_storage.write_text(uri, "v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        s3_storage.write_text(uri, "v3", if_match=etag)
    assert s3_storage.read_text(uri) == "v2"


def test_missing_object_and_bucket(s3_storage):
    with pytest.raises(StorageError, match="not found: s3://ftpipe/t/absent"):
        s3_storage.read_bytes("s3://ftpipe/t/absent")
    with pytest.raises(StorageError, match="bucket does not exist: no-such-bucket"):
        s3_storage.read_bytes("s3://no-such-bucket/x")


def test_refused_credentials_are_named(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError, match="refused the credentials"):
        Storage().read_bytes("s3://ftpipe/anything")


def test_endpoint_that_does_not_answer(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = Storage(StorageConfig(endpoint_url=f"http://127.0.0.1:{s3server.free_port()}", max_attempts=1))
    with pytest.raises(StorageError, match="does not answer"):
        storage.check("s3://ftpipe/x")


def test_embedded_server_is_found_without_any_environment(s3_server, monkeypatch, tmp_path):
    """`ftpipe s3 up` then nothing else: storage finds the server and its keys from the state file."""
    state = s3server.start(tmp_path / "embedded")
    try:
        monkeypatch.setenv("FTPIPE_HOME", str(tmp_path))
        monkeypatch.setattr(s3server, "state_dir", lambda: tmp_path / "embedded")
        storage = Storage()
        storage.write_text("s3://ftpipe/hello.txt", "hi")
        assert storage.read_text("s3://ftpipe/hello.txt") == "hi"
        assert storage.endpoint_url == state.endpoint_url
    finally:
        s3server.stop(tmp_path / "embedded")
    assert s3server.read_state(tmp_path / "embedded") is None


def test_a_model_replaced_under_the_same_prefix_is_fetched_again(s3_storage, tmp_path):
    from ftpipe.models import resolve_source

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"version": 1}')
    s3_storage.upload_dir(model, "s3://ftpipe/models/replaced")
    listed = s3_storage.etags("s3://ftpipe/models/replaced")  # from the listing: the ETags a HEAD returns
    assert listed == {uri: s3_storage.etag(uri) for uri in s3_storage.list("s3://ftpipe/models/replaced")}
    first = resolve_source("s3://ftpipe/models/replaced", s3_storage)
    assert resolve_source("s3://ftpipe/models/replaced", s3_storage) == first  # unchanged: the cached copy

    (model / "config.json").write_text('{"version": 2}')
    s3_storage.upload_dir(model, "s3://ftpipe/models/replaced")
    second = resolve_source("s3://ftpipe/models/replaced", s3_storage)
    assert second != first and (Path(second) / "config.json").read_text() == '{"version": 2}'
