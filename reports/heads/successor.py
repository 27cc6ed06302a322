"""The successor family's OV test: does the family's output, reading an item where it stands,
promote the item's successor?

At every successor probe the previous item's actual Lorsa input ``x`` (its residual stream at
the previous item's position, local mode) goes through each head's OV circuit as if the head
attended there alone: ``relu(x w_v + b_V) w_o`` (a rank-1 head's output, ReLU as in ``z``),
summed over the family's heads (each reading its own layer's ``x``), and through the direct
path to the logits (the demeaned, centred unembedding). The successor passes where its token
is among the ``top`` tokens raised most; the item itself is compared too (a head that copies
the item is no successor head). Equal-size random head sets from the same layers are the
control. Reported beside it, not part of the verdict: how often the successor is raised most
among the items of its own sequence (``ProbeDoc.successor_rivals``: every item of the list
that is one token in the successor's spelling, with or without a leading space; the item
itself among them), the within-sequence reading of a successor head's OV."""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .ablation import Heads, random_like
from .config import SUCCESSOR_OV_TARGET, SUCCESSOR_TOP
from .probes import ProbeDoc
from .scores import HeadScores


class OVProbe(NamedTuple):
    """One successor probe of the OV test: the previous item read where it stands."""

    doc: int  # index of the probe document
    key: int  # position of the previous item
    successor: int  # the next item's token
    item: int  # the previous item's token
    frame: str  # list / sentence
    rivals: list[int] | None  # the sequence's items in the successor's spelling, if known


def ov_logits(
    replacement, inputs: list[Float[Tensor, "n d_model"]], heads: Heads
) -> Float[Tensor, "n vocab"]:
    """Direct logit effects of ``heads``' summed OV outputs on the inputs ``inputs[layer]``
    (each head attending only there): ``sum_i relu(x w_v^i + b_V^i) (P w_o^i) . unembed``."""
    rw = replacement.read_write()
    out = torch.zeros(inputs[0].shape[0], rw.unembed.shape[0])  # (n, vocab)
    for l, hs in heads.items():
        if len(hs):
            index = torch.tensor(hs, dtype=torch.long)
            values = replacement.lorsas[l].values(inputs[l])[:, index].clamp(min=0)
            out += values @ rw.direct_logits(True, l, index)
    return out


def ranks(logits: Float[Tensor, "n vocab"], tokens: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
    """Each token's rank among its row's logits (0: the top; ties count against it)."""
    own = logits.gather(1, tokens[:, None])
    return (logits >= own).sum(1) - 1


def successor_ov(
    replacement,
    scores: HeadScores,
    probes: dict[str, list[ProbeDoc]],
    heads: Heads,
    draws: int = 10,
    seed: int = 0,
    top: int = SUCCESSOR_TOP,
) -> dict:
    """The OV test of ``heads`` on every successor probe: the share whose successor is among
    the ``top`` tokens promoted (overall and by frame: lists, sentences), the median rank,
    the share where the successor outranks the item itself, and the same share for random
    heads; ``meets_target`` when the share reaches ``SUCCESSOR_OV_TARGET``."""
    docs = probes.get("successor", [])
    rows = [
        OVProbe(j, keys[0], probe.successor_token[q], probe.ids[keys[0]],
                probe.successor_frame[q], probe.successor_rivals.get(q))
        for j, probe in enumerate(docs)
        for q, keys in probe.keys.get("successor", {}).items()
    ]  # fmt: skip
    n_heads = sum(len(h) for h in heads.values())
    out: dict = {"probes": len(rows), "n_heads": n_heads, "top": top}
    if not rows or not n_heads:
        return out | {"meets_target": False}
    doc, key = torch.tensor([r.doc for r in rows]), torch.tensor([r.key for r in rows])
    successor = torch.tensor([r.successor for r in rows])
    item = torch.tensor([r.item for r in rows])
    inputs = [x[doc, key] for x in scores.lorsa_inputs["successor"]]
    with torch.no_grad():
        logits = ov_logits(replacement, inputs, heads)
        rank, item_rank = ranks(logits, successor), ranks(logits, item)
        n_ov = [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas]
        rng = random.Random(f"successor-ov/{seed}/{n_heads}")
        pools = [list(range(n)) for n in n_ov]
        drawn = [ov_logits(replacement, inputs, random_like(heads, pools, n_ov, rng))
                 for _ in range(draws)]  # fmt: skip
        random_in_top = [float((ranks(r, successor) < top).float().mean()) for r in drawn]
    hit = rank < top
    rivals = [(i, r.rivals, r.successor) for i, r in enumerate(rows) if r.rivals]
    frames = [r.frame for r in rows]
    out |= {
        "in_top": float(hit.float().mean()),
        "median_rank": int(rank.median()),
        "above_item": float((rank < item_rank).float().mean()),
        "by_frame": {
            frame: {
                "probes": frames.count(frame),
                "in_top": float(hit[[f == frame for f in frames]].float().mean()),
            }
            for frame in sorted(set(frames))
        },
        "random_in_top": sum(random_in_top) / len(random_in_top),
        "target": SUCCESSOR_OV_TARGET,
    }
    if rivals:
        out["in_sequence"] = {
            "probes": len(rivals),
            "mean_rivals": sum(len(r[1]) for r in rivals) / len(rivals),
            "first": first_in_sequence(logits, rivals),
            "random_first": sum(first_in_sequence(r, rivals) for r in drawn) / len(drawn),
        }
    out["meets_target"] = out["in_top"] >= SUCCESSOR_OV_TARGET
    return out


def first_in_sequence(
    logits: Float[Tensor, "n vocab"], rivals: list[tuple[int, list[int], int]]
) -> float:
    """The share of ``(row, rival tokens, successor)`` whose successor's logit is above every
    other rival's (ties count against it)."""
    hits = [
        bool((logits[i, [t for t in toks if t != successor]] < logits[i, successor]).all())
        for i, toks, successor in rivals
    ]
    return sum(hits) / len(hits)
