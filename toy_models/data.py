"""The generated corpus: a seeded mixture of task families whose mechanisms are known.

Families (each document is plain text; the tokenizer adds the BOS sink token):
- ``names``: short stories, dialogues and letters in which two characters recur. Common names
  become single tokens; rare names are generated from syllables so that the tokenizer splits
  them into sub-tokens, and their continuation on a later mention can only come from copying
  (subtoken induction).
- ``addition``: problems ``347+285=632`` in many spacings, sentence frames and chains
  (``12+30=42, 42+7=49``), with operands of one to three digits (carries included).
- ``successor``: ordered lists (weekdays, months, number words, letters, ordinals, counting) in
  many formats, starting mid-cycle, wrapping around, with gaps and backwards; and sentences
  whose answer is the successor of an item said far back (``Today is Friday. ... Tomorrow is
  Saturday.``), so a head's OV, not only an MLP, has a reason to map item -> next item.
- ``repeat``: a random segment of words and a copy of it, with many separators (and none),
  often inside filler text (induction). Half the documents that open with their segment open
  with no space, as a typed prompt does (corpus v5), so the first word of a prompt need not
  tokenize as it does after a space for the model to copy what follows.

Stretches of filler (random unrelated words) give heads long spans with nothing to do, where
attention sinks form.

**Splits.** Every generator takes a ``split``:

- ``train``: training items in training forms;
- ``heldout``: held-out *instances* (addition problems and rare names disjoint from training
  ones by a stable hash; new random segments and lists) in the training forms: memory;
- ``heldout_forms``: held-out instances in held-out *forms* (separators, sentence frames, list
  and addition formats never seen in training): generalisation. A held-out form is a new
  arrangement of tokens that training text contains (``tests/test_data.py`` checks it against
  the training corpus' vocabulary use): a token that never occurs in training has an untrained
  embedding, and a form made of one would measure that, not whether a mechanism generalises.

Each generator returns an ``Example`` whose ``spans`` mark the characters an evaluation probe
scores, each with what the generator knows about it (the name, the operands and their places,
the previous list item and the step, the earlier occurrence, the form it was written in), so
that analyses never re-parse the text.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .tokenizer import bos_id

FAMILIES = ("names", "addition", "successor", "repeat")
SPLITS = ("train", "heldout", "heldout_forms")
CORPUS_SPLITS = ("train", "heldout")  # what ``build_corpus`` materialises
CORPUS_VERSION = 5


def form_split(split: str) -> str:
    """Which forms a split draws from: ``train`` or ``heldout``."""
    return "heldout" if _checked_split(split) == "heldout_forms" else "train"


def item_split(split: str) -> str:
    """Which items (addition problems, rare names) a split draws from."""
    return "train" if _checked_split(split) == "train" else "heldout"


def _checked_split(split: str) -> str:
    """``split`` when it is one of ``SPLITS``: a misspelt held-out split would otherwise draw
    training forms or items, and a held-out measurement would silently measure memory."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


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
CYCLIC_LISTS = ("weekdays", "months")  # lists that wrap around (Sunday -> Monday)
# The pool that repeated random segments and filler draw from: frequent enough in the corpus to
# be single tokens, unrelated to one another so that the first copy is unpredictable.
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
FILLER_WORDS = (
    REPEAT_WORDS
    + (
        "the a of and to in is was it that on for with as at by from this some very then there"
    ).split()
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
    addition    ``answer``   the digits of ``a + b``; ``operands``: the spans of ``a`` and ``b``;
                             ``number``: ``a + b``
                ``operand``  an addend's digits (inside an answer's ``operands``); ``number``: it
    successor   ``item``     a list element (or a sentence's answer) that its ``previous`` and
                             ``step`` determine: ``value`` is ``step`` places after ``previous``
                             in ``ORDERED_LISTS[sequence]`` (negative: backwards; lists in
                             ``CYCLIC_LISTS`` wrap). A list's first element, and the second of
                             a list whose step is not +1, appear only as ``previous``.
    repeat      ``first``    the random segment, with its leading space (in a document that
                             opens with its segment bare, from the segment's second word on)
                ``second``   its copy; ``earlier``: the ``first`` span
    ==========  ===========  =====================================================================

    ``form`` names the surface form a scored span was written in (the separator between two
    copies, the list format, the addition spacing, the story style) and ``frame`` what is around
    it (the sentence template, ``"list"``, the repeat layout), so a probe reports by form.
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
    step: int = 0  # successor items: places from ``previous`` to this one
    form: str = ""  # the surface form (separator, list format, spacing, story style)
    frame: str = ""  # the sentence frame or layout around it
    number: int | None = None  # answers and operands: the number written (never re-parsed)

    def __post_init__(self) -> None:
        numeric = self.kind in ("answer", "operand")
        if numeric != (self.number is not None) or (numeric and str(self.number) != self.value):
            raise ValueError(f"a span of kind {self.kind!r} holds {'its' if numeric else 'no'} "
                             f"number: got number={self.number!r} for {self.value!r}")  # fmt: skip

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
    """A pronounceable generated name of 2-3 syllables from the given split's items."""
    held = item_split(split) == "heldout"
    while True:
        n_syll = rng.choice((2, 2, 3))
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll)]
        name = ("".join(parts) + rng.choice(_CODAS)).capitalize()
        if len(name) >= 5 and name not in COMMON_NAMES and is_heldout(name) == held:
            return name


