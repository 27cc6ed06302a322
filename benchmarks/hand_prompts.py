"""The mechanism summary's ablation checks on short sentences written by hand, in no template of
the corpus: how often the linear graph's prediction agrees in sign with the measured effect.

    python benchmarks/hand_prompts.py [--model default] [--out FILE]

``benchmarks/mechanisms.py`` measures the checks on prompts cut from held-out documents and
from frames written there (97-99% agreement with attention frozen, 85-89% free: the model less
the group, errors recomputed). A reviewer of
the tool (2026-12-05, a helper of the eighteenth session, told to avoid every template of
``toy_models/data.py``) wrote the sentences of ``PROMPTS`` and found fewer checks agreeing on
them; this benchmark measures that on a fixed list so that it can be measured again. It is a
second look, not a target: the sentences were written to probe the tool, and some of them
after seeing what the model gets right.

Each entry is a family, a prompt and the text that should follow; the expected token is the
first token of that text after the prompt's tokens (a prompt whose tokens are not a prefix of
the whole text's has none: counted, never scored). For the prompts whose top token is the
expected one, the trace's pipeline (constants as nodes, the expected token's logit as the
target, the unit dashboards' concept labels when the model has them) runs
``circuits.mechanisms.summarize`` with its checks, and every check of every summary group is
counted: sign agreement with attention frozen and free, flagged (``EffectCheck.flagged``), and
``demeaned``: checks whose measured change (attention frozen) and the token's probability moved
in opposite directions (``EffectCheck.probability_frozen``), where the demeaned logit rose
while the probability fell or the reverse. ``qk_writer_*``: the checks of the predicting
group's QK sources (``GroupRecord.writes_qk``) and their free agreement;
``key_source_halves``: the right prompts whose key-side source, ablated, at least halves the
predicting group's attention (``AttentionCheck``).

Writes benchmarks/results/hand_prompts_{model}.json: per family and overall the counts and
rates, and every prompt's record (the predicting group, each check).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import ArgumentParser, file_arg, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# (family, prompt, what follows): written by hand, in no corpus template.
PROMPTS = (
    ("induction", "My sister plays violin on stage and my sister plays", " violin"),
    (
        "induction",
        "The old clock in the hall struck nine. Nobody moved. The old clock in the hall struck",
        " nine",
    ),  # fmt: skip
    ("induction", "green frog jumps over blue stone while green frog jumps over blue", " stone"),
    ("induction", "I bought bread, milk and tea. Later I bought bread, milk and", " tea"),
    (
        "induction",
        "Captain Morgan sailed the ship past the island. Captain Morgan sailed the ship past the",
        " island",
    ),  # fmt: skip
    ("induction", "we sing loud songs at night because we sing loud songs at", " night"),
    (
        "induction",
        "Grandpa keeps his pipe beside the radio, so grandpa keeps his pipe beside the",
        " radio",
    ),  # fmt: skip
    ("induction", "Tom likes cold milk with bread; Tom likes cold milk with", " bread"),
    ("induction", "a small owl sat on the tower. a small owl sat on the", " tower"),
    (
        "induction",
        "Lucy found a rope, a bell and a shell, and Lucy found a rope, a bell and a",
        " shell",
    ),  # fmt: skip
    ("induction", "The river bends slowly; the river bends slowly; the river bends", " slowly"),
    ("induction", "green apple - blue chair - green apple - blue", " chair"),
    ("induction", "she opened the door / she opened the door / she opened the", " door"),
    ("induction", "The key was under the mat. Later that night, the key was under the", " mat"),
    (
        "subtoken_induction",
        "Our new neighbour is called Brintholiver. Every morning Brintholiver waves and Brinth",
        "oliver",
    ),  # fmt: skip
    ("subtoken_induction", "A ship named Quaxelmora left port; the crew of the Quax", "elmora"),
    ("subtoken_induction", "Doctor Plimvetra ordered soup. The nurse brought Plimvet", "ra"),
    (
        "subtoken_induction",
        "the river Ostrevanda floods each spring, so farmers near Ostrev",
        "anda",
    ),  # fmt: skip
    ("subtoken_induction", "My cat Drumfellow sleeps all day. Drumf", "ellow"),
    ("subtoken_induction", "Professor Kelbranoth arrived late, and Professor Kelbran", "oth"),
    ("subtoken_induction", "Yesterday Draventhuk sold fish. Today Draventh", "uk"),
    ("subtoken_induction", "Fenwobrak the sailor sang, and Fenwob", "rak"),
    ("subtoken_induction", "My horse Pelquidor runs fast. Pelqu", "idor"),
    ("subtoken_induction", "I met Zorbitrax at noon. Much later that day, Zorbi", "trax"),
    ("subtoken_induction", "Hello Brindlewick! How are you today, Brindle", "wick"),
    ("successor", "Tuesday Wednesday Thursday", " Friday"),
    ("successor", "G H I J", " K"),
    ("successor", "L M N O", " P"),
    ("successor", "seventh eighth ninth", " tenth"),
    ("successor", "four five six seven", " eight"),
    ("successor", "Sunday then Monday then Tuesday then", " Wednesday"),
    ("successor", "January February March April", " May"),
    ("successor", "Monday, Tuesday, Wednesday, Thursday,", " Friday"),
    ("successor", "Week plan: gym on Monday, swim on Tuesday, run on", " Wednesday"),
    ("successor", "chapter one, chapter two, chapter three, chapter", " four"),
    ("successor", "She finished first, he finished second, and I finished", " third"),
    ("addition", "Price: 120+35=", "155"),
    ("addition", "Add them up: 7+8=", "15"),
    ("addition", "Tickets: 42+17=", "59"),
    ("addition", "Eggs 8+9=", "17"),
    ("addition", "Marks: 72+19=", "91"),
    ("addition", "3+4=7 and 3+4=", "7"),
    ("addition", "Zelda: 12+13=25. Zelda: 12+13=", "25"),
    ("addition", "Tom had 12 apples and got 25 more, so 12+25=", "37"),
    ("mixed", "letters: K L M. Again: K L", " M"),
    ("mixed", "Greta saw Wednesday then Thursday and Greta saw Wednesday then", " Thursday"),
    ("mixed", "Zibrella counted one two three and Zibrella counted one two", " three"),
    ("mixed", "Q R S T and again Q R S", " T"),
)


def expected_token(
    tokenizer, prompt: str, follows: str, n_ctx: int
) -> tuple[list[int], int | None]:
    """The prompt's ids (BOS first) and the first token of ``follows`` after them; None when
    the whole text tokenizes otherwise than the prompt does (a name cut where the tokenizer
    would not cut it): no next token of the prompt's tokens is the text's."""
    from toy_models.tokenizer import encode_prompt

    ids = [int(t) for t in encode_prompt(tokenizer, prompt, n_ctx)]
    whole = tokenizer.encode(prompt + follows).ids
    if whole[: len(ids)] != ids or len(whole) <= len(ids):
        return ids, None
    return ids, whole[len(ids)]


def measure(replacement, tokenizer, concepts) -> dict:
    import torch

    from circuits.attribution import LogitTarget, attribute, run_prompt
    from circuits.mechanisms import summarize
    from reports.mechanisms import free_cause, mark_text, ok_through_attention

    families: dict[str, dict] = {}
    for family, prompt, follows in PROMPTS:
        ids, target = expected_token(tokenizer, prompt, follows,
                                     replacement.model.trained_positions)  # fmt: skip
        if target is None:
            families.setdefault(family, {"records": []})["records"].append(
                {"prompt": prompt, "target": None, "correct": False, "not_a_prefix": True}
            )
            continue
        run = run_prompt(replacement, torch.tensor(ids), "local", constants=True)
        probs = run.logits[-1].softmax(-1)
        correct = int(run.logits[-1].argmax()) == target
        record = {"prompt": prompt, "target": tokenizer.decode([target]), "correct": correct,
                  "probability": round(float(probs[target]), 4)}  # fmt: skip
        if correct:
            full = attribute(replacement, ids, targets=[LogitTarget(target)],
                             tokenizer=tokenizer, run=run, prompt=prompt)  # fmt: skip
            summary = summarize(replacement, full, run, concepts=concepts)
            t = summary.targets[0]
            record["predicting"] = summary.group(t.predicting_group).name if t.predicting_group \
                else None  # fmt: skip
            record["checks"] = [
                {"group": g.name, "predicted": round(c.predicted, 4), "frozen": round(c.frozen, 4),
                 "free": round(c.free, 4), "agree_frozen": c.agree_frozen,
                 "agree_free": c.agree_free, "free_ln_held": round(c.free_ln_held, 4),
                 "agree_free_ln_held": c.agree_free_ln_held,
                 "free_final_ln_held": round(c.free_final_ln_held, 4),
                 "agree_free_final_ln_held": c.agree_free_final_ln_held,
                 "free_attention_held": round(c.free_attention_held, 4),
                 "agree_free_attention_held": c.agree_free_attention_held,
                 "free_cause": free_cause(c, summary.tolerance),
                 "through_attention": free_cause(c, summary.tolerance) == "attention"
                 or ok_through_attention(c, summary.tolerance),
                 "mark": mark_text(c, t, summary.tolerance), "flagged": c.flagged,
                 "qk_writer": bool(g.writes_qk),
                 "probability_frozen": c.probability_frozen,
                 "demeaned": c.probability_frozen is not None
                 and (c.frozen > 0) != (c.probability_frozen > t.probability)
                 and abs(c.frozen) > 0.01}
                for g in summary.groups for c in g.checks if c.target == t.node
            ]  # fmt: skip
            # the predicting group's QK sources, and its attention with each ablated
            record["qk_sources"] = [
                {"side": w.side, "group": g.name, "score": round(w.value, 4), "rank": w.rank,
                 "tested": w.tested,
                 "attention": [[round(a.mean_before, 4), round(a.mean_free, 4)]
                               for a in [g.attention_of(w.group)] if a is not None]}
                for g, w in summary.qk_sources(t.predicting_group)
            ]  # fmt: skip
        families.setdefault(family, {"records": []})["records"].append(record)
    everything = [r for f in families.values() for r in f["records"]]
    for part in [*families.values(), {"records": everything}]:
        part |= rates(part["records"])
    return {"families": families, "overall": rates(everything)}


def rates(records: list[dict]) -> dict:
    right = [r for r in records if r["correct"]]
    checks = [c for r in right for c in r["checks"]]
    n = len(checks)

    def share(key: str) -> float | None:
        return round(sum(c[key] for c in checks) / n, 4) if n else None

    halves = sum(any(x["side"] == "key" and x["attention"]
                     and x["attention"][0][1] < x["attention"][0][0] / 2
                     for x in r["qk_sources"]) for r in right)  # fmt: skip
    return {"prompts": len(records), "correct": len(right), "checks": n,
            "agree_frozen": share("agree_frozen"), "agree_free": share("agree_free"),
            "agree_free_ln_held": share("agree_free_ln_held"),
            # of the free disagreements, those gone with the LayerNorm scales held
            "free_disagreements_from_layernorm": round(
                sum(not c["agree_free"] and c["agree_free_ln_held"] for c in checks)
                / max(1, sum(not c["agree_free"] for c in checks)), 4),
            "agree_free_final_ln_held": share("agree_free_final_ln_held"),
            # ... and those gone with only the final LayerNorm's scale held
            "free_disagreements_from_final_layernorm": round(
                sum(not c["agree_free"] and c["agree_free_final_ln_held"] for c in checks)
                / max(1, sum(not c["agree_free"] for c in checks)), 4),
            "agree_free_attention_held": share("agree_free_attention_held"),
            # ... and those gone with the attention patterns held (LayerNorm free)
            "free_disagreements_from_attention": round(
                sum(not c["agree_free"] and c["agree_free_attention_held"] for c in checks)
                / max(1, sum(not c["agree_free"] for c in checks)), 4),
            # checks whose mark says the free effect comes through attention
            "through_attention": share("through_attention"),
            "flagged": share("flagged"), "demeaned": share("demeaned"),
            # the checks of the predicting group's QK sources, and their free agreement
            "qk_writer_checks": sum(c["qk_writer"] for c in checks),
            "qk_writer_agree_free": round(
                sum(c["qk_writer"] and c["agree_free"] for c in checks)
                / max(1, sum(c["qk_writer"] for c in checks)), 4),
            # right prompts whose key-side source, ablated, halves the predicting attention
            "key_source_halves": round(halves / max(1, len(right)), 4)}  # fmt: skip


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="zoo name or directory")
    parser.add_argument("--out", type=file_arg, help="result file (default: benchmarks/results/"
                        "hand_prompts_{model}.json)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or RESULTS / f"hand_prompts_{Path(args.model).name}.json"
    from toy_models.files import check_writable_file, write_json_atomic

    check_writable_file(out, "--out", frozenset({"model", "concepts", "families", "overall"}))
    sys.path.insert(0, str(Path(__file__).parent))
    from mechanisms import load_with_concepts

    t0 = time.perf_counter()
    replacement, tokenizer, concepts, concept_source = load_with_concepts(args.model)
    result = {"model": args.model, "concepts": concept_source}
    result |= measure(replacement, tokenizer, concepts)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    for family, part in result["families"].items():
        print(family, json.dumps({k: v for k, v in part.items() if k != "records"}))
    print("overall", json.dumps(result["overall"]))
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
