"""fingerprint_data: a cheap key for "the same input data, cleaned the same way".

It hashes what clean_data's output depends on: the data and cleaning sections of the config, the
tokenizer source, the ftpipe version, and each input object's ETag (or content hash for local files)
and size. No data is read, so it costs one HEAD per input. The DAG caches clean_data on this key:
new data under the same URI changes the ETag and so the key, which is what makes caching safe for
scheduled retraining.
"""

from __future__ import annotations

import hashlib
import json

from ftpipe import __version__
from ftpipe.config import PipelineConfig
from ftpipe.errors import DataError
from ftpipe.results import FingerprintDataResult
from ftpipe.storage import Storage


def input_uris(config: PipelineConfig) -> list[str]:
    data = config.data
    return [uri for uri in (data.uri, data.train_uri, data.validation_uri, data.test_uri) if uri]


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
        "ftpipe": __version__,
        "inputs": etags,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return FingerprintDataResult(key=key, inputs=etags)
