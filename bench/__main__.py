"""Run ftpipe's benchmarks, each in a fresh interpreter: ``python -m bench [--smoke] [--only NAME,...] [--out DIR]``.

1. ``finetune``: the fine-tune step against a naive training loop (examples/s, useful-FLOP utilisation, accuracy);
2. ``clean_data``: the clean_data stage against a naive pandas + scikit-learn script, on 1,000,000 texts;
3. ``overhead``: the local DAG's wall time outside the steps' own work, per task and in total;
4. ``sft``: decoder fine-tuning, causal_lm_sft's packed completion-only batches against padding every example to
   the max length (real tokens/s, useful-FLOP utilisation), and LoRA against full fine-tuning.

Each prints one ``bench=<name> key=value ...`` line and writes ``<out>/<name>.json`` (default ``out/bench``).
``--smoke`` runs each on small data, to check that it runs and reports; its figures say nothing about speed.
``make bench`` and ``make bench-smoke`` call this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT_DIR, REPO

BENCHMARKS = ("finetune", "clean_data", "overhead", "sft")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small data: checks that each runs and reports")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ", ".join(BENCHMARKS)
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON files (default out/bench)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out = Path(args.out or OUT_DIR).resolve()
    failed = []
    started = time.perf_counter()
    for name in chosen:
        command = [sys.executable, "-m", f"bench.{name}", "--out", str(out), *(["--smoke"] if args.smoke else [])]
        began = time.perf_counter()
        code = subprocess.run(command, cwd=REPO).returncode
        print(
            f"# bench {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - began:.0f} s"
        )
        if code:
            failed.append(name)
    print(f"# {len(chosen) - len(failed)}/{len(chosen)} benchmarks ran in {time.perf_counter() - started:.0f} s; {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
