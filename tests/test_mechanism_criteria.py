"""The mechanism benchmark's criteria (benchmarks/mechanisms.py) on constructed QK reasons whose
answer is known: which token each side's roots name decides ``reason`` and ``reason_match``,
and which token pair the root pairs lead with decides ``reason_roots``."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import benchmark

from circuits.mechanism_file import RootPair, SourceShare


def token(pos: int, value: float) -> SourceShare:
    return SourceShare(f"token @{pos}", "embedding", None, pos, None, None, value)


def reason(query: list[SourceShare], key: list[SourceShare]):
    return SimpleNamespace(query_sources={"roots": query}, key_sources={"roots": key}, specific=1.0)


# BOS A B C x A B | q = 7 (the second B), key k = 3 (C, after the first B)
IDS = [0, 11, 12, 13, 99, 11, 12]
Q, K = 6, 3


def test_induction_reason_is_the_current_token_and_the_token_before_the_key():
    m = benchmark("mechanisms")
    plain = reason([token(Q, 5.0), token(Q - 1, 1.0)], [token(K, 9.0), token(K - 1, 4.0)])
    assert m.sources_ok("induction", plain, Q, K)
    assert m.shared_token(plain, IDS, Q, K)
    # the key's strongest moved root is two tokens back: not ``reason``; the query's strongest
    # is also the earlier token A (11): a match on A at both places
    earlier = reason([token(Q - 1, 5.0), token(Q, 1.0)], [token(K - 2, 4.0), token(K - 1, 3.0)])
    assert not m.sources_ok("induction", earlier, Q, K)
    assert m.shared_token(earlier, IDS, Q, K)


def test_no_match_when_the_sides_hold_different_tokens_or_nothing_positive():
    m = benchmark("mechanisms")
    other = reason([token(Q, 5.0)], [token(K - 2, 4.0), token(K - 1, 3.0)])  # B vs A
    assert not m.sources_ok("induction", other, Q, K)
    assert not m.shared_token(other, IDS, Q, K)
    negative = reason([token(Q, -5.0)], [token(K - 1, 4.0)])
    assert not m.shared_token(negative, IDS, Q, K)
    # the key's own token never counts as moved there (the key C is not the query's B anyway)
    own = reason([token(Q, 5.0)], [token(K, 9.0)])
    assert not m.shared_token(own, IDS, Q, K)
    # the strongest moved root is not a token (an error term before the key): no match
    error = SourceShare("L0 mlp error", "error", 0, K - 1, None, None, 4.0)
    assert not m.shared_token(reason([token(Q, 5.0)], [error, token(K - 1, 3.0)]), IDS, Q, K)


def test_reason_misses_are_sorted_by_what_the_key_side_leads_with():
    m = benchmark("mechanisms")
    right = {"key": True, "reason": True, "query_root": {}}
    shared = {"key": True, "reason": False, "reason_match": True, "query_root": {},
              "key_moved_root": {"kind": "embedding", "pos": 2}}  # fmt: skip
    start = {"key": True, "reason": False, "reason_match": False, "query_root": {},
             "key_moved_root": {"kind": "embedding", "pos": 1}}  # fmt: skip
    other = {"key": True, "reason": False, "reason_match": False, "query_root": {},
             "key_moved_root": None}  # fmt: skip
    wrong_key = {"key": False, "reason": False, "query_root": {}}
    counts = m.reason_misses([right, shared, start, start, other, wrong_key])
    assert counts == {"misses": 4, "shared_token": 1, "document_start": 2, "other": 1}
    assert m._root_fields(None, IDS) is None
    assert m._root_fields(token(5, 2.5), IDS) == {"kind": "embedding", "pos": 5, "token": 11,
                                                  "value": 2.5}  # fmt: skip


def roots(*pairs: tuple[SourceShare, SourceShare, float]):
    return SimpleNamespace(root_pairs=[RootPair(*p) for p in pairs],
                           root_parts={"tokens": 1.0, "errors": 0.0, "constants": 0.0})  # fmt: skip


def test_root_pair_criteria_read_the_largest_moved_token_pair():
    m = benchmark("mechanisms")
    # the key's own token (C) leads, then B at q x B before the key: reason_roots
    plain = roots((token(Q, 1), token(K, 1), 9.0), (token(Q, 1), token(K - 1, 1), 4.0))
    out = m.root_criteria("induction", plain, IDS, Q, K, key=True)
    assert out["reason_roots"] and out["reason_roots_match"] and out["root_own_first"]
    assert out["root_pair"]["query"]["pos"] == Q and out["root_pair"]["key"]["pos"] == K - 1
    assert not m.root_criteria("induction", plain, IDS, Q, K, key=False)["reason_roots"]
    # A before the query x A two before the key leads the moved pairs: a match, not the strict one
    earlier = roots((token(Q, 1), token(K - 1, 1), 3.0), (token(Q - 1, 1), token(K - 2, 1), 5.0))
    out = m.root_criteria("subtoken_induction", earlier, IDS, Q, K, key=True)
    assert not out["reason_roots"] and out["reason_roots_match"] and not out["root_own_first"]
    # different tokens, negative terms and error roots never match
    other = roots((token(Q, 1), token(K - 2, 1), 5.0), (token(Q, 1), token(K - 1, 1), -9.0))
    out = m.root_criteria("induction", other, IDS, Q, K, key=True)
    assert not out["reason_roots"] and not out["reason_roots_match"]
    error = SourceShare("L0 mlp error", "error", 0, K - 1, None, None, 4.0)
    out = m.root_criteria("induction", roots((token(Q, 1), error, 9.0)), IDS, Q, K, key=True)
    assert not out["reason_roots"] and "root_pair" not in out
    # other families: no induction criterion
    assert "reason_roots" not in m.root_criteria("successor", plain, IDS, Q, K, key=True)


def test_subtoken_keys_include_earlier_mentions_tokenized_otherwise():
    """A name at a document's start has no leading space, so its first sub-token differs from
    later mentions'; the sub-token after the query's sub-token there is a key all the same."""
    m = benchmark("mechanisms")
    # BOS Z ou b le | x | ␣Z ou b le | y | ␣Z ou b le
    pieces = ["", "Z", "ou", "b", "le", " x", " Z", "ou", "b", "le", " y", " Z", "ou", "b", "le"]
    vocab = {"": 0, "Z": 1, "ou": 2, "b": 3, "le": 4, " x": 5, " Z": 6, " y": 7}
    ids = [vocab[t] for t in pieces]
    offsets, at = [], 0
    for t in pieces:
        offsets.append((at, at + len(t)))
        at += len(t)

    def mention(start: int, end: int, before: list):
        return SimpleNamespace(kind="name", rare=True, start=start, end=end,
                               earlier=before[-1] if before else None,
                               occurrences_before=lambda: list(before))  # fmt: skip

    first = mention(0, 6, [])
    second = mention(8, 15, [first])
    third = mention(17, 24, [first, second])
    found = dict(m.candidates("subtoken_induction", ids, offsets, [first, second, third]))
    assert found[12] == [7]  # 'ou' after ' Z': only the mention tokenized alike
    assert found[14] == [4, 9]  # 'le' after 'b': both earlier mentions
    # the second mention has no earlier mention tokenized alike: no probe there (which
    # prompts are drawn does not change), nor anywhere in the first
    assert sorted(found) == [12, 13, 14]


def test_first_order_agreement_counts_signs_against_the_free_measurement():
    import torch

    m = benchmark("mechanisms")
    ids = ["a", "b", "c", "t"]
    logit = torch.tensor([False, False, False, True])
    full = SimpleNamespace(ids=ids, id_to_index={x: i for i, x in enumerate(ids)},
                           is_kind=lambda kind: logit)  # fmt: skip
    slopes = torch.tensor([[1.0, -3.0, 0.5, 0.0]])  # ablating a and b: -(1 - 3) = +2

    def group(members: list[str], free: float, agree_free: bool):
        check = SimpleNamespace(target="t", free=free, agree_free=agree_free)
        return SimpleNamespace(members=members, checks=[check])

    groups = [group(["a", "b"], +1.0, False),  # +2 vs +1: agrees where the graph did not
              group(["c"], +0.2, True),  # -0.5 vs +0.2: disagrees
              group([], 0.001, True)]  # 0 vs 0.001: both below the tolerance  # fmt: skip
    out = m.first_order_agreement(SimpleNamespace(groups=groups), full, slopes, tolerance=0.01)
    assert out == {"agree_first_order_free": 2, "disagree_free": 1, "disagree_free_explained": 1}


def test_concept_labels_come_from_the_named_dashboards_file_of_this_set(
    tiny_pretrained, make_replacement, tmp_path
):
    """``--dashboards-file``: labels are read from the file given, one built for another
    replacement set is refused with the reason, and a missing file says how to build one."""
    import torch

    from circuits import dashboard_pass

    m = benchmark("mechanisms")
    model, tokenizer = tiny_pretrained
    ours = make_replacement(model, n_qk=2, n_ov=8, lorsa_k=3, d_sae=16, tc_k=4)
    other = make_replacement(model, n_qk=2, n_ov=8, lorsa_k=3, d_sae=16, tc_k=4)
    with torch.no_grad():
        other.transcoders[1].W_dec[0] += 0.5  # same shapes, other weights
    path = tmp_path / "ours.safetensors"
    dashboard_pass.build(ours, tokenizer, path, rows=6, batch_rows=3, seed=3, progress=False)
    concepts, source = m.concepts_for(ours, tokenizer, "tiny", "local", path)
    assert source == str(path) and concepts
    assert all(0 <= f1 <= 1 for _, f1 in concepts.values())
    refused, why = m.concepts_for(other, tokenizer, "tiny", "local", path)
    assert refused is None and str(path) in why
    missing, why = m.concepts_for(ours, tokenizer, "tiny", "local", tmp_path / "none.st")
    assert missing is None and why.startswith("no dashboards file")


def test_a_named_dashboards_file_must_serve_and_the_output_must_be_writable(
    tiny_run, make_replacement, tmp_path, cli
):
    """Bad input ends in one line and exit 2: an output path that is a directory (before any
    work), a ``--dashboards-file`` that is missing (not a run without labels)."""
    from toy_models.zoo import load_pretrained

    main = benchmark("mechanisms").main
    model, _ = load_pretrained(str(tiny_run))
    make_replacement(model, n_qk=2, n_ov=8).save(tmp_path / "set", str(tiny_run))
    base = ["--model", tiny_run, "--replacement", tmp_path / "set", "--families", "successor"]
    code, _, err = cli(main, *base, "--out", tmp_path)
    assert code == 2 and err.strip() == f"error: --out {tmp_path}: is a directory"
    missing = tmp_path / "none.safetensors"
    code, _, err = cli(main, *base, "--dashboards-file", missing, "--out", tmp_path / "m.json")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.strip() == f"error: --dashboards-file missing: {missing}"  # before the load
    assert not (tmp_path / "m.json").exists()


def test_vs_runner_up_explains_the_margin_over_the_most_likely_other_token(
    tiny_pretrained, make_replacement, monkeypatch
):
    """``--vs-runner-up``: the graph the summary reads has the target's logit minus the
    runner-up's as its target; without it, the target's logit alone."""
    import torch

    import circuits.mechanisms as mechanisms
    from circuits.interventions import target_nodes
    from toy_models.tokenizer import bos_id

    m = benchmark("mechanisms")
    model, tokenizer = tiny_pretrained
    replacement = make_replacement(model, n_qk=2, n_ov=8, lorsa_k=3, d_sae=16, tc_k=4)
    ids = [bos_id(tokenizer), 5, 6, 7, 5, 6]
    with torch.no_grad():  # local mode reproduces the model's logits
        logits = model(torch.tensor([ids]))[0, -1]
    best, second = logits.argsort(descending=True)[:2].tolist()
    prompt = m.Prompt("successor", "heldout", ids, best, [3], "made here")
    seen, real = [], mechanisms.summarize

    def summarize(replacement, full, run, **kw):  # the real one, keeping the graph it reads
        seen.append(full)
        return real(replacement, full, run, **kw)

    monkeypatch.setattr(mechanisms, "summarize", summarize)
    for vs in (True, False):
        contrast = "runner_up" if vs else None
        out = m.run_family(replacement, tokenizer, [prompt], {}, "local", contrast=contrast)
        assert out["correct"] == 1 and out["records"][0]["runner_up"] is not None
    records = [full.logit_record(target_nodes(full)[0]) for full in seen]
    assert (records[0].token, records[0].negative) == (best, second)
    assert (records[1].token, records[1].negative) == (best, None)


def test_vs_other_item_explains_the_margin_over_the_lists_most_likely_other_item(
    tiny_pretrained, make_replacement, monkeypatch
):
    """``--vs-other-item``: the graph's target is the item's logit minus that of the most
    likely of the list's other items (``Prompt.others``), not the runner-up token."""
    import torch

    import circuits.mechanisms as mechanisms
    from circuits.interventions import target_nodes
    from toy_models.tokenizer import bos_id

    m = benchmark("mechanisms")
    model, tokenizer = tiny_pretrained
    replacement = make_replacement(model, n_qk=2, n_ov=8, lorsa_k=3, d_sae=16, tc_k=4)
    ids = [bos_id(tokenizer), 5, 6, 7, 5, 6]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, -1]
    order = logits.argsort(descending=True).tolist()
    best, others = order[0], [order[5], order[3], order[9]]  # the runner-up is not among them
    prompt = m.Prompt("successor", "heldout", ids, best, [3], "made here", others)
    seen, real = [], mechanisms.summarize

    def summarize(replacement, full, run, **kw):
        seen.append(full)
        return real(replacement, full, run, **kw)

    monkeypatch.setattr(mechanisms, "summarize", summarize)
    out = m.run_family(replacement, tokenizer, [prompt], {}, "local", contrast="other_item")
    assert out["correct"] == 1 and out["records"][0]["other_item"] is not None
    record = seen[0].logit_record(target_nodes(seen[0])[0])
    assert (record.token, record.negative) == (best, order[3])