def _pick_names(rng: random.Random, split: str, p_rare: float = 0.5) -> tuple[str, str]:
    first, second = (
        rare_name(rng, split) if rng.random() < p_rare else rng.choice(COMMON_NAMES)
        for _ in range(2)
    )
    while second == first:
        second = rng.choice(COMMON_NAMES)
    return first, second


def filler(rng: random.Random, n_words: int) -> str:
    """Random unrelated words (with a leading space): a stretch in which no earlier token helps
    predict the next, so heads have nothing to do."""
    words = [rng.choice(FILLER_WORDS) for _ in range(n_words)]
    return " " + " ".join(words)


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


# --- names -------------------------------------------------------------------------------------
# Templates in three styles (prose; dialogue; letter: greeting, lines, sign-off); {A} and {B} are
# the two characters, {P} a place, {O} an object. Each style keeps some templates out of training
# (the held-out forms).
_NAME_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "opening": (
            "{A} and {B} went to the {P}.",
            "One day, {A} met {B} at the {P}.",
            "{A} lived near the {P} with {B}.",
            '"Hello, {B}!" said {A} at the {P}.',
            "At the {P}, {A} waited for {B}.",
            "{A} walked to the {P}; {B} followed.",
            "Once upon a time, {A} and {B} found a {O}.",
            "It was cold when {A} saw {B} by the {P}.",
        ),
        "middle": (
            "{A} gave {B} a {O}.",
            "{B} asked {A} about the {O}.",
            "{A} found a {O} near the {P}.",
            "{B} smiled at {A}.",
            '"Look at this {O}," {A} told {B}.',
            "Then {B} showed {A} the {O}.",
            "{A} and {B} carried the {O} home.",
            "{A}'s {O} was in the {P}.",
            "{B} took the {O} from {A}!",
            "Why did {A} hide the {O}? {B} did not know.",
            "{A} laughed; {B} did too.",
            "{B} (the tall one) waved to {A}.",
            "With {B}, {A} looked for the {O}.",
            "{A} said: {B} has the {O}.",
        ),
        "ending": (
            "Later, {B} thanked {A}.",
            "In the evening, {A} went home.",
            "At last, {A} and {B} laughed.",
            "{B} said goodbye to {A}.",
            "The end, said {A} to {B}.",
            "{A} never forgot {B}.",
        ),
        "dialogue": (
            "{A}: Where is the {O}, {B}?",
            "{B}: I left it at the {P}.",
            "{A}: Thank you, {B}.",
            "{B}: Come with me, {A}!",
            "{A}: {B}, look!",
        ),
        "greeting": ("Dear {B},", "Hello {B},", "To {B}:"),
        "letter": (
            "I saw the {O} at the {P} today.",
            "Please tell {B} that {A} says hello.",
            "P.S. {B}, bring the {O}.",
            "{A} misses the {P}.",
            "Do you still have my {O}, {B}?",
        ),
        "signoff": ("Yours, {A}", "Love, {A}", "From {A}."),
    },
    "heldout": {
        "opening": (
            "There was a {O}, and {A} gave it to {B}.",
            "Later, {A} and {B} found a {O} near the {P}.",
        ),
        "middle": (
            "The {O} was in the {P}; {A} and {B} found it.",
            "So the {O} was with {A}, and {B} smiled.",
            "{A} took the {O} home; {B} went to the {P}.",
        ),
        "ending": ("{B} then said goodbye to {A}!", "So {A} and {B} went home."),
        "dialogue": ("{A} said: {B}, look at the {O}.", "{B} said: at the {P}, {A}."),
        "greeting": ("To {B}, from {A}:",),
        "letter": ("{A} is at the {P} with the {O}, {B}.", "I am at the {P} with {B}."),
        "signoff": ("See you, {A}", "Bye, {A}"),
    },
}


