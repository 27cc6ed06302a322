"""What training a replacement set computes, apart from the loop: the dictionaries being
trained (``LayerDictionaries``), their initialisation from the original model, the loss of one
step (reconstruction MSE + AuxK), and the scale folding at the end (``replacement.train`` has
the configs, the schedule, the loop and the CLI).

Inputs and targets are scaled to mean norm sqrt(d_model) during training and the scales are
folded back into the weights at the end, so the saved layers read and write the model's own
activations. Lorsa starts from the original heads: QK copied (repeated over the Lorsa QK
heads; at a QK rank other than the head dimension, each head's best approximation of that rank:
``copy_qk_heads``), each ``w_v`` a random direction inside its head's value space and ``w_o`` that
direction pushed through the head's OV circuit, ``b_D`` the mean target. Dead units (silent
for ``dead_tokens`` tokens) get the AuxK loss of Gao et al. (2024).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .lorsa import LorsaLayer, sparse_decode, topk_sparse
from .train import DictionaryShapes, ReplacementTrainConfig, k_at
from .transcoder import Transcoder

INIT_SEED_OFFSET = {"lorsa": 0, "transcoder": 100}  # layer l of a kind: seed + offset + l
STAT_NAMES = ("lorsa_fvu", "tc_fvu", "lorsa_dead", "tc_dead")  # one step's statistics
PAD_SCALE = 0.1  # QK dimensions above a copied head's rank start at this x a random init


def target_variance(target: Tensor) -> Tensor:
    """``sum_t ||y_t - mean(y)||^2`` over every token (all leading dimensions) of ``target``:
    the denominator of the FVU."""
    target = target.flatten(0, -2)
    return (target - target.mean(0)).pow(2).sum()


def fvu_of_sums(residual: Tensor | float, variance: Tensor | float) -> float:
    """The FVU (fraction of variance unexplained) from its two sums over the same tokens: the
    error energy ``sum_t ||y^_t - y_t||^2`` over ``target_variance`` (floats or 0-d tensors,
    for those who sum over batches or over groups of tokens). NaN where the targets do not
    vary (one token, a constant output): a fraction of no variance."""
    return float(residual / variance) if variance > 0 else math.nan


def fvu(pred: Tensor, target: Tensor) -> float:
    """Fraction of variance unexplained over all tokens and dimensions (``fvu_of_sums``)."""
    residual = (pred.flatten(0, -2) - target.flatten(0, -2)).pow(2).sum()
    return fvu_of_sums(residual, target_variance(target))


def aux_k_loss(pre: Tensor, dead: Tensor, W_dec: Tensor, residual: Tensor, k: int) -> Tensor:
    """AuxK: the top-k dead units must explain what the live ones left (normalised MSE).

    The TopK runs over the dead units' columns only: the loss and its gradients are those of a
    TopK over every unit with the live ones masked to zero, at a fraction of the cost (the dead
    are 0-26% of a layer's units in the default set)."""
    cols = dead.nonzero().squeeze(1)
    if len(cols) == 0:
        return pre.new_zeros(())
    values, idx = topk_sparse(pre[..., cols], min(k, len(cols)))
    idx = cols[idx]
    residual = residual.detach()
    error = sparse_decode(values, idx, W_dec) - residual
    return error.pow(2).sum() / residual.pow(2).sum().clamp_min(1e-8)


def value_directions(d_head: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` unit directions of a head's value space in +/- pairs, orthonormal in blocks.

    Rank-1 heads along r and -r together pass both signs through the ReLU, and an
    orthonormal block of them reproduces the head's whole OV circuit.
    """
    half = torch.randn(d_head, (n + 1) // 2, generator=generator)
    blocks = [torch.linalg.qr(b).Q for b in half.split(d_head, dim=1)]
    r = torch.cat(blocks, dim=1).T  # (n/2, d_head)
    return torch.stack([r, -r], dim=1).flatten(0, 1)[:n]


@torch.no_grad()
def copy_qk_heads(lorsa: LorsaLayer, attn, s_x: float, seed: int) -> None:
    """QK of every Lorsa QK head from the original head it copies: head ``j`` copies head
    ``j * n_heads // n_qk_heads``, on inputs scaled by ``s_x``.

    At ``d_qk == d_head`` the head's own weights and biases. At any other rank, the best
    rank-``min(d_qk, d_head)`` approximation (SVD) of the head's score as a bilinear form of
    ``[x, 1]`` (the biases ride on the constant), rescaled for ``1 / sqrt(d_qk)``; dimensions
    above the head's rank start at ``PAD_SCALE`` x a random init (from ``seed``), so that they
    can learn (both sides at zero would get no gradient). Above the head dimension the scores
    equal the head's up to those small extra terms; below, they are the closest a lower rank
    can be."""
    n_heads, d_model, d_head = attn.W_Q.shape
    cfg = lorsa.cfg
    origin = [j * n_heads // cfg.n_qk_heads for j in range(cfg.n_qk_heads)]
    if cfg.d_qk == d_head:
        lorsa.W_Q.copy_(attn.W_Q[origin] / s_x)
        lorsa.W_K.copy_(attn.W_K[origin] / s_x)
        lorsa.b_Q.copy_(attn.b_Q[origin])
        lorsa.b_K.copy_(attn.b_K[origin])
        return
    g = torch.Generator().manual_seed(seed)
    rank = min(cfg.d_qk, d_head)
    # scores / sqrt(d_qk) must equal the head's / sqrt(d_head)
    factor = (cfg.d_qk / d_head) ** 0.25
    for j, h in enumerate(origin):
        q = torch.cat([attn.W_Q[h] / s_x, attn.b_Q[h][None]])  # (d_model + 1, d_head)
        k = torch.cat([attn.W_K[h] / s_x, attn.b_K[h][None]])
        U, S, Vh = torch.linalg.svd(q.double() @ k.double().T)
        root = S[:rank].sqrt()
        q_new = torch.randn(d_model + 1, cfg.d_qk, generator=g) * PAD_SCALE / math.sqrt(d_model)
        k_new = torch.randn(d_model + 1, cfg.d_qk, generator=g) * PAD_SCALE / math.sqrt(d_model)
        q_new[-1], k_new[-1] = 0.0, 0.0  # no bias on the extra dimensions
        q_new[:, :rank] = (U[:, :rank] * root * factor).float()
        k_new[:, :rank] = (Vh[:rank].T * root * factor).float()
        lorsa.W_Q[j], lorsa.b_Q[j] = q_new[:-1], q_new[-1]
        lorsa.W_K[j], lorsa.b_K[j] = k_new[:-1], k_new[-1]


def init_lorsa_from_heads(
    lorsa: LorsaLayer, attn, s_x: float, s_y: float, y_mean: Tensor, seed: int
) -> None:
    """Initialise from the original attention layer, in the normalised (scaled) spaces.

    QK head j copies original head ``j * n_heads // n_qk_heads`` at any ``d_qk``
    (``copy_qk_heads``: exactly at the head dimension, else its best approximation of that
    rank); the OV heads of its group read ``x W_V^h r`` and write ``r^T W_O^h / c`` for
    directions r of that head's value space, where c counts how many times the groups of
    head h cover its value space: with TopK keeping every head and ``d_qk`` the head
    dimension, the initial Lorsa computes the original layer exactly.
    """
    g = torch.Generator().manual_seed(seed)
    n_heads, _, d_head = attn.W_Q.shape
    cfg = lorsa.cfg
    origin = [j * n_heads // cfg.n_qk_heads for j in range(cfg.n_qk_heads)]
    copy_qk_heads(lorsa, attn, s_x, seed)
    with torch.no_grad():
        # groups copying each head (fewer QK heads than original heads: one, or none)
        groups_of = [origin.count(h) for h in range(n_heads)]
        per_group = max(1.0, cfg.group_size / (2 * d_head))
        for j, h in enumerate(origin):
            covers = groups_of[h] * per_group
            r = value_directions(d_head, cfg.group_size, g)  # (group, d_head)
            group = slice(j * cfg.group_size, (j + 1) * cfg.group_size)
            lorsa.W_V[group] = (attn.W_V[h] @ r.T).T / s_x
            lorsa.b_V[group] = r @ attn.b_V[h]
            lorsa.W_O[group] = s_y * (r @ attn.W_O[h]) / covers
        lorsa.b_D.copy_(y_mean)


def init_transcoder(tc: Transcoder, y_mean: Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W = torch.randn(tc.cfg.d_model, tc.cfg.d_sae, generator=g)
        W /= W.norm(dim=0, keepdim=True)
        tc.W_enc.copy_(W)
        # Small decoder rows: K features firing at once start near the mean prediction.
        tc.W_dec.copy_(0.1 * W.T)
        tc.b_dec.copy_(y_mean)


def fold_scales_lorsa(lorsa: LorsaLayer, s_x: float, s_y: float) -> None:
    """Make a layer trained on (s_x x -> s_y y) map x -> y exactly (TopK ranking unchanged)."""
    with torch.no_grad():
        for W in (lorsa.W_Q, lorsa.W_K, lorsa.W_V):
            W.mul_(s_x)
        lorsa.W_O.div_(s_y)
        lorsa.b_D.div_(s_y)


def fold_scales_transcoder(tc: Transcoder, s_x: float, s_y: float) -> None:
    with torch.no_grad():
        tc.W_enc.mul_(s_x)
        tc.W_dec.div_(s_y)
        tc.b_dec.div_(s_y)
        if tc.W_skip is not None:
            tc.W_skip.mul_(s_x / s_y)


class LayerDictionaries(torch.nn.Module):
    """The dictionaries being trained: one Lorsa and one transcoder per chosen layer."""

    def __init__(self, layers: list[int], d_model: int, shapes: DictionaryShapes):
        super().__init__()
        self.layers = layers
        self.lorsas = torch.nn.ModuleList(LorsaLayer(shapes.lorsa(d_model)) for _ in layers)
        self.transcoders = torch.nn.ModuleList(
            Transcoder(shapes.transcoder(d_model)) for _ in layers
        )
        # Normalisation scales (input, target) per layer and per kind; and tokens since each
        # unit last fired, for dead-unit tracking.
        self.register_buffer("scales", torch.ones(len(layers), 2, 2))
        self.register_buffer("lorsa_idle", torch.zeros(len(layers), shapes.n_ov_heads))
        self.register_buffer("tc_idle", torch.zeros(len(layers), shapes.d_sae))

    def check_buffers(self, where: str) -> None:
        """Refuse restored buffers no run could have written (finite ones are checked on
        load): normalisation scales that are not positive, negative idle counts."""
        if not (self.scales > 0).all():
            raise ValueError(f"{where}: scales holds values that are not positive")
        for name in ("lorsa_idle", "tc_idle"):
            if (getattr(self, name) < 0).any():
                raise ValueError(f"{where}: {name} holds negative token counts")

    def initialise(self, model, store, norm_batches: int, seed: int) -> None:
        """A fresh run's start: scales from ``norm_batches`` batches of ``store``, Lorsa from
        the original heads, transcoders random with ``b_dec`` the mean target."""
        self.scales.copy_(estimate_scales(store, norm_batches))
        first = next(store)
        for i, l in enumerate(self.layers):
            s = self.scales[i]
            y_lorsa = (first.lorsa_y[i] * s[0, 1]).flatten(0, 1).mean(0)
            init_lorsa_from_heads(
                self.lorsas[i],
                model.blocks[l].attn,
                s[0, 0],
                s[0, 1],
                y_lorsa,
                seed + INIT_SEED_OFFSET["lorsa"] + l,
            )
            init_transcoder(
                self.transcoders[i],
                (first.tc_y[i] * s[1, 1]).mean(0),
                seed + INIT_SEED_OFFSET["transcoder"] + l,
            )

    def fold_scales(self) -> None:
        """Fold the training scales into the weights: each layer then maps the model's own
        activations (the scales themselves are left as they were, for the record)."""
        for i in range(len(self.layers)):
            s = self.scales[i]
            fold_scales_lorsa(self.lorsas[i], float(s[0, 0]), float(s[0, 1]))
            fold_scales_transcoder(self.transcoders[i], float(s[1, 0]), float(s[1, 1]))


def dictionary_loss(
    module, x: Tensor, y: Tensor, idle: Tensor, step: int, cfg: ReplacementTrainConfig
) -> tuple[Tensor, float, float]:
    """One dictionary (Lorsa, transcoder, or an SAE, which is a transcoder with y = x) on one
    batch of scaled activations: ``(MSE + AuxK loss, FVU, dead fraction)``.

    ``idle`` counts, per unit, the tokens since it last fired; it is updated in place.
    """
    pre = module.pre_activations(x)
    values, idx = topk_sparse(pre, k_at(step, module.cfg.top_k, cfg), module.decoder.norm(dim=-1))
    recon = module.decode_sparse(values, idx, x)
    mse = (recon - y).pow(2).sum(-1).mean() / y.shape[-1]
    fired = torch.zeros_like(idle, dtype=torch.bool)
    fired[idx[values > 0]] = True
    idle.add_(values[..., 0].numel()).masked_fill_(fired, 0)
    dead = idle > cfg.dead_tokens
    aux = aux_k_loss(pre, dead, module.decoder, y - recon, cfg.aux_k)
    return mse + cfg.aux_coef * aux, fvu(recon.detach(), y), dead.float().mean().item()


def layer_losses(
    dicts: LayerDictionaries, batch, step: int, cfg: ReplacementTrainConfig
) -> tuple[Tensor, dict[str, list[float]]]:
    """Summed training loss of every layer's Lorsa and transcoder on one batch, and stats."""
    total = torch.zeros(())
    stats: dict[str, list[float]] = {name: [] for name in STAT_NAMES}
    for i in range(len(dicts.layers)):
        for kind, module, x, y, idle in (
            ("lorsa", dicts.lorsas[i], batch.lorsa_x[i], batch.lorsa_y[i], dicts.lorsa_idle[i]),
            ("tc", dicts.transcoders[i], batch.tc_x[i], batch.tc_y[i], dicts.tc_idle[i]),
        ):
            s = dicts.scales[i, 0 if kind == "lorsa" else 1]
            loss, fvu_value, dead = dictionary_loss(module, x * s[0], y * s[1], idle, step, cfg)
            total = total + loss
            stats[f"{kind}_fvu"].append(fvu_value)
            stats[f"{kind}_dead"].append(dead)
    return total, stats


def estimate_scales(store, n_batches: int) -> Tensor:
    """Per layer and kind, sqrt(d_model) / mean norm of inputs and of targets."""
    norms = torch.zeros(store.n_layers, 2, 2)
    for _ in range(n_batches):
        lx, ly, tx, ty = store.sequences()
        for k, (x, y) in enumerate(((lx, ly), (tx, ty))):
            norms[:, k, 0] += x.norm(dim=-1).mean(dim=(1, 2)) / n_batches
            norms[:, k, 1] += y.norm(dim=-1).mean(dim=(1, 2)) / n_batches
    d_model = lx.shape[-1]
    return math.sqrt(d_model) / norms
