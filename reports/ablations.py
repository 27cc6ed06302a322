"""The Lorsa ablation report: markdown tables, findings and PNG curves from the results of
``benchmarks/lorsa_ablations.py`` (``replacement.ablations``).

    python -m reports.ablations [--json benchmarks/results/lorsa_ablations_default.json] [--out DIR]

Writes ``ablations.md`` and ``ablations.png`` (FVU and 1 - loss recovered against K, the number
of QK heads and the QK rank; the attention-output SAE beside Lorsa on the K axis) into
``--out`` (default: the JSON's path without its suffix), as one set
(``reports.outputs.write_set``, recorded in ``.ablations-set.json``): an ``ablations.md`` or
``ablations.png`` there that no run of the command wrote is refused before the report is made,
and kept. Reads only the results dictionary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from toy_models.cli import run_cli
from toy_models.records import Bounds, NonNegative, PositiveReal, Share, from_json
from toy_models.resumable import FLOAT32_MAX

from .results_cli import render_results, write_results_report

DEFAULT_JSON = Path("benchmarks/results/lorsa_ablations_default.json")
AXES = (  # (axis, x label, variant field on that axis)
    ("k", "K (active units per token)", "top_k"),
    ("qk_heads", "QK heads (same OV heads)", "n_qk_heads"),
    ("d_qk", "QK rank d_qk", "d_qk"),
)
# The command's output set (``reports.outputs.OutputSet``, built where it is written: that
# module imports torch, which ``--help`` and a bad ``--json`` never pay for); the first names it.
REPORT_FILES = ("ablations.md", "ablations.png")


# ----------------------------------------------------------------- the results file
# What ``benchmarks/lorsa_ablations.py`` writes, every field typed and in range: the file is
# read back as untrusted data (``check_results``) before anything is rendered from it.
Count = Annotated[int, Bounds(0)]
Positive = Annotated[int, Bounds(1)]


@dataclass
class Baseline:
    # float32 means, as a run's CE (``replacement.ablations.RunRecord``; ``LayerEvaluation``)
    ce_original: Annotated[float, Bounds(0.0, FLOAT32_MAX)]
    ce_mean_ablated: Annotated[float, Bounds(0.0, FLOAT32_MAX)]
    heldout_rows: Count
    heldout_tokens: Count


@dataclass
class Layer:
    baseline: Baseline
    runs: dict[str, dict]  # each a ``replacement.ablations.RunRecord``, read in check_results


@dataclass
class BaseShapes:
    """``replacement.train.DictionaryShapes`` as the sweep writes it (every field present: a
    missing one is not its default here, it is a damaged file)."""

    n_qk_heads: Positive
    n_ov_heads: Positive
    d_qk: Positive
    lorsa_top_k: Positive
    d_sae: Positive
    transcoder_top_k: Positive
    transcoder_skip: bool


@dataclass
class TrainSettings:
    """``replacement.train.ReplacementTrainConfig`` as the sweep writes it (every field)."""

    steps: Positive
    batch_size: Positive
    lr: PositiveReal
    warmup_fraction: Share
    decay_fraction: Share
    k_start_factor: Positive
    k_anneal_fraction: Share
    aux_k: Count
    aux_coef: NonNegative
    dead_tokens: Positive
    norm_batches: Positive
    checkpoint_every: Positive
    seed: Count


@dataclass
class SweepSettings:
    config: str
    layers: list[Count]
    rows: Positive
    heldout_rows: Positive
    steps: Positive
    batch_size: Positive
    base_shapes: BaseShapes
    train: TrainSettings
    train_cache_id: str
    heldout_cache_id: str


@dataclass
class AblationResults:
    model: str
    model_sha256: str
    quick: bool
    d_head: Positive
    n_heads: Positive
    axes: dict[str, list[str]]
    variants: dict
    settings: SweepSettings
    layers: dict[str, Layer]
    seconds: dict[str, NonNegative]


def check_results(results) -> AblationResults:
    """The results file as typed records, or a ValueError naming the first field that is of
    the wrong type or out of range (the settings' ``base_shapes`` and ``train`` included:
    every field of the shapes and the training configuration the sweep writes, its OV heads
    in whole blocks per QK head, the training's steps and batch the sweep's), a variant that
    is not one (``replacement.ablations.Variant`` checks its fields) or not the one its name
    says, a run or axis naming no variant, an axis the sweep writes missing, empty (the
    control aside) or holding the other kind of dictionary, a layer without the run of a
    variant an axis names (its point would be left out of the tables and curves, silently), a
    run's L0 above its variant's K, or a loss recovered that does not follow from its run's
    and its layer's losses (``replacement.evaluate.fraction_recovered``)."""
    from replacement.ablations import OPTIONAL_AXES, SWEPT, RunRecord, Variant
    from replacement.evaluate import fraction_recovered

    record = from_json(AblationResults, results, "results")
    for layer, data in record.layers.items():  # the records the sweep writes, as it reads them
        data.runs = {name: from_json(RunRecord, run, f"results.layers.{layer}.runs.{name}")
                     for name, run in data.runs.items()}  # fmt: skip
    _check_settings(record.settings)
    variants = {}
    for name, fields in record.variants.items():
        try:
            variant = from_json(Variant, fields, f"results.variants.{name}")
        except ValueError as exc:  # Variant's own checks do not know where it was read
            raise ValueError(f"results.variants.{name}: {exc}") from None
        if variant.name != name:  # the sweep keys each variant by its name
            raise ValueError(f"results.variants.{name}: its fields are variant {variant.name}")
        variants[name] = variant
    names = set(record.variants)
    # an axis missing or emptied left its runs out of the tables and curves, silently (a
    # review); one the sweep never writes would be drawn nowhere
    if set(record.axes) != set(SWEPT):
        raise ValueError(f"results.axes: {sorted(record.axes)!r:.80}, the sweep writes "
                         f"{sorted(SWEPT)}")  # fmt: skip
    for axis, members in record.axes.items():
        if unknown := sorted(set(members) - names):
            raise ValueError(f"results.axes.{axis}: no variant named {unknown[:3]}")
        if not members and axis not in OPTIONAL_AXES:
            raise ValueError(f"results.axes.{axis}: empty, the sweep runs every axis but the "
                             "control on at least one variant")  # fmt: skip
        if len(set(members)) != len(members):
            raise ValueError(f"results.axes.{axis}: names a variant twice")
        if wrong := [n for n in members if variants[n].kind != SWEPT[axis]]:
            raise ValueError(f"results.axes.{axis}: {wrong[:3]} not of the {SWEPT[axis]} "
                             "variants it holds")  # fmt: skip
    for layer, data in record.layers.items():
        if unknown := sorted(set(data.runs) - names):
            raise ValueError(f"results.layers.{layer}.runs: no variant named {unknown[:3]}")
        for axis, members in record.axes.items():
            if missing := [n for n in members if n not in data.runs]:
                raise ValueError(f"results.layers.{layer}.runs: no run of {missing[:3]}, which "
                                 f"results.axes.{axis} names")  # fmt: skip
        base = data.baseline
        # the held-out cache every layer is measured on: the settings' rows, of n_ctx >= 2
        # tokens each (a review: 0 rows, or 1 token, of a measured layer were rendered)
        if base.heldout_rows != record.settings.heldout_rows:
            raise ValueError(f"results.layers.{layer}.baseline.heldout_rows: "
                             f"{base.heldout_rows}, the settings say "
                             f"{record.settings.heldout_rows}")  # fmt: skip
        if base.heldout_tokens % base.heldout_rows or base.heldout_tokens < 2 * base.heldout_rows:
            raise ValueError(f"results.layers.{layer}.baseline.heldout_tokens: "
                             f"{base.heldout_tokens}, not whole rows of two or more tokens in "
                             f"{base.heldout_rows} rows")  # fmt: skip
        for name, run in data.runs.items():
            if run.l0 > variants[name].top_k * (1 + 1e-6):  # TopK: at most K active a token
                raise ValueError(
                    f"results.layers.{layer}.runs.{name}.l0: {run.l0:.6g} units "
                    f"active a token, more than its K of {variants[name].top_k}"
                )
            expected = fraction_recovered(base.ce_original, base.ce_mean_ablated, run.ce)
            if math.isnan(expected) and base.ce_mean_ablated > base.ce_original:
                # a gap too small to measure (``MIN_GAP``): files written before the rule
                # (2026-12-06) hold the bare ratio there, which still loads
                gap = base.ce_mean_ablated - base.ce_original
                bare = (base.ce_mean_ablated - run.ce) / gap
                if math.isclose(run.loss_recovered, bare, abs_tol=1e-6):
                    expected = bare
            same = math.isnan(expected) == math.isnan(run.loss_recovered) and (
                math.isnan(expected) or math.isclose(run.loss_recovered, expected, abs_tol=1e-6)
            )
            if not same:
                where = f"results.layers.{layer}.runs.{name}.loss_recovered"
                raise ValueError(f"{where}: {run.loss_recovered!r}, its losses give {expected!r}")
    return record


