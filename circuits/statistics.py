"""Corpus statistics for global circuits: one job, what a corpus sample says about units (the
``Statistics`` data, its compact file, its queries). ``circuits.gathering`` gathers them.

Over ``rows`` held-out corpus rows of ``n_ctx`` tokens (units numbered by ``circuits.units``),
kept per *half* of the sample (even rows, odd rows; a query reads both halves summed, or one
half through ``half(i)``, so that a graph can be grown from each half and compared):

- ``activity[u]`` and ``count[u]``: unit u's summed activation (1 per occurrence for tokens and
  errors; a logit's probability where its token came next) and its occurrences (a logit's:
  the positions where its token came next);
- **edges**: the summed exact local edges ``s -> t`` of every unit pair, kept for each target
  among the ``top_k`` sources of largest |sum| in either half or in both, and for each source
  among its ``top_k`` targets likewise, with every target's and source's totals (signed and
  absolute, over *all* partners) so that shares and what was left out stay known;
- **QK terms** per Lorsa QK head: the expected QK attribution (``circuits.gathering``) of pairs
  among its ``qk_units`` strongest query-side and key-side units, those units' marginals, and
  the head's total, bias terms, firings and absolute marginal totals.

Queries: expected attribution ``E[s -> t] = sum of edges / sum of a_s`` (``expected_into``,
``expected_from``), mean input ``sum of edges / occurrences of t`` (``mean_input``), and a QK
head's terms per firing (``qk_group``).

The file (safetensors; JSON header with the format version, unit sizes, QK heads per block, the
gathering settings, the identity of the model, replacement layers and tokenizer, and a SHA-256
over the tensors and the rest of the header) is untrusted: every field is checked before use,
and a damaged, foreign, old or mismatched file is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.model import ReplacementModel
from toy_models.checkpoint import json_sha256
from toy_models.files import check_readable_file
from toy_models.model import fingerprint

from .graph import checked_index, is_integer
from .nodes import Kind
from .statistics_file import QK_SCALARS, SPLIT, STATS_VERSION, read_finished, units_header
from .statistics_file import write_file as write_statistics_file
from .units import Units

DEFAULT_ROWS = 128  # rows a first global graph gathers
DEFAULT_N_CTX = 64  # tokens per row
TOP_K = 64  # sources kept per target and targets per source (in either half or both)
# Divisor floor for sums per unit of activity: a unit that never fired has activity 0 and
# every edge sum 0, so its expected attribution is 0 rather than NaN.
ACTIVITY_FLOOR = 1e-12
DEFAULT_STATS_DIR = Path("runs/global-stats")
VIEWS = ("even rows", "odd rows", "all rows")  # the halves, and both


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


def default_stats_path(model: str, replacement: ReplacementModel, tokenizer) -> Path:
    """Where statistics are gathered once and found again without ``--stats``:
    ``runs/global-stats/<model>-<key>.safetensors``, ``key`` 12 hex digits of a SHA-256 over
    what they are bound to (``identity``). Another model in a folder of the same name, another
    replacement set or tokenizer gets a file of its own: never one gathered for another."""
    # as dashboards' default_path; the format version too, so that a file of an older one is
    # gathered again beside it rather than refused
    key = json_sha256({**identity(replacement, tokenizer), "version": STATS_VERSION})[:12]
    return DEFAULT_STATS_DIR / f"{Path(model).name}-{key}.safetensors"


@dataclass
class QKGroup:
    """One Lorsa QK head's expected QK attribution, per firing of a head of its group
    (``circuits.gathering``): ``pairs[i, j]`` is query unit ``query_units[i]`` x key unit
    ``key_units[j]``; the marginals are each unit's terms with every partner (bias included);
    ``total`` is every term, of which ``bias_query`` has the query-side bias and ``bias_key``
    the key-side bias; ``query_abs``/``key_abs`` sum |marginal| over every unit of each side
    (what the listed units cover); ``firings`` is the number of firings."""

    layer: int
    qk_head: int
    query_units: Int[Tensor, " n"]
    key_units: Int[Tensor, " m"]
    pairs: Float[Tensor, "n m"]
    query_marginal: Float[Tensor, " n"]
    key_marginal: Float[Tensor, " m"]
    total: float
    bias_query: float
    bias_key: float
    query_abs: float
    key_abs: float
    firings: float


# ----------------------------------------------------------------- the data
@dataclass(eq=False)
class Statistics:
    """The compact statistics (module docstring); ``view`` selects a half (0: even rows,
    1: odd rows) or both (None). Edges are CSR by target over the units of stages 1 .. 2L+1
    (``edge_source[edge_indptr[i] : edge_indptr[i + 1]]`` feed unit ``start(1) + i``), with
    values per half; ``into_totals[view, (sum, abs), target]`` and ``out_totals[view, (sum,
    abs), source]`` cover every partner. ``meta``: the gathering settings (``rows``, ``n_ctx``,
    ``seed``, ``mode``, ``split``, ``top_k``, ``qk_units``), ``rows_done``, ``seconds`` and
    ``identity``."""

    units: Units
    n_qk: list[int]
    activity: Float[Tensor, "half unit"]
    count: Float[Tensor, "half unit"]
    edge_indptr: Int[Tensor, " target_plus_1"]
    edge_source: Int[Tensor, " nnz"]
    edge_value: Float[Tensor, "half nnz"]
    into_totals: Float[Tensor, "view 2 target"]
    out_totals: Float[Tensor, "view 2 source"]
    qk_query_units: Int[Tensor, "group n"]
    qk_key_units: Int[Tensor, "group n"]
    qk_pairs: Float[Tensor, "half group n n"]
    qk_query_marginal: Float[Tensor, "half group n"]
    qk_key_marginal: Float[Tensor, "half group n"]
    qk_scalars: Float[Tensor, "view group 6"]
    meta: dict
    view: int | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def half(self, view: int) -> Statistics:
        """The statistics of one half of the sample: 0 the even rows, 1 the odd rows."""
        if not is_integer(view) or view not in (0, 1):  # 0.0 and True are not halves
            raise ValueError(f"a half is 0 (even rows) or 1 (odd rows), not {view!r}")
        return replace(self, view=int(view), _cache={})

    @property
    def view_name(self) -> str:
        return VIEWS[2 if self.view is None else self.view]

    @property
    def rows(self) -> int:
        """Rows in this view."""
        done = self.meta["rows_done"]
        return done if self.view is None else (done + 1 - self.view) // 2

    @property
    def positions(self) -> int:
        return self.rows * self.meta["n_ctx"]

    def _per_half(self, name: str, tensor: Tensor) -> Tensor:
        if name not in self._cache:
            self._cache[name] = tensor.sum(0) if self.view is None else tensor[self.view]
        return self._cache[name]

    @property
    def unit_activity(self) -> Float[Tensor, " unit"]:
        return self._per_half("activity", self.activity)

    @property
    def unit_count(self) -> Float[Tensor, " unit"]:
        return self._per_half("count", self.count)

    @property
    def values(self) -> Float[Tensor, " nnz"]:
        return self._per_half("values", self.edge_value)

    def _totals(self, totals: Tensor) -> Tensor:
        return totals[2 if self.view is None else self.view]

    # ------------------------------------------------------------- edge queries
    def summed_into(self, target: int) -> tuple[Tensor, Tensor]:
        """The kept sources of ``target`` and their summed edges (none for tokens, errors)."""
        target = self.units.check(target, "target")
        i = target - self.units.start(1)
        if i < 0 or self.units.describe(target)[0] == Kind.ERROR:
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        lo, hi = int(self.edge_indptr[i]), int(self.edge_indptr[i + 1])
        return self.edge_source[lo:hi], self.values[lo:hi]

    def summed_from(self, source: int) -> tuple[Tensor, Tensor]:
        """The kept targets of ``source`` and their summed edges."""
        source = self.units.check(source, "source")
        indptr, order, target = self._by_source()
        if source >= len(indptr) - 1:
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        lo, hi = int(indptr[source]), int(indptr[source + 1])
        return target[lo:hi], self.values[order[lo:hi]]

    def _by_source(self):
        if "by_source" not in self._cache:
            n_target = len(self.edge_indptr) - 1
            counts = self.edge_indptr.diff()
            target = torch.repeat_interleave(torch.arange(n_target) + self.units.start(1), counts)
            order = torch.sort(self.edge_source, stable=True).indices
            n_source = self.out_totals.shape[-1]
            indptr = torch.zeros(n_source + 1, dtype=torch.long)
            indptr[1:] = torch.bincount(self.edge_source, minlength=n_source).cumsum(0)
            self._cache["by_source"] = (indptr, order, target[order])
        return self._cache["by_source"]

    def mean_input(self, target: int) -> tuple[Tensor, Tensor]:
        """What feeds ``target`` on average: summed edges from its kept sources divided by the
        target's occurrences (a logit's: where its token came next). A target-side view;
        ``expected_into`` is the source-side one, where a rare source with one strong edge
        stands out."""
        sources, summed = self.summed_into(target)
        return sources, summed / self.unit_count[target].clamp(min=1)

    def expected_into(self, target: int) -> tuple[Tensor, Tensor]:
        """Expected attribution into ``target`` from its kept sources: (units, weights)."""
        sources, summed = self.summed_into(target)
        return sources, summed / self.unit_activity[sources].clamp(min=ACTIVITY_FLOOR)

    def expected_from(self, source: int) -> tuple[Tensor, Tensor]:
        """Expected attribution from ``source`` into its kept targets: (units, weights)."""
        targets, summed = self.summed_from(source)
        return targets, summed / self.unit_activity[source].clamp(min=ACTIVITY_FLOOR)

    def input_total(self, target: int) -> float:
        """Sum of |mean input| into ``target`` over *every* source (kept or not)."""
        target = self.units.check(target, "target")
        i = target - self.units.start(1)
        if i < 0:
            return 0.0
        total = float(self._totals(self.into_totals)[1, i])
        return total / max(float(self.unit_count[target]), 1.0)

    def output_total(self, source: int) -> float:
        """Sum of |expected attribution| from ``source`` over *every* target."""
        source = self.units.check(source, "source")
        totals = self._totals(self.out_totals)
        if source >= totals.shape[-1]:
            return 0.0
        return float(totals[1, source]) / max(float(self.unit_activity[source]), ACTIVITY_FLOOR)

    # ------------------------------------------------------------- QK queries
    def qk_index(self, layer: int, qk_head: int) -> int:
        layer = checked_index(layer, "layer", len(self.n_qk))
        if not is_integer(qk_head) or not 0 <= qk_head < self.n_qk[layer]:
            raise ValueError(f"no QK head {qk_head!r} in block {layer} (0..{self.n_qk[layer] - 1})")
        return sum(self.n_qk[:layer]) + int(qk_head)

    def qk_group(self, layer: int, qk_head: int) -> QKGroup:
        """QK head ``qk_head`` of block ``layer``: its terms per firing (``QKGroup``)."""
        g = self.qk_index(layer, qk_head)
        scalars = self._totals(self.qk_scalars)[g]
        per = 1 / max(float(scalars[3]), 1.0)
        q_real, k_real = self.qk_query_units[g] >= 0, self.qk_key_units[g] >= 0
        pairs = self._per_half("qk_pairs", self.qk_pairs)[g][q_real][:, k_real]
        total, bias_q, bias_k, firings, q_abs, k_abs = scalars.tolist()
        return QKGroup(
            layer, qk_head, self.qk_query_units[g][q_real], self.qk_key_units[g][k_real],
            pairs * per, self._per_half("qk_q", self.qk_query_marginal)[g][q_real] * per,
            self._per_half("qk_k", self.qk_key_marginal)[g][k_real] * per,
            total * per, bias_q * per, bias_k * per, q_abs * per, k_abs * per, firings,
        )  # fmt: skip

    # ------------------------------------------------------------- files
    def tensors(self) -> dict[str, Tensor]:
        """The tensors, by their names in the file."""
        return {
            "activity": self.activity,
            "count": self.count,
            "edges.indptr": self.edge_indptr,
            "edges.source": self.edge_source.int(),
            "edges.value": self.edge_value,
            "edges.into": self.into_totals,
            "edges.out": self.out_totals,
            "qk.query_units": self.qk_query_units.int(),
            "qk.key_units": self.qk_key_units.int(),
            "qk.pairs": self.qk_pairs,
            "qk.query_marginal": self.qk_query_marginal,
            "qk.key_marginal": self.qk_key_marginal,
            "qk.scalars": self.qk_scalars,
        }

    def save(self, path: str | Path) -> None:
        """Write the file atomically (a temp file beside it, then a rename). A half's view
        holds both halves' tensors: saving it would drop the view without a word."""
        if self.view is not None:
            raise ValueError(f"this is the view of one half ({self.view_name}); save the "
                             "statistics it was taken from")  # fmt: skip
        header = {"units": units_header(self.units), "n_qk": self.n_qk, "meta": self.meta}
        write_statistics_file(Path(path), self.tensors(), header)

    @classmethod
    def load(
        cls, path: str | Path, replacement: ReplacementModel | None = None, tokenizer=None
    ) -> Statistics:
        """Read and check a statistics file; with ``replacement`` (and ``tokenizer``, when the
        caller has it), refuse statistics of any other model, replacement set or tokenizer."""
        path = Path(path)
        check_readable_file(path, "statistics file")
        try:
            stats = read_finished(path)
        except ValueError as exc:
            raise ValueError(f"{path}: not a readable statistics file ({exc})") from None
        if replacement is not None:
            stats.check_identity(path, identity(replacement, tokenizer), Units.of(replacement))
        return stats

    def check_identity(self, path: Path, expected: dict, units: Units) -> None:
        """Refuse (one line naming ``path``) statistics made for another model."""
        self.check_identity_of(path, self.meta, self.units, expected, units)

    @staticmethod
    def check_identity_of(path: Path, meta: dict, found: Units, expected: dict, units: Units):
        if units != found:
            raise ValueError(f"{path}: made for replacement layers of other sizes")
        names = {"model": "toy model", "replacement": "replacement set", "tokenizer": "tokenizer"}
        for key, name in names.items():
            got = meta["identity"][key]
            if expected[key] is not None and got != expected[key]:
                raise ValueError(
                    f"{path}: made for another {name} ({key} sha256 {str(got)[:12]}..., "
                    f"this one is {expected[key][:12]}...)"
                )