def test_other_items_are_the_rest_of_the_list_written_as_the_target_is():
    """A successor item's alternatives: the other items of its list, each one token in the
    target's own form (a leading space, or none), never the target itself."""
    from toy_models.data import ORDERED_LISTS, Span
    from toy_models.tokenizer import load_tokenizer
    from toy_models.zoo import SHIPPED_DIR

    m = benchmark("mechanisms")
    tok = load_tokenizer(SHIPPED_DIR / "default" / "tokenizer.json")
    for lead, sequence, value in ((" ", "weekdays", "Thursday"), ("", "letters", "C")):
        span = Span(0, len(value), "item", value, sequence=sequence)
        target = tok.encode(lead + value, add_special_tokens=False).ids
        assert len(target) == 1
        others = m.other_items(tok, span, target[0])
        texts = [tok.decode([t]) for t in others]
        expected = [lead + d for d in ORDERED_LISTS[sequence] if d != value]
        assert texts == [e for e in expected if e in texts] and len(texts) >= 6
        assert target[0] not in others and all(t.startswith(lead) for t in texts)
    spaced = tok.encode(" Thursday", add_special_tokens=False).ids[0]
    weekdays = Span(0, 8, "item", "Thursday", sequence="weekdays")
    assert len(m.other_items(tok, weekdays, spaced)) == 6  # every other weekday is one token


