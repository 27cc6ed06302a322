"""The global induction circuit of the top induction head, drawn from weights: its QK group's
strongest query-unit x key-unit pairs and the units that write them on the corpus sample."""

from __future__ import annotations

from pathlib import Path

from .config import CIRCUIT_STEM
from .report import head_id


def circuit_statistics(replacement, tokenizer, model: str):
    """The corpus statistics the induction circuit is drawn from (``statistics_for``: the
    default file of this model, replacement set and tokenizer; gathered on the first run, in
    under a minute, once). Read before the report's work, so that a file it cannot use is
    refused before anything is written."""
    from circuits.gathering import statistics_for
    from circuits.statistics import default_stats_path
    from toy_models.files import check_writable_dir

    path = default_stats_path(model, replacement, tokenizer)
    if not path.is_file():  # gathered into: a folder it cannot write is refused now (a fuzz
        # pass, from a read-only working directory: "runs: Read-only file system" after it)
        check_writable_dir(path.parent, "the induction circuit's statistics folder")
    return statistics_for(replacement, tokenizer, model, path, option=None)


def induction_circuit(replacement, tokenizer, results: dict, model: str, out: Path,
                      stats) -> list[Path]:  # fmt: skip
    """The QK group of the top induction head (``circuits.global_weights.qk_circuit``) drawn
    with Graphviz as ``out/induction_circuit.{dot,svg,png,html}`` (``CIRCUIT_FILES``) from
    ``stats`` (``circuit_statistics``); returns the files written. ``model`` names the toy
    model."""
    from circuits.global_weights import qk_circuit
    from reports.graphviz import dot_available, render, to_dot
    from reports.html import write_html

    heads = results["families"]["induction"]["heads"]
    if not heads:
        print("induction circuit skipped: no induction head was found")
        return []
    top = heads[0]
    group = replacement.lorsas[top["layer"]].cfg.group_size
    same_group = [
        h["head"] for h in heads
        if h["layer"] == top["layer"] and h["head"] // group == top["head"] // group
    ]  # fmt: skip
    graph = qk_circuit(replacement, stats, top["layer"], same_group, tokenizer=tokenizer)
    graph.model["name"] = model
    path = out / CIRCUIT_STEM
    formats = ("svg", "png") if dot_available() else ()
    # its QK pairs are what it shows: drawn at full strength (the trace's drawing keeps them faint)
    written = render(to_dot(graph, max_nodes=None, faint_qk=False), path, formats)
    svg = path.with_suffix(".svg")
    title = f"Global induction circuit: QK group of {head_id(top['layer'], top['head'])}"
    write_html(graph, path.with_suffix(".html"), svg.read_text() if svg in written else None,
               title=title)  # fmt: skip
    return [*written, path.with_suffix(".html")]
