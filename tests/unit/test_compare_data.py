"""fingerprint_data and compare_data: the cache key for cleaning, and the skip for unchanged data."""

import pytest

from ftpipe.config import parse_config
from ftpipe.errors import DataError, ModelError
from ftpipe.registry import ModelRegistry
from ftpipe.steps import compare_data, fingerprint_data
from ftpipe.storage import Storage


def _config(tmp_path, **cleaning):
    return parse_config(
        {
            "data": {"uri": str(tmp_path / "data.csv")},
            "cleaning": cleaning,
            "candidates": [{"name": "m", "source": str(tmp_path / "model")}],
            "registry": {"uri": str(tmp_path / "registry"), "model_name": "m"},
        }
    )


def test_the_data_key_changes_with_the_data_and_the_recipe_only(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\na,x\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    first = fingerprint_data.run(_config(tmp_path)).key
    assert fingerprint_data.run(_config(tmp_path)).key == first
    (tmp_path / "data.csv").write_text("text,label\na,x\nb,y\n")  # new data under the same URI
    second = fingerprint_data.run(_config(tmp_path)).key
    assert second != first
    assert fingerprint_data.run(_config(tmp_path, lowercase=True)).key != second


def test_the_data_key_covers_the_tokenizer_files_but_not_the_weights(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\na,x\n")
    with pytest.raises(ModelError, match="tokenizer not found"):  # here, not in clean_data, whose cache keeps failures
        fingerprint_data.run(_config(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (model / "model.safetensors").write_bytes(b"weights")
    first = fingerprint_data.run(_config(tmp_path)).key
    (model / "model.safetensors").write_bytes(b"other weights")
    assert fingerprint_data.run(_config(tmp_path)).key == first
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\nnew\n")  # the tokenizer replaced in place
    assert fingerprint_data.run(_config(tmp_path)).key != first


def test_the_data_key_needs_the_data(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(DataError, match="dataset not found"):
        fingerprint_data.run(_config(tmp_path))


def _register(registry: ModelRegistry, tmp_path, fingerprint: str) -> int:
    model = tmp_path / f"model-{fingerprint}"
    model.mkdir()
    (model / "config.json").write_text("{}")
    version = registry.register("m", model, {"data": {"fingerprint": fingerprint}}, "# card\n")
    return version.version


def test_training_runs_until_production_has_seen_this_data(tmp_path):
    config = _config(tmp_path)
    registry = ModelRegistry(Storage(), config.registry.uri)
    assert compare_data.run(config, "abc", registry=registry).changed  # nothing in production

    version = _register(registry, tmp_path, "abc")
    registry.set_alias("m", "production", version)
    unchanged = compare_data.run(config, "abc", registry=registry)
    assert not unchanged.changed and unchanged.production_version == version
    assert "skipping fine-tuning and registration" in unchanged.message

    assert compare_data.run(config, "abc", force=True, registry=registry).changed
    assert compare_data.run(config, "new", registry=registry).changed