def test_vs_other_item_is_for_the_successor_family_alone(cli):
    main = benchmark("mechanisms").main
    code, _, err = cli(main, "--vs-other-item", "--families", "induction")
    assert code == 2 and "--vs-other-item is for the successor family" in err
    code, _, err = cli(main, "--vs-other-item", "--vs-runner-up", "--families", "successor")
    assert code == 2 and "pick one" in err


def test_key_by_tokens_reads_the_position_carrying_most_of_the_token_part():
    from circuits.mechanism_file import TokenShare

    m = benchmark("mechanisms")

    def scored(keys, shares):
        target = SimpleNamespace(tokens_by_position=shares, predicting_group=None,
                                 moved_by_position=[])  # fmt: skip
        prompt = SimpleNamespace(ids=IDS, keys=keys, family="successor")
        return m.score_prompt(prompt, SimpleNamespace(targets=[target]))

    # largest |flow| first, as the summary lists them; the criterion reads the largest positive
    shares = [TokenShare(Q, "B", -6.0), TokenShare(K, "C", 4.0), TokenShare(K - 1, "B", 1.0)]
    assert scored([K], shares)["key_by_tokens"]
    assert scored([K], shares)["top_token"] == [K, "C", 4.0]
    assert not scored([Q], shares)["key_by_tokens"]  # it pushes the target down
    assert not scored([K - 1], shares)["key_by_tokens"]
    negative = [TokenShare(K, "C", -1.0)]
    assert not scored([K], negative)["key_by_tokens"] and "top_token" not in scored([K], negative)


