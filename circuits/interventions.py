"""Interventions: change nodes of a graph, rerun the replacement model, compare with the graph.

Two ways to rerun, both through the replacement model's hooks (never through the graph):

- ``direct_pre_activations``: the *frozen* model of the graph: every attention pattern and
  LayerNorm scale at its clean value, and every node held at its clean activation times a
  multiplier. Targets' pre-activations then move by exactly their edges from the multiplied
  sources (circuit-tracer's test); with multipliers that require grad it is also the autograd
  oracle for the edges.
- ``intervene``: ablate, clamp or scale some nodes and let every other head and feature
  recompute (ReLU and TopK live), with attention and LayerNorm frozen or free, and in local
  mode the error nodes held at their clean values (the graph's setting: they are its sources)
  or recomputed from the new inputs (``freeze_errors=False``: each sublayer is then the
  original one on its new input, plus what the edits change of its reconstruction; with
  attention and LayerNorm free too, that is the original model less the edited units' writes,
  what circuit-tracer's interventions measure outside their constrained layers).
  ``predict`` propagates the same change linearly through the graph, so the two can be
  compared on the logits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from replacement.model import ReplacementModel, hook_name
from toy_models.model import attention_pattern

from .attribution import PromptRun, decoder_bias, run_for_graph
from .graph import Graph, checked_flag, checked_graph, checked_index
from .nodes import Kind, block_of, logit_stage, stage_of, sublayer_kind
from .prune import check_rows_close, row_block

# The hook a Lorsa head's / transcoder feature's activation passes, per kind.
ACTIVATION_SITE = {Kind.LORSA: "lorsa.hook_z", Kind.TRANSCODER: "transcoder.hook_acts"}
SITE = {Kind.LORSA: "lorsa", Kind.TRANSCODER: "transcoder"}

ACTIONS = ("ablate", "clamp", "scale")
# ``freeze_layernorm=FINAL_LAYERNORM``: hold the final LayerNorm's scale alone (the blocks' free)
FINAL_LAYERNORM = "final"
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class Intervention:
    """``ablate`` a node (set it to 0), ``clamp`` it to ``value`` or ``scale`` it by ``value``
    (which these two must be given: ``Intervention(node, "scale", 2.0)``).

    Embedding and error nodes have activation 1 (their write vector is the vector itself), so
    clamping one to 2 doubles the vector. A logit node (a target no node reads) is held at its
    edited value by ``predict`` and ``intervene`` alike.
    """

    node: str  # a node id of the graph
    action: str = "ablate"
    value: float | None = None  # clamp's and scale's; ablate's is 0

    def __post_init__(self) -> None:
        """Checked here, whatever the graph: ``node`` a node id (a str), ``action`` one of
        ``ACTIONS``, and ``value`` a finite number within float32's range (the model computes
        in float32), kept as a Python float: any real number, a NumPy scalar or a one-element
        tensor (``graph.value[i] * 2``). Anything else is refused in one line (an int of 401
        digits was an OverflowError, a list as the node "unhashable type": fuzz pass 13), and
        so are a clamp or scale with no value and an ablation with one other than 0 (a
        reviewer's ``Intervention(node, "scale")`` scaled by 0, an ablation, without a word)."""
        if not isinstance(self.node, str):
            raise TypeError(f"Intervention node must be a node id (a str), got a "
                            f"{type(self.node).__name__}")  # fmt: skip
        if not isinstance(self.action, str) or self.action not in ACTIONS:
            raise ValueError(f"{self.node!r}: unknown action {self.action!r}; expected one of "
                             f"{', '.join(ACTIONS)}")  # fmt: skip
        value = self.value
        if value is None and self.action != "ablate":
            raise ValueError(f"{self.action} of {self.node!r} needs a value: "
                             f"Intervention(node, {self.action!r}, value)")  # fmt: skip
        value = 0.0 if value is None else value
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise ValueError(f"{self.action} of {self.node!r}: the value must be a number, got "
                             f"{_short(self.value)}")  # fmt: skip
        try:
            number = float(value)
        except OverflowError:  # an int or a Fraction beyond any float
            number = math.inf
        if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
            raise ValueError(f"{self.action} of {self.node!r}: the value must be a finite number "
                             f"within float32's range ({FLOAT32_MAX:.3g}), in which the model "
                             f"computes; got {_short(self.value)}")  # fmt: skip
        if self.action == "ablate" and number != 0:
            raise ValueError(f"ablate of {self.node!r} sets it to 0, not {_short(self.value)}: "
                             "clamp it to a value, or scale it by one")  # fmt: skip
        object.__setattr__(self, "value", number)

    def apply(self, clean: float) -> float:
        return {"ablate": 0.0, "clamp": self.value, "scale": clean * self.value}[self.action]


def _short(value) -> str:
    """``value``'s repr cut to one short line (an int of 401 digits, a long list)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


@dataclass
class InterventionResult:
    """Effects on the graph's targets (``target_nodes``: logits, then heads or features, whose
    pre-activations are read unless edited: an edited target's change is its edit's), and the
    new logits at the last position."""

    targets: list[str]  # target node ids
    predicted: Float[Tensor, " target"]  # change predicted by the linear graph
    actual: Float[Tensor, " target"]  # change measured by rerunning the model
    logits: Float[Tensor, " d_vocab"]  # the last position's logits after the intervention
    # per ``attention_reads`` entry (layer, qk_head, query, key): the QK head's attention from
    # query to key after the intervention (the Lorsa pattern; empty when none was asked)
    attention: Float[Tensor, " read"] = field(default_factory=lambda: torch.zeros(0))
    # per read, that attention with one side's vectors as after the intervention and the
    # other's as clean: column 0 the query's alone, column 1 the keys' alone (every key up to
    # the query): through which side the edit moves it (``side_attention``; with attention
    # frozen, the clean attention in both)
    attention_by_side: Float[Tensor, "read 2"] = field(default_factory=lambda: torch.zeros(0, 2))


# ----------------------------------------------------------------- hooks
def _hooks(
    replacement: ReplacementModel,
    run: PromptRun,
    *,
    freeze_attention: bool,
    freeze_layernorm: bool | str,
    z: list[Tensor | None],
    acts: list[Tensor | None],
    errors: dict[str, Tensor],
    embed_scale: Tensor | None,
    bias_scale: dict[int, Tensor] | None = None,
) -> list[tuple[str, Callable]]:
    """Forward hooks that freeze what is asked and replace node values with the given ones
    (``z[l]``, ``acts[l]``: (batch, pos, n) or None to leave that layer's nodes free;
    ``embed_scale``: (batch, pos) multipliers of the token embeddings; ``bias_scale[stage]``:
    (batch, pos) multipliers of that sublayer's decoder bias, stage 0's of the position
    vectors)."""
    hooks = []

    def const(value):
        return lambda act, hook: value.expand_as(act) if value.dim() == act.dim() else value

    L = replacement.cfg.n_layers
    if freeze_layernorm is True:
        for l in range(L):
            for ln, sigma in (("ln1", run.sigma1[l]), ("ln2", run.sigma2[l])):
                hooks.append((hook_name(l, f"{ln}.hook_scale"), const(sigma[None, :, None])))
    if freeze_layernorm:  # True or FINAL_LAYERNORM
        hooks.append(("ln_final.hook_scale", const(run.sigma_final[None, :, None])))
    for l in range(L):
        if freeze_attention:
            hooks.append((hook_name(l, "lorsa.hook_pattern"), const(run.patterns[l][None])))
        if z[l] is not None:
            hooks.append((hook_name(l, ACTIVATION_SITE[Kind.LORSA]), const(z[l])))
        if acts[l] is not None:
            hooks.append((hook_name(l, ACTIVATION_SITE[Kind.TRANSCODER]), const(acts[l])))
    for name, value in errors.items():
        hooks.append((name, const(value)))
    if embed_scale is not None:
        scale = embed_scale[:, :, None]
        hooks.append(("hook_embed", lambda act, hook: act * scale))
    for stage, multiplier in (bias_scale or {}).items():
        if stage == 0:  # the position vectors (batch pos d)
            hooks.append(("hook_pos_embed", _scaler(multiplier[:, :, None])))
            continue
        layer = block_of(stage)
        kind = sublayer_kind(stage)
        bias = decoder_bias(
            replacement.lorsas[layer] if kind == Kind.LORSA else replacement.transcoders[layer]
        ).detach()
        extra = (multiplier - 1)[:, :, None] * bias  # batch pos d: bias times (multiplier - 1)
        hooks.append((hook_name(layer, f"{SITE[kind]}.hook_out"), _adder(extra)))
    return hooks


def _scaler(scale: Tensor) -> Callable:
    return lambda act, hook: act * scale


def _adder(extra: Tensor) -> Callable:
    return lambda act, hook: act + extra


def _error_name(stage: int) -> str:
    return hook_name(block_of(stage), f"{SITE[sublayer_kind(stage)]}.hook_error")


def _error_sites(cache: dict, n_layers: int) -> list[str]:
    """The error hooks of every sublayer (``_error_name``) that ``cache`` holds: all in local
    mode, none in sparse mode."""
    return [name for s in range(1, logit_stage(n_layers)) if (name := _error_name(s)) in cache]


def check_full_graph(graph: Graph, run: PromptRun | None = None) -> int:
    """The number of source nodes of ``graph``, refusing one that is not the full (unpruned)
    graph of a prompt: with ``run``, not ``run``'s full graph; without, one whose rows do not
    close (a head's, feature's or target's incoming edges plus its bias are its activation, or
    its value: what every exact flow read from the graph assumes, and what a pruned graph,
    having lost edges, no longer does)."""
    n_src = graph.n_nodes - int(graph.is_kind("logit").sum())
    if run is not None:
        if n_src != len(run.kind) or not torch.equal(graph.index[:n_src], run.index):
            raise ValueError("this needs the full (unpruned) graph of the prompt")
        return n_src
    check_rows_close(graph)
    return n_src


def target_nodes(graph: Graph) -> list[int]:
    """The nodes a graph explains, in order (``Graph.target_order``)."""
    return graph.target_order()


def _pre_activation_site(graph: Graph, i: int) -> str:
    """The hook holding head or feature ``i``'s pre-activation (its value in the graph)."""
    kind = Kind(int(graph.kind[i]))
    return hook_name(block_of(int(graph.stage[i])), f"{SITE[kind]}.hook_pre")