# ----------------------------------------------------------------- compaction
@torch.no_grad()
def compact(sums, tables, top_k: int = TOP_K) -> Statistics:
    """The compact ``Statistics`` of gathered dense sums (``circuits.gathering.Sums``): per
    target its ``top_k`` sources of largest |sum| in the even half, the odd half and both, per
    source its ``top_k`` targets likewise, every total, and the QK tables."""
    units = sums.units
    stages = range(1, units.logit_stage + 1)
    n_source = units.start(units.logit_stage)
    # First pass: each source's top_k-th largest |sum| over every stage above it (0 where it
    # has fewer nonzero sums: then all of them are kept).
    best = torch.zeros(3, n_source, top_k)
    for stage in stages:
        below = units.start(stage)
        for v, block in enumerate(_views(sums, stage, tables)):
            top = block.abs().topk(min(top_k, block.shape[1]), dim=1).values
            merged = torch.cat([best[v, :below], top], dim=1)
            best[v, :below] = merged.topk(top_k, dim=1).values
    threshold = best[:, :, -1]

    n_target = units.total - units.start(1)
    into, out = torch.zeros(3, 2, n_target), torch.zeros(3, 2, n_source)
    sources, values, counts = [], [], []
    for stage in stages:  # second pass: the kept entries and every total
        below, first = units.start(stage), units.start(stage) - units.start(1)
        cols = slice(first, first + units.sizes[stage])
        blocks = _views(sums, stage, tables)
        keep = torch.zeros(blocks[0].shape, dtype=torch.bool)
        for v, block in enumerate(blocks):
            size = block.abs()
            top = size.T.contiguous().topk(min(top_k, below), dim=1).indices  # target source
            keep.T.scatter_(1, top, True)
            keep |= size >= threshold[v, :below, None]
            into[v, 0, cols], into[v, 1, cols] = block.sum(0), size.sum(0)
            out[v, 0, :below] += block.sum(1)
            out[v, 1, :below] += size.sum(1)
        keep &= (blocks[0] != 0) | (blocks[1] != 0)
        column, row = keep.T.nonzero(as_tuple=True)  # by target, then source
        sources.append(row)
        values.append(torch.stack([blocks[0][row, column], blocks[1][row, column]]))
        counts.append(torch.bincount(column, minlength=units.sizes[stage]))
    indptr = torch.zeros(n_target + 1, dtype=torch.long)
    indptr[1:] = torch.cat(counts).cumsum(0)
    meta = dict(sums.meta) | {"top_k": top_k}
    return Statistics(
        units, list(sums.n_qk), sums.activity.clone(), sums.count.clone(), indptr,
        torch.cat(sources), torch.cat(values, dim=1), into, out, *_qk_tables(sums), meta,
    )  # fmt: skip


