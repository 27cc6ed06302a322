"""The head taxonomy (reports.heads): key rules and scores on hand-made patterns, scores against
brute force through ``LorsaLayer.contributions``, ablations that zero exactly the heads asked
for, BOS masking that renormalises exactly, group testing against exhaustive ablation (several
tasks at once, both tests), the successor OV test on a constructed head, the direct-effect
account against the model's own terms, probes on corpus spans, the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from replacement.lorsa import LorsaConfig, LorsaLayer
from replacement.model import hook_name
from reports import heads as H
from reports.heads.report import (
    RANDOM_FLOOR,
    _account_section,
    _ratio_text,
    _successor_truth_lines,
    _sweep_row_text,
    _sweep_section,
)
from toy_models.files import write_set_record


def hand_probe(ids: list[int], corpus: str = "repeat") -> H.ProbeDoc:
    """A probe document with every generic family's keys and a target on every token."""
    probe = H.ProbeDoc(corpus, ids)
    probe.keys["previous_token"] = H.previous_token_keys(ids)
    probe.keys["local_context"] = H.local_context_keys(ids)
    probe.keys["attention_sink"] = H.sink_keys(ids)
    probe.keys["duplicate_token"] = H.duplicate_token_keys(ids)
    probe.keys["induction"] = H.induction_keys(ids)
    probe.targets["all_tokens"] = list(range(1, len(ids)))
    return probe


@pytest.fixture
def probes():
    rng = random.Random(0)
    docs = []
    for _ in range(3):
        segment = [rng.randrange(1, 50) for _ in range(6)]
        ids = [0, *segment, rng.randrange(1, 50), *segment][:16]
        probe = hand_probe(ids)
        # Two successor queries, so that the OV check runs too.
        probe.keys["successor"] = {3: [2], 5: [4]}
        probe.successor_token = {3: ids[4], 5: ids[6]}
        docs.append(probe)
    return {"repeat": docs}


# ----------------------------------------------------------------- the package
def test_every_public_name_resolves_to_its_module():
    import importlib

    for name in H.__all__:
        value = getattr(H, name)
        assert not isinstance(value, type(H)), f"{name} is shadowed by a submodule"
        module = importlib.import_module(f"reports.heads.{H._MODULE_OF[name]}")
        assert getattr(module, name) is value
    with pytest.raises(AttributeError, match="no attribute 'CORPUS'"):
        H.CORPUS  # noqa: B018  (the corpus families are toy_models.data.FAMILIES)


# ----------------------------------------------------------------- key rules
def test_key_rules():
    ids = [0, 5, 6, 7, 5, 6, 7]
    assert H.previous_token_keys(ids) == {q: [q - 1] for q in range(2, 7)}
    assert H.sink_keys(ids) == {q: [0] for q in range(2, 7)}
    # the three tokens before the query, fewer near the start, never BOS or the query
    assert H.local_context_keys(ids) == {2: [1], 3: [1, 2], 4: [1, 2, 3], 5: [2, 3, 4],
                                         6: [3, 4, 5]}  # fmt: skip
    assert H.local_context_keys(ids, window=1) == H.previous_token_keys(ids)
    assert H.duplicate_token_keys(ids) == {4: [1], 5: [2], 6: [3]}
    assert H.induction_keys(ids) == {4: [2], 5: [3], 6: [4]}
    assert H.induction_keys(ids, allowed={3}) == {5: [3]}
    # q - 1 belongs to the previous-token family alone, BOS to the sink alone.
    assert H.duplicate_token_keys([0, 5, 5, 5]) == {3: [1]}
    assert H.induction_keys([0, 5, 5, 5]) == {}
    assert H.duplicate_token_keys([0, 0, 9, 0]) == {3: [1]}


# ----------------------------------------------------------------- scores
def constructed_scores(pattern, values, z, probe: H.ProbeDoc, family: str) -> H.FamilyScores:
    n = pattern.shape[-1]
    mask, queries = H.key_masks([probe], family, n)
    s = H.FamilyScores.zeros(values.shape[-1])
    s.add(
        H.key_mass(pattern, values, mask),
        H.key_mass(pattern, values),
        (z > 0) & queries[..., None],
        probe.corpus,
    )
    return s


def test_scores_on_constructed_patterns():
    """QK head 0 is a pure previous-token diagonal, QK head 1 puts all attention on BOS, QK
    head 2 splits it half and half; two OV heads each (the second one of QK head 0 silent)."""
    n = 6
    previous = torch.zeros(n, n)
    previous[0, 0] = 1
    previous[torch.arange(1, n), torch.arange(n - 1)] = 1
    bos = torch.zeros(n, n)
    bos[:, 0] = 1
    half = (previous + bos) / 2
    pattern = torch.stack([previous, bos, half])[None]  # batch qk q k
    values = torch.ones(1, n, 6)
    z = torch.ones(1, n, 6)
    z[..., 1] = 0  # never active: no evidence at all
    probe = hand_probe([0, 3, 4, 5, 6, 7])
    prev = constructed_scores(pattern, values, z, probe, "previous_token")
    sink = constructed_scores(pattern, values, z, probe, "attention_sink")
    torch.testing.assert_close(prev.score, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(sink.score, torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.5]))
    assert prev.active.tolist() == [4, 0, 4, 4, 4, 4]  # queries 2..5
    assert prev.best_at[0] == ("repeat", 0, 2)
    # A key with a negative value contributes no positive mass: the half-and-half head whose
    # value is negative on BOS reads only its previous token.
    values[0, 0, 5] = -1.0
    prev = constructed_scores(pattern, values, z, probe, "previous_token")
    assert prev.score[5] == pytest.approx(1.0)


def test_local_context_scores_a_spread_over_the_tokens_before():
    """QK head 0 spreads over the two tokens before the query (a local-context head, half a
    previous-token head), QK head 1 reads the query itself, QK head 2 the token 4 back."""
    n = 8
    q = torch.arange(n)
    spread, itself, far = torch.zeros(n, n), torch.eye(n), torch.zeros(n, n)
    spread[q[2:], q[1:-1]] = spread[q[2:], q[:-2]] = 0.5
    spread[:2, 0] = 1
    far[q[4:], q[:-4]] = 1
    far[:4, 0] = 1
    pattern = torch.stack([spread, itself, far])[None]
    values, z = torch.ones(1, n, 3), torch.ones(1, n, 3)
    probe = hand_probe(list(range(n)))
    local = constructed_scores(pattern, values, z, probe, "local_context")
    prev = constructed_scores(pattern, values, z, probe, "previous_token")
    # at q = 2 the token before-before is BOS, which is the sink's: half the mass there
    assert local.score.tolist() == pytest.approx([11 / 12, 0.0, 0.0])
    assert prev.score[0] == pytest.approx(0.5)


def test_key_mass_is_the_positive_part_of_contributions():
    torch.manual_seed(0)
    lorsa = LorsaLayer(LorsaConfig(8, n_qk_heads=2, n_ov_heads=6, d_qk=4, top_k=3))
    with torch.no_grad():
        for p in lorsa.parameters():
            p.normal_(std=0.5)
        x = torch.randn(1, 7, 8)
        mask = torch.rand(1, 7, 7) < 0.4
        mass = H.key_mass(lorsa.patterns(x), lorsa.values(x), mask)
        for q in range(7):
            c = lorsa.contributions(x[0], q, torch.arange(6))  # heads key
            expected = (c.clamp(min=0) * mask[0, q, : q + 1]).sum(-1)
            torch.testing.assert_close(mass[0, q], expected)


