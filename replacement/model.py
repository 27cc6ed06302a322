"""The replacement model: a frozen toy transformer whose every attention layer is replaced by a
Lorsa layer and every MLP by a transcoder (DESIGN.md section 4).

Two modes, chosen per call with ``forward(tokens, mode=...)``:

- ``"sparse"``: the fully sparsified model computes alone. Each sublayer's output is its
  replacement's reconstruction; the original attention and MLP never run.
- ``"local"``: each sublayer's output is reconstruction + error, where error = (the original
  sublayer on the same input) - (the reconstruction). The residual stream and the logits are
  then the original model's, and the errors become nodes of the attribution graph.

Hook points (TransformerLens names, so ``run_with_cache`` / ``run_with_hooks`` work as usual)::

    hook_embed                              batch pos d_model
    hook_pos_embed                          batch pos d_model    (W_pos's rows, per row)
    blocks.{l}.hook_resid_pre               batch pos d_model
    blocks.{l}.ln1.hook_scale               batch pos 1          the toy model's own LayerNorm
    blocks.{l}.ln1.hook_normalized          batch pos d_model
    blocks.{l}.lorsa.hook_in                batch pos d_model    Lorsa input (= ln1 output)
    blocks.{l}.lorsa.hook_pattern           batch qk q k         QK heads' patterns (see below)
    blocks.{l}.lorsa.hook_pre               batch pos n_ov       head pre-activations z~
    blocks.{l}.lorsa.hook_z                 batch pos n_ov       head activations, <= top_k != 0
    blocks.{l}.lorsa.hook_out               batch pos d_model    reconstruction
    blocks.{l}.lorsa.hook_error             batch pos d_model    local mode only
    blocks.{l}.hook_attn_out                batch pos d_model    hook_out (+ hook_error if local)
    blocks.{l}.hook_resid_mid               batch pos d_model
    blocks.{l}.ln2.hook_scale               batch pos 1
    blocks.{l}.ln2.hook_normalized          batch pos d_model
    blocks.{l}.transcoder.hook_in           batch pos d_model    transcoder input (= ln2 output)
    blocks.{l}.transcoder.hook_pre          batch pos d_sae      feature pre-activations
    blocks.{l}.transcoder.hook_acts         batch pos d_sae      feature activations, <= top_k != 0
    blocks.{l}.transcoder.hook_out          batch pos d_model    reconstruction
    blocks.{l}.transcoder.hook_error        batch pos d_model    local mode only
    blocks.{l}.hook_mlp_out                 batch pos d_model    hook_out (+ hook_error if local)
    blocks.{l}.hook_resid_post              batch pos d_model
    ln_final.hook_scale                     batch pos 1
    ln_final.hook_normalized                batch pos d_model

Like the toy model's ``hook_pattern``, ``lorsa.hook_pattern`` computes explicit patterns only when
a hook is on it (otherwise one fused attention call runs): patching it with clean patterns is how
attention is frozen.

In sparse mode the ``hook_error`` points never fire (they are absent from a cache): there is no
error term, and a cache full of zeros would read as a perfect reconstruction.

The error is measured against the reconstruction *without* any hook from ``hook_pattern`` to
``hook_out`` applied, so it depends on the sublayer's input alone: ablating a head in local
mode moves the output by exactly that head's contribution instead of being absorbed into the
error. To hold errors at their clean values while intervening upstream, patch ``hook_error`` with
cached values.

Files (``save`` / ``load``), one directory::

    replacement.json             configs, the toy model's name and weights hash, n_layers,
                                 d_model, free-form ``meta`` (training figures)
    lorsa.{l}.safetensors        LorsaLayer state_dict of layer l (float32 or float16)
    transcoder.{l}.safetensors   Transcoder state_dict of layer l (float32 or float16)
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from toy_models.files import check_readable_file, write_json_atomic
from toy_models.model import (
    Block,
    ToyTransformer,
    check_tokens,
    fingerprint,
    has_hooks,
    hook_name,
    load_checked,
    position_rows,
)
from toy_models.records import check_keys

from .lorsa import LorsaConfig, LorsaLayer
from .transcoder import Transcoder, TranscoderConfig

SHIPPED_DIR = Path(__file__).parent / "zoo"
CONFIG_FILE = "replacement.json"
LORSA_FILE = "lorsa.{}.safetensors"
TRANSCODER_FILE = "transcoder.{}.safetensors"
FORMAT_VERSION = 2  # 2: model identity covers config and tokenizer; file hashes
# the keys ``save`` writes in CONFIG_FILE (and "meta") and in its "model" entry
CONFIG_KEYS = ("format_version", "model", "lorsa", "transcoders", "files", "content_sha256")
IDENTITY_KEYS = ("name", "sha256", "n_layers", "d_model")
MODES = ("sparse", "local")

Sublayer = Callable[[Tensor], Tensor]

__all__ = ["MODES", "ReadWrite", "ReplacementModel", "hook_name", "load_pretrained"]


def center(x: Tensor) -> Tensor:
    """The LayerNorm centring ``P x`` along the last axis (``P`` is symmetric: it moves onto
    whichever side of a dot product is cheaper)."""
    return x - x.mean(-1, keepdim=True)


@dataclass(frozen=True)
class ReadWrite:
    """What each unit of a replacement model writes to and reads from the residual stream,
    centred by the LayerNorm projection ``P`` (every LayerNorm here only centres and scales),
    with the constants beside them: the small interface circuits read a model through.

    Per block ``l``: a Lorsa head writes ``lorsa_write[l][i] = P w_o^i`` and reads
    ``lorsa_read[l][i] = P w_v^i`` (plus ``b_V``); a transcoder feature writes
    ``tc_write[l][f] = P W_dec[f]`` and reads ``tc_read[l][f] = P W_enc[:, f]`` (plus
    ``b_enc``). A token writes ``P W_E[t]``; a logit reads ``unembed[v]``, the unembedding
    column demeaned over the vocabulary (a logit minus the mean logit) and centred, with
    ``unembed_bias`` its demeaned ``b_U``. ``resid_bias[S]`` is the constant part of the
    residual stream read at stage ``S`` (the decoder biases ``b_D``, ``b_dec`` of every stage
    below; ``circuits.nodes`` numbers stages). Read with ``ReplacementModel.read_write()``,
    computed once per set of weights.
    """

    embed_write: Float[Tensor, "vocab d_model"]
    lorsa_write: list[Float[Tensor, "ov d_model"]]
    lorsa_read: list[Float[Tensor, "ov d_model"]]
    lorsa_bias: list[Float[Tensor, " ov"]]
    tc_write: list[Float[Tensor, "sae d_model"]]
    tc_read: list[Float[Tensor, "sae d_model"]]
    tc_bias: list[Float[Tensor, " sae"]]
    unembed: Float[Tensor, "vocab d_model"]
    unembed_bias: Float[Tensor, " vocab"]
    resid_bias: Float[Tensor, "stage d_model"]

    @classmethod
    @torch.no_grad()
    def of(cls, replacement: ReplacementModel) -> ReadWrite:
        m = replacement.model
        lorsas, tcs = replacement.lorsas, replacement.transcoders
        constant = [torch.zeros(m.cfg.d_model)]  # stage 0 reads no decoder bias
        for lorsa, tc in zip(lorsas, tcs, strict=True):
            constant += [constant[-1] + lorsa.b_D, constant[-1] + lorsa.b_D + tc.b_dec]
        # Stage S reads the biases of stages 1..S-1: resid_bias[0] = resid_bias[1] = 0.
        resid_bias = torch.stack([constant[0]] + constant)
        return cls(
            embed_write=center(m.W_E).detach(),
            lorsa_write=[center(lorsa.W_O).detach() for lorsa in lorsas],
            lorsa_read=[center(lorsa.W_V).detach() for lorsa in lorsas],
            lorsa_bias=[lorsa.b_V.detach() for lorsa in lorsas],
            tc_write=[center(tc.W_dec).detach() for tc in tcs],
            tc_read=[center(tc.W_enc.T).detach() for tc in tcs],
            tc_bias=[tc.b_enc.detach() for tc in tcs],
            unembed=center((m.W_U - m.W_U.mean(1, keepdim=True)).T).detach(),
            unembed_bias=(m.b_U - m.b_U.mean()).detach(),
            resid_bias=resid_bias.detach(),
        )

    def direct_logits(self, attention: bool, layer: int, units: Tensor | None = None) -> Tensor:
        """(unit, vocab): what one unit of activation of block ``layer``'s Lorsa heads
        (``attention``) or transcoder features (``units``; all when None) adds to each
        demeaned logit through the direct path: its write through ``unembed``. The one place
        a unit's logit effect is computed (the tokens a node promotes, dashboards' logit
        effects, the successor heads' promoted tokens)."""
        write = (self.lorsa_write if attention else self.tc_write)[layer]
        write = write if units is None else write[units]
        return write.float() @ self.unembed.float().T


