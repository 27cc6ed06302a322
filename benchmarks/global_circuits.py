"""Global circuits on the default model: how fast statistics are gathered and how large they
are, what a global graph costs and how much it can be trusted, what the induction head's QK
side is made of, and how much of the local graphs it stands for.

    python benchmarks/global_circuits.py [--model default] [--heads runs/heads/heads.json]
                                         [--rows 128] [--prompts 8]

0. Gathering: ``--rows`` rows (default 128, the default of ``circuits.global_graph``) gathered
   in-process into a fresh file, model loading apart: wall and CPU seconds, the file's size,
   the machine's load average before and after (the figures depend on it).
1. Graphs, per start unit (the logits of `` Thursday`` and of ``6``, and the top induction
   head; upstream, budget 40, pruned, with the QK side, as the CLI grows them): seconds,
   nodes, edges, the strongest edges and each QK group's strongest pair, and the split-half
   reliability (how many of the top 20 edges the graphs of the even and of the odd rows
   share); the process's peak resident memory.
2. The induction head's QK side (the QK group of the taxonomy's top induction head, and its
   previous-token and local-context heads, from ``heads.json`` of ``python -m reports.heads``
   on the same model and replacement set, checked by its ``identity``): the shares of the
   group's |expected QK attribution| marginals by kind of unit on the query side and on the
   key side (token embedding, previous-token head, other local-context head, other head,
   feature, error, bias; what the 64 gathered units of a side leave out is "not gathered"),
   and by kind of *writer* (the listed units' mean inputs, shared out by kind of the unit that
   writes them, weighted by the units' |marginal|; a token writes itself), and how many of its
   10 strongest pairs the two halves share (among the same units, chosen on the whole sample).
3. Validation against local graphs: per corpus family, ``--prompts`` held-out prompts (rows of
   another seed than the statistics', cut before a position whose next token is the target);
   for each, the global graph of the logit of its next token and the prompt's local graph of
   that logit. Of the local graph's |edge| mass between the global graph's units (summed over
   the prompts of a family), the share on the global graph's edges and on its 20 strongest.

Writes benchmarks/results/global_circuits_{model}.json.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toy_models.cli import ArgumentParser, path_arg, positive_int, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RESULT_KEYS = frozenset({"model", "gathering", "graphs", "targets"})  # an earlier file's
LOGIT_STARTS = ("logit: Thursday", "logit:6")
TOP_EDGES = 20
TOP_PAIRS = 10  # QK pairs compared between the halves
N_STRONGEST = 5
VALIDATION_SEED = 1  # held-out rows of another seed than the statistics' (seed 0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gathering(replacement, tokenizer, rows: int, path: Path) -> dict:
    """Wall and CPU seconds to gather ``rows`` rows into ``path`` (fresh), and its size."""
    from circuits.gathering import gather_statistics

    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    gather_statistics(replacement, tokenizer, rows=rows, progress=False, checkpoint=path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "rows": rows,
        "seconds": wall,
        "cpu_seconds": cpu,
        "seconds_per_row": wall / rows,
        "file_mb": path.stat().st_size / 1e6,
        "load_average_before": load[0],
        "load_average_after": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def grower(replacement, tokenizer, start: int):
    from circuits.global_weights import global_graph
    from circuits.prune import prune_graph

    def grow(stats):
        graph = global_graph(replacement, stats, start, budget=40, tokenizer=tokenizer)
        return prune_graph(graph)

    return grow


FAMILIES_READ = ("induction", "previous_token", "local_context")
HEAD_FIELDS = ("layer", "head", "score", "active")


def check_head(family: str, h, n_ov: list[int]) -> None:
    """One entry of a family's ``heads``, checked for all that the benchmark reads of it
    (``induction_head`` ranks by score and ``active`` after the long gathering, where a
    missing or odd field was a traceback)."""
    if not isinstance(h, dict):
        raise ValueError(f"{family}: a head entry is {type(h).__name__}, not an object")
    missing = [k for k in HEAD_FIELDS if k not in h]
    if missing:
        raise ValueError(f"{family}: a head entry lacks {', '.join(missing)}")
    layer, head, score, active = (h[k] for k in HEAD_FIELDS)
    if not (type(layer) is int and 0 <= layer < len(n_ov)
            and type(head) is int and 0 <= head < n_ov[layer]):  # fmt: skip
        raise ValueError(f"{family}: no head {layer!r}:{head!r} in this replacement set")
    if not (type(score) in (int, float) and 0 <= score <= 1):
        raise ValueError(f"{family}: score {score!r} outside [0, 1]")
    if not (type(active) is int and active >= 0):
        raise ValueError(f"{family}: active {active!r} is not a non-negative integer")


def check_families(record, n_ov: list[int]) -> dict:
    """The ``families`` of a heads.json record, each family the benchmark reads an object
    whose ``heads`` is a list of entries that ``check_head`` accepts."""
    if not isinstance(record, dict) or not isinstance(record.get("families"), dict):
        raise ValueError("no families object")
    families = record["families"]
    for f in FAMILIES_READ:
        if not isinstance(families.get(f), dict) or not isinstance(families[f].get("heads"), list):
            raise ValueError(f"{f}: no list of heads")
        for h in families[f]["heads"]:
            check_head(f, h, n_ov)
    return families


def taxonomy(replacement, tokenizer, heads_json: Path) -> dict:
    """The families of ``heads.json``, checked whole before the long gathering, and refused
    unless it was made on this model, replacement set and tokenizer."""
    from circuits.statistics import identity
    from toy_models.cli import UserError
    from toy_models.records import parse_json

    rerun = f"run python -m reports.heads --model ... --out {heads_json.parent} first"
    if not heads_json.is_file():
        raise UserError(f"--heads {heads_json}: no such file; {rerun}")
    n_ov = [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas]
    try:
        record = parse_json(heads_json.read_text())
        families = check_families(record, n_ov)
    except (OSError, ValueError) as e:  # (a UnicodeDecodeError is a ValueError)
        raise UserError(f"--heads {heads_json}: not a reports.heads file ({e})") from None
    if record.get("identity") != identity(replacement, tokenizer):
        raise UserError(f"--heads {heads_json}: made on another model or replacement set; {rerun}")
    if not families["induction"]["heads"]:
        raise UserError(f"--heads {heads_json}: no induction head was found")
    return families


def induction_head(families: dict) -> str:
    """The unit id of the taxonomy's induction head of highest score (most active on ties)."""
    best = max(families["induction"]["heads"], key=lambda h: (h["score"], h["active"]))
    return f"lorsa:{best['layer']}:{best['head']}"


