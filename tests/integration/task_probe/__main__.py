"""Run by test_task_server.py as ``python -m task_probe MODE ...``: says how it was started, then does MODE."""

import json
import os
import sys
import time
from pathlib import Path

mode, *arguments = sys.argv[1:]
print(
    json.dumps(
        {
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "argv": sys.argv[1:],
            "warm": "torch" in sys.modules,  # the task server imported it; a cold interpreter has not
            "marker": os.environ.get("TASK_PROBE_MARKER"),
            "name": __name__,
        }
    ),
    flush=True,
)
print("probe stderr line", file=sys.stderr, flush=True)
if mode == "exit":
    sys.exit(int(arguments[0]))
if mode == "raise":
    raise RuntimeError("probe failure")
if mode == "sleep":
    Path(arguments[0]).write_text(str(os.getpid()))
    time.sleep(120)
