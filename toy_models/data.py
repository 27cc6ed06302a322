"""The generated corpus: a seeded mixture of task families whose mechanisms are known.

Families (each document is plain text; the tokenizer adds the BOS sink token):
- ``names``: short stories in which two characters recur. Common names become single tokens;
  rare names are generated from syllables so that the tokenizer splits them into sub-tokens, and
  their continuation on a later mention can only come from copying (subtoken induction).
- ``addition``: lines ``347+285=632`` with operands of one to three digits (carries included).
- ``successor``: ordered lists (weekdays, months, number words, letters, ordinals, counting).
- ``repeat``: a random segment of words followed by an exact copy of it (induction).

Every generator takes a ``split`` ("train" or "heldout"). Held-out addition problems and held-out
rare names are disjoint from the training ones (by a stable hash), so held-out accuracy measures
the mechanism rather than memorisation. Each generator returns an ``Example`` whose ``spans``
mark the characters an evaluation probe scores, each with what the generator knows about it
(the name, the operands and their places, the previous list item, the earlier occurrence), so
that analyses never re-parse the text.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .tokenizer import bos_id

FAMILIES = ("names", "addition", "successor", "repeat")
SPLITS = ("train", "heldout")
CORPUS_VERSION = 2

COMMON_NAMES = (
    "Anna John Mary Tom Lucy Sam Emma Jack Kate Ben Lily Max Sara Paul Alice Mark Rose Peter "
    "Jane David Ella Adam Grace Leo Clara Nick Julia Oscar Eva Hugo Nora Felix"
).split()
PLACES = (
    "market park river school garden station library beach forest village castle bakery "
    "harbor museum farm bridge kitchen tower valley island"
).split()
OBJECTS = (
    "apple book lamp coin letter basket hat ring map key cup flower box kite drum candle "
    "shell stone bell rope"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = (
    "January February March April May June July August September October November December"
).split()
NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"
).split()
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
ORDERED_LISTS: dict[str, list[str]] = {
    "weekdays": WEEKDAYS,
    "months": MONTHS,
    "number_words": NUMBER_WORDS,
    "ordinals": ORDINALS,
    "letters": LETTERS,
    "counting": [str(i) for i in range(1, 100)],
}
# The pool that repeated random segments draw from: frequent enough in the corpus to be
# single tokens, unrelated to one another so that the first copy is unpredictable.
REPEAT_WORDS = sorted(
    set(PLACES + OBJECTS + NUMBER_WORDS + WEEKDAYS + MONTHS + ORDINALS)
    | set(
        (
            "red blue green small big old new happy sad fast slow warm cold dark bright loud "
            "quiet soft hard sweet river cloud rain snow wind sun moon star tree leaf bird fish "
            "dog cat horse mouse bear wolf fox owl frog door window table chair bread milk tea "
            "water fire glass paper pen song dance game road hill sea ship car train boat"
        ).split()
    )
)

_ONSETS = "b c d f g h j k l m n p r s t v z br cl dr gr kr st th tr qu sh ph bl fr".split()
_VOWELS = "a e i o u ia ea ou y ae io".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "x", "nd", "m", "lle", "ne", "sh"]


SPAN_KINDS = ("name", "answer", "operand", "item", "first", "second")


@dataclass(frozen=True)
class Span:
    """Characters ``text[start:end] == value`` of a document, and what the generator knows
    about them; the fields that do not apply to a kind keep their defaults.

    ==========  ===========  =====================================================================
    family      kind         value, and the other fields
    ==========  ===========  =====================================================================
    names       ``name``     a character's name; ``rare``: generated from syllables (not one of
                             ``COMMON_NAMES``); ``earlier``: the same name's previous mention
    addition    ``answer``   the digits of ``a + b``; ``operands``: the spans of ``a`` and ``b``
                ``operand``  an addend's digits (inside an answer's ``operands``)
    successor   ``item``     a list element after the first; ``sequence``: its list's name in
                             ``ORDERED_LISTS``; ``previous``: the element before it (a list's
                             first element, which no probe scores, appears only here)
    repeat      ``first``    the random segment, with its leading space
                ``second``   its copy; ``earlier``: the ``first`` span
    ==========  ===========  =====================================================================
    """

    start: int
    end: int
    kind: str
    value: str
    earlier: Span | None = None  # the previous occurrence of the same text
    previous: Span | None = None  # the list element before this one
    operands: tuple[Span, ...] = ()
    sequence: str | None = None
    rare: bool = False

    def occurrences_before(self) -> list[Span]:
        """Every earlier occurrence of the same text (``earlier``, its ``earlier``, ...), in
        text order."""
        out, span = [], self.earlier
        while span is not None:
            out.append(span)
            span = span.earlier
        return out[::-1]


@dataclass(frozen=True)
class Example:
    """One document and the spans an evaluation probe scores, in text order."""

    family: str
    text: str
    spans: tuple[Span, ...] = ()

    def spans_of(self, kind: str) -> list[Span]:
        """The spans of one kind (``SPAN_KINDS``), in text order."""
        if kind not in SPAN_KINDS:
            raise ValueError(f"unknown span kind {kind!r}; known: {', '.join(SPAN_KINDS)}")
        return [span for span in self.spans if span.kind == kind]


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's ``hash`` is salted per run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def is_heldout(key: str, fraction: int = 8) -> bool:
    """Whether an item (an addition problem, a rare name) belongs to the held-out split."""
    return stable_hash(key) % fraction == 0


def rare_name(rng: random.Random, split: str) -> str:
    """A pronounceable generated name of 2-3 syllables from the given split."""
    while True:
        n_syll = rng.choice((2, 2, 3))
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll)]
        name = ("".join(parts) + rng.choice(_CODAS)).capitalize()
        if len(name) >= 5 and name not in COMMON_NAMES and is_heldout(name) == (split == "heldout"):
            return name


def _pick_names(rng: random.Random, split: str, p_rare: float = 0.5) -> tuple[str, str]:
    first, second = (
        rare_name(rng, split) if rng.random() < p_rare else rng.choice(COMMON_NAMES)
        for _ in range(2)
    )
    while second == first:
        second = rng.choice(COMMON_NAMES)
    return first, second


_OPENINGS = (
    "{A} and {B} went to the {P}.",
    "One day, {A} met {B} at the {P}.",
    "{A} lived near the {P} with {B}.",
    '"Hello, {B}!" said {A} at the {P}.',
)
_MIDDLES = (
    "{A} gave {B} a {O}.",
    "{B} asked {A} about the {O}.",
    "{A} found a {O} near the {P}.",
    "{B} smiled at {A}.",
    '"Look at this {O}," {A} told {B}.',
    "Then {B} showed {A} the {O}.",
    "{A} and {B} carried the {O} home.",
)
_ENDINGS = (
    "Later, {B} thanked {A}.",
    "In the evening, {A} went home.",
    "At last, {A} and {B} laughed.",
    "{B} said goodbye to {A}.",
)


class _Builder:
    """Appends text pieces; ``span`` appends one and returns its ``Span``, ``mark`` records a
    span as one that a probe scores."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.spans: list[Span] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def span(self, text: str, kind: str, **fields) -> Span:
        """Append ``text`` and return its span (``fields``: the rest of what is known)."""
        span = Span(self.length, self.length + len(text), kind, text, **fields)
        self.add(text)
        return span

    def mark(self, span: Span) -> Span:
        self.spans.append(span)
        return span

    def example(self, family: str) -> Example:
        return Example(family, "".join(self.parts), tuple(self.spans))


