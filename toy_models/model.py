"""The toy transformer: a pre-LN GPT decoder with TransformerLens hook names.

Every LayerNorm here has its elementwise weight and bias folded into the layer that reads it
(TransformerLens's ``LNPre``): it only centres and scales. The model is exactly as expressive,
and ``blocks.{l}.ln1.hook_normalized`` is then literally the attention layer's input, which is
what the replacement layers and the attribution engine read. Hooks (``run_with_cache``,
``run_with_hooks``) come from TransformerLens's ``HookedRootModule``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint


def causal_mask(n: int, device: torch.device | None = None) -> Bool[Tensor, "q k"]:
    """``True`` where query ``q`` may read key ``k`` (``k <= q``)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def causal_scores(
    q: Float[Tensor, "... q d"], k: Float[Tensor, "... k d"], allowed: Tensor | None = None
) -> Float[Tensor, "... q k"]:
    """Attention scores ``q k^T / sqrt(d)``, ``-inf`` where a query may not read a key:
    ``allowed`` (default ``causal_mask``) says where it may. Every attention pattern of the
    project (the model's, Lorsa's, the MHSA heads' split, the BOS-masked sinks) is this
    softmaxed (``attention_pattern``)."""
    if allowed is None:
        allowed = causal_mask(q.shape[-2], q.device)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf"))


def attention_pattern(
    q: Float[Tensor, "... q d"], k: Float[Tensor, "... k d"], allowed: Tensor | None = None
) -> Float[Tensor, "... q k"]:
    """The softmax over the keys each query may read of ``causal_scores``."""
    return causal_scores(q, k, allowed).softmax(-1)


@dataclass(frozen=True)
class ModelConfig:
    d_vocab: int
    n_ctx: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    ln_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        """The bounds a config read from disk is held to (``checkpoint.FLOAT_LIMITS``), held
        where one is made too: a run could otherwise train and save a model it cannot load."""
        from .checkpoint import FLOAT_LIMITS, check_value

        for name, limit in FLOAT_LIMITS.items():
            check_value("float", getattr(self, name), f"model config.{name}", limit)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """From JSON, refusing unknown keys and values of the wrong type or range."""
        from .checkpoint import config_from_dict

        return config_from_dict(cls, data, "model config")


def has_hooks(hook: HookPoint) -> bool:
    """Whether anything hooks ``hook`` (through TransformerLens's API, which every caller uses)."""
    return hook.has_hooks()


def position_rows(
    W_pos: Float[Tensor, "n_ctx d_model"], embed: Float[Tensor, "batch pos d_model"], hook
) -> Float[Tensor, "batch pos d_model"]:
    """What ``hook_pos_embed`` sees: each row's position vectors, (batch, pos, d_model) as in
    TransformerLens (it was (pos, d_model): a TL user's ``act[:, 3] = 0``, zero position 3,
    zeroed component 3 of every position without an error, and ``cache[...][b, p]`` read one
    number; a review). A view of ``W_pos`` where no hook is on it; a copy for a hook, which
    a hook editing it in place (TransformerLens's idiom) would otherwise edit for good."""
    pos = W_pos[: embed.shape[-2]].expand_as(embed)
    return pos.clone() if has_hooks(hook) else pos


def hook_name(layer: int, site: str) -> str:
    """The full name of a hook point of block ``layer`` (TransformerLens's ``get_act_name``):
    ``hook_name(1, "attn.hook_pattern") == "blocks.1.attn.hook_pattern"``."""
    return f"blocks.{layer}.{site}"


