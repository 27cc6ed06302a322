"""The report files: ``heads.md`` (one function per section), ``heads.json``, the plots, and
the summary printed on the console. Reads only the ``results`` dictionary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from reports.outputs import OutputSet

from .analysis import by_label
from .config import CIRCUIT_FILES, HEAD_FAMILIES, OPERAND_FAMILIES
from .plots import PLOT_FILES

# What ``reports.heads`` writes into --out, as one set (``reports.outputs.write_set``).
REPORT_SET = OutputSet(frozenset({"heads.json", "heads.md", *PLOT_FILES, *CIRCUIT_FILES}),
                       "heads.json")  # fmt: skip

# What would create or strengthen a family that fails (printed after its measured account).
_OPERAND_NOTE = (
    "A digit can reach the answer without a head that reads it alone: a head that reads both "
    "operands' digits of a place (half each) carries neither label, and the MLPs can combine "
    "digits that earlier heads moved together; the account says which layers carry the task."
)
MISSING_NOTES = {
    "previous_token": (
        "A head that reads the previous token together with the ones before it (or with the "
        "current one) scores below the label threshold though it moves the previous token as "
        "well: the `local_context` family (the three tokens before the query) tests those "
        "heads; compare its row."
    ),
    "local_context": (
        "The recent context may reach a position through the MLPs of earlier positions "
        "(features that already combine a token with its neighbours) rather than through "
        "heads that read it there."
    ),
    "duplicate_token": (
        "Nothing in the corpus rewards knowing that the current token occurred before for its "
        "own sake: in `names` the two characters' roles swap at random, so a repeated name says "
        "nothing about the next one. An IOI-style template (the answer is the name that is "
        "*not* repeated) is the setting in which duplicate-token heads appear in GPT-2."
    ),
    "induction": "Longer repeated segments or more `repeat` documents would strengthen it.",
    "subtoken_induction": "More rare names per story would strengthen it.",
    "successor": (
        "Where the previous item sits right before the next one, previous-token heads can move "
        "it and MLP features look its successor up; the far-back sentences (`Today is X. ... "
        "Tomorrow is Y`) are the corpus's reason for an OV successor map, so their share of "
        "the corpus (and a smaller d_mlp) decides whether heads or MLPs hold it."
    ),
    "attention_sink": (
        "A sink matters only where the heads that rest on it would otherwise read something "
        "harmful; if removing BOS leaves them spreading attention over keys whose values "
        "cancel or are small, the model does not depend on the sink for that task."
    ),
    **dict.fromkeys(OPERAND_FAMILIES, _OPERAND_NOTE),
    "carry": (
        "A carry can be computed from the lower digits by the heads that fetch them for their "
        "own place (their outputs reach the MLPs of the next position) rather than by heads "
        "that read the lower place at the higher place's query."
    ),
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
    """The family table on the console: one line per family (its test, heads per layer, the
    test vs both random controls, the 5x target, detectors), then the successor OV test."""
    lines = [
        f"{'family':19s} {'test':8s} {'heads':>5s} {'per layer':14s} {'task':20s} "
        f"{'+ family':>8s} {'+ random':>8s} {'ratio':>6s} {'+ active':>8s} {'ratio':>6s} "
        f"{'5x':4s} {'prec':>4s} {'rec':>4s}"
    ]
    for f in HEAD_FAMILIES:
        fam, a, d = results["families"][f], results["ablation"][f], results["detectors"].get(f, {})
        lines.append(
            f"{f:19s} {fam['test']:8s} {fam['total']:5d} {str(fam['counts_per_layer']):14s} "
            f"{a['task']:20s} {_fmt(a.get('increase'), '8.4f'):>8s} "
            f"{_control(a.get('random_mean')):>8s} "
            f"{_ratio_text(a.get('ratio'), a.get('random_mean')):>6s} "
            f"{_control(a.get('matched_random_mean')):>8s} "
            f"{_ratio_text(a.get('matched_ratio'), a.get('matched_random_mean')):>6s} "
            f"{'met' if results['met'][f] else 'NOT':4s} {_fmt(d.get('precision'), '4.2f'):>4s} "
            f"{_fmt(d.get('recall'), '4.2f'):>4s}"
        )
    for f in HEAD_FAMILIES:
        a = results["ablation"][f]
        if a.get("every_task"):
            lines.append(
                f"{f} ({_test_name(a['test'])}) meets the target on: "
                + (", ".join(a.get("tasks_met", [])) or "no task")
            )
    for f, sweep in results.get("threshold_sweeps", {}).items():
        rows = "; ".join(_sweep_row_text(row) for row in sweep["rows"]) or "no other labels"
        lines.append(f"{f} at other label thresholds: {rows}")
    ov = results["successor_ov"]
    if "in_top" in ov:
        lines.append(
            f"successor OV: the successor is among the family's top {ov['top']} promoted tokens "
            f"at {ov['in_top']:.0%} of {ov['probes']} items (random heads "
            f"{ov['random_in_top']:.0%}; target {ov['target']:.0%}), above the item itself at "
            f"{ov['above_item']:.0%}{_in_sequence_text(ov)}"
        )
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The report page: the family table, per-layer tables with examples, the successor OV
    test, the sink test on every task, every family on every task, where each task is
    computed, ground truth, and what fails with its measured account."""
    sections = (
        _introduction,
        _summary_table,
        _successor_section,
        _every_task_section,
        _per_layer,
        _overlaps,
        _ablation_table,
        _account_section,
        _ground_truth,
        _missing,
        _sweep_section,
        _plots,
    )
    return "\n".join(line for section in sections for line in section(results))


