"""Small hand-built graphs for the report tests (no model): every node kind, signed edges,
QK records, hostile text; and a big random one shaped like a real pruned graph."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from circuits.graph import Graph, LogitRecord, NamedSide, QKAttribution, QKPair, no_promotes
from circuits.nodes import Kind, node_id

NASTY = 'say "hi" \\N <b> & &lt; co\nline2 Ġ ☃ <|bos|>'
TOKENS = [0, 4, 6, 9]
TOKEN_STRINGS = ["<|bos|>", 'Ġ"q"', "a\\b", "&x"]


# Tokens the hand-built graphs' features promote, with their texts (NASTY among them).
PROMOTED = {100: NASTY, 101: "digits", 102: "say 9"}


# The fields of the ids hand-built QK records name that are no node of their graph: what a
# trace's producer knows of the nodes a pruned graph dropped, and of units (no position).
OTHER_SIDES = {
    s.id: s
    for s in (
        NamedSide(Kind.TRANSCODER, 2, 99, 3),  # 1_99_3: pruned away
        NamedSide(Kind.TRANSCODER, 2, 17, None),  # 1_17: a unit
        NamedSide(Kind.EMBEDDING, 0, 9, None),  # E_9
        NamedSide(Kind.EMBEDDING, 0, 4, None),  # E_4
        NamedSide(Kind.BIAS, 1, -1, 1),  # 0_bias_1
        NamedSide(Kind.BIAS, 3, -1, 1),  # 2_bias_1
        NamedSide(Kind.ERROR, 1, -1, 3),  # 0_-1_3
        NamedSide(Kind.LORSA, 1, 6, 0),  # 0_6_0: a pruned head of block 0 (a QK source)
    )
}


def name_sides(graph: Graph) -> Graph:
    """Give each of ``graph``'s QK records the fields of the ids it names
    (``QKAttribution.named``), as a trace's producers do: its own node's where the graph has
    the node, else ``OTHER_SIDES``'."""

    def fields(name: str) -> NamedSide:
        i = graph.id_to_index.get(name)
        return OTHER_SIDES[name] if i is None else graph.side(i)

    for a in graph.qk:
        a.name_fields(fields)
    return graph


def build_graph(rows, *, n_layers, tokens, token_strings, token_text, **fields) -> Graph:
    """A Graph from ``(kind, stage, pos, index, extra)`` rows in stage order, where ``extra``
    is a head's attended key, a feature's promoted token, or a logit's (token, negative, p)."""
    n = len(rows)
    attends = torch.tensor([r[4] if r[0] == "lorsa" else -1 for r in rows])
    promotes = no_promotes(n)
    for i, r in enumerate(rows):
        if r[0] == "transcoder":
            promotes[i, 0] = r[4]
    records = [LogitRecord(*r[4]) for r in rows if r[0] == "logit"]
    graph = Graph(
        tokens=tokens,
        token_strings=token_strings,
        n_layers=n_layers,
        kind=torch.tensor([Kind.parse(r[0]) for r in rows]),
        stage=torch.tensor([r[1] for r in rows]),
        pos=torch.tensor([r[2] for r in rows]),
        index=torch.tensor([r[3] for r in rows]),
        value=torch.full((n,), float("nan")),
        bias=torch.zeros(n),
        attends=attends,
        attention=torch.where(attends >= 0, 0.5, float("nan")),
        key_share=torch.where(attends >= 0, 0.4, float("nan")),  # under SPREAD_SHARE: named so
        promotes=promotes,
        logit_targets=records,
        token_text=token_text,
        **fields,
    )
    # A target's value is its pre-activation, never NaN (a graph file refuses one that is).
    graph.value[graph.is_target] = graph.activation[graph.is_target]
    return graph


