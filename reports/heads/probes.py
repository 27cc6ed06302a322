"""Probe documents: which keys each head family should read at which queries, and which
tokens each task predicts, on held-out corpus documents (the rules are in the package
docstring). The corpus spans say where names, list items, operands and copies are, and what
they hold (an item's previous item and step, an answer's operands); nothing here re-reads
the text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from toy_models.data import FAMILIES, ORDERED_LISTS, carries_into

from .config import LOCAL_WINDOW, OPERAND_FAMILIES, PLACES, operand_family

Keys = dict[int, list[int]]  # query position -> key positions


# ----------------------------------------------------------------- expected keys
def previous_token_keys(ids: list[int], queries: Iterable[int] | None = None) -> Keys:
    queries = range(2, len(ids)) if queries is None else queries
    return {q: [q - 1] for q in queries if q >= 2}


def local_context_keys(
    ids: list[int], queries: Iterable[int] | None = None, window: int = LOCAL_WINDOW
) -> Keys:
    """The ``window`` tokens just before the query (fewer near the start; never BOS, never
    the query itself): what a head that moves the recent context, not one token, reads."""
    queries = range(2, len(ids)) if queries is None else queries
    return {q: list(range(max(1, q - window), q)) for q in queries if q >= 2}


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
    per task, the positions whose token is a target (predicted at ``p - 1``); at each
    successor query, the successor's token and whether it is a list's or a sentence's."""

    corpus: str  # the corpus family it comes from
    ids: list[int]
    keys: dict[str, Keys] = field(default_factory=dict)
    targets: dict[str, list[int]] = field(default_factory=dict)
    successor_token: dict[int, int] = field(default_factory=dict)  # query -> next item's token
    successor_frame: dict[int, str] = field(default_factory=dict)  # query -> list / sentence
    successor_sequence: dict[int, str] = field(default_factory=dict)  # query -> ordered list
    # query -> its ordered list's items that are one token in the successor's own spelling
    # (with or without a leading space): what the successor is ranked against in its sequence
    successor_rivals: dict[int, list[int]] = field(default_factory=dict)


def probe_doc(encoded) -> ProbeDoc:
    """Probe queries, keys and task targets of one ``toy_models.evaluate.Encoded`` document."""
    ids = encoded.ids
    probe = ProbeDoc(encoded.example.family, ids)
    probe.keys["previous_token"] = previous_token_keys(ids)
    probe.keys["local_context"] = local_context_keys(ids)
    probe.keys["attention_sink"] = sink_keys(ids)
    probe.keys["duplicate_token"] = duplicate_token_keys(ids)
    probe.targets["all_tokens"] = list(range(1, len(ids)))
    probe.targets["after_duplicate"] = [
        q + 1 for q in probe.keys["duplicate_token"] if q + 1 < len(ids)
    ]
    _FAMILY_PROBES[probe.corpus](encoded, probe)
    return probe


def _repeat_probes(encoded, probe: ProbeDoc) -> None:
    """Induction: the second copy's tokens (whatever separates the copies, filler or none)
    read the token after their earlier occurrences."""
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
    """Successor: an item one step after its previous item (``step == 1``), in a list of any
    format or a sentence (``Today is X. ... Tomorrow is Y``: X may lie far back); at the
    token before the item, the key is the previous item. Single-token items only (counting's
    are several digit tokens: digit arithmetic, not a lookup)."""
    keys, targets = {}, []
    for span in encoded.example.spans_of("item"):
        if span.step != 1 or span.sequence == "counting" or not encoded.holds(span):
            continue
        item, prev = encoded.tokens_in(span), encoded.tokens_in(span.previous)
        if len(item) == 1 and len(prev) == 1:
            q = item[0] - 1
            keys[q] = prev
            probe.successor_token[q] = probe.ids[item[0]]
            probe.successor_frame[q] = "list" if span.frame == "list" else "sentence"
            probe.successor_sequence[q] = span.sequence
            targets.append(item[0])
    probe.keys["successor"] = keys
    probe.targets["successor_items"] = sorted(targets)


def _addition_probes(encoded, probe: ProbeDoc) -> None:
    """Operand fetching, by what is fetched: at the query predicting the answer digit of
    place p, ``operand_{a,b}_{place}`` reads operand a's (b's) digit of place p; ``carry``
    reads both operands' digits of place p - 1, at the places that receive a carry only."""
    names = [*OPERAND_FAMILIES, "carry"]
    keys: dict[str, Keys] = {name: {} for name in [*names, "operand_any_digit"]}
    targets: dict[str, list[int]] = {f"answer_{place}": [] for place in PLACES}
    targets |= {"carry_digits": [], "addition_answers": []}
    for span in encoded.example.spans_of("answer"):
        if not encoded.holds(span):
            continue
        digits = [encoded.tokens_in(operand) for operand in span.operands]
        a, b = (operand.number for operand in span.operands)
        answer = encoded.tokens_in(span)
        for j, p in enumerate(answer):
            place, q = len(answer) - 1 - j, p - 1  # place 0: units

            def fetch(d: list[int], place: int = place) -> list[int]:
                return [d[-1 - place]] if 0 <= place < len(d) else []

            if place < len(PLACES):
                for x, d in zip("ab", digits, strict=True):
                    keys[operand_family(x, PLACES[place])][q] = fetch(d)
                targets[f"answer_{PLACES[place]}"].append(p)
            if carries_into(a, b, place):
                keys["carry"][q] = fetch(digits[0], place - 1) + fetch(digits[1], place - 1)
                targets["carry_digits"].append(p)
            keys["operand_any_digit"][q] = [k for d in digits for k in d]
            targets["addition_answers"].append(p)
    for name, family_keys in keys.items():
        # q - 1 is the previous-token family's (see the package docstring).
        cleaned = {q: [k for k in ks if k != q - 1] for q, ks in family_keys.items()}
        probe.keys[name] = {q: ks for q, ks in cleaned.items() if ks}
    probe.targets |= targets


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

    probes = {
        corpus: [probe_doc(encode(tokenizer, ex, n_ctx)) for ex in heldout_examples(corpus, n_docs)]
        for corpus in FAMILIES
    }
    rivals = sequence_tokens(tokenizer)
    for probe in probes["successor"]:  # its sequence's items in the spelling that holds it
        probe.successor_rivals = {
            q: next((tokens for tokens in rivals[sequence].values()
                     if probe.successor_token[q] in tokens), [])  # none: the probe is not ranked
            for q, sequence in probe.successor_sequence.items()
        }  # fmt: skip
    return probes


def sequence_tokens(tokenizer) -> dict[str, dict[bool, list[int]]]:
    """``{list: {spaced: tokens}}``: every ordered list's items that are one token, without
    (``False``) and with (``True``) a leading space: the tokens a successor is ranked against
    within its sequence, in its own spelling."""
    from toy_models.tokenizer import single_token

    def one(text: str) -> int | None:
        try:
            return single_token(tokenizer, text)
        except ValueError:  # several tokens
            return None

    return {
        name: {
            spaced: sorted({t for item in items if (t := one(" " * spaced + item)) is not None})
            for spaced in (False, True)
        }
        for name, items in ORDERED_LISTS.items()
    }