def test_score_heads_equals_brute_force(replacement, probes):
    """Every family's sums against per-query ``LorsaLayer.contributions``, and the successor
    OV check against the head's own logit effects (``W_O`` through the demeaned ``W_U``)."""
    scores = H.score_heads(replacement, probes, batch_size=2, progress=False)
    W_U = replacement.model.W_U
    unembed = (W_U - W_U.mean(1, keepdim=True)).T
    unembed = unembed - unembed.mean(1, keepdim=True)  # what ln_final lets through
    for l, lorsa in enumerate(replacement.lorsas):
        top = (lorsa.W_O @ unembed.T).topk(H.SUCCESSOR_TOP, dim=1).indices
        for family in ("previous_token", "duplicate_token", "induction", "successor"):
            expected, total = torch.zeros(8), torch.zeros(8)
            for probe in probes["repeat"]:
                tokens = torch.tensor([probe.ids])
                with torch.no_grad():
                    _, cache = replacement.run_with_cache(tokens, mode="local")
                x = cache[hook_name(l, "lorsa.hook_in")][0]
                z = cache[hook_name(l, "lorsa.hook_z")][0]
                for q, keys in probe.keys[family].items():
                    with torch.no_grad():
                        c = lorsa.contributions(x, q, torch.arange(8)).clamp(min=0)
                    active = z[q] > 0
                    gain = c[:, keys].sum(-1)
                    if family == "successor":
                        gain = gain * (top == probe.successor_token[q]).any(1)
                    expected += gain * active
                    total += c.sum(-1) * active
            s = scores.families[family][l]
            torch.testing.assert_close(s.expected, expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(s.total, total, atol=1e-5, rtol=1e-4)
        # The sink: its QK group's attention on BOS, over every probe query, active or not.
        expected, active = torch.zeros(8), torch.zeros(8)
        for probe in probes["repeat"]:
            with torch.no_grad():
                _, cache = replacement.run_with_cache(torch.tensor([probe.ids]), mode="local")
                x = cache[hook_name(l, "lorsa.hook_in")][0]
                z = cache[hook_name(l, "lorsa.hook_z")][0]
                for q in probe.keys["attention_sink"]:
                    pattern = lorsa.patterns(x[None, : q + 1])[0, :, q, 0]
                    expected += pattern.repeat_interleave(lorsa.cfg.group_size)
                    active += z[q] > 0
        s = scores.families["attention_sink"][l]
        n_queries = sum(len(p.keys["attention_sink"]) for p in probes["repeat"])
        torch.testing.assert_close(s.expected, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(s.total, torch.full((8,), float(n_queries)))
        torch.testing.assert_close(s.active, active)


def test_an_example_at_a_silent_query_says_the_head_is_silent(replacement, probes, tokenizer):
    """A sink's example is where it rests on BOS most, often where it is silent: a review read
    "n/a of z from the key" there. The example records the head's ``z`` (the local run's
    ``hook_z``), no share of a z that is 0, and the page says the head writes nothing there."""
    from reports.heads.report import _per_layer

    scores = H.score_heads(replacement, probes, progress=False)
    cache = {}
    for j, probe in enumerate(probes["repeat"]):
        with torch.no_grad():
            cache[j] = replacement.run_with_cache(torch.tensor([probe.ids]), mode="local")[1]
    silent = 0
    for l in range(len(replacement.lorsas)):
        for h in range(8):
            ex = H.example(replacement, tokenizer, scores, probes, "attention_sink", l, h)
            z = float(cache[ex["doc"]][hook_name(l, "lorsa.hook_z")][0, ex["query"], h])
            assert ex["z"] == pytest.approx(z, abs=1e-6)
            assert (ex["share_of_z"] is None) == (z == 0)
            silent += z == 0
            if z == 0:
                example_at_silence = ex
    assert silent  # the tiny model has such heads: the case is tried
    head = {"layer": 0, "head": 1, "score": 0.9, "active": 12, "example": example_at_silence}
    results = {"n_ov_heads": [8], "families": {
        f: {"heads": [head] if f == "attention_sink" else [], "min_layer": 0}
        for f in H.HEAD_FAMILIES}}  # fmt: skip
    row = next(line for line in _per_layer(results) if line.startswith("| attention_sink"))
    assert "n/a" not in row and "silent there, z = 0: it writes nothing" in row
    assert f"its attention on the key {example_at_silence['attention']:.2f}" in row


def test_labels_follow_thresholds_and_min_layer():
    def fam(score, active):
        s = H.FamilyScores.zeros(len(score))
        s.expected, s.total, s.active = torch.tensor(score), torch.ones(len(score)), active
        return s

    active = torch.tensor([20.0, 20.0, 2.0, 20.0])
    per_layer = [fam([0.9, 0.4, 0.9, 0.6], active), fam([0.6, 0.95, 0.1, 0.5], active)]
    scores = H.HeadScores({f: per_layer for f in H.HEAD_FAMILIES}, {})
    labelled = H.labels(scores)
    # head 2 of layer 0 has the score but too few active queries; ordered by score
    assert labelled["previous_token"] == {0: [0, 3], 1: [1, 0, 3]}
    assert labelled["induction"] == {0: [], 1: [1, 0, 3]}  # no induction at layer 0


# ----------------------------------------------------------------- ablation
@pytest.fixture
def batch(replacement, probes):
    return H.task_batch(replacement, probes["repeat"], "all_tokens")


def test_clean_run_is_the_original_model(replacement, batch):
    """Sparse mode plus the clean errors is local mode: the original model, to rounding."""
    with torch.no_grad():
        original = replacement.model(batch.tokens)
    torch.testing.assert_close(
        H.ablated_logits(replacement, batch, {}), original, rtol=1e-5, atol=1e-5
    )


def test_ablation_zeroes_exactly_the_heads(replacement, batch):
    heads = {0: [1, 5], 1: [2]}
    seen = {}

    def capture(z, hook):
        seen[hook.name] = z.clone()

    hooks = H.ablation_hooks(batch, heads) + [
        (hook_name(l, "lorsa.hook_z"), capture) for l in range(2)
    ]
    replacement.run_with_hooks(batch.tokens, mode="sparse", fwd_hooks=hooks)
    for l, hs in heads.items():
        z = seen[hook_name(l, "lorsa.hook_z")]
        assert (z[..., hs] == 0).all()
    # The layer's output moves by exactly the head's term z w_o (errors held at clean values).
    with torch.no_grad():
        clean = replacement.run_with_cache(batch.tokens, mode="local")[1]
        replacement.run_with_hooks(
            batch.tokens,
            mode="sparse",
            fwd_hooks=H.ablation_hooks(batch, {1: [2]})
            + [(hook_name(1, "hook_attn_out"), lambda x, hook: seen.__setitem__("out", x))],
        )
    z = clean[hook_name(1, "lorsa.hook_z")][..., 2, None]
    assert z.abs().sum() > 0  # the head does fire
    torch.testing.assert_close(
        seen["out"] - clean[hook_name(1, "hook_attn_out")],
        -z * replacement.lorsas[1].W_O[2],
        atol=1e-5,
        rtol=1e-4,
    )


def test_ablation_from_a_layer_equals_the_full_run(replacement, batch):
    heads = {1: [0, 3]}
    full = replacement.run_with_hooks(
        batch.tokens, mode="sparse", fwd_hooks=H.ablation_hooks(batch, heads)
    )
    torch.testing.assert_close(H.ablated_logits(replacement, batch, heads), full)


def test_silent_heads_are_skipped_and_change_nothing(replacement, batch):
    for l, active in enumerate(batch.active["all_tokens"]):
        silent = (~active).nonzero().flatten().tolist()
        if silent:
            clean = H.task_loss(replacement, [batch], {})
            assert H.task_loss(replacement, [batch], {l: silent}) == clean


def test_what_a_run_keeps_for_the_next_changes_no_bit(replacement, batch):
    """A batch keeps what a run's first layer computed from its clean input (the Lorsa
    pre-activations, the BOS-masked ones) for the next run: every run gives the logits that
    a run on a fresh batch (nothing kept) gives, bit for bit, also after runs on other
    layers and tests, and a run starting lower (another input there) is never served them."""
    import dataclasses

    runs = [({1: [0, 3]}, "zero"), ({1: [2]}, "zero"), ({1: [2, 5]}, "mask_bos"),
            ({0: [1]}, "zero"), ({1: [0, 3]}, "zero"), ({1: [5]}, "mask_bos"),
            ({0: [4], 1: [0, 3]}, "zero"), ({0: [1], 1: [2]}, "mask_bos"),
            ({}, "zero")]  # fmt: skip
    method = type(replacement.lorsas[1]).pre_activations
    for heads, test in runs:
        kept = H.ablated_logits(replacement, batch, heads, test)
        fresh = H.ablated_logits(replacement, dataclasses.replace(batch, memo={}), heads, test)
        assert torch.equal(kept, fresh), (heads, test)
        assert all("pre_activations" not in vars(lorsa) for lorsa in replacement.lorsas)
    assert set(batch.memo) == {"mask_bos"}
    assert type(replacement.lorsas[1]).pre_activations is method


def test_random_like_draws_from_the_same_layers():
    heads = {0: [1, 2, 3], 2: [7]}
    pools = [list(range(10)), list(range(10)), [7, 8]]
    a = H.random_like(heads, pools, [10, 10, 10], random.Random(3))
    b = H.random_like(heads, pools, [10, 10, 10], random.Random(3))
    assert a == b and set(a) == {0, 2}
    assert len(a[0]) == 3 and not set(a[0]) & {1, 2, 3}
    assert a[2] == [8]


def test_group_testing_matches_exhaustive_ablation(replacement, batch):
    clean = H.task_loss(replacement, [batch], {})
    effects, runs = H.single_head_effects(replacement, [batch], delta=-1e9, chunk=4)
    active = H.active_heads([batch])
    assert set(effects) == {"all_tokens"}
    assert set(effects["all_tokens"]) == {(l, h) for l, hs in enumerate(active) for h in hs}
    for (l, h), effect in effects["all_tokens"].items():
        assert effect == pytest.approx(H.task_loss(replacement, [batch], {l: [h]}) - clean)
    _, few_runs = H.single_head_effects(replacement, [batch], delta=1e9, chunk=4)
    assert few_runs < runs


@pytest.mark.parametrize("test", H.TESTS)
def test_group_testing_of_several_tasks_keeps_each_tasks_books(replacement, probes, test):
    """Two tasks on the same documents share the runs; each head's effect on each task is its
    own exact single-head effect (zeroing, or BOS masking, which tries silent heads too)."""
    docs = probes["repeat"]
    for p in docs:
        p.targets["early"] = [t for t in p.targets["all_tokens"] if t < 8]
    both = H.task_batch(replacement, docs, ["all_tokens", "early"])
    clean = H.task_losses(replacement, [both], {})
    assert set(clean) == {"all_tokens", "early"}
    effects, runs = H.single_head_effects(replacement, [both], delta=-1e9, chunk=4, test=test)
    pools = H.active_heads([both]) if test == "zero" else [list(range(8))] * 2
    heads = {(l, h) for l, hs in enumerate(pools) for h in hs}
    assert set(effects) == {"all_tokens", "early"}
    for task in ("all_tokens", "early"):
        assert set(effects[task]) == heads
        for (l, h), effect in list(effects[task].items())[:6]:
            loss = H.task_loss(replacement, [both], {l: [h]}, test, task=task)
            assert effect == pytest.approx(loss - clean[task])
    # One task's own batch, cut to its rows and columns, measures the same loss.
    early = both.select(["early"])
    assert early.tokens.shape[1] == 8 and early.tasks == ["early"]
    assert H.task_loss(replacement, [early], {1: [0, 3]}, test) == pytest.approx(
        H.task_loss(replacement, [both], {1: [0, 3]}, test, task="early"), rel=1e-5
    )
    with pytest.raises(ValueError, match="several tasks"):
        H.task_loss(replacement, [both], {})


@pytest.mark.parametrize("test", H.TESTS)
def test_merged_batches_measure_what_each_batch_measures(replacement, probes, test):
    docs = probes["repeat"]
    for p in docs:
        p.targets["early"] = [t for t in p.targets["all_tokens"] if t < 8]
    first = H.task_batch(replacement, docs[:2], "all_tokens")
    second = H.task_batch(replacement, docs[2:], "early").select(["early"])
    assert second.tokens.shape[1] == 8 < first.tokens.shape[1]
    merged = H.merge([first, second])
    assert merged.tokens.shape == (3, first.tokens.shape[1])
    heads = {0: [1, 6], 1: [2]}
    separate = H.task_losses(replacement, [first, second], heads, test)
    together = H.task_losses(replacement, [merged], heads, test)
    assert together == pytest.approx(separate, rel=1e-5)
    assert all(map(torch.equal, merged.active["early"], second.active["early"]))


# ----------------------------------------------------------------- the sink test
def test_bos_masking_renormalises_onto_the_other_keys():
    """A QK head whose every query attends (almost) only to BOS: with BOS taken away the
    pattern is the softmax over the other keys, here uniform, so ``z~`` is their mean value;
    and on random weights it is the pattern with BOS zeroed and each row renormalised."""
    torch.manual_seed(0)
    d, n = 6, 7
    lorsa = LorsaLayer(LorsaConfig(d, n_qk_heads=2, n_ov_heads=4, d_qk=3, top_k=2))
    x = torch.randn(1, n, d)
    x[0, :, 0] = 0.0
    x[0, 0, 0] = 1.0  # only BOS has the first coordinate
    with torch.no_grad():
        lorsa.W_Q.zero_(), lorsa.W_K.zero_(), lorsa.b_K.zero_()
        lorsa.b_Q.fill_(1.0)
        lorsa.W_K[0, 0] = 40.0  # QK head 0: a score of 40 * sqrt(3) on BOS, 0 elsewhere
        pattern = lorsa.patterns(x)
        assert (pattern[0, 0, :, 0] > 0.999).all()
        masked = H.bos_masked_pre(lorsa, x, [0, 1, 3])
        values = lorsa.values(x)[0]
        for q in range(1, n):
            torch.testing.assert_close(masked[0, q, :2], values[1 : q + 1, :2].mean(0))
        torch.testing.assert_close(masked[0, 0], lorsa.pre_activations(x)[0, 0, [0, 1, 3]])
        # Random weights: the pattern with BOS zeroed and renormalised, for head 3 (QK head 1).
        for p in lorsa.parameters():
            p.normal_()
        renorm = lorsa.patterns(x).clone()
        renorm[:, :, 1:, 0] = 0
        renorm = renorm / renorm.sum(-1, keepdim=True)
        torch.testing.assert_close(
            H.bos_masked_pre(lorsa, x, [3, 0]), lorsa.pre_activations(x, renorm)[..., [3, 0]]
        )


def test_bos_masking_changes_only_the_heads_asked_for(replacement, batch):
    seen = {}

    def capture(pre, hook):
        seen[hook.name] = pre.clone()

    name = hook_name(1, "lorsa.hook_pre")
    with torch.no_grad():
        replacement.run_with_hooks(batch.tokens, mode="local", fwd_hooks=[(name, capture)])
        clean = seen.pop(name)
        hooks = H.ablation_hooks(batch, {1: [2, 5]}, "mask_bos", replacement.lorsas)
        replacement.run_with_hooks(batch.tokens, mode="sparse", fwd_hooks=hooks + [(name, capture)])
    changed = (seen[name] - clean).abs().amax((0, 1)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [2, 5]
    x = replacement.run_with_cache(batch.tokens, mode="local")[1][hook_name(1, "lorsa.hook_in")]
    torch.testing.assert_close(
        seen[name][..., [2, 5]], H.bos_masked_pre(replacement.lorsas[1], x, [2, 5])
    )
    with pytest.raises(ValueError, match="unknown test"):
        H.ablation_hooks(batch, {1: [2]}, "scramble")


def test_every_task_controls(replacement, probes):
    """The sink's test runs its controls on every corpus batch; each task gets its ratio and
    the headline is the family's own task's row."""
    for p in probes["repeat"]:
        p.targets["repeat_second_copy"] = p.targets["all_tokens"][8:]
    corpus = [H.task_batch(replacement, probes["repeat"], ["all_tokens", "repeat_second_copy"])]
    batches = {t: H.for_tasks(corpus, [t]) for t in ("all_tokens", "repeat_second_copy")}
    clean = {t: H.task_loss(replacement, b, {}) for t, b in batches.items()}
    out = H.family_ablation(replacement, batches, clean, {0: [1, 2], 1: [4]}, "all_tokens", 2, 0,
                            "mask_bos", corpus, every_task=True)  # fmt: skip
    assert set(out["every_task"]) == {"all_tokens", "repeat_second_copy"}
    row = out["every_task"]["all_tokens"]
    assert out["increase"] == row["increase"] and out["random_mean"] == row["random_mean"]
    assert out["increase"] == pytest.approx(
        H.task_loss(replacement, batches["all_tokens"], {0: [1, 2], 1: [4]}, "mask_bos")
        - clean["all_tokens"], abs=1e-6
    )  # fmt: skip
    assert set(out["other_tasks"]) == {"repeat_second_copy"}
    assert out["matched_random_mean"] == sum(out["matched_random_increases"])
    assert out["tasks_met"] == [t for t, r in out["every_task"].items() if r["meets_target"]]
    assert len(out["random_increases"]) == 2 and len(out["matched_random_increases"]) == 1


def test_threshold_sweep_tests_each_new_set_of_heads(replacement, probes):
    """A family that misses is labelled again at the other thresholds: each new set of heads
    (not the verdict's, not the one below it again) gets the family's own test, exactly; the
    sweep ends where no head passes; the report shows it."""

    def fam(score):
        s = H.FamilyScores.zeros(8)
        s.expected, s.total = torch.tensor(score + [0.0] * (8 - len(score))), torch.ones(8)
        s.active = torch.full((8,), 20.0)
        return s

    per_layer = [fam([0.95, 0.75, 0.45, 0.25, 0.1]), fam([0.35, 0.72])]
    scores = H.HeadScores({f: per_layer for f in H.HEAD_FAMILIES}, {})
    corpus = [H.task_batch(replacement, probes["repeat"], "all_tokens")]
    batches = {"all_tokens": corpus}
    clean = {"all_tokens": H.task_loss(replacement, corpus, {})}
    settings = H.Settings(draws=2)
    sweep = H.threshold_sweep(replacement, scores, probes, batches, clean, "previous_token",
                              settings)  # fmt: skip
    assert (sweep["task"], sweep["test"], sweep["verdict_threshold"]) == ("all_tokens", "zero", 0.5)
    # 0.5 is the verdict's (L0 0, 1; L1 1), 0.6 and 0.7 label the same heads, 0.9 as 0.8
    assert [r["score"] for r in sweep["rows"]] == [0.2, 0.3, 0.4, 0.8]
    listed = {r["score"]: r["listed"] for r in sweep["rows"]}
    assert listed == {
        0.2: [[0, 0], [0, 1], [0, 2], [0, 3], [1, 1], [1, 0]],
        0.3: [[0, 0], [0, 1], [0, 2], [1, 1], [1, 0]],
        0.4: [[0, 0], [0, 1], [0, 2], [1, 1]],
        0.8: [[0, 0]],
    }
    for row in sweep["rows"]:
        heads: dict[int, list[int]] = {}
        for l, h in row["listed"]:
            heads.setdefault(l, []).append(h)
        assert row["heads"] == len(row["listed"]) and sum(row["per_layer"]) == row["heads"]
        assert row["increase"] == pytest.approx(
            H.task_loss(replacement, corpus, heads) - clean["all_tokens"], abs=1e-6
        )
        assert row["met"] == row["meets_target"] and "ov_test" not in row
    # the successor family is also OV-tested at each threshold; above every score: no rows
    more = batches | {"successor_items": corpus}
    more_clean = {"successor_items": clean["all_tokens"]}
    succ = H.threshold_sweep(replacement, scores, probes, more, more_clean, "successor", settings)
    assert all("ov_test" in r and not r["met"] for r in succ["rows"])  # no successor probes
    high = H.HeadScores({f: [fam([0.1]), fam([0.15])] for f in H.HEAD_FAMILIES}, {})
    assert H.threshold_sweep(replacement, high, probes, batches, clean, "previous_token",
                             settings)["rows"] == []  # fmt: skip
    text = "\n".join(_sweep_section({
        "settings": {"ratio_target": 5.0, "truth_delta": 0.01, "successor_ov_target": 0.5},
        "threshold_sweeps": {"previous_token": sweep, "successor": succ},
    }))  # fmt: skip
    assert "| 0.8 | 1 | [1, 0] |" in text and "L0H0" in text


def test_a_ratio_to_a_random_control_of_about_nothing_is_not_printed():
    """A reviewer read `4853543.8` and `18523.8x random` against a control printed 0.0000, and
    `n/ax random` where there was no ratio: below ``RANDOM_FLOOR`` nats the control is said to
    be about zero, and a missing ratio carries no unit."""
    assert _ratio_text(12.34, 0.01) == "12.3"
    assert _ratio_text(12.34, 0.01, unit="x random") == "12.3x random"
    # a ratio that rounds to zero keeps its sign and first digit ("-0.0" read as nothing)
    assert _ratio_text(-0.034, 0.01) == "-0.03" and _ratio_text(0.04, 0.01) == "0.04"
    assert _ratio_text(0.0, 0.01) == "0.0"
    assert _ratio_text(4853543.8, RANDOM_FLOOR / 2) == "random ≈ 0"
    assert _ratio_text(-3.0, -RANDOM_FLOOR / 2) == "random ≈ 0"
    assert _ratio_text(None, 0.0, unit="x active") == "n/a"
    row = {"score": 0.2, "heads": 1, "increase": 0.0004, "random_mean": 2e-8,
           "ratio": 18523.8, "matched_random_mean": -0.01, "matched_ratio": None,
           "met": False}  # fmt: skip
    text = _sweep_row_text(row)
    assert "random ≈ 0 (n/a)" in text and "18523" not in text and "n/ax" not in text


def test_a_control_under_the_floor_is_printed_under_it():
    """A review read `0.0010 | random ≈ 0` for a sink control of 0.00098: the number, rounded
    up to the floor, said the control reached it while the ratio said it did not. Under
    ``RANDOM_FLOOR`` a control is printed to two significant digits, in every table."""
    from reports.heads.report import _every_task_section, _evidence

    a = {"n_heads": 3, "test": "mask_bos", "task": "all_tokens", "increase": 0.041,
         "random_mean": 0.00098, "ratio": 41.8, "tasks_met": ["all_tokens"],
         "every_task": {"all_tokens": {"increase": 0.041, "random_mean": 0.00098,
                                       "ratio": 41.8, "meets_target": True},
                        "answer_units": {"increase": 0.02, "random_mean": 0.0012,
                                         "ratio": 16.7, "meets_target": True}}}  # fmt: skip
    results = {
        "settings": {"ratio_target": 5.0, "truth_delta": 0.01},
        "ablation": {f: a if f == "attention_sink" else {} for f in H.HEAD_FAMILIES},
        "families": {"attention_sink": {"total": 3}},
        "found": {"attention_sink": True}, "successor_ov": {}, "detectors": {}, "truth": {},
    }  # fmt: skip
    text = "\n".join(_every_task_section(results))
    assert "| `all_tokens` | 0.0410 | 0.00098 | random ≈ 0 | yes |" in text
    assert "| `answer_units` | 0.0200 | 0.0012 | 16.7 | yes |" in text
    assert "0.0010" not in text
    evidence = _evidence(results, "attention_sink")
    assert "vs 0.00098 for random heads (ratio random ≈ 0" in evidence


def test_precision_recall():
    r = H.precision_recall({(0, 1), (0, 2), (1, 3)}, {(0, 1), (1, 4)})
    assert (r["precision"], r["recall"]) == (pytest.approx(1 / 3), 0.5)
    assert H.precision_recall(set(), {(0, 1)})["precision"] is None


# ----------------------------------------------------------------- the successor OV test
def test_successor_ov_on_a_constructed_head(replacement):
    """Head 5 of layer 1 reads one item's residual (its ``w_v`` is that residual) and writes
    the unembedding direction of a chosen token: the OV test finds that token at rank 0 for
    the item, and nothing for a head that writes elsewhere; ties count against a token."""
    torch.manual_seed(0)
    rw = replacement.read_write()
    lorsa = replacement.lorsas[1]
    x_item = torch.randn(24)
    self_rank = (rw.unembed @ rw.unembed.T).argmax(1)
    successor = int((self_rank == torch.arange(50)).nonzero()[0])  # u_s . u_s is row s's top
    with torch.no_grad():
        lorsa.W_V[5] = x_item / x_item.norm() ** 2
        lorsa.b_V[5] = 0.0
        lorsa.W_O[5] = rw.unembed[successor]
    rw = replacement.read_write()  # recomputed: the weights changed
    inputs = [torch.zeros(1, 24), x_item[None]]
    logits = H.ov_logits(replacement, inputs, {1: [5]})
    torch.testing.assert_close(logits[0], rw.unembed @ rw.lorsa_write[1][5])
    assert int(H.ranks(logits, torch.tensor([successor]))) == 0
    assert int(H.ranks(torch.zeros(1, 50), torch.tensor([3]))) == 49

    probe = H.ProbeDoc("successor", [0, 7, 8, 9])
    probe.keys["successor"] = {2: [1]}
    probe.successor_token, probe.successor_frame = {2: successor}, {2: "list"}
    scores = H.HeadScores({}, {"successor": [torch.zeros(1, 4, 24), torch.zeros(1, 4, 24)]})
    scores.lorsa_inputs["successor"][1][0, 1] = x_item
    ov = H.successor_ov(replacement, scores, {"successor": [probe]}, {1: [5]}, draws=2)
    assert (ov["probes"], ov["in_top"], ov["median_rank"]) == (1, 1.0, 0)
    assert ov["meets_target"] and ov["by_frame"] == {"list": {"probes": 1, "in_top": 1.0}}
    assert ov["above_item"] == float(successor != 7)
    assert "in_sequence" not in ov  # no rivals recorded
    # Within its sequence: the successor against the list's other items (and itself listed).
    probe.successor_rivals = {2: [successor, *(t for t in (7, 8, 9) if t != successor)]}
    ov = H.successor_ov(replacement, scores, {"successor": [probe]}, {1: [5]}, draws=2)
    assert ov["in_sequence"]["first"] == 1.0 and ov["in_sequence"]["probes"] == 1
    assert 0.0 <= ov["in_sequence"]["random_first"] <= 1.0
    with torch.no_grad():
        lorsa.W_O[5] = -rw.unembed[successor]
    ov = H.successor_ov(replacement, scores, {"successor": [probe]}, {1: [5]}, draws=2)
    assert ov["in_top"] == 0.0 and not ov["meets_target"]
    assert ov["in_sequence"]["first"] == 0.0  # pushed below every rival
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0]])
    assert H.first_in_sequence(logits, [(0, [1, 2, 3], 1)]) == 0.0  # a tie counts against it
    assert H.first_in_sequence(logits, [(0, [0, 3], 1)]) == 1.0  # beats all, itself unlisted
    probe.successor_rivals = {}
    assert not H.successor_ov(replacement, scores, {"successor": [probe]}, {})["meets_target"]

    # The same test on the heads that carry the task (ground truth), and its report line.
    with torch.no_grad():
        lorsa.W_O[5] = rw.unembed[successor]
    key = H.truth_key(H.TASK_OF["successor"], H.TEST_OF["successor"])
    true = [{"layer": 1, "head": 5, "increase": 0.2, "labels": ["local_context"]},
            {"layer": 0, "head": 3, "increase": 0.1, "labels": []}]  # fmt: skip
    truth = {key: {"task": "successor_items", "true_heads": true}}
    settings = H.Settings(draws=2)
    probes = {"successor": [probe]}
    carriers = H.successor_carriers_ov(replacement, scores, probes, truth, settings)
    assert carriers["n_heads"] == 2 and carriers["truth"] == key and carriers["in_top"] == 1.0
    assert H.successor_carriers_ov(replacement, scores, probes, {}, settings) is None
    results = {"successor_ov_truth": carriers, "truth": truth, "settings": {"truth_delta": 0.01}}
    (line,) = _successor_truth_lines(results)
    assert "2 heads whose single-head test costs `successor_items` >= 0.01 nats" in line
    assert "(by label, a head may carry several: local_context 1, (none) 1)" in line
    assert "**100%**" in line
    assert _successor_truth_lines({}) == []