def graphs(replacement, tokenizer, stats, starts) -> dict:
    from circuits.global_graph import parse_unit, side_words
    from circuits.global_weights import split_half, with_qk_side
    from circuits.units import Units
    from reports.labels import node_labels

    units = Units.of(replacement)
    out = {}
    for spec in starts:
        t0 = time.perf_counter()
        grow = grower(replacement, tokenizer, parse_unit(spec, units, tokenizer))
        graph = with_qk_side(replacement, stats, grow(stats), tokenizer)
        seconds = time.perf_counter() - t0
        labels = node_labels(graph)
        at = graph.id_to_index
        coo = graph.edges.tocoo()
        strongest = abs(coo.data).argsort()[::-1][:N_STRONGEST]
        qk = []
        for a in graph.qk:
            if a.pairs:
                p = max(a.pairs, key=lambda p: abs(p.value))
                # with_qk_side adds as nodes only the units of pairs raising the score (since
                # 13c7a47), so a side of the strongest pair may be no node: named in words from
                # the record's fields, as the printout names it
                query, key = (labels[at[u]] if u in at else side_words(graph, a, u)
                              for u in (p.query, p.key))  # fmt: skip
                qk.append({"group": f"L{a.layer} QK {a.qk_head}", "score_lift": a.score,
                           "query": query, "key": key, "pair": p.value})  # fmt: skip
        out[spec] = {
            "seconds_grow_prune_qk": seconds,
            "nodes": graph.n_nodes,
            "edges": graph.n_edges,
            "strongest_edges": [
                [labels[coo.col[j]], labels[coo.row[j]], float(coo.data[j])] for j in strongest
            ],
            "qk_groups": qk,
            "split_half": split_half(grow, stats, TOP_EDGES),
        }
    return out