def test_key_moved_reads_the_key_the_heads_at_the_query_bring_most_from():
    from circuits.mechanism_file import TokenShare

    m = benchmark("mechanisms")

    def scored(keys, moved):
        target = SimpleNamespace(tokens_by_position=[], predicting_group=None,
                                 moved_by_position=moved)  # fmt: skip
        prompt = SimpleNamespace(ids=IDS, keys=keys, family="successor")
        return m.score_prompt(prompt, SimpleNamespace(targets=[target]))

    # BOS brings the most, then a negative key, then K: BOS is no key, and a negative push
    # is not what predicts; the query itself counts (a joiner-less list's item is there)
    moved = [TokenShare(0, "<bos>", 9.0), TokenShare(Q, "B", -6.0), TokenShare(K, "C", 4.0),
             TokenShare(K - 1, "B", 1.0)]  # fmt: skip
    assert scored([K], moved)["key_moved"] and scored([K], moved)["moved_top"] == [K, "C", 4.0]
    assert not scored([Q], moved)["key_moved"] and not scored([0], moved)["key_moved"]
    assert scored([Q], [TokenShare(Q, "B", 2.0), TokenShare(K, "C", 1.5)])["key_moved"]
    none = scored([K], [TokenShare(K, "C", -1.0)])
    assert not none["key_moved"] and "moved_top" not in none


