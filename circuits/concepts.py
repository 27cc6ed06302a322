"""Ground-truth concepts: what the corpus generator knows about every token, and how well a
unit's firing is predicted by one of them (best-F1 concept labels, DESIGN.md section 5).

Rows are held-out documents, one per row (BOS + the document, cut to ``n_ctx``), the families
taking turns (row ``r`` is document ``r // 4`` of family ``FAMILIES[r % 4]``), from
``toy_models.data.examples(family, "heldout", seed)``: a row's tokens and concepts depend on
its index and the seed only, so a resumed pass sees the rows an uninterrupted one sees.

Every token gets a set of concepts from the generator's spans (never by parsing the text
again; a separator is read as the characters of its own token): its family; BOS; for names,
whether a token is a name's first token or a later sub-token, of a common or a rare name, on
its first or a repeated mention (a later sub-token of a repeated rare name is where subtoken
induction acts); for addition, each operand digit with its operand (first/second) and place,
each answer digit with its place, ``+``, ``=`` and the line break; for successor documents, a
list's first item, a next item (one with a previous item) with its list's kind and its step
(+1, +2 or -1 places), whatever stands between two items of a list (the separator, in any of
the corpus's list formats), and in sentences the item said first and the answer; for repeats,
the first and the second copy (and the second copy's first token), the separator between
them (the span's ``form``, right after the first copy) and the text around them (filler).
Every concept that names a token's role (``CONCEPT_ROLE``, BOS aside) comes again as
``next token: <concept>`` on the token before it, in the same row: the position where that
token is predicted (the ``=`` before an answer's hundreds digit, the separator before a
letters item, the sub-token before a repeated rare name's next one), so that a unit that fires
where something is about to be written is labelled by what comes, not only by what is there.
Positions come from the spans only (corpus v3 writes each family in many forms, so no
separator is read from the characters except addition's ``+``, ``=`` and line break).
``CONCEPT_ROLE`` gives each concept the role (``TOKEN_ROLES``) its tokens play.

For a unit that fires on ``F`` tokens, a concept present on ``C`` tokens and both on ``B``:
``F1 = 2 B / (F + C)`` (precision ``B / F``, recall ``B / C``). The unit's label is the concept
of largest F1 (the first in ``CONCEPTS`` order on ties). Over ``N`` tokens, a unit firing on as
many tokens at random would expect precision ``C / N`` and recall ``F / N``, so the label's
*chance* F1 is ``2 C F / (N (C + F))``; a dense unit reaches a large F1 with a large concept
(one firing on 94% of tokens gets 0.43 from ``family: addition``, 27% of the tokens, by its
density alone), so a label whose F1 is below ``AT_CHANCE`` times its chance F1 is *at chance*:
it says how often the unit fires, not what it reads (``chance_f1``, ``at_chance``).
"""

from __future__ import annotations

from dataclasses import dataclass

from toy_models.data import FAMILIES, ORDERED_LISTS, Example, examples

_SEPARATORS = {
    "addition": {"+": "addition: '+'", "=": "addition: '='", "\n": "addition: line break"},
}
MAX_PLACE = 4  # answer digits of 3-digit operands: places 0..3
STEPS = (1, 2, -1)  # places from a successor item's previous item (toy_models.data)