def _logit_readout(graph: Graph) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The logit nodes, and a function from last-position logits (..., vocab) to their values."""
    rows = graph.is_kind(Kind.LOGIT).nonzero().squeeze(1)
    records = graph.logit_targets  # one per logit node, in node order
    pos_idx = torch.tensor([r.token for r in records], dtype=torch.long)
    neg_idx = torch.tensor([-1 if r.negative is None else r.negative for r in records],
                           dtype=torch.long)  # fmt: skip
    is_diff = neg_idx >= 0

    def read(logits: Tensor) -> Tensor:
        demeaned = logits - logits.mean(-1, keepdim=True)
        diff = logits[..., pos_idx] - logits[..., neg_idx.clamp(min=0)]
        return torch.where(is_diff, diff, demeaned[..., pos_idx])

    return rows, read


# ----------------------------------------------------------------- the frozen model
def direct_pre_activations(
    replacement: ReplacementModel,
    graph: Graph,
    multipliers: Float[Tensor, "batch source"],
    run: PromptRun | None = None,
) -> Float[Tensor, "batch node"]:
    """Every target's pre-activation in the frozen model with each source at its clean
    activation times ``multipliers[b, s]`` (1 everywhere reproduces ``graph.value``).

    ``graph`` must be the full graph; columns of the result that are not targets are NaN.
    Differentiable in ``multipliers``: d(target)/d(multiplier of s) at 1 is the edge s -> target.
    """
    _check_inputs(replacement, graph, run)
    n_src = graph.n_nodes - int(graph.is_kind(Kind.LOGIT).sum())  # checked before any run
    if not isinstance(multipliers, Tensor) or multipliers.ndim != 2 or \
            multipliers.shape[1] != n_src:  # fmt: skip
        shape = tuple(getattr(multipliers, "shape", ()))
        raise ValueError(f"multipliers must be (batch, {n_src}): one per source node of the "
                         f"graph, got {shape}")  # fmt: skip
    run = run_for_graph(replacement, graph, run)
    check_full_graph(graph, run)
    B, n = multipliers.shape[0], len(run.tokens)
    L = run.n_layers
    cache = _clean_nodes(replacement, run)
    z, acts, errors, bias_scale = [], [], {}, {}
    embed_scale = torch.ones(B, n, dtype=multipliers.dtype)
    for kind, stage in sorted(set(zip(run.kind.tolist(), run.stage.tolist(), strict=True))):
        sel = run.select(kind, stage)
        m = multipliers[:, sel]
        if kind == Kind.EMBEDDING:
            embed_scale = embed_scale.index_put((torch.arange(B)[:, None], run.pos[sel][None]), m)
        elif kind == Kind.BIAS:
            ones = torch.ones(B, n, dtype=multipliers.dtype)
            bias_scale[stage] = ones.index_put((torch.arange(B)[:, None], run.pos[sel][None]), m)
        elif kind == Kind.ERROR:
            name = _error_name(stage)
            scale = torch.ones(B, n, 1).index_put(
                (torch.arange(B)[:, None], run.pos[sel][None], torch.zeros_like(sel)[None]), m
            )
            errors[name] = cache[name] * scale
    for l in range(L):
        for kind, store, values in (
            (Kind.LORSA, z, cache["z"][l]),
            (Kind.TRANSCODER, acts, cache["acts"][l]),
        ):
            sel = run.select(kind, stage_of(kind, l))
            scale = torch.ones(B, *values.shape, dtype=multipliers.dtype)
            scale = scale.index_put(
                (torch.arange(B)[:, None], run.pos[sel][None], run.index[sel][None]),
                multipliers[:, sel],
            )
            store.append(values * scale)
    hooks = _hooks(
        replacement, run, freeze_attention=True, freeze_layernorm=True,
        z=z, acts=acts, errors=errors, embed_scale=embed_scale, bias_scale=bias_scale,
    )  # fmt: skip
    names = tuple(hook_name(l, f"{site}.hook_pre") for l in range(L) for site in SITE.values())
    pre: dict[str, Tensor] = {}

    def keep(act, hook):
        pre[hook.name] = act

    tokens = run.tokens[None].expand(B, n)
    logits = replacement.run_with_hooks(
        tokens, mode=run.mode, fwd_hooks=hooks + [(lambda name: name in names, keep)]
    )
    out = torch.full((B, graph.n_nodes), float("nan"), dtype=logits.dtype)
    for kind, site in SITE.items():
        for l in range(L):
            sel = run.select(kind, stage_of(kind, l))
            out[:, sel] = pre[hook_name(l, f"{site}.hook_pre")][:, run.pos[sel], run.index[sel]]
    rows, read = _logit_readout(graph)
    out[:, rows] = read(logits[:, -1])
    return out


def _clean_nodes(replacement: ReplacementModel, run: PromptRun) -> dict:
    """The clean z / acts per layer (pos, n) and error vectors (1, pos, d) by hook name."""
    L, n = run.n_layers, len(run.tokens)
    z = [torch.zeros(n, lorsa.cfg.n_ov_heads) for lorsa in replacement.lorsas]
    acts = [torch.zeros(n, tc.cfg.d_sae) for tc in replacement.transcoders]
    out: dict = {"z": z, "acts": acts}
    for kind, store in ((Kind.LORSA, z), (Kind.TRANSCODER, acts)):
        for l in range(L):
            sel = run.select(kind, stage_of(kind, l))
            store[l][run.pos[sel], run.index[sel]] = run.activation[sel]
    for stage in run.stage[run.kind == Kind.ERROR].unique().tolist():
        sel = run.select(Kind.ERROR, stage)
        out[_error_name(stage)] = run.write[sel][None]  # (1, pos, d): one per position
    return out


# ----------------------------------------------------------------- interventions
@torch.no_grad()
def intervene(
    replacement: ReplacementModel,
    graph: Graph,
    interventions: list[Intervention],
    *,
    freeze_attention: bool = True,
    freeze_layernorm: bool | str | None = None,
    freeze_errors: bool = True,
    run: PromptRun | None = None,
    predicted: Tensor | None = None,
    attention_reads: Sequence[tuple[int, int, int, int]] = (),
) -> InterventionResult:
    """Apply ``interventions`` to the prompt of ``graph`` and rerun: other heads and features
    recompute, attention patterns (and, by default with them, LayerNorm scales) are frozen or free
    (``freeze_layernorm=FINAL_LAYERNORM``: only the final LayerNorm's scale held), and in local
    mode errors stay clean or (``freeze_errors`` False) recompute from the new inputs
    (module docstring; an edited error node then scales its recomputed value). Returns predicted
    (graph) and actual changes of its logits. ``graph`` is the prompt's full graph: a pruned one is
    refused (its prediction would cover only the kept edges; ``predict`` takes one). ``run``
    (optional): the prompt's clean ``run_prompt``; ``predicted`` (optional): the graph's prediction
    for these interventions (``predict``), when the caller has it. ``attention_reads``
    (optional): (layer, qk_head, query, key) reads whose attention after the intervention the
    result gives (``InterventionResult.attention``): what an edit does to a head's pattern,
    the QK half of its effect. ``intervene_many`` reruns several sets of edits at once.
    An edited target is held at its edit, as ``predict`` holds it (a group holding a target
    takes its value away once): its actual change is the edit's. For a logit node nothing in
    the model reads it; for a head or feature target (``NodeTarget``) the edit sets the value
    it passes on, which is what the target stands for in the graph's flows, while its
    pre-activation, read for unedited targets, is not moved by its own edit (it was, and gave
    0 for an ablation of the target alone). The model's logits (``logits``) and the other
    targets are the rerun's of the edits."""
    return intervene_many(
        replacement, graph, [interventions], freeze_attention=freeze_attention,
        freeze_layernorm=freeze_layernorm, freeze_errors=freeze_errors, run=run,
        predicted=None if predicted is None else [predicted], attention_reads=attention_reads,
    )[0]  # fmt: skip


INTERVENTION_BATCH = 8  # edit sets per forward pass of ``intervene_many`` (bounds the patterns)


@torch.no_grad()
def intervene_many(
    replacement: ReplacementModel,
    graph: Graph,
    edit_sets: Sequence[list[Intervention]],
    *,
    freeze_attention: bool = True,
    freeze_layernorm: bool | str | None = None,
    freeze_errors: bool = True,
    run: PromptRun | None = None,
    predicted: Sequence[Tensor | None] | None = None,
    attention_reads: Sequence[tuple[int, int, int, int]] = (),
) -> list[InterventionResult]:
    """``intervene`` for each list of ``edit_sets``, one apart from the others (each result is
    what ``intervene`` gives for that list alone), the model rerun for ``INTERVENTION_BATCH``
    of them at once: one forward pass of a batch costs much less than one per set (the
    summary's checks ablate a dozen groups four ways each). ``predicted``: None, or one
    prediction (or None) per set."""
    _check_inputs(replacement, graph, run)
    if not isinstance(edit_sets, list | tuple):
        raise TypeError(f"edit_sets must be a list of lists of Intervention, got a "
                        f"{type(edit_sets).__name__}")  # fmt: skip
    if predicted is not None and (
        not isinstance(predicted, list | tuple) or len(predicted) != len(edit_sets)
    ):
        raise ValueError("predicted must be None or one prediction (or None) per edit set")
    predictions = list(predicted) if predicted is not None else [None] * len(edit_sets)
    wheres = [_edited_nodes(graph, edits) for edits in edit_sets]  # cheap checks first
    if not edit_sets or any(not edits for edits in edit_sets):
        raise ValueError("no interventions given")
    for p in predictions:
        if p is not None:
            _check_predicted(graph, p)
    freeze_attention, freeze_layernorm = _freezes(freeze_attention, freeze_layernorm)
    freeze_errors = checked_flag(freeze_errors, "freeze_errors")
    run = run_for_graph(replacement, graph, run, constants=False)
    _check_unpruned(graph, run)
    reads = _checked_reads(replacement, run, attention_reads)
    cache = _clean_nodes(replacement, run)
    out = []
    for start in range(0, len(edit_sets), INTERVENTION_BATCH):
        here = slice(start, start + INTERVENTION_BATCH)
        out += _rerun_batch(
            replacement, graph, run, cache, list(zip(edit_sets[here], wheres[here], strict=True)),
            predictions[here], reads, freeze_attention=freeze_attention,
            freeze_layernorm=freeze_layernorm, freeze_errors=freeze_errors,
        )  # fmt: skip
    return out


def _rerun_batch(
    replacement, graph, run, cache, sets, predictions, reads, *, freeze_attention,
    freeze_layernorm, freeze_errors,
) -> list[InterventionResult]:  # fmt: skip
    """One forward pass for ``sets`` ((edits, their node indices), checked), row b the
    prompt under set b's edits alone."""
    batch, n, L = len(sets), len(run.tokens), run.n_layers
    patches: dict[str, list[tuple[int, int, int, float]]] = {}
    # each error site's multipliers by row and position: of its clean value when held, else
    # of what its sublayer now leaves over
    error_scale = {name: torch.ones(batch, n, 1) for name in _error_sites(cache, L)}
    embed_scale = torch.ones(batch, n)
    bias_scale: dict[int, Tensor] = {}
    # (row, edited target): the edit's change, at which the target is held (``intervene``)
    held_targets: dict[tuple[int, int], float] = {}
    is_target = set(target_nodes(graph))
    for b, (edits, where) in enumerate(sets):
        for edit in edits:
            i = where[edit.node]
            kind, stage = Kind(int(graph.kind[i])), int(graph.stage[i])
            pos, index = int(graph.pos[i]), int(graph.index[i])
            new = edit.apply(float(graph.activation[i]))
            if i in is_target:
                held_targets[b, i] = new - float(graph.activation[i])
            if kind in ACTIVATION_SITE:
                name = hook_name(block_of(stage), ACTIVATION_SITE[kind])
                patches.setdefault(name, []).append((b, pos, index, new))
            elif kind == Kind.ERROR:
                error_scale[_error_name(stage)][b, pos] = new
            elif kind == Kind.EMBEDDING:
                embed_scale[b, pos] = new
            elif kind == Kind.BIAS:
                bias_scale.setdefault(stage, torch.ones(batch, n))[b, pos] = new
            # else a logit: nothing in the model reads it; held at its edit (above)

    def patch(entries):
        rows, pos, index, value = (torch.tensor(x) for x in zip(*entries, strict=True))

        def hook(act, hook):
            act = act.clone()
            act[rows, pos, index] = value.to(act.dtype)
            return act

        return hook

    held = {name: cache[name] * m for name, m in error_scale.items()} if freeze_errors else {}
    hooks = _hooks(
        replacement, run, freeze_attention=freeze_attention, freeze_layernorm=freeze_layernorm,
        z=[None] * L, acts=[None] * L, errors=held, embed_scale=embed_scale,
        bias_scale=bias_scale,
    )  # fmt: skip
    if not freeze_errors:
        hooks += [(name, _scaler(m)) for name, m in error_scale.items() if (m != 1).any()]
    hooks += [(name, patch(entries)) for name, entries in patches.items()]
    # Head and feature targets: their pre-activations, read where the model computes them.
    nodes = [i for i in target_nodes(graph) if graph.kind[i] != Kind.LOGIT]
    seen: dict[str, Tensor] = {}

    def keep(act, hook):
        seen[hook.name] = act.detach()

    hooks += [(name, keep) for name in dict.fromkeys(_pre_activation_site(graph, i) for i in nodes)]
    hooks += [(hook_name(layer, f"lorsa.{site}"), keep)
              for layer in dict.fromkeys(layer for layer, *_ in reads)
              for site in ("hook_pattern", "hook_in")]  # fmt: skip
    tokens = run.tokens[None].expand(batch, n)
    logits = replacement.run_with_hooks(tokens, mode=run.mode, fwd_hooks=hooks)[:, -1]
    rows, read = _logit_readout(graph)
    actual = read(logits) - read(run.logits[-1])  # batch target
    if nodes:
        moved = torch.stack([seen[_pre_activation_site(graph, i)][:, graph.pos[i], graph.index[i]]
                             - graph.value[i] for i in nodes], dim=1)  # fmt: skip
        rows = torch.cat([rows, torch.tensor(nodes, dtype=torch.long)])
        actual = torch.cat([actual, moved.to(actual.dtype)], dim=1)
    column = {int(node): j for j, node in enumerate(rows.tolist())}
    for (b, i), change in held_targets.items():
        actual[b, column[i]] = change
    if not torch.isfinite(actual).all():  # an edit far outside the model's range
        raise ValueError("the model overflows under these edits (a target's value is not "
                         "finite): edit by values nearer the nodes' own")  # fmt: skip
    out = []
    for b, ((edits, _), predicted) in enumerate(zip(sets, predictions, strict=True)):
        predicted = (predict(graph, edits) if predicted is None else predicted)[rows]
        attention = torch.tensor([float(seen[hook_name(layer, "lorsa.hook_pattern")][b, head,
                                                                                     query, key])
                                  for layer, head, query, key in reads])  # fmt: skip
        if freeze_attention:
            by_side = attention[:, None].expand(-1, 2).clone()
        else:
            by_side = torch.tensor([
                side_attention(replacement.lorsas[layer], run.lorsa_in[layer],
                               seen[hook_name(layer, "lorsa.hook_in")][b], head, query, key)
                for layer, head, query, key in reads
            ]).reshape(-1, 2)  # fmt: skip
        out.append(InterventionResult([graph.ids[i] for i in rows.tolist()], predicted,
                                      actual[b].clone(), logits[b].clone(), attention,
                                      by_side))  # fmt: skip
    return out


@torch.no_grad()  # a float of each: called alone, torch warned of the weights' gradients
def side_attention(
    lorsa,
    clean: Float[Tensor, "pos d_model"],
    after: Float[Tensor, "pos d_model"],
    qk_head: int,
    query: int,
    key: int,
) -> tuple[float, float]:
    """QK head ``qk_head``'s attention from ``query`` to ``key`` with the query's vector read
    from ``after`` and every key's from ``clean`` (the Lorsa input, ``lorsa.hook_in``), then
    the other way round: through which side a change of the input moves the attention (a
    reviewer: a group at the key named as the writer of the query side, its ablation taking
    the attention 0.57 -> 0.005, when the query alone took it to 0.54 and the keys alone to
    0.008). The two need not add up to the change with both: the softmax is not linear.
    ``qk_head``, ``query`` and ``key`` (at or before the query) are refused in one line outside
    the layer and the prompt (a key of -1 read the query's own attention, without a word)."""
    if clean.shape != after.shape or clean.ndim != 2:
        raise ValueError(f"clean and after must be one prompt's Lorsa inputs (pos, d_model) "
                         f"alike, got {tuple(clean.shape)} and {tuple(after.shape)}")  # fmt: skip
    qk_head = checked_index(qk_head, "qk_head", lorsa.cfg.n_qk_heads)
    query = checked_index(query, "query", len(clean))
    key = checked_index(key, "key (at or before the query)", query + 1)
    keys = slice(0, query + 1)
    W_Q, b_Q = lorsa.W_Q[qk_head], lorsa.b_Q[qk_head]
    W_K, b_K = lorsa.W_K[qk_head], lorsa.b_K[qk_head]
    allowed = torch.ones(1, query + 1, dtype=torch.bool)
    out = []
    for q_from, k_from in ((after, clean), (clean, after)):
        q = q_from[query : query + 1] @ W_Q + b_Q
        k = k_from[keys] @ W_K + b_K
        out.append(float(attention_pattern(q, k, allowed)[0, key]))
    return out[0], out[1]


def _checked_reads(replacement: ReplacementModel, run: PromptRun, reads) -> list[tuple]:
    """``intervene``'s attention reads, each (layer, qk_head, query, key) of ints inside the
    model and the prompt (a key at or before its query), as a list; one line otherwise."""
    out = []
    n = len(run.tokens)
    for read in reads:
        if not (isinstance(read, (tuple, list)) and len(read) == 4
                and all(isinstance(x, numbers.Integral) and not isinstance(x, bool)
                        for x in read)):  # fmt: skip
            raise ValueError(f"attention_reads: {_short(read)} is not (layer, qk_head, query, "
                             "key), four ints")  # fmt: skip
        layer, head, query, key = (int(x) for x in read)
        if not (0 <= layer < run.n_layers
                and 0 <= head < replacement.lorsas[layer].cfg.n_qk_heads
                and 0 <= key <= query < n):  # fmt: skip
            raise ValueError(f"attention_reads: {_short(read)} is outside the model or the "
                             "prompt (a layer, QK head, or key after its query)")  # fmt: skip
        out.append((layer, head, query, key))
    return out


def mean_token_embedding(replacement: ReplacementModel) -> Float[Tensor, " d_model"]:
    """The mean of the token embeddings the model trained (``W_E`` rows, less its
    ``untrained_tokens``): a token "of no kind", what ``tokens_to_mean`` puts in a token's
    place."""
    w_e = replacement.model.W_E.detach()
    untrained = sorted(getattr(replacement.model, "untrained_tokens", None) or ())
    keep = torch.ones(len(w_e), dtype=torch.bool)
    keep[torch.tensor(untrained, dtype=torch.long)] = False
    return w_e[keep].mean(0)


ROSE = 1e-6  # an attention gain above float noise: a key that took some of it


@dataclass
class MeanTokenReruns:
    """``tokens_to_mean``'s measurements: per replaced position (rows) and read (columns), the
    QK head's ``attention`` from the read's query to its key, its ``specific`` part there (as
    ``circuits.graph.QKReason`` splits the score: the query less the mean query against the key
    less the mean key, the part a reason's terms split), and the other key whose attention rose
    most (``rival``, -1 when none rose) with its attention after (``rival_attention``) and
    before (``rival_before``, from the clean run)."""

    attention: Float[Tensor, "position read"]
    specific: Float[Tensor, "position read"]
    rival: Tensor
    rival_attention: Float[Tensor, "position read"]
    rival_before: Float[Tensor, "position read"]


@torch.no_grad()
def tokens_to_mean(
    replacement: ReplacementModel,
    run: PromptRun,
    positions: list[int],
    reads: list[tuple[int, int, int, int]],
    chunk: int = 8,
) -> MeanTokenReruns:
    """QK heads after one token's embedding is replaced by the mean token embedding
    (``mean_token_embedding``), the model rerun with nothing else held (attention, LayerNorm
    and, in local mode, the errors recompute: the original model on that input): one row per
    position of ``positions`` (one token replaced at a time), one column per read ``(layer,
    qk_head, query, key)``: the QK head's attention from ``query`` to ``key`` (the Lorsa
    pattern, as ``circuits.graph.QKAttribution.attention``), its ``specific`` part at that key
    and the key that gained most (``MeanTokenReruns``). What a QK reason's token terms claim,
    tested: a term that names a token but holds only what any token would bring leaves the
    attention where it was, and one whose token the attention leaves for another key's sake
    leaves the key's own specific part where it was or raises it (a reviewer's ``21+14=35;
    40+26=``: ``'='@6`` made the mean token, the attention to ``'2'@14`` fell 0.87 -> 0.51 as
    its terms said while its score rose; ``'1'@4`` took it). ``chunk``: prompts per batch
    (bounds the patterns held)."""
    from .qk import reference_queries

    n = len(run.tokens)
    if any(not 0 <= p < n for p in positions) or any(
        not (0 <= layer < run.n_layers and 0 <= key <= query < n) for layer, _, query, key in reads
    ):
        raise ValueError("tokens_to_mean: a position, layer or (query, key) outside the prompt")
    mean = mean_token_embedding(replacement)
    layers = sorted({layer for layer, *_ in reads})
    refs = reference_queries(n)
    shape = (len(positions), len(reads))
    out = MeanTokenReruns(torch.zeros(shape), torch.zeros(shape),
                          torch.full(shape, -1, dtype=torch.long), torch.zeros(shape),
                          torch.zeros(shape))  # fmt: skip

    def keep(layer: int, name: str, seen: dict):
        return lambda act, hook: seen.__setitem__((layer, name), act.detach())

    def rerun(tokens: Tensor, hooks: list) -> dict:
        seen: dict = {}
        hooks = hooks + [(hook_name(layer, f"lorsa.{name}"), keep(layer, name, seen))
                         for layer in layers for name in ("hook_pattern", "hook_in")]  # fmt: skip
        replacement.run_with_hooks(tokens, mode=run.mode, fwd_hooks=hooks)
        return seen

    clean = rerun(run.tokens[None], [])
    for start in range(0, len(positions), chunk):
        batch = positions[start : start + chunk]
        rows = torch.arange(len(batch))

        def embed(act, hook, batch=batch, rows=rows):
            act = act.clone()
            act[rows, torch.tensor(batch)] = mean.to(act.dtype)
            return act

        seen = rerun(run.tokens[None].expand(len(batch), n), [("hook_embed", embed)])
        here = slice(start, start + len(batch))
        for j, (layer, head, query, key) in enumerate(reads):
            row = seen[layer, "hook_pattern"][:, head, query, : query + 1]  # (batch, keys)
            out.attention[here, j] = row[:, key]
            lorsa = replacement.lorsas[layer]
            x = seen[layer, "hook_in"]
            q = x[:, refs] @ lorsa.W_Q[head]  # the query biases cancel in du
            k = x[:, : query + 1] @ lorsa.W_K[head]  # and the key biases in dv
            du = x[:, query] @ lorsa.W_Q[head] - q.mean(1)
            dv = k[:, key] - k.mean(1)
            out.specific[here, j] = (du * dv).sum(-1) / math.sqrt(lorsa.cfg.d_qk)
            before = clean[layer, "hook_pattern"][0, head, query, : query + 1]
            gain = row - before
            gain[:, key] = 0.0
            best = gain.argmax(-1)
            rose = gain.gather(1, best[:, None])[:, 0] > ROSE
            out.rival[here, j] = torch.where(rose, best, -1)
            out.rival_attention[here, j] = row.gather(1, best[:, None])[:, 0]
            out.rival_before[here, j] = before[best]
    return out


def first_order(
    replacement: ReplacementModel,
    graph: Graph,
    *,
    freeze_attention: bool = False,
    freeze_layernorm: bool | str | None = None,
    freeze_errors: bool = True,
    run: PromptRun | None = None,
) -> Float[Tensor, "target node"]:
    """Every head's and feature's first-order effect on each logit target (rows in node order):
    ``a_n dT/da_n`` at the clean point, with attention (and by default with it LayerNorm) frozen or
    free, errors (local mode) held at their clean values or recomputed (``freeze_errors`` False, as
    ``intervene``); other nodes' entries are 0. To first order, ablating a set of nodes changes a
    target by minus the sum of their entries. Frozen, this is the graph's own linear prediction
    (``predict``); free, it adds what the nodes' writes do to later attention patterns and LayerNorm
    scales, the paths the graph holds fixed."""
    _check_inputs(replacement, graph, run)
    freeze_attention, freeze_layernorm = _freezes(freeze_attention, freeze_layernorm)
    freeze_errors = checked_flag(freeze_errors, "freeze_errors")
    run = run_for_graph(replacement, graph, run)
    n, L = len(run.tokens), run.n_layers
    cache = _clean_nodes(replacement, run)
    errors = {name: cache[name] for name in _error_sites(cache, L)}
    scales = {
        hook_name(l, ACTIVATION_SITE[kind]): torch.ones(1, n, width, requires_grad=True)
        for l in range(L)
        for kind, width in ((Kind.LORSA, replacement.lorsas[l].cfg.n_ov_heads),
                            (Kind.TRANSCODER, replacement.transcoders[l].cfg.d_sae))
    }  # fmt: skip
    hooks = _hooks(
        replacement, run, freeze_attention=freeze_attention, freeze_layernorm=freeze_layernorm,
        z=[None] * L, acts=[None] * L, errors=errors if freeze_errors else {},
        embed_scale=None,
    )  # fmt: skip
    hooks += [(name, lambda act, hook, m=m: act * m) for name, m in scales.items()]
    with torch.enable_grad():
        logits = replacement.run_with_hooks(run.tokens[None], mode=run.mode, fwd_hooks=hooks)
        rows, read = _logit_readout(graph)
        values = read(logits[0, -1])
        out = torch.zeros(len(rows), graph.n_nodes)
        units = graph.is_kind(Kind.LORSA, Kind.TRANSCODER).nonzero().squeeze(1)
        names = [
            hook_name(block_of(int(s)), ACTIVATION_SITE[Kind(int(k))])
            for k, s in zip(graph.kind[units].tolist(), graph.stage[units].tolist(), strict=True)
        ]
        order = list(scales)
        which = torch.tensor([order.index(name) for name in names], dtype=torch.long)
        for j in range(len(rows)):
            grads = torch.autograd.grad(values[j], list(scales.values()), retain_graph=True)
            for b, g in enumerate(grads):
                sel = units[which == b]
                out[j, sel] = g[0, graph.pos[sel], graph.index[sel]]
    return out


def _check_inputs(replacement, graph, run) -> None:
    """The types of the arguments every rerun takes, each refused in one line naming it (not
    an AttributeError from deep inside)."""
    if not isinstance(replacement, ReplacementModel):
        raise TypeError(f"replacement must be a replacement.model.ReplacementModel, got a "
                        f"{type(replacement).__name__}")  # fmt: skip
    checked_graph(graph)
    if run is not None and not isinstance(run, PromptRun):
        raise TypeError(f"run must be a circuits.attribution.PromptRun (run_prompt's) or None, "
                        f"got a {type(run).__name__}")  # fmt: skip


def _check_predicted(graph: Graph, predicted) -> None:
    """``intervene``'s ``predicted``: a tensor of one finite change per node (``predict``'s);
    only the targets' are read, and those must be finite (a NaN would stand in the result as a
    prediction)."""
    if not isinstance(predicted, Tensor) or not predicted.is_floating_point():
        what = f"a {predicted.dtype} tensor" if isinstance(predicted, Tensor) else \
            f"a {type(predicted).__name__}"  # fmt: skip
        raise TypeError(f"predicted must be a float tensor, predict(graph, interventions)'s, "
                        f"got {what}")  # fmt: skip
    if tuple(predicted.shape) != (graph.n_nodes,):
        raise ValueError(f"predicted has shape {tuple(predicted.shape)}: expected predict(graph, "
                         f"interventions), one value per node ({graph.n_nodes})")  # fmt: skip
    rows = torch.as_tensor(target_nodes(graph), dtype=torch.long)
    if not bool(torch.isfinite(predicted[rows]).all()):
        raise ValueError("predicted has NaN or infinite values at the graph's targets: expected "
                         "predict(graph, interventions)'s finite changes")  # fmt: skip


def _freezes(freeze_attention, freeze_layernorm) -> tuple[bool, bool | str]:
    """The two freeze flags: attention's a bool (a truthy string such as "no" is refused, never
    read as True); LayerNorm's a bool or ``FINAL_LAYERNORM`` (only the final LayerNorm's scale
    held), following attention unless given."""
    attention = checked_flag(freeze_attention, "freeze_attention")
    if isinstance(freeze_layernorm, str) and freeze_layernorm == FINAL_LAYERNORM:
        return attention, FINAL_LAYERNORM
    try:
        layernorm = checked_flag(freeze_layernorm, "freeze_layernorm", none=True)
    except TypeError:
        raise TypeError(f"freeze_layernorm must be True or False (or None), or "
                        f"{FINAL_LAYERNORM!r} (the final LayerNorm alone), got "
                        f"{freeze_layernorm!r}") from None  # fmt: skip
    return attention, attention if layernorm is None else layernorm


def _check_unpruned(graph: Graph, run: PromptRun) -> None:
    """Refuse a graph other than the prompt's full one: ``intervene`` reads its prediction
    from the graph, and a pruned graph's covers only the kept edges. The graph must hold every
    head, feature, token and error node of ``run`` (``check_full_graph``'s test, with bias
    nodes left out: the run may have been made with or without them) and every row must close
    (no edge dropped, bias nodes' included)."""
    n_src = graph.n_nodes - int(graph.is_kind(Kind.LOGIT).sum())
    mine, its = graph.kind[:n_src] != Kind.BIAS, run.kind != Kind.BIAS
    same = all(torch.equal(getattr(graph, name)[:n_src][mine], getattr(run, name)[its])
               for name in ("kind", "stage", "pos", "index"))  # fmt: skip
    if same:
        try:
            check_full_graph(graph)  # every row closes
        except ValueError:
            same = False
    if not same:
        raise ValueError("intervene needs the full (unpruned) graph of the prompt: pass the "
                         "graph attribute returned (a pruned graph's node ids name the same "
                         "nodes in it)")  # fmt: skip


def _edited_nodes(graph: Graph, interventions: list[Intervention]) -> dict[str, int]:
    """Node id -> index of every edited node, after checking the edits: nodes of this graph,
    each edited once (two edits of one node would leave the last one standing, silently),
    known actions with finite values. ``interventions`` is a list (or tuple) of
    ``Intervention``: one given alone, or anything else, is refused naming it."""
    checked_graph(graph)
    if isinstance(interventions, Intervention):
        raise TypeError("interventions must be a list of Intervention: pass [the intervention]")
    if not isinstance(interventions, list | tuple):
        raise TypeError(f"interventions must be a list of Intervention, got a "
                        f"{type(interventions).__name__}")  # fmt: skip
    for edit in interventions:
        if not isinstance(edit, Intervention):
            raise TypeError(f"interventions must be a list of Intervention, got a "
                            f"{type(edit).__name__} in it")  # fmt: skip
    where, seen = graph.id_to_index, set()
    for edit in interventions:  # its action and value are checked (``Intervention``)
        if edit.node not in where:
            raise ValueError(f"no node {edit.node!r} in this graph")
        if edit.node in seen:
            raise ValueError(f"node {edit.node!r} is edited twice: one edit per node")
        seen.add(edit.node)
        # what the node becomes must be a float32 too: a scale of 16.9 by 3e38 is not (predict
        # gave inf, found by fuzz pass 13)
        new = edit.apply(float(graph.activation[where[edit.node]]))
        if not abs(new) <= FLOAT32_MAX:
            raise ValueError(f"{edit.action} of {edit.node!r} by {edit.value:g} makes it {new:g}, "
                             f"beyond float32's range ({FLOAT32_MAX:.3g}), in which the model "
                             "computes")  # fmt: skip
    return where


def predict(graph: Graph, interventions: list[Intervention]) -> Float[Tensor, " node"]:
    """Every node's change under ``interventions`` according to the graph alone: changes flow
    along edges (per unit of the source's activation), stage by stage, through heads and
    features that stay linear (active) and into the targets. An edited node's change is its
    edit's, a target's too (a logit, or a head or feature traced as a target): the edit holds
    it, whatever flows into it, and ``intervene`` measures it so. Any graph is taken: a pruned
    graph's prediction covers only its kept nodes and edges (the full graph's is the one that
    ``intervene`` compares with the model)."""
    where = _edited_nodes(graph, interventions)
    activation = graph.activation.double().numpy()
    delta = np.zeros(graph.n_nodes)
    fixed = {}
    for edit in interventions:
        i = where[edit.node]
        fixed[i] = edit.apply(float(activation[i])) - activation[i]
    stage = graph.stage.numpy()
    per_unit = np.where(activation != 0, 1 / np.where(activation != 0, activation, 1), 0.0)
    for s in np.unique(stage):
        lo, hi = np.searchsorted(stage, s), np.searchsorted(stage, s, side="right")
        if s > 0:
            delta[lo:hi] = row_block(graph.edges, lo, hi) @ (delta * per_unit)  # no copy
        for i, d in fixed.items():
            if lo <= i < hi:
                delta[i] = d
    return torch.from_numpy(delta).float()