class LayerNorm(nn.Module):
    """Centre and scale (weights folded into the next layer); ``hook_scale`` is the frozen sigma."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.ln_eps
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if not (has_hooks(self.hook_scale) or has_hooks(self.hook_normalized)):
            return F.layer_norm(x, x.shape[-1:], eps=self.eps)  # fused; same numbers (tests)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        # One GEMM for Q, K and V: (d_model) -> (3, head, d_head)
        W = torch.stack([self.W_Q, self.W_K, self.W_V]).permute(2, 0, 1, 3).flatten(1)
        b = torch.stack([self.b_Q, self.b_K, self.b_V])
        qkv = (x @ W).unflatten(-1, b.shape) + b
        q, k, v = qkv.unbind(-3)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # batch head pos d_head
        if has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern):
            scores = self.hook_attn_scores(causal_scores(q, k))
            z = self.hook_pattern(scores.softmax(-1)) @ v
        else:  # nobody reads the pattern: use the fused kernel (same numbers, see tests)
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        z = self.hook_z(z.transpose(1, 2))  # batch pos head d_head
        return torch.einsum("bphe,hed->bpd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        post = self.hook_post(F.gelu(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.attn = LayerNorm(cfg), Attention(cfg)
        self.ln2, self.mlp = LayerNorm(cfg), MLP(cfg)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(self.ln1(resid))))
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))


class ToyTransformer(HookedRootModule):
    """Pre-LN decoder; ``forward(tokens)`` returns logits ``(batch, pos, d_vocab)``."""

    # The hash of the tokenizer file it was loaded with (``toy_models.checkpoint.load_model``),
    # part of its identity (``fingerprint``); None for a model built in memory.
    tokenizer_sha256: str | None = None
    # The tokens never an input in training (``toy_models.train.untrained_tokens``, read by
    # ``load_model`` from the config); None when unknown (a model built in memory, an older run).
    untrained_tokens: frozenset[int] | None = None
    # The BOS id of the tokenizer file beside its checkpoint (``toy_models.checkpoint.
    # load_model``, under ``ToyTransformer.load`` and ``load_pretrained``): every sequence it
    # trained on holds it at position 0 and nowhere else, which the library's entry points
    # check (``circuits.attribution.prompt_tokens``); None for a model built in memory or
    # loaded from a directory without its tokenizer file, whose callers ensure it.
    bos_id: int | None = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg)
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.init_weights()
        self.setup()

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.W_E.is_meta:
            # Built only for its shapes (``checkpoint.load_checked``): random init on the meta
            # device goes through torch's reference ops, whose import alone takes seconds.
            return
        # GPT-2 practice: output projections into the residual stream shrink with depth.
        out_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                continue
            std = out_std if name.endswith(("W_O", "W_out")) else self.cfg.init_std
            nn.init.normal_(p, std=std)
        # Positions start sinusoidal (then learn freely): previous-token and digit-alignment
        # heads need relative position, which random position vectors take long to provide.
        pos = torch.arange(self.cfg.n_ctx)[:, None]
        freq = torch.exp(-math.log(1e4) * torch.arange(0, self.cfg.d_model, 2) / self.cfg.d_model)
        self.W_pos[:, 0::2] = torch.sin(pos * freq) * self.cfg.init_std * math.sqrt(2)
        self.W_pos[:, 1::2] = torch.cos(pos * freq) * self.cfg.init_std * math.sqrt(2)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        check_tokens(tokens, self.cfg.n_ctx, self.cfg.d_vocab)
        # F.embedding, not W_E[tokens]: the same rows, but its backward sums a token's
        # gradients in a fixed order, where indexing's accumulates them in whatever order the
        # threads reach them, so that two training runs of one command would differ.
        embed = F.embedding(tokens, self.W_E)
        pos = position_rows(self.W_pos, embed, self.hook_pos_embed)
        resid = self.hook_embed(embed) + self.hook_pos_embed(pos)
        for block in self.blocks:
            resid = block(resid)
        return self.ln_final(resid) @ self.W_U + self.b_U

    @property
    def trained_positions(self) -> int:
        """How many positions training gives a gradient: ``toy_models.train`` feeds packed rows
        of ``n_ctx`` tokens as ``rows[:, :-1]``, so position ``n_ctx - 1`` never trains (its
        position embedding stays near its start) and a prediction read there is not the
        model's: prompts are held to this many tokens (``circuits.trace``)."""
        return self.cfg.n_ctx - 1

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups, as nanoGPT's ``configure_optimizers``.

        nanoGPT's rule: every parameter of 2 or more dimensions is weight-decayed (matrices, and
        here also the per-head biases ``b_Q/b_K/b_V``, of shape head x d_head), 1-D ones are not.
        The exception is ``W_pos``: a table read one row per position, like a bias, whose
        sinusoidal start (``init_weights``) gives heads relative position, which decay would
        erode.
        """
        named = list(self.named_parameters())
        decayed = {name for name, p in named if p.ndim >= 2 and name != "W_pos"}
        return [
            {"params": [p for n, p in named if n in decayed], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
        ]

    # Checkpoint files are read and written by ``toy_models.checkpoint``.
    def save(
        self, directory: str | Path, dtype: torch.dtype = torch.float32, extra: dict | None = None
    ) -> None:
        """Write ``model.safetensors`` and ``config.json`` atomically into ``directory``."""
        from .checkpoint import save_model

        save_model(self, Path(directory), dtype, extra)

    @classmethod
    def load(cls, directory: str | Path) -> ToyTransformer:
        """Load a checkpoint directory, refusing (with the file and the mismatch) anything off."""
        from .checkpoint import load_model

        return load_model(Path(directory))


def check_tokens(tokens: Tensor, n_ctx: int, d_vocab: int) -> int:
    """The sequence length of a ``(batch, pos)`` tensor of token ids, refusing anything else:
    another shape or type, a batch of no rows (torch's min() of nothing), and ids outside
    ``0..d_vocab - 1`` (a negative id would otherwise index the embedding from its end: a
    silently different token)."""
    if not isinstance(tokens, Tensor) or tokens.dtype not in _TOKEN_DTYPES:
        what = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a tensor of integer ids, got {what}")
    if tokens.ndim != 2 or not tokens.shape[0]:
        raise ValueError(f"tokens must be (batch, pos) with a row or more, got shape "
                         f"{tuple(tokens.shape)}")  # fmt: skip
    n = tokens.shape[1]
    if not 0 < n <= n_ctx:
        raise ValueError(f"sequence length {n} is outside 1..n_ctx={n_ctx}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= d_vocab:
        raise ValueError(f"token id {low if low < 0 else high} is outside 0..{d_vocab - 1}")
    return n


_TOKEN_DTYPES = (torch.int64, torch.int32)  # what indexing reads as ids (uint8 would be a mask)


# Re-exported: importers predate toy_models.checkpoint, which imports this module lazily.
from .checkpoint import fingerprint, load_checked  # noqa: E402, F401
