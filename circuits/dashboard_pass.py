"""The streaming pass that builds unit dashboards (``circuits.dashboards`` holds the data,
its layout and its file; its docstring says what the pass keeps and how it resumes).

``build`` runs held-out rows through the replacement model a batch at a time, updates the
running state (``Pass``), saves a partial file every ``CHECKPOINT_SECONDS`` and resumes from
one; ``logit_effects`` adds each unit's promoted and suppressed tokens at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from replacement.model import MODES, ReplacementModel, hook_name
from toy_models.data import pad_rows

from .concepts import check_row_settings, concept_matrix, corpus_rows
from .dashboards import (
    BATCH_ROWS,
    CHECKPOINT_SECONDS,
    DEFAULT_ROWS,
    EMPTY,
    KEY_FIELDS,
    N_BINS,
    N_KEYS,
    N_LOGITS,
    SAMPLES,
    SLOT_FIELDS,
    TOP_K,
    WINDOW,
    WINDOW_AFTER,
    WINDOW_BEFORE,
    Dashboards,
    Layout,
    empty_state,
    hist_bin,
    read_file,
    write_file,
)
from .graph import checked_count
from .nodes import Kind
from .statistics import identity


# ----------------------------------------------------------------- the streaming pass
def _hash(seed: int, unit: Tensor, index: Tensor) -> Tensor:
    """A seeded 53-bit hash of (unit, token index), exact in float64 (splitmix64)."""
    x = (unit.numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        index.numpy().astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    )
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64))


def keep_per_unit(
    unit: Tensor, primary: Tensor, index: Tensor, k: int, row_length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Of candidates (unit, primary, token index), the k of each unit with the smallest
    primary (ties: smaller token index): (positions into the candidates, slot 0..k-1).
    ``row_length`` (the rows' ``n_ctx``): at most one candidate per unit and corpus row (token
    index // row_length), its best: a unit firing all along one document gave k windows of
    it a token apart (a reviewer's top examples were one document eight times)."""
    order = torch.argsort(index, stable=True)
    order = order[torch.argsort(primary[order], stable=True)]
    order = order[torch.argsort(unit[order], stable=True)]
    if row_length is not None and len(order):
        row = index[order] // row_length
        key = unit[order].long() * (int(row.max()) + 1) + row
        by_key = torch.argsort(key, stable=True)  # within a key, best first (``order``'s)
        first = torch.ones(len(key), dtype=torch.bool)
        first[1:] = key[by_key[1:]] != key[by_key[:-1]]
        best = torch.zeros(len(key), dtype=torch.bool)
        best[by_key[first]] = True
        order = order[best]
    u = unit[order]
    counts = torch.bincount(u, minlength=int(u.max()) + 1 if len(u) else 0)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(u)) - starts[u]
    keep = rank < k
    return order[keep], rank[keep]


class OtherSettings(ValueError):
    """A dashboards file made with other settings than a build asks for (``found`` and
    ``wanted``: the settings by name), so it can be neither resumed nor used."""

    def __init__(self, path: Path, found: dict, wanted: dict):
        self.path, self.found, self.wanted = path, found, wanted
        super().__init__(f"{path}: made with {found}, not {wanted}; remove it or pick --out")

    @property
    def differing(self) -> list[str]:
        return [k for k in self.wanted if self.found.get(k) != self.wanted[k]]