def _fill(
    builder: _Builder,
    template: str,
    names: dict[str, str],
    values: dict[str, str],
    mentions: dict[str, Span],
) -> None:
    """Write a template, marking each name occurrence with a ``name`` span linked to the same
    name's previous mention (``mentions``: each name's latest one so far, updated here)."""
    pos = 0
    while pos < len(template):
        start = template.find("{", pos)
        if start < 0:
            builder.add(template[pos:])
            break
        builder.add(template[pos:start])
        end = template.index("}", start)
        key = template[start + 1 : end]
        if key in names:
            name = names[key]
            span = builder.span(
                name, "name", earlier=mentions.get(name), rare=name not in COMMON_NAMES
            )
            mentions[name] = builder.mark(span)
        else:
            builder.add(values[key])
        pos = end + 1


def names_example(rng: random.Random, split: str = "train") -> Example:
    """A story in which two characters (common or rare names) recur several times."""
    a, b = _pick_names(rng, split)
    names = {"A": a, "B": b}
    values = {"P": rng.choice(PLACES), "O": rng.choice(OBJECTS)}
    builder, mentions = _Builder(), {}
    templates = [rng.choice(_OPENINGS)]
    templates += rng.sample(_MIDDLES, rng.randint(2, 4))
    templates.append(rng.choice(_ENDINGS))
    for i, template in enumerate(templates):
        if rng.random() < 0.5:  # the roles swap so that either name can come next
            template = template.replace("{A}", "{_}").replace("{B}", "{A}").replace("{_}", "{B}")
        _fill(builder, ("" if i == 0 else " ") + template, names, values, mentions)
        values["O"] = rng.choice(OBJECTS) if rng.random() < 0.3 else values["O"]
    builder.add("\n")
    return builder.example("names")