def _fill(
    builder: _Builder,
    template: str,
    names: dict[str, str],
    values: dict[str, str],
    mentions: dict[str, Span],
    form: str,
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
                name, "name", earlier=mentions.get(name), rare=name not in COMMON_NAMES, form=form
            )
            mentions[name] = builder.mark(span)
        else:
            builder.add(values[key])
        pos = end + 1


def _swap_roles(template: str) -> str:
    return template.replace("{A}", "{_}").replace("{B}", "{A}").replace("{_}", "{B}")


def names_example(rng: random.Random, split: str = "train") -> Example:
    """A story, dialogue or letter in which two characters (common or rare names) recur."""
    a, b = _pick_names(rng, split)
    names = {"A": a, "B": b}
    values = {"P": rng.choice(PLACES), "O": rng.choice(OBJECTS)}
    pool = _NAME_TEMPLATES[form_split(split)]
    builder, mentions = _Builder(), {}
    style = rng.choice(("prose", "prose", "dialogue", "letter"))
    if style == "prose":
        templates = [rng.choice(pool["opening"])]
        middles = pool["middle"]
        templates += [rng.choice(middles) for _ in range(rng.randint(2, 5))]
        templates.append(rng.choice(pool["ending"]))
        joiners = (" ", " ", " ", "\n")
    elif style == "dialogue":
        templates = [rng.choice(pool["dialogue"]) for _ in range(rng.randint(4, 7))]
        joiners = ("\n",)
    else:
        templates = [rng.choice(pool["greeting"])]
        templates += [rng.choice(pool["letter"]) for _ in range(rng.randint(2, 4))]
        templates.append(rng.choice(pool["signoff"]))
        joiners = ("\n",)
    for i, template in enumerate(templates):
        if rng.random() < 0.5:  # the roles swap so that either name can come next
            template = _swap_roles(template)
        prefix = "" if i == 0 else rng.choice(joiners)
        _fill(builder, prefix + template, names, values, mentions, form=style)
        if rng.random() < 0.3:
            values["O"] = rng.choice(OBJECTS)
        if rng.random() < 0.15:  # a stretch where nothing is to be done
            builder.add(filler(rng, rng.randint(4, 12)) + ".")
    builder.add("\n")
    return builder.example("names")


