"""Ship a trained replacement set beside the zoo model it replaces, with a record to check.

    python -m replacement.ship runs/replacement-default --model default

Writes ``replacement/zoo/{model}/``: fp16 dictionaries, ``replacement.json``, and
``record.json`` with the SHA-256 of every file and the per-layer FVU and L0 that the shipped
weights give on ``RECORD_BATCHES`` held-out batches; a test reloads them and must reproduce both.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from toy_models.cli import UserError, run_cli
from toy_models.zoo import CONFIGS, file_sha256

from .model import SHIPPED_DIR

RECORD_BATCHES = 2


def record_for(directory: Path, model_name: str) -> dict:
    from toy_models.zoo import load_pretrained

    from .evaluate import heldout_batches, reconstruction_stats
    from .model import ReplacementModel

    model, tokenizer = load_pretrained(model_name)
    replacement = ReplacementModel.load(directory, model)
    stats = reconstruction_stats(replacement, heldout_batches(model, tokenizer, RECORD_BATCHES))
    return {
        "sha256": {f.name: file_sha256(f) for f in sorted(directory.iterdir())},
        "record_batches": RECORD_BATCHES,
        "reconstruction": stats,
    }


def ship(run_dir: Path, model_name: str, dest_root: Path = SHIPPED_DIR) -> Path:
    from toy_models.files import swap_directory, write_json_atomic
    from toy_models.zoo import load_pretrained

    from .model import ReplacementModel

    if model_name not in CONFIGS:
        raise UserError(f"unknown zoo model {model_name!r}; known: {', '.join(sorted(CONFIGS))}")
    model, _ = load_pretrained(model_name)
    replacement = ReplacementModel.load(run_dir, model)
    dest_root.mkdir(exist_ok=True)
    tmp = dest_root / f".{model_name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    replacement.save(tmp, model_name, replacement.meta, dtype=torch.float16)
    record = record_for(tmp, model_name)
    write_json_atomic(tmp / "record.json", record)
    dest = dest_root / model_name
    swap_directory(tmp, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m replacement.ship", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path, help="a trained set (replacement.train --out)")
    parser.add_argument("--model", default="default", help="the zoo model it was trained for")
    args = parser.parse_args(argv)
    dest = ship(args.run_dir, args.model)
    total = sum(f.stat().st_size for f in dest.iterdir())
    print(f"shipped {args.run_dir} for {args.model!r} -> {dest} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