def _check_settings(s: SweepSettings) -> None:
    """What ties the settings' fields together (their types and ranges are checked)."""
    shapes = s.base_shapes
    if shapes.n_ov_heads % shapes.n_qk_heads:
        raise ValueError(f"results.settings.base_shapes: {shapes.n_ov_heads} OV heads are not "
                         f"whole blocks of {shapes.n_qk_heads} QK heads")  # fmt: skip
    picks = {"lorsa_top_k": shapes.n_ov_heads, "transcoder_top_k": shapes.d_sae}
    for name, width in picks.items():
        if (k := getattr(shapes, name)) > width:
            raise ValueError(f"results.settings.base_shapes.{name}: {k}, more than the {width} "
                             "units it picks from")  # fmt: skip
    for name in ("steps", "batch_size"):  # the sweep trains with its own steps and batch
        if getattr(s.train, name) != getattr(s, name):
            raise ValueError(f"results.settings.train.{name}: {getattr(s.train, name)}, the "
                             f"settings say {getattr(s, name)}")  # fmt: skip
    if len(set(s.layers)) != len(s.layers):
        raise ValueError(f"results.settings.layers: {s.layers} names a layer twice")


def _points(results: dict, layer: str, axis: str) -> list[tuple[int, dict]]:
    field = {a: f for a, _, f in AXES}.get(axis, "top_k")
    runs = results["layers"][layer]["runs"]
    pts = [(results["variants"][n][field], runs[n]) for n in results["axes"][axis] if n in runs]
    return sorted(pts, key=lambda p: p[0])


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