def _plus_error(out: Tensor, recon: Tensor, target: Tensor, hook_error: HookPoint) -> Tensor:
    """``out + error`` with ``error = hook_error(target - recon)``, arranged so that without
    interventions (``out`` is ``recon``, the error unpatched) it is ``target`` to the bit:
    local mode then reproduces the original model exactly, not just to rounding."""
    clean_error = target - recon
    # a copy for the hook: one editing in place (TransformerLens's idiom) would edit
    # ``clean_error`` too, and the edit would cancel itself
    error = hook_error(clean_error.clone() if has_hooks(hook_error) else clean_error)
    return target + (out - recon) + (error - clean_error)


def _for_hook(acts: Tensor, hook: HookPoint, original: Sublayer | None) -> Tensor:
    """``acts`` for ``hook``, copied in local mode when something hooks it: the error is
    measured against the reconstruction from ``acts``, and a hook editing them in place
    (TransformerLens's idiom) would edit that reconstruction too, so that the error took the
    edit back (an ablation moved nothing)."""
    return acts.clone() if original is not None and has_hooks(hook) else acts


class HookedLorsa(nn.Module):
    """A Lorsa layer standing in for one attention layer, with a hook on every activation."""

    def __init__(self, layer: LorsaLayer):
        super().__init__()
        self.layer = layer
        self.hook_in, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_pre, self.hook_z = HookPoint(), HookPoint()
        self.hook_out, self.hook_error = HookPoint(), HookPoint()

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], original: Sublayer | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """The reconstruction, plus the error ``original(x) - reconstruction`` when given."""
        x = self.hook_in(x)
        pattern = None
        if has_hooks(self.hook_pattern):  # explicit patterns only when someone reads them
            pattern = self.hook_pattern(self.layer.patterns(x))
        z = self.layer.activate(self.hook_pre(self.layer.pre_activations(x, pattern)))
        out = self.hook_out(self.layer.decode(self.hook_z(_for_hook(z, self.hook_z, original))))
        if original is None:
            return out
        # Against the un-hooked reconstruction: the error is a function of x alone (module doc).
        if has_hooks(self.hook_pattern) or has_hooks(self.hook_pre):
            z = self.layer.encode(x)
        return _plus_error(out, self.layer.decode(z), original(x), self.hook_error)


