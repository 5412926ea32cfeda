"""Temperature scaling measured: test ECE of a fine-tuned all-MiniLM-L6-v2 with the temperature fitted on validation
against the same model's raw softmax (T = 1).

``python -m bench.calibration [--out DIR] [--only NAME,...]``. For each case, clean_data splits the data (its default
70/15/15, stratified), finetune trains MiniLM with the default recipe (training.calibrate on: the temperature is
fitted on validation and saved with the model), and evaluate scores the saved model on the test split twice: as
saved, and with ``ftpipe_temperature`` removed from its config.json. The labels, and so accuracy and F1, are the
same; the expected calibration error and the test NLL are not. Prints one ``bench=calibration case=...`` line per
case and writes ``<out>/calibration-<case>.json``. About 13 minutes for the SMS sample and 10 for TREC on 2 shared
CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, dataset, emit, minilm_path, quiet_libraries

# (name, dataset, rows sampled before the split (None: all), training settings besides the default recipe). TREC
# is trained 3 epochs: the default recipe's 500 steps took over half an hour on 2 shared cores.
CASES = (("sms-sample", "sms-sample", None, {}), ("trec-800", "trec", 800, {"epochs": 3}))


def _test_nll(predictions_uri: str) -> float:
    """Mean NLL of the true label where the model's predicted label is right or wrong (binary: 1 - confidence)."""
    import numpy as np
    import pandas as pd

    scored = pd.read_parquet(predictions_uri)
    right = scored["predicted"].astype(str).to_numpy() == scored["label"].astype(str).to_numpy()
    # the true label's probability is the confidence where right; for two labels, 1 - confidence where wrong
    probability = np.where(right, scored["confidence"], 1 - scored["confidence"])
    return float(-np.log(np.clip(probability, 1e-12, 1)).mean())


def run_case(
    name: str, data_name: str, rows: int | None, training: dict[str, Any], work: Path, seed: int = 13
) -> dict[str, Any]:
    from ftpipe.config import parse_config
    from ftpipe.steps import clean_data, evaluate, finetune, select_model

    frame = dataset(data_name).drop_duplicates("text")
    if rows is not None:
        frame = frame.sample(n=min(rows, len(frame)), random_state=seed)
    source = work / f"{name}.csv"
    frame.to_csv(source, index=False)
    config = parse_config(
        {
            "data": {"uri": str(source)},
            "candidates": [{"name": "all-minilm-l6-v2", "source": minilm_path()}],
            "registry": {"uri": str(work / "registry"), "model_name": "calibration"},
            "storage": {"artifact_root": str(work / "runs")},
            "training": {"seed": seed, **training},
        }
    )
    cleaned = clean_data.run(config, str(work / name / "clean"))
    selection = select_model.run(
        config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, str(work / name / "select")
    )
    began = time.perf_counter()
    trained = finetune.run(
        config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, selection.selected, str(work / name / "ft")
    )
    note = next(line for line in trained.notes if line.startswith("temperature scaling"))
    raw_dir = work / name / "raw-model"
    shutil.copytree(trained.model_uri, raw_dir)
    settings = json.loads((raw_dir / "config.json").read_text())
    temperature = settings.pop("ftpipe_temperature")
    (raw_dir / "config.json").write_text(json.dumps(settings))
    figures: dict[str, Any] = {
        "case": name,
        "train_rows": cleaned.counts["train"],
        "validation_rows": cleaned.counts["validation"],
        "test_rows": cleaned.counts["test"],
        "labels": len(cleaned.labels),
        "epochs": trained.epochs_trained,
        "temperature": round(float(temperature), 4),
    }
    for kind, model in (("calibrated", trained.model_uri), ("raw", str(raw_dir))):
        scored = evaluate.run(config, cleaned.test_uri, cleaned.labels, model, str(work / name / f"eval-{kind}"))
        figures[f"{kind}_test_ece"] = round(float(scored.metrics["ece"]), 4)
        figures[f"{kind}_test_accuracy"] = round(float(scored.metrics["accuracy"]), 4)
        if len(cleaned.labels) == 2:
            figures[f"{kind}_test_nll"] = round(_test_nll(scored.predictions_uri), 4)
        figures[f"{kind}_mean_confidence"] = round(
            sum(b["rows"] * b["score"] for b in scored.metrics["calibration"]["bins"]) / scored.metrics["n_examples"], 4
        )
        figures[f"{kind}_slices"] = [
            f"{row['slice']}:{row['rows']}:{row['value']:.4f}" for row in scored.metrics["slices"]["text_length"]
        ]
    figures["seconds"] = round(time.perf_counter() - began, 1)
    figures["validation_note"] = note
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--only", default="", help="comma-separated case names")
    options = parser.parse_args(argv)
    quiet_libraries()
    chosen = [case for case in CASES if not options.only or case[0] in options.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="ftpipe-bench-calibration-") as scratch:
        for name, data_name, rows, training in chosen:
            figures = run_case(name, data_name, rows, training, Path(scratch))
            note = figures.pop("validation_note")
            emit(f"calibration-{name}", figures, options.out, validation_note=note)
            print(note, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