def head_id(l: int, h: int) -> str:
    return f"L{l}H{h}"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


# A random control's mean increase below this (nats) prints no ratio: the quotient of noise (a
# reviewer read `4853543.8` against a control printed 0.0000). The JSON keeps the exact ratio.
RANDOM_FLOOR = 1e-3


def _control(x: float | None, spec: str = ".4f") -> str:
    """A random control's mean increase as printed: ``spec``, but under ``RANDOM_FLOOR`` two
    significant digits, so that the number agrees with the "random ≈ 0" beside it (a review
    read `0.0010 | random ≈ 0` for a control of 0.00098)."""
    if x is not None and abs(x) < RANDOM_FLOOR:
        return format(x, ".2g")
    return _fmt(x, spec)


def _ratio_text(ratio: float | None, random_mean: float | None, spec: str = ".1f",
                unit: str = "") -> str:  # fmt: skip
    """A ratio to a random control as printed: ``n/a`` where there is none (a control that
    raised nothing), ``random ≈ 0`` where the control's mean is below ``RANDOM_FLOOR``, else
    the ratio and ``unit`` (``x random``)."""
    if ratio is None:
        return "n/a"
    if random_mean is not None and abs(random_mean) < RANDOM_FLOOR:
        return "random ≈ 0"
    text = format(ratio, spec)
    if ratio != 0 and float(text) == 0:  # "-0.0": a family whose zeroing lowered the loss
        text = format(ratio, ".1g")  # (a reviewer's), or raised it a hair: its first digit
    return text + unit


def _md(text: str) -> str:
    """Text that is safe inside a Markdown table cell's code span."""
    return text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'")


def _test_name(test: str) -> str:
    return {"zero": "zeroed", "mask_bos": "BOS masked"}.get(test, test)


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
        "predicts; a sink's is its attention on BOS over every probe query (see "
        "`reports/heads/__init__.py`). Tests run in local mode with errors frozen at their "
        "clean values: heads that write are zeroed; sink heads lose their attention to BOS "
        "(the rest renormalised) and attend elsewhere. Controls: as many random heads from the "
        f"same layers under the same test, {s['draws']} draws uniformly over each layer and "
        f"{max(1, s['draws'] // 2)} among the heads active on the task's documents.",
    ]


