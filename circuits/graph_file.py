"""The graph file: a ``Graph`` as one safetensors file, written atomically and read as untrusted.

Layout: the per-node arrays, the CSR edge arrays (``edges.indptr``, ``edges.indices``,
``edges.data``) and the prompt's ``tokens`` as tensors; everything else (prompt, token texts,
logit targets, QK records, mode, a global graph's record, model identity, settings) as one
JSON header in the file's metadata. Nothing is unpickled: a ``.pt`` graph (a pickle, written
by earlier versions) is refused.

``load_graph`` checks every field before building the ``Graph``: the SHA-256 of the tensors and
the rest of the header against the header's (a damaged file), dtypes, shapes, ranges,
stage/kind consistency, the node order, unique node ids, the CSR invariants (a malformed index
array would crash scipy),
finite values, QK records inside the prompt (one per layer, QK head, query and key) with keys
at or before their query and terms naming sides in the form a trace writes them
(``_names_side``: by the fields each record gives the ids it names, which make those ids),
one text per token, a prompt that is their text (or none), a logit difference of two
tokens, header types and lengths, header integers within the int64 arrays'; per node the
fields of its kind alone (a key read by a prompt's heads, ``promotes`` by heads and features,
the writer's -1 or NaN elsewhere), target weights in 0..1 summing to at most 1 (a grown
global graph's: 1 on its start alone), a global graph's record of how it was made
(``GlobalRecord``; none for a prompt's graph), the head and feature targets in the order given
(``node_targets``: null, or node indices in range, each once, of heads and features with a
positive target weight, together every target that is not a logit), and every token id with a
text where ``token_text`` has any (the file holds no vocabulary size nor a layer's width: a
model checks indices against its own); a problem is one ``ValueError``
naming the file and the field.

And the sums that tie fields together, what the graph's "exact" claims rest on: a prompt's
heads, features and logits have their value as their activation; influence is never
negative; each QK record's listed pairs plus its ``rest`` make its score, and its reason's
four parts the score and its pairs plus ``rest`` the specific part; a prompt's full graph
(``pruned`` false: ``Graph.subgraph`` and ``prune_graph`` set it) closes row by row (each
head, feature and target's incoming edges plus its bias are its activation). A pruned graph
(``pruned`` true; the full graph's size is provenance, ``settings["unpruned"]``) has lost
edges by design, so its edges can be checked against nothing in the file: they are what the
trace wrote, as far as the checksum goes (a reviewer doubled every edge and recomputed it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from toy_models.checkpoint import check_content_sha256, content_sha256, save_state_atomic
from toy_models.cli import one_line
from toy_models.files import check_readable_file, set_cut_short
from toy_models.records import check_keys, dataclass_keys, is_finite_number, parse_json
from toy_models.tokenizer import text_of_token_texts

from .graph import (
    FORMAT_VERSION,
    GLOBAL_METHODS,
    MODES,
    QK_BIAS,
    QK_SOURCE_KINDS,
    QK_SOURCE_SIDES,
    RESERVED_SETTINGS,
    GlobalRecord,
    Graph,
    LogitRecord,
    NamedSide,
    QKAttribution,
    QKReason,
    QKSource,
    softmax_pair,
)
from .nodes import Kind, block_of, kind_at_stage, logit_stage, lorsa_stage
from .prune import open_rows, row_sums

SUFFIX = ".safetensors"
MAX_LAYERS = 1024  # far beyond any model here; bounds what a crafted header can make us allocate
MAX_NODES = 50_000_000
# the largest value of the file's int64 arrays: a header integer is compared with them or made
# a tensor (a group size of 10**20 raised OverflowError), so each is bounded by it
MAX_INT = 2**63 - 1
# the header's keys, as ``save_graph`` writes them
HEADER_KEYS = ("format_version", "prompt", "token_strings", "n_layers", "token_text",
               "logit_targets", "mode", "group_size", "positional", "global", "node_targets",
               "pruned", "qk", "model", "settings", "sha256")  # fmt: skip

_INT = (torch.int64, torch.int32)
_FLOAT = (torch.float32,)
NODE_FLOATS = ("activation", "value", "bias", "target_weight", "attention")
NODE_INTS = ("kind", "stage", "pos", "index", "attends")


class GraphFileError(ValueError):
    """A graph file that cannot be used; the message names the file and the field."""


# ----------------------------------------------------------------- writing
def save_graph(graph: Graph, path: str | Path) -> None:
    """Write ``graph`` to ``path`` atomically, after checking it exactly as ``load_graph``
    will: a graph that would not load back (a field edited by hand, edges of the wrong shape)
    is refused with the field named, and any file already at ``path`` is left as it was."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"{path}: graph files end in {SUFFIX}")
    try:
        tensors, metadata = _to_file(graph)
        _build(metadata, tensors, check_sha=False)
    except _Bad as bad:
        raise GraphFileError(f"{path}: not saved, field {bad.field}: {bad.problem}") from None
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
        why = one_line(exc)[:200]
        raise GraphFileError(f"{path}: not saved, not a valid graph ({why})") from None
    save_state_atomic(tensors, path, metadata=metadata)


