"""Activation sets cached on disk, so that many short training runs (ablations of one layer)
read the same activations instead of each running the toy model again.

    python -m replacement.cache --model default --rows 8192 --out runs/acts-default
    python -m replacement.train --activations runs/acts-default --layers 1 \\
        --base replacement/zoo/default --out runs/layer1-k16

What is stored: for every cached layer, the four activations training reads, as whole rows
(Lorsa attends across positions, and transcoder tokens are shuffled from the same rows at read
time): ``lorsa_x`` (``ln1`` output), ``lorsa_y`` (``hook_attn_out``), ``tc_x`` (``ln2``
output), ``tc_y`` (``hook_mlp_out``), each ``(rows, n_ctx, d_model)``, plus the ``tokens``.
Storing the residual stream instead (``resid_pre`` of each layer, ``resid_mid``, the last
``resid_post``: 2L + 1 vectors a token instead of 4L) would save 44% at 4 layers, but targets
would be differences of large residuals (not the model's own ``hook_attn_out`` bits), every
read would rerun the LayerNorms, and a one-layer cache (``--layers 1``, 4 vectors a token)
would be no smaller; ``--dtype float16`` halves the size while keeping the format simple.

Files, one directory::

    manifest.json              the plan (model identity = ``fingerprint``, corpus split, seed,
                               rows, n_ctx, layers, dtype, chunk size, forward batch) and, for
                               every chunk written so far, its rows and the SHA-256 of each
                               tensor
    chunk-00000.safetensors    rows 0 .. chunk_rows-1: ``tokens`` and ``{kind}.{layer}``;
                               its metadata names the cache (``cache_id``) and its index

Each chunk is written atomically, then recorded in the manifest (atomically): a build killed at
any point continues with the next unrecorded chunk when rerun with the same arguments, and its
result is the same manifest and tensors as an uninterrupted build (rows are drawn from a seeded
stream and the model runs on the same batches; only the order of the two metadata entries in a
chunk's header may differ, which safetensors does not fix).

A reader checks the manifest field by field, the model's identity against the model it is
given, and every chunk's names, shapes, dtypes, index and the SHA-256 of each tensor it reads; a
missing, truncated, swapped or edited chunk is refused with its file named. Nothing is
unpickled.

Rows are those of ``toy_models.data.stream_rows(tokenizer, n_ctx, "train", seed)`` in order, so
training from a cache built with seed s sees exactly the rows that streaming with stream seed s
sees; with float32 storage and ``forward_batch`` equal to the training batch the activations are
the same bits as a streaming run over all layers (a different forward batch can change the last
bits of a batched matmul; so does streaming only some layers, since the toy model computes an
unhooked layer on a fused path).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from toy_models.cli import UserError, one_line
from toy_models.records import check_keys

from .activations import ActivationStore, layer_activations, shuffle_in
from .cache import MAX_PLAN_VALUE

LOCK_FILE = ".caching.lock"  # the process id of the build writing the cache (``take_lock``)
MANIFEST_FILE = "manifest.json"
CHUNK_FILE = "chunk-{:05d}.safetensors"
FORMAT = "activation-cache/1"
KINDS = ("lorsa_x", "lorsa_y", "tc_x", "tc_y")
DTYPES = ("float32", "float16", "bfloat16")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class CachePlan:
    """What a cache holds; two builds with the same plan write the same bytes."""

    model_sha256: str
    n_ctx: int
    d_model: int
    layers: list[int]
    split: str
    seed: int
    rows: int
    chunk_rows: int
    forward_batch: int
    dtype: str

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.rows / self.chunk_rows)

    def chunk_size(self, index: int) -> int:
        return min(self.chunk_rows, self.rows - index * self.chunk_rows)

    def tensor_names(self, layers: list[int] | None = None) -> list[str]:
        """The tokens, then every kind of each of ``layers`` (default: the plan's)."""
        layers = self.layers if layers is None else layers
        return ["tokens", *(f"{kind}.{l}" for l in layers for kind in KINDS)]

    @property
    def row_bytes(self) -> int:
        """The tensor bytes of one row: its tokens and every stored activation."""
        return self.n_ctx * (
            4 + len(KINDS) * len(self.layers) * self.d_model * DTYPE_BYTES[self.dtype]
        )

    def chunk_bytes(self, index: int) -> int:
        """The tensor bytes of one chunk (its file adds a header of a few KB)."""
        return self.chunk_size(index) * self.row_bytes

    def cache_id(self) -> str:
        from toy_models.checkpoint import json_sha256

        return json_sha256(asdict(self))

    @classmethod
    def from_json(cls, data, where: str) -> CachePlan:
        """Every field checked: a manifest is untrusted input."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: 'plan' must be a JSON object")
        check_keys(data, f"{where}: its plan", [f.name for f in fields(cls)])

        def positive(name, lo=1):
            v = data[name]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= MAX_PLAN_VALUE:
                raise ValueError(f"{where}: plan.{name} must be an integer in {lo}..2**40, "
                                 f"got {v!r}")  # fmt: skip

        for name in ("n_ctx", "d_model", "rows", "chunk_rows", "forward_batch"):
            positive(name)
        positive("seed", 0)
        sha = data["model_sha256"]
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError(f"{where}: plan.model_sha256 is not a SHA-256, got {sha!r}")
        layers = data["layers"]
        if (
            not isinstance(layers, list)
            or not layers
            or not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in layers)
            or layers != sorted(set(layers))
        ):
            raise ValueError(
                f"{where}: plan.layers must be increasing layer indices, got {layers!r}"
            )
        if data["split"] not in SPLITS:
            raise ValueError(f"{where}: plan.split must be one of {SPLITS}, got {data['split']!r}")
        if data["dtype"] not in DTYPES:
            raise ValueError(f"{where}: plan.dtype must be one of {DTYPES}, got {data['dtype']!r}")
        return cls(**data)


def _first_difference(a: dict, b: dict) -> str:
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} there, {b.get(key)!r} here"
    return "identical"


def tensor_sha256(tensor) -> str:
    """SHA-256 of a tensor's bytes (any dtype; shape and dtype are checked separately)."""
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


# ----------------------------------------------------------------- the manifest
def read_manifest(directory: Path) -> tuple[CachePlan, list[dict]]:
    """The plan and the recorded chunks of a cache directory, every field checked."""
    from toy_models.checkpoint import read_json
    from toy_models.files import check_readable_file

    path = Path(directory) / MANIFEST_FILE
    if not os.path.lexists(path):
        raise UserError(f"{directory}: not an activation cache (no {MANIFEST_FILE})")
    try:
        check_readable_file(path, "cache manifest")  # a FIFO or folder there: said so
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not an activation cache manifest (format {data.get('format')!r})"
        )
    check_keys(data, str(path), ("format", "plan", "cache_id", "chunks"))
    plan = CachePlan.from_json(data.get("plan"), str(path))
    if data.get("cache_id") != plan.cache_id():  # written with its plan: the two agree
        raise ValueError(f"{path}: its cache_id is not its plan's ({plan.cache_id()[:12]}...): "
                         "the manifest was edited; remove the cache to build it again, or "
                         "build into another --out")  # fmt: skip
    chunks = data.get("chunks")
    if not isinstance(chunks, list) or len(chunks) > plan.n_chunks:
        raise ValueError(f"{path}: 'chunks' must be a list of at most {plan.n_chunks} chunks")
    names = set(plan.tensor_names())
    for i, chunk in enumerate(chunks):
        ok = (
            isinstance(chunk, dict)
            and chunk.get("file") == CHUNK_FILE.format(i)
            and chunk.get("rows") == plan.chunk_size(i)
            and isinstance(chunk.get("sha256"), dict)
            and set(chunk["sha256"]) == names
            and all(
                isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h)
                for h in chunk["sha256"].values()
            )
        )
        if not ok:
            raise ValueError(f"{path}: chunk record {i} is invalid (file, rows or sha256 table)")
    return plan, chunks