def _views(sums, stage: int, tables) -> tuple[Tensor, Tensor, Tensor]:
    even, odd = sums.edge_blocks(stage, tables)
    return even, odd, even + odd


def _qk_tables(sums):
    query_units, key_units = sums.candidates
    G, N = query_units.shape
    q_marg, k_marg = torch.zeros(2, G, N), torch.zeros(2, G, N)
    scalars = torch.zeros(3, G, len(QK_SCALARS))
    scalars[:2, :, :4] = sums.qk_scalars
    scalars[2, :, :4] = sums.qk_scalars.sum(0)
    g = 0
    for query, key in zip(sums.qk_query, sums.qk_key, strict=True):
        for h in range(query.shape[1]):
            for side, chosen, out, column in ((query, query_units, q_marg, 4),
                                              (key, key_units, k_marg, 5)):  # fmt: skip
                real = chosen[g] >= 0
                out[:, g, real] = side[:, h, chosen[g][real]]
                scalars[:2, g, column] = side[:, h].abs().sum(1)
                scalars[2, g, column] = side[:, h].sum(0).abs().sum()
            g += 1
    return query_units.clone(), key_units.clone(), sums.qk_pairs.clone(), q_marg, k_marg, scalars


__all__ = ["QKGroup", "STATS_VERSION", "SPLIT", "Statistics", "compact", "identity"]