def _to_file(graph: Graph) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the header metadata of ``graph``'s file."""
    csr = graph.edges
    tensors = {
        "kind": graph.kind,
        "stage": graph.stage,
        "pos": graph.pos,
        "index": graph.index,
        "activation": graph.activation,
        "value": graph.value,
        "bias": graph.bias,
        "target_weight": graph.target_weight,
        "attends": graph.attends,
        "attention": graph.attention,
        "promotes": graph.promotes,
        "edges.indptr": torch.from_numpy(csr.indptr.astype(np.int64)),
        "edges.indices": torch.from_numpy(csr.indices.astype(np.int64)),
        "edges.data": torch.from_numpy(csr.data.astype(np.float32)),
        "tokens": torch.tensor(graph.tokens, dtype=torch.int64),
    }
    if graph.influence is not None:
        tensors["influence"] = graph.influence
    if graph.occurrences is not None:
        tensors["occurrences"] = graph.occurrences
    if graph.key_share is not None:
        tensors["key_share"] = graph.key_share
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {
        "format_version": FORMAT_VERSION,
        "prompt": graph.prompt,
        "token_strings": graph.token_strings,
        "n_layers": graph.n_layers,
        "token_text": sorted([int(k), v] for k, v in graph.token_text.items()),
        "logit_targets": [_logit_entry(r) for r in graph.logit_targets],
        "mode": graph.mode,
        "group_size": graph.group_size,
        "positional": graph.positional,
        "global": None if graph.global_record is None else {"method": graph.global_record.method},
        "node_targets": graph.node_targets,
        "pruned": graph.pruned,
        "qk": [a.to_dict() for a in graph.qk],
        "model": graph.model,
        "settings": graph.settings,
    }
    header["sha256"] = content_sha256(tensors, header)
    try:
        return tensors, {"graph": json.dumps(header, allow_nan=False)}
    except ValueError:  # NaN or an infinity in settings or model, which JSON cannot carry
        raise GraphFileError("settings or model: holds NaN or an infinity, which a graph file "
                             "(JSON) cannot carry") from None  # fmt: skip


# ----------------------------------------------------------------- reading
def load_graph(path: str | Path) -> Graph:
    path = Path(path)
    if path.is_dir():
        raise GraphFileError(f"{path}: a directory, not a graph file ({SUFFIX})")
    check_readable_file(path, "graph file")
    mixed = set_cut_short(path)
    if mixed:
        raise GraphFileError(f"{path}: {mixed}")
    if path.suffix != SUFFIX:
        raise GraphFileError(
            f"{path}: graph files are {SUFFIX} (a .pt graph is a pickle, which is never read)"
        )
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise GraphFileError(f"{path}: not a readable graph file ({one_line(exc)[:200]})") from None
    try:
        return _build(metadata, tensors)
    except _Bad as bad:
        raise GraphFileError(f"{path}: field {bad.field}: {bad.problem}") from None


class _Bad(Exception):
    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem


