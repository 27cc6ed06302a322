"""Unit dashboards on the default model: build time, file size, coverage, best-F1 distribution.

    python benchmarks/dashboards.py [--model default] [--rows 192]

Builds ``circuits.dashboards`` from scratch into a temporary file (start-up, i.e. imports and
loading the model, timed apart from the pass) and writes
benchmarks/results/dashboards_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rows", type=int, default=192)
    args = parser.parse_args()
    t0 = time.perf_counter()
    import torch

    from circuits.dashboard_pass import build
    from circuits.dashboards import summary
    from replacement.model import load_pretrained

    replacement, tokenizer = load_pretrained(args.model)
    startup = time.perf_counter() - t0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboards.safetensors"
        t1 = time.perf_counter()
        dash = build(replacement, tokenizer, path, rows=args.rows)
        seconds = time.perf_counter() - t1
        result = {
            "model": args.model,
            "startup_seconds": round(startup, 2),
            "build_seconds": round(seconds, 2),
            "torch_threads": torch.get_num_threads(),
            **summary(dash, path),
            "attn_sae_baseline_f1": "not measured: the baseline SAEs of "
            "benchmarks/attn_sae_baseline.py are trained per run (3000 steps) and not saved",
        }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dashboards_{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
