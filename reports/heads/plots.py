"""The report's PNG plots: score histograms per family, labelled heads per layer, and each
family's test vs random heads. Reads only the ``results`` dictionary; draws on
``matplotlib.figure.Figure`` objects (no pyplot state, no backend to choose)."""

from __future__ import annotations

from pathlib import Path

from toy_models.files import write_png_atomic

from .config import DIAGNOSTICS, HEAD_FAMILIES, THRESHOLDS

PLOT_FILES = ("scores.png", "counts.png", "ablation.png")
LOG_FLOOR = 0.3  # the score histograms' lowest count drawn (log axis)


def write_plots(results: dict, out: Path) -> list[Path]:
    """``PLOT_FILES`` in ``out``; returns their paths."""
    from matplotlib.figure import Figure

    written = []
    drawings = ((16, 13), _score_histograms), ((12, 4), _counts_per_layer), ((14, 4), _ablations)
    for name, (size, draw) in zip(PLOT_FILES, drawings, strict=True):
        fig = Figure(figsize=size)
        draw(fig, results)
        write_png_atomic(fig, out / name)
        written.append(out / name)
    return written


def _score_histograms(fig, results: dict) -> None:
    names = HEAD_FAMILIES + DIAGNOSTICS
    axes = list(fig.subplots(-(-len(names) // 4), 4).flat)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    for ax, f in zip(axes, names, strict=False):
        t = THRESHOLDS.get(f, THRESHOLDS["operand_a_units"])
        sc = results["scores"][f]
        drawn = 0
        for l, (score, active) in enumerate(zip(sc["score"], sc["active"], strict=True)):
            kept = [v for v, a in zip(score, active, strict=True) if a >= t.min_active]
            above = sum(v >= t.score for v in kept)
            ax.hist(kept, bins=40, range=(0, 1), histtype="step",
                    label=f"L{l} ({len(kept)}; {above} >= {t.score:g})")  # fmt: skip
            drawn += len(kept)
        ax.axvline(t.score, color="k", linestyle="--", linewidth=1)
        if drawn:  # a log axis needs a positive count
            ax.set_yscale("log")
            # The floor well under 1, so that a bin of one head stands as a step half a decade
            # high: on the axis's own floor (0.8) the few heads past a threshold (the sink
            # panel's) were slivers along the bottom edge.
            ax.set_ylim(bottom=LOG_FLOOR)
        ax.set_ylabel("heads (log scale)" if drawn else "heads")
        ax.set_title(f + (" (diagnostic)" if f in DIAGNOSTICS else ""))
        what = "attention on BOS" if f == "attention_sink" else "score"
        ax.set_xlabel(f"{what} (heads with >= {t.min_active} active queries)")
        ax.legend(fontsize=7)
    fig.suptitle("Family scores of every Lorsa head (dashed: label threshold; legend: heads "
                 "drawn, and how many reach it; counts on a log axis)")  # fmt: skip
    fig.tight_layout()


def _counts_per_layer(fig, results: dict) -> None:
    n_layers = len(results["n_ov_heads"])
    ax = fig.subplots()
    width = 0.8 / len(HEAD_FAMILIES)
    for j, f in enumerate(HEAD_FAMILIES):
        counts = results["families"][f]["counts_per_layer"]
        ax.bar([l + j * width for l in range(n_layers)], counts, width, label=f)
    ax.set_xticks(
        [l + 0.4 - width / 2 for l in range(n_layers)], [f"L{l}" for l in range(n_layers)]
    )
    ax.set_ylabel("labelled heads")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Labelled heads per layer and family")
    fig.tight_layout()


ABLATION_BAR = 0.27  # width of each of a family's three bars in ``ablation.png``


def _ablations(fig, results: dict) -> None:
    ax = fig.subplots()
    abl = results["ablation"]
    bars = [("increase", "family heads"), ("random_mean", "random heads"),
            ("matched_random_mean", "random active heads")]  # fmt: skip
    for j, (key, label) in enumerate(bars):
        values = [abl[f].get(key, 0.0) for f in HEAD_FAMILIES]
        ax.bar([i + j * ABLATION_BAR for i in range(len(HEAD_FAMILIES))], values, ABLATION_BAR,
               label=label)  # fmt: skip
    ax.set_yscale("symlog", linthresh=1e-3)
    # each name under its group's middle bar (it stood under the family's own bar, the
    # group's left end, so that the names drifted left of their bars)
    middle = (len(bars) - 1) / 2 * ABLATION_BAR
    ax.set_xticks([i + middle for i in range(len(HEAD_FAMILIES))],
                  [f.replace("_", "\n") for f in HEAD_FAMILIES], fontsize=7)  # fmt: skip
    ax.set_ylabel("task loss increase (nats)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Each family's test (zeroing; BOS masking for sinks) vs as many random heads, "
                 "on the family's task")  # fmt: skip
    fig.tight_layout()
