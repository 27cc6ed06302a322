"""Corpus statistics for expected attribution: one job, what a corpus sample says about units
(the ``Statistics`` data, its file, its queries) and how it is gathered.

Over ``rows`` held-out corpus rows of ``n_ctx`` tokens, run in local (or sparse) mode, it holds
(units are numbered by ``circuits.units``):

- ``activity[u]``: the sum of unit u's activations (1 per occurrence for tokens and errors),
  and ``count[u]``: its number of occurrences;
- ``blocks[S - 1][s, t - start(S)]`` for each target stage S = 1 .. 2L: the sum, over every
  occurrence of unit s and of unit t in the sample, of the exact local edge s -> t (frozen
  patterns and LayerNorm scales, DESIGN.md section 5): units below S x units of S;
- ``write_final[u]``: unit u's summed centred write vector divided by the final LayerNorm scale
  where it was written (embeddings include their position), for logits, which every position
  reads.

Expected attribution ``E[s -> t] = sum of edges s -> t / sum of a_s`` and mean input
``sum of edges s -> t / occurrences of t`` are the queries (``expected_into``, ``expected_from``,
``mean_input``). A row's edges are summed per unit pair in closed form rather than listed: a
Lorsa head i at query q reads source s (at key ``k_s <= q``) with
``A[h(i), q, k_s] * write_s . P w_v^i / sigma1[k_s]``, so over the queries where i fired the
pattern sums to its *mass* on each key, ``sum_q A[h(i), q, k]``; a feature f at position p reads
the sources at p with ``write_s . P W_enc[:, f] / sigma2[p]``, one batched product per position.
The tests check these sums against the summed edges of ``circuits.attribution``'s local graphs.

The file (safetensors: ``block.{S}``, ``activity``, ``count``, ``write_final``; JSON metadata
with the format version, unit sizes, gathering settings, the identity of the model, replacement
layers and tokenizer, and a SHA-256 over the tensors) is untrusted: every field is checked
before use, and a damaged, foreign or mismatched file is refused in one line naming it.
Gathering saves it every ``CHECKPOINT_EVERY`` rows (atomically) and resumes from it; a resumed
or extended run sums the same rows in the same order as an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from replacement.model import MODES, ReadWrite, ReplacementModel, center
from toy_models.data import stream_rows
from toy_models.files import replace_atomic
from toy_models.model import fingerprint

from .attribution import PromptRun, pad_by_position, run_prompt
from .nodes import Kind, lorsa_stage, transcoder_stage
from .units import Units

STATS_VERSION = 2  # 2: identity of model, replacement layers and tokenizer; tensor checksum
SPLIT = "heldout"  # statistics describe text the model was not trained on
DEFAULT_ROWS = 128  # rows a first global graph gathers (statistics_for, gather_statistics)
DEFAULT_N_CTX = 64  # tokens per row
CHECKPOINT_EVERY = 8  # rows between checkpoints: a few seconds of work lost at most
# Divisor floor for sums per unit of activity: a unit that never fired has activity 0 and
# every edge sum 0, so its expected attribution is 0 rather than NaN.
ACTIVITY_FLOOR = 1e-12
DEFAULT_STATS_DIR = Path("runs/global-stats")


def identity(replacement: ReplacementModel, tokenizer=None) -> dict[str, str | None]:
    """What statistics are bound to: SHA-256 digests of the toy model (``fingerprint``), of the
    replacement layers (configs and weights) and of the tokenizer that cut the corpus rows."""
    digest = hashlib.sha256()
    configs = [asdict(layer.cfg) for layer in (*replacement.lorsas, *replacement.transcoders)]
    digest.update(json.dumps(configs, sort_keys=True).encode())
    for name, tensor in sorted(replacement.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    tokens = None if tokenizer is None else tokenizer.to_str().encode()
    return {
        "model": fingerprint(replacement.model),
        "replacement": digest.hexdigest(),
        "tokenizer": None if tokens is None else hashlib.sha256(tokens).hexdigest(),
    }


# ----------------------------------------------------------------- the data
@dataclass
class Statistics:
    """Summed local edges between units, per target stage, with each unit's summed activity,
    occurrence count and write vector over sigma_final (module docstring). ``meta``: the
    gathering settings (``rows``, ``n_ctx``, ``seed``, ``mode``, ``split``), ``rows_done``,
    ``seconds`` and ``identity``."""

    units: Units
    blocks: list[Float[Tensor, "below stage_units"]]  # index S - 1 for target stage S = 1 .. 2L
    activity: Float[Tensor, " unit"]
    count: Float[Tensor, " unit"]
    write_final: Float[Tensor, "unit d_model"]
    meta: dict

    @classmethod
    def empty(cls, units: Units, d_model: int, meta: dict) -> Statistics:
        blocks = [torch.zeros(units.start(s), units.sizes[s]) for s in range(1, units.logit_stage)]
        zeros = torch.zeros(units.total)
        return cls(units, blocks, zeros, zeros.clone(), torch.zeros(units.total, d_model), meta)

    def edge_block(self, target_stage: int) -> Float[Tensor, "below stage_units"]:
        return self.blocks[target_stage - 1]

    @property
    def positions(self) -> int:
        """Token positions in the sample (every row is ``n_ctx`` long)."""
        return self.meta["rows_done"] * self.meta["n_ctx"]

    # ------------------------------------------------------------- queries
    def expected_into(self, target: int, replacement: ReplacementModel) -> tuple[Tensor, Tensor]:
        """Expected attribution from every unit below ``target``: (units, weights)."""
        kind, stage, _ = self.units.describe(target)
        if kind in (Kind.EMBEDDING, Kind.ERROR):
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        below = self.units.start(stage)
        summed = self._summed_into(target, replacement)
        return torch.arange(below), summed / self.activity[:below].clamp(min=ACTIVITY_FLOOR)

    def mean_input(
        self, target: int, replacement: ReplacementModel | None = None
    ) -> tuple[Tensor, Tensor]:
        """What feeds ``target`` on average: summed edges from every unit below it divided by
        the target's occurrences (a target-side view; ``expected_into`` is the source-side
        one, where a rare source with one strong edge stands out). A logit occurs at every
        position of the sample; it needs ``replacement`` for its reading direction."""
        kind, stage, _ = self.units.describe(target)
        if kind in (Kind.EMBEDDING, Kind.ERROR):
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        if kind == Kind.LOGIT and replacement is None:
            raise ValueError("a logit's mean input needs the replacement model")
        summed = self._summed_into(target, replacement)
        occurrences = self.positions if kind == Kind.LOGIT else self.count[target].clamp(min=1)
        return torch.arange(self.units.start(stage)), summed / occurrences

    def expected_from(self, source: int, replacement: ReplacementModel) -> tuple[Tensor, Tensor]:
        """Expected attribution from ``source`` into every unit above it: (units, weights)."""
        _, stage, _ = self.units.describe(source)
        starts = self.units.offsets
        parts, ids = [], []
        for target_stage in range(stage + 1, self.units.logit_stage):
            parts.append(self.edge_block(target_stage)[source])
            ids.append(torch.arange(int(starts[target_stage]), int(starts[target_stage + 1])))
        parts.append(replacement.read_write().unembed @ self.write_final[source])
        ids.append(torch.arange(self.units.start(self.units.logit_stage), self.units.total))
        return torch.cat(ids), torch.cat(parts) / self.activity[source].clamp(min=ACTIVITY_FLOOR)

    def _summed_into(self, target: int, replacement: ReplacementModel | None) -> Tensor:
        """Summed edges into ``target`` from every unit below it (logits: through the summed
        writes over sigma_final and the demeaned unembedding)."""
        kind, stage, index = self.units.describe(target)
        below = self.units.start(stage)
        if kind == Kind.LOGIT:
            return self.write_final[:below] @ replacement.read_write().unembed[index]
        return self.edge_block(stage)[:, target - below]

    # ------------------------------------------------------------- adding a prompt
    @torch.no_grad()
    def add_run(self, run: PromptRun, replacement: ReplacementModel) -> None:
        """Add one prompt's run: its sources' activity, occurrences and writes over
        sigma_final, and its local edges summed per unit pair (module docstring)."""
        rw = replacement.read_write()
        unit = self.units.of_nodes(run.kind, run.stage, run.index)
        self.activity.index_add_(0, unit, run.activation)
        self.count.index_add_(0, unit, torch.ones(len(unit)))
        inv_final = 1 / run.sigma_final[run.pos]
        self.write_final.index_add_(0, unit, center(run.write) * inv_final[:, None])
        for layer, lorsa in enumerate(replacement.lorsas):
            self._add_lorsa_edges(run, rw, layer, lorsa.cfg.group_size, unit)
            self._add_transcoder_edges(run, rw, layer, unit)

    def _add_lorsa_edges(
        self, run: PromptRun, rw: ReadWrite, layer: int, group_size: int, unit: Tensor
    ) -> None:
        stage = lorsa_stage(layer)
        n_src, nodes = run.stage_start(stage), run.select(Kind.LORSA, stage)
        heads, query = run.index[nodes], run.pos[nodes]
        active, which = torch.unique(heads, return_inverse=True)
        pattern = run.patterns[layer][heads // group_size, query]  # node key
        mass = torch.zeros(len(active), pattern.shape[1]).index_add_(0, which, pattern)
        key = run.pos[:n_src]
        inv_sigma = 1 / run.sigma1[layer]
        reads = (run.write[:n_src] @ rw.lorsa_read[layer][active].T) * inv_sigma[key, None]
        self._add_pair_sums(stage, unit[:n_src], active, reads * mass.T[key])  # src head

    def _add_transcoder_edges(
        self, run: PromptRun, rw: ReadWrite, layer: int, unit: Tensor
    ) -> None:
        stage = transcoder_stage(layer)
        n_src, nodes = run.stage_start(stage), run.select(Kind.TRANSCODER, stage)
        feats, pos = run.index[nodes], run.pos[nodes]
        reading = rw.tc_read[layer][feats] / run.sigma2[layer, pos, None]
        n_pos = len(run.tokens)
        t_at, t_valid = pad_by_position(pos, n_pos)
        s_at, s_valid = pad_by_position(run.pos[:n_src], n_pos)
        edges = reading[t_at] @ run.write[s_at].transpose(1, 2)  # pos t_slot s_slot
        valid = t_valid[:, :, None] & s_valid[:, None, :]
        pair = unit[s_at][:, None, :] * self.units.sizes[stage] + feats[t_at][:, :, None]
        self.edge_block(stage).view(-1).index_add_(0, pair[valid], edges[valid])

    def _add_pair_sums(self, stage: int, src_unit: Tensor, targets: Tensor, sums: Tensor) -> None:
        """Add ``sums[s, j]`` (per source node, per target index) into the stage's block."""
        src, inverse = torch.unique(src_unit, return_inverse=True)
        by_unit = torch.zeros(len(src), len(targets)).index_add_(0, inverse, sums)
        self.edge_block(stage)[src[:, None], targets[None, :]] += by_unit

    # ------------------------------------------------------------- files
    def tensors(self) -> dict[str, Tensor]:
        """The tensors, by their names in the file."""
        tensors = {f"block.{s + 1}": b.contiguous() for s, b in enumerate(self.blocks)}
        return tensors | {
            "activity": self.activity,
            "count": self.count,
            "write_final": self.write_final,
        }

    def save(self, path: str | Path) -> None:
        """Write the file atomically (a temp file beside it, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = self.tensors()
        header = {
            "version": STATS_VERSION,
            "units": {
                "d_vocab": self.units.d_vocab,
                "n_ov": self.units.n_ov,
                "d_sae": self.units.d_sae,
            },
            "meta": self.meta,
            "sha256": _tensors_sha256(tensors),
        }
        metadata = {"statistics": json.dumps(header)}
        replace_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(
        cls, path: str | Path, replacement: ReplacementModel | None = None, tokenizer=None
    ) -> Statistics:
        """Read and check a statistics file; with ``replacement`` (and ``tokenizer``, when the
        caller has it), refuse statistics of any other model, replacement set or tokenizer."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file missing: {path}")
        try:
            stats = _read_checked(path)
        except ValueError as exc:
            raise ValueError(f"{path}: not a readable statistics file ({exc})") from None
        if replacement is not None:
            stats.check_identity(path, identity(replacement, tokenizer), Units.of(replacement))
        return stats

    def check_identity(self, path: Path, expected: dict, units: Units) -> None:
        """Refuse (one line naming ``path``) statistics made for another model."""
        if units != self.units:
            raise ValueError(f"{path}: made for replacement layers of other sizes")
        found = self.meta["identity"]
        names = {"model": "toy model", "replacement": "replacement set", "tokenizer": "tokenizer"}
        for key, name in names.items():
            if expected[key] is not None and found[key] != expected[key]:
                raise ValueError(
                    f"{path}: made for another {name} ({key} sha256 {str(found[key])[:12]}..., "
                    f"this one is {expected[key][:12]}...)"
                )


