"""Cache a toy model's activations to disk for training replacement layers from them.

    python -m replacement.cache --model default --rows 8192 --out runs/acts-default
    python -m replacement.cache --model default --rows 8192 --layers 1 --out runs/acts-l1

Rerun the same command after an interruption and it continues with the next chunk. A cache
that would not fit on the disk is refused before any work (the chunks' sizes follow from
``--rows``, ``--layers`` and ``--dtype``). The format, what is checked on read and why whole
rows are stored: ``replacement.activation_cache``.
"""

from __future__ import annotations

import time

from toy_models.cli import ArgumentParser, UserError, path_arg, run_cli

DTYPES = ("float32", "float16", "bfloat16")  # replacement.activation_cache.DTYPES
# The largest count or seed a cache's plan may hold: its reader's bound
# (``replacement.activation_cache.CachePlan.from_json`` reads it from here), which this CLI
# applies to its arguments before any work, without importing torch (a cache built with a seed
# above it was refused by every later use, and ``--rows`` of 1e14 spent hours in the disk-space
# check: found by a fuzz pass).
MAX_PLAN_VALUE = 1 << 40


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m replacement.cache",
        description="Store every chosen layer's Lorsa and transcoder (input, target) activations "
        "of generated rows, in chunks with a manifest bound to the model's identity; "
        "python -m replacement.train --activations DIR trains from them. Rerun to resume.",
    )
    parser.add_argument("--model", default="default", help="zoo name or toy model directory")
    parser.add_argument("--rows", type=int, required=True, help="rows of n_ctx tokens to store")
    parser.add_argument("--out", type=path_arg, required=True, help="cache directory")
    parser.add_argument("--layers", default="all", help="'all' or layers such as 1 or 0,2")
    parser.add_argument("--seed", type=int, default=0, help="row stream seed (training's: 0)")
    parser.add_argument("--split", default="train", choices=("train", "heldout"))
    parser.add_argument("--chunk-rows", type=int, default=256, help="rows per chunk file")
    parser.add_argument(
        "--batch", type=int, default=16, help="rows per forward pass (training's batch: 16)"
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="storage type")
    args = parser.parse_args(argv)
    for flag, value in (("--rows", args.rows), ("--chunk-rows", args.chunk_rows)):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if args.batch <= 0 or args.chunk_rows % args.batch:
        raise UserError(
            f"--batch must be positive and divide --chunk-rows {args.chunk_rows}, got {args.batch}"
        )
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    for flag, value in (("--rows", args.rows), ("--chunk-rows", args.chunk_rows),
                        ("--batch", args.batch), ("--seed", args.seed)):  # fmt: skip
        if value > MAX_PLAN_VALUE:
            raise UserError(f"{flag} must be at most 2**40 (what a cache's manifest may hold), "
                            f"got {value}")  # fmt: skip
    from toy_models.files import check_writable_dir
    from toy_models.zoo import resolve_model_dir

    from .train import parse_layers

    layers = parse_layers(args.layers)
    resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    # its own cache (MANIFEST_FILE) resumed; a graph's or report's outputs refused
    check_writable_dir(args.out, own=("manifest.json",), sets_refused=True)
    from toy_models.zoo import load_pretrained

    from .activation_cache import CHUNK_FILE, build_cache

    model, tokenizer = load_pretrained(args.model)
    t0 = time.perf_counter()
    plan = build_cache(
        model,
        tokenizer,
        args.out,
        args.rows,
        layers=layers,
        split=args.split,
        seed=args.seed,
        chunk_rows=args.chunk_rows,
        forward_batch=args.batch,
        dtype=args.dtype,
    )
    # the cache's own files: a folder may hold others (a reviewer's 5.4 MiB for 0.3)
    names = ["manifest.json", *(CHUNK_FILE.format(i) for i in range(plan.n_chunks))]
    size = sum((args.out / name).stat().st_size for name in names)
    print(
        f"cached {plan.rows} rows of layers {plan.layers} ({plan.n_chunks} chunks, "
        f"{size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