def _require(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise _Bad(field, problem)


def _header(metadata: dict) -> dict:
    _require("graph" in metadata, "graph", "no graph header in the file's metadata")
    try:
        header = parse_json(metadata["graph"])
    except ValueError as exc:
        raise _Bad("graph", f"header is not JSON ({one_line(exc)[:200]})") from None
    _require(isinstance(header, dict), "graph", "header is not a JSON object")
    for name in ("settings", "model"):  # free-form: the writer's own check, so that a graph
        try:  # read back can be saved again (a fuzz pass); the other fields are typed
            json.dumps(header.get(name), allow_nan=False)
        except ValueError:
            raise _Bad(name, "holds NaN or an infinity, which no graph file carries") from None
    version = header.get("format_version")
    _require(
        version == FORMAT_VERSION,
        "format_version",
        f"{version!r}, expected {FORMAT_VERSION} (re-run the trace, or the global graph, that "
        "wrote it to rewrite the file)",
    )
    # a key ``save_graph`` never writes is another version's or a forgery, never ignored (a
    # fuzz pass read a re-signed file with keys of any name); settings and model stay free-form
    _keys(header, "graph", "header", (), HEADER_KEYS)
    return header


def _keys(value: dict, field: str, where: str, required, optional=()) -> None:
    """``check_keys`` as this reader's refusal of ``field``."""
    try:
        check_keys(value, where, required, optional)
    except ValueError as exc:
        raise _Bad(field, str(exc)) from None


def _typed(header: dict, name: str, kind: type | tuple[type, ...]):
    _require(name in header, name, "missing")
    value = header[name]
    bad_bool = isinstance(value, bool) and kind is int
    _require(isinstance(value, kind) and not bad_bool, name, f"expected {_name(kind)}")
    return value


def _name(kind) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def _tensor(tensors: dict, name: str, dtypes, shape: tuple[int, ...]) -> Tensor:
    _require(name in tensors, name, "missing")
    t = tensors[name]
    _require(t.dtype in dtypes, name, f"dtype {t.dtype}, expected {dtypes[0]}")
    _require(tuple(t.shape) == shape, name, f"shape {tuple(t.shape)}, expected {shape}")
    if t.dtype.is_floating_point and name not in ("value", "attention", "key_share"):
        _require(bool(torch.isfinite(t).all()), name, "has NaN or infinite values")
    return t.long() if t.dtype in _INT else t


def _build(metadata: dict, tensors: dict[str, Tensor], check_sha: bool = True) -> Graph:
    """The graph of a file's header and tensors, every field checked; ``check_sha=False``
    when the checksum was just computed from these very tensors (``save_graph``)."""
    header = _header(metadata)
    if check_sha:
        try:
            check_content_sha256(tensors, header)
        except ValueError as exc:
            raise _Bad("sha256", str(exc)) from None
    n_layers = _typed(header, "n_layers", int)
    _require(1 <= n_layers <= MAX_LAYERS, "n_layers", f"{n_layers} is outside 1..{MAX_LAYERS}")
    _require("kind" in tensors and tensors["kind"].ndim == 1, "kind", "missing or not 1-D")
    n = len(tensors["kind"])
    _require(n <= MAX_NODES, "kind", f"{n} nodes, more than {MAX_NODES}")
    node = {name: _tensor(tensors, name, _INT, (n,)) for name in NODE_INTS}
    node |= {name: _tensor(tensors, name, _FLOAT, (n,)) for name in NODE_FLOATS}
    _require("promotes" in tensors and tensors["promotes"].ndim == 2, "promotes", "not 2-D")
    top = tensors["promotes"].shape[1]
    promotes = _tensor(tensors, "promotes", _INT, (n, top))
    _require("tokens" in tensors and tensors["tokens"].ndim == 1, "tokens", "missing or not 1-D")
    tokens = _tensor(tensors, "tokens", _INT, (len(tensors["tokens"]),))
    optional = {
        name: _tensor(tensors, name, _FLOAT, (n,)) if name in tensors else None
        for name in ("influence", "occurrences", "key_share")
    }

    prompt = _typed(header, "prompt", str)
    token_strings = _typed(header, "token_strings", list)
    _require(all(isinstance(t, str) for t in token_strings), "token_strings", "not all strings")
    _require(len(token_strings) == len(tokens), "token_strings", "length differs from tokens")
    # a trace's prompt reads back from its token strings; a graph of no prompt (a global
    # graph, ``attribute`` without one) records ""
    _require(prompt in ("", text_of_token_texts(token_strings)), "prompt",
             "is not the text of the graph's token strings")  # fmt: skip
    mode = _typed(header, "mode", str)
    _require(mode in MODES, "mode", f"{mode!r} is not one of {', '.join(MODES)}")
    group_size = _typed(header, "group_size", int)
    _require(1 <= group_size <= MAX_INT, "group_size", f"{group_size} is outside 1..{MAX_INT}")
    positional = _typed(header, "positional", bool)
    global_record = _global_record(header, positional)
    pruned = _typed(header, "pruned", bool)
    _require("node_targets" in header, "node_targets", "missing")
    node_targets = header["node_targets"]  # null, or indices (``Graph.given_targets`` checks)
    _require(node_targets is None or (isinstance(node_targets, list) and all(
        type(i) is int for i in node_targets)), "node_targets",
        "expected null or a list of node indices")  # fmt: skip
    token_text = _token_text(_typed(header, "token_text", list))

    _check_nodes(node, n_layers, len(tokens), positional, group_size)
    share = optional["key_share"]
    if share is not None:  # the key's term over the activation: the largest term, so positive
        reads = node["attends"] >= 0  # heads only (checked above)
        _require(bool(share[~reads].isnan().all()), "key_share",
                 "not NaN on a node that reads no key (what the writer gives it)")  # fmt: skip
        ok = torch.isfinite(share[reads]) & (share[reads] > 0)
        _require(bool(ok.all()), "key_share",
                 "a head's share of its activation at its key is not a number > 0")  # fmt: skip
    _require(bool((promotes >= -1).all()), "promotes", "has negative token ids")
    unit = (node["kind"] == Kind.LORSA) | (node["kind"] == Kind.TRANSCODER)
    _require(bool((promotes[~unit] == -1).all()), "promotes",
             "set on a node that is no head or feature (-1 there)")  # fmt: skip
    _require(bool((tokens >= 0).all()), "tokens", "has negative token ids")
    edges = _edges(tensors, n, node["stage"])
    n_logits = int((node["kind"] == Kind.LOGIT).sum())
    logit_targets = _logit_targets(_typed(header, "logit_targets", list), n_logits, mode)
    logit_index = node["index"][node["kind"] == Kind.LOGIT].tolist()
    _require(
        [r.token for r in logit_targets] == logit_index,
        "logit_targets",
        "tokens do not match the logit nodes' indices",
    )
    _known_tokens(token_text, tokens, promotes, node, logit_targets)
    qk = _qk(_typed(header, "qk", list), n_layers, len(tokens))
    # what can be checked without the model (a forged file with its checksum recomputed
    # changed these: a fuzz pass): a prompt token's text is its position's string, and each
    # QK record is of a head the graph holds (below, where the graph owns that reading)
    mismatched = [i for i, t in enumerate(tokens.tolist())
                  if token_text.get(t, token_strings[i]) != token_strings[i]]  # fmt: skip
    _require(
        not mismatched,
        "token_text",
        f"the text of the token at position {mismatched[:1]} is not its token string",
    )
    _require(mode == "local" or not bool((node["kind"] == Kind.ERROR).any()), "mode",
             "a sparse graph has no error nodes")  # fmt: skip
    if positional:
        emb = node["kind"] == Kind.EMBEDDING
        _require(bool((node["index"][emb] == tokens[node["pos"][emb]]).all()), "index",
                 "an embedding node's index is not the prompt's token at its position")  # fmt: skip
    settings = _typed(header, "settings", dict)
    reserved = sorted(set(settings) & set(RESERVED_SETTINGS))
    _require(not reserved, "settings", f"keys {reserved} are the graph's own attributes")
    closure = settings.get("closure_error", {})
    _require(isinstance(closure, dict) and all(
        is_finite_number(v) and v >= 0 for v in closure.values()), "settings.closure_error",
        "must map names to finite numbers >= 0")  # fmt: skip
    graph = Graph(
        prompt=prompt,
        tokens=tokens.tolist(),
        token_strings=token_strings,
        n_layers=n_layers,
        **node,
        edges=edges,
        promotes=promotes,
        logit_targets=logit_targets,
        token_text=token_text,
        mode=mode,
        group_size=group_size,
        positional=positional,
        qk=qk,
        **optional,
        model=_model(_typed(header, "model", dict), len(tokens), mode),
        settings=settings,
        global_record=global_record,
        node_targets=node_targets,
        pruned=pruned,
    )
    _require(len(set(graph.ids)) == n, "kind", "two nodes have one id (kind, stage, position "
             "and index repeated)")  # fmt: skip
    if graph.direction is not None:  # grown from one unit, the target its page is titled by
        weights = node["target_weight"]
        _require(int((weights != 0).sum()) == 1 and float(weights.max()) == 1, "target_weight",
                 "a grown global graph's is not 1 on its start and 0 elsewhere")  # fmt: skip
    # the order the head and feature targets were given in (the graph owns the check)
    problem = graph.node_targets_problem()
    _require(problem is None, "node_targets", str(problem))
    # each QK record is of a head the graph holds at its query (``qk_attribution`` makes them
    # so, ``Graph.subgraph`` keeps them so), which ties ``group_size`` to the records
    heads = graph.qk_keys(torch.arange(n))
    stray = [
        (a.layer, a.qk_head, a.query) for a in qk if (a.layer, a.qk_head, a.query) not in heads
    ]
    _require(not stray, "qk", f"a record of (layer, qk_head, query) {stray[:1]} whose head the "
             "graph does not hold (or group_size is not the heads')")  # fmt: skip
    for name in ("untrained_targets", "model_top"):  # checked where the graph owns them
        try:
            getattr(graph, name)
        except ValueError as exc:
            raise _Bad(f"model.{name}", one_line(exc)) from None
    influence = optional["influence"]
    _require(influence is None or bool((influence >= 0).all()), "influence",
             "negative (it sums magnitudes)")  # fmt: skip
    # a share of the target weights' flow (``prune.influence``: each row's |edges| normalised
    # to 1), so at most their sum, itself at most 1 (checked above)
    top = 0.0 if influence is None or not len(influence) else float(influence.max())
    _require(top <= 1 + SAME, "influence", "above 1 (a share of the targets' weight, 1 at most)")
    if positional and not pruned:  # a full graph: every row closes
        _require(not len(open_rows(graph, *row_sums(graph.edges))), "edges",
                 "a full graph's incoming edges plus bias are not a node's activation (it "
                 "does not say it is pruned)")  # fmt: skip
    return graph


def _global_record(header: dict, positional: bool) -> GlobalRecord | None:
    """The header's ``global``: null for a prompt's graph, ``{"method": ...}`` (one of
    ``GLOBAL_METHODS``) for a global graph, which always says how it was made."""
    _require("global" in header, "global", "missing")
    value = header["global"]
    if positional:
        _require(value is None, "global", "a prompt's graph (positional) is no global graph")
        return None
    ok = isinstance(value, dict) and set(value) == {"method"} and value["method"] in GLOBAL_METHODS
    _require(ok, "global", f"a global graph's must be {{\"method\": one of "
             f"{', '.join(GLOBAL_METHODS)}}}, got {json.dumps(value)[:60]}")  # fmt: skip
    return GlobalRecord(value["method"])


def _model(model: dict, n_pos: int, mode: str) -> dict:
    """The ``model`` entry; its ``untrained_positions`` (when present: absent when the model
    does not record them, never null) are distinct prompt positions in increasing order; only
    a sparse graph gives ``model_top`` (``Graph.model_top`` checks its value; a graph built
    by hand may leave it out)."""
    _require("model_top" not in model or mode == "sparse", "model.model_top",
             "the model's own top token beside a graph's outside sparse mode")  # fmt: skip
    for key in ("replacement_sha256", "weights_sha256"):
        sha = model.get(key)
        _require(sha is None or isinstance(sha, str), f"model.{key}", "not a string")
    if "untrained_positions" in model:
        positions = model["untrained_positions"]
        ok = isinstance(positions, list) and all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p < n_pos for p in positions
        )
        _require(ok and positions == sorted(set(positions)), "model.untrained_positions",
                 "must be a list of distinct prompt positions in increasing order (or "
                 "absent)")  # fmt: skip
    return model