def _write_manifest(directory: Path, plan: CachePlan, chunks: list[dict]) -> None:
    from toy_models.files import write_json_atomic

    write_json_atomic(
        directory / MANIFEST_FILE,
        {"format": FORMAT, "plan": asdict(plan), "cache_id": plan.cache_id(), "chunks": chunks},
    )


# ----------------------------------------------------------------- building
def build_cache(
    model,
    tokenizer,
    out: Path,
    rows: int,
    *,
    layers: list[int] | None = None,
    split: str = "train",
    seed: int = 0,
    chunk_rows: int = 256,
    forward_batch: int = 16,
    dtype: str = "float32",
    quiet: bool = False,
    stop_after_chunks: int | None = None,
) -> CachePlan:
    """Write (or finish) the cache of ``rows`` rows of ``model`` in ``out``; see the module
    docstring. A directory holding a cache with another plan is refused, naming the first
    difference. ``stop_after_chunks`` ends the build after that many chunks are recorded, as
    an interruption would. Two builds into one folder each wrote the manifest over the
    other's: the folder's ``LOCK_FILE`` refuses the second in one line (a killed build's lock
    is taken over)."""
    from toy_models.checkpoint import fingerprint
    from toy_models.files import WriteError, check_writable_dir, release_lock, take_lock

    if chunk_rows % forward_batch:
        raise UserError(f"--chunk-rows {chunk_rows} must be a multiple of --batch {forward_batch}")
    layers = list(range(model.cfg.n_layers)) if layers is None else sorted(set(layers))
    bad = [l for l in layers if not 0 <= l < model.cfg.n_layers]
    if bad:
        raise UserError(f"layers {bad} out of range: the model has {model.cfg.n_layers} layers")
    plan = CachePlan(
        fingerprint(model), model.cfg.n_ctx, model.cfg.d_model, layers, split, seed, rows,
        chunk_rows, forward_batch, dtype,
    )  # fmt: skip
    try:  # a plan its own reader would refuse: every later use of the cache would fail
        CachePlan.from_json(asdict(plan), "the cache's plan")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(out)
    # its own kind (a cache to resume) kept; a graph's or report's outputs refused
    check_writable_dir(out, own=(MANIFEST_FILE,), sets_refused=True)
    lock = out / LOCK_FILE
    try:
        take_lock(lock, "caching activations there; wait for it or choose another --out")
    except WriteError as exc:
        raise UserError(f"{out}: {exc.strerror}") from None
    try:
        return _build(model, tokenizer, out, plan, layers, quiet, stop_after_chunks)
    finally:
        release_lock(lock)


