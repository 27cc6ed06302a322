"""Architecture ablations of Lorsa as curves: many short single-layer runs from one cached
activation set, each measured on held-out cached rows.

Axes (``sweep_variants``), every other setting at the base shapes (``replacement.train``'s
``DictionaryShapes``):

- K (TopK over OV heads), with an attention-output TopK SAE of the same width (latents = OV
  heads) and the same K beside every Lorsa point: the fidelity-sparsity curve of both;
- QK sharing: the number of QK heads for the same number of OV heads;
- QK rank ``d_qk``: below, at and above the original head dimension. QK starts from the
  original heads at every rank (``replacement.dictionaries.copy_qk_heads``: the best
  rank-``d_qk`` approximation of each copied head's bilinear score, biases included; above the
  head dimension the extra dimensions start small and random), so a rank is compared with a
  rank, not a copied start with a random one. One control at the original rank starts from
  random QK (``qk_init="random"``).

Every run uses the replacement recipe (``replacement.dictionaries``: scales, initialisation
from the heads, K annealing, AuxK, learning-rate schedule, scale folding) and reads the same
cached rows in the same order (``CachedLayerRows``). Attention-output SAEs follow
``replacement.attn_sae``.

Measures (``LayerEvaluation``), on rows of a held-out activation cache: FVU, L0, dead fraction
(never active on those tokens: ``replacement.evaluate.ReconstructionTally``), and the
next-token loss with that one layer's attention output replaced by the dictionary's
reconstruction (the rest of the model untouched): CE, KL to the original, and the loss
recovered against mean ablation, ``(CE_ablated - CE_spliced) / (CE_ablated - CE_original)``
(``replacement.evaluate.fraction_recovered``: NaN where ablating costs under ``MIN_GAP``
nats).

``run_sweep`` writes one record (JSON) and the trained weights per (layer, variant) under a
work directory as it goes, so an interrupted sweep rerun with the same settings skips what is
done.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated

import torch
from jaxtyping import Float
from torch import Tensor

from toy_models.records import Bounds, NonNegative, PositiveReal, Share, from_json
from toy_models.resumable import FLOAT32_MAX

from .dictionaries import (
    INIT_SEED_OFFSET,
    dictionary_loss,
    estimate_scales,
    fold_scales_lorsa,
    init_lorsa_from_heads,
)
from .lorsa import LorsaConfig, LorsaLayer
from .train import DictionaryShapes, ReplacementTrainConfig, lr_at

KINDS = ("lorsa", "sae")
QK_INITS = ("copy", "random")
AXES = ("k", "qk_heads", "d_qk")
# every axis ``sweep_variants`` writes, with the kind of dictionary it holds (what a results
# file must hold: ``reports.ablations.check_results``); each holds variants but the control,
# empty without ``SweepAxes.random_qk_control``
SWEPT = {**dict.fromkeys(AXES, "lorsa"), "sae": "sae", "control": "lorsa"}
OPTIONAL_AXES = ("control",)


# ----------------------------------------------------------------- what is swept
@dataclass(frozen=True)
class Variant:
    """One dictionary of a sweep: a Lorsa layer or an attention-output SAE of ``width``
    units (OV heads or latents) and TopK ``top_k``."""

    kind: str
    top_k: int
    width: int
    n_qk_heads: int = 0  # Lorsa only
    d_qk: int = 0  # Lorsa only
    qk_init: str = "copy"  # Lorsa only: QK from the original heads, or random

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown dictionary kind {self.kind!r}; known: {KINDS}")
        if self.kind == "lorsa":
            LorsaConfig(1, self.n_qk_heads, self.width, self.d_qk, self.top_k)  # checks
            if self.qk_init not in QK_INITS or self.d_qk <= 0:
                raise ValueError(f"bad Lorsa variant: d_qk={self.d_qk}, qk_init={self.qk_init}")
        elif not 0 < self.top_k <= self.width:
            raise ValueError(f"top_k={self.top_k} must be in 1..{self.width}")

    @property
    def name(self) -> str:
        if self.kind == "sae":
            return f"sae-w{self.width}-k{self.top_k}"
        name = f"lorsa-w{self.width}-k{self.top_k}-qk{self.n_qk_heads}-d{self.d_qk}"
        return name + ("-randomqk" if self.qk_init == "random" else "")


@dataclass(frozen=True)
class SweepAxes:
    ks: tuple[int, ...] = (8, 16, 32, 64)
    qk_heads: tuple[int, ...] = (4, 8, 16, 32, 64)
    d_qks: tuple[int, ...] = (4, 8, 16, 32, 64)
    random_qk_control: bool = True  # one Lorsa at the base shapes with random QK


def sweep_variants(base: DictionaryShapes, axes: SweepAxes) -> dict[str, list[Variant]]:
    """Per axis (``AXES``, plus ``"sae"`` for the K axis's SAEs and ``"control"``), its
    variants in axis order; the base Lorsa appears on every Lorsa axis."""

    def lorsa(k=base.lorsa_top_k, qk=base.n_qk_heads, d=base.d_qk, init="copy"):
        return Variant("lorsa", k, base.n_ov_heads, qk, d, init)

    out = {  # the axes of ``SWEPT``
        "k": [lorsa(k=k) for k in axes.ks],
        "sae": [Variant("sae", k, base.n_ov_heads) for k in axes.ks],
        "qk_heads": [lorsa(qk=h) for h in axes.qk_heads],
        "d_qk": [lorsa(d=d) for d in axes.d_qks],
        "control": [lorsa(init="random")] if axes.random_qk_control else [],
    }
    return out


def unique_variants(axes: dict[str, list[Variant]]) -> list[Variant]:
    seen: dict[str, Variant] = {}
    for variants in axes.values():
        for v in variants:
            seen.setdefault(v.name, v)
    return list(seen.values())


# ----------------------------------------------------------------- initialisation
@torch.no_grad()
def randomise_qk(lorsa: LorsaLayer, seed: int) -> None:
    """QK as a fresh ``LorsaLayer`` draws it (zero biases), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    d = lorsa.cfg.d_model
    for W in (lorsa.W_Q, lorsa.W_K):
        W.copy_(torch.randn(W.shape, generator=g) / math.sqrt(d))
    lorsa.b_Q.zero_()
    lorsa.b_K.zero_()


# ----------------------------------------------------------------- training
class CachedLayerRows:
    """One layer's Lorsa pairs (``ln1`` output, attention output) of an activation cache, held
    in memory and read ``batch_size`` rows at a time from row 0, wrapping around: every variant
    of a sweep reads the same rows in the same order. ``sequences`` has the activation stores'
    signature (Lorsa pairs in both places), so ``estimate_scales`` reads it."""

    n_layers = 1

    def __init__(self, cache, layer: int, batch_size: int):
        cache.check_layers([layer])
        xs, ys = [], []
        for index in range(cache.plan.n_chunks):
            tensors = cache.chunk(index, [layer])
            xs.append(tensors[f"lorsa_x.{layer}"])
            ys.append(tensors[f"lorsa_y.{layer}"])
        self.x, self.y = torch.cat(xs), torch.cat(ys)
        self.batch_size, self.row = batch_size, 0

    @classmethod
    def from_tensors(
        cls, x: Float[Tensor, "rows pos d"], y: Float[Tensor, "rows pos d"], batch_size: int
    ) -> CachedLayerRows:
        """Rows given in memory (tests, or pairs computed some other way)."""
        rows = cls.__new__(cls)
        rows.x, rows.y, rows.batch_size, rows.row = x, y, batch_size, 0
        return rows

    @property
    def rows(self) -> int:
        return len(self.x)

    def reset(self) -> None:
        self.row = 0

    def next_pair(self) -> tuple[Tensor, Tensor]:
        idx = torch.arange(self.row, self.row + self.batch_size) % self.rows
        self.row += self.batch_size
        return self.x[idx], self.y[idx]

    def sequences(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, y = self.next_pair()
        return x[None], y[None], x[None], y[None]


def build_variant(variant: Variant, d_model: int):
    if variant.kind == "sae":
        from .attn_sae import new_attn_sae

        return new_attn_sae(d_model, variant.width, variant.top_k)
    return LorsaLayer(
        LorsaConfig(d_model, variant.n_qk_heads, variant.width, variant.d_qk, variant.top_k)
    )


def train_variant(
    variant: Variant,
    model,
    rows: CachedLayerRows,
    layer: int,
    cfg: ReplacementTrainConfig,
    *,
    quiet: bool = True,
):
    """Train one variant on ``rows`` with the replacement recipe; returns ``(module, info)``
    with the module's scales folded in (it maps the model's own activations)."""
    from tqdm import tqdm

    # K anneals from at most the width (a narrow tiny dictionary cannot start at 4K)
    factor = max(1, min(cfg.k_start_factor, variant.width // variant.top_k))
    cfg = replace(cfg, k_start_factor=factor)
    torch.manual_seed(cfg.seed)
    module = build_variant(variant, model.cfg.d_model)
    rows.reset()
    scales = estimate_scales(rows, cfg.norm_batches)[0, 0]  # (input, target) of the Lorsa pair
    s_x, s_y = float(scales[0]), float(scales[1])
    first = rows.next_pair()[1]
    y_mean = (first * s_y).flatten(0, 1).mean(0)
    attn = model.blocks[layer].attn
    if variant.kind == "lorsa":
        seed = cfg.seed + INIT_SEED_OFFSET["lorsa"] + layer
        init_lorsa_from_heads(module, attn, s_x, s_y, y_mean, seed)  # QK copied at any rank
        if variant.qk_init == "random":
            randomise_qk(module, seed)
    else:
        from .attn_sae import SEED_OFFSET, init_attn_sae

        init_attn_sae(module, y_mean, cfg.seed + SEED_OFFSET + layer)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    idle = torch.zeros(variant.width)
    recent: list[float] = []
    dead = math.nan
    start = time.perf_counter()
    cpu0 = time.process_time()
    bar = tqdm(range(cfg.steps), desc=f"L{layer} {variant.name}", disable=quiet, leave=False)
    for step in bar:
        x, y = rows.next_pair()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        if variant.kind == "lorsa":
            loss, fvu_value, dead = dictionary_loss(module, x * s_x, y * s_y, idle, step, cfg)
        else:
            y = y * s_y
            loss, fvu_value, dead = dictionary_loss(module, y, y, idle, step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [fvu_value])[-20:]
        if step % 20 == 0:
            bar.set_postfix(fvu=f"{sum(recent) / len(recent):.3f}")
    bar.close()
    info = {
        "train_s": round(time.perf_counter() - start, 2),
        "train_cpu_s": round(time.process_time() - cpu0, 2),
        "train_fvu_last20": sum(recent) / max(1, len(recent)),
        "train_dead_last": dead,
        "scales": [s_x, s_y],
    }
    if variant.kind == "lorsa":
        fold_scales_lorsa(module, s_x, s_y)
    else:
        from .attn_sae import fold_attn_sae

        fold_attn_sae(module, s_y)
    module.requires_grad_(False)
    return module, info


# ----------------------------------------------------------------- measuring
def reconstruct(module, kind: str, x: Tensor, y: Tensor) -> Tensor:
    """What replaces the attention output: Lorsa reads the ``ln1`` output, an SAE the output."""
    return module(x) if kind == "lorsa" else module(y)


class LayerEvaluation:
    """Held-out rows of one layer (a held-out activation cache), and the model's loss on them
    with that layer's attention output as is (clean) and mean-ablated: what each variant's
    figures are measured against."""

    def __init__(self, model, cache, layer: int, batch_size: int = 16):
        from .activations import lorsa_hooks
        from .evaluate import mean_outputs, next_token_stats

        self.model, self.layer = model, layer
        rows = CachedLayerRows(cache, layer, batch_size)
        self.x, self.y = rows.x, rows.y
        tokens = cache.tokens(0, cache.plan.rows)
        self.batches = list(tokens.split(batch_size))
        with torch.no_grad():
            self.mean = mean_outputs(model, self.batches)[lorsa_hooks(layer)[1]]
            self.clean = [model(t) for t in self.batches]
            ce = [
                next_token_stats(c, t)["ce"] for c, t in zip(self.clean, self.batches, strict=True)
            ]
            self.ce_original = sum(ce) / len(ce)
            self.ce_ablated = self._spliced(lambda y, x: self.mean.expand_as(y), False)["ce"]

    @property
    def tokens(self) -> int:
        return self.y.shape[0] * self.y.shape[1]

    def _spliced(self, fn, reads_input: bool) -> dict:
        """Mean CE and KL with the layer's attention output replaced by ``fn(y, x)``
        (``replacement.evaluate.splice_hooks``; ``x``, the layer's ``ln1`` output, is hooked
        only when ``reads_input``)."""
        from .evaluate import next_token_stats, splice_hooks

        hooks = splice_hooks([("lorsa", self.layer)], lambda kind, l, y, x: fn(y, x), reads_input)
        stats = []
        for tokens, clean in zip(self.batches, self.clean, strict=True):
            logits = self.model.run_with_hooks(tokens, fwd_hooks=hooks)
            stats.append(next_token_stats(logits, tokens, clean))
        return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}

    @torch.no_grad()
    def measure(self, module, kind: str, batch_size: int = 16) -> dict:
        from .evaluate import ReconstructionTally, fraction_recovered

        tally = ReconstructionTally(module.decoder.shape[0], f"layer {self.layer}'s {kind}")
        for x, y in zip(self.x.split(batch_size), self.y.split(batch_size), strict=True):
            code = module.encode(x if kind == "lorsa" else y)
            tally.add(code, module.decode(code), y)
        spliced = self._spliced(lambda y, x: reconstruct(module, kind, x, y), kind == "lorsa")
        return {
            **tally.result(),
            "ce": spliced["ce"],
            "kl": spliced["kl"],
            "loss_recovered": fraction_recovered(self.ce_original, self.ce_ablated, spliced["ce"]),
        }

    def baseline(self) -> dict:
        return {
            "ce_original": self.ce_original,
            "ce_mean_ablated": self.ce_ablated,
            "heldout_rows": len(self.x),
            "heldout_tokens": self.tokens,
        }


# ----------------------------------------------------------------- a run's record


@dataclass
class RunRecord:
    """One variant's record: ``train_variant``'s figures and ``LayerEvaluation.measure``'s.

    Read back as untrusted data where a rerun of the sweep reuses it (``run_sweep``) and in a
    results file (``reports.ablations.check_results``)."""

    fvu: NonNegative
    l0: NonNegative
    dead_fraction: Share
    ce: Annotated[float, Bounds(0.0, FLOAT32_MAX)]  # float32 means (a KL of 1e308: none)
    kl: Annotated[float, Bounds(-1e-6, FLOAT32_MAX)]  # a KL divergence, to rounding
    loss_recovered: Annotated[float, Bounds(nan=True)]  # NaN: ablating costs under MIN_GAP
    scales: tuple[PositiveReal, PositiveReal]  # (input, target): the estimated norm scales
    train_s: NonNegative
    train_cpu_s: NonNegative
    train_dead_last: Annotated[float, Bounds(0.0, 1.0, nan=True)]  # NaN: never measured
    train_fvu_last20: Annotated[float, Bounds(0.0, FLOAT32_MAX, nan=True)]  # float32 steps


def _kept_run(record, path: Path) -> dict:
    """The record of an earlier run of these settings (``run_sweep``'s work file ``path``),
    checked as a results file's are (``RunRecord``), or one line naming the file."""
    try:
        from_json(RunRecord, record, "record")
    except ValueError as exc:
        raise ValueError(f"{path}: a damaged record of this variant ({exc}); delete it to "
                         "train the variant again") from None  # fmt: skip
    return record


# ----------------------------------------------------------------- the sweep
def run_sweep(
    model,
    train_cache,
    heldout_cache,
    layers: list[int],
    axes: dict[str, list[Variant]],
    cfg: ReplacementTrainConfig,
    work: Path,
    *,
    quiet: bool = False,
) -> dict:
    """Train and measure every variant of ``axes`` on every layer; records and weights go to
    ``work/L{layer}/`` as they finish (a rerun with the same settings reads them back).

    Returns ``{"layers": {layer: {"baseline": ..., "runs": {name: record}}}, "axes": ...}``.
    """
    from tqdm import tqdm

    from toy_models.checkpoint import json_sha256, read_json, save_state_atomic
    from toy_models.files import write_json_atomic

    variants = unique_variants(axes)
    out: dict = {
        "axes": {axis: [v.name for v in vs] for axis, vs in axes.items()},
        "variants": {v.name: asdict(v) for v in variants},
        "layers": {},
    }
    bar = tqdm(total=len(layers) * len(variants), desc="ablation runs", disable=quiet)
    for layer in layers:
        rows = CachedLayerRows(train_cache, layer, cfg.batch_size)
        evaluation = LayerEvaluation(model, heldout_cache, layer)
        runs = {}
        directory = Path(work) / f"L{layer}"
        directory.mkdir(parents=True, exist_ok=True)
        for v in variants:
            identity = {
                "variant": asdict(v),
                "layer": layer,
                "train": asdict(cfg),
                "train_cache": train_cache.plan.cache_id(),
                "heldout_cache": heldout_cache.plan.cache_id(),
            }
            key = json_sha256(identity)
            record_path = directory / f"{v.name}.json"
            if record_path.is_file():
                old = read_json(record_path)
                if old.get("identity") == key:  # read as any file from disk: a damaged record
                    # (an FVU of 1e308, a string) went into the results file as it stood
                    runs[v.name] = _kept_run(old.get("record"), record_path)
                    bar.update(1)
                    continue
            module, info = train_variant(v, model, rows, layer, cfg, quiet=quiet)
            record = {**info, **evaluation.measure(module, v.kind)}
            save_state_atomic(module, directory / f"{v.name}.safetensors")
            write_json_atomic(record_path, {"identity": key, "record": record})
            runs[v.name] = record
            bar.update(1)
            bar.set_postfix(last=f"{v.name} fvu {record['fvu']:.4f}")
        out["layers"][str(layer)] = {"baseline": evaluation.baseline(), "runs": runs}
        del rows, evaluation
    bar.close()
    return out


if __name__ == "__main__":
    raise SystemExit(
        "error: replacement.ablations is a library, not a command: "
        "run python benchmarks/lorsa_ablations.py (see its --help)"
    )