# ----------------------------------------------------------------- markdown
def markdown(results: dict) -> str:
    from replacement.evaluate import MIN_GAP, measurable_gap

    s = results["settings"]
    if not results["layers"] or sorted(results["layers"]) != sorted(map(str, s["layers"])):
        raise ValueError(f"results for layers {sorted(results['layers'])}, settings say "
                         f"{s['layers']}: a results file holds every layer it names")  # fmt: skip
    base = s["base_shapes"]
    lines = ["# Lorsa architecture ablations", ""]
    if results.get("quick"):
        lines += [
            "**SMOKE RUN (`--quick`): a few steps on a few rows; these figures check the "
            "machinery and mean nothing about the architecture.**",
            "",
        ]
    lines += [
        f"Model `{results['model']}` (heads of dimension {results['d_head']}, "
        f"{results['n_heads']} per layer), layers {s['layers']}. Each point is one "
        f"single-layer run of {s['steps']} steps (batch {s['batch_size']} rows) on the same "
        f"{s['rows']} cached training rows, measured on {s['heldout_rows']} cached held-out "
        f"rows. Base shapes: {base['n_ov_heads']} OV heads, {base['n_qk_heads']} QK heads, "
        f"d_qk {base['d_qk']}, K {base['lorsa_top_k']}; each axis varies one of them. Loss "
        "recovered: that layer alone spliced in, against mean-ablating its attention output. "
        "Short runs: compare points with each other, not with the shipped set (trained longer).",
        "",
        f"Wall time of the command: {results['seconds']['total']:.0f} s (caches "
        f"{results['seconds']['caches']:.0f} s, runs {results['seconds']['runs']:.0f} s); "
        f"training time summed over the runs, including any read back from an earlier "
        f"invocation: {results['seconds']['train_in_runs']:.0f} s.",
        "",
        "![curves](ablations.png)",
        "",
        "## Findings",
        "",
        *[f"- {f}" for f in findings(results)],
        "",
        "## K: Lorsa vs an attention-output TopK SAE of the same width and K",
        "",
    ]
    for layer in results["layers"]:
        base_line = results["layers"][layer]["baseline"]
        lines += [
            f"Layer {layer} (CE original {base_line['ce_original']:.4f}, attention output "
            f"mean-ablated {base_line['ce_mean_ablated']:.4f}"
            + (
                ""
                if measurable_gap(base_line["ce_original"], base_line["ce_mean_ablated"])
                else f"; mean ablation raises the loss by under {MIN_GAP} nats here, so loss "
                "recovered is not measured"
            )
            + "):",
            "",
            "| K | Lorsa FVU | SAE FVU | Lorsa / SAE | Lorsa loss rec. | SAE loss rec. "
            "| Lorsa KL | SAE KL |",
            "|---|---|---|---|---|---|---|---|",
        ]
        sae = dict(_points(results, layer, "sae"))
        for k, r in _points(results, layer, "k"):
            a = sae.get(k)
            lines.append(
                f"| {k} | {_fmt(r['fvu'])} | {_fmt(a['fvu']) if a else '-'} | "
                f"{_ratio(r['fvu'], a['fvu']) if a else '-'} | {_fmt(r['loss_recovered'])} | "
                f"{_fmt(a['loss_recovered']) if a else '-'} | {_fmt(r['kl'])} | "
                f"{_fmt(a['kl']) if a else '-'} |"
            )
        lines.append("")
    for axis, title, unit in (
        ("qk_heads", "QK sharing: number of QK heads for the same OV heads", "QK heads"),
        ("d_qk", "QK rank", "d_qk"),
    ):
        lines += [f"## {title}", ""]
        for layer in results["layers"]:
            lines += [
                f"Layer {layer}:",
                "",
                f"| {unit} | FVU | loss rec. | KL | dead | train s |",
                "|---|---|---|---|---|---|",
            ]
            pts = _points(results, layer, axis)
            if axis == "d_qk":
                pts += [
                    (f"{results['variants'][n]['d_qk']} (random QK start)", r)
                    for n, r in _control(results, layer)
                ]
            for x, r in pts:
                lines.append(
                    f"| {x} | {_fmt(r['fvu'])} | {_fmt(r['loss_recovered'])} | {_fmt(r['kl'])} "
                    f"| {r['dead_fraction']:.1%} | {r['train_s']:.0f} |"
                )
            lines.append("")
    lines += [
        "QK starts from the original heads on every axis: at d_qk below the head dimension "
        "from each head's best rank-d_qk approximation of its score (SVD of the bilinear form, "
        "biases included), above it from the head plus small random extra dimensions; the "
        "control starts from random QK at the base rank. With fewer QK heads than the model's "
        f"{results['n_heads']} heads, QK head j copies original head j x {results['n_heads']} / "
        "n_qk and the other heads' patterns must be learned from there.",
        "",
    ]
    return "\n".join(lines)


