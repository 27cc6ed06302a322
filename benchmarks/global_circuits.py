"""Global circuits on the default model: speed and memory of a global graph, and whether the
induction circuit is recovered from weights alone.

    python benchmarks/global_circuits.py [--model default] [--heads runs/heads/heads.json]
                                         [--gather-rows 16]

0. Gathering speed: ``--gather-rows`` rows (default 16) gathered in-process without a
   checkpoint, model loading apart (seconds, seconds per row).
1. Statistics (expected attribution) are gathered once with ``circuits.global_graph``'s
   default settings if ``runs/global-stats/{model}.safetensors`` is missing; that time is
   reported separately. Then, per start unit, the time to load the model and statistics and to
   grow and prune a global graph (budget 40), and the process's peak resident memory.
2. Induction circuit from weights: for each QK group of the heads that the head taxonomy
   (``python -m reports.heads``, its ``heads.json``) labels induction, the top query-unit x
   key-unit pairs of ``qk_virtual_weights`` (weights alone), and where each side's units get
   their input on the corpus sample (shares of summed |mean input| by writer: token
   embeddings, heads the taxonomy labels previous-token, other heads, features, errors),
   averaged with the pairs' |weights|. The induction circuit predicts key-side units written by
   previous-token heads and query-side units written by token embeddings (the current token).

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


def gathering(model: str, rows: int) -> dict:
    """Seconds to gather ``rows`` rows (no checkpoint), apart from loading the model."""
    import torch

    from circuits.statistics import gather_statistics
    from replacement.model import load_pretrained

    torch.set_grad_enabled(False)
    replacement, tokenizer = load_pretrained(model)
    t0 = time.perf_counter()
    gather_statistics(replacement, tokenizer, rows=rows, progress=False)
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": seconds, "seconds_per_row": seconds / rows}


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
    from circuits.global_weights import global_graph
    from circuits.prune import prune_graph
    from circuits.statistics import Statistics
    from circuits.units import Units
    from replacement.model import load_pretrained
    from reports.labels import node_labels

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    replacement, tokenizer = load_pretrained(model)
    stats = Statistics.load(stats_path, replacement, tokenizer)
    load_s = time.perf_counter() - t0
    units = Units.of(replacement)
    out = {"load_seconds": load_s, "statistics": stats.meta, "starts": {}}
    for spec in STARTS:
        t0 = time.perf_counter()
        start = parse_unit(spec, units, tokenizer)
        graph = prune_graph(global_graph(replacement, stats, start, budget=40, tokenizer=tokenizer))
        seconds = time.perf_counter() - t0
        labels = node_labels(graph)
        coo = graph.edges.tocoo()
        strongest = abs(coo.data).argsort()[::-1][:5]
        out["starts"][spec] = {
            "seconds_grow_and_prune": seconds,
            "seconds_with_loading": seconds + load_s,
            "nodes": graph.n_nodes,
            "edges": graph.n_edges,
            "strongest_edges": [
                [labels[coo.col[j]], labels[coo.row[j]], float(coo.data[j])] for j in strongest
            ],
        }
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def induction_from_weights(model: str, stats_path: Path, heads_json: Path) -> dict:
    import torch

    from circuits.global_weights import qk_virtual_weights
    from circuits.nodes import Kind
    from circuits.statistics import Statistics
    from circuits.units import Units
    from replacement.model import load_pretrained

    torch.set_grad_enabled(False)
    if not heads_json.is_file():
        return {"skipped": f"{heads_json} missing: run python -m reports.heads --model {model}"}
    families = json.loads(heads_json.read_text())["families"]
    replacement, tokenizer = load_pretrained(model)
    stats = Statistics.load(stats_path, replacement, tokenizer)
    units = Units.of(replacement)
    stage = units.stage
    group = replacement.lorsas[0].cfg.group_size

    def head_units(family: str) -> set[int]:
        return {units.unit("lorsa", h["layer"], h["head"]) for h in families[family]["heads"]}

    previous_token = head_units("previous_token")
    induction = sorted({(h["layer"], h["head"] // group) for h in families["induction"]["heads"]})
    groups = ("token embeddings", "previous-token heads", "other heads", "features", "errors")

    def input_shares(unit: int) -> dict[str, float]:
        """Where a unit's input comes from on the corpus sample: shares of its summed |mean
        input| by kind of writer (a token embedding counts only when its token is there, so
        embeddings are summed as one group)."""
        if stage[unit] == 0:
            return dict.fromkeys(groups, 0.0) | {"token embeddings": 1.0}
        ids, weights = stats.mean_input(unit)
        shares = dict.fromkeys(groups, 0.0)
        writer_group = {
            Kind.EMBEDDING: groups[0],
            Kind.TRANSCODER: groups[3],
            Kind.ERROR: groups[4],
        }
        for u, w in zip(ids.tolist(), weights.abs().tolist(), strict=True):
            name = writer_group.get(units.describe(u)[0])
            shares[name or (groups[1] if u in previous_token else groups[2])] += w
        total = sum(shares.values()) or 1.0
        return {k: v / total for k, v in shares.items()}

    def strongest_writer(unit: int) -> int:
        ids, weights = stats.mean_input(unit)
        return int(ids[weights.abs().argmax()])

    query_side = dict.fromkeys(groups, 0.0)
    key_side = dict.fromkeys(groups, 0.0)
    total = key_strongest_previous = 0.0
    examples = []
    for layer, h in induction:
        for q, k, v in qk_virtual_weights(replacement, layer, h, k=TOP_PAIRS):  # weights alone
            total += abs(v)
            q_shares, k_shares = input_shares(q), input_shares(k)
            key_strongest_previous += abs(v) * (
                stage[k] > 0 and strongest_writer(k) in previous_token
            )
            for name in groups:
                query_side[name] += abs(v) * q_shares[name]
                key_side[name] += abs(v) * k_shares[name]
            if len(examples) < 6:
                examples.append(
                    {
                        "query": units.unit_id(q),
                        "query_inputs": q_shares,
                        "key": units.unit_id(k),
                        "key_inputs": k_shares,
                        "weight": v,
                    }
                )
    return {
        "induction_qk_groups": induction,
        "previous_token_heads": len(previous_token),
        "pairs_per_group": TOP_PAIRS,
        "key_side_inputs": {k: v / (total or 1.0) for k, v in key_side.items()},
        "key_side_strongest_writer_is_previous_token_head": key_strongest_previous / (total or 1.0),
        "query_side_inputs": {k: v / (total or 1.0) for k, v in query_side.items()},
        "top_pairs": examples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/global_circuits.py")
    parser.add_argument("--model", default="default")
    parser.add_argument("--heads", type=Path, default=Path("runs/heads/heads.json"),
                        help="the taxonomy's heads.json (python -m reports.heads)")  # fmt: skip
    parser.add_argument("--gather-rows", type=int, default=16,
                        help="rows for the gathering-speed measurement (0: skip it)")  # fmt: skip
    args = parser.parse_args(argv)
    result = {"model": args.model}
    if args.gather_rows > 0:
        result["gathering"] = gathering(args.model, args.gather_rows)
    stats_path, gather_s = ensure_statistics(args.model)
    result["gather_seconds_this_run"] = gather_s
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
