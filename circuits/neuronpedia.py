"""A Graph in the attribution-graph JSON schema of circuit-tracer / Neuronpedia.

``metadata``, ``qParams``, ``nodes`` and ``links``, with one small constructor per node kind
(as circuit-tracer's ``frontend/graph_models.py`` has). Node ids and the sublayer "layer"
come from ``circuits.nodes``; readable labels (``clerp``) are given by the caller
(``reports.labels.node_labels``), since labels are presentation, except for logits, whose
``clerp`` has circuit-tracer's form (``Output ' Julia' (p=0.997)``), which its page parses,
and whose ``token_prob`` is that same probability: the one of the token in ``feature``.
Lorsa nodes carry their QK attributions in ``qk``; logit nodes their resolved target.

What the graph explains: ``is_target_logit`` marks its logit nodes, as circuit-tracer's schema
does. A graph traced from a head or feature (``NodeTarget``) explains that node, which is no
logit: marking it ``is_target_logit`` would put a head among the outputs, whose ``clerp`` the
page parses for a probability. So every node also has ``is_target`` (``Graph.is_target``: the
logits and any head or feature traced from), a field circuit-tracer's models ignore, and
``metadata.info.targets`` lists the targets' ids: the root a viewer starts from.

A head's or feature's ``feature`` is circuit-tracer's feature number (schema version 1):
the Cantor pairing of its sublayer and its index (``feature_number``), unique over the whole
model; viewers unpair it for the label and load the unit's feature file ``{scan}/{feature}.json``
(``reports.feature_files``). Other nodes keep their index (an embedding's token, a logit's
token, -1 for errors).
"""

from __future__ import annotations

from .graph import Graph, checked_count, checked_graph, probability_words
from .nodes import CONVENTION_ACTIVATION, Kind, is_attention, sublayer

FEATURE_TYPE = {
    Kind.EMBEDDING: "embedding",
    Kind.LORSA: "lorsa",
    Kind.TRANSCODER: "cross layer transcoder",
    Kind.LOGIT: "logit",
}
SCHEMA_VERSION = 1


def feature_number(sublayer: int, index: int) -> int:
    """circuit-tracer's number of unit ``index`` of ``sublayer``: the Cantor pairing
    ``(x + y)(x + y + 1) / 2 + y`` of x = sublayer, y = index (one-to-one on pairs >= 0)."""
    sublayer = checked_count(sublayer, "sublayer", least=0)
    index = checked_count(index, "index", least=0)
    return (sublayer + index) * (sublayer + index + 1) // 2 + index


def _layer(kind: Kind, stage: int) -> str:
    if kind == Kind.EMBEDDING or stage == 0:  # a token's embedding, a position vector
        return "E"
    return str(stage if kind == Kind.LOGIT else sublayer(stage))


def _feature_type(kind: Kind, stage: int) -> str:
    if kind == Kind.ERROR:
        return f"{'attention' if is_attention(stage) else 'mlp'} reconstruction error"
    if kind == Kind.BIAS:
        return "position embedding" if stage == 0 else \
            f"{'attention' if is_attention(stage) else 'mlp'} bias"  # fmt: skip
    return FEATURE_TYPE[kind]


def _node(graph: Graph, i: int, label: str, target: bool) -> dict:
    kind = Kind(int(graph.kind[i]))
    stage, pos = int(graph.stage[i]), int(graph.pos[i])
    influence = None if graph.influence is None else float(graph.influence[i])
    feature = int(graph.index[i])
    if kind in (Kind.LORSA, Kind.TRANSCODER) and feature >= 0:
        feature = feature_number(sublayer(stage), feature)
    node = {
        "node_id": graph.ids[i],
        "jsNodeId": graph.ids[i],
        "feature": feature,
        "layer": _layer(kind, stage),
        "ctx_idx": pos,
        "reverse_ctx_idx": len(graph.tokens) - 1 - pos,
        "run_idx": 0,
        "feature_type": _feature_type(kind, stage),
        "clerp": label,
        "activation": None if kind in CONVENTION_ACTIVATION else float(graph.activation[i]),
        "influence": influence,
        "is_target_logit": kind == Kind.LOGIT,
        "is_target": target,
        "token_prob": 0.0,
    }
    if kind == Kind.LOGIT:
        record = graph.logit_record(i)
        # circuit-tracer's token_prob is the probability of the node's token (its feature);
        # a difference's feature is its positive token, so that token's probability.
        node["token_prob"] = record.probability
        node["logit_target"] = {"token": record.token, "negative": record.negative}
        node["clerp"] = _logit_clerp(graph, i)
    qk = graph.qk_for(i)
    if qk:
        node["qk"] = [a.to_dict() for a in qk]
    return node


