"""Unit dashboards: what every Lorsa head and transcoder feature does on held-out corpus rows,
gathered in one streaming, resumable, seeded pass, and its compact file (DESIGN.md section 5).

    python -m circuits.dashboard_cli --model default --rows 256

This module holds the data, its units and its file; the pass that fills it is
``circuits.dashboard_pass``.

Rows are held-out documents (``circuits.concepts``: one per row, families in turn), run
``batch_rows`` at a time through the replacement model in ``mode``. For every unit (units are
numbered block by block, a block's Lorsa heads before its transcoder features) the pass keeps,
in memory that does not grow with the number of rows:

- ``fires`` (tokens it fires on, activation > 0), ``act_sum``, and a histogram of its
  activations over the fixed geometric bins ``HIST_EDGES`` (the last bin takes everything
  above);
- its ``TOP_K`` largest activations, one per corpus row (a row's best; ties: the earlier
  token first), with a token window (``WINDOW_BEFORE`` tokens before, ``WINDOW_AFTER`` after,
  -1 outside the row): a unit firing along one document is seen in as many documents;
- ``SAMPLES`` firings drawn uniformly (the firings with the smallest seeded hash of
  (seed, unit, token): a bottom-k sample, the same whatever the batches), which the dashboard
  splits into activation quantiles;
- for a Lorsa head, at each kept example its z-pattern: the ``N_KEYS`` keys of largest
  |contribution| ``A[q, k] (x_k w_v + b_V)`` (these sum over all keys to the activation), with
  each key's token and the token before it;
- the co-occurrence counts of its firing with every ground-truth concept
  (``circuits.concepts``), whence its best-F1 concept label.

A finished file adds the direct logit effects of each unit (its centred write vector against the
demeaned unembedding, ``ReplacementModel.read_write``): the ``N_LOGITS`` most promoted and most
suppressed tokens.

The file (safetensors; a JSON header with the format version, unit sizes, the settings, the
rows done, the identity of the model, replacement layers and tokenizer, and a SHA-256 over the
tensors and the rest of the header) is untrusted: its layout is compared with the header before
any tensor is read, then the checksum and the values; a damaged, foreign, old or mismatched
file is refused with a ValueError saying what. A partial file (rows_done < rows) is what an
interrupted pass resumes from; batches are fixed by row index, so a resumed pass equals an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from replacement.model import MODES, ReplacementModel
from toy_models.checkpoint import (
    check_content_sha256,
    content_sha256,
    json_sha256,
    save_state_atomic,
)
from toy_models.cli import one_line
from toy_models.records import check_keys, is_finite_number, parse_json
from toy_models.tokenizer import token_text

from .concepts import CONCEPTS, DOCUMENT_CONCEPTS, at_chance, best_f1, chance_f1, f1_summary
from .graph import checked_count, checked_index
from .nodes import Kind, lorsa_stage, transcoder_stage, unit_id
from .statistics import identity
from .statistics_file import check_identity_record, check_int

VERSION = 3  # 2: the checksum covers the header too; 3: one top example per row
HEADER_KEY = "dashboards"
TOP_K = 8
SAMPLES = 8
QUANTILE_GROUPS = 4
WINDOW_BEFORE, WINDOW_AFTER = 10, 3
WINDOW = WINDOW_BEFORE + 1 + WINDOW_AFTER
N_KEYS = 3
N_LOGITS = 8
HIST_EDGES = [0.0] + [2.0 ** (k / 4) for k in range(-28, 33)]  # 0, 0.0078 .. 256
N_BINS = len(HIST_EDGES) - 1
_HIST_EDGES_F32 = torch.tensor(HIST_EDGES, dtype=torch.float32)
DEFAULT_ROWS = 192  # about a minute on two CPU cores for the default model
BATCH_ROWS = 32
CHECKPOINT_SECONDS = 30.0
# the keys a header's meta holds (circuits.dashboard_pass writes them)
META_KEYS = ("rows", "n_ctx", "seed", "mode", "batch_rows", "rows_done", "seconds", "identity")
MIN_FIRES = 10  # "fired enough" for coverage: a full top-k and a usable F1
DEFAULT_DIR = Path("runs/dashboards")


NAME_CHARS = 80  # of a model name in a file name: a long path's end (a file name has 255)


def default_name(model_name: str, mode: str) -> str:
    """``<model>-<mode>`` with the model name made safe for a file name (``default-local``),
    its last ``NAME_CHARS`` characters (a model given by a path of 220 characters failed
    "File name too long" after the graph was built, found by a fuzz pass; the file's key
    tells models apart, not its name)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model_name))
    return f"{slug[-NAME_CHARS:].strip('.') or 'model'}-{mode}"


