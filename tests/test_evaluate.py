"""The probes score what they claim: on constructed runs whose answers are known, an oracle
model gets everything right, a blind one nothing, and the targets read the right numbers."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import benchmark

from toy_models import evaluate as ev
from toy_models.data import REPEAT_SEPARATORS, form_split


class Oracle:
    """Puts all its probability on the true next token (given the whole sequence)."""

    def __init__(self, cfg, sharp=True):
        self.cfg, self.sharp = cfg, sharp

    def run_with_cache(self, tokens, names_filter=None):
        b, n = tokens.shape
        logits = torch.zeros(b, n, self.cfg.d_vocab)
        if self.sharp:
            logits[:, :-1].scatter_(2, tokens[:, 1:, None], 50.0)
        pattern = torch.full((b, self.cfg.n_heads, n, n), 0.0)
        pattern[..., 0] = 1.0  # every head a perfect BOS sink
        cache = {f"blocks.{l}.attn.hook_pattern": pattern for l in range(self.cfg.n_layers)}
        return logits, cache


@pytest.fixture
def oracle(tiny_pretrained):
    model, tokenizer = tiny_pretrained
    cfg = SimpleNamespace(d_vocab=model.cfg.d_vocab, n_ctx=128, n_layers=2, n_heads=2)
    return Oracle(cfg), Oracle(cfg, sharp=False), tokenizer


@pytest.fixture
def tokenizer(tiny_pretrained):
    return tiny_pretrained[1]


def encoded(tokenizer, family, n, split):
    return [ev.encode(tokenizer, e, 128) for e in ev.heldout_examples(family, n, split=split)]


def oracle_run(doc, after_last: int) -> ev.Scored:
    """A run that predicts every next token (loss 0) and ``after_last`` after the last one."""
    return ev.Scored(doc, [0.0] * (len(doc.ids) - 1), doc.ids[1:] + [after_last])


def digit(tokenizer, d: str) -> int:
    return tokenizer.token_to_id(d)


# ----------------------------------------------------------------- constructed runs
@pytest.mark.parametrize("split", ev.EVAL_SPLITS)
def test_addition_needs_every_digit_and_then_no_further_digit(tokenizer, split):
    digits = ev._digit_ids(tokenizer)
    assert len(digits) == 10
    docs = encoded(tokenizer, "addition", 12, split)
    runs = [oracle_run(doc, doc.ids[0]) for doc in docs]
    perfect = ev.addition_scores(runs, digits)
    assert perfect["exact_match"] == 1.0 and perfect["n_problems"] > 40
    held = [a for d in docs for a in d.example.spans_of("answer") if d.holds(a)]
    assert set(perfect["by_form"]) == {a.form for a in held}
    assert set(perfect["by_frame"]) == {a.frame for a in held}
    # answers followed by ".", ",", " " or a frame's words count: greedy decoding stops there
    followers = {
        tokenizer.id_to_token(d.ids[d.tokens_in(a)[-1] + 1])
        for d in docs
        for a in d.example.spans_of("answer")
        if d.holds(a) and d.tokens_in(a)[-1] + 1 < len(d.ids)
    }
    assert len(followers) > 1 and not followers & {str(i) for i in range(10)}

    # one answer whose last digit is followed by a predicted digit: the number goes on, wrong
    doc, run = docs[0], runs[0]
    answer = doc.example.spans_of("answer")[0]
    last = doc.tokens_in(answer)[-1]
    run.argmax[last] = digit(tokenizer, "7")
    n = perfect["n_problems"]
    assert ev.addition_scores(runs, digits)["exact_match"] == pytest.approx((n - 1) / n)
    # and one whose first digit is wrong
    other = docs[1].tokens_in(docs[1].example.spans_of("answer")[0])[0]
    wrong = "0" if docs[1].ids[other] != digit(tokenizer, "0") else "1"
    runs[1].argmax[other - 1] = digit(tokenizer, wrong)
    scores = ev.addition_scores(runs, digits)
    assert scores["exact_match"] == pytest.approx((n - 2) / n)
    assert sum(scores["counts"]["by_form"].values()) == n


def addition_doc(tokenizer, a: int, b: int) -> ev.Encoded:
    """One problem ``a+b=c.`` as the corpus writes it, with its spans."""
    from toy_models.data import Example, Span

    text = f"{a}+{b}={a + b}."
    first = Span(0, len(str(a)), "operand", str(a), number=a)
    second = Span(first.end + 1, first.end + 1 + len(str(b)), "operand", str(b), number=b)
    answer = Span(second.end + 1, second.end + 1 + len(str(a + b)), "answer", str(a + b),
                  operands=(first, second), number=a + b)  # fmt: skip
    return ev.encode(tokenizer, Example("addition", text, (first, second, answer)), 128)


@pytest.mark.parametrize(
    ("a", "b", "place", "said", "kind"),
    [
        (123, 456, 2, "6", "carry_added"),  # 579: a carry into the hundreds that is not there
        (158, 267, 2, "3", "carry_missed"),  # 425: the carry from the tens left out
        (158, 267, 1, "1", "carry_missed"),  # ... and the one from the units
        (158, 267, 0, "6", "other_digit"),  # +1 at the units: no carry can come in there
        (123, 456, 1, "4", "other_digit"),
        (123, 456, 0, " ", "not_a_digit"),
    ],
)
def test_a_wrong_answer_is_counted_by_what_goes_wrong_first(tokenizer, a, b, place, said, kind):
    digits = ev._digit_ids(tokenizer)
    doc = addition_doc(tokenizer, a, b)
    answer = doc.example.spans_of("answer")[0]
    positions = doc.tokens_in(answer)
    assert [tokenizer.id_to_token(doc.ids[p]) for p in positions] == list(str(a + b))
    run = oracle_run(doc, doc.ids[0])
    assert ev.first_error(run, answer, positions, digits) is None
    wrong = tokenizer.token_to_id(said) if said != " " else tokenizer.token_to_id("Ġ")
    at = positions[len(positions) - 1 - place]
    run.argmax[at - 1] = wrong
    run.argmax[positions[-1] - 1] = wrong  # a later digit wrong too: the first one counts
    assert ev.first_error(run, answer, positions, digits) == (kind, place)
    scores = ev.addition_scores([run], digits)
    assert scores["exact_match"] == 0.0
    assert scores["first_errors"] == {k: int(k == kind) for k in ev.FIRST_ERRORS}
    assert scores["first_error_places"] == {place: 1}
    # every digit right, and then one more: the number goes on
    right = oracle_run(doc, doc.ids[0])
    right.argmax[positions[-1]] = tokenizer.token_to_id("0")
    assert ev.first_error(right, answer, positions, digits) == ("continues", -1)


class Recording(Oracle):
    """An oracle that keeps the rows it was run on."""

    def __init__(self, cfg, sharp=True):
        super().__init__(cfg, sharp)
        self.rows: list[list[int]] = []

    def run_with_cache(self, tokens, names_filter=None):
        self.rows += tokens.tolist()
        return super().run_with_cache(tokens, names_filter)


@pytest.mark.parametrize("split", ev.EVAL_SPLITS)
def test_an_answer_after_the_models_own_space_counts_beside_the_exact_match(tokenizer, split):
    digits = ev._digit_ids(tokenizer)
    space = tokenizer.token_to_id("Ġ")
    docs = encoded(tokenizer, "addition", 12, split)

    def own(sharp=True, n_ctx=128):
        cfg = SimpleNamespace(
            d_vocab=tokenizer.get_vocab_size(), n_ctx=n_ctx, n_layers=1, n_heads=1
        )
        model = Recording(cfg, sharp)
        return ev.OwnSpacing.of(model, tokenizer), model

    spacing, _ = own()
    assert space in spacing.spaces and spacing.spaces.isdisjoint(digits)
    runs = [oracle_run(doc, doc.ids[0]) for doc in docs]
    perfect = ev.addition_scores(runs, digits, spacing)
    n = perfect["n_problems"]
    assert perfect["exact_match"] == perfect["exact_match_own_space"] == 1.0
    assert perfect["space_first"] == 0 and spacing.model.rows == []  # nothing to rerun

    # the model writes a space where the document goes on with the answer's first digit
    doc = docs[0]
    answer = doc.example.spans_of("answer")[0]
    first = doc.tokens_in(answer)[0]
    runs[0].argmax[first - 1] = space
    # and another answer has a wrong first digit: no space, so no second chance
    other = docs[1].tokens_in(docs[1].example.spans_of("answer")[0])[0]
    runs[1].argmax[other - 1] = digit(
        tokenizer, "0" if docs[1].ids[other] != digit(tokenizer, "0") else "1"
    )

    spacing, model = own()
    scores = ev.addition_scores(runs, digits, spacing)
    assert scores["exact_match"] == pytest.approx((n - 2) / n)
    assert scores["exact_match_own_space"] == pytest.approx((n - 1) / n)  # right after its space
    assert scores["space_first"] == pytest.approx(1 / n)
    assert model.rows == [doc.ids[:first] + [space] + doc.ids[first:]]  # rerun once, space put in
    assert scores["by_form_own_space"][answer.form] >= scores["by_form"][answer.form]

    # a model that, given its space, still gets the sum wrong gains nothing
    wrong, _ = own(sharp=False)
    assert ev.addition_scores(runs, digits, wrong)["exact_match_own_space"] == pytest.approx(
        (n - 2) / n
    )
    # an answer the inserted token pushes out of the context keeps its exact-match result
    last = doc.tokens_in(answer)[-1]
    cut, cut_model = own(n_ctx=last + 1)
    assert ev.addition_scores(runs, digits, cut)["exact_match_own_space"] == pytest.approx(
        (n - 2) / n
    )
    assert cut_model.rows == []


def repeat_runs(docs, slow_separator: str) -> list[ev.Scored]:
    """Loss 2 on first-copy tokens, 0.2 on second-copy tokens (1.0 with ``slow_separator``),
    1 elsewhere."""
    runs = []
    for doc in docs:
        log_prob = [-1.0] * (len(doc.ids) - 1)
        copies = ev.copy_positions(doc)
        if copies:
            second_loss = 1.0 if doc.example.spans_of("second")[0].form == slow_separator else 0.2
            for p in copies[0]:
                log_prob[p - 1] = -2.0
            for p in copies[1]:
                log_prob[p - 1] = -second_loss
        runs.append(ev.Scored(doc, log_prob, doc.ids[1:] + [doc.ids[0]]))
    return runs


@pytest.mark.parametrize("split", ev.EVAL_SPLITS)
def test_induction_ratio_per_separator_and_the_worst(tokenizer, split):
    docs = encoded(tokenizer, "repeat", 60, split)
    held = [d for d in docs if ev.copy_positions(d)]
    separators = {d.example.spans_of("second")[0].form for d in held}
    # most copies fit in 128 tokens (corpus v4's segments hold made-up words and punctuation,
    # which this small vocabulary splits into many tokens)
    assert len(held) >= len(docs) // 2 and separators <= set(REPEAT_SEPARATORS[form_split(split)])
    slow = held[0].example.spans_of("second")[0].form
    result = ev.induction_scores(repeat_runs(docs, slow), head_scores=False)
    assert set(result["by_separator"]) == separators  # the raw separator strings
    assert result["n_copies"] == len(held)
    for separator, ratio in result["by_separator"].items():
        assert ratio == pytest.approx(0.5 if separator == slow else 0.1), repr(separator)
    assert result["worst_separator"] == slow and result["worst_separator_ratio"] == 0.5
    assert set(result["by_layout"]) == {"adjacent", "filler"}
    assert 0.1 < result["loss_ratio"] < 0.5
    assert result["loss_first_copy"] == pytest.approx(2.0)
    assert "induction_scores" not in result
    json.dumps(result)  # separators as keys: "", "\n" included


def test_successor_items_by_kind_step_form_and_frame(tokenizer):
    digits = ev._digit_ids(tokenizer)
    docs = encoded(tokenizer, "successor", 30, "heldout")
    runs = [oracle_run(doc, doc.ids[0]) for doc in docs]
    perfect = ev.successor_scores(runs, digits)
    assert perfect["accuracy"] == 1.0
    assert set(perfect["by_step"]) <= {1, 2, -1} and 1 in perfect["by_step"]
    items = [s for d in docs for s in d.example.spans_of("item") if d.holds(s)]
    assert set(perfect["by_frame"]) == {s.frame for s in items if s.form == "sentence"}
    assert "list" not in perfect["by_frame"] and "sentence" in perfect["by_form"]
    # a count that goes on past its last digit is wrong, as greedy decoding would write it
    doc, run, span = next(
        (d, r, s)
        for d, r in zip(docs, runs, strict=True)
        for s in d.example.spans_of("item")
        if s.sequence == "counting" and d.holds(s)
    )
    run.argmax[doc.tokens_in(span)[-1]] = digit(tokenizer, "0")
    scores = ev.successor_scores(runs, digits)
    assert scores["accuracy"] == pytest.approx(1 - 1 / perfect["n_items"])
    assert scores["by_kind"]["counting"] < 1.0 and scores["by_kind"]["weekdays"] == 1.0


def test_subtoken_induction_scores_later_subtokens_by_style(tokenizer):
    docs = encoded(tokenizer, "names", 40, "heldout_forms")
    runs = [oracle_run(doc, doc.ids[0]) for doc in docs]
    perfect = ev.subtoken_scores(runs)
    assert perfect["accuracy"] == 1.0 and perfect["n_subtokens"] > 20
    assert set(perfect["by_form"]) <= {"prose", "dialogue", "letter"}
    doc, run, span = next(
        (d, r, s)
        for d, r in zip(docs, runs, strict=True)
        for s in d.example.spans_of("name")
        if s.rare and s.earlier is not None and len(d.tokens_in(s)) >= 2 and d.holds(s)
    )
    second = doc.tokens_in(span)[1]
    run.argmax[second - 1] = doc.ids[0]
    scores = ev.subtoken_scores(runs)
    assert scores["accuracy"] == pytest.approx(1 - 1 / perfect["n_subtokens"])
    assert scores["mention_accuracy"] == pytest.approx(1 - 1 / perfect["n_mentions"])
    # the first sub-token of a name is not scored: it cannot be copied before it is said
    run.argmax[second - 1] = doc.ids[second]
    run.argmax[second - 2] = doc.ids[0]
    assert ev.subtoken_scores(runs)["accuracy"] == 1.0


def test_targets_use_each_splits_threshold():
    def split(add, worst, suc, sub):
        return {
            "addition": {"exact_match": add},
            "induction": {"worst_separator_ratio": worst},
            "successor": {"accuracy": suc},
            "subtoken_induction": {"accuracy": sub},
        }

    results = {"heldout": split(0.9, 0.1, 0.96, 0.8), "heldout_forms": split(0.9, 0.2, 0.86, 0.7)}
    t = ev.targets(results)
    met = {s: {name: c["met"] for name, c in t[s].items()} for s in ev.EVAL_SPLITS}
    assert met["heldout"] == {
        "addition_exact_match>=0.95": False,
        "induction_loss_ratio_every_separator<=0.15": True,
        "successor_accuracy>=0.95": True,
        "subtoken_induction_accuracy>=0.8": True,
    }
    assert met["heldout_forms"] == {
        "addition_exact_match>=0.85": True,
        "induction_loss_ratio_every_separator<=0.15": False,
        "successor_accuracy>=0.85": True,
        "subtoken_induction_accuracy>=0.7": True,
    }
    assert t["all_met"] is False
    assert t["heldout"]["addition_exact_match>=0.95"]["value"] == 0.9
    nan = split(*[float("nan")] * 4)
    unmeasured = ev.targets({"heldout": nan, "heldout_forms": nan})
    assert not any(c["met"] for s in ev.EVAL_SPLITS for c in unmeasured[s].values())


# ----------------------------------------------------------------- through a model
def test_oracle_is_perfect_and_blind_model_scores_nothing(oracle):
    perfect, blind, tokenizer = oracle
    for split in ev.EVAL_SPLITS:
        assert ev.successor_probe(perfect, tokenizer, 10, split)["accuracy"] == 1.0
        addition = ev.addition_probe(perfect, tokenizer, 10, split)
        assert addition["exact_match"] == addition["exact_match_own_space"] == 1.0
        assert ev.subtoken_induction_probe(perfect, tokenizer, 30, split)["accuracy"] == 1.0
        induction = ev.induction_probe(perfect, tokenizer, 10, split=split)
        assert induction["loss_second_copy"] < 1e-6  # and the first's: their ratio is 0/0
        # every separator's ratio is 0/0: none is the worst (an argmax over the NaNs named the
        # first, found by fuzz pass 22)
        assert all(math.isnan(r) for r in induction["by_separator"].values())
        assert induction["worst_separator"] is None
        loss = ev.heldout_loss(blind, tokenizer, 5, split)
        uniform = math.log(blind.cfg.d_vocab)
        assert all(math.isclose(v, uniform, rel_tol=1e-6) for v in loss.values())
        # argmax of flat logits is token 0, which never is the answer
        assert ev.addition_probe(blind, tokenizer, 10, split)["exact_match"] == 0.0
    assert ev.sink_probe(perfect, tokenizer, 2)["best_head_layer_ge_1"]["score"] == 1.0


def test_heldout_examples_take_a_split(tokenizer):
    default = ev.heldout_examples("repeat", 20)
    assert default == ev.heldout_examples("repeat", 20, ev.EVAL_SEED, "heldout")
    held_forms = ev.heldout_examples("repeat", 20, split="heldout_forms")
    forms = {e.spans_of("second")[0].form for e in held_forms}
    assert forms <= set(REPEAT_SEPARATORS["heldout"])
    assert not {e.spans_of("second")[0].form for e in default} & forms


def test_induction_scores_find_a_planted_induction_head(oracle, tiny_pretrained):
    _, _, tokenizer = oracle
    model, _ = tiny_pretrained
    docs = [ev.encode(tokenizer, e, model.cfg.n_ctx) for e in ev.heldout_examples("repeat", 12)]
    assert any(ev.copy_positions(d) for d in docs)

    # A head that attends to the token after the previous copy of the current token scores 1.
    class Planted(Oracle):
        def run_with_cache(self, tokens, names_filter=None):
            logits, cache = super().run_with_cache(tokens)
            b, n = tokens.shape
            pattern = torch.zeros(b, 2, n, n)
            for j in range(b):
                doc = next(d for d in docs if d.ids == tokens[j, : len(d.ids)].tolist())
                pattern[j, 0, :, 0] = 1.0
                for q in range(1, n):
                    pattern[j, 1, q, q - 1] = 1.0  # previous-token head
                if copies := ev.copy_positions(doc):
                    first, second = copies
                    off = second[0] - first[0]
                    for q in second[1:]:
                        pattern[j, 0, q] = 0
                        pattern[j, 0, q, q - off + 1] = 1.0
            cache = {"blocks.0.attn.hook_pattern": pattern, "blocks.1.attn.hook_pattern": pattern}
            return logits, cache

    planted = Planted(
        SimpleNamespace(d_vocab=model.cfg.d_vocab, n_ctx=model.cfg.n_ctx, n_layers=2, n_heads=2)
    )
    result = ev.induction_probe(planted, tokenizer, 12)
    assert result["best_induction_head"]["score"] == pytest.approx(1.0)
    assert result["best_previous_token_head"] == {
        "layer": 0,
        "head": 1,
        "score": pytest.approx(1.0),
    }
    assert result["loss_second_copy"] < 1e-6


def test_full_evaluation_runs_on_the_tiny_model(tiny_pretrained):
    model, tokenizer = tiny_pretrained
    results = ev.evaluate(model, tokenizer, n_docs=16)  # some repeat documents fit in 64 tokens
    for split in ev.EVAL_SPLITS:
        r = results[split]
        assert all(math.isfinite(v) for v in r["heldout_loss"].values())
        assert 0 <= r["addition"]["exact_match"] <= r["addition"]["exact_match_own_space"] <= 1
        assert r["induction"]["loss_ratio"] > 0
        assert r["induction"]["worst_separator"] in r["induction"]["by_separator"]
        assert set(results["targets"][split]) == {
            f"{name}{op}{thresholds[split]:g}" for name, (_, op, thresholds) in ev.TARGETS.items()
        }
    assert "best_induction_head" in results["heldout"]["induction"]
    text = ev.summary(json.loads(json.dumps(results, sort_keys=True)))
    assert "worst separator" in text and "forms" in text and "instances" in text
    assert len([line for line in text.splitlines() if line.startswith("addition")]) == 1


def test_hand_written_induction_reads_typed_spaced_ambiguous_and_separated_prompts(tiny_pretrained):
    """The benchmark's hand-written sentences: a prompt is ambiguous when its last token occurs
    earlier followed by different tokens, and holds a separator when its repeated sentence holds
    one of the corpus's repeat separators; the counts are the rows' own, and the spaced reading
    is a count of the same prompts."""
    bench = benchmark("toy_model")
    assert bench._ambiguous([0, 5, 6, 9, 5, 7, 5])  # 5 was followed by 6 and by 7
    assert not bench._ambiguous([0, 5, 6, 9, 5, 6, 5])  # always by 6
    assert not bench._ambiguous([0, 5, 6, 9])  # never seen before
    model, tokenizer = tiny_pretrained
    hand = bench.hand_written_induction(model, tokenizer)
    rows = hand["prompts"]
    assert hand["n"] == len(rows) == len(bench.HAND_WRITTEN_INDUCTION)
    assert hand["right"] == sum(r["right"] for r in rows)
    assert hand["ambiguous"] == {
        "right": sum(r["right"] for r in rows if r["ambiguous"]),
        "n": sum(r["ambiguous"] for r in rows),
    }
    assert 0 < hand["ambiguous"]["n"] < hand["n"]
    assert hand["holds_separator"] == {
        "right": sum(r["right"] for r in rows if r["holds_separator"]),
        "n": sum(r["holds_separator"] for r in rows),
    }
    # the sentence up to the word's first occurrence; a word-final separator ends a word
    assert bench.holds_separator("the horse and the bear. the horse and the", " bear")
    assert bench.holds_separator("one cup, two cups. one cup, two", " cups")
    assert not bench.holds_separator("Sandy sat near the pond. Sandy sat near the", " pond")
    assert not bench.holds_separator("an android dog. an android", " dog")
    assert 0 <= hand["right_with_leading_space"] <= hand["n"]


def test_separator_probe_reads_every_joiner_on_the_same_draws(tiny_pretrained):
    """Each joiner's rate is a share of the draws, the corpus's separators are marked, and a
    model that always answers B (the word after the second ` the`) gets every one right."""
    bench = benchmark("toy_model")
    model, tokenizer = tiny_pretrained
    probe = bench.separator_probe(model, tokenizer, n=20)
    assert probe["n"] == 20 and list(probe["joiners"]) == [
        j for j, _ in bench.SEPARATOR_PROBE_JOINERS
    ]
    assert {j for j, r in probe["joiners"].items() if r["separator"]} == {" and", " then", ","}
    assert all(0 <= r["right"] <= 1 and r["right"] * 20 == int(r["right"] * 20)
               for r in probe["joiners"].values())  # fmt: skip

    class Oracle(torch.nn.Module):
        """Puts everything on the token two after the last-but-one ` the`."""

        def forward(self, ids):
            the = tokenizer.encode(" the", add_special_tokens=False).ids[0]
            logits = torch.zeros(*ids.shape, tokenizer.get_vocab_size())
            for row, seq in enumerate(ids.tolist()):
                seen = [i for i, t in enumerate(seq[:-1]) if t == the]
                # the first copy's second ` the` is followed by B
                logits[row, -1, seq[seen[1] + 1]] = 1.0
            return logits

    perfect = bench.separator_probe(Oracle(), tokenizer, n=20)
    assert all(r["right"] == 1.0 for r in perfect["joiners"].values())


def test_probes_need_documents():
    """Found by a fuzz pass: 0 documents divided by zero inside every probe."""
    for n in (0, -1):
        with pytest.raises(ValueError, match=f"n_docs must be in 1..[0-9]+, got {n}"):
            ev.heldout_examples("repeat", n)
    with pytest.raises(ValueError, match="n_docs must be an integer, got 1.5"):
        ev.heldout_examples("repeat", 1.5)
    assert len(ev.heldout_examples("repeat", 1)) == 1


# ----------------------------------------------------------------- fuzz pass 22
def test_no_head_or_separator_is_named_from_undefined_scores(tokenizer, tiny_pretrained):
    """Found by fuzz pass 22: with ``--docs 1`` no second copy fits, every head score is NaN
    and the summary named ``best induction head L0H0 nan`` (an argmax over NaNs) and ``worst
    separator None nan%``; a separator whose ratio is undefined could be named the worst (a
    NaN is neither above nor below). Only defined scores are ranked; with none, the summary
    says there is not enough data."""
    nan = float("nan")
    assert ev._best(torch.full((2, 2), nan)) is None
    assert ev._best(torch.tensor([[nan, 0.2], [0.5, nan]])) == {"layer": 1, "head": 0,
                                                                "score": 0.5}  # fmt: skip
    docs = encoded(tokenizer, "repeat", 60, "heldout")
    separators = sorted({d.example.spans_of("second")[0].form for d in docs
                         if ev.copy_positions(d)})  # fmt: skip
    assert len(separators) >= 2
    undefined, slow = separators[0], separators[-1]  # the undefined one ranked first
    runs = repeat_runs(docs, slow)
    for run in runs:
        copies = ev.copy_positions(run.doc)
        if copies and run.doc.example.spans_of("second")[0].form == undefined:
            for p in copies[0]:
                run.log_prob[p - 1] = 0.0  # a first copy of loss 0: no ratio
    result = ev.induction_scores(runs, head_scores=False)
    assert math.isnan(result["by_separator"][undefined])
    assert result["worst_separator"] == slow and result["worst_separator_ratio"] == 0.5

    model, tokenizer = tiny_pretrained
    results = ev.evaluate(model, tokenizer, n_docs=1)
    induction = results["heldout"]["induction"]
    assert induction["n_copies"] == 0  # the premise: one document, no second copy fits
    assert induction["best_induction_head"] is None and induction["worst_separator"] is None
    text = ev.summary(json.loads(json.dumps(results)))
    line = next(line for line in text.splitlines() if line.startswith("induction"))
    assert "best induction head none (not enough data: more --docs)" in line
    assert "nan" not in line and "None" not in line


def test_evaluate_refuses_overflowing_weights_and_never_writes_over_saved_work(
    tiny_run, tmp_path, cli
):
    """Found by fuzz pass 22: a model whose finite weights overflow in use was evaluated to
    NaN losses, printed and written with exit 0 (``replacement.evaluate`` refuses such a
    set); and ``--json`` replaced any file (another set's replacement.json, a checkpoint's
    state, a user's notes) or wrote into a run's checkpoint, which the run's next checkpoint
    deletes. Each refused in one line, nothing written; a rerun replaces its own results."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_run, model, ignore=shutil.ignore_patterns("data", "checkpoint"))
    other, checkpoint = tmp_path / "set", tmp_path / "run" / "checkpoint"
    other.mkdir()
    (other / "replacement.json").write_text('{"format_version": 2}')
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.safetensors").write_text("weights")
    (checkpoint / "state.json").write_text('{"step": 10}')
    (tmp_path / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for path, why in (
        (other / "replacement.json", "exists and is not an earlier results file"),
        (checkpoint / "state.json", "exists and is not an earlier results file"),
        (tmp_path / "notes.txt", "exists and is not an earlier results file"),
        (checkpoint / "eval.json", "is inside a training checkpoint"),
    ):
        code, stdout, err = cli(ev.main, "--model", model, "--docs", "1", "--json", path)
        assert code == 2 and stdout == "" and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith(f"error: --json {path}: {why}")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    results = tmp_path / "eval.json"
    for _ in range(2):  # the second run replaces the first's results
        code, _, err = cli(ev.main, "--model", model, "--docs", "1", "--json", results)
        assert code == 0, err
    assert ev.RESULT_KEYS <= json.loads(results.read_text()).keys()

    weights = load_file(str(model / "model.safetensors"))
    weights["blocks.0.mlp.W_out"] = weights["blocks.0.mlp.W_out"] * 1e30  # finite, overflows
    save_file(weights, str(model / "model.safetensors"))
    results.unlink()
    code, stdout, err = cli(ev.main, "--model", model, "--docs", "1", "--json", results)
    assert code == 2 and stdout == "" and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: {model}: the model gives non-finite figures (heldout.heldout_loss.names, "
        "heldout.heldout_loss.addition, heldout.heldout_loss.successor, ...): its weights "
        "overflow"
    )
    assert not results.exists()


def test_figures_not_measured_are_null_in_the_results_not_nan():
    """A reviewer's 30-step model wrote 18 bare NaNs into its evaluation JSON (not JSON to a
    strict reader), and printed `NOT met (nan)` and `recovered nan%`: a figure the data cannot
    give is null in the file and said as such in the printout; loss recovered over a gap of
    noise (under ``MIN_GAP`` nats) is not measured."""
    import json
    import math

    from replacement.evaluate import MIN_GAP, summary_lines
    from toy_models.records import finite_or_null

    data = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "x", "e": 2}
    clean, n = finite_or_null(data)
    assert n == 3 and clean == {"a": None, "b": [1.0, None, {"c": None}], "d": "x", "e": 2}
    json.loads(json.dumps(clean, allow_nan=False))
    layer = {"ce": 2.0, "kl": 0.1, "ce_mean_ablated": 2.0 + MIN_GAP / 2, "loss_recovered": math.nan}
    rec = {"fvu": 0.1, "l0": 4.0, "dead_fraction": 0.0}
    r = {"reconstruction": {"lorsa": [rec], "transcoder": [rec]},
         "loss": {"ce_original": 2.0, "spliced_alone": {"lorsa": [layer], "transcoder": [layer]},
                  "all_layers": {**layer, "loss_recovered": 0.5}},
         "families": {"original": dict.fromkeys(("addition", "induction_loss_ratio", "successor",
                                                 "subtoken_induction"), 0.5)}}  # fmt: skip
    r["families"]["sparse"] = r["families"]["original"]
    text = "\n".join(summary_lines(r))
    assert "nan" not in text and "n/a" in text and "loss recovered 50.0%" in text
    assert f"mean-ablating costs under {MIN_GAP} nats there" in text


def test_the_results_file_says_how_many_figures_were_not_measured(tmp_path, capsys):
    """Both evaluation commands write their ``--json`` through ``write_measured_json``."""
    import json

    from toy_models.records import write_measured_json

    path = tmp_path / "r.json"
    write_measured_json(path, {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}
    note = "note: 2 figures could not be measured on this data (null in the JSON)"
    assert capsys.readouterr().err == f"{note}\nwrote {path}\n"
