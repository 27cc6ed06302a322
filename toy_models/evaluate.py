"""Held-out loss per task family and probes of the mechanisms the corpus plants.

    python -m toy_models.evaluate --model default [--docs 200] [--json results.json]

Probes (all on held-out documents, teacher-forced, greedy = argmax):
- induction: mean loss on the second copy of a repeated random segment over the first copy's;
  per-head induction score (attention from a second-copy token to the token after its first
  occurrence) and previous-token score (attention to the position before).
- successor: an element of an ordered list counts as correct when all its tokens are predicted.
- addition: exact match of the answer (every digit and the line end predicted, which is what
  greedy decoding would produce), by operand digits and by number of carries.
- subtoken induction: the sub-tokens after the first of a held-out rare name, on every mention
  after its first; names seen in training never appear here.
- attention sink: mean attention mass on the BOS position, per head.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .cli import run_cli
from .data import FAMILIES, Example, Span, count_carries, examples, pad_rows

EVAL_SEED = 12345


@dataclass
class Encoded:
    example: Example
    ids: list[int]  # BOS + document, cut to n_ctx
    offsets: list[tuple[int, int]]

    def tokens_in(self, span: Span) -> list[int]:
        """Positions of the tokens overlapping a span's characters (those inside the context)."""
        start, end = span.start, span.end
        return [i for i, (s, e) in enumerate(self.offsets) if i > 0 and s < end and e > start]

    def holds(self, span: Span) -> bool:
        """Whether a span lies wholly inside the (possibly cut) context."""
        return span.end <= self.offsets[-1][1]


def encode(tokenizer, example: Example, n_ctx: int) -> Encoded:
    enc = tokenizer.encode(example.text)
    return Encoded(example, enc.ids[:n_ctx], [tuple(o) for o in enc.offsets[:n_ctx]])


def heldout_examples(family: str, n_docs: int, seed: int = EVAL_SEED) -> list[Example]:
    stream = examples(family, "heldout", seed)
    return [next(stream) for _ in range(n_docs)]


def run_batched(model, docs: list[Encoded], batch_size: int = 32, patterns: bool = False):
    """Yield ``(doc, log_probs (pos, vocab), patterns {layer: (head, q, k)} | None)`` per doc."""
    import torch

    from .model import hook_name

    names = (lambda name: name.endswith("hook_pattern")) if patterns else (lambda name: False)
    for i in range(0, len(docs), batch_size):
        chunk = docs[i : i + batch_size]
        tokens = pad_rows([d.ids for d in chunk])
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=names)
        log_probs = logits.log_softmax(-1)
        for j, doc in enumerate(chunk):
            n = len(doc.ids)
            pats = None
            if patterns:
                pats = {
                    l: cache[hook_name(l, "attn.hook_pattern")][j, :, :n, :n]
                    for l in range(model.cfg.n_layers)
                }
            yield doc, log_probs[j, :n], pats