def _build(model, tokenizer, out: Path, plan: CachePlan, layers, quiet, stop_after_chunks):
    """``build_cache``'s work in ``out``, its lock held: resume or start, then every chunk."""
    from safetensors.torch import save
    from tqdm import tqdm

    from toy_models.data import stream_rows
    from toy_models.files import replace_atomic

    chunk_rows, forward_batch, dtype = plan.chunk_rows, plan.forward_batch, plan.dtype
    split, seed = plan.split, plan.seed
    chunks: list[dict] = []
    if (out / MANIFEST_FILE).exists():
        old_plan, chunks = read_manifest(out)
        if old_plan != plan:
            diff = _first_difference(asdict(old_plan), asdict(plan))
            raise UserError(f"{out} holds another activation cache ({diff})")
        chunks = _intact_chunks(out, plan, chunks, quiet, model.cfg.d_vocab)
    else:  # a run writes its manifest before any chunk: chunks without one are someone's
        strays = sorted(out.glob(CHUNK_FILE.replace("{:05d}", "*")))
        if strays:  # (a fresh run overwrote them, exit 0: found by a fuzz pass)
            raise UserError(f"{strays[0]}: a chunk file with no {MANIFEST_FILE} beside it, not "
                            "written by a cache run here; move it away or choose another "
                            "--out")  # fmt: skip
    _check_space(out, plan, len(chunks))
    _write_manifest(out, plan, chunks)
    cache_id, storage = plan.cache_id(), getattr(torch, dtype)
    every = list(range(model.cfg.n_layers))
    stream = stream_rows(tokenizer, plan.n_ctx, split, seed)
    for _ in range(len(chunks) * chunk_rows):  # rows of recorded chunks: tokenized, not run
        next(stream)
    with tqdm(
        total=plan.n_chunks, initial=len(chunks), desc="cache activations", disable=quiet
    ) as bar:
        for index in range(len(chunks), plan.n_chunks):
            if stop_after_chunks is not None and len(chunks) >= stop_after_chunks:
                return plan
            n = plan.chunk_size(index)
            tokens = torch.tensor([next(stream)[1] for _ in range(n)])
            # every layer hooked, whatever is stored: the toy model computes an unhooked layer
            # on a fused path whose last bits differ, and a layer's stored activations must
            # not depend on which others are stored (streaming training hooks them all)
            parts = [layer_activations(model, t, every) for t in tokens.split(forward_batch)]
            tensors = {"tokens": tokens.to(torch.int32)}
            for k, kind in enumerate(KINDS):
                acts = torch.cat([p[k] for p in parts], dim=1).to(storage)  # (layer, rows, ...)
                for l in layers:
                    tensors[f"{kind}.{l}"] = acts[l].contiguous()
            meta = {"cache_id": cache_id, "chunk": str(index)}
            data = save(tensors, metadata=meta)
            replace_atomic(out / CHUNK_FILE.format(index), lambda tmp, d=data: tmp.write_bytes(d))
            chunks.append(
                {
                    "file": CHUNK_FILE.format(index),
                    "rows": n,
                    "sha256": {name: tensor_sha256(t) for name, t in tensors.items()},
                }
            )
            _write_manifest(out, plan, chunks)
            bar.update(1)
    return plan