# ----------------------------------------------------------------- where a task is computed
def test_direct_effects_add_up_to_the_model_terms(replacement, batch):
    """Embeddings, heads, features, errors and biases, each from its own hook or weight, sum
    to the demeaned target logit: nothing is left over without a transcoder skip."""
    direct = H.direct_effects(replacement, [batch])["all_tokens"]
    with torch.no_grad():
        logits, cache = replacement.run_with_cache(batch.tokens, mode="local")
        b, p = batch.targets["all_tokens"][:, 1:].nonzero(as_tuple=True)
        token = batch.tokens[b, p + 1]
        demeaned = logits[b, p] - logits[b, p].mean(-1, keepdim=True)
        u = replacement.read_write().unembed[token] / cache["ln_final.hook_scale"][b, p]
        heads = cache[hook_name(1, "lorsa.hook_z")][b, p] @ replacement.lorsas[1].W_O
    assert direct["targets"] == len(token)
    assert direct["total"] == pytest.approx(float(demeaned.gather(1, token[:, None]).mean()))
    assert direct["heads"][1] == pytest.approx(float((heads * u).sum(-1).mean()), abs=1e-5)
    assert direct["errors"] != 0 and direct["biases"] != 0
    assert abs(direct["rest"]) < 1e-3 * abs(direct["total"]) + 1e-4