def _summary_table(results: dict) -> list[str]:
    s, fams, abl = results["settings"], results["families"], results["ablation"]
    n_layers = len(results["n_ov_heads"])
    layer_cols = " | ".join(f"L{l}" for l in range(n_layers))
    lines = [
        "",
        "## Families",
        "",
        f"| family | test | threshold | {layer_cols} | heads | task | loss +, family | + random "
        f"| ratio | + active random | ratio | >= {s['ratio_target']:g}x | precision | recall |",
        "|---" * (13 + n_layers) + "|",
    ]
    for f in HEAD_FAMILIES:
        fam, a, d = fams[f], abl[f], results["detectors"].get(f, {})
        t = fam["threshold"]
        counts = " | ".join(str(c) for c in fam["counts_per_layer"])
        met = "yes" if results["met"][f] else "**no**"
        if f == "successor" and a.get("meets_target") and not results["met"][f]:
            met = "**no** (OV)"
        elif not results["met"][f] and a.get("tasks_met"):
            met += " (yes on " + ", ".join(f"`{t}`" for t in a["tasks_met"]) + ")"
        lines.append(
            f"| {f} | {_test_name(fam['test'])} | {t['score']} (>= {t['min_active']} q) | "
            f"{counts} | {fam['total']} | `{fam['task']}` | {_fmt(a.get('increase'), '.4f')} | "
            f"{_control(a.get('random_mean'))} | "
            f"{_ratio_text(a.get('ratio'), a.get('random_mean'))} | "
            f"{_control(a.get('matched_random_mean'))} | "
            f"{_ratio_text(a.get('matched_ratio'), a.get('matched_random_mean'))} "
            f"| {met} | {_fmt(d.get('precision'), '.2f')} | {_fmt(d.get('recall'), '.2f')} |"
        )
    return lines + [
        "",
        f"Target: each family's heads under its test raise its task's loss >= "
        f"{s['ratio_target']:g}x as much as as many uniformly drawn random heads (and by >= "
        f"{s['truth_delta']} nats); successor heads must also pass the OV test below. "
        f"Precision/recall: against heads whose single-head test raises the family's task loss "
        f"by >= {s['truth_delta']} nats. Probe queries per family: "
        + ", ".join(f"{f} {n}" for f, n in results["probe_queries"].items())
        + ".",
        "",
        "Arithmetic families, by what they fetch: `operand_{a,b}_{place}` read operand a's "
        "(b's) digit of that place at the query that predicts the answer digit of the same "
        "place (task: that answer digit); `carry` reads both operands' digits of place p - 1 at "
        "the query predicting the digit of place p, on problems where place p receives a carry "
        "(task: the answer digits that receive one).",
        "",
        "Reading precision and recall: single-head ground truth undercounts a family whose heads "
        "are redundant (each dispensable alone, the family as a whole not: compare the family "
        "test), and it counts heads that carry the task by another mechanism (lowering "
        "recall); the ground-truth table below says which labels those heads carry.",
    ]


def _successor_section(results: dict) -> list[str]:
    ov = results["successor_ov"]
    lines = ["", "## Successor heads: the OV test", ""]
    if "in_top" not in ov:
        why = "no successor head" if not ov.get("n_heads") else "no successor probe"
        return lines + [f"Not run: {why}."]
    frames = ", ".join(
        f"{frame} {row['in_top']:.0%} of {row['probes']}" for frame, row in ov["by_frame"].items()
    )
    lines += [
        "Each successor probe's previous item, read where it stands (its actual residual "
        "stream), through the family's OV circuits as if each head attended there alone, "
        "summed, through the direct path to the logits:",
        "",
        f"- successor among the top {ov['top']} promoted tokens: **{ov['in_top']:.0%}** of "
        f"{ov['probes']} items ({frames}); random heads from the same layers: "
        f"{ov['random_in_top']:.0%}; target {ov['target']:.0%}: "
        f"{'met' if ov['meets_target'] else '**not met**'};",
        f"- median rank of the successor {ov['median_rank']}; the successor outranks the item "
        f"itself at {ov['above_item']:.0%} (a copying head would not){_in_sequence_text(ov)}.",
    ]
    return lines + _successor_truth_lines(results)