def _check_nodes(
    node: dict[str, Tensor], n_layers: int, n_pos: int, positional: bool, group_size: int
) -> None:
    kind, stage, pos, index = node["kind"], node["stage"], node["pos"], node["index"]
    _require(bool(((kind >= 0) & (kind <= max(Kind))).all()), "kind", "unknown kind code")
    top = logit_stage(n_layers)
    _require(bool(((stage >= 0) & (stage <= top)).all()), "stage", f"outside 0..{top}")
    _require(bool((stage[1:] >= stage[:-1]).all()), "stage", "nodes are not in stage order")
    for k in Kind:
        ok = kind_at_stage(k, stage[kind == k], top)
        _require(bool(ok.all()), "stage", f"a {k.label} node at the wrong stage")
    is_error = (kind == Kind.ERROR) | (kind == Kind.BIAS)
    _require(
        bool((index[is_error] == -1).all()), "index", "an error or bias node's index is not -1"
    )
    _require(bool((index[~is_error] >= 0).all()), "index", "negative index")
    if positional:
        _require(bool(((pos >= 0) & (pos < max(n_pos, 1))).all()), "pos", "outside the prompt")
    else:
        _require(bool((pos == 0).all()), "pos", "a global graph's units sit at position 0")
    attends = node["attends"]
    is_head = kind == Kind.LORSA
    _require(bool((attends[~is_head] == -1).all()), "attends", "set on a node that is no head")
    # a prompt's head reads a key up to its query (``attribution._read_keys`` gives each one);
    # a global graph's heads are units, which read none (-1)
    key = attends[is_head]
    ok = (key >= 0) & (key <= pos[is_head]) if positional else key == -1
    _require(bool(ok.all()), "attends", "a prompt's head reads no key up to its position, or a "
             "global graph's head reads one")  # fmt: skip
    reads = is_head & (attends >= 0)
    _require(bool(node["attention"][~reads].isnan().all()), "attention",
             "not NaN on a node that reads no key (what the writer gives it)")  # fmt: skip
    weight = node["attention"][reads]
    _require(bool(((weight >= 0) & (weight <= 1)).all()), "attention",
             "a head's pattern weight at its key is not in 0..1")  # fmt: skip
    # where influence starts (``prune.influence``): the logits' probabilities (their sum at
    # most 1) or equal shares of 1 among the targets named (``attribute``), 1 or shares of 1
    # in a global graph (``global_weights``)
    weights = node["target_weight"].double()
    _require(bool(((weights >= 0) & (weights <= 1)).all()), "target_weight", "outside 0..1")
    top_sum = 1 + SAME * max(1, int((weights > 0).sum())) ** 0.5
    _require(float(weights.sum()) <= top_sum, "target_weight",
             f"sums to {float(weights.sum()):.6g}, more than 1")  # fmt: skip
    # ``value`` is NaN where a node is no target, by design (``Graph.value``), and in a global
    # graph, whose units have no one value; a prompt's targets (``Graph.is_target``) have one.
    target = (kind == Kind.LOGIT) | (node["target_weight"] > 0)
    _require(not positional or bool(torch.isfinite(node["value"][target]).all()), "value",
             "NaN or infinite at a target (a logit, or a head or feature traced from)")  # fmt: skip
    # and NaN off them, where a node has no value; an infinity is no pre-activation anywhere
    _require(not bool(node["value"].isinf().any()), "value", "infinite off the targets")
    if positional:  # a head's, feature's or logit's value is its activation (its pre-activation)
        unit = (kind == Kind.LOGIT) | (kind == Kind.LORSA) | (kind == Kind.TRANSCODER)
        value, act = node["value"][unit].double(), node["activation"][unit].double()
        both = torch.isfinite(value)
        gap = (value[both] - act[both]).abs() > SAME * act[both].abs().clamp(min=1.0)
        _require(not bool(gap.any()), "value", "a head's, feature's or logit's value is not its "
                 "activation")  # fmt: skip