def test_layer_ablations(replacement, batch):
    account = H.layer_ablations(replacement, [batch])["all_tokens"]
    clean = H.task_loss(replacement, [batch], {})
    assert account["heads"][0] == pytest.approx(
        H.task_loss(replacement, [batch], {0: list(range(8))}) - clean
    )
    assert len(account["features"]) == 2 and account["features"][1] != 0


# ----------------------------------------------------------------- probes on the corpus
@pytest.fixture(scope="module")
def tokenizer():
    from toy_models.tokenizer import load_tokenizer
    from toy_models.zoo import SHIPPED_DIR

    return load_tokenizer(SHIPPED_DIR / "default" / "tokenizer.json")


def test_probes_of_real_documents(tokenizer):
    """Held-out corpus documents: every key a rule names is what its span says."""
    probes = H.build_probes(tokenizer, 6, 128)
    digits = 0
    for docs in probes.values():
        for p in docs:
            text = lambda i, ids=p.ids: tokenizer.decode([ids[i]])  # noqa: E731
            for q, keys in p.keys.get("induction", {}).items():
                assert all(p.ids[k - 1] == p.ids[q] for k in keys)
            for q, keys in p.keys.get("subtoken_induction", {}).items():
                assert all(p.ids[k - 1] == p.ids[q] and k < q - 1 for k in keys)
            for q, keys in p.keys.get("successor", {}).items():
                assert len(keys) == 1 and keys[0] < q
                assert p.successor_token[q] == p.ids[q + 1]
                assert p.successor_frame[q] in ("list", "sentence")
            for f in H.ARITHMETIC_FAMILIES:
                for q, keys in p.keys.get(f, {}).items():
                    assert all(text(k).strip().isdigit() and k < q - 1 for k in keys)
                    digits += len(keys)
            for task, targets in p.targets.items():
                assert all(0 < t < len(p.ids) for t in targets), task
    assert sum(len(p.keys["induction"]) for p in probes["repeat"]) > 20
    assert sum(len(p.keys["subtoken_induction"]) for p in probes["names"]) > 0
    assert sum(len(p.keys["successor"]) for p in probes["successor"]) > 10
    frames = {f for p in probes["successor"] for f in p.successor_frame.values()}
    assert frames == {"list", "sentence"}
    # every successor is among its sequence's rivals, which hold that sequence's items only
    from toy_models.data import ORDERED_LISTS
    from toy_models.tokenizer import token_text

    rivals = H.sequence_tokens(tokenizer)
    for p in probes["successor"]:  # one of its sequence's two spellings: the one holding it
        for q, token in p.successor_token.items():
            assert p.successor_rivals[q] in rivals[p.successor_sequence[q]].values()
            assert token in p.successor_rivals[q]
    for name, forms in rivals.items():
        for spaced, tokens in forms.items():
            texts = [token_text(tokenizer, t) for t in tokens]
            assert all(t.startswith(" ") == spaced for t in texts)
            assert {t.strip() for t in texts} <= set(ORDERED_LISTS[name])
    assert digits > 50 and sum(len(p.keys["carry"]) for p in probes["addition"]) > 5