def _in_sequence_text(ov: dict) -> str:
    """The within-sequence reading of an OV test (not part of its verdict), as a clause."""
    seq = ov.get("in_sequence")
    if not seq:
        return ""
    return (
        f"; raised most among the items of its own sequence in its spelling "
        f"({seq['mean_rivals']:.0f} on average) at {seq['first']:.0%} (random heads "
        f"{seq['random_first']:.0%})"
    )


def _successor_truth_lines(results: dict) -> list[str]:
    """The OV test on the heads that carry the successor task by their single-head tests
    (chosen by their causal effect, not their OV), with their labels."""
    ov = results.get("successor_ov_truth")
    if not ov or "in_top" not in ov:
        return []
    truth = results["truth"][ov["truth"]]
    labelled = by_label(truth["true_heads"])
    which = ", ".join(f"{name} {n}" for name, n in sorted(labelled.items(), key=lambda x: -x[1]))
    return [
        f"- the same test on the {ov['n_heads']} heads whose single-head test costs "
        f"`{truth['task']}` >= {results['settings']['truth_delta']} nats (by label, a head "
        f"may carry several: {which}): successor "
        f"in the top {ov['top']} at **{ov['in_top']:.0%}** (random heads "
        f"{ov['random_in_top']:.0%}), median rank {ov['median_rank']}, above the item at "
        f"{ov['above_item']:.0%}{_in_sequence_text(ov)}: where the successor map lives among "
        "heads.",
    ]


def _every_task_section(results: dict) -> list[str]:
    """The families tested on every task (sinks, previous-token, local-context and
    duplicate-token heads: machinery whose damage may land on any task), one table each."""
    lines = ["", "## Machinery heads on every task", ""]
    tested = [f for f in HEAD_FAMILIES if "every_task" in results["ablation"][f]]
    if not tested:
        return lines + ["Not run: no such family has heads."]
    lines += [
        "Sinks: their attention to BOS taken away (softmax over the other keys); "
        "previous-token, local-context and duplicate-token heads: zeroed. Each vs the same test "
        "on as many random heads drawn uniformly from the same layers (loss increase, nats per "
        "target token; the stricter control, heads active on the task, is in the family table "
        "for the family's own task).",
    ]
    target = (f">= {results['settings']['ratio_target']:g}x the random heads and >= "
              f"{results['settings']['truth_delta']} nats")  # fmt: skip
    for f in tested:
        a = results["ablation"][f]
        lines += [
            "",
            f"**{f}** ({a['n_heads']} heads, {_test_name(a['test'])}):",
            "",
            "| task | family's heads | random heads | ratio | target met |",
            "|---|---|---|---|---|",
        ]
        for task, row in a["every_task"].items():
            lines.append(
                f"| `{task}` | {row['increase']:.4f} | {_control(row['random_mean'])} | "
                f"{_ratio_text(row['ratio'], row['random_mean'])} | "
                f"{'yes' if row['meets_target'] else 'no'} |"
            )
        met = ", ".join(f"`{t}`" for t in a.get("tasks_met", [])) or "none"
        lines += [
            "",
            f"Target ({target}) met on: {met}. The family table's verdict is the one on "
            f"`{a['task']}`, the task fixed in advance.",
        ]
    return lines


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
                shown = f"{head_id(l, heads[0]['head'])}: `{_md(ex['context'])}` " + _read(ex)
            elif l < fams[f]["min_layer"]:
                shown = (
                    f"not labelled below layer {fams[f]['min_layer']} "
                    f"({fams[f]['look_alikes_below_min_layer']} look-alikes pass the threshold)"
                )
            lines.append(f"| {f} | {len(heads)} | {top} | {shown} |")
    return lines


def _read(example: dict) -> str:
    """What a per-layer example says the head read at its query: the key's share of ``z``, or,
    where the head is silent (z = 0, as a sink often is where it rests on BOS), that it wrote
    nothing there, so that its attention is the reading (a review read "n/a of z from the
    key")."""
    attention = _fmt(example.get("attention"), ".2f")
    if example.get("share_of_z") is None:
        return (f"(silent there, z = 0: it writes nothing, so no share of z; its attention on "
                f"the key {attention} is what it does there)")  # fmt: skip
    return f"({example['share_of_z']:.0%} of z from the key, attention {attention})"