def default_path(
    model_name: str,
    mode: str,
    replacement: ReplacementModel,
    tokenizer,
    rows: int = DEFAULT_ROWS,
    seed: int = 0,
) -> Path:
    """Where dashboards are built on first use and found again:
    ``runs/dashboards/<model>-<mode>-<key>.safetensors``, ``key`` 12 hex digits of a SHA-256
    over what the file is bound to (``identity``: the model, the replacement layers, the
    tokenizer) and its rows and seed. Another replacement set, a retrained model or other
    settings get a file of their own beside the others: a first build never replaces saved
    work."""
    bound = {**identity(replacement, tokenizer), "rows": rows, "seed": seed}
    key = json_sha256(bound)[:12]
    return DEFAULT_DIR / f"{default_name(model_name, mode)}-{key}.safetensors"


# ----------------------------------------------------------------- units
@dataclass(frozen=True)
class Layout:
    """The units: per block, ``n_ov[l]`` Lorsa heads then ``d_sae[l]`` transcoder features."""

    n_ov: tuple[int, ...]
    d_sae: tuple[int, ...]

    @classmethod
    def of(cls, replacement: ReplacementModel) -> Layout:
        return cls(
            tuple(x.cfg.n_ov_heads for x in replacement.lorsas),
            tuple(t.cfg.d_sae for t in replacement.transcoders),
        )

    def blocks(self) -> list[tuple[Kind, int, int, int]]:
        """(kind, layer, width, first unit) of each sublayer, in unit order."""
        out, start = [], 0
        for l, (a, f) in enumerate(zip(self.n_ov, self.d_sae, strict=True)):
            out += [(Kind.LORSA, l, a, start), (Kind.TRANSCODER, l, f, start + a)]
            start += a + f
        return out

    @property
    def total(self) -> int:
        return sum(self.n_ov) + sum(self.d_sae)

    @property
    def n_lorsa(self) -> int:
        return sum(self.n_ov)

    def unit(self, kind: Kind | str, layer: int, index: int) -> int:
        """The unit of Lorsa head or transcoder feature ``index`` of block ``layer`` (``kind``:
        a ``Kind`` or its name); a float, a bool or a negative number is refused, never
        truncated or read from the end."""
        kind = Kind.parse(kind) if isinstance(kind, str) else Kind(kind)
        layer = checked_index(layer, "layer", len(self.n_ov))
        for k, l, width, start in self.blocks():
            if k == kind and l == layer:
                return start + checked_index(index, f"{kind.label} {layer} index", width)
        raise ValueError(f"no {kind.label} layer {layer}: units are Lorsa heads and transcoder "
                         "features")  # fmt: skip

    def lorsa_slot(self) -> Tensor:
        """Per unit, its row among Lorsa units (-1 for transcoder features)."""
        slot = torch.full((self.total,), -1, dtype=torch.long)
        for kind, _, width, start in self.blocks():
            if kind == Kind.LORSA:
                first = int((slot >= 0).sum())
                slot[start : start + width] = torch.arange(first, first + width)
        return slot

    def ids(self) -> list[str]:
        out = []
        for kind, l, width, _ in self.blocks():
            stage = lorsa_stage(l) if kind == Kind.LORSA else transcoder_stage(l)
            out += [unit_id(kind, stage, i) for i in range(width)]
        return out


def tensor_layout(layout: Layout) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of a file: (dtype, shape)."""
    U, H, C = layout.total, layout.n_lorsa, len(CONCEPTS)
    out = {
        "tokens": ("I64", (1,)),
        "fires": ("I64", (U,)),
        "act_sum": ("F64", (U,)),
        "hist": ("I32", (U, N_BINS)),
        "concept_count": ("I64", (C,)),
        "concept_both": ("I32", (U, C)),
        "logit_token": ("I32", (U, 2, N_LOGITS)),
        "logit_value": ("F32", (U, 2, N_LOGITS)),
    }
    for name, k in (("top", TOP_K), ("sample", SAMPLES)):
        out |= {
            f"{name}.value": ("F32", (U, k)),
            f"{name}.index": ("I64", (U, k)),
            f"{name}.window": ("I16", (U, k, WINDOW)),
            f"{name}.key_pos": ("I16", (H, k, N_KEYS)),
            f"{name}.key_token": ("I16", (H, k, N_KEYS, 2)),
            f"{name}.key_value": ("F32", (H, k, N_KEYS)),
        }
    return out


_TORCH = {
    "I16": torch.int16,
    "I64": torch.int64,
    "I32": torch.int32,
    "F32": torch.float32,
    "F64": torch.float64,
}
_DTYPE = {dtype: name for name, dtype in _TORCH.items()}


# What an empty example slot holds, per field of ``top.*`` / ``sample.*``: -1 where a token,
# a position or an index goes (none), 0 in the values. The pass resets slots with it too.
SLOT_FIELDS = {"value": 0, "index": -1, "window": -1}
KEY_FIELDS = {"key_pos": -1, "key_token": -1, "key_value": 0}
EMPTY = {f"{name}.{field}": fill for name in ("top", "sample")
         for field, fill in (SLOT_FIELDS | KEY_FIELDS).items()}  # fmt: skip


def empty_state(layout: Layout) -> dict[str, Tensor]:
    """A new pass's tensors: every example slot empty (``EMPTY``), every count 0."""
    return {name: torch.full(shape, EMPTY.get(name, 0), dtype=_TORCH[dtype])
            for name, (dtype, shape) in tensor_layout(layout).items()}  # fmt: skip