def hand_doc(tokenizer, family: str, text: str, spans) -> H.ProbeDoc:
    """The probe document of a hand-written corpus document with its spans."""
    from toy_models.data import Example
    from toy_models.evaluate import encode

    return H.probe_doc(encode(tokenizer, Example(family, text, tuple(spans)), 128))


def test_operand_and_carry_probes_follow_the_spans(tokenizer):
    """In ``347+285=632`` the hundreds digit 6 is predicted at '=' from 3 and 2 (and the
    carry from the tens 4 and 8: 47 + 85 >= 100); the tens digit 3 from 4 and 8 (carry from
    the units 7 and 5); the units 2 from 7 and 5 (no carry into the units). In
    ``999+1=1000`` the thousands digit is a carry from the hundreds (999's 9; 1 has none)."""
    from toy_models.data import Span, carries_into

    text = "347+285=632\n999+1=1000\n"
    a, b = Span(0, 3, "operand", "347", number=347), Span(4, 7, "operand", "285", number=285)
    c, d = Span(12, 15, "operand", "999", number=999), Span(16, 17, "operand", "1", number=1)
    spans = [Span(8, 11, "answer", "632", operands=(a, b), number=632),
             Span(18, 22, "answer", "1000", operands=(c, d), number=1000)]  # fmt: skip
    probe = hand_doc(tokenizer, "addition", text, spans)
    assert tokenizer.decode(probe.ids[1:12]) == "347+285=632"
    assert probe.ids[8] == tokenizer.token_to_id("=")
    keys = probe.keys
    assert (keys["operand_a_hundreds"][8], keys["operand_b_hundreds"][8]) == ([1], [5])
    assert (keys["operand_a_tens"][9], keys["operand_b_tens"][9]) == ([2], [6])
    assert (keys["operand_a_units"][10], keys["operand_b_units"][10]) == ([3], [7])
    assert keys["carry"][8] == [2, 6] and keys["carry"][9] == [3, 7] and 10 not in keys["carry"]
    # 999+1=1000 starts at position 13: '=' at 18 predicts the thousands digit.
    assert tokenizer.decode(probe.ids[13:23]) == "999+1=1000"
    assert keys["carry"][18] == [13] and 18 not in keys["operand_a_hundreds"]
    assert keys["operand_a_hundreds"][19] == [13] and 19 not in keys["operand_b_hundreds"]
    assert keys["carry"][19] == [14] and keys["carry"][20] == [15, 17]
    assert keys["operand_b_units"][21] == [17] and 21 not in keys["carry"]
    assert probe.targets["answer_hundreds"] == [9, 20]
    assert probe.targets["answer_units"] == [11, 22]
    assert probe.targets["carry_digits"] == [9, 10, 19, 20, 21]
    assert probe.targets["addition_answers"] == [9, 10, 11, 19, 20, 21, 22]
    assert carries_into(47, 85, 2) and not carries_into(347, 285, 0)
    assert not carries_into(12, 35, 1)


