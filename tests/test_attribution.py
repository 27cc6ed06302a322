"""The attribution graph against independent oracles on a small random replacement model:
closure (edges + bias = pre-activation), autograd Jacobians, the doubling intervention, QK
terms against the Lorsa's own scores, and pruning against dense linear algebra."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import targets

from circuits.attribution import (
    LogitDiffTarget,
    LogitTarget,
    NodeTarget,
    attribute,
    closure_error,
    find_node,
    run_prompt,
)
from circuits.graph import QK_BIAS, Graph
from circuits.groups import SPREAD_SHARE, group
from circuits.interventions import (
    Intervention,
    direct_pre_activations,
    first_order,
    intervene,
    predict,
    side_attention,
)
from circuits.neuronpedia import to_json
from circuits.prune import (
    Normalized,
    find_threshold,
    graph_scores,
    influence,
    influence_scores,
    prune_graph,
    row_block,
)
from circuits.qk import QKSides, qk_attribution
from reports.labels import node_labels

MODES = ("local", "sparse")


@pytest.fixture(params=MODES)
def graph(request, replacement, tokens):
    return attribute(replacement, tokens, mode=request.param, max_logits=3)


def test_edges_plus_bias_close_every_target(graph):
    rows = graph.edges.toarray()
    for t in targets(graph).tolist():
        assert rows[t].sum() + float(graph.bias[t]) == pytest.approx(
            float(graph.value[t]), abs=1e-4
        )
    errors = closure_error(graph)
    assert errors["max_abs"] < 1e-4
    assert graph.settings["closure_error"]["max_abs"] < 1e-4


def test_values_are_the_models_own_pre_activations(graph, replacement, tokens):
    """Checked on the fused (un-hooked) forward pass, not the cache attribution used."""
    mode = graph.mode
    logits, cache = replacement.run_with_cache(
        tokens[None], mode=mode, names_filter=lambda n: n.endswith(("hook_z", "hook_acts"))
    )
    for t in targets(graph).tolist():
        kind, layer = graph.kinds[t], int(graph.layer[t])
        pos, index = int(graph.pos[t]), int(graph.index[t])
        if kind == "lorsa":
            expected = cache[f"blocks.{layer}.lorsa.hook_z"][0, pos, index]
        elif kind == "transcoder":
            expected = cache[f"blocks.{layer}.transcoder.hook_acts"][0, pos, index]
        else:
            expected = logits[0, -1, index] - logits[0, -1].mean()
        assert float(graph.value[t]) == pytest.approx(float(expected.detach()), abs=1e-4)
        assert expected != 0  # every head and feature node is active


def test_edges_equal_autograd_jacobians(graph, replacement):
    """Each row is d(target) / d(source multiplier), from backward passes through the frozen
    replacement model run with hooks (not through the closed form)."""
    run = run_prompt(replacement, torch.tensor(graph.tokens), graph.mode)
    n_src = len(run.kind)
    rows = targets(graph)
    multipliers = torch.ones(len(rows), n_src, requires_grad=True)
    out = direct_pre_activations(replacement, graph, multipliers, run=run)
    (grad,) = torch.autograd.grad(out[torch.arange(len(rows)), rows].sum(), multipliers)
    dense = torch.from_numpy(graph.edges.toarray())
    torch.testing.assert_close(grad, dense[rows, :n_src], atol=1e-5, rtol=1e-4)
    assert dense[:, n_src:].abs().sum() == 0  # nothing reads a logit


def test_doubling_a_source_moves_each_target_by_its_edge(graph, replacement):
    run = run_prompt(replacement, torch.tensor(graph.tokens), graph.mode)
    n_src = len(run.kind)
    multipliers = torch.ones(n_src, n_src) + torch.eye(n_src)
    with torch.no_grad():
        clean = direct_pre_activations(replacement, graph, torch.ones(1, n_src), run=run)
        doubled = direct_pre_activations(replacement, graph, multipliers, run=run)
    t = targets(graph)
    torch.testing.assert_close(clean[0, t], graph.value[t], atol=1e-5, rtol=1e-5)
    moved = (doubled - clean)[:, t]  # source x target
    edges = torch.from_numpy(graph.edges.toarray())[t][:, :n_src].T
    torch.testing.assert_close(moved, edges, atol=1e-4, rtol=1e-4)


def test_edges_only_run_upward_and_within_reach(graph):
    coo = graph.edges.tocoo()
    stage, pos, kinds = graph.stage.numpy(), graph.pos.numpy(), graph.kinds
    assert (stage[coo.col] < stage[coo.row]).all()
    assert (pos[coo.col] <= pos[coo.row]).all()
    same = np.array([kinds[r] != "lorsa" for r in coo.row])
    assert (pos[coo.col][same] == pos[coo.row][same]).all()  # only attention moves across
    assert not any(kinds[c] == "logit" for c in coo.col)


def test_error_nodes_exist_only_in_local_mode(graph):
    n_err = int(graph.is_kind("error").sum())
    assert n_err == (2 * 2 * len(graph.tokens) if graph.mode == "local" else 0)


def test_qk_records_give_the_fields_of_every_id_they_name(replacement, tokens, tmp_path):
    """A QK record names sides by id and gives their fields (``QKAttribution.named``), which
    make those ids: the fields of the graph's own node where it has one (position vectors
    included), a unit's fields (no position) for a unit id. They survive pruning, which drops
    most of the nodes named, and a save and load; no code reads an id back."""
    from circuits.nodes import Kind, unit_id
    from circuits.qk import qk_sources

    graph = attribute(replacement, tokens, max_logits=2, constants=True)
    heads = graph.is_kind("lorsa").nonzero().squeeze(1)
    records = qk_attribution(replacement, graph, heads, contrast=True, reason=True)
    qk_sources(replacement, graph, records)
    units = {}
    for i in range(graph.n_nodes):
        kind, stage, index = Kind(int(graph.kind[i])), int(graph.stage[i]), int(graph.index[i])
        units[unit_id(kind, stage, index)] = (kind, stage, index)
    sides = 0
    for a in records:
        assert set(a.names()) == set(a.named) and a.named
        for name, side in a.named.items():
            assert side.id == name
            if side.pos is None:
                assert units[name] == side[:3] or side.kind == Kind.BIAS
            else:
                i = graph.id_to_index[name]
                fields = (
                    int(graph.kind[i]),
                    int(graph.stage[i]),
                    int(graph.index[i]),
                    int(graph.pos[i]),
                )
                assert (int(side.kind), side.stage, side.index, side.pos) == fields
            sides += 1
    assert sides > 50 and any(s.pos is None for a in records for s in a.named.values())
    assert any(m for a in records for x in a.sources for m in x.members)
    # a graph of the heads and the logits alone: QK on its heads, sources through the full one
    pruned = graph.subgraph(
        (graph.is_kind("lorsa") | graph.is_kind("logit")).nonzero()[:, 0].tolist()
    )
    qk_sources(replacement, graph, qk_attribution(replacement, pruned, contrast=True, reason=True))
    assert pruned.qk and any(n not in pruned.id_to_index for a in pruned.qk for n in a.named)
    pruned.save(tmp_path / "g.safetensors")
    loaded = Graph.load(tmp_path / "g.safetensors")
    assert [a.named for a in loaded.qk] == [a.named for a in pruned.qk]


def test_a_sparse_graphs_logits_give_the_models_probability_too(graph, replacement, tmp_path):
    """A sparse graph's probabilities are the replacement's; each logit target gives the
    model's beside it (a reviewer found it on stderr alone), and keeps it through a file."""
    probs = replacement.model(torch.tensor(graph.tokens)[None])[0, -1].softmax(-1)
    for r in graph.logit_targets:
        if graph.mode == "local":
            assert r.model_probability is None
        else:
            assert r.model_probability == pytest.approx(float(probs[r.token]), abs=1e-6)
            assert r.probability != pytest.approx(r.model_probability, abs=1e-6)
    graph.save(tmp_path / "g.safetensors")
    assert Graph.load(tmp_path / "g.safetensors").logit_targets == graph.logit_targets
    # the model's own top token (a review: a sparse trace explained a near-tie of two tokens
    # where the model put a third first, and only stderr said it)
    if graph.mode == "local":
        assert graph.model_top is None
    else:
        top = int(probs.argmax())
        assert graph.model_top == (top, pytest.approx(float(probs[top]), abs=1e-6))
        assert Graph.load(tmp_path / "g.safetensors").model_top == graph.model_top
        # a forged one is refused (a review: a token of 10**9, and a "top" less likely than a
        # target's own token, both loaded)
        low = min(r.model_probability for r in graph.logit_targets) / 2
        for bad in ([top, low], [top, 0.0], "x"):
            graph.model["model_top"] = bad
            with pytest.raises(ValueError, match="model_top"):
                graph.save(tmp_path / "bad.safetensors")
                Graph.load(tmp_path / "bad.safetensors")
        # a token the graph gives no text of, where it gives texts (this graph has none)
        graph.model["model_top"] = [10**9, 0.5]
        graph.token_text = {top: "x"}
        with pytest.raises(ValueError, match="of a token the graph names"):
            graph.model_top  # noqa: B018


def test_a_differences_record_gives_both_tokens_probabilities(replacement, tmp_path):
    """A difference's record gives its negative token's probability beside its positive's (a
    reviewer's label read p 0.003 for the positive token alone, 0.72 for the negative nowhere);
    in sparse mode the model's for both, each against the model's own softmax."""
    tokens = torch.tensor([0, 5, 9, 5, 9, 5])
    run = replacement.model(tokens[None])[0, -1].softmax(-1)
    for mode in ("local", "sparse"):
        g = attribute(replacement, tokens, mode=mode, targets=[LogitDiffTarget(3, 7)])
        r = g.logit_targets[0]
        probs = run_prompt(replacement, tokens, mode).logits[-1].softmax(-1)
        assert r.negative_probability == pytest.approx(float(probs[7]), abs=1e-6)
        if mode == "local":
            assert r.model_negative_probability is None and r.model_probability is None
        else:
            assert r.model_negative_probability == pytest.approx(float(run[7]), abs=1e-6)
            assert r.model_probability == pytest.approx(float(run[3]), abs=1e-6)
        g.save(tmp_path / f"{mode}.safetensors")
        assert Graph.load(tmp_path / f"{mode}.safetensors").logit_targets == [r]


