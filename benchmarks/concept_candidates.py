"""Whether the concept vocabulary lacks the variables of the unlabelled feature groups: labels
the generator's spans allow but ``circuits.concepts`` does not hold, tried on the members of
the feature groups without a concept on the top paths of ``group_labels.PROMPTS``.

    python benchmarks/concept_candidates.py [--out FILE]

Candidates (from the spans' fields, never the text): the carry into each answer place
(``toy_models.data.carries_into`` of the answer's operands), each answer digit's value, each
successor list item's value, and each as ``next token: ...`` on the token before. Over the
unit dashboards' rows (``circuits.concepts.corpus_rows``: 192 held-out rows, seed 0, local
mode) every member's firing is scored against the vocabulary and the candidates; per group:
``flow_share_new_vocab_ge05``, the share of the group's |flow| (each member's own flow into the
first target) whose members' best label is a candidate with F1 >= 0.5; ``flow_share_old_ge05``
the same for the vocabulary's labels (document or at-chance labels included); the best label
of the group's union firing (any member fires), with and without the candidates; and the
candidates that are its largest members' best labels. Writes
benchmarks/results/concept_candidates_default.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import run_cli  # noqa: E402

N_ROWS, N_CTX, SEED, PLACES = 192, 128, 0, 4


def candidate_names() -> list[str]:
    from circuits.concepts import NEXT
    from toy_models.data import ORDERED_LISTS

    names = [f"addition: carry into place {p}" for p in range(1, PLACES)]
    names += [f"addition: answer digit {d}" for d in range(10)]
    names += [f"successor: item {w}" for w in sorted({w for v in ORDERED_LISTS.values()
                                                      for w in v})]  # fmt: skip
    return names + [NEXT + n for n in names]


def candidates(example, offsets) -> list[set[str]]:
    """Each token's candidate labels, from the spans' fields."""
    from circuits.concepts import NEXT
    from toy_models.data import carries_into

    out: list[set[str]] = [set() for _ in offsets]

    def positions(span):
        return [i for i, (s, e) in enumerate(offsets) if i > 0 and s < span.end and e > span.start]

    for span in example.spans:
        if span.kind == "answer":
            a, b = (o.number for o in span.operands)
            for i in positions(span):
                place = span.end - offsets[i][0] - 1  # digits are one token each
                if 0 <= place < PLACES:
                    if carries_into(a, b, place):
                        out[i].add(f"addition: carry into place {place}")
                    out[i].add(f"addition: answer digit {(span.number // 10**place) % 10}")
        elif span.kind == "item":
            item = span
            while item is not None:
                for i in positions(item):
                    out[i].add(f"successor: item {item.value}")
                item = item.previous
    for i in range(len(offsets) - 1):
        out[i] |= {NEXT + c for c in out[i + 1] if not c.startswith(NEXT)}
    return out


def measure(replacement, tokenizer, dash) -> dict:
    import torch
    from group_labels import summaries

    from circuits.concepts import CONCEPTS, concept_matrix, corpus_rows
    from circuits.flows import many_node_flows
    from toy_models.data import pad_rows

    concepts = dash.summary_concepts()
    groups = []
    for family, prompt, full, summary in summaries(replacement, tokenizer, concepts):
        t = full.id_to_index[summary.targets[0].node]
        flow = many_node_flows(full, [t])[t][0]
        for key in dict.fromkeys(g for p in summary.paths for g in p.groups):
            g = summary.group(key)
            if g.kind != "transcoder" or g.concept is not None:
                continue
            members = [full.id_to_index[m] for m in g.members]
            groups.append(
                (
                    family,
                    prompt,
                    g.name,
                    [(int(full.layer[i]), int(full.index[i]), float(flow[i])) for i in members],
                )
            )
    rows = corpus_rows(tokenizer, N_CTX, SEED, 0, N_ROWS)
    extra = candidate_names()
    at = {n: i for i, n in enumerate(extra)}
    width = max(len(r.ids) for r in rows)
    added = torch.zeros(len(rows), width, len(extra))
    for b, row in enumerate(rows):
        offsets = [tuple(o) for o in tokenizer.encode(row.example.text).offsets[:N_CTX]]
        for p, names in enumerate(candidates(row.example, offsets)):
            added[b, p, [at[n] for n in names]] = 1.0
    every = torch.cat([concept_matrix(rows, width), added], -1)
    names = list(CONCEPTS) + extra
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, row in enumerate(rows):
        valid[b, : len(row.ids)] = True
    fired: dict[int, list] = {}
    hooks = {
        f"blocks.{layer}.transcoder.hook_acts" for layer in range(len(replacement.transcoders))
    }
    with torch.no_grad():
        for a in range(0, len(rows), 32):
            tokens = pad_rows([r.ids for r in rows[a : a + 32]])
            _, cache = replacement.run_with_cache(tokens, mode="local",
                                                  names_filter=lambda n: n in hooks)  # fmt: skip
            for layer in range(len(replacement.transcoders)):
                x = cache[f"blocks.{layer}.transcoder.hook_acts"] > 0
                fired.setdefault(layer, []).append(
                    torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1]))
                )
    fires = {layer: torch.cat(v) & valid[..., None] for layer, v in fired.items()}
    flat = every.reshape(-1, every.shape[-1])
    count = flat.sum(0)

    def f1(mask):
        m = mask.reshape(-1).float()
        return 2 * (m @ flat) / (m.sum() + count).clamp_min(1)

    out = []
    n_old = len(CONCEPTS)
    for family, prompt, name, members in groups:
        total = sum(abs(f) for *_, f in members) or 1.0
        new_best, old_best = [], []
        union = torch.zeros_like(valid)
        for layer, index, flow in members:
            score = f1(fires[layer][..., index])
            union |= fires[layer][..., index]
            nb, ob = int(score.argmax()), int(score[:n_old].argmax())
            new_best.append((names[nb], float(score[nb]), abs(flow) / total))
            old_best.append((names[ob], float(score[ob]), abs(flow) / total))
        score = f1(union)
        out.append({
            "family": family, "prompt": prompt, "group": name,
            "union_best": [names[int(score[:n_old].argmax())],
                           round(float(score[:n_old].max()), 3)],
            "union_best_with_candidates": [names[int(score.argmax())],
                                           round(float(score.max()), 3)],
            "flow_share_new_vocab_ge05": round(sum(w for n, x, w in new_best
                                                   if x >= 0.5 and n in at), 3),
            "flow_share_old_ge05": round(sum(w for _, x, w in old_best if x >= 0.5), 3),
            "largest_candidate_members": sorted(
                ([n, round(x, 2), round(w, 3)] for n, x, w in new_best if n in at),
                key=lambda r: -r[2])[:4],
        })  # fmt: skip
    shares = [r["flow_share_new_vocab_ge05"] for r in out]
    return {"groups": len(out), "max_flow_share_new_vocab_ge05": max(shares, default=0.0),
            "records": out}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    sys.path.append(str(Path(__file__).parent))  # (its replacement.py is no package)
    from circuits.dashboards import default_path, read_file
    from replacement.model import load_pretrained

    replacement, tokenizer = load_pretrained("default")
    dash = read_file(default_path("default", "local", replacement, tokenizer), replacement,
                     tokenizer)  # fmt: skip
    result = measure(replacement, tokenizer, dash)
    out = Path(args.out or ROOT / "benchmarks" / "results" / "concept_candidates_default.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(result["groups"], "groups; max flow share of members a candidate fits at F1 >= 0.5:",
          result["max_flow_share_new_vocab_ge05"], f"-> {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