def test_successor_probes_follow_the_spans(tokenizer):
    """A list's items read the item before them (a document's very first one included); a
    far-back sentence's answer reads the item said before the filler; a step that is not +1
    (backwards, or every second item) is no successor probe."""
    from toy_models.data import Span

    text = "Q, R, S. Today is Friday. red blue. Tomorrow is Saturday. B, A\n"
    q_ = Span(0, 1, "item", "Q", sequence="letters")
    r_ = Span(3, 4, "item", "R", sequence="letters", previous=q_, step=1, frame="list")
    s_ = Span(6, 7, "item", "S", sequence="letters", previous=r_, step=1, frame="list")
    fri = Span(18, 24, "item", "Friday", sequence="weekdays")
    sat = Span(48, 56, "item", "Saturday", sequence="weekdays", previous=fri, step=1,
               form="sentence", frame="Today is {X}.{F} Tomorrow is {Y}.")  # fmt: skip
    b_ = Span(58, 59, "item", "B", sequence="letters")
    a_ = Span(61, 62, "item", "A", sequence="letters", previous=b_, step=-1, frame="list")
    assert [text[s.start : s.end] for s in (r_, s_, fri, sat, a_)] == [
        "R", "S", "Friday", "Saturday", "A"
    ]  # fmt: skip
    probe = hand_doc(tokenizer, "successor", text, [r_, s_, sat, a_])
    pos = {tokenizer.decode([t]).strip(): i for i, t in enumerate(probe.ids)}
    assert probe.keys["successor"][pos["R"] - 1] == [1]  # the document's first token
    assert probe.keys["successor"][pos["S"] - 1] == [pos["R"]]
    assert probe.keys["successor"][pos["Saturday"] - 1] == [pos["Friday"]]
    assert probe.successor_frame[pos["Saturday"] - 1] == "sentence"
    assert probe.successor_token[pos["R"] - 1] == probe.ids[pos["R"]]
    assert len(probe.keys["successor"]) == 3  # B -> A is a step back
    assert probe.targets["successor_items"] == sorted([pos["R"], pos["S"], pos["Saturday"]])


# ----------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "gpt5"], "unknown model 'gpt5'"),
        (["--docs", "0"], "--docs must be between 1 and 10000"),
        (["--docs", "2", "--truth-docs", "3"], "--truth-docs must be between 1 and --docs"),
        (["--truth-docs", "3", "--no-truth"], "--no-truth skips: drop one"),
        (["--draws", "100000000"], "--draws must be between 1 and 1000"),
        (["--out", "{file}"], "exists and is not a directory"),
        (["--out", "{file}/heads"], "cannot write there"),
        (["--out", "/proc/heads"], "cannot write there"),
        # a model's or a replacement set's own folder (found by a fuzz pass)
        (["--out", "replacement/zoo/default"], "holds a replacement set (replacement.json)"),
        (["--out", "toy_models/zoo/default"], "holds a model (config.json)"),
    ],
)
def test_cli_bad_input(args, match, tmp_path, fresh_cli):
    """Every refusal (an unwritable ``--out`` included) is one line, comes before torch,
    transformer_lens or a model is imported, and leaves nothing behind."""
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file") for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code, heavy, stderr = fresh_cli("reports.heads", args)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], stderr
    assert heavy == [], f"{args} imported {heavy}"
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_help_imports_no_torch(fresh_cli):
    code, heavy, stderr = fresh_cli("reports.heads", ["--help"])
    assert (code, heavy, stderr) == (0, [], "")