def _edges(tensors: dict[str, Tensor], n: int, stage: Tensor) -> sp.csr_array:
    indptr = _tensor(tensors, "edges.indptr", _INT, (n + 1,)).numpy()
    _require("edges.indices" in tensors, "edges.indices", "missing")
    nnz = len(tensors["edges.indices"])
    indices = _tensor(tensors, "edges.indices", _INT, (nnz,)).numpy()
    data = _tensor(tensors, "edges.data", _FLOAT, (nnz,)).numpy()
    _require(indptr[0] == 0 and indptr[-1] == nnz, "edges.indptr", "does not span the entries")
    _require(bool((np.diff(indptr) >= 0).all()), "edges.indptr", "decreases")
    _require(bool(((indices >= 0) & (indices < n)).all()), "edges.indices", f"outside 0..{n - 1}")
    rows = np.repeat(np.arange(n), np.diff(indptr))
    st = stage.numpy()
    _require(bool((st[indices] < st[rows]).all()), "edges", "an edge does not go up the stages")
    key = rows.astype(np.int64) * n + indices
    _require(bool((np.diff(key) > 0).all()), "edges.indices", "unsorted or repeated in a row")
    return sp.csr_array((data, indices.astype(np.int64), indptr), shape=(n, n))


def _known_tokens(
    token_text: dict[int, str],
    tokens: Tensor,
    promotes: Tensor,
    node: dict[str, Tensor],
    logit_targets: list[LogitRecord],
) -> None:
    """Every token id the graph refers to has a text in ``token_text``, where it has any: the
    writer gives one to each (``Graph.token_text``) when it has a tokenizer. The file holds no
    vocabulary size (nor a layer's head or feature count), so this is what bounds its token
    ids (a forged promoted token of 10**9 loaded); a model checks the rest
    (``attribution.check_replacement_fits``)."""
    if not token_text:
        return
    known = torch.tensor(sorted(token_text))
    is_token = (node["kind"] == Kind.EMBEDDING) | (node["kind"] == Kind.LOGIT)
    negatives = [r.negative for r in logit_targets if r.negative is not None]
    # (a sparse graph's model_top: ``Graph.model_top`` checks it against token_text)
    for field, ids in (("tokens", tokens), ("promotes", promotes[promotes >= 0]),
                       ("index", node["index"][is_token]),
                       ("logit_targets", torch.tensor(negatives, dtype=torch.long))):  # fmt: skip
        _require(bool(torch.isin(ids, known).all()), field,
                 "a token id that token_text gives no text of")  # fmt: skip