# --- addition ----------------------------------------------------------------------------------
_PLUS_SIGNS = ("+", " +", "+ ", " + ")
_EQUALS_SIGNS = ("=", " =", "= ", " = ")
_HELDOUT_SPACINGS = ((" +", "= "), ("+ ", " ="), (" + ", "="))
ADDITION_SPACINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": tuple(
        (plus, equals)
        for plus in _PLUS_SIGNS
        for equals in _EQUALS_SIGNS
        if (plus, equals) not in _HELDOUT_SPACINGS
    ),
    "heldout": _HELDOUT_SPACINGS,
}
# Sentence frames around one problem ({eq}); {N} is a common name.
_ADDITION_FRAMES: dict[str, tuple[str, ...]] = {
    "train": (
        "We know that {eq}.",
        "So {eq}!",
        "{N} wrote {eq} on the board.",
        "Check: {eq}",
        "Then {eq}, right?",
        "Sum: {eq}",
        "In class, {eq}.",
        "Is it true that {eq}? Yes.",
    ),
    "heldout": ("Clearly {eq}, said {N}.", "{N} said that {eq}."),
}
_PROBLEM_SEPARATORS: dict[str, tuple[str, ...]] = {
    "train": ("\n", "\n", "\n", "; ", ", ", " ", ". "),
    "heldout": (" | ", "\n\n"),
}


def _check_count(value, name: str, least: int) -> None:
    """A generator's count argument: an integer of at least ``least`` (below it, ``random``'s
    "empty range for randrange()" said nothing of the argument)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")


def count_carries(a: int, b: int) -> int:
    """How many places of ``a + b`` carry (operands are non-negative whole numbers)."""
    if min(a, b) < 0:
        raise ValueError(f"operands are non-negative, got {a} and {b}")
    return sum(carries_into(a, b, place) for place in range(1, len(str(max(a, b))) + 1))


def carries_into(a: int, b: int, place: int) -> bool:
    """Whether adding ``a + b`` carries a one into ``place`` (0: the units) from the places
    below it."""
    return place > 0 and a % 10**place + b % 10**place >= 10**place


def _operand(rng: random.Random, max_digits: int) -> int:
    d = rng.randint(1, max_digits)
    return rng.randrange(10 ** (d - 1) if d > 1 else 0, 10**d)


MAX_DRAWS = 10_000  # draws an addition problem of a split may take (a split can hold none)


def addition_problem(
    rng: random.Random, split: str = "train", max_digits: int = 3, first: int | None = None
) -> tuple[int, int]:
    """Operands with a uniformly drawn digit count each (``first``: a given first operand, as in
    a chain), from the requested split's problems."""
    held = item_split(split) == "heldout"
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or first < 0):
        raise ValueError(f"first must be a non-negative whole number, got {first!r}")
    for _ in range(MAX_DRAWS):
        a = _operand(rng, max_digits) if first is None else first
        b = _operand(rng, max_digits)
        if is_heldout(f"{a}+{b}") == held:
            return a, b
    raise ValueError(f"no {split} problem{'' if first is None else f' {first}+b'} with operands "
                     f"of at most {max_digits} digits in {MAX_DRAWS} draws")  # fmt: skip


