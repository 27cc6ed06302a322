"""CLI start-up, cold, in fresh processes: ``--help``, an argument error, and the README's main
command, each for every CLI that has them.

    python benchmarks/startup.py [--repeat 3]

No CLI may import torch, transformer_lens or a model before its arguments are parsed and
checked (issue 10), so ``--help`` and a bad argument cost a Python start-up, not seconds of
imports. Medians of ``--repeat`` runs; results go to benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"

CLIS = {
    "circuits.trace": ["--prompt", "x", "--node-threshold", "2"],
    "circuits.global_graph": ["--start", "head:1:2"],
    "toy_models.train": ["--config", "nonesuch", "--out", "/tmp/never"],
    "toy_models.evaluate": ["--model", "nonesuch"],
    "replacement.train": ["--model", "default", "--steps", "0", "--out", "/tmp/never"],
    "replacement.evaluate": ["--model", "nonesuch"],
    "reports.heads": ["--docs", "0"],
    "replacement.cache": ["--model", "nonesuch"],
    "circuits.dashboard_cli": ["--rows", "0"],
}
# The README's main command, with dashboards already built (their first build is separate).
MAIN_COMMAND = ["circuits.trace", "--prompt", "Monday, Tuesday, Wednesday,"]


def timed(argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, cwd=ROOT)
    return time.perf_counter() - start, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.repeat < 1:  # no toy_models import here: this script times their start-up
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    result: dict = {"repeat": args.repeat, "clis": {}}
    for module, bad in CLIS.items():
        row = {}
        for name, argv in (("help", [module, "--help"]), ("bad_argument", [module, *bad])):
            runs = [timed(argv) for _ in range(args.repeat)]
            row[name] = {
                "seconds": round(statistics.median(s for s, _ in runs), 3),
                "exit": runs[0][1],
            }
        result["clis"][module] = row
        print(module, row, flush=True)
    out = "/tmp/startup-main"
    runs = [timed([*MAIN_COMMAND, "--out", out]) for _ in range(args.repeat)]
    result["main_command"] = {
        "argv": MAIN_COMMAND,
        "seconds": round(statistics.median(s for s, _ in runs), 2),
        "exit": runs[0][1],
    }
    print("main command", result["main_command"])
    sys.path.insert(0, str(ROOT))  # only now: this script times the packages' imports
    from toy_models.files import write_json_atomic

    path = RESULTS / "startup.json"
    write_json_atomic(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