def _logit_clerp(graph: Graph, i: int) -> str:
    """circuit-tracer's logit ``clerp``, ``Output ' Julia' (p=0.997)``: its page reads the
    probability back from the "(p=...)" (and fails to draw a graph whose logits lack it), as
    the number up to the next ")". A difference names the token its probability is of, before
    the "(p=...)" so the page still reads it, and its negative's after the ")": ``Output
    ' Mary' - ' Tom' = 2.554; ' Mary' (p=0.997), ' Tom' p=0.001``; a difference has no
    probability of its own. In sparse mode the probability is the replacement's, and the
    model's follows after the ")" (a difference's two, each named): ``Output ' Z' (p=0.753)
    model p=0.200``. A probability under 0.001 keeps two significant figures
    (``probability_words``: ``model p=0.000`` read as zero for 0.00015)."""
    record = graph.logit_record(i)
    token = repr(graph.token(record.token))
    text = token
    if record.negative is not None:
        text += f" - {graph.token(record.negative)!r} = {float(graph.value[i]):.3f}; {token}"
    after = ""  # after the ")", where the page reads nothing: the negative's, the model's
    if record.negative_probability is not None:
        after += (f", {graph.token(record.negative)!r} "
                  f"p={probability_words(record.negative_probability)}")  # fmt: skip
    theirs = record.model_probability
    if theirs is not None:
        after += f" model p={probability_words(theirs)}"
        if record.model_negative_probability is not None:  # each token named, as the summary
            after += (f" for {token}, {probability_words(record.model_negative_probability)} "
                      f"for {graph.token(record.negative)!r}")  # fmt: skip
    return f"Output {text} (p={probability_words(record.probability)}){after}"


def to_json(
    graph: Graph,
    labels: list[str],
    slug: str = "graph",
    scan: str | None = None,
    supernodes: list[list[str]] | None = None,
) -> dict:
    """The graph as circuit-tracer / Neuronpedia JSON; ``labels[i]`` is node i's ``clerp``
    (logits: module docstring).
    ``scan`` names where viewers find the units' feature files (default: the model's name);
    ``supernodes`` the ``qParams`` groups a viewer starts from, ``[name, id, id, ...]`` each
    (this project's page: a mechanism summary's groups)."""
    if len(labels) != checked_graph(graph).n_nodes:
        raise ValueError(f"{len(labels)} labels for {graph.n_nodes} nodes")
    if not all(isinstance(label, str) for label in labels):
        raise ValueError("labels must be strings, one per node (reports.labels.node_labels)")
    targets = graph.is_target.tolist()
    nodes = [_node(graph, i, labels[i], targets[i]) for i in range(graph.n_nodes)]
    coo = graph.edges.tocoo()
    ids = graph.ids
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(w)}
        for t, s, w in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True)
    ]
    metadata = {
        "slug": slug,
        "scan": graph.model.get("name", "unknown") if scan is None else scan,
        "transcoder_list": [],
        "prompt_tokens": graph.token_strings,
        "prompt": graph.prompt,
        "node_threshold": graph.settings.get("node_threshold"),
        "schema_version": SCHEMA_VERSION,
        "info": {
            "model": graph.model,
            "mode": graph.mode,
            "positional": graph.positional,
            # how a global graph was made (``GlobalRecord.to_dict``); None: a prompt's graph
            "global": None if graph.global_record is None else graph.global_record.to_dict(),
            # the head and feature targets in the order given (``Graph.given_targets``), and
            # whether the graph is a part of its full graph (``Graph.pruned``)
            "node_targets": [ids[i] for i in graph.given_targets()],
            "pruned": graph.pruned,
            "settings": graph.settings,
            # in the order the summary and the printout give (logits, then head and feature
            # targets as given: a review found node order here against the given one there)
            "targets": [ids[i] for i in graph.target_order()],
        },
    }
    q_params = {
        "pinnedIds": [],
        "supernodes": checked_supernodes(graph, supernodes or []),
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def checked_supernodes(graph: Graph, supernodes) -> list[list[str]]:
    """``qParams.supernodes`` of ``graph``, checked: a list of ``[name, id, id, ...]`` lists,
    each of two different ids or more of the graph's nodes, under a non-empty name no other
    takes, no node in two (a page keys supernodes by name); ids repeated within one are kept
    once. The one check of them, for ``to_json`` and the viewer's ``check_q_params``."""
    if not isinstance(supernodes, list):
        raise ValueError(f"qParams.supernodes must be a list of [name, id, id, ...] lists, got "
                         f"{type(supernodes).__name__}")  # fmt: skip
    known = graph.id_to_index
    groups, taken = [], set()
    for group in supernodes:
        if (
            not isinstance(group, list)
            or len(group) < 3
            or not all(isinstance(x, str) for x in group)
        ):
            raise ValueError("qParams.supernodes: each is [name, id, id, ...], two ids or more")
        members = list(dict.fromkeys(group[1:]))
        if len(members) < 2:
            raise ValueError(f"qParams.supernodes {group[0][:60]!r}: two different ids or more")
        if not group[0].strip() or group[0] in [g[0] for g in groups]:
            raise ValueError(f"qParams.supernodes {group[0][:60]!r}: names must be non-empty and "
                             "unique (supernodes are keyed by name)")  # fmt: skip
        bad = [m for m in members if m not in known or m in taken]
        if bad:
            raise ValueError(f"qParams.supernodes {group[0][:60]!r}: {bad[0][:60]!r} unknown or "
                             "in two")  # fmt: skip
        taken.update(members)
        groups.append([group[0], *members])
    return groups
