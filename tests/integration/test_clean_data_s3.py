"""clean_data against a real SeaweedFS server: data, tokenizer and outputs all on S3."""

from __future__ import annotations

import gzip
import io
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.errors import StorageError
from ftpipe.steps import clean_data

SAMPLE = Path(__file__).parents[1] / "assets" / "sms-spam-sample.csv"


def sms_config(uri: str, tokenizer_source: str):
    return parse_config(
        {
            "data": {"uri": uri, "label_column": "spam", "label_mapping": {"0": "ham", "1": "spam"}},
            "candidates": [{"name": "tiny", "source": tokenizer_source}],
            "registry": {"model_name": "sms"},
        }
    )


def test_round_trip_through_s3(s3_storage, tiny_bert_dir, tmp_path):
    run = uuid.uuid4().hex[:8]
    data_uri = f"s3://data/{run}/sms-spam.csv.gz"  # the extension survives the download: gzip is inferred
    s3_storage.write_bytes(data_uri, gzip.compress(SAMPLE.read_bytes()))
    s3_storage.upload_dir(tiny_bert_dir, f"s3://ftpipe/{run}/models/tiny")
    output_uri = f"s3://ftpipe/{run}/clean_data"

    result = clean_data.run(sms_config(data_uri, f"s3://ftpipe/{run}/models/tiny"), output_uri)  # default Storage

    names = {uri.rsplit("/", 1)[-1] for uri in s3_storage.list(output_uri)}
    assert names == {
        "train.parquet",
        "validation.parquet",
        "test.parquet",
        "quarantine.parquet",
        "report.json",
        "report.md",
        "report.html",
    }
    assert result.train_uri == f"{output_uri}/train.parquet"
    train = pd.read_parquet(io.BytesIO(s3_storage.read_bytes(result.train_uri)))
    assert len(train) == result.counts["train"] and set(train["label"]) == {"ham", "spam"}
    report = s3_storage.read_json(result.report_json_uri)
    assert report["rows"]["input"] == 600 == report["rows"]["kept"] + report["rows"]["quarantined"]
    assert report["fingerprint"] == result.fingerprint

    local = clean_data.run(sms_config(str(SAMPLE), tiny_bert_dir), str(tmp_path / "local"))
    assert local.fingerprint == result.fingerprint and local.counts == result.counts


def test_user_splits_on_s3(s3_storage, tiny_bert_dir):
    run = uuid.uuid4().hex[:8]
    frame = pd.read_csv(SAMPLE, dtype=str)
    uris = {}
    for name, part in (("train", frame.iloc[:400]), ("validation", frame.iloc[400:500]), ("test", frame.iloc[500:])):
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        uris[f"{name}_uri"] = f"s3://data/{run}/{name}.parquet"
        s3_storage.write_bytes(uris[f"{name}_uri"], buffer.getvalue())
    config = parse_config(
        {
            "data": {**uris, "label_column": "spam", "label_mapping": {"0": "ham", "1": "spam"}},
            "candidates": [{"name": "tiny", "source": tiny_bert_dir}],
            "registry": {"model_name": "sms"},
        }
    )
    result = clean_data.run(config, f"s3://ftpipe/{run}/clean_data", s3_storage)
    assert sum(result.counts.values()) + sum(result.rejected.values()) == 600
    quarantine = pd.read_parquet(io.BytesIO(s3_storage.read_bytes(result.quarantine_uri)))
    assert set(quarantine["source_split"]) <= {"train", "validation", "test"}


def test_missing_object_fails_cleanly_and_writes_nothing(s3_storage, tiny_bert_dir):
    run = uuid.uuid4().hex[:8]
    output_uri = f"s3://ftpipe/{run}/clean_data"
    with pytest.raises(StorageError, match=f"data.uri: not found: s3://data/{run}/absent.csv"):
        clean_data.run(sms_config(f"s3://data/{run}/absent.csv", tiny_bert_dir), output_uri, s3_storage)
    assert s3_storage.list(output_uri) == []