def _check_space(out: Path, plan: CachePlan, done: int) -> None:
    """Refuse before any work when the chunks still to write cannot fit on ``out``'s disk (a
    build that fills it fails hours in); each chunk is written whole and then renamed. The
    sum over the chunks left, in closed form: every chunk but the last is full (a loop over
    them ran for hours at ``--rows`` of 1e14, found by a fuzz pass)."""
    rows_left = max(0, plan.rows - done * plan.chunk_rows)
    need = rows_left * plan.row_bytes + (plan.n_chunks - done) * 2**16
    free = shutil.disk_usage(out).free
    if need > free:
        smaller = " or --dtype float16" if plan.dtype == "float32" else ""
        raise UserError(f"{out}: the cache needs {_size(need)} more and its disk has "
                        f"{_size(free)} free; store fewer --rows or --layers{smaller}")  # fmt: skip


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _intact_chunks(
    out: Path, plan: CachePlan, chunks: list[dict], quiet: bool, vocab: int
) -> list[dict]:
    """The recorded chunks up to the first that is missing or damaged (read whole and checked
    against the manifest, ``read_chunk``): a rerun builds again from there, so the finished
    cache is whole whatever happened to its files."""
    for index, record in enumerate(chunks):
        try:
            read_chunk(out, plan, index, record, plan.layers, vocab)
        except (OSError, ValueError) as exc:
            if not quiet:
                print(f"rebuilding from chunk {index}: {exc}", file=sys.stderr)
            return chunks[:index]
    return chunks