def make_graph(*, influence: bool = True) -> Graph:
    """Two blocks, four positions, every node kind, signed edges and two QK attributions.

    ``(kind, stage, pos, index, extra)`` rows, already in stage order as ``Graph`` requires.
    """
    n_layers = 2
    rows = [("embedding", 0, p, TOKENS[p], None) for p in range(len(TOKENS))]
    rows += [
        ("lorsa", 1, 2, 5, 1),  # reads key 1, where its QK record is
        ("error", 1, 2, -1, None),
        ("transcoder", 2, 1, 17, 100),
        ("transcoder", 2, 3, 3, 101),
        ("error", 2, 3, -1, None),
        ("lorsa", 3, 3, 2, 1),  # reads key 1, where its QK record is
        ("transcoder", 4, 3, 9, 102),
        ("logit", 5, 3, 11, (11, None, 0.7)),
        ("logit", 5, 3, 7, (7, None, 0.3)),
    ]
    ids = [node_id(Kind.parse(k), s, p, i) for k, s, p, i, _ in rows]
    n = len(rows)
    col = {name: j for j, name in enumerate(ids)}
    # (source, target, weight): the strongest is negative, so colours and widths both matter.
    edge_list = [
        ("E_6_2", "0_5_2", 0.5),
        ("E_4_1", "0_5_2", 1.5),
        ("E_4_1", "1_17_1", 2.0),
        ("E_9_3", "1_3_3", -0.25),
        ("0_5_2", "1_3_3", 1.0),
        ("0_-1_2", "1_3_3", 0.1),
        ("1_17_1", "2_2_3", 0.75),
        ("1_3_3", "3_9_3", 3.0),
        ("1_-1_3", "3_9_3", -0.5),
        ("2_2_3", "3_9_3", 1.25),
        ("3_9_3", "5_11_3", 2.5),
        ("3_9_3", "5_7_3", -4.0),
        ("E_0_0", "5_7_3", 0.0),  # an explicit zero: not an edge worth drawing
    ]
    t = [col[b] for _, b, _ in edge_list]
    s = [col[a] for a, _, _ in edge_list]
    w = [x for _, _, x in edge_list]
    edges = sp.csr_array((np.array(w, np.float32), (t, s)), shape=(n, n))
    qk = [
        # L0 head 5 is QK head 2 (group size 2): query at 2, key at 1.
        QKAttribution(
            layer=0,
            qk_head=2,
            query=2,
            key=1,
            attention=0.8,
            score=3.0,
            pairs=[QKPair("E_6_2", "E_4_1", 2.0), QKPair(None, "E_4_1", 0.6)],
            query_marginals=[("E_6_2", 2.2)],
            key_marginals=[("E_4_1", 2.6)],
            rest=0.4,
        ),
        # The same pattern at BOS, where another head of QK group 2 reads (L0 head 5 reads 1):
        # its panel lists it second; nothing is drawn from it (E_0_0 stays undrawn).
        QKAttribution(
            layer=0,
            qk_head=2,
            query=2,
            key=0,
            attention=0.1,
            score=0.5,
            pairs=[QKPair("E_6_2", "E_0_0", 0.4)],
            query_marginals=[("E_6_2", 0.4)],
            key_marginals=[("E_0_0", 0.4)],
            rest=0.1,
        ),
        # L1 head 2 is QK head 1. The largest pair's query side was pruned away (not in the
        # graph) and the second's key side is the bias, so each side needs a later pair.
        QKAttribution(
            layer=1,
            qk_head=1,
            query=3,
            key=1,
            attention=0.6,
            score=-1.0,
            pairs=[
                QKPair("1_99_3", "1_17_1", -4.0),
                QKPair("1_3_3", None, 1.5),
                QKPair(None, None, 0.2),
            ],
            query_marginals=[("1_99_3", -3.0), ("1_3_3", 1.0)],
            key_marginals=[("1_17_1", -2.0)],
            rest=1.3,
        ),
    ]
    graph = build_graph(
        rows,
        n_layers=n_layers,
        tokens=TOKENS,
        token_strings=TOKEN_STRINGS,
        token_text={**dict(zip(TOKENS, TOKEN_STRINGS, strict=True)), **PROMOTED, 11: "9", 7: "7"},
        prompt="".join(TOKEN_STRINGS[1:]),  # what a trace's prompt is: its tokens' text
        activation=torch.linspace(0.5, 2.0, n),
        target_weight=torch.tensor([0.0] * (n - 2) + [0.7, 0.3]),
        edges=edges,
        qk=qk,
        influence=torch.linspace(0.1, 1.0, n).flip(0) if influence else None,
        model={"name": "toy <tiny>"},
        mode="local",
        group_size=2,
        # an excerpt of a larger graph, as a trace's pruned one is (its rows need not close)
        pruned=True,
        settings={
            "scores": {"replacement": 0.75, "completeness": 0.9},
            "node_threshold": 0.8,
            "unpruned": {"nodes": 40, "edges": 400},
        },
    )
    assert graph.ids == ids
    return name_sides(graph)