def test_key_named_admits_the_query_token_when_the_summary_says_it_carries_the_most():
    """A joiner-less list's item is the query token: ``key_named`` holds where the summary's
    current-token line would be printed (``TargetRecord.current_token_share``) and the query
    is an expected key, or where ``key`` holds; never otherwise."""
    from circuits.mechanism_file import TargetRecord, TokenShare

    m = benchmark("mechanisms")

    def scored(keys, shares, attends=K, pos=Q):
        target = TargetRecord("logit_0", " D", None, 0.9, 10.0, sum(x.flow for x in shares),
                              0.0, 0.0, [], None, None, None, "g0",
                              tokens_by_position=shares)  # fmt: skip
        group = SimpleNamespace(key="g0", name="g0", attends=attends, pos=pos, qk=[])
        prompt = SimpleNamespace(ids=IDS, keys=keys, family="successor")
        summary = SimpleNamespace(
            targets=[target], group=lambda key: group, groups=[], qk_sources=lambda key: []
        )  # no QK sources
        return m.score_prompt(prompt, summary)

    own = [TokenShare(Q, "B", 8.0), TokenShare(K, "C", 3.0)]
    assert scored([Q], own)["key_named"] and not scored([Q], own)["key"]
    assert not scored([K - 1], own)["key_named"]  # the query is no expected key
    assert scored([K], own)["key_named"] and scored([K], own)["key"]  # key holds: named
    # the current token is not the largest part, or works against the target: not named
    assert not scored([Q], [TokenShare(K, "C", 8.0), TokenShare(Q, "B", 3.0)])["key_named"]
    assert not scored([Q], [TokenShare(Q, "B", -8.0), TokenShare(K, "C", 9.0)])["key_named"]
    # the predicting group sits elsewhere than the query: its line is not the query's
    assert not scored([Q], own, pos=Q - 1)["key_named"]


def test_operand_keys_are_the_place_digits_of_every_mention_of_the_operands():
    """A frame written here that says the operands before the equation: a group reading the
    first mention's digit fetches the same operand digit, so it is a key as well; a bare
    equation keeps the equation's digits alone."""
    import random

    m = benchmark("mechanisms")
    rng, seen = random.Random(0), set()
    while len(seen) < 2:
        doc = m.new_addition(rng)
        (answer,) = doc.spans
        a, b = answer.operands
        found = m.candidates(
            "operand_fetching",
            [0] + [ord(c) for c in doc.text],
            [(0, 0)] + [(i, i + 1) for i in range(len(doc.text))],
            doc.spans,
        )
        units = found[-1][1]  # the answer's last digit: the operands' units digits
        equation = [a.end, b.end]  # a span's last character, at position end (BOS first)
        if a.earlier is None:
            seen.add("bare")
            assert doc.text.startswith("(") and units == equation
        else:
            seen.add("mentioned")
            assert b.earlier is not None and doc.text[: a.earlier.start].endswith(" ")
            assert units == sorted([a.earlier.end, b.earlier.end, *equation])
            assert {doc.text[k - 1] for k in units} == {str(a.value)[-1], str(b.value)[-1]}
