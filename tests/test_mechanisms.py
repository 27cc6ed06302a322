"""Reading a graph as mechanisms, on a small random replacement model: constants as nodes
(closure, autograd, interventions), the QK reason split (exact, against the Lorsa's own scores
and a direct per-unit computation), supernodes (exact summed edges), flows and paths (against
dense linear algebra and interventions), and the summary's records and files."""

import copy
import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import targets

from circuits.attribution import N_PROMOTED, attribute, closure_error, run_prompt
from circuits.flows import (
    EdgeSweep,
    key_flows,
    linear_flows,
    many_node_flows,
    many_qk_side_flows,
    node_flows,
    qk_root_pairs,
    qk_root_tables,
    qk_side_flows,
    root_split,
    target_parts,
    top_paths,
)
from circuits.graph import Graph
from circuits.groups import auto_groups, group, grouped, node_name
from circuits.interventions import Intervention, direct_pre_activations, intervene, predict
from circuits.mechanism_file import (
    CLOSURE,
    TIE,
    AttentionCheck,
    MechanismSummary,
    load_summary,
    save_summary,
)
from circuits.mechanisms import SIDE_SOURCES, summarize
from circuits.nodes import Kind
from circuits.prune import prune_graph
from circuits.qk import QKSides, qk_attribution
from reports.html import html_page
from reports.mechanisms import (
    QK_SOURCES,
    QK_SOURCES_WHAT,
    attention_text,
    format_summary,
    mechanisms_html,
)

MODES = ("local", "sparse")


def flat(text: str) -> str:
    """Text with each run of spaces and line breaks one space: the printout's words where
    ``reports.mechanisms.fitted`` broke a long line, for a check of what it says."""
    return " ".join(text.split())


def as_printed(lines: list[str]) -> str:
    """Lines as the printout gives them, each long one broken (``fitted``)."""
    from reports.mechanisms import fitted

    return "\n".join(x for line in lines for x in fitted(line))


@pytest.fixture(params=MODES)
def run(request, replacement, tokens):
    return run_prompt(replacement, tokens, request.param, constants=True)


@pytest.fixture
def graph(replacement, tokens, run):
    return attribute(replacement, tokens, max_logits=3, run=run)


# ----------------------------------------------------------------- constants as nodes
def test_constant_nodes_close_the_graph_and_carry_the_decoder_biases(graph, replacement, tokens):
    n, L = len(tokens), replacement.cfg.n_layers
    # every sublayer's bias at every position, and the position vectors at stage 0
    assert graph.has_constants and int(graph.is_kind("bias").sum()) == (2 * L + 1) * n
    assert closure_error(graph)["max_abs"] < 1e-5
    assert graph.settings["closure_error"]["max_abs"] < 1e-5
    # Without bias nodes the same targets close with the decoder biases in their bias terms:
    # the difference is exactly the bias nodes' edges.
    plain = attribute(replacement, tokens, mode=graph.mode, max_logits=3)
    keep = ~graph.is_kind("bias")
    assert plain.ids == [graph.ids[i] for i in keep.nonzero().squeeze(1).tolist()]
    bias_cols = graph.is_kind("bias").nonzero().squeeze(1).numpy()
    from_bias = np.asarray(graph.edges[:, bias_cols].sum(axis=1)).ravel()[keep.numpy()]
    t = targets(plain)
    torch.testing.assert_close(plain.value[t], graph.value[keep][t])
    np.testing.assert_allclose(
        plain.bias[t].numpy(), (graph.bias[keep][t].numpy() + from_bias[t.numpy()]), atol=1e-5
    )


def test_a_tokens_embedding_node_carries_its_embedding_and_the_position_vector_is_a_constant(
    graph, replacement, run, tokens
):
    """A position vector depends on where a token is, never on which: the embedding node
    writes ``W_E[token]`` alone and the position vector is a stage-0 constant node (found on
    ``A B C D E``: a layer-0 feature read +6.4 from the position and -0.1 from the token, and
    the path named the token). Without constants as nodes it is part of the readers' bias
    terms: every target closes either way, and the position nodes' edges are what moved."""
    m = replacement.model
    emb, pos = run.select(Kind.EMBEDDING, 0), run.select(Kind.BIAS, 0)
    torch.testing.assert_close(run.write[emb], m.W_E[tokens], rtol=0, atol=0)
    torch.testing.assert_close(run.write[pos], m.W_pos[: len(tokens)], rtol=0, atol=0)
    assert [graph.ids[int(i)] for i in pos] == [f"E_pos_{p}" for p in range(len(tokens))]
    names = [node_name(graph, int(i)) for i in pos[:2]]
    assert names == ["position vector @0", "position vector @1"]
    plain = run_prompt(replacement, tokens, run.mode)  # no constant nodes
    assert not (plain.kind == Kind.BIAS).any()
    torch.testing.assert_close(plain.write[plain.select(Kind.EMBEDDING, 0)], m.W_E[tokens])
    bare = attribute(replacement, tokens, max_logits=3, run=plain)
    assert closure_error(bare)["max_abs"] < 1e-5
    # (the bias terms of ``bare`` are the constant nodes' edges: the test above)
    t = int(targets(graph)[0])
    assert np.abs(graph.edges[[t]][:, pos.numpy()].toarray()).max() > 0
    parts = target_parts(graph, t, *node_flows(graph, t))
    assert "position vector" in dict(parts["constants_by_source"])


def test_every_labeller_names_a_node_in_the_same_words(graph):
    """The graph's labels, the summary's references, the group members' names and the
    viewer's labels of pruned nodes all build on ``circuits.nodes.node_words`` (the summary
    once printed a position vector as ``L-1 mlp bias@7``, its own wording for a constant)."""
    from circuits.mechanisms import node_ref
    from circuits.nodes import block_of, node_words
    from reports.labels import fields_label, node_label
    from reports.mechanisms import ref_text

    seen = set()
    for i in range(graph.n_nodes):
        kind = Kind(int(graph.kind[i]))
        stage, pos, index = int(graph.stage[i]), int(graph.pos[i]), int(graph.index[i])
        if kind == Kind.LOGIT:
            continue
        seen.add((kind, stage == 0))
        token = graph.token_strings[pos] if kind == Kind.EMBEDDING else None
        words = node_words(kind, stage, index, pos, token=token)
        assert ref_text(node_ref(graph, i, {})).startswith(words)
        assert node_name(graph, i).startswith(words)
        if kind != Kind.EMBEDDING:  # a token node's label is the token: ``' x'@3``
            assert node_label(graph, i).startswith(words)
            assert fields_label(graph, kind, stage, index, pos).startswith(words)
        if kind == Kind.BIAS:
            sub = "attn" if stage % 2 else "mlp"
            assert words == (f"position vector @{pos}" if stage == 0
                             else f"L{block_of(stage)} {sub} bias @{pos}")  # fmt: skip
    assert {(Kind.BIAS, True), (Kind.BIAS, False), (Kind.EMBEDDING, True)} <= seen
    assert node_words(Kind.EMBEDDING, 0, 7, None) == "token id 7"
    with pytest.raises(ValueError, match="logit"):
        node_words(Kind.LOGIT, 5, 3, 1)


def test_constant_node_edges_equal_autograd_and_doubling(graph, replacement, run):
    n_src = len(run.kind)
    rows = targets(graph)
    multipliers = torch.ones(len(rows), n_src, requires_grad=True)
    out = direct_pre_activations(replacement, graph, multipliers, run=run)
    (grad,) = torch.autograd.grad(out[torch.arange(len(rows)), rows].sum(), multipliers)
    dense = torch.from_numpy(graph.edges.toarray())
    torch.testing.assert_close(grad, dense[rows, :n_src], atol=1e-5, rtol=1e-4)
    bias = graph.is_kind("bias").nonzero().squeeze(1)
    doubled = torch.ones(len(bias), n_src)
    doubled[torch.arange(len(bias)), bias] = 2
    with torch.no_grad():
        clean = direct_pre_activations(replacement, graph, torch.ones(1, n_src), run=run)
        moved = direct_pre_activations(replacement, graph, doubled, run=run) - clean
    torch.testing.assert_close(moved[:, rows], dense[rows][:, bias].T, atol=1e-4, rtol=1e-4)


def test_a_bias_node_can_be_ablated_and_scaled(graph, replacement):
    logit = int(graph.is_kind("logit").nonzero()[0])
    bias = graph.is_kind("bias").nonzero().squeeze(1)
    row = graph.edges[[logit]].toarray()[0]
    node = graph.ids[int(bias[np.abs(row[bias.numpy()]).argmax()])]
    small = intervene(replacement, graph, [Intervention(node, "scale", 1.001)])
    torch.testing.assert_close(small.actual, small.predicted, atol=1e-4, rtol=2e-2)
    assert small.actual.abs().max() > 0
    ablated = intervene(replacement, graph, [Intervention(node, "ablate")])
    assert torch.isfinite(ablated.actual).all()


def test_graph_with_constants_and_reasons_round_trips(graph, replacement, tmp_path):
    qk_attribution(replacement, graph, reason=True, contrast=True, top=4)
    path = tmp_path / "g.safetensors"
    graph.save(path)
    back = Graph.load(path)
    assert back.ids == graph.ids and back.has_constants
    assert [a.reason for a in back.qk] == [a.reason for a in graph.qk]
    assert all(a.reason is not None for a in back.qk)


# ----------------------------------------------------------------- QK reasons
def test_qk_reason_parts_sum_to_the_lorsas_own_score(graph, replacement, run):
    records = qk_attribution(replacement, graph, key_mass=0.2, top=10**6, contrast=True,
                             reason=True, run=run)  # fmt: skip
    assert records
    for a in records:
        lorsa = replacement.lorsas[a.layer]
        with torch.no_grad():
            q, k = lorsa.qk(run.lorsa_in[a.layer][None])
        score = float(q[0, a.qk_head, a.query] @ k[0, a.qk_head, a.key]) / lorsa.cfg.d_qk**0.5
        r = a.reason
        parts = r.mean_query_mean_key + r.query_vs_mean_key + r.mean_query_vs_key + r.specific
        assert parts == pytest.approx(score, abs=1e-4)
        assert a.score == pytest.approx(score, abs=1e-4)
        # The key-side contrast is what moves attention: (mean query + this query) x this key.
        assert a.contrast == pytest.approx(r.mean_query_vs_key + r.specific, abs=1e-4)
        # With every pair listed, the pairs are the specific part and nothing is left out.
        assert sum(p.value for p in r.pairs) + r.rest == pytest.approx(r.specific, abs=1e-5)
        assert abs(r.rest) < 1e-4 and r.rest_share == pytest.approx(0, abs=1e-5)
        # The query/key bias is the same at every position: it has no specific terms.
        assert all(abs(p.value) < 1e-5 for p in r.pairs if p.query is None or p.key is None)


def test_qk_reason_against_a_direct_per_unit_computation(graph, replacement, run):
    """Means and deviations recomputed unit by unit with plain loops."""
    (a,) = [r for r in qk_attribution(replacement, graph, top=10**6, reason=True, run=run)
            if r.query == max(r.query for r in graph.qk)][:1]  # fmt: skip
    with torch.no_grad():
        side = QKSides(run, replacement, a.layer)
    ids = graph.ids
    n = len(run.tokens)
    d = replacement.lorsas[a.layer].cfg.d_qk

    def unit_vectors(vectors, positions):
        """unit -> {pos: vector}, the unit being (kind, stage, index), or None (bias)."""
        out = {}
        for p in positions:
            out.setdefault(None, {})[p] = vectors[p, 0, a.qk_head]
            for j, s in enumerate(side.at[p].tolist()):
                if side.valid[p, j]:
                    u = (int(run.kind[s]), int(run.stage[s]), int(run.index[s]))
                    out.setdefault(u, {})[p] = vectors[p, 1 + j, a.qk_head]
        return out

    refs = list(range(1, n))
    qu = unit_vectors(side.query, sorted(set(refs) | {a.query}))
    ku = unit_vectors(side.key, range(a.query + 1))
    zero = torch.zeros(d)
    du = {u: v.get(a.query, zero) - sum((v.get(p, zero) for p in refs), zero) / len(refs)
          for u, v in qu.items()}  # fmt: skip
    dv = {u: v.get(a.key, zero) - sum(v.values(), zero) / (a.query + 1) for u, v in ku.items()}
    specific = {(s, t): float(du[s] @ dv[t]) / d**0.5 for s in du for t in dv}
    assert a.reason.specific == pytest.approx(sum(specific.values()), abs=1e-4)
    top = max(specific.items(), key=lambda kv: abs(kv[1]))
    assert a.reason.pairs[0].value == pytest.approx(top[1], abs=1e-5)
    (s, t) = top[0]
    pair = a.reason.pairs[0]
    # Named by node id where the unit is present at that position.
    for unit, name, pos in ((s, pair.query, a.query), (t, pair.key, a.key)):
        if unit is None:
            assert name is None
        elif pos in (qu if name is pair.query else ku)[unit]:
            i = graph.id_to_index[name]
            assert (int(graph.kind[i]), int(graph.stage[i]), int(graph.pos[i])) == (
                unit[0],
                unit[1],
                pos,
            )
    assert ids  # the graph's ids name the present units


def root_mask(graph: Graph) -> np.ndarray:
    return graph.is_kind("embedding", "error", "bias").numpy()