def _overlaps(results: dict) -> list[str]:
    lines = [
        "",
        "## Heads with two labels",
        "",
        "Labels may overlap; a head counted here is tested with both families.",
        "",
        "| family | shares heads with |",
        "|---|---|",
    ]
    for f in HEAD_FAMILIES:
        shared = ", ".join(f"{g} {n}" for g, n in results["overlaps"][f].items() if n)
        lines.append(f"| {f} | {shared or '-'} |")
    return lines + ["", _labels_per_head(results)]


def _labels_per_head(results: dict) -> str:
    """How many labelled heads carry 1, 2, ... labels, and where the most-labelled ones are
    (a reviewer read 'one layer-2 head carries seven labels' where sixteen did)."""
    labels = Counter(
        (h["layer"], h["head"]) for f in HEAD_FAMILIES for h in results["families"][f]["heads"]
    )
    if not labels:
        return "No head carries a label."
    per = Counter(labels.values())
    most = max(per)
    layers = Counter(layer for (layer, _), n in labels.items() if n == most)
    where = ", ".join(f"L{layer} {n}" for layer, n in sorted(layers.items()))
    counts = ", ".join(f"{k} label{'s' * (k > 1)}: {per[k]}" for k in sorted(per))
    return f"Labelled heads by number of labels: {counts} (the {per[most]} with {most}: {where})."


