"""How many groups on the mechanism summary's top paths carry no concept label, and why.

    python benchmarks/group_labels.py [--model default] [--out FILE]

For a fixed set of hand-written prompts of every family (successor lists and sentences,
addition, induction, subtoken induction), the trace's pipeline (constants as nodes, the default
logit targets, the unit dashboards' labels) runs ``circuits.mechanisms.summarize`` without its
checks (groups and paths do not depend on them). Of the head and feature groups on the top
paths, from the summary's records alone:

- ``groups`` / ``unnamed``: how many there are and how many the summary titles by nothing but
  their place (``_label``: a feature group may be titled by its own concept, by its members'
  where the members carrying one bring most of its flow, or by what its flow reads and
  promotes, marked as no concept; a head group's name gives the key it reads, not counted);
- for each unnamed feature group, its members' own best-F1 labels from the dashboards whatever
  their F1 (``members_by_label``: the share of the group's |flow| whose members carry each
  label, with their F1s), so the cause reads from the numbers: members with no good label
  (vocabulary or units), members whose labels disagree (heterogeneous), or members sharing a
  label below the grouping threshold.

Writes benchmarks/results/group_labels_{model}.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import run_cli  # noqa: E402

PROMPTS = {
    "successor": [
        "If today is Wednesday, then tomorrow is",
        "Monday, Tuesday, Wednesday,",
        "January then February then March then",
        "It was March, then April, then May, then",
        "A B C D E",
        "Say them: M O Q S U",
        "one, two, three, four,",
        "first; second; third;",
        "The month after June is",
        "Today is Friday. Tomorrow is",
    ],
    "addition": [
        "12+35=47\n347+285=",
        "347+285=6",
        "25+17=",
        "So 12+30=42!\n58+36=",
        "123+456=579\n208+394=60",
    ],
    "induction": [
        " wind harbor bear kite moon river | wind harbor bear kite moon",
        "ticket owl harbor glass | ticket owl harbor",
        "The cat sat on the mat. The dog sat on the",
    ],
    "names": [
        "The old sailor told Brimvaltor a story. Later that night, Brimval",
        "Kelbrathun paid 34+25=59 coins, and then Kelbra",
    ],
}


def summaries(replacement, tokenizer, concepts):
    """Each prompt of ``PROMPTS`` traced as ``circuits.trace`` does (local mode, constants as
    nodes; no checks): (family, prompt, full graph, its summary). Both benchmarks read these."""
    from circuits.attribution import attribute, run_prompt
    from circuits.mechanisms import summarize
    from toy_models.tokenizer import encode_prompt

    for family, prompts in PROMPTS.items():
        for prompt in prompts:
            tokens = encode_prompt(tokenizer, prompt, replacement.model.trained_positions)
            run = run_prompt(replacement, tokens, "local", constants=True)
            full = attribute(replacement, tokens, mode="local", tokenizer=tokenizer,
                             prompt=prompt, run=run)  # fmt: skip
            summary = summarize(replacement, full, run, concepts=concepts, check=False,
                                tokenizer=tokenizer)  # fmt: skip
            yield family, prompt, full, summary


def measure(replacement, tokenizer, dash) -> dict:
    from circuits.concepts import CONCEPTS
    from circuits.nodes import Kind, unit_id

    concepts = dash.summary_concepts()
    index, f1 = dash.concept_labels()
    chance = dash.concept_chance(index)
    unit_of = {u: k for k, u in enumerate(dash.layout.ids())}
    records = []
    for family, prompt, full, summary in summaries(replacement, tokenizer, concepts):
        on_paths = list(dict.fromkeys(g for p in summary.paths for g in p.groups))
        groups = []
        for key in on_paths:
            grp = summary.group(key)
            if grp.kind not in ("lorsa", "transcoder"):
                continue
            entry = {"name": grp.name, "title": _title(grp), "kind": grp.kind,
                     "concept": grp.concept, "label": _label(grp),
                     "members": len(grp.members),
                     "flow": grp.flow[summary.targets[0].node]}  # fmt: skip
            if grp.concept is None and grp.kind == "transcoder":
                entry["members_by_label"] = _by_label(
                    full, grp.members, unit_of, index, f1, chance, CONCEPTS, Kind, unit_id
                )
            groups.append(entry)
        records.append({
            "family": family, "prompt": prompt,
            "targets": [t.token for t in summary.targets],
            "groups": len(groups),
            "unnamed": sum(g["label"] == "none" for g in groups),
            "feature_groups": sum(g["kind"] == "transcoder" for g in groups),
            "unnamed_feature_groups": sum(g["label"] == "none" and g["kind"] == "transcoder"
                                          for g in groups),
            "feature_labels": {k: sum(g["label"] == k and g["kind"] == "transcoder"
                                      for g in groups) for k in LABELS},
            "group_records": groups,
        })  # fmt: skip
        print(f"{family:10s} {records[-1]['unnamed']:2d}/{records[-1]['groups']:2d} unnamed "
              f"(features {records[-1]['unnamed_feature_groups']}/"
              f"{records[-1]['feature_groups']})  {prompt!r}", flush=True)  # fmt: skip
    counts = ("groups", "unnamed", "feature_groups", "unnamed_feature_groups")
    total = {k: sum(r[k] for r in records) for k in counts}
    total["feature_labels"] = {k: sum(r["feature_labels"][k] for r in records) for k in LABELS}
    return {"prompts": len(records), "total": total, "records": records}


LABELS = ("concept", "members", "described", "none")


def _label(grp) -> str:
    """How the summary titles a group: its own concept (``concept``), its members' (the members
    carrying one bring most of its flow: ``members``), what its flow reads and promotes marked
    as no concept (``described``), or nothing but its place (``none``). Read from the record's
    fields (a summary of code before ``member_concepts`` has none of the last three)."""
    if grp.concept is not None:
        return "concept"
    shares = getattr(grp, "member_concepts", [])
    if grp.kind != "transcoder" or getattr(grp, "no_concept_share", None) is None:
        return "none"
    from reports.mechanisms import MEMBERS_MAJORITY

    if shares and shares[0].share >= MEMBERS_MAJORITY:
        return "members"
    return "described" if (grp.reads or grp.promotes) else "none"


def _title(grp) -> str:
    try:
        from reports.mechanisms import group_title
    except ImportError:
        return grp.name
    return group_title(grp)


def _by_label(full, members, unit_of, index, f1, chance, names, Kind, unit_id):
    """The members' own best-F1 labels (any F1), by count, with F1 range and at-chance count."""
    out: dict[str, dict] = {}
    for node_id in members:
        i = full.id_to_index[node_id]
        u = unit_of[unit_id(Kind(int(full.kind[i])), int(full.stage[i]), int(full.index[i]))]
        label = names[int(index[u])] if int(index[u]) >= 0 else "(never fired)"
        row = out.setdefault(label, {"members": 0, "f1": [], "at_chance": 0})
        row["members"] += 1
        row["f1"].append(round(float(f1[u]), 3))
        row["at_chance"] += bool(float(f1[u]) < 1.5 * float(chance[u]))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["members"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from circuits.dashboards import default_path, read_file
    from replacement.model import load_pretrained

    replacement, tokenizer = load_pretrained(args.model)
    dash = read_file(default_path(args.model, "local", replacement, tokenizer), replacement,
                     tokenizer)  # fmt: skip
    t0 = time.perf_counter()
    result = measure(replacement, tokenizer, dash)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"group_labels_{args.model}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["total"]), f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