def _control(results: dict, layer: str) -> list[tuple[str, dict]]:
    runs = results["layers"][layer]["runs"]
    return [(n, runs[n]) for n in results["axes"].get("control", []) if n in runs]


def findings(results: dict) -> list[str]:
    """Sentences computed from the figures (no judgement beyond the numbers)."""
    out = []
    s = results["settings"]["base_shapes"]
    d_head = results["d_head"]
    for layer in results["layers"]:
        k_pts = _points(results, layer, "k")
        sae = dict(_points(results, layer, "sae"))
        if len(k_pts) >= 2:
            (k0, r0), (k1, r1) = k_pts[0], k_pts[-1]
            out.append(
                f"Layer {layer}, K: Lorsa FVU {_fmt(r0['fvu'])} at K={k0} -> {_fmt(r1['fvu'])} "
                f"at K={k1}; loss recovered {_fmt(r0['loss_recovered'])} -> "
                f"{_fmt(r1['loss_recovered'])}."
            )
        ratios = [(k, r["fvu"] / sae[k]["fvu"]) for k, r in k_pts if k in sae and sae[k]["fvu"]]
        if ratios:
            text = ", ".join(f"{x:.2f} (K={k})" for k, x in ratios)
            better = sum(x < 1 for _, x in ratios)
            out.append(
                f"Layer {layer}, Lorsa / SAE FVU at equal width and K: {text}; Lorsa is lower "
                f"at {better} of {len(ratios)} K values."
            )
        d_pts = dict(_points(results, layer, "d_qk"))
        # against the head dimension where it was swept, else against the base shapes' rank
        rank, what = (
            (d_head, "the head dimension") if d_head in d_pts else (s["d_qk"], "the base rank")
        )
        ref = d_pts.get(rank)
        if ref and len(d_pts) >= 2:
            parts = [f"d_qk={d}: {_ratio(r['fvu'], ref['fvu'])}" for d, r in sorted(d_pts.items())]
            out.append(
                f"Layer {layer}, QK rank: FVU relative to d_qk={rank} ({what}): "
                + ", ".join(parts)
                + "."
            )
        for name, r in _control(results, layer):
            base = d_pts.get(results["variants"][name]["d_qk"])
            if base:
                out.append(
                    f"Layer {layer}, random QK start at the same rank: FVU "
                    f"{_ratio(r['fvu'], base['fvu'])} the copied start's, loss recovered "
                    f"{_fmt(r['loss_recovered'])} vs {_fmt(base['loss_recovered'])}."
                )
        q_pts = dict(_points(results, layer, "qk_heads"))
        ref = q_pts.get(s["n_qk_heads"])
        if ref and len(q_pts) >= 2:
            parts = [f"{h}: {_ratio(r['fvu'], ref['fvu'])}" for h, r in sorted(q_pts.items())]
            out.append(
                f"Layer {layer}, QK heads: FVU relative to {s['n_qk_heads']} QK heads: "
                + ", ".join(parts)
                + "."
            )
    return out


