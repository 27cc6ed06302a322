"""Train one Lorsa and one transcoder for every layer of a toy model, all at once.

    python -m replacement.train --model default --layers all --out runs/replacement-default

Every step runs the frozen toy model once over generated rows (``ActivationStore``) and
updates every layer's Lorsa (on whole sequences) and transcoder (on shuffled tokens) from
that one pass. Inputs and targets are scaled to mean norm sqrt(d_model) during training and
the scales are folded back into the weights at the end, so the saved layers read and write
the model's own activations. Lorsa starts from the original heads: QK copied (repeated over
the Lorsa QK heads), each ``w_v`` a random direction inside its head's value space and
``w_o`` that direction pushed through the head's OV circuit, ``b_D`` the mean target.
Dead units (silent for ``dead_tokens`` tokens) get the AuxK loss of Gao et al. (2024).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from toy_models.cli import UserError, run_cli

from .lorsa import LorsaConfig, LorsaLayer, sparse_decode, topk_sparse
from .transcoder import Transcoder, TranscoderConfig


@dataclass(frozen=True)
class ReplacementTrainConfig:
    n_qk_heads: int = 16
    n_ov_heads: int = 1024
    d_qk: int = 16  # = the default model's d_head, so QK starts as a copy of its heads
    lorsa_top_k: int = 32
    d_sae: int = 2048
    transcoder_top_k: int = 32
    transcoder_skip: bool = False
    steps: int = 3000
    batch_size: int = 16  # sequences per step (transcoders: the same number of tokens)
    lr: float = 1e-3
    warmup_steps: int = 100
    k_start_factor: int = 4  # K anneals from factor * top_k down to top_k ...
    k_anneal_steps: int = 800  # ... over this many steps
    aux_k: int = 64
    aux_coef: float = 1 / 32
    dead_tokens: int = 200_000
    norm_batches: int = 8
    checkpoint_every: int = 250
    seed: int = 0


CONFIGS: dict[str, ReplacementTrainConfig] = {
    "default": ReplacementTrainConfig(),
    "tiny": ReplacementTrainConfig(
        n_qk_heads=2,
        n_ov_heads=32,
        d_qk=16,
        lorsa_top_k=4,
        d_sae=64,
        transcoder_top_k=4,
        steps=20,
        batch_size=4,
        warmup_steps=2,
        k_anneal_steps=5,
        aux_k=8,
        dead_tokens=500,
        norm_batches=2,
        checkpoint_every=10,
    ),
}


def k_at(step: int, top_k: int, cfg: ReplacementTrainConfig) -> int:
    frac = max(0.0, 1 - step / max(1, cfg.k_anneal_steps))
    return round(top_k + (cfg.k_start_factor - 1) * top_k * frac)


def lr_at(step: int, cfg: ReplacementTrainConfig) -> float:
    """Linear warm-up, constant, then linear decay to zero over the last fifth."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(0.8 * cfg.steps)
    return cfg.lr * min(1.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))


def fvu(pred: Tensor, target: Tensor) -> Tensor:
    """Fraction of variance unexplained over all tokens and dimensions."""
    target = target.flatten(0, -2)
    residual = (pred.flatten(0, -2) - target).pow(2).sum()
    return residual / (target - target.mean(0)).pow(2).sum()


