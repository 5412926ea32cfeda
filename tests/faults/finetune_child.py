"""A fine-tune task in a process of its own, as the KFP component runs it: ``python finetune_child.py SPEC``.

SPEC is a JSON file with ``config`` (a pipeline config mapping), ``train_uri``, ``validation_uri``, ``labels``,
``candidate`` and ``output_uri``. The step runs through ``ftpipe.task.run_step``, so a transient error exits
non-zero as the task would (KFP retries it) and a user error is one line; on success the FinetuneResult's JSON is
the last line of stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftpipe import task
from ftpipe.config import parse_config
from ftpipe.steps import finetune


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    config_json = parse_config(spec["config"]).model_dump_json()
    result = task.run_step(
        "finetune",
        config_json,
        "fault-run",
        lambda config, _, storage: finetune.run(
            config,
            spec["train_uri"],
            spec["validation_uri"],
            spec["labels"],
            spec["candidate"],
            spec["output_uri"],
            storage=storage,
        ),
        finetune.LIBRARIES,
    )
    if isinstance(result, task.Stopped):
        return 2
    print(result.model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
