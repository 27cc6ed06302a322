"""Writing one graph's files into a directory: JSON, the graph file, DOT, renders and HTML.

The one place the CLIs of ``circuits`` (``trace``, ``global_graph``) hand a finished graph to
``reports``. Every file is written atomically. A rendering failure (``dot`` crashing or
refusing the file) never loses the other outputs: the DOT file, the JSON, the graph file and
the HTML page (without a drawing) are still written, and the failure comes back as one line.
Renders of an earlier run that this run does not write again are removed, so a reused
directory never shows a stale drawing beside a new graph. With dashboards, circuit-tracer's
feature files and viewer index are written beside ``graph.json`` (``reports.feature_files``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from circuits.graph import Graph
from circuits.neuronpedia import to_json
from toy_models.files import write_json_atomic

from .feature_files import remove_feature_files, write_feature_files
from .graphviz import RENDER_FORMATS, dot_available, dot_missing_message, render, to_dot
from .html import write_html
from .labels import node_labels
from .layout import select

GRAPH_FILE = "graph.safetensors"
FULL_GRAPH_FILE = "full_graph.safetensors"


@dataclass
class Written:
    """The files written, and one line per thing that went wrong or needs the user's hand."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_graph_outputs(
    graph: Graph,
    out: Path,
    formats: list[str],
    full: Graph | None = None,
    dashboards: Mapping[str, Mapping] | None = None,
    feature_files: bool = True,
    mechanisms=None,
) -> Written:
    """Write ``graph`` (and the unpruned ``full``, if given) into ``out``: ``graph.json``
    (Neuronpedia schema), ``graph.safetensors``, ``graph.dot``, the ``formats`` renders
    (when ``dot`` is installed) and ``graph.html`` (with ``dashboards``, keyed by unit id,
    ``reports.viewer``'s schema, when given; then with ``feature_files``, circuit-tracer's
    feature files and ``graph-metadata.json`` too; with ``mechanisms``, a
    ``circuits.mechanisms.MechanismSummary``, its section in the page)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = Written()
    json_path = out / "graph.json"
    scan, feature_paths = None, []
    if dashboards is not None and feature_files:
        scan, feature_paths = write_feature_files(out, graph, dashboards)
    else:
        result.notes += remove_feature_files(out)
    labels = node_labels(graph)
    write_json_atomic(json_path, to_json(graph, labels, slug=out.name or "graph", scan=scan))
    graph.save(out / GRAPH_FILE)
    result.paths += [json_path, *feature_paths, out / GRAPH_FILE]
    if full is not None:
        full.save(out / FULL_GRAPH_FILE)
        result.paths.append(out / FULL_GRAPH_FILE)
    elif (out / FULL_GRAPH_FILE).exists():
        (out / FULL_GRAPH_FILE).unlink()
        result.notes.append(f"removed {out / FULL_GRAPH_FILE} of an earlier run")

    selection = select(graph)
    dot_text = to_dot(graph, selection)
    svg_text = None
    try:
        rendered = render(dot_text, out / "graph", formats if dot_available() else ())
    except RuntimeError as exc:  # dot crashed or refused the file: keep everything else
        rendered = []
        result.notes.append(f"drawing failed, written without it: {exc}")
        render(dot_text, out / "graph", ())  # the DOT file, for a look by hand
    result.paths += rendered or [out / "graph.dot"]
    if formats and not dot_available():
        result.notes.append(dot_missing_message(out / "graph.dot"))
    for fmt in RENDER_FORMATS:
        stale = out / f"graph.{fmt}"
        if stale.exists() and stale not in rendered:
            stale.unlink()
            result.notes.append(f"removed {stale} of an earlier run")
    svg = out / "graph.svg"
    if svg in rendered:
        svg_text = svg.read_text(encoding="utf-8")
    write_html(
        graph, out / "graph.html", svg_text, selection, dashboards=dashboards,
        mechanisms=mechanisms,
    )  # fmt: skip
    result.paths.append(out / "graph.html")
    return result
