"""The default recipe on real data held out from the demo: fixed (the old defaults) against fitted to the data.

``python -m bench.recipe [--smoke] [--out DIR] [--only NAME,...]``. For each case (a dataset and a number of
training rows): clean_data splits a seeded sample, select_model fits its frozen-embedding probe, finetune trains
all-MiniLM-L6-v2 twice (the recipe before it was fitted: 3 epochs at 5e-5, 10% warm-up, 128 tokens; then with
every recipe setting unset, so ``ftpipe.training.recipe`` derives it), evaluate scores both on the same test
split, and a TF-IDF (1-2 grams) + logistic regression baseline is fitted on the same train split. With
``--sweep``, a small sweep (:data:`SWEEP`) runs too, and its winner (chosen on validation) is scored on test; with
``--truncation``, the fitted recipe at a short window twice, cutting texts head-only and head+tail. Prints one
``bench=recipe case=... key=value`` line per case and writes ``<out>/recipe.json``.

Not part of ``python -m bench`` (whose benchmarks measure speed): this one measures model quality, and takes
about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, dataset, machine, minilm_path, quiet_libraries

# (name, dataset, training rows); every case is tested on 1,000 rows held out from its training rows
CASES = (
    ("trec-3000", "trec", 3000),
    ("trec-100", "trec", 100),
    ("movie-reviews-3000", "movie-reviews", 3000),
    ("trec-fine-3000", "trec-fine", 3000),  # 20 classes
)
FIXED = {"epochs": 3, "learning_rate": 5e-5, "warmup_ratio": 0.1, "max_length": 128}  # the defaults until 2026-12
# No set here has texts near MiniLM's 512-token window; a window of 24 tokens cuts many of the movie snippets,
# which is how ``--truncation`` compares keeping their head with keeping their head and tail.
SHORT_WINDOW = 24


def _baseline(train, test) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=2000))
    model.fit(train["text"], train["label"])
    predicted = model.predict(test["text"])
    return {
        "accuracy": float(accuracy_score(test["label"], predicted)),
        "f1_macro": float(f1_score(test["label"], predicted, average="macro")),
    }


def run_case(
    name: str,
    data_name: str,
    train_rows: int,
    work: Path,
    seed: int = 13,
    sweep: bool = False,
    early_stop: bool = False,
    truncation: bool = False,
) -> dict[str, Any]:
    import pandas as pd

    from ftpipe.config import parse_config
    from ftpipe.steps import clean_data, evaluate, finetune, select_model

    frame = dataset(data_name).drop_duplicates("text").sample(frac=1.0, random_state=seed)
    # The user's own three splits: a test set of the same 1,000 rows whatever the training size.
    sizes = {"test": 1000, "validation": max(50, train_rows // 10), "train": train_rows}
    uris, start = {}, 0
    for split, size in sizes.items():
        uris[split] = work / f"{name}-{split}.csv"
        frame.iloc[start : start + size].to_csv(uris[split], index=False)
        start += size
    base = {
        "data": {f"{split}_uri": str(uri) for split, uri in uris.items()},
        "candidates": [{"name": "all-minilm-l6-v2", "source": minilm_path()}],
        "registry": {"uri": str(work / "registry"), "model_name": "recipe"},
        "storage": {"artifact_root": str(work / "runs")},
    }
    config = parse_config(base)
    cleaned = clean_data.run(config, str(work / name / "clean"))
    selection = select_model.run(
        config, cleaned.train_uri, cleaned.validation_uri, cleaned.labels, str(work / name / "select")
    )
    figures: dict[str, Any] = {
        "train_rows": cleaned.counts["train"],
        "test_rows": cleaned.counts["test"],
        "labels": len(cleaned.labels),
        "probe_validation_f1_macro": round(selection.selected.probe_value, 4),
    }
    train = pd.read_parquet(cleaned.train_uri)
    baseline = _baseline(train, pd.read_parquet(cleaned.test_uri))
    figures.update({f"baseline_{key}": round(value, 4) for key, value in baseline.items()})
    recipes: list[tuple[str, dict]] = [("fixed", FIXED), ("fitted", {})]
    if truncation:
        from transformers import AutoTokenizer

        lengths = [
            len(ids) for ids in AutoTokenizer.from_pretrained(minilm_path())(train["text"].tolist())["input_ids"]
        ]
        figures["short_window_share_cut"] = round(sum(length > SHORT_WINDOW for length in lengths) / len(lengths), 3)
        recipes += [
            (f"short_{mode}", {"max_length": SHORT_WINDOW, "truncation": mode}) for mode in ("head", "head_tail")
        ]
    for recipe, training in recipes:
        run_config = parse_config({**base, "training": {**training, "seed": seed}})
        began = time.perf_counter()
        trained = finetune.run(
            run_config,
            cleaned.train_uri,
            cleaned.validation_uri,
            cleaned.labels,
            selection.selected,
            str(work / name / f"ft-{recipe}"),
        )
        scored = evaluate.run(
            run_config, cleaned.test_uri, cleaned.labels, trained.model_uri, str(work / name / f"eval-{recipe}")
        )
        figures[f"{recipe}_seconds"] = round(time.perf_counter() - began, 1)
        figures[f"{recipe}_epochs"] = trained.epochs_trained
        figures[f"{recipe}_validation_f1_macro"] = round(trained.best_metric_value, 4)
        figures[f"{recipe}_accuracy"] = round(float(scored.metrics["accuracy"]), 4)
        figures[f"{recipe}_f1_macro"] = round(float(scored.metrics["f1_macro"]), 4)
        if recipe == "fitted":
            figures["fitted_recipe"] = trained.recipe
    if sweep:
        figures.update(_swept(base, cleaned, selection, work / name / "sweep", seed))
    if early_stop:  # the same sweep without stopping hopeless trials: what early stopping saved, and what it cost
        unstopped = _swept(base, cleaned, selection, work / name / "sweep-no-early-stop", seed, early_stop_ratio=None)
        figures.update({f"{key}_without_early_stop": value for key, value in unstopped.items()})
    return figures


# A small successive-halving sweep over the fitted recipe's two main settings: 6 trials on a third of their
# epochs, the best 2 on all of them.
SWEEP = {
    "space": {
        "training.learning_rate": {"type": "log_uniform", "low": 3e-5, "high": 3e-4},
        "training.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
    },
    "trials": 6,
    "rungs": [{"trials": 6, "budget": 0.34}, {"trials": 2, "budget": 1.0}],
}


def _swept(
    base: dict, cleaned, selection, work: Path, seed: int, early_stop_ratio: float | None = 0.5
) -> dict[str, Any]:
    """The sweep's steps run one after the other (as the DAG's tasks would), then its winner on test."""
    from ftpipe.config import parse_config
    from ftpipe.steps import choose_trial, evaluate, plan_trials, train_trial
    from ftpipe.storage import Storage
    from ftpipe.sweep import PlannedTrial

    sweep = {**SWEEP, "seed": seed, "early_stop_ratio": early_stop_ratio}
    config = parse_config({**base, "training": {"seed": seed}, "sweep": sweep})
    storage, sweep_uri = Storage(), str(work)
    began = time.perf_counter()
    results, trained = [], []
    for rung in range(len(config.sweep.rungs)):
        planned = plan_trials.run(config, rung, sweep_uri, storage)
        results = [
            train_trial.run(
                config,
                PlannedTrial.model_validate(trial),
                cleaned.train_uri,
                cleaned.validation_uri,
                cleaned.labels,
                cleaned.counts["train"],
                selection.selected,
                sweep_uri,
                storage,
            )
            for trial in planned.trials
        ]
        trained += results
    chosen = choose_trial.run(config, results, sweep_uri, storage)
    scored = evaluate.run(config, cleaned.test_uri, cleaned.labels, chosen.finetuned.model_uri, str(work / "eval"))
    return {
        "swept_seconds": round(time.perf_counter() - began, 1),
        "swept_trials_stopped_early": sum(result.record["state"] == "pruned" for result in trained),
        "swept_optimizer_steps": sum(result.finetuned.global_steps for result in trained if result.finetuned),
        "swept_winner": chosen.winner["params"],
        "swept_validation_f1_macro": round(chosen.winner["value"], 4),
        "swept_accuracy": round(float(scored.metrics["accuracy"]), 4),
        "swept_f1_macro": round(float(scored.metrics["f1_macro"]), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the 100-row case only")
    parser.add_argument("--only", default=None, help="comma-separated case names: " + ", ".join(c[0] for c in CASES))
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--sweep", action="store_true", help="also a small sweep per case, its winner on test")
    parser.add_argument(
        "--early-stop", action="store_true", help="with --sweep, also the sweep without early stopping, to compare"
    )
    parser.add_argument(
        "--truncation",
        action="store_true",
        help=f"also the fitted recipe at a {SHORT_WINDOW}-token window, cutting texts head-only and head+tail",
    )
    args = parser.parse_args(argv)
    quiet_libraries()
    wanted = set(args.only.split(",")) if args.only else {"trec-100"} if args.smoke else {c[0] for c in CASES}
    results = {}
    with tempfile.TemporaryDirectory(prefix="ftpipe-bench-recipe-") as scratch:
        for name, data_name, rows in CASES:
            if name not in wanted:
                continue
            figures = run_case(
                name,
                data_name,
                rows,
                Path(scratch),
                sweep=args.sweep or args.early_stop,
                early_stop=args.early_stop,
                truncation=args.truncation,
            )
            results[name] = figures
            shown = " ".join(f"{key}={value}" for key, value in figures.items() if key != "fitted_recipe")
            print(f"bench=recipe case={name} {shown}", flush=True)
            for line in figures["fitted_recipe"]:
                print(f"#   {name} fitted: {line}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"bench": "recipe", "cases": results, "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (args.out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
