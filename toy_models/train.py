"""Train a zoo model from scratch on the generated corpus.

    python -m toy_models.train --config default --out runs/default
    python -m toy_models.train --config default --out runs/default --resume

The run directory holds the corpus cache and packed tokens (``data/``), the tokenizer, a
checkpoint refreshed every ``checkpoint_every`` steps (``checkpoint/``: weights, AdamW state,
step, recent losses; see ``toy_models.resumable``), and at the end the final model
(``model.safetensors`` + ``config.json`` + ``tokenizer.json``), which
``toy_models.evaluate --model DIR`` reads. Batches are a pure function of (seed, step), so
``--resume`` continues bit-for-bit from the last checkpoint, final figures included.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

from .cli import MAX_STEPS, ArgumentParser, UserError, path_arg, run_cli
from .zoo import CONFIGS, TrainConfig, get_config

LOSS_WINDOW = 50  # the reported train loss is the mean over this many last steps
EPOCH_SEED_STRIDE = 100_003  # epoch e of seed s shuffles with seed s * stride + e


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def epoch_order(epoch: int, n_rows: int, seed: int):
    """The seeded permutation of the rows that epoch ``epoch`` draws its batches from."""
    import torch

    generator = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
    return torch.randperm(n_rows, generator=generator)


def batch_indices(step: int, n_rows: int, batch_size: int, seed: int):
    """Rows of the batch at ``step``: epochs are seeded permutations, so any step can be rebuilt."""
    epoch, offset = divmod(step, n_rows // batch_size)
    return epoch_order(epoch, n_rows, seed)[offset * batch_size : (offset + 1) * batch_size]


def untrained_tokens(rows, steps: int, batch_size: int, seed: int, vocab: int) -> list[int]:
    """The tokens that were never an input in training: not at any position but the last of
    the rows that the ``steps`` batches draw (``batch_indices``: each epoch's first
    ``batch_size`` times its steps rows of ``epoch_order``). Their embeddings kept their
    initial values (up to weight decay), so a prompt that holds one feeds the model noise
    there, and a graph of it shows no learned mechanism."""
    import torch

    per_epoch = len(rows) // batch_size
    seen = torch.zeros(len(rows), dtype=torch.bool)
    for epoch in range(-(-steps // per_epoch)):
        drawn = min(per_epoch, steps - epoch * per_epoch) * batch_size
        seen[epoch_order(epoch, len(rows), seed)[:drawn]] = True
    counts = torch.bincount(rows[seen, :-1].flatten(), minlength=vocab)
    return (counts == 0).nonzero().squeeze(1).tolist()


def read_packed_rows(path: Path, vocab: int, n_ctx: int, batch_size: int):
    """A run's cached packed rows (``pack_sequences``), refused unless they are integer tokens
    below ``vocab``, ``n_ctx`` per row, at least a batch of them."""
    from .checkpoint import read_tensors

    tokens = read_tensors(path, "packed rows").get("tokens")
    if (
        tokens is None
        or tokens.dtype.is_floating_point
        or tokens.ndim != 2
        or tokens.shape[1] != n_ctx
        or len(tokens) < batch_size
        or not bool(((tokens >= 0) & (tokens < vocab)).all())
    ):
        raise ValueError(
            f"{path}: not this run's packed rows (integer tokens < {vocab}, {n_ctx} per "
            "row, at least a batch); delete it to rebuild"
        )
    return tokens


def data_identity(cfg: TrainConfig) -> dict:
    """What a run's cached tokenizer and packed rows are a function of."""
    from .data import CORPUS_VERSION

    return {
        "corpus_version": CORPUS_VERSION,
        "seed": cfg.seed,
        "n_docs": dict(sorted(cfg.n_docs.items())),
        "vocab_size": cfg.vocab_size,
    }