def test_cli_end_to_end_on_a_tiny_model(
    tiny_run, tiny_pretrained, make_replacement, tmp_path, capsys, monkeypatch
):
    model, _ = tiny_pretrained
    make_replacement(model, n_qk=2, n_ov=16, lorsa_k=4).save(tmp_path / "rep", str(tiny_run))
    out = tmp_path / "heads"
    args = [
        "--model",
        str(tiny_run),
        "--replacement",
        str(tmp_path / "rep"),
        "--out",
        str(out),
        "--docs",
        "2",
        "--truth-docs",
        "1",
        "--draws",
        "2",
        "--quiet",
        "--no-induction-circuit",
    ]  # fmt: skip  (its parts: tests/test_global.py)
    reports = []
    write_report = H.write_report
    monkeypatch.setattr(
        "reports.heads.report.write_report",
        lambda *a: reports.append(a) or write_report(*a),
    )
    assert H.main(args) == 0
    assert len(reports) == 1  # the report is written once, with its timings complete
    results = json.loads((out / "heads.json").read_text())
    assert results["seconds"]["total"] >= results["seconds"]["load"]
    assert set(results["families"]) == set(H.HEAD_FAMILIES)
    for f in H.HEAD_FAMILIES:
        assert len(results["scores"][f]["score"]) == 2
        assert all(len(layer) == 16 for layer in results["scores"][f]["score"])
        assert results["ablation"][f]["task"] == H.TASK_OF[f]
        assert results["ablation"][f]["test"] == H.TEST_OF[f]
        assert 0 <= min(min(layer) for layer in results["scores"][f]["score"])
        assert max(max(layer) for layer in results["scores"][f]["score"]) <= 1.0001
    assert set(results["truth"]) == {H.truth_key(H.TASK_OF[f], H.TEST_OF[f])
                                     for f in H.HEAD_FAMILIES}  # fmt: skip
    assert "all_tokens/mask_bos" in results["truth"]
    assert set(results["account"]) == set(results["clean_loss"])
    assert set(results["identity"]) == {"model", "replacement", "tokenizer"}
    assert "probes" in results["successor_ov"]
    # the OV test also runs on the heads that carry the successor task, when there are any
    carriers = results["truth"][H.truth_key(H.TASK_OF["successor"], H.TEST_OF["successor"])]
    if carriers["true_heads"]:
        assert results["successor_ov_truth"]["n_heads"] == len(carriers["true_heads"])
    else:
        assert "successor_ov_truth" not in results
    page = (out / "heads.md").read_text()
    if "in_top" in results.get("successor_ov_truth", {}):
        assert "heads whose single-head test costs `successor_items`" in page
    sections = ("## Families", "## Per layer", "## Successor heads",
                "## Machinery heads on every task", "## Where each task is computed")  # fmt: skip
    for section in sections:
        assert section in page
    # machinery heads (queries everywhere) are measured on every task, the others on theirs
    every = {f for f in H.HEAD_FAMILIES if "every_task" in results["ablation"][f]}
    labelled = {f for f in H.HEAD_FAMILIES if results["ablation"][f].get("n_heads")}
    machinery = {"previous_token", "local_context", "duplicate_token", "attention_sink"}
    assert every == machinery & labelled
    for name in ("scores.png", "counts.png", "ablation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))
    assert "wrote" in capsys.readouterr().out


def test_the_benchmark_runs_to_its_results_on_a_tiny_model(
    tiny_run, tiny_pretrained, make_replacement, tmp_path, cli, monkeypatch
):
    """``benchmarks/heads.py`` end to end on the tiny model in a few documents (nothing else
    runs the benchmarks, and its checks call many of the report's parts by name), its results
    file in a temporary folder."""
    import functools

    from conftest import benchmark

    model, _ = tiny_pretrained
    make_replacement(model, n_qk=2, n_ov=16, lorsa_k=4).save(tmp_path / "rep", str(tiny_run))
    bench = benchmark("heads")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench, "cli_startup", lambda: {})  # fresh processes: seconds each
    monkeypatch.setattr(bench, "CHECK_TASK", "all_tokens")  # the tiny corpus has no repeats
    monkeypatch.setattr(H, "Settings", functools.partial(H.Settings, docs=4, truth_docs=2, draws=2))
    code, _, err = cli(bench.main, "--model", tiny_run, "--replacement", tmp_path / "rep")
    assert code == 0, err
    record = json.loads((tmp_path / "results" / f"heads_{tiny_run.name}.json").read_text())
    assert set(record["families"]) == set(H.HEAD_FAMILIES)
    assert "group_testing_vs_exhaustive" in record and record["targets"]


def test_a_few_docs_cap_the_default_truth_docs(tmp_path):
    """``--docs 1`` alone is valid: the single-head tests' default share follows it down
    (it once refused a ``--truth-docs 6`` the user never passed)."""
    from reports.heads.cli import check_args, parse_args

    args = parse_args(["--docs", "1", "--out", str(tmp_path / "out")])
    check_args(args)
    assert args.truth_docs == 1
    args = parse_args(["--out", str(tmp_path / "out")])
    check_args(args)
    assert args.truth_docs == 6


def test_statistics_it_cannot_use_are_refused_before_the_report_is_written(
    tiny_run, tiny_pretrained, make_replacement, tmp_path, capsys, monkeypatch
):
    """Found by the fourth fuzz pass: the report and its plots were written, then the
    induction circuit's statistics file was refused, naming a --stats flag reports.heads does
    not have. The statistics are read first now; an earlier run's circuit files go when the
    circuit is skipped."""
    from circuits.statistics import default_stats_path
    from replacement.model import load_pretrained

    model, _ = tiny_pretrained
    make_replacement(model, n_qk=2, n_ov=16, lorsa_k=4).save(tmp_path / "rep", str(tiny_run))
    replacement, tokenizer = load_pretrained(str(tiny_run), str(tmp_path / "rep"))
    monkeypatch.chdir(tmp_path)
    stats = default_stats_path(str(tiny_run), replacement, tokenizer)
    stats.parent.mkdir(parents=True)
    stats.write_bytes(b"not statistics")
    out = tmp_path / "heads"
    args = ["--model", str(tiny_run), "--replacement", str(tmp_path / "rep"), "--out", str(out),
            "--docs", "2", "--no-truth", "--draws", "2", "--quiet"]  # fmt: skip
    with pytest.raises(ValueError) as info:
        H.main(args)
    assert str(info.value).startswith(f"{stats}: ") and "--stats" not in str(info.value)
    assert not out.exists() or not any(out.iterdir())
    assert stats.read_bytes() == b"not statistics"  # the user's file, kept
    # the report is one set: a circuit file beside no heads.json is the user's, and refused;
    # beside an earlier report, one this run does not write again is removed with a note
    out.mkdir(exist_ok=True)
    (out / "induction_circuit.svg").write_text("mine")
    with pytest.raises(OSError, match="not written by a run"):
        H.main([*args, "--no-induction-circuit"])
    assert sorted(p.name for p in out.iterdir()) == ["induction_circuit.svg"]
    (out / "induction_circuit.svg").unlink()
    assert H.main([*args, "--no-induction-circuit"]) == 0
    (out / "induction_circuit.svg").write_text("an earlier run's")
    record = json.loads((out / ".heads-set.json").read_text())
    write_set_record(out, "heads.json", {**record["entries"], "induction_circuit.svg": "file"})
    capsys.readouterr()
    assert H.main([*args, "--no-induction-circuit"]) == 0
    assert not (out / "induction_circuit.svg").exists() and (out / "heads.json").is_file()
    assert "induction_circuit.svg of an earlier run" in capsys.readouterr().err
    assert not (out / ".writing").exists() and not (out / ".writing.lock").exists()


def test_another_tools_heads_json_is_refused_before_any_work(tiny_run, tmp_path, monkeypatch):
    """A ``heads.json`` no run of ours wrote (no ``.heads-set.json`` beside it) is refused in
    the argument checks, before the model is loaded, with the user's files untouched."""
    import replacement.model

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(replacement.model, "load_pretrained", no_work)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "heads.json").write_text("{}")
    (out / "heads.md").write_text("my notes")
    with pytest.raises(OSError, match="not written by a run of this version"):
        H.main(["--model", str(tiny_run), "--out", str(out), "--quiet"])
    assert sorted(p.name for p in out.iterdir()) == ["heads.json", "heads.md"]
    assert (out / "heads.md").read_text() == "my notes"


def test_a_set_whose_weights_overflow_is_one_line_and_writes_nothing(
    tiny_run, overflowing_set, tmp_path, fresh_cli
):
    """Finite weights load, but x1e30 overflows in use: every figure would be NaN (heads.json
    once held them); one line saying so, before the family tests, and no report."""
    out = tmp_path / "heads"
    args = ["--model", str(tiny_run), "--replacement", str(overflowing_set), "--out",
            str(out), "--docs", "2", "--no-truth", "--draws", "2", "--quiet",
            "--no-induction-circuit"]  # fmt: skip
    code, _, stderr = fresh_cli("reports.heads", args)
    assert code == 2 and stderr.startswith("error: the replacement model's loss is not finite")
    assert "weights overflow" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_the_circuits_statistics_folder_is_checked_before_they_are_gathered(
    tiny_pretrained, make_replacement, tmp_path, monkeypatch
):
    """A fuzz pass ran the report from a read-only working directory: the statistics were
    gathered (the QK pairs bar at 100%), then "runs: Read-only file system". A folder the
    statistics cannot be written in is refused before they are gathered."""
    import circuits.gathering
    import circuits.statistics
    from reports.heads.circuit import circuit_statistics
    from toy_models.cli import UserError

    model, tokenizer = tiny_pretrained
    replacement = make_replacement(model, n_qk=2, n_ov=16, lorsa_k=4)
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(circuits.statistics, "DEFAULT_STATS_DIR", tmp_path / "file" / "stats")

    def gathered(*args, **kwargs):
        raise AssertionError("gathered before the folder was checked")

    monkeypatch.setattr(circuits.gathering, "gather_statistics", gathered)
    with pytest.raises(UserError, match="the induction circuit's statistics folder"):
        circuit_statistics(replacement, tokenizer, "tiny")