# ----------------------------------------------------------------- reading
def read_chunk(
    directory: Path, plan: CachePlan, index: int, record: dict, layers: list[int], vocab: int
):
    """The tensors of chunk ``index`` for ``layers`` (and the tokens), float32 but the tokens,
    after checking the file against the plan and ``record`` (its manifest entry): tensor names,
    the cache and chunk it says it is, each shape and dtype, each tensor's SHA-256, and then
    its values: activations finite, token ids below ``vocab`` (the model's). A manifest whose
    hashes were made for the forged chunk passed every other check (a fault pass): a NaN was
    reported as the training run diverging ("start a new run", which diverged again), and a
    token id past the vocabulary reached the model's embedding."""
    from safetensors import safe_open

    from toy_models.files import check_readable_file

    path = Path(directory) / CHUNK_FILE.format(index)
    # what stands there said (a directory or a link to /dev/zero was called "missing")
    check_readable_file(path, "activation cache chunk")
    n = record["rows"]
    out = {}
    try:
        with safe_open(str(path), "pt") as f:
            if set(f.keys()) != set(plan.tensor_names()):
                raise ValueError(f"{path}: tensors differ from the manifest's")
            meta = f.metadata() or {}
            if meta.get("cache_id") != plan.cache_id() or meta.get("chunk") != str(index):
                raise ValueError(
                    f"{path}: is chunk {meta.get('chunk')!r} of cache "
                    f"{str(meta.get('cache_id'))[:12]}..., not chunk {index} of this cache"
                )
            for name in plan.tensor_names(layers):
                t = f.get_tensor(name)
                shape = (n, plan.n_ctx) if name == "tokens" else (n, plan.n_ctx, plan.d_model)
                dtype = torch.int32 if name == "tokens" else getattr(torch, plan.dtype)
                if tuple(t.shape) != shape or t.dtype != dtype:
                    raise ValueError(f"{path}: {name} is {t.dtype} {tuple(t.shape)}")
                if tensor_sha256(t) != record["sha256"][name]:
                    raise ValueError(f"{path}: {name} differs from the manifest (sha256)")
                if name == "tokens":
                    if t.numel() and not (0 <= int(t.min()) and int(t.max()) < vocab):
                        raise ValueError(f"{path}: tokens holds ids outside the model's "
                                         f"vocabulary (0..{vocab - 1})")  # fmt: skip
                elif not torch.isfinite(t).all():
                    raise ValueError(f"{path}: {name} holds NaN or infinite values")
                out[name] = t if name == "tokens" else t.float()
    except (ValueError, OSError):
        raise
    except Exception as exc:  # safetensors' own errors on truncated or damaged files
        raise ValueError(f"{path}: unreadable chunk ({one_line(exc)})") from None
    return out


class ActivationCache:
    """A complete cache directory, checked against ``model``; ``rows(layers, start, n)``
    reads rows (wrapping around at the end) of the given layers, verifying each tensor read."""

    def __init__(self, directory: Path, model):
        from toy_models.checkpoint import fingerprint

        self.directory = Path(directory)
        self.plan, self.chunks = read_manifest(self.directory)
        if len(self.chunks) < self.plan.n_chunks:
            raise UserError(
                f"activation cache {self.directory} is incomplete ({len(self.chunks)} of "
                f"{self.plan.n_chunks} chunks); rerun python -m replacement.cache with the same "
                "arguments to finish it"
            )
        sha = fingerprint(model)
        if sha != self.plan.model_sha256:
            raise UserError(
                f"activation cache {self.directory} was built from another model (identity "
                f"{self.plan.model_sha256[:12]}..., the given model is {sha[:12]}...)"
            )
        if (model.cfg.n_ctx, model.cfg.d_model) != (self.plan.n_ctx, self.plan.d_model):
            raise ValueError(f"{self.directory / MANIFEST_FILE}: n_ctx or d_model differ")
        self.vocab = model.cfg.d_vocab
        self._loaded: tuple[int, tuple[int, ...], dict] | None = None

    def check_layers(self, layers: list[int]) -> None:
        missing = [l for l in layers if l not in self.plan.layers]
        if missing:
            raise UserError(
                f"activation cache {self.directory} holds layers {self.plan.layers}, not {missing}"
            )

    def chunk(self, index: int, layers: list[int]) -> dict:
        """The tensors of chunk ``index`` for ``layers`` (and the tokens), as float32."""
        if self._loaded is not None and self._loaded[:2] == (index, tuple(layers)):
            return self._loaded[2]
        out = read_chunk(self.directory, self.plan, index, self.chunks[index], layers, self.vocab)
        self._loaded = (index, tuple(layers), out)
        return out

    def rows(self, layers: list[int], start: int, n: int) -> tuple:
        """Rows ``start .. start + n - 1`` (modulo the cache's rows): Lorsa x, y and
        transcoder x, y, each ``(layer, n, pos, d)`` in the order of ``layers``."""
        pieces: list[list] = [[] for _ in KINDS]
        row = start % self.plan.rows
        while n > 0:
            index, offset = divmod(row, self.plan.chunk_rows)
            take = min(n, self.plan.chunk_size(index) - offset)
            tensors = self.chunk(index, layers)
            for k, kind in enumerate(KINDS):
                pieces[k].append(
                    torch.stack([tensors[f"{kind}.{l}"][offset : offset + take] for l in layers])
                )
            n -= take
            row = (row + take) % self.plan.rows
        return tuple(p[0] if len(p) == 1 else torch.cat(p, dim=1) for p in pieces)

    def tokens(self, start: int, n: int):
        """The token ids of rows ``start .. start + n - 1`` (modulo the rows)."""
        out, row = [], start % self.plan.rows
        while n > 0:
            index, offset = divmod(row, self.plan.chunk_rows)
            take = min(n, self.plan.chunk_size(index) - offset)
            out.append(self.chunk(index, self.plan.layers[:1])["tokens"][offset : offset + take])
            n -= take
            row = (row + take) % self.plan.rows
        return torch.cat(out).long()


