"""Local-path storage: the same interface and conditional-write semantics as S3."""

import threading
from pathlib import Path

import pytest

from ftpipe.config import StorageConfig
from ftpipe.data.readers import SINGLE, Source, read_source
from ftpipe.errors import PreconditionFailed, StorageError, StorageUnavailable
from ftpipe.storage import Storage, join


def test_round_trip_and_listing(tmp_path):
    storage = Storage()
    root = str(tmp_path / "root")
    storage.write_json(join(root, "a", "x.json"), {"k": 1})
    storage.write_text(f"file://{root}/b.txt", "hello")
    assert storage.read_json(join(root, "a/x.json")) == {"k": 1}
    assert storage.read_text(join(root, "b.txt")) == "hello"
    assert storage.list(root) == sorted([str(tmp_path / "root/a/x.json"), str(tmp_path / "root/b.txt")])
    copy = storage.download_dir(root, tmp_path / "copy")
    assert (copy / "a" / "x.json").exists()


def test_create_only_write_refuses_to_overwrite(tmp_path):
    storage = Storage()
    uri = str(tmp_path / "v1.json")
    storage.write_text(uri, "first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.write_text(uri, "second", if_none_match=True)
    assert storage.read_text(uri) == "first"


def test_compare_and_swap_needs_the_current_etag(tmp_path):
    storage = Storage()
    uri = str(tmp_path / "alias.json")
    etag = storage.write_text(uri, "v1")
    storage.write_text(uri, "v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        storage.write_text(uri, "v3", if_match=etag)
    assert storage.read_text(uri) == "v2"


def test_only_one_of_many_concurrent_creators_wins(tmp_path):
    storage = Storage()
    uri = str(tmp_path / "claim")
    wins = []

    def claim(n):
        try:
            storage.write_text(uri, str(n), if_none_match=True)
            wins.append(n)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert storage.read_text(uri) == str(wins[0])


def test_missing_objects_are_one_clear_error(tmp_path):
    storage = Storage()
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(str(tmp_path / "absent"))
    with pytest.raises(StorageError, match="nothing found under"):
        storage.download_dir(str(tmp_path / "absent-dir"), tmp_path / "out")
    assert storage.etag(str(tmp_path / "absent")) is None


def test_only_what_a_retry_may_cure_is_transient(monkeypatch):
    """Pipeline tasks fail (and KFP retries them) only for StorageUnavailable; other errors stop the run."""
    from botocore.exceptions import ClientError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    nobody = Storage(StorageConfig(endpoint_url="http://127.0.0.1:9", connect_timeout_s=0.5, max_attempts=1))
    with pytest.raises(StorageUnavailable, match="does not answer") as unreachable:
        nobody.read_bytes("s3://bucket/key")
    assert unreachable.value.transient
    with pytest.raises(StorageUnavailable, match="^data.uri: S3 endpoint"):  # still transient, through a reader
        read_source(Source(SINGLE, "data.uri", "s3://bucket/data.csv"), "auto", {"text": "data.text_column"}, nobody)

    def answer(code: str, status: int) -> StorageError:
        error = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
        return nobody._storage_error(error, "s3://bucket/key")

    for code, status in [("SlowDown", 503), ("InternalError", 500), ("TooManyRequests", 429), ("Odd", 502)]:
        assert answer(code, status).transient, code
    for code, status in [("NoSuchKey", 404), ("AccessDenied", 403), ("NoSuchBucket", 404), ("InvalidRange", 416)]:
        assert not answer(code, status).transient, code
    assert isinstance(answer("PreconditionFailed", 412), PreconditionFailed)


def test_a_full_disk_is_one_line_naming_the_directory_whatever_the_library_raised(tmp_path, monkeypatch):
    import errno
    from collections import namedtuple

    from ftpipe import storage as storage_module
    from ftpipe.errors import DataError
    from ftpipe.storage import full_disk_errors

    with pytest.raises(StorageError, match=rf"^no space left on device in the work directory {tmp_path} \("):
        with full_disk_errors(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(StorageError, match="no space left"):  # safetensors names it in its message only
        with full_disk_errors(tmp_path):
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No'
                               ' space left on device" })')
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of room: another problem, left as it is
        with full_disk_errors(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9664 vs 9556")
    with pytest.raises(DataError):  # ftpipe's own errors pass through
        with full_disk_errors(tmp_path):
            raise DataError("bad data")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(storage_module.shutil, "disk_usage", lambda path: usage(6_000_000, 5_990_000, 10_000))
    with pytest.raises(StorageError, match=r"\(0.0 MB free of 6 MB\)"):  # torch.save's short write on a full disk
        with full_disk_errors(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9664 vs 9556")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (every write to it fails with ENOSPC)")
def test_a_download_to_a_full_disk_is_one_line(tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("text,label\n")
    with pytest.raises(StorageError, match="^no space left on device in the work directory /dev"):
        Storage().download_file(str(source), "/dev/full")
    with pytest.raises(StorageError, match=r"^cannot write .*/data.csv/inside-a-file: "):  # any other OSError
        Storage().download_file(str(source), source / "inside-a-file")
