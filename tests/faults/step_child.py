"""One pipeline task around a step, as a pod runs it, for the full-disk scenario: ``python step_child.py ARGS.json``.

ARGS.json holds ``step`` (finetune or clean_data), ``config`` (a pipeline config dict), ``run_id`` and the step's
inputs. The step runs through :func:`ftpipe.task.run_step`, as its component does; a deterministic error then ends
the process as the run's stop_run task would (exit 2, after run_step's one line on stderr), a transient one as the
task does.
"""

from __future__ import annotations

import json
import sys

from ftpipe import task
from ftpipe.config import parse_config
from ftpipe.errors import FtpipeError


def main(path: str) -> int:
    args = json.loads(open(path).read())
    config_json = parse_config(args["config"]).model_dump_json()
    if args["step"] == "finetune":
        from ftpipe.steps import finetune as step

        def call(config, out, storage):
            return step.run(config, args["train_uri"], args["validation_uri"], args["labels"], "tiny", out,
                            storage=storage)
    else:
        from ftpipe.steps import clean_data as step

        def call(config, out, storage):
            return step.run(config, out, storage=storage)

    result = task.run_step(args["step"], config_json, args["run_id"], call, step.LIBRARIES)
    if isinstance(result, task.Stopped):  # run_step printed its line; the run's stop_run task then exits 2
        return FtpipeError.exit_code
    print(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
