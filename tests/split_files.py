"""Small cleaned splits, as clean_data writes them, for the tests of the steps that read them."""

import random
from pathlib import Path

import pandas as pd

LABELS = ["ham", "spam"]


def write_split(path: Path, rows: int, seed: int, labels: tuple[int, ...] = (0, 1), max_filler: int = 12) -> str:
    """A parquet split of short spam/ham-like texts whose first word gives the label away."""
    rng = random.Random(seed)
    records = []
    for index in range(rows):
        label_id = labels[index % len(labels)]
        word = rng.choice(["free", "prize", "win", "cash"]) if label_id else rng.choice(["lunch", "mum", "later", "ok"])
        filler = " ".join(rng.choice(["see", "you", "the", "now", "call"]) for _ in range(rng.randint(1, max_filler)))
        records.append({"text": f"{word} {filler}", "label": LABELS[label_id], "label_id": label_id})
    pd.DataFrame(records).to_parquet(path)
    return str(path)


def load_classifier(source: str, *, id2label: dict[int, str] | None = None, num_labels: int | None = None):
    """A sequence classifier from ``source`` (a new head of ``id2label`` or ``num_labels``), as tests build them."""
    from transformers import AutoModelForSequenceClassification

    from ftpipe.models import load_pretrained

    settings: dict = {}
    if id2label is not None:
        settings = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    elif num_labels is not None:
        settings = {"num_labels": num_labels}
    return load_pretrained(AutoModelForSequenceClassification, source, **settings)
