"""Train a zoo model from scratch on the generated corpus.

    python -m toy_models.train --config default --out runs/default
    python -m toy_models.train --config default --out runs/default --resume

The run directory holds the corpus cache and packed tokens (``data/``), the tokenizer, a
checkpoint refreshed every ``checkpoint_every`` steps (``checkpoint/``: weights, AdamW state,
step), and at the end the final model (``model.safetensors`` + ``config.json`` +
``tokenizer.json``), which ``toy_models.evaluate --model DIR`` reads. Batches are a pure
function of (seed, step), so ``--resume`` continues bit-for-bit from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

from .cli import UserError, run_cli
from .zoo import CONFIGS, TrainConfig, get_config


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def batch_indices(step: int, n_rows: int, batch_size: int, seed: int):
    """Rows of the batch at ``step``: epochs are seeded permutations, so any step can be rebuilt."""
    import torch

    per_epoch = n_rows // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[offset * batch_size : (offset + 1) * batch_size]


def prepare_data(out: Path, entry, cfg: TrainConfig):
    """Corpus -> tokenizer -> packed token rows, each cached in the run directory."""
    import torch

    from .data import build_corpus, pack_sequences
    from .tokenizer import load_tokenizer, train_tokenizer

    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(cfg.n_docs, seed=cfg.seed, cache_dir=data_dir)
    tokenizer_path = out / "tokenizer.json"
    if tokenizer_path.exists():
        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer = train_tokenizer(iter(corpus["train"]["text"]), cfg.vocab_size)
        tmp = tokenizer_path.with_name("tokenizer.json.tmp")
        tokenizer.save(str(tmp))
        tmp.replace(tokenizer_path)
    packed_path = data_dir / f"packed-{entry.model['n_ctx']}.pt"
    if packed_path.exists():
        packed = torch.load(packed_path)
    else:
        tokens, family = pack_sequences(corpus["train"], tokenizer, entry.model["n_ctx"])
        packed = {"tokens": tokens, "family": family}
        torch.save(packed, packed_path.with_name(packed_path.name + ".tmp"))
        packed_path.with_name(packed_path.name + ".tmp").replace(packed_path)
    return tokenizer, packed["tokens"]


def train(
    config_name: str,
    out: Path,
    resume: bool = False,
    steps: int | None = None,
    stop_after: int | None = None,
    quiet: bool = False,
) -> Path | None:
    """Train (or resume) a zoo config into ``out``; returns the directory of the final model.

    ``stop_after`` ends the run early, as an interruption would, after the checkpoint at that
    step (it must be a multiple of ``checkpoint_every``); the function then returns None.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from .files import swap_directory, write_json_atomic
    from .model import ModelConfig, ToyTransformer
    from .zoo import file_sha256

    entry = get_config(config_name)
    cfg = entry.train if steps is None else replace(entry.train, steps=steps)
    ckpt_dir = out / "checkpoint"
    if resume and not (ckpt_dir / "state.json").exists():
        raise UserError(f"nothing to resume: {ckpt_dir / 'state.json'} does not exist")
    if not resume and (ckpt_dir.exists() or (out / "model.safetensors").exists()):
        raise UserError(
            f"{out} already holds a training run; pass --resume or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    tokenizer, rows = prepare_data(out, entry, cfg)
    model_cfg = ModelConfig(d_vocab=tokenizer.get_vocab_size(), **entry.model)
    model = ToyTransformer(model_cfg)
    # Weight decay on the matrices, not on biases or the position table.
    named = list(model.named_parameters())
    decayed = {name for name, p in named if p.ndim >= 2 and name != "W_pos"}
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if n in decayed], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    start, elapsed = 0, 0.0
    if resume:
        state = json.loads((ckpt_dir / "state.json").read_text())
        if (state["config"], state["steps"]) != (config_name, cfg.steps):
            raise UserError(
                f"{ckpt_dir} belongs to a run of config {state['config']!r} for {state['steps']}"
                f" steps, not {config_name!r} for {cfg.steps}"
            )
        # same parameter objects, so the optimizer state lines up with them
        model.load_state_dict(ToyTransformer.load(ckpt_dir).state_dict())
        opt.load_state_dict(torch.load(ckpt_dir / "optimizer.pt"))
        start, elapsed = state["step"], state["elapsed_s"]

    def save_checkpoint(step: int) -> None:
        tmp = ckpt_dir.with_name("checkpoint.tmp")
        tmp.mkdir(exist_ok=True)
        model.save(tmp)
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        state = {"config": config_name, "steps": cfg.steps, "step": step, "elapsed_s": elapsed}
        write_json_atomic(tmp / "state.json", state)
        swap_directory(tmp, ckpt_dir)

    model.train()
    losses: list[float] = []
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc=f"train {config_name}",
        disable=quiet,
    )
    step = start
    try:
        for step in bar:
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = rows[batch_indices(step, len(rows), cfg.batch_size, cfg.seed)]
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            elapsed += time.perf_counter() - t0
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(step + 1)
                if step + 1 == stop_after:
                    return None
    except KeyboardInterrupt:
        saved = (
            json.loads((ckpt_dir / "state.json").read_text())["step"] if ckpt_dir.exists() else 0
        )
        raise UserError(
            f"interrupted at step {step}; resume from step {saved} with --resume"
        ) from None
    save_checkpoint(cfg.steps)
    tokens_seen = cfg.steps * cfg.batch_size * (model_cfg.n_ctx - 1)  # elapsed spans resumes
    model.save(
        out,
        extra={
            "zoo_config": config_name,
            "train": asdict(cfg),
            "train_elapsed_s": round(elapsed, 1),
            "train_tokens_per_s": round(tokens_seen / max(elapsed, 1e-9)),
            "final_train_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
            "tokenizer_sha256": file_sha256(out / "tokenizer.json"),
        },
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toy_models.train",
        description="Train a zoo model from scratch on the generated corpus (seeded, resumable).",
    )
    parser.add_argument("--config", default="default", help=f"zoo config: {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, required=True, help="run directory (created as needed)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    parser.add_argument("--steps", type=int, help="override the config's number of steps")
    args = parser.parse_args(argv)
    get_config(args.config)  # fail on an unknown name before any heavy import
    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be positive, got {args.steps}")
    final = train(args.config, args.out, resume=args.resume, steps=args.steps)
    meta = json.loads((final / "config.json").read_text())
    print(
        f"trained {args.config}: final train loss {meta['final_train_loss']:.4f}, "
        f"{meta['train_elapsed_s']:.0f} s, {meta['train_tokens_per_s']} tokens/s -> {final}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
