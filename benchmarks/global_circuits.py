"""Global circuits on the default model: speed and memory of a global graph, and whether the
induction circuit is recovered from weights alone.

    python benchmarks/global_circuits.py [--model default] [--heads runs/heads/heads.json]

1. Statistics (expected attribution) are gathered once with ``circuits.global_graph``'s
   default settings if ``runs/global-stats/{model}.safetensors`` is missing; that time is
   reported separately. Then, per start unit, the time to load the model and statistics and to
   grow and prune a global graph (budget 40), and the process's peak resident memory.
2. Induction circuit from weights: for each QK group of the heads that the head taxonomy
   (``python -m reports.heads``, its ``heads.json``) labels induction, the top query-unit x
   key-unit pairs of ``qk_virtual_weights`` (decoders scaled by each unit's mean activation,
   and unscaled). A key-side unit counts as *written by previous-token heads* when its
   strongest virtual-weight writer (scaled the same way) is a Lorsa head labelled
   previous-token; a query-side unit is a *current-token feature* when it is a token
   embedding or its strongest writer is one. Reported as pair-weighted fractions.

Writes benchmarks/results/global_circuits_{model}.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toy_models.cli import run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STARTS = ("logit: Thursday", "lorsa:1:318", "transcoder:2:417", "logit:6")
TOP_PAIRS = 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ensure_statistics(model: str) -> tuple[Path, float | None]:
    path = Path("runs/global-stats") / f"{model}.safetensors"
    if path.is_file():
        return path, None
    t0 = time.perf_counter()
    # The CLI gathers what is missing (or resumes it) before growing any graph.
    subprocess.run(
        [sys.executable, "-m", "circuits.global_graph", "--model", model, "--start",
         STARTS[0], "--out", "runs/global-bench"], check=True,
    )  # fmt: skip
    return path, time.perf_counter() - t0


def graphs(model: str, stats_path: Path) -> dict:
    import torch

    from circuits.global_graph import parse_unit
    from circuits.global_weights import Statistics, Units, global_graph
    from circuits.prune import prune_graph
    from replacement.model import load_pretrained

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    replacement, tokenizer = load_pretrained(model)
    stats = Statistics.load(stats_path, replacement)
    load_s = time.perf_counter() - t0
    units = Units.of(replacement)
    out = {"load_seconds": load_s, "statistics": stats.meta, "starts": {}}
    for spec in STARTS:
        t0 = time.perf_counter()
        start = parse_unit(spec, units, tokenizer)
        graph = prune_graph(global_graph(replacement, stats, start, budget=40, tokenizer=tokenizer))
        seconds = time.perf_counter() - t0
        coo = graph.edges.tocoo()
        strongest = abs(coo.data).argsort()[::-1][:5]
        out["starts"][spec] = {
            "seconds_grow_and_prune": seconds,
            "seconds_with_loading": seconds + load_s,
            "nodes": graph.n_nodes,
            "edges": graph.n_edges,
            "strongest_edges": [
                [graph.labels[coo.col[j]], graph.labels[coo.row[j]], float(coo.data[j])]
                for j in strongest
            ],
        }
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def induction_from_weights(model: str, stats_path: Path, heads_json: Path) -> dict:
    import torch

    from circuits.global_weights import (
        Statistics,
        Units,
        decoders,
        qk_virtual_weights,
        readers,
        stage_of,
    )
    from replacement.model import load_pretrained

    torch.set_grad_enabled(False)
    if not heads_json.is_file():
        return {"skipped": f"{heads_json} missing: run python -m reports.heads --model {model}"}
    labels = json.loads(heads_json.read_text())
    replacement, _ = load_pretrained(model)
    stats = Statistics.load(stats_path, replacement)
    units = Units.of(replacement)
    heads = labels["heads"]
    family = {(h["layer"], h["head"]): set(h["labels"]) for h in heads}
    prev_units = {
        units.unit("lorsa", layer, head)
        for (layer, head), fams in family.items()
        if "previous_token" in fams
    }
    induction = sorted({(l, h) for (l, h), fams in family.items() if "induction" in fams})
    group = replacement.lorsas[0].cfg.group_size
    groups = sorted({(l, h // group) for l, h in induction})
    mean_activation = stats.activity / stats.count.clamp(min=1)
    d_all, r_all = decoders(replacement, units), readers(replacement, units)
    stage = torch.from_numpy(stage_of(units))

    def strongest_writer(unit: int, scale: torch.Tensor | None) -> int:
        below = int(units.offsets[stage[unit]])
        w = d_all[:below] @ r_all[unit]
        if scale is not None:
            w = w * scale[:below]
        return int(w.abs().argmax())

    result = {"induction_heads": len(induction), "qk_groups": groups, "by_scaling": {}}
    for name, scale in (("mean_activation", mean_activation), ("weights_only", None)):
        key_prev = query_current = total = 0.0
        examples = []
        for layer, h in groups:
            for q, k, v in qk_virtual_weights(replacement, layer, h, k=TOP_PAIRS, scale=scale):
                weight = abs(v)
                total += weight
                key_writer = strongest_writer(k, scale) if stage[k] > 0 else k
                key_prev += weight * (key_writer in prev_units)
                q_embedding = stage[q] == 0 or stage[strongest_writer(q, scale)] == 0
                query_current += weight * bool(q_embedding)
                if len(examples) < 5:
                    examples.append([units.describe(q), units.describe(k), v])
        result["by_scaling"][name] = {
            "key_side_written_by_previous_token_heads": key_prev / max(total, 1e-12),
            "query_side_current_token": query_current / max(total, 1e-12),
            "top_pairs": examples,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/global_circuits.py")
    parser.add_argument("--model", default="default")
    parser.add_argument("--heads", type=Path, default=Path("runs/heads/heads.json"))
    args = parser.parse_args(argv)
    stats_path, gather_s = ensure_statistics(args.model)
    result = {"model": args.model, "gather_seconds_this_run": gather_s}
    result["graphs"] = graphs(args.model, stats_path)
    result["induction_from_weights"] = induction_from_weights(args.model, stats_path, args.heads)
    worst = max(s["seconds_with_loading"] for s in result["graphs"]["starts"].values())
    result["targets"] = {
        "global_graph_seconds<=10": worst <= 10,
        "peak_rss_mb<=4096": result["graphs"]["peak_rss_mb"] <= 4096,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"global_circuits_{args.model}.json"
    from toy_models.files import write_json_atomic

    write_json_atomic(path, result)
    print(json.dumps(result, indent=1, default=str)[:4000])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