def addition_example(rng: random.Random, split: str = "train", n_problems: int = 8) -> Example:
    """Problems ``a+b=c`` in one spacing per document, some inside sentence frames, sometimes a
    chain whose next first operand is the previous answer; an ``answer`` span covers each ``c``
    (the part a probe generates) and holds the ``operand`` spans of ``a`` and ``b``. ``form`` is
    the spacing (``"a + b = c"``), ``frame`` the sentence frame (``""`` for a bare problem).
    A document holds ``max(2, n_problems - 4)..n_problems`` problems: ``n_problems`` >= 2."""
    _check_count(n_problems, "n_problems", 2)
    forms = form_split(split)
    plus, equals = rng.choice(ADDITION_SPACINGS[forms])
    form = f"a{plus}b{equals}c"
    separator = rng.choice(_PROBLEM_SEPARATORS[forms])
    chain = rng.random() < 0.2
    p_frame = rng.choice((0.0, 0.3, 0.7))
    builder = _Builder()
    previous = None
    for i in range(rng.randint(max(2, n_problems - 4), n_problems)):
        if i:
            builder.add(separator)
        first = previous if chain and previous is not None and previous < 1000 else None
        a, b = addition_problem(rng, split, first=first)
        frame = rng.choice(_ADDITION_FRAMES[forms]) if rng.random() < p_frame else "{eq}"
        before, after = frame.split("{eq}")
        builder.add(before.replace("{N}", rng.choice(COMMON_NAMES)))
        first_span = builder.span(str(a), "operand", number=a)
        builder.add(plus)
        second_span = builder.span(str(b), "operand", number=b)
        builder.add(equals)
        answer = builder.span(
            str(a + b),
            "answer",
            operands=(first_span, second_span),
            number=a + b,
            form=form,
            frame="" if frame == "{eq}" else frame,
        )
        builder.mark(answer)
        builder.add(after.replace("{N}", rng.choice(COMMON_NAMES)))
        previous = a + b
    builder.add("\n")
    return builder.example("addition")


# --- successor ---------------------------------------------------------------------------------
# A list format: (what precedes item n, with {n} its 1-based number; what joins two items).
_LIST_FORMATS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (
        ("", ", "),
        ("", ", "),
        ("", " then "),
        ("", "; "),
        ("", "\n"),
        ("", " "),
        ("", " -> "),
        ("", " and "),
        ("", ","),
        ("{n}. ", "\n"),
        ("- ", "\n"),
        ("", " - "),
    ),
    "heldout": (("", " / "), ("", " | "), ("{n}) ", " "), ("", " * ")),
}
_LIST_OPENERS: dict[str, tuple[str, ...]] = {
    "train": ("", "", "", "List: ", "In order: ", "{N} counted: ", "Say them: ", "Next come "),
    "heldout": ("Recite these: ", "{N} wrote: "),
}
_LIST_ENDS = (".", "", "...", "!")
# Sentences whose answer {Y} is ``step`` places from an item {X} said earlier; {F} is an optional
# stretch of filler that puts {X} far back. The third field limits the lists (None: any list).
_SUCCESSOR_FRAMES: dict[str, tuple[tuple[str, int, tuple[str, ...] | None], ...]] = {
    "train": (
        ("Today is {X}.{F} Tomorrow is {Y}.", 1, ("weekdays",)),
        ("If today is {X}, then tomorrow is {Y}.", 1, ("weekdays",)),
        ("Yesterday was {X}, so today is {Y}.", 1, ("weekdays",)),
        ("The day before {X} is {Y}.", -1, ("weekdays",)),
        ("This month is {X}.{F} Next month is {Y}.", 1, ("months",)),
        ("The month after {X} is {Y}.", 1, ("months",)),
        ("After {X} comes {Y}.", 1, None),
        ("{X} is followed by {Y}.", 1, None),
        ("What comes after {X}?{F} It is {Y}.", 1, None),
        ("Just before {X} there is {Y}.", -1, None),
        ("The one after {X} is {Y}.", 1, None),
    ),
    "heldout": (
        ("It is {X}.{F} The day after is {Y}.", 1, ("weekdays",)),
        ("So after {X} it is {Y}.", 1, None),
        ("{X} comes first, and then {Y}.", 1, None),
    ),
}


def _place(sequence: str, index: int) -> int | None:
    """``index`` in a list, wrapped for a cyclic list; None when it falls off the list."""
    n = len(ORDERED_LISTS[sequence])
    if sequence in CYCLIC_LISTS:
        return index % n
    return index if 0 <= index < n else None


