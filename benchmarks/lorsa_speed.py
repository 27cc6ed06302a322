"""Grouped Lorsa against a naive per-OV-head implementation, forward + backward.

    python benchmarks/lorsa_speed.py [--heads 2048] [--qk-heads 16] [--batch 4] [--seq 128]

The naive version is the definition written out: every OV head computes its own attention
pattern from its QK head and attends over its own scalar values (one pattern per OV head, the
thing the grouped form never materialises). Both get the same weights and inputs; the script
checks that pre-activations and gradients agree to 1e-5 and writes
benchmarks/results/lorsa_speed.json with the timings and the speedup (target >= 5x).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from replacement.lorsa import LorsaConfig, LorsaLayer  # noqa: E402
from toy_models.cli import ArgumentParser, positive_int, run_cli  # noqa: E402
from toy_models.files import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def naive_pre_activations(layer: LorsaLayer, x: torch.Tensor) -> torch.Tensor:
    """One explicit causal pattern per OV head, built from that head's QK head."""
    cfg = layer.cfg
    n = x.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    out = []
    for i in range(cfg.n_ov_heads):
        h = i // cfg.group_size
        q = x @ layer.W_Q[h] + layer.b_Q[h]
        k = x @ layer.W_K[h] + layer.b_K[h]
        scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.d_qk)
        pattern = scores.masked_fill(~causal, -math.inf).softmax(-1)
        v = x @ layer.W_V[i] + layer.b_V[i]
        out.append((pattern @ v[..., None])[..., 0])
    return torch.stack(out, dim=-1)


def timed(fn, layer: LorsaLayer, x: torch.Tensor, repeats: int) -> tuple[list[float], dict]:
    times = []
    for _ in range(repeats):
        layer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        pre = fn(x)
        pre.pow(2).sum().backward()
        times.append(time.perf_counter() - start)
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return times, {"pre": pre.detach(), **grads}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/lorsa_speed.py", description=__doc__)
    parser.add_argument("--heads", type=positive_int, default=2048, help="OV heads (2048)")
    parser.add_argument("--qk-heads", type=positive_int, default=16, help="QK heads (16)")
    parser.add_argument("--d-model", type=positive_int, default=128)
    parser.add_argument("--d-qk", type=positive_int, default=16)
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--seq", type=positive_int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = LorsaConfig(args.d_model, args.qk_heads, args.heads, args.d_qk, top_k=32)
    layer = LorsaLayer(cfg)
    x = torch.randn(args.batch, args.seq, args.d_model)
    grouped_t, grouped = timed(layer.pre_activations, layer, x, args.repeats)
    naive_t, naive = timed(lambda x: naive_pre_activations(layer, x), layer, x, args.repeats)
    max_diff = {k: (grouped[k] - naive[k]).abs().max().item() for k in grouped}
    grad_scale = max(v.abs().max().item() for k, v in grouped.items() if k != "pre")
    max_rel = {
        k: d / (grouped["pre"].abs().max().item() if k == "pre" else grad_scale)
        for k, d in max_diff.items()
    }
    speedup = statistics.median(naive_t) / statistics.median(grouped_t)
    report = {
        "config": vars(args),
        "tokens": args.batch * args.seq,
        "grouped_s": grouped_t,
        "naive_s": naive_t,
        "grouped_median_s": statistics.median(grouped_t),
        "naive_median_s": statistics.median(naive_t),
        "speedup": speedup,
        "max_abs_diff": max_diff,
        # relative to the largest value of their kind: b_K's true gradient is 0 (softmax is
        # shift-invariant), so its own scale is rounding noise
        "max_rel_diff": max_rel,
        "same_numbers_1e-5": max(max_rel.values()) <= 1e-5,
        "target": {"min_speedup": 5.0, "met": speedup >= 5.0},
    }
    print(
        f"{args.heads} OV heads in {args.qk_heads} QK groups, {args.batch}x{args.seq} tokens: "
        f"grouped {report['grouped_median_s'] * 1e3:.1f} ms, naive "
        f"{report['naive_median_s'] * 1e3:.1f} ms (forward+backward), speedup {speedup:.1f}x; "
        "max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in max_diff.items())
    )
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "lorsa_speed.json", report)
    return 0


if __name__ == "__main__":
    run_cli(main)
