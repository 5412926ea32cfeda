"""fingerprint_data: a cheap key for "the same input data, cleaned the same way".

It hashes what clean_data's output depends on: the data and cleaning sections of the config, the
tokenizer source and the ETags of its files, the ftpipe version, and each input object's ETag (or
content hash for local files) and size. No data is read, so it costs one HEAD per input (and a listing
of the tokenizer). The DAG caches clean_data on this key: new data under the same URI changes the ETag
and so the key, which is what makes caching safe for scheduled retraining.
"""

from __future__ import annotations

import hashlib
import json

from ftpipe import __version__
from ftpipe.config import PipelineConfig
from ftpipe.errors import DataError, ModelError
from ftpipe.models import is_hub_id
from ftpipe.results import FingerprintDataResult
from ftpipe.storage import Storage

# Files a tokenizer is never loaded from; left out of the key (hashing a local model's weights would cost
# seconds on every run).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf", ".ckpt", ".npz")


def input_uris(config: PipelineConfig) -> list[str]:
    data = config.data
    return [uri for uri in (data.uri, data.train_uri, data.validation_uri, data.test_uri) if uri]


def tokenizer_etags(source: str, storage: Storage) -> dict[str, str]:
    """The ETags of the files under the tokenizer's directory or prefix, weights left out (a hub id: none).

    A tokenizer replaced in place then makes a new key. A missing one fails here, in a task never cached,
    rather than in clean_data, whose failure the cache would replay on every run until the key changed.

    Raises:
        ModelError: the directory or prefix holds no files.
    """
    if is_hub_id(source):
        return {}
    files = [uri for uri in storage.list(source) if not uri.lower().endswith(_WEIGHT_SUFFIXES)]
    if not files:
        raise ModelError(f"tokenizer not found: {source} (the model clean_data counts tokens with)")
    return {uri: storage.etag(uri) or "" for uri in files}


def run(config: PipelineConfig, storage: Storage | None = None) -> FingerprintDataResult:
    storage = storage or Storage(config.storage)
    etags = {}
    for uri in input_uris(config):
        etag = storage.etag(uri)
        if etag is None:
            raise DataError(f"dataset not found: {uri}")
        etags[uri] = etag
    recipe = {
        "task": config.task.model_dump(mode="json"),  # what a target cell means, and so what is quarantined
        "data": config.data.model_dump(mode="json"),
        "cleaning": config.cleaning.model_dump(mode="json"),
        "tokenizer": config.tokenizer_source,
        "tokenizer_files": tokenizer_etags(config.tokenizer_source, storage),
        "ftpipe": __version__,
        "inputs": etags,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return FingerprintDataResult(key=key, inputs=etags)
