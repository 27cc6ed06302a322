"""Where the linear graph's sign can be trusted: the mechanism summary's ablation checks split
by how large a change the graph predicts, as a share of the target.

    python benchmarks/check_sizes.py [--model default] [--per-family 8] [--seed 1234] [--out FILE]

For the first ``--per-family`` prompts of each probe family of ``benchmarks/mechanisms.py``
(the same draws: ``--seed``) that the model gets right, the trace's pipeline (constants as
nodes, the expected token's logit as the target, the unit dashboards' concept labels when the
model has them) runs ``circuits.mechanisms.summarize`` with its checks, and each check of the
target is binned by |predicted| / |the target's value| (``BINS``). Per bin and per family:
how many checks agree in sign with the rerun, attention frozen and free (the model), and
beside them the predicting head groups' and the QK sources' checks. Issue 14's free target
(>= 90% of the summary's groups) reads all the checks at once; this says where the misses are.
Writes benchmarks/results/check_sizes_{model}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import run_cli  # noqa: E402

BINS = (0.0, 0.05, 0.1, 0.2, 0.5)  # lower edges of |predicted| / |value|


def check_rows(replacement, tokenizer, concepts, per_family: int, seed: int) -> list[dict]:
    """One row per check of a right prompt's target: its family, the group's role and the
    predicted, frozen and free changes with their agreements, read from the summary's fields."""
    from mechanisms import right_summaries

    rows = []
    for family, _, summary in right_summaries(replacement, tokenizer, concepts, per_family, seed,
                                              check=True):  # fmt: skip
        t = summary.targets[0]
        for g in summary.groups:
            for c in g.checks:
                if c.target != t.node:
                    continue
                rows.append({
                    "family": family, "group": g.name, "kind": g.kind,
                    "predicting": g.key == t.predicting_group, "qk_source": bool(g.writes_qk),
                    "share": abs(c.predicted) / abs(t.value) if t.value else None,
                    "predicted": c.predicted, "frozen": c.frozen, "free": c.free,
                    "agree_frozen": c.agree_frozen, "agree_free": c.agree_free,
                })  # fmt: skip
    return rows


def tally(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "checks": n,
        "agree_frozen": round(sum(r["agree_frozen"] for r in rows) / n, 4) if n else None,
        "agree_free": round(sum(r["agree_free"] for r in rows) / n, 4) if n else None,
    }


def summarise(rows: list[dict]) -> dict:
    from mechanisms import FAMILIES

    edges = [*BINS, float("inf")]
    sized = [r for r in rows if r["share"] is not None]
    by_share = {
        f"{lo:g}-{hi:g}": tally([r for r in sized if lo <= r["share"] < hi])
        for lo, hi in zip(edges, edges[1:], strict=False)
    }
    return {
        "all": tally(rows),
        "by_share": by_share,
        "share_at_least_0.1": tally([r for r in sized if r["share"] >= 0.1]),
        "predicting_group": tally([r for r in rows if r["predicting"]]),
        "qk_sources": tally([r for r in rows if r["qk_source"]]),
        "families": {
            f: {
                "all": tally(part),
                "share_at_least_0.1": tally(
                    [r for r in part if r["share"] is not None and r["share"] >= 0.1]
                ),
            }
            for f in FAMILIES
            for part in [[r for r in rows if r["family"] == f]]
        },  # fmt: skip
    }


def measure(replacement, tokenizer, concepts, per_family: int, seed: int) -> dict:
    rows = check_rows(replacement, tokenizer, concepts, per_family, seed)
    return {**summarise(rows), "checks": rows}


def show(result: dict) -> None:
    shown = ("all", "by_share", "share_at_least_0.1", "predicting_group", "qk_sources")
    print(json.dumps({k: result[k] for k in shown}, indent=1))


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from mechanisms import draw_main

    return draw_main(argv, __doc__, "check_sizes", measure, show)


if __name__ == "__main__":
    sys.exit(run_cli(main))
