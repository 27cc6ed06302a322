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

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import run_cli  # noqa: E402


def measure(replacement, tokenizer, concepts, per_family: int, seed: int) -> dict:
    from mechanisms import FAMILIES, right_summaries

    records = []
    for family, prompt, summary in right_summaries(replacement, tokenizer, concepts, per_family,
                                                   seed, check=False):  # fmt: skip
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


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from mechanisms import draw_main

    return draw_main(argv, __doc__, "paths", measure)


if __name__ == "__main__":
    sys.exit(run_cli(main))