def test_node_ids_are_unique_and_round_trip(graph, tmp_path):
    assert len(set(graph.ids)) == graph.n_nodes
    for suffix in (".safetensors",):
        path = tmp_path / f"g{suffix}"
        graph.save(path)
        back = Graph.load(path)
        assert back.ids == graph.ids and node_labels(back) == node_labels(graph)
        assert (back.edges != graph.edges).nnz == 0
        for name in ("kind", "stage", "pos", "index", "activation", "bias", "target_weight"):
            assert torch.equal(getattr(back, name), getattr(graph, name))
        for name in ("attends", "promotes"):
            assert torch.equal(getattr(back, name), getattr(graph, name))
        assert torch.equal(torch.isnan(back.value), torch.isnan(graph.value))
        assert back.settings == graph.settings
        assert (back.mode, back.group_size, back.positional) == (
            graph.mode,
            graph.group_size,
            graph.positional,
        )
        assert back.logit_targets == graph.logit_targets and back.token_text == graph.token_text


def test_corrupt_graph_file_is_refused(graph, tmp_path):
    path = tmp_path / "g.safetensors"
    graph.save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable graph file"):
        Graph.load(path)
    with pytest.raises(ValueError, match=r"end in \.safetensors"):
        graph.save(tmp_path / "g.txt")


def test_json_export_follows_the_attribution_graph_schema(graph):
    data = to_json(graph, node_labels(graph))
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids) == graph.n_nodes
    assert len(data["links"]) == graph.n_edges
    assert {link["source"] for link in data["links"]} <= set(ids)
    for node in data["nodes"]:
        assert node["node_id"].endswith(f"_{node['ctx_idx']}")
        assert node["layer"] == node["node_id"].split("_")[0]
    assert data["metadata"]["prompt_tokens"] == graph.token_strings
    assert data["qParams"]["supernodes"] == []
    # the supernodes a viewer starts from, of this graph's ids only
    pair = ["two", *ids[:2]]
    assert to_json(graph, node_labels(graph), supernodes=[pair])["qParams"]["supernodes"] == [pair]
    # (checked as the viewer's qParams are: one check, circuits.neuronpedia.checked_supernodes)
    for bad, message in (
        (["one", ids[0]], re.escape("each is [name, id, id, ...], two ids or more")),
        (["ghost", ids[0], "0_99999_0"], "'0_99999_0' unknown or in two"),
        ([1, *ids[:2]], re.escape("each is [name, id, id, ...], two ids or more")),
    ):
        with pytest.raises(ValueError, match=f"qParams.supernodes.*{message}"):
            to_json(graph, node_labels(graph), supernodes=[bad])


def test_networkx_view_and_subgraph(graph):
    g = graph.to_networkx()
    assert g.number_of_nodes() == graph.n_nodes and g.number_of_edges() == graph.n_edges
    keep = torch.arange(0, graph.n_nodes, 2)
    sub = graph.subgraph(keep)
    assert sub.ids == [graph.ids[i] for i in keep.tolist()]
    dense = graph.edges.toarray()[keep][:, keep]
    np.testing.assert_array_equal(sub.edges.toarray(), dense)


def test_a_tokenizer_is_the_models_and_its_bos_begins_the_prompt(tiny_pretrained, make_replacement):
    """Given a tokenizer, ``attribute`` refuses another one (here the model's with two ids
    swapped, which would mislabel every token text) and tokens without BOS at position 0 or
    with it again later (the model was trained with BOS at 0 only: other answers, silently)."""
    import json

    from tokenizers import Tokenizer

    from toy_models.tokenizer import bos_id

    model, tokenizer = tiny_pretrained
    replacement = make_replacement(model)
    ids, bos = tokenizer.encode("Monday, Tuesday, Wednesday,").ids, bos_id(tokenizer)
    assert attribute(replacement, ids, tokenizer=tokenizer).token_strings[0] == "<|bos|>"
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped = Tokenizer.from_str(json.dumps(data))
    with pytest.raises(ValueError, match="^tokenizer: not the tokenizer this model was trained"):
        attribute(replacement, ids, tokenizer=swapped)
    with pytest.raises(ValueError, match=f"tokens start with id {ids[1]}, not <\\|bos\\|> "):
        attribute(replacement, ids[1:], tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"again at position 3: .* at position 0 only$"):
        attribute(replacement, [*ids[:3], bos, *ids[3:]], tokenizer=tokenizer)


def test_a_loaded_models_bos_begins_the_prompt_without_a_tokenizer(
    tiny_pretrained, make_replacement, random_model, tokens
):
    """A notebook review: ``attribute`` (and ``run_prompt``, and the interventions' reruns of
    a graph's tokens) given ids without BOS built a graph without a word, of a computation the
    model never trained on (no sink at position 0). A loaded model knows its BOS id
    (``load_pretrained`` sets ``bos_id`` from its tokenizer): ids without it at position 0, or
    with it again later, are refused in one line naming both; a model built in memory has
    none, and its callers' ids run as given."""
    import copy

    model, tokenizer = tiny_pretrained
    assert model.bos_id == tokenizer.token_to_id("<|bos|>") == 0
    replacement = make_replacement(model)
    ids = tokenizer.encode("Monday, Tuesday, Wednesday,").ids
    graph = attribute(replacement, ids)
    assert graph.tokens == ids
    start = f"^tokens start with id {ids[1]}, not <\\|bos\\|> \\(0\\), which begins every "
    for call in (lambda: attribute(replacement, ids[1:]),
                 lambda: run_prompt(replacement, torch.tensor(ids[1:]))):  # fmt: skip
        with pytest.raises(ValueError, match=start + ".*tokenizer.encode"):
            call()
    with pytest.raises(ValueError, match=r"again at position 3: .* at position 0 only$"):
        attribute(replacement, [*ids[:3], 0, *ids[3:]])
    shifted = copy.copy(graph)  # a graph (a file, say) whose tokens lack BOS
    shifted.tokens = [ids[1], *ids[1:]]
    with pytest.raises(ValueError, match=start):
        intervene(replacement, shifted, [Intervention(graph.ids[len(ids)])])
    assert random_model.bos_id is None and int(tokens[0]) != 0
    assert attribute(make_replacement(random_model), tokens).tokens == tokens.tolist()


# ----------------------------------------------------------------- targets
def test_named_targets(replacement, tokens):
    graph = attribute(
        replacement, tokens, targets=[LogitTarget(3), LogitDiffTarget(4, 5), LogitTarget(7)]
    )
    logits = graph.is_kind("logit").nonzero().squeeze(1)
    assert [graph.ids[i] for i in logits] == ["5_3_11", "5_4-5_11", "5_7_11"]
    assert graph.target_weight[logits].tolist() == pytest.approx([1 / 3] * 3)
    with torch.no_grad():
        out = replacement(tokens[None], mode="local")[0, -1]
    assert float(graph.value[logits[1]]) == pytest.approx(float(out[4] - out[5]), abs=1e-5)
    assert closure_error(graph)["max_abs"] < 1e-4


def test_node_target_starts_influence_at_that_node(replacement, tokens):
    full = attribute(replacement, tokens)
    head = int(full.is_kind("lorsa").nonzero()[-1])
    target = NodeTarget("lorsa", int(full.layer[head]), int(full.pos[head]), int(full.index[head]))
    graph = attribute(replacement, tokens, targets=[target])
    assert graph.target_weight.nonzero().squeeze(1).tolist() == [head]
    pruned = prune_graph(graph)
    assert full.ids[head] in pruned.ids


def test_find_node_names_a_node_the_graph_lacks_in_one_line(replacement, tokens):
    """Found by a reviewer using the library: ``find_node`` on a pruned graph for a head it
    had pruned away was an IndexError ("index 0 is out of bounds for dimension 0 with size
    0"); a kind that is no head or feature was read as a stage of its own."""
    full = attribute(replacement, tokens, max_logits=2)
    pruned = prune_graph(full, node_threshold=0.3)
    gone = next(i for i in full.is_kind("lorsa").nonzero().squeeze(1).tolist()
                if full.ids[i] not in pruned.id_to_index)  # fmt: skip
    target = NodeTarget("lorsa", int(full.layer[gone]), int(full.pos[gone]), int(full.index[gone]))
    assert find_node(full, target) == gone
    with pytest.raises(ValueError, match=f"no lorsa {target.index} of layer {target.layer} at "
                                         f"position {target.pos} in this graph"):  # fmt: skip
        find_node(pruned, target)
    with pytest.raises(ValueError, match="node targets are lorsa or transcoder nodes"):
        find_node(full, NodeTarget("logit", 0, 0, 0))
    with pytest.raises(TypeError, match="target must be a NodeTarget"):
        find_node(full, gone)


def test_the_json_of_a_graph_traced_from_a_node_marks_that_node_as_its_target(replacement, tokens):
    """Found by a fuzz pass: the circuit-tracer JSON of a graph traced from a head marked no
    node as its target (``is_target_logit`` is for logits), so a viewer had no root. Every
    node says whether it is a target (``is_target``), and the metadata lists them."""
    full = attribute(replacement, tokens, max_logits=2)
    head = int(full.is_kind("lorsa").nonzero()[-1])
    target = NodeTarget("lorsa", int(full.layer[head]), int(full.pos[head]), int(full.index[head]))
    traced = prune_graph(attribute(replacement, tokens, targets=[target]))
    data = to_json(traced, node_labels(traced))
    nodes = {n["node_id"]: n for n in data["nodes"]}
    assert nodes[full.ids[head]]["is_target"] and not nodes[full.ids[head]]["is_target_logit"]
    assert [i for i, n in nodes.items() if n["is_target"]] == data["metadata"]["info"]["targets"]
    assert data["metadata"]["info"]["targets"] == [full.ids[head]]
    pruned = prune_graph(full)  # a graph of logits: its targets are its logits
    data = to_json(pruned, node_labels(pruned))
    assert all(n["is_target"] == n["is_target_logit"] == (n["feature_type"] == "logit")
               for n in data["nodes"])  # fmt: skip
    assert len(data["metadata"]["info"]["targets"]) == 2


def test_node_targets_keep_the_order_given_whatever_the_settings(replacement, tokens):
    """The order head and feature targets were given in is a field (``Graph.node_targets``),
    not a setting: with the provenance replaced it holds, and a subgraph keeps it in its own
    indices (before, a graph whose settings lacked ``node_targets`` explained them in node
    order)."""
    from circuits.interventions import target_nodes

    full = attribute(replacement, tokens)
    features = full.is_kind("transcoder").nonzero().squeeze(1).tolist()
    low, high = features[0], features[-1]
    spec = lambda i: NodeTarget("transcoder", int(full.layer[i]), int(full.pos[i]),  # noqa: E731
                                int(full.index[i]))  # fmt: skip
    graph = attribute(replacement, tokens, targets=[LogitTarget(7), spec(high), spec(low)])
    given = [full.ids[high], full.ids[low]]
    graph.settings = {}  # provenance replaced
    assert [graph.ids[i] for i in target_nodes(graph)[1:]] == given
    part = graph.subgraph(list(range(1, graph.n_nodes)))  # every index one lower
    assert [part.ids[i] for i in target_nodes(part)[1:]] == given
    pruned = prune_graph(graph)  # node targets always stay
    assert [pruned.ids[i] for i in target_nodes(pruned)[1:]] == given


