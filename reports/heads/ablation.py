"""Causal tests, the ground truth for the labels, in local mode with every error held at its
clean value: zero heads (``hook_z``), or take away their attention to BOS and let them attend
elsewhere (``hook_pre``), and measure the loss on tasks' target tokens; compare a family with
random heads from the same layers; find every head's single-head effect by adaptive group
testing.

Local mode with frozen errors is run as sparse mode with each clean error added to its
reconstruction (``hook_out``): the same sum, without computing the original sublayers, whose
only use in local mode is the error that the frozen one replaces (a quarter of a run).

A ``TaskBatch`` holds one corpus family's documents with the target masks of one or more
tasks, so that one run serves every task its documents hold."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from replacement import SUBLAYERS
from replacement.model import hook_name
from toy_models.data import pad_rows
from toy_models.model import attention_pattern, causal_mask

from .config import RATIO_TARGET, TASK_CORPUS, TESTS, TRUTH_DELTA
from .probes import ProbeDoc

READ_SITES = ("hook_resid_pre", "lorsa.hook_z")  # a batch's clean residual and head activations

Heads = dict[int, list[int]]  # layer -> head indices


@dataclass
class TaskBatch:
    """Documents (padded), their tasks' target masks, and what an ablation starts from: the
    clean local-mode errors (held fixed) and the clean residual stream before each layer."""

    tokens: Int[Tensor, "batch pos"]
    targets: dict[str, Bool[Tensor, "batch pos"]]  # task -> p is a target (predicted at p - 1)
    errors: dict[str, Float[Tensor, "batch pos d_model"]]  # hook_out name -> error to add
    resid_pre: list[Float[Tensor, "batch pos d_model"]]  # per layer
    active: dict[str, list[Bool[Tensor, " ov"]]]  # task -> per layer: heads active at or before
    # one of its targets
    # What a run computed from a layer's input, kept for the next run on the same rows: each
    # run starts from the clean residual stream of the first layer it touches, so what that
    # layer computes from it is the same every time (``_kept``): what -> (layer, input, result).
    memo: dict[str, tuple[int, Tensor, Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def tasks(self) -> list[str]:
        return list(self.targets)

    def select(self, tasks: Iterable[str]) -> TaskBatch | None:
        """The rows holding a target of ``tasks``, cut after the last target (a causal model's
        earlier positions do not see the rest), with those tasks only; None without one."""
        tasks = [t for t in tasks if t in self.targets]
        if not tasks:
            return None
        hits = torch.stack([self.targets[t] for t in tasks]).any(0)
        rows = hits.any(1).nonzero().flatten()
        if not len(rows):
            return None
        n = int(hits.any(0).nonzero().max()) + 1
        return TaskBatch(
            self.tokens[rows, :n],
            {t: self.targets[t][rows, :n] for t in tasks},
            {name: e[rows, :n] for name, e in self.errors.items()},
            [r[rows, :n] for r in self.resid_pre],
            {t: self.active[t] for t in tasks},
        )


def task_batch(
    replacement,
    docs: list[ProbeDoc],
    tasks: str | Iterable[str],
    limits: dict[str, int] | None = None,
) -> TaskBatch | None:
    """One corpus family's documents with the targets of ``tasks`` (of the first
    ``limits[task]`` documents where given), or None when they hold no target of them."""
    n_layers = replacement.cfg.n_layers
    tokens = pad_rows([p.ids for p in docs])
    targets = {}
    for task in [tasks] if isinstance(tasks, str) else tasks:
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        for j, probe in enumerate(docs[: (limits or {}).get(task, len(docs))]):
            mask[j, probe.targets.get(task, [])] = True
        if mask.any():
            targets[task] = mask
    if not targets:
        return None
    # Each sublayer's clean error, held by adding it where the sublayer writes (``hook_out``).
    error_sites = {
        hook_name(l, f"{kind}.hook_error"): hook_name(l, f"{kind}.hook_out")
        for l in range(n_layers)
        for kind in SUBLAYERS
    }
    read = {*error_sites, *(hook_name(l, s) for l in range(n_layers) for s in READ_SITES)}
    with torch.no_grad():
        _, cache = replacement.run_with_cache(tokens, mode="local", names_filter=read.__contains__)
    # A head silent at every position up to a task's last target cannot move its loss when
    # zeroed: that ablation is exactly a no-op, and group testing skips it.
    active = {}
    for task, mask in targets.items():
        upto = mask.flip(1).cummax(1).values.flip(1)
        active[task] = [
            ((cache[hook_name(l, "lorsa.hook_z")] > 0) & upto[..., None]).any(1).any(0)
            for l in range(n_layers)
        ]
    return TaskBatch(
        tokens,
        targets,
        {out: cache[error] for error, out in error_sites.items()},
        [cache[hook_name(l, "hook_resid_pre")] for l in range(n_layers)],
        active,
    )


def corpus_batches(replacement, probes: dict[str, list[ProbeDoc]]) -> list[TaskBatch]:
    """One batch per corpus family with every task its documents hold. A task spread over k
    corpus families takes the first 1/k of each one's documents (at least two), so that
    every task is measured on about as many documents (and costs about as much per run)."""
    out = []
    for corpus, docs in probes.items():
        tasks = [t for t, corpora in TASK_CORPUS.items() if corpus in corpora]
        least = min(2, len(docs))
        limits = {t: max(least, len(docs) // len(TASK_CORPUS[t])) for t in tasks}
        batch = task_batch(replacement, docs, tasks, limits)
        if batch is not None:
            out.append(batch)
    return out


def merge(batches: list[TaskBatch]) -> TaskBatch:
    """Batches as one (fewer, larger runs): rows right-padded with their first token (BOS)
    and zero states, which positions before them never see in a causal model; no target
    there. A head active in any of them is active in the merged batch."""
    n = max(b.tokens.shape[1] for b in batches)
    tasks = list(dict.fromkeys(t for b in batches for t in b.targets))
    n_layers = len(batches[0].resid_pre)

    def cat(tensors: list[Tensor], value=0) -> Tensor:
        widths = [(0, 0) * (x.dim() - 2) + (0, n - x.shape[1]) for x in tensors]
        return torch.cat([F.pad(x, w, value=value) for x, w in zip(tensors, widths, strict=True)])

    def targets(b: TaskBatch, task: str) -> Tensor:
        return b.targets.get(task, torch.zeros_like(b.tokens, dtype=torch.bool))

    return TaskBatch(
        cat([b.tokens for b in batches], value=int(batches[0].tokens[0, 0])),
        {t: cat([targets(b, t) for b in batches], value=False) for t in tasks},
        {name: cat([b.errors[name] for b in batches]) for name in batches[0].errors},
        [cat([b.resid_pre[l] for b in batches]) for l in range(n_layers)],
        {
            t: [
                torch.stack([b.active[t][l] for b in batches if t in b.active]).any(0)
                for l in range(n_layers)
            ]
            for t in tasks
        },
    )


def for_tasks(batches: list[TaskBatch], tasks: Iterable[str]) -> list[TaskBatch]:
    """The batches cut down to the rows and targets of ``tasks``, merged into one."""
    tasks = list(tasks)
    selected = [s for b in batches if (s := b.select(tasks)) is not None]
    return [merge(selected)] if len(selected) > 1 else selected


def task_batches(
    replacement, probes: dict[str, list[ProbeDoc]], corpus: list[TaskBatch] | None = None
) -> dict[str, list[TaskBatch]]:
    """Every task's batches (``corpus_batches`` cut to it; ``corpus``: those, when built)."""
    corpus = corpus_batches(replacement, probes) if corpus is None else corpus
    return {task: for_tasks(corpus, [task]) for task in TASK_CORPUS}


