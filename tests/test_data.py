import hashlib
import random
import re

import pytest
import torch

from toy_models.data import (
    COMMON_NAMES,
    FAMILIES,
    ORDERED_LISTS,
    addition_example,
    build_corpus,
    count_carries,
    examples,
    is_heldout,
    names_example,
    pack_sequences,
    pad_rows,
    rare_name,
    repeat_example,
    successor_example,
)
from toy_models.tokenizer import BOS, train_tokenizer


def test_streams_are_deterministic_and_seed_dependent():
    for family in FAMILIES:
        a = [next(s).text for s in [examples(family, "train", 3)] for _ in range(5)]
        b = [next(s).text for s in [examples(family, "train", 3)] for _ in range(5)]
        c = [next(s).text for s in [examples(family, "train", 4)] for _ in range(5)]
        assert a == b and a != c


def test_unknown_family_and_split_are_refused():
    with pytest.raises(ValueError, match="unknown task family 'poems'"):
        next(examples("poems", "train", 0))
    with pytest.raises(ValueError, match="unknown split"):
        next(examples("names", "test", 0))


def test_heldout_addition_and_names_are_disjoint_from_training():
    rng = random.Random(0)
    for split in ("train", "heldout"):
        for _ in range(50):
            ex = addition_example(rng, split)
            for line in ex.text.splitlines():
                assert is_heldout(line.split("=")[0]) == (split == "heldout")
            assert is_heldout(rare_name(rng, split)) == (split == "heldout")


def test_spans_mark_what_the_probes_score():
    rng = random.Random(1)
    ex = addition_example(rng)
    answers = ex.spans_of("answer")
    for span, line in zip(answers, ex.text.splitlines(), strict=True):
        a, b = map(int, line.split("=")[0].split("+"))
        assert ex.text[span.start : span.end] == span.value == str(a + b)
        first, second = span.operands
        assert (first.value, second.value) == (str(a), str(b))
        assert ex.text[first.start : second.end] == f"{a}+{b}"
    ex = names_example(rng)
    mentions = {}
    for span in ex.spans_of("name"):
        assert ex.text[span.start : span.end] == span.value
        assert span.rare == (span.value not in COMMON_NAMES)
        assert span.occurrences_before() == mentions.get(span.value, [])
        mentions.setdefault(span.value, []).append(span)
    assert len(mentions) == 2
    assert all(len(spans) >= 2 for spans in mentions.values())  # every character recurs
    ex = repeat_example(rng)
    (first,), (second,) = ex.spans_of("first"), ex.spans_of("second")
    assert ex.text[first.start : first.end] == ex.text[second.start : second.end]
    assert second.earlier == first
    ex = successor_example(rng)
    assert ex.spans and all(span.kind == "item" for span in ex.spans)
    for span in ex.spans:
        items = ORDERED_LISTS[span.sequence]
        before = span.previous
        assert ex.text[before.start : before.end] == before.value
        assert ex.text[before.end : span.start] == ", "
        assert items.index(span.value) == (items.index(before.value) + 1) % len(items)
    with pytest.raises(ValueError, match="unknown span kind 'answers'"):
        ex.spans_of("answers")


def test_spans_of_held_out_documents_hold_their_text():
    for family in FAMILIES:
        stream = examples(family, "heldout", 12345)
        for _ in range(20):
            ex = next(stream)
            for span in ex.spans:
                for s in (span, span.earlier, span.previous, *span.operands):
                    if s is not None:
                        assert ex.text[s.start : s.end] == s.value


# sha256 over the text of the first 50 documents of every family, split and seeds 0 and 1,
# computed before spans carried values: the shipped model was trained on this text.
TEXT_SHA256 = "e4e531b73a69ce86a6f53a1834e4964e03d3a5bec093a72136f84752b009db22"


def test_generated_text_is_unchanged():
    digest = hashlib.sha256()
    for family in FAMILIES:
        for split in ("train", "heldout"):
            for seed in (0, 1):
                stream = examples(family, split, seed)
                for _ in range(50):
                    digest.update(next(stream).text.encode() + b"\0")
    assert digest.hexdigest() == TEXT_SHA256


def test_padded_rows_give_each_row_its_own_logits(random_model):
    rows = [[0, 5, 7, 9, 11], [0, 3], [0, 4, 4]]
    tokens = pad_rows(rows)
    assert tokens.tolist() == [[0, 5, 7, 9, 11], [0, 3, 0, 0, 0], [0, 4, 4, 0, 0]]
    with torch.no_grad():
        logits = random_model(tokens)
        for j, row in enumerate(rows):
            alone = random_model(torch.tensor([row]))[0]
            torch.testing.assert_close(logits[j, : len(row)], alone)


def test_count_carries():
    assert count_carries(347, 285) == 2
    assert count_carries(999, 1) == 3
    assert count_carries(12, 34) == 0


def test_corpus_is_cached_and_packed_rows_start_with_bos(tmp_path):
    sizes = {"names": 20, "addition": 10, "successor": 10, "repeat": 20}
    corpus = build_corpus(sizes, seed=0, cache_dir=tmp_path)
    assert set(corpus) == {"train", "heldout"}
    assert corpus["train"].num_rows == 60 and corpus["heldout"].num_rows == 6
    again = build_corpus(sizes, seed=0, cache_dir=tmp_path)
    assert again["train"]["text"] == corpus["train"]["text"]
    tokenizer = train_tokenizer(iter(corpus["train"]["text"]), 300)
    rows, family = pack_sequences(corpus["train"], tokenizer, 32)
    assert rows.shape[1] == 32 and len(family) == len(rows)
    assert (rows[:, 0] == tokenizer.token_to_id(BOS)).all()
    assert (rows[:, 1:] != tokenizer.token_to_id(BOS)).all()
    # every row starts at a document's start, as a prompt does
    for row, fam in zip(rows, family, strict=True):
        text = tokenizer.decode(row[1:].tolist())
        if FAMILIES[fam] == "addition":
            assert re.match(r"\d+\+\d+=\d+\n", text), text
        if FAMILIES[fam] == "repeat":
            assert text.startswith(" "), text


def test_tokenizer_splits_digits_and_prepends_bos():
    rng = random.Random(0)
    texts = [addition_example(rng).text for _ in range(200)] + [
        names_example(rng).text for _ in range(200)
    ]
    tokenizer = train_tokenizer(texts, 300)
    enc = tokenizer.encode("347+285=632\n")
    assert enc.tokens[0] == BOS
    assert [t for t in enc.tokens if t.isdigit()] == list("347285632")
    assert tokenizer.decode(enc.ids) == "347+285=632\n"
    assert all(n not in COMMON_NAMES for n in (rare_name(rng, "train") for _ in range(20)))