@pytest.mark.parametrize("mode", ["local", "sparse"])
def test_interventions_read_a_node_targets_pre_activation(replacement, tokens, mode):
    """With a head or feature as a target (beside a logit), an intervention measures its
    pre-activation: a tiny change of its strongest source moves it by the graph's prediction
    (frozen), and the summary explains it like a logit (parts close, checks measured)."""
    from circuits.interventions import target_nodes
    from circuits.mechanisms import summarize

    full = attribute(replacement, tokens, mode=mode)
    feature = int(full.is_kind("transcoder").nonzero()[-1])
    target = NodeTarget("transcoder", int(full.layer[feature]), int(full.pos[feature]),
                        int(full.index[feature]))  # fmt: skip
    run = run_prompt(replacement, tokens, mode, constants=True)
    graph = attribute(replacement, tokens, mode=mode, run=run, targets=[LogitTarget(7), target])
    node = target_nodes(graph)[-1]
    assert graph.ids[node] == full.ids[feature] and len(target_nodes(graph)) == 2
    row = graph.edges[[node]].toarray()[0]
    source = int(np.abs(row).argmax())
    small = intervene(replacement, graph, [Intervention(graph.ids[source], "scale", 1.001)])
    assert small.targets[-1] == graph.ids[node]
    torch.testing.assert_close(small.actual, small.predicted, atol=1e-4, rtol=2e-2)
    assert abs(float(small.actual[-1])) > 0
    # ablating a head of the block's own Lorsa: exactly minus its edge (nothing between)
    below = np.flatnonzero((graph.stage.numpy() == int(graph.stage[node]) - 1) & (row != 0))
    head = int(below[np.abs(row[below]).argmax()])
    gone = intervene(replacement, graph, [Intervention(graph.ids[head], "ablate")])
    assert float(gone.actual[-1]) == pytest.approx(-float(row[head]), abs=1e-4)
    summary = summarize(replacement, graph, run, max_groups=3)
    assert [t.kind for t in summary.targets] == ["logit", "transcoder"]
    t = summary.targets[-1]
    assert t.tokens + t.errors + t.constants == pytest.approx(t.value, abs=1e-4)
    assert t.value == pytest.approx(float(graph.value[node]), abs=1e-6)
    # the target is alone in its group (it also feeds the logit, so it may be listed), and
    # its group is checked on the other targets only, never on itself
    mine = [g for g in summary.groups if graph.ids[node] in g.members]
    assert all(g.members == [graph.ids[node]] for g in mine)
    assert all(c.target != graph.ids[node] for g in mine for c in g.checks)
    assert summary.targets[-1].predicting_group not in [g.key for g in mine]
    checks = [c for g in summary.groups for c in g.checks if c.target == graph.ids[node]]
    assert checks and all(c.predicted == pytest.approx(-g.flow[c.target], abs=1e-4)
                          for g in summary.groups for c in g.checks
                          if c.target == graph.ids[node])  # fmt: skip


@pytest.mark.parametrize(
    "targets, message",
    [
        ([LogitTarget(50)], "outside the vocabulary"),
        ([NodeTarget("lorsa", 0, 3, 99)], "lorsa 99 does not exist: layer 0 has lorsa units"),
        ([NodeTarget("transcoder", 1, 3, -1)], "transcoder -1 does not exist"),
        ([NodeTarget("lorsa", 0, 99, 1)], "outside the prompt"),
        ([NodeTarget("transcoder", -1, 3, 1)], "layer -1 does not exist"),
        ([LogitDiffTarget(5, 5)], "with itself is zero"),
        (["logit 5"], "unknown target"),
        ([NodeTarget("embedding", 0, 3, 1)], "lorsa or transcoder"),
        ([NodeTarget(None, 0, 3, 1)], "unknown node kind None"),
        ([NodeTarget("lorsa", 0.0, 3, 1)], "a node target's layer must be an integer"),
        ([], "targets is empty"),
        # found by a fuzz pass: ids were int()-ed, so 4.7 was token 4 and "5" next to 5 made
        # two logit nodes of one id
        ([LogitTarget(4.7)], "a target token id must be an integer, got 4.7"),
        ([LogitTarget(5), LogitTarget("5")], "must be an integer, got '5'"),
        ([LogitTarget(True)], "must be an integer, got True"),
        (LogitTarget(5), "targets must be a list of targets"),
    ],
)
def test_bad_targets_are_refused(replacement, tokens, targets, message):
    with pytest.raises(ValueError, match=message):
        attribute(replacement, tokens, targets=targets)


def test_a_unit_that_exists_but_is_silent_is_refused(replacement, tokens):
    from replacement.model import hook_name

    _, cache = replacement.run_with_cache(tokens[None], mode="local")
    silent = int((cache[hook_name(0, "lorsa.hook_z")][0, 3] == 0).nonzero()[0])
    with pytest.raises(ValueError, match=f"lorsa {silent} of layer 0 is not active at position 3"):
        attribute(replacement, tokens, targets=[NodeTarget("lorsa", 0, 3, silent)])


def test_bad_inputs_are_refused(replacement, random_model, tokens, make_replacement):
    with pytest.raises(ValueError, match="unknown mode"):
        attribute(replacement, tokens, mode="dense")
    with pytest.raises(ValueError, match="linear skip"):
        attribute(make_replacement(random_model, skip_layers=(1,)), tokens)


@pytest.mark.parametrize(
    "given, message",
    [
        # a batch was flattened into one prompt with a BOS in its middle
        (lambda t: torch.stack([t, t]), r"one prompt at a time: .* got shape \(2, 12\)"),
        (lambda t: t[None, None], r"got shape \(1, 1, 12\)"),
        (lambda t: [], "tokens is empty"),
        (lambda t: "Monday", "encode the text"),
        (lambda t: [["a"]], "tokens must be token ids"),
        # the last of the n_ctx = 16 positions never trains: 16 tokens are one too many
        (lambda t: torch.randint(0, 50, (16,)), "16 tokens: the model was trained on 15 positions"),
        (lambda t: torch.randint(0, 50, (17,)), "17 tokens"),
    ],
)
def test_tokens_that_are_not_one_prompt_are_refused(replacement, tokens, given, message):
    with pytest.raises(ValueError, match=message):
        attribute(replacement, given(tokens))
    assert attribute(replacement, tokens[None], max_logits=1).tokens == tokens.tolist()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_logits": 0}, "max_logits must be a positive integer, got 0"),
        ({"max_logits": -3}, "got -3"),  # was every logit of the vocabulary (order[:-3])
        ({"max_logits": 1.5}, "got 1.5"),
        ({"logit_probability": float("nan")}, "logit_probability must be in"),
        ({"logit_probability": 2.0}, "logit_probability must be in"),
    ],
)
def test_bad_target_options_are_refused(replacement, tokens, options, message):
    with pytest.raises(ValueError, match=message):
        attribute(replacement, tokens, **options)


def test_a_run_given_must_be_of_the_tokens_and_mode_asked_for(replacement, tokens):
    """Found by a fuzz pass: the graph of the run given came back under the prompt and mode
    asked for (another prompt's graph, or a local graph for mode="sparse")."""
    run = run_prompt(replacement, tokens, "local")
    with pytest.raises(ValueError, match="not of these tokens in mode 'local'"):
        attribute(replacement, tokens.flip(0), run=run)
    with pytest.raises(ValueError, match="not of these tokens in mode 'sparse'"):
        attribute(replacement, tokens, mode="sparse", run=run)
    with pytest.raises(ValueError, match="constants asks for bias nodes the run given has none"):
        attribute(replacement, tokens, run=run, constants=True)
    assert attribute(replacement, tokens, run=run).tokens == tokens.tolist()


def test_a_replacement_set_that_cannot_be_the_graphs_is_refused(
    graph, replacement, random_model, make_replacement, tokens
):
    """Found by a fuzz pass: an unsaved set (no identity to compare) of other shapes gave
    deep IndexErrors or silently meaningless predictions."""
    edit = [Intervention(graph.ids[int(graph.is_kind("lorsa").nonzero()[0])], "ablate")]
    regrouped = make_replacement(random_model, n_qk=4)  # QK groups of 2, not 4
    with pytest.raises(ValueError, match="in groups of 4, the replacement set's in groups of 2"):
        intervene(regrouped, graph, edit)
    narrow = make_replacement(random_model, n_ov=4, n_qk=1)  # heads 4..7 missing
    assert int(graph.index[graph.is_kind("lorsa")].max()) >= 4
    with pytest.raises(ValueError, match="lorsa .* the replacement set's 4 units lack"):
        first_order(narrow, graph)

    # Same shapes, other weights (the pass: transcoders swapped gave predicted -0.10 against
    # an actual 0; weights edited in place after the trace): told by the weights' hash. The
    # same weights built again are the same set.
    assert intervene(make_replacement(random_model), graph, edit).actual.shape
    from replacement.model import ReplacementModel

    swapped = ReplacementModel(random_model, replacement.lorsas, replacement.transcoders[::-1])
    with pytest.raises(ValueError, match="traced with other weights than this replacement"):
        intervene(swapped.eval(), graph, edit)
    with torch.no_grad():
        replacement.transcoders[1].W_dec.mul_(1.5)
    with pytest.raises(ValueError, match="traced with other weights than this replacement"):
        first_order(replacement, graph)


def test_direct_pre_activations_checks_its_inputs_first(graph, replacement):
    n_src = graph.n_nodes - int(graph.is_kind("logit").sum())
    with pytest.raises(ValueError, match=rf"multipliers must be \(batch, {n_src}\).*\(1, 5\)"):
        direct_pre_activations(replacement, graph, torch.ones(1, 5))
    with pytest.raises(ValueError, match="multipliers must be"):
        direct_pre_activations(replacement, graph, torch.ones(n_src))
    pruned = prune_graph(graph)
    with pytest.raises(ValueError, match="needs the full"):
        n_kept = pruned.n_nodes - int(pruned.is_kind("logit").sum())
        direct_pre_activations(replacement, pruned, torch.ones(1, n_kept))