class CachedActivationStore(ActivationStore):
    """An ``ActivationStore`` whose rows come from an ``ActivationCache``: the same batches and
    token shuffle, with ``sequences`` reading ``batch_size`` stored rows instead of running the
    model. Rows are read in order from the cache's first and wrap around at its end
    (``epochs`` says how many passes were read); ``skip`` moves a new store to where a store
    that has been read stands (a resumed run)."""

    def __init__(
        self,
        cache: ActivationCache,
        layers: list[int],
        batch_size: int = 16,
        seed: int = 0,
        buffer_batches: int = 8,
    ):
        cache.check_layers(layers)
        self.cache, self.batch_size, self.layers = cache, batch_size, list(layers)
        self.n_layers = len(self.layers)
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer_batches = buffer_batches
        self._buffer = None
        self.row = 0

    @property
    def epochs(self) -> float:
        return self.row / self.cache.plan.rows

    def sequences(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.cache.rows(self.layers, self.row, self.batch_size)
        self.row += self.batch_size
        return out

    def skip(self, sequences: int, batches: int) -> None:
        """Stand as after ``sequences`` calls of ``sequences`` then ``batches`` of ``next``:
        the same row, shuffle generator and buffer, the same bits from there on. The shuffle
        is replayed on token indices, so only the tokens left in the buffer are read."""
        if self._buffer is not None:
            raise ValueError("skip is for a store not read yet")
        self.row += sequences * self.batch_size
        ids = None  # the buffer as indices of stored tokens: row * n_ctx + position
        for _ in range(batches):
            fresh = self._token_ids()
            if ids is None:
                more = [self._token_ids() for _ in range(self.buffer_batches - 1)]
                ids = torch.cat([fresh, *more])
            shuffle_in(ids, fresh, self.generator)
        if ids is not None:
            self._buffer = self._stored_tokens(ids)

    def _token_ids(self) -> Tensor:
        """The token indices ``sequences`` would read next, in its order; moves on as it does."""
        n_ctx = self.cache.plan.n_ctx
        rows = torch.arange(self.row, self.row + self.batch_size) % self.cache.plan.rows
        self.row += self.batch_size
        return (rows[:, None] * n_ctx + torch.arange(n_ctx)).flatten()

    def _stored_tokens(self, ids: Tensor) -> Tensor:
        """Transcoder pairs of the stored tokens ``ids``, ``(tokens, layer, 2, d_model)`` as
        the buffer holds them, reading each chunk once."""
        plan = self.cache.plan
        out = torch.empty(len(ids), self.n_layers, 2, plan.d_model)
        chunk_of = ids // (plan.chunk_rows * plan.n_ctx)
        for index in chunk_of.unique().tolist():
            at = (chunk_of == index).nonzero().flatten()
            local = ids[at] - index * plan.chunk_rows * plan.n_ctx
            tensors = self.cache.chunk(index, self.layers)
            for k, kind in enumerate(("tc_x", "tc_y")):
                for i, l in enumerate(self.layers):
                    out[at, i, k] = tensors[f"{kind}.{l}"].flatten(0, 1)[local]
        return out