class HookedTranscoder(nn.Module):
    """A transcoder standing in for one MLP, with a hook on every activation."""

    def __init__(self, layer: Transcoder):
        super().__init__()
        self.layer = layer
        self.hook_in, self.hook_pre, self.hook_acts = HookPoint(), HookPoint(), HookPoint()
        self.hook_out, self.hook_error = HookPoint(), HookPoint()

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], original: Sublayer | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """The reconstruction, plus the error ``original(x) - reconstruction`` when given."""
        x = self.hook_in(x)
        f = self.layer.activate(self.hook_pre(self.layer.pre_activations(x)))
        out = self.hook_out(
            self.layer.decode(self.hook_acts(_for_hook(f, self.hook_acts, original)), x)
        )
        if original is None:
            return out
        if has_hooks(self.hook_pre):
            f = self.layer.encode(x)
        return _plus_error(out, self.layer.decode(f, x), original(x), self.hook_error)


class ReplacementBlock(nn.Module):
    """One layer: the toy model's own LayerNorms, a Lorsa layer and a transcoder."""

    def __init__(self, block: Block, lorsa: LorsaLayer, transcoder: Transcoder):
        super().__init__()
        # Shared, not copied: same math and the same hook names as in the toy model.
        self.ln1, self.ln2 = block.ln1, block.ln2
        self.lorsa, self.transcoder = HookedLorsa(lorsa), HookedTranscoder(transcoder)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"], original: Block | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """``original`` is the toy model's block in local mode, None in sparse mode."""
        attn, mlp = (original.attn, original.mlp) if original is not None else (None, None)
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.lorsa(self.ln1(resid), attn)))
        mlp_out = self.hook_mlp_out(self.transcoder(self.ln2(resid), mlp))
        return self.hook_resid_post(resid + mlp_out)