def test_single_node_accessors_never_read_from_the_end(graph):
    last = graph.n_nodes - 1
    for call in (graph.node_attributes, graph.logit_record, graph.read_key, graph.qk_for):
        for bad, message in ((-1, f"node -1 is outside 0..{last}"),
                             (graph.n_nodes, f"node {graph.n_nodes} is outside"),
                             (2.0, "node must be an integer, got 2.0")):  # fmt: skip
            with pytest.raises(ValueError, match=message):
                call(bad)
    assert graph.node_attributes(last)["kind"] == "logit"
    with pytest.raises(ValueError, match="node -1 is outside"):
        group(graph, [1], "x").group_of(-1)


def test_odd_arguments_of_the_graph_api_are_refused_in_a_line(graph, replacement):
    """Found by a fuzz pass: each failed deep in torch or numpy, or ran on."""
    from circuits.groups import auto_groups
    from circuits.prune import influence_scores

    assert graph.subgraph({2, 0, 1}).ids == graph.subgraph([0, 1, 2]).ids  # a set has no order
    with pytest.raises(ValueError, match="keep must be node indices .* not a dict"):
        graph.subgraph({0: 1})
    with pytest.raises(ValueError, match="concepts must map unit ids to"):
        auto_groups(graph, [("0_1", "x", 1.0)])
    other = attribute(replacement, torch.arange(1, 6), max_logits=1)
    with pytest.raises(ValueError, match="pass this graph's influence_scores"):
        prune_graph(graph, scored=influence_scores(other))
    node = graph.ids[int(graph.is_kind("lorsa").nonzero()[0])]
    with pytest.raises(ValueError, match="the value must be a number, got '2'"):
        intervene(replacement, graph, [Intervention(node, "clamp", "2")])
    # a tensor or NumPy value is a number (np.float32 once passed the check and failed deep)
    i = graph.id_to_index[node]
    by_tensor = intervene(replacement, graph, [Intervention(node, "clamp", graph.activation[i])])
    by_numpy = intervene(replacement, graph, [Intervention(node, "clamp", np.float32(1.5))])
    assert by_tensor.actual.abs().max() == 0 and by_numpy.actual.abs().max() > 0


def test_non_finite_edges_are_refused_by_subgraph(graph):
    keep = list(range(graph.n_nodes))
    edges = graph.edges.copy()
    edges.data[0] = float("nan")
    with pytest.raises(ValueError, match="edges has NaN or infinite values"):
        graph.subgraph(keep, edges=edges)


def test_a_clean_run_holds_no_autograd_graph(replacement, tokens):
    """``run_prompt`` caches plain tensors even for a set whose weights require grad (the
    trace calls it outside ``no_grad``): no autograd graph of the forward pass is kept."""
    assert any(p.requires_grad for p in replacement.parameters())
    run = run_prompt(replacement, tokens, "local", constants=True)
    held = [run.logits, run.write, run.activation, *run.patterns, *run.lorsa_pre, *run.tc_pre]
    assert not any(t.requires_grad for t in held)


# ----------------------------------------------------------------- QK
def test_qk_terms_sum_to_the_heads_scores(replacement, tokens):
    run = run_prompt(replacement, tokens, "local")
    for layer in range(2):
        lorsa = replacement.lorsas[layer]
        side = QKSides(run, replacement, layer)
        q, k = lorsa.qk(run.lorsa_in[layer][None])
        scores = (q @ k.transpose(-1, -2))[0] / lorsa.cfg.d_qk**0.5  # qk q k
        heads, queries = torch.meshgrid(torch.arange(2), torch.arange(12), indexing="ij")
        for key in range(12):
            h, qq = heads.flatten(), queries.flatten()
            kk = torch.full_like(h, key)
            table = side.terms(h, qq, kk)
            torch.testing.assert_close(table.sum((1, 2)), scores[h, qq, kk], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(side.scores(h, qq, kk), scores[h, qq, kk])


def test_each_qk_pair_is_its_two_nodes_through_w_q_and_w_k(graph, replacement):
    """Each listed pair, recomputed from its two nodes alone: the query node's write at the
    query and the key node's at the key, each centred and divided by that position's
    LayerNorm scale, through the QK head's ``W_Q`` and ``W_K``. A pair credited to the wrong
    node, position or side fails here, where a table that only sums to the score would not."""
    heads = graph.is_kind("lorsa").nonzero().squeeze(1)
    records = qk_attribution(replacement, graph, heads, top=50)
    run = run_prompt(replacement, torch.tensor(graph.tokens), graph.mode)
    source_of = {
        (int(k), int(s), int(p), int(i)): j
        for j, (k, s, p, i) in enumerate(zip(run.kind, run.stage, run.pos, run.index, strict=True))
    }
    checked = 0
    for a in records:
        lorsa = replacement.lorsas[a.layer]
        for at in (a.query, a.key):
            # the writes below the layer and the constants make the LayerNorm's input there
            below = [source_of[f] for f in source_of if f[2] == at and f[1] < 2 * a.layer + 1]
            resid = run.write[below].sum(0) + run.resid_bias[2 * a.layer + 1, at]
            normed = (resid - resid.mean()) / run.sigma1[a.layer, at]
            torch.testing.assert_close(normed, run.lorsa_in[a.layer][at], atol=1e-4, rtol=1e-4)
        for pair in a.pairs:
            if pair.query is None or pair.key is None:
                continue
            vectors = []
            for name, at, w in ((pair.query, a.query, lorsa.W_Q), (pair.key, a.key, lorsa.W_K)):
                node = graph.id_to_index[name]
                assert int(graph.pos[node]) == at
                fields = (int(graph.kind[node]), int(graph.stage[node]), at, int(graph.index[node]))
                write = run.write[source_of[fields]] / run.sigma1[a.layer, at]
                vectors.append((write - write.mean()) @ w[a.qk_head].detach())
            mine = float(vectors[0] @ vectors[1]) / lorsa.cfg.d_qk**0.5
            assert pair.value == pytest.approx(mine, rel=1e-4, abs=1e-5), (a, pair)
            checked += 1
    assert checked > 20


def test_qk_contrast_explains_the_key_against_the_mean_key(graph, replacement, tmp_path):
    heads = graph.is_kind("lorsa").nonzero().squeeze(1)
    records = qk_attribution(replacement, graph, heads, top=1000, contrast=True)
    run = run_prompt(replacement, torch.tensor(graph.tokens), graph.mode)
    for a in records:
        side = QKSides(run, replacement, a.layer)
        n = a.query + 1
        with torch.no_grad():
            scores = side.scores(
                torch.full((n,), a.qk_head), torch.full((n,), a.query), torch.arange(n)
            )
        assert a.contrast == pytest.approx(float(scores[a.key] - scores.mean()), abs=1e-4)
        # With every term listed they sum to the contrast; keys are units (no position).
        assert sum(p.value for p in a.contrast_pairs) == pytest.approx(a.contrast, abs=1e-4)
        assert all(p.key == QK_BIAS or a.named[p.key].pos is None for p in a.contrast_pairs)
    path = tmp_path / "g.safetensors"
    graph.save(path)
    assert Graph.load(path).qk[0].contrast_pairs == records[0].contrast_pairs


def test_qk_attribution_records(graph, replacement):
    heads = graph.is_kind("lorsa").nonzero().squeeze(1)
    records = qk_attribution(replacement, graph, heads, key_mass=0.3, top=5)
    assert graph.qk is records and records
    ids = set(graph.ids)
    run = run_prompt(replacement, torch.tensor(graph.tokens), graph.mode)
    for a in records:
        pattern = run.patterns[a.layer][a.qk_head, a.query]
        assert a.attention == pytest.approx(float(pattern[a.key]))
        read = {int(graph.attends[i]) for i in heads.tolist()
                if (int(graph.layer[i]), int(graph.index[i]) // graph.group_size,
                    int(graph.pos[i])) == (a.layer, a.qk_head, a.query)}  # fmt: skip
        assert a.key in read or a.attention >= 0.3  # a key its heads read, or key_mass's
        assert len(a.pairs) <= 5
        values = [abs(p.value) for p in a.pairs]
        assert values == sorted(values, reverse=True)
        assert a.rest == pytest.approx(a.score - sum(p.value for p in a.pairs), abs=1e-4)
        for p in a.pairs:
            assert p.query is None or (p.query in ids and p.query.endswith(f"_{a.query}"))
            assert p.key is None or (p.key in ids and p.key.endswith(f"_{a.key}"))
    # every head's first record is at the key it reads
    assert all(graph.qk_for(int(i))[0].key == graph.read_key(int(i)) for i in heads)
    with pytest.raises(ValueError, match="not a Lorsa head"):
        qk_attribution(replacement, graph, [0])
    graph.attends[int(heads[0])] = -1  # as a graph file may hold: never read as the last key
    with pytest.raises(ValueError, match=r"reads no key \(attends -1\)"):
        qk_attribution(replacement, graph, heads[:1])


# ----------------------------------------------------------------- pruning
def dense_influence(graph: Graph) -> np.ndarray:
    a = np.abs(graph.edges.toarray().astype(np.float64))
    a /= np.maximum(a.sum(1, keepdims=True), 1e-10)
    n = len(a)
    return graph.target_weight.double().numpy() @ (np.linalg.inv(np.eye(n) - a) - np.eye(n))


def test_influence_equals_the_matrix_inverse(graph):
    infl = influence(graph.edges, graph.stage.numpy(), graph.target_weight.numpy())
    np.testing.assert_allclose(infl, dense_influence(graph), rtol=1e-9, atol=1e-12)


def test_a_row_block_shares_the_edges_and_multiplies_as_their_slice(graph):
    """``row_block`` views rows of the edges (scipy's constructor and ``.T`` copy a slice of a
    much larger array); its products, plain and transposed, are the slice's to the bit, and
    ``Normalized``'s blocks leave the edges as they were."""
    edges = graph.edges
    lo, hi = edges.shape[0] // 3, edges.shape[0] // 3 + edges.shape[0] // 4
    assert edges.indptr[hi] > edges.indptr[lo]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((edges.shape[1], 3)).astype(np.float32)
    y = rng.standard_normal((hi - lo, 3)).astype(np.float32)
    rows, cols = row_block(edges, lo, hi), row_block(edges, lo, hi, transposed=True)
    for block in (rows, cols):
        assert np.shares_memory(block.indices, edges.indices)
        assert np.shares_memory(block.data, edges.data)
    np.testing.assert_array_equal(rows.toarray(), edges[lo:hi].toarray())
    np.testing.assert_array_equal(rows @ x, edges[lo:hi] @ x)
    np.testing.assert_array_equal(cols @ y, edges[lo:hi].T @ y)
    before = edges.data.copy()
    scaled = Normalized(edges).rows(lo, hi)
    np.testing.assert_array_equal(edges.data, before)
    np.testing.assert_array_equal(np.abs(scaled.toarray()) > 0, rows.toarray() != 0)


def test_find_threshold():
    scores = np.array([5.0, 3.0, 1.0, 1.0])  # cumulative 0.5, 0.8, 0.9, 1.0
    assert find_threshold(scores, 0.5) == 5.0
    assert find_threshold(scores, 0.75) == 3.0
    assert find_threshold(scores, 0.85) == 1.0
    assert find_threshold(scores, 1.0) == 1.0


def test_pruning_keeps_what_carries_influence(graph):
    pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    infl = dense_influence(graph)
    index = graph.id_to_index
    kept = np.array([index[i] for i in pruned.ids])
    kinds = pruned.kinds
    # Every embedding and logit stays; kept inner nodes are among the most influential.
    assert kinds.count("embedding") == len(graph.tokens)
    assert kinds.count("logit") == int(graph.is_kind("logit").sum())
    inner = [j for j, k in zip(kept, kinds, strict=True) if k not in ("embedding", "logit")]
    threshold = find_threshold(infl, 0.8)
    assert all(infl[j] >= threshold - 1e-9 for j in inner)
    np.testing.assert_allclose(pruned.influence.numpy(), infl[kept], rtol=1e-5, atol=1e-7)
    # Kept edges are original edges; no head, feature or error is left dangling.
    full = graph.edges.toarray()
    coo = pruned.edges.tocoo()
    np.testing.assert_array_equal(coo.data, full[kept[coo.row], kept[coo.col]])
    out_deg = np.bincount(coo.col, minlength=pruned.n_nodes)
    in_deg = np.bincount(coo.row, minlength=pruned.n_nodes)
    for j, k in enumerate(kinds):
        if k in ("lorsa", "transcoder", "error"):
            assert out_deg[j] > 0
        if k in ("lorsa", "transcoder"):
            assert in_deg[j] > 0
    assert pruned.settings["unpruned"] == {"nodes": graph.n_nodes, "edges": graph.n_edges}
    # Nodes named in keep stay, however little influence they carry, edges or none.
    weakest = [i for i in np.argsort(infl).tolist() if graph.kinds[i] in ("lorsa", "transcoder")]
    extra = [i for i in weakest if graph.ids[i] not in pruned.id_to_index][:3]
    kept = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98, keep=extra)
    assert {graph.ids[i] for i in extra} <= set(kept.ids)
    with pytest.raises(ValueError, match="keep"):
        prune_graph(graph, keep=[graph.n_nodes])