def hist_bin(value: Tensor) -> Tensor:
    """The histogram bin of each activation (float32, as the pass records them): the last edge
    at or below it, the last bin taking everything above. The pass fills ``hist`` with it and
    the reader checks a file's histogram against its kept examples with it, so the two agree
    at every edge to the bit."""
    bins = torch.searchsorted(_HIST_EDGES_F32, value.float().contiguous(), right=True) - 1
    return bins.clamp(0, N_BINS - 1)


# ----------------------------------------------------------------- the data
@dataclass(eq=False)
class Dashboards:
    """A dashboards file's contents (module docstring): ``layout``, the tensors ``state`` and
    ``meta`` (settings, ``rows_done``, ``seconds``, ``identity``)."""

    layout: Layout
    state: dict[str, Tensor]
    meta: dict

    @property
    def finished(self) -> bool:
        return self.meta["rows_done"] == self.meta["rows"]

    @property
    def n_tokens(self) -> int:
        return int(self.state["tokens"][0])

    def frequency(self) -> Tensor:
        return self.state["fires"].double() / max(self.n_tokens, 1)

    def concept_labels(self) -> tuple[Tensor, Tensor]:
        """Per unit: the index into ``CONCEPTS`` of its best-F1 concept (-1: never fired), F1."""
        s = self.state
        return best_f1(s["fires"], s["concept_count"], s["concept_both"])

    def concept_chance(self, index: Tensor) -> Tensor:
        """Per unit: the chance F1 of its label ``index`` (``concepts.chance_f1``)."""
        return chance_f1(self.state["fires"], self.state["concept_count"], self.n_tokens, index)

    def summary_concepts(self) -> dict[str, tuple[str, float]]:
        """(concept label, F1) by unit id of every unit that fired and whose label is neither
        at chance (``concepts.at_chance``) nor the kind of document it fires in
        (``concepts.DOCUMENT_CONCEPTS``): the labels that the mechanism summary names and
        groups by (``circuits.mechanisms.summarize``'s ``concepts``); a label that the unit's
        firing rate alone explains, or that says only where it fires more, names nothing
        there."""
        index, f1 = self.concept_labels()
        document = torch.tensor([name in DOCUMENT_CONCEPTS for name in CONCEPTS])
        keep = (index >= 0) & ~at_chance(f1, self.concept_chance(index))
        keep &= ~document[index.clamp_min(0)]
        ids = self.layout.ids()
        return {ids[u]: (CONCEPTS[int(index[u])], float(f1[u])) for u in keep.nonzero()[:, 0]}

    def coverage(self) -> dict:
        """Fraction of Lorsa heads and transcoder features that fired at all / enough."""
        fires, out = self.state["fires"], {}
        for kind in (Kind.LORSA, Kind.TRANSCODER):
            mask = self.kind_mask(kind)
            out[kind.label] = {
                "units": int(mask.sum()),
                "fired": round(float((fires[mask] > 0).double().mean()), 4),
                f"fired_{MIN_FIRES}": round(float((fires[mask] >= MIN_FIRES).double().mean()), 4),
            }
        return out

    def kind_mask(self, kind: Kind) -> Tensor:
        mask = torch.zeros(self.layout.total, dtype=torch.bool)
        for k, _, width, start in self.layout.blocks():
            if k == kind:
                mask[start : start + width] = True
        return mask

    def f1_report(self, min_fires: int = MIN_FIRES) -> dict:
        """Best-F1 distribution per kind over units that fired at least ``min_fires`` times,
        and how often each concept is the label."""
        min_fires = checked_count(min_fires, "min_fires")  # a unit that never fired has no label
        index, f1 = self.concept_labels()
        chance = self.concept_chance(index)
        enough = self.state["fires"] >= min_fires
        out = {}
        for kind in (Kind.LORSA, Kind.TRANSCODER):
            mask = self.kind_mask(kind) & enough
            summary = f1_summary(f1[mask], chance[mask])
            labels = torch.bincount(index[mask], minlength=len(CONCEPTS))
            top = labels.argsort(descending=True, stable=True)[:5]
            summary["top_labels"] = {CONCEPTS[i]: int(labels[i]) for i in top if labels[i]}
            out[kind.label] = summary
        return out

    # ------------------------------------------------------------- the viewer's schema
    def for_viewer(self, tokenizer, units: list[tuple[Kind, int, int]] | None = None) -> dict:
        """Dashboards in ``reports.viewer``'s schema keyed by unit id, for ``units``
        ((kind, layer, index) triples, ``kind`` a ``Kind`` or its name; all units when None).
        The logit effects are computed when the pass finishes: a partial file's units have
        none (no ``logits``), rather than its zero placeholders shown as tokens."""
        if units is None:
            chosen = range(self.layout.total)
        else:
            chosen = sorted({self.layout.unit(k, l, i) for k, l, i in units})
        ids, slot = self.layout.ids(), self.layout.lorsa_slot()
        label_index, f1 = self.concept_labels()
        chance = self.concept_chance(label_index)
        low = at_chance(f1, chance)
        cache: dict[int, str] = {}

        def text(t: int) -> str:
            if t not in cache:
                cache[t] = token_text(tokenizer, t)
            return cache[t]

        s, out = self.state, {}
        for u in chosen:
            d: dict = {"frequency": float(self.frequency()[u])}
            if label_index[u] >= 0:
                d["concept"] = {"label": CONCEPTS[label_index[u]], "f1": float(f1[u]),
                                "chance": float(chance[u]), "at_chance": bool(low[u])}  # fmt: skip
            hist = s["hist"][u]
            nonzero = hist.nonzero().squeeze(1)
            if len(nonzero):
                lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
                edges = HIST_EDGES[lo : hi + 1]
                edges[-1] = max(edges[-1], float(s["top.value"][u, 0]))
                d["histogram"] = {"edges": edges, "counts": hist[lo:hi].tolist()}
            if self.finished:
                pairs = [zip(s["logit_token"][u, j].tolist(), s["logit_value"][u, j].tolist(),
                             strict=True) for j in (0, 1)]  # fmt: skip
                d["logits"] = {
                    side: [[text(t), v] for t, v in pairs[j]]
                    for j, side in enumerate(("promoted", "suppressed"))
                }
            d["examples"] = self._examples(u, int(slot[u]), text)
            out[ids[u]] = d
        return out

    def _examples(self, u: int, h: int, text) -> list[dict]:
        s, examples = self.state, []
        top = [("top", j) for j in range(TOP_K) if s["top.index"][u, j] >= 0]
        samples = [j for j in range(SAMPLES) if s["sample.index"][u, j] >= 0]
        samples.sort(key=lambda j: (float(s["sample.value"][u, j]), int(s["sample.index"][u, j])))
        picked = []
        for g in range(QUANTILE_GROUPS):
            part = samples[
                g * len(samples) // QUANTILE_GROUPS : (g + 1) * len(samples) // QUANTILE_GROUPS
            ]
            name = f"q {g / QUANTILE_GROUPS:.2f}-{(g + 1) / QUANTILE_GROUPS:.2f}"
            picked += [(name, j) for j in part]
        for group, j in top + picked:
            prefix = "top" if group == "top" else "sample"
            examples.append(self._example(u, h, prefix, j, group, text))
        return examples

    def _example(self, u, h, prefix, j, group, text) -> dict:
        s = self.state
        window = s[f"{prefix}.window"][u, j].tolist()
        index = int(s[f"{prefix}.index"][u, j])
        pos = index % self.meta["n_ctx"]
        first = pos - WINDOW_BEFORE  # the row position of window[0]
        keep = [i for i, t in enumerate(window) if t >= 0]
        tokens, where = [], {}
        if h >= 0:  # keys before the window: their token and the one before, then an ellipsis
            keys = [(int(p), s[f"{prefix}.key_token"][h, j, n].tolist())
                    for n, p in enumerate(s[f"{prefix}.key_pos"][h, j].tolist())
                    if 0 <= p < first + keep[0]]  # fmt: skip
            for p, (tok, prev) in sorted(set((p, tuple(t)) for p, t in keys)):
                if prev >= 0 and p - 1 not in where:
                    where[p - 1] = len(tokens)
                    tokens.append(text(prev))
                where[p] = len(tokens)
                tokens.append(text(tok))
            if tokens:
                tokens.append("…")
        for i in keep:
            where[first + i] = len(tokens)
            tokens.append(text(window[i]))
        example = {
            "group": group,
            "tokens": tokens,
            "at": where[pos],
            "activation": float(s[f"{prefix}.value"][u, j]),
        }
        if h >= 0:
            example["keys"] = [
                [where[int(p)], float(v)]
                for p, v in zip(s[f"{prefix}.key_pos"][h, j], s[f"{prefix}.key_value"][h, j],
                                strict=True)
                if p >= 0 and int(p) in where
            ]  # fmt: skip
        return example