class ReplacementModel(HookedRootModule):
    """A frozen toy model with one Lorsa layer and one transcoder per layer.

    ``forward(tokens, mode)`` returns logits ``(batch, pos, d_vocab)``; see the module
    docstring for the modes and the hook names. The toy model's parameters are frozen in place
    (``requires_grad=False``): only the replacement layers train.
    """

    def __init__(
        self, model: ToyTransformer, lorsas: list[LorsaLayer], transcoders: list[Transcoder]
    ):
        super().__init__()
        _check_layers(model, lorsas, transcoders)
        model.requires_grad_(False)
        # Kept outside the module tree: setup() would rename its hook points ("model.blocks...",
        # breaking the toy model's own run_with_cache) and its weights would join our state_dict.
        object.__setattr__(self, "model", model)
        self.cfg = model.cfg
        self.blocks = nn.ModuleList(
            ReplacementBlock(block, lorsa, transcoder)
            for block, lorsa, transcoder in zip(model.blocks, lorsas, transcoders, strict=True)
        )
        self.ln_final = model.ln_final
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.meta: dict = {}
        self.model_name: str | None = None
        # The saved set's identity (its config's ``content_sha256``, which covers every layer
        # file's SHA-256 and the toy model's identity); None for a set built in memory.
        self.content_sha256: str | None = None
        self._weights: tuple[tuple, str] | None = None  # (what the hash was taken of, the hash)
        self.setup()

    def weights_sha256(self) -> str:
        """SHA-256 of every weight in use now, the toy model's and the set's, by name: what a
        graph records of the weights it was traced with (``circuits.attribution``), so that a
        set built in memory, swapped or edited in place is told from the one a graph came
        from (``content_sha256`` names a saved set only, and not its later edits). Taken again
        only when a weight was replaced or edited (its storage or ``_version`` changed)."""
        from toy_models.checkpoint import tensors_sha256

        named, seen = {}, set()
        for name, t in [*self.model.named_parameters(prefix="model"), *self.named_parameters(),
                        *self.named_buffers()]:  # fmt: skip
            if id(t) not in seen:
                seen.add(id(t))
                named[name] = t
        key = tuple((name, t.data_ptr(), t._version) for name, t in named.items())
        if self._weights is None or self._weights[0] != key:
            self._weights = (key, tensors_sha256({n: t.detach() for n, t in named.items()}))
        return self._weights[1]

    def trained_steps(self) -> int | None:
        """The optimisation steps the set was trained for, as its ``meta`` records them; None
        when it records none (a set built in memory). A baseline trained "as long as the set"
        takes these steps."""
        train = self.meta.get("train") if isinstance(self.meta, dict) else None
        steps = train.get("steps") if isinstance(train, dict) else None
        ok = isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
        return steps if ok else None

    @property
    def lorsas(self) -> list[LorsaLayer]:
        return [block.lorsa.layer for block in self.blocks]

    @property
    def group_size(self) -> int:
        """The Lorsa group size (OV heads per QK head) every layer shares; a ValueError for a
        set whose layers differ (one layer retrained from another config): graphs number a
        head's QK head as ``index // group_size``, one size for every layer."""
        sizes = {lorsa.cfg.group_size for lorsa in self.lorsas}
        if len(sizes) != 1:
            raise ValueError(f"the replacement set's Lorsa layers have group sizes "
                             f"{[lorsa.cfg.group_size for lorsa in self.lorsas]}: graphs need "
                             "one group size in every layer")  # fmt: skip
        return sizes.pop()

    @property
    def transcoders(self) -> list[Transcoder]:
        return [block.transcoder.layer for block in self.blocks]

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"] | None,
        mode: Literal["sparse", "local"] = "sparse",
        *,
        start_at_layer: int = 0,
        resid: Float[Tensor, "batch pos d_model"] | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits. ``start_at_layer`` (TransformerLens's argument): run blocks from that one
        on, starting from ``resid``, the residual stream entering it (``hook_resid_pre`` of
        that block); ``tokens`` may then be None, and if given must be the rows ``resid``
        came from (their shape is checked: nothing else reads them)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        m, cfg = self.model, self.cfg
        try:  # an integer, not True (block 1) or 2.0 (a slice TypeError)
            start = None if isinstance(start_at_layer, bool) else operator.index(start_at_layer)
        except TypeError:
            start = None
        if start is None or not 0 <= start <= cfg.n_layers:
            raise ValueError(
                f"start_at_layer must be an integer in 0..{cfg.n_layers}, got {start_at_layer!r}"
            )
        if resid is None:
            if start:
                raise ValueError(f"start_at_layer={start} needs resid, the residual stream "
                                 f"entering a block 0..{cfg.n_layers}")  # fmt: skip
            check_tokens(tokens, cfg.n_ctx, cfg.d_vocab)
            embed = m.W_E[tokens]
            pos = position_rows(m.W_pos, embed, self.hook_pos_embed)  # as the toy model's
            resid = self.hook_embed(embed) + self.hook_pos_embed(pos)
        else:
            _check_resid(resid, cfg, m.W_E.dtype)
            if tokens is not None:
                check_tokens(tokens, cfg.n_ctx, cfg.d_vocab)
                if tokens.shape != resid.shape[:2]:
                    raise ValueError(f"tokens {tuple(tokens.shape)} are not the rows of resid "
                                     f"{tuple(resid.shape)}")  # fmt: skip
        for block, original in zip(self.blocks[start:], m.blocks[start:], strict=True):
            resid = block(resid, original if mode == "local" else None)
        return self.ln_final(resid) @ m.W_U + m.b_U

    def read_write(self) -> ReadWrite:
        """The model's centred read/write vectors and biases (``ReadWrite``), computed once and
        recomputed only when a weight has changed (in place or replaced)."""
        # A tensor's version counter is how autograd itself detects in-place changes.
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        key += tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        cached = getattr(self, "_read_write", None)
        if cached is None or cached[0] != key:
            object.__setattr__(self, "_read_write", (key, ReadWrite.of(self)))
        return self._read_write[1]

    def _apply(self, fn, recurse=True):
        # The toy model is outside the module tree, so .to() / .float() must reach it here.
        self.model._apply(fn, recurse)
        return super()._apply(fn, recurse)

    # ----------------------------------------------------------------- files
    def save(
        self,
        directory: str | Path,
        model_name: str,
        meta: dict | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Write the replacement layers and ``replacement.json`` atomically into ``directory``.

        ``model_name`` names the toy model they were trained for; its identity (``fingerprint``:
        config, tokenizer and weights) is recorded, so that ``load`` can refuse them for any
        other model, and so are the SHA-256 of every layer file and of replacement.json's own
        content, so that a damaged, edited or swapped file is refused too. ``meta`` (default:
        ``self.meta``) is free-form JSON, e.g. training figures. ``dtype`` is the storage type
        (float16 halves a shipped set); ``load`` always computes in float32.
        """
        from toy_models.checkpoint import json_sha256, save_state_atomic
        from toy_models.files import file_sha256

        meta = self.meta if meta is None else meta
        try:  # not JSON-serialisable (NaN too): fail before any file is written
            json.dumps(meta, allow_nan=False)
        except ValueError as exc:
            raise ValueError(
                f"the set's figures cannot be saved ({exc}): nothing written"
            ) from None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {}
        for l, (lorsa, transcoder) in enumerate(zip(self.lorsas, self.transcoders, strict=True)):
            for name, module in (
                (LORSA_FILE.format(l), lorsa),
                (TRANSCODER_FILE.format(l), transcoder),
            ):
                save_state_atomic(module, directory / name, dtype)
                files[name] = file_sha256(directory / name)
        identity = {
            "name": model_name,
            "sha256": fingerprint(self.model),
            "n_layers": self.cfg.n_layers,
            "d_model": self.cfg.d_model,
        }
        config = {
            "format_version": FORMAT_VERSION,
            "model": identity,
            "lorsa": [asdict(lorsa.cfg) for lorsa in self.lorsas],
            "transcoders": [asdict(transcoder.cfg) for transcoder in self.transcoders],
            "files": files,
            "meta": meta,
        }
        config["content_sha256"] = json_sha256(config)
        # Written last: a directory whose replacement.json is present holds a complete set.
        write_json_atomic(directory / CONFIG_FILE, config)

    @classmethod
    def load(cls, directory: str | Path, model: ToyTransformer) -> ReplacementModel:
        """Load replacement layers for ``model``, refusing (with the file and the mismatch)
        missing or unreadable files, wrong shapes or dtypes, layers trained for another model
        (``fingerprint``), and files changed since they were saved (recorded SHA-256).

        The most specific check runs first, so a wrong shape is reported as such and not as
        a changed hash."""
        from toy_models.checkpoint import (
            MAX_MODULES,
            check_recorded_hashes,
            check_value,
            config_from_dict,
            json_sha256,
            read_json,
        )
        from toy_models.files import file_sha256

        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if directory.exists() and not directory.is_dir():  # not "missing: FILE/replacement.json"
            raise FileNotFoundError(f"replacement set {directory}: is a file, not a set's folder")
        check_readable_file(config_path, "replacement file")
        config = read_json(config_path)
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{config_path}: format_version {version!r}, expected {FORMAT_VERSION} (sets "
                "saved before model identities covered config and tokenizer must be retrained)"
            )
        try:
            # what ``save`` writes and nothing else: a key of any name was read and ignored
            check_keys(config, "it", CONFIG_KEYS, ("meta",))
            identity = _entry(config, "model", dict)
            check_keys(identity, "model", IDENTITY_KEYS)
            name, sha256, n_layers, d_model = (identity[key] for key in IDENTITY_KEYS)
            name, sha256 = str(name), str(sha256)
            check_value("int", n_layers, "model.n_layers", MAX_MODULES)
            check_value("int", d_model, "model.d_model")
            lorsa_cfgs = [
                config_from_dict(LorsaConfig, c, f"lorsa[{l}]")
                for l, c in enumerate(_entry(config, "lorsa", list))
            ]
            transcoder_cfgs = [
                config_from_dict(TranscoderConfig, c, f"transcoders[{l}]")
                for l, c in enumerate(_entry(config, "transcoders", list))
            ]
            files = {str(k): str(v) for k, v in _entry(config, "files", dict).items()}
            recorded_content = _entry(config, "content_sha256", str)
            meta = config.get("meta") or {}
            if not isinstance(meta, dict):
                raise ValueError(f"'meta' must be an object, got {type(meta).__name__}")
            meta = dict(meta)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{config_path}: not a valid replacement config ({exc})") from None
        if not len(lorsa_cfgs) == len(transcoder_cfgs) == n_layers:
            raise ValueError(
                f"{config_path}: {len(lorsa_cfgs)} Lorsa and {len(transcoder_cfgs)} transcoder "
                f"configs for n_layers={n_layers}"
            )
        layer_files = [LORSA_FILE.format(l) for l in range(n_layers)]
        layer_files += [TRANSCODER_FILE.format(l) for l in range(n_layers)]
        if sorted(files) != sorted(layer_files):
            raise ValueError(f"{config_path}: 'files' does not list the {2 * n_layers} layer files")
        if (n_layers, d_model) != (model.cfg.n_layers, model.cfg.d_model):
            raise ValueError(
                f"{config_path}: made for a {n_layers}-layer model with d_model={d_model}, the "
                f"given model has {model.cfg.n_layers} layers and d_model={model.cfg.d_model}"
            )
        actual = fingerprint(model)
        if sha256 != actual:
            raise ValueError(
                f"{config_path}: made for toy model {name!r} (identity {sha256[:12]}...), the "
                f"given model's identity (config, tokenizer, weights) is {actual[:12]}..."
            )
        device = model.W_E.device
        lorsas = [
            load_checked(
                lambda cfg=cfg: LorsaLayer(cfg), directory / LORSA_FILE.format(l), CONFIG_FILE
            ).to(device)
            for l, cfg in enumerate(lorsa_cfgs)
        ]
        transcoders = [
            load_checked(
                lambda cfg=cfg: Transcoder(cfg), directory / TRANSCODER_FILE.format(l), CONFIG_FILE
            ).to(device)
            for l, cfg in enumerate(transcoder_cfgs)
        ]
        for file_name in layer_files:
            if file_sha256(directory / file_name) != files[file_name]:
                raise ValueError(
                    f"{directory / file_name}: not the file recorded in {CONFIG_FILE} (sha256 "
                    "differs: damaged, edited or swapped with another)"
                )
        try:
            content = json_sha256({k: v for k, v in config.items() if k != "content_sha256"})
        except ValueError:  # a NaN or infinity, which JSON cannot carry and no save writes
            raise ValueError(f"{config_path}: holds a NaN or infinite number (not JSON; no "
                             "saved set has one)") from None  # fmt: skip
        if content != recorded_content:
            raise ValueError(f"{config_path}: edited after it was saved (content_sha256 differs)")
        from .ship import RECORD_FIGURES

        check_recorded_hashes(directory, RECORD_FIGURES)
        try:
            replacement = cls(model, lorsas, transcoders)
        except ValueError as exc:  # e.g. a Lorsa config whose d_model is not the model's
            raise ValueError(f"{config_path}: {exc}") from None
        replacement.meta, replacement.model_name = meta, name
        replacement.content_sha256 = recorded_content
        return replacement


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string"}


def _entry(data: dict, key: str, kind: type):
    """``data[key]`` (there: ``check_keys``), a JSON value of ``kind``, or a ValueError naming
    the key."""
    value = data[key]
    if not isinstance(value, kind):
        raise ValueError(f"{key!r} must be {_JSON_TYPES[kind]}, got {type(value).__name__}")
    return value


def _check_resid(resid, cfg, dtype: torch.dtype) -> None:
    """A residual stream to start from: ``(batch, pos, d_model)`` in the model's dtype, a row
    or more and ``1..n_ctx`` positions (a wrong width failed deep in an einsum)."""
    ok = (
        isinstance(resid, Tensor)
        and resid.ndim == 3
        and resid.shape[0] >= 1
        and 1 <= resid.shape[1] <= cfg.n_ctx
        and resid.shape[2] == cfg.d_model
        and resid.dtype == dtype
    )
    if not ok:
        got = (f"{tuple(resid.shape)} {resid.dtype}" if isinstance(resid, Tensor)
               else type(resid).__name__)  # fmt: skip
        raise ValueError(f"resid must be (batch, pos, d_model={cfg.d_model}) of {dtype}, with a "
                         f"row or more and 1..n_ctx={cfg.n_ctx} positions, got {got}")  # fmt: skip


def _check_layers(
    model: ToyTransformer, lorsas: list[LorsaLayer], transcoders: list[Transcoder]
) -> None:
    n, d = model.cfg.n_layers, model.cfg.d_model
    for kind, layers, cls in (
        ("Lorsa", lorsas, LorsaLayer),
        ("transcoder", transcoders, Transcoder),
    ):
        if len(layers) != n:
            raise ValueError(f"got {len(layers)} {kind} layers for a {n}-layer model")
        for l, layer in enumerate(layers):
            if not isinstance(layer, cls):
                raise TypeError(f"{kind} layer {l} is a {type(layer).__name__}, not {cls.__name__}")
            if layer.cfg.d_model != d:
                raise ValueError(
                    f"{kind} layer {l} has d_model={layer.cfg.d_model}, the model has d_model={d}"
                )


def load_pretrained(model: str = "default", replacement: str | Path | None = None):
    """``(ReplacementModel, tokenizer)``: a toy model (zoo name or checkpoint directory) with
    its replacement set (a directory; default: the one shipped for that zoo entry, also when
    the entry is given by its directory)."""
    from toy_models.zoo import SHIPPED_DIR as MODEL_ZOO
    from toy_models.zoo import UnknownModelError, resolve_model_dir
    from toy_models.zoo import load_pretrained as load_toy_model

    toy_model, tokenizer = load_toy_model(model)
    if replacement is None:
        from toy_models.files import cut_short

        directory = resolve_model_dir(model)
        if directory.resolve().parent != MODEL_ZOO.resolve():
            raise UnknownModelError(f"{model}: a checkpoint outside the zoo has no shipped "
                                    "replacement set; pass replacement=DIR (--replacement on "
                                    "the command line)")  # fmt: skip
        entry = directory.resolve().name  # (a link to a zoo entry: the entry's name)
        replacement = SHIPPED_DIR / entry
        why = cut_short(replacement)
        if why:
            raise UnknownModelError(f"{why}; ship the set again (python -m replacement.ship "
                                    f"SET --model {entry}) or rename that back")  # fmt: skip
        if not (replacement / CONFIG_FILE).is_file():
            raise UnknownModelError(f"no replacement set is shipped for {entry!r}; pass "
                                    "replacement=DIR (--replacement on the command "
                                    "line)")  # fmt: skip
    loaded = ReplacementModel.load(replacement, toy_model)
    loaded.eval()
    return loaded, tokenizer