def aux_k_loss(pre: Tensor, dead: Tensor, W_dec: Tensor, residual: Tensor, k: int) -> Tensor:
    """AuxK: the top-k dead units must explain what the live ones left (normalised MSE)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    values, idx = topk_sparse(pre.masked_fill(~dead, 0.0), min(k, n_dead))
    residual = residual.detach()
    error = sparse_decode(values, idx, W_dec) - residual
    return error.pow(2).sum() / residual.pow(2).sum().clamp_min(1e-8)


def value_directions(d_head: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` unit directions of a head's value space in +/- pairs, orthonormal in blocks.

    Rank-1 heads along r and -r together pass both signs through the ReLU, and an
    orthonormal block of them reproduces the head's whole OV circuit.
    """
    half = torch.randn(d_head, (n + 1) // 2, generator=generator)
    blocks = [torch.linalg.qr(b).Q for b in half.split(d_head, dim=1)]
    r = torch.cat(blocks, dim=1).T  # (n/2, d_head)
    return torch.stack([r, -r], dim=1).flatten(0, 1)[:n]


def init_lorsa_from_heads(
    lorsa: LorsaLayer, attn, s_x: float, s_y: float, y_mean: Tensor, seed: int
) -> None:
    """Initialise from the original attention layer, in the normalised (scaled) spaces.

    QK head j copies original head ``j * n_heads // n_qk_heads``; the OV heads of its group
    read ``x W_V^h r`` and write ``r^T W_O^h / c`` for directions r of that head's value
    space, where c counts how many times the groups of head h cover its value space: with
    TopK keeping every head, the initial Lorsa computes the original layer exactly.
    """
    g = torch.Generator().manual_seed(seed)
    n_heads, _, d_head = attn.W_Q.shape
    cfg = lorsa.cfg
    origin = [j * n_heads // cfg.n_qk_heads for j in range(cfg.n_qk_heads)]
    with torch.no_grad():
        if cfg.d_qk == d_head:
            lorsa.W_Q.copy_(attn.W_Q[origin] / s_x)
            lorsa.W_K.copy_(attn.W_K[origin] / s_x)
            lorsa.b_Q.copy_(attn.b_Q[origin])
            lorsa.b_K.copy_(attn.b_K[origin])
        groups_per_head = cfg.n_qk_heads / n_heads
        covers = groups_per_head * max(1.0, cfg.group_size / (2 * d_head))
        for j, h in enumerate(origin):
            r = value_directions(d_head, cfg.group_size, g)  # (group, d_head)
            group = slice(j * cfg.group_size, (j + 1) * cfg.group_size)
            lorsa.W_V[group] = (attn.W_V[h] @ r.T).T / s_x
            lorsa.b_V[group] = r @ attn.b_V[h]
            lorsa.W_O[group] = s_y * (r @ attn.W_O[h]) / covers
        lorsa.b_D.copy_(y_mean)


def init_transcoder(tc: Transcoder, y_mean: Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W = torch.randn(tc.cfg.d_model, tc.cfg.d_sae, generator=g)
        W /= W.norm(dim=0, keepdim=True)
        tc.W_enc.copy_(W)
        # Small decoder rows: K features firing at once start near the mean prediction.
        tc.W_dec.copy_(0.1 * W.T)
        tc.b_dec.copy_(y_mean)


def fold_scales_lorsa(lorsa: LorsaLayer, s_x: float, s_y: float) -> None:
    """Make a layer trained on (s_x x -> s_y y) map x -> y exactly (TopK ranking unchanged)."""
    with torch.no_grad():
        for W in (lorsa.W_Q, lorsa.W_K, lorsa.W_V):
            W.mul_(s_x)
        lorsa.W_O.div_(s_y)
        lorsa.b_D.div_(s_y)


def fold_scales_transcoder(tc: Transcoder, s_x: float, s_y: float) -> None:
    with torch.no_grad():
        tc.W_enc.mul_(s_x)
        tc.W_dec.div_(s_y)
        tc.b_dec.div_(s_y)
        if tc.W_skip is not None:
            tc.W_skip.mul_(s_x / s_y)


class LayerDictionaries(torch.nn.Module):
    """The dictionaries being trained: one Lorsa and one transcoder per chosen layer."""

    def __init__(self, layers: list[int], d_model: int, cfg: ReplacementTrainConfig):
        super().__init__()
        self.layers = layers
        lorsa_cfg = LorsaConfig(d_model, cfg.n_qk_heads, cfg.n_ov_heads, cfg.d_qk, cfg.lorsa_top_k)
        tc_cfg = TranscoderConfig(d_model, cfg.d_sae, cfg.transcoder_top_k, cfg.transcoder_skip)
        self.lorsas = torch.nn.ModuleList(LorsaLayer(lorsa_cfg) for _ in layers)
        self.transcoders = torch.nn.ModuleList(Transcoder(tc_cfg) for _ in layers)
        # Normalisation scales (input, target) per layer and per kind; and tokens since each
        # unit last fired, for dead-unit tracking.
        self.register_buffer("scales", torch.ones(len(layers), 2, 2))
        self.register_buffer("lorsa_idle", torch.zeros(len(layers), cfg.n_ov_heads))
        self.register_buffer("tc_idle", torch.zeros(len(layers), cfg.d_sae))


def dictionary_loss(
    module, x: Tensor, y: Tensor, idle: Tensor, step: int, cfg: ReplacementTrainConfig
) -> tuple[Tensor, float, float]:
    """One dictionary (Lorsa, transcoder, or an SAE, which is a transcoder with y = x) on one
    batch of scaled activations: ``(MSE + AuxK loss, FVU, dead fraction)``.

    ``idle`` counts, per unit, the tokens since it last fired; it is updated in place.
    """
    pre = module.pre_activations(x)
    values, idx = topk_sparse(pre, k_at(step, module.cfg.top_k, cfg), module.decoder.norm(dim=-1))
    recon = module.decode_sparse(values, idx, x)
    mse = (recon - y).pow(2).sum(-1).mean() / y.shape[-1]
    fired = torch.zeros_like(idle, dtype=torch.bool)
    fired[idx[values > 0]] = True
    idle.add_(values[..., 0].numel()).masked_fill_(fired, 0)
    dead = idle > cfg.dead_tokens
    aux = aux_k_loss(pre, dead, module.decoder, y - recon, cfg.aux_k)
    return mse + cfg.aux_coef * aux, fvu(recon.detach(), y).item(), dead.float().mean().item()


def layer_losses(
    dicts: LayerDictionaries, batch, step: int, cfg: ReplacementTrainConfig
) -> tuple[Tensor, dict[str, list[float]]]:
    """Summed training loss of every layer's Lorsa and transcoder on one batch, and stats."""
    total = torch.zeros(())
    stats: dict[str, list[float]] = {"lorsa_fvu": [], "tc_fvu": [], "lorsa_dead": [], "tc_dead": []}
    for i in range(len(dicts.layers)):
        for kind, module, x, y, idle in (
            ("lorsa", dicts.lorsas[i], batch.lorsa_x[i], batch.lorsa_y[i], dicts.lorsa_idle[i]),
            ("tc", dicts.transcoders[i], batch.tc_x[i], batch.tc_y[i], dicts.tc_idle[i]),
        ):
            s = dicts.scales[i, 0 if kind == "lorsa" else 1]
            loss, fvu_value, dead = dictionary_loss(module, x * s[0], y * s[1], idle, step, cfg)
            total = total + loss
            stats[f"{kind}_fvu"].append(fvu_value)
            stats[f"{kind}_dead"].append(dead)
    return total, stats


def estimate_scales(store, n_batches: int) -> Tensor:
    """Per layer and kind, sqrt(d_model) / mean norm of inputs and of targets."""
    norms = torch.zeros(store.n_layers, 2, 2)
    for _ in range(n_batches):
        lx, ly, tx, ty = store.sequences()
        for k, (x, y) in enumerate(((lx, ly), (tx, ty))):
            norms[:, k, 0] += x.norm(dim=-1).mean(dim=(1, 2)) / n_batches
            norms[:, k, 1] += y.norm(dim=-1).mean(dim=(1, 2)) / n_batches
    d_model = lx.shape[-1]
    return math.sqrt(d_model) / norms


def train_replacement(
    model_name: str,
    out: Path,
    layers: list[int] | None = None,
    config: str = "default",
    resume: bool = False,
    steps: int | None = None,
    quiet: bool = False,
):
    """Train the dictionaries of ``layers`` (all by default) with scales folded in.

    Returns ``(toy model, LayerDictionaries, meta)``; ``meta`` holds the training figures.
    """
    from tqdm import tqdm

    from toy_models.files import swap_directory, write_json_atomic
    from toy_models.zoo import load_pretrained

    from .activations import ActivationStore

    if config not in CONFIGS:
        raise UserError(f"unknown replacement config {config!r}; known: {', '.join(CONFIGS)}")
    cfg = CONFIGS[config] if steps is None else replace(CONFIGS[config], steps=steps)
    model, tokenizer = load_pretrained(model_name)
    model.requires_grad_(False)
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    bad = [l for l in layers if not 0 <= l < model.cfg.n_layers]
    if bad:
        raise UserError(f"layers {bad} out of range: the model has {model.cfg.n_layers} layers")
    ckpt = out / "checkpoint"
    if resume and not (ckpt / "state.json").exists():
        raise UserError(f"nothing to resume: {ckpt / 'state.json'} does not exist")
    if not resume and ckpt.exists():
        raise UserError(
            f"{out} already holds a training run; pass --resume or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    dicts = LayerDictionaries(layers, model.cfg.d_model, cfg)
    opt = torch.optim.Adam(dicts.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    start, elapsed = 0, 0.0
    if resume:
        state = json.loads((ckpt / "state.json").read_text())
        if (
            state["config"] != asdict(cfg)
            or state["layers"] != layers
            or state["model"] != model_name
        ):
            raise UserError(f"{ckpt} belongs to another run (model, layers or config differ)")
        dicts.load_state_dict(torch.load(ckpt / "dictionaries.pt"))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt"))
        start, elapsed = state["step"], state["elapsed_s"]
    # A resumed run continues on fresh (still seeded) data rather than replaying the stream.
    store = ActivationStore(
        model, tokenizer, cfg.batch_size, "train", cfg.seed * 7919 + start, layers=layers
    )
    if not resume:
        dicts.scales.copy_(estimate_scales(store, cfg.norm_batches))
        first = next(store)
        for i, l in enumerate(layers):
            s = dicts.scales[i]
            y_lorsa = (first.lorsa_y[i] * s[0, 1]).flatten(0, 1).mean(0)
            init_lorsa_from_heads(
                dicts.lorsas[i], model.blocks[l].attn, s[0, 0], s[0, 1], y_lorsa, cfg.seed + l
            )
            init_transcoder(
                dicts.transcoders[i], (first.tc_y[i] * s[1, 1]).mean(0), cfg.seed + 100 + l
            )

    def save_checkpoint(step: int) -> None:
        tmp = ckpt.with_name("checkpoint.tmp")
        tmp.mkdir(exist_ok=True)
        torch.save(dicts.state_dict(), tmp / "dictionaries.pt")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        state = {
            "model": model_name,
            "layers": layers,
            "config": asdict(cfg),
            "step": step,
            "elapsed_s": elapsed,
        }
        write_json_atomic(tmp / "state.json", state)
        swap_directory(tmp, ckpt)

    history: list[dict[str, float]] = []
    step = start
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="train replacement",
        disable=quiet,
    )
    try:
        for step in bar:
            t0 = time.perf_counter()
            batch = next(store)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss, stats = layer_losses(dicts, batch, step, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            elapsed += time.perf_counter() - t0
            history.append({k: sum(v) / len(v) for k, v in stats.items()})
            recent = history[-20:]
            bar.set_postfix(
                lorsa_fvu=f"{sum(h['lorsa_fvu'] for h in recent) / len(recent):.3f}",
                tc_fvu=f"{sum(h['tc_fvu'] for h in recent) / len(recent):.3f}",
            )
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(step + 1)
    except KeyboardInterrupt:
        saved = json.loads((ckpt / "state.json").read_text())["step"] if ckpt.exists() else 0
        raise UserError(
            f"interrupted at step {step}; resume from step {saved} with --resume"
        ) from None
    save_checkpoint(cfg.steps)
    for i in range(len(layers)):
        s = dicts.scales[i]
        fold_scales_lorsa(dicts.lorsas[i], float(s[0, 0]), float(s[0, 1]))
        fold_scales_transcoder(dicts.transcoders[i], float(s[1, 0]), float(s[1, 1]))
    tokens = cfg.steps * cfg.batch_size * model.cfg.n_ctx  # elapsed spans resumes
    meta = {
        "train_config": config,
        "train": asdict(cfg),
        "layers": layers,
        "train_elapsed_s": round(elapsed, 1),
        "train_tokens_per_s": round(tokens / max(elapsed, 1e-9)),
        "final_train_stats": history[-1] if history else {},
    }
    return model, dicts, meta


def parse_layers(text: str) -> list[int] | None:
    """``all`` (None) or a comma-separated list of layer indices."""
    if text == "all":
        return None
    try:
        return sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise UserError(
            f"--layers must be 'all' or comma-separated integers, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m replacement.train",
        description="Train a Lorsa layer and a transcoder for every layer of a toy model.",
    )
    parser.add_argument("--model", default="default", help="zoo name or toy model directory")
    parser.add_argument("--layers", default="all", help="'all' (a complete replacement set)")
    parser.add_argument("--config", default="default", help=f"one of {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--steps", type=int, help="override the config's number of steps")
    args = parser.parse_args(argv)
    if args.config not in CONFIGS:
        raise UserError(f"unknown replacement config {args.config!r}; known: {', '.join(CONFIGS)}")
    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be positive, got {args.steps}")
    if parse_layers(args.layers) is not None:
        raise UserError("a replacement set needs every layer: only --layers all is supported")
    from toy_models.zoo import resolve_model_dir

    resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    from .model import ReplacementModel

    model, dicts, meta = train_replacement(
        args.model, args.out, config=args.config, resume=args.resume, steps=args.steps
    )
    replacement = ReplacementModel(model, list(dicts.lorsas), list(dicts.transcoders))
    replacement.save(args.out, args.model, meta)
    stats = meta["final_train_stats"]
    print(
        f"trained {len(dicts.lorsas)} Lorsa layers and transcoders in"
        f" {meta['train_elapsed_s']:.0f} s ({meta['train_tokens_per_s']} tokens/s);"
        f" last-batch FVU Lorsa {stats['lorsa_fvu']:.3f}, transcoders {stats['tc_fvu']:.3f}"
        f" -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