# ----------------------------------------------------------------- the file
def write_file(path: str | Path, dash: Dashboards) -> None:
    """``dash`` written atomically (a temp file beside ``path``, then a rename), after the
    checks ``read_file`` makes (header, tensors, values): a state it would refuse (NaN, counts
    that disagree, edited by hand) is not written, and a file already there stays as it was."""
    path = Path(path)
    tensors = {k: v.contiguous() for k, v in dash.state.items()}
    header = {
        "version": VERSION,
        "units": {"n_ov": list(dash.layout.n_ov), "d_sae": list(dash.layout.d_sae)},
        "concepts": list(CONCEPTS),
        "shape": {
            "top_k": TOP_K,
            "samples": SAMPLES,
            "window": WINDOW,
            "keys": N_KEYS,
            "logits": N_LOGITS,
            "bins": N_BINS,
        },  # fmt: skip
        "meta": dash.meta,
    }
    try:
        layout, meta = _check_header(header)
        _check_tensors({k: (_DTYPE.get(v.dtype, str(v.dtype)), tuple(v.shape))
                        for k, v in tensors.items()}, tensor_layout(layout))  # fmt: skip
        _check_values(Dashboards(layout, tensors, meta))
    except ValueError as exc:
        raise ValueError(f"dashboards not written to {path}: {exc}") from None
    header["sha256"] = content_sha256(tensors, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_atomic(tensors, path, metadata={HEADER_KEY: json.dumps(header)})


def _check_header(header) -> tuple[Layout, dict]:
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    if header.get("version") != VERSION:
        raise ValueError(f"format version {header.get('version')!r}, expected {VERSION}: "
                         "made by another version")  # fmt: skip
    check_keys(header, "its header", ("version", "units", "concepts", "shape", "meta"),
               ("sha256",))  # fmt: skip
    units = header.get("units")
    if not isinstance(units, dict):
        raise ValueError("units must be an object with n_ov and d_sae")
    check_keys(units, "units", ("n_ov", "d_sae"))
    for name in ("n_ov", "d_sae"):
        if not isinstance(units[name], list) or not 0 < len(units[name]) <= 1024:
            raise ValueError(f"units.{name} must be a non-empty list")
        for n in units[name]:
            check_int(n, f"units.{name}[]", 1, 1 << 20)
    if len(units["n_ov"]) != len(units["d_sae"]):
        raise ValueError("units.n_ov and units.d_sae have different lengths")
    if header.get("concepts") != list(CONCEPTS):
        raise ValueError("its concepts are not this version's (circuits.concepts); build again")
    shape = {"top_k": TOP_K, "samples": SAMPLES, "window": WINDOW, "keys": N_KEYS,
             "logits": N_LOGITS, "bins": N_BINS}  # fmt: skip
    if header.get("shape") != shape:
        raise ValueError(f"shape {header.get('shape')!r} is not this version's {shape}")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise ValueError("meta must be an object")
    check_keys(meta, "meta", META_KEYS)
    rows = check_int(meta.get("rows"), "meta.rows", 1, 1 << 24)
    check_int(meta.get("rows_done"), "meta.rows_done", 0, rows)
    check_int(meta.get("n_ctx"), "meta.n_ctx", 2, 1 << 16)
    check_int(meta.get("batch_rows"), "meta.batch_rows", 1)
    check_int(meta.get("seed"), "meta.seed", -(2**63), 2**63 - 1)
    if meta.get("mode") not in MODES:
        raise ValueError(f"meta.mode must be one of {MODES}")
    seconds = meta.get("seconds")
    if not is_finite_number(seconds) or seconds < 0:
        raise ValueError("meta.seconds must be a finite number >= 0")
    check_identity_record(meta.get("identity"))
    return Layout(tuple(units["n_ov"]), tuple(units["d_sae"])), meta


def read_file(
    path: Path, replacement: ReplacementModel | None = None, tokenizer=None
) -> Dashboards:
    """A dashboards file, checked (module docstring); with ``replacement`` (and
    ``tokenizer``), refused unless it was built from them. A ValueError names the file; what
    is no regular file there (a directory, a link to itself) is said to be that, no one's
    dashboards (a fault pass read "No such device (os error 19)" for a directory)."""
    from toy_models.files import check_readable_file

    try:
        check_readable_file(Path(path), "dashboards file")
    except OSError as exc:
        raise NotDashboards(str(exc)) from None
    try:
        return _read(Path(path), replacement, tokenizer)
    except NotDashboards as exc:
        raise NotDashboards(f"dashboards file {path}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"dashboards file {path}: {exc}") from None


class NotDashboards(ValueError):
    """A file that is no dashboards file of this code (no safetensors with its header): to be
    left alone, where one that is (of another build, damaged inside, an older format) may be
    removed and built again (a reviewer was told to remove the shipped model)."""


def _names_dashboards(path: Path) -> bool:
    """Whether the file's first bytes are a safetensors header naming the dashboards metadata
    (its 8-byte length, then JSON holding ``"__metadata__"`` and ``"dashboards"``), whatever
    follows: a dashboards file cut short (its tensors, or its header's end, missing) is one,
    to be built again, not someone's file to leave alone (a review found one 10 bytes short
    refused)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            head = f.read(min(size, 1 << 20))
    except OSError:
        return False
    return head.startswith(b"{") and b'"__metadata__"' in head and b'"dashboards"' in head


def _read(path, replacement, tokenizer) -> Dashboards:
    ours = False  # its header found: a dashboards file, damaged or not
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if HEADER_KEY not in metadata:
                raise NotDashboards("no dashboards header (not a dashboards file)")
            ours = True
            header = parse_json(metadata[HEADER_KEY])
            layout, meta = _check_header(header)
            expected = tensor_layout(layout)
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118
            _check_tensors({name: (sl.get_dtype(), tuple(sl.get_shape()))
                            for name, sl in slices.items()}, expected)  # fmt: skip
            state = {name: f.get_tensor(name) for name in expected}
    except ValueError:
        raise
    except Exception as exc:  # safetensors and json raise their own types on damaged files
        why = one_line(exc) or type(exc).__name__
        if ours or _names_dashboards(path):  # damaged inside: may be removed and built again
            raise ValueError(why) from None
        raise NotDashboards(f"not readable as a dashboards file ({why})") from None
    check_content_sha256(state, header)
    dash = Dashboards(layout, state, meta)
    _check_values(dash)
    if replacement is not None:
        if Layout.of(replacement) != layout:
            raise ValueError("its units are not this replacement model's")
        _check_tokens(dash, replacement.cfg.d_vocab)
        want = identity(replacement, tokenizer)
        for key, value in want.items():
            if value is not None and meta["identity"][key] != value:
                raise ValueError(f"built for another {key} (identity differs); build again")
        if dash.finished:
            _check_logit_effects(dash, replacement)
    return dash


def _check_tensors(found: dict[str, tuple[str, tuple]], expected: dict) -> None:
    """The tensors (name: (dtype, shape)) are exactly those of ``tensor_layout``."""
    if set(found) != set(expected):
        raise ValueError(f"its tensors are not the ones its header implies "
                         f"(missing {sorted(set(expected) - set(found))[:3]}, "
                         f"unexpected {sorted(set(found) - set(expected))[:3]})")  # fmt: skip
    for name, (dtype, shape) in expected.items():
        if found[name] != (dtype, shape):
            raise ValueError(f"{name} is {found[name][0]} {found[name][1]}, its header implies "
                             f"{dtype} {shape}")  # fmt: skip


def _check_values(dash: Dashboards) -> None:
    s, meta = dash.state, dash.meta
    for name, t in s.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    tokens = int(s["tokens"][0])
    if not 0 <= tokens <= meta["rows_done"] * meta["n_ctx"]:
        raise ValueError("tokens is not a count of the rows done")
    if (s["fires"] < 0).any() or (s["fires"] > tokens).any():
        raise ValueError("fires holds values that are not counts of tokens")
    # Every unit's activation is a ReLU output (Lorsa heads' z too: TopK of ReLU(z~)), so a
    # sum of firings is positive, and exactly zero for a unit that never fired
    if (s["act_sum"] < 0).any():
        raise ValueError("act_sum holds negative sums of activations that are never negative")
    if ((s["act_sum"] > 0) != (s["fires"] > 0)).any():
        raise ValueError("act_sum is not positive exactly where its unit fired")
    if (s["hist"] < 0).any() or (s["hist"].long().sum(1) != s["fires"]).any():
        raise ValueError("hist does not count every firing once")
    _check_hist(s)
    _check_act_sum(s)
    if (s["concept_count"] < 0).any() or (s["concept_count"] > tokens).any():
        raise ValueError("concept_count holds values that are not counts of tokens")
    both = s["concept_both"].long()
    if (both < 0).any() or (both > s["fires"][:, None]).any() or (both > s["concept_count"]).any():
        raise ValueError("concept_both holds values above their unit's or concept's count")
    limit = meta["rows_done"] * meta["n_ctx"]
    is_lorsa = dash.layout.lorsa_slot() >= 0  # the key tensors' rows, in unit order
    for name in ("top", "sample"):
        index = s[f"{name}.index"]
        real = index >= 0
        if (index < -1).any() or (index >= limit).any():
            raise ValueError(f"{name}.index holds tokens outside the rows done")
        if (s[f"{name}.value"][real] <= 0).any():
            raise ValueError(f"{name}.value holds examples that did not fire")
        if (real.sum(1) > s["fires"]).any():
            raise ValueError(f"{name} keeps more examples than its unit fired")
        if (s[f"{name}.window"] < -1).any():
            raise ValueError(f"{name}.window holds negative token ids")
        centre = s[f"{name}.window"][..., WINDOW_BEFORE]
        if ((centre < 0) & real).any():
            raise ValueError(f"{name}.window misses the activating token")
        key_pos = s[f"{name}.key_pos"]
        if (key_pos < -1).any() or (key_pos >= meta["n_ctx"]).any():
            raise ValueError(f"{name}.key_pos holds positions outside a row")
        example = index[is_lorsa]  # (head, k): row * n_ctx + query position, -1 for none
        if ((key_pos != -1) & (example < 0)[..., None]).any():
            raise ValueError(f"{name}.key_pos holds keys of examples that are not kept")
        query = (example % meta["n_ctx"])[..., None]
        if ((key_pos > query) & (example >= 0)[..., None]).any():
            raise ValueError(f"{name}.key_pos holds a key after its example's query position")
    _check_key_values(dash)
    top = s["top.value"]
    if (top[:, 1:] > top[:, :-1]).any():
        raise ValueError("top.value is not sorted")
    rows = torch.where(
        s["top.index"] >= 0, s["top.index"] // meta["n_ctx"], -1 - torch.arange(TOP_K)
    )  # empty slots never equal
    if (rows[:, :, None] == rows[:, None, :]).sum((1, 2)).gt(TOP_K).any():
        raise ValueError("top keeps two examples of one row (a unit's top examples are of "
                         "different rows)")  # fmt: skip
    # The logit effects are added when the last row is done: rows_done (in the header, outside
    # the checksum) must agree, or a partial file would be shown as finished without them and
    # a finished one resumed, its last rows added twice.
    values = bool((s["logit_value"] != 0).any())
    if dash.finished and not values:
        raise ValueError("meta.rows_done says the pass is finished, but it holds no logit effects")
    if not dash.finished and (values or (s["logit_token"] != 0).any()):
        raise ValueError("meta.rows_done says the pass is partial, but it holds logit effects")


def _check_hist(s: dict[str, Tensor]) -> None:
    """The histogram agrees with the examples the file keeps of the same firings (each unit
    keeps its ``TOP_K`` largest, one per row, and ``SAMPLES`` drawn, all of them while it fired
    fewer times): its highest bin with firings is the bin of the unit's top activation, and each
    bin counts at least the kept examples that fall in it. Firings moved into bins above a
    unit's largest activation were accepted and drawn (found by fuzz pass 13)."""
    hist = s["hist"].long()
    for name, k in (("top", TOP_K), ("sample", SAMPLES)):
        real = s[f"{name}.index"] >= 0
        kept, most = real.sum(1), s["fires"].clamp(max=k)
        # the top examples are one per row a unit fired in (``keep_per_unit``): at least one
        # of a unit that fired, at most min(fires, k); the samples exactly min(fires, k)
        top = name == "top"
        if ((kept > most) | (kept < most.clamp(max=1)) if top else kept != most).any():
            how = f"at most min(fires, {k}) and one at least" if top else f"min(fires, {k})"
            raise ValueError(f"{name} does not keep {how} examples of every unit")
        if (real[:, 1:] & ~real[:, :-1]).any():
            raise ValueError(f"{name} keeps an example after an empty slot")
    fired = s["fires"] > 0
    highest = torch.where(hist > 0, torch.arange(N_BINS), -1).max(1).values
    if (highest[fired] != hist_bin(s["top.value"][fired, 0])).any():
        raise ValueError("hist has firings above the bin of its unit's top activation, or none "
                         "in it")  # fmt: skip
    for name in ("top", "sample"):
        real = s[f"{name}.index"] >= 0
        bins = torch.where(real, hist_bin(s[f"{name}.value"]), 0)
        kept = torch.zeros_like(hist).scatter_add_(1, bins, real.long())
        if (kept > hist).any():
            raise ValueError(f"hist counts fewer firings in a bin than {name} keeps there")


def _check_act_sum(s: dict[str, Tensor]) -> None:
    """``act_sum`` is the float64 sum of the float32 activations ``hist`` bins (``Pass.add``):
    each lies at or above its bin's lower edge, below its upper edge and at most the unit's
    top activation (the last bin has no upper edge), so the sum lies between the counts times
    those bounds (to float64 rounding). A forged 1e30 was read and shown as a unit's mean."""
    hist, edges = s["hist"].double(), _HIST_EDGES_F32.double()
    upper = torch.cat([edges[1:-1], torch.tensor([torch.inf], dtype=torch.float64)])
    upper = torch.minimum(upper[None, :], s["top.value"][:, :1].double())
    low, high = hist @ edges[:-1], (hist * upper).sum(1)
    act_sum = s["act_sum"]
    if ((act_sum < low * (1 - 1e-9)) | (act_sum > high * (1 + 1e-9))).any():
        raise ValueError("act_sum is not a sum of the activations its histogram counts (outside "
                         "its bins' edges and its top activation times their counts)")  # fmt: skip


def _check_key_values(dash: Dashboards) -> None:
    """The z-pattern keys' values as the pass writes them (``Pass._merge``): each kept key's
    contribution ``A[q, k] (x_k w_v + b_V)`` (signed, unbounded alone), 0 where no key is kept,
    largest |contribution| first (a top-k of them); and since all of a query's keys sum to its
    activation, the kept ones differ from it by at most the keys left out, each no larger than
    the smallest kept (to float32 rounding of a sum over up to ``n_ctx`` keys). A forged 1e30
    or -1 was read and sent to the viewer as what a key carried of the activation."""
    s, n_ctx = dash.state, dash.meta["n_ctx"]
    is_lorsa = dash.layout.lorsa_slot() >= 0  # the key tensors' rows, in unit order
    for name in ("top", "sample"):
        pos, value = s[f"{name}.key_pos"], s[f"{name}.key_value"].double()
        if ((pos < 0) & (value != 0)).any():
            raise ValueError(f"{name}.key_value holds a value where no key is kept")
        size = value.abs()
        if (size[..., 1:] > size[..., :-1]).any():
            raise ValueError(f"{name}.key_value is not in order of |contribution|, largest first")
        index, activation = s[f"{name}.index"][is_lorsa], s[f"{name}.value"][is_lorsa].double()
        left_out = (index % n_ctx + 1 - (pos >= 0).sum(-1)).clamp_min(0)  # keys up to the query
        rest = left_out * size.min(-1).values
        gap = (activation - value.sum(-1)).abs()
        scale = activation.abs() + size.sum(-1) + rest
        if ((gap > rest + (1e-3 + n_ctx * 2.0**-22) * scale + 1e-6) & (index >= 0)).any():
            raise ValueError(f"{name}.key_value holds keys that do not sum to their example's "
                             "activation with the keys left out")  # fmt: skip


def _check_logit_effects(dash: Dashboards, replacement: ReplacementModel) -> None:
    """A finished file's logit effects are the replacement's own (``direct_logits``, which
    the pass wrote them from): each kept token has the effect the file gives it, and those are
    the unit's ``N_LOGITS`` most promoted and most suppressed, each token once (to float32
    rounding). A re-signed file whose effects were x1e30, or another unit's tokens, was shown
    in the viewer and graph.json as what a unit writes (a fuzz pass)."""
    rw, s = replacement.read_write(), dash.state
    for kind, l, width, start in dash.layout.blocks():
        effect = rw.direct_logits(kind == Kind.LORSA, l)  # unit vocab
        n, rows = min(N_LOGITS, effect.shape[1]), slice(start, start + width)
        best = [effect.topk(n, dim=1, largest=largest).values for largest in (True, False)]
        tolerance = 1e-4 * max(float(b.abs().max()) for b in best) + 1e-6
        for j in (0, 1):
            tokens, values = s["logit_token"][rows, j, :n].long(), s["logit_value"][rows, j, :n]
            same = tokens.sort(1).values
            if (
                (same[:, 1:] == same[:, :-1]).any()
                or ((effect.gather(1, tokens) - values).abs() > tolerance).any()
                or ((best[j] - values).abs() > tolerance).any()
            ):
                raise ValueError(f"logit effects of the {kind.name.lower()} units of layer {l} "
                                 "are not this replacement model's; build again")  # fmt: skip


def _check_tokens(dash: Dashboards, d_vocab: int) -> None:
    """Every token id the file holds is one of the model's (-1 where a window or a key has
    none): the viewer and the feature files print them as text. A key's token is -1 exactly
    where no key is kept (``key_pos`` -1), the token before it exactly where none is (a key
    kept at position 0, or none): a kept key of token -1 passed, and the trace failed after
    its work with a bare "token id -1 is outside the vocabulary" (found by fuzz pass 13)."""
    s = dash.state
    if ((s["logit_token"] < 0) | (s["logit_token"] >= d_vocab)).any():
        raise ValueError(f"logit_token holds ids outside the vocabulary of {d_vocab}")
    for name in ("top", "sample"):
        for part in ("window", "key_token"):
            t = s[f"{name}.{part}"]
            if ((t < -1) | (t >= d_vocab)).any():
                raise ValueError(f"{name}.{part} holds ids outside the vocabulary of {d_vocab}")
        pos, token = s[f"{name}.key_pos"], s[f"{name}.key_token"]
        if ((token[..., 0] >= 0) != (pos >= 0)).any():
            raise ValueError(f"{name}.key_token holds no token (-1) for a key it keeps, or one "
                             "for a key it does not")  # fmt: skip
        if ((token[..., 1] >= 0) != (pos > 0)).any():
            raise ValueError(f"{name}.key_token holds no token (-1) before a key it keeps after "
                             "a row's first position, or one where there is none")  # fmt: skip


def summary(dash: Dashboards, path: str | Path | None = None) -> dict:
    """The figures a build reports: rows, tokens, time, size, coverage, best-F1."""
    path = None if path is None else Path(path)
    out = {
        "rows": dash.meta["rows_done"],
        "tokens": dash.n_tokens,
        "seconds": round(dash.meta["seconds"], 2),
        "coverage": dash.coverage(),
        "best_f1": dash.f1_report(),
    }
    if path is not None and path.exists():
        out["bytes"] = path.stat().st_size
    return out
