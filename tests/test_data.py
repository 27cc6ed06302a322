import random
import re

import pytest

from toy_models.data import (
    COMMON_NAMES,
    FAMILIES,
    addition_example,
    build_corpus,
    count_carries,
    examples,
    is_heldout,
    names_example,
    pack_sequences,
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
    for (start, end), line in zip(ex.spans["answer"], ex.text.splitlines(), strict=True):
        a, b = map(int, line.split("=")[0].split("+"))
        assert ex.text[start:end] == str(a + b)
    ex = names_example(rng)
    for tag, spans in ex.spans.items():
        assert all(ex.text[s:e] == tag.removeprefix("name:") for s, e in spans)
        assert len(spans) >= 2  # every character recurs
    ex = repeat_example(rng)
    (s1, e1), (s2, e2) = ex.spans["first"][0], ex.spans["second"][0]
    assert ex.text[s1:e1] == ex.text[s2:e2]
    ex = successor_example(rng)
    assert all(tag.startswith("item:") for tag in ex.spans)


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