def summary_lines(results: dict) -> list[str]:
    tag = " [SMOKE RUN]" if results.get("quick") else ""
    lines = [f"Lorsa ablations{tag}: layer, run, FVU, loss recovered, KL, train s"]
    for layer, data in results["layers"].items():
        for name, r in data["runs"].items():
            lines.append(
                f"  L{layer} {name:34s} {r['fvu']:.4f}  {r['loss_recovered']:.4f}  "
                f"{r['kl']:.4f}  {r['train_s']:.0f}"
            )
    return lines + findings(results)


# ----------------------------------------------------------------- plots
def _positive(v: float) -> float:
    """For a log axis: NaN (not drawn) unless finite and positive."""
    return v if v is not None and math.isfinite(v) and v > 0 else math.nan


def _gap(r: dict) -> float:
    """1 - loss recovered, floored at 1e-6 for the log axis (NaN where not measured: an
    ablation that raises the loss by under ``replacement.evaluate.MIN_GAP``)."""
    v = r["loss_recovered"]
    return max(1 - v, 1e-6) if v is not None and math.isfinite(v) else math.nan


def figure(results: dict):
    """The report's figure (a matplotlib ``Figure``), drawn in memory."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 8))
    axes = fig.subplots(2, 3)
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for col, (axis, label, _) in enumerate(AXES):
        top, bottom = axes[0, col], axes[1, col]
        for i, layer in enumerate(results["layers"]):
            c = colors[i % len(colors)]
            series = [(f"Lorsa L{layer}", _points(results, layer, axis), "-o")]
            if axis == "k":
                series.append((f"SAE L{layer}", _points(results, layer, "sae"), "--s"))
            for name, pts, style in series:
                xs = [x for x, _ in pts]
                top.plot(xs, [_positive(r["fvu"]) for _, r in pts], style, color=c, label=name)
                bottom.plot(xs, [_gap(r) for _, r in pts], style, color=c, label=name)
            if axis == "d_qk":
                for n, r in _control(results, layer):
                    x = results["variants"][n]["d_qk"]
                    top.plot([x], [_positive(r["fvu"])], "x", color=c, markersize=10,
                             label=f"random QK start L{layer}")  # fmt: skip
                    bottom.plot([x], [_gap(r)], "x", color=c, markersize=10)
        xs_all = sorted({x for l in results["layers"] for x, _ in _points(results, l, axis)})
        for ax in (top, bottom):
            ax.set_xlabel(label)
            if not any(math.isfinite(v) for line in ax.get_lines() for v in line.get_ydata()):
                ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
                continue  # (a log axis needs some data)
            if axis == "d_qk":
                ax.axvline(results["d_head"], color="gray", linestyle=":", linewidth=1)
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all, [str(x) for x in xs_all])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        top.set_ylabel("FVU (held-out)")
        bottom.set_ylabel("1 - loss recovered (spliced alone)")
        top.legend(fontsize=7)
    title = "Lorsa ablations"
    if results.get("quick"):
        title += " (SMOKE RUN: meaningless figures)"
    fig.suptitle(f"{title}: {results['settings']['steps']} steps per run")
    fig.tight_layout()
    return fig


def write_ablation_report(results: dict, out: Path) -> list[Path]:
    """``ablations.md`` and ``ablations.png`` in ``out`` (created), as one set (module
    docstring: the command's and ``benchmarks/lorsa_ablations.py``'s); returns their paths."""
    return write_results_report(results, out, REPORT_FILES, check=check_results,
                                markdown=markdown, figure=figure)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return render_results(
        argv,
        prog="python -m reports.ablations",
        description="Render the Lorsa ablation results (benchmarks/lorsa_ablations.py) as "
        "markdown and PNG curves.",
        default_json=DEFAULT_JSON,
        benchmark="benchmarks/lorsa_ablations.py",
        what="a Lorsa ablation result",
        write=write_ablation_report,
    )


if __name__ == "__main__":
    run_cli(main)
