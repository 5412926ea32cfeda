"""One register_model task, as a pipeline pod runs it, for the kill scenarios: ``python register_child.py ARGS.json``.

ARGS.json holds ``config`` (a pipeline config dict), ``model_dir``, ``run_id``; S3 is reached through the AWS
variables of the environment (the test's proxy). Prints the registered version's number on success.
"""

from __future__ import annotations

import json
import sys

from ftpipe.config import parse_config
from ftpipe.results import EvaluateResult
from ftpipe.steps import register_model

LABELS = ["ham", "spam"]
LINEAGE = {"data_fingerprint": "fp-faults", "base_model": "tiny", "base_model_source": "/models/tiny"}


def evaluation(model_uri: str) -> EvaluateResult:
    per_class = {label: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 5} for label in LABELS}
    return EvaluateResult(
        model_uri=model_uri,
        test_uri="s3://ftpipe/faults/test.parquet",
        task="text_classification",
        labels=LABELS,
        primary_metric="f1_macro",
        metrics={"accuracy": 0.9, "f1_macro": 0.9, "n_examples": 10, "per_class": per_class},
        confusion_matrix=[[5, 0], [1, 4]],
        production=None,
        gate_metric="f1_macro",
        gate_passed=True,
        reasons=["passed: accuracy 0.9000 >= min_accuracy 0.0000"],
        report_html_uri="s3://ftpipe/faults/report.html",
        report_markdown_uri="s3://ftpipe/faults/report.md",
        report_json_uri="s3://ftpipe/faults/report.json",
        predictions_uri="s3://ftpipe/faults/predictions.parquet",
    )


def main(path: str) -> int:
    args = json.loads(open(path).read())
    config = parse_config(args["config"])
    result = register_model.run(config, args["model_dir"], evaluation(args["model_dir"]), LINEAGE, args["run_id"])
    print(result.version, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
