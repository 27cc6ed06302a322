"""Ablations, the ground truth for the labels: zero heads (``hook_z``) in local mode with every
error held at its clean value, measure the loss on a task's target tokens, compare a family
with random heads from the same layers, and find every head's single-head effect by adaptive
group testing."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from replacement.model import hook_name
from toy_models.data import pad_rows

from .config import RATIO_TARGET, TASK_CORPUS, TASKS, TRUTH_DELTA
from .probes import ProbeDoc


@dataclass
class TaskBatch:
    """One task's documents (padded), its target mask, and what an ablation starts from: the
    clean local-mode errors (held fixed) and the clean residual stream before each layer."""

    tokens: Int[Tensor, "batch pos"]
    targets: Bool[Tensor, "batch pos"]  # position p is a target: its token, predicted at p - 1
    errors: dict[str, Float[Tensor, "batch pos d_model"]]  # hook name -> clean error
    resid_pre: list[Float[Tensor, "batch pos d_model"]]  # per layer
    active: list[Bool[Tensor, " ov"]]  # per layer: heads active at or before some target


def task_batches(replacement, probes: dict[str, list[ProbeDoc]]) -> dict[str, list[TaskBatch]]:
    """Every task's documents with their clean local-mode state. A task spread over k corpus
    families takes the first 1/k of each one's documents, so that every task is measured on
    about as many documents (and costs about as much per ablation)."""
    out: dict[str, list[TaskBatch]] = {task: [] for task in TASKS}
    for task, corpora in TASK_CORPUS.items():
        for corpus in corpora:
            docs = probes[corpus][: max(1, len(probes[corpus]) // len(corpora))]
            batch = task_batch(replacement, docs, task)
            if batch is not None:
                out[task].append(batch)
    return out


def task_batch(replacement, docs: list[ProbeDoc], task: str) -> TaskBatch | None:
    """One corpus family's documents for a task, or None when they hold no target of it."""
    n_layers = replacement.cfg.n_layers
    tokens = pad_rows([p.ids for p in docs])
    targets = torch.zeros_like(tokens, dtype=torch.bool)
    for j, probe in enumerate(docs):
        targets[j, probe.targets.get(task, [])] = True
    if not targets.any():
        return None
    with torch.no_grad():
        _, cache = replacement.run_with_cache(
            tokens,
            mode="local",
            names_filter=lambda n: n.endswith(("hook_error", "hook_resid_pre", "lorsa.hook_z")),
        )
    # A head silent at every position up to the last target cannot move the task's loss:
    # ablating it is exactly a no-op, and group testing skips it.
    upto = targets.flip(1).cummax(1).values.flip(1)
    return TaskBatch(
        tokens,
        targets,
        {n: v for n, v in cache.items() if n.endswith("hook_error")},
        [cache[hook_name(l, "hook_resid_pre")] for l in range(n_layers)],
        [
            ((cache[hook_name(l, "lorsa.hook_z")] > 0) & upto[..., None]).any(1).any(0)
            for l in range(n_layers)
        ],
    )


def ablation_hooks(batch: TaskBatch, heads: dict[int, list[int]]) -> list[tuple[str, Callable]]:
    """Zero the given heads (``hook_z``) and hold every error at its clean value."""

    def zero(index: list[int]):
        def hook(z, hook):
            z = z.clone()
            z[..., index] = 0
            return z

        return hook

    def frozen(value: Tensor):
        return lambda act, hook: value

    hooks = [(name, frozen(value)) for name, value in batch.errors.items()]
    return hooks + [(hook_name(l, "lorsa.hook_z"), zero(h)) for l, h in heads.items() if len(h)]


def ablated_logits(
    replacement, batch: TaskBatch, heads: dict[int, list[int]]
) -> Float[Tensor, "batch pos vocab"]:
    """Logits with ``heads`` zeroed and errors frozen. The layers below the first ablated one
    compute what the clean run computed, so the run starts from its residual stream there."""
    start = min((l for l, h in heads.items() if len(h)), default=0)
    with torch.no_grad(), replacement.hooks(fwd_hooks=ablation_hooks(batch, heads)):
        return replacement(
            batch.tokens, mode="local", start_at_layer=start, resid=batch.resid_pre[start]
        )


def task_loss(replacement, batches: list[TaskBatch], heads: dict[int, list[int]]) -> float:
    """Mean cross-entropy (nats) over a task's target tokens with ``heads`` zeroed."""
    total, count = 0.0, 0
    for batch in batches:
        lp = ablated_logits(replacement, batch, heads)[:, :-1].log_softmax(-1)
        nll = -lp.gather(-1, batch.tokens[:, 1:, None])[..., 0]
        mask = batch.targets[:, 1:]
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def active_heads(batches: list[TaskBatch]) -> list[list[int]]:
    """Per layer, the heads active on a task's documents (at or before some target)."""
    n_layers = len(batches[0].active)
    return [
        torch.stack([b.active[l] for b in batches]).any(0).nonzero().flatten().tolist()
        for l in range(n_layers)
    ]


