"""Training throughput of ToyTransformer against TransformerLens's TransformerBridge.boot_native.

Both models are built from the same zoo config (d_vocab, n_ctx, d_model, n_layers, n_heads,
d_head, d_mlp; exact GELU MLP, pre-LN, learned positional embeddings), start from the same
weights, see the same random token batches and train with the same AdamW (lr 1e-3) on the same
number of threads. A step is forward + next-token cross-entropy + backward + optimizer step.
The two models are timed in interleaved rounds (order ABBA...), so background load hits both
alike; the reported figure is the median round. The time to import ``transformer_lens`` is
reported apart from compute.

    python benchmarks/train_throughput.py [--config default] [--steps 20] [--rounds 5]
    python benchmarks/train_throughput.py --tiny --steps 2 --rounds 2   # smoke test
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toy_models.cli import ArgumentParser, UserError, path_arg, run_cli  # noqa: E402  (light: no torch, no TL)
from toy_models.zoo import CONFIGS  # noqa: E402

DEFAULT_OUT = Path(__file__).parent / "results" / "train_throughput.json"
LR = 1e-3
MIN_SPEEDUP = 2.0
N_BATCHES = 4  # distinct random batches, cycled; the same ones for both models
DATA_SEED = 0

# ToyTransformer's LayerNorm only centres and scales (its affine is folded into the next
# layer), which is TransformerLens's "LNPre"; "LN" gives the bridge a LayerNorm with weight
# and bias, the architecture a TL user would get by default.
BRIDGE_NORMS = ("LNPre", "LN")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python benchmarks/train_throughput.py",
        description=(
            "Measure training throughput (tokens/s for forward + backward + AdamW step) of "
            "toy_models.ToyTransformer and of TransformerLens's TransformerBridge.boot_native "
            "built on the same architecture, in interleaved rounds, and write a JSON report."
        ),
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--config",
        default="default",
        help=f"zoo config name ({', '.join(sorted(CONFIGS))}; default: default)",
    )
    which.add_argument("--tiny", action="store_true", help="shortcut for --config tiny")
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per model per round (20)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (3)")
    parser.add_argument("--batch", type=int, default=32, help="sequences per batch (32)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: n_ctx)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument(
        "--bridge-norm",
        choices=BRIDGE_NORMS,
        default="LNPre",
        help="bridge normalization_type: LNPre matches ours exactly (default); LN adds affine",
    )
    parser.add_argument(
        "--out",
        type=path_arg,
        default=DEFAULT_OUT,
        help="JSON path (benchmarks/results/train_throughput.json)",
    )
    return parser


def validate(args: argparse.Namespace, n_ctx: int) -> None:
    for flag, value, low in [
        ("--steps", args.steps, 1),
        ("--rounds", args.rounds, 1),
        ("--warmup", args.warmup, 0),
        ("--batch", args.batch, 1),
        ("--threads", args.threads, 1),
    ]:
        if value is not None and value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    if not 2 <= args.seq_len <= n_ctx:
        raise UserError(f"--seq-len must be in 2..n_ctx={n_ctx}, got {args.seq_len}")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a directory; give a file path")


# ------------------------------------------------------------------------------ models
def bridge_config(model_cfg: Any, norm: str, seed: int = 0) -> Any:
    """A TransformerBridgeConfig describing the same network as ``model_cfg``."""
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(
        d_vocab=model_cfg.d_vocab,
        n_ctx=model_cfg.n_ctx,
        d_model=model_cfg.d_model,
        n_layers=model_cfg.n_layers,
        n_heads=model_cfg.n_heads,
        d_head=model_cfg.d_head,
        d_mlp=model_cfg.d_mlp,
        act_fn="gelu",  # the config's default is "relu"; "gelu" is exact F.gelu, like ours
        normalization_type=norm,
        eps=model_cfg.ln_eps,
        positional_embedding_type="standard",  # learned absolute positions
        attention_dir="causal",
        # architecture left None: boot_native only builds "TransformerLensNative" and says so.
        # A seed makes boot_native initialise under a forked RNG, so building the bridge does
        # not shift the global RNG; init_mode gpt2 with our std mirrors our init (the weights
        # are overwritten with ours anyway, see copy_weights_into_bridge).
        init_mode="gpt2",
        initializer_range=model_cfg.init_std,
        seed=seed,
    )


def copy_weights_into_bridge(ours: Any, bridge: Any) -> None:
    """Give the bridge our weights, so both start from the same function and the same loss."""
    import torch

    cfg = ours.cfg
    native = bridge.original_model  # TL's NativeModel: nn.Linear weights are (out, in)
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    with torch.no_grad():
        native.tok_embed.weight.copy_(ours.W_E)
        native.pos.weight.copy_(ours.W_pos)
        for block, layer in zip(ours.blocks, native.layers, strict=True):
            attn, mlp = block.attn, block.mlp
            for name in ("q", "k", "v"):
                W, b = getattr(attn, f"W_{name.upper()}"), getattr(attn, f"b_{name.upper()}")
                getattr(layer.attn, name).weight.copy_(W.permute(0, 2, 1).reshape(h * e, d))
                getattr(layer.attn, name).bias.copy_(b.reshape(h * e))
            layer.attn.o.weight.copy_(attn.W_O.reshape(h * e, d).T)
            layer.attn.o.bias.copy_(attn.b_O)
            layer.mlp.fc_in.weight.copy_(mlp.W_in.T)
            layer.mlp.fc_in.bias.copy_(mlp.b_in)
            layer.mlp.fc_out.weight.copy_(mlp.W_out.T)
            layer.mlp.fc_out.bias.copy_(mlp.b_out)
        native.head.weight.copy_(ours.W_U.T)
        # TL's head has no bias; ours (b_U) starts at zero, so the functions still agree.


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def param_count_check(ours: Any, bridge: Any, norm: str) -> dict[str, Any]:
    """Both counts, and whether their difference is exactly the known architectural deltas."""
    cfg = ours.cfg
    ln_affine = 2 * cfg.d_model * (2 * cfg.n_layers + 1) if norm == "LN" else 0
    expected_difference = cfg.d_vocab - ln_affine  # ours has b_U; TL's head has no bias
    counts = {"ours": n_params(ours), "bridge": n_params(bridge)}
    difference = counts["ours"] - counts["bridge"]
    return {
        **counts,
        "ours_minus_bridge": difference,
        "expected_ours_minus_bridge": expected_difference,
        "matches": difference == expected_difference,
        "explanation": (
            f"ours has an unembedding bias b_U (+d_vocab = {cfg.d_vocab}) that TL's native head "
            "lacks; our LayerNorms have no weight/bias by design (folded into the next layer), "
            + (
                f"while the bridge's LN has them (-{ln_affine} = 2 * d_model * (2 * n_layers + 1))"
                if norm == "LN"
                else "and the bridge uses the matching param-free LNPre"
            )
        ),
    }


# ------------------------------------------------------------------------------ timing
def make_step(model: Any, lr: float) -> Callable[[Any], float]:
    """One training step: forward, next-token cross-entropy, backward, AdamW; returns the loss."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step(tokens: Any) -> float:
        logits = model(tokens)  # the bridge's normal forward (return_type="logits")
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # syncs, and is what a training loop logs

    return step


