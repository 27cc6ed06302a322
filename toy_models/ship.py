"""Ship a trained run as a zoo model: fp16 weights, config, tokenizer, and a record to check.

    python -m toy_models.ship runs/default --name default

The record (``record.json``) holds the SHA-256 of every shipped file, checked whenever the
entry is loaded, and the held-out loss per family that the shipped (fp16) weights give on
``RECORD_DOCS`` documents per family; a test reloads the files and must reproduce both.
``ship_directory`` is the one way entries are shipped (``replacement.ship`` uses it too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from .cli import ArgumentParser, UserError, path_arg, run_cli
from .records import Bounds
from .zoo import CONFIGS, SHIPPED_DIR, TrainConfig

RECORD_DOCS = 50
SHIPPED_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def ship_directory(
    dest_root: Path, name: str, write: Callable[[Path], None], record: Callable[[Path], dict]
) -> Path:
    """Ship ``dest_root/name`` whole: ``write(tmp)`` fills a fresh directory beside it (this
    shipper's own, ``temp_path``: two ships of one name at once never fill one directory),
    ``record(tmp)`` measures what the written files give, and the record (those figures plus
    the SHA-256 of every file) is added before the directory replaces any earlier entry. A
    failure leaves the earlier entry as it was and no temporary directory behind; one that a
    killed shipper left goes at the next ship (``remove_dead_temps``)."""
    from .checkpoint import RECORD_FILE
    from .files import (
        check_writable_dir,
        file_sha256,
        fresh_directory,
        remove_dead_temps,
        swap_directory,
        temp_path,
        write_json_atomic,
    )

    check_writable_dir(dest_root, "zoo directory", own=(RECORD_FILE,))  # its entries: its own
    remove_dead_temps(dest_root / f".{name}")
    with fresh_directory(temp_path(dest_root / f".{name}")) as tmp:
        write(tmp)
        figures = record(tmp)
        hashes = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
        write_json_atomic(tmp / RECORD_FILE, {"sha256": hashes, **figures})
        dest = dest_root / name
        swap_directory(tmp, dest)
    return dest


@dataclass(frozen=True)
class RunFields:
    """What a finished ``toy_models.train`` run's ``config.json`` holds beside the model config
    (which the model's load checks): the ship reads them as this typed record (unknown keys,
    NaN, a negative time or a malformed hash refused, naming the field) and ships exactly it."""

    zoo_config: str
    train: TrainConfig
    final_train_loss: Annotated[float, Bounds(0, None)]
    train_elapsed_s: Annotated[float, Bounds(0, None)]
    train_tokens_per_s: Annotated[int, Bounds(0, None)]
    tokenizer_sha256: str | None = None  # runs before it was recorded lack it
    untrained_tokens: list[int] | None = None  # ditto (the ship then computes them)


def run_fields(meta: dict, where: Path) -> RunFields:
    """``meta`` (a run's config without ``model``) as ``RunFields``, or one ``UserError``
    naming the file and the field. (The recorded tokenizer hash is checked against the
    tokenizer by the model's load, ``zoo.load_pretrained``.)"""
    from .records import from_json

    try:
        return from_json(RunFields, meta, "config")
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


RECORD_FIGURES = ("record_docs", "heldout_loss")  # what ``record_for`` gives a record


def record_for(directory: Path) -> dict:
    from .evaluate import heldout_loss
    from .zoo import load_pretrained

    model, tokenizer = load_pretrained(str(directory))
    return {"record_docs": RECORD_DOCS, "heldout_loss": heldout_loss(model, tokenizer, RECORD_DOCS)}


def _untrained_tokens(run_dir: Path, meta: dict, model_cfg) -> list[int]:
    """``toy_models.train.untrained_tokens`` from the run's cached packed rows."""
    from .checkpoint import check_value
    from .train import read_packed_rows, untrained_tokens

    packed = run_dir / "data" / f"packed-{model_cfg.n_ctx}.safetensors"
    if not packed.is_file():
        raise UserError(
            f"{packed}: missing; the run's packed rows tell which tokens training never saw "
            "(rerun toy_models.train --resume on the run to rebuild them)"
        )
    train = meta.get("train")
    if not isinstance(train, dict):
        raise UserError(f"{run_dir / 'config.json'}: no 'train' settings")
    for name in ("steps", "batch_size"):
        check_value("int", train.get(name), f"{run_dir / 'config.json'} train.{name}")
    seed = train.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"{run_dir / 'config.json'}: train.seed must be an integer >= 0")
    vocab, batch_size = model_cfg.d_vocab, train["batch_size"]
    rows = read_packed_rows(packed, vocab, model_cfg.n_ctx, batch_size)
    return untrained_tokens(rows, train["steps"], batch_size, seed, vocab)


def ship(run_dir: Path, name: str, dest_root: Path = SHIPPED_DIR) -> Path:
    import shutil

    import torch

    from .checkpoint import CONFIG_FILE, TOKENIZER_FILE, read_json
    from .zoo import load_pretrained

    if name not in CONFIGS:
        raise UserError(f"unknown zoo name {name!r}; known: {', '.join(sorted(CONFIGS))}")
    from .resumable import check_finished

    check_finished(run_dir, (run_dir / CONFIG_FILE).exists(), "final model", "toy_models.train")
    # the model with its tokenizer, as a user will load the entry: a damaged or foreign
    # tokenizer is named where it is, not under the ship's temporary copy
    model, _ = load_pretrained(str(run_dir))
    meta = read_json(run_dir / CONFIG_FILE)
    meta.pop("model")
    trained_as = meta.get("zoo_config")
    if not isinstance(trained_as, str):
        raise UserError(f"{run_dir / CONFIG_FILE}: no zoo_config (not a toy_models.train run)")
    if trained_as != name:  # shipping it as another name would replace that entry's model
        raise UserError(f"{run_dir} was trained as zoo config {trained_as!r}, not {name!r}: "
                        f"ship it as --name {trained_as}")  # fmt: skip
    fields = run_fields(meta, run_dir / CONFIG_FILE)
    meta = {k: v for k, v in asdict(fields).items() if v is not None}
    if fields.untrained_tokens is None:  # a run trained before training recorded them
        meta["untrained_tokens"] = _untrained_tokens(run_dir, meta, model.cfg)

    check_half_range(model, run_dir)

    def write(tmp: Path) -> None:
        model.save(tmp, dtype=torch.float16, extra=meta)
        shutil.copyfile(run_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)

    return ship_directory(dest_root, name, write, record_for)


def check_half_range(module, run_dir: Path) -> None:
    """Refuse, naming the run and the tensor, weights beyond float16's range: the zoo's are
    float16, so they would ship as inf, and the check of the shipped copy named its temp file
    (a fuzz pass's one weight of 1e6, then a review's in a replacement set)."""
    import torch

    big = [name for name, p in module.state_dict().items()
           if p.is_floating_point() and not torch.isfinite(p.to(torch.float16)).all()]  # fmt: skip
    if big:
        raise UserError(f"{run_dir}: {big[0]} holds values beyond float16's range (the zoo's "
                        f"weights are float16; largest {torch.finfo(torch.float16).max:g}); "
                        "nothing shipped")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m toy_models.ship", description=__doc__.split("\n")[0])
    parser.add_argument(
        "run_dir", type=path_arg, help="a finished training run (toy_models.train --out)"
    )
    parser.add_argument("--name", required=True, help="zoo name to ship it as")
    args = parser.parse_args(argv)
    if args.name not in CONFIGS:
        raise UserError(f"unknown zoo name {args.name!r}; known: {', '.join(sorted(CONFIGS))}")
    if not args.run_dir.is_dir():
        raise UserError(f"{args.run_dir}: not a directory (a finished toy_models.train run)")
    dest = ship(args.run_dir, args.name)
    total = sum(f.stat().st_size for f in dest.iterdir())
    print(f"shipped {args.run_dir} as {args.name!r} -> {dest} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