def own_terms(graph: Graph, flow: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Each node's own term in a readout with flows ``flow`` (``flow / activation * bias``)
    for the non-root nodes in ``below``, else 0."""
    act = graph.activation.double().numpy()
    per_unit = flow / np.where(act != 0, act, 1)
    return np.where(root_mask(graph) | ~below, 0, per_unit * graph.bias.double().numpy())


def reasons_with_sides(graph, replacement, run, n: int = 6):
    """The first ``n`` QK records with reasons, each with its layer's ``QKSides``."""
    for a in qk_attribution(replacement, graph, reason=True, run=run)[:n]:
        with torch.no_grad():
            yield a, QKSides(run, replacement, a.layer)


def test_each_side_of_the_specific_part_traces_back_to_roots(graph, replacement, run):
    """What the query (key) position holds, against the other side's deviation, minus the
    mean it is measured against, is the specific part; its roots' flows plus the nodes' own
    terms plus the QK bias term are that part, and only nodes at or below the position feed
    it."""
    for a, side in reasons_with_sides(graph, replacement, run):
        below = graph.stage.numpy() < 2 * a.layer + 1
        q_flow, k_flow, parts = qk_side_flows(graph, side, a.qk_head, a.query, a.key)
        assert parts["specific"] == pytest.approx(a.reason.specific, abs=1e-4)
        # The means: over the prompt's queries after BOS, over the keys 0..query.
        r = a.reason
        mean_q = parts["query_at"] - parts["specific"]
        mean_k = parts["key_at"] - parts["specific"]
        assert mean_q == pytest.approx(r.mean_query_vs_key, abs=1e-4)
        assert mean_k == pytest.approx(r.query_vs_mean_key, abs=1e-4)
        for flow, name in ((q_flow, "query"), (k_flow, "key")):
            assert not flow[~below].any()
            pos = a.query if name == "query" else a.key
            assert not flow[graph.pos.numpy() > pos].any()
            total = flow[root_mask(graph)].sum() + own_terms(graph, flow, below).sum() \
                + parts[f"{name}_bias"]  # fmt: skip
            assert total == pytest.approx(parts[f"{name}_at"], abs=1e-4)


def test_root_pairs_split_the_specific_part_exactly(graph, replacement, run):
    """The root x root table of a QK reason sums to its specific part; each query (key) row
    is what one root gives the query's (key's) deviation against the other side's whole
    deviation, the same readout swept as a scalar; the ``own`` pseudo-root is the nodes' own
    terms (``flow / activation * bias``); the readable split closes."""
    view = auto_groups(graph)
    for a, side in reasons_with_sides(graph, replacement, run):
        q_rows, k_rows, table = qk_root_pairs(view, side, a.qk_head, a.query, a.key)
        assert table.sum() == pytest.approx(a.reason.specific, abs=1e-4)
        # The scalar readouts: u_n . dv (query side) and du . v_n (key side), each source at
        # every position weighted like its deviation.
        wq, wk = (w.numpy() for w in side.reference_weights(a.query, a.key, torch.float64))
        scale = math.sqrt(replacement.lorsas[a.layer].cfg.d_qk)
        u = side.query[:, :, a.qk_head].double().numpy()
        v = side.key[:, :, a.qk_head].double().numpy()
        at, valid = side.at.numpy(), side.valid.numpy()
        du = np.einsum("p,pse->e", wq, u * side.slot_valid.numpy()[..., None])
        dv = np.einsum("p,pse->e", wk, v * side.slot_valid.numpy()[..., None])
        below = 2 * a.layer + 1
        for rows, vec, weight, other in ((q_rows, u, wq, dv), (k_rows, v, wk, du)):
            direct = np.zeros(graph.n_nodes)
            direct[at[valid]] = (weight[:, None] * (vec[:, 1:] @ other))[valid] / scale
            flow = linear_flows(graph, direct, below)[0]
            by_name = {r.name: r.value for r in rows}
            for g in view.groups:
                if g.is_root:
                    assert by_name[g.name] == pytest.approx(flow[g.members].sum(), abs=1e-4)
            own = own_terms(graph, flow, graph.stage.numpy() < below)
            assert by_name["own terms of the nodes"] == pytest.approx(own.sum(), abs=1e-4)
            assert by_name["QK bias side"] == pytest.approx(weight @ vec[:, 0] @ other / scale,
                                                            abs=1e-4)  # fmt: skip
        # Key-side roots come only from positions up to the query.
        for r, x in zip(k_rows, table.sum(0), strict=True):
            assert r.pos is None or r.pos <= a.query or abs(x) < 1e-9
        pairs, parts, by_key, moved = root_split(q_rows, k_rows, table, 4)
        assert sum(parts.values()) == pytest.approx(a.reason.specific, abs=1e-4)
        # positions: every term with a position vector on one side, a token or one on the other
        place = [r.is_position for r in q_rows]
        assert sum(place) == 1  # the position vectors, one root: not a constant here
        token = [r.kind == "embedding" for r in q_rows]
        placed = np.array(place) | np.array(token)
        expected = table[placed][:, placed].sum() - table[token][:, token].sum()
        assert parts["positions"] == pytest.approx(expected, abs=1e-9)
        assert all(p.query.kind in ("embedding", "error") and p.key.kind in ("embedding", "error")
                   for p in pairs)  # fmt: skip
        assert [abs(p.value) for p in pairs] == sorted((abs(p.value) for p in pairs), reverse=True)
        assert len(pairs) <= 4 and by_key == {} and moved == {}
        # Between the query's and the key's own vectors (not their deviations from the means):
        # all of it is the score; nothing after the key reaches the key side, nothing after
        # the query the query side, a layer-0 head's query side holds its own token alone
        # (through the mean query every position's token stood there), and the token part
        # splits into the key's own, moved and what the means take away.
        *_, at_key = qk_root_tables(view, [(side, a.qk_head, a.query, a.key)])[0]
        assert at_key.sum() == pytest.approx(a.score, abs=1e-4)
        after = [j for j, r in enumerate(k_rows) if r.pos is not None and r.pos > a.key]
        assert np.abs(at_key[:, after]).max(initial=0) < 1e-9
        later = [i for i, r in enumerate(q_rows) if r.pos is not None and r.pos > a.query]
        assert np.abs(at_key[later]).max(initial=0) < 1e-9
        if a.layer == 0:
            elsewhere_q = [i for i, r in enumerate(q_rows)
                           if r.kind == "embedding" and r.pos != a.query]  # fmt: skip
            assert np.abs(at_key[elsewhere_q]).max(initial=0) < 1e-9
        pairs, parts, by_key, moved = root_split(q_rows, k_rows, table, 2, key=a.key,
                                                 at_key=at_key)  # fmt: skip
        tokens_q = [r.kind == "embedding" for r in q_rows]
        own = [r.kind == "embedding" and r.pos == a.key for r in k_rows]
        elsewhere = [r.kind == "embedding" and r.pos != a.key for r in k_rows]
        assert by_key["key_own"] == pytest.approx(at_key[tokens_q][:, own].sum(), abs=1e-9)
        assert by_key["moved"] == pytest.approx(at_key[tokens_q][:, elsewhere].sum(), abs=1e-9)
        assert sum(by_key.values()) == pytest.approx(parts["tokens"], abs=1e-9)
        if a.layer == 0:  # no head below the first layer moves anything to the key
            assert by_key["moved"] == 0 and moved["moved"] == []
        assert len(moved["moved"]) <= 2 and all(p.key.pos < a.key for p in moved["moved"])
        assert len(moved["key_own"]) <= 2 and all(p.key.pos == a.key for p in moved["key_own"])
        # each listed term is its entry of the table against the key's own vector
        row = {id(r): i for i, r in enumerate(q_rows)}
        col = {id(r): j for j, r in enumerate(k_rows)}
        for p in moved["key_own"] + moved["moved"]:
            assert p.value == pytest.approx(at_key[row[id(p.query)], col[id(p.key)]], abs=1e-9)
        # the position terms: entries of the specific table itself (what sets this key apart),
        # a position vector on a side and a token or the position vectors on the other, both
        # held by the two own vectors (none through a mean alone)
        assert 0 < len(moved["positions"]) <= 2
        for p in moved["positions"]:
            i, j = row[id(p.query)], col[id(p.key)]
            assert p.value == pytest.approx(table[i, j], abs=1e-9)
            assert p.query.is_position or p.key.is_position
            assert {p.query.kind, p.key.kind} <= {"bias", "embedding"}
            assert np.abs(at_key[i]).sum() > 0 and np.abs(at_key[:, j]).sum() > 0
            if a.layer == 0 and not p.query.is_position:  # its own token alone
                assert p.query.pos == a.query


# ----------------------------------------------------------------- groups
def test_root_text_shows_float_rounding_as_zero():
    """Parts that are exactly zero in exact arithmetic (no error node below layer 0) come out
    of float sums as 1e-16; the line says 0 for them and keeps every real part."""
    from circuits.mechanism_file import QKReasonRecord
    from reports.mechanisms import root_text

    r = QKReasonRecord(0, 0, 3, 2, "x", 0.5, 1.0, 0, 0, 0, 1.0, 0, 0, [])
    r.root_parts = {"tokens": 1.08, "errors": 1.1e-16, "constants": -2.2e-16}
    assert root_text(r, 3).startswith("specific by roots (tokens +1.08, errors 0, constants 0)")
    r.root_parts = {"tokens": 1.08, "errors": -1e-6, "constants": 0.0}
    assert "errors -1e-06, constants 0)" in root_text(r, 3)
    # without the lists against the key's own vector, the root pairs of the specific part: a
    # key side at another position may stand there through the mean key, so it is not
    # written as moved to the key (``-> @k``); the position vectors read as such
    from circuits.mechanism_file import RootPair, SourceShare

    def side(name, kind, pos, layer=None):
        return SourceShare(name, kind, layer, pos, None, None, 0.0)

    elsewhere = side("token 'a'@1", "embedding", 1)
    positions = side("position vector (all positions)", "bias", None, -1)
    r.root_pairs = [RootPair(side("token 'b'@3", "embedding", 3), elsewhere, 0.5),
                    RootPair(positions, positions, 0.4)]  # fmt: skip
    text = root_text(r, 3)
    assert text.endswith(
        ": token 'b'@3 x token 'a'@1 +0.5; position vectors x position vectors +0.4"
    )


def test_root_text_shows_the_largest_moved_term_beside_the_keys_own():
    """Terms against the key's own token can fill the list (a word key for a query that
    reads words); the largest against tokens moved to the key (the induction match) are
    listed after them, marked with where they were moved, and the token part is split into
    the key's own, the moved and the mean key's."""
    from circuits.mechanism_file import QKReasonRecord, RootPair, SourceShare
    from reports.mechanisms import root_text

    def token(name, pos, value=0.0):
        return SourceShare(name, "embedding", None, pos, None, None, value)

    r = QKReasonRecord(2, 0, 23, 9, " v", 0.9, 1.0, 0, 0, 0, 1.0, 0, 0, [])
    r.root_parts = {"tokens": 20.0, "errors": 0.0, "constants": 0.0}
    r.token_parts = {"key_own": 9.0, "moved": 17.0, "means": -6.0}
    q = token("token 'ays'@23", 23)
    r.root_pairs = [RootPair(q, token("token ' v'@9", 9), 10.6),
                    RootPair(token("token 'my'@17", 17), token("token ' v'@9", 9), -2.0),
                    RootPair(token("token 'x'@20", 20), token("token ' v'@9", 9), 1.9),
                    RootPair(q, token("token 'ays'@8", 8), 1.5)]  # fmt: skip
    plain = ": token 'ays'@23 x token ' v'@9 +10.6; token 'my'@17 x token ' v'@9 -2; token 'x'@20"
    assert root_text(r, 3).endswith(plain + " x token ' v'@9 +1.9")  # no split: root_pairs
    r.own_pairs = [RootPair(q, token("token ' v'@9", 9), 11.0),
                   RootPair(token("token 'my'@17", 17), token("token ' v'@9", 9), -2.1),
                   RootPair(token("token 'x'@20", 20), token("token ' v'@9", 9), 1.8)]  # fmt: skip
    r.moved_pairs = [RootPair(q, token("token 'ays'@8", 8), 5.1),
                     RootPair(q, token("token ' s'@3", 3), 2.5),
                     RootPair(q, token("token 'M'@1", 1), 0.5)]  # fmt: skip
    text = root_text(r, 3)
    assert ("tokens +20 = the key's own +9 + moved to the key +17 + against the means -6,"
            in text)  # fmt: skip
    assert text.endswith(
        "): the key's own vector: token 'ays'@23 x token ' v'@9 +11; token 'my'@17 x token ' v'@9 "
        "-2.1; token 'x'@20 x token ' v'@9 +1.8; moved to the key: token 'ays'@23 x token "
        "'ays'@8 -> @9 +5.1; token 'ays'@23 x "
        "token ' s'@3 -> @9 +2.5; token 'ays'@23 x token 'M'@1 -> @9 +0.5"
    )


def test_the_summary_says_when_the_current_token_carries_the_most():
    """A list's item is often the query token itself: the summary names the largest mover
    from another position, so a line says first that the current token carries the most of
    the target's token flow, from the fields (``tokens_by_position``), never otherwise."""
    from circuits.mechanism_file import TargetRecord, TokenShare
    from reports.mechanisms import own_token_text

    shares = [TokenShare(4, " Thursday", 13.1), TokenShare(3, " Wednesday", 7.56)]
    t = TargetRecord("logit_0", " Friday", None, 0.95, 14.4, 23.2, 0.0, -8.8, [], None, None,
                     None, "g0", tokens_by_position=shares)  # fmt: skip
    assert own_token_text(t, 4) == (
        "the current token ' Thursday'@4 carries its largest part by position (+13.1; all "
        "tokens +23.2), at the target's own position: no head moves it there (heads reading it "
        "there, and the features, pass it on)"
    )
    assert own_token_text(t, 5) == own_token_text(t, None) == ""
    t.tokens_by_position = [TokenShare(4, " Thursday", -20.0), *shares[1:]]
    assert own_token_text(t, 4) == ""  # the largest part is against the target
    t.tokens_by_position, t.tokens = shares, -0.8
    assert own_token_text(t, 4) == ""  # nothing to carry: the tokens work against it


def test_a_group_named_for_a_key_that_brings_little_says_so():
    """A reviewer's: a head group is named for the key its heads read most, and a diffuse one
    (attention 0.16 at ' blue') was printed as "the largest mover" by that name alone. Where
    the named key brings under half the group's flow into the target (its ``carried``
    shares), the line says how much; never otherwise."""
    from circuits.mechanism_file import GroupRecord, TokenShare
    from reports.mechanisms import spread_text

    g = GroupRecord("g0", "L0 2 heads @10 -> ' blue'@2", "lorsa", 0, 10, 2, " blue", [3], None,
                    ["0_5_10"], [], {"logit_0": 1.47})  # fmt: skip
    g.carried["logit_0"] = [TokenShare(2, " blue", 0.468), TokenShare(3, " lamp", 0.37)]
    assert spread_text(g, "logit_0") == (
        "' blue'@2 brings +0.468 of it: the rest comes from other keys"
    )
    g.carried["logit_0"][0] = TokenShare(2, " blue", 0.9)
    # the named key brings most of it, another over a quarter (a name read at both mentions)
    assert spread_text(g, "logit_0") == "it reads ' lamp'@3 too (+0.37) beside ' blue'@2 (+0.9)"
    g.carried["logit_0"][1] = TokenShare(3, " lamp", 0.3)
    assert spread_text(g, "logit_0") == ""  # the named key brings most of it, no other much
    # a group pushing the other way (a negative target's movers) is read in its own sign
    g.flow["logit_0"] = -1.47
    g.carried["logit_0"] = [TokenShare(2, " blue", -0.468), TokenShare(3, " lamp", -0.9)]
    assert spread_text(g, "logit_0") == (
        "' blue'@2 brings -0.468 of it: the rest comes from other keys"
    )
    g.carried["logit_0"] = [TokenShare(2, " blue", -0.9), TokenShare(3, " lamp", -0.37)]
    assert spread_text(g, "logit_0") == "it reads ' lamp'@3 too (-0.37) beside ' blue'@2 (-0.9)"
    g.carried["logit_0"] = [TokenShare(2, " blue", 0.9), TokenShare(3, " lamp", -2.37)]
    assert spread_text(g, "logit_0") == (  # the key brings the other way: the rest is elsewhere
        "' blue'@2 brings +0.9 of it: the rest comes from other keys"
    )
    assert spread_text(g, "logit_1") == ""  # no flow into that target


def test_no_group_without_flow_into_the_target_fills_the_summary(replacement, tokens, run):
    """A reviewer traced a feature at BOS: after its two groups the summary listed eight at
    later positions, which cannot reach it, each with flow 0 and a check of rounding noise
    marked ok. The fill-up by flow takes no group without flow into the target."""
    from circuits.attribution import NodeTarget

    full = attribute(replacement, tokens, max_logits=1, run=run)
    feats = [i for i in full.is_kind("transcoder").nonzero().squeeze(1).tolist()
             if int(full.pos[i]) == 1 and int(full.layer[i]) == 0]  # fmt: skip
    node = max(feats, key=lambda i: float(full.activation[i]))
    graph = attribute(replacement, tokens, run=run, targets=[NodeTarget(
        "transcoder", 0, 1, int(full.index[node]))])  # fmt: skip
    summary = summarize(replacement, graph, run, max_groups=20)
    (t,) = summary.targets
    assert summary.groups and all(g.flow.get(t.node, 0) != 0 for g in summary.groups)
    assert all(g.pos is None or g.pos <= 1 for g in summary.groups)
    # the final LayerNorm comes after a feature: no rerun holding it is recorded or cited
    checks = [c for g in summary.groups for c in g.checks]
    assert checks and all(c.free_final_ln_held is None for c in checks)
    assert all(c.agree_free_final_ln_held is None for c in checks)
    text = format_summary(summary, every_check=True)
    assert "the final one alone" not in text and "from the final LayerNorm (held" not in text


def test_a_head_target_is_explained_at_the_key_it_reads(replacement, tokens, run):
    """A head's value comes from its keys through its frozen pattern, not from its query: its
    head groups and moved flows are those at the key it reads (``reads``), and its own QK
    reason there says why it attends it (found on ``--target-node`` of an induction head: the
    summary named groups at its query with flows of 1e-4 against a value of 2.5)."""
    from circuits.attribution import LogitTarget, NodeTarget
    from circuits.interventions import target_nodes
    from circuits.qk import qk_record

    full = attribute(replacement, tokens, max_logits=1, run=run)
    heads = full.is_kind("lorsa").nonzero().squeeze(1).tolist()
    heads = [i for i in heads if full.layer[i] == 1 and full.read_key(i) not in (None, full.pos[i])]
    node = max(heads, key=lambda i: float(full.activation[i]))
    layer, q, index = int(full.layer[node]), int(full.pos[node]), int(full.index[node])
    graph = attribute(replacement, tokens, run=run,
                      targets=[LogitTarget(7), NodeTarget("lorsa", layer, q, index)])  # fmt: skip
    t = target_nodes(graph)[-1]
    k = graph.read_key(t)
    summary = summarize(replacement, graph, run, check=False)
    record = summary.targets[-1]
    assert record.kind == "lorsa" and record.reads == k and summary.targets[0].reads is None
    assert record.head_groups and all(summary.group(g).pos == k for g in record.head_groups)
    # the heads at the key, with their flows into the target, exactly
    flow, h = node_flows(graph, t)
    at_key = np.flatnonzero((graph.kind.numpy() == Kind.LORSA) & (graph.pos.numpy() == k))
    zeroed = predict(graph, [Intervention(graph.ids[m], "ablate") for m in at_key])[t]
    assert record.heads_flow == pytest.approx(-float(zeroed), abs=1e-4)
    assert any(abs(float(flow[i])) > 0 for i in at_key)
    # its own QK reason: its QK head at (its query, the key it reads), closing to its score
    (reason,) = record.qk
    where = (reason.layer, reason.qk_head, reason.query, reason.key)
    assert where == (layer, index // graph.group_size, q, k)
    score = qk_record(replacement, run, layer, reason.qk_head, q, k).score
    assert reason.score == pytest.approx(score, abs=1e-4)
    text = format_summary(summary)
    assert f"it reads its inputs at its key {graph.token_strings[k]!r}@{k}" in text
    from reports.mechanisms import HEAD_TARGET, PREDICTING, predicting_heading

    if record.predicting_group is not None:  # a head predicts nothing: "heads at the key"
        heading = predicting_heading(summary.group(record.predicting_group), record)
        assert heading != PREDICTING and flat(heading) in flat(text)
        assert HEAD_TARGET.startswith("heads at the key it reads")
    assert f"QK {reason.qk_head} reads {graph.token_strings[k]!r}@{k}" in text
    # a file naming a key for a logit target, or a reason at another key, is refused
    data = json.loads(json.dumps(summary.to_dict()))
    data["targets"][0]["reads"] = 0
    with pytest.raises(ValueError, match=r"targets\[0\]\.reads: a key for a target not a head"):
        MechanismSummary.from_dict(data)
    data = json.loads(json.dumps(summary.to_dict()))
    data["targets"][-1]["qk"][0]["key"] = k + 1
    with pytest.raises(ValueError, match="not the key read"):
        MechanismSummary.from_dict(data)
    # nor one giving a head target a second reason, or a group at its query, not its key
    data = json.loads(json.dumps(summary.to_dict()))
    data["targets"][-1]["qk"] *= 2
    with pytest.raises(ValueError, match=r"targets\[1\]\.qk: 2 reasons; a head target has one"):
        MechanismSummary.from_dict(data)
    elsewhere = next(g.key for g in summary.groups if g.pos != k)
    data = json.loads(json.dumps(summary.to_dict()))
    data["targets"][-1]["head_groups"].append(elsewhere)
    with pytest.raises(ValueError, match="names a group not at the key it reads"):
        MechanismSummary.from_dict(data)
    # with checks, its own attention to the key, clean and with each checked group ablated
    # (attention free): the heads at its key can act through it (a reviewer's induction head
    # target: free -2.3 against a flow of +0.761, its attention 0.73 -> 0.0008), each equal
    # to intervene's own reading of it
    assert record.own_attention is None and not record.own_attention_free  # no checks
    checked = summarize(replacement, graph, run)
    mine = checked.targets[-1]
    qk_head = index // graph.group_size
    assert mine.own_attention == pytest.approx(float(run.patterns[layer][qk_head, q, k]))
    assert mine.own_attention_free and set(mine.own_attention_free) == {
        g.key for g in checked.groups if g.checks
    }
    for key, after in mine.own_attention_free.items():
        edits = [Intervention(m, "ablate") for m in checked.group(key).members]
        result = intervene(
            replacement,
            graph,
            edits,
            freeze_attention=False,
            freeze_errors=False,
            run=run,
            attention_reads=[(layer, qk_head, q, k)],
        )
        assert after == pytest.approx(float(result.attention[0]), abs=1e-5)
        # and through each side alone: the query's vector, then the keys', as after it
        sides = mine.own_attention_sides[key]
        assert sides == pytest.approx(result.attention_by_side[0].tolist(), abs=1e-5)
    from reports.mechanisms import block_lines, own_attention_block, own_attention_text

    line = own_attention_text(mine, checked.tokens)
    assert line.startswith(f"its own attention to {graph.token_strings[k]!r}@{k} ")
    # printed a line per group under its heading (one line of it ran to 586 characters)
    block = own_attention_block(mine, checked.tokens)
    assert line == f"{block[0]} {', '.join(block[1:-1])} {block[-1]}"
    assert as_printed(block_lines(block, "  ")) in format_summary(checked)
    assert checked.targets[0].own_attention is None
    data = json.loads(json.dumps(checked.to_dict()))
    data["targets"][-1]["own_attention_free"]["g999"] = 0.5
    with pytest.raises(ValueError, match="own attention, clean and after checked groups only"):
        MechanismSummary.from_dict(data)
    moved = mine.own_attention_free.items()
    shown = sorted(moved, key=lambda kv: -abs(kv[1] - mine.own_attention))[0][0]  # printed first
    for bad in ({"g999": [0.5, 0.5]}, {shown: [0.5]}):  # another group's, or one side only
        data = json.loads(json.dumps(checked.to_dict()))
        data["targets"][-1]["own_attention_sides"].update(bad)
        with pytest.raises(ValueError, match="through each side alone, two values"):
            MechanismSummary.from_dict(data)
    data = json.loads(json.dumps(checked.to_dict()))
    data["targets"][-1]["own_attention_sides"][shown] = [0.5, 1.5]
    with pytest.raises(ValueError, match="own_attention_sides"):
        MechanismSummary.from_dict(data)
    q_alone, k_alone = (attention_text(x) for x in mine.own_attention_sides[shown])
    assert f"(query side alone {q_alone}, key side alone {k_alone})" in line
    del data["targets"][-1]["own_attention_sides"]  # a file written before it: without them
    older = MechanismSummary.from_dict(data)
    assert "side alone" not in own_attention_text(older.targets[-1], older.tokens)


def test_a_head_targets_qk_sources_are_found_as_a_predicting_groups_are(
    replacement, tokens, run, monkeypatch
):
    """``--target-node`` on a head: what makes it attend the key it reads is found as for a
    predicting head group (the same rounds of candidates, by hand), named by its node in the
    sources' roles, checked through its own attention, printed under the target in every
    view, and kept through the file; a role naming a logit target or no node is refused."""
    import circuits.mechanisms
    from circuits.attribution import LogitTarget, NodeTarget
    from circuits.interventions import target_nodes
    from reports.mechanisms import (
        _role_text,
        block_lines,
        qk_sources_block,
        qk_sources_heading,
        score_text,
    )
    from reports.viewer import mechanisms_data

    monkeypatch.setattr(circuits.mechanisms, "SIDE_SOURCES", 64)  # every candidate listed
    monkeypatch.setattr(circuits.mechanisms, "ATTENTION_LOWERED", 0.0)  # random heads move little
    full = attribute(replacement, tokens, max_logits=1, run=run)
    heads = [i for i in full.is_kind("lorsa").nonzero().squeeze(1).tolist()
             if full.layer[i] == 1 and full.read_key(i) not in (None, full.pos[i])]  # fmt: skip
    found = 0
    for node in sorted(heads, key=lambda i: -float(full.activation[i]))[:3]:
        layer, q, index = int(full.layer[node]), int(full.pos[node]), int(full.index[node])
        traced = [LogitTarget(7), NodeTarget("lorsa", layer, q, index)]
        graph = attribute(replacement, tokens, run=run, targets=traced)
        summary = summarize(replacement, graph, run, max_groups=1)
        _check_qk_sources(summary, graph, replacement)  # the rule replayed by hand
        head = summary.targets[-1]
        assert graph.ids[target_nodes(graph)[-1]] == head.node and head.qk
        sources = summary.qk_sources(head.node)
        if not sources:
            continue
        found += 1
        assert summary.qk_subject(head.node) is head
        for g, w in sources:  # in the summary with checks, its QK head the target's own
            assert g.checks and w.qk_head == head.qk[0].qk_head and g.layer < layer
            assert summary.attention_after(g, head.node).mean_before == head.own_attention
        block = qk_sources_block(summary, head.node)  # the heading, how they were chosen,
        assert block[:3] == [QK_SOURCES_WHAT + ":", *QK_SOURCES] and len(block) == 5  # a side
        names = [x[0] if isinstance(x, list) else x for x in block[3:]]  # a side's block
        assert {x.split(" side")[0] for x in names} == {"query", "key"}  # or its one line
        text = format_summary(summary)
        printed = as_printed(block_lines(block, "    "))
        assert printed in text and printed.splitlines()[1].startswith("      ")
        assert text.index(printed) < text.index("\ngroups:\n")  # under the target
        g, w = sources[0]
        score = score_text(summary, head.node, w.qk_head)
        assert score == f"the QK {w.qk_head} score of the target {head.label}"
        assert f"writes the {w.side} side of {score}" in text
        panel = mechanisms_data(summary, graph)
        assert panel["targets"][-1]["ownQkSources"] == block
        assert panel["targets"][0]["ownQkSources"] is None  # a logit has no QK score
        box = next(x for x in panel["groups"] if x["key"] == g.key)["box"]
        # "(weak)" where its ablation leaves over half the attention through that side
        a = summary.attention_after(g, head.node)
        weak = " (weak)" * (a.mean_side(w.side) > a.mean_before / 2)
        # "(weak)" on a line of its own where the line would pass the page's box width
        assert [f"writes target's {w.side}", "(weak)"] == box[box.index(f"writes target's "
                                                                        f"{w.side}"):][:2] \
            if weak else f"writes target's {w.side}" in box  # fmt: skip
        data = json.loads(json.dumps(summary.to_dict()))
        assert MechanismSummary.from_dict(data).to_dict() == summary.to_dict()
        where = next(i for i, x in enumerate(data["groups"]) if x["key"] == g.key)
        for bad in (summary.targets[0].node, "lorsa:9:9:9"):  # a logit, or no target
            forged = copy.deepcopy(data)
            forged["groups"][where]["writes_qk"][0]["group"] = bad
            with pytest.raises(ValueError, match="or of a head target"):
                MechanismSummary.from_dict(forged)
    assert found  # the fixture's head targets have QK sources
    # without checks nothing is ablated: the heading says the largest raiser is named
    from reports.mechanisms import QK_SOURCES_UNCHECKED

    unchecked = summarize(replacement, graph, run, max_groups=1, check=False)
    assert qk_sources_block(unchecked, head.node)[:2] == [QK_SOURCES_WHAT + ":",
                                                          *QK_SOURCES_UNCHECKED]  # fmt: skip
    # two head targets: a source's box says which one it writes (it said "target" for both)
    two = [NodeTarget("lorsa", int(full.layer[i]), int(full.pos[i]), int(full.index[i]))
           for i in sorted(heads, key=lambda i: -float(full.activation[i]))[:2]]  # fmt: skip
    graph = attribute(replacement, tokens, run=run, targets=[LogitTarget(7), *two])
    both = summarize(replacement, graph, run, max_groups=1)
    _check_qk_sources(both, graph, replacement)  # another target's group is a candidate too
    for t in both.targets:  # each block's sides: the query's first
        sides = [w.side for _, w in both.qk_sources(t.node)]
        block = qk_sources_block(both, t.node) or []
        h = len(qk_sources_heading(both))  # its heading and how they were chosen
        assert [x[0].split(" side")[0] for x in block[h:h + len(sides)]] == sorted(
            sides, key=["query", "key"].index)  # fmt: skip
    # a file written before head targets' sources were looked for says nothing of them (it
    # said no head group lowers the attention), and words its groups at a side's position as
    # it tested them: those that do not raise it
    older = copy.deepcopy(summary)
    for name in ("qk_sources_head_targets", "qk_sources_every_placed"):
        del older.settings[name]
    for g in older.groups:
        g.writes_qk = [w for w in g.writes_qk if w.group != head.node]
    assert qk_sources_block(older, head.node) is None
    roles = [(g, w) for g in older.groups for w in g.writes_qk if w.at_position]
    assert roles and all(
        "at the side's position that do" in _role_text(w, g, older) for g, w in roles
    )
    assert all("other head group" not in _role_text(w, g, older) for g, w in roles)
    boxes = [line for x in mechanisms_data(both, graph)["groups"] for line in x["box"]]
    traced = {t.node for t in both.targets}
    named = [w for g in both.groups for w in g.writes_qk if w.group in traced]
    assert named and not any(line.startswith("writes target's") for line in boxes)
    for w in named:
        t = next(t for t in both.targets if t.node == w.group)
        assert any(line.startswith(f"writes target L{t.layer} @{t.pos}'s {w.side}")
                   or line.startswith(f"writes head target {both.targets.index(t)}'s")
                   for line in boxes)  # fmt: skip


def test_a_supernode_sums_its_members_edges_exactly(graph):
    heads = graph.is_kind("lorsa").nonzero().squeeze(1).tolist()[-3:]
    view = group(graph, heads, "my heads")
    g = view.group_of(heads[0])
    assert view.groups[g].name == "my heads" and view.groups[g].members == sorted(heads)
    dense = graph.edges.toarray().astype(np.float64)
    ve = view.edges.toarray()
    for h in range(view.n_groups):
        if h == g:
            continue
        others = view.members(h)
        # Sums in float32, like the edges they add.
        np.testing.assert_allclose(ve[g, h], dense[np.ix_(heads, others)].sum(), atol=1e-6)
        np.testing.assert_allclose(ve[h, g], dense[np.ix_(others, heads)].sum(), atol=1e-6)
    # Closure holds for groups: incoming + internal + bias = summed values.
    t = ~np.isnan(view.value)
    gap = ve.sum(1) + view.internal + view.bias - np.where(t, view.value, 0)
    assert np.abs(gap[t]).max() < 1e-4
    with pytest.raises(ValueError, match="in two groups"):
        grouped(graph, [heads, heads[:1]], ["a", "b"])


def test_a_groups_promoted_tokens_are_its_members_writes_together(graph, replacement, run):
    """A group's ``promotes`` were its strongest member's decoder's (a reviewer's group of 32
    features read "promotes 'V'", fifth of its own): each member's activation times its
    decoder read through the demeaned unembedding, summed, from the weights themselves."""
    summary = summarize(replacement, graph, run, check=False)
    m = replacement.model
    unembed = m.W_U.detach() - m.W_U.detach().mean(1, keepdim=True)
    checked = 0
    for g in summary.groups:
        if g.kind not in ("lorsa", "transcoder"):
            continue
        total = torch.zeros(unembed.shape[1])
        for node in g.members:
            i = graph.id_to_index[node]
            layer, index = int(graph.layer[i]), int(graph.index[i])
            w = (replacement.lorsas[layer].W_O if g.kind == "lorsa"
                 else replacement.transcoders[layer].W_dec)[index].detach()  # fmt: skip
            total += float(graph.activation[i]) * ((w - w.mean()) @ unembed)
        want = [graph.token(t) for t in total.topk(len(g.promotes)).indices.tolist()]
        assert g.promotes == want and len(g.promotes) == N_PROMOTED
        checked += len(g.members) > 1
    assert checked


def test_a_group_may_not_take_a_nodes_own_name_or_name_a_node_twice(graph):
    """Found by a fuzz pass: a hand-made group named as another node's own group was kept, and
    ``to_networkx`` (groups keyed by name) merged the two, dropping edges; a ``Group`` whose
    ids repeat lost a member silently."""
    from circuits.groups import Group, node_name

    heads = graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
    taken = node_name(graph, heads[1])
    with pytest.raises(ValueError, match=f"the name of node {graph.ids[heads[1]]}'s own group"):
        grouped(graph, [[heads[0]]], [taken])
    view = grouped(graph, [[heads[0]]], ["mine"])
    assert view.to_networkx().number_of_nodes() == view.n_groups
    with pytest.raises(ValueError, match="names a node twice"):
        grouped(graph, [[heads[0], heads[0]]], ["twice"])
    twice = Group("z", heads[:2], "lorsa", ids=[graph.ids[heads[0]]] * 2)
    with pytest.raises(ValueError, match="group 'z' names a node twice"):
        grouped(graph, [twice])


def test_summarize_refuses_inputs_that_do_not_belong_together(graph, replacement, run, tokens):
    """Found by a fuzz pass: with check=False a run of another prompt gave a wrong margin and
    QK records; a pruned graph as ``full``, a view of another graph or a negative count failed
    deep in numpy or sliced silently."""
    from circuits.prune import prune_graph

    other = run_prompt(replacement, tokens.flip(0), run.mode, constants=True)
    with pytest.raises(ValueError, match="not of this graph's prompt"):
        summarize(replacement, graph, other, check=False)
    with pytest.raises(ValueError, match="needs the full"):
        summarize(replacement, prune_graph(graph), run, check=False)
    for name in ("max_groups", "max_paths", "beam"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got -1"):
            summarize(replacement, graph, run, check=False, **{name: -1})
    with pytest.raises(ValueError, match="tolerance must be a finite number"):
        summarize(replacement, graph, run, check=False, tolerance=float("nan"))
    other_graph = attribute(replacement, tokens.flip(0), max_logits=1, run=other)
    with pytest.raises(ValueError, match="view groups another graph's nodes"):
        summarize(replacement, graph, run, view=auto_groups(other_graph), check=False)
    with pytest.raises(ValueError, match="pruned is not a pruning of full"):
        summarize(replacement, graph, run, pruned=prune_graph(other_graph), check=False)
    # what belongs together still runs: no run (one is made), a group of heads in two blocks
    last = len(graph.tokens) - 1
    across = [i for i in graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
              if int(graph.pos[i]) == last]  # fmt: skip
    assert len({int(graph.layer[i]) for i in across}) == 2
    view = grouped(graph, [across], ["across"])
    assert summarize(replacement, graph, None, view=view, check=False).targets
    # concepts are checked with a view given too (auto_groups, which checks them, is not run)
    with pytest.raises(ValueError, match="concepts must map unit ids"):
        summarize(replacement, graph, None, view=view, check=False, concepts={"0_1": ("x", "1")})


def test_auto_groups_follow_their_rules(graph):
    view = auto_groups(graph)
    for grp in view.groups:
        kinds = {graph.kinds[i] for i in grp.members}
        assert len(kinds) == 1
        if grp.kind == "lorsa":
            assert len({(int(graph.layer[i]), int(graph.pos[i]), int(graph.attends[i]))
                        for i in grp.members}) == 1  # fmt: skip
        elif grp.kind == "bias":  # a sublayer's constant, or the position vectors
            assert len({int(graph.stage[i]) for i in grp.members}) == 1
            assert len(grp.members) == len(graph.tokens)
        elif grp.kind == "transcoder":  # no concept labels: one group per block and place
            assert len({(int(graph.layer[i]), int(graph.pos[i])) for i in grp.members}) == 1
            assert grp.concept is None and "[" not in grp.name
        else:  # embeddings, errors, logits: alone
            assert len(grp.members) == 1
    feature_places = {
        (int(graph.layer[i]), int(graph.pos[i]))
        for i in graph.is_kind("transcoder").nonzero().squeeze(1).tolist()
    }
    assert sum(grp.kind == "transcoder" for grp in view.groups) == len(feature_places)
    # With concepts, features of one place and one label group.
    feats = graph.is_kind("transcoder").nonzero().squeeze(1).tolist()
    from circuits.nodes import unit_id

    last = max(int(graph.pos[i]) for i in feats)
    same = [i for i in feats if int(graph.pos[i]) == last and int(graph.layer[i]) == 0]
    f1s = [0.9 - 0.1 * (j % 2) for j in range(len(same))]
    concepts = {unit_id(Kind.TRANSCODER, int(graph.stage[i]), int(graph.index[i])): ("x", f1)
                for i, f1 in zip(same, f1s, strict=True)}  # fmt: skip
    view = auto_groups(graph, concepts)
    made = view.groups[view.group_of(same[0])]
    assert made.members == sorted(same) and made.concept == "x"
    # labelled half: the place's other features, without a label, form a group of their own
    assert len(same) > 1
    half = {unit_id(Kind.TRANSCODER, int(graph.stage[i]), int(graph.index[i])): ("x", 0.9)
            for i in same[::2]}  # fmt: skip
    split = auto_groups(graph, half)
    labelled, rest = (split.groups[split.group_of(x[0])] for x in (same[::2], same[1::2]))
    assert labelled.members == same[::2] and labelled.concept == "x"
    assert rest.members == same[1::2] and rest.concept is None
    # the name says how well the label fits its members on the corpus: their F1s
    f1 = f"F1 {min(f1s):.2f}" + (f"-{max(f1s):.2f}" if len(same) > 1 else "")
    what = f"{len(same)} features" if len(same) > 1 else f"feature {int(graph.index[same[0]])}"
    assert made.name == f"L0 {what} @{last} [x, {f1}]"  # a group of one names its unit
    one = same[:1]
    alone = auto_groups(graph, {unit_id(Kind.TRANSCODER, int(graph.stage[one[0]]),
                                        int(graph.index[one[0]])): ("x", 0.9)})  # fmt: skip
    index = int(graph.index[one[0]])
    assert alone.groups[alone.group_of(one[0])].name == f"L0 feature {index} @{last} [x, F1 0.90]"


@pytest.mark.parametrize(
    "concepts, min_f1, message",
    [
        ({}, float("nan"), "min_f1 must be a number in"),  # NaN dropped every label
        ({}, "x", "min_f1 must be a number in"),
        ({}, 1.5, "min_f1 must be a number in"),
        ({"1_3": (["x"], 0.9)}, 0.5, "concepts must map .*: got '1_3': \\(\\['x'\\], 0.9\\)$"),
        ({"1_3": ("x", "0.9")}, 0.5, "concepts must map unit ids to"),
        ({"1_3": ("x", float("nan"))}, 0.5, "concepts must map unit ids to"),
        ({"1_3": ("x", None)}, 0.5, "concepts must map unit ids to"),
        ({"1_3": ("x", 0.9, 1)}, 0.5, "concepts must map unit ids to"),
        ({3: ("x", 0.9)}, 0.5, "concepts must map unit ids to"),
    ],
)
def test_auto_groups_refuse_bad_concepts_and_thresholds(graph, concepts, min_f1, message):
    """Found by a fuzz pass: a NaN or string ``min_f1`` was taken (NaN dropping every label),
    a list label or string F1 crashed deep inside. One line, naming what is wrong."""
    with pytest.raises(ValueError, match=message):
        auto_groups(graph, concepts, min_f1=min_f1)


# ----------------------------------------------------------------- flows and paths
def test_flows_are_total_linear_effects_and_parts_close(graph):
    t = int(graph.is_kind("logit").nonzero()[0])
    flow, h = node_flows(graph, t)
    parts = target_parts(graph, t, flow, h)
    total = parts["tokens"] + parts["errors"] + parts["constants"]
    assert total == pytest.approx(float(graph.value[t]), abs=1e-4)
    # ranked with the rest, none that is 0 (found by a fuzz pass: "own" came last and the
    # printout's first four hid it, however large)
    by_source = parts["constants_by_source"]
    assert "own" in dict(by_source) and all(v != 0 for _, v in by_source)
    assert [abs(v) for _, v in by_source] == sorted((abs(v) for _, v in by_source), reverse=True)
    assert sum(v for _, v in by_source) == pytest.approx(parts["constants"], abs=1e-5)
    # The token part by position: each position's embedding flows, largest |flow| first.
    shares = parts["tokens_by_position"]
    tokens = graph.is_kind("embedding").nonzero().squeeze(1).tolist()
    at = {}
    for i in tokens:
        at[int(graph.pos[i])] = at.get(int(graph.pos[i]), 0.0) + flow[i]
    assert "BOS" not in dict(by_source)  # this prompt does not begin with BOS
    assert {p: v for p, v in shares} == pytest.approx({p: v for p, v in at.items() if v != 0})
    # BOS at the first position holds the same in every prompt: a constant, as the position
    # vectors are, not a token of the prompt
    from toy_models.tokenizer import BOS

    opened = copy.copy(graph)
    opened.token_strings = [BOS] + list(graph.token_strings[1:])
    with_bos = target_parts(opened, t, flow, h)
    assert dict(with_bos["constants_by_source"])["BOS"] == pytest.approx(at[0])
    assert with_bos["constants"] == pytest.approx(parts["constants"] + at[0])
    assert with_bos["tokens"] == pytest.approx(parts["tokens"] - at[0])
    assert [p for p, _ in with_bos["tokens_by_position"]] == [p for p, _ in shares if p != 0]
    # and named so where paths and QK reasons start from it (a reviewer read the parts' `BOS`
    # beside paths starting `token '<|bos|>'@0`)
    first = [i for i in tokens if int(graph.pos[i]) == 0]
    assert first and all(node_name(opened, i) == "BOS" for i in first)
    assert all(node_name(graph, i).startswith("token ") for i in first)
    assert "BOS" in {g.name for g in auto_groups(opened).groups if g.is_root}
    assert [abs(v) for _, v in shares] == sorted((abs(v) for _, v in shares), reverse=True)
    assert sum(v for _, v in shares) == pytest.approx(parts["tokens"], abs=1e-6)
    # A node's flow is minus the graph's predicted change of the target when it is ablated.
    inner = graph.is_kind("lorsa", "transcoder", "bias").nonzero().squeeze(1).tolist()
    for i in inner[:: max(1, len(inner) // 12)]:
        change = predict(graph, [Intervention(graph.ids[i], "ablate")])[t]
        assert float(change) == pytest.approx(-flow[i], abs=1e-4)


def test_flows_swept_together_equal_flows_swept_alone(graph, replacement, run):
    """The summary sweeps many targets, and many QK readouts, as columns of one product;
    each column is the single sweep of its own (targets of different stages, readouts of
    different layers, whose stages above their own layer add exact zeros), up to the float32
    rounding of the products (summed in another order with more columns)."""
    logits = graph.is_kind("logit").nonzero().squeeze(1).tolist()
    inner = graph.is_kind("transcoder").nonzero().squeeze(1).tolist()
    targets = logits + [inner[-1], inner[0]]  # three stages at least
    assert len({int(graph.stage[t]) for t in targets}) >= 3
    together = many_node_flows(graph, targets)
    for t in targets:
        n = graph.n_nodes
        h, flow = np.zeros(n), np.zeros(n)
        h[t], flow[t] = 1.0, float(graph.value[t])
        EdgeSweep(graph).sweep(np.zeros(n), h, flow, int(graph.stage[t]))
        np.testing.assert_allclose(together[t][0], flow, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together[t][1], h, rtol=1e-5, atol=1e-6)
    requests, per_layer = [], {}
    for a, side in reasons_with_sides(graph, replacement, run, n=10_000):
        per_layer[a.layer] = per_layer.get(a.layer, 0) + 1
        if per_layer[a.layer] <= 3:  # a few of every layer, interleaved as they come
            requests.append((side, a.qk_head, a.query, a.key))
    assert len({side.layer for side, *_ in requests}) >= 2
    for request, (q, k, parts) in zip(requests, many_qk_side_flows(graph, requests), strict=True):
        q1, k1, parts1 = qk_side_flows(graph, *request)
        np.testing.assert_allclose(q, q1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(k, k1, rtol=1e-5, atol=1e-6)
        assert parts == parts1
    # the root tables: swept a layer at a time, returned in the requests' order
    view = auto_groups(graph)
    for request, together in zip(requests, qk_root_tables(view, requests), strict=True):
        alone = qk_root_tables(view, [request])[0]
        for rows, rows1 in zip(together[:2], alone[:2], strict=True):
            assert [r.name for r in rows] == [r.name for r in rows1]
            np.testing.assert_allclose([r.value for r in rows], [r.value for r in rows1],
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
        for table, table1 in zip(together[2:], alone[2:], strict=True):
            np.testing.assert_allclose(table, table1, rtol=1e-5, atol=1e-6)
    # a readout's flows without h kept are the same numbers, to the bit
    below = int(graph.stage.max())
    rng = np.random.default_rng(0)
    lower = graph.stage.numpy()[:, None] < below
    direct = np.where(lower, rng.standard_normal((graph.n_nodes, 3)), 0.0)
    flow, h = linear_flows(graph, direct, below)
    flow1, none = linear_flows(graph, direct, below, keep_h=False)
    assert none is None and h.any()
    np.testing.assert_array_equal(flow1, flow)


def member_level_path_flows(graph, view, t: int) -> dict[tuple, float]:
    """Brute force: every member-level path from node ``t`` down to a token embedding, its
    flow summed by its group sequence (target's group first; a hop between two members of one
    group stays in that group)."""
    dense = graph.edges.toarray().astype(np.float64)
    activation = graph.activation.double().numpy()
    kinds, of = graph.kind.numpy(), view.of_node
    states = {t: {(int(of[t]),): 1.0}}  # node -> {group sequence: d(target)/d(value)}
    out: dict[tuple, float] = {}
    for n in sorted(range(graph.n_nodes), key=lambda i: -int(graph.stage[i])):
        for seq, b in states.pop(n, {}).items():
            for s in np.flatnonzero(dense[n]).tolist():
                nxt = seq if of[s] == seq[-1] else seq + (int(of[s]),)
                if kinds[s] == Kind.EMBEDDING:
                    out[nxt] = out.get(nxt, 0.0) + b * dense[n, s]
                elif kinds[s] in (Kind.LORSA, Kind.TRANSCODER):
                    at = states.setdefault(s, {})
                    at[nxt] = at.get(nxt, 0.0) + b * dense[n, s] / activation[s]
    return out


def test_path_flows_of_a_group_spanning_stages_are_its_member_level_paths(
    graph, replacement, run, tmp_path
):
    """A review: ``top_paths`` never stepped from a group to itself nor back to a group met
    before, so in a hand-made group spanning stages the member-level paths through two of its
    members (one hop inside it, or out of it and back in) were in no path, and a path's flow
    was not the sum over the member-level paths it stands for. Checked against every
    member-level path, with a beam wide enough to keep every group-level path."""
    t = int(graph.is_kind("logit").nonzero()[0])
    flow, _ = node_flows(graph, t)
    strongest = {}
    for kind, stage in ((Kind.LORSA, 1), (Kind.TRANSCODER, 2), (Kind.TRANSCODER, 4)):
        at = ((graph.kind == kind) & (graph.stage == stage)).nonzero().squeeze(1).tolist()
        strongest[stage] = sorted(at, key=lambda i: -abs(flow[i]))[:2]
    span = strongest[1] + strongest[2][:1] + strongest[4]  # stages 1, 2 and 4
    view = group(graph, span, "span")
    brute = member_level_path_flows(graph, view, t)
    g = view.group_of(span[0])
    inside = [seq for seq in brute if seq.count(g) == 1 and len(view.members(g)) > 1]
    again = [seq for seq in brute if seq.count(g) > 1]
    assert inside and again  # the case: paths with hops inside the group, and out and back
    found = {
        (view.group_of(t), *groups[::-1]): f
        for groups, f, _ in top_paths(view, t, beam=10**6, keep=10**6)
    }
    assert set(found) == {seq for seq, f in brute.items() if f != 0}
    for seq, f in found.items():
        assert f == pytest.approx(brute[seq], rel=1e-6, abs=1e-7), seq
    # together, every token's flow: nothing is in no path
    tokens = graph.is_kind("embedding").numpy()
    assert sum(found.values()) == pytest.approx(float(flow[tokens].sum()), rel=1e-6, abs=1e-6)
    # a summary's paths may meet the group again after another (its file takes them back)
    summary = summarize(replacement, graph, run, view=view, check=False)
    save_summary(summary, tmp_path / "mechanisms.json")
    assert load_summary(tmp_path / "mechanisms.json").paths == summary.paths
    twice = [p.groups for p in summary.paths if len(set(p.groups)) < len(p.groups)]
    assert all(a != b for groups in twice for a, b in zip(groups, groups[1:], strict=False))


def test_a_path_flow_is_the_sum_over_its_member_level_paths(graph):
    t = int(graph.is_kind("logit").nonzero()[0])
    view = auto_groups(graph)
    paths = top_paths(view, t, keep=4)
    assert paths
    dense = graph.edges.toarray().astype(np.float64)
    per_unit = dense / np.where(graph.activation.numpy() != 0, graph.activation.numpy(), 1)
    for groups, flow, hops in paths:
        assert view.groups[groups[0]].is_root and len(hops) == len(groups)
        chain = groups + [view.group_of(t)]
        vec = np.zeros(graph.n_nodes)
        vec[view.members(chain[0])] = 1.0  # roots: each member's whole write
        vec = dense @ vec
        for g in chain[1:-1]:
            keep = np.zeros(graph.n_nodes)
            keep[view.members(g)] = vec[view.members(g)]
            vec = per_unit @ keep
        assert vec[t] == pytest.approx(flow, abs=1e-5)
        last = view.members(chain[-2])
        assert hops[-1] == pytest.approx(dense[t, last].sum(), abs=1e-5)


def test_paths_of_a_pruned_graph_are_refused(graph):
    """A review: ``top_paths`` of a pruned graph's view gave path flows that miss the edges
    pruning dropped (5.23 for a path of the default model whose exact flow is 5.58), where
    ``node_flows`` refuses such a graph. It is refused the same way; the full graph's paths
    stand."""
    t = int(graph.is_kind("logit").nonzero()[0])
    pruned = prune_graph(graph, node_threshold=0.5, edge_threshold=0.5)
    assert pruned.n_edges < graph.n_edges
    with pytest.raises(ValueError, match=r"needs the full \(unpruned\) graph"):
        top_paths(auto_groups(pruned), pruned.id_to_index[graph.ids[t]])
    assert top_paths(auto_groups(graph), t)


def test_key_flows_split_a_heads_flow_by_its_z_pattern(graph, replacement, tokens):
    """A Lorsa head's flow into a target splits exactly by key position: the key k part is
    ``h A[q, k] (x_k . w_v)`` as the Lorsa computes its own output, the constant ``h b_V``
    (with the residual constants that reach it) is the rest, and the parts sum to its flow."""
    t = int(graph.is_kind("logit").nonzero()[0])
    flow, h = node_flows(graph, t)
    heads = graph.is_kind("lorsa").nonzero().squeeze(1).numpy()
    carried, own = key_flows(graph, h, heads)
    assert carried.shape == (len(heads), len(tokens))
    np.testing.assert_allclose(carried.sum(1) + own, flow[heads], atol=1e-5)
    _, cache = replacement.run_with_cache(tokens[None], mode=graph.mode)
    checked = 0
    for row, m in enumerate(heads.tolist()):
        if h[m] == 0:
            continue
        layer, i, q = int(graph.layer[m]), int(graph.index[m]), int(graph.pos[m])
        lorsa = replacement.lorsas[layer]
        x = cache[f"blocks.{layer}.lorsa.hook_in"][0]
        pattern = cache[f"blocks.{layer}.lorsa.hook_pattern"][0, i // lorsa.cfg.group_size, q]
        per_key = (pattern * lorsa.values(x)[:, i]).detach().double().numpy()  # z-pattern
        assert per_key.sum() == pytest.approx(float(graph.activation[m]), abs=1e-5)
        assert not carried[row, q + 1 :].any()  # no key after the query
        # Each key's part less its share of the constant term is what the graph carries.
        constant = own[row] / h[m]
        np.testing.assert_allclose(
            carried[row] / h[m], per_key - pattern.detach().double().numpy() * constant, atol=1e-5
        )
        checked += 1
    assert checked >= 3


# ----------------------------------------------------------------- the summary
def test_the_predicting_groups_own_flagged_check_stands_beside_it(graph, replacement, run):
    """A review found the predicting group's check reversed in sign with attention free, said
    15 lines below the line naming it: a flagged check of the predicting group is printed
    right under that line (and in the report and the panel), an unflagged one is not."""
    from reports.mechanisms import (
        MARGIN_SHOWN,
        NOT_BORNE_OUT,
        PREDICTING,
        after_text,
        flagged_text,
        mark_text,
        predicting_heading,
    )

    summary = summarize(replacement, graph, run, max_groups=4)
    t = summary.targets[0]
    g = summary.group(t.predicting_group)
    check = next(c for c in g.checks if c.target == t.node)

    def measured(frozen_agrees: bool, free_agrees: bool, size: float = 1.0) -> None:
        """The check's changes made to agree or not (``size`` times the prediction), with the
        agreements, ratios and flag they give (a summary file's check: ``_check_effect``)."""
        from circuits.mechanisms import off_by_ratio, signs_agree

        p, tolerance = check.predicted, summary.tolerance
        check.frozen, check.free = (size * p if agrees else -size * p
                                    for agrees in (frozen_agrees, free_agrees))  # fmt: skip
        check.agree_frozen = signs_agree(p, check.frozen, tolerance)
        check.agree_free = signs_agree(p, check.free, tolerance)
        check.ratio_frozen = check.ratio_free = size
        check.flagged = not (check.agree_frozen and check.agree_free) or any(
            off_by_ratio(p, x, tolerance) for x in (check.frozen, check.free)
        )

    for flagged in (False, True):
        measured(True, True, 10.0 if flagged else 1.0)  # flagged: ten times the prediction
        assert check.flagged == flagged
        lines = format_summary(summary).splitlines()
        at = next(i for i, x in enumerate(lines) if x.startswith("  predicting heads"))
        at += next(i for i, x in enumerate(lines[at + 1 :], 1) if not x.startswith(" " * 6))
        assert lines[at].startswith("    its ablation check is FLAGGED") == flagged  # (under
        # the predicting heads' line, and the lines a long one goes on in, further in)
        assert bool(flagged_text(g, t)) == flagged
        assert ("its ablation check is FLAGGED" in mechanisms_html(summary)) == flagged
    why = mark_text(check, t).removeprefix("FLAGGED")
    margins = (None, None)  # the margin over the runner-up, printed where it is a contender
    if t.runner_up_probability >= MARGIN_SHOWN:
        margins = ((t.runner_up, check.margin_frozen), (t.runner_up, check.margin_free))
    # and the token now most likely, where the ablation changed it
    tops = [None if x is None else (x, p) for x, p in (
        (check.top_frozen, check.top_frozen_probability),
        (check.top_free, check.top_free_probability))]  # fmt: skip
    m = list(zip(margins, tops, strict=True))
    assert flagged_text(g, t) == (
        f"its ablation check is FLAGGED{why.replace(': ', ' (', 1) + ')' if why else ''}: "
        f"predicted {check.predicted:+.3g}, frozen attention "
        f"{check.frozen:+.3g}{after_text(t.probability, check.probability_frozen, None, *m[0])}"
        f", free {check.free:+.3g}{after_text(t.probability, check.probability_free, None, *m[1])}"
        + (
            ""
            if check.agree_frozen or check.agree_free
            else ". Ablated, it moves the target "
            "the other way with attention frozen and free: its flow is not what the model does "
            "here"
        )  # fmt: skip
    )
    # both reruns the other way: said beside it (a reviewer's predicting group, flow +0.612,
    # raised the target ablated: frozen +1.25, free +0.132); one of them alone is not
    for frozen_agrees, free_agrees in ((False, False), (True, False), (False, True)):
        measured(frozen_agrees, free_agrees)
        said = "its flow is not what the model does here" in flagged_text(g, t)
        assert said == (not frozen_agrees and not free_agrees)
        # and the heading stops calling it "predicting" (a reviewer's case kept the word)
        heading = predicting_heading(g, t)
        assert (heading == NOT_BORNE_OUT) == said and (heading == PREDICTING) != said
        assert f"  {heading}: " in format_summary(summary)
        assert f"<p>{heading}: " in mechanisms_html(summary)
    # a difference's heading names a token: the report escapes it like every other string
    t.negative, t.token = " Friday", "<i>"
    page = mechanisms_html(summary)
    assert "toward &#x27;&lt;i&gt;&#x27;" in page and "<i>" not in page


def test_a_reasons_named_tokens_are_tested_by_making_each_the_mean_token(
    graph, replacement, run, tmp_path
):
    """A QK reason's root terms name tokens, but a linear term credits what any token of the
    kind would bring too: on ``7+8=15; 15+9=`` the +10.9 of ``'='@13 x '+'@2 -> @9`` moved
    nothing when a reviewer swapped ``+``. Each named token is replaced by the mean token
    embedding and the model rerun; the attention after is recorded beside the reason.
    Against a rerun written here: the toy model's own embedding hook and the Lorsa pattern."""
    from circuits.mechanisms import TERMS_SHOWN
    from reports.html import escape
    from reports.mechanisms import block_html, token_checks_block, token_checks_text

    summary = summarize(replacement, graph, run)
    reasons = [r for g in summary.groups for r in g.qk if r.root_pairs]
    assert reasons and all(r.token_checks for r in reasons)
    w_e = replacement.model.W_E.detach()
    untrained = sorted(replacement.model.untrained_tokens or ())
    mean = w_e[[t for t in range(len(w_e)) if t not in untrained]].mean(0)
    tokens = torch.tensor(graph.tokens)[None]
    with torch.no_grad():
        _, cache = replacement.run_with_cache(tokens, mode=run.mode)
    clean_rows = {
        (r.layer, r.qk_head, r.query):
            cache[f"blocks.{r.layer}.lorsa.hook_pattern"][0, r.qk_head, r.query, : r.query + 1]
        for r in reasons
    }  # fmt: skip
    seen_verdicts = set()
    page = mechanisms_html(summary)
    # every head and feature group's "promotes": its members' writes together (once one
    # member's decoder, which a reviewer found ' hello' beside the ' stone' it brings)
    for g in [g for g in summary.groups if g.kind in ("lorsa", "transcoder")]:
        assert g.promotes
        assert "promotes " + ", ".join(escape(repr(x)) for x in g.promotes) in page
    errors_held = "errors held" in format_summary(summary)
    assert errors_held == (summary.mode == "local") == ("errors held" in page)
    # the page gives the head groups at the query their flows, as the text does (a reviewer
    # found the names alone)
    for t in summary.targets:
        for k in t.head_groups:
            name = re.escape(escape(summary.group(k).name))
            assert re.search(rf"<b>{k}</b> {name},? (flow )?<span class=", page)
    # a sparse summary's probabilities are the replacement's: said in both renderings
    says_sparse = "the replacement's, except those said to be the model's, and can differ"
    assert (says_sparse in flat(format_summary(summary))) == (summary.mode == "sparse")
    assert (escape(says_sparse) in page) == (summary.mode == "sparse")
    # ... with the model's own top token, which the replacement can rank below others (a
    # reviewer's sparse summary explained a near-tie the model did not have)
    assert (summary.model_top is not None) == (summary.mode == "sparse")
    if summary.model_top is not None:
        top = graph.model_top
        assert (summary.model_top, summary.model_top_probability) == (graph.token(top[0]), top[1])
        said = f"the model itself puts {summary.model_top!r} first"
        assert said in format_summary(summary) and escape(said) in page
    for r in reasons:
        # every printed list's terms (by position too: the mean token replaces the token in
        # its position terms as well)
        terms = r.own_pairs[:TERMS_SHOWN] + r.moved_pairs[:TERMS_SHOWN] + \
            r.position_pairs[:TERMS_SHOWN] or r.root_pairs[:TERMS_SHOWN]  # fmt: skip
        named = {x.pos for p in terms for x in (p.query, p.key) if x.kind == "embedding"}
        assert [c.pos for c in r.token_checks] == sorted(
            named, key=[c.pos for c in r.token_checks].index
        )
        assert {c.pos for c in r.token_checks} == named
        for c in r.token_checks:
            assert c.token == graph.token_strings[c.pos]
            seen = {}

            def embed(act, hook, pos=c.pos):
                act = act.clone()
                act[0, pos] = mean
                return act

            def keep(act, hook, seen=seen):
                seen[hook.name.rsplit(".", 1)[-1]] = act

            with torch.no_grad():
                replacement.run_with_hooks(
                    tokens,
                    mode=run.mode,
                    fwd_hooks=[
                        ("hook_embed", embed),
                        (f"blocks.{r.layer}.lorsa.hook_pattern", keep),
                        (f"blocks.{r.layer}.lorsa.hook_in", keep),
                    ],
                )
            row = seen["hook_pattern"][0, r.qk_head, r.query, : r.query + 1]
            assert c.attention == pytest.approx(float(row[r.key]), abs=1e-5)
            # the specific part: this query less the mean of the queries after BOS, against
            # this key less the mean of the keys up to the query
            lorsa = replacement.lorsas[r.layer]
            with torch.no_grad():
                q, k = (torch.einsum("pd,de->pe", seen["hook_in"][0], w[r.qk_head]) + b[r.qk_head]
                        for w, b in ((lorsa.W_Q, lorsa.b_Q), (lorsa.W_K, lorsa.b_K)))  # fmt: skip
            du = q[r.query] - q[1:].mean(0)
            dv = k[r.key] - k[: r.query + 1].mean(0)
            expected = float(du @ dv) / lorsa.cfg.d_qk**0.5
            assert c.specific == pytest.approx(expected, abs=1e-4)
            gain = row - clean_rows[r.layer, r.qk_head, r.query]
            gain[r.key] = 0
            if gain.max() > 1e-6:
                assert c.rival == int(gain.argmax()) and c.rival_attention == pytest.approx(
                    float(row[c.rival]), abs=1e-5)  # fmt: skip
            else:
                assert c.rival is None
        line = token_checks_text(r, summary)
        block = token_checks_block(r, summary)  # a line per token under its heading
        assert line == f"{block[0]} {', '.join(block[1:])}"
        printed = format_summary(summary).splitlines()
        at = next(i for i, x in enumerate(printed) if x.strip() == block[0])
        assert [x.strip() for x in printed[at : at + len(block)]] == block
        # the report too (a reviewer found it left them out)
        assert block_html(block, "div") in page
        assert f"attention to {r.key_token!r}@{r.key} {r.attention:.2f} -> " in line
        rerun = "the model rerun" if summary.mode == "local" else "the replacement rerun"
        assert rerun in line
        for c in r.token_checks:  # each with its printed terms' sum and what the rerun says
            total = sum(p.value for p in terms if any(
                x.kind == "embedding" and x.pos == c.pos for x in (p.query, p.key)))  # fmt: skip
            change = c.attention - r.attention
            own_part = (c.specific - r.specific) * total < 0  # the part the terms split
            # what the terms alone do: the key's score less them, the other keys' kept
            e = math.exp(-total)
            alone = r.attention * e / (1 - r.attention + r.attention * e) - r.attention
            too_far = abs(change) > 3 * abs(alone) and abs(change - alone) >= 0.05
            verdict = "little change" if abs(change) < 0.05 else \
                "the other way" if (change < 0) != (total > 0) else \
                "the attention as they say, this key's specific part not" if not own_part \
                else "the way they say, but further than their size alone" if too_far \
                else "as they say" if abs(change) >= abs(alone) / 2 else "in part"  # fmt: skip
            assert f"(terms {total:+.3g}: {verdict}" in line
            seen_verdicts.add(verdict)
    assert len(seen_verdicts) >= 2, seen_verdicts  # the tiny model's reasons differ
    path = tmp_path / "mechanisms.json"
    save_summary(summary, path)
    i, j = next((i, j) for i, g in enumerate(summary.groups) for j, r in enumerate(g.qk)
                if r.token_checks)  # fmt: skip
    key = summary.groups[i].qk[j].key
    for edit in ({"token": "zz"}, {"pos": len(summary.tokens)}, {"attention": 1.5},
                 {"rival": key, "rival_attention": 0.5, "rival_before": 0.1},  # the key itself
                 {"rival": 0, "rival_attention": 0.1, "rival_before": 0.5},  # it fell
                 {"rival": 0, "rival_attention": None, "rival_before": None}):  # fmt: skip
        d = json.loads(path.read_text())
        d["groups"][i]["qk"][j]["token_checks"][0].update(edit)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        with pytest.raises(ValueError, match="token_checks"):
            load_summary(bad)
    # a source's or a group's place outside the prompt (a fuzz pass: +-2**63 loaded and rendered)
    g = next(i for i, x in enumerate(summary.groups) if x.qk and x.qk[0].query_sources)
    side = next(c for c, xs in summary.groups[g].qk[0].query_sources.items() if xs)
    for edit in (
        lambda d: d["groups"][g]["qk"][0]["query_sources"][side][0].update(pos=2**63),
        lambda d: d["groups"][g].update(pos=-(2**63)),
        lambda d: d["groups"][g]["qk"][0]["root_pairs"][0]["key"].update(layer=-7),
    ):
        d = json.loads(path.read_text())
        edit(d)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        with pytest.raises(ValueError, match=r"\.(pos|layer): "):
            load_summary(bad)
    without = summarize(replacement, graph, run, check=False)  # the checks' switch: none
    assert not any(r.token_checks for g in without.groups for r in g.qk)


def test_a_token_check_that_changes_nothing_measures_the_reasons_own_parts(
    graph, replacement, run, monkeypatch
):
    """``tokens_to_mean`` with the "mean" token each position's own embedding reruns the clean
    model: the attention and the specific part it measures are the reason's own, computed
    through the QK attribution (another route), and no key gains."""
    import circuits.interventions as interventions

    summary = summarize(replacement, graph, run, check=False)
    reasons = [r for g in summary.groups for r in g.qk][:6]
    assert reasons
    w_e = replacement.model.W_E.detach()
    for pos in sorted({r.key for r in reasons})[:3]:
        own = w_e[int(graph.tokens[pos])]
        monkeypatch.setattr(interventions, "mean_token_embedding", lambda _, own=own: own)
        reads = [(r.layer, r.qk_head, r.query, r.key) for r in reasons]
        after = interventions.tokens_to_mean(replacement, run, [pos], reads)
        for j, r in enumerate(reasons):
            assert float(after.attention[0, j]) == pytest.approx(r.attention, abs=1e-5)
            assert float(after.specific[0, j]) == pytest.approx(r.specific, abs=1e-4)
            assert int(after.rival[0, j]) == -1


def test_a_long_printed_line_breaks_at_a_clause_its_rest_further_in():
    """The printout's lines of 151-370 characters (a review): ``fitted`` breaks what its
    blocks leave long at a clause (after ";"), else between columns, list items (after ","),
    before a parenthesis, at a space, each part within the width, the rest four spaces further
    in; every character but the spaces at a break kept, in order; a single word longer than
    the width stays whole."""
    from reports.mechanisms import PRINT_WIDTH, fitted

    def flat(lines):
        return " ".join(" ".join(lines).split())

    line = "  scores: " + "; ".join(f"part {i}, of {i} and {i + 1}" for i in range(9))
    out = fitted(line, width=60)
    assert len(out) > 1 and all(len(x) <= 60 for x in out) and flat(out) == flat([line])
    assert all(x.endswith(";") for x in out[:-1])  # at clauses first, never inside one
    assert all(x.startswith("      part ") for x in out[1:])  # four further in
    items = "  flow " + ", ".join(f"'token {i}' +{i}.5" for i in range(12))
    out = fitted(items, width=50)
    assert all(len(x) <= 50 and x.endswith(",") for x in out[:-1]) and flat(out) == flat([items])
    columns = "  1_686_7  0.051  L0 feature 686 @7 -> 'four'  [concept: family: x, F1 0.44]"
    head = "  1_686_7  0.051  L0 feature 686 @7 -> 'four'"  # its concept under it
    assert fitted(columns, width=60) == [head, "      [concept: family: x, F1 0.44]"]
    assert fitted(columns) == [columns] and PRINT_WIDTH == 150  # short lines as they were
    # a path: before a step's "=>", the rest under its first step
    path = "    +1.21  " + " => ".join(f"L{i} 30 features @{i}" for i in range(8))
    out = fitted(path, width=70, more=" " * 11, breaks=(" => ",))
    assert all(len(x) <= 70 for x in out) and all(x.startswith(" " * 11 + "=> L") for x in out[1:])
    assert flat(out) == flat([path])
    # a word longer than the width: alone on its line, whole
    long = "x" * 80
    assert fitted(f"  a; {long}", width=60) == [f"  a; {long}"]  # no break within the width
    assert fitted(f"  {'b ' * 25}{long}", width=60) == [f"  {'b ' * 25}".rstrip(), f"      {long}"]


def test_a_long_printed_line_breaks_outside_parentheses_where_it_can():
    """A review: ``fitted`` broke the printout's long lines inside a parenthesis (``(...`` on
    one line, ``...)`` on the next) where a break outside one fitted. Breaks outside
    parentheses and brackets come first; a parenthesised part that runs past the width goes
    whole onto the next line where it fits there, and is broken inside only where it alone
    is over the width; a bracket in a quoted token counts for nothing. Every line within the
    width, every character but the spaces at a break kept, in order."""
    from reports.mechanisms import fitted

    def flat(lines):
        return " ".join(" ".join(lines).split())

    # a clause inside the parenthesis was taken over an item outside it
    line = ("  g1 heads L1 @9: reads 'a'@4 +0.51, 'b'@5 +0.22 (moved there by the layer-0 heads; "
            "the rest from BOS) and more words that follow it here")  # fmt: skip
    assert fitted(line, width=80) == [
        "  g1 heads L1 @9: reads 'a'@4 +0.51,",
        "      'b'@5 +0.22 (moved there by the layer-0 heads; the rest from BOS) and more",
        "      words that follow it here",
    ]
    part = (
        "(which the layer-0 heads moved there, through attention, from the key before it; checked)"
    )
    head = f"  g3 heads L1 @9: {'x' * 20} reads 'a'@4 +0.51, 'b'@5 +0.22"
    line = f"{head} {part} and more words after it"
    out = fitted(line, width=100)  # the part fits a line of its own: before it
    assert out == [head, f"      {part} and", "      more words after it"]
    out = fitted(line, width=80)  # it does not: inside it, the line as full as it goes
    assert out == [
        f"{head} (which the",
        "      layer-0 heads moved there, through attention, from the key before it;",
        "      checked) and more words after it",
    ]
    # a token's ')' does not close the parenthesis it stands in
    line = ("  g2 heads: " + "y" * 30 + " (reads ')'@4 +0.50 and ' ('@5 +0.20; the rest from BOS, "
            "a constant) then, after it, more words and more")  # fmt: skip
    out = fitted(line, width=80)
    assert (
        out[1] == "      (reads ')'@4 +0.50 and ' ('@5 +0.20; the rest from BOS, a constant) then,"
    )
    for width in (80, 60, 50):
        out = fitted(line, width=width)
        assert all(len(x) <= width for x in out) and flat(out) == flat([line])


def test_an_attention_change_is_never_printed_as_none():
    """Two decimals, or three figures where two would print a real change as none."""
    from reports.mechanisms import attention_change

    assert attention_change(0.84, 0.26) == "0.84 -> 0.26"
    assert attention_change(0.0579, 0.0569) == "0.0579 -> 0.0569"
    assert attention_change(0.5, 0.5) == "0.50 -> 0.50"
    assert attention_change(0.8, 0.003, arrow="→") == "0.80→0.003"


def test_a_differences_most_likely_other_token_is_said_as_what_it_is():
    """``' September' - ' October' = 5.79; runner-up ' October', margin +5.79`` restated the
    target (a reviewer's), and leaving the negative out named a third token "runner-up" beside
    a negative of p 0.985 (the next review): the most likely token other than the target's is
    named, as the difference's own negative where it is, without a margin; in sparse mode a
    probability is given beside the model's."""
    from circuits.mechanism_file import TargetRecord
    from circuits.mechanisms import runner_up
    from reports.mechanisms import probability_text, rival_text

    probs = torch.tensor([0.05, 0.6, 0.3, 0.05])
    assert runner_up(probs, 1) == 2 and runner_up(probs, 2) == 1
    assert runner_up(torch.tensor([1.0]), 0) is None
    t = TargetRecord(
        node="9_1-2_3", token=" September", negative=None, probability=0.99, value=5.79,
        tokens=5.79, errors=0.0, constants=0.0, constants_by_source=[], runner_up=None,
        runner_up_probability=None, margin=None, predicting_group=None, model_probability=0.2,
    )  # fmt: skip
    assert probability_text(t) == "(p=0.990; the model's 0.200)"
    assert probability_text(dataclasses.replace(t, negative=" October", model_probability=None)) \
        == "(p=0.990 for ' September')"  # fmt: skip
    # a sparse difference: the model's for each token, named (a reviewer read "the model's
    # 0.137" as the difference's, which was its first token's alone)
    sparse_diff = dataclasses.replace(t, negative=" October", negative_probability=0.141,
                                      model_probability=0.137,
                                      model_negative_probability=0.024)  # fmt: skip
    assert probability_text(sparse_diff) == ("(p=0.990 for ' September', 0.141 for ' October'; "
                                             "the model's 0.137 for ' September', 0.024 for "
                                             "' October')")  # fmt: skip
    assert rival_text(t) == ""
    diff = dataclasses.replace(t, negative="3", token="4", probability=0.009, value=-4.71)
    behind = dataclasses.replace(diff, runner_up="3", runner_up_probability=0.985, margin=-4.71,
                                 runner_up_is_negative=True)  # fmt: skip
    assert rival_text(behind) == "top token: its negative '3' p=0.985"
    ahead = dataclasses.replace(behind, probability=0.7, runner_up_probability=0.224,
                                margin=1.14)  # fmt: skip
    assert rival_text(ahead) == "runner-up: its negative '3' p=0.224"
    # by the record's field, never by comparing texts: a third token of the same text is not it
    assert rival_text(dataclasses.replace(behind, runner_up_is_negative=False)) == (
        "top token '3' p=0.985, margin of '4' over it -4.71"  # the first token's, said so
    )
    third = dataclasses.replace(ahead, runner_up="2", runner_up_probability=0.05, margin=2.6,
                                runner_up_is_negative=False)  # fmt: skip
    assert rival_text(third) == "runner-up '2' p=0.050, margin of '4' over it +2.6"


def test_a_head_targets_words_say_what_is_there():
    """A review of node targets: a layer-0 head target promised "the head groups named below"
    and printed a bare "groups:"; "own -0.805" among the constants could not be decoded."""
    from circuits.mechanism_file import TargetRecord
    from reports.mechanisms import constant_source, reads_text

    t = TargetRecord(
        node="0_772_7", token="L0 head 772 @7", negative=None, probability=None, value=2.0,
        tokens=2.0, errors=0.0, constants=0.0, constants_by_source=[], runner_up=None,
        runner_up_probability=None, margin=None, predicting_group=None, kind="lorsa", reads=6,
    )  # fmt: skip
    tokens = ["<|bos|>", "Monday", ",", " Tuesday", ",", ",", " Wednesday", ","]
    assert "no head group below it writes there" in reads_text(t, tokens)
    assert "ranked below by flow are those there" in reads_text(
        dataclasses.replace(t, head_groups=["g0"]), tokens
    )
    assert constant_source("own") == "the nodes' own biases"
    assert constant_source("L0 attn bias") == "L0 attn bias"


def test_a_feature_targets_movers_are_not_called_predicting():
    """A review: ``Z Y X W V`` with ``--mode sparse --target-node transcoder:2:6:638`` printed
    "predicting heads (the largest mover from another position)" above a feature's
    pre-activation, which predicts no token; a head target's heading says where they are."""
    from types import SimpleNamespace

    from circuits.mechanism_file import TargetRecord
    from reports.mechanisms import FEATURE_TARGET, HEAD_TARGET, PREDICTING, predicting_heading

    t = TargetRecord(
        node="5_638_6", token="L2 feature 638 @6", negative=None, probability=None, value=5.5,
        tokens=3.7, errors=0.0, constants=1.8, constants_by_source=[], runner_up=None,
        runner_up_probability=None, margin=None, predicting_group="g0", kind="transcoder",
    )  # fmt: skip
    g = SimpleNamespace(attends=2, pos=6, flow={"5_638_6": 0.164})
    assert predicting_heading(g, t) == FEATURE_TARGET
    assert "predicting" not in FEATURE_TARGET and FEATURE_TARGET != HEAD_TARGET
    logit = dataclasses.replace(t, node="9_1_6", kind="logit", token="'x'")
    assert predicting_heading(
        SimpleNamespace(attends=2, pos=6, flow={"9_1_6": 1.0}, checks=[]), logit
    ) == (PREDICTING)


def test_a_cause_is_named_only_where_its_rerun_closes_the_gap():
    """A review: "through attention (with it held: -6.99)" against a prediction of -20.9 and a
    free -6.57: the held rerun passed the 3x line by a hair (0.334x) and closed 3% of the gap.
    A rerun names the cause only where it also closes at least half of it."""
    from circuits.mechanism_file import EffectCheck
    from reports.mechanisms import free_cause, mark_text

    c = EffectCheck(
        target="t", predicted=-20.9, frozen=-9.04, free=-6.57, agree_frozen=True,
        agree_free=True, ratio_frozen=0.43, ratio_free=0.314, flagged=True,
        free_ln_held=-6.2, agree_free_ln_held=True, free_final_ln_held=-6.6,
        agree_free_final_ln_held=True, free_attention_held=-6.99, agree_free_attention_held=True,
    )  # fmt: skip
    assert free_cause(c) is None
    assert "through attention" not in mark_text(c, None)
    assert "also with the LayerNorms or the attention held" in mark_text(c, None)
    closer = dataclasses.replace(c, free_attention_held=-14.0)  # 0.67x: log-ratio gap 35% left
    assert free_cause(closer) == "attention"
    assert "through attention (with it held: -14)" in mark_text(closer, None)


def test_a_mark_reads_small_effects_at_the_summarys_tolerance(
    graph, replacement, run, tmp_path, monkeypatch
):
    """A prediction and a rerun both below the summary's tolerance agree (as a check's own flag
    reads them): the mark's cause and its "x off" read them so too (they took the ratio
    alone: a held rerun of -0.0001 against a prediction of +0.004 named no cause), at the
    tolerance the summary was made with, which a file must give as a finite number >= 0."""
    from circuits.mechanism_file import EffectCheck
    from reports.mechanisms import free_cause, mark_text

    small = EffectCheck(
        target="t", predicted=0.004, frozen=0.0039, free=-0.8, agree_frozen=True,
        agree_free=False, ratio_frozen=0.975, ratio_free=200.0, flagged=True,
        free_ln_held=0.3, agree_free_ln_held=True, free_final_ln_held=0.0001,
        agree_free_final_ln_held=True, free_attention_held=0.5, agree_free_attention_held=True,
    )  # fmt: skip
    assert free_cause(small) == "final LayerNorm"  # -0.0001 and +0.004: both below 0.01
    assert free_cause(small, tolerance=0.001) is None  # at a smaller tolerance they are apart
    assert mark_text(small, None) == "FLAGGED: free other sign, from the final LayerNorm " \
        "(held: +0.0001)"  # fmt: skip
    tiny = dataclasses.replace(small, frozen=0.0004, ratio_frozen=0.1)  # both below 0.01
    assert "frozen" not in mark_text(tiny, None)
    assert "frozen 0.1x" in mark_text(tiny, None, tolerance=0.0001)
    # the summary's own tolerance reaches the printers, and a file's is checked (the fixture's
    # random heads move attention by less than ATTENTION_LOWERED: at 0 its QK sources, whose
    # free effects come through attention, are in the summary)
    import circuits.mechanisms

    monkeypatch.setattr(circuits.mechanisms, "ATTENTION_LOWERED", 0.0)
    summary = summarize(replacement, graph, run, max_groups=1, tolerance=0.5)
    assert summary.tolerance == 0.5
    path = tmp_path / "mechanisms.json"
    save_summary(summary, path)
    assert load_summary(path).tolerance == 0.5
    for bad in ("0.5", -1, float("inf"), True):
        d = summary.to_dict()
        d["settings"]["tolerance"] = bad
        path.write_text(json.dumps(d))
        with pytest.raises(ValueError, match="settings.tolerance: .*not a finite number >= 0"):
            load_summary(path)
    for name in ("qk_sources", "qk_sources_most"):  # printed in the words of a side's sources
        for bad in (0, 2.0, "16", True):
            d = summary.to_dict()
            d["settings"][name] = bad
            path.write_text(json.dumps(d))
            with pytest.raises(ValueError, match=f"settings.{name}: .*not a whole number >= 1"):
                load_summary(path)
    from reports.mechanisms import check_texts

    text = format_summary(summary, every_check=True)
    targets = {t.node: t for t in summary.targets}
    checks = [c for g in summary.groups for c in g.checks]
    lines = text.splitlines()
    at = [i for i, x in enumerate(lines) if x.strip().startswith("ablate")]
    assert len(at) == len(checks)  # printed in order, each ending in its mark (a long one on
    for i, c in zip(at, checks, strict=True):  # the lines under the prediction)
        end = next(j for j in range(i, len(lines)) if lines[j].endswith("]"))
        mark = f"[{check_texts(c, targets[c.target], 0.5)[2]}]"
        assert flat(" ".join(lines[i : end + 1])).endswith(flat(mark))
    moved = [c for c in checks if check_texts(c, targets[c.target], 0.5)[2]
             != check_texts(c, targets[c.target])[2]]  # fmt: skip
    assert moved or graph.mode == "sparse"  # local: an "ok ... through attention" at 0.01


def test_a_checks_mark_says_why_it_is_flagged_and_where_the_probability_disagrees():
    """``[FLAGGED]`` alone read as "the group does not matter" where the demeaned logit rose
    while the token's probability collapsed (a reviewer's ``Friday Saturday Sunday``:
    predicted -8.96, frozen +0.55 with p 0.675 -> 0.038); an ``ok`` hid a probability that
    moved the other way. The mark names each measurement at fault and the probability's
    direction against the sign it contradicts."""
    from circuits.mechanism_file import EffectCheck
    from reports.mechanisms import mark_text

    def check(predicted, frozen, free, p_frozen, p_free, flagged):
        return EffectCheck(
            target="t", predicted=predicted, frozen=frozen, free=free,
            agree_frozen=predicted * frozen > 0, agree_free=predicted * free > 0,
            ratio_frozen=abs(frozen / predicted), ratio_free=abs(free / predicted),
            flagged=flagged, probability_frozen=p_frozen, probability_free=p_free,
        )  # fmt: skip

    from types import SimpleNamespace

    def logit(p, negative=None):  # what the mark reads of a target
        return SimpleNamespace(probability=p, negative=negative)

    # where free is flagged, the rerun with the LayerNorm scales held says whether they undo it
    layernorm = dataclasses.replace(check(-2.0, -1.5, 0.4, 0.3, 0.5, True), free_ln_held=-1.2,
                                    agree_free_ln_held=True)  # fmt: skip
    assert mark_text(layernorm, logit(0.4)) == (
        "FLAGGED: free other sign, from the LayerNorms (all held: -1.2)"
    )
    # the final LayerNorm's scale alone held (a summary written before it has no such rerun)
    final = dataclasses.replace(layernorm, free_final_ln_held=-1.1, agree_free_final_ln_held=True)
    assert mark_text(final, logit(0.4)) == (
        "FLAGGED: free other sign, from the final LayerNorm (held: -1.1)"
    )
    blocks = dataclasses.replace(final, free_final_ln_held=0.2, agree_free_final_ln_held=False)
    assert mark_text(blocks, logit(0.4)) == (
        "FLAGGED: free other sign, from the LayerNorms (all held: -1.2; the final one alone: +0.2)"
    )
    tiny = dataclasses.replace(final, free_final_ln_held=-0.1)  # its sign, 20x off: not it
    assert mark_text(tiny, logit(0.4)) == mark_text(blocks, logit(0.4)).replace("+0.2", "-0.1")
    # the attention patterns held: where neither LayerNorm rerun agrees and this does, the
    # group acts through attention (a reviewer's query-side heads of an induction group:
    # predicted -1.23, free -11.2, patterns held -1.54)
    query_side = dataclasses.replace(
        check(-1.23, -1.35, -11.2, 0.8, 0.0001, True), free_ln_held=-10.0,
        agree_free_ln_held=True, free_final_ln_held=-11.0, agree_free_final_ln_held=True,
        free_attention_held=-1.54, agree_free_attention_held=True,
    )  # fmt: skip
    assert mark_text(query_side, logit(0.95)) == (
        "FLAGGED: free 9.1x, through attention (with it held: -1.54)"
    )
    neither = dataclasses.replace(query_side, free_attention_held=-11.0)
    assert mark_text(neither, logit(0.95)) == (
        "FLAGGED: free 9.1x, also with the LayerNorms or the attention held (LayerNorms: -10; "
        "final LayerNorm: -11; attention: -11)"  # how near each came: none half the gap
    )
    # too large, and holding the patterns takes most of it away: the excess goes through
    # attention, though the held rerun falls short of the prediction (a reviewer's
    # predicted -0.622, free -3.41, held -0.009: the heads' attention 0.96 -> 0.02)
    excess = dataclasses.replace(
        check(-0.622, -0.6, -3.41, 0.5, 0.1, True), free_ln_held=-3.3,
        agree_free_ln_held=True, free_final_ln_held=-3.35, agree_free_final_ln_held=True,
        free_attention_held=-0.009, agree_free_attention_held=True,
    )  # fmt: skip
    assert mark_text(excess, logit(0.95)) == (
        "FLAGGED: free 5.5x, through attention (with it held: -0.009)"
    )
    kept = dataclasses.replace(excess, free_attention_held=-1.5)  # most of it stays held
    assert "also with the LayerNorms or the attention held" in mark_text(kept, logit(0.95))
    # ... and an "ok" whose free effect comes through attention alone says so (the
    # previous-token heads at an induction key: predicted -3.91, free -8.3, patterns held
    # +0.37: the value path the graph predicts does nothing in the model)
    key_side = dataclasses.replace(
        check(-3.91, -2.28, -8.3, 0.9, 0.0062, False), free_ln_held=-8.0,
        agree_free_ln_held=True, free_final_ln_held=-8.1, agree_free_final_ln_held=True,
        free_attention_held=0.37, agree_free_attention_held=False,
    )  # fmt: skip
    key_side = dataclasses.replace(key_side, ratio_free=8.3 / 3.91)
    assert mark_text(key_side, logit(0.95)) == ("ok; free: through attention (with it held: +0.37)")
    value_path = dataclasses.replace(key_side, free_attention_held=-3.0,
                                     agree_free_attention_held=True)  # fmt: skip
    assert mark_text(value_path, logit(0.95)) == "ok"
    # the margin over the runner-up, where the runner-up is a contender (p >= MARGIN_SHOWN)
    from reports.mechanisms import MARGIN_SHOWN, check_texts

    item = dataclasses.replace(check(-17.4, -16.0, -15.0, 0.001, 0.0003, False),
                               margin_frozen=-2.5, margin_free=-1.81)  # fmt: skip
    months = SimpleNamespace(probability=0.92, negative=None, token=" April",
                             runner_up=" May", runner_up_probability=0.05)  # fmt: skip
    assert check_texts(item, months)[:2] == (
        " (p 0.92 -> 0.001; margin over ' May' -2.5)",
        " (p 0.92 -> 0.0003; margin over ' May' -1.81)",
    )
    sure = SimpleNamespace(**{**vars(months), "runner_up_probability": MARGIN_SHOWN / 2})
    assert check_texts(item, sure)[:2] == (" (p 0.92 -> 0.001)", " (p 0.92 -> 0.0003)")
    too = dataclasses.replace(layernorm, free_ln_held=0.3, agree_free_ln_held=False)
    assert mark_text(too, logit(0.4)) == (
        "FLAGGED: free other sign, also with the LayerNorms held (LayerNorms: +0.3)"
    )
    small = dataclasses.replace(layernorm, free_ln_held=-0.1)  # agrees in sign, 20x off
    assert mark_text(small, logit(0.4)) == (
        "FLAGGED: free other sign, also with the LayerNorms held (LayerNorms: -0.1)"
    )
    weak = dataclasses.replace(layernorm, free=-0.5, ratio_free=0.25, agree_free=True,
                               probability_free=0.35)  # fmt: skip
    assert mark_text(weak, logit(0.4)) == (  # the free ratio is the free rerun's own
        "FLAGGED: free 0.25x, from the LayerNorms (all held: -1.2)"
    )
    friday = check(-8.96, 0.552, -7.01, 0.0384, 0.01, True)
    assert mark_text(friday, logit(0.675)) == (
        "FLAGGED: frozen other sign, its probability as predicted"
    )
    assert mark_text(friday, logit(0.675, negative="' Sunday'")) == "FLAGGED: frozen other sign"
    apart = check(-8.96, 0.552, -7.01, 0.9, 0.01, True)  # the probability rose too
    assert mark_text(apart, logit(0.675)) == "FLAGGED: frozen other sign"
    assert mark_text(check(-2.0, -1.5, -0.2, 0.3, 0.35, True), logit(0.4)) == "FLAGGED: free 0.1x"
    assert mark_text(check(-2.0, -1.5, -0.2, 0.3, 0.5, True), logit(0.4)) == (
        "FLAGGED: free 0.1x, its probability the other way"
    )
    assert mark_text(check(-2.0, -1.5, -1.0, 0.3, 0.5, False), logit(0.4)) == (
        "ok; free: its probability the other way"
    )
    # a flag's note on a measurement that passed stands after it, apart from the reasons
    assert mark_text(check(-2.0, -1.5, -0.2, 0.5, 0.3, True), logit(0.4)) == (
        "FLAGGED: free 0.1x; frozen: its probability the other way"
    )
    # a change too small to read (0.98620 -> 0.98593) is none (a reviewer's ``The month after
    # June is``: "its probability the other way" on it)
    assert mark_text(check(1.62, 1.62, 0.395, 0.98593, 0.978, True), logit(0.98620)) == (
        "FLAGGED: free 0.24x"
    )
    assert mark_text(check(-2.0, -1.5, -1.0, None, None, False), None) == "ok"
    assert mark_text(check(-2.0, 1.5, 1.0, None, None, True), None) == (
        "FLAGGED: frozen other sign; free other sign"
    )
    # an unlikely target's probability that moves the other way by far more than 5% of it is
    # said, however small the change (a review's ``After Thursday comes`` with ``--target
    # ' Saturday'``, p 0.0024: its predicting group's ablation -3.9 frozen, -3.14 free, with p
    # 0.0024 -> 0.0043 and 0.0039, read "ok" under an absolute floor of 0.005); under 5% of
    # it, nothing is
    saturday = check(-3.1, -3.905, -3.14, 0.004283, 0.003945, False)
    assert mark_text(saturday, logit(0.002385)) == (
        "ok; frozen: its probability the other way; free: its probability the other way"
    )
    assert mark_text(check(-3.1, -3.9, -3.1, 0.0025, 0.00239, False), logit(0.002385)) == "ok"


def _zeroing_hooks(graph, members) -> list:
    """Forward hooks that zero ``members`` (node ids of heads and features) where the model
    computes them: written with the model's hook names alone."""
    from replacement.model import hook_name

    site = {Kind.LORSA: "lorsa.hook_z", Kind.TRANSCODER: "transcoder.hook_acts"}
    zeros: dict[str, list] = {}
    for node in members:
        i = graph.id_to_index[node]
        name = hook_name(int(graph.layer[i]), site[Kind(int(graph.kind[i]))])
        zeros.setdefault(name, []).append((int(graph.pos[i]), int(graph.index[i])))

    def zero(entries):
        def hook(act, hook):
            act = act.clone()
            for p, index in entries:
                act[:, p, index] = 0
            return act

        return hook

    return [(name, zero(entries)) for name, entries in zeros.items()]


def _free_by_hand(replacement, graph, members, target, held: str) -> float:
    """A logit target's change when ``members`` (node ids) are zeroed where the model computes
    them, everything recomputed but the final LayerNorm's scale (``held`` "final") or every
    attention pattern (``held`` "patterns"), held at its clean value: written with the model's
    hooks alone."""
    from replacement.model import hook_name

    clean: dict = {}

    def keep(act, hook):
        clean[hook.name] = act.detach()

    n_layers = replacement.cfg.n_layers
    names = (["ln_final.hook_scale"] if held == "final"
             else [hook_name(l, "lorsa.hook_pattern") for l in range(n_layers)])  # fmt: skip
    tokens = torch.tensor(graph.tokens)[None]
    before = replacement.run_with_hooks(tokens, mode=graph.mode,
                                        fwd_hooks=[(name, keep) for name in names])  # fmt: skip
    hooks = _zeroing_hooks(graph, members)
    hooks += [(name, lambda act, hook: clean[hook.name]) for name in names]
    after = replacement.run_with_hooks(tokens, mode=graph.mode, fwd_hooks=hooks)
    record = graph.logit_record(graph.id_to_index[target])

    def read(logits):
        logits = logits[0, -1].detach().double()
        if record.negative is not None:
            return float(logits[record.token] - logits[record.negative])
        return float(logits[record.token] - logits.mean())

    return read(after) - read(before)


def _attention_by_hand(replacement, graph, members, reads) -> tuple[list, ...]:
    """QK heads' attention ``reads`` ((layer, qk_head, query, key) each) in the model, clean and
    with ``members`` (node ids) zeroed where the model computes them, everything else
    recomputed, then with the query's vector alone as zeroed (every key's clean) and the keys'
    alone: written with the model's hooks and whole patterns."""
    from by_hand import side_patterns

    from replacement.model import hook_name

    seen: dict = {}
    layers = sorted({layer for layer, *_ in reads})

    def keep(act, hook):
        seen[hook.name] = act.detach()[0]

    tokens = torch.tensor(graph.tokens)[None]
    names = [hook_name(layer, f"lorsa.{site}") for layer in layers
             for site in ("hook_pattern", "hook_in")]  # fmt: skip
    out, inputs = [], []
    for hooks in ([], _zeroing_hooks(graph, members)):
        replacement.run_with_hooks(tokens, mode=graph.mode,
                                   fwd_hooks=hooks + [(x, keep) for x in names])  # fmt: skip
        out.append([float(seen[hook_name(layer, "lorsa.hook_pattern")][h, q, k])
                    for layer, h, q, k in reads])  # fmt: skip
        inputs.append({layer: seen[hook_name(layer, "lorsa.hook_in")] for layer in layers})
    clean, zeroed = inputs
    mixed = {layer: side_patterns(replacement.lorsas[layer], clean[layer], zeroed[layer])
             for layer in layers}  # fmt: skip
    for side in (0, 1):
        out.append([float(mixed[layer][side][h, q, k]) for layer, h, q, k in reads])
    return tuple(out)


def _qk_subjects(summary, graph) -> list[tuple]:
    """Whose QK sources a summary looks for: each target's predicting head group (its QK
    heads weighted by their share of its |flow| into the first target) and each head target
    with its own QK reason (its one QK head), as (key, name, first reason, heads, weights)."""
    flow = node_flows(graph, graph.id_to_index[summary.targets[0].node])[0]
    out = []
    for t in summary.targets:
        if t.predicting_group is not None:
            p = summary.group(t.predicting_group)
            share = {h: 0.0 for h in p.qk_heads}  # each QK head's share of the group's |flow|
            for m in p.members:
                i = graph.id_to_index[m]
                share[int(graph.index[i]) // graph.group_size] += abs(float(flow[i]))
            heads = sorted(p.qk_heads, key=lambda h: -share[h])
            weights = [share[h] / sum(share.values()) for h in heads]
            out.append((p.key, p.name, p.qk[0], heads, weights))
        if t.qk:  # a head target's own QK reason
            out.append((t.node, None, t.qk[0], [t.qk[0].qk_head], [1.0]))
    return out


def _check_qk_sources(summary, graph, replacement) -> int:
    """``test_the_predicting_groups_qk_sources_are_checked_through_its_attention`` on one
    summary: its roles, by hand; how many. The summary's side sources must list every group
    that raises a side (``SIDE_SOURCES`` patched up): the candidates are all of them."""
    import circuits.mechanisms as mechanisms

    candidates, most = mechanisms.CANDIDATES, mechanisms.MAX_CANDIDATES

    groups = auto_groups(graph).groups
    names = {g.name: g for g in groups}
    roles = 0
    for key, name, r, heads, weights in _qk_subjects(summary, graph):
        reads = [(r.layer, h, r.query, r.key) for h in heads]

        def mean(members, weights=weights, reads=reads):
            before, after, *alone = _attention_by_hand(replacement, graph, members, reads)
            return sum(w * a for w, a in zip(weights, after, strict=True)), before, after, alone

        def weighed(attention, weights=weights):
            return sum(w * a for w, a in zip(weights, attention, strict=True))

        for side, sources in (("query", r.query_sources), ("key", r.key_sources)):
            raisers = [x for x in sources["heads"] if x.value > 0]
            share = {x.name: x.value for x in sources["heads"]}
            assert len(share) < mechanisms.SIDE_SOURCES  # every one listed
            # and every other head group at the side's position (those that do not raise it,
            # and raisers there the rounds leave untested), after them, largest sum first
            at = r.query if side == "query" else r.key
            there = [x for x in groups if x.kind == "lorsa" and x.pos == at
                     and x.layer < r.layer and x.name != name]  # fmt: skip
            there.sort(key=lambda x: (-share.get(x.name, 0.0), groups.index(x)))
            writers = [(g, w) for g in summary.groups for w in g.writes_qk
                       if w.group == key and w.side == side]  # fmt: skip
            if not raisers and not there:
                assert not writers
                continue
            # the choice reads the side's vectors alone as after the ablation (a reviewer: a
            # group at the key chosen for the query side by what it did through the keys)
            column = 0 if side == "query" else 1

            def alone(x, column=column):
                return weighed(mean([graph.ids[m] for m in names[x.name].members])[3][column])

            after = [alone(x) for x in raisers]
            clean = weighed(mean([])[1])
            threshold = clean - mechanisms.ATTENTION_LOWERED
            # raisers tested CANDIDATES at a time while the lowest of the raisers tested is
            # the last of them or none lowers the attention enough, up to the bound
            n = min(candidates, len(raisers))
            while n < min(most, len(raisers)):
                low = min(range(n), key=lambda j: (after[j], j))
                if low != n - 1 and after[low] <= threshold:
                    break
                n = min(n + candidates, most, len(raisers))
            placed = [x for x in there if x.name not in {y.name for y in raisers[:n]}]
            found, after = raisers[:n] + placed, after[:n] + [alone(x) for x in placed]
            lowers = [j for j in range(len(found)) if after[j] <= threshold]
            if not lowers:  # none whose ablation lowers the attention: no source of it
                assert not writers
                continue
            assert len(writers) == 1
            g, w = writers[0]
            best = min(lowers, key=lambda j: (after[j], j))
            value = share.get(found[best].name, 0.0)
            assert g.name == found[best].name and w.value == pytest.approx(value)
            assert (w.rank, w.tested, w.raisers, w.at_position) == (
                best + 1, len(found), len(raisers), len(placed))  # fmt: skip
            # a tie: the next lowest of those that lower it at all, within TIE
            rest = [j for j in range(len(found)) if j != best and after[j] < clean]
            near = min(rest, key=lambda j: (after[j], j), default=None)
            if near is not None and after[near] - after[best] <= TIE:
                assert w.tie_name == found[near].name
                assert w.tie_attention == pytest.approx(after[near], abs=1e-5)
            else:
                assert w.tie_name is None and w.tie_attention is None
            assert w.qk_head == r.qk_head and g.checks
            roles += 1
        for g in summary.groups:
            mine = [a for a in g.attention_checks if a.group == key]
            below = g.checks and g.layer < r.layer and (g.pos is None or g.pos <= r.query)
            if name is None:  # a head target's: read from its own attention, every checked
                # group's (``MechanismSummary.attention_after``); its sources' by hand
                assert not mine
                if any(w.group == key for w in g.writes_qk):
                    mine = [summary.attention_after(g, key)]
            else:
                assert len(mine) == (1 if below and g.name != name else 0)
            for a in mine:
                assert (a.layer, a.query, a.key, a.qk_heads) == (r.layer, r.query, r.key, heads)
                assert a.weights == pytest.approx(weights)
                _, before, after, (query_alone, key_alone) = mean(g.members)
                assert a.before == pytest.approx(before, abs=1e-5)
                assert a.before[0] == pytest.approx(r.attention, abs=1e-5)
                assert a.free == pytest.approx(after, abs=1e-5)
                assert a.query_side == pytest.approx(query_alone, abs=1e-5)
                assert a.key_side == pytest.approx(key_alone, abs=1e-5)
    from reports.mechanisms import (
        _role_text,
        attention_change,
        no_sources_text,
        qk_sources_sides,
        score_text,
        writes_qk_text,
    )

    text = format_summary(summary)
    # the heading, then how each side's source was chosen, a line each
    lines = [x.strip() for x in text.splitlines()]
    at = lines.index(f"{QK_SOURCES_WHAT}:") if roles else 0
    assert not roles or lines[at + 1 : at + 3] == list(QK_SOURCES)
    # each side's source in one line (the printout gives it as a block of labelled lines, and
    # a source's own group line points to it: ``qk_sources_side_blocks``, ``sources_said``)
    subjects = dict.fromkeys(w.group for g in summary.groups for w in g.writes_qk)
    one_line = "\n".join(x for key in subjects for x in qk_sources_sides(summary, key))
    writes = "\n".join(writes_qk_text(g, summary) for g in summary.groups)
    for g in summary.groups:
        for w in g.writes_qk:
            r = summary.qk_subject(w.group).qk[0]
            total = r.query_at if w.side == "query" else r.key_at
            assert f"writes the {w.side} side of {score_text(summary, w.group, w.qk_head)} " \
                f"({w.value:+.3g} of the side's {total:+.3g}" in writes  # fmt: skip
            assert f"writes {w.value:+.3g} of the side's {total:+.3g}" in text
            # a side that lowers the score as a whole is said to (a reviewer read "+3.81 of
            # the side's -4.09" as a share)
            against = "(the side as a whole lowers the score; this group raises it)"
            assert (f"of the side's {total:+.3g} {against}" in writes) == (w.value > 0 > total)
    for t in summary.targets:  # a predicting group without sources says why
        if t.predicting_group is None:
            continue
        p = summary.group(t.predicting_group)
        if p.qk and not any(w.group == p.key for g in summary.groups for w in g.writes_qk):
            words = ("at the first position it has one key to attend" if p.pos == 0
                     else "block 0 reads the tokens and position vectors alone" if p.layer == 0
                     else "no head group raising its query or key side or at its "
                     "position lowers its attention")  # fmt: skip
            assert words in no_sources_text(p, summary) and words in text
            older = copy.deepcopy(summary)  # a file written before sources were looked for
            del older.settings["qk_sources"]
            assert words not in format_summary(older)
        for a in g.attention_checks:
            assert f"{attention_change(a.mean_before, a.mean_free)} (" in text
    for g in summary.groups:  # a side's source: what its ablation does through that side alone
        for w in g.writes_qk:
            a = summary.attention_after(g, w.group)
            alone = attention_change(a.mean_before, a.mean_side(w.side))
            both = attention_change(a.mean_before, a.mean_free)
            # a group of several QK heads: the named QK head's own first, then the group's (a
            # reviewer read the group's weighted mean under "QK 6", whose own differed)
            own = ""
            if len(a.qk_heads) > 1 and w.qk_head in a.qk_heads:
                i = a.qk_heads.index(w.qk_head)
                sides = a.query_side if w.side == "query" else a.key_side
                own = (f"QK {w.qk_head}'s attention {attention_change(a.before[i], sides[i])}, "
                       "the group's ")  # fmt: skip
            measured = f"{own}attention {alone} (both sides {both}"
            assert f"through its {w.side} side alone: {measured}" in one_line
            # a source that does not halve the attention is said to be weak
            named = f"side of QK {w.qk_head} {g.key} {g.name} "
            line = next(x for x in one_line.splitlines()
                        if f"{named}(" in x or f"{named}[weak" in x)  # fmt: skip
            # in the printout: the name, then the verdict on the line under it
            at = text.splitlines().index(next(x for x in text.splitlines()
                                              if x.endswith(named.rstrip())))  # fmt: skip
            assert text.splitlines()[at + 1].strip().startswith("weak (") == (
                a.mean_side(w.side) > a.mean_before / 2
            )
            # the measurements on the line under their heading (one line ran to 197
            # characters), a parenthesis that does not fit there whole on the next one
            tested = lines.index(f"with it ablated, through its {w.side} side alone:", at)
            under = lines[tested + 1]
            if lines[tested + 2].startswith("("):
                under += f" {lines[tested + 2]}"
            assert under.startswith(measured)
            weak = a.mean_side(w.side) > a.mean_before / 2
            said = f"{named}[weak (the group's attention): no head group tested halves it" in line
            assert said == weak
            # its verdict beside its name, before the measurements (a reviewer read it last in
            # 600-700 characters)
            if weak:
                assert line.index("[weak") < line.index(f"ablated, through its {w.side} side")
            # beside a weak one, the checked group (of any kind) lowering it most, if it halves
            # (on the key side, of the groups at or before the key: a later one cannot
            # write the key's own vector, and is said to act through a later key)
            halving = [(x.mean_side(w.side), o.key, o.pos) for o in summary.groups
                       if (x := summary.attention_after(o, w.group)) is not None
                       and x.mean_side(w.side) <= x.mean_before / 2
                       and x.mean_side(w.side) < a.mean_side(w.side)]  # fmt: skip
            after_key = [h for h in halving if w.side == "key" and h[2] is not None
                         and h[2] > a.key]  # fmt: skip
            lower = sorted(h[:2] for h in halving if h not in after_key)
            said = "; of the summary's checked groups, "
            assert (said in line) == (weak and bool(lower))
            nor = ", nor any group the summary checks; this side is no one group's doing"
            assert (nor in line) == (weak and not lower and not after_key)
            later = "; of the summary's checked groups after the key, "
            assert (later in line) == (weak and not lower and bool(after_key))
            if said in line:
                other = summary.group(lower[0][1])
                assert f"{said}{other.key} {other.name} takes it through this side " in line
            # a tie is said; the last of several tested is said to be
            role = _role_text(w, g, summary)
            assert role in one_line
            assert (w.tie_name is not None) == (f"about as low (within {TIE}) with " in role)
            raising = w.tested - w.at_position
            stopped = w.rank == raising > 1 and raising < w.raisers
            assert stopped == ("(the last tested, where testing stops; " in role)
            assert "(the last tested: " not in role  # the words of files without raisers
    return roles


def test_the_predicting_groups_qk_sources_are_checked_through_its_attention(
    graph, replacement, run, tmp_path, monkeypatch
):
    """Of the head groups that raise each side of the predicting group's first QK reason most
    (that side's sources, positive, at most ``CANDIDATES``), the one whose ablation lowers its
    attention most (its QK heads weighted by their |flow| into the target; by hand: the
    model's hooks alone) is in the summary (``writes_qk``, with its value and rank) and
    checked, even with room for one group only; every checked group below that head says what
    its ablation does to the attention at each QK head, and the printers say it."""
    import circuits.mechanisms
    from circuits.mechanisms import CANDIDATES, SIDE_SOURCES
    from reports.mechanisms import no_sources_text

    assert SIDE_SOURCES >= CANDIDATES  # a side's listed sources hold the first candidates
    # and here every one, so that the rounds that test more of them can be checked by hand
    monkeypatch.setattr(circuits.mechanisms, "SIDE_SOURCES", 64)
    # The fixture's random heads move attention by less than ATTENTION_LOWERED (0.01): at the
    # real threshold the seed-12 prompt's one source (0.0579 -> 0.0569) is none, and the
    # summary says no head group lowers the attention; the choice among candidates is tested
    # with the threshold at 0.
    torch.manual_seed(12)
    tokens = torch.randint(1, 50, (12,))
    other_run = run_prompt(replacement, tokens, "local", constants=True)
    other = attribute(replacement, tokens, max_logits=1, run=other_run)
    strict = summarize(replacement, other, other_run, max_groups=1)
    _check_qk_sources(strict, other, replacement)
    assert not any(g.writes_qk for g in strict.groups)
    p = strict.group(strict.targets[0].predicting_group)
    assert "lowers its attention when ablated" in no_sources_text(p, strict)
    monkeypatch.setattr(circuits.mechanisms, "ATTENTION_LOWERED", 0.0)
    summary = summarize(replacement, graph, run, max_groups=1)
    assert _check_qk_sources(summary, graph, replacement)  # the fixture has QK sources
    # the choice reads each side alone, not the rerun's attention with both sides changed:
    # with the latter made to say no ablation lowers anything, the same sources are chosen
    real = circuits.mechanisms._free_attention

    def sides_only(*args):
        return {c: {g: dataclasses.replace(a, free=[1.0] * len(a.free)) for g, a in looks.items()}
                for c, looks in real(*args).items()}  # fmt: skip

    monkeypatch.setattr(circuits.mechanisms, "_free_attention", sides_only)
    assert summarize(replacement, graph, run, max_groups=1).to_dict() == summary.to_dict()
    monkeypatch.setattr(circuits.mechanisms, "_free_attention", real)
    # each side is named: by its source, or as having none (a review: a side without one was
    # left out without a word)
    from reports.mechanisms import qk_sources_sides

    for key in {w.group for g in summary.groups for w in g.writes_qk}:
        text = "; ".join(qk_sources_sides(summary, key))
        named = {w.side for _, w in summary.qk_sources(key)}
        for side in ("query", "key"):
            said = f"{side} side: no head group raising it or at its position lowers its"
            assert (said in text) == (side not in named), text
    # a prompt whose query-side source is the third largest by score in local mode (the
    # fixture's have one candidate a side): the ablations chose it
    other_summary = summarize(replacement, other, other_run, max_groups=1)
    _check_qk_sources(other_summary, other, replacement)
    assert max(w.rank for g in other_summary.groups for w in g.writes_qk) > 1
    # one candidate a round: while the last tested lowers the attention most, the next is
    # tested too, so the third by score is found (and with at most two tested, it is not, and
    # the text says testing stopped there)
    monkeypatch.setattr(circuits.mechanisms, "CANDIDATES", 1)
    rounds = summarize(replacement, other, other_run, max_groups=1)
    _check_qk_sources(rounds, other, replacement)
    assert max(w.rank for g in rounds.groups for w in g.writes_qk) > 1
    monkeypatch.setattr(circuits.mechanisms, "MAX_CANDIDATES", 2)
    stopped = summarize(replacement, other, other_run, max_groups=1)
    _check_qk_sources(stopped, other, replacement)
    p = stopped.group(stopped.targets[0].predicting_group)
    # the key side's source is a head at the key whose linear share lowers the side; the
    # query side's, a raiser at the query beyond the two the bound lets the rounds test
    # (before every group at the side's position was tested, the side had none: a reviewer's
    # 6th raiser at a head target's query, 0.21 where the named one gave 0.40)
    roles = {w.side: w for _, w in stopped.qk_sources(p.key)}
    w = roles["key"]
    assert w.value <= 0 and (w.rank, w.tested, w.at_position) == (2, 2, 1)
    w = roles["query"]
    assert w.value > 0 and w.rank > w.tested - w.at_position and w.raisers > 2
    text = "; ".join(qk_sources_sides(stopped, p.key))
    assert (
        "at the side's position, not raising it by its linear share, of the 1 other group there "
        "tested beside the 1 raising it most, its ablation lowers the attention most" in text
    )
    assert "at the side's position, raising it less by its linear share than the raisers " \
        "tested, of " in text  # fmt: skip
    monkeypatch.setattr(circuits.mechanisms, "CANDIDATES", CANDIDATES)
    monkeypatch.undo()  # SIDE_SOURCES, CANDIDATES and MAX_CANDIDATES; ATTENTION_LOWERED below
    monkeypatch.setattr(circuits.mechanisms, "ATTENTION_LOWERED", 0.0)
    # candidates whose ablations leave the same attention through the side are a tie: the
    # first by score is named, and the next said to be as low (a near tie)

    def all_equal(*args):
        return {c: {g: dataclasses.replace(a, query=[0.0] * len(a.query), key=[0.0] * len(a.key))
                    for g, a in looks.items()} for c, looks in real(*args).items()}  # fmt: skip

    monkeypatch.setattr(circuits.mechanisms, "_free_attention", all_equal)
    tied = summarize(replacement, other, other_run, max_groups=1)
    monkeypatch.setattr(circuits.mechanisms, "_free_attention", real)
    roles = [w for g in tied.groups for w in g.writes_qk]
    assert roles and all(w.rank == 1 for w in roles)
    assert all((w.tie_name is not None) == (w.tested > 1) for w in roles)
    assert any(w.tie_name for w in roles) and all(w.tie_attention == 0.0 for w in roles
                                                  if w.tie_name)  # fmt: skip
    # (their ablations' attentions forced equal here, the checks' own are not: the file's tie
    # check, within TIE of the group's own, is tried on a real summary below)
    w = next(w for g in other_summary.groups for w in g.writes_qk if w.tested > 1)
    a = next(a for g in other_summary.groups for a in g.attention_checks
             if w in g.writes_qk and a.group == w.group)  # fmt: skip
    alone = a.mean_side(w.side)  # (the threshold is 0 here: the room above it may be small)
    w.tie_name = "L0 2 heads @3 -> 'x'@2"
    w.tie_attention = alone + min(TIE, a.mean_before - alone) / 2
    text = format_summary(other_summary)
    assert f"with L0 2 heads @3 -> 'x'@2 ablated instead, {attention_text(w.tie_attention)}; " \
        "named as the lower, but the ablations barely tell the two apart" in flat(text)  # fmt: skip
    w.tie_attention = alone + 2 * TIE
    with pytest.raises(ValueError, match="a tie not within"):
        format_summary(other_summary)
    w.tie_name = w.tie_attention = None
    path = tmp_path / "mechanisms.json"
    save_summary(summary, path)
    assert load_summary(path).to_dict() == summary.to_dict()
    d = summary.to_dict()
    g = next(g for g in d["groups"] if g["writes_qk"])
    n = len(g["attention_checks"][0]["qk_heads"])
    older = copy.deepcopy(d)  # a file written before the sides were measured alone loads
    for x in older["groups"]:
        for a in x["attention_checks"]:
            del a["query_side"], a["key_side"]
    path.write_text(json.dumps(older))
    loaded = load_summary(path)
    assert all(a.mean_side("key") is None for x in loaded.groups for a in x.attention_checks)
    assert "side alone" not in format_summary(loaded) and "side alone" in format_summary(summary)
    for field_name, edit, message, *how in (
        ("writes_qk", {"group": "g99"}, "writes_qk"),
        ("writes_qk", {"side": "value"}, "writes_qk"),
        ("writes_qk", {"group": g["key"]}, "writes_qk"),
        ("writes_qk", {"qk_head": 999}, "writes_qk"),
        ("writes_qk", {"rank": 5, "tested": 4}, "writes_qk"),
        ("writes_qk", {"rank": 0}, "rank"),
        (
            "writes_qk",
            {"rank": 1, "tested": 4, "raisers": 3, "at_position": 0},
            "more tested than raise",
        ),
        (
            "writes_qk",
            {"rank": 4, "tested": 4, "raisers": 3, "at_position": 5},
            "more tested than raise",
        ),
        # (a group at the side's position may raise it: a raiser the rounds left untested)
        (
            "writes_qk",
            {"rank": 1, "tested": 4, "raisers": 3, "at_position": 1, "value": -0.5},
            "ranked among the raisers tested without raising the side",
        ),
        # one source a side; a head group, whose ablation lowers the attention (a review's
        # forgeries: a duplicate role, a feature group's, and one raising it 0.5 -> 0.99)
        ("writes_qk", {"tie_name": None}, "two QK sources of one side", "duplicate"),
        ("writes_qk", {}, "a QK source not a head group", "feature"),
        (
            "attention_checks",
            {"key_side": [0.99] * n, "query_side": [0.99] * n, "before": [0.5] * n},
            "does not lower the attention through its side by",
        ),
        ("writes_qk", {"at_position": -1}, "at_position"),
        (
            "writes_qk",
            {"rank": 1, "tested": 20, "raisers": 20, "at_position": 0, "value": 0.5},
            "more raisers tested than the settings' bound",
        ),
        ("writes_qk", {"raisers": -1}, "raisers"),
        ("writes_qk", {"tie_name": "L0 2 heads @3"}, "a tie without its attention"),
        ("writes_qk", {"tie_attention": 0.5}, "a tie without its attention"),
        ("writes_qk", {"tie_name": "x", "tie_attention": 1.5}, "tie_attention"),
        (
            "writes_qk",
            {"tie_name": "x", "tie_attention": 0.5, "rank": 1, "tested": 1, "at_position": 0},
            "with one group tested",
        ),
        # a review's: "within 0.01" of the group's own 0.04, and above the attention before
        (
            "writes_qk",
            {"tie_name": "L0 9 heads x", "tie_attention": 0.95, "tested": 4, "raisers": 4},
            "a tie not within",
        ),
        ("attention_checks", {"free": [1.5] * n}, "free"),
        ("attention_checks", {"free": []}, "attention_checks"),
        ("attention_checks", {"weights": [0.0] * n}, "attention_checks"),
        ("attention_checks", {"key": 99}, "attention_checks"),
        ("attention_checks", {"key": 0}, "attention_checks"),
        ("attention_checks", {"layer": 0}, "attention_checks"),
        ("attention_checks", {"qk_heads": [999] * n}, "attention_checks"),
        ("attention_checks", {"query_side": [0.5] * (n + 1)}, "attention_checks"),
        ("attention_checks", {"key_side": []}, "attention_checks"),  # one side without the other
        ("attention_checks", {"key_side": [-0.1] * n}, "key_side"),
    ):
        bad = copy.deepcopy(d)
        target = next(x for x in bad["groups"] if x["key"] == g["key"])
        target[field_name][0].update(edit)  # a QK writer sits below: its attention is checked
        if how == ["duplicate"]:
            target[field_name].append(copy.deepcopy(target[field_name][0]))
        elif how == ["feature"]:
            target["kind"], target["qk_heads"], target["attends"] = "transcoder", [], None
            target["attends_token"], target["qk"], target["attention_checks"] = None, [], []
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_summary(path)
    # a source's ablation lowers the attention through its side by the summary's threshold
    # (the writer's ATTENTION_LOWERED, kept in its settings)
    assert d["settings"]["qk_sources_lowered"] == circuits.mechanisms.ATTENTION_LOWERED
    for lowered, message in ((0.99, "does not lower the attention"), ("x", "qk_sources_lowered")):
        bad = copy.deepcopy(d)
        bad["settings"]["qk_sources_lowered"] = lowered
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_summary(path)
    # without checks no ablation chose a source: it is the largest raiser, one tested
    bad = copy.deepcopy(d)
    bad["settings"]["checks"] = False
    next(x for x in bad["groups"] if x["key"] == g["key"])["writes_qk"][0]["tested"] = 2
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="groups tested in a summary without checks"):
        load_summary(path)


def test_the_drawn_graph_keeps_the_predicting_groups_and_their_qk_sources(
    graph, replacement, run, tmp_path
):
    """Where pruning dropped members of a predicting head group or of its QK sources (the
    previous-token heads at an induction key have little influence of their own), the trace
    prunes again keeping them and every node it had: the page draws those groups whole. Heads
    it adds get QK records (none twice), and the summary's ``in_pruned`` follows."""
    from circuits.graph_file import load_graph, save_graph
    from circuits.prune import influence_scores
    from circuits.trace import qk_step, summary_groups_step

    scored = influence_scores(graph)
    pruned = prune_graph(graph, node_threshold=0.3, edge_threshold=0.5, scored=scored)
    qk_step(replacement, pruned, run)
    summary = summarize(replacement, graph, run, pruned=pruned, max_groups=1)
    named = {t.predicting_group for t in summary.targets} | {
        g.key for g in summary.groups for w in g.writes_qk}  # fmt: skip
    wanted = {m for g in summary.groups if g.key in named for m in g.members}
    assert wanted - set(pruned.ids)  # pruning dropped some: the step has work
    kept = summary_groups_step(replacement, pruned, run, graph, summary, scored, None, True)
    assert wanted | set(pruned.ids) <= set(kept.ids)
    for g in summary.groups:
        assert g.in_pruned == [m for m in g.members if m in kept.id_to_index]
    reads = [(a.layer, a.qk_head, a.query, a.key) for a in kept.qk]
    assert len(reads) == len(set(reads))
    heads = kept.is_kind("lorsa").nonzero().squeeze(1).tolist()
    recorded = {(a.layer, a.qk_head, a.query) for a in kept.qk}
    assert all((int(kept.layer[i]), int(kept.index[i]) // kept.group_size, int(kept.pos[i]))
               in recorded for i in heads)  # fmt: skip
    save_graph(kept, tmp_path / "g.safetensors")  # a file the page and the loader take
    assert load_graph(tmp_path / "g.safetensors").ids == kept.ids
    # nothing dropped: the same graph back
    assert summary_groups_step(replacement, kept, run, graph, summary, scored, None, True) is kept
    # a --max-nodes cap holds: with no room left, nothing is added
    capped = copy.deepcopy(pruned)
    capped.settings["max_nodes"] = int(capped.is_kind("lorsa", "transcoder", "error").sum())
    assert summary_groups_step(replacement, capped, run, graph, summary, scored, None,
                               False) is capped  # fmt: skip
    capped.settings["max_nodes"] += len(wanted - set(pruned.ids))  # room for them all
    assert set(summary_groups_step(replacement, capped, run, graph, summary, scored, None,
                                   False).ids) >= wanted  # fmt: skip


def test_the_qk_sources_step_holds_a_max_nodes_cap(graph, replacement, run):
    """``sources_step`` brings back the strongest member of each QK record's largest source
    group that pruning dropped; under ``--max-nodes`` it adds no more than the cap leaves room
    for (a review: ``--max-nodes 5`` kept 4 heads and 3 features, the 2 previous-token heads
    at an induction key added past the cap), as ``summary_groups_step`` does."""
    from circuits.prune import CAPPED_KINDS, influence_scores
    from circuits.trace import qk_step, sources_step

    scored = influence_scores(graph)

    def capped(graph):
        return int(graph.is_kind(*CAPPED_KINDS).sum())

    for cap in (2, 4, 8):
        pruned = prune_graph(graph, max_nodes=cap, scored=scored)
        qk_step(replacement, pruned, run)
        uncapped = copy.deepcopy(pruned)
        uncapped.settings["max_nodes"] = None
        if capped(sources_step(replacement, uncapped, run, graph, scored)) > cap:
            break
    else:
        raise AssertionError("no cap that the step would pass: the test has no work")
    assert capped(pruned) == cap
    assert capped(sources_step(replacement, pruned, run, graph, scored)) == cap


def test_summary_records(graph, replacement, run, tmp_path):
    summary = summarize(replacement, graph, run, max_groups=4)
    logits = graph.is_kind("logit").nonzero().squeeze(1).tolist()
    assert [t.node for t in summary.targets] == [graph.ids[i] for i in logits]
    keys = {g.key for g in summary.groups}
    for t in summary.targets:
        assert t.tokens + t.errors + t.constants == pytest.approx(t.value, abs=1e-4)
        assert t.constants == pytest.approx(sum(v for _, v in t.constants_by_source), abs=1e-5)
        assert t.tokens_by_position and t.tokens == pytest.approx(
            sum(x.flow for x in t.tokens_by_position), abs=1e-5
        )
        assert all(x.token == graph.token_strings[x.pos] for x in t.tokens_by_position)
        assert t.runner_up is not None and t.runner_up != t.token
        g = summary.group(t.predicting_group)
        assert g.kind == "lorsa" and g.pos == len(graph.tokens) - 1
        assert g.attends is not None and g.attends_token == graph.token_strings[g.attends]
        assert g.qk and g.qk[0].key == g.attends and g.qk[0].query == g.pos
        r = g.qk[0]
        assert r.mean_query_mean_key + r.query_vs_mean_key + r.mean_query_vs_key + r.specific \
            == pytest.approx(r.score, abs=1e-4)  # fmt: skip
        for sources in (r.query_sources, r.key_sources):
            assert set(sources) == {"roots", "heads", "features"}
            for xs in sources.values():  # the raisers largest first, then the lowerers
                up = [x.value for x in xs if x.value > 0]
                down = [x.value for x in xs if x.value < 0]
                assert [x.value for x in xs] == up + down and len(up) + len(down) == len(xs)
                assert up == sorted(up, reverse=True) and down == sorted(down)
                assert len(up) <= SIDE_SOURCES and len(down) <= SIDE_SOURCES
        assert sum(r.root_parts.values()) == pytest.approx(r.specific, abs=1e-4)
        assert r.root_pairs and all(p.query.pos <= r.query for p in r.root_pairs)
        for p in r.pairs:  # fields, not ids, say where each side is
            assert p.query.kind == "qk bias" or not p.query.present or p.query.pos == r.query
            assert p.key.kind == "qk bias" or not p.key.present or p.key.pos == r.key
    for p in summary.paths:
        assert set(p.groups) <= keys
        assert summary.group(p.groups[0]).kind == "embedding"
    checked = [g for g in summary.groups if g.checks]
    assert checked and all(g.kind in ("lorsa", "transcoder") for g in checked)
    swept = {t.node: node_flows(graph, graph.id_to_index[t.node]) for t in summary.targets}
    flows = {node: f for node, (f, _) in swept.items()}
    for g in summary.groups:
        members = [graph.id_to_index[m] for m in g.members]
        for node, v in g.flow.items():
            assert v == pytest.approx(flows[node][members].sum(), abs=1e-5)
        # A head group brings its flow from the keys of its heads' z-patterns.
        assert set(g.carried) == (set(g.flow) if g.kind == "lorsa" else set())
        assert set(g.carried_own) == set(g.carried)
        for node, shares in g.carried.items():
            by_key, own = key_flows(graph, swept[node][1], np.asarray(members))
            by_key = by_key.sum(0)
            # every key that brings any (found by a fuzz pass: four were kept, and a line whose
            # parts summed to -2.1 stood for a flow of +0.95)
            assert [x.flow for x in shares] == pytest.approx(
                sorted(by_key[by_key != 0], key=abs, reverse=True), abs=1e-6
            )
            assert g.carried_own[node] == pytest.approx(own.sum(), abs=1e-6)
            assert sum(x.flow for x in shares) + g.carried_own[node] == pytest.approx(
                g.flow[node], abs=1e-4
            )
            assert all(x.token == graph.token_strings[x.pos] for x in shares)
    # Every head at a target's position: their flow by key position and constant terms.
    for t in summary.targets:
        i = graph.id_to_index[t.node]
        heads = [m for m in graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
                 if int(graph.pos[m]) == int(graph.pos[i]) and m != i]  # fmt: skip
        # what zeroing them all at once takes away, a path through two of them (a block's
        # head feeding a later block's head there) counted once: summed head by head, such a
        # path counted twice (a review: +5.48 where zeroing them took away +6.27)
        zeroed = predict(graph, [Intervention(graph.ids[m], "ablate") for m in heads])[i]
        assert t.heads_flow == pytest.approx(-float(zeroed), abs=1e-4)
        moved = sum(x.flow for x in t.moved_by_position)
        assert moved + t.heads_own == pytest.approx(t.heads_flow, abs=1e-5)
        assert [abs(x.flow) for x in t.moved_by_position] == sorted(
            (abs(x.flow) for x in t.moved_by_position), reverse=True
        )
    # Every checked group's ablation checks (this loop ran inside the one above, on whichever
    # group the loop before it ended with: often one without checks)
    tops = 0
    for g in checked:
        for c in g.checks:
            assert c.predicted == pytest.approx(-g.flow[c.target], abs=1e-4)
            edits = [Intervention(m, "ablate") for m in g.members]
            frozen = intervene(replacement, graph, edits)
            j = frozen.targets.index(c.target)
            assert c.frozen == pytest.approx(float(frozen.actual[j]), abs=1e-5)
            k = graph.id_to_index[c.target]  # a logit's token probability after the ablation
            after = float(frozen.logits.double().softmax(-1)[graph.logit_record(k).token])
            assert graph.kind[k] == Kind.LOGIT and c.probability_frozen == pytest.approx(after)
            # free: the model itself less the group (errors recomputed too, in local mode)
            free = intervene(replacement, graph, edits, freeze_attention=False,
                             freeze_errors=False)  # fmt: skip
            assert c.free == pytest.approx(float(free.actual[j]), abs=1e-5)
            held = intervene(replacement, graph, edits, freeze_attention=False,
                             freeze_layernorm=True, freeze_errors=False)  # fmt: skip
            assert c.free_ln_held == pytest.approx(float(held.actual[j]), abs=1e-5)
            ok = c.predicted * c.free_ln_held > 0 or max(abs(c.predicted),
                                                         abs(c.free_ln_held)) < 0.01  # fmt: skip
            assert c.agree_free_ln_held == ok
            # the final LayerNorm's scale alone held, by hand: the model less the group with
            # its z zeroed where the members are, and ln_final's clean scale
            assert c.free_final_ln_held == pytest.approx(
                _free_by_hand(replacement, graph, g.members, c.target, "final"), abs=1e-4
            )
            ok = c.predicted * c.free_final_ln_held > 0 or max(
                abs(c.predicted), abs(c.free_final_ln_held)) < 0.01  # fmt: skip
            assert c.agree_free_final_ln_held == ok
            # the attention patterns held at their clean values, by hand likewise
            assert c.free_attention_held == pytest.approx(
                _free_by_hand(replacement, graph, g.members, c.target, "patterns"), abs=1e-4
            )
            ok = c.predicted * c.free_attention_held > 0 or max(
                abs(c.predicted), abs(c.free_attention_held)) < 0.01  # fmt: skip
            assert c.agree_free_attention_held == ok
            after = float(free.logits.double().softmax(-1)[graph.logit_record(k).token])
            assert c.probability_free == pytest.approx(after)
            # the margin over the runner-up (the most likely other token), before and after
            token, clean = graph.logit_record(k).token, run.logits[-1].double()
            other = next(v for v in clean.argsort(descending=True).tolist() if v != token)
            for moved, rerun in ((c.margin_frozen, frozen), (c.margin_free, free)):
                logits = rerun.logits.double()
                assert moved == pytest.approx(
                    float(logits[token] - logits[other] - clean[token] + clean[other]), abs=1e-4
                )
            # the most likely token after each rerun, where the ablation changed it
            for top, p_top, rerun in ((c.top_frozen, c.top_frozen_probability, frozen),
                                      (c.top_free, c.top_free_probability, free)):  # fmt: skip
                probs = rerun.logits.double().softmax(-1)
                now = int(probs.argmax())
                changed = now != int(clean.argmax())
                assert (top, p_top) == ((graph.token(now), pytest.approx(float(probs[now])))
                                        if changed else (None, None))  # fmt: skip
                tops += changed
            ok = c.predicted * c.frozen > 0 or max(abs(c.predicted), abs(c.frozen)) < 0.01
            assert c.agree_frozen == ok
            if not c.agree_frozen or not c.agree_free:
                assert c.flagged
    assert tops  # some ablation changes the answer
    # The file round-trips, and the printer and the report render it.
    path = tmp_path / "mechanisms.json"
    save_summary(summary, path)
    back = load_summary(path)
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(
        json.loads(path.read_text()), sort_keys=True
    )
    text = format_summary(back, every_check=True)
    # a reason whose unit pairs leave out most of the specific part lists none of them
    from reports.mechanisms import SPREAD_OUT, ref_text

    lines = {f"           {p.value:+.3g}  {ref_text(p.query)}  x  {ref_text(p.key)}"
             for g in back.groups for r in g.qk for p in r.pairs[:3]}  # fmt: skip
    assert lines & set(text.splitlines())  # listed while they cover the part
    spread = json.loads(json.dumps(back.to_dict()))
    reasons = [r for g in spread["groups"] for r in g["qk"] if r["pairs"]]
    for r in reasons:
        r["rest_share"] = SPREAD_OUT + 0.05
    spread_text = format_summary(MechanismSummary.from_dict(spread), every_check=True)
    assert reasons and "spread over many pairs" in spread_text
    assert not lines & set(spread_text.splitlines())
    # the share the heading gives is of the pairs shown (it gave all the record's pairs'
    # share over the first three: 32% where those leave out 51%)
    from reports.mechanisms import unit_pairs

    many = [r for g in back.groups for r in g.qk if len(r.pairs) > 3 and r.rest_share < 1]
    assert many
    for r in many:
        total = sum(abs(p.value) for p in r.pairs) / (1 - r.rest_share)
        left = 1 - sum(abs(p.value) for p in r.pairs[:3]) / total
        heading, shown = unit_pairs(r, 3)
        assert f"leave out {left:.0%} of the terms' total magnitude" in heading
        assert shown == (r.pairs[:3] if left <= SPREAD_OUT else [])
        assert unit_pairs(r, len(r.pairs))[0].count(f"{r.rest_share:.0%}") == 1
    # the report and the viewer's panel follow the same rule (the viewer listed the pairs the
    # printout leaves out, with no share beside them)
    from reports.viewer import mechanisms_data

    for summary_, listed in ((back, True), (MechanismSummary.from_dict(spread), False)):
        page = mechanisms_html(summary_)
        panel = mechanisms_data(summary_, graph)
        shown = [r for g in panel["groups"] for r in g["qk"] if r["units"]]
        assert shown and all("of the terms' total magnitude" in r["units"] for r in shown)
        assert all(bool(r["pairs"]) == ("spread over many" not in r["units"]) for r in shown)
        assert any(r["pairs"] for r in shown) == listed
        assert listed or "spread over many pairs" in page
        assert (re.search(r"<li>[^<]*(<a [^>]*>[^<]*</a>)?[^<]* &times; ", page) is not None) \
            == listed  # fmt: skip
    assert "predicting heads" in text and "QK" in text and "FLAGGED where" in text
    c = next(c for g in back.groups for c in g.checks if c.target == back.targets[0].node)
    p = back.targets[0].probability
    from reports.mechanisms import MARGIN_SHOWN, after_text, check_texts

    t0 = back.targets[0]
    frozen_after = check_texts(c, t0)[0]
    assert f"frozen attention {c.frozen:+.3g}{frozen_after}" in text
    assert frozen_after.startswith(f" (p {after_text(p, c.probability_frozen)[4:-1]}")
    margin = f"; margin over {t0.runner_up!r} {c.margin_frozen:+.3g}"
    assert (margin in frozen_after) == (t0.runner_up_probability >= MARGIN_SHOWN)
    now = f"; {c.top_frozen!r} now most likely, p "
    assert (now in frozen_after) == (c.top_frozen is not None) and frozen_after.endswith(")")
    assert after_text(0.9964, 4.9e-6) == " (p 0.996 -> 4.9e-06)"  # never "p 1 -> 0"
    # where the ablation changed the answer, the token now most likely (a reviewer read
    # "its probability as predicted" where the frozen rerun had made ' ' certain)
    assert after_text(0.469, 2.95e-21, top=(" ", 1.0)) == (
        " (p 0.469 -> 2.95e-21; ' ' now most likely, p 1)")  # fmt: skip
    changed = next((c, g) for g in back.groups for c in g.checks if c.top_free is not None)
    assert (
        f"{changed[0].top_free!r} now most likely, p "
        in check_texts(changed[0], next(t for t in back.targets if t.node == changed[0].target))[1]
    )
    forged = json.loads(json.dumps(back.to_dict()))
    where = next(i for i, g in enumerate(back.groups) if changed[0] in g.checks)
    j = back.groups[where].checks.index(changed[0])
    forged["groups"][where]["checks"][j]["top_free_probability"] = None
    with pytest.raises(ValueError, match="most likely token after a rerun without its"):
        MechanismSummary.from_dict(forged)
    forged["groups"][where]["checks"][j]["top_free_probability"] = 0.0  # below the target's
    if changed[0].probability_free > CLOSURE:
        with pytest.raises(ValueError, match="less likely than the target's token"):
            MechanismSummary.from_dict(forged)
    assert after_text(0.99996, 0.00001) == " (p 0.99996 -> 1e-05)"
    assert after_text(None, 0.5) == after_text(0.5, None) == ""
    # a difference's probability is its first token's, which the check names (a reviewer read
    # "(p 0.383 -> 0.0224)" under a margin target without knowing whose)
    assert after_text(0.383, 0.0224, " 9") == " (p(' 9') 0.383 -> 0.0224)"
    from reports.mechanisms import rival_word

    diff = copy.deepcopy(back.targets[0])
    diff.negative = "x"
    named = check_texts(c, diff)
    top = None if c.top_frozen is None else (c.top_frozen, c.top_frozen_probability)
    assert named[0] == after_text(p, c.probability_frozen, diff.token, top=top)
    assert "(p(" in named[0]
    assert check_texts(c, back.targets[0])[0] == frozen_after  # the margin beside it, if any
    # the most likely other token is the runner-up only where the target leads
    assert rival_word(back.targets[0]) == ("runner-up" if back.targets[0].margin >= 0 else
                                           "top token")  # fmt: skip
    behind = copy.deepcopy(back)
    behind.targets[0].margin = -abs(behind.targets[0].margin or 1.0)
    assert "; top token " in format_summary(behind) and "runner-up" not in format_summary(behind)
    moved = back.targets[0].moved_by_position[0]
    assert f"the heads there bring {back.targets[0].heads_flow:+.3g}, by key: " \
           f"{moved.token!r}@{moved.pos} {moved.flow:+.3g}" in text  # fmt: skip
    head = next(g for g in back.groups if g.carried)
    brings = head.carried[back.targets[0].node][0]
    # with several targets the line names the one it is for (a fuzz pass found it unnamed)
    whose = f"{back.targets[0].label} " if len(back.targets) > 1 else ""
    lines = text.splitlines()  # what it brings on the line under its name (one line of both
    at = next(i for i, x in enumerate(lines) if f"{head.name}: flow " in x)  # ran to 190)
    # (after the flows' lines and, with several targets, its promoted tokens' line)
    line = next(x for x in lines[at + 1 :] if x.strip().startswith((f"{whose}brings", "brings")))
    assert line.startswith(f"       {whose}brings {brings.token!r}@{brings.pos} ")
    assert line.endswith(f"; constant terms {head.carried_own[back.targets[0].node]:+.3g}") or \
        line.endswith("; constant terms 0")  # fmt: skip
    assert "specific by roots (tokens" in " ".join(text.split())  # its part may go under it
    top = back.targets[0].tokens_by_position[0]
    assert f"parts: tokens {back.targets[0].tokens:+.3g} ({top.token!r}@{top.pos} " in text
    checks = [line.strip() for line in text.splitlines() if line.strip().startswith("ablate")]
    assert len(checks) == sum(len(g.checks) for g in back.groups)
    if len(back.targets) > 1:  # each check line says which target it measures
        assert all(any(line.startswith(f"ablate: {t.token!r}") for t in back.targets)
                   for line in checks)  # fmt: skip
    else:
        assert all(line.startswith("ablate: predicted") for line in checks)
    # By default: the first target's checks, the others counted in one line per group.
    compact = [line.strip() for line in format_summary(back).splitlines()
               if line.strip().startswith("ablate")]  # fmt: skip
    first = back.targets[0].node
    counted = []
    for g in back.groups:
        rest = [c for c in g.checks if c.target != first]
        if rest:
            counted.append(
                f"ablate, the other {len(rest)} target{'s' * (len(rest) > 1)}: sign agrees "
                "with attention frozen "
                f"{sum(c.agree_frozen for c in rest)}, free {sum(c.agree_free for c in rest)}; "
                f"flagged {sum(c.flagged for c in rest)} (each in mechanisms.json)"
            )
    own = sum(c.target == first for g in back.groups for c in g.checks)
    assert [line for line in compact if line.startswith("ablate, the other")] == counted
    assert len(compact) == own + len(counted)
    # the definitions once, in a legend after the content, a pointer where each stood
    from reports.mechanisms import (
        FLOWS_CLAUSES,
        LEGEND_AT_END,
        LEGEND_WIDTH,
        QK_LEGEND,
        checks_legend_block,
        checks_legend_text,
        legend_lines,
    )

    lines = text.splitlines()  # the legend: each definition a block, wrapped (legend_lines)
    legend = lines[lines.index("legend:") :]
    assert legend == legend_lines(back) and max(map(len, legend)) <= LEGEND_WIDTH
    flat = " ".join(x.strip() for x in legend)
    for clause in (*FLOWS_CLAUSES, *QK_LEGEND, *checks_legend_block(back)):
        assert flat.count(clause) == 1 and text.count(clause.split()[0] + " ") >= 1
    assert lines[0].endswith(f"; how to read them: {LEGEND_AT_END}):")
    assert f"  (how to read the ablate lines and their marks: {LEGEND_AT_END})" in lines
    assert checks_legend_text(back).startswith(
        "the ablate lines (the report's ablation column): the group zeroed; "
    )
    unchecked = copy.deepcopy(back)
    for g in unchecked.groups:
        g.checks, g.attention_checks = [], []
    assert checks_legend_text(unchecked) == ""
    assert format_summary(unchecked).splitlines()[-len(legend_lines(unchecked)) :] == \
        legend_lines(unchecked)  # fmt: skip
    assert "the ablate lines" not in "\n".join(legend_lines(unchecked))
    assert "how to read the ablate lines" not in format_summary(unchecked)
    page = html_page(graph, mechanisms=back)
    assert "<h2>Mechanisms</h2>" in page and "always-on" in page
    # the report's legend is the printout's, a block each (it had prose of its own, which
    # defined the checks' words where there were none)
    from reports.mechanisms import LEGEND_ID, block_html, legend_blocks

    def report_legend(summary) -> str:
        blocks = "".join(block_html(b) for b in legend_blocks(summary).values())
        return f'<div id="{LEGEND_ID}" class="legend"><p><b>Legend.</b></p>{blocks}</div>'

    bare = html_page(graph, mechanisms=unchecked)
    for x, shown in ((back, page), (unchecked, bare)):
        assert shown.count(f'id="{LEGEND_ID}"') == 1 and report_legend(x) in shown
    assert "the ablate lines" not in bare and "FLAGGED where" not in bare
    assert "the heads there bring" in page and "brings " in page
    for old in (1, 2, 3):  # before carried held every key; the read key; a head target's key
        with pytest.raises(ValueError, match=f"version {old}, expected .*re-run the trace"):
            MechanismSummary.from_dict(summary.to_dict() | {"version": old})
    with pytest.raises(ValueError, match="not a mechanism summary .expected a JSON object"):
        MechanismSummary.from_dict([])
    tampered_summaries_are_refused(summary.to_dict())


def tampered_summaries_are_refused(good: dict) -> None:
    """A summary file is untrusted: wrong types, non-finite numbers, unknown keys, names of
    groups or targets it does not define and sums that do not close are refused, naming the
    field; the untouched file reads back."""
    MechanismSummary.from_dict(json.loads(json.dumps(good)))
    g = next(i for i, g in enumerate(good["groups"]) if g["qk"] and g["qk"][0]["pairs"])
    c = next(i for i, g in enumerate(good["groups"]) if g["checks"])
    node = good["targets"][0]["node"]
    missing = object()
    edits = [
        ("targets[0].value: expected a finite number", ("targets", 0, "value"), "x"),
        ("targets[0].tokens: expected a finite number", ("targets", 0, "tokens"), float("nan")),
        ("targets[0]: tokens + errors + constants", ("targets", 0, "value"), 1e6),
        ("targets[0].tokens_by_position = ", ("targets", 0, "tokens_by_position", 0, "flow"),
         1e6),
        ("is not token ' nope'", ("targets", 0, "tokens_by_position", 0, "token"), " nope"),
        ("targets[0].tokens_by_position[0].pos: expected an integer",
         ("targets", 0, "tokens_by_position", 0, "pos"), 1.5),
        ("targets[0]: names a group", ("targets", 0, "predicting_group"), "g999"),
        ("targets[0]: heads' flow", ("targets", 0, "heads_flow"), 1e6),
        ("targets[0].moved_by_position: position", ("targets", 0, "moved_by_position", 0, "token"),
         " nope"),
        (f"groups[{g}].carried: from a node that is no target", ("groups", g, "carried"),
         {"nope": []}),
        (f"groups[{g}]: flow carried", ("groups", g, "carried_own", node), 1e6),
        (f"groups[{g}]: carried and carried_own name other targets", ("groups", g, "carried_own"),
         {}),
        ("targets[0] holds unknown keys ('surprise'): written by another version",
         ("targets", 0, "surprise"), 1),
        (f"groups[{g}] lacks 'members': written by another version", ("groups", g, "members"),
         missing),
        (f"groups[{g}]: members", ("groups", g, "members"), []),
        (f"groups[{g}].flow: a flow into a node that is no target", ("groups", g, "flow"),
         {"nope": 1.0}),
        (f"groups[{g}].qk[0]: always-on + specific", ("groups", g, "qk", 0, "score"), 99.0),
        (f"groups[{g}].qk[0].pairs[0].query.present: expected true or false",
         ("groups", g, "qk", 0, "pairs", 0, "query", "present"), 1),
        (f"groups[{g}].qk[0].root_parts: parts other than",
         ("groups", g, "qk", 0, "root_parts", "surprise"), 0.0),
        (f"groups[{g}].qk[0].root_parts = ", ("groups", g, "qk", 0, "root_parts", "positions"),
         1e6),
        (f"groups[{g}].qk[0].position_pairs: a term without a position vector",
         ("groups", g, "qk", 0, "position_pairs"), good["groups"][g]["qk"][0]["root_pairs"][:1]),
        ("mode: 'x'", ("mode",), "x"),
        (f"groups[{c}].checks[0]: a probability outside", ("groups", c, "checks", 0,
                                                           "probability_free"), 1.5),
    ]  # fmt: skip
    for message, path, value in edits:
        d = json.loads(json.dumps(good))
        at = d
        for k in path[:-1]:
            at = at[k]
        if value is missing:
            del at[path[-1]]
        else:
            at[path[-1]] = value
        with pytest.raises(ValueError, match=re.escape(message)):
            MechanismSummary.from_dict(d)


def test_counts_of_the_flow_and_text_api_are_checked(graph, replacement, run):
    """Found by a fuzz pass: top_paths(beam=-1) never returned (the beam cut with [:-1]), and
    keep=-1 or format_summary(max_pairs=-1) dropped the last entry silently."""
    view = auto_groups(graph)
    t = int(graph.is_kind("logit").nonzero()[0])
    for bad in ({"beam": -1}, {"beam": 0}, {"keep": -1}, {"keep": 1.5}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive integer"):
            top_paths(view, t, **bad)
    with pytest.raises(ValueError, match="target -1 is outside"):
        top_paths(view, -1)
    f, h = node_flows(graph, t)
    heads = graph.is_kind("lorsa").nonzero().squeeze(1).numpy()
    for bad in (np.array([-1]), np.array([t]), heads + 0.5, graph.is_kind("lorsa").numpy()):
        with pytest.raises(ValueError, match="heads must be"):
            key_flows(graph, h, bad)
    with pytest.raises(ValueError, match="pass this graph's node_flows"):
        key_flows(graph, h[:-1], heads)
    summary = summarize(replacement, graph, run, check=False)
    with pytest.raises(ValueError, match="max_pairs must be a non-negative integer, got -1"):
        format_summary(summary, max_pairs=-1)


def test_the_heading_says_when_no_head_group_moves_anything(graph, replacement, run):
    """Found by a fuzz pass: the fallback (no group moving a positive flow from another
    position, so the largest one) was printed as "the largest mover from another position"."""
    from reports.mechanisms import NO_MOVER, PREDICTING

    summary = summarize(replacement, graph, run, check=False)
    t = summary.targets[0]
    g = summary.group(t.predicting_group)

    def set_flow(value: float) -> None:  # the summary stays one its file could hold
        g.carried_own[t.node] += value - g.flow[t.node]
        g.flow[t.node] = value

    g.qk = []  # its reasons are at the key it reads, which this test moves

    share = g.key_share

    def set_key(key: int | None) -> None:  # with the token there, as a file holds it
        g.attends, g.key_share = key, None if key is None else share
        g.attends_token = None if key is None else summary.tokens[key]

    for attends, heading in ((g.pos, NO_MOVER), (0, NO_MOVER), (None, NO_MOVER)):
        set_key(attends)
        assert flat(f"{heading}: {g.key} {g.name}, flow") in flat(format_summary(summary))
    set_key(max(g.pos - 1, 1))
    set_flow(1.0)
    assert flat(f"{PREDICTING}: {g.key} {g.name}, flow") in flat(format_summary(summary))
    # a difference's heading names the token its way favours (a reviewer read "predicting"
    # for a group pushing toward the negative token, the model's answer)
    from reports.mechanisms import DEMEANED_SHORT, DEMEANED_WORDS, predicting_heading

    for value, toward in ((2.0, "'a'"), (-2.0, "'b'")):
        diff = dataclasses.replace(t, token="a", negative="b", value=value)
        set_flow(value)
        assert predicting_heading(g, diff) == f"{PREDICTING}, toward {toward}"
    set_flow(1.0)
    # what a logit target's numbers are of, said at the head (a reviewer's hooks read the raw
    # logit, and one check's sign flipped), in full in the legend at the end
    lines = format_summary(summary).splitlines()
    assert DEMEANED_SHORT in lines[0] and DEMEANED_WORDS not in lines[0]
    assert DEMEANED_WORDS in " ".join(x.strip() for x in lines[lines.index("legend:") :])
    set_flow(-1.0)
    assert flat(f"{NO_MOVER}: {g.key}") in flat(format_summary(summary))


def test_the_head_says_what_a_difference_targets_numbers_are_of(replacement, tokens, run):
    """A summary of a logit difference alone was headed "a logit's numbers are less the mean
    logit" (a reviewer's ``--vs-runner-up`` on ``Monday: 12+31=43. Tuesday: 12+31=``: target
    ``'4' - '3' = 3.38``, the difference itself); the head says what its targets' numbers are
    of, in the printout and the page: a logit's, a difference's, or both."""
    import html
    from itertools import takewhile

    from circuits.attribution import LogitDiffTarget, LogitTarget
    from reports.mechanisms import DEMEANED_SHORT, DIFFERENCE_SHORT, mechanisms_html

    for traced, want in (
        ([LogitDiffTarget(7, 8)], [DIFFERENCE_SHORT]),
        ([LogitTarget(7), LogitDiffTarget(7, 8)], [DEMEANED_SHORT, DIFFERENCE_SHORT]),
        ([LogitTarget(7)], [DEMEANED_SHORT]),
    ):
        graph = attribute(replacement, tokens, run=run, targets=traced)
        summary = summarize(replacement, graph, run, check=False, max_groups=3)
        # the head line with its continuations (``fitted`` moves a long parenthesis whole)
        first, *rest = format_summary(summary).splitlines()
        head = " ".join([first, *takewhile(lambda line: line.startswith(" "), rest)])
        page = html.unescape(mechanisms_html(summary).split("</p>")[0])  # its opening line
        for words in (DEMEANED_SHORT, DIFFERENCE_SHORT):
            assert (words in head) == (words in want), (head, want)
            capital = words[0].upper() + words[1:]
            assert (words in page or capital in page) == (words in want)


def test_flows_refuse_a_pruned_graph_and_nodes_nothing_flows_into(graph):
    """Found by a fuzz pass: the flows of a pruned graph were returned though they do not close
    (tokens + errors + constants 18.07 for a value of 16.86), a negative target was read from
    the end, an embedding target gave NaN flows, and a readout of the wrong shape or with NaN,
    or a stage outside the graph, was swept (or failed in numpy)."""
    t = int(graph.is_kind("logit").nonzero()[0])
    pruned = prune_graph(graph, node_threshold=0.5)
    assert pruned.n_nodes < graph.n_nodes
    last = int(pruned.is_kind("logit").nonzero()[0])
    for call in (lambda: node_flows(pruned, last), lambda: many_node_flows(pruned, [last]),
                 lambda: linear_flows(pruned, np.ones(pruned.n_nodes), 2)):  # fmt: skip
        with pytest.raises(ValueError, match=r"needs the full \(unpruned\) graph .* lost edges"):
            call()
    with pytest.raises(ValueError, match="target -1 is outside"):
        node_flows(graph, -1)
    embedding = int(graph.is_kind("embedding").nonzero()[0])
    with pytest.raises(ValueError, match="nothing flows into embedding nodes"):
        node_flows(graph, embedding)
    flow, h = node_flows(graph, t)
    assert np.isfinite(flow).all()
    with pytest.raises(ValueError, match="nothing flows into embedding nodes"):
        target_parts(graph, embedding, flow, h)
    with pytest.raises(ValueError, match="flow holds .* pass this graph's node_flows"):
        target_parts(graph, t, flow[:-1], h)
    n = graph.n_nodes
    for direct, below, message in (
        (np.zeros(5), 3, "direct must be numbers of shape (node,) or (node, d)"),
        (np.full(n, np.nan), 3, "direct holds NaN or infinite values"),
        (np.zeros(n), -1, "below_stage must be a stage in 1..5 (an integer), got -1"),
        (np.zeros(n), 99, "below_stage must be a stage in 1..5 (an integer), got 99"),
        (np.zeros(n), 2.0, "below_stage must be a stage in 1..5 (an integer), got 2.0"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            linear_flows(graph, direct, below)
    with pytest.raises(ValueError, match="edge_sweep is not this graph's"):
        node_flows(pruned, last, EdgeSweep(graph))
    with pytest.raises(TypeError, match="view must be a circuits.groups.GroupedGraph, got a "
                       r"Graph \(group it first"):  # fmt: skip
        top_paths(graph, t)


def test_a_summary_edited_by_hand_is_refused_before_it_is_shown_or_saved(
    graph, replacement, run, tmp_path
):
    """Found by a fuzz pass: format_summary and mechanisms_html crashed (KeyError,
    StopIteration, TypeError, a format ValueError) on a summary edited by hand, and
    save_summary wrote files that load_summary refuses. Each now gets the file's checks."""
    summary = summarize(replacement, graph, run, check=False)
    assert summary.targets[0].predicting_group and summary.targets[0].runner_up

    def no_flow(s):  # the predicting group says nothing about the target
        g = s.group(s.targets[0].predicting_group)
        for record in (g.flow, g.carried, g.carried_own):
            record.clear()

    edits = [
        (lambda s: setattr(s.targets[0], "predicting_group", "nope"), "names a group not defined"),
        (lambda s: setattr(s, "groups", []), "names a group not defined"),
        (lambda s: s.paths[0].groups.append("nope"), "paths[0]: unknown names"),
        (no_flow, "targets[0]: a head group it names has no flow into it"),
        (lambda s: setattr(s.targets[0], "runner_up_probability", None), "without its probab"),
        (lambda s: setattr(s.targets[0], "value", "16"), "value: expected a finite number"),
        (lambda s: setattr(s.targets[0], "value", math.nan), "value: expected a finite number"),
    ]
    path = tmp_path / "mechanisms.json"
    for edit, message in edits:
        edited = copy.deepcopy(summary)
        edit(edited)
        refused = f"not a mechanism summary .*{re.escape(message)}"
        for show in (format_summary, mechanisms_html, lambda s: save_summary(s, path)):
            with pytest.raises(ValueError, match=refused):
                show(edited)
        assert not path.exists()
    save_summary(summary, path)
    assert format_summary(load_summary(path)) == format_summary(summary)


def test_a_path_is_checked_as_the_graph_makes_one(graph, replacement, run, tmp_path):
    """Found by a fuzz pass: a path's groups, flow and hops loaded whatever they said (a path
    from a head group down to the tokens, a group twice, a one-group path whose flow is not its
    hop). A path starts at a token embedding group and climbs through distinct groups, each in
    a later stage and not at an earlier position; the root alone brings its hop."""
    summary = summarize(replacement, graph, run, check=False)
    groups = {g.key: g for g in summary.groups}
    long = next(p for p in summary.paths if len(p.groups) >= 3)
    i = summary.paths.index(long)
    root = long.groups[0]
    assert groups[root].kind == "embedding"

    def upside_down(s):
        s.paths[i].groups.reverse()

    def twice(s):
        s.paths[i].groups[2] = s.paths[i].groups[1]

    def swapped(s):
        g = s.paths[i].groups
        g[1], g[2] = g[2], g[1]

    def root_alone(flow):
        def edit(s):
            s.paths[i].groups, s.paths[i].hops, s.paths[i].flow = [root], [0.5], flow

        return edit

    edits = [
        (upside_down, "does not start at a token embedding group"),
        (twice, "a group twice"),
        (swapped, "is not above"),
        (root_alone(2.0), "the flow of a path of one group (its hop) = 0.5, not 2"),
    ]
    path = tmp_path / "mechanisms.json"
    for edit, message in edits:
        edited = copy.deepcopy(summary)
        edit(edited)
        with pytest.raises(ValueError, match=re.escape(message)):
            save_summary(edited, path)
        assert not path.exists()
    edited = copy.deepcopy(summary)
    root_alone(0.5)(edited)
    save_summary(edited, path)
    assert load_summary(path).paths[i].groups == [root]


def test_a_key_sides_main_input_is_checked_field_by_field(graph, replacement, run, tmp_path):
    """Found by a fuzz pass: a QK pair's ``key.main_input`` without ``pos`` (or ``kind``,
    ``layer``, ``attends``) loaded, then the report (``ref_text``) raised a KeyError. Each is
    a ``MainInput``, checked as the file is read, and refused naming the field."""
    good = summarize(replacement, graph, run, check=False).to_dict()
    sides = [(i, j, k) for i, g in enumerate(good["groups"]) for j, r in enumerate(g["qk"])
             for k, p in enumerate(r["pairs"]) if p["key"]["main_input"]]  # fmt: skip
    assert sides, "the summary has a key side with its main input"
    i, j, k = sides[0]
    at = f"groups[{i}].qk[{j}].pairs[{k}].key.main_input"
    WRITTEN = "written by another version, or edited"
    n_pos = len(good["tokens"])
    edits = [(key, None, f"{at} lacks {key!r}: {WRITTEN}")
             for key in ("id", "kind", "layer", "pos", "attends", "share")]  # fmt: skip
    edits += [
        ("pos", "3", f"{at}.pos: expected an integer"),
        ("pos", n_pos, f"{at}.pos: {n_pos} outside"),
        ("pos", -1, f"{at}.pos: -1 outside"),
        ("kind", "neuron", f"{at}.kind: 'neuron', not one of"),
        ("layer", -2, f"{at}.layer: -2 is below -1"),
        ("share", 1.5, f"{at}.share: expected a number in [0, 1]"),
        ("share", float("nan"), f"{at}.share: expected a finite number"),
        ("surprise", 1, f"{at} holds unknown keys ('surprise'): {WRITTEN}"),
    ]
    mi = good["groups"][i]["qk"][j]["pairs"][k]["key"]["main_input"]
    if mi["kind"] != "lorsa":
        edits.append(("attends", 0, f"{at}.attends: 0 is not a key up to a head's position"))
    path = tmp_path / "mechanisms.json"
    for key, value, message in edits:
        d = json.loads(json.dumps(good))
        record = d["groups"][i]["qk"][j]["pairs"][k]["key"]["main_input"]
        if value is None:
            del record[key]
        else:
            record[key] = value
        path.write_text(json.dumps(d))
        with pytest.raises(ValueError, match=re.escape(message)):
            load_summary(path)
    path.write_text(json.dumps(good))
    assert "<h2>Mechanisms</h2>" in html_page(graph, mechanisms=load_summary(path))


def test_a_qk_pair_side_is_checked_as_the_printers_read_it(graph, replacement, run, tmp_path):
    """A QK pair side (``NodeRef``) of a file names a kind the printers know, at a stage of
    that kind and its block, inside the prompt; an absent unit has no position. A side of kind
    ``neuron``, a Lorsa head at a transcoder stage or a position past the prompt is refused
    naming the side, before ``ref_text`` would print a wrong name or raise."""
    good = summarize(replacement, graph, run, check=False).to_dict()
    sides = [(i, j, k, side) for i, g in enumerate(good["groups"]) for j, r in enumerate(g["qk"])
             for k, p in enumerate(r["pairs"]) for side in ("query", "key")
             if p[side]["present"] and p[side]["kind"] != "qk bias"]  # fmt: skip
    assert sides
    i, j, k, side = sides[0]
    at = f"groups[{i}].qk[{j}].pairs[{k}].{side}"
    n_pos = len(good["tokens"])
    edits = [
        ({"kind": "neuron"}, f"{at}.kind: 'neuron', not one of"),
        ({"kind": "unit"}, f"{at}.kind: 'unit', not one of"),
        ({"kind": "logit"}, f"{at}: stage"),
        ({"kind": "lorsa", "stage": 2, "layer": 0}, f"{at}: stage 2, layer 0 for a lorsa node"),
        ({"kind": "transcoder", "stage": 2, "layer": 1}, f"{at}: stage 2, layer 1"),
        ({"kind": "embedding", "stage": 1, "layer": 0}, f"{at}: stage 1, layer 0"),
        ({"kind": "bias", "stage": None}, f"{at}: stage None"),
        ({"pos": n_pos}, f"{at}: a node needs an index and a position inside the prompt"),
        ({"index": None}, f"{at}: a node needs an index"),
        ({"present": False}, f"{at}: a unit absent here has no position"),
        ({"id": None, "kind": "qk bias"}, None),  # the bias side is well formed
        ({"id": "x", "kind": "qk bias"}, f"{at}: the bias side has no id"),
    ]
    path = tmp_path / "mechanisms.json"
    for edit, message in edits:
        d = json.loads(json.dumps(good))
        d["groups"][i]["qk"][j]["pairs"][k][side].update(edit)
        path.write_text(json.dumps(d))
        if message is None:
            load_summary(path)
            continue
        with pytest.raises(ValueError, match=re.escape(message)):
            load_summary(path)


def test_summary_without_constants_or_checks(replacement, tokens):
    run = run_prompt(replacement, tokens, "local")
    graph = attribute(replacement, tokens, max_logits=1, run=run)
    summary = summarize(replacement, graph, run, check=False)
    (t,) = summary.targets
    assert t.tokens + t.errors + t.constants == pytest.approx(t.value, abs=1e-4)
    assert t.constants_by_source == [("own", pytest.approx(t.constants))]
    assert not any(g.checks for g in summary.groups)
    assert not math.isnan(t.margin)


# ----------------------------------------------------------------- the viewer
def test_the_viewer_panel_shows_the_summary_and_draws_its_groups(browser, replacement, tmp_path):
    from reports.html import write_html

    torch.manual_seed(9)  # a prompt with a QK source of two heads and a flagged group
    tokens = torch.randint(1, 50, (12,))
    run = run_prompt(replacement, tokens, "local", constants=True)
    graph = attribute(replacement, tokens, max_logits=1, run=run)
    qk_attribution(replacement, graph, reason=True, run=run)
    summary = summarize(replacement, graph, run)
    path = tmp_path / "graph.html"
    write_html(graph, path, None, mechanisms=summary)
    browser.load("about:blank")
    browser.load(path.resolve().as_uri())
    assert browser.evaluate("document.getElementById('viewer').dataset.error || ''") == ""
    text = browser.evaluate("document.querySelector('#viewer .panel').innerText")
    assert "Mechanisms" in text and "predicting heads" in text and "key side from" in text
    assert "specific by roots (tokens" in text
    from reports.mechanisms import (
        block_lines,
        no_sources_text,
        probability_text,
        qk_sources_side_blocks,
    )

    t0 = summary.targets[0]
    assert probability_text(t0) in text  # the target's probability, as the text prints it
    # the QK sources lines, or why there is none (a review: the panel left the reason out)
    why = qk_sources_side_blocks(summary, t0.predicting_group) or [no_sources_text(
        summary.group(t0.predicting_group), summary)]  # fmt: skip
    why = [x.strip() for x in block_lines(["", *why], "")[1:]]  # each side's block, its lines
    assert why[0] and all(x in text.splitlines() for x in why)  # a line each
    top = summary.targets[0].tokens_by_position[0]
    assert f"'{top.token}'@{top.pos} " in text  # which tokens the target comes from
    assert "the heads there bring" in text and "; their constant terms" in text
    assert "brings " in text  # each head group: the keys its flow comes from
    # the predicting group's QK sources, each with what its ablation does to the attention
    assert f"{QK_SOURCES_WHAT}:\n" in text and all(f"{x}\n" in text for x in QK_SOURCES)
    assert " side alone:\n" in text
    assert "writes the key side of " in text and "with it ablated (attention free): " in text
    # the summary's groups are the first supernodes, a flagged one marked on its box
    present = set(graph.ids)
    first = summary.targets[0].node
    groups = [g for g in summary.groups if g.kind in ("lorsa", "transcoder")
              and sum(m in present for m in g.members) >= 2]  # fmt: skip
    assert groups and sorted(browser.evaluate("viewer.supernodes()")) == sorted(
        f"{g.key} {g.name}" for g in groups
    )
    # (a QK source's box shows the attention it shapes instead: acting through attention is
    # what it is there for)
    flagged = [g for g in groups if not g.writes_qk
               and any(c.flagged for c in g.checks if c.target == first)]  # fmt: skip
    marked = browser.evaluate("[...document.querySelectorAll('#viewer svg .node.flagged')]"
                              ".map((g) => g.textContent)")  # fmt: skip
    assert flagged and len(marked) == len(flagged) and all("check flagged" in x for x in marked)
    sources = browser.evaluate("[...document.querySelectorAll('#viewer svg .node.qk-source')]"
                               ".map((g) => g.textContent)")  # fmt: skip
    writers = [g for g in groups if g.writes_qk]
    assert writers and len(sources) == len(writers)
    for g in writers:
        a = g.attention_checks[0]
        box = next(x for x in sources if x.startswith(f"{g.key} L{g.layer} "))
        assert f"writes {a.group}'s " in box and "check flagged" not in box
        # the numbers it is there for, whole (a reviewer read `writes g0's key 0.70→0.…`)
        # (through the side it writes: what chose it)
        side = next(w.side for w in g.writes_qk if w.group == a.group)
        after = f"{attention_text(a.mean_before)}→{attention_text(a.mean_side(side))}"
        assert f"{a.group} attends {after}" in box and "…" not in box
    # A supernode is found by its name (a reviewer's "g3" found nothing), listed first, and
    # its result opens its panel
    g = groups[0]
    browser.evaluate("(() => { const s = document.querySelector('#viewer input[type=search]');"
                     f" s.value = {json.dumps(g.key + ' ')}; s.dispatchEvent(new Event('input'));"
                     " })()")  # fmt: skip
    results = browser.evaluate(
        "[...document.querySelectorAll('#viewer .results button')].map(b => b.textContent)"
    )
    assert results and results[0].startswith(f"supernode {g.key} ")
    browser.evaluate("document.querySelector('#viewer .results button').click()")
    assert browser.evaluate("viewer.state.clicked.group") is not None
    # One URL draws one picture however it arrives (a reviewer's page, every group undone,
    # came back grouped when reloaded, and a pasted `#nodes=5` dropped the page's groups).
    # Undone, the groups leave `supernodes=[]` in the URL, which reloads with none:
    default = sorted(browser.evaluate("viewer.supernodes()"))
    browser.evaluate("viewer.state.groups = []; viewer.update()")
    url = browser.evaluate("location.href")
    assert "supernodes=%5B%5D" in url or "supernodes=[]" in url
    browser.load("about:blank")
    browser.load(url)
    assert browser.evaluate("viewer.supernodes()") == []
    # a hash pasted in place leaves out what the page holds of its own, as one opened with it
    browser.evaluate("location.hash = 'nodes=5'")
    browser.evaluate("new Promise(r => setTimeout(r, 50))")  # hashchange is dispatched async
    assert sorted(browser.evaluate("viewer.supernodes()")) == default
    browser.load("about:blank")
    browser.load(path.resolve().as_uri() + "#nodes=5")
    assert sorted(browser.evaluate("viewer.supernodes()")) == default
    # without them (the URL says none), a group's button draws it as one
    browser.load("about:blank")
    browser.load(path.resolve().as_uri() + "#supernodes=[]")
    assert browser.evaluate("viewer.supernodes()") == []
    buttons = browser.evaluate("document.querySelectorAll('#viewer .panel .mech-group').length")
    assert buttons > 0
    browser.evaluate("document.querySelector('#viewer .panel .mech-group').click()")
    (name,) = browser.evaluate("viewer.data.qParams.supernodes.map((s) => s[0])")
    assert name in default and browser.evaluate("viewer.supernodes()") == [name]  # as it starts
    lorsa = graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
    head = next(i for i in lorsa if graph.qk_for(i))
    browser.evaluate(f"viewer.state.clicked = {{node: {head}}}; viewer.update()")
    panel = browser.evaluate("document.querySelector('#viewer .panel').innerText")
    assert "always-on" in panel


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1), (7, 9), (300, 200)])
def test_top_entries_equal_a_full_sort(shape):
    """The row-prefiltered top-k of a QK table is the top-k of the whole table, largest
    magnitude first, with signed values (entries of equal magnitude may come in any order)."""
    from circuits.qk import top_entries

    gen = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    table = torch.randn(shape, generator=gen) * torch.rand(shape[0], 1, generator=gen)
    for k in (1, 3, 10, shape[0] * shape[1]):
        flat, values = top_entries(table, k)
        want = table.flatten().abs().topk(min(k, table.numel()))
        assert torch.equal(values.abs(), want.values)
        assert torch.equal(values, table.flatten()[flat]) and len(set(flat.tolist())) == len(flat)


@pytest.mark.parametrize("block", [1, 7, 1 << 18])
def test_product_top_equals_the_whole_tables(block, monkeypatch):
    """Blockwise, a batch of product tables gives each table's total magnitude and top entries
    exactly as the whole tables do, whatever the block size."""
    import circuits.qk as qk

    monkeypatch.setattr(qk, "PRODUCT_BLOCK", block)
    gen = torch.Generator().manual_seed(block)
    left = torch.randn(3, 37, 5, generator=gen) * torch.rand(3, 37, 1, generator=gen)
    right = torch.randn(3, 5, 23, generator=gen)
    tables = left @ right
    for k in (1, 4, 37 * 23):
        magnitude, flat, values = qk.product_top(left, right, k)
        torch.testing.assert_close(magnitude, tables.abs().sum((1, 2)))
        for r in range(3):
            want = tables[r].flatten().abs().topk(min(k, tables[r].numel())).values
            torch.testing.assert_close(values[r].abs(), want)
            torch.testing.assert_close(values[r], tables[r].flatten()[flat[r]])


def test_qk_reasons_do_not_depend_on_batching(graph, replacement, run, monkeypatch):
    """Each record alone, formed a row at a time, gives the same records as a layer's records
    in one batch."""
    import circuits.qk as qk

    def records():
        out = qk_attribution(replacement, graph, key_mass=0.2, contrast=True, reason=True,
                             run=run)  # fmt: skip
        return [(a.contrast, a.contrast_pairs, a.reason) for a in out]

    batched = records()
    monkeypatch.setattr(qk, "REASON_ELEMENTS", 1)
    monkeypatch.setattr(qk, "PRODUCT_BLOCK", 1)
    alone = records()
    assert len(alone) == len(batched) > 3
    for (c1, p1, r1), (c2, p2, r2) in zip(batched, alone, strict=True):
        assert c1 == pytest.approx(c2, abs=1e-5)
        assert [(p.query, p.key) for p in p1] == [(p.query, p.key) for p in p2]
        assert r1.specific == pytest.approx(r2.specific, abs=1e-5)
        assert r1.rest_share == pytest.approx(r2.rest_share, abs=1e-5)
        assert [(p.query, p.key) for p in r1.pairs] == [(p.query, p.key) for p in r2.pairs]
        assert [u for u, _ in r1.query_units] == [u for u, _ in r2.query_units]
        assert [u for u, _ in r1.key_units] == [u for u, _ in r2.key_units]


def test_head_ranking_names_a_mover_first_then_every_group_by_flow():
    """The predicting head group moves something from another position (not BOS, not the
    query itself); the groups after it are ranked by flow alone, so a group reading the
    current token with the largest flow is second, not behind every small mover."""
    from types import SimpleNamespace

    from circuits.mechanisms import _head_ranking

    q = 9
    attends = {0: 4, 1: 6, 2: q, 3: 0, 4: 7, 5: 3}  # group -> key; 5 is the target's own
    groups = [SimpleNamespace(kind="lorsa", pos=q, attends=a) for a in attends.values()]
    groups.append(SimpleNamespace(kind="transcoder", pos=q, attends=None))
    view = SimpleNamespace(groups=groups)
    flow = np.array([1.5, 2.0, 19.4, 3.0, -4.0, 50.0, 99.0])
    assert _head_ranking(view, flow, q, own=5) == [1, 2, 3, 0, 4]
    # no mover with positive flow: the largest positive flow predicts
    flow = np.array([-1.5, -2.0, 19.4, 3.0, -4.0, 50.0, 99.0])
    assert _head_ranking(view, flow, q, own=5) == [2, 3, 4, 1, 0]
    # the target's own group never ranks, even as the only mover
    assert _head_ranking(view, np.ones(7), q, own=0)[0] == 1
    # found by a fuzz pass: a head target's ranking held the groups of its own block and
    # above, whose flow into it is exactly 0; a group without flow never ranks
    assert _head_ranking(view, np.r_[0.0, np.ones(6)], q, own=5) == [1, 2, 3, 4]


def test_qk_candidates_are_the_head_groups_that_raise_a_side_most():
    """``_qk_candidates`` sums a side's flow per group and lists the head groups with a
    positive sum (not a feature group's, not an excluded one's), largest first; none where
    no head group raises the side."""
    from types import SimpleNamespace

    from circuits.mechanisms import _qk_candidates

    kinds = ["lorsa", "lorsa", "transcoder", "lorsa", "lorsa"]
    view = SimpleNamespace(groups=[SimpleNamespace(kind=k) for k in kinds], n_groups=5,
                           of_node=np.array([0, 0, 1, 2, 3, 4, 4]))  # fmt: skip
    flow = np.array([0.5, 0.7, 2.0, 9.0, -5.0, 1.0, 0.25])  # sums 1.2, 2, 9, -5, 1.25
    assert _qk_candidates(view, flow, set()) == [(1, 2.0), (4, 1.25), (0, 1.2)]
    assert _qk_candidates(view, flow, {1}) == [(4, 1.25), (0, 1.2)]
    assert _qk_candidates(view, -flow, set()) == [(3, 5.0)]
    assert _qk_candidates(view, np.where(view.of_node == 2, 1.0, -1.0), set()) == []


def test_a_sweep_serves_an_equal_graph_and_a_checked_graph_is_not_checked_again(graph):
    """An ``EdgeSweep`` of one graph serves an equal graph loaded or copied apart (``summarize``
    accepts a view grouped from one), and refuses another graph's; a graph found to close is
    remembered by its very arrays, so flows called without a sweep do not pass over every edge
    again (1.5 s at 127 tokens), while new arrays are checked."""
    import dataclasses

    from circuits import prune
    from circuits.flows import EdgeSweep

    t = int(graph.is_kind("logit").nonzero()[0])
    copy = dataclasses.replace(graph, edges=graph.edges.copy())
    flow, _ = many_node_flows(copy, [t], EdgeSweep(graph))[t]
    np.testing.assert_allclose(flow, node_flows(graph, t)[0])
    pruned = prune_graph(graph, node_threshold=0.5)
    with pytest.raises(ValueError, match="edge_sweep is not this graph's"):
        many_node_flows(graph, [t], _sweep_of_other(pruned))
    calls = []
    real = prune._refuse_open_rows  # the pass over every edge
    prune._refuse_open_rows = lambda g, *why: calls.append(g) or real(g, *why)
    try:
        node_flows(graph, t), node_flows(graph, t)
        assert len(calls) <= 1  # at most once for these arrays (already checked above: 0)
        node_flows(copy, t)  # new edges: checked
        assert calls[-1] is copy
    finally:
        prune._refuse_open_rows = real


def _sweep_of_other(pruned):
    """A sweep object of another graph, made without its check (a pruned graph has none)."""
    from circuits.flows import EdgeSweep

    sweep = EdgeSweep.__new__(EdgeSweep)
    sweep.edges, sweep.ids = pruned.edges, pruned.ids
    return sweep


def test_a_summary_is_shown_only_beside_its_own_graph(graph, replacement, run, tokens):
    """A summary of another prompt (or mode) beside a graph would show its groups and checks
    as this graph's, matching members by id: the report page and the viewer's data refuse it
    in one line; the graph's own summary, and its pruned graph, are fine."""
    from circuits.prune import prune_graph
    from reports.viewer import mechanisms_data

    summary = summarize(replacement, graph, run, check=False)
    assert html_page(prune_graph(graph), mechanisms=summary)
    other_tokens = tokens.clone()
    other_tokens[3] = (int(tokens[3]) % 40) + 1 if int(tokens[3]) != 1 else 2
    other = attribute(replacement, other_tokens, max_logits=3, mode=run.mode)
    other_mode = "sparse" if run.mode == "local" else "local"
    moded = attribute(replacement, tokens, max_logits=3, mode=other_mode)
    for wrong, why in ((other, "other tokens"), (moded, f"mode {run.mode!r}")):
        with pytest.raises(ValueError, match=f"not this graph's \\({why}"):
            html_page(wrong, mechanisms=summary)
        with pytest.raises(ValueError, match="not this graph's"):
            mechanisms_data(summary, wrong)
    # targets that are not the graph's nodes of their ids (a fuzz pass swapped two targets'
    # tokens in the file: each target's flows and checks were shown under the other's token)
    assert len(summary.targets) >= 2
    pruned = prune_graph(graph)
    swapped = copy.deepcopy(summary)
    a, b = swapped.targets[:2]
    a.token, b.token = b.token, a.token
    valued = copy.deepcopy(summary)
    valued.targets[0].value += 1.0
    valued.targets[0].constants += 1.0  # (its parts still close, as a file's must)
    for edited, why in ((swapped, f"target {a.node} is the logit of {b.token!r}"),
                        (valued, f"target {a.node} has the value")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(f"not this graph's ({why}")):
            html_page(pruned, mechanisms=edited)
        with pytest.raises(ValueError, match="not this graph's"):
            mechanisms_data(edited, pruned)


def test_a_flagged_ratio_never_reads_as_the_limit_it_passed():
    """A reviewer read `free 3x` for a ratio of 3.02, past the 3x limit: as many figures as
    keep it off the limit, either way."""
    from circuits.mechanisms import RATIO
    from reports.mechanisms import _ratio_text

    assert RATIO == 3.0
    for ratio, text in ((5.5, "5.5"), (0.22, "0.22"), (3.02, "3.02"), (3.004, "3.004"),
                        (0.331, "0.331"), (0.3329, "0.3329")):  # fmt: skip
        assert _ratio_text(ratio) == text


def test_a_reversed_difference_names_the_same_movers(replacement, tokens, run):
    """A reviewer's: on ``' Saturday' - ' Thursday'`` (value -8.3) the predicting group was one
    of +0.235 flow while the ' Friday' readers (-15.7) made the target what it is; the ranking
    took the largest positive flow. It is read in the target's direction now: a difference and
    its reverse have flows of opposite sign, node by node, and the same head groups, in the
    same order, with the same heading."""
    from circuits.attribution import LogitDiffTarget
    from reports.mechanisms import predicting_heading

    top = run.logits[-1].topk(2).indices.tolist()
    records = []
    for a, b in (top, top[::-1]):
        full = attribute(replacement, tokens, targets=[LogitDiffTarget(a, b)], run=run)
        summary = summarize(replacement, full, run, check=False)
        (t,) = summary.targets
        records.append((t, summary))
    (ahead, s1), (behind, s2) = records
    assert ahead.value > 0 > behind.value and behind.direction == -ahead.direction == -1
    assert ahead.value == pytest.approx(-behind.value, abs=1e-4)
    names = [[s.group(k).name for k in t.head_groups] for t, s in records]
    assert names[0] == names[1] and names[0]
    assert s1.group(ahead.predicting_group).name == s2.group(behind.predicting_group).name
    assert predicting_heading(s1.group(ahead.predicting_group), ahead) == predicting_heading(
        s2.group(behind.predicting_group), behind
    )


def test_a_differences_checks_give_both_tokens_probabilities(replacement, tokens, run, tmp_path):
    """A reviewer: ``' four' - ' one'`` held (+1.73) while p(' four') fell 0.00163 -> 6.33e-05,
    marked ok with the first token's probability alone. A difference's target holds its second
    token's probability and each check that token's after each rerun (compared with
    ``intervene``'s logits here), printed beside the first's; a file giving one to a target
    that is no difference, or to one rerun only, is refused."""
    from circuits.attribution import LogitDiffTarget

    a, b = run.logits[-1].topk(2).indices.tolist()
    full = attribute(replacement, tokens, targets=[LogitDiffTarget(a, b)], run=run)
    summary = summarize(replacement, full, run)
    (t,) = summary.targets
    clean = run.logits[-1].double().softmax(-1)
    assert t.negative_probability == pytest.approx(float(clean[b]))
    g = next(g for g in summary.groups if g.checks)
    (c,) = g.checks
    for freeze, after in ((True, c.negative_probability_frozen),
                          (False, c.negative_probability_free)):  # fmt: skip
        edits = [Intervention(m, "ablate") for m in g.members]
        rerun = intervene(replacement, full, edits, freeze_attention=freeze,
                          freeze_errors=freeze, run=run)  # fmt: skip
        assert after == pytest.approx(float(rerun.logits.double().softmax(-1)[b]), rel=1e-4)
    text = format_summary(summary, every_check=True)
    lines = text.splitlines()  # a check: its prediction, then frozen and free under it
    line = next(" ".join(lines[i : i + 3]) for i, x in enumerate(lines)
                if x.strip().startswith("ablate")
                and f"p({full.token(b)!r}) " in lines[i + 1])  # fmt: skip
    assert line.count(f"p({full.token(a)!r}) ") == line.count(f"p({full.token(b)!r}) ") == 2
    d = summary.to_dict()
    path = tmp_path / "mechanisms.json"
    path.write_text(json.dumps(d))
    assert load_summary(path).targets[0].negative_probability == t.negative_probability
    where = next(i for i, x in enumerate(d["groups"]) if x["checks"])
    for edit, message in (
        (lambda x: x["groups"][where]["checks"][0].update(negative_probability_free=None),
         "for one rerun only"),
        (lambda x: x["targets"][0].update(negative_probability=None,
                                          model_negative_probability=None), "for one rerun only"),
        (lambda x: x["targets"][0].update(negative_probability=1.5), "negative_probability"),
        # the model's beside the graph's own in sparse mode only, and only beside one
        (lambda x: x["targets"][0].update(negative_probability=None),
         "model_negative_probability" if summary.mode == "sparse" else "for one rerun only"),
        (lambda x: x.update(mode="local", model_top=None, model_top_probability=None)
         or x["targets"][0].update(model_probability=None, model_negative_probability=0.5),
         "model_negative_probability"),
        (lambda x: x.update(mode="local", model_top="x", model_top_probability=0.5), "model_top"),
        # a review: an empty top token, a top of p 0, and the target's own token given another
        # probability than the target gives it, all loaded
        (lambda x: x.update(model_top="", model_top_probability=0.5), "model_top"),
        (lambda x: x.update(model_top="x", model_top_probability=0.0), "model_top"),
        (lambda x: x.update(model_top=x["targets"][0]["token"], model_top_probability=1e-9),
         "model_top"),
        # ... its own token more likely than the target says, and the most likely of all
        (lambda x: x.update(model_top=x["targets"][0]["token"], model_top_probability=1.0),
         "model_top"),
        (lambda x: x["targets"][0].update(probability=0.9, negative_probability=0.2),
         "sum above 1"),
    ):  # fmt: skip
        bad = copy.deepcopy(d)
        edit(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_summary(path)
    single = summarize(replacement, attribute(replacement, tokens, run=run), run, check=False)
    forged = single.to_dict()
    forged["targets"][0]["negative_probability"] = 0.5
    path.write_text(json.dumps(forged))
    with pytest.raises(ValueError, match="not a logit difference"):
        load_summary(path)


def test_head_groups_whose_ablation_moves_the_target_more_are_named_beside_the_predictor():
    """A reviewer's head target: its named group (largest value flow) moved it -0.72 ablated,
    the previous-token heads at its key -5.09 and another group -4.96 (through attention):
    those are named on the predicting line, with their free changes; a group under
    ``STRONGER`` times the predictor's, or under the tolerance, is not."""
    from types import SimpleNamespace

    from circuits.mechanism_file import EffectCheck, GroupRecord
    from reports.mechanisms import STRONGER, stronger_text

    def group(key, name, free):
        g = GroupRecord(key, name, "lorsa", 0, 7, 1, " t", [1], None, [f"0_{key}_7"], [],
                        {"t": 1.0})  # fmt: skip
        if free is not None:
            g.checks.append(EffectCheck(
                target="t", predicted=-1.0, frozen=-1.0, free=free, agree_frozen=True,
                agree_free=free < 0, ratio_frozen=1.0, ratio_free=abs(free), flagged=False,
            ))  # fmt: skip
        return g

    groups = {g.key: g for g in (group("g0", "L0 5 heads @7 -> ' t'@1", -0.72),
                                 group("g1", "L0 10 heads @7 -> ' seven'@6", -5.09),
                                 group("g2", "L0 12 heads @7 -> ' dance'@7", +4.96),
                                 group("g3", "L0 2 heads @7 -> ','@5", -1.2),
                                 group("g4", "L0 3 heads @7 -> 'a'@2", None))}  # fmt: skip
    # another place's group, and a feature group there, are not "there"
    elsewhere = group("g5", "L0 4 heads @6 -> 'x'@5", -9.0)
    elsewhere.pos = 6
    features = group("g6", "L0 3 features @7", -9.0)
    features.kind, features.attends, features.qk_heads = "transcoder", None, []
    groups |= {"g5": elsewhere, "g6": features}
    summary = SimpleNamespace(groups=list(groups.values()), tolerance=0.1)
    # a group of the summary there counts whether or not it is among the target's ranked
    # head groups (a reviewer found groups of negative flow, free over twice, left out)
    t = SimpleNamespace(node="t", head_groups=["g0"])
    assert STRONGER * 0.72 < 4.96 and 1.2 < STRONGER * 0.72
    assert stronger_text(groups["g0"], t, summary) == (
        "head groups there whose ablation (attention free) moves it over twice as much as this "
        "one's -0.72, either way: g1 L0 10 heads @7 -> ' seven'@6 -5.09; g2 L0 12 heads @7 -> "
        "' dance'@7 +4.96"
    )
    assert stronger_text(groups["g1"], t, summary) == ""  # the strongest itself
    assert stronger_text(groups["g4"], t, summary) == ""  # unchecked: nothing to compare
    summary.tolerance = 6.0  # both under the tolerance: no measured difference
    assert stronger_text(groups["g0"], t, summary) == ""


def test_a_summary_file_with_numbers_out_of_their_range_is_refused(graph, replacement, run,
                                                                   tmp_path):  # fmt: skip
    """A fuzz pass: typed but out-of-range edits of mechanisms.json loaded and printed as fact
    (a rest share of 1e9 dropped a reason's unit pairs and said "all of the magnitude"; a QK
    reason of layer 10**9; QK heads -1 or twice; a root term's kind "x"; a node index -7).
    Each is refused in one line naming its field."""
    summary = summarize(replacement, graph, run, check=False)
    d = summary.to_dict()
    i = max(
        (i for i, g in enumerate(d["groups"]) if g["qk"]),
        key=lambda i: len(d["groups"][i]["qk_heads"]),
    )
    reason = d["groups"][i]["qk"][0]
    assert reason["root_pairs"] and reason["pairs"]
    index_side = next((j, side) for j, p in enumerate(reason["pairs"])
                      for side in ("query", "key")
                      if p[side]["present"] and p[side]["kind"] != "qk bias")  # fmt: skip

    def at(path):
        def edit(x):
            *head, last, value = path
            for k in head:
                x = x[k]
            x[last] = value

        return edit

    g = ["groups", i]
    features = next(j for j, x in enumerate(d["groups"]) if x["kind"] == "transcoder")
    cases = [
        (at([*g, "qk", 0, "rest_share", 1e9]), r"rest_share"),
        (at([*g, "qk", 0, "layer", 10**9]), r"a reason not of the group's QK heads"),
        (at([*g, "qk", 0, "layer", -1]), r"a reason not of the group.s QK heads"),
        (at([*g, "qk_heads", 0, -1]), r"qk_heads"),
        (at([*g, "qk_heads", d["groups"][i]["qk_heads"] * 2]), r"qk_heads"),  # each twice
        (at([*g, "qk", 0, "root_pairs", 0, "query", "kind", "x"]), r"\.kind: 'x'"),
        (at([*g, "qk", 0, "pairs", index_side[0], index_side[1], "index", -7]), r"\.index: -7"),
        (at([*g, "key_share", -0.5]), r"key_share: not a finite number > 0"),
        (at([*g, "key_share", 1e400]), r"key_share"),
        # a share of a head group only
        (at(["groups", features, "key_share", 0.3]), r"key_share: not a finite number > 0 of"),
    ]
    path = tmp_path / "mechanisms.json"
    for edit, message in cases:
        bad = copy.deepcopy(d)
        edit(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_summary(path)
    path.write_text(json.dumps(d))
    assert load_summary(path).to_dict() == d
    # every head group reading one key holds its share of the activation that key brings
    view = auto_groups(graph)
    by_name = {grp.name: grp for grp in view.groups}
    shares = [(g["key_share"], by_name[g["name"]].key_share) for g in d["groups"]
              if g["kind"] == "lorsa" and g["attends"] is not None]  # fmt: skip
    assert shares and all(a == b and a is not None for a, b in shares)
    assert all(g["key_share"] is None for g in d["groups"] if g["kind"] != "lorsa")


def test_a_qk_sides_sources_say_what_raises_it_and_what_lowers_it():
    """A reviewer: a side of -4.02 was listed by its raisers alone, and a kind without a raiser
    showed a head group of -0.002 as if it raised it. A side line gives its total, the largest
    raiser of each kind, largest first, and the largest lowering source where the side is
    below zero or that source is at least a quarter of the largest raiser."""
    from types import SimpleNamespace

    from circuits.mechanism_file import SourceShare
    from reports.mechanisms import side_from_text

    def share(name, value, kind="lorsa"):
        return SourceShare(name, kind, 0, 3, None, None, value)

    key = {"roots": [share("token 'a'@3", 9.52, "embedding"), share("BOS", -0.5, "embedding")],
           "heads": [share("L0 3 heads @3", 3.81), share("L0 2 heads @3", -13.6)],
           "features": [share("L0 4 features @3", -0.002, "transcoder")]}  # fmt: skip
    r = SimpleNamespace(query_sources={}, key_sources=key, query_at=None, key_at=-4.02)
    assert side_from_text(r, "key") == (
        "key side from (-4.02 in all): token 'a'@3 +9.52; L0 3 heads @3 +3.81; lowered most by "
        "L0 2 heads @3 -13.6"
    )
    assert side_from_text(r, "query") == ""  # no source at all
    key["heads"] = [share("L0 3 heads @3", 3.81), share("L0 2 heads @3", -1.0)]
    r.key_at = 12.3  # above zero, and its lowerers small beside +9.52: raisers alone
    assert side_from_text(r, "key") == (
        "key side from (+12.3 in all): token 'a'@3 +9.52; L0 3 heads @3 +3.81"
    )
    key["heads"][1] = share("L0 2 heads @3", -2.5)  # a quarter of the largest raiser or more
    assert side_from_text(r, "key").endswith("; lowered most by L0 2 heads @3 -2.5")


def test_a_summary_with_a_hand_made_group_of_several_kinds_saves_and_loads(
    graph, replacement, run, tmp_path
):
    """A review: a group a user makes of heads and features together (kind "mixed", its heads'
    QK heads listed, ``circuits.groups.grouped``) was refused by the summary file's kind check
    that came in with the range checks; ``summarize`` accepts such groups and so does its file."""
    from circuits.groups import grouped

    last = len(graph.tokens) - 1
    heads = (graph.is_kind("lorsa") & (graph.pos == last)).nonzero().squeeze(1).tolist()
    feats = (graph.is_kind("transcoder") & (graph.pos == last)).nonzero().squeeze(1).tolist()
    assert heads and feats
    view = grouped(graph, [heads + feats], ["both"])
    summary = summarize(replacement, graph, run, view=view, check=False)
    (mixed,) = [g for g in summary.groups if g.name.startswith("both")]
    assert mixed.kind == "mixed" and mixed.qk_heads
    path = tmp_path / "mechanisms.json"
    save_summary(summary, path)
    assert load_summary(path).to_dict() == summary.to_dict()
    d = summary.to_dict()
    d["groups"][summary.groups.index(mixed)]["kind"] = "blend"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="kind: 'blend', not one of"):
        load_summary(path)


def test_a_groups_members_have_their_fields_in_the_summary_file(graph, replacement, run, tmp_path):
    """A reviewer reading mechanisms.json in a notebook found a group's members only as node
    ids ('4_315_26'): a head group's head indices, or the place of any member the pruned graph
    had dropped, could be had only by parsing them. Each member's fields are in
    ``member_nodes`` (a ``NodeRef`` per member, in order); a file whose fields make another id,
    or place a member outside its group, is refused."""
    summary = summarize(replacement, graph, run, check=False)
    for g in summary.groups:
        assert [ref.id for ref in g.member_nodes] == g.members
        for ref in g.member_nodes:
            i = graph.id_to_index[ref.id]
            assert (ref.kind, ref.layer, ref.stage, ref.pos, ref.index) == (
                graph.kinds[i], int(graph.layer[i]), int(graph.stage[i]), int(graph.pos[i]),
                int(graph.index[i]))  # fmt: skip
            assert ref.qk_head == (graph.qk_head(i) if ref.kind == "lorsa" else None)
    path = tmp_path / "mechanisms.json"
    save_summary(summary, path)
    assert load_summary(path).to_dict() == summary.to_dict()
    d = summary.to_dict()
    i, g = next((i, g) for i, g in enumerate(d["groups"]) if g["kind"] == "lorsa")
    for edit, message in (
        (lambda m: m[0].update(index=m[0]["index"] + 1), "its fields make another id"),
        (lambda m: m.reverse() if len(m) > 1 else m.append(dict(m[0])), "one per member"),
        (lambda m: m[0].update(kind="logit"), "a member is a node of the prompt"),
    ):
        forged = copy.deepcopy(d)
        edit(forged["groups"][i]["member_nodes"])
        path.write_text(json.dumps(forged))
        with pytest.raises(ValueError, match=message):
            load_summary(path)
    forged = copy.deepcopy(d)  # a head group's member at another query, its id to match
    ref = forged["groups"][i]["member_nodes"][0]
    ref["pos"] = ref["attends"] = 0
    ref["id"] = forged["groups"][i]["members"][0] = f"{ref['stage'] - 1}_{ref['index']}_0"
    forged["groups"][i]["in_pruned"] = []
    path.write_text(json.dumps(forged))
    with pytest.raises(ValueError, match="not of its group's kind and place"):
        load_summary(path)
    del d["groups"][i]["member_nodes"]  # a file written before them
    path.write_text(json.dumps(d))
    assert load_summary(path).groups[i].member_nodes == []


def test_a_share_and_its_whole_print_apart_where_they_differ():
    """A QK source's share beside its side's whole: three figures, more where those print two
    different numbers alike (a reviewer read "+13.2 of the side's +13.2 (more than the
    whole)"; then 13.2001 against 13.2 printed alike at four figures too)."""
    from reports.mechanisms import apart

    assert apart(3.14159, -2.5) == ("+3.14", "-2.5")
    assert apart(13.237, 13.21) == ("+13.24", "+13.21")
    assert apart(13.2001, 13.2) == ("+13.2001", "+13.2")
    assert apart(-4.0, -4.0) == ("-4", "-4")  # equal numbers print equal


def test_a_groups_attention_says_which_targets_flow_weighs_its_qk_heads(replacement, graph, run):
    """A head group's attention is its QK heads' weighted by their |flow| into the target it
    predicts (the first target for a group predicting none): with several targets the words
    name it (with ``--target-diff`` a reviewer read a group's attention 0.53 where the logit's
    summary read 0.54), with one they need not."""
    from reports.mechanisms import attention_check_text, weights_text

    summary = summarize(replacement, graph, run, check=False)
    assert len(summary.targets) > 1
    first = summary.targets[0].label
    g0 = summary.targets[0].predicting_group
    assert g0 == "g0" and summary.weighed_by(g0) is summary.targets[0]
    assert weights_text(1, summary, g0) == ""
    assert weights_text(3, summary, g0) == f"3 QK heads by flow into the first target, {first}"
    alone = dataclasses.replace(summary, targets=summary.targets[:1])
    assert weights_text(3, alone, g0) == "3 QK heads by flow"
    later = dataclasses.replace(
        summary,
        targets=[
            dataclasses.replace(summary.targets[0], predicting_group=None),
            *summary.targets[1:2],
            dataclasses.replace(summary.targets[1], predicting_group=g0),
        ],
    )
    assert weights_text(3, later, g0) == (  # the first target it predicts, named
        f"3 QK heads by flow into the target it predicts, {summary.targets[1].label}"
    )
    a = AttentionCheck("g0", 1, 5, 2, [0, 1], [0.75, 0.25], [0.5, 0.25], [0.25, 0.125])
    assert attention_check_text(a, summary).endswith(
        f"0.44 -> 0.22 (2 QK heads by flow into the first target, {first}; QK 0 0.50 -> 0.25, "
        "QK 1 0.25 -> 0.12)"
    )


def test_a_later_targets_predicting_heads_are_weighed_by_their_flow_into_it(
    make_replacement, random_model
):
    """A reviewer: every head group's QK heads were weighed by their |flow| into the first
    target, so a later target's predicting group (one predicting 'v' +3.96 and lowering the
    first target 'th' -1.54) had its attention, and the QK heads whose reasons are given,
    read by its flow into a target it works against. Now by the first target it predicts."""
    from circuits.flows import node_flows

    replacement = make_replacement(random_model, n_qk=4, n_ov=16, lorsa_k=6)  # 2+ QK heads
    torch.manual_seed(3)  # a prompt whose later predicting group's attention is checked
    tokens = torch.randint(1, 50, (12,))
    run = run_prompt(replacement, tokens, "local", constants=True)
    graph = attribute(replacement, tokens, max_logits=3, run=run)
    summary = summarize(replacement, graph, run, max_groups=6)
    first = summary.targets[0]
    later = [(t, t.predicting_group) for t in summary.targets[1:]
             if t.predicting_group not in (None, first.predicting_group)
             and len(summary.group(t.predicting_group).qk_heads) > 1]  # fmt: skip
    assert later
    t, key = later[0]
    assert summary.weighed_by(key) is t
    group_record = summary.group(key)

    def shares(node: str) -> dict[int, float]:
        flow, _ = node_flows(graph, graph.id_to_index[node])
        by_head: dict[int, float] = {}
        for m in group_record.members:
            i = graph.id_to_index[m]
            by_head[graph.qk_head(i)] = by_head.get(graph.qk_head(i), 0.0) + abs(flow[i])
        total = sum(by_head.values())
        return {h: x / total for h, x in by_head.items()}

    checks = [a for g in summary.groups for a in g.attention_checks if a.group == key]
    assert checks
    own, other = shares(t.node), shares(first.node)
    for a in checks:
        assert a.weights == pytest.approx([own.get(h, 0.0) for h in a.qk_heads], abs=1e-9)
        assert a.weights != pytest.approx([other.get(h, 0.0) for h in a.qk_heads], abs=1e-3)
    assert [r.qk_head for r in group_record.qk] == sorted(own, key=lambda h: -own[h])[:2]


def test_a_forged_checks_agreements_ratios_and_flag_are_those_its_changes_give(
    graph, replacement, run, tmp_path
):
    """Found by fuzz pass 73: a check's ``agree_*``, ``ratio_*`` and ``flagged`` were read as
    written, so a mechanisms.json whose frozen change had the other sign (or was -1e308)
    beside the writer's agreement and no flag loaded and printed its check as ``[ok]``. Each
    is what the check's changes give (``circuits.mechanisms``); the file as written loads."""
    d = summarize(replacement, graph, run).to_dict()
    i = next(i for i, g in enumerate(d["groups"]) if g["checks"])
    c = d["groups"][i]["checks"][0]
    MechanismSummary.from_dict(json.loads(json.dumps(d)))
    where = f"groups[{i}].checks[0]"
    cases = [
        ("agree_frozen", not c["agree_frozen"], f"{where}.agree_frozen: "),
        ("agree_free", not c["agree_free"], f"{where}.agree_free: "),
        ("ratio_frozen", 1 + 2 * (c["ratio_frozen"] or 1), f"{where}.ratio_frozen: "),
        ("frozen", -1e308 if c["predicted"] < 0 else 1e308, f"{where}.ratio_frozen: "),
        ("flagged", not c["flagged"], f"{where}.flagged: "),
    ]
    path = tmp_path / "mechanisms.json"
    for name, value, message in cases:
        bad = copy.deepcopy(d)
        bad["groups"][i]["checks"][0][name] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=re.escape(message)):
            load_summary(path)


def test_a_forged_summary_files_qk_heads_pairs_key_tokens_and_settings_are_checked(
    graph, replacement, run, tmp_path
):
    """A reviewer forged mechanisms.json files that loaded: a QK pair side's ``qk_head`` of -1
    or 10**9, a pair's value of -1 or 1e9 (the pairs plus ``rest`` make the reason's
    ``specific``), a group's ``attends_token`` null or "x" (the token at the key it reads), and
    settings of NaN, "x", [] or {} (counts whole numbers >= 1, ``ratio`` a finite factor >= 1,
    flags true or false). Each is refused naming its field; the file as written loads."""
    d = summarize(replacement, graph, run, check=False).to_dict()
    i = next(i for i, g in enumerate(d["groups"]) if g["qk"] and g["qk"][0]["pairs"])
    g = d["groups"][i]
    pairs = g["qk"][0]["pairs"]
    k, side = next(((k, s) for k, p in enumerate(pairs) for s in ("key", "query")
                    if p[s]["present"] and p[s]["kind"] == "lorsa"),
                   next((k, s) for k, p in enumerate(pairs) for s in ("key", "query")
                        if p[s]["present"] and p[s]["kind"] != "qk bias"))  # fmt: skip
    ref = f"groups[{i}].qk[0].pairs[{k}].{side}"
    token = d["tokens"][g["attends"]]
    other = next(j for j, x in enumerate(d["groups"]) if x["attends"] is None)
    far = 2 + abs(g["qk"][0]["specific"]) + abs(g["qk"][0]["query_vs_mean_key"])  # from key_at
    cases = [
        (["qk", 0, "pairs", k, side, "qk_head", -1], f"{ref}.qk_head: -1"),
        (["qk", 0, "pairs", k, side, "qk_head", 10**9], f"{ref}.qk_head: 1000000000"),
        (["qk", 0, "pairs", 0, "value", 1e9], f"groups[{i}].qk[0]: pairs + rest"),
        (["qk", 0, "pairs", 0, "value", pairs[0]["value"] - 1 - abs(g["qk"][0]["specific"])],
         f"groups[{i}].qk[0]: pairs + rest"),
        (["attends_token", None], f"groups[{i}].attends_token: None"),
        (["attends_token", "x" if token != "x" else "y"], f"groups[{i}].attends_token: "),
        # each side's total is the specific part plus that side's mean part (fuzz pass 73: a
        # query_at of 1e300 loaded and printed as "query side from (+1e+300 in all)")
        (["qk", 0, "query_at", 1e300], f"groups[{i}].qk[0].query_at: specific + its mean part"),
        (["qk", 0, "key_at", far], f"groups[{i}].qk[0].key_at: specific + its mean part"),
    ]  # fmt: skip
    # a head of a group of the summary, as the writer names it (``node_ref``), has one of the
    # group's QK heads as its side: another (up to its index) is refused
    from circuits.mechanisms import node_ref
    from toy_models.records import to_plain

    heads = [graph.ids.index(m) for x in d["groups"] if x["kind"] == "lorsa" for m in x["members"]]
    head = max(heads, key=lambda j: int(graph.index[j]))
    assert graph.qk_head(head) >= 1  # so it has another QK head below
    d["groups"][i]["qk"][0]["pairs"][k][side] = to_plain(node_ref(graph, head, {}))
    MechanismSummary.from_dict(json.loads(json.dumps(d)))  # as the writer gives it: loads
    holder = next(x for x in d["groups"] if graph.ids[head] in x["members"])
    other_head = min(set(range(int(graph.index[head]) + 1)) - set(holder["qk_heads"]))
    ref = f"groups[{i}].qk[0].pairs[{k}].{side}"
    cases.append((["qk", 0, "pairs", k, side, "qk_head", other_head],
                  f"{ref}.qk_head: {other_head}, not a QK head of its group"))  # fmt: skip
    path = tmp_path / "mechanisms.json"
    for (*keys, last, value), message in cases:
        bad = copy.deepcopy(d)
        at = bad["groups"][i]
        for key in keys:
            at = at[key]
        at[last] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(
            ValueError, match=re.escape(f"{path}: not a mechanism summary ({message}")
        ):
            load_summary(path)
    bad = copy.deepcopy(d)
    bad["groups"][other]["attends_token"] = token  # a key token where no key is read
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=re.escape(f"groups[{other}].attends_token: ")):
        load_summary(path)
    settings = [(name, value, "not a whole number >= 1")
                for name in ("beam", "max_paths", "max_groups")
                for value in (float("nan"), "x", [], {}, 0, 2.0, True)]  # fmt: skip
    settings += [
        ("ratio", value, "not a finite number >= 1")
        for value in (float("nan"), float("inf"), "x", [], {}, 0.5, 0, -3.0, True)
    ]
    settings += [(name, value, "not true or false")
                 for name in ("checks", "constants") for value in (None, "no", 0, [])]  # fmt: skip
    settings += [("grouping", value, "not a string") for value in (None, 1, [], {})]
    # a group's key far outside the prompt is refused as such (it was an IndexError, the key
    # token read before the key was checked: a review)
    for key in (10**6, -1):
        bad = copy.deepcopy(d)
        bad["groups"][i]["attends"] = key
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=re.escape(f"groups[{i}]")):
            load_summary(path)
    # the groups at a side's position tested without the rounds' bound the words print
    bad = copy.deepcopy(d)
    bad["settings"]["qk_sources_at_position"] = True
    del bad["settings"]["qk_sources_most"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="qk_sources_at_position without qk_sources_most"):
        load_summary(path)
    for name, value, message in settings:
        bad = copy.deepcopy(d)
        bad["settings"][name] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"settings.{name}: .*{message}"):
            load_summary(path)
    path.write_text(json.dumps(d))
    assert load_summary(path).to_dict() == d


def test_a_predicting_groups_qk_sources_are_printed_once(replacement, tokens, monkeypatch):
    """Targets that share a predicting group printed its long QK-source line once each (ten
    logits, ten times the same line): later ones point to the first. (Local mode: there the
    fixture's targets share a group with sources.)"""
    import circuits.mechanisms
    from reports.mechanisms import (
        QK_SOURCES_WHAT,
        block_html,
        block_lines,
        no_sources_text,
        qk_sources_block,
        qk_sources_blocks,
    )

    monkeypatch.setattr(circuits.mechanisms, "ATTENTION_LOWERED", 0.0)  # (QK sources here)
    run = run_prompt(replacement, tokens, "local", constants=True)
    graph = attribute(replacement, tokens, max_logits=3, run=run)
    summary = summarize(replacement, graph, run, max_groups=1)
    text = format_summary(summary)
    first: dict[str, str] = {}
    for t in summary.targets:
        first.setdefault(t.predicting_group, t.label)
    shared = [t for t in summary.targets if first[t.predicting_group] != t.label
              and summary.qk_sources(t.predicting_group)]  # fmt: skip
    assert shared  # the fixture's targets share a predicting group with sources
    for key in first:
        if summary.qk_sources(key):
            block = as_printed(block_lines(qk_sources_block(summary, key), "    "))
            assert text.count(block) == 1
    for t in shared:
        assert f"{QK_SOURCES_WHAT}: as under {first[t.predicting_group]} above" in text
    page = mechanisms_html(summary)  # the report's section, the same way
    for key in first:
        if summary.qk_sources(key):
            assert page.count(block_html(qk_sources_block(summary, key))) == 1
    assert page.count(f"{QK_SOURCES_WHAT}: as under ") == len(shared)
    # a group without sources: its short line each time, never a pointer to it
    for t in summary.targets:
        if t.predicting_group and not summary.qk_sources(t.predicting_group):
            none = no_sources_text(summary.group(t.predicting_group), summary)
            assert qk_sources_blocks(summary).get(t.node) == ([none] if none else None)


def test_what_was_said_once_is_pointed_to_after(replacement, tokens, monkeypatch):
    """Where a prompt has several targets the printout repeated whole blocks: the why line of a
    predicting group every target shares, a QK source's score and choice on its own group's
    line after the target's block gave them, a QK head's reason under each head group sharing
    it. Each is given once; later ones point back ("as under ... above"), in the printout, the
    report and the viewer's summary panel alike, and every figure stays in the record."""

    import circuits.mechanisms
    from reports.mechanisms import (
        WHY_THERE,
        _role_text,
        block_lines,
        reason_lines,
        reason_repeats,
        sources_said,
        why_block,
        why_blocks,
    )
    from reports.viewer import mechanisms_data

    monkeypatch.setattr(circuits.mechanisms, "ATTENTION_LOWERED", 0.0)  # (QK sources here)
    run = run_prompt(replacement, tokens, "local", constants=True)
    graph = attribute(replacement, tokens, max_logits=3, run=run)
    summary = summarize(replacement, graph, run, max_groups=1)
    text = format_summary(summary)
    page = mechanisms_html(summary)
    first: dict[str, str] = {}
    for t in summary.targets:
        first.setdefault(t.predicting_group, t.label)
    whys = [t for t in summary.targets if t.predicting_group
            and why_block(summary.group(t.predicting_group), summary)]  # fmt: skip
    later = [t for t in whys if first[t.predicting_group] != t.label]
    assert later  # the fixture's targets share a predicting group with a why line
    for t in whys:
        block = why_block(summary.group(t.predicting_group), summary)
        assert text.count("\n".join(block_lines(block, "    "))) == 1
        if t in later:
            pointer = [f"{WHY_THERE}: as under {first[t.predicting_group]} above"]
            assert why_blocks(summary)[t.node] == pointer
            assert pointer[0] in text and html_escape(pointer[0]) in page
    panel = mechanisms_data(summary, graph)
    assert [x["why"] for x in panel["targets"]] == [why_blocks(summary).get(t.node)
                                                     for t in summary.targets]  # fmt: skip
    # a source's own group line points to the target its score and choice stand under
    said = sources_said(summary)
    sources = [(g, w) for g in summary.groups for w in g.writes_qk if w.group in said]
    assert sources
    for g, w in sources:
        role = _role_text(w, g, summary)
        assert f"(its share and how it was chosen: as under target {said[w.group]} above)" in text
        assert f"({role})" not in text
    # a QK head's reason given under an earlier group: the later one points to it
    g = next(g for g in summary.groups if g.qk)
    twin = dataclasses.replace(g, key="g99", name=g.name + " (twin)", checks=[],
                               attention_checks=[], writes_qk=[])  # fmt: skip
    doubled = copy.deepcopy(summary)
    doubled.groups.append(twin)
    assert reason_repeats(doubled) == {
        ("g99", i): {"reason": g.key}
        | {
            part: g.key
            for part, has in (("roots", r.root_pairs), ("checks", r.token_checks))
            if has
        }
        for i, r in enumerate(g.qk)
    }
    text = format_summary(doubled)
    for r in g.qk:
        whole = reason_lines(r, 3, "       ", doubled)
        assert text.count(as_printed(whole)) == 1  # said once, under g
        pointer = f"       QK {r.qk_head} reads {r.key_token!r}@{r.key} (attention " \
            f"{r.attention:.2f}): as under {g.key} above"  # fmt: skip
        assert pointer in text.splitlines()
        assert html_escape(pointer.strip()) in mechanisms_html(doubled)
    data = mechanisms_data(doubled, graph)["groups"][-1]["qk"]
    assert [x["said"] for x in data] == [reason_repeats(doubled)[("g99", i)]
                                         for i in range(len(g.qk))]  # fmt: skip
    assert data[0]["score"] is not None  # whole in the data: a head's panel shows it alone


def test_a_qk_source_away_from_its_side_says_where_it_sits_before_the_others_tested():
    """A review of ``x: 9+4=13, 6+8=``: "...; 17 other head groups at the side's position
    tested too, at @9, not the key @12: through later heads there" read as if the 17 sat at
    @9; where the source itself sits comes beside its score, before what else was tested."""
    from types import SimpleNamespace

    from circuits.mechanism_file import QKSourceRole
    from reports.mechanisms import _role_text

    w = QKSourceRole(group="g0", qk_head=1, side="key", value=0.518, rank=2, tested=21,
                     raisers=9, at_position=17)  # fmt: skip
    root = SimpleNamespace(name="token '6'@12", value=1.76)
    reason = SimpleNamespace(qk_head=1, query_at=6.21, key_at=-4.11, query_sources={},
                             key_sources={"roots": [root]})  # fmt: skip
    head = SimpleNamespace(qk=[reason], pos=15, attends=12)
    summary = SimpleNamespace(qk_subject=lambda key: head,
                              settings={"qk_sources_every_placed": True})  # fmt: skip
    text = _role_text(w, SimpleNamespace(pos=9), summary)
    where = "at @9, not the key @12: through later heads there"
    tested = "17 other head groups at the side's position tested too"
    assert where in text and tested in text
    assert text.index(where) < text.index("2nd by score of 4") < text.index(tested)
    # at the side's own position nothing is said
    assert "not the key" not in _role_text(w, SimpleNamespace(pos=12), summary)


def test_a_named_qk_head_whose_attention_does_not_fall_says_so():
    """A review: ``Z Y X W V`` with ``--mode sparse --vs-runner-up`` named a query side source
    of "QK 9" whose ablation took QK 9's attention 0.51 -> 0.63 and QK 12's 0.27 -> 0.04 (the
    group's 0.40 -> 0.37): the line says the named head's own does not fall."""
    from circuits.mechanism_file import AttentionCheck
    from reports.mechanisms import _named_head_text

    a = AttentionCheck(group="g3", layer=3, query=6, key=5, qk_heads=[9, 12],
                       weights=[0.5, 0.5], before=[0.51, 0.27], free=[0.66, 0.04],
                       query_side=[0.63, 0.11], key_side=[0.51, 0.27])  # fmt: skip
    text = _named_head_text(a, 9, "query")
    assert text.startswith("QK 9's attention 0.51 -> 0.63 (it does not fall: the fall is at ")
    assert "does not fall" not in _named_head_text(a, 12, "query")


def test_a_named_qk_head_that_does_not_fall_in_a_group_that_does_not_fall_either():
    """The note that a named head's own attention does not fall placed the fall at the
    group's other QK heads even where the group's attention did not fall either (a source
    chosen as the lowest of ablations that all raise it): no fall was anywhere."""
    from circuits.mechanism_file import AttentionCheck
    from reports.mechanisms import _named_head_text

    a = AttentionCheck(group="g3", layer=3, query=6, key=5, qk_heads=[9, 12],
                       weights=[0.5, 0.5], before=[0.51, 0.27], free=[0.66, 0.30],
                       query_side=[0.63, 0.30], key_side=[0.51, 0.27])  # fmt: skip
    assert a.mean_side("query") > a.mean_before
    text = _named_head_text(a, 9, "query")
    assert "it does not fall" in text and "the fall is at" not in text


def test_a_hand_made_group_spanning_layers_counts_each_path_through_it_once(
    graph, replacement, run
):
    """A review: a hand-made group's flow was its members' flows summed, so a path through two
    of its members counted twice (the heads at the last position of ``red blue red blue red``
    read +10.86 where zeroing them predicts -16.30). A group's flow is what zeroing its
    members at once takes away through the linear graph, for every target; a group within one
    stage keeps its members' sum."""
    from circuits.flows import group_flows, many_node_flows
    from circuits.interventions import target_nodes

    last = len(graph.tokens) - 1
    at_last = (graph.pos == last) & (graph.is_kind("lorsa") | graph.is_kind("transcoder"))
    members = at_last.nonzero().squeeze(1).tolist()
    assert len({int(graph.stage[m]) for m in members}) > 2
    before = ((graph.pos == last - 1) & graph.is_kind("transcoder")).nonzero().squeeze(1)
    one_stage = [m for m in before.tolist() if graph.stage[m] == graph.stage[before[0]]][:2]
    assert len(one_stage) == 2
    view = grouped(graph, [members, one_stage], ["spanning", "one stage"])
    summary = summarize(replacement, graph, run, view=view, check=False)
    (record,) = [g for g in summary.groups if g.name.startswith("spanning")]
    predicted = predict(graph, [Intervention(graph.ids[m]) for m in members])
    ts = target_nodes(graph)  # the logits the summary explains
    assert sorted(record.flow) == sorted(graph.ids[t] for t in ts)
    flows = many_node_flows(graph, ts)
    summed_apart = 0.0
    for t in ts:
        exact = -float(predicted[t])
        assert record.flow[graph.ids[t]] == pytest.approx(exact, rel=1e-5, abs=1e-6)
        summed_apart = max(summed_apart, abs(float(flows[t][0][members].sum()) - exact))
    assert summed_apart > 1e-2  # the members' summed flows were not it
    by_group = group_flows(graph, view, flows)
    g = [grp.name for grp in view.groups].index("one stage")  # its members' sum
    for t in ts:
        assert by_group[t][g] == pytest.approx(float(flows[t][0][one_stage].sum()), abs=1e-9)


def test_a_views_networkx_graph_carries_every_field_of_its_groups(graph):
    """A review: ``GroupedGraph.to_networkx`` gave a group's kind, layer, position, key and
    members as ids but not its stage, QK heads, key share, member indices or the view's summed
    value, bias and target weight, where the graph's own ``to_networkx`` gives a node all."""
    last = len(graph.tokens) - 1
    heads = ((graph.pos == last) & graph.is_kind("lorsa")).nonzero().squeeze(1).tolist()
    view = grouped(graph, [heads[:3]], ["mine"])
    g = view.to_networkx()
    k = [grp.name for grp in view.groups].index("mine")
    grp, node = view.groups[k], g.nodes["mine"]
    assert node["member_nodes"] == grp.members == heads[:3]
    assert node["members"] == [graph.ids[i] for i in heads[:3]]
    assert node["stage"] == grp.stage == int(graph.stage[heads[0]])
    assert node["qk_heads"] == grp.qk_heads and node["key_share"] == grp.key_share
    assert node["value"] == pytest.approx(float(graph.value[heads[:3]].double().sum()))
    embedding = int(graph.is_kind("embedding").nonzero()[0])  # no value: None, not NaN
    assert g.nodes[view.groups[view.group_of(embedding)].name]["value"] is None
    assert node["bias"] == pytest.approx(float(graph.bias[heads[:3]].double().sum()))
    logit = int(graph.is_kind("logit").nonzero()[0])
    own = g.nodes[view.groups[view.group_of(logit)].name]
    assert own["value"] == pytest.approx(float(graph.value[logit]))
    assert own["target_weight"] == pytest.approx(float(graph.target_weight[logit]))


def test_a_hand_made_group_of_heads_and_features_is_checked_by_ablation(graph, replacement, run):
    """A review: a hand-made group mixing heads and features (kind "mixed") was listed with no
    ablation check and no word of why: it is checked like any head or feature group, its
    prediction minus its (exact) flow."""
    last = len(graph.tokens) - 1
    heads = (graph.is_kind("lorsa") & (graph.pos == last)).nonzero().squeeze(1).tolist()
    feats = (graph.is_kind("transcoder") & (graph.pos == last)).nonzero().squeeze(1).tolist()
    view = grouped(graph, [heads + feats], ["both"])
    summary = summarize(replacement, graph, run, view=view)
    (mixed,) = [g for g in summary.groups if g.name.startswith("both")]
    assert mixed.kind == "mixed" and mixed.checks
    for c in mixed.checks:
        assert c.predicted == pytest.approx(-mixed.flow[c.target], rel=1e-5, abs=1e-6)
    text = format_summary(summary)  # and it reads, in the printout and the page
    assert f"{mixed.key} {mixed.name}" in text and "ablate" in text
    assert mixed.name in mechanisms_html(summary)


def test_a_hand_made_group_holding_a_logit_is_checked_by_ablation(graph, replacement, run):
    """A notebook review: a hand-made group holding a logit (``group_flows`` takes its value
    away once, below) made ``summarize`` fail on its own ablation check ("is a logit node:
    only sources can be changed", after the clean rerun): ``intervene`` holds an edited logit
    as ``predict`` does. The group's checks leave the logit inside it out (not its own effect)
    and the others' predictions are minus its flows."""
    last = len(graph.tokens) - 1
    heads = (graph.is_kind("lorsa") & (graph.pos == last)).nonzero().squeeze(1).tolist()
    logit = int(graph.is_kind("logit").nonzero()[0])
    view = grouped(graph, [[*heads, logit]], ["with a logit"])
    summary = summarize(replacement, graph, run, view=view)
    (record,) = [g for g in summary.groups if g.name.startswith("with a logit")]
    checked = {c.target for c in record.checks}
    assert checked and graph.ids[logit] not in checked
    for c in record.checks:
        assert c.predicted == pytest.approx(-record.flow[c.target], rel=1e-5, abs=1e-6)


def test_a_hand_made_group_holding_a_target_takes_away_the_targets_value_once(
    replacement, tokens, run
):
    """A review: a group spanning stages that holds a target (a head traced with
    ``--target-node``, or a logit) read the target's value plus its other members' flows,
    every one of which runs through the target (1.41 for a logit of 0.35): the target passed
    its ``h`` down to the members below it. Zeroing the group takes away the target's value
    once, and the other targets' flows stay what ``predict`` says."""
    from circuits.attribution import LogitTarget, NodeTarget
    from circuits.flows import group_flows, many_node_flows
    from circuits.interventions import target_nodes

    full = attribute(replacement, tokens, max_logits=1, run=run)
    heads = [i for i in full.is_kind("lorsa").nonzero().squeeze(1).tolist() if full.layer[i] == 1]
    node = max(heads, key=lambda i: float(full.activation[i]))
    layer, q, index = int(full.layer[node]), int(full.pos[node]), int(full.index[node])
    graph = attribute(replacement, tokens, run=run,
                      targets=[LogitTarget(7), NodeTarget("lorsa", layer, q, index)])  # fmt: skip
    ts = target_nodes(graph)
    flows = many_node_flows(graph, ts)
    units = graph.is_kind("lorsa") | graph.is_kind("transcoder") | graph.is_kind("embedding")
    for t in ts:
        order = np.argsort(-np.abs(flows[t][0])).tolist()
        below = [i for i in order if i != t and units[i] and flows[t][0][i] != 0][:6]
        members = sorted([t, *below])
        assert len({int(graph.stage[m]) for m in members}) > 2
        view = grouped(graph, [members], ["with the target"])
        g = [grp.name for grp in view.groups].index("with the target")
        by_group = group_flows(graph, view, flows)
        predicted = predict(graph, [Intervention(graph.ids[m]) for m in members])
        assert by_group[t][g] == pytest.approx(float(graph.value[t]), rel=1e-6)
        for u in ts:
            assert by_group[u][g] == pytest.approx(-float(predicted[u]), rel=1e-5, abs=1e-6)


def test_a_hand_made_head_group_spanning_layers_carries_its_flow_and_reads_back(
    graph, replacement, run
):
    """A review: a hand-made group of the heads at the last position, over every layer, had
    its exact flow (``group_flows``) but its ``carried`` and ``carried_own`` summed its
    members' flows, so the summary was refused by its own file check (``flow carried =
    0.0543, not 0.0583``). What each key brings is split from the same ``h`` as the flow:
    through the paths that avoid the group's other members."""
    from circuits.mechanism_file import checked_summary

    last = len(graph.tokens) - 1
    members = ((graph.pos == last) & graph.is_kind("lorsa")).nonzero().squeeze(1).tolist()
    assert len({int(graph.layer[m]) for m in members}) > 1
    view = grouped(graph, [members], ["heads"])
    summary = checked_summary(summarize(replacement, graph, run, view=view, check=False))
    (record,) = [g for g in summary.groups if g.name.startswith("heads")]
    predicted = predict(graph, [Intervention(graph.ids[m]) for m in members])
    assert record.kind == "lorsa" and set(record.carried) == set(record.flow)
    for node, flow in record.flow.items():
        exact = -float(predicted[graph.id_to_index[node]])
        assert flow == pytest.approx(exact, rel=1e-5, abs=1e-6)
        carried = sum(x.flow for x in record.carried[node]) + record.carried_own[node]
        assert carried == pytest.approx(flow, rel=1e-6, abs=1e-7)


def test_a_spanning_groups_qk_side_flows_sum_to_what_zeroing_it_takes_from_the_side(
    graph, replacement, run
):
    """The diff review's Left: a hand-made group spanning stages had its QK-side sums (what
    raises a reason's query or key side, ``_side_sources`` and the QK-source candidates)
    summed member by member, so a path through two members counted twice. With the group
    among ``spanning``, its members' side flows are each's through the paths that avoid the
    others: they sum to what zeroing the group at once takes from the side through the linear
    graph (``interventions.predict``), and every node outside it keeps its flow."""
    from circuits.flows import _qk_side_directs, spanning_groups

    checked = 0
    for a, side in reasons_with_sides(graph, replacement, run, n=40):
        if a.layer == 0:
            continue
        below = (graph.stage < 2 * a.layer + 1) & (graph.stage > 0)
        members = (below & (graph.pos == a.query)).nonzero().squeeze(1).tolist()
        if len({int(graph.stage[m]) for m in members}) < 2:
            continue
        view = grouped(graph, [members], ["below"])
        spanning = spanning_groups(graph, view)
        assert [m.tolist() for m in spanning] == [members]
        request = (side, a.qk_head, a.query, a.key)
        ((q0, k0, _),) = many_qk_side_flows(graph, [request])
        ((q, k, _),) = many_qk_side_flows(graph, [request], spanning=spanning)
        delta = predict(graph, [Intervention(graph.ids[m]) for m in members]).double().numpy()
        act = graph.activation.double().numpy()
        per_unit = np.where(act != 0, delta / np.where(act != 0, act, 1), 0.0)
        directs = _qk_side_directs(graph, *request)[:2]
        apart = 0.0
        for flow, plain, direct in ((q, q0, directs[0]), (k, k0, directs[1])):
            taken = -float(direct @ per_unit)  # the side's linear change, negated
            assert flow[members].sum() == pytest.approx(taken, rel=1e-5, abs=1e-6)
            outside = np.ones(graph.n_nodes, dtype=bool)
            outside[members] = False
            assert np.array_equal(flow[outside], plain[outside])
            apart = max(apart, abs(plain[members].sum() - taken))
        checked += apart > 1e-4  # summed apart, they were not it
        if checked == 3:
            break
    assert checked == 3


def test_a_key_sides_weak_source_never_names_a_group_after_the_key():
    """A group written after the key cannot change the key's own vector (causal): with the
    keys' vectors as after its ablation, a later key took the attention (a review: on `Sum:
    52+34= 8` the operand head's key side was said taken 0.97 -> 0.07 by the layer-0 features
    at the query itself, whose ablation left the key's score as it was). It is named as
    acting through a later key, never as the key side's; one at or before the key still is."""
    from circuits.mechanism_file import GroupRecord, QKSourceRole
    from reports.mechanisms import qk_sources_sides

    def head_group(key, pos, attends):
        return GroupRecord(key, f"L2 heads @{pos} -> 'b'@{attends}", "lorsa", 2, pos, attends,
                           "'b'", [0], None, [f"4_1_{pos}"], [], {})  # fmt: skip

    def checked(key, pos, key_side):
        g = GroupRecord(key, f"L0 features @{pos}", "transcoder", 0, pos, None, None, [], None,
                        [f"1_1_{pos}"], [], {})  # fmt: skip
        g.attention_checks = [AttentionCheck("g0", 2, 6, 3, [0], [1.0], [0.9], [0.5], [0.9],
                                             [key_side])]  # fmt: skip
        return g

    predicting = head_group("g0", 6, 3)
    source = head_group("g1", 3, 2)  # at the key: its ablation leaves 0.9 -> 0.8
    source.writes_qk = [QKSourceRole("g0", 0, "key", 1.0)]
    source.attention_checks = [AttentionCheck("g0", 2, 6, 3, [0], [1.0], [0.9], [0.8], [0.9],
                                              [0.8])]  # fmt: skip
    at_query = checked("g2", 6, 0.05)  # after the key: 0.9 -> 0.05 through a later key

    def line(*groups):
        summary = MechanismSummary("p", ["<|bos|>", "a", "b", "c", "d", "e", "f"], "local", "m",
                                   [], [predicting, source, *groups], [], {})  # fmt: skip
        return next(x for x in qk_sources_sides(summary, "g0") if x.startswith("key side"))

    text = line(at_query)
    assert "; of the summary's checked groups, g2" not in text
    assert ("nor any group the summary checks at or before the key; this side is no one "
            "group's doing") in text  # fmt: skip
    assert (
        "of the summary's checked groups after the key, g2 L0 features @6 takes it "
        "0.90 -> 0.05 through the keys from @6 on; not the key's own vector"
    ) in text
    # one at the key that halves it is named as before, the later one left out
    text = line(at_query, checked("g3", 3, 0.3))
    assert (
        "; of the summary's checked groups, g3 L0 features @3 takes it through this side "
        "0.90 -> 0.30"
    ) in text
    assert "g2" not in text
    # nothing halving it: the words as they were
    assert text.count("weak") == 1
    assert "nor any group the summary checks; this side is no one group's doing" in line()


def test_the_predicting_groups_qk_reason_is_said_in_one_line_beside_it():
    """Under the predicting heads, one line says why they attend their key: the largest
    raising term of their first QK reason's own, moved and position lists, where each token
    stands (at the query, moved to the query, the key's own, moved to the key) and what
    making each named token the mean token did to the attention. A reviewer found the
    induction match (the query's token against the token moved to the key) only in the
    group's lines far below, inside a line of 900 characters."""
    from types import SimpleNamespace

    from circuits.mechanism_file import QKReasonRecord, RootPair, SourceShare, TokenCheck
    from reports.mechanisms import why_text

    def token(name, pos):
        return SourceShare(name, "embedding", None, pos, None, None, 0.0)

    positions = SourceShare("position vector (all positions)", "bias", -1, None, None, None, 0)
    r = QKReasonRecord(2, 6, 34, 16, " m", 0.99, 20.8, 8.0, -1.2, -1.5, 15.6, 0, 0, [])
    q = token("token ' seven'@34", 34)
    r.own_pairs = [RootPair(q, token("token ' m'@16", 16), 2.16)]
    r.moved_pairs = [RootPair(q, token("token ' seven'@15", 15), 10.6)]
    r.position_pairs = [RootPair(q, positions, 5.91)]
    r.token_checks = [TokenCheck(34, " seven", 0.0006, 4.0), TokenCheck(16, " m", 0.97, 16.0),
                      TokenCheck(15, " seven", 0.007, 3.3)]  # fmt: skip
    summary = SimpleNamespace(mode="local", tokens=["x"] * 35)
    assert why_text(SimpleNamespace(qk=[r]), summary) == (
        "why it attends there (QK 6's largest score term, of the specific part +15.6): token "
        "' seven'@34 at the query x token ' seven'@15 moved to the key @16 +10.6; made the "
        "mean token, the model rerun: ' seven'@34 0.99 -> 0.0006 (as they say), ' seven'@15 "
        "0.99 -> 0.007 (as they say)"
    )
    # an operand head: the '=' before the query reaches it through heads there
    r.query, r.moved_pairs = 10, []
    r.own_pairs = [RootPair(token("token '='@9", 9), token("token '2'@5", 5), 8.79)]
    r.token_checks = []
    assert why_text(SimpleNamespace(qk=[r]), summary).endswith(
        ": token '='@9 moved to the query @10 x the key's own token '2'@5 +8.79"
    )
    # a layer-0 previous-token head: where the key is, not what it holds
    r.own_pairs = [RootPair(token("token ' then'@5", 5), token("token ' Friday'@4", 4), 0.03)]
    r.position_pairs = [RootPair(positions, positions, 0.652)]
    assert why_text(SimpleNamespace(qk=[r]), summary).endswith(
        ": by position, apart from the other keys: position vectors at the query x position "
        "vectors at the key +0.652"
    )
    r.own_pairs, r.position_pairs = [], [RootPair(positions, positions, -0.3)]
    assert why_text(SimpleNamespace(qk=[r]), summary) == ""  # no raising term
    assert why_text(SimpleNamespace(qk=[]), summary) == ""


def test_the_why_line_says_when_the_key_draws_any_query_more_than_this_ones_match():
    """What sets a key apart from the other keys for this query is the mean query's term at it
    (``mean q x k``) plus the specific part; the why line names a term of the specific part
    alone. Where ``mean q x k`` is the larger, the key draws any query and the line says so, in
    the printout (and so the page) and the figure. A reviewer's sparse "one two three five
    six": QK 12 read 'one'@1 0.58 with the specific part -0.029 and mean q x k +1.94 (every
    query of the prompt gave it 0.56-0.66), and the line named only a token match, +0.703."""
    from types import SimpleNamespace

    from circuits.mechanism_file import QKReasonRecord, RootPair, SourceShare
    from reports.mechanism_figure import _why_lines
    from reports.mechanisms import why_text

    def token(name, pos):
        return SourceShare(name, "embedding", None, pos, None, None, 0.0)

    r = QKReasonRecord(1, 12, 5, 1, "one", 0.58, -1.94, -3.51, -0.345, 1.94, -0.029, 0, 0, [])
    r.own_pairs = [RootPair(token("token ' six'@5", 5), token("token 'one'@1", 1), 0.703)]
    summary = SimpleNamespace(mode="sparse", tokens=["x"] * 6)
    group = SimpleNamespace(qk=[r])
    assert why_text(group, summary) == (
        "why it attends there (QK 12's largest score term, of the specific part -0.029): token "
        "' six'@5 at the query x the key's own token 'one'@1 +0.703; the key stands out more "
        "for any query: mean q x k +1.94, the specific part -0.029"
    )
    figure = " ".join(_why_lines(group, summary))
    assert "the key stands out more for any query: mean q x k" in figure
    # the specific part the larger: this query's match sets the key apart, nothing added
    r.specific = 2.5
    assert "any query" not in why_text(group, summary)
    assert "any query" not in " ".join(_why_lines(group, summary))
    r.specific, r.mean_query_vs_key = -0.2, -0.1  # neither raises the key: nothing to say
    assert "any query" not in why_text(group, summary)
    # one query after BOS: the mean query is the query, the specific part 0 by construction
    r.query, r.specific, r.mean_query_vs_key = 1, 0.0, 1.15
    one = SimpleNamespace(mode="local", tokens=["<|bos|>", "x"])
    assert "any query" in why_text(group, summary)
    assert "any query" not in why_text(group, one)
    assert "any query" not in " ".join(_why_lines(group, one))


def test_the_legend_says_the_specific_part_sets_a_key_apart_for_this_query_alone():
    """The legend defined the specific part as "what sets this key apart from the others",
    where ``mean q x k`` sets a key apart too, for any query (a reviewer's 'one'@1 drew every
    query of its prompt): the definition says which, and points to the why line's clause."""
    from reports.mechanisms import QK_LEGEND

    specific = next(x for x in QK_LEGEND if x.startswith("specific:"))
    assert "for this query" in specific
    assert "mean q x k sets a key apart for any query" in specific


def test_the_legend_defines_every_token_check_verdict_and_a_flagged_ratio():
    """The legend defined two of the six verdicts a token check prints ('as they say', 'in
    part'); a reviewer's new prompts printed the other four undefined ("' '@20 0.83 (terms
    +0.478: the attention as they say, this key's specific part not (+1.32 -> +1.41): '='@26
    gained, 0.09 -> 0.16)", "'4'@22 0.79 (terms +0.385: the way they say, but further than
    their size alone moves it (0.87))", "little change", "the other way"), and "FLAGGED (free
    0.051x, ...)" with "0.051x" undefined. Each verdict ``token_verdict`` gives opens with
    words the legend's clause defines."""
    from types import SimpleNamespace

    from circuits.mechanism_file import QKReasonRecord, TokenCheck
    from reports.mechanisms import QK_LEGEND, checks_legend_block, token_verdict

    clause = next(x for x in QK_LEGEND if x.startswith("each named token"))
    r = QKReasonRecord(1, 2, 9, 4, " a", 0.6, 3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, [])
    tokens = [f"t{i}" for i in range(10)]
    cases = {  # (attention after, specific after, the terms' sum) -> the verdict's opening
        (0.58, 1.0, 3.0): "little change",
        (0.9, 1.0, 3.0): "the other way",
        (0.3, 2.5, 3.0): "this key's specific part not",
        (0.1, 1.0, 0.05): "further than their size alone moves it",
        (0.05, 0.5, 3.0): "as they say",
        (0.5, 0.5, 30.0): "in part",
    }
    for (attention, specific, total), words in cases.items():
        verdict = token_verdict(r, TokenCheck(3, " b", attention, specific, rival=5,
                                              rival_attention=0.5, rival_before=0.1),
                                total, tokens)  # fmt: skip
        assert words in verdict, (words, verdict)
        assert f"'{words}" in clause or f"{words}'" in clause, words
    summary = SimpleNamespace(groups=[SimpleNamespace(checks=[object()])], targets=[], mode="local")
    flagged = next(x for x in checks_legend_block(summary) if x.startswith("FLAGGED"))
    assert "'free 0.05x': the change measured free is 0.05 times the predicted one" in flagged


def test_the_legend_defines_a_unit_of_the_mean_not_at_this_position():
    """A layer-0 head's unit pairs print ``minus the mean's token '0' (not at this position)
    x token '0'@14`` (a reviewer's ``10, 20, 30, 40,``), which the legend did not define: its
    units clause names the words ``ref_text`` gives such a unit and says what it is."""
    from circuits.mechanism_file import NodeRef
    from reports.mechanisms import QK_LEGEND, ref_text

    clause = next(x for x in QK_LEGEND if x.startswith("specific by units"))
    words = ref_text(NodeRef(None, "embedding", present=False, token="0"))
    assert words == "minus the mean's token '0' (not at this position)"
    assert f"'{words}'" in clause
    assert "does not hold" in clause


def test_the_why_lines_token_check_says_when_the_tokens_terms_sum_the_other_way():
    """A why line's token check is judged against every printed term naming the token (the
    group's lines print that sum); where the sum has the other sign from the term the line
    names, the line says so, or "as they say" reads as bearing the named term out. A
    reviewer's "Sara gave Hugo a lamp. Hugo gave Sara a": "+0.0709 ... ' a'@11 0.18 -> 0.23
    (as they say)", the attention rising without the token as its terms of -0.318 say."""
    from types import SimpleNamespace

    from circuits.mechanism_file import QKReasonRecord, RootPair, SourceShare, TokenCheck
    from reports.mechanism_figure import _why_lines
    from reports.mechanisms import why_text

    def token(name, pos):
        return SourceShare(name, "embedding", None, pos, None, None, 0.0)

    error = SourceShare("L0 mlp error @9", "error", 0, 9, None, None, 0.0)
    a11, a5 = token("token ' a'@11", 11), token("token ' a'@5", 5)
    r = QKReasonRecord(1, 2, 11, 9, " gave", 0.18, -2.88, -3.99, 0.198, -1.2, -0.136, 0, 0, [])
    r.own_pairs = [RootPair(a11, error, -0.209)]
    r.moved_pairs = [RootPair(a11, a5, 0.0709)]
    r.token_checks = [TokenCheck(11, " a", 0.23, -0.05), TokenCheck(5, " a", 0.17, -0.14)]
    summary = SimpleNamespace(mode="local", tokens=["x"] * 12)
    group = SimpleNamespace(qk=[r])
    text = why_text(group, summary)
    assert ": token ' a'@11 at the query x token ' a'@5 moved to the key @9 +0.0709" in text
    assert "' a'@11 0.18 -> 0.23 (its terms -0.138 in all, the other way from this one: " in text
    assert "' a'@5 0.18 -> 0.17 (little change)" in text  # its one term, this one's sign
    assert "the other way from this one" in " ".join(_why_lines(group, summary))
    r.own_pairs = []  # the token's terms now this one alone: nothing added
    assert "' a'@11 0.18 -> 0.23 (the other way)" in why_text(group, summary)


def test_the_why_line_stands_under_the_predicting_heads_in_every_view(graph, replacement, run):
    """The printout, the report and the viewer's data carry the predicting group's one-line
    QK reason under its name (after its flagged check, which stays right under it), before
    its QK sources."""
    from reports.mechanisms import PREDICTING, block_html, block_lines, why_block, why_text
    from reports.viewer import mechanisms_data

    summary = summarize(replacement, graph, run, max_groups=4)
    t = summary.targets[0]
    why = why_text(summary.group(t.predicting_group), summary)
    assert why.startswith("why it attends there (QK ")
    block = why_block(summary.group(t.predicting_group), summary)  # the term, then its checks
    # the heading, its term a line under it (one line of both ran to 270 characters: a
    # review), the one-line form the same words
    assert block[0].startswith("why it attends there (QK ") and block[0].endswith("):")
    assert why.startswith(f"{block[0]} {block[1]}; " if len(block) > 2 else block[0])
    assert all(x in why for x in block[2:] if isinstance(x, str))
    lines = format_summary(summary).splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith(f"  {PREDICTING}: "))
    # after its own flagged check and the stronger groups, which stay right under it (and
    # the lines a long one goes on in, further in)
    start, at = at, next(i for i in range(at, len(lines)) if lines[i].startswith("    why it"))
    assert all(x.startswith((" " * 6, "    its ablation check is", "    head groups there whose"))
               for x in lines[start + 1 : at])  # fmt: skip
    printed = as_printed(block_lines(block, "    ")).splitlines()
    assert lines[at : at + len(printed)] == printed
    after = lines[at + len(printed)]
    assert after.startswith("    what makes it attend there") or "its QK score" in after
    assert block_html(block, cls="why") in mechanisms_html(summary)
    assert mechanisms_data(summary, graph)["targets"][0]["why"] == block


def test_the_why_line_names_no_largest_score_term_where_constants_or_errors_raise_more(
    graph, replacement, run
):
    """The why line's term is the largest of the token and position pairs; the constants' and
    errors' terms are only summed (``root_parts``). Where such a sum raises the score more,
    the line does not call its term the largest score term and gives that sum (a reviewer's
    --no-constants trace of ``The lamp of Quorrindash glowed; travelers praised Quorrin``:
    "QK 2's largest score term" +0.292 of a specific part +2.75, its constants +2.5, the
    position vectors folded into them)."""
    from reports.mechanisms import why_term, why_text

    summary = summarize(replacement, graph, run, max_groups=4)
    g = summary.group(summary.targets[0].predicting_group)
    why = why_text(g, summary)
    assert "largest score term" in why and "terms bring more" not in why
    r = g.qk[0]
    term = max(p.value for pairs in (r.own_pairs, r.moved_pairs, r.position_pairs)
               for p in pairs[:1])  # fmt: skip
    parts = dict(r.root_parts)
    parts["constants"] = term + 2.0
    g = dataclasses.replace(g, qk=[dataclasses.replace(r, root_parts=parts), *g.qk[1:]])
    why = why_text(g, summary)
    # (the local fixture's term is an error x token pair: said so, not a token or position term)
    pair = why_term(g).pair
    error = "error" in (pair.query.kind, pair.key.kind)
    said = "largest token, error or position term" if error else "largest token or position term"
    assert "largest score term" not in why and said in why
    assert f"; the constant terms bring more, {term + 2.0:+.3g}" in why
    assert "--no-constants" not in why  # constants on: the biases alone
    summary.settings["constants"] = False
    assert "(the position vectors among them: --no-constants folds them in)" in why_text(g, summary)


def test_the_legend_is_wrapped_outside_brackets_by_the_printouts_one_rule(graph, replacement, run):
    """The printout's legend was wrapped by textwrap, which broke inside parentheses
    ("(named '-> key'; '(brings 12%)' where that key" / "brings under half ...)") where the
    rest of the printout (``fitted``) breaks outside brackets where it can. One rule now: no
    legend line ends inside a bracketed part (none here is longer than a line), every line is
    within the width, and the words are the blocks' own, in order."""
    from reports.mechanisms import (
        LEGEND_WIDTH,
        _bracket_depths,
        block_lines,
        legend_blocks,
        legend_lines,
    )

    summary = summarize(replacement, graph, run, max_groups=4)
    assert {"qk", "checks"} <= set(legend_blocks(summary))
    legend = legend_lines(summary)
    assert legend[0] == "legend:" and max(map(len, legend)) <= LEGEND_WIDTH
    depth = 0
    for line in legend[1:]:
        depth = _bracket_depths(line, depth)[-1]
        assert depth == 0, line
    words = [x for b in legend_blocks(summary).values() for x in block_lines(b, "  ")]
    assert " ".join(legend[1:]).split() == " ".join(words).split()


def test_the_why_lines_term_says_error_where_its_pair_holds_one():
    """A reviewer's printout: "largest token or position term" headed an error x token term
    (``own_pairs`` and ``moved_pairs`` are between tokens and errors). The heading names what
    the pair is: with an error on a side, the largest token, error or position term."""
    from circuits.mechanism_file import QKReasonRecord, RootPair, SourceShare
    from reports.mechanisms import WhyTerm

    def side(name, kind, pos):
        return SourceShare(name, kind, 0, pos, None, None, 0.0)

    r = QKReasonRecord(1, 0, 5, 2, "x", 0.5, 1.0, 0, 0, 0, 1.0, 0, 0, [])
    token = side("token 'a'@2", "embedding", 2)
    error = side("L0 attn error @5", "error", 5)
    larger = [("constants", 3.0)]
    plain = side("token 'b'@5", "embedding", 5)
    for query, term in ((error, "largest token, error or position term"),
                        (plain, "largest token or position term")):  # fmt: skip
        why = WhyTerm(r, "own", RootPair(query, token, 1.0), "q", "k", larger)
        assert why.term == term
        assert dataclasses.replace(why, larger=[]).term == "largest score term"


def test_a_layer_0_heads_query_side_names_the_one_position_vector_it_reads(graph, replacement, run):
    """A reviewer's printout: a layer-0 head's "query side from: position vector (all
    positions) +2.14", where only the query's own position vector reaches its query side. A
    constant group of every position whose flow into a side comes from one position's node
    is named as that node, at that position; the record's value is the group's sum as it was."""
    from circuits.mechanisms import _side_sources
    from circuits.nodes import block_of

    summary = summarize(replacement, graph, run, max_groups=4)
    reasons = [r for x in [*summary.targets, *summary.groups] for r in x.qk]
    seen = 0
    for r in reasons:
        for where, sources in ((r.query, r.query_sources), (r.key, r.key_sources)):
            for x in sources.get("roots", []):
                if x.is_position and r.layer == 0:
                    seen += 1
                    assert (x.name, x.pos) == (f"position vector @{where}", where)
    assert seen
    # a group whose flow comes from two positions keeps its group name
    view = auto_groups(graph)
    g = next(g for g, grp in enumerate(view.groups) if grp.kind == "bias"
             and grp.layer == block_of(0) and grp.pos is None)  # fmt: skip
    flow = np.zeros(graph.n_nodes)
    flow[view.groups[g].members[:2]] = [1.0, 2.0]
    (x,) = [x for x in _side_sources(view, flow)["roots"] if x.is_position]
    assert (x.name, x.pos, x.value) == (view.groups[g].name, None, 3.0)
    flow[view.groups[g].members[0]] = 0.0
    (x,) = [x for x in _side_sources(view, flow)["roots"] if x.is_position]
    pos = int(graph.pos[view.groups[g].members[1]])
    assert (x.name, x.pos, x.value) == (f"position vector @{pos}", pos, 2.0)


def html_escape(text: str) -> str:
    from reports.html import escape

    return escape(text)


def test_a_group_without_a_concept_says_its_members_and_what_its_flow_reads(
    graph, replacement, run, tmp_path
):
    """Feature groups on the top paths of 20 prompts of the shipped model were 81 of 91
    titled by their place alone (``L0 29 features @8``): a place's features whose labels fall
    below the grouping F1 form one group, whatever their members carry. The summary gives such
    a group its members' labels by share of its |flow| (each member's own flow; a label below
    ``MEMBER_MIN_F1`` counts as none), titles it by one when the members carrying it bring
    most of its flow, and else by what its flow reads (by the position of the tokens it comes
    from, exactly: its part of each embedding's flow) and promotes, marked as no concept."""
    from circuits.flows import EdgeSweep
    from circuits.mechanism_file import MemberConcept
    from circuits.mechanisms import MEMBER_MIN_F1
    from circuits.nodes import unit_id
    from reports.mechanisms import group_title, member_concepts_text

    t = int(graph.is_kind("logit").nonzero()[0])
    flow, _ = node_flows(graph, t)
    feats = graph.is_kind("transcoder").nonzero().squeeze(1).tolist()
    places: dict = {}
    for i in feats:
        places.setdefault((int(graph.layer[i]), int(graph.pos[i])), []).append(i)
    members = max(places.values(), key=lambda m: (len(m), float(np.abs(flow[m]).sum())))
    assert len(members) >= 3
    by_flow = sorted(members, key=lambda i: -abs(flow[i]))
    x_members, y_members = by_flow[:1], by_flow[1:3]  # x: the largest; y: two below the F1

    def uid(i):
        return unit_id(Kind.TRANSCODER, int(graph.stage[i]), int(graph.index[i]))

    concepts = {uid(x_members[0]): ("x", 0.4)} | {uid(i): ("y", MEMBER_MIN_F1 / 2)
                                                   for i in y_members}  # fmt: skip
    summary = summarize(replacement, graph, run, concepts=concepts, check=False,
                        max_groups=10_000)  # fmt: skip
    rec = next(g for g in summary.groups if set(g.members) == {graph.ids[i] for i in members})
    total = float(np.abs(flow[members]).sum())
    share = abs(flow[x_members[0]]) / total
    assert rec.concept is None
    assert rec.member_concepts == [MemberConcept("x", pytest.approx(share), 1, 0.4, 0.4)]
    assert rec.no_concept_share == pytest.approx(1 - share)  # y's F1 is below the floor
    # what its flow reads: each embedding's flow less its flow along the paths avoiding the
    # group (a sweep that stops at the members), by position; BOS is a constant
    stop = np.zeros(graph.n_nodes, dtype=bool)
    stop[members] = True
    n = graph.n_nodes
    h, around = np.zeros((n, 1)), np.zeros((n, 1))
    h[t], around[t] = 1.0, float(graph.value[t])
    EdgeSweep(graph, run).sweep(np.zeros((n, 1)), h, around, int(graph.stage[t]), stop=stop)
    through = flow - around[:, 0]
    emb = [i for i in graph.is_kind("embedding").nonzero().squeeze(1).tolist()
           if int(graph.pos[i]) != 0]  # fmt: skip
    by_pos = {int(graph.pos[i]): through[i] for i in emb}
    assert rec.reads, "a feature group's flow reads tokens"
    for x in rec.reads:
        assert x.flow == pytest.approx(by_pos[x.pos], rel=1e-6, abs=1e-9)
        assert x.token == graph.token_strings[x.pos]
    assert [abs(x.flow) for x in rec.reads] == sorted((abs(x.flow) for x in rec.reads),
                                                      reverse=True)  # fmt: skip
    assert abs(rec.reads[0].flow) == pytest.approx(max(abs(v) for v in by_pos.values()))
    # titled by its members' label only where they bring most of its flow
    # each with its signed part: the largest may run against the group's flow
    reads = ", ".join(f"{x.token!r}@{x.pos} {x.flow:+.3g}" for x in rec.reads[:2])
    promotes = ", ".join(map(repr, rec.promotes[:2]))
    if share >= 0.5:
        want = f"{rec.name} [members: x, {math.floor(share * 100 + 1e-6)}% of flow, F1 0.40]"
    else:
        want = f"{rec.name} {{no concept: reads {reads}, promotes {promotes}}}"
    assert group_title(rec) == want
    low = dataclasses.replace(rec, member_concepts=[dataclasses.replace(
        rec.member_concepts[0], share=0.49)], no_concept_share=0.51)  # fmt: skip
    assert group_title(low) == f"{rec.name} {{no concept: reads {reads}, promotes {promotes}}}"
    high = dataclasses.replace(rec, member_concepts=[dataclasses.replace(
        rec.member_concepts[0], share=0.5)], no_concept_share=0.5)  # fmt: skip
    assert group_title(high) == f"{rec.name} [members: x, 50% of flow, F1 0.40]"
    text = format_summary(summary)
    lines = text.splitlines()  # a block: a heading, a line per concept, then the share of none
    at = lines.index("       members' concepts by share of its |flow|:")
    assert lines[at + 1] == f"         x {math.floor(share * 100 + 1e-6)}% (1 member, F1 0.40)"
    assert lines[at + 2].startswith("         none (or F1 below 0.3) ")
    assert f"members' concepts by share of its |flow|: x {math.floor(share * 100 + 1e-6)}% " \
        "(1 member, F1 0.40); none (or F1 below 0.3)" in member_concepts_text(rec, 0.3)  # fmt: skip
    assert f"{rec.key} {group_title(rec, False)}: flow" in text
    # the file keeps them, and refuses a label below the floor or on a group with a concept
    save_summary(summary, tmp_path / "m.json")
    back = load_summary(tmp_path / "m.json")
    assert next(g for g in back.groups if g.key == rec.key) == rec
    data = json.loads(json.dumps(summary.to_dict()))
    k = next(j for j, g in enumerate(summary.groups) if g.key == rec.key)
    bad = copy.deepcopy(data)
    bad["groups"][k]["member_concepts"][0]["f1_low"] = MEMBER_MIN_F1 / 2
    with pytest.raises(ValueError, match="member_concepts"):
        MechanismSummary.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["groups"][k]["concept"] = "x"
    with pytest.raises(ValueError, match="member_concepts"):
        MechanismSummary.from_dict(bad)


def test_a_qk_reasons_moved_tokens_name_the_head_groups_at_the_key_that_moved_them(
    graph, replacement, run, tmp_path
):
    """Each moved token of a first QK reason (``moved_pairs``) names the head groups at the
    key that brought its position there (``moved_by``): a reviewer's induction figure drew
    the heads at the key reading the key's own token as its key side's source, never the
    previous-token heads moving ' seven'@15 to @16 that its why line's term is about. Each
    number is exact: what the heads bring from that position to the key side, the side's
    flow split by their z-patterns (here summed from the dense edges)."""
    from circuits.flows import qk_side_flows
    from reports.mechanisms import moved_by_text, why_term

    summary = summarize(replacement, graph, run, max_groups=6, check=False)
    view = auto_groups(graph, {})
    keys = {g.name: g.key for g in summary.groups}
    edges = graph.edges.toarray().astype(np.float64)
    act = graph.activation.double().numpy()
    pos, kinds, layer = graph.pos.numpy(), graph.kind.numpy(), graph.layer.numpy()
    reasons = [r for x in (*summary.groups, *summary.targets) for r in x.qk[:1] if r.moved_pairs]
    assert reasons
    seen = 0
    for r in reasons:
        named = list(dict.fromkeys(p.key.pos for p in r.moved_pairs if p.key.kind == "embedding"))
        assert [x.pos for x in r.moved_by] == named
        with torch.no_grad():
            side = QKSides(run, replacement, r.layer)
            _, k_flow, _ = qk_side_flows(graph, side, r.qk_head, r.query, r.key)
        h = np.where(act != 0, k_flow / np.where(act != 0, act, 1.0), 0.0)
        heads = np.flatnonzero((kinds == Kind.LORSA) & (pos == r.key) & (layer < r.layer))
        for x in r.moved_by:
            assert x.token == graph.token_strings[x.pos]
            brought = {m: h[m] * edges[m, pos == x.pos].sum() for m in heads}
            assert x.total == pytest.approx(sum(brought.values()), rel=1e-9, abs=1e-12)
            per_group = {}
            for m, v in brought.items():
                per_group[int(view.of_node[m])] = per_group.get(int(view.of_node[m]), 0.0) + v
            best = sorted((v for v in per_group.values() if v > 0), reverse=True)[:2]
            assert [m.group.value for m in x.movers] == pytest.approx(best, rel=1e-9)
            for m in x.movers:
                assert (m.group.kind, m.group.pos) == ("lorsa", r.key) and m.group.layer < r.layer
                assert m.key == keys.get(m.group.name)
                seen += 1
    assert seen
    # the why line says it where its term is a moved one
    for g in summary.groups:
        why = why_term(g)
        if why is not None and why.kind == "moved" and why.reason.moved_by:
            (moved,) = [x for x in why.reason.moved_by if x.pos == why.pair.key.pos]
            text = moved_by_text(why)
            assert text.startswith(
                f"{moved.token!r}@{moved.pos} moved to the key @{why.reason.key} by "
            )
            for m in moved.movers:
                assert f"{m.group.name} ({m.group.value:+.3g} of the key side)" in text
    # written and read back whole; a forged one refused in a line
    path = tmp_path / "m.json"
    save_summary(summary, path)
    assert load_summary(path) == summary
    bad = json.loads(path.read_text())
    holder = next(x for x in bad["groups"] + bad["targets"] if x["qk"] and x["qk"][0]["moved_by"])
    holder["qk"][0]["moved_by"][0]["pos"] = holder["qk"][0]["key"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="moved_by: each a position before the key"):
        load_summary(path)


def test_the_drawn_graph_keeps_a_head_targets_qk_sources(replacement, tokens, run, monkeypatch):
    """A head target's own QK sources (``--target-node``), named under it in the printout,
    are kept by the summary step as a predicting group's are (a review: a head target's
    query-side source, L0 13 heads, was printed with none of its members on the page)."""
    import circuits.mechanisms
    from circuits.attribution import LogitTarget, NodeTarget
    from circuits.prune import influence_scores
    from circuits.trace import summary_groups_step

    monkeypatch.setattr(circuits.mechanisms, "ATTENTION_LOWERED", 0.0)  # random heads move little
    full = attribute(replacement, tokens, max_logits=1, run=run)
    heads = [i for i in full.is_kind("lorsa").nonzero().squeeze(1).tolist()
             if full.layer[i] == 1 and full.read_key(i) not in (None, full.pos[i])]  # fmt: skip
    tried = 0
    for node in sorted(heads, key=lambda i: -float(full.activation[i]))[:3]:
        layer, q, index = int(full.layer[node]), int(full.pos[node]), int(full.index[node])
        traced = [LogitTarget(7), NodeTarget("lorsa", layer, q, index)]
        graph = attribute(replacement, tokens, run=run, targets=traced)
        scored = influence_scores(graph)
        pruned = prune_graph(graph, node_threshold=0.1, edge_threshold=0.5, scored=scored)
        summary = summarize(replacement, graph, run, pruned=pruned, max_groups=1)
        head = summary.targets[-1]
        wanted = {m for g, _ in summary.qk_sources(head.node) for m in g.members}
        if not wanted - set(pruned.ids):
            continue  # pruning kept them all: nothing to test on this head
        tried += 1
        kept = summary_groups_step(replacement, pruned, run, graph, summary, scored, None, False)
        assert wanted <= set(kept.ids)
    assert tried  # some head target's sources lost members to pruning