def timed_round(
    step: Callable[[Any], float], batches: list[Any], steps: int
) -> tuple[float, float]:
    """Seconds for ``steps`` training steps, and the last loss."""
    start = time.perf_counter()
    loss = float("nan")
    for i in range(steps):
        loss = step(batches[i % len(batches)])
    return time.perf_counter() - start, loss


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = "tiny" if args.tiny else args.config
    if name not in CONFIGS:
        raise UserError(f"unknown config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    entry = CONFIGS[name]
    n_ctx = entry.model["n_ctx"]
    args.seq_len = args.seq_len if args.seq_len is not None else n_ctx
    validate(args, n_ctx)

    # Start-up, kept apart from compute: torch first (both models need it), then TL.
    t0 = time.perf_counter()
    import torch

    t1 = time.perf_counter()
    import transformer_lens  # noqa: F401  (timed on its own)

    t2 = time.perf_counter()
    from transformer_lens.model_bridge import TransformerBridge

    t3 = time.perf_counter()
    from toy_models.files import write_json_atomic
    from toy_models.model import ModelConfig, ToyTransformer

    startup_s = {
        "import_torch": t1 - t0,
        "import_transformer_lens": t2 - t1,
        "import_transformer_lens_model_bridge": t3 - t2,
    }

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    # d_vocab comes from the tokenizer the zoo trains for this config.
    model_cfg = ModelConfig(d_vocab=entry.train.vocab_size, **entry.model)

    torch.manual_seed(0)
    t = time.perf_counter()
    ours = ToyTransformer(model_cfg).train()
    startup_s["build_ours"] = time.perf_counter() - t
    t = time.perf_counter()
    bridge = TransformerBridge.boot_native(bridge_config(model_cfg, args.bridge_norm)).train()
    startup_s["build_bridge"] = time.perf_counter() - t
    copy_weights_into_bridge(ours, bridge)

    params = param_count_check(ours, bridge, args.bridge_norm)
    if not params["matches"]:
        raise RuntimeError(f"parameter counts differ beyond the known deltas: {params}")

    generator = torch.Generator().manual_seed(DATA_SEED)
    batches = [
        torch.randint(model_cfg.d_vocab, (args.batch, args.seq_len), generator=generator)
        for _ in range(N_BATCHES)
    ]
    with torch.no_grad():
        logits = {"ours": ours(batches[0]), "bridge": bridge(batches[0])}
    expected_shape = (args.batch, args.seq_len, model_cfg.d_vocab)
    for label, out in logits.items():
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected_shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(f"{label} forward returned {shape}, expected {expected_shape}")
    max_logit_diff = (logits["ours"] - logits["bridge"]).abs().max().item()
    if max_logit_diff > 1e-4:
        raise RuntimeError(f"same weights, different logits (max |diff| {max_logit_diff:.2e})")

    steps = {"ours": make_step(ours, LR), "bridge": make_step(bridge, LR)}
    for step in steps.values():
        timed_round(step, batches, args.warmup)

    seconds: dict[str, list[float]] = {label: [] for label in steps}
    last_loss: dict[str, float] = {}
    load_before = load_average()
    for r in range(args.rounds):
        order = ["ours", "bridge"] if r % 2 == 0 else ["bridge", "ours"]
        for label in order:
            elapsed, last_loss[label] = timed_round(steps[label], batches, args.steps)
            seconds[label].append(elapsed)
    load_after = load_average()

    tokens_per_round = args.batch * args.seq_len * args.steps
    per_model = {}
    for label in steps:
        rates = [tokens_per_round / s for s in seconds[label]]
        per_model[label] = {
            "tokens_per_s_median": statistics.median(rates),
            "tokens_per_s_rounds": rates,
            "ms_per_step_median": 1000 * statistics.median(seconds[label]) / args.steps,
            "params": params[label],
            "last_loss": last_loss[label],
        }
    speedup = per_model["ours"]["tokens_per_s_median"] / per_model["bridge"]["tokens_per_s_median"]

    results = {
        "config_name": name,
        "config": asdict(model_cfg),
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens_per_step": args.batch * args.seq_len,  # input tokens; the loss uses seq_len - 1
        "threads": threads,
        "torch_version": torch.__version__,
        "transformer_lens_version": importlib.metadata.version("transformer-lens"),
        "optimizer": {"name": "AdamW", "lr": LR, "other": "torch defaults"},
        "warmup_steps": args.warmup,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "round_order": "ours/bridge alternating first (ABBA...)",
        "bridge": {
            "constructor": "TransformerBridge.boot_native",
            "normalization_type": args.bridge_norm,
            "act_fn": "gelu",
            "init_mode": "gpt2",
            "seed": 0,
            "weights": "copied from ours before timing",
            "max_abs_logit_diff_at_start": max_logit_diff,
        },
        "models": per_model,
        "param_counts": params,
        "speedup_ours_over_bridge": speedup,
        "target": {"min_speedup": MIN_SPEEDUP, "met": speedup >= MIN_SPEEDUP},
        "startup_s": startup_s,
        "startup_note": (
            "in-process, after torch; ours needs import_transformer_lens too (HookPoint, "
            "HookedRootModule), only import_transformer_lens_model_bridge is bridge-only"
        ),
        "load_average_1min": {"before_timing": load_before, "after_timing": load_after},
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)  # temp file in the same folder, then os.replace
    print(summary(results))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def summary(r: dict[str, Any]) -> str:
    c, ours, bridge = r["config"], r["models"]["ours"], r["models"]["bridge"]
    s = r["startup_s"]
    return "\n".join(
        [
            f"config {r['config_name']}: d_vocab {c['d_vocab']}, n_ctx {c['n_ctx']}, "
            f"d_model {c['d_model']}, {c['n_layers']} layers, {c['n_heads']} heads; "
            f"batch {r['batch']} x {r['seq_len']} tokens, {r['threads']} threads, "
            f"torch {r['torch_version']}",
            f"params: ours {r['param_counts']['ours']:,}, bridge {r['param_counts']['bridge']:,} "
            f"(difference {r['param_counts']['ours_minus_bridge']:+,}, as expected)",
            f"ours   {ours['tokens_per_s_median']:>10,.0f} tokens/s "
            f"({ours['ms_per_step_median']:.1f} ms/step, median of {r['rounds']} rounds)",
            f"bridge {bridge['tokens_per_s_median']:>10,.0f} tokens/s "
            f"({bridge['ms_per_step_median']:.1f} ms/step, "
            f"normalization {r['bridge']['normalization_type']})",
            f"speedup ours/bridge {r['speedup_ours_over_bridge']:.2f}x "
            f"(target >= {r['target']['min_speedup']}: "
            f"{'met' if r['target']['met'] else 'NOT met'})",
            f"start-up (not in the rates): import transformer_lens "
            f"{s['import_transformer_lens']:.2f} s, its model_bridge "
            f"{s['import_transformer_lens_model_bridge']:.2f} s, boot_native "
            f"{s['build_bridge']:.2f} s",
        ]
    )


if __name__ == "__main__":
    run_cli(main)