def _token_text(items: list) -> dict[int, str]:
    out = {}
    for item in items:
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)
        ok = ok and _is_int(item[0])
        _require(ok, "token_text", "entries must be [token id, text]")
        _require(item[0] not in out, "token_text", f"token {item[0]} has two entries")
        out[item[0]] = item[1]
    return out


def _logit_entry(r: LogitRecord) -> list:
    """A logit record as the header's entry (``_logit_targets`` reads it back)."""
    return [r.token, r.negative, r.probability, r.model_probability, r.negative_probability,
            r.model_negative_probability]  # fmt: skip


def _logit_targets(items: list, n_logits: int, mode: str) -> list[LogitRecord]:
    _require(len(items) == n_logits, "logit_targets", f"{len(items)} records, {n_logits} logits")
    records = []
    for item in items:
        ok = isinstance(item, list) and len(item) == 6
        ok = ok and _is_int(item[0]) and (item[1] is None or _is_int(item[1]))
        ok = ok and all(is_finite_number(p) and 0 <= p <= 1 for p in item[2:] if p is not None)
        ok = ok and item[2] is not None
        _require(ok, "logit_targets", "entries must be [token, negative or null, probability, "
                 "the model's probability or null, the negative's probability or null, the "
                 "model's probability of the negative or null]")  # fmt: skip
        token, negative, p, model_p, negative_p, model_negative_p = item
        _require(negative != token, "logit_targets", "a difference of a token with itself")
        sparse = mode == "sparse"
        _require(model_p is None or sparse, "logit_targets",
                 "the model's probability beside a graph's own outside sparse mode")  # fmt: skip
        _require(negative_p is None or negative is not None, "logit_targets",
                 "a negative token's probability where the target is a single token")  # fmt: skip
        _require(model_negative_p is None or (sparse and negative_p is not None
                                              and model_p is not None),
                 "logit_targets", "the model's probability of a negative token outside sparse "
                 "mode, or without the graph's own or the model's of the positive")  # fmt: skip
        _require(softmax_pair(p, negative_p) and softmax_pair(model_p, model_negative_p),
                 "logit_targets", "a difference's two probabilities sum above 1")  # fmt: skip
        number = lambda x: None if x is None else float(x)  # noqa: E731
        records.append(LogitRecord(token, negative, float(p), number(model_p),
                                   number(negative_p), number(model_negative_p)))  # fmt: skip
    return records


