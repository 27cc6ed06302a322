"""How much of a target the mechanism summary's top paths carry: whether the paths a reader
sees first are the route the prediction takes, or a few percent of it each.

    python benchmarks/paths.py [--model default] [--per-family 8] [--seed 1234] [--out FILE]

For the first ``--per-family`` prompts of each probe family of ``benchmarks/mechanisms.py``
(the same draws: ``--seed``) that the model gets right, the trace's pipeline (constants as
nodes, the expected token's logit as the target, the unit dashboards' concept labels when the
model has them) runs ``circuits.mechanisms.summarize`` without its checks (paths do not
depend on them), and from the summary's fields alone:

- ``top_share``: |flow| of the target's first path over |its value| (the first path's part of
  the target), averaged over prompts;
- ``top_through_predicting``: the first path runs through the predicting head group;
- ``predicting_on_paths``: the flow of the listed paths that run through the predicting group
  over that group's flow (how much of the group's part the reader sees routed; above 1 where
  the listed paths through it outweigh its negative ones elsewhere), averaged.

Measured to compare groupings (``circuits.groups.AUTO_RULES``): an older commit's code runs
this script with ``PYTHONPATH`` set to its worktree. Writes
benchmarks/results/paths_{model}.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import ArgumentParser, count_arg, path_arg, positive_int, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def measure(replacement, tokenizer, concepts, per_family: int, seed: int) -> dict:
    import torch
    from mechanisms import FAMILIES, build_prompts

    from circuits.attribution import LogitTarget, attribute, run_prompt
    from circuits.mechanisms import summarize

    records = []
    for family in FAMILIES:
        prompts = build_prompts(tokenizer, family, 200, replacement.cfg.n_ctx - 1, seed)
        done = 0
        for prompt in prompts:
            if done >= per_family:
                break
            tokens = torch.tensor(prompt.ids)
            run = run_prompt(replacement, tokens, "local", constants=True)
            if int(run.logits[-1].argmax()) != prompt.target:
                continue
            full = attribute(replacement, tokens, mode="local", run=run, tokenizer=tokenizer,
                             targets=[LogitTarget(prompt.target)])  # fmt: skip
            summary = summarize(replacement, full, run, concepts=concepts, check=False)
            t = summary.targets[0]
            paths = [p for p in summary.paths if p.target == t.node]
            key = t.predicting_group
            flow = summary.group(key).flow[t.node] if key else 0.0
            records.append({
                "family": family, "text": prompt.text[-120:], "value": t.value,
                "top_flow": paths[0].flow if paths else 0.0,
                "top_groups": [summary.group(g).name for g in paths[0].groups] if paths else [],
                "top_through_predicting": bool(paths and key in paths[0].groups),
                "predicting_flow": flow,
                "on_paths_through_predicting": sum(p.flow for p in paths if key in p.groups),
            })  # fmt: skip
            done += 1
    out = {"families": {}}
    for family in [*FAMILIES, "all"]:
        rows = [r for r in records if family in ("all", r["family"])]
        if not rows:
            continue
        with_flow = [r for r in rows if r["predicting_flow"]]
        out["families"][family] = {
            "prompts": len(rows),
            "top_share": round(sum(abs(r["top_flow"]) / abs(r["value"]) for r in rows
                                   if r["value"]) / len(rows), 4),
            "top_through_predicting": round(
                sum(r["top_through_predicting"] for r in rows) / len(rows), 4),
            "predicting_on_paths": round(sum(r["on_paths_through_predicting"]
                                             / r["predicting_flow"] for r in with_flow)
                                         / max(1, len(with_flow)), 4),
        }  # fmt: skip
    out["records"] = records
    return out


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="zoo name or directory")
    parser.add_argument("--per-family", type=positive_int, default=8,
                        help="right prompts per probe family (default 8)")  # fmt: skip
    parser.add_argument(
        "--seed",
        type=count_arg,
        default=1234,
        help="the probe draw (benchmarks/mechanisms.py's; default 1234)",
    )
    parser.add_argument("--out", type=path_arg, help="result file (default: benchmarks/results/"
                        "paths_{model}.json)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or RESULTS / f"paths_{Path(args.model).name}.json"
    from toy_models.files import check_writable_file, write_json_atomic

    check_writable_file(out, "--out")
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from mechanisms import load_with_concepts

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    replacement, tokenizer, concepts, concept_source = load_with_concepts(args.model)
    result = {"model": args.model, "concepts": concept_source, "seed": args.seed,
              "per_family": args.per_family}  # fmt: skip
    with torch.no_grad():
        result |= measure(replacement, tokenizer, concepts, args.per_family, args.seed)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    for family, part in result["families"].items():
        print(family, json.dumps(part))
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