def heldout_loss(model, tokenizer, n_docs: int = 200) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) on held-out documents of each family."""
    out = {}
    for family in FAMILIES:
        docs = [encode(tokenizer, e, model.cfg.n_ctx) for e in heldout_examples(family, n_docs)]
        total, count = 0.0, 0
        for doc, lp, _ in run_batched(model, docs):
            targets = lp.new_tensor(doc.ids[1:], dtype=int)
            total += -lp[:-1].gather(1, targets[:, None]).sum().item()
            count += len(targets)
        out[family] = total / count
    out["mean"] = sum(out[f] for f in FAMILIES) / len(FAMILIES)
    return out


def _correct(lp, doc: Encoded, positions: list[int]) -> list[bool]:
    """Whether the token at each position is the argmax prediction from the position before."""
    pred = lp.argmax(-1)
    return [int(pred[p - 1]) == doc.ids[p] for p in positions]


def induction_probe(model, tokenizer, n_docs: int, head_scores: bool = True) -> dict:
    """Copy losses on repeated segments; with ``head_scores``, per-head pattern scores too
    (a model without ``attn.hook_pattern`` hooks, such as a replacement model, passes False)."""
    import torch

    docs = [encode(tokenizer, e, model.cfg.n_ctx) for e in heldout_examples("repeat", n_docs)]
    losses = {"first": [], "second": []}
    ind = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    prev = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    n_ind = n_prev = 0
    for doc, lp, pats in run_batched(model, docs, patterns=head_scores):
        copy = doc.example.spans_of("second")[0]
        first, second = doc.tokens_in(copy.earlier), doc.tokens_in(copy)
        if len(second) != len(first):
            continue  # the second copy ran past the context
        for name, positions in (("first", first[1:]), ("second", second[1:])):
            losses[name] += [-lp[p - 1, doc.ids[p]].item() for p in positions]
        if not head_scores:
            continue
        offset = second[0] - first[0]
        q = torch.tensor(second[1:])
        stacked = torch.stack([pats[l] for l in range(model.cfg.n_layers)])  # layer head q k
        ind += stacked[:, :, q, q - offset + 1].sum(-1)
        n_ind += len(q)
        allq = torch.arange(1, len(doc.ids))
        prev += stacked[:, :, allq, allq - 1].sum(-1)
        n_prev += len(allq)
    first_loss = sum(losses["first"]) / len(losses["first"])
    second_loss = sum(losses["second"]) / len(losses["second"])
    result = {
        "loss_first_copy": first_loss,
        "loss_second_copy": second_loss,
        "loss_ratio": second_loss / first_loss if first_loss > 0 else float("nan"),
    }
    if head_scores:
        ind, prev = ind / n_ind, prev / n_prev
        result |= {
            "induction_scores": ind.tolist(),
            "previous_token_scores": prev.tolist(),
            "best_induction_head": _best(ind),
            "best_previous_token_head": _best(prev),
        }
    return result


def _best(scores) -> dict:
    flat = int(scores.argmax())
    layer, head = divmod(flat, scores.shape[1])
    return {"layer": layer, "head": head, "score": float(scores[layer, head])}


def successor_probe(model, tokenizer, n_docs: int) -> dict:
    docs = [encode(tokenizer, e, model.cfg.n_ctx) for e in heldout_examples("successor", n_docs)]
    hits: dict[str, list[bool]] = defaultdict(list)
    for doc, lp, _ in run_batched(model, docs):
        for span in doc.example.spans_of("item"):
            positions = doc.tokens_in(span)
            if positions and positions[-1] < len(doc.ids) and doc.holds(span):
                hits[span.sequence].append(all(_correct(lp, doc, positions)))
    every = [h for v in hits.values() for h in v]
    return {
        "accuracy": sum(every) / len(every),
        "n_items": len(every),
        "by_kind": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
    }


def addition_probe(model, tokenizer, n_docs: int) -> dict:
    docs = [encode(tokenizer, e, model.cfg.n_ctx) for e in heldout_examples("addition", n_docs)]
    newline = tokenizer.token_to_id("Ċ")
    by_digits: dict[int, list[bool]] = defaultdict(list)
    by_carries: dict[int, list[bool]] = defaultdict(list)
    for doc, lp, _ in run_batched(model, docs):
        for answer in doc.example.spans_of("answer"):
            positions = doc.tokens_in(answer)
            if not positions or positions[-1] + 1 >= len(doc.ids):
                continue  # the answer or its line end lies past the context
            a, b = answer.operands
            ok = all(_correct(lp, doc, positions)) and int(lp[positions[-1]].argmax()) == newline
            by_digits[max(len(a.value), len(b.value))].append(ok)
            by_carries[count_carries(int(a.value), int(b.value))].append(ok)
    every = [h for v in by_digits.values() for h in v]
    return {
        "exact_match": sum(every) / len(every),
        "n_problems": len(every),
        "by_digits": {k: sum(v) / len(v) for k, v in sorted(by_digits.items())},
        "by_carries": {k: sum(v) / len(v) for k, v in sorted(by_carries.items())},
    }


def subtoken_induction_probe(model, tokenizer, n_docs: int) -> dict:
    """Accuracy on sub-tokens 2..n of multi-token held-out names at their later mentions."""
    docs = [encode(tokenizer, e, model.cfg.n_ctx) for e in heldout_examples("names", n_docs)]
    token_hits, mention_hits = [], []
    for doc, lp, _ in run_batched(model, docs):
        for span in doc.example.spans_of("name"):
            if not span.rare or span.earlier is None:
                continue  # a name seen in training, or its first mention
            positions = doc.tokens_in(span)
            if len(positions) < 2 or not doc.holds(span):
                continue
            hits = _correct(lp, doc, positions[1:])
            token_hits += hits
            mention_hits.append(all(hits))
    return {
        "accuracy": sum(token_hits) / max(1, len(token_hits)),
        "mention_accuracy": sum(mention_hits) / max(1, len(mention_hits)),
        "n_subtokens": len(token_hits),
        "n_mentions": len(mention_hits),
    }


def sink_probe(model, tokenizer, n_docs: int) -> dict:
    """Mean attention mass on BOS per head (queries after the first), over all families and
    per family (a head can be a sink on the tasks it has no work in)."""
    import torch

    shape = (model.cfg.n_layers, model.cfg.n_heads)
    mass, count = {}, {}
    for family in FAMILIES:
        docs = [encode(tokenizer, e, model.cfg.n_ctx) for e in heldout_examples(family, n_docs)]
        mass[family], count[family] = torch.zeros(shape), 0
        for _, _, pats in run_batched(model, docs, patterns=True):
            stacked = torch.stack([pats[l] for l in range(model.cfg.n_layers)])
            mass[family] += stacked[:, :, 1:, 0].sum(-1)
            count[family] += stacked.shape[2] - 1
    overall = sum(mass.values()) / sum(count.values())

    def best_after_first_layer(scores) -> dict:
        later = scores[1:] if model.cfg.n_layers > 1 else scores
        best = _best(later)
        best["layer"] += 1 if model.cfg.n_layers > 1 else 0
        return best

    return {
        "bos_mass": overall.tolist(),
        "best_head_layer_ge_1": best_after_first_layer(overall),
        "best_head_layer_ge_1_by_family": {
            family: best_after_first_layer(mass[family] / count[family]) for family in FAMILIES
        },
    }


def evaluate(model, tokenizer, n_docs: int = 200) -> dict:
    return {
        "heldout_loss": heldout_loss(model, tokenizer, n_docs),
        "induction": induction_probe(model, tokenizer, n_docs),
        "successor": successor_probe(model, tokenizer, n_docs),
        "addition": addition_probe(model, tokenizer, n_docs),
        "subtoken_induction": subtoken_induction_probe(model, tokenizer, n_docs),
        "attention_sink": sink_probe(model, tokenizer, n_docs // 4 or 1),
    }


def _head(best: dict) -> str:
    return f"L{best['layer']}H{best['head']} {best['score']:.2f}"


def summary(r: dict) -> str:
    ind, add, suc, sub = r["induction"], r["addition"], r["successor"], r["subtoken_induction"]
    sink = r["attention_sink"]["best_head_layer_ge_1"]
    lines = [
        "held-out loss   " + "  ".join(f"{k} {v:.3f}" for k, v in r["heldout_loss"].items()),
        f"induction       second/first copy loss {ind['loss_second_copy']:.3f}/"
        f"{ind['loss_first_copy']:.3f} = {ind['loss_ratio']:.1%}; best induction head "
        f"{_head(ind['best_induction_head'])}; best previous-token head "
        f"{_head(ind['best_previous_token_head'])}",
        f"successor       accuracy {suc['accuracy']:.1%} over {suc['n_items']} items; "
        + " ".join(f"{k} {v:.0%}" for k, v in suc["by_kind"].items()),
        f"addition        exact match {add['exact_match']:.1%} over {add['n_problems']}; by digits "
        + " ".join(f"{k}:{v:.1%}" for k, v in add["by_digits"].items())
        + "; by carries "
        + " ".join(f"{k}:{v:.1%}" for k, v in add["by_carries"].items()),
        f"subtoken ind.   accuracy {sub['accuracy']:.1%} over {sub['n_subtokens']} sub-tokens"
        f" (whole mentions {sub['mention_accuracy']:.1%})",
        f"attention sink  best head in layer >= 1: {_head(sink)} of attention on BOS; per family "
        + ", ".join(
            f"{family} {_head(best)}"
            for family, best in r["attention_sink"]["best_head_layer_ge_1_by_family"].items()
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toy_models.evaluate",
        description="Held-out loss per task family and mechanism probes for a toy model.",
    )
    parser.add_argument(
        "--model", default="default", help="zoo name with a shipped checkpoint, or a run directory"
    )
    parser.add_argument(
        "--docs", type=int, default=200, help="held-out documents per family (default 200)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if args.docs <= 0:
        raise ValueError(f"--docs must be positive, got {args.docs}")
    from .files import check_writable_file, write_json_atomic
    from .zoo import load_pretrained, resolve_model_dir

    resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    if args.json:
        check_writable_file(args.json, "--json")  # before the evaluation, not after it
    model, tokenizer = load_pretrained(args.model)
    results = {
        "model": args.model,
        "docs_per_family": args.docs,
        **evaluate(model, tokenizer, args.docs),
    }
    print(summary(results))
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