def make_big_graph(
    *,
    influence: bool = True,
    n_pos: int = 21,
    seed: int = 0,
    units: int = 32,
    fan_in: int = 24,
    logits: int = 2,
) -> Graph:
    """Shaped like a real pruned graph: one embedding per position, ``units`` heads and
    features per sublayer, mostly at the last position, error nodes, ``logits`` logits (two
    by default, each further one of probability 0.01) and up to ``fan_in`` random edges into
    each node (a few thousand by default)."""
    rng = np.random.default_rng(seed)
    n_layers, last = 2, n_pos - 1
    rows = [("embedding", 0, p, p, None) for p in range(n_pos)]
    for layer in range(n_layers):
        for kind, stage in (("lorsa", 2 * layer + 1), ("transcoder", 2 * layer + 2)):
            for k in range(units):
                p = last if k < units - 6 else int(rng.integers(1, last))
                rows.append((kind, stage, p, k, p - 1 if kind == "lorsa" else 100 + k))
            rows.append(("error", stage, last, -1, None))
    rows += [("logit", 2 * n_layers + 1, last, 7, (7, None, 0.6))]
    rows += [("logit", 2 * n_layers + 1, last, 9, (9, None, 0.3))]
    more = [200 + j for j in range(logits - 2)]  # token ids of the logits past two
    rows += [("logit", 2 * n_layers + 1, last, t, (t, None, 0.01)) for t in more]
    rows.sort(key=lambda r: (r[1], r[2], r[3]))
    n = len(rows)
    stage = np.array([r[1] for r in rows])
    t, s = [], []
    for target in range(n):
        lower = np.flatnonzero(stage < stage[target])
        if len(lower):
            picked = rng.choice(lower, size=min(fan_in, len(lower)), replace=False)
            t += [target] * len(picked)
            s += picked.tolist()
    weights = rng.normal(size=len(t)).astype(np.float32)
    token_text = {p: f"t{p}" for p in range(n_pos)} | {100 + k: f" w{k}" for k in range(units)}
    return build_graph(
        rows,
        n_layers=n_layers,
        tokens=list(range(n_pos)),
        token_strings=[f"t{p}" for p in range(n_pos)],
        token_text=token_text | {7: " x", 9: " y"} | {t: f" z{t - 200}" for t in more},
        prompt="".join(f"t{p}" for p in range(n_pos)),
        activation=torch.tensor(rng.uniform(0.5, 5.0, n), dtype=torch.float32),
        target_weight=torch.tensor(
            [  # the two logits (tokens 7 and 9) only
                (r[0] == "logit") * (0.6 * (r[3] == 7) + 0.3 * (r[3] == 9) + 0.01 * (r[3] in more))
                for r in rows
            ]
        ),
        edges=sp.csr_array((weights, (t, s)), shape=(n, n)),
        influence=torch.tensor(rng.permutation(n) / n, dtype=torch.float32) if influence else None,
        group_size=1,
    )