def _is_int(x) -> bool:
    """A non-negative integer that fits the file's int64 arrays (``MAX_INT``)."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT


_QK_INTS = ("layer", "qk_head", "query", "key")
_QK_FLOATS = ("attention", "score", "rest")


def _qk(items: list, n_layers: int, n_pos: int) -> list[QKAttribution]:
    out, seen = [], set()
    for i, d in enumerate(items):
        _require(isinstance(d, dict), "qk", "records must be objects")
        _keys(d, "qk", f"record {i}", *dataclass_keys(QKAttribution))
        for name in _QK_INTS:
            _require(_is_int(d.get(name)), f"qk.{name}", "expected a non-negative integer")
        _require(d["layer"] < n_layers, "qk.layer", f"outside 0..{n_layers - 1}")
        _require(d["query"] < max(n_pos, 1), "qk.query", "outside the prompt")
        _require(d["key"] <= d["query"], "qk.key", "after its query")
        where = tuple(d[name] for name in _QK_INTS)
        _require(where not in seen, "qk", f"two records for (layer, qk_head, query, key) {where}")
        seen.add(where)
        for name in _QK_FLOATS:
            _require(is_finite_number(d.get(name)), f"qk.{name}", "expected a finite number")
        _require(0 <= d["attention"] <= 1, "qk.attention", "outside 0..1")
        layer, query, key = d["layer"], d["query"], d["key"]
        named = _named(d.get("named", {}), layer, n_pos)

        for name, key_form in (("pairs", "node"), ("contrast_pairs", "unit")):
            _require(isinstance(d.get(name, []), list), f"qk.{name}", "expected a list")
            for p in d.get(name, []):
                ok = isinstance(p, list) and len(p) == 3 and is_finite_number(p[2])
                ok = ok and _names_side(p[0], named, query, "node")
                _require(ok and _names_side(p[1], named, key, key_form), f"qk.{name}",
                         "entries must be [query id, key id, value], ids of what the layer "
                         "reads at the query and key")  # fmt: skip
        for name, at in (("query_marginals", query), ("key_marginals", key)):
            _require(isinstance(d.get(name, []), list), f"qk.{name}", "expected a list")
            for m in d.get(name, []):
                ok = isinstance(m, list) and len(m) == 2 and is_finite_number(m[1])
                _require(ok and _names_side(m[0], named, at, "node"), f"qk.{name}",
                         "entries must be [node id at its side's position or null, "
                         "value]")  # fmt: skip
        contrast = d.get("contrast")
        _require(contrast is None or is_finite_number(contrast), "qk.contrast", "expected a number")
        if contrast is not None:
            _check_contrast(contrast, d["score"], d["attention"], query)
        _closes([p[2] for p in d.get("pairs", [])] + [d["rest"]], d["score"], "qk.pairs",
                "its pairs plus rest are not its score")  # fmt: skip
        if d.get("reason") is not None:
            _check_reason(d["reason"], named, query, key)
            r = d["reason"]
            parts = [r[x] for x in _REASON_FLOATS[:4]]
            _closes(parts, d["score"], "qk.reason", "its four parts are not the score")
            _closes([p[2] for p in r["pairs"]] + [r["rest"]], r["specific"], "qk.reason.pairs",
                    "its pairs plus rest are not the specific part")  # fmt: skip
            if contrast is not None:  # both read the key's deviation from the mean key
                _closes([r["mean_query_vs_key"], r["specific"]], contrast, "qk.contrast",
                        "not the reason's mean query x key plus its specific part")  # fmt: skip
        _check_sources(d.get("sources", []), named, d["query"], d["key"])
        try:
            record = QKAttribution.from_dict(d)
        except (KeyError, TypeError) as exc:
            raise _Bad("qk", one_line(exc)[:200]) from None
        _require(set(record.names()) == set(record.named), "qk.named",
                 "must give the fields of exactly the ids the record names")  # fmt: skip
        out.append(record)
    return out


_NAMED_KINDS = {k.label: k for k in (Kind.EMBEDDING, Kind.LORSA, Kind.TRANSCODER, Kind.ERROR,
                                     Kind.BIAS)}  # fmt: skip


def _named(named, layer: int, n_pos: int) -> dict[str, NamedSide]:
    """A QK record's ``named``: for each id, the fields of something of a kind and stage that
    Lorsa layer ``layer`` reads (a token or the position vector at stage 0, a head, feature,
    error or bias of a sublayer below it), at a position in the prompt or none (a unit), whose
    id they make. (Indices are not checked against the model's sizes, which the file does not
    hold: a record names, it is never indexed with.)"""
    _require(isinstance(named, dict), "qk.named", "expected an object")
    out = {}
    for name, fields in named.items():
        ok = isinstance(fields, list) and len(fields) == 4 and isinstance(fields[0], str)
        ok = ok and fields[0] in _NAMED_KINDS  # (a dict there raised TypeError: a fuzz pass)
        ok = ok and _is_int(fields[1]) and type(fields[2]) is int and -1 <= fields[2] <= MAX_INT
        ok = ok and (fields[3] is None or (_is_int(fields[3]) and fields[3] < max(n_pos, 1)))
        _require(ok, "qk.named", f"{name!r}: expected [kind, stage, index, position or null]")
        kind, stage, index, pos = fields
        kind = _NAMED_KINDS[kind]
        # stage 0 or a sublayer below the layer's own; an error or bias has no index
        ok = bool(kind_at_stage(kind, stage)) and stage < lorsa_stage(layer)
        ok = ok and (index == -1 if kind in (Kind.ERROR, Kind.BIAS) else index >= 0)
        _require(ok, "qk.named", f"{name!r}: not something Lorsa layer {layer} reads")
        side = NamedSide(kind, stage, index, pos)
        _require(side.id == name, "qk.named", f"{name!r}: its fields make the id {side.id!r}")
        out[name] = side
    return out


SAME = 1e-5  # relative: a sum or a copy that is the same number, written as float32 or JSON


def _closes(terms: list[float], total: float, field: str, problem: str) -> None:
    """That ``terms`` sum to ``total`` within ``SAME`` of the largest magnitude involved."""
    scale = max([1.0, abs(total), *(abs(x) for x in terms)])
    _require(abs(math.fsum(terms) - total) <= SAME * scale * max(1, len(terms)) ** 0.5, field,
             problem)  # fmt: skip


def _check_contrast(contrast: float, score: float, attention: float, query: int) -> None:
    """A QK record's contrast, its key's score minus the mean score of the ``query + 1`` keys
    the query reads, is bounded by its attention even without a reason to close it against
    (a review: any finite number loaded): the mean is at most the log-mean-exp (Jensen), so
    ``contrast >= log(attention) + log(query + 1)``; with one key it is 0. Within float32's
    error on scores of the record's size."""
    slack = 1e-4 * max(1.0, abs(score), abs(contrast))
    _require(query > 0 or abs(contrast) <= slack, "qk.contrast", "not 0 at a query of one key")
    if attention > 0:
        least = math.log(attention) + math.log(query + 1)
        _require(contrast >= least - slack, "qk.contrast", f"below log(attention) + "
                 f"log(query + 1) = {least:.6g}, the least its attention allows")  # fmt: skip


