"""The report files: ``heads.md`` (one function per section), ``heads.json``, the plots, and
the summary printed on the console. Reads only the ``results`` dictionary."""

from __future__ import annotations

from pathlib import Path

from .analysis import by_label
from .config import HEAD_FAMILIES

# What would create a family that the default model lacks (printed when one fails).
MISSING_NOTES = {
    "duplicate_token": (
        "Nothing in the corpus rewards knowing that the current token occurred before for its "
        "own sake: in `names` the two characters' roles swap at random, so a repeated name says "
        "nothing about the next one. An IOI-style template (`When Anna and Tom went to the "
        "park, Tom gave a ring to` -> Anna), where the answer is the name that is *not* "
        "repeated, is the setting in which duplicate-token heads appear in GPT-2 and would "
        "plant them here."
    ),
    "successor": (
        "In this corpus the next item always follows the previous one directly, so the model "
        "can move the previous item to the comma with previous-token heads and look up its "
        "successor in the MLPs; heads whose own output promotes the successor exist (layer 0) "
        "but are redundant with that route. Lists with gaps (`Monday ... [filler] ... then "
        "the day after:`) that force the item to be fetched from afar, a smaller d_mlp, or "
        "more kinds of ordered lists than the MLPs can memorise would push the successor map "
        "into attention OV circuits."
    ),
    "attention_sink": (
        "A head that attends to BOS reads the same BOS value everywhere and adds a nearly "
        "constant vector: removing it is close to a no-op by design, so no task depends on "
        "sink heads (they exist and are detected; the ablation target cannot be met by "
        "construction). Sinks matter as a resting place for other heads' attention, which a "
        "pattern intervention (not a head ablation) would show; no change to the corpus or "
        "model would make zeroing them costly without making them something other than sinks."
    ),
    "previous_token": "A stronger copying task (longer repeated segments) needs more of them.",
    "induction": "Longer repeated segments or more `repeat` documents would strengthen it.",
    "subtoken_induction": "More rare names per story would strengthen it.",
    "operand_fetching": "Longer operands would need more of them.",
}


def write_report(results: dict, out: Path) -> list[Path]:
    """``heads.json``, ``heads.md`` and the plots in ``out`` (created); returns the paths."""
    from toy_models.files import write_json_atomic, write_text_atomic

    from .plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "heads.json", results)
    write_text_atomic(out / "heads.md", markdown(results))
    return [out / "heads.json", out / "heads.md", *write_plots(results, out)]


def summary(results: dict) -> str:
    """One console line per family: heads per layer, ablation against random, detectors."""
    lines = []
    for f in HEAD_FAMILIES:
        fam, a, d = results["families"][f], results["ablation"][f], results["detectors"].get(f, {})
        lines.append(
            f"{f:19s} heads {fam['total']:4d} per layer {fam['counts_per_layer']}; zeroing them: "
            f"+{_fmt(a.get('increase'), '.4f')} nats on {a['task']} vs random "
            f"+{_fmt(a.get('random_mean'), '.4f')} (ratio {_fmt(a.get('ratio'), '.1f')}, "
            f"{'met' if results['met'][f] else 'NOT met'}); precision "
            f"{_fmt(d.get('precision'), '.2f')} recall {_fmt(d.get('recall'), '.2f')}"
        )
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The report page: summary, per-layer tables with examples, ablations, ground truth, and
    what is missing with its evidence."""
    sections = (
        _introduction,
        _summary_table,
        _per_layer,
        _overlaps,
        _ablation_table,
        _ground_truth,
        _missing,
        _plots,
    )
    return "\n".join(line for section in sections for line in section(results))


def head_id(l: int, h: int) -> str:
    return f"L{l}H{h}"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _md(text: str) -> str:
    """Text that is safe inside a Markdown table cell's code span."""
    return text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'")


# ----------------------------------------------------------------- sections
def _introduction(results: dict) -> list[str]:
    s = results["settings"]
    return [
        f"# Lorsa head taxonomy: model `{results['model']}`",
        "",
        f"{s['docs']} held-out documents per corpus family (single-head ground truth on the "
        f"first {s['truth_docs']}); {results['n_ov_heads'][0]} Lorsa OV heads per layer. A "
        "head's family score is the share of its positive per-key contribution mass, over the "
        "family's probe queries where it is active, that comes from the keys the family "
        "predicts (see `reports/heads/__init__.py`). Ablations: local mode, errors frozen at "
        f"their clean values; {s['draws']} random head sets per control, drawn from the same "
        "layers (uniformly, and among heads active on the task's documents).",
    ]