def count_carries(a: int, b: int) -> int:
    carries, carry = 0, 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        carries += carry
        a, b = a // 10, b // 10
    return carries


def addition_problem(
    rng: random.Random, split: str = "train", max_digits: int = 3
) -> tuple[int, int]:
    """Operands with a uniformly drawn digit count each, from the requested split."""
    while True:
        a, b = (
            rng.randrange(10 ** (d - 1) if d > 1 else 0, 10**d)
            for d in (rng.randint(1, max_digits), rng.randint(1, max_digits))
        )
        if is_heldout(f"{a}+{b}") == (split == "heldout"):
            return a, b


def addition_example(rng: random.Random, split: str = "train", n_problems: int = 8) -> Example:
    """Lines ``a+b=c``; an ``answer`` span covers each ``c`` (the part a probe generates) and
    holds the ``operand`` spans of ``a`` and ``b``."""
    builder = _Builder()
    for _ in range(n_problems):
        a, b = addition_problem(rng, split)
        first = builder.span(str(a), "operand")
        builder.add("+")
        second = builder.span(str(b), "operand")
        builder.add("=")
        builder.mark(builder.span(str(a + b), "answer", operands=(first, second)))
        builder.add("\n")
    return builder.example("addition")


def successor_example(rng: random.Random, split: str = "train", n_lists: int = 4) -> Example:
    """Ordered lists; an ``item`` span covers each element after a list's first and names its
    list (``sequence``) and the element before it (``previous``)."""
    builder = _Builder()
    for _ in range(n_lists):
        kind = rng.choice(sorted(ORDERED_LISTS))
        items = ORDERED_LISTS[kind]
        length = rng.randint(4, 9)
        wrap = kind in ("weekdays", "months")
        start = rng.randrange(len(items) if wrap else len(items) - length + 1)
        seq = [items[(start + i) % len(items)] for i in range(length)]
        previous = builder.span(seq[0], "item", sequence=kind)
        for item in seq[1:]:
            builder.add(", ")
            previous = builder.mark(builder.span(item, "item", sequence=kind, previous=previous))
        builder.add(".\n")
    return builder.example("successor")


def repeat_example(rng: random.Random, split: str = "train") -> Example:
    """A random word segment and its copy: spans ``first`` and ``second`` (whose ``earlier`` is
    the first)."""
    segment = " ".join(rng.choice(REPEAT_WORDS) for _ in range(rng.randint(8, 20)))
    builder = _Builder()
    # The leading space makes both copies tokenize identically (the first word included).
    first = builder.mark(builder.span(" " + segment, "first"))
    builder.add(" |")
    builder.mark(builder.span(" " + segment, "second", earlier=first))
    builder.add("\n")
    return builder.example("repeat")


GENERATORS: dict[str, Callable[..., Example]] = {
    "names": names_example,
    "addition": addition_example,
    "successor": successor_example,
    "repeat": repeat_example,
}


