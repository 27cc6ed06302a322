"""Ship a trained run as a zoo model: fp16 weights, config, tokenizer, and a record to check.

    python -m toy_models.ship runs/default --name default

The record (``record.json``) holds the SHA-256 of every shipped file and the held-out loss
per family that the shipped (fp16) weights give on ``RECORD_DOCS`` documents per family; a
test reloads the files and must reproduce both.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from .cli import UserError, run_cli
from .zoo import CONFIGS, SHIPPED_DIR, file_sha256

RECORD_DOCS = 50
SHIPPED_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def record_for(directory: Path) -> dict:
    from .evaluate import heldout_loss
    from .zoo import load_pretrained

    model, tokenizer = load_pretrained(str(directory))
    return {
        "sha256": {name: file_sha256(directory / name) for name in SHIPPED_FILES},
        "record_docs": RECORD_DOCS,
        "heldout_loss": heldout_loss(model, tokenizer, RECORD_DOCS),
    }


def ship(run_dir: Path, name: str, dest_root: Path = SHIPPED_DIR) -> Path:
    import json

    from .files import swap_directory, write_json_atomic
    from .model import CONFIG_FILE, ToyTransformer

    if name not in CONFIGS:
        raise UserError(f"unknown zoo name {name!r}; known: {', '.join(sorted(CONFIGS))}")
    model = ToyTransformer.load(run_dir)
    meta = json.loads((run_dir / CONFIG_FILE).read_text())
    meta.pop("model")
    tmp = dest_root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp, dtype=torch.float16, extra=meta)
    shutil.copyfile(run_dir / "tokenizer.json", tmp / "tokenizer.json")
    write_json_atomic(tmp / "record.json", record_for(tmp))
    dest = dest_root / name
    swap_directory(tmp, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toy_models.ship", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "run_dir", type=Path, help="a finished training run (toy_models.train --out)"
    )
    parser.add_argument("--name", required=True, help="zoo name to ship it as")
    args = parser.parse_args(argv)
    dest = ship(args.run_dir, args.name)
    total = sum(f.stat().st_size for f in dest.iterdir())
    print(f"shipped {args.run_dir} as {args.name!r} -> {dest} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
