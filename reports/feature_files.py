"""circuit-tracer's feature files beside ``graph.json``, so that its viewer opens a traced graph
with the dashboards of its heads and features.

circuit-tracer's local server (``circuit_tracer.frontend.local_server.serve(data_dir)``, 0.5.0)
serves ``/data/X`` and ``/graph_data/X`` from ``data_dir/X``. Its page lists the graphs of
``graph-metadata.json``, loads ``<slug>.json``, and for a node of a feature it loads
``{metadata.scan}/{node.feature}.json`` when the scan starts with ``./``, where ``feature`` is
the Cantor pairing of the node's sublayer and index (``circuits.neuronpedia.feature_number``).
So a trace's ``--out`` directory becomes a data directory of its own::

    graph.json                   metadata.scan = "./graph_data/features/<name>"
    graph-metadata.json          {"graphs": [graph.json's metadata, slug "graph"]}
    features/<name>/<feature>.json   one per Lorsa head and transcoder feature of the graph

``<name>`` is the dashboards' model and mode (``default-local``, as their file). A feature file
follows ``circuit_tracer/frontend/feature_models.py``'s ``Model`` (``check_feature_file``):

- ``examples_quantiles``: the dashboard's examples by group (top activations, then the
  quantiles of the sampled firings), each with its token texts (newline, tab and carriage
  return shown as circuit-tracer shows them: ⏎ → ↵), the activating token
  (``train_token_ind``) and one activation per token. A dashboard keeps the activation of
  the activating token only, unless the example has ``acts``: every other token reads 0.
  An example already shown in an earlier group is marked ``is_repeated_datapoint``. Lorsa
  examples keep their z-pattern in ``keys`` (a field circuit-tracer ignores).
- ``top_logits`` / ``bottom_logits``: the tokens the unit's write vector promotes / suppresses
  most through the unembedding.
- ``act_min`` = 0 and ``act_max`` = the largest activation seen (the colour scale and the
  histogram's range); ``activation_frequency``: the fraction of corpus tokens it fires on.
- ``histogram``: ``HIST_BINS`` equal bins over [act_min, act_max], as the viewer draws it.
  The dashboards count firings in geometric bins; each bin's count is spread over the equal
  bins in proportion to their overlap (so the total is the number of firings; within a
  geometric bin the split assumes an even spread).
- ``quantile_values``: for k = 1..100, the smallest histogram edge below which at least k%
  of the firings lie (capped at ``act_max``): the viewer reads a node's activation against it
  as "Act 2.31 87pct".
- ``description`` and ``concept``: the unit's best-F1 concept label, when it has one; a unit
  that never fired on the dashboards' tokens (it fired on the traced prompt only) says so.

circuit-tracer 0.5.0's page shows examples for nodes of ``feature_type`` "cross layer
transcoder" only; Lorsa nodes keep the type "lorsa" (Neuronpedia's and OpenMOSS's name), so
that page draws heads without their examples, while their files are written all the same.

The files are rebuilt as one directory and swapped in (``toy_models.files``), so a reused
``--out`` never mixes feature files of two runs; the same graph and dashboards give the same
bytes. The dashboards are untrusted input: ``reports.viewer.check_dashboards`` validates them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from circuits.dashboards import default_name
from circuits.graph import Graph
from circuits.neuronpedia import SCHEMA_VERSION, feature_number
from circuits.nodes import block_of, sublayer, unit_id
from toy_models.files import (
    WriteError,
    fresh_directory,
    swap_directory,
    write_bytes_atomic,
    write_json_atomic,
)
from toy_models.records import is_finite_number

from .labels import concept_text
from .viewer import check_dashboards

FEATURES_DIR = "features"
INDEX_FILE = "graph-metadata.json"
GRAPH_SLUG = "graph"  # graph.json's name without .json: what the viewer's index calls it
HIST_BINS = 32
N_QUANTILES = 100
TOP_NAME = "Top activations"
VISIBLE = str.maketrans({"\n": "⏎", "\t": "→", "\r": "↵"})


def feature_dir_name(graph: Graph) -> str:
    """The feature files' directory name: the dashboards' model and mode (``default-local``)."""
    return default_name(graph.model.get("name", "model"), graph.mode)


def scan_of(name: str) -> str:
    """``metadata.scan`` for the feature files of ``name``: a path the viewer fetches from."""
    return f"./graph_data/{FEATURES_DIR}/{name}"


# ----------------------------------------------------------------- one feature file
def feature_file(dashboard: Mapping, transcoder_id: str, index: int) -> dict:
    """One unit's dashboard (``reports.viewer``'s schema, checked) as a feature file."""
    examples = dashboard.get("examples") or []
    tops = [e["activation"] for e in examples if e.get("activation") is not None]
    act_max = max(tops, default=0.0)
    histogram, quantiles = [], []
    if dashboard.get("histogram") is not None and sum(dashboard["histogram"]["counts"]) > 0:
        edges, counts = dashboard["histogram"]["edges"], dashboard["histogram"]["counts"]
        act_max = act_max or edges[-1]  # no examples kept: the histogram's top edge
        histogram = equal_bins(edges, counts, act_max)
        quantiles = quantile_values(edges, counts, act_max)
    out = {
        "transcoder_id": transcoder_id,
        "index": index,
        "examples_quantiles": _quantiles(examples),
        "top_logits": [t for t, _ in (dashboard.get("logits") or {}).get("promoted", [])],
        "bottom_logits": [t for t, _ in (dashboard.get("logits") or {}).get("suppressed", [])],
        "act_min": 0.0,
        "act_max": float(act_max),
        "quantile_values": quantiles,
        "histogram": histogram,
        "activation_frequency": float(dashboard.get("frequency") or 0.0),
    }
    concept = dashboard.get("concept")
    if concept is not None:
        out["description"] = f"{concept_text(concept)} (best-F1 concept)"
        out["concept"] = dict(concept)
    elif dashboard.get("frequency") == 0:  # act_max 0 and no histogram say so to the eye only
        out["description"] = "never fired on the dashboards' tokens (no examples)"
    return out


def _quantiles(examples: list[Mapping]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    seen = set()
    for e in examples:
        tokens = [t.translate(VISIBLE) for t in e["tokens"]]
        acts = list(e["acts"]) if e.get("acts") is not None else [0.0] * len(tokens)
        if e.get("acts") is None and e.get("activation") is not None:
            acts[e["at"]] = e["activation"]
        key = (tuple(e["tokens"]), e["at"], e.get("activation"))
        example = {
            "tokens": tokens,
            "tokens_acts_list": [float(a) for a in acts],
            "train_token_ind": e["at"],
            "is_repeated_datapoint": key in seen,
        }
        if e.get("keys") is not None:
            example["keys"] = [list(k) for k in e["keys"]]
        seen.add(key)
        group = e.get("group", "top")
        groups.setdefault(TOP_NAME if group == "top" else f"Sampled firings, {group}", []).append(
            example
        )
    return [{"quantile_name": name, "examples": ex} for name, ex in groups.items()]


def equal_bins(edges: list[float], counts: list[float], high: float) -> list[float]:
    """``counts`` of the bins ``edges`` spread over ``HIST_BINS`` equal bins of [0, high],
    in proportion to the overlap (everything above ``high`` counts as ``high``)."""
    width = high / HIST_BINS
    out = [0.0] * HIST_BINS
    for a, b, count in zip(edges[:-1], edges[1:], counts, strict=True):
        if count <= 0:
            continue
        a, b = max(min(a, high), 0.0), max(min(b, high), 0.0)
        if b <= a:  # a bin at or above the top (or empty): its count sits at a
            out[min(int(a / width), HIST_BINS - 1)] += count
            continue
        first, last = int(a / width), min(int(b / width), HIST_BINS - 1)
        for k in range(first, last + 1):
            overlap = min(b, (k + 1) * width) - max(a, k * width)
            if overlap > 0:
                out[k] += count * overlap / (b - a)
    return out


def quantile_values(edges: list[float], counts: list[float], high: float) -> list[float]:
    """For k = 1..N_QUANTILES: the first upper edge with at least k% of the counts below it,
    capped at ``high``."""
    total = sum(counts)
    out, cum, j = [], 0.0, 0
    for k in range(1, N_QUANTILES + 1):
        need = math.ceil(k * total / N_QUANTILES)
        while j < len(counts) and (cum + counts[j] < need or counts[j] == 0):
            cum += counts[j]
            j += 1
        out.append(float(min(edges[min(j, len(counts) - 1) + 1], high)))
    return out


# ----------------------------------------------------------------- the schema
_EXAMPLE = {
    "tokens_acts_list": "list[float]",
    "train_token_ind": "int",
    "is_repeated_datapoint": "bool",
    "tokens": "list[str]",
}
_MODEL = {
    "transcoder_id": "str",
    "index": "int",
    "examples_quantiles": "list[quantile]",
    "top_logits": "list[str]",
    "bottom_logits": "list[str]",
    "act_min": "float",
    "act_max": "float",
    "quantile_values": "list[float]",
    "histogram": "list[float]",
    "activation_frequency": "float",
}


def _is(kind: str, value) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return is_finite_number(value)
    inner = kind[len("list[") : -1]
    return isinstance(value, list) and all(_is(inner, v) for v in value)


def check_feature_file(data) -> None:
    """Raise ValueError unless ``data`` has every field of circuit-tracer's feature ``Model``
    with its type (floats finite), and each example one activation per token and its
    activating token among them."""
    if not isinstance(data, Mapping):
        raise ValueError("a feature file must be a JSON object")
    for field, kind in _MODEL.items():
        if field not in data:
            raise ValueError(f"feature file: {field} is missing")
        if kind != "list[quantile]" and not _is(kind, data[field]):
            raise ValueError(f"feature file: {field} must be {kind}")
    if not isinstance(data["examples_quantiles"], list):
        raise ValueError("feature file: examples_quantiles must be a list")
    for q, quantile in enumerate(data["examples_quantiles"]):
        where = f"feature file: examples_quantiles[{q}]"
        if not isinstance(quantile, Mapping) or not _is("str", quantile.get("quantile_name")):
            raise ValueError(f"{where} must have a quantile_name (str)")
        if not isinstance(quantile.get("examples"), list):
            raise ValueError(f"{where}.examples must be a list")
        for k, e in enumerate(quantile["examples"]):
            if not isinstance(e, Mapping):
                raise ValueError(f"{where}.examples[{k}] must be an object")
            for field, kind in _EXAMPLE.items():
                if not _is(kind, e.get(field)):
                    raise ValueError(f"{where}.examples[{k}].{field} must be {kind}")
            if len(e["tokens_acts_list"]) != len(e["tokens"]):
                raise ValueError(f"{where}.examples[{k}] needs one activation per token")
            if not 0 <= e["train_token_ind"] < len(e["tokens"]):
                raise ValueError(f"{where}.examples[{k}].train_token_ind is not a token index")


# ----------------------------------------------------------------- a graph's files
def index_entry(graph: Graph, name: str) -> dict:
    """graph.json's entry in the viewer's ``graph-metadata.json``: its menu shows ``scan``
    (here the features' name; the page loads them by graph.json's own ``metadata.scan``) and
    the prompt. No ``node_threshold``: the graph is pruned already, and the page would prune
    it again by its nodes' ``influence``, which is not circuit-tracer's cumulative one."""
    return {
        "slug": GRAPH_SLUG,
        "scan": name,
        "transcoder_list": [],
        "prompt_tokens": graph.token_strings,
        "prompt": graph.prompt,
        "schema_version": SCHEMA_VERSION,
    }


def write_feature_files(
    out: str | Path, graph: Graph, dashboards: Mapping[str, Mapping]
) -> tuple[str, list[Path]]:
    """Write the feature files of ``graph``'s heads and features from ``dashboards`` (keyed by
    unit id) and the viewer's index into ``out`` (module docstring); return the ``scan`` that
    graph.json must name and the paths written (the index and the features directory).
    A ValueError names a unit without a dashboard or a dashboard that is not valid."""
    out = Path(out)
    checked = check_dashboards(dashboards)
    name = feature_dir_name(graph)
    files = {}
    for kind, stage, index in graph.units():
        unit = unit_id(kind, stage, index)
        if unit not in checked:
            raise ValueError(f"no dashboard for {unit} ({kind.label}), a unit of the graph")
        dictionary = f"{name}:L{block_of(stage)}.{kind.label}"
        data = feature_file(checked[unit], dictionary, index)
        check_feature_file(data)
        files[feature_number(sublayer(stage), index)] = data
    root, new = out / FEATURES_DIR, out / f"{FEATURES_DIR}.new"
    try:
        with fresh_directory(new):
            (new / name).mkdir()
            for number, data in sorted(files.items()):  # compact: one file per unit adds up
                text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                write_bytes_atomic(new / name / f"{number}.json", text.encode())
            swap_directory(new, root)
    except OSError as exc:  # the file named where it goes: a full disk named a features.new/
        # folder that no run leaves (a robustness pass)
        where = Path(str(exc.filename or ""))
        if where != new and where.is_relative_to(new):
            raise WriteError(exc.errno, exc.strerror, str(root / where.relative_to(new))) from None
        raise
    write_json_atomic(out / INDEX_FILE, {"graphs": [index_entry(graph, name)]})
    return scan_of(name), [out / INDEX_FILE, root / name]