# The role a token plays in its document (the error analysis splits by it): each concept names
# the role its tokens play, or none (a token with no role-naming concept is ``other``; one with
# several takes the first in this order).
TOKEN_ROLES = ("bos", "name", "operand", "answer", "item", "first", "second", "separator", "other")
_CONCEPT_ROLES: tuple[tuple[str, str | None], ...] = (
    ("BOS", "bos"),
    *((f"family: {f}", None) for f in FAMILIES),
    ("name: first token", "name"),
    ("name: later sub-token", "name"),
    ("name: common name", "name"),
    ("name: rare name", "name"),
    ("name: first mention", "name"),
    ("name: repeated mention", "name"),
    ("name: later sub-token of a repeated rare name", "name"),
    ("names: other text", None),
    *((f"addition: first operand digit, place {p}", "operand") for p in range(3)),
    *((f"addition: second operand digit, place {p}", "operand") for p in range(3)),
    *((f"addition: answer digit, place {p}", "answer") for p in range(MAX_PLACE)),
    *((name, "separator") for name in _SEPARATORS["addition"].values()),
    ("successor: first item of a list", "item"),
    ("successor: next item", "item"),
    *((f"successor: next item, step {step:+d}", "item") for step in STEPS),
    *((f"successor: {kind} item", "item") for kind in sorted(ORDERED_LISTS)),
    ("successor: between two items of a list", "separator"),
    ("successor: a sentence's first item", "item"),
    ("successor: a sentence's answer", "item"),
    ("repeat: first copy", "first"),
    ("repeat: second copy", "second"),
    ("repeat: first token of the second copy", "second"),
    ("repeat: separator between the copies", "separator"),
    ("repeat: around the copies", None),
)
NEXT = "next token: "  # the prefix of a concept of the token that follows
_NEXT_OF = {name: NEXT + name for name, role in _CONCEPT_ROLES if role not in (None, "bos")}
# A ``next token`` concept names no role of the token it is on (the role is the next token's).
CONCEPTS: tuple[str, ...] = (
    *(name for name, _ in _CONCEPT_ROLES),
    *_NEXT_OF.values(),
)
CONCEPT_ROLE: dict[str, str | None] = {**dict(_CONCEPT_ROLES), **dict.fromkeys(_NEXT_OF.values())}
INDEX = {name: i for i, name in enumerate(CONCEPTS)}
# Concepts that say which kind of document a token is in, on every token of it, not what the
# token is or does: a unit labelled by one fires more in that family's documents (a reviewer
# found name-induction heads labelled ``family: addition``, F1 0.51, from firing on 22% of
# tokens), which names no mechanism; the mechanism summary neither names nor groups by them.
DOCUMENT_CONCEPTS: frozenset[str] = frozenset(f"family: {f}" for f in FAMILIES)


@dataclass(frozen=True)
class Row:
    """One corpus row: its document, token ids (BOS first) and each token's concept indices."""

    example: Example
    ids: list[int]
    concepts: list[tuple[int, ...]]


def check_row_settings(n_ctx, seed, max_ctx: int) -> None:
    """Refuse, in one line, corpus-row settings a statistics or dashboards file could not hold
    (and ``corpus_rows`` would slice from the end): ``n_ctx`` in ``2..max_ctx`` (the model's
    context), ``seed`` a whole number in ``0..2**63 - 1``."""
    from .graph import is_integer  # not at import: this module stays light (no torch)

    if not (is_integer(n_ctx) and 2 <= n_ctx <= max_ctx):
        raise ValueError(f"n_ctx must be a whole number in 2..{max_ctx}, got {n_ctx!r}")
    if not (is_integer(seed) and 0 <= seed < 2**63):
        raise ValueError(f"seed must be a whole number in 0..2**63 - 1, got {seed!r}")