def _tensors_sha256(tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------- checking a file
def _read_checked(path: Path) -> Statistics:
    """Every field of a statistics file, checked before use; a ValueError says what is wrong.
    Shapes and dtypes are compared with the header before any tensor is read."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if "statistics" not in metadata:
                raise ValueError("no statistics header")
            header = json.loads(metadata["statistics"])
            found = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118
            shapes = {name: tuple(s.get_shape()) for name, s in found.items()}
            units, meta, checksum = _check_header(header)
            _check_layout(units, shapes, {name: s.get_dtype() for name, s in found.items()})
            tensors = {name: f.get_tensor(name) for name in found}
    except ValueError:
        raise
    except Exception as exc:  # safetensors and json raise their own types on damaged files
        raise ValueError(" ".join(str(exc).split()) or type(exc).__name__) from None
    if _tensors_sha256(tensors) != checksum:
        raise ValueError("its tensors do not match the checksum in its header (damaged)")
    units = Units(**units)
    blocks = [tensors[f"block.{s}"] for s in range(1, units.logit_stage)]
    stats = Statistics(
        units, blocks, tensors["activity"], tensors["count"], tensors["write_final"], meta
    )
    _check_values(stats)
    return stats


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {bound}, not {value!r}")
    return value


def _check_header(header) -> tuple[dict, dict, str]:
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    version = header.get("version")
    if version != STATS_VERSION:
        raise ValueError(f"format version {version!r}, expected {STATS_VERSION}")
    units, meta, checksum = header.get("units"), header.get("meta"), header.get("sha256")
    if not isinstance(units, dict) or set(units) != {"d_vocab", "n_ov", "d_sae"}:
        raise ValueError("units must be an object with d_vocab, n_ov and d_sae")
    _check_int(units["d_vocab"], "units.d_vocab", 1)
    for name in ("n_ov", "d_sae"):
        sizes = units[name]
        if not isinstance(sizes, list) or not sizes:
            raise ValueError(f"units.{name} must be a non-empty list")
        for size in sizes:
            _check_int(size, f"units.{name}[]", 1)
    if len(units["n_ov"]) != len(units["d_sae"]):
        raise ValueError("units.n_ov and units.d_sae have different lengths")
    if not isinstance(meta, dict):
        raise ValueError("meta must be an object")
    rows = _check_int(meta.get("rows"), "meta.rows", 1)
    _check_int(meta.get("rows_done"), "meta.rows_done", 0, rows)
    _check_int(meta.get("n_ctx"), "meta.n_ctx", 1)
    _check_int(meta.get("seed"), "meta.seed", -(2**63), 2**63 - 1)
    if meta.get("mode") not in MODES or meta.get("split") != SPLIT:
        raise ValueError(f"meta.mode must be one of {MODES} and meta.split {SPLIT!r}")
    seconds = meta.get("seconds", 0.0)
    if type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"meta.seconds must be a finite number >= 0, not {seconds!r}")
    found = meta.get("identity")
    if not isinstance(found, dict) or set(found) != {"model", "replacement", "tokenizer"}:
        raise ValueError("meta.identity must be an object with model, replacement, tokenizer")
    if not all(v is None or isinstance(v, str) for v in found.values()):
        raise ValueError("meta.identity values must be strings or null")
    if not isinstance(checksum, str):
        raise ValueError("sha256 (of the tensors) is missing")
    return units, meta, checksum


def _check_layout(units: dict, shapes: dict, dtypes: dict) -> None:
    """The tensors the unit sizes imply, with their shapes, all float32; nothing else."""
    inner = [s for n, d in zip(units["n_ov"], units["d_sae"], strict=True) for s in (n + 1, d + 1)]
    sizes = [units["d_vocab"], *inner, units["d_vocab"]]
    starts = np.cumsum([0, *sizes]).tolist()
    total, write_shape = starts[-1], shapes.get("write_final", ())
    d_model = write_shape[1] if len(write_shape) == 2 and write_shape[1] > 0 else "d_model > 0"
    expected = {f"block.{s}": (starts[s], sizes[s]) for s in range(1, len(sizes) - 1)}
    expected |= {"activity": (total,), "count": (total,), "write_final": (total, d_model)}
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or extra:
        raise ValueError(
            f"its tensors do not match its unit sizes (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise ValueError(f"{name} has shape {shapes[name]}, its unit sizes imply {shape}")
        if dtypes[name] != "F32":
            raise ValueError(f"{name} is stored as {dtypes[name]}, not float32")


def _check_values(stats: Statistics) -> None:
    for name, tensor in stats.tensors().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    if (stats.count < 0).any() or (stats.count != stats.count.round()).any():
        raise ValueError("count holds values that are not occurrence counts")
    if (stats.activity < 0).any():
        raise ValueError("activity holds negative values")
    tokens = stats.count[: stats.units.d_vocab].double().sum()
    if tokens != stats.positions:
        raise ValueError(
            f"its token counts sum to {tokens:.0f}, not rows_done x n_ctx = {stats.positions}"
        )


# ----------------------------------------------------------------- gathering
@torch.no_grad()
def gather_statistics(
    replacement: ReplacementModel,
    tokenizer,
    rows: int = DEFAULT_ROWS,
    n_ctx: int = DEFAULT_N_CTX,
    seed: int = 0,
    mode: str = "local",
    progress: bool = True,
    checkpoint: Path | None = None,
) -> Statistics:
    """Sum the exact local edges of ``rows`` corpus rows (held-out split, ``n_ctx`` tokens)
    between units. With ``checkpoint``, saves there every ``CHECKPOINT_EVERY`` rows and at the
    end, and continues what it holds: a partial run, or fewer rows of the same settings (it is
    extended); a file of other settings, of more rows or of another model is refused."""
    expected = identity(replacement, tokenizer)
    settings = {"n_ctx": n_ctx, "seed": seed, "mode": mode, "split": SPLIT}
    if checkpoint is not None and Path(checkpoint).is_file():
        stats = Statistics.load(checkpoint)
        stats.check_identity(checkpoint, expected, Units.of(replacement))
        _check_settings(stats, settings, checkpoint)
        _check_rows(stats, rows, checkpoint)
    else:
        meta = {"rows": rows, **settings, "rows_done": 0, "seconds": 0.0, "identity": expected}
        stats = Statistics.empty(Units.of(replacement), replacement.cfg.d_model, meta)
    return _gather(replacement, tokenizer, stats, rows, checkpoint, progress)


def _check_settings(stats: Statistics, settings: dict, path: Path) -> None:
    """Refuse to continue a file gathered with other settings (another row stream)."""
    differ = [f"{k} {stats.meta[k]!r}" for k, v in settings.items() if stats.meta[k] != v]
    if differ:
        raise ValueError(
            f"{path}: holds statistics gathered with {', '.join(differ)}; remove it or choose "
            "another file"
        )


def _check_rows(stats: Statistics, rows: int, path: Path) -> None:
    """Refuse to continue a file that holds more rows than asked for (sums cannot shrink)."""
    done = stats.meta["rows_done"]
    if done > rows:
        raise ValueError(
            f"{path}: holds statistics over {done} rows, more than the {rows} asked for: ask "
            f"for {done} or more, or choose another file"
        )


def _gather(
    replacement: ReplacementModel,
    tokenizer,
    stats: Statistics,
    rows: int,
    checkpoint: Path | None,
    progress: bool,
) -> Statistics:
    """Continue ``stats`` up to ``rows``: the row stream is skipped past the rows already
    summed, so each row is added once and in order. The file is written when it changes."""
    replacement.eval()
    meta = stats.meta
    unsaved, meta["rows"] = meta["rows"] != rows, rows
    stream = stream_rows(tokenizer, meta["n_ctx"], meta["split"], meta["seed"])
    for _ in range(meta["rows_done"]):
        next(stream)
    bar = tqdm(total=meta["rows"], initial=meta["rows_done"], disable=not progress, desc="rows")
    t0, seconds = time.perf_counter(), meta["seconds"]
    while meta["rows_done"] < meta["rows"]:
        _, tokens = next(stream)
        stats.add_run(run_prompt(replacement, torch.tensor(tokens), meta["mode"]), replacement)
        meta["rows_done"] += 1
        meta["seconds"] = seconds + time.perf_counter() - t0
        bar.update()
        unsaved = True
        if checkpoint is not None and meta["rows_done"] % CHECKPOINT_EVERY == 0:
            stats.save(checkpoint)
            unsaved = False
    bar.close()
    if checkpoint is not None and unsaved:
        stats.save(checkpoint)
    return stats


def statistics_for(
    replacement: ReplacementModel,
    tokenizer,
    model: str,
    path: Path | None = None,
    rows: int | None = None,
) -> Statistics:
    """The statistics at ``path`` (default ``runs/global-stats/{model}.safetensors``), gathered
    first when missing, resumed when partial and extended when ``rows`` asks for more than
    they hold (``rows`` None: what the file was gathered for, or ``DEFAULT_ROWS``)."""
    path = Path(path or DEFAULT_STATS_DIR / f"{Path(model).name}.safetensors")
    if not path.is_file():
        rows = rows or DEFAULT_ROWS
        print(f"gathering statistics over {rows} rows into {path} (once)")
        return gather_statistics(replacement, tokenizer, rows=rows, checkpoint=path)
    stats = Statistics.load(path, replacement, tokenizer)
    done, rows = stats.meta["rows_done"], rows or stats.meta["rows"]
    if done == rows:
        return stats
    _check_rows(stats, rows, path)
    print(f"gathering statistics in {path}: from {done} to {rows} rows")
    return _gather(replacement, tokenizer, stats, rows, path, progress=True)