_REASON_FLOATS = (
    "mean_query_mean_key", "query_vs_mean_key", "mean_query_vs_key", "specific", "rest",
    "rest_share",
)  # fmt: skip


def _check_reason(r, named: dict[str, NamedSide], query: int, key: int) -> None:
    _require(isinstance(r, dict), "qk.reason", "expected an object or null")
    _keys(r, "qk.reason", "it", QKReason.__dataclass_fields__)
    for name in _REASON_FLOATS:
        _require(is_finite_number(r[name]), f"qk.reason.{name}", "expected a number")
    # a share of the specific terms' magnitude (as a summary file bounds it; -1e308 loaded)
    _require(0 <= r["rest_share"] <= 1, "qk.reason.rest_share", "outside 0..1")
    for p in r["pairs"] if isinstance(r["pairs"], list) else [None]:
        ok = isinstance(p, list) and len(p) == 3 and is_finite_number(p[2])
        ok = ok and _names_side(p[0], named, query, "either")
        ok = ok and _names_side(p[1], named, key, "either")
        _require(ok, "qk.reason.pairs", "entries must be [query id, key id, value]")
    for name, at in (("query_units", query), ("key_units", key)):
        for m in r[name] if isinstance(r[name], list) else [None]:
            ok = isinstance(m, list) and len(m) == 2 and is_finite_number(m[1])
            _require(ok and _names_side(m[0], named, at, "either"), f"qk.reason.{name}",
                     "bad entry")  # fmt: skip


def _names_side(x, named: dict[str, NamedSide], at: int, form: str) -> bool:
    """Whether ``x`` names one side of a QK term by the record's ``named`` fields: a node at
    position ``at`` (``form`` "node"; null: the bias side), a unit (a node id without the
    position; "unit": the bias side is ``QK_BIAS``), or either ("either", for a ``QKReason``).
    A pruned graph's records name nodes it dropped, which their fields describe."""
    if x is None:
        return form != "unit"
    if form == "unit" and x == QK_BIAS:
        return True
    side = named.get(x) if isinstance(x, str) else None
    if side is None:
        return False
    if form == "node":
        return side.pos == at
    return side.pos is None or (form == "either" and side.pos == at)


def _check_sources(sources, named: dict[str, NamedSide], query: int, key: int) -> None:
    """A QK record's ``QKSource`` entries: every field typed, a known side and kind, at a
    position up to its side's (the query's or the key's), members named."""
    _require(isinstance(sources, list), "qk.sources", "expected a list")
    for i, x in enumerate(sources):
        _require(isinstance(x, dict), "qk.sources", "entries must be objects")
        _keys(x, "qk.sources", f"entry {i}", QKSource.__dataclass_fields__)
        _require(x["side"] in QK_SOURCE_SIDES, "qk.sources.side", f"not one of {QK_SOURCE_SIDES}")
        _require(x["kind"] in QK_SOURCE_KINDS, "qk.sources.kind", f"not one of {QK_SOURCE_KINDS}")
        _require(_is_int(x["pos"]), "qk.sources.pos", "expected a non-negative integer")
        token = x["kind"] == "embedding"
        layer = x["layer"]
        minus_one = isinstance(layer, int) and not isinstance(layer, bool) and layer == -1
        _require(minus_one and x["attends"] is None if token else _is_int(layer),
                 "qk.sources.layer", "expected -1 for a token (which reads no key), else a "
                 "non-negative integer")  # fmt: skip
        at = query if x["side"] == "query" else key
        _require(x["pos"] == at if token else x["pos"] <= at, "qk.sources.pos",
                 "a token not at its side's position, or a source after it")  # fmt: skip
        _require(x["attends"] is None or (_is_int(x["attends"]) and x["attends"] <= x["pos"]),
                 "qk.sources.attends", "expected null or a key up to its position")  # fmt: skip
        members = x["members"]
        _require(isinstance(members, list) and members and all(isinstance(m, str)
                 and m in named and named[m].pos is not None and named[m].pos <= at
                 for m in members), "qk.sources.members",
                 "expected ids of nodes the record names, up to its side's position")  # fmt: skip
        # a group of heads, a feature or an error node is of its members' kind and block (a
        # fault pass loaded a source of layer 10**12 in a 2-layer model)
        _require(token or all(named[m].kind == Kind.parse(x["kind"])
                              and block_of(named[m].stage) == layer for m in members),
                 "qk.sources.members", "a member not of the source's kind and "
                 "layer")  # fmt: skip
        _require(is_finite_number(x["value"]), "qk.sources.value", "expected a finite number")


__all__ = ["GraphFileError", "load_graph", "save_graph"]