def check_cached_data(out: Path, entry, cfg: TrainConfig) -> None:
    """Refuse a run directory whose cached tokenizer and packed rows were built from another
    corpus than ``cfg``'s (``data/source.json`` records it: ``data_identity``), before
    anything is written there."""
    from .checkpoint import TOKENIZER_FILE, read_json

    packed_path = out / "data" / f"packed-{entry.model['n_ctx']}.safetensors"
    source_path = out / "data" / "source.json"
    if (out / TOKENIZER_FILE).exists() or packed_path.exists():
        recorded = read_json(source_path) if source_path.exists() else None
        if recorded != data_identity(cfg):
            if recorded is None:
                raise UserError(f"{out} holds an older run's tokenizer and packed rows; choose "
                                "another --out")  # fmt: skip
            differ = sorted(k for k, v in data_identity(cfg).items() if recorded.get(k) != v)
            # a resume with another --seed or --config was told to choose another --out for
            # its own run (a fuzz pass): say what differs, and how to go on with that run
            raise UserError(f"{out} holds the tokenizer and packed rows of a run with another "
                            f"{', '.join(differ) or 'corpus'} ({recorded!r:.120}); to resume that "
                            "run, give the settings it was started with again, or choose "
                            "another --out")  # fmt: skip


def prepare_data(out: Path, entry, cfg: TrainConfig):
    """Corpus -> tokenizer -> packed token rows, each cached in the run directory; returns
    them with the SHA-256 of both files (a checkpoint records them: a resume on other data is
    refused).

    ``data/source.json`` records what they were built from (``data_identity``); a run whose
    corpus differs (another ``--seed``, say) is refused rather than trained on them."""
    from .checkpoint import TOKENIZER_FILE, save_state_atomic
    from .data import build_corpus, pack_sequences
    from .files import file_sha256, write_json_atomic, write_text_atomic
    from .tokenizer import load_tokenizer, tokenizer_text, train_tokenizer

    check_cached_data(out, entry, cfg)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out / TOKENIZER_FILE
    n_ctx = entry.model["n_ctx"]
    packed_path = data_dir / f"packed-{n_ctx}.safetensors"
    source_path, source = data_dir / "source.json", data_identity(cfg)
    corpus = build_corpus(cfg.n_docs, seed=cfg.seed, cache_dir=data_dir)
    if tokenizer_path.exists():
        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer = train_tokenizer(iter(corpus["train"]["text"]), cfg.vocab_size)
        write_json_atomic(source_path, source)  # before what it describes
        write_text_atomic(tokenizer_path, tokenizer_text(tokenizer))
    if not packed_path.exists():
        tokens, family = pack_sequences(corpus["train"], tokenizer, n_ctx)
        save_state_atomic({"tokens": tokens, "family": family}, packed_path)
    vocab = tokenizer.get_vocab_size()
    rows = read_packed_rows(packed_path, vocab, n_ctx, cfg.batch_size)
    files = {"tokenizer_sha256": file_sha256(tokenizer_path),
             "packed_rows_sha256": file_sha256(packed_path)}  # fmt: skip
    return tokenizer, rows, files


def _final_files_read(out: Path) -> bool:
    """Whether a finished run's final model loads (config, tokenizer, weights: every check of
    ``ToyTransformer.load``) and its config records the training figures ``main`` prints:
    finite and not negative (a fuzz pass's 401-digit loss was an OverflowError traceback where
    ``main`` formats it, a NaN loss was printed as the run's, exit 0)."""
    from .checkpoint import CONFIG_FILE, read_json
    from .model import ToyTransformer
    from .records import is_finite_number

    try:
        ToyTransformer.load(out)
        meta = read_json(out / CONFIG_FILE)
        return all(
            is_finite_number(meta.get(k)) and meta[k] >= 0
            for k in ("final_train_loss", "train_elapsed_s", "train_tokens_per_s")
        )
    except (OSError, ValueError):
        return False