class Pass:
    """The running state of the pass over one batch at a time (module docstring)."""

    def __init__(self, replacement: ReplacementModel, layout: Layout, state: dict, meta: dict):
        self.replacement, self.layout, self.state, self.meta = replacement, layout, state, meta
        self.slot = layout.lorsa_slot()

    def add(self, rows) -> None:
        n_ctx = self.meta["n_ctx"]
        first_row = self.meta["rows_done"]
        tokens = pad_rows([r.ids for r in rows])
        B, P = tokens.shape
        valid = torch.arange(P)[None, :] < torch.tensor([len(r.ids) for r in rows])[:, None]
        C = concept_matrix(rows, P)
        s = self.state
        s["tokens"] += int(valid.sum())
        s["concept_count"] += C.sum((0, 1)).long()
        names = {hook_name(l, x) for l in range(len(self.layout.n_ov))
                 for x in ("lorsa.hook_z", "transcoder.hook_acts", "lorsa.hook_in",
                           "lorsa.hook_pattern")}  # fmt: skip
        _, cache = self.replacement.run_with_cache(
            tokens, mode=self.meta["mode"], names_filter=lambda n: n in names
        )
        window_tokens = torch.nn.functional.pad(
            tokens.masked_fill(~valid, -1), (WINDOW_BEFORE, WINDOW_AFTER), value=-1
        )
        gidx_base = (torch.arange(B) + first_row)[:, None] * n_ctx + torch.arange(P)[None, :]
        Cflat = C.reshape(B * P, -1)
        for kind, l, width, start in self.layout.blocks():
            site = "lorsa.hook_z" if kind == Kind.LORSA else "transcoder.hook_acts"
            acts = cache[hook_name(l, site)].float() * valid[..., None]
            b, p, i = acts.nonzero(as_tuple=True)
            value = acts[b, p, i]
            unit = i + start
            s["fires"] += torch.bincount(unit, minlength=self.layout.total)
            s["act_sum"].index_add_(0, unit, value.double())
            bucket = hist_bin(value)
            s["hist"].view(-1).index_add_(
                0, unit * N_BINS + bucket, torch.ones_like(unit, dtype=torch.int32)
            )
            fired = (acts > 0).float().reshape(B * P, width)
            s["concept_both"][start : start + width] += (fired.T @ Cflat).round().int()
            lorsa = None
            if kind == Kind.LORSA:
                x = cache[hook_name(l, "lorsa.hook_in")]
                lorsa = (cache[hook_name(l, "lorsa.hook_pattern")],
                         self.replacement.lorsas[l].values(x),
                         self.replacement.lorsas[l].cfg.group_size)  # fmt: skip
            new = (b, p, i, unit, value, gidx_base[b, p])
            self._merge(
                "top", TOP_K, -value.double(), new, window_tokens, tokens, lorsa, start, width
            )
            h = _hash(self.meta["seed"], unit, gidx_base[b, p])
            self._merge("sample", SAMPLES, h, new, window_tokens, tokens, lorsa, start, width)
        self.meta["rows_done"] += B

    def _merge(self, name, k, primary, new, window_tokens, tokens, lorsa, start, width) -> None:
        s = self.state
        b, p, i, unit, value, gidx = new
        old_index = s[f"{name}.index"][start : start + width]
        ou, oj = (old_index >= 0).nonzero(as_tuple=True)
        if name == "top":
            old_primary = -s["top.value"][start : start + width][ou, oj].double()
        else:  # the hash is a function of (seed, unit, token): recomputed, not stored
            old_primary = _hash(self.meta["seed"], ou + start, old_index[ou, oj])
        cand_unit = torch.cat([ou, i])
        n_old = len(ou)
        # the top examples are of as many documents (rows); samples are drawn over tokens
        kept, slot = keep_per_unit(
            cand_unit, torch.cat([old_primary, primary]), torch.cat([old_index[ou, oj], gidx]), k,
            self.meta["n_ctx"] if name == "top" else None,
        )  # fmt: skip
        fields = [f"{name}.{field}" for field in SLOT_FIELDS]
        keys = lorsa is not None
        heads = self.slot[start : start + width] if keys else None
        key_fields = [f"{name}.{field}" for field in KEY_FIELDS]
        old = {f: s[f][start : start + width][ou, oj] for f in fields}
        if keys:
            old |= {f: s[f][heads[ou], oj] for f in key_fields}
        # Reset the units' slots, then write the kept candidates into them.
        for f in fields:
            s[f][start : start + width] = EMPTY[f]
        if keys:
            for f in key_fields:
                s[f][heads] = EMPTY[f]
        from_old = kept < n_old
        ko, so = kept[from_old], slot[from_old]
        block = {f: s[f][start : start + width] for f in fields}
        for f in fields:
            block[f][cand_unit[ko], so] = old[f][ko]
        if keys:
            for f in key_fields:
                s[f][heads[cand_unit[ko]], so] = old[f][ko]
        kn, sn = kept[~from_old] - n_old, slot[~from_old]
        if not len(kn):
            return
        nb, np_, ni = b[kn], p[kn], i[kn]
        block[f"{name}.value"][ni, sn] = value[kn]
        block[f"{name}.index"][ni, sn] = gidx[kn]
        offsets = np_[:, None] + torch.arange(WINDOW)[None, :]
        block[f"{name}.window"][ni, sn] = window_tokens[nb[:, None], offsets].short()
        if keys:
            pattern, values, group = lorsa
            contrib = pattern[nb, ni // group, np_, :] * values[nb, :, ni]  # (E, key)
            n_keys = min(N_KEYS, contrib.shape[1])
            top = contrib.abs().topk(n_keys, dim=1)
            kpos = top.indices
            kval = contrib.gather(1, kpos)
            real = kpos <= np_[:, None]
            hs = heads[ni]
            s[f"{name}.key_pos"][hs, sn, :n_keys] = kpos.masked_fill(~real, -1).short()
            s[f"{name}.key_value"][hs, sn, :n_keys] = kval.masked_fill(~real, 0).float()
            prev = (kpos - 1).clamp_min(0)
            key_tok = torch.stack(
                [tokens[nb[:, None], kpos], tokens[nb[:, None], prev].masked_fill(kpos == 0, -1)],
                -1,
            ).masked_fill(~real[..., None], -1)
            s[f"{name}.key_token"][hs, sn, :n_keys] = key_tok.short()


def logit_effects(replacement: ReplacementModel, layout: Layout, state: dict) -> None:
    """The ``N_LOGITS`` most promoted and suppressed tokens of every unit's write vector."""
    rw = replacement.read_write()
    n = min(N_LOGITS, rw.unembed.shape[0])
    for kind, l, _, start in layout.blocks():
        effect = rw.direct_logits(kind == Kind.LORSA, l)  # unit vocab
        for j, largest in enumerate((True, False)):
            top = effect.topk(n, dim=1, largest=largest)
            rows = slice(start, start + len(effect))
            state["logit_token"][rows, j, :n] = top.indices.int()
            state["logit_value"][rows, j, :n] = top.values


def build(
    replacement: ReplacementModel,
    tokenizer,
    path: str | Path,
    *,
    rows: int = DEFAULT_ROWS,
    n_ctx: int | None = None,
    seed: int = 0,
    mode: str = "local",
    batch_rows: int = BATCH_ROWS,
    progress: bool | None = True,
    stop_after: int | None = None,
) -> Dashboards:
    """Build (or resume, or just load) the dashboards file at ``path``. ``stop_after``: stop
    after that many rows in this call (a partial file), as an interruption would.
    ``progress``: None shows the bar only on a terminal."""
    from tqdm import tqdm

    path = Path(path)
    n_ctx = replacement.cfg.n_ctx if n_ctx is None else n_ctx
    checked_count(rows, "rows")
    checked_count(batch_rows, "batch_rows")
    if stop_after is not None:
        checked_count(stop_after, "stop_after")
    check_row_settings(n_ctx, seed, replacement.cfg.n_ctx)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    settings = {"rows": rows, "n_ctx": n_ctx, "seed": seed, "mode": mode, "batch_rows": batch_rows}
    ident = identity(replacement, tokenizer)
    layout = Layout.of(replacement)
    if replacement.cfg.d_vocab > 32767:  # windows hold token ids as int16
        raise ValueError(f"a vocabulary of {replacement.cfg.d_vocab} tokens is over 32767")
    if rows * n_ctx >= 2**31:
        raise ValueError("rows x n_ctx must stay below 2**31 (token indices, counts)")
    if not path.exists():  # to be written: a link that leads nowhere (dangling, in a loop)
        # was built into for a minute and refused at the first save (a review, at
        # circuits.dashboard_cli's default path, which is known only once the set is loaded)
        from toy_models.files import check_writable_file

        check_writable_file(path, "dashboards file")
    if path.exists():
        dash = read_file(path, replacement, tokenizer)
        found = {k: dash.meta.get(k) for k in settings}
        if found != settings:
            raise OtherSettings(path, found, settings)
    else:
        dash = Dashboards(
            layout,
            empty_state(layout),
            {**settings, "rows_done": 0, "seconds": 0.0, "identity": ident},
        )
    if dash.finished:
        return dash
    run = Pass(replacement, layout, dash.state, dash.meta)
    t0, last = time.perf_counter(), time.perf_counter()
    seconds0 = dash.meta["seconds"]
    limit = rows if stop_after is None else min(rows, dash.meta["rows_done"] + stop_after)
    disable = None if progress is None else not progress
    bar = tqdm(total=rows, initial=dash.meta["rows_done"], disable=disable, desc="unit dashboards")
    if bar.disable and progress is None:  # no terminal, no bar: a line says what the wait is
        # (a reviewer's first trace in a log was silent for 90 s)
        print(f"building unit dashboards: {path} ({limit - dash.meta['rows_done']} rows to go)",
              file=sys.stderr, flush=True)  # fmt: skip
    with torch.no_grad():
        try:
            while dash.meta["rows_done"] < limit:
                a = dash.meta["rows_done"]
                z = min(a + batch_rows, rows)
                run.add(corpus_rows(tokenizer, n_ctx, seed, a, z))
                bar.update(z - a)
                if (
                    time.perf_counter() - last > CHECKPOINT_SECONDS
                    and dash.meta["rows_done"] < rows
                ):
                    dash.meta["seconds"] = seconds0 + time.perf_counter() - t0
                    write_file(path, dash)
                    last = time.perf_counter()
        finally:
            bar.close()
        dash.meta["seconds"] = seconds0 + time.perf_counter() - t0
        if dash.finished:
            logit_effects(replacement, layout, dash.state)
        write_file(path, dash)
    return dash
