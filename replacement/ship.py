"""Ship a trained replacement set beside the zoo model it replaces, with a record to check.

    python -m replacement.ship runs/replacement-default --model default

Writes ``replacement/zoo/{model}/``: fp16 dictionaries, ``replacement.json``, and
``record.json`` with the SHA-256 of every file (checked whenever the set is loaded) and the
per-layer FVU and L0 that the shipped weights give on ``RECORD_BATCHES`` held-out batches; a
test reloads them and must reproduce both. Shipping is ``toy_models.ship.ship_directory``.
"""

from __future__ import annotations

from pathlib import Path

from toy_models.cli import ArgumentParser, UserError, path_arg, run_cli
from toy_models.zoo import CONFIGS
from toy_models.zoo import SHIPPED_DIR as MODELS_DIR

from .train import SET_FILE

SHIPPED_DIR = Path(__file__).parent / "zoo"  # = replacement.model.SHIPPED_DIR, without torch
RECORD_BATCHES = 2


RECORD_FIGURES = ("record_batches", "reconstruction")  # what ``record_for`` gives a record


def record_for(directory: Path, model_name: str) -> dict:
    from toy_models.zoo import load_pretrained

    from .evaluate import heldout_batches, reconstruction_stats
    from .model import ReplacementModel

    model, tokenizer = load_pretrained(model_name)
    replacement = ReplacementModel.load(directory, model)
    stats = reconstruction_stats(replacement, heldout_batches(model, tokenizer, RECORD_BATCHES))
    return {"record_batches": RECORD_BATCHES, "reconstruction": stats}


def ship(run_dir: Path, model_name: str, dest_root: Path = SHIPPED_DIR) -> Path:
    import torch

    from toy_models.ship import check_half_range, ship_directory
    from toy_models.zoo import load_pretrained

    from .model import ReplacementModel

    if model_name not in CONFIGS:
        raise UserError(f"unknown zoo model {model_name!r}; known: {', '.join(sorted(CONFIGS))}")
    model, _ = load_pretrained(model_name)
    replacement = ReplacementModel.load(run_dir, model)
    check_half_range(replacement, run_dir)

    def write(tmp: Path) -> None:
        replacement.save(tmp, model_name, replacement.meta, dtype=torch.float16)

    return ship_directory(dest_root, model_name, write, lambda tmp: record_for(tmp, model_name))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m replacement.ship", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=path_arg, help="a trained set (replacement.train --out)")
    parser.add_argument("--model", default="default", help="the zoo model it was trained for")
    args = parser.parse_args(argv)
    # a set ships beside the shipped zoo model it was trained for: those are the names (a fuzz
    # pass read "known: default, tiny" here and "shipped: default" from the loader)
    shipped = sorted(name for name in CONFIGS if (MODELS_DIR / name).is_dir())
    if args.model not in shipped:
        raise UserError(f"--model {args.model!r}: not a shipped zoo model (shipped: "
                        f"{', '.join(shipped) or 'none'}); a set ships beside the model it was "
                        "trained for")  # fmt: skip
    from toy_models.resumable import check_finished

    finished = (args.run_dir / SET_FILE).is_file()
    check_finished(args.run_dir, finished, SET_FILE, "replacement.train")
    if not finished:
        raise UserError(f"{args.run_dir}: no {SET_FILE} (not a replacement.train --out directory)")
    dest = ship(args.run_dir, args.model)
    total = sum(f.stat().st_size for f in dest.iterdir())
    print(f"shipped {args.run_dir} for {args.model!r} -> {dest} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
