"""Statistics files: one job, writing them and reading them back checked.

Two kinds, both safetensors with a JSON header (format version, unit sizes, QK heads per block,
the gathering settings, the identity of the model, replacement layers and tokenizer, and a
SHA-256 over the tensors and the rest of the header): a finished file (``Statistics``, compact)
and the *partial* file gathering keeps its dense sums in until it finishes
(``circuits.gathering.Sums``). A file
is untrusted: its header is checked, every tensor's dtype and shape are compared with what the
header implies before any tensor is read, then the checksum and the values; anything wrong is
a ValueError saying what, which the callers turn into one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from replacement.model import MODES
from toy_models.checkpoint import check_content_sha256, content_sha256, save_state_atomic
from toy_models.cli import one_line
from toy_models.records import check_keys, is_finite_number, parse_json

from .nodes import lorsa_stage
from .units import Units

STATS_VERSION = 5  # 3: halves, compact top-k edges, conditioned logits, QK terms; 4: the
# checksum covers the header too; 5: a token unit is its embedding alone, the position vectors
# are constants (on the QK bias side), as in local graphs
SPLIT = "heldout"  # statistics describe text the model was not trained on
QK_SCALARS = ("total", "bias_query", "bias_key", "firings", "query_abs", "key_abs")
MAX_ROWS = 1 << 20  # rows of a sample: they are drawn and held in memory before gathering
# the keys a header's meta holds (circuits.gathering writes them; compaction adds top_k)
META_KEYS = ("rows", "n_ctx", "seed", "mode", "split", "rows_done", "seconds", "identity",
             "qk_units")  # fmt: skip


def write_file(path: Path, tensors: dict[str, Tensor], header: dict) -> None:
    """``tensors`` and ``header`` (plus the version and the SHA-256 of both) written
    atomically (a temp file beside ``path``, then a rename)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    header = {"version": STATS_VERSION, **header}
    header["sha256"] = content_sha256(tensors, header)
    metadata = {"statistics": json.dumps(header)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_atomic(tensors, path, metadata=metadata)


def units_header(units: Units) -> dict:
    return {"d_vocab": units.d_vocab, "n_ov": units.n_ov, "d_sae": units.d_sae}


# ----------------------------------------------------------------- checking a file
def read_safetensors(path: Path, layout) -> tuple[dict, dict[str, Tensor]]:
    """A statistics header and tensors, checked: ``layout(header)`` gives every tensor's
    (dtype, shape) (None in a shape: any length, the same wherever the name is reused), which
    are compared with the file before any tensor is read; then the checksum."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if "statistics" not in metadata:
                raise ValueError("no statistics header")
            header = parse_json(metadata["statistics"])
            if not isinstance(header, dict):
                raise ValueError("its header is not a JSON object")
            expected = layout(header)
            found = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118
            _check_layout(expected, found)
            tensors = {name: f.get_tensor(name) for name in found}
    except ValueError:
        raise
    except Exception as exc:  # safetensors and json raise their own types on damaged files
        raise ValueError(one_line(exc) or type(exc).__name__) from None
    if not isinstance(header.get("sha256"), str):
        raise ValueError("sha256 (of the tensors and the header) is missing")
    check_content_sha256(tensors, header)
    return header, tensors


def _check_layout(expected: dict, found: dict) -> None:
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        raise ValueError(
            f"its tensors do not match its header (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    free: dict[str, int] = {}
    for name, (dtype, shape) in expected.items():
        got = tuple(found[name].get_shape())
        if len(got) != len(shape):
            raise ValueError(f"{name} has shape {got}, its header implies {shape}")
        for axis, (want, have) in enumerate(zip(shape, got, strict=True)):
            if isinstance(want, str):  # a free length, the same wherever it is named
                want = free.setdefault(want, have)
            if want != have:
                raise ValueError(f"{name} has shape {got}, its header implies {shape} "
                                 f"(axis {axis})")  # fmt: skip
        if found[name].get_dtype() != dtype:
            raise ValueError(f"{name} is stored as {found[name].get_dtype()}, not {dtype}")


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """``value``, an integer from ``low`` (to ``high``), or a ValueError naming it."""
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {bound}, not {value!r}")
    return value


def check_identity_record(found) -> None:
    """A file's ``meta.identity`` as ``circuits.statistics.identity`` makes it (a statistics
    file's and a dashboards file's): the digests of the model, the replacement set and the
    tokenizer, each a string or null."""
    if not isinstance(found, dict):
        raise ValueError("meta.identity must be an object with model, replacement, tokenizer")
    check_keys(found, "meta.identity", ("model", "replacement", "tokenizer"))
    if not all(v is None or isinstance(v, str) for v in found.values()):
        raise ValueError("meta.identity values must be strings or null")


def check_header_meta(header: dict) -> tuple[Units, dict, list[int]]:
    """The version, unit sizes, QK heads per block and gathering settings of a header."""
    version = header.get("version")
    if version != STATS_VERSION:
        raise ValueError(
            f"format version {version!r}, expected {STATS_VERSION}: made by an older version; "
            "remove it to gather again"
        )
    partial = header.get("partial") is True  # (its layout refuses any other value)
    check_keys(header, "its header", ("version", "units", "n_qk", "meta"),
               ("sha256", "partial"))  # fmt: skip
    units, meta, n_qk = header.get("units"), header.get("meta"), header.get("n_qk")
    if not isinstance(units, dict):
        raise ValueError("units must be an object with d_vocab, n_ov and d_sae")
    check_keys(units, "units", ("d_vocab", "n_ov", "d_sae"))
    check_int(units["d_vocab"], "units.d_vocab", 1, 1 << 24)
    for name in ("n_ov", "d_sae"):
        sizes = units[name]
        if not isinstance(sizes, list) or not 0 < len(sizes) <= 1024:
            raise ValueError(f"units.{name} must be a non-empty list")
        for size in sizes:
            check_int(size, f"units.{name}[]", 1, 1 << 24)
    if len(units["n_ov"]) != len(units["d_sae"]):
        raise ValueError("units.n_ov and units.d_sae have different lengths")
    if not isinstance(n_qk, list) or len(n_qk) != len(units["n_ov"]):
        raise ValueError("n_qk must list the QK heads of every block")
    for n, n_ov in zip(n_qk, units["n_ov"], strict=True):
        check_int(n, "n_qk[]", 1, n_ov)
    if not isinstance(meta, dict):
        raise ValueError("meta must be an object")
    check_keys(meta, "meta", META_KEYS if partial else (*META_KEYS, "top_k"))
    rows = check_int(meta.get("rows"), "meta.rows", 1, MAX_ROWS)
    check_int(meta.get("rows_done"), "meta.rows_done", 0, rows)
    check_int(meta.get("n_ctx"), "meta.n_ctx", 2)
    check_int(meta.get("seed"), "meta.seed", -(2**63), 2**63 - 1)
    check_int(meta.get("qk_units"), "meta.qk_units", 1, 1 << 16)
    if meta.get("mode") not in MODES or meta.get("split") != SPLIT:
        raise ValueError(f"meta.mode must be one of {MODES} and meta.split {SPLIT!r}")
    seconds = meta["seconds"]
    if not is_finite_number(seconds) or seconds < 0:
        raise ValueError("meta.seconds must be a finite number >= 0")
    check_identity_record(meta.get("identity"))
    return Units(**units), meta, n_qk


def finished_layout(header: dict) -> dict:
    if header.get("partial") is not None:
        raise ValueError("a partial file (gathering was interrupted): gather again to finish")
    units, meta, n_qk = check_header_meta(header)
    if meta["rows_done"] != meta["rows"]:
        raise ValueError("meta.rows_done must equal meta.rows in a finished file")
    n_target, n_source = units.total - units.start(1), units.start(units.logit_stage)
    # sources kept per target: at most the units below one (10**30 passed into a global
    # graph's settings, beyond what its file can hold as int64: a fuzz pass)
    check_int(meta.get("top_k"), "meta.top_k", 1, n_source)
    G, N = sum(n_qk), meta["qk_units"]
    f32, i32 = "F32", "I32"
    return {
        "activity": (f32, (2, units.total)),
        "count": (f32, (2, units.total)),
        "edges.indptr": ("I64", (n_target + 1,)),
        "edges.source": (i32, ("nnz",)),
        "edges.value": (f32, (2, "nnz")),
        "edges.into": (f32, (3, 2, n_target)),
        "edges.out": (f32, (3, 2, n_source)),
        "qk.query_units": (i32, (G, N)),
        "qk.key_units": (i32, (G, N)),
        "qk.pairs": (f32, (2, G, N, N)),
        "qk.query_marginal": (f32, (2, G, N)),
        "qk.key_marginal": (f32, (2, G, N)),
        "qk.scalars": (f32, (3, G, len(QK_SCALARS))),
    }


def read_finished(path: Path):
    """Every field of a finished statistics file, checked before use (a ``Statistics``); a
    ValueError says what is wrong."""
    from .statistics import Statistics

    header, t = read_safetensors(path, finished_layout)
    units, meta, n_qk = check_header_meta(header)
    stats = Statistics(
        units, n_qk, t["activity"], t["count"], t["edges.indptr"], t["edges.source"].long(),
        t["edges.value"], t["edges.into"], t["edges.out"], t["qk.query_units"].long(),
        t["qk.key_units"].long(), t["qk.pairs"], t["qk.query_marginal"], t["qk.key_marginal"],
        t["qk.scalars"], meta,
    )  # fmt: skip
    check_values(stats)
    return stats


def check_values(stats) -> None:
    """Values a finished file must hold: finite; counts of occurrences; edges in CSR order
    from lower stages only; QK units below their block; token counts that fill every row."""
    for name, tensor in stats.tensors().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    check_counts(stats)
    _check_edges(stats)
    _check_qk(stats)


def check_counts(stats) -> None:
    """The counts a finished or a partial file must hold (``stats``: statistics or the
    gathering's ``Sums``): occurrences, non-negative activity, and in each half exactly one
    token count per position of its rows done, so a file cannot claim other rows than its
    sums hold."""
    count, units, activity = stats.count, stats.units, stats.activity
    if (count < 0).any() or (count != count.round()).any():
        raise ValueError("count holds values that are not occurrence counts")
    if (activity < 0).any():
        raise ValueError("activity holds negative values")
    for half in (0, 1):
        rows = (stats.meta["rows_done"] + 1 - half) // 2
        tokens = count[half, : units.d_vocab].double().sum()
        if tokens != rows * stats.meta["n_ctx"]:
            raise ValueError(
                f"its token counts sum to {tokens:.0f} in half {half}, not its {rows} rows x "
                f"n_ctx = {rows * stats.meta['n_ctx']}"
            )
        # a unit occurs at most once per position (a forged 2,000,000 firings in 8,192 tokens
        # was printed as a head's count: a fuzz pass)
        if (count[half] > rows * stats.meta["n_ctx"]).any():
            raise ValueError(f"count holds more occurrences than half {half}'s tokens")
    # a summed activation: nothing where its unit never occurred, one per occurrence for tokens
    # and errors, a probability per occurrence for logits (activity x 1e30 was printed as a
    # head's mean: a fuzz pass)
    if ((activity != 0) & (count == 0)).any():
        raise ValueError("activity is not zero where its unit never occurred")
    stage = torch.from_numpy(units.stage.copy())
    last = torch.from_numpy(units.offsets[1:] - 1)  # each stage's last unit: an inner one's error
    inner = (stage > 0) & (stage < units.logit_stage)
    ones = (stage == 0) | (inner & (torch.arange(len(stage)) == last[stage]))
    if (activity[:, ones] != count[:, ones]).any():
        raise ValueError("activity of tokens and errors is not one per occurrence")
    logits = stage == units.logit_stage
    if (activity[:, logits] > count[:, logits] * (1 + 1e-5)).any():
        raise ValueError("activity of a logit is more than one probability per occurrence")


# How far a both-halves total may stand from its halves' sum, relative to the halves' absolute
# totals: each total is a float32 sum (unit roundoff 2**-24 = 6e-8) of at most a few tens of
# thousands of terms by torch's cascade summation (error under about log2(n) u = 1e-6 of the
# absolute sum), accumulated over at most 2L+1 stages, of terms each rounded once more where
# the halves were added: under 1e-5 in all; the fixture measures 8.3e-8. 1e-4 is the margin
# the edge values' bound below uses.
TOTALS_RTOL = 1e-4


def _check_totals(stats) -> None:
    """``edges.into`` and ``edges.out``: in each view the absolute total is non-negative and
    at least the signed one's size, and the both-halves view is the halves' sum (the signed
    totals within rounding, the absolute ones at most it: |a + b| <= |a| + |b|). A forged
    both-halves total was printed as the share of a unit's total its graph keeps (a fuzz
    pass)."""
    for name, totals in (("edges.into", stats.into_totals), ("edges.out", stats.out_totals)):
        signed, size = totals[:, 0].double(), totals[:, 1].double()
        if (size < 0).any():
            raise ValueError(f"{name} holds negative absolute totals")
        halves = size[0] + size[1]
        if ((signed[2] - signed[0] - signed[1]).abs() > halves * TOTALS_RTOL).any() or (
            size[2] > halves * (1 + TOTALS_RTOL)
        ).any():
            raise ValueError(f"{name}'s both-halves totals are not the halves' sums")
        if (signed.abs() > size * (1 + TOTALS_RTOL)).any():
            raise ValueError(f"{name} holds absolute totals below their signed totals' size")


def _check_edges(stats) -> None:
    _check_totals(stats)
    indptr, source, units = stats.edge_indptr, stats.edge_source, stats.units
    if indptr[0] != 0 or indptr[-1] != len(source) or (indptr.diff() < 0).any():
        raise ValueError("edges.indptr is not a CSR index of edges.source")
    n_target = len(indptr) - 1
    target = torch.repeat_interleave(torch.arange(n_target) + units.start(1), indptr.diff())
    below = torch.tensor(units.offsets)[torch.tensor(units.stage)[target]]
    if len(source) and ((source < 0).any() or (source >= below).any()):
        raise ValueError("edges.source holds units that are not below their target's stage")
    same_row = target[1:] == target[:-1]
    if (same_row & (source[1:] <= source[:-1])).any():
        raise ValueError("edges.source is not sorted and unique within each target")
    # a kept pair's summed edge is one of the terms its target's and its source's absolute
    # totals add up (every edge x 1e30 was drawn as a graph: a fuzz pass)
    if len(source):
        value = stats.edge_value.abs().double()
        for name, totals, at in (("edges.into", stats.into_totals, target - units.start(1)),
                                 ("edges.out", stats.out_totals, source)):  # fmt: skip
            bound = totals[:2, 1, :].double()[:, at]
            if (value > bound * (1 + 1e-4) + 1e-6).any():
                raise ValueError(f"edges.value holds a pair's sum above its {name} absolute "
                                 "total")  # fmt: skip


def _check_qk(stats) -> None:
    units = stats.units
    below = torch.tensor([units.start(lorsa_stage(l)) for l, n in enumerate(stats.n_qk)
                          for _ in range(n)])[:, None]  # fmt: skip
    for name, chosen in (("query", stats.qk_query_units), ("key", stats.qk_key_units)):
        real = chosen >= 0
        if (chosen < -1).any() or (chosen >= below).any():
            raise ValueError(f"qk.{name}_units holds units that are not below their block")
        if (real[:, 1:] & ~real[:, :-1]).any():
            raise ValueError(f"qk.{name}_units pads (-1) before its last unit")
        ordered = torch.sort(chosen, dim=1).values
        if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
            raise ValueError(f"qk.{name}_units lists a unit twice")
    scalars = stats.qk_scalars
    firings = scalars[:, :, 3]
    if (firings < 0).any() or (firings != firings.round()).any():
        raise ValueError("qk.scalars holds firing counts that are not counts")
    check_firings(stats)
    # the third view is the halves summed
    if not torch.equal(scalars[2, :, :4], scalars[0, :, :4] + scalars[1, :, :4]):
        raise ValueError("qk.scalars' total, bias and firings of both halves are not the "
                         "halves' sums")  # fmt: skip
    if (scalars[:, :, 4:] < 0).any() or (
        scalars[2, :, 4:].double() > (scalars[0, :, 4:] + scalars[1, :, 4:]).double() * 1.0001
    ).any():
        raise ValueError("qk.scalars holds absolute sides that are negative or, for both "
                         "halves, above the halves' sum")  # fmt: skip


def check_firings(stats) -> None:
    """A QK head fires where the OV heads it serves do: in each half, its firings
    (``qk_scalars[half, g, 3]``) are their occurrences (``count``), in a finished file or a
    partial one (``stats``: statistics or the gathering's ``Sums``). A forged 2**100 firings
    divided a QK head's terms per firing to 1e-25 in a global graph drawn with exit 0 (a fuzz
    pass)."""
    units = stats.units
    served = torch.cat([
        stats.count[:, units.start(lorsa_stage(l)) : units.start(lorsa_stage(l)) + n_ov]
        .reshape(2, n, n_ov // n).sum(2, dtype=torch.float64)
        for l, (n, n_ov) in enumerate(zip(stats.n_qk, units.n_ov, strict=True))
    ], dim=1)  # fmt: skip
    firings = stats.qk_scalars[:2, :, 3].double()
    if ((firings - served).abs() > 1e-5 * served + 0.5).any():
        raise ValueError("qk.scalars holds firings that are not its OV heads' occurrences")


# ----------------------------------------------------------------- the partial file
def partial_path(path: Path) -> Path:
    """Where gathering into ``path`` keeps its dense sums until it finishes."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def partial_plan(path: Path) -> dict | None:
    """The gathering settings (``rows`` asked for, ``rows_done``, ``n_ctx``, ``seed``,
    ``mode``) a partial file's header records, read without its tensors; None when there is
    no partial file or its header is not one (``load_partial`` then says what is wrong)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            header = parse_json((f.metadata() or {})["statistics"])
        if not isinstance(header, dict) or header.get("partial") is not True:
            return None
        _, meta, _ = check_header_meta(header)
    except Exception:  # any unreadable header: no plan (load_partial then says what is wrong)
        return None
    return {k: meta[k] for k in ("rows", "rows_done", "n_ctx", "seed", "mode")}


def check_settings(meta: dict, settings: dict, path: Path) -> None:
    """Refuse to continue a file gathered with other settings (another row stream)."""
    differ = [f"{k} {meta[k]!r}" for k, v in settings.items() if meta[k] != v]
    if differ:
        raise ValueError(
            f"{path}: holds statistics gathered with {', '.join(differ)}; remove it or choose "
            "another file"
        )


def check_rows(meta: dict, rows: int, path: Path) -> None:
    """Refuse to continue a file that holds more rows than asked for (sums cannot shrink)."""
    done = meta["rows_done"]
    if done > rows:
        raise ValueError(
            f"{path}: holds statistics over {done} rows, more than the {rows} asked for: ask "
            f"for {done} or more, or choose another file"
        )


def save_partial(sums, path: Path) -> None:
    """The dense sums, atomically (a temp file, then a rename)."""
    tensors = {f"edges.{s + 1}": b.contiguous() for s, b in enumerate(sums.edges)}
    tensors |= {"activity": sums.activity, "count": sums.count, "qk.scalars": sums.qk_scalars}
    for l, (q, k) in enumerate(zip(sums.qk_query, sums.qk_key, strict=True)):
        tensors |= {f"qk.query.{l}": q.contiguous(), f"qk.key.{l}": k.contiguous()}
    header = {"partial": True, "units": units_header(sums.units), "n_qk": sums.n_qk,
              "meta": sums.meta}  # fmt: skip
    write_file(path, tensors, header)


def load_partial(path: Path):
    """Read and check a partial file: every field, before use; a ValueError names ``path``."""
    from .gathering import Sums

    try:
        header, tensors = read_safetensors(path, partial_layout)
        units = Units(**header["units"])
        L = units.n_layers
        sums = Sums(
            units, header["n_qk"], [tensors[f"edges.{s}"] for s in range(1, 2 * L + 2)],
            tensors["activity"], tensors["count"],
            [tensors[f"qk.query.{l}"] for l in range(L)],
            [tensors[f"qk.key.{l}"] for l in range(L)], tensors["qk.scalars"], header["meta"],
        )  # fmt: skip
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} holds NaN or infinite values")
        check_counts(sums)
        check_firings(sums)
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable partial statistics file ({exc})") from None
    return sums


def partial_layout(header: dict) -> dict[str, tuple]:
    if header.get("partial") is not True:
        raise ValueError("not a partial file")
    units, _, n_qk = check_header_meta(header)
    sizes, L = units.sizes, units.n_layers
    layout = {f"edges.{s}": (2, units.start(s), sizes[s]) for s in range(1, 2 * L + 2)}
    layout |= {"activity": (2, units.total), "count": (2, units.total),
               "qk.scalars": (2, sum(n_qk), 4)}  # fmt: skip
    for l in range(L):
        shape = (2, n_qk[l], units.start(lorsa_stage(l)))
        layout |= {f"qk.query.{l}": shape, f"qk.key.{l}": shape}
    return {name: ("F32", shape) for name, shape in layout.items()}
