"""What makes a predicting head attend where it does, traced from the head itself: each probe
prompt's predicting head group's largest head as the target (``circuits.trace --target-node``),
and its own QK sources tested by ablation.

    python benchmarks/head_targets.py [--model default] [--per-family 8] [--seed 1234]
        [--out FILE]

For the first ``--per-family`` prompts of each probe family of ``benchmarks/mechanisms.py``
(the same draws: ``--seed``) that the model gets right: the trace's pipeline on the expected
token's logit (``circuits.mechanisms.summarize`` without checks) names the predicting head
group; its member with the largest flow into the logit becomes the target of a second graph
(that head alone: ``NodeTarget``), summarized with its checks. From that summary's fields:

- ``reads_expected_key``: the head reads (``TargetRecord.reads``) one of the prompt's
  expected keys;
- per side (query, key) of the head's own QK score: ``<side>_source`` (a head group named as
  its source: of the head groups raising that side most and every other head group at the
  side's position, the one whose ablation lowers the head's attention most through that side
  alone), ``<side>_source_halves`` (that ablation at least halves the attention through the
  side alone), and ``<side>_source_previous_token`` (the source sits at the side's position
  and reads the position before it: previous-token heads, what induction's key side should
  name).

Writes benchmarks/results/head_targets_{model}.json: per family the rates, and every prompt's
record (the head, the key it reads, each side's source with its attentions).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import run_cli  # noqa: E402

SIDES = ("query", "key")


def side_fields(summary, head) -> dict:
    """Each side's QK source of head target ``head`` (a ``TargetRecord``) as a record: its
    group's name, place and key read, the attention before, after its ablation and through
    that side alone, and the two criteria."""
    out = {}
    at = {"query": head.pos, "key": head.reads}
    for side in SIDES:
        found = [(g, w) for g, w in summary.qk_sources(head.node) if w.side == side]
        if not found:
            out[f"{side}_source"] = None
            out[f"{side}_source_halves"] = out[f"{side}_source_previous_token"] = False
            continue
        g, w = found[0]
        a = summary.attention_after(g, head.node)
        alone = a.mean_side(side)
        out[f"{side}_source"] = {
            "name": g.name, "pos": g.pos, "attends": g.attends, "rank": w.rank,
            "tested": w.tested, "before": round(a.mean_before, 4),
            "after": round(a.mean_free, 4), "side_alone": round(alone, 4),
        }  # fmt: skip
        out[f"{side}_source_halves"] = alone <= a.mean_before / 2
        out[f"{side}_source_previous_token"] = g.pos == at[side] and g.attends == at[side] - 1
    return out


def measure(replacement, tokenizer, concepts, per_family: int, seed: int) -> dict:
    from mechanisms import FAMILIES, right_prompts

    from circuits.attribution import LogitTarget, NodeTarget, attribute
    from circuits.flows import node_flows
    from circuits.mechanisms import summarize

    records = []
    for family, prompt, tokens, run in right_prompts(replacement, tokenizer, per_family, seed):
        full = attribute(replacement, tokens, mode="local", run=run, tokenizer=tokenizer,
                         targets=[LogitTarget(prompt.target)])  # fmt: skip
        first = summarize(replacement, full, run, concepts=concepts, check=False)
        t = first.targets[0]
        if t.predicting_group is None:
            records.append({"family": family, "text": prompt.text[-120:], "head": None})
            continue
        g = first.group(t.predicting_group)
        flow = node_flows(full, full.id_to_index[t.node])[0]  # each node's into the logit
        i = max((full.id_to_index[m] for m in g.members), key=lambda j: float(flow[j]))
        target = NodeTarget("lorsa", int(full.layer[i]), int(full.pos[i]), int(full.index[i]))
        graph = attribute(replacement, tokens, mode="local", run=run, tokenizer=tokenizer,
                          targets=[target])  # fmt: skip
        summary = summarize(replacement, graph, run, concepts=concepts)
        head = summary.targets[0]
        records.append({
            "family": family, "text": prompt.text[-120:], "head": head.token,
            "group": g.name, "keys": prompt.keys, "reads": head.reads,
            "reads_expected_key": head.reads in prompt.keys,
            "attention": None if head.own_attention is None else round(head.own_attention, 4),
            **side_fields(summary, head),
        })  # fmt: skip
    out = {"families": {}}
    for family in [*FAMILIES, "all"]:
        rows = [r for r in records if family in ("all", r["family"]) and r["head"]]
        if not rows:
            continue

        def rate(key, rows=rows):
            return round(sum(bool(r[key]) for r in rows) / len(rows), 4)

        out["families"][family] = {
            "prompts": len(rows),
            **{key: rate(key) for key in ["reads_expected_key", *(
                f"{side}_source{part}" for side in SIDES
                for part in ("", "_halves", "_previous_token"))]},
        }  # fmt: skip
    out["records"] = records
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from mechanisms import draw_main

    return draw_main(argv, __doc__, "head_targets", measure)


if __name__ == "__main__":
    sys.exit(run_cli(main))
