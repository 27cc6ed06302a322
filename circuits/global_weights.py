"""Global circuits: prompt-independent weights between the units of a replacement model.

A *unit* is what a local graph's node is an occurrence of: a token's embedding, a Lorsa head, a
transcoder feature, a layer's error term, a logit. Units are numbered stage by stage (the order
of ``circuits.graph``): ``V`` token units, then per layer its Lorsa heads plus one attention-error
unit and its features plus one MLP-error unit, then ``V`` logit units.

Two kinds of weights (DESIGN.md section 5, "Global circuits"):

- **Virtual weights**, from the weights alone: ``(P d_s) . r_t`` where ``d_s`` is the source's
  decoder vector (``w_o``, a decoder row, a token embedding), ``P`` the LayerNorm centring and
  ``r_t`` what the target reads (``w_v`` for a Lorsa head, an encoder column, a demeaned
  unembedding column). For a Lorsa QK head the bilinear ``(P d_s) W_Q W_K^T (P d_t) / sqrt(d_qk)``
  says which key-side units a head looks for given query-side units.
- **Expected attribution**: the local graph's exact edges summed over a corpus sample and
  divided by the source's total activity, ``E[s -> t] = sum of edges s -> t / sum of a_s``: a
  virtual weight scaled by how strongly (1 / sigma, attention) and how often the two units act
  together. Units that never fire together get 0. Logit targets, which every position reads,
  use the virtual weight times the source's activity-weighted mean ``1 / sigma_final``.

Nothing of size units x units is ever formed for virtual weights (top-k per target in blocks);
expected attribution is stored as one dense block per target stage, units below it x its units.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from replacement.model import ReplacementModel

from .attribution import ERROR, LOGIT, center, run_prompt, unembedding

STATS_VERSION = 1


# ----------------------------------------------------------------- units
@dataclass(frozen=True)
class Units:
    """The numbering of units: stage blocks of sizes ``V, (n_ov+1, d_sae+1) x L, V``."""

    d_vocab: int
    n_ov: list[int]
    d_sae: list[int]

    @classmethod
    def of(cls, replacement: ReplacementModel) -> Units:
        return cls(
            replacement.cfg.d_vocab,
            [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas],
            [tc.cfg.d_sae for tc in replacement.transcoders],
        )

    @property
    def n_layers(self) -> int:
        return len(self.n_ov)

    @property
    def sizes(self) -> list[int]:
        inner = [s for n, d in zip(self.n_ov, self.d_sae, strict=True) for s in (n + 1, d + 1)]
        return [self.d_vocab, *inner, self.d_vocab]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def unit(self, kind: str, layer: int, index: int) -> int:
        """The unit of a kind ("embedding", "lorsa", "transcoder", "error", "logit")."""
        if kind == "embedding":
            return self._checked(0, index)
        if kind == "logit":
            return self._checked(2 * self.n_layers + 1, index)
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is outside 0..{self.n_layers - 1}")
        if kind == "error":  # index 0: attention, 1: MLP
            stage = 2 * layer + 1 + index
            return int(self.offsets[stage + 1] - 1)
        stage = 2 * layer + (1 if kind == "lorsa" else 2)
        if kind not in ("lorsa", "transcoder"):
            raise ValueError(f"unknown unit kind {kind!r}")
        return self._checked(stage, index, self.sizes[stage] - 1)

    def _checked(self, stage: int, index: int, size: int | None = None) -> int:
        size = self.sizes[stage] if size is None else size
        if not 0 <= index < size:
            raise ValueError(f"index {index} is outside 0..{size - 1}")
        return int(self.offsets[stage] + index)

    def describe(self, unit: int) -> tuple[str, int, int]:
        """(kind, stage, index) of a unit; an error unit's index is -1."""
        stage = int(np.searchsorted(self.offsets, unit, side="right") - 1)
        index = unit - int(self.offsets[stage])
        if stage == 0:
            return "embedding", 0, index
        if stage == 2 * self.n_layers + 1:
            return "logit", stage, index
        if index == self.sizes[stage] - 1:
            return "error", stage, -1
        return ("lorsa" if stage % 2 else "transcoder"), stage, index

    def of_nodes(self, kind: Tensor, stage: Tensor, index: Tensor) -> Tensor:
        """The unit of each node of a local graph (logit nodes included)."""
        offsets = torch.from_numpy(self.offsets[:-1])
        sizes = torch.tensor(self.sizes)
        unit = offsets[stage] + index
        err = kind == ERROR
        unit[err] = offsets[stage[err]] + sizes[stage[err]] - 1
        return unit


