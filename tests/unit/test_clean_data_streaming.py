"""clean_data reads, cleans and writes in batches: a run in many small batches gives exactly the outputs of a run
in one batch (splits, quarantine, report, fingerprint), whatever the format and wherever copies fall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftpipe.config import parse_config
from ftpipe.steps import clean_data

ASSETS = Path(__file__).parents[1] / "assets"


@pytest.fixture(autouse=True)
def _fast_pictures(monkeypatch):
    import matplotlib.pyplot as plt

    def no_png(figure):
        plt.close(figure)
        return "data:image/png;base64,"

    monkeypatch.setattr("ftpipe.reports.figure_to_data_uri", no_png)


def _messy(seed: int) -> pd.DataFrame:
    """The SMS sample with what clean_data must decide across batches: exact copies far apart, a copy with another
    label (a conflict), near-copies (a word changed), HTML and spacing variants of one text, missing cells."""
    sms = pd.read_csv(ASSETS / "sms-spam-sample.csv", dtype=str)
    frame = pd.DataFrame({"text": sms["text"], "label": np.where(sms["spam"] == "1", "spam", "ham")})
    rng = np.random.default_rng(seed)
    picked = frame.sample(120, random_state=seed)
    copies = picked.iloc[:60]
    conflicts = picked.iloc[60:70].assign(label=lambda f: np.where(f["label"] == "spam", "ham", "spam"))
    near = picked.iloc[70:100].assign(text=lambda f: [t.rsplit(" ", 1)[0] + " zzz" for t in f["text"]])
    variants = picked.iloc[100:110].assign(text=lambda f: ["<p>" + t.replace(" ", "  ", 1) + "</p>" for t in f["text"]])
    missing = pd.DataFrame({"text": [None, "", "   ", "ok"], "label": ["ham", "spam", "ham", None]})
    everything = pd.concat([frame, copies, conflicts, near, variants, missing], ignore_index=True)
    return everything.iloc[rng.permutation(len(everything))].reset_index(drop=True)


def _write(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def _outputs(out: Path) -> tuple[dict[str, pd.DataFrame], dict]:
    frames = {name: pd.read_parquet(out / f"{name}.parquet") for name in ("train", "validation", "test", "quarantine")}
    report = json.loads((out / "report.json").read_text())
    report["near_duplicates"].pop("seconds")
    report.pop("outputs")
    return frames, report


def _run_in_batches(monkeypatch, config, out: Path, rows: int):
    monkeypatch.setattr(clean_data, "_BATCH_ROWS", rows)
    out.mkdir()
    result = clean_data.run(config, str(out))
    return result, *_outputs(out)


def _config(data: dict, tokenizer: str, **cleaning):
    raw = {"data": data, "candidates": [{"name": "tiny", "source": tokenizer}], "registry": {"model_name": "m"}}
    return parse_config({**raw, "cleaning": cleaning} if cleaning else raw)


def _same(monkeypatch, config, tmp_path: Path, small: int) -> dict:
    whole, whole_frames, whole_report = _run_in_batches(monkeypatch, config, tmp_path / "whole", 1 << 20)
    parts, parts_frames, parts_report = _run_in_batches(monkeypatch, config, tmp_path / "parts", small)
    assert parts.fingerprint == whole.fingerprint
    assert parts.counts == whole.counts and parts.rejected == whole.rejected
    for name, frame in whole_frames.items():
        pd.testing.assert_frame_equal(parts_frames[name], frame, obj=name)
    assert parts_report == whole_report
    return whole_report


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_one_file_in_small_batches_gives_the_outputs_of_one_batch(monkeypatch, tmp_path, tiny_bert_dir, suffix):
    data = _write(_messy(0), tmp_path / f"texts{suffix}")
    # a token sample smaller than the distinct texts: the sampled statistics are those of one batch too
    config = _config({"uri": data}, tiny_bert_dir, token_stats_sample=100, max_chars=150)
    report = _same(monkeypatch, config, tmp_path, 37)
    rejected = report["rejected"]
    # the run did meet what the batches must agree on
    assert report["token_lengths"]["counted"]["sampled"]
    for reason in ("missing_text", "empty_text", "missing_label", "too_long", "conflicting_labels", "duplicate"):
        assert rejected[reason] > 0, reason
    assert rejected["near_duplicate"] > 0 and report["near_duplicates"]["examples"]["near_duplicate"]


def test_the_users_own_splits_in_small_batches_give_the_outputs_of_one_batch(monkeypatch, tmp_path, tiny_bert_dir):
    frame = _messy(1)
    cut = len(frame) // 5
    paths = {
        "train_uri": _write(frame.iloc[2 * cut :], tmp_path / "train.csv"),
        "validation_uri": _write(frame.iloc[:cut], tmp_path / "validation.jsonl"),
        "test_uri": _write(frame.iloc[cut : 2 * cut], tmp_path / "test.parquet"),
    }
    report = _same(monkeypatch, _config(paths, tiny_bert_dir), tmp_path, 50)
    assert report["rejected"]["leakage"] > 0 and report["rejected"]["near_leakage"] > 0


def test_without_near_duplicates_or_a_token_sample_batches_change_nothing(monkeypatch, tmp_path, tiny_bert_dir):
    data = _write(_messy(2), tmp_path / "texts.csv")
    config = _config({"uri": data}, tiny_bert_dir, near_duplicate_threshold=None, token_stats_sample=None)
    report = _same(monkeypatch, config, tmp_path, 64)
    assert not report["token_lengths"]["counted"]["sampled"]
    assert report["near_duplicates"]["texts_hashed"] == 0