def train(
    config_name: str,
    out: Path,
    resume: bool = False,
    steps: int | None = None,
    stop_after: int | None = None,
    quiet: bool = False,
    lr: float | None = None,
    seed: int | None = None,
) -> Path | None:
    """Train (or resume) a zoo config into ``out``; returns the directory of the final model.

    ``steps``, ``lr`` and ``seed`` override the config's (the schedule scales with the steps;
    the seed draws the corpus, the initialisation and the batches). A resumed run must have
    the same training configuration, overrides included.

    ``stop_after`` ends the run early, as an interruption would, after the checkpoint at that
    step (it must be a multiple of ``checkpoint_every``); the function then returns None.
    """
    from .checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from .resumable import ResumableRun

    # 1) the configuration and the run directory, before any heavy work
    entry = get_config(config_name)
    overrides = {"steps": steps, "lr": lr, "seed": seed}
    cfg = replace(entry.train, **{k: v for k, v in overrides.items() if v is not None})
    if stop_after is not None and stop_after % cfg.checkpoint_every:
        raise ValueError(f"stop_after={stop_after} is not a checkpoint step")
    out = Path(out)
    # its final files: a fresh run refuses a directory holding either (a user's own
    # config.json was replaced, exit 0, found by a fuzz pass)
    run = ResumableRun(out, resume=resume, outputs=(WEIGHTS_FILE, CONFIG_FILE), window=LOSS_WINDOW)
    check_cached_data(out, entry, cfg)  # data or a checkpoint it cannot use: refused before
    if resume:  # the data is built (nothing written)
        run.check_resumable({"config": config_name, "train": asdict(cfg)}, stats=("loss",))

    # 2) data: corpus, tokenizer, packed rows (cached in the run directory)
    import torch
    import torch.nn.functional as F

    from .model import ModelConfig, ToyTransformer

    tokenizer, rows, data_files = prepare_data(out, entry, cfg)

    # 3) the model and its optimizer, restored from the checkpoint on --resume
    torch.manual_seed(cfg.seed)
    model_cfg = ModelConfig(d_vocab=tokenizer.get_vocab_size(), **entry.model)
    model = ToyTransformer(model_cfg)
    opt = torch.optim.AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    identity = {"config": config_name, "train": asdict(cfg), "data": data_files}
    run.start(identity, model, opt, stats=("loss",))
    if run.step == cfg.steps and _final_files_read(out):
        return out  # a finished run: its final model and figures stand as written
    # (a run stopped while writing them, or whose final files were damaged since, resumes
    # here: no steps left, they are written again from the last checkpoint)

    # 4) the loop: the batch at each step is a pure function of (seed, step)
    model.train()

    def step_fn(step: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = rows[batch_indices(step, len(rows), cfg.batch_size, cfg.seed)]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        return {"loss": loss.item()}

    finished = run.train(
        step_fn,
        cfg.steps,
        checkpoint_every=cfg.checkpoint_every,
        desc=f"train {config_name}",
        quiet=quiet,
        stop_after=stop_after,
        postfix=lambda r: {"loss": f"{r.mean('loss'):.3f}"},
    )
    if not finished:
        return None

    # 5) the final model, with its training figures (elapsed time spans resumes)
    tokens_seen = cfg.steps * cfg.batch_size * (model_cfg.n_ctx - 1)
    model.save(
        out,
        extra={
            "zoo_config": config_name,
            "train": asdict(cfg),
            "train_elapsed_s": round(run.elapsed_s, 1),
            "train_tokens_per_s": round(tokens_seen / max(run.elapsed_s, 1e-9)),
            "final_train_loss": run.mean("loss"),
            "tokenizer_sha256": data_files["tokenizer_sha256"],
            "untrained_tokens": untrained_tokens(
                rows, cfg.steps, cfg.batch_size, cfg.seed, model_cfg.d_vocab
            ),
        },
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m toy_models.train",
        description="Train a zoo model from scratch on the generated corpus (seeded, resumable).",
    )
    parser.add_argument("--config", default="default", help=f"zoo config: {', '.join(CONFIGS)}")
    parser.add_argument(
        "--out", type=path_arg, required=True, help="run directory (created as needed)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    parser.add_argument("--steps", type=int, help="override the config's number of steps")
    parser.add_argument("--lr", type=float, help="override the config's peak learning rate")
    parser.add_argument(
        "--seed", type=int, help="override the config's seed (corpus, initialisation, batches)"
    )
    args = parser.parse_args(argv)
    get_config(args.config)  # fail on an unknown name before any heavy import
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:  # a config's bound (a fuzz
        # pass's 10**20 steps started; the finished run's config would then be refused)
        raise UserError(f"--steps must be in 1..{MAX_STEPS}, got {args.steps}")
    if args.lr is not None and not (math.isfinite(args.lr) and 0 < args.lr <= 1):
        raise UserError(f"--lr must be a number in (0, 1], got {args.lr}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {args.seed}")
    final = train(
        args.config, args.out, resume=args.resume, steps=args.steps, lr=args.lr, seed=args.seed
    )
    from .checkpoint import read_json

    meta = read_json(final / "config.json")  # checked by train: written or verified
    print(
        f"trained {args.config}: final train loss {meta['final_train_loss']:.4f}, "
        f"{meta['train_elapsed_s']:.0f} s, {meta['train_tokens_per_s']} tokens/s -> {final}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