def decoders(replacement: ReplacementModel, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every source unit's write direction, centred (``P d``); zero for error and logit units."""
    m = replacement.model
    rows = [m.W_E]
    for lorsa, tc in zip(replacement.lorsas, replacement.transcoders, strict=True):
        zero = torch.zeros(1, m.cfg.d_model)
        rows += [lorsa.W_O, zero, tc.W_dec, zero]
    rows.append(torch.zeros(units.d_vocab, m.cfg.d_model))
    return center(torch.cat(rows).detach())


def readers(replacement: ReplacementModel, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every target unit's reading direction (``w_v``, an encoder column, a demeaned
    unembedding column), centred; zero for embeddings and errors."""
    m = replacement.model
    rows = [torch.zeros(units.d_vocab, m.cfg.d_model)]
    for lorsa, tc in zip(replacement.lorsas, replacement.transcoders, strict=True):
        zero = torch.zeros(1, m.cfg.d_model)
        rows += [lorsa.W_V, zero, tc.W_enc.T, zero]
    rows.append(unembedding(m))
    return center(torch.cat(rows).detach())


def stage_of(units: Units) -> np.ndarray:
    return np.repeat(np.arange(len(units.sizes)), units.sizes)


# ----------------------------------------------------------------- virtual weights
def virtual_weights(
    replacement: ReplacementModel, target: int, k: int = 20, upstream: bool = True
) -> tuple[Tensor, Tensor]:
    """The ``k`` strongest virtual weights into ``target`` from every unit below it
    (``upstream``), or out of it into every unit above: (units, weights), by |weight|."""
    units = Units.of(replacement)
    stage = stage_of(units)
    with torch.no_grad():
        if upstream:
            below = int(units.offsets[stage[target]])
            weights = decoders(replacement, units)[:below] @ readers(replacement, units)[target]
            candidates = torch.arange(below)
        else:
            above = int(units.offsets[stage[target] + 1])
            weights = readers(replacement, units)[above:] @ decoders(replacement, units)[target]
            candidates = torch.arange(above, units.total)
    top = weights.abs().topk(min(k, len(weights))).indices
    return candidates[top], weights[top]


@torch.no_grad()
def qk_virtual_weights(
    replacement: ReplacementModel,
    layer: int,
    qk_head: int,
    k: int = 20,
    scale: Tensor | None = None,
    block: int = 2048,
) -> list[tuple[int, int, float]]:
    """The ``k`` largest query-unit x key-unit terms ``(P d_s) W_Q W_K^T (P d_t) / sqrt(d_qk)``
    of one Lorsa QK head, over every pair of units below the layer (both sides), found in row
    blocks without forming the whole table. ``scale`` (per unit, optional) multiplies each
    decoder, e.g. by a unit's typical activation / sigma from corpus statistics."""
    units = Units.of(replacement)
    lorsa = replacement.lorsas[layer]
    below = int(units.offsets[2 * layer + 1])
    d = decoders(replacement, units)[:below]
    if scale is not None:
        d = d * scale[:below, None]
    query = d @ lorsa.W_Q[qk_head]  # unit d_qk
    key = d @ lorsa.W_K[qk_head] / math.sqrt(lorsa.cfg.d_qk)
    best_values, best_index = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, below, block):
        table = query[start : start + block] @ key.T  # block x unit
        flat = table.flatten().abs().topk(min(k, table.numel())).indices
        rows, cols = flat // below + start, flat % below
        best_values = torch.cat([best_values, table.flatten()[flat]])
        best_index = torch.cat([best_index, rows * below + cols])
        keep = best_values.abs().topk(min(k, len(best_values))).indices
        best_values, best_index = best_values[keep], best_index[keep]
    return [
        (int(i // below), int(i % below), float(v))
        for i, v in zip(best_index.tolist(), best_values.tolist(), strict=True)
    ]


# ----------------------------------------------------------------- expected attribution
@dataclass
class Statistics:
    """Corpus statistics of a replacement model: summed local edges between units, per target
    stage (``blocks[S]``: units below stage S x units of stage S), each unit's summed activity
    and occurrence count, and what logit targets need: each unit's summed write vector divided
    by the final LayerNorm scale where it was written (embeddings include their position)."""

    units: Units
    blocks: list[Tensor]  # index S - 1 for target stage S = 1 .. 2L
    activity: Tensor  # per unit: sum of activations (1 per occurrence for embeddings, errors)
    count: Tensor  # per unit: number of occurrences
    write_final: Tensor  # (unit, d_model): sum of centred write / sigma_final
    meta: dict

    def edge_block(self, target_stage: int) -> Tensor:
        return self.blocks[target_stage - 1]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"block.{s + 1}": b.contiguous() for s, b in enumerate(self.blocks)}
        tensors |= {
            "activity": self.activity,
            "count": self.count,
            "write_final": self.write_final,
        }
        header = {
            "version": STATS_VERSION,
            "units": {
                "d_vocab": self.units.d_vocab,
                "n_ov": self.units.n_ov,
                "d_sae": self.units.d_sae,
            },
            "meta": self.meta,
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"statistics": json.dumps(header)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, replacement: ReplacementModel | None = None) -> Statistics:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file missing: {path}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                header = json.loads(f.metadata()["statistics"])
            tensors = load_file(str(path))
            if header["version"] != STATS_VERSION:
                raise ValueError(f"version {header['version']}, expected {STATS_VERSION}")
            units = Units(**header["units"])
            blocks = [tensors[f"block.{s}"] for s in range(1, 2 * units.n_layers + 1)]
            stats = cls(
                units, blocks, tensors["activity"], tensors["count"], tensors["write_final"],
                header["meta"],
            )  # fmt: skip
        except Exception as exc:
            raise ValueError(f"{path}: not a readable statistics file ({exc})") from None
        if replacement is not None:
            if Units.of(replacement) != units:
                raise ValueError(f"{path}: made for replacement layers of other sizes")
            if stats.meta.get("model_sha256") not in (None, _sha(replacement)):
                raise ValueError(f"{path}: made for another model (weights hash differs)")
        return stats

    # ------------------------------------------------------------- weights
    def expected_into(self, target: int, replacement: ReplacementModel) -> tuple[Tensor, Tensor]:
        """Expected attribution from every unit below ``target``: (units, weights)."""
        kind, stage, _ = self.units.describe(target)
        offsets = self.units.offsets
        if kind in ("embedding", "error"):
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        below = int(offsets[stage])
        if kind == "logit":
            summed = self.write_final[:below] @ readers(replacement, self.units)[target]
        else:
            summed = self.edge_block(stage)[:, target - int(offsets[stage])]
        return torch.arange(below), summed / self.activity[:below].clamp(min=1e-12)

    def mean_input(
        self, target: int, replacement: ReplacementModel | None = None
    ) -> tuple[Tensor, Tensor]:
        """What feeds ``target`` on average: summed edges from every unit below it divided by
        the target's occurrences (a target-side view; ``expected_into`` is the source-side
        one, where a rare source with one strong edge stands out). A logit occurs at every
        position of the sample; it needs ``replacement`` for its reading direction."""
        kind, stage, _ = self.units.describe(target)
        below = int(self.units.offsets[stage])
        if kind in ("embedding", "error"):
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        if kind == "logit":
            if replacement is None:
                raise ValueError("a logit's mean input needs the replacement model")
            summed = self.write_final[:below] @ readers(replacement, self.units)[target]
            return torch.arange(below), summed / (self.meta["rows_done"] * self.meta["n_ctx"])
        column = self.edge_block(stage)[:, target - int(self.units.offsets[stage])]
        return torch.arange(below), column / self.count[target].clamp(min=1)

    def expected_from(self, source: int, replacement: ReplacementModel) -> tuple[Tensor, Tensor]:
        """Expected attribution from ``source`` into every unit above it: (units, weights)."""
        _, stage, _ = self.units.describe(source)
        offsets = self.units.offsets
        parts, ids = [], []
        for target_stage in range(stage + 1, 2 * self.units.n_layers + 1):
            parts.append(self.edge_block(target_stage)[source])
            ids.append(torch.arange(int(offsets[target_stage]), int(offsets[target_stage + 1])))
        logits = torch.arange(int(offsets[-2]), int(offsets[-1]))
        parts.append(readers(replacement, self.units)[logits] @ self.write_final[source])
        ids.append(logits)
        return torch.cat(ids), torch.cat(parts) / self.activity[source].clamp(min=1e-12)


def _sha(replacement: ReplacementModel) -> str:
    from toy_models.model import fingerprint

    return fingerprint(replacement.model)


@torch.no_grad()
def gather_statistics(
    replacement: ReplacementModel,
    tokenizer,
    rows: int = 48,
    n_ctx: int = 64,
    seed: int = 0,
    mode: str = "local",
    progress: bool = True,
    checkpoint: Path | None = None,
) -> Statistics:
    """Sum the exact local edges of ``rows`` corpus rows (held-out split, ``n_ctx`` tokens)
    between units. Resumes from ``checkpoint`` when it holds a partial run of the same
    settings, and saves there every few rows."""
    from tqdm import tqdm

    from toy_models.data import stream_rows

    from .attribution import attribute

    replacement.eval()
    units = Units.of(replacement)
    settings = {"rows": rows, "n_ctx": n_ctx, "seed": seed, "mode": mode, "split": "heldout"}
    meta = settings | {"model_sha256": _sha(replacement), "rows_done": 0}
    stats = _empty(units, replacement.cfg.d_model, meta)
    if checkpoint is not None and checkpoint.is_file():
        saved = Statistics.load(checkpoint, replacement)
        if all(saved.meta.get(k) == v for k, v in settings.items()):
            stats = saved
    stream = stream_rows(tokenizer, n_ctx, "heldout", seed)
    for _ in range(stats.meta["rows_done"]):
        next(stream)
    t0 = time.perf_counter()
    bar = tqdm(total=rows, initial=stats.meta["rows_done"], disable=not progress, desc="rows")
    while stats.meta["rows_done"] < rows:
        _, tokens = next(stream)
        run = run_prompt(replacement, torch.tensor(tokens), mode)
        graph = attribute(replacement, tokens, mode=mode, max_logits=1, run=run)
        _accumulate(stats, graph, run)
        stats.meta["rows_done"] += 1
        bar.update()
        if checkpoint is not None and stats.meta["rows_done"] % 8 == 0:
            stats.save(checkpoint)
    bar.close()
    stats.meta["seconds"] = stats.meta.get("seconds", 0) + time.perf_counter() - t0
    if checkpoint is not None:
        stats.save(checkpoint)
    return stats


DEFAULT_STATS_DIR = Path("runs/global-stats")


def statistics_for(
    replacement: ReplacementModel, tokenizer, model: str, path: Path | None = None, rows: int = 128
) -> Statistics:
    """The statistics at ``path`` (default ``runs/global-stats/{model}.safetensors``), gathered
    (or a partial run resumed) first when they are missing or incomplete."""
    path = path or DEFAULT_STATS_DIR / f"{Path(model).name}.safetensors"
    if path.is_file():
        stats = Statistics.load(path, replacement)
        if stats.meta.get("rows_done", 0) >= stats.meta.get("rows", 0):
            return stats
    print(f"gathering statistics over {rows} rows into {path} (once)")
    return gather_statistics(replacement, tokenizer, rows=rows, checkpoint=path)


def _empty(units: Units, d_model: int, meta: dict) -> Statistics:
    offsets, sizes = units.offsets, units.sizes
    blocks = [torch.zeros(int(offsets[s]), sizes[s]) for s in range(1, 2 * units.n_layers + 1)]
    return Statistics(
        units, blocks, torch.zeros(units.total), torch.zeros(units.total),
        torch.zeros(units.total, d_model), meta,
    )  # fmt: skip


def _accumulate(stats: Statistics, graph, run) -> None:
    """Add one local graph: its edges by (source unit, target unit), and source activities."""
    units = stats.units
    unit = units.of_nodes(graph.kind, graph.stage, graph.index)
    n_src = int((graph.kind != LOGIT).sum())
    src_unit, act = unit[:n_src], graph.activation[:n_src]
    stats.activity.index_add_(0, src_unit, act)
    stats.count.index_add_(0, src_unit, torch.ones(n_src))
    # Logits read the final residual at every position: per source, its write / sigma_final.
    inv_final = 1 / run.sigma_final[graph.pos[:n_src]]
    stats.write_final.index_add_(0, src_unit, center(run.write) * inv_final[:, None])
    # Edges, one target stage at a time (rows of a stage are contiguous, sorted by stage).
    edges = graph.edges
    stage = graph.stage.numpy()
    offsets = units.offsets
    for s in range(1, 2 * units.n_layers + 1):
        lo, hi = np.searchsorted(stage, s), np.searchsorted(stage, s, side="right")
        start, end = edges.indptr[lo], edges.indptr[hi]
        if start == end:
            continue
        counts = torch.from_numpy(np.diff(edges.indptr[lo : hi + 1]).astype(np.int64))
        rows = torch.repeat_interleave(torch.arange(lo, hi), counts)
        cols = torch.from_numpy(edges.indices[start:end].astype(np.int64))
        t_local = unit[rows] - int(offsets[s])
        key = unit[cols] * units.sizes[s] + t_local
        block = stats.edge_block(s)
        block.view(-1).index_add_(0, key, torch.from_numpy(edges.data[start:end]))


# ----------------------------------------------------------------- global graphs
def unit_label(units: Units, unit: int, replacement: ReplacementModel, stats, tokenizer) -> str:
    """What a unit is, and how it behaves on the corpus sample (firing count, mean activation)."""
    kind, stage, index = units.describe(unit)
    tok = (lambda i: tokenizer.decode([i])) if tokenizer is not None else (lambda i: f"<{i}>")
    layer = (stage - 1) // 2
    count = float(stats.count[unit]) if unit < len(stats.count) else 0.0
    mean = float(stats.activity[unit]) / max(count, 1.0) if unit < len(stats.count) else 0.0
    usage = f" ({count:.0f}x, mean {mean:.2f})"
    if kind == "embedding":
        return f"token {tok(index)!r}{usage}"
    if kind == "logit":
        return f"logit {tok(index)!r}"
    if kind == "error":
        return f"L{layer} {'attn' if stage % 2 else 'mlp'} error{usage}"
    if kind == "lorsa":
        h = index // replacement.lorsas[layer].cfg.group_size
        return f"L{layer} head {index} (QK {h}){usage}"
    W_U = unembedding(replacement.model)
    top = (W_U @ center(replacement.transcoders[layer].W_dec[index])).topk(3).indices.tolist()
    return f"L{layer} feature {index} -> {' '.join(repr(tok(t)) for t in top)}{usage}"


@torch.no_grad()
def global_graph(
    replacement: ReplacementModel,
    stats: Statistics,
    start: int,
    *,
    budget: int = 40,
    per_node: int = 8,
    upstream: bool = True,
    tokenizer=None,
):
    """A circuit grown from ``start``, best first: each unit's ``per_node`` strongest
    neighbours are candidates, scored by their share of the unit's total |weight| times the
    unit's own score; the best candidate joins until ``budget`` units.

    Upstream, weights are mean inputs (what feeds a unit per occurrence of it: the drivers
    that matter most often); downstream, expected attributions (a source's effect per unit of
    its activity). The returned ``Graph`` (position 0 for every node) holds the same kind of
    weight among all chosen units, records which in ``settings["edge_weights"]``, and has
    target weight 1 on ``start`` (so ``prune_graph`` works on upstream graphs)."""
    import heapq

    units = stats.units
    neighbours = stats.mean_input if upstream else stats.expected_from
    chosen: dict[int, float] = {}
    heap = [(-1.0, start)]
    while heap and len(chosen) < budget:
        neg_score, u = heapq.heappop(heap)
        if u in chosen:
            continue
        score = chosen[u] = -neg_score
        kind = units.describe(u)[0]
        if (upstream and kind in ("embedding", "error")) or (not upstream and kind == "logit"):
            continue  # nothing flows further that way
        ids, weights = neighbours(u, replacement)
        if not len(weights):
            continue
        total = weights.abs().sum().clamp(min=1e-12)
        top = weights.abs().topk(min(per_node, len(weights))).indices
        for v, w in zip(ids[top].tolist(), weights[top].abs().tolist(), strict=True):
            if v not in chosen and w > 0:
                heapq.heappush(heap, (-score * w / float(total), v))

    order = sorted(chosen)  # unit order is stage order
    read = stats.mean_input if upstream else stats.expected_into
    edges: dict[tuple[int, int], float] = {}
    for t in order:
        ids, weights = read(t, replacement)
        for s in order:
            if s < len(ids) and weights[s] != 0:
                edges[(s, t)] = float(weights[s])
    return _unit_graph(
        replacement, stats, order, edges, {start: 1.0}, tokenizer,
        settings={
            "start": unit_label(units, start, replacement, stats, tokenizer),
            "direction": "upstream" if upstream else "downstream",
            "edge_weights": "mean input per target occurrence"
            if upstream
            else "expected attribution per unit of source activity",
            "budget": budget,
            "per_node": per_node,
            "statistics": {k: v for k, v in stats.meta.items() if k != "model_sha256"},
        },
    )  # fmt: skip


def unit_node_id(units: Units, unit: int) -> str:
    """The id of a unit's node in a global graph: a node id at position 0."""
    from .graph import node_id

    kind, stage, index = units.describe(unit)
    return node_id(kind, stage, 0, index, index if kind == "embedding" else None)


def _unit_graph(
    replacement: ReplacementModel,
    stats: Statistics,
    order: list[int],
    edges: dict[tuple[int, int], float],
    target_weight: dict[int, float],
    tokenizer,
    settings: dict,
    qk: list | None = None,
):
    """A ``Graph`` over units (sorted, so in stage order) at position 0: ``edges`` maps
    (source unit, target unit) to a weight; activations are mean activations when active."""
    import scipy.sparse as sp

    from .graph import KINDS, Graph

    units = stats.units
    at = {u: i for i, u in enumerate(order)}
    described = [units.describe(u) for u in order]
    n = len(order)
    rows, cols = [at[t] for _, t in edges], [at[s] for s, _ in edges]
    values = np.array(list(edges.values()), dtype=np.float32)
    weights = torch.zeros(n)
    for u, w in target_weight.items():
        weights[at[u]] = w
    mean = stats.activity / stats.count.clamp(min=1)
    return Graph(
        prompt="",
        tokens=[],
        token_strings=[],
        n_layers=units.n_layers,
        kind=torch.tensor([KINDS.index(d[0]) for d in described]),
        stage=torch.tensor([d[1] for d in described]),
        pos=torch.zeros(n, dtype=torch.long),
        index=torch.tensor([d[2] for d in described]),
        activation=torch.tensor([float(mean[u]) for u in order]),
        value=torch.full((n,), float("nan")),
        bias=torch.zeros(n),
        target_weight=weights,
        edges=sp.csr_array((values, (rows, cols)), shape=(n, n)),
        labels=[unit_label(units, u, replacement, stats, tokenizer) for u in order],
        ids=[unit_node_id(units, u) for u in order],
        qk=qk or [],
        model={"name": replacement.model_name or "unnamed"},
        settings={
            "global": True,
            **settings,
            "lorsa_group_size": replacement.lorsas[0].cfg.group_size,
        },
    )


@torch.no_grad()
def qk_circuit(
    replacement: ReplacementModel,
    stats: Statistics,
    layer: int,
    heads: list[int],
    *,
    k: int = 12,
    writers: int = 2,
    tokenizer=None,
):
    """The circuit behind Lorsa heads' attention: for the QK group of ``heads`` (one layer,
    one group), the ``k`` strongest query-unit x key-unit pairs of ``qk_virtual_weights``
    (weights alone), and for each of those units its ``writers`` strongest inputs on the
    corpus sample (``Statistics.mean_input``). Returns a ``Graph``: writer -> unit edges carry
    the mean inputs, and the pairs are the heads' QK record (drawn as dashed query/key edges)."""

    from .graph import QKAttribution, QKPair

    units = stats.units
    group = replacement.lorsas[layer].cfg.group_size
    qk_heads = {h // group for h in heads}
    if len(qk_heads) != 1:
        raise ValueError(f"heads {heads} are not all in one QK group (groups of {group})")
    (qk_head,) = qk_heads
    pairs = qk_virtual_weights(replacement, layer, qk_head, k=k)
    chosen = {units.unit("lorsa", layer, h) for h in heads}
    edges: dict[tuple[int, int], float] = {}
    for u in {q for q, _, _ in pairs} | {key for _, key, _ in pairs}:
        chosen.add(u)
        if units.describe(u)[1] == 0:
            continue
        ids, w = stats.mean_input(u)
        for s in w.abs().topk(min(writers, len(w))).indices.tolist():
            chosen.add(int(ids[s]))
            edges[(int(ids[s]), u)] = float(w[s])
    order = sorted(chosen)
    ids = {u: unit_node_id(units, u) for u in order}
    record = QKAttribution(
        layer=layer, qk_head=qk_head, query=0, key=0, attention=float("nan"),
        score=float("nan"), pairs=[QKPair(ids[q], ids[key], v) for q, key, v in pairs],
        query_marginals=[], key_marginals=[], rest=float("nan"),
    )  # fmt: skip
    weight = {units.unit("lorsa", layer, h): 1 / len(heads) for h in heads}
    settings = {"qk_circuit": {"layer": layer, "qk_head": qk_head, "heads": heads, "pairs": k}}
    return _unit_graph(replacement, stats, order, edges, weight, tokenizer, settings, [record])