def random_like(
    heads: dict[int, list[int]], pools: list[list[int]], n_ov: list[int], rng: random.Random
) -> dict[int, list[int]]:
    """As many heads per layer as ``heads`` has, drawn from ``pools[layer]`` minus those heads
    (topped up from the layer's other heads where the pool is too small)."""
    out = {}
    for l, chosen in heads.items():
        if not chosen:
            continue
        pool = sorted(set(pools[l]) - set(chosen))
        if len(pool) < len(chosen):
            rest = sorted(set(range(n_ov[l])) - set(chosen) - set(pool))
            pool += rng.sample(rest, len(chosen) - len(pool))
        out[l] = rng.sample(pool, len(chosen))
    return out


def family_ablation(
    replacement,
    batches: dict[str, list[TaskBatch]],
    clean: dict[str, float],
    family_heads: dict[int, list[int]],
    task: str,
    draws: int,
    seed: int,
) -> dict:
    """A family's heads zeroed vs as many random heads from the same layers: the increase of
    the task's loss, and of every other task's (does it hurt its own task most?)."""
    n_ov = [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas]
    n_heads = sum(len(h) for h in family_heads.values())
    out: dict = {"task": task, "n_heads": n_heads, "clean_loss": clean.get(task)}
    if not batches.get(task):
        return out | {"skipped": "the probe documents hold no target of this task"}
    if not n_heads:
        return out
    rng = random.Random(f"heads/{seed}/{task}/{n_heads}")
    uniform = [list(range(n)) for n in n_ov]
    matched = active_heads(batches[task])
    controls = {
        "random": [random_like(family_heads, uniform, n_ov, rng) for _ in range(draws)],
        # Stricter and secondary: half as many draws.
        "matched_random": [
            random_like(family_heads, matched, n_ov, rng) for _ in range(max(1, draws // 2))
        ],
    }
    out["increase"] = task_loss(replacement, batches[task], family_heads) - clean[task]
    for name, drawn in controls.items():
        increases = [task_loss(replacement, batches[task], r) - clean[task] for r in drawn]
        out[f"{name}_increases"] = increases
        out[f"{name}_mean"] = sum(increases) / len(increases)
    out["ratio"] = _ratio(out["increase"], out["random_mean"])
    out["matched_ratio"] = _ratio(out["increase"], out["matched_random_mean"])
    out["meets_target"] = bool(
        out["increase"] >= TRUTH_DELTA and out["increase"] >= RATIO_TARGET * out["random_mean"]
    )
    out["other_tasks"] = {
        t: task_loss(replacement, b, family_heads) - clean[t]
        for t, b in batches.items()
        if b and t != task
    }
    return out


def _ratio(a: float, b: float) -> float | None:
    """``a / b``, or None where ``b <= 0`` (JSON has no infinity; the caller says why)."""
    return a / b if b > 0 else None


def single_head_effects(
    replacement,
    batches: list[TaskBatch],
    delta: float,
    chunk: int = 32,
    progress: bool = False,
) -> tuple[dict[tuple[int, int], float], int]:
    """Exact single-head ablation effects on a task's loss, by adaptive group testing.

    Heads silent on the task's documents have no effect and are skipped. The others are
    ablated ``chunk`` at a time; a chunk that raises the loss by ``delta`` or more is halved
    until single heads remain, whose effect is then exact; a chunk below ``delta`` is taken to
    hold no head above it (such a head would have to be cancelled by its neighbours). Returns
    ``{(layer, head): loss increase}`` for the heads measured alone and the number of runs.
    """
    from tqdm import tqdm

    if not batches:
        return {}, 0
    clean = task_loss(replacement, batches, {})
    stack = [
        (l, heads[i : i + chunk])
        for l, heads in enumerate(active_heads(batches))
        for i in range(0, len(heads), chunk)
    ]
    effects: dict[tuple[int, int], float] = {}
    runs = 1
    bar = tqdm(total=len(stack), desc="single heads", disable=not progress, leave=False)
    while stack:
        l, heads = stack.pop()
        effect = task_loss(replacement, batches, {l: heads}) - clean
        runs += 1
        bar.update()
        if len(heads) == 1:
            effects[(l, heads[0])] = effect
        elif effect >= delta:
            stack += [(l, heads[: len(heads) // 2]), (l, heads[len(heads) // 2 :])]
            bar.total += 2
    bar.close()
    return effects, runs


def precision_recall(labelled: set[tuple[int, int]], true: set[tuple[int, int]]) -> dict:
    tp = len(labelled & true)
    return {
        "true_positives": tp,
        "false_positives": len(labelled - true),
        "false_negatives": len(true - labelled),
        "precision": tp / len(labelled) if labelled else None,
        "recall": tp / len(true) if true else None,
    }