# ----------------------------------------------------------------- interventions
def bos_masked_pre(
    lorsa, x: Float[Tensor, "batch pos d_model"], heads: list[int]
) -> Float[Tensor, "batch pos n"]:
    """Pre-activations ``z~`` of ``heads`` when their attention to BOS (key 0) is taken away
    and the rest renormalised: the softmax over keys ``1..q`` alone. Query 0 has no other key
    and keeps its own. Each OV head reads its QK group's pattern; only these heads' ``z~``
    change, not the group's other heads'."""
    return _bos_masked_all(lorsa, x)[..., heads]


def _bos_masked_all(lorsa, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos ov"]:
    """``bos_masked_pre`` of every head of the layer."""
    q, k = lorsa.qk(x)
    b, n, _ = x.shape
    allowed = causal_mask(n, x.device)
    allowed[1:, 0] = False
    pattern = attention_pattern(q, k, allowed)  # batch qk q k
    # The grouped product for every head (as cheap as one layer's attention), then the heads.
    v = lorsa.values(x).view(b, n, lorsa.cfg.n_qk_heads, lorsa.cfg.group_size).transpose(1, 2)
    return (pattern @ v).transpose(1, 2).reshape(b, n, lorsa.cfg.n_ov_heads)


def ablation_hooks(
    batch: TaskBatch,
    heads: Heads,
    test: str = "zero",
    lorsas: list | None = None,
    features: Heads | None = None,
) -> list[tuple[str, Callable]]:
    """Hooks for a sparse-mode run that is local mode with every error held at its clean value
    (added to each reconstruction, ``hook_out``), with a test applied to ``heads``: ``"zero"``
    zeroes them (``hook_z``); ``"mask_bos"`` replaces their pre-activations with
    ``bos_masked_pre`` (``lorsas``: the model's Lorsa layers), TopK then runs as usual.
    ``features``: transcoder features zeroed as well (``hook_acts``)."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}")

    def zero(index: list[int]):
        def hook(act, hook):
            act = act.clone()
            act[..., index] = 0
            return act

        return hook

    def plus(error: Tensor):
        return lambda out, hook: out + error

    hooks = [(name, plus(e)) for name, e in batch.errors.items()]
    for l, h in heads.items():
        if not len(h):
            continue
        if test == "zero":
            hooks.append((hook_name(l, "lorsa.hook_z"), zero(h)))
            continue
        hooks += _mask_bos_hooks(l, lorsas[l], list(h), batch.memo)
    for l, f in (features or {}).items():
        if len(f):
            hooks.append((hook_name(l, "transcoder.hook_acts"), zero(f)))
    return hooks


def _mask_bos_hooks(
    layer: int, lorsa, heads: list[int], memo: dict | None = None
) -> list[tuple[str, Callable]]:
    """The Lorsa input is kept as it passes (``hook_in``) for ``hook_pre`` to recompute the
    heads' pre-activations from. Every head's masked pre-activations are computed (as one
    grouped product) and kept in ``memo`` with the input: the next run whose input at this
    layer is bit for bit the same (a single-head test starts each run from the layer's clean
    residual stream) takes them from there instead of computing them again."""
    seen: dict[str, Tensor] = {}

    def keep(x, hook):
        seen["x"] = x

    def masked(pre, hook):
        every = _kept(memo, "mask_bos", layer, seen["x"], lambda x: _bos_masked_all(lorsa, x))
        pre = pre.clone()
        pre[..., heads] = every[..., heads]
        return pre

    return [(hook_name(layer, "lorsa.hook_in"), keep), (hook_name(layer, "lorsa.hook_pre"), masked)]


def _kept(
    memo: dict | None, what: str, layer: int, x: Tensor, compute: Callable[[Tensor], Tensor]
) -> Tensor:
    """``compute(x)``, taken from ``memo`` where it holds ``what`` of ``layer`` for an input
    bit for bit the same as ``x`` (the same result: each run computes it the same way), and
    kept there otherwise (one layer per ``what``: a batch's runs come layer by layer)."""
    kept = memo.get(what) if memo is not None else None
    if kept is not None and kept[0] == layer and _same_bits(kept[1], x):
        return kept[2]
    out = compute(x)
    if memo is not None:
        memo[what] = (layer, x.clone(), out)  # (a copy: a later hook may edit x in place)
    return out


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors hold the same values bit for bit (-0.0 is not 0.0; a NaN is
    itself): what a computation from either gives the same result for."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.dtype.itemsize not in (2, 4, 8):
        return False
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.dtype.itemsize]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def ablated_logits(
    replacement,
    batch: TaskBatch,
    heads: Heads,
    test: str = "zero",
    features: Heads | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits with a test applied to ``heads`` (and ``features`` zeroed), errors frozen. The
    layers below the first one touched compute what the clean run computed, so the run
    starts from its residual stream there."""
    touched = [l for l, h in heads.items() if len(h)]
    touched += [l for l, f in (features or {}).items() if len(f)]
    start = min(touched, default=0)
    hooks = ablation_hooks(batch, heads, test, replacement.lorsas, features)
    with torch.no_grad(), replacement.hooks(fwd_hooks=hooks):
        return replacement(
            batch.tokens, mode="sparse", start_at_layer=start, resid=batch.resid_pre[start]
        )


def task_losses(
    replacement,
    batches: list[TaskBatch],
    heads: Heads,
    test: str = "zero",
    features: Heads | None = None,
) -> dict[str, float]:
    """Mean cross-entropy (nats) over each task's target tokens, one run per batch."""
    sums: dict[str, list[float]] = {}
    for batch in batches:
        lp = ablated_logits(replacement, batch, heads, test, features)[:, :-1].log_softmax(-1)
        nll = -lp.gather(-1, batch.tokens[:, 1:, None])[..., 0]
        for task, targets in batch.targets.items():
            mask = targets[:, 1:]
            total = sums.setdefault(task, [0.0, 0])
            total[0] += float(nll[mask].sum())
            total[1] += int(mask.sum())
    return {task: s / max(n, 1) for task, (s, n) in sums.items()}


def task_loss(
    replacement,
    batches: list[TaskBatch],
    heads: Heads,
    test: str = "zero",
    task: str | None = None,
) -> float:
    """``task_losses`` of one task (``task``: which, where the batches hold several)."""
    losses = task_losses(replacement, batches, heads, test)
    if task is None:
        if len(losses) > 1:
            raise ValueError(f"the batches hold several tasks ({', '.join(losses)}): name one")
        return next(iter(losses.values()), 0.0)
    return losses.get(task, 0.0)


def active_heads(batches: list[TaskBatch]) -> list[list[int]]:
    """Per layer, the heads active on the batches' tasks (at or before one of its targets)."""
    per_task = [active for b in batches for active in b.active.values()]
    return [
        torch.stack([a[l] for a in per_task]).any(0).nonzero().flatten().tolist()
        for l in range(len(per_task[0]))
    ]


def random_like(heads: Heads, pools: list[list[int]], n_ov: list[int], rng: random.Random) -> Heads:
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
    family_heads: Heads,
    task: str,
    draws: int,
    seed: int,
    test: str = "zero",
    corpus: list[TaskBatch] | None = None,
    every_task: bool = False,
) -> dict:
    """A family's heads under its test vs as many random heads from the same layers (drawn
    uniformly, and among the heads active on the task): the increase of the task's loss,
    and (``corpus``: every corpus family's batch) of every other task's. With ``every_task``
    the uniform control runs on ``corpus`` too and every task gets its own ratio and verdict
    (``every_task``, ``tasks_met`` in the result): what the tests of machinery heads (sinks,
    previous-token heads) need, whose damage may land anywhere."""
    n_ov = [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas]
    n_heads = sum(len(h) for h in family_heads.values())
    out: dict = {"task": task, "test": test, "n_heads": n_heads, "clean_loss": clean.get(task)}
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

    def own(heads: Heads) -> float:
        return task_loss(replacement, batches[task], heads, test) - clean[task]

    if every_task and corpus:
        base = task_losses(replacement, corpus, {})

        def increases(heads: Heads) -> dict[str, float]:
            losses = task_losses(replacement, corpus, heads, test)
            return {t: losses[t] - base[t] for t in losses}

        family = increases(family_heads)
        drawn = [increases(r) for r in controls["random"]]
        out["every_task"] = {}
        for t, increase in family.items():
            random_mean = sum(d[t] for d in drawn) / len(drawn)
            out["every_task"][t] = {
                "increase": increase,
                "random_mean": random_mean,
                "ratio": _ratio(increase, random_mean),
                "meets_target": _meets(increase, random_mean),
            }
        out["tasks_met"] = [t for t, row in out["every_task"].items() if row["meets_target"]]
        out["increase"] = family[task]
        out["random_increases"] = [d[task] for d in drawn]
        out["other_tasks"] = {t: v for t, v in family.items() if t != task}
    else:
        out["increase"] = own(family_heads)
        out["random_increases"] = [own(r) for r in controls["random"]]
        if corpus:
            base = task_losses(replacement, corpus, {})
            losses = task_losses(replacement, corpus, family_heads, test)
            out["other_tasks"] = {t: losses[t] - base[t] for t in losses if t != task}
    # The stricter control, on the family's own task only.
    out["matched_random_increases"] = [own(r) for r in controls["matched_random"]]
    for name in controls:
        out[f"{name}_mean"] = sum(out[f"{name}_increases"]) / len(out[f"{name}_increases"])
    out["ratio"] = _ratio(out["increase"], out["random_mean"])
    out["matched_ratio"] = _ratio(out["increase"], out["matched_random_mean"])
    out["meets_target"] = _meets(out["increase"], out["random_mean"])
    return out


def _meets(increase: float, random_mean: float) -> bool:
    """The target: ``RATIO_TARGET`` times the uniform control, and ``TRUTH_DELTA`` nats."""
    return bool(increase >= TRUTH_DELTA and increase >= RATIO_TARGET * random_mean)


def _ratio(a: float, b: float) -> float | None:
    """``a / b``, or None where ``b <= 0`` (JSON has no infinity; the caller says why)."""
    return a / b if b > 0 else None


def single_head_effects(
    replacement,
    batches: list[TaskBatch],
    delta: float,
    chunk: int = 32,
    progress: bool = False,
    test: str = "zero",
) -> tuple[dict[str, dict[tuple[int, int], float]], int]:
    """Exact single-head effects of a test on every task the batches hold, by adaptive group
    testing.

    Zeroing a head silent on the tasks' documents is a no-op, so those heads are skipped
    (taking away a silent head's BOS attention can wake it: that test tries every head).
    The rest are tested ``chunk`` at a time; a chunk that raises some task's loss by
    ``delta`` or more is halved until single heads remain, whose effects are then exact; a
    chunk below ``delta`` on every task is taken to hold no head above it (such a head would
    have to be cancelled by its neighbours). Returns ``{task: {(layer, head): loss
    increase}}`` for the heads measured alone, and the number of runs.
    """
    from tqdm import tqdm

    if not batches:
        return {}, 0
    clean = task_losses(replacement, batches, {})
    if test == "zero":
        pools = active_heads(batches)
    else:
        pools = [list(range(lorsa.cfg.n_ov_heads)) for lorsa in replacement.lorsas]
    stack = [
        (l, heads[i : i + chunk])
        for l, heads in enumerate(pools)
        for i in range(0, len(heads), chunk)
    ]
    effects: dict[str, dict[tuple[int, int], float]] = {task: {} for task in clean}
    runs = 1
    bar = tqdm(total=len(stack), desc="single heads", disable=not progress, leave=False)
    while stack:
        l, heads = stack.pop()
        losses = task_losses(replacement, batches, {l: heads}, test)
        runs += 1
        bar.update()
        if len(heads) == 1:
            for task, loss in losses.items():
                effects[task][(l, heads[0])] = loss - clean[task]
        elif max(loss - clean[task] for task, loss in losses.items()) >= delta:
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