def induction_qk_side(replacement, tokenizer, stats, families: dict) -> dict:
    """Shares of the induction head's QK group's |marginals| by kind of unit and of writer."""
    from circuits.global_graph import parse_unit
    from circuits.nodes import Kind
    from circuits.units import Units

    units = Units.of(replacement)
    spec = induction_head(families)
    head = parse_unit(spec, units, tokenizer)
    _, stage, index = units.describe(head)
    layer, qk_head = (stage - 1) // 2, index // replacement.group_size

    def labelled(family: str) -> set[int]:
        return {units.unit("lorsa", h["layer"], h["head"]) for h in families[family]["heads"]}

    previous, local = labelled("previous_token"), labelled("local_context")

    def kind_of(unit: int) -> str:
        kind = units.describe(unit)[0]
        if kind == Kind.LORSA:
            if unit in previous:
                return "previous-token heads"
            return "other local-context heads" if unit in local else "other heads"
        return {Kind.EMBEDDING: "token embeddings", Kind.TRANSCODER: "features",
                Kind.ERROR: "errors"}[kind]  # fmt: skip

    def writers(unit: int) -> dict[str, float]:
        if units.describe(unit)[0] == Kind.EMBEDDING:
            return {"token embeddings": 1.0}
        ids, weights = stats.mean_input(unit)
        shares: dict[str, float] = defaultdict(float)
        for u, w in zip(ids.tolist(), weights.abs().tolist(), strict=True):
            shares[kind_of(u)] += w
        total = sum(shares.values()) or 1.0
        return {k: v / total for k, v in shares.items()}

    group = stats.qk_group(layer, qk_head)
    sides = {}
    for side, chosen, marginal, bias, whole in (
        ("query", group.query_units, group.query_marginal, group.bias_query, group.query_abs),
        ("key", group.key_units, group.key_marginal, group.bias_key, group.key_abs),
    ):
        total = whole + abs(bias)
        by_unit: dict[str, float] = defaultdict(float)
        by_writer: dict[str, float] = defaultdict(float)
        for u, m in zip(chosen.tolist(), marginal.abs().tolist(), strict=True):
            by_unit[kind_of(u)] += m / total
            for name, share in writers(u).items():
                by_writer[name] += share * m
        listed = float(marginal.abs().sum())
        by_unit["bias"] = abs(bias) / total
        by_unit["not gathered"] = max(whole - listed, 0.0) / total
        sides[side] = {
            "by_kind_of_unit": dict(by_unit),
            "by_kind_of_writer": {k: v / (listed or 1.0) for k, v in by_writer.items()},
            "top_units": [
                [units.unit_id(int(u)), float(m)]
                for u, m in zip(chosen[:5].tolist(), marginal[:5].tolist(), strict=True)
            ],  # fmt: skip
        }
    flat = group.pairs.flatten()
    top = flat.abs().topk(min(5, len(flat))).indices.tolist()
    n_key = group.pairs.shape[1]
    halves = []
    for h in (0, 1):  # the same 64 x 64 units (chosen on the whole sample), each half's sums
        pairs = stats.half(h).qk_group(layer, qk_head).pairs.flatten()
        halves.append(set(pairs.abs().topk(min(TOP_PAIRS, len(pairs))).indices.tolist()))
    return {
        "head": spec,
        "qk_group": [layer, qk_head],
        "previous_token_heads": len(previous),
        "other_local_context_heads": len(local - previous),
        "score_lift_per_firing": group.total,
        f"top_{TOP_PAIRS}_pairs_shared_by_the_halves": len(halves[0] & halves[1]),
        "firings": group.firings,
        "sides": sides,
        "top_pairs": [
            [
                units.unit_id(int(group.query_units[j // n_key])),
                units.unit_id(int(group.key_units[j % n_key])),
                float(flat[j]),
            ]
            for j in top
        ],  # fmt: skip
    }


def validation(replacement, tokenizer, stats, prompts: int) -> dict:
    """Per family: the share of local |edge| mass between a logit-rooted global graph's units
    that its edges (and its top 20) carry, over held-out prompts whose next token is the logit."""
    import numpy as np
    import torch

    from circuits.attribution import LogitTarget, attribute
    from circuits.global_weights import units_of
    from circuits.units import Units
    from toy_models.data import FAMILIES, stream_rows

    units = Units.of(replacement)
    n_ctx = stats.meta["n_ctx"]
    wanted = {f: [] for f in FAMILIES}
    stream = stream_rows(tokenizer, n_ctx, "heldout", VALIDATION_SEED)
    rng = np.random.default_rng(VALIDATION_SEED)
    while min(len(v) for v in wanted.values()) < prompts:
        family, row = next(stream)
        if len(wanted[family]) < prompts:
            p = int(rng.integers(n_ctx // 4, n_ctx - 1))  # a position with a next token
            wanted[family].append((row[: p + 1], row[p + 1]))
    out = {}
    for family, items in wanted.items():
        among = on_edges = on_top = 0.0
        for prompt, target in items:
            logit = units.unit("logit", 0, target)
            graph = grower(replacement, tokenizer, logit)(stats)
            members = units_of(graph, units)
            coo = graph.edges.tocoo()
            pairs = {(members[s], members[t]): abs(w)
                     for s, t, w in zip(coo.col, coo.row, coo.data, strict=True)}  # fmt: skip
            top = set(sorted(pairs, key=lambda k: -pairs[k])[:TOP_EDGES])
            local = attribute(replacement, torch.tensor(prompt), targets=[LogitTarget(target)])
            unit = units.of_nodes(local.kind, local.stage, local.index).numpy()
            inside = np.isin(unit, members)
            lc = local.edges.tocoo()
            keep = inside[lc.row] & inside[lc.col]
            mass: dict[tuple[int, int], float] = defaultdict(float)
            for s, t, w in zip(unit[lc.col[keep]], unit[lc.row[keep]], lc.data[keep],
                               strict=True):  # fmt: skip
                mass[(int(s), int(t))] += abs(float(w))
            among += sum(mass.values())
            on_edges += sum(v for k, v in mass.items() if k in pairs)
            on_top += sum(v for k, v in mass.items() if k in top)
        out[family] = {
            "prompts": len(items),
            "local_mass_among_global_units": among,
            "share_on_global_edges": on_edges / among if among else None,
            f"share_on_top_{TOP_EDGES}_global_edges": on_top / among if among else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/global_circuits.py")
    parser.add_argument("--model", default="default")
    parser.add_argument("--heads", type=path_arg, default=Path("runs/heads/heads.json"),
                        help="the taxonomy's heads.json (python -m reports.heads)")  # fmt: skip
    parser.add_argument("--rows", type=positive_int, default=128, help="rows to gather")
    parser.add_argument("--prompts", type=positive_int, default=8,
                        help="held-out prompts per family for the validation")  # fmt: skip
    args = parser.parse_args(argv)
    from toy_models.files import check_writable_file, write_json_atomic

    out = RESULTS / f"global_circuits_{Path(args.model).name}.json"  # a folder: by its name
    check_writable_file(out, "results file", RESULT_KEYS)
    import torch

    from circuits.statistics import Statistics
    from replacement.model import load_pretrained

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    replacement, tokenizer = load_pretrained(args.model)
    result = {"model": args.model, "load_seconds": time.perf_counter() - t0}
    families = taxonomy(replacement, tokenizer, args.heads)  # before the long gathering
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stats.safetensors"
        result["gathering"] = gathering(replacement, tokenizer, args.rows, path)
        t0 = time.perf_counter()
        stats = Statistics.load(path, replacement, tokenizer)
        result["statistics_load_seconds"] = time.perf_counter() - t0
    result["statistics"] = {k: v for k, v in stats.meta.items() if k != "identity"}
    result["graphs"] = graphs(
        replacement, tokenizer, stats, (LOGIT_STARTS[0], induction_head(families), LOGIT_STARTS[1])
    )
    result["induction_qk_side"] = induction_qk_side(replacement, tokenizer, stats, families)
    result["heads_json"] = str(args.heads)
    result["validation"] = validation(replacement, tokenizer, stats, args.prompts)
    result["peak_rss_mb"] = peak_rss_mb()
    worst = max(s["seconds_grow_prune_qk"] for s in result["graphs"].values())
    result["targets"] = {
        "gather_128_rows_seconds<=60": result["gathering"]["seconds"] <= 60
        if args.rows == 128
        else None,
        "global_graph_seconds<=10": worst + result["statistics_load_seconds"] <= 10,
        "peak_rss_mb<=4096": result["peak_rss_mb"] <= 4096,
    }
    write_json_atomic(out, result)
    print(json.dumps(result, indent=1, default=str)[:6000])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