def test_max_nodes_and_threshold_checks(graph):
    # any real number type: np.float32(0.8) was refused as not in (0, 1]
    assert prune_graph(graph, node_threshold=np.float32(0.8)).n_nodes > 0
    pruned = prune_graph(graph, max_nodes=3)
    assert int(pruned.is_kind("lorsa", "transcoder", "error").sum()) <= 3
    everything = prune_graph(graph, node_threshold=1.0, edge_threshold=1.0)
    assert everything.n_nodes >= prune_graph(graph).n_nodes
    with pytest.raises(ValueError, match="node_threshold"):
        prune_graph(graph, node_threshold=0)


def test_scores_follow_circuit_tracers_formulas(graph):
    scores = graph_scores(graph)
    infl = dense_influence(graph)
    a = np.abs(graph.edges.toarray().astype(np.float64))
    a /= np.maximum(a.sum(1, keepdims=True), 1e-10)
    err, emb = graph.is_kind("error").numpy(), graph.is_kind("embedding").numpy()
    w = graph.target_weight.numpy()
    expected_replacement = infl[emb].sum() / (infl[emb].sum() + infl[err].sum())
    out = infl + w
    expected_completeness = ((1 - a[:, err].sum(1)) * out).sum() / out.sum()
    assert scores["replacement"] == pytest.approx(expected_replacement)
    assert scores["completeness"] == pytest.approx(expected_completeness)
    if graph.mode == "sparse":
        assert scores == {"replacement": 1.0, "completeness": 1.0}
    else:
        assert 0 < scores["replacement"] < 1 and 0 < scores["completeness"] < 1


def test_scores_of_a_pruned_graph_are_refused(graph):
    """A review: ``graph_scores`` of a pruned graph gave numbers (1.0 and 1.0 for a BOS-only
    prompt whose full graph scores 0.99 and 0.998), renormalised over the kept edges alone:
    neither circuit-tracer's scores of the full graph nor a pruned graph's completeness, in
    which the pruned nodes count against it. It is refused; the full graph scores as before."""
    scores = graph_scores(graph)
    pruned = prune_graph(graph, node_threshold=0.5, edge_threshold=0.5)
    assert pruned.n_edges < graph.n_edges
    with pytest.raises(ValueError, match=r"need the full \(unpruned\) graph"):
        graph_scores(pruned)
    with pytest.raises(ValueError, match=r"need the full \(unpruned\) graph"):
        influence_scores(pruned)
    everything = graph.subgraph(torch.ones(graph.n_nodes, dtype=torch.bool))
    assert graph_scores(everything) == scores
    # Pruning a pruned graph (a notebook review): its thresholds read as fractions of the kept
    # edges' influence alone, a smaller graph returned without a word; refused the same way.
    with pytest.raises(ValueError, match=r"pruning needs the full \(unpruned\) graph.*: prune "):
        prune_graph(pruned, node_threshold=0.5)
    assert prune_graph(everything).n_nodes == prune_graph(graph).n_nodes


def test_scores_do_not_depend_on_constants_as_nodes(graph, replacement, tokens):
    """Found by a fuzz pass: with the decoder biases as nodes (the trace's default) the bias
    nodes took a share of every row, so the printed scores were not circuit-tracer's (whose
    graphs have none) and moved by up to 0.04 with --constants. Pruning still counts them."""
    run = run_prompt(replacement, tokens, graph.mode, constants=True)
    with_biases = attribute(replacement, tokens, max_logits=3, run=run)
    assert with_biases.is_kind("bias").any()
    for name, value in graph_scores(with_biases).items():
        assert value == pytest.approx(graph_scores(graph)[name], rel=1e-6), name
    scored = influence_scores(with_biases)
    assert scored.influence[with_biases.is_kind("bias").numpy()].sum() > 0


# ----------------------------------------------------------------- interventions
def test_intervention_changes_agree_with_the_graph(graph, replacement):
    logit = int(graph.is_kind("logit").nonzero()[0])
    # The strongest direct source of the top logit: a tiny change stays in the linear regime.
    row = graph.edges[[logit]].toarray()[0]
    source = int(np.abs(row).argmax())
    node = graph.ids[source]
    none = intervene(replacement, graph, [Intervention(node, "scale", 1.0)])
    assert none.actual.abs().max() == 0 and none.predicted.abs().max() == 0
    small = intervene(replacement, graph, [Intervention(node, "scale", 1.001)])
    torch.testing.assert_close(small.actual, small.predicted, atol=1e-4, rtol=2e-2)
    assert small.actual.abs().max() > 0
    ablated = intervene(replacement, graph, [Intervention(node, "ablate")], freeze_attention=False)
    assert ablated.logits.shape == (50,)
    # Predicted direct change of the logit is exactly its edge (per unit) when nothing between.
    delta = predict(graph, [Intervention(node, "clamp", 0.0)])
    assert float(delta[source]) == pytest.approx(-float(graph.activation[source]))
    with pytest.raises(ValueError, match="no node"):
        intervene(replacement, graph, [Intervention("nope")])
    with pytest.raises(ValueError, match="unknown action"):
        intervene(replacement, graph, [Intervention(node, "double")])
    # found by a fuzz pass: a clamp to 3e38 returned actual = -inf without a word
    with pytest.raises(ValueError, match="the model overflows under these edits"):
        intervene(replacement, graph, [Intervention(node, "clamp", 3e38)])
    # found by fuzz pass 10: 1e308 is finite, but no float32 (a RuntimeError from torch)
    for value in (1e308, -4e38):
        with pytest.raises(ValueError, match="a finite number within float32's range"):
            intervene(replacement, graph, [Intervention(node, "clamp", value)])
        with pytest.raises(ValueError, match="a finite number within float32's range"):
            predict(graph, [Intervention(node, "scale", value)])


def test_an_edit_of_a_logit_node_is_held_by_predict_and_intervene_alike(graph, replacement):
    """A notebook review: ``predict`` of a logit clamp gave the clamp's change while
    ``intervene`` refused the same edit (after its clean rerun). A logit is a target no node
    reads, and ``predict``'s edit of one is intended (a group holding a target takes its value
    away once): ``intervene`` holds it at its edit too, its actual change the predicted one,
    and reruns the model with the other edits alone."""
    logit = int(graph.is_kind("logit").nonzero()[0])
    head = int(graph.is_kind("lorsa").nonzero()[-1])
    value = float(graph.value[logit])
    alone = intervene(replacement, graph, [Intervention(graph.ids[head])])
    j = alone.targets.index(graph.ids[logit])
    for edit, new in ((Intervention(graph.ids[logit], "clamp", 1.5), 1.5),
                      (Intervention(graph.ids[logit]), 0.0),
                      (Intervention(graph.ids[logit], "scale", 2.0), 2 * value)):  # fmt: skip
        predicted = predict(graph, [edit])
        result = intervene(replacement, graph, [edit])
        assert float(result.actual[j]) == float(result.predicted[j]) == float(predicted[logit])
        assert float(predicted[logit]) == pytest.approx(new - value, rel=1e-6)
        others = torch.arange(len(result.targets)) != j
        assert result.actual[others].abs().max() == 0  # nothing in the model moved
        both = intervene(replacement, graph, [Intervention(graph.ids[head]), edit])
        assert torch.equal(both.actual[others], alone.actual[others])
        assert float(both.actual[j]) == float(predicted[logit])
        assert torch.equal(both.logits, alone.logits)


