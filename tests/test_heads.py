"""The head taxonomy (reports.heads): key rules and scores on hand-made patterns, scores against
brute force through ``LorsaLayer.contributions``, ablations that zero exactly the heads asked
for, group testing against exhaustive ablation, probes on real corpus documents, the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from replacement.lorsa import LorsaConfig, LorsaLayer
from replacement.model import hook_name
from reports import heads as H


def hand_probe(ids: list[int], corpus: str = "repeat") -> H.ProbeDoc:
    """A probe document with every generic family's keys and a target on every token."""
    probe = H.ProbeDoc(corpus, ids)
    probe.keys["previous_token"] = H.previous_token_keys(ids)
    probe.keys["attention_sink"] = H.sink_keys(ids)
    probe.keys["duplicate_token"] = H.duplicate_token_keys(ids)
    probe.keys["induction"] = H.induction_keys(ids)
    probe.targets["all_tokens"] = list(range(1, len(ids)))
    return probe


@pytest.fixture
def replacement(random_model, make_replacement):
    return make_replacement(random_model)


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
        for family in ("previous_token", "attention_sink", "duplicate_token", "induction",
                       "successor"):  # fmt: skip
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
    torch.testing.assert_close(
        H.ablated_logits(replacement, batch, {}), replacement.model(batch.tokens), rtol=0, atol=0
    )


def test_ablation_zeroes_exactly_the_heads(replacement, batch):
    heads = {0: [1, 5], 1: [2]}
    seen = {}

    def capture(z, hook):
        seen[hook.name] = z.clone()

    hooks = H.ablation_hooks(batch, heads) + [
        (hook_name(l, "lorsa.hook_z"), capture) for l in range(2)
    ]
    replacement.run_with_hooks(batch.tokens, mode="local", fwd_hooks=hooks)
    for l, hs in heads.items():
        z = seen[hook_name(l, "lorsa.hook_z")]
        assert (z[..., hs] == 0).all()
    # The layer's output moves by exactly the head's term z w_o (errors held at clean values).
    with torch.no_grad():
        clean = replacement.run_with_cache(batch.tokens, mode="local")[1]
        replacement.run_with_hooks(
            batch.tokens,
            mode="local",
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
        batch.tokens, mode="local", fwd_hooks=H.ablation_hooks(batch, heads)
    )
    torch.testing.assert_close(H.ablated_logits(replacement, batch, heads), full)


def test_silent_heads_are_skipped_and_change_nothing(replacement, batch):
    for l, active in enumerate(batch.active):
        silent = (~active).nonzero().flatten().tolist()
        if silent:
            clean = H.task_loss(replacement, [batch], {})
            assert H.task_loss(replacement, [batch], {l: silent}) == clean


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
    assert set(effects) == {(l, h) for l, hs in enumerate(active) for h in hs}
    for (l, h), effect in effects.items():
        assert effect == pytest.approx(H.task_loss(replacement, [batch], {l: [h]}) - clean)
    _, few_runs = H.single_head_effects(replacement, [batch], delta=1e9, chunk=4)
    assert few_runs < runs


def test_precision_recall():
    r = H.precision_recall({(0, 1), (0, 2), (1, 3)}, {(0, 1), (1, 4)})
    assert (r["precision"], r["recall"]) == (pytest.approx(1 / 3), 0.5)
    assert H.precision_recall(set(), {(0, 1)})["precision"] is None


# ----------------------------------------------------------------- probes on the corpus
@pytest.fixture(scope="module")
def tokenizer():
    from toy_models.tokenizer import load_tokenizer
    from toy_models.zoo import SHIPPED_DIR

    return load_tokenizer(SHIPPED_DIR / "default" / "tokenizer.json")


def test_probes_of_real_documents(tokenizer):
    probes = H.build_probes(tokenizer, 4, 128)
    for docs in probes.values():
        for p in docs:
            text = lambda i, ids=p.ids: tokenizer.decode([ids[i]])  # noqa: E731
            for q, keys in p.keys.get("induction", {}).items():
                assert all(p.ids[k - 1] == p.ids[q] for k in keys)
            for q, keys in p.keys.get("subtoken_induction", {}).items():
                assert all(p.ids[k - 1] == p.ids[q] and k < q - 1 for k in keys)
            for q, keys in p.keys.get("successor", {}).items():
                assert keys == [q - 1] and text(q) == ","
                assert p.successor_token[q] == p.ids[q + 1]
            for q, keys in p.keys.get("operand_fetching", {}).items():
                assert all(text(k).isdigit() and k < q - 1 for k in keys)
            for task, targets in p.targets.items():
                assert all(0 < t < len(p.ids) for t in targets), task
    assert sum(len(p.keys["induction"]) for p in probes["repeat"]) > 20
    assert sum(len(p.keys["subtoken_induction"]) for p in probes["names"]) > 0
    assert sum(len(p.keys["successor"]) for p in probes["successor"]) > 10
    # Same place value: in "5+153=158" the hundreds digit 1 is predicted from 153's 1.
    add = probes["addition"][0]
    assert tokenizer.decode(add.ids[1:10]) == "5+153=158"
    assert add.keys["operand_fetching"][6] == [3]  # at '=': the hundreds of 153
    assert add.keys["operand_fetching"][7] == [4]  # then its tens
    assert add.keys["operand_fetching"][8] == [1, 5]  # then the units of 5 and of 153
    assert add.keys["operand_any_digit"][6] == [1, 3, 4]  # 3 (q - 1) is previous-token's
    assert tokenizer.decode(add.ids[46:51]) == "8+1=9"
    assert add.keys["operand_fetching"][49] == [46]


def test_successor_probe_reads_a_documents_first_item(tokenizer):
    """The previous item comes from the span itself: a one-letter item at the very start of a
    document is read too (re-parsing the text with ``rfind`` once cut its first character)."""
    from toy_models.evaluate import encode, heldout_examples

    ex = heldout_examples("successor", 5)[4]
    assert ex.text.startswith("Q, R, S")
    probe = H.probe_doc(encode(tokenizer, ex, 128))
    assert tokenizer.decode(probe.ids[1:4]) == "Q, R"
    assert probe.keys["successor"][2] == [1]  # at the comma after Q: Q, promoting R
    assert probe.successor_token[2] == probe.ids[3]
    assert 3 in probe.targets["successor_items"]


# ----------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "gpt5"], "unknown model 'gpt5'"),
        (["--docs", "0"], "--docs must be between 1 and 10000"),
        (["--docs", "2", "--truth-docs", "3"], "--truth-docs must be between 1 and --docs"),
        (["--out", "{file}"], "exists and is not a directory"),
        (["--out", "{file}/heads"], "cannot write there"),
        (["--out", "/proc/heads"], "cannot write there"),
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
        assert 0 <= min(min(layer) for layer in results["scores"][f]["score"])
        assert max(max(layer) for layer in results["scores"][f]["score"]) <= 1.0001
    assert set(results["truth"]) == set(H.TASK_OF.values())
    page = (out / "heads.md").read_text()
    assert "## Summary" in page and "## Per layer" in page
    for name in ("scores.png", "counts.png", "ablation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))
    assert "wrote" in capsys.readouterr().out