def _ablation_table(results: dict) -> list[str]:
    tasks = list(results["clean_loss"])
    lines = [
        "",
        "## Each family's test on every task",
        "",
        "Loss increase (nats per target token) under the family's test; bold: the family's own "
        "task. Clean losses: "
        + ", ".join(f"`{t}` {v:.4f}" for t, v in results["clean_loss"].items())
        + ".",
        "",
        "| family heads (test) | " + " | ".join(f"`{t}`" for t in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for f in HEAD_FAMILIES:
        a = results["ablation"][f]
        name = f"{f} ({a['n_heads']}, {_test_name(a['test'])})"
        if "increase" not in a:
            why = a.get("skipped", "no heads")
            lines.append(f"| {f} ({why}) |" + " |" * len(tasks))
            continue
        cells = [
            f"**{a['increase']:.4f}**"
            if t == a["task"]
            else _fmt(a.get("other_tasks", {}).get(t), ".4f")
            for t in tasks
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _account_section(results: dict) -> list[str]:
    account = results.get("account") or {}
    if not account:
        return []
    n_layers = len(results["n_ov_heads"])
    cols = " | ".join(f"heads L{l}" for l in range(n_layers))
    cols += " | " + " | ".join(f"features L{l}" for l in range(n_layers))
    lines = [
        "",
        "## Where each task is computed",
        "",
        "Loss increase when every Lorsa head (every transcoder feature) of one layer is zeroed, "
        "errors frozen; then the mean direct effect on the target's demeaned logit of the "
        "embeddings, the heads and features of each layer, the error terms, the constant "
        "biases and the rest (transcoder skips), which sum to the demeaned logit.",
        "",
        f"| task | {cols} |",
        "|---" * (2 * n_layers + 1) + "|",
    ]
    for task, row in account.items():
        cells = [f"{v:.3f}" for v in row["ablation"]["heads"] + row["ablation"]["features"]]
        lines.append(f"| `{task}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| task | logit | embedding | {cols} | errors | biases | rest |",
        "|---" * (2 * n_layers + 6) + "|",
    ]
    for task, row in account.items():
        d = row["direct"]
        if not d:
            continue
        cells = [f"{v:.2f}" for v in d["heads"] + d["features"]]
        lines.append(
            f"| `{task}` | {d['total']:.2f} | {d['embedding']:.2f} | "
            + " | ".join(cells)
            + f" | {d['errors']:.2f} | {d['biases']:.2f} | {d['rest']:.2f} |"
        )
    return lines


def _ground_truth(results: dict) -> list[str]:
    if not results["truth"]:
        return []
    lines = [
        "",
        "## Ground truth: single-head tests",
        "",
        "Exact loss increase of testing one head alone (zeroing it, or masking its BOS "
        "attention for the sink test), for the heads active on the task's documents that "
        "adaptive group testing reaches (every head for the sink test): chunks below the "
        "threshold on every task of their run are not split further, so a head whose effect a "
        "chunk's other heads cancel is missed (the benchmark's group_testing_vs_exhaustive "
        "counts them on one task: 7 of 28 on the default); tasks that share documents share "
        "the run.",
        "",
        "| task / test | forward passes | heads >= threshold | their labels (a head may carry "
        "several) | strongest |",
        "|---|---|---|---|---|",
    ]
    for t in results["truth"].values():
        strongest = ", ".join(
            f"{head_id(h['layer'], h['head'])} +{h['increase']:.3f}"
            + (f" ({'/'.join(h['labels'])})" if h["labels"] else "")
            for h in t["true_heads"][:8]
        )
        lines.append(
            f"| `{t['task']}` / {_test_name(t['test'])} | {t['forward_passes']} | "
            f"{len(t['true_heads'])} | "
            + ", ".join(f"{k} {v}" for k, v in by_label(t["true_heads"]).items())
            + f" | {strongest} |"
        )
    return lines


def _missing(results: dict) -> list[str]:
    """Each family not found or failing its test: the evidence, where its task is computed
    instead (measured), then what would create it (``MISSING_NOTES``)."""
    missing = [f for f in HEAD_FAMILIES if not (results["found"][f] and results["met"][f])]
    lines = ["", "## Families not found or failing their test, and where the model computes them",
             ""]  # fmt: skip
    if not missing:
        return lines + ["None: every family is found and meets its target.", ""]
    for f in missing:
        lines += [
            f"- **{f}**: {_evidence(results, f)} {_where(results, f)} {MISSING_NOTES[f]}",
            "",
        ]
    return lines


def _sweep_row_text(row: dict) -> str:
    """One threshold of a sweep, in a line: heads, test vs both controls, the OV test."""
    text = (
        f">= {row['score']:g}: {row['heads']} head{'s' * (row['heads'] != 1)}, "
        f"{_fmt(row['increase'], '+.3f')} nats, "
        f"{_ratio_text(row['ratio'], row['random_mean'], unit='x random')} "
        f"({_ratio_text(row['matched_ratio'], row.get('matched_random_mean'), unit='x active')})"
    )
    if "ov_test" in row:
        text += f", OV {_fmt(row['ov_test']['in_top'], '.0%')}"
        if row["ov_test"].get("in_sequence"):
            text += f" (first in its sequence {row['ov_test']['in_sequence']['first']:.0%})"
    return text + (" [met]" if row["met"] else "")


def _sweep_section(results: dict) -> list[str]:
    """Each family that misses, labelled and tested at other thresholds (``threshold_sweep``):
    whether it exists just past its threshold or at none."""
    sweeps = results.get("threshold_sweeps") or {}
    if not sweeps:
        return []
    s = results["settings"]
    lines = [
        "## The families that miss, at other label thresholds",
        "",
        "Each family that misses its target, labelled again at other score thresholds (the "
        "same minimum of active queries) and tested as its verdict is, on its own task: "
        "whether the family exists just past its threshold or at none. The verdict above "
        f"stays the one at the fixed threshold. Target: >= {s['ratio_target']:g}x the uniform "
        f"control and >= {s['truth_delta']} nats"
        + (f"; successor heads also the OV test (>= {s['successor_ov_target']:.0%})." if
           "successor" in sweeps else "."),
        "",
    ]  # fmt: skip
    for f, sweep in sweeps.items():
        lines += [
            f"**{f}** (verdict at >= {sweep['verdict_threshold']:g}; {_test_name(sweep['test'])}"
            f", task `{sweep['task']}`):",
            "",
        ]
        if not sweep["rows"]:
            lines += ["No other threshold labels other heads.", ""]
            continue
        ov = "ov_test" in sweep["rows"][0]
        lines += [
            "| score >= | heads | per layer | + family | + random | ratio | ratio vs active "
            "random |"
            + (
                " OV: successor in top | OV, random heads | OV: first in its sequence (random) |"
                if ov
                else ""
            )
            + " target met | heads listed |",
            "|---|---|---|---|---|---|---|" + ("---|---|---|" if ov else "") + "---|---|",
        ]
        for row in sweep["rows"]:
            listed = ", ".join(head_id(l, h) for l, h in row.get("listed", []))
            cells = [
                f"{row['score']:g}", str(row["heads"]), str(row["per_layer"]),
                _fmt(row["increase"], ".4f"), _control(row["random_mean"]),
                _ratio_text(row["ratio"], row["random_mean"]),
                _ratio_text(row["matched_ratio"], row.get("matched_random_mean")),
            ]  # fmt: skip
            if ov:
                o = row["ov_test"]
                seq = o.get("in_sequence")
                cells += [
                    _fmt(o["in_top"], ".0%"), _fmt(o["random_in_top"], ".0%"),
                    f"{seq['first']:.0%} ({seq['random_first']:.0%})" if seq else "n/a",
                ]  # fmt: skip
            cells += ["yes" if row["met"] else "no", listed]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _where(results: dict, f: str) -> str:
    """The measured account of a family's task: the layers whose heads or features cost it
    most when zeroed, and the direct effects of heads vs features on its logit."""
    task = results["families"][f]["task"]
    row = (results.get("account") or {}).get(task)
    if not row:
        return ""
    abl, d = row["ablation"], row["direct"]
    parts = [(f"heads L{l}", v) for l, v in enumerate(abl["heads"])]
    parts += [(f"features L{l}", v) for l, v in enumerate(abl["features"])]
    top = sorted(parts, key=lambda p: -p[1])[:3]
    text = (
        f"Where `{task}` is computed: zeroing a whole layer costs most for "
        + ", ".join(f"{name} (+{v:.3f})" for name, v in top)
        + "."
    )
    if d:
        text += (
            f" Direct effects on the demeaned target logit ({d['total']:.2f}): heads "
            f"{sum(d['heads']):.2f}, features {sum(d['features']):.2f}, embedding "
            f"{d['embedding']:.2f}, errors {d['errors']:.2f}, biases {d['biases']:.2f}."
        )
    return text


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
        evidence = f"{fam['total']} heads found; test skipped: {a['skipped']}."
    else:
        evidence = (
            f"{fam['total']} heads found; under their test ({_test_name(a['test'])}) "
            f"`{a['task']}` loss rises by {a['increase']:.4f} nats vs {_control(a['random_mean'])} "
            f"for random heads (ratio {_ratio_text(a['ratio'], a['random_mean'], '.2f')}; target "
            f"{s['ratio_target']:g}x and >= {s['truth_delta']} nats)."
        )
        ov = results["successor_ov"]
        if f == "successor" and "in_top" in ov:
            evidence += (
                f" OV test: successor in the top {ov['top']} at {ov['in_top']:.0%} of items "
                f"(target {ov['target']:.0%})."
            )
    hurts = {
        g: abl[g]["other_tasks"][a["task"]]
        for g in HEAD_FAMILIES
        if g != f and a["task"] in abl[g].get("other_tasks", {})
    }
    if hurts:
        g = max(hurts, key=hurts.get)
        evidence += (
            f" Of the other families, testing the {g} heads hurts `{a['task']}` most: "
            f"+{hurts[g]:.4f} nats."
        )
    key = (results["detectors"].get(f) or {}).get("truth")
    truth = results["truth"].get(key) if key else None
    if truth:
        carriers = ", ".join(
            f"{head_id(h['layer'], h['head'])} +{h['increase']:.3f} "
            f"({'/'.join(h['labels']) or 'unlabelled'})"
            for h in truth["true_heads"][:6]
        )
        evidence += (
            f" The heads whose single test costs the task >= {s['truth_delta']} nats: "
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
        "![family tests](ablation.png)",
        "",
        "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()),
        "",
    ]
