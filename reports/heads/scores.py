"""Family scores: every head's positive contribution mass from each family's expected keys
over its active probe queries (the attention sink: its attention on BOS over every probe
query), in one run of the probe documents, and the labels that follow from the thresholds
(``score_f(i)`` in the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from replacement.model import hook_name
from toy_models.data import pad_rows

from .config import DIAGNOSTICS, HEAD_FAMILIES, MIN_LAYER, SUCCESSOR_TOP, THRESHOLDS, Threshold
from .probes import ProbeDoc


def key_mass(
    pattern: Float[Tensor, "batch qk q k"],
    values: Float[Tensor, "batch k ov"],
    key_mask: Bool[Tensor, "batch q k"] | None = None,
) -> Float[Tensor, "batch q ov"]:
    """``sum_k A[q, k] relu(v_k)`` over the keys in ``key_mask`` (all keys when None): every
    head's positive contribution mass from those keys in one grouped product, without
    forming per-head patterns (heads ``g * group_size ...`` share QK head ``g``)."""
    b, n_k, n_ov = values.shape
    n_qk = pattern.shape[1]
    v = values.clamp(min=0).view(b, n_k, n_qk, n_ov // n_qk).transpose(1, 2)  # batch qk k group
    if key_mask is not None:
        pattern = pattern * key_mask[:, None]
    return (pattern @ v).transpose(1, 2).reshape(b, pattern.shape[2], n_ov)


@dataclass
class FamilyScores:
    """One family's sums over its probe queries, for each head of one layer."""

    expected: Float[Tensor, " ov"]  # positive mass from the expected keys, counted queries
    total: Float[Tensor, " ov"]  # positive mass from every key, counted queries
    active: Float[Tensor, " ov"]  # number of active probe queries
    best: Float[Tensor, " ov"]  # the largest expected mass at one query
    best_at: list[tuple[str, int, int] | None]  # (corpus, doc, query) of it: the example

    @classmethod
    def zeros(cls, n_ov: int) -> FamilyScores:
        return cls(*(torch.zeros(n_ov) for _ in range(4)), [None] * n_ov)

    @property
    def score(self) -> Float[Tensor, " ov"]:
        return torch.where(self.total > 0, self.expected / self.total.clamp(min=1e-30), 0.0)

    def add(
        self,
        expected: Float[Tensor, "batch q ov"],
        total: Float[Tensor, "batch q ov"],
        active: Bool[Tensor, "batch q ov"],
        corpus: str,
        first_doc: int = 0,
        counted: Bool[Tensor, "batch q ov"] | None = None,
    ) -> None:
        """Add one batch: sums over the ``counted`` queries (default: the active ones)."""
        counted = active if counted is None else counted
        expected, total = expected * counted, total * counted
        self.expected += expected.sum((0, 1))
        self.total += total.sum((0, 1))
        self.active += active.sum((0, 1))
        n_q = expected.shape[1]
        best, where = expected.flatten(0, 1).max(0)
        for i in (best > self.best).nonzero().flatten().tolist():
            self.best[i] = best[i]
            self.best_at[i] = (corpus, first_doc + int(where[i]) // n_q, int(where[i]) % n_q)


def key_masks(
    probes: list[ProbeDoc], family: str, n: int
) -> tuple[Bool[Tensor, "batch q k"], Bool[Tensor, "batch q"]]:
    """A family's expected (query, key) pairs over padded documents, and its probe queries."""
    mask = torch.zeros(len(probes), n, n, dtype=torch.bool)
    for j, probe in enumerate(probes):
        for q, ks in probe.keys.get(family, {}).items():
            mask[j, q, ks] = True
    return mask, mask.any(-1)


def sink_attention(
    pattern: Float[Tensor, "batch qk q k"], group_size: int
) -> Float[Tensor, "batch q ov"]:
    """Every OV head's attention on BOS (key 0): its QK head's, shared by the group."""
    return pattern[..., 0].transpose(1, 2).repeat_interleave(group_size, dim=-1)


def promoted_tokens(effect: Float[Tensor, "ov vocab"], top: int) -> Bool[Tensor, "ov vocab"]:
    """Whether each token is among the ``top`` that a head's output raises most through the
    direct path: ``effect`` the heads' direct logit effects
    (``ReplacementModel.read_write().direct_logits``)."""
    promoted = torch.zeros_like(effect, dtype=torch.bool)
    return promoted.scatter_(1, effect.topk(top, dim=1).indices, True)


def successor_targets(probes: list[ProbeDoc], n: int) -> Int[Tensor, "batch q"]:
    """The next item's token at each successor query (0 elsewhere)."""
    target = torch.zeros(len(probes), n, dtype=torch.long)
    for j, probe in enumerate(probes):
        for q, token in probe.successor_token.items():
            target[j, q] = token
    return target


@dataclass
class HeadScores:
    """``families[f][l]``: family (or diagnostic) f's sums for the heads of layer l;
    ``lorsa_inputs[corpus][l]``: the Lorsa inputs of the probe documents, for examples."""

    families: dict[str, list[FamilyScores]]
    lorsa_inputs: dict[str, list[Float[Tensor, "batch pos d_model"]]]


def score_heads(
    replacement, probes: dict[str, list[ProbeDoc]], batch_size: int = 32, progress: bool = True
) -> HeadScores:
    """Run the probe documents once (local mode: the original model's residual stream) and
    add up every family's key mass for every head."""
    from tqdm import tqdm

    n_layers = replacement.cfg.n_layers
    lorsas = replacement.lorsas
    names = HEAD_FAMILIES + DIAGNOSTICS
    families = {f: [FamilyScores.zeros(m.cfg.n_ov_heads) for m in lorsas] for f in names}
    rw = replacement.read_write()
    promoted = [promoted_tokens(rw.direct_logits(True, l), SUCCESSOR_TOP) for l in range(n_layers)]
    hooks = {hook_name(l, f"lorsa.{h}") for l in range(n_layers) for h in ("hook_in", "hook_z")}
    inputs: dict[str, list[list[Tensor]]] = {c: [[] for _ in lorsas] for c in probes}
    chunks = [(c, i) for c, docs in probes.items() for i in range(0, len(docs), batch_size)]
    for corpus, first in tqdm(chunks, desc="scoring heads", disable=not progress, leave=False):
        batch = probes[corpus][first : first + batch_size]
        tokens = pad_rows([p.ids for p in batch])
        n = tokens.shape[1]
        with torch.no_grad():
            _, cache = replacement.run_with_cache(
                tokens, mode="local", names_filter=lambda name: name in hooks
            )
            for l, lorsa in enumerate(lorsas):
                x, z = cache[hook_name(l, "lorsa.hook_in")], cache[hook_name(l, "lorsa.hook_z")]
                inputs[corpus][l].append(x)
                pattern, values = lorsa.patterns(x), lorsa.values(x)
                total = key_mass(pattern, values)
                for family in names:
                    mask, queries = key_masks(batch, family, n)
                    if not queries.any():
                        continue
                    active = (z > 0) & queries[..., None]
                    if family == "attention_sink":
                        # Attention, not value: a sink head rests on BOS whether or not BOS's
                        # value moves it, and rests most where it is silent.
                        bos = sink_attention(pattern, lorsa.cfg.group_size)
                        counted = queries[..., None].expand_as(active)
                        families[family][l].add(bos, torch.ones_like(bos), active, corpus,
                                                first, counted)  # fmt: skip
                        continue
                    expected = key_mass(pattern, values, mask)
                    if family == "successor":
                        target = successor_targets(batch, n)
                        expected = expected * promoted[l][:, target].permute(1, 2, 0)
                    families[family][l].add(expected, total, active, corpus, first)
    width = {c: max(len(p.ids) for p in docs) for c, docs in probes.items()}
    lorsa_inputs = {
        c: [torch.cat([_pad_to(x, width[c]) for x in per_layer]) for per_layer in layers]
        for c, layers in inputs.items()
    }
    return HeadScores(families, lorsa_inputs)


def _pad_to(x: Float[Tensor, "batch pos d"], n: int) -> Float[Tensor, "batch n d"]:
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))


def labels(
    scores: HeadScores,
    thresholds: dict[str, Threshold] = THRESHOLDS,
    min_layer: dict[str, int] = MIN_LAYER,
) -> dict[str, dict[int, list[int]]]:
    """``{family: {layer: [head, ...]}}``, each layer's heads by decreasing score."""
    return {
        family: family_labels(scores, family, thresholds[family], min_layer.get(family, 0))
        for family in HEAD_FAMILIES
    }


def family_labels(
    scores: HeadScores, family: str, threshold: Threshold, min_layer: int = 0
) -> dict[int, list[int]]:
    """``{layer: [head, ...]}``: one family's heads meeting ``threshold`` from ``min_layer``
    on, each layer's by decreasing score."""
    return {
        l: passing(s, threshold).tolist() if l >= min_layer else []
        for l, s in enumerate(scores.families[family])
    }


def passing(s: FamilyScores, t: Threshold) -> Int[Tensor, " n"]:
    """The heads meeting a threshold, by decreasing score."""
    heads = ((s.score >= t.score) & (s.active >= t.min_active)).nonzero().flatten()
    return heads[s.score[heads].argsort(descending=True, stable=True)]