def test_the_report_counts_heads_by_number_of_labels():
    """heads.md says how many heads carry each number of labels and where the most-labelled
    ones are (a reviewer read 'one layer-2 head carries seven labels' where sixteen did)."""
    from reports.heads.config import HEAD_FAMILIES
    from reports.heads.report import _labels_per_head

    families = {f: {"heads": []} for f in HEAD_FAMILIES}
    assert _labels_per_head({"families": families}) == "No head carries a label."
    a, b, c = HEAD_FAMILIES[:3]
    two = [{"layer": 2, "head": 5}, {"layer": 3, "head": 1}]
    families[a]["heads"] = [*two, {"layer": 0, "head": 9}]
    families[b]["heads"] = families[c]["heads"] = two
    assert _labels_per_head({"families": families}) == (
        "Labelled heads by number of labels: 1 label: 1, 3 labels: 2 (the 2 with 3: L2 1, L3 1)."
    )


def test_the_successor_carriers_labels_are_not_read_as_a_partition():
    """The heads carrying the successor task are counted by label, and labels overlap: the
    default's '19 heads ... (local_context 16, previous_token 4, (none) 3, successor 1)' summed
    to 24 with nothing saying why (every previous-token head is a local-context one)."""
    heads = [{"layer": 0, "head": h, "increase": 0.1, "labels": labels}
             for h, labels in enumerate([["previous_token", "local_context"],
                                         ["local_context"], []])]  # fmt: skip
    key = "successor_items"
    results = {"truth": {key: {"task": key, "true_heads": heads}},
               "successor_ov_truth": {"truth": key, "n_heads": 3, "top": 10, "in_top": 0.5,
                                      "random_in_top": 0.04, "median_rank": 8,
                                      "above_item": 0.9},
               "settings": {"truth_delta": 0.01}}  # fmt: skip
    (line,) = _successor_truth_lines(results)
    assert "3 heads whose single-head test" in line
    assert (
        "(by label, a head may carry several: local_context 2, previous_token 1, (none) 1)" in line
    )


def test_a_bin_of_one_head_stands_clear_of_the_log_axis_floor():
    """scores.png: on a log count axis whose floor matplotlib put at 0.8, the sink panel's
    few heads past the threshold were slivers along the bottom edge. The floor is
    ``LOG_FLOOR`` (a bin of one head half a decade high) and each layer's legend entry says
    how many heads reach the threshold."""
    from matplotlib.figure import Figure

    from reports.heads.plots import LOG_FLOOR, _score_histograms

    n = 200
    low = [0.01 * (i % 20) for i in range(n)]  # every head under 0.25 ...
    sink = [low, [*low[:-1], 0.9]]  # ... but one of layer 1's
    scores = {f: {"score": [low, low], "active": [[20] * n] * 2}
              for f in (*H.HEAD_FAMILIES, *H.DIAGNOSTICS)}  # fmt: skip
    scores["attention_sink"]["score"] = sink
    fig = Figure(figsize=(16, 13))
    _score_histograms(fig, {"scores": scores})
    ax = next(a for a in fig.axes if a.get_title() == "attention_sink")
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] == LOG_FLOOR
    # layer 1's step rises to 1 at the bin of 0.9, from the floor on either side
    steps = ax.patches[1].get_path().vertices
    in_bin = steps[(steps[:, 0] > 0.875) & (steps[:, 0] < 0.925)]
    assert in_bin[:, 1].max() == 1 and LOG_FLOOR < 1
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["L0 (200; 0 >= 0.25)", "L1 (200; 1 >= 0.25)"]


def test_each_familys_name_stands_under_the_middle_of_its_bars():
    """ablation.png: a family's name sat under its first bar (the family's own), the left
    end of its group of three, so the names drifted left of what they named."""
    from matplotlib.figure import Figure

    from reports.heads.plots import _ablations

    results = {"ablation": {f: {"increase": 1.0, "random_mean": 0.1, "matched_random_mean": 0.2}
                            for f in H.HEAD_FAMILIES}}  # fmt: skip
    fig = Figure()
    _ablations(fig, results)
    (ax,) = fig.axes
    groups = [sorted(p.get_x() + p.get_width() / 2 for p in c) for c in ax.containers]
    middles = [sorted(x)[1] for x in zip(*groups, strict=True)]
    assert list(ax.get_xticks()) == pytest.approx(middles)


def test_the_direct_effect_table_has_a_cell_under_every_heading():
    """heads.md's direct effects on the target logit: each row fills its heading's columns
    (errors and biases too). Rows left both out, so that a renderer put ``rest`` (0.00)
    under ``errors`` and left ``biases`` empty: on the default, `all_tokens` read errors 0.00
    where they are 0.20, and its biases' 3.71 was nowhere."""
    direct = {"total": 13.75, "embedding": 0.08, "heads": [0.15, 1.12],
              "features": [2.34, 5.95], "errors": 0.2, "biases": 3.71, "rest": 0.0}  # fmt: skip
    account = {"all_tokens": {"ablation": {"heads": [3.5, 1.1], "features": [5.8, 0.7]},
                              "direct": direct}}  # fmt: skip
    lines = _account_section({"account": account, "n_ov_heads": [16, 16]})
    header = next(line for line in lines if line.startswith("| task | logit |"))
    row = lines[lines.index(header) + 2]
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(names, (c.strip() for c in row.strip("|").split("|")), strict=True))
    assert cells["errors"] == "0.20" and cells["biases"] == "3.71" and cells["rest"] == "0.00"
    assert cells["features L1"] == "5.95" and cells["logit"] == "13.75"


HEADS_INTERRUPTED = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
# as from a terminal: a test run started with ``&`` by a shell without job control passes
# SIGINT on ignored, and Python then installs no handler of its own
signal.signal(signal.SIGINT, signal.default_int_handler)
import reports.heads.analysis
from toy_models.cli import run_cli
from reports.heads.cli import main

def analyse(*args, **kwargs):  # a SIGINT to the process itself, as a Ctrl-C, mid-analysis
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # the handler runs at the next bytecode: never 10 s
        time.sleep(0.01)
    raise AssertionError("the SIGINT did not stop the analysis")

reports.heads.analysis.analyse = analyse
run_cli(main, ["--model", {model!r}, "--replacement", {rep!r}, "--out", {out!r}, "--quiet",
               "--no-induction-circuit"])
"""


def test_a_ctrl_c_mid_analysis_ends_in_one_line_and_130(
    tiny_run, tiny_pretrained, make_replacement, tmp_path
):
    """A SIGINT during the analysis ends the run as every CLI's (``run_cli``): "interrupted"
    last, exit code 130, no ``--out`` left behind. (A reviewer's ``kill -INT`` that seemed
    ignored was sent to a run started with ``&`` from a non-interactive shell, which starts
    it with SIGINT ignored: Python then never installs its handler, in any CLI.)"""
    import subprocess
    import sys
    from pathlib import Path

    model, _ = tiny_pretrained
    make_replacement(model, n_qk=2, n_ov=16, lorsa_k=4).save(tmp_path / "rep", str(tiny_run))
    out = tmp_path / "heads"
    script = HEADS_INTERRUPTED.format(root=str(Path(__file__).resolve().parents[1]),
                                      model=str(tiny_run), rep=str(tmp_path / "rep"),
                                      out=str(out))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr.rstrip("\n").split("\n")[-1] == "interrupted", repr(done.stderr)
    assert not out.exists()