def _summary_table(results: dict) -> list[str]:
    s, fams, abl = results["settings"], results["families"], results["ablation"]
    n_layers = len(results["n_ov_heads"])
    layer_cols = " | ".join(f"L{l}" for l in range(n_layers))
    lines = [
        "",
        "## Summary",
        "",
        f"| family | threshold | {layer_cols} | heads | task | loss +, family | + random | ratio "
        f"| + active random | ratio | target met | precision | recall |",
        "|---" * (12 + n_layers) + "|",
    ]
    for f in HEAD_FAMILIES:
        fam, a, d = fams[f], abl[f], results["detectors"].get(f, {})
        t = fam["threshold"]
        counts = " | ".join(str(c) for c in fam["counts_per_layer"])
        lines.append(
            f"| {f} | {t['score']} (>= {t['min_active']} q) | {counts} | {fam['total']} | "
            f"`{fam['task']}` | {_fmt(a.get('increase'), '.4f')} | "
            f"{_fmt(a.get('random_mean'), '.4f')} | {_fmt(a.get('ratio'), '.1f')} | "
            f"{_fmt(a.get('matched_random_mean'), '.4f')} | {_fmt(a.get('matched_ratio'), '.1f')} "
            f"| {'yes' if results['met'][f] else '**no**'} | {_fmt(d.get('precision'), '.2f')} "
            f"| {_fmt(d.get('recall'), '.2f')} |"
        )
    return lines + [
        "",
        f"Target: every family found (>= 1 head) and its heads' ablation raises its task's loss "
        f">= {s['ratio_target']:g}x as much as as many random heads (and by >= "
        f"{s['truth_delta']} nats). Precision/recall: against heads whose single-head ablation "
        f"raises the family's task loss by >= {s['truth_delta']} nats. Probe queries per "
        "family: " + ", ".join(f"{f} {n}" for f, n in results["probe_queries"].items()) + ".",
        "",
        "Reading precision and recall: single-head ground truth undercounts a family whose heads "
        "are redundant (each dispensable alone, the family as a whole not: compare the family "
        "ablation), and it counts heads that carry the task by another mechanism (lowering "
        "recall); the ground-truth table below says which labels those heads carry.",
    ]


def _per_layer(results: dict) -> list[str]:
    fams = results["families"]
    lines = ["", "## Per layer"]
    for l in range(len(results["n_ov_heads"])):
        lines += [
            "",
            f"### Layer {l}",
            "",
            "| family | heads | top heads (score, active queries) | example: [key] the top head "
            "reads most at [query] |",
            "|---|---|---|---|",
        ]
        for f in HEAD_FAMILIES:
            heads = [h for h in fams[f]["heads"] if h["layer"] == l]
            top = ", ".join(
                f"{head_id(l, h['head'])} {h['score']:.2f} ({h['active']})" for h in heads[:5]
            )
            ex = next((h["example"] for h in heads if h.get("example")), None)
            shown = ""
            if ex:
                shown = (
                    f"{head_id(l, heads[0]['head'])}: `{_md(ex['context'])}` "
                    f"({_fmt(ex['share_of_z'], '.0%')} of z from the key)"
                )
            elif l < fams[f]["min_layer"]:
                shown = (
                    f"not labelled below layer {fams[f]['min_layer']} "
                    f"({fams[f]['look_alikes_below_min_layer']} look-alikes pass the threshold)"
                )
            lines.append(f"| {f} | {len(heads)} | {top} | {shown} |")
    return lines