def examples(family: str, split: str, seed: int) -> Iterator[Example]:
    """An endless, deterministic stream of one family's documents."""
    if family not in GENERATORS:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    rng = random.Random(f"{family}/{split}/{seed}")
    while True:
        yield GENERATORS[family](rng, split)


def build_corpus(n_docs: dict[str, int], seed: int = 0, cache_dir: Path | None = None):
    """The corpus as a ``datasets.DatasetDict`` (splits train/heldout; columns family, text).

    ``n_docs`` maps each family to its number of training documents; the held-out split gets
    a tenth as many. Built once per (version, seed, sizes) and cached as Arrow files.
    """
    import datasets

    datasets.disable_progress_bars()
    unknown = set(n_docs) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown task families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    key = "-".join(f"{f}{n_docs[f]}" for f in sorted(n_docs))
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"corpus-v{CORPUS_VERSION}-s{seed}-{key}"
        if path.exists():
            return datasets.load_from_disk(str(path))

    def rows(split: str) -> dict[str, list[str]]:
        family_col, text_col = [], []
        for family, n in n_docs.items():
            stream = examples(family, split, seed)
            for _ in range(n if split == "train" else max(1, n // 10)):
                family_col.append(family)
                text_col.append(next(stream).text)
        return {"family": family_col, "text": text_col}

    corpus = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(rows(split)) for split in SPLITS}
    )
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        corpus.save_to_disk(str(tmp))
        tmp.rename(path)
    return corpus


def pack_rows(documents: Iterable[list[int]], n_ctx: int, bos: int) -> Iterator[list[int]]:
    """Pack tokenized documents (without BOS) into rows ``[BOS, doc, doc, ...]`` of ``n_ctx``.

    Every row starts at a document's first token, as a prompt does, so that what follows
    BOS in training is what follows it at inference; the document that overflows a row is
    cut there and its rest is dropped.
    """
    row = [bos]
    for doc in documents:
        row.extend(doc)
        if len(row) >= n_ctx:
            yield row[:n_ctx]
            row = [bos]


def pad_rows(rows: list[list[int]]):
    """Rows of token ids of different lengths as one ``(batch, pos)`` tensor, right-padded with
    each row's first token (BOS): through a causal model padding never reaches earlier
    positions, so each row's logits are what it alone would give."""
    import torch

    width = max(len(row) for row in rows)
    return torch.tensor([row + [row[0]] * (width - len(row)) for row in rows])


def pack_sequences(corpus_split, tokenizer, n_ctx: int):
    """Tokenize a split and pack each family's documents into rows (see ``pack_rows``).

    Families are never mixed within a row. Returns ``(tokens (rows, n_ctx), family index per
    row)`` with indices into ``FAMILIES``.
    """
    import torch

    bos = bos_id(tokenizer)
    rows, row_family = [], []
    for f_idx, family in enumerate(FAMILIES):
        texts = [
            t
            for t, f in zip(corpus_split["text"], corpus_split["family"], strict=True)
            if f == family
        ]
        # encode_batch adds BOS to each document; strip it, since rows are packed.
        docs = (enc.ids[1:] for enc in tokenizer.encode_batch(texts))
        packed = list(pack_rows(docs, n_ctx, bos))
        rows += packed
        row_family += [f_idx] * len(packed)
    return torch.tensor(rows), torch.tensor(row_family)


def stream_rows(
    tokenizer, n_ctx: int, split: str = "train", seed: int = 0
) -> Iterator[tuple[str, list[int]]]:
    """An endless stream of ``(family, row)`` rows, generated and packed on the fly.

    Families take turns at random with equal odds; rows are packed as ``pack_rows`` packs
    them. Nothing is held beyond the current row of each family, so it serves streaming
    consumers (activation stores).
    """
    rng = random.Random(f"rows/{split}/{seed}")
    bos = bos_id(tokenizer)

    def family_rows(family: str) -> Iterator[list[int]]:
        docs = (tokenizer.encode(e.text).ids[1:] for e in examples(family, split, seed))
        return pack_rows(docs, n_ctx, bos)

    streams = {family: family_rows(family) for family in FAMILIES}
    while True:
        family = rng.choice(FAMILIES)
        yield family, next(streams[family])