def corpus_rows(tokenizer, n_ctx: int, seed: int, start: int, stop: int) -> list[Row]:
    """Rows ``start .. stop - 1`` with their tokens and concepts (at most ``n_ctx`` tokens)."""
    from .graph import is_integer

    if not (is_integer(start) and is_integer(stop) and 0 <= start <= stop):
        raise ValueError(f"rows {start!r}..{stop!r}: whole numbers, 0 <= start <= stop")
    if not (is_integer(n_ctx) and n_ctx >= 1):
        raise ValueError(f"n_ctx must be a positive whole number, got {n_ctx!r}")
    n = len(FAMILIES)
    out = []
    streams = {}
    for index in range(start, stop):
        family = FAMILIES[index % n]
        if family not in streams:  # advance each family's stream to its first row once
            streams[family] = examples(family, "heldout", seed)
            for _ in range((index - index % n) // n):
                next(streams[family])
        example = next(streams[family])
        enc = tokenizer.encode(example.text)
        ids, offsets = enc.ids[:n_ctx], [tuple(o) for o in enc.offsets[:n_ctx]]
        out.append(Row(example, ids, token_concepts(example, offsets)))
    return out


def token_concepts(example: Example, offsets: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Each token's concept indices (position 0 is BOS); ``offsets`` are its characters."""
    concepts: list[set[str]] = [set() for _ in offsets]
    concepts[0].add("BOS")
    family = example.family
    in_span = [False] * len(offsets)

    def positions(span):
        return [i for i, (s, e) in enumerate(offsets) if i > 0 and s < span.end and e > span.start]

    def mark(span, *names):
        found = positions(span)
        for i in found:
            concepts[i].update(names)
            in_span[i] = True
        return found

    def between(start, end, name):
        """Tokens wholly inside characters ``start:end`` (one that reaches out is not)."""
        for i, (s, e) in enumerate(offsets):
            if i > 0 and s >= start and e <= end and e > s:
                concepts[i].add(name)
                in_span[i] = True

    for span in example.spans:
        if span.kind == "name":
            found = mark(
                span,
                "name: rare name" if span.rare else "name: common name",
                "name: repeated mention" if span.earlier is not None else "name: first mention",
            )
            for j, i in enumerate(found):
                concepts[i].add("name: first token" if j == 0 else "name: later sub-token")
                if j > 0 and span.rare and span.earlier is not None:
                    concepts[i].add("name: later sub-token of a repeated rare name")
        elif span.kind == "answer":
            _digits(span, positions(span), offsets, "addition: answer digit", concepts, in_span)
            for which, operand in zip(("first", "second"), span.operands, strict=False):
                name = f"addition: {which} operand digit"
                _digits(operand, positions(operand), offsets, name, concepts, in_span)
        elif span.kind == "item" and span.frame == "list":
            item = span  # this item, and the unscored ones before it that only ``previous`` holds
            while item.previous is not None:
                mark(item, "successor: next item", f"successor: {item.sequence} item",
                     *([f"successor: next item, step {item.step:+d}"] if item.step in STEPS
                       else []))  # fmt: skip
                between(item.previous.end, item.start, "successor: between two items of a list")
                item = item.previous
            mark(item, "successor: first item of a list", f"successor: {item.sequence} item")
        elif span.kind == "item":  # a sentence: its answer, and the item said first
            mark(span, "successor: next item", "successor: a sentence's answer",
                 f"successor: {span.sequence} item",
                 *([f"successor: next item, step {span.step:+d}"] if span.step in STEPS
                   else []))  # fmt: skip
            if span.previous is not None:
                mark(span.previous, "successor: a sentence's first item",
                     f"successor: {span.sequence} item")  # fmt: skip
        elif span.kind == "first":
            mark(span, "repeat: first copy")
        elif span.kind == "second":
            found = mark(span, "repeat: second copy")
            if found:
                concepts[found[0]].add("repeat: first token of the second copy")
            if span.earlier is not None:  # the separator (``form``) follows the first copy
                end = min(span.earlier.end + len(span.form), span.start)
                between(span.earlier.end, end, "repeat: separator between the copies")
    separators = _SEPARATORS.get(family, {})
    for i in range(1, len(offsets)):
        concepts[i].add(f"family: {family}")
        if in_span[i]:
            continue
        s, e = offsets[i]
        text = example.text[s:e].strip(" ")
        if family == "names":
            concepts[i].add("names: other text")
        elif family == "repeat":
            concepts[i].add("repeat: around the copies")
        elif text in separators:
            concepts[i].add(separators[text])
    for i in range(len(offsets) - 1):
        concepts[i].update(_NEXT_OF[c] for c in concepts[i + 1] if c in _NEXT_OF)
    return [tuple(sorted(INDEX[c] for c in names)) for names in concepts]


def _digits(span, found, offsets, name, concepts, in_span) -> None:
    for i in found:
        place = span.end - offsets[i][0] - 1  # digits are one token each
        if 0 <= place < MAX_PLACE and f"{name}, place {place}" in INDEX:
            concepts[i].add(f"{name}, place {place}")
        in_span[i] = True


def concept_matrix(rows: list[Row], positions: int):
    """``(len(rows), positions, len(CONCEPTS))`` float 0/1: each token's concepts (positions past
    a row's end, i.e. padding, hold none)."""
    import torch

    out = torch.zeros(len(rows), positions, len(CONCEPTS))
    for b, row in enumerate(rows):
        for p, cs in enumerate(row.concepts):
            out[b, p, list(cs)] = 1.0
    return out


def firing_counts(fired, concepts):
    """The counts ``best_f1`` reads, from ``fired (B, P, U)`` (bool: a unit fired on a token;
    padding must be False) and ``concepts (B, P, C)`` (``concept_matrix``): each unit's firings
    ``(U,)``, each concept's tokens ``(C,)`` and their co-occurrences ``(U, C)``, all int64."""
    f = fired.reshape(-1, fired.shape[-1]).float()
    c = concepts.reshape(-1, concepts.shape[-1])
    both = (f.T @ c).round().long()  # exact: float32 counts stay below 2**24 per batch
    return f.sum(0).round().long(), c.sum(0).round().long(), both


def units_best_f1(activations, rows: list[Row], batch_rows: int = 8):
    """Best-F1 concept of every unit of any dictionary over corpus ``rows`` (``corpus_rows``):
        ``activations(tokens (B, P)) -> (B, P, U)`` gives the units' activations on a padded batch
        (``toy_models.data.pad_rows``), a unit fires where its activation is above 0. Returns
        ``best_f1``'s ``(index, f1)``, what the dashboards hold for Lorsa heads and transcoder
        features, for units outside the replacement model (an attention-output SAE's latents),
    each unit's number of firings ``(U,)`` and its label's chance F1 (``chance_f1``)."""
    import torch

    from toy_models.data import pad_rows

    fires = counts = both = None
    for a in range(0, len(rows), batch_rows):
        chunk = rows[a : a + batch_rows]
        tokens = pad_rows([r.ids for r in chunk])
        lengths = torch.tensor([len(r.ids) for r in chunk])
        valid = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        with torch.no_grad():
            fired = (activations(tokens) > 0) & valid[..., None]
        f, c, b = firing_counts(fired, concept_matrix(chunk, tokens.shape[1]))
        fires, counts, both = (f, c, b) if fires is None else (fires + f, counts + c, both + b)
    if fires is None:
        raise ValueError("no rows")
    index, f1 = best_f1(fires, counts, both)
    return index, f1, fires, chance_f1(fires, counts, sum(len(r.ids) for r in rows), index)


def best_f1(fires, concept_count, both):
    """Per unit, the concept of largest F1 and that F1 (NaN, index -1, where a unit never
    fired): ``fires (U,)``, ``concept_count (C,)``, ``both (U, C)`` counts (module docstring)."""
    import torch

    fires = fires.double()[:, None]
    denom = fires + concept_count.double()[None, :]
    f1 = torch.where(denom > 0, 2 * both.double() / denom.clamp_min(1), torch.zeros(()))
    best, index = f1.max(1)  # the first maximum: CONCEPTS order on ties
    never = fires[:, 0] == 0
    return index.masked_fill(never, -1), best.masked_fill(never, float("nan"))


AT_CHANCE = 1.5  # a label whose F1 is below this many times its chance F1 is at chance


def chance_f1(fires, concept_count, n_tokens: int, index):
    """Per unit, the F1 that a unit firing on as many of the ``n_tokens`` tokens at random
    would expect against its label ``index`` (``best_f1``'s; NaN where it never fired):
    ``2 C F / (N (C + F))`` (module docstring)."""
    import torch

    f = fires.double() / max(n_tokens, 1)
    c = concept_count.double()[index.clamp_min(0)] / max(n_tokens, 1)
    chance = torch.where(c + f > 0, 2 * c * f / (c + f).clamp_min(1e-12), torch.zeros(()))
    return chance.masked_fill(index < 0, float("nan"))


def at_chance(f1, chance):
    """Which labels are at chance: F1 below ``AT_CHANCE`` times the chance F1 (False for units
    that never fired)."""
    return f1 < AT_CHANCE * chance


def f1_summary(f1, chance=None) -> dict:
    """The distribution of best-F1 over units (NaN: units that never fired, left out); with
    the labels' ``chance`` F1 (``chance_f1``), also the share of labels at chance and the mean
    best-F1 of the others."""
    import torch

    fired = ~torch.isnan(f1)
    f1 = f1[fired].double()
    if not len(f1):
        return {"units": 0}
    q = torch.quantile(f1, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64))
    out = {
        "units": len(f1),
        "mean": round(float(f1.mean()), 4),
        "quantiles": {
            k: round(float(v), 4) for k, v in zip(("10", "25", "50", "75", "90"), q, strict=True)
        },
        "at_least_0.5": round(float((f1 >= 0.5).double().mean()), 4),
        "at_least_0.8": round(float((f1 >= 0.8).double().mean()), 4),
    }
    if chance is not None:
        low = at_chance(f1, chance[fired].double())
        out["at_chance"] = round(float(low.double().mean()), 4)
        out["mean_not_at_chance"] = round(float(f1[~low].mean()), 4) if (~low).any() else None
    return out