def _successor_list(builder: _Builder, rng: random.Random, forms: str) -> None:
    sequence = rng.choice(sorted(ORDERED_LISTS))
    items = ORDERED_LISTS[sequence]
    step = rng.choices((1, 2, -1), weights=(65, 15, 20))[0]
    length = rng.randint(4 if step == 1 else 5, 9)
    if sequence not in CYCLIC_LISTS:
        length = min(length, (len(items) - 1) // abs(step) + 1)
    while True:
        start = rng.randrange(len(items))
        places = [_place(sequence, start + i * step) for i in range(length)]
        if None not in places:
            break
    prefix, joiner = rng.choice(_LIST_FORMATS[forms])
    form = prefix.format(n=1) + "X" + joiner + prefix.format(n=2) + "Y"
    builder.add(rng.choice(_LIST_OPENERS[forms]).replace("{N}", rng.choice(COMMON_NAMES)))
    previous = None
    for i, place in enumerate(places):
        if i:
            builder.add(joiner)
        builder.add(prefix.format(n=i + 1))
        # An element is scored once its step is known: from the second for a +1 list (the
        # default reading), from the third otherwise.
        scored = previous is not None and (step == 1 or i >= 2)
        span = builder.span(
            items[place],
            "item",
            sequence=sequence,
            previous=previous,
            step=step if previous is not None else 0,
            form=form,
            frame="list",
        )
        previous = builder.mark(span) if scored else span
    builder.add(rng.choice(_LIST_ENDS))


def _successor_sentence(builder: _Builder, rng: random.Random, forms: str) -> None:
    template, step, lists = rng.choice(_SUCCESSOR_FRAMES[forms])
    sequence = rng.choice(lists or sorted(ORDERED_LISTS))
    items = ORDERED_LISTS[sequence]
    while True:
        x = rng.randrange(len(items))
        y = _place(sequence, x + step)
        if y is not None:
            break
    stretch = filler(rng, rng.randint(3, 15)) + "." if rng.random() < 0.6 else ""
    text = template.replace("{F}", stretch)
    head, rest = text.split("{X}")
    middle, tail = rest.split("{Y}")
    builder.add(head)
    item = builder.span(items[x], "item", sequence=sequence)
    builder.add(middle)
    answer = builder.span(
        items[y],
        "item",
        sequence=sequence,
        previous=item,
        step=step,
        form="sentence",
        frame=template,
    )
    builder.mark(answer)
    builder.add(tail)


def successor_example(rng: random.Random, split: str = "train", n_lists: int = 4) -> Example:
    """Ordered lists and successor sentences; an ``item`` span covers each element that its
    ``previous`` and ``step`` determine (see ``Span``). ``form`` is the list format (``"X, Y"``,
    ``"1. X\\n2. Y"``) or ``"sentence"``; ``frame`` is ``"list"`` or the sentence template.
    A document holds ``max(2, n_lists - 1)..n_lists + 1`` of them: ``n_lists`` >= 1."""
    _check_count(n_lists, "n_lists", 1)
    forms = form_split(split)
    builder = _Builder()
    for i in range(rng.randint(max(2, n_lists - 1), n_lists + 1)):
        if i:
            builder.add(rng.choice(("\n", "\n", " ")))
        if rng.random() < 0.6:
            _successor_list(builder, rng, forms)
        else:
            _successor_sentence(builder, rng, forms)
    builder.add("\n")
    return builder.example("successor")


# --- repeat ------------------------------------------------------------------------------------
# What separates a segment from its copy ("": nothing at all).
REPEAT_SEPARATORS: dict[str, tuple[str, ...]] = {
    "train": (
        "",
        "",
        " |",
        " |",
        ";",
        ".",
        ",",
        " -",
        " /",
        "\n",
        ":",
        " ||",
        "!",
        "?",
        " ...",
        " and",
        " then",
        "\n\n",
        " --",
        " *",
        " +",
        " =",
        " >",
        " ~",
        " again:",
        " (",
        " ]",
    ),
    "heldout": (" ::", " ;", " so", ",\n", " .", " was"),
}


# Every word of the training frames (the names stories, the successor sentences, the list
# openers) and of the filler: function words included, so that a repeated segment can hold any
# word a prompt may hold and induction learns to copy tokens, not a lexicon (corpus v3 drew
# segments from ``REPEAT_WORDS`` alone, and the model copied nothing else: 2 of 30 repeated
# sentences in frames written by hand were completed).
_FRAME_TEXT = " ".join(
    [t for style in _NAME_TEMPLATES["train"].values() for t in style]
    + [template for template, _, _ in _SUCCESSOR_FRAMES["train"]]
    + list(_LIST_OPENERS["train"])
)
_SLOTS = {"A", "B", "P", "O", "X", "Y", "F", "N"}  # the templates' placeholders
ANY_WORDS = sorted(
    {w for w in re.findall(r"[A-Za-z]+", _FRAME_TEXT) if w not in _SLOTS} | set(FILLER_WORDS)
)
_SEGMENT_PUNCTUATION = (",", ".", ";", ":", "!", "?", "-", "'s", ")", "(")


def _segment_word(rng: random.Random) -> str:
    """One word of a repeated segment: a common name (8%), a number (4%), a filler-lexicon
    word (33%), any frame or function word (35%), a made-up word of arbitrary sub-tokens
    (10%, capitalised or not) or a word with punctuation attached (10%)."""
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(COMMON_NAMES)
    if roll < 0.12:
        return str(rng.randrange(10, 100))
    if roll < 0.45:
        return rng.choice(REPEAT_WORDS)
    if roll < 0.80:
        return rng.choice(ANY_WORDS)
    if roll < 0.90:
        lower = rng.random() < 0.5
        word = rare_name(rng, "train")
        return word.lower() if lower else word
    return rng.choice(ANY_WORDS) + rng.choice(_SEGMENT_PUNCTUATION)


def repeat_example(rng: random.Random, split: str = "train") -> Example:
    """A random word segment and its copy: spans ``first`` and ``second`` (whose ``earlier`` is
    the first). ``form`` is the separator between them; ``frame`` is ``"adjacent"`` (copy right
    after the separator) or ``"filler"`` (filler text around and between the copies)."""
    words = [_segment_word(rng) for _ in range(rng.randint(6, 20))]
    separator = rng.choice(REPEAT_SEPARATORS[form_split(split)])
    layout = rng.choice(("adjacent", "filler"))
    builder = _Builder()
    if layout == "filler" and rng.random() < 0.7:
        builder.add(filler(rng, rng.randint(3, 15)).lstrip() + ".")
    # A document that opens with its segment opens with no space half the time, as a typed
    # prompt does: its first word then tokenizes unlike the copy's, and the spans (which
    # start with a space, so that they tokenize identically) begin at the second word.
    bare = builder.length == 0 and rng.random() < 0.5
    if bare:
        builder.add(words[0])
    segment = " ".join(words[1:] if bare else words)
    first = builder.span(" " + segment, "first")
    builder.mark(first)
    builder.add(separator)
    if layout == "filler":
        builder.add(filler(rng, rng.randint(2, 12)) + ".")
    if bare:
        builder.add(" " + words[0])
    copy = builder.span(" " + segment, "second", earlier=first, form=separator, frame=layout)
    builder.mark(copy)
    if layout == "filler" and rng.random() < 0.5:
        builder.add("." + filler(rng, rng.randint(3, 10)))
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


def split_docs(n: int, split: str) -> int:
    """A family's documents in ``split`` of a corpus of ``n`` training documents: the
    held-out split gets a tenth as many (at least one)."""
    return n if split == "train" else max(1, n // 10)


def _cached_corpus(path: Path, n_docs: dict[str, int]):
    """A corpus cached by ``build_corpus``, refused in one line when it cannot be read or is
    not that corpus's shape (splits, columns, document counts): a damaged cache is removed
    and built again by the user, never trained on."""
    import datasets

    from .cli import one_line

    try:
        corpus = datasets.load_from_disk(str(path))
        sizes = {split: len(corpus[split]) for split in CORPUS_SPLITS}
        columns = {split: corpus[split].column_names for split in CORPUS_SPLITS}
    except Exception as exc:  # datasets, Arrow and json raise their own types (RecursionError)
        raise ValueError(f"{path}: the cached corpus cannot be read ({one_line(exc)[:200]}); "
                         "remove it to build it again") from None  # fmt: skip
    expected = {
        split: sum(split_docs(n, split) for n in n_docs.values()) for split in CORPUS_SPLITS
    }
    if (
        set(corpus) != set(CORPUS_SPLITS)
        or sizes != expected
        or any(sorted(c) != ["family", "text"] for c in columns.values())
    ):
        raise ValueError(f"{path}: the cached corpus is not this corpus ({sizes} documents, "
                         f"expected {expected}); remove it to build it again")  # fmt: skip
    return corpus


def build_corpus(n_docs: dict[str, int], seed: int = 0, cache_dir: Path | None = None):
    """The corpus as a ``datasets.DatasetDict`` (``CORPUS_SPLITS``; columns family, text).

    ``n_docs`` maps each family to its number of training documents; the held-out split gets
    a tenth as many. Built once per (version, seed, sizes) and cached as Arrow files.
    Every count is at least 1 (a family is left out by leaving it out of ``n_docs``): a
    count of 0 or below gave an empty training split, which a cache cannot be read back from.
    """
    import datasets

    from .checkpoint import check_value

    datasets.disable_progress_bars()
    unknown = set(n_docs) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown task families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    if not n_docs:
        raise ValueError(f"n_docs names no family; known: {', '.join(FAMILIES)}")
    for family, n in n_docs.items():
        check_value("int", n, f"n_docs[{family!r}]")
    key = "-".join(f"{f}{n_docs[f]}" for f in sorted(n_docs))
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"corpus-v{CORPUS_VERSION}-s{seed}-{key}"
        if path.exists():
            return _cached_corpus(path, n_docs)

    def rows(split: str) -> dict[str, list[str]]:
        family_col, text_col = [], []
        for family, n in n_docs.items():
            stream = examples(family, split, seed)
            for _ in range(split_docs(n, split)):
                family_col.append(family)
                text_col.append(next(stream).text)
        return {"family": family_col, "text": text_col}

    corpus = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(rows(split)) for split in CORPUS_SPLITS}
    )
    if path is not None:  # written whole beside its place, then renamed; nothing left on failure
        from .files import WriteError, fresh_directory

        tmp = path.with_name(path.name + ".tmp")
        try:
            with fresh_directory(tmp):
                corpus.save_to_disk(str(tmp))
                tmp.rename(path)
        except OSError as exc:
            raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
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
    positions, so each row's logits are what it alone would give. Every row needs a token."""
    import torch

    if not rows or not all(len(row) for row in rows):
        raise ValueError("rows must be one or more rows of at least one token id each")
    width = max(len(row) for row in rows)
    return torch.tensor([row + [row[0]] * (width - len(row)) for row in rows])


def pack_sequences(corpus_split, tokenizer, n_ctx: int):
    """Tokenize a split and pack each family's documents into rows (see ``pack_rows``).

    Families are never mixed within a row. Returns ``(tokens (rows, n_ctx), family index per
    row)`` with indices into ``FAMILIES``.
    """
    import torch

    bos = bos_id(tokenizer)
    # Each column read once: reading a column of a ``datasets`` split materialises all of it.
    documents = list(zip(corpus_split["text"], corpus_split["family"], strict=True))
    rows, row_family = [], []
    for f_idx, family in enumerate(FAMILIES):
        texts = [t for t, f in documents if f == family]
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
