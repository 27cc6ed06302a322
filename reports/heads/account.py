"""Where each task is computed, measured two ways on every corpus batch (errors frozen):

- causally: the task's loss increase when all Lorsa heads of one layer are zeroed, and when
  all transcoder features of one layer are;
- directly: the mean direct effect on the target's demeaned logit (frozen final LayerNorm
  scale) of the token and position embedding, each layer's Lorsa heads, each layer's
  transcoder features, the error terms, the constant biases (``b_D``, ``b_dec``, the
  demeaned ``b_U``), and the rest (a transcoder's linear skip; zero without one): they sum to
  the demeaned logit.

Where a family fails its test, this says what carries its task instead."""

from __future__ import annotations

import torch

from replacement.model import hook_name

from .ablation import TaskBatch, task_losses


def layer_ablations(replacement, corpus: list[TaskBatch]) -> dict[str, dict[str, list[float]]]:
    """``{task: {"heads": [increase per layer], "features": [...]}}``: zeroing every Lorsa head
    (every transcoder feature) of one layer."""
    base = task_losses(replacement, corpus, {})
    out = {task: {"heads": [], "features": []} for task in base}
    for l, (lorsa, tc) in enumerate(zip(replacement.lorsas, replacement.transcoders, strict=True)):
        for kind, heads, features in (
            ("heads", {l: list(range(lorsa.cfg.n_ov_heads))}, None),
            ("features", {}, {l: list(range(tc.cfg.d_sae))}),
        ):
            losses = task_losses(replacement, corpus, heads, features=features)
            for task, loss in losses.items():
                out[task][kind].append(loss - base[task])
    return out


@torch.no_grad()
def direct_effects(replacement, corpus: list[TaskBatch]) -> dict[str, dict]:
    """``{task: {"targets", "total", "embedding", "heads": [per layer], "features": [per
    layer], "errors", "biases", "rest"}}``: mean direct effects on the target tokens'
    demeaned logits (``total``)."""
    rw = replacement.read_write()
    pairs = list(zip(replacement.lorsas, replacement.transcoders, strict=True))
    units = ("lorsa.hook_z", "transcoder.hook_acts", "lorsa.hook_error", "transcoder.hook_error")
    names = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale"}
    names |= {hook_name(l, unit) for l in range(len(pairs)) for unit in units}
    bias = sum(lorsa.b_D + tc.b_dec for lorsa, tc in pairs)
    sums: dict[str, dict] = {}
    for batch in corpus:
        logits, cache = replacement.run_with_cache(
            batch.tokens, mode="local", names_filter=lambda n: n in names
        )
        for task, targets in batch.targets.items():
            b, p = targets[:, 1:].nonzero(as_tuple=True)  # predicted at p, target at p + 1
            token = batch.tokens[b, p + 1]
            u = rw.unembed[token] / cache["ln_final.hook_scale"][b, p]  # n d_model

            def effect(vectors: torch.Tensor, u: torch.Tensor = u) -> float:
                return float((vectors * u).sum(-1).sum())

            row = sums.setdefault(task, {"targets": 0, "total": 0.0, "embedding": 0.0,
                                         "heads": [0.0] * len(pairs),
                                         "features": [0.0] * len(pairs), "errors": 0.0,
                                         "biases": 0.0})  # fmt: skip
            row["targets"] += len(token)
            demeaned = logits[b, p] - logits[b, p].mean(-1, keepdim=True)
            row["total"] += float(demeaned.gather(1, token[:, None]).sum())
            row["embedding"] += effect(cache["hook_embed"][b, p] + cache["hook_pos_embed"][b, p])
            for l, (lorsa, tc) in enumerate(pairs):
                row["heads"][l] += effect(cache[hook_name(l, "lorsa.hook_z")][b, p] @ lorsa.W_O)
                acts = cache[hook_name(l, "transcoder.hook_acts")][b, p]
                row["features"][l] += effect(acts @ tc.W_dec)
                errors = [cache[hook_name(l, f"{unit}.hook_error")][b, p]
                          for unit in ("lorsa", "transcoder")]  # fmt: skip
                row["errors"] += effect(sum(errors))
            row["biases"] += effect(bias.expand_as(u)) + float(rw.unembed_bias[token].sum())
    out = {}
    for task, row in sums.items():
        n = max(row["targets"], 1)
        mean = {k: [v / n for v in x] if isinstance(x, list) else x / n for k, x in row.items()}
        mean["targets"] = row["targets"]
        parts = ("embedding", "errors", "biases")
        mean["rest"] = (
            mean["total"] - sum(mean[k] for k in parts) - sum(mean["heads"]) - sum(mean["features"])
        )
        out[task] = mean
    return out


def task_account(replacement, corpus: list[TaskBatch]) -> dict[str, dict]:
    """Both measures per task: ``{task: {"ablation": ..., "direct": ...}}``."""
    ablations, direct = layer_ablations(replacement, corpus), direct_effects(replacement, corpus)
    return {task: {"ablation": ablations[task], "direct": direct.get(task)} for task in ablations}