@pytest.mark.parametrize("mode", ["local", "sparse"])
def test_an_edited_head_or_feature_target_changes_by_its_edit_in_predict_and_intervene(
    replacement, tokens, mode
):
    """A head or feature that is both edited and a ``--target-node`` target: ``predict`` gave
    the edit's change and ``intervene`` its pre-activation's, which its own edit does not
    move (0 for the edit alone). One definition for both, as for a logit: the target is held
    at its edit, its change the edit's; the other targets are the rerun's."""
    full = attribute(replacement, tokens, mode=mode)
    feature = int(full.is_kind("transcoder").nonzero()[-1])
    head = int(full.is_kind("lorsa").nonzero()[0])
    spec = lambda i, kind: NodeTarget(kind, int(full.layer[i]), int(full.pos[i]),  # noqa: E731
                                      int(full.index[i]))  # fmt: skip
    given = [LogitTarget(7), spec(feature, "transcoder"), spec(head, "lorsa")]
    graph = attribute(replacement, tokens, mode=mode, targets=given)
    from circuits.interventions import target_nodes

    for node in target_nodes(graph)[1:]:
        activation = float(graph.activation[node])
        other = int(np.abs(graph.edges[[node]].toarray()[0]).argmax())  # its strongest source
        alone = intervene(replacement, graph, [Intervention(graph.ids[other])])
        j = alone.targets.index(graph.ids[node])
        edits = ((Intervention(graph.ids[node]), 0.0),
                 (Intervention(graph.ids[node], "clamp", 1.5), 1.5),
                 (Intervention(graph.ids[node], "scale", 2.0), 2 * activation))  # fmt: skip
        for edit, new in edits:
            predicted = float(predict(graph, [edit])[node])
            result = intervene(replacement, graph, [edit])
            assert predicted == pytest.approx(new - activation, rel=1e-6)
            assert float(result.actual[j]) == float(result.predicted[j]) == predicted
            both = intervene(replacement, graph, [Intervention(graph.ids[other]), edit])
            assert float(both.actual[j]) == predicted  # held, whatever flows into it
            assert float(both.predicted[j]) == predicted
            assert float(alone.actual[j]) != 0  # (what flows in does move without the edit)


def test_a_clamp_or_scale_needs_its_value_and_an_ablation_takes_none_but_0(graph):
    """Found by a reviewer using the library: ``Intervention(node, "scale")`` scaled the node
    by 0 and ``Intervention(node, "clamp")`` clamped it to 0 (both an ablation, without a
    word), and ``Intervention(node, "ablate", 5.0)`` ablated, the 5 ignored."""
    node = graph.ids[int(graph.is_kind("lorsa").nonzero()[0])]
    for action in ("clamp", "scale"):
        with pytest.raises(ValueError, match=f"{action} of '{node}' needs a value"):
            Intervention(node, action)
        with pytest.raises(ValueError, match=f"{action} of '{node}' needs a value"):
            Intervention(node, action, None)
    with pytest.raises(ValueError, match=f"ablate of '{node}' sets it to 0, not 5.0"):
        Intervention(node, "ablate", 5.0)
    assert Intervention(node).value == Intervention(node, "ablate", 0).value == 0.0
    assert Intervention(node, "scale", 0).value == 0.0  # said: a scale by 0 is taken


