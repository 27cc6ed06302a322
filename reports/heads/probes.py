"""Probe documents: which keys each head family should read at which queries, and which
tokens each task predicts, on held-out corpus documents (the rules are in the package
docstring). The corpus spans say where names, list items, operands and copies are; nothing
here re-reads the text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from toy_models.data import FAMILIES

Keys = dict[int, list[int]]  # query position -> key positions


# ----------------------------------------------------------------- expected keys
def previous_token_keys(ids: list[int], queries: Iterable[int] | None = None) -> Keys:
    queries = range(2, len(ids)) if queries is None else queries
    return {q: [q - 1] for q in queries if q >= 2}


def sink_keys(ids: list[int], queries: Iterable[int] | None = None) -> Keys:
    queries = range(2, len(ids)) if queries is None else queries
    return {q: [0] for q in queries if q >= 2}


def duplicate_token_keys(ids: list[int], queries: Iterable[int] | None = None) -> Keys:
    """Earlier occurrences of the query's own token (not BOS, not ``q - 1``)."""
    queries = range(len(ids)) if queries is None else queries
    out = {q: [k for k in range(1, q - 1) if ids[k] == ids[q]] for q in queries}
    return {q: keys for q, keys in out.items() if keys}


def induction_keys(
    ids: list[int], queries: Iterable[int] | None = None, allowed: set[int] | None = None
) -> Keys:
    """The tokens right after earlier occurrences of the query's token (not ``q - 1``); with
    ``allowed``, only keys among those positions (e.g. the earlier mentions of one name)."""
    queries = range(len(ids)) if queries is None else queries
    out = {}
    for q in queries:
        keys = [k + 1 for k in range(1, q - 2) if ids[k] == ids[q]]
        keys = [k for k in keys if allowed is None or k in allowed]
        if keys:
            out[q] = keys
    return out


# ----------------------------------------------------------------- probe documents
@dataclass
class ProbeDoc:
    """One held-out document: per head family, its probe queries with their expected keys;
    per task, the positions whose token is a target (predicted at ``p - 1``)."""

    corpus: str  # the corpus family it comes from
    ids: list[int]
    keys: dict[str, Keys] = field(default_factory=dict)
    targets: dict[str, list[int]] = field(default_factory=dict)
    successor_token: dict[int, int] = field(default_factory=dict)  # query -> next item's token


def probe_doc(encoded) -> ProbeDoc:
    """Probe queries, keys and task targets of one ``toy_models.evaluate.Encoded`` document."""
    ids = encoded.ids
    probe = ProbeDoc(encoded.example.family, ids)
    probe.keys["previous_token"] = previous_token_keys(ids)
    probe.keys["attention_sink"] = sink_keys(ids)
    probe.keys["duplicate_token"] = duplicate_token_keys(ids)
    probe.targets["all_tokens"] = list(range(1, len(ids)))
    probe.targets["after_duplicate"] = [
        q + 1 for q in probe.keys["duplicate_token"] if q + 1 < len(ids)
    ]
    _FAMILY_PROBES[probe.corpus](encoded, probe)
    return probe


def _repeat_probes(encoded, probe: ProbeDoc) -> None:
    """Induction: the second copy's tokens read the token after their first occurrence."""
    copy = encoded.example.spans_of("second")[0]
    first, second = encoded.tokens_in(copy.earlier), encoded.tokens_in(copy)
    if len(first) == len(second) and encoded.holds(copy):
        probe.keys["induction"] = induction_keys(probe.ids, second[:-1])
        probe.targets["repeat_second_copy"] = second[1:]


def _names_probes(encoded, probe: ProbeDoc) -> None:
    """Subtoken induction: later mentions of a rare name, inside its earlier mentions."""
    keys, targets = {}, []
    for mention in encoded.example.spans_of("name"):
        if not mention.rare or mention.earlier is None or not encoded.holds(mention):
            continue
        pos = encoded.tokens_in(mention)
        if len(pos) >= 2:
            earlier = {p for e in mention.occurrences_before() for p in encoded.tokens_in(e)}
            keys |= induction_keys(probe.ids, pos[:-1], allowed=earlier)
            targets += pos[1:]
    probe.keys["subtoken_induction"] = keys
    probe.targets["rare_name_subtokens"] = sorted(targets)


def _successor_probes(encoded, probe: ProbeDoc) -> None:
    """Successor: at the comma before an item, the previous item (single-token items only)."""
    keys, targets = {}, []
    for span in encoded.example.spans_of("item"):
        if span.sequence == "counting":
            continue  # several digit tokens per item: digit arithmetic, not a lookup
        item, prev = encoded.tokens_in(span), encoded.tokens_in(span.previous)
        if len(item) == 1 and len(prev) == 1 and encoded.holds(span):
            keys[item[0] - 1] = prev
            probe.successor_token[item[0] - 1] = probe.ids[item[0]]
            targets.append(item[0])
    probe.keys["successor"] = keys
    probe.targets["successor_items"] = sorted(targets)


def _addition_probes(encoded, probe: ProbeDoc) -> None:
    """Operand fetching: each answer digit reads the operand digits of its place value."""
    aligned, any_digit, targets = {}, {}, []
    for span in encoded.example.spans_of("answer"):
        if not encoded.holds(span):
            continue
        operands = [encoded.tokens_in(operand) for operand in span.operands]
        answer = encoded.tokens_in(span)
        for j, p in enumerate(answer):
            place, q = len(answer) - 1 - j, p - 1  # place 0: units
            same_place = [d[-1 - place] for d in operands if place < len(d)]
            aligned[q] = [k for k in same_place if k != q - 1]
            any_digit[q] = [k for d in operands for k in d if k != q - 1]
            targets.append(p)
    probe.keys["operand_fetching"] = {q: k for q, k in aligned.items() if k}
    probe.keys["operand_any_digit"] = {q: k for q, k in any_digit.items() if k}
    probe.targets["addition_answers"] = targets


_FAMILY_PROBES = {
    "repeat": _repeat_probes,
    "names": _names_probes,
    "successor": _successor_probes,
    "addition": _addition_probes,
}


def build_probes(tokenizer, n_docs: int, n_ctx: int) -> dict[str, list[ProbeDoc]]:
    """``n_docs`` held-out documents of each corpus family (``toy_models.evaluate``'s probe
    sets: the same seed and encoding), with their probe queries and task targets."""
    from toy_models.evaluate import encode, heldout_examples

    return {
        corpus: [probe_doc(encode(tokenizer, ex, n_ctx)) for ex in heldout_examples(corpus, n_docs)]
        for corpus in FAMILIES
    }
