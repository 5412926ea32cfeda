"""Local-path storage: the same interface and conditional-write semantics as S3."""

import threading

import pytest

from ftpipe.errors import PreconditionFailed, StorageError
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