def test_side_attention_refuses_a_key_or_query_outside_the_prompt(replacement, tokens):
    """Found by a reviewer using the library: ``side_attention(..., query=5, key=-1)`` read
    the attention to the query itself (a key read from the end), and a key after its query or a
    query of -1 was torch's IndexError. Each is refused in one line naming the argument."""
    run = run_prompt(replacement, tokens)
    x, lorsa = run.lorsa_in[1], replacement.lorsas[1]
    q = len(tokens) - 1
    assert side_attention(lorsa, x, x, 0, q, q) == pytest.approx(
        (float(run.patterns[1][0, q, q]),) * 2, rel=1e-5)  # fmt: skip
    n_qk = lorsa.cfg.n_qk_heads
    for args, message in (
        ((0, q, -1), rf"key \(at or before the query\) -1 is outside 0..{q}"),
        ((0, 1, 2), r"key \(at or before the query\) 2 is outside 0..1"),
        ((0, -1, 0), rf"query -1 is outside 0..{q}"),
        ((0, q + 1, 0), rf"query {q + 1} is outside 0..{q}"),
        ((n_qk, q, 0), rf"qk_head {n_qk} is outside 0..{n_qk - 1}"),
        ((0, float(q), 0), "query must be an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            side_attention(lorsa, x, x, *args)
    with pytest.raises(ValueError, match="one prompt's Lorsa inputs"):
        side_attention(lorsa, x, x[:-1], 0, 1, 0)


def test_an_edit_to_a_value_beyond_float32_is_refused(graph, replacement):
    """Found by fuzz pass 13: an int of 401 digits or a huge Fraction as an Intervention's
    value was an OverflowError from ``float``, and a scale by 3e38 (a float32) of a node of
    activation 16.9 made predict return inf. The value must be a finite number within
    float32's range when the Intervention is made, and what it makes of the node too, for
    predict and intervene alike."""
    import fractions

    node = graph.ids[int(graph.is_kind("lorsa").nonzero()[0])]
    for value in (10**400, -(10**400), fractions.Fraction(10**400, 3)):
        with pytest.raises(ValueError, match="the value must be a finite number within float32's"
                                             " range") as info:  # fmt: skip
            Intervention(node, "clamp", value)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200
    assert Intervention(node, "clamp", fractions.Fraction(3, 2)).value == 1.5
    big = int(graph.activation.abs().argmax())
    assert abs(float(graph.activation[big])) > 1.2
    edit = [Intervention(graph.ids[big], "scale", 3e38)]
    message = f"scale of {graph.ids[big]!r} by 3e\\+38 makes it .*, beyond float32's range"
    with pytest.raises(ValueError, match=message):
        predict(graph, edit)
    with pytest.raises(ValueError, match=message):
        intervene(replacement, graph, edit)


def test_intervene_reads_attention_after_the_edit_and_refuses_reads_outside(graph, replacement):
    """``attention_reads`` gives a QK head's attention from a query to a key after the edits:
    the clean pattern with attention frozen, the recomputed one with it free (the model's own
    pattern with the node's value zeroed by hand, errors recomputed). A read outside the model
    or the prompt, or not four ints, is one line."""
    from by_hand import side_patterns

    from replacement.model import hook_name

    i = int(graph.is_kind("lorsa").nonzero()[0])  # a layer-0 head: layer 1 reads what it writes
    assert int(graph.layer[i]) == 0
    n = len(graph.tokens)
    reads = [(1, h, n - 1, k) for h in range(2) for k in (0, n - 2)] + [(0, 1, 3, 3)]
    edit = [Intervention(graph.ids[i], "ablate")]
    runs = []

    def keep(act, hook):
        runs[-1][hook.name] = act.detach()[0]

    def zero(act, hook):
        act = act.clone()
        act[:, int(graph.pos[i]), int(graph.index[i])] = 0
        return act

    tokens = torch.tensor(graph.tokens)[None]
    names = [hook_name(layer, "lorsa.hook_pattern") for layer in (0, 1)]
    names.append(hook_name(1, "lorsa.hook_in"))
    for hooks in ([], [(hook_name(0, "lorsa.hook_z"), zero)]):
        runs.append({})
        replacement.run_with_hooks(tokens, mode=graph.mode,
                                   fwd_hooks=hooks + [(x, keep) for x in names])  # fmt: skip
    clean, after = ([run[x] for x in names[:2]] for run in runs)
    x_clean, x_after = (run[names[2]] for run in runs)
    frozen = intervene(replacement, graph, edit, attention_reads=reads)
    free = intervene(replacement, graph, edit, freeze_attention=False, freeze_errors=False,
                     attention_reads=reads)  # fmt: skip
    for j, (layer, head, query, key) in enumerate(reads):
        assert float(frozen.attention[j]) == pytest.approx(float(clean[layer][head, query, key]),
                                                           abs=1e-5)  # fmt: skip
        assert float(free.attention[j]) == pytest.approx(
            float(after[layer][head, query, key]), abs=1e-5
        )
    assert not torch.allclose(free.attention[:4], frozen.attention[:4])  # the edit moved them
    # through each side alone: the layer-1 pattern with the query's vector as after the edit
    # and every key's as clean, then the other way round (built here from whole patterns)
    mixed = side_patterns(replacement.lorsas[1], x_clean, x_after)
    for j, (_, head, query, key) in enumerate(reads[:4]):
        for side in (0, 1):
            assert float(free.attention_by_side[j, side]) == pytest.approx(
                float(mixed[side][head, query, key]), abs=1e-5)  # fmt: skip
    assert not torch.allclose(free.attention_by_side[:4, 0], free.attention_by_side[:4, 1])
    # with attention frozen the pattern is the clean one, through either side
    assert torch.equal(frozen.attention_by_side, frozen.attention[:, None].expand(-1, 2))
    assert intervene(replacement, graph, edit).attention.shape == (0,)
    for bad in ((2, 0, 1, 0), (0, 99, 1, 0), (0, 0, 1, 2), (0, 0, n, 0), (0, 0, 1), (0, 0, 1.0, 0),
                (0, True, 1, 0), "read"):  # fmt: skip
        with pytest.raises(ValueError, match=r"^attention_reads: .{1,80} is (outside the model|"
                                             r"not \(layer)") as info:  # fmt: skip
            intervene(replacement, graph, edit, attention_reads=[bad])
        assert "\n" not in str(info.value)


def test_intervene_many_gives_each_sets_own_rerun(graph, replacement, tokens, monkeypatch):
    """``intervene_many`` reruns several edit sets in batches, each row apart from the others:
    every result is ``intervene``'s for its set alone (logits, prediction, attention reads),
    for every kind of source edited (a head, a feature, an error, a token, a bias node, two at
    once), frozen or free, across batch boundaries. Bad batches are one line."""
    from circuits import interventions as iv

    with_biases = attribute(replacement, tokens, mode=graph.mode, max_logits=3, constants=True)
    ids = with_biases.ids
    first = {k: ids[int(with_biases.is_kind(k).nonzero()[-1])]
             for k in ("lorsa", "transcoder", "embedding", "bias")}  # fmt: skip
    sets = [
        [Intervention(first["lorsa"])],
        [Intervention(first["transcoder"], "clamp", 2.0)],
        [Intervention(first["embedding"], "scale", 0.5)],
        [Intervention(first["bias"])],
        [Intervention(first["lorsa"]), Intervention(first["transcoder"], "scale", 3.0)],
    ]
    if with_biases.is_kind("error").any():
        sets.append([Intervention(ids[int(with_biases.is_kind("error").nonzero()[0])], "scale",
                                  0.0)])  # fmt: skip
    n = len(with_biases.tokens)
    reads = [(1, 0, n - 1, 0), (1, 1, n - 1, n - 2), (0, 0, 2, 1)]
    monkeypatch.setattr(iv, "INTERVENTION_BATCH", 2)  # batches of two: their edges crossed
    for freezes in (
        {},
        {"freeze_attention": False, "freeze_errors": False},
        {"freeze_attention": False, "freeze_layernorm": iv.FINAL_LAYERNORM},
    ):
        many = iv.intervene_many(replacement, with_biases, sets, attention_reads=reads, **freezes)
        assert len(many) == len(sets)
        for edits, got in zip(sets, many, strict=True):
            alone = intervene(replacement, with_biases, edits, attention_reads=reads, **freezes)
            assert got.targets == alone.targets
            torch.testing.assert_close(got.predicted, alone.predicted)
            torch.testing.assert_close(got.actual, alone.actual, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(got.logits, alone.logits, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(got.attention, alone.attention, atol=1e-6, rtol=1e-5)
    # the rows differ: one set's edit does not leak into the next row
    assert not torch.allclose(many[0].actual, many[1].actual)
    for bad, message in (
        (sets[0], "interventions must be a list of Intervention: pass [the intervention]"),
        ("x", "edit_sets must be a list of lists of Intervention, got a str"),
        ([], "no interventions given"),
        ([sets[0], []], "no interventions given"),
    ):
        with pytest.raises((TypeError, ValueError), match=f"^{re.escape(message)}"):
            iv.intervene_many(replacement, with_biases, bad)
    with pytest.raises(ValueError, match="^predicted must be None or one prediction"):
        iv.intervene_many(replacement, with_biases, sets, predicted=[None])


def test_intervene_refuses_a_pruned_graph_and_predict_takes_one(graph, replacement, tokens):
    """Found by a fuzz pass: on a pruned graph ``intervene`` returned a prediction that covered
    only the kept edges, unlike the full graph's, without a word. Refused, as is a graph with
    every node but an edge dropped; ``predict`` (the graph alone) takes either."""
    pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    node = pruned.ids[int(pruned.is_kind("lorsa", "transcoder").nonzero()[0])]
    edit = [Intervention(node)]
    full = intervene(replacement, graph, edit)
    refused = (
        r"^intervene needs the full \(unpruned\) graph of the prompt: pass the graph "
        r"attribute returned \(a pruned graph's node ids name the same nodes in it\)$"
    )
    assert pruned.n_nodes < graph.n_nodes
    with pytest.raises(ValueError, match=refused):
        intervene(replacement, pruned, edit)
    edges = graph.edges.copy()
    edges.data[np.abs(edges.data).argmax()] = 0
    with pytest.raises(ValueError, match=refused):
        intervene(replacement, graph.subgraph(torch.arange(graph.n_nodes), edges=edges), edit)
    assert predict(pruned, edit).shape == (pruned.n_nodes,)
    # a full graph with bias nodes passes, whether the run has them or not
    with_biases = attribute(replacement, tokens, mode=graph.mode, max_logits=3, constants=True)
    plain = run_prompt(replacement, tokens, graph.mode)
    for run in (plain, None):
        same = intervene(replacement, with_biases, edit, run=run)
        torch.testing.assert_close(same.predicted, full.predicted, atol=1e-5, rtol=1e-4)


def test_arguments_of_the_wrong_type_are_refused_naming_them(graph, replacement, tokens):
    """Found by a fuzz pass: a list for ``predicted``, a string for ``run``, None for the graph
    or the replacement set raised an AttributeError from inside, one Intervention not in a
    list a TypeError about iteration, and a NaN prediction stood in the result."""
    edit = [Intervention(graph.ids[int(graph.is_kind("lorsa").nonzero()[0])])]
    cases = [
        (dict(predicted=[0.0] * graph.n_nodes), TypeError,
         "predicted must be a float tensor, predict(graph, interventions)'s, got a list"),
        (dict(predicted=torch.zeros(graph.n_nodes, dtype=torch.long)), TypeError,
         "predicted must be a float tensor"),
        (dict(predicted=torch.full((graph.n_nodes,), float("nan"))), ValueError,
         "predicted has NaN or infinite values at the graph's targets"),
        (dict(run="x"), TypeError, "run must be a circuits.attribution.PromptRun"),
        (dict(graph=None), TypeError, "graph must be a circuits.graph.Graph, got a NoneType"),
        (dict(replacement=None), TypeError,
         "replacement must be a replacement.model.ReplacementModel, got a NoneType"),
        (dict(interventions=edit[0]), TypeError,
         "interventions must be a list of Intervention: pass [the intervention]"),
        (dict(interventions="x"), TypeError, "interventions must be a list of Intervention"),
        (dict(interventions=[edit[0].node]), TypeError, "got a str in it"),
    ]  # fmt: skip
    for change, error, message in cases:
        args = dict(replacement=replacement, graph=graph, interventions=edit) | change
        with pytest.raises(error, match=re.escape(message)):
            intervene(**args)
    for call in (lambda: first_order(None, graph), lambda: first_order(replacement, graph, run=1)):
        with pytest.raises(TypeError, match="must be a"):
            call()
    with pytest.raises(TypeError, match="graph must be a circuits.graph.Graph"):
        predict(None, edit)
    with pytest.raises(TypeError, match="graph must be a circuits.graph.Graph"):
        direct_pre_activations(replacement, "g", torch.ones(1, 3))
    predicted = predict(graph, edit)
    predicted[~graph.is_target & ~graph.is_kind("logit")] = float("nan")  # not read: taken
    kept = intervene(replacement, graph, edit, predicted=predicted)
    assert torch.isfinite(kept.predicted).all()


def test_flags_are_true_or_false(graph, replacement, tokens):
    """Found by a fuzz pass: "no" (truthy) froze attention; a flag is True or False."""
    edit = [Intervention(graph.ids[int(graph.is_kind("lorsa").nonzero()[0])])]
    with pytest.raises(TypeError, match="^freeze_attention must be True or False, got 'no'$"):
        intervene(replacement, graph, edit, freeze_attention="no")
    with pytest.raises(TypeError, match=r"^freeze_layernorm must be True or False \(or None\)"):
        intervene(replacement, graph, edit, freeze_layernorm=1)
    # "final" holds the final LayerNorm's scale alone; any other string is refused
    with pytest.raises(TypeError, match=r"or 'final' \(the final LayerNorm alone\), got 'Final'$"):
        intervene(replacement, graph, edit, freeze_layernorm="Final")
    final = intervene(replacement, graph, edit, freeze_attention=False, freeze_layernorm="final")
    free = intervene(replacement, graph, edit, freeze_attention=False)
    held = intervene(replacement, graph, edit, freeze_attention=False, freeze_layernorm=True)
    assert not torch.equal(final.actual, free.actual) and not torch.equal(final.actual, held.actual)
    with pytest.raises(TypeError, match="^freeze_attention must be True or False, got 'no'$"):
        first_order(replacement, graph, freeze_attention="no")
    with pytest.raises(TypeError, match="^constants must be True or False, got 'yes'$"):
        attribute(replacement, tokens, constants="yes")
    with pytest.raises(TypeError, match="^constants must be True or False, got 1$"):
        run_prompt(replacement, tokens, constants=1)
    assert intervene(replacement, graph, edit, freeze_attention=np.bool_(False)).actual.numel()


def test_first_order_effects_are_the_graph_frozen_and_a_derivative_free(graph, replacement):
    """With attention and LayerNorm frozen, ``a_n dT/da_n`` (autograd through the model) is the
    graph's own prediction for ablating n; free, it is the slope of the measured change."""
    frozen = first_order(replacement, graph, freeze_attention=True)
    free = first_order(replacement, graph)
    logits = graph.is_kind("logit").nonzero().squeeze(1)
    units = graph.is_kind("lorsa", "transcoder").nonzero().squeeze(1).tolist()
    assert frozen.shape == (len(logits), graph.n_nodes)
    others = torch.ones(graph.n_nodes, dtype=torch.bool)
    others[units] = False
    assert not frozen[:, others].any() and not free[:, others].any()
    row = graph.edges[[int(logits[0])]].toarray()[0]
    strongest = [units[i] for i in np.argsort(-np.abs(row[units]))[:3].tolist()]
    for i in units[:: max(1, len(units) // 12)] + strongest:
        edit = [Intervention(graph.ids[i], "ablate")]
        torch.testing.assert_close(-frozen[:, i], predict(graph, edit)[logits],
                                   atol=1e-4, rtol=1e-3)  # fmt: skip
    for i in strongest:
        small = intervene(replacement, graph, [Intervention(graph.ids[i], "scale", 1.001)],
                          freeze_attention=False)  # fmt: skip
        torch.testing.assert_close(small.actual, 1e-3 * free[:, i], atol=1e-4, rtol=5e-2)
    assert not torch.allclose(frozen, free)  # the attention paths count


def test_free_errors_measure_the_original_model_less_the_edited_writes(graph, replacement):
    """``freeze_errors=False`` with attention and LayerNorm free is the original model with the
    edited units' writes taken out where they are written (errors recomputed downstream:
    circuit-tracer's setting, and what the reviewer's "true model" measured, -0.57 where the
    errors-held rerun said +2.26 on ``What is 23+45? It is``). Against the toy model run
    alone with those writes subtracted at the sublayer outputs; errors held, it differs."""
    from circuits.nodes import Kind

    model = replacement.model
    units = graph.is_kind("lorsa", "transcoder").nonzero().squeeze(1).tolist()
    logit = int(graph.is_kind("logit").nonzero()[0])
    row = graph.edges[[logit]].toarray()[0]
    ranked = [units[i] for i in np.argsort(-np.abs(row[units])).tolist()]
    # units of one sublayer: their inputs are clean, so their writes are their clean ones
    chosen = [i for i in ranked if graph.stage[i] == graph.stage[ranked[0]]][:4]
    edits = [Intervention(graph.ids[i], "ablate") for i in chosen]
    live = intervene(replacement, graph, edits, freeze_attention=False, freeze_errors=False)
    held = intervene(replacement, graph, edits, freeze_attention=False)
    tokens = torch.tensor(graph.tokens)[None]
    out: dict[str, torch.Tensor] = {}
    for i in chosen:
        kind, layer = Kind(int(graph.kind[i])), int(graph.layer[i])
        pos, index, act = int(graph.pos[i]), int(graph.index[i]), float(graph.activation[i])
        site = f"blocks.{layer}.hook_{'attn' if kind == Kind.LORSA else 'mlp'}_out"
        dictionary = (replacement.lorsas if kind == Kind.LORSA else replacement.transcoders)[layer]
        write = torch.zeros(len(graph.tokens), model.cfg.d_model)
        write[pos] = act * dictionary.decoder[index].detach()
        out[site] = out.get(site, 0) + write

    def hook(act, hook):
        return act - out[hook.name]

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(n, hook) for n in out])[0, -1]
    if graph.mode == "sparse":  # no errors: the setting changes nothing
        torch.testing.assert_close(live.actual, held.actual)
        return
    torch.testing.assert_close(live.logits, logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(held.logits, logits, atol=1e-3)
    # an edited error node scales its recomputed value
    error = int(graph.is_kind("error").nonzero()[0])
    one = intervene(replacement, graph, [Intervention(graph.ids[error], "scale", 1.0)],
                    freeze_attention=False, freeze_errors=False)  # fmt: skip
    assert one.actual.abs().max() < 1e-5
    with pytest.raises(TypeError, match="freeze_errors must be True or False"):
        intervene(replacement, graph, edits, freeze_errors="no")


# ----------------------------------------------------------------- untrained tokens
def test_a_graph_marks_the_prompt_positions_of_untrained_tokens(replacement, tokens, tmp_path):
    from circuits.graph_file import GraphFileError, _to_file
    from reports.html import html_page
    from toy_models.checkpoint import save_state_atomic

    assert attribute(replacement, tokens).untrained_positions == []  # the model does not say
    unseen = {int(tokens[3]), int(tokens[7])}
    replacement.model.untrained_tokens = frozenset(unseen | {49})
    graph = attribute(replacement, tokens)
    want = [p for p, t in enumerate(tokens.tolist()) if t in unseen]
    assert graph.untrained_positions == want and 3 in want and 7 in want
    note = graph.untrained_note()
    assert f"{graph.token_strings[3]!r}@3" in note and "untrained" in note
    assert prune_graph(graph).untrained_positions == want
    path = tmp_path / "g.safetensors"
    graph.save(path)
    assert Graph.load(path).untrained_positions == want
    assert "Note: the model never saw" in html_page(graph)
    # the mechanism summary holds them too, printed at its head (a reviewer's script reading
    # mechanisms.json never learned of three such positions) and checked on load
    from circuits.mechanism_file import load_summary, save_summary
    from circuits.mechanisms import summarize
    from reports.mechanisms import format_summary, mechanisms_html

    summary = summarize(replacement, graph, run_prompt(replacement, tokens), check=False)
    assert summary.untrained_positions == want and summary.untrained_note() == note
    # (where long, the lines it goes on in: reports.mechanisms.fitted)
    assert " ".join(f"(note: {note})".split()) in " ".join(format_summary(summary).split())
    assert "Note: the model never saw" in mechanisms_html(summary)
    assert html_page(graph, mechanisms=summary).count("the model never saw") == 1  # once
    save_summary(summary, tmp_path / "m.json")
    assert load_summary(tmp_path / "m.json").untrained_positions == want
    d = json.loads((tmp_path / "m.json").read_text())
    for bad in ([len(tokens)], [7, 3], [3, 3], [-1]):
        (tmp_path / "m.json").write_text(json.dumps({**d, "untrained_positions": bad}))
        with pytest.raises(ValueError, match="untrained_positions"):
            load_summary(tmp_path / "m.json")
    for bad in ([len(tokens)], [3, 3], [7, 3], ["3"], None, "3"):
        graph.model["untrained_positions"] = bad
        with pytest.raises(GraphFileError, match="not saved.*untrained_positions"):
            graph.save(path)  # save refuses what load would
        assert Graph.load(path).untrained_positions == want  # the good file stays
        forged = tmp_path / "forged.safetensors"  # written past save's check: load refuses
        tensors, metadata = _to_file(graph)
        save_state_atomic(tensors, forged, metadata=metadata)
        with pytest.raises(GraphFileError, match="untrained_positions"):
            Graph.load(forged)


def test_a_graph_marks_logit_targets_of_untrained_tokens(replacement, tokens, tmp_path):
    """A target token the model never saw (its unembedding untrained) is said, as a prompt
    position holding one is (a reviewer traced '#' at p 3e-8 with nothing said)."""
    from circuits.graph_file import GraphFileError

    replacement.model.untrained_tokens = frozenset({49, 50})
    graph = attribute(replacement, tokens, targets=[LogitTarget(3), LogitDiffTarget(5, 49)])
    assert graph.untrained_targets == [49] and graph.untrained_positions == []
    assert "target token '<49>' never came up in training" in graph.untrained_note()
    from circuits.mechanism_file import load_summary, save_summary
    from circuits.mechanisms import summarize

    summary = summarize(replacement, graph, run_prompt(replacement, tokens), check=False)
    assert summary.untrained_targets == ["<49>"] and summary.untrained_note() == (
        graph.untrained_note())  # fmt: skip
    save_summary(summary, tmp_path / "m.json")
    d = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**d, "untrained_targets": ["<50>"]}))
    with pytest.raises(ValueError, match="untrained_targets: not tokens of the logit"):
        load_summary(tmp_path / "m.json")
    path = tmp_path / "g.safetensors"
    graph.save(path)
    assert Graph.load(path).untrained_targets == [49]
    assert attribute(replacement, tokens, targets=[LogitTarget(3)]).untrained_note() is None
    logits = graph.is_kind("logit").nonzero()[:, 0].tolist()
    others = [i for i in range(graph.n_nodes) if i != logits[1]]
    assert graph.subgraph(others).untrained_targets == []  # the difference's logit dropped
    assert graph.subgraph(others).untrained_note() is None
    graph.model["untrained_targets"] = [50]  # no target's token
    with pytest.raises(GraphFileError, match="untrained_targets"):
        graph.save(path)


@torch.no_grad()
def test_a_head_reads_the_key_its_activation_comes_from_most(graph, replacement):
    """``attends`` is the largest term of each head's z-pattern ``A[q, k] (x_k . w_v + b_V)``
    (computed here from the Lorsa's weights and the run's patterns and inputs: the terms sum to
    its activation), ``attention`` its attention there; on this prompt that is not the
    attention's argmax for some heads (a head parking its attention where its value is small).
    ``key_share`` is that term over the activation (``Graph.read_share``)."""
    run = run_prompt(replacement, torch.tensor(graph.tokens), graph.mode)
    group_size, differ, spread = replacement.lorsas[0].cfg.group_size, 0, 0
    for i in graph.is_kind("lorsa").nonzero().squeeze(1).tolist():
        layer, q, h = int(graph.layer[i]), int(graph.pos[i]), int(graph.index[i])
        lorsa = replacement.lorsas[layer]
        pattern = run.patterns[layer][h // group_size, q, : q + 1]
        z = pattern * (run.lorsa_in[layer][: q + 1] @ lorsa.W_V[h] + lorsa.b_V[h])
        assert float(z.sum()) == pytest.approx(float(graph.activation[i]), rel=1e-4, abs=1e-5)
        assert int(graph.attends[i]) == int(z.argmax()) and graph.read_key(i) == int(z.argmax())
        assert float(graph.attention[i]) == pytest.approx(float(pattern[int(z.argmax())]))
        # the share of the activation that key's term is (names say it below SPREAD_SHARE)
        share = float(z.max() / z.sum())
        assert graph.read_share(i) == pytest.approx(share, rel=1e-4)
        spread += share < SPREAD_SHARE
        differ += int(z.argmax()) != int(pattern.argmax())
    assert differ > 0
    assert spread > 0  # heads that spread what they write over many keys: named with it
    assert all(graph.read_share(i) is None for i in graph.is_kind("lorsa").logical_not()
               .nonzero().squeeze(1).tolist())  # fmt: skip


def test_a_head_whose_key_brings_little_of_its_activation_is_named_with_that_share(graph):
    """A head (or head group) reads the key of its largest term; where that term is under
    ``SPREAD_SHARE`` of its activation, every name says how much it is: the node's and the
    automatic group's (the members' summed terms at the key over their summed activation), the
    label and the box's second line (a reviewer read a head with a flat pattern over 21 keys as
    reading one of them, which brought 12% of what it wrote)."""
    from circuits.groups import auto_groups, node_name, spread_note, spread_percent

    # rounded down, so that a share under half never reads as half (a float32 0.29: 29%)
    assert spread_percent(0.4996) == "49%" and spread_percent(float(torch.tensor(0.29))) == "29%"
    assert spread_percent(0.5) is None and spread_percent(None) is None
    from reports.labels import node_label, short_label_lines

    heads = graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
    for i in heads:
        share = graph.read_share(i)
        spread = share < SPREAD_SHARE
        note = f" (brings {spread_percent(share)})"
        assert spread_note(share) == (note if spread else "")
        assert node_name(graph, i).endswith(note) == spread
        assert (note in node_label(graph, i)) == spread
        assert short_label_lines(graph, i)[1].startswith(f"{spread_percent(share)}→") == spread
    view = auto_groups(graph)
    seen = 0
    for grp in view.groups:
        if grp.kind != "lorsa":
            continue
        act = graph.activation[grp.members].double()
        share = float((graph.key_share[grp.members].double() * act).sum() / act.sum())
        assert grp.key_share == pytest.approx(share, rel=1e-6)
        assert (f" (brings {spread_percent(share)})" in grp.name) == (share < SPREAD_SHARE)
        seen += share < SPREAD_SHARE
    assert seen > 0
    other = next(i for i in heads if graph.attends[i] != graph.attends[heads[0]])
    view = group(graph, [heads[0], other], "two keys")
    assert view.groups[view.group_of(other)].key_share is None  # no one key they read
    view = group(graph, [heads[0]], "one")
    assert view.groups[view.group_of(heads[0])].key_share == graph.read_share(heads[0])


def test_a_graph_attribute_builds_is_known_to_close_without_a_second_pass(graph, replacement):
    """``attribute`` sums every row as it builds it, so it records the graph as closing
    (``circuits.prune.remember_closed``): ``intervene``'s and the flows' full-graph checks then
    cost no pass over the edges (1.7 s at 127 tokens). Only those very arrays: a graph whose
    edges are edited afterwards is checked again, and refused when a row no longer closes."""
    from circuits.interventions import check_full_graph
    from circuits.prune import known_closed

    assert known_closed(graph)
    edited = graph.subgraph(torch.arange(graph.n_nodes), edges=graph.edges.copy())
    assert not known_closed(edited)
    check_full_graph(edited)  # summed, found to close, remembered
    assert known_closed(edited)
    broken = graph.edges.copy()
    broken.data[np.abs(broken.data).argmax()] = 0
    broken = graph.subgraph(torch.arange(graph.n_nodes), edges=broken)
    with pytest.raises(ValueError, match="incoming edges and bias sum to"):
        check_full_graph(broken)
    assert not known_closed(broken)