def _overlaps(results: dict) -> list[str]:
    short = [f.replace("_", " ") for f in HEAD_FAMILIES]
    lines = [
        "",
        "## Heads with two labels",
        "",
        "Labels may overlap; a head counted here is zeroed with both families.",
        "",
        "| | " + " | ".join(short) + " |",
        "|---" * (len(short) + 1) + "|",
    ]
    for f, name in zip(HEAD_FAMILIES, short, strict=True):
        cells = ["" if g == f else str(results["overlaps"][f][g] or "") for g in HEAD_FAMILIES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _ablation_table(results: dict) -> list[str]:
    tasks = list(results["clean_loss"])
    lines = [
        "",
        "## Ablating each family on every task",
        "",
        "Loss increase (nats per target token) when the family's heads are zeroed; bold: the "
        "family's own task. Clean losses: "
        + ", ".join(f"`{t}` {v:.4f}" for t, v in results["clean_loss"].items())
        + ".",
        "",
        "| family heads zeroed | " + " | ".join(f"`{t}`" for t in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for f in HEAD_FAMILIES:
        a = results["ablation"][f]
        if "increase" not in a:
            why = a.get("skipped", "no heads")
            lines.append(f"| {f} ({why}) |" + " |" * len(tasks))
            continue
        cells = [
            f"**{a['increase']:.4f}**" if t == a["task"] else _fmt(a["other_tasks"].get(t), ".4f")
            for t in tasks
        ]
        lines.append(f"| {f} ({a['n_heads']}) | " + " | ".join(cells) + " |")
    return lines


def _ground_truth(results: dict) -> list[str]:
    if not results["truth"]:
        return []
    lines = [
        "",
        "## Ground truth: single-head ablations",
        "",
        "Exact loss increase of zeroing one head, for every head active on the task's "
        "documents (adaptive group testing: chunks of heads below the threshold are not "
        "split further) and for every labelled head.",
        "",
        "| task | forward passes | heads >= threshold | their labels | strongest |",
        "|---|---|---|---|---|",
    ]
    for task, t in results["truth"].items():
        strongest = ", ".join(
            f"{head_id(h['layer'], h['head'])} +{h['increase']:.3f}"
            + (f" ({'/'.join(h['labels'])})" if h["labels"] else "")
            for h in t["true_heads"][:8]
        )
        lines.append(
            f"| `{task}` | {t['forward_passes']} | {len(t['true_heads'])} | "
            + ", ".join(f"{k} {v}" for k, v in by_label(t["true_heads"]).items())
            + f" | {strongest} |"
        )
    return lines


def _missing(results: dict) -> list[str]:
    """Each family not found or without ablation evidence: the evidence, then what would
    create it (``MISSING_NOTES``)."""
    missing = [f for f in HEAD_FAMILIES if not (results["found"][f] and results["met"][f])]
    lines = ["", "## Families not found, or without ablation evidence", ""]
    if not missing:
        return lines + ["None: every family is found and meets the ablation target.", ""]
    for f in missing:
        lines += [f"- **{f}**: {_evidence(results, f)} {MISSING_NOTES[f]}", ""]
    return lines


def _evidence(results: dict, f: str) -> str:
    s, abl, fam = results["settings"], results["ablation"], results["families"][f]
    a = abl[f]
    if not results["found"][f]:
        best = max((max(layer) for layer in results["scores"][f]["score"] if layer), default=0.0)
        evidence = (
            f"no head reaches the threshold (best score {best:.2f}; "
            f"{fam['look_alikes_below_min_layer']} look-alikes below layer "
            f"{fam['min_layer']})."
        )
    elif "skipped" in a:
        evidence = f"{fam['total']} heads found; ablation skipped: {a['skipped']}."
    else:
        evidence = (
            f"{fam['total']} heads found, but zeroing them raises `{a['task']}` loss by "
            f"{a['increase']:.4f} nats vs {a['random_mean']:.4f} for random heads "
            f"(ratio {_fmt(a['ratio'], '.2f')}; target {s['ratio_target']:g}x and >= "
            f"{s['truth_delta']} nats)."
        )
    hurts = {
        g: abl[g]["other_tasks"][a["task"]]
        for g in HEAD_FAMILIES
        if g != f and a["task"] in abl[g].get("other_tasks", {})
    }
    if hurts:
        g = max(hurts, key=hurts.get)
        evidence += (
            f" Of the other families, zeroing the {g} heads hurts `{a['task']}` most: "
            f"+{hurts[g]:.4f} nats."
        )
    truth = results["truth"].get(a["task"])
    if truth:
        carriers = ", ".join(
            f"{head_id(h['layer'], h['head'])} +{h['increase']:.3f} "
            f"({'/'.join(h['labels']) or 'unlabelled'})"
            for h in truth["true_heads"][:6]
        )
        evidence += (
            f" The heads whose single ablation costs the task >= {s['truth_delta']} nats: "
            f"{len(truth['true_heads'])} ({carriers or 'none'})."
        )
    return evidence


def _plots(results: dict) -> list[str]:
    return [
        "## Plots",
        "",
        "![score histograms](scores.png)",
        "",
        "![labelled heads per layer](counts.png)",
        "",
        "![ablations](ablation.png)",
        "",
        "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()),
        "",
    ]
