"""Error analysis of a replacement set: where each Lorsa layer and transcoder errs, by task
family, token role and position, and whether the Lorsa error and an attention-output SAE's
error on the same tokens share a direction (``replacement.errors`` has the bookkeeping).

    python -m reports.errors [--json benchmarks/results/error_analysis_default.json] [--out DIR]

re-renders the report (``errors.md``, ``errors.png``) from the results that
``benchmarks/error_analysis.py`` computes with ``analyse_errors``. The command writes them as one
set (``reports.outputs.write_set``, recorded in ``.errors-set.json``): an ``errors.md`` or
``errors.png`` in ``--out`` that no run of it wrote is refused before the report is made, and
kept.

Rows are held-out documents, one per row, the families taking turns
(``circuits.concepts.corpus_rows``: ``toy_models.data.examples(family, "heldout", seed)``), so
every token's role comes from the generator's spans through its ground-truth concepts
(``role_of``): ``bos``; ``name`` (any token of a character's name); ``operand`` and ``answer``
(addition digits; digits of a 4-digit chained operand carry no concept and count as
``other``); ``item`` (a successor list's elements); ``first`` and ``second`` (the two copies of
a repeated segment); ``separator`` (``+``, ``=``, commas, full stops, ``|``, line breaks);
``other`` (everything else: sentence frames, filler stretches, story text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from circuits.concepts import CONCEPT_ROLE, CONCEPTS, TOKEN_ROLES
from toy_models.cli import run_cli
from toy_models.data import FAMILIES
from toy_models.records import Bounds, NonNegative, Share, from_json

from .results_cli import render_results, write_results_report

DEFAULT_JSON = Path("benchmarks/results/error_analysis_default.json")
ROLES = TOKEN_ROLES
ROLE_OF_CONCEPT = {i: CONCEPT_ROLE[c] for i, c in enumerate(CONCEPTS)}
# The command's output set (``reports.outputs.OutputSet``, built where it is written: that
# module imports torch, which ``--help`` and a bad ``--json`` never pay for); the first names it.
REPORT_FILES = ("errors.md", "errors.png")


# ----------------------------------------------------------------- the results file
# What ``benchmarks/error_analysis.py`` writes, every field typed and in range: the file is
# read back as untrusted data (``check_results``) before anything is rendered from it.
Count = Annotated[int, Bounds(0, 2**53)]  # a count of tokens (exact in a float; a fuzz pass's
# 10**400 was echoed whole, 401 digits, in the refusal of a count beyond the file's tokens)
Cosine = Annotated[float, Bounds(-1.0, 1.0, nan=True)]
# an R^2 held out: at most 1, negative or NaN with few rows
Undefined = Annotated[float, Bounds(high=1.0, nan=True)]


@dataclass
class Shares:
    """``replacement.errors.error_shares``: per group of tokens."""

    fvu: NonNegative
    tokens: list[NonNegative]
    token_share: list[Share]
    error_share: list[Share]
    fvu_contribution: list[NonNegative]
    group_fvu: list[Annotated[float, Bounds(0.0, nan=True)]]  # NaN: a group without tokens


@dataclass
class Concentration:
    tokens_for_half: Share
    tokens_for_90pct: Share
    top_1pct_share: Share


@dataclass
class TokenErrors:
    token: Count
    count: Count
    error_share: Share
    token_share: Share
    enrichment: NonNegative
    text: str


@dataclass
class LayerErrors:
    by_family: Shares
    by_role: Shares
    by_position: Shares
    concentration: Concentration
    top_tokens: list[TokenErrors]
    dense_tokens: list[TokenErrors]


@dataclass
class SharedDirection:
    """``replacement.errors.shared_direction`` of a layer's Lorsa and SAE errors."""

    tokens: Count
    mean_cosine: Cosine
    mean_cosine_shuffled: Cosine
    b_along_a: Annotated[float, Bounds(0.0, nan=True)]
    a_along_b: Annotated[float, Bounds(0.0, nan=True)]
    r2_b_from_a: Undefined
    r2_a_from_b: Undefined
    lorsa_fvu: NonNegative
    sae_fvu: NonNegative
    by_family_mean_cosine: dict[str, Cosine]


@dataclass
class SaeSettings:
    width: Count
    top_k: Count
    steps: Count
    train_s: NonNegative


@dataclass
class ErrorResults:
    model: str
    replacement: str
    quick: bool
    sae: SaeSettings
    rows: Count
    tokens: Count
    seed: int
    families: list[str]
    roles: list[str]
    position_bins: list[str]
    layers: list[int]
    by_kind: dict[str, dict[str, LayerErrors]]
    lorsa_vs_sae: dict[str, SharedDirection]
    seconds: dict[str, NonNegative]


def check_results(results) -> ErrorResults:
    """The results file as typed records, or a ValueError naming the first field that is of
    the wrong type, out of range, or of another length than the groups it counts; group names
    repeated; a Lorsa-vs-SAE record of a layer without its Lorsa's errors, whose Lorsa FVU is
    not that layer's, or whose ``by_family_mean_cosine`` does not hold exactly the families
    with tokens there (a family deleted would drop out of the report silently); NaN where the
    benchmark writes none (a mean over tokens it kept)."""
    record = from_json(ErrorResults, results, "results")
    # counts a run cannot give (a review: 0 rows of 17153 tokens, an SAE keeping 0 of its
    # latents or more than it has, were rendered)
    if record.tokens > 0 and not 1 <= record.rows <= record.tokens:
        raise ValueError(f"results.rows: {record.rows} rows of documents for {record.tokens} "
                         "tokens")  # fmt: skip
    if not 1 <= record.sae.top_k <= record.sae.width:
        raise ValueError(f"results.sae.top_k: {record.sae.top_k} of {record.sae.width} latents")
    groups = {"by_family": record.families, "by_role": record.roles,
              "by_position": record.position_bins}  # fmt: skip
    for split, names in groups.items():
        field = {"by_family": "families", "by_role": "roles"}.get(split, "position_bins")
        if len(set(names)) != len(names):
            raise ValueError(f"results.{field}: {names!r:.80} names a group twice")
    for kind, per_layer in record.by_kind.items():
        for layer, r in per_layer.items():
            for split, names in groups.items():
                shares = getattr(r, split)
                for name in ("tokens", "token_share", "error_share", "fvu_contribution",
                             "group_fvu"):  # fmt: skip
                    if len(getattr(shares, name)) != len(names):
                        raise ValueError(f"results.by_kind.{kind}.{layer}.{split}.{name}: "
                                         f"{len(getattr(shares, name))} values for "
                                         f"{len(names)} groups")  # fmt: skip
                for i, (n, g) in enumerate(zip(shares.tokens, shares.group_fvu, strict=True)):
                    if math.isnan(g) and n > 0:  # undefined only for a group without tokens
                        raise ValueError(f"results.by_kind.{kind}.{layer}.{split}.group_fvu"
                                         f"[{i}]: NaN for a group of {n:g} tokens")  # fmt: skip
                _check_shares(shares, f"results.by_kind.{kind}.{layer}.{split}")
                if sum(shares.tokens) != record.tokens:  # every split groups every token
                    raise ValueError(f"results.by_kind.{kind}.{layer}.{split}.tokens: sum to "
                                     f"{sum(shares.tokens):.6g}, the file has {record.tokens} "
                                     "tokens")  # fmt: skip
            _check_concentration(r.concentration, record.tokens,
                                 f"results.by_kind.{kind}.{layer}.concentration")  # fmt: skip
            for name in ("top_tokens", "dense_tokens"):
                for i, x in enumerate(getattr(r, name)):
                    _check_token_errors(x, record.tokens, f"results.by_kind.{kind}.{layer}."
                                        f"{name}[{i}]")  # fmt: skip
    for layer, r in record.lorsa_vs_sae.items():
        _check_shared(record, layer, r)
    return record


def _same(a: float, b: float) -> bool:
    """Two figures a results file ties together, equal to float rounding."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _check_shares(s: Shares, where: str) -> None:
    """``error_shares``' figures agree with each other (each in range alone is not enough: a
    fuzz pass printed a group FVU of 1e40): token shares are the groups' tokens over their
    total, error shares sum to one, each group's part of the FVU is its error share of it, and
    the groups' variances (``fvu_contribution / group_fvu``, per group with error) make up the
    whole where every group with tokens has error."""
    total = sum(s.tokens)
    for i, (n, share) in enumerate(zip(s.tokens, s.token_share, strict=True)):
        if total > 0 and not _same(share, n / total):
            raise ValueError(f"{where}.token_share[{i}]: {share:.6g}, its tokens give "
                             f"{n / total:.6g}")  # fmt: skip
    if s.fvu > 0 and not _same(sum(s.error_share), 1.0):
        raise ValueError(f"{where}.error_share: sums to {sum(s.error_share):.6g}, not 1")
    for i, (e, part) in enumerate(zip(s.error_share, s.fvu_contribution, strict=True)):
        if not _same(part, e * s.fvu):
            raise ValueError(f"{where}.fvu_contribution[{i}]: {part:.6g}, its error share "
                             f"gives {e * s.fvu:.6g}")  # fmt: skip
    with_error = [(c, g) for n, c, g in zip(s.tokens, s.fvu_contribution, s.group_fvu,
                                            strict=True) if n > 0]  # fmt: skip
    if s.fvu > 0 and with_error and all(c > 0 and g > 0 for c, g in with_error):
        variance = sum(c / g for c, g in with_error)  # each group's over the whole's
        if not math.isclose(variance, 1.0, rel_tol=1e-4):
            raise ValueError(f"{where}.group_fvu: the groups' variances make {variance:.6g} of "
                             "the whole, not all of it")  # fmt: skip


def _check_concentration(c: Concentration, tokens: int, where: str) -> None:
    """``replacement.errors.concentration`` over ``tokens`` tokens: the fractions of tokens
    carrying half and 90% of the error are whole numbers of tokens, at least one, the first
    no more than the second, and the top 1% of tokens (the most erring) carry at least their
    number's share (a review: a tokens_for_90pct of 0, or below tokens_for_half, rendered)."""
    if tokens == 0:
        return
    for name in ("tokens_for_half", "tokens_for_90pct"):
        count = getattr(c, name) * tokens
        if count < 1 - 1e-6 or abs(count - round(count)) > 1e-6 * max(1.0, count):
            raise ValueError(f"{where}.{name}: {getattr(c, name):.6g}, not a whole number of "
                             f"tokens (at least one) of {tokens}")  # fmt: skip
    if c.tokens_for_half > c.tokens_for_90pct:
        raise ValueError(f"{where}.tokens_for_half: {c.tokens_for_half:.6g}, more than "
                         f"tokens_for_90pct ({c.tokens_for_90pct:.6g})")  # fmt: skip
    top = max(1, tokens // 100) / tokens
    if c.top_1pct_share < top * (1 - 1e-6):
        raise ValueError(f"{where}.top_1pct_share: {c.top_1pct_share:.6g}, below the "
                         f"{top:.6g} of the tokens it counts (the most erring)")  # fmt: skip


def _check_token_errors(x: TokenErrors, tokens: int, where: str) -> None:
    """A token's count within the file's tokens, and its shares and enrichment as
    ``replacement.errors.top_tokens`` makes them from it."""
    if x.count > tokens:
        raise ValueError(f"{where}.count: {x.count}, more than the file's {tokens} tokens")
    if tokens > 0 and not _same(x.token_share, x.count / tokens):
        raise ValueError(f"{where}.token_share: {x.token_share:.6g}, its count gives "
                         f"{x.count / tokens:.6g}")  # fmt: skip
    if x.token_share > 0 and not _same(x.enrichment, x.error_share / x.token_share):
        raise ValueError(f"{where}.enrichment: {x.enrichment:.6g}, its shares give "
                         f"{x.error_share / x.token_share:.6g}")  # fmt: skip


def _check_shared(record: ErrorResults, layer: str, r: SharedDirection) -> None:
    """A layer's Lorsa-vs-SAE record against that layer's Lorsa errors (``analyse_errors``
    copies its FVU and measures a cosine for every family with tokens)."""
    where = f"results.lorsa_vs_sae.{layer}"
    lorsa = record.by_kind.get("lorsa", {}).get(layer)
    if lorsa is None:
        raise ValueError(f"{where}: no Lorsa errors of layer {layer} (results.by_kind.lorsa)")
    if not math.isclose(r.lorsa_fvu, lorsa.by_family.fvu, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"{where}.lorsa_fvu: {r.lorsa_fvu!r}, the layer's Lorsa FVU is "
                         f"{lorsa.by_family.fvu!r}")  # fmt: skip
    present = [f for f, n in zip(record.families, lorsa.by_family.tokens, strict=True) if n > 0]
    have = set(r.by_family_mean_cosine)
    if missing := [f for f in present if f not in have]:
        raise ValueError(f"{where}.by_family_mean_cosine: no cosine for {missing[:3]}, a "
                         "family with tokens")  # fmt: skip
    if extra := sorted(have - set(present)):
        raise ValueError(f"{where}.by_family_mean_cosine: {extra[:3]!r:.80} is no family "
                         "with tokens")  # fmt: skip
    total = sum(lorsa.by_family.tokens)
    if r.tokens > total:  # the tokens of the layer where both errors are nonzero
        raise ValueError(f"{where}.tokens: {r.tokens}, more than the layer's {total:.0f} tokens")
    # a mean over tokens is NaN only where there are none (``shared_direction`` keeps the
    # tokens where both errors are nonzero): a reviewer's NaN over 17153 tokens printed "nan"
    if r.tokens > 0:
        for name in ("mean_cosine", "mean_cosine_shuffled", "b_along_a", "a_along_b"):
            if math.isnan(getattr(r, name)):
                raise ValueError(f"{where}.{name}: NaN, a mean over {r.tokens} tokens")
    # and a family's only where every one of its tokens is among those left out (a review: a
    # family's NaN over thousands of tokens was printed "NaN")
    for f, n in zip(record.families, lorsa.by_family.tokens, strict=True):
        if math.isnan(r.by_family_mean_cosine.get(f, 0.0)) and n > total - r.tokens:
            raise ValueError(f"{where}.by_family_mean_cosine.{f}: NaN, a mean over some of its "
                             f"{n:.0f} tokens (the layer has {r.tokens} of {total:.0f} with both "
                             "errors nonzero)")  # fmt: skip


def _token(raw: str) -> str:
    """A token the results keep as its vocabulary entry (``Ġby``), as the report shows it
    (`` by``; a newline ``⏎``, spaces alone ``␣``; a table's ``|`` and a code span's
    backtick replaced)."""
    from toy_models.tokenizer import vocab_text

    text = vocab_text(raw)
    if text and not text.strip(" "):  # spaces alone: an empty-looking code span otherwise
        text = text.replace(" ", "␣")
    return text.replace("\n", "⏎").replace("|", "¦").replace("`", "'")


def role_of(concepts: tuple[int, ...]) -> int:
    """A token's role (index into ``ROLES``) from its concept indices: the first role in
    ``ROLES`` order that one of its concepts names, else ``other``."""
    found = {ROLE_OF_CONCEPT[c] for c in concepts} - {None}
    return next((i for i, r in enumerate(ROLES) if r in found), ROLES.index("other"))


# ----------------------------------------------------------------- the analysis
def analyse_errors(
    replacement,
    tokenizer,
    layers: list[int],
    n_rows: int,
    *,
    saes: dict | None = None,
    seed: int = 4242,
    n_top: int = 8,
    batch_size: int = 16,
) -> dict:
    """Every figure of the report for ``layers``; ``saes`` maps a layer to its attention-output
    SAE (compared with that layer's Lorsa)."""
    import torch

    from circuits.concepts import corpus_rows
    from replacement import SUBLAYERS
    from replacement.errors import (
        POSITION_BINS,
        bin_labels,
        concentration,
        dictionary_errors,
        error_shares,
        position_bins,
        shared_direction,
        top_tokens,
    )
    from toy_models.data import pad_rows

    n_ctx = replacement.cfg.n_ctx
    rows = corpus_rows(tokenizer, n_ctx, seed, 0, n_rows)
    tokens = pad_rows([r.ids for r in rows])
    lengths = torch.tensor([len(r.ids) for r in rows])
    mask = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    family = torch.tensor([FAMILIES.index(r.example.family) for r in rows])[:, None].expand_as(
        tokens
    )
    role = pad_rows([[role_of(c) for c in r.concepts] for r in rows])
    positions = torch.arange(tokens.shape[1])[None].expand_as(tokens)
    edges = [e for e in POSITION_BINS if e < n_ctx]
    labels = {
        "family": family[mask],
        "role": role[mask],
        "position": position_bins(positions[mask], edges),
        "token": tokens[mask],
    }
    errors: dict = {}
    for batch in tokens.split(batch_size):
        for key, (e, y) in dictionary_errors(replacement, batch, layers).items():
            errors.setdefault(key, []).append((e, y))
    flat = {}
    for key, parts in errors.items():
        e = torch.cat([p[0] for p in parts])[mask]
        y = torch.cat([p[1] for p in parts])[mask]
        flat[key] = (e, y)
    del errors
    pos_labels = bin_labels(edges, n_ctx)
    out: dict = {
        "rows": n_rows,
        "tokens": int(mask.sum()),
        "seed": seed,
        "families": list(FAMILIES),
        "roles": list(ROLES),
        "position_bins": pos_labels,
        "layers": layers,
        "by_kind": {kind: {} for kind in SUBLAYERS},
        "lorsa_vs_sae": {},
    }
    for (kind, l), (e, y) in flat.items():
        top = top_tokens(e, labels["token"], n_top)
        dense = top_tokens(e, labels["token"], n_top, min_count=10, by="enrichment")
        for t in top + dense:
            t["text"] = tokenizer.id_to_token(t["token"])
        out["by_kind"][kind][str(l)] = {
            "by_family": error_shares(e, y, labels["family"], len(FAMILIES)),
            "by_role": error_shares(e, y, labels["role"], len(ROLES)),
            "by_position": error_shares(e, y, labels["position"], len(pos_labels)),
            "concentration": concentration(e),
            "top_tokens": top,
            "dense_tokens": dense,
        }
    with torch.no_grad():
        for l, sae in (saes or {}).items():
            e_lorsa, y = flat["lorsa", l]
            e_sae = y - sae(y)
            record = shared_direction(e_lorsa, e_sae)
            record["lorsa_fvu"] = out["by_kind"]["lorsa"][str(l)]["by_family"]["fvu"]
            record["sae_fvu"] = error_shares(e_sae, y, labels["family"], len(FAMILIES))["fvu"]
            record["by_family_mean_cosine"] = {
                f: shared_direction(e_lorsa[sel], e_sae[sel])["mean_cosine"]
                for i, f in enumerate(FAMILIES)
                if (sel := labels["family"] == i).any()
            }
            out["lorsa_vs_sae"][str(l)] = record
    return out


# ----------------------------------------------------------------- markdown
def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"


def _share_table(results: dict, split: str, names: list[str]) -> list[str]:
    """Rows (kind, layer); per group: error share (token share) and the group's FVU."""
    head = "| kind | layer | FVU | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for kind, per_layer in results["by_kind"].items():
        for layer, r in per_layer.items():
            s = r[split]
            cells = [
                f"{_pct(e)} ({_pct(t)}); {g:.3f}" if not math.isnan(g) else "-"
                for e, t, g in zip(s["error_share"], s["token_share"], s["group_fvu"], strict=True)
            ]
            lines.append(f"| {kind} | {layer} | {s['fvu']:.4f} | " + " | ".join(cells) + " |")
    return lines


def findings(results: dict) -> list[str]:
    out = []
    for kind, per_layer in results["by_kind"].items():
        for layer, r in per_layer.items():
            s = r["by_role"]
            enrich = [
                (e / t, ROLES[i]) for i, (e, t) in enumerate(zip(s["error_share"], s["token_share"],
                                                                  strict=True)) if t > 0.005
            ]  # fmt: skip
            # a group with no tokens has a NaN FVU (``check_results``), a role too rare to
            # compare (<0.5% of tokens) no share: neither may be named worst (a review: a NaN
            # first group won ``max`` and was printed as the worst family)
            f = r["by_family"]
            measured = [i for i, g in enumerate(f["group_fvu"]) if not math.isnan(g)]
            parts = [f"{kind} layer {layer}: FVU {s['fvu']:.4f}"]
            if enrich:
                ratio, role = max(enrich)
                parts.append(f"most error-dense role '{role}' ({ratio:.1f}x its token share)")
            if measured:
                worst = max(measured, key=lambda i: f["group_fvu"][i])
                parts.append(f"worst family '{results['families'][worst]}' (group FVU "
                             f"{f['group_fvu'][worst]:.3f})")  # fmt: skip
            c = r["concentration"]
            parts.append(f"{c['tokens_for_half']:.1%} of tokens carry half the error.")
            out.append("; ".join(parts))
    for layer, r in results["lorsa_vs_sae"].items():
        out.append(
            f"layer {layer}: Lorsa and attention-SAE errors, mean cosine {r['mean_cosine']:.3f} "
            f"(shuffled tokens {r['mean_cosine_shuffled']:.3f}); an affine map of the Lorsa error "
            f"explains {r['r2_b_from_a']:.1%} of the SAE error's variance and the reverse "
            f"{r['r2_a_from_b']:.1%} (FVU Lorsa {r['lorsa_fvu']:.4f}, SAE {r['sae_fvu']:.4f})."
        )
    return out


def markdown(results: dict) -> str:
    layers = [str(layer) for layer in results["layers"]]
    by_kind = results["by_kind"]
    if not layers or not by_kind or any(sorted(v) != sorted(layers) for v in by_kind.values()):
        raise ValueError(f"no results for every kind in every layer named ({layers})")
    lines = ["# Error analysis of the replacement layers", ""]
    if results.get("quick"):
        lines += [
            "**SMOKE RUN (`--quick`): a few rows and a barely trained SAE; these figures check "
            "the machinery and mean nothing.**",
            "",
        ]
    lines += [
        f"Model `{results.get('model')}`, replacement set `{results.get('replacement')}`; "
        f"{results['rows']} held-out documents (one per row, families in turn), "
        f"{results['tokens']} tokens. A dictionary's error on a token is its target minus its "
        "reconstruction on the original model's input. Each cell: the group's share of the "
        "error energy (its share of tokens); the group's own FVU (its error energy over its "
        "tokens' variance about the overall mean). The error shares of a row sum to 100% and "
        "the FVU contributions (share x FVU) to the row's FVU.",
        "",
        "![errors](errors.png)",
        "",
        "## Findings",
        "",
        *[f"- {f}" for f in findings(results)],
        "",
        "## By task family",
        "",
        *_share_table(results, "by_family", results["families"]),
        "",
        "## By token role",
        "",
        *_share_table(results, "by_role", results["roles"]),
        "",
        "## By position",
        "",
        *_share_table(results, "by_position", results["position_bins"]),
        "",
        "## Where it concentrates: tokens",
        "",
        "Top tokens: most error energy in all (share of the error, x their token share); "
        "densest: most error per occurrence among tokens seen 10 times or more.",
        "",
        "| kind | layer | tokens for half the error | for 90% | top 1% carry | top tokens "
        "| densest tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, per_layer in results["by_kind"].items():
        for layer, r in per_layer.items():
            c = r["concentration"]
            top, dense = (
                ", ".join(
                    f"`{_token(t['text'])}` {t['error_share']:.1%} ({t['enrichment']:.1f}x)"
                    for t in r.get(key, [])[:5]
                )
                for key in ("top_tokens", "dense_tokens")
            )
            lines.append(
                f"| {kind} | {layer} | {_pct(c['tokens_for_half'])} | "
                f"{_pct(c['tokens_for_90pct'])} | {_pct(c['top_1pct_share'])} | {top} | {dense} |"
            )
    if results["lorsa_vs_sae"]:
        sae = results.get("sae", {})
        lines += [
            "",
            "## Lorsa error vs attention-output SAE error on the same tokens",
            "",
            f"The SAE: {sae.get('width')} latents, K {sae.get('top_k')}, {sae.get('steps')} "
            "training steps (the replacement recipe; the shipped Lorsa had its own training "
            "run). Mean cosine per token, and with the SAE errors' tokens shuffled (what a "
            "shared mean direction alone gives); the share of one error's energy along the "
            "other's direction, token by token; and the variance of one explained by an affine "
            "map of the other (fitted on half the tokens, measured on the other half).",
            "",
            "| layer | FVU Lorsa | FVU SAE | mean cos | shuffled | SAE along Lorsa | Lorsa along "
            "SAE | R^2 SAE from Lorsa | R^2 Lorsa from SAE | mean cos by family |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for layer, r in results["lorsa_vs_sae"].items():
            fam = ", ".join(f"{f} {v:.2f}" for f, v in r["by_family_mean_cosine"].items())
            lines.append(
                f"| {layer} | {r['lorsa_fvu']:.4f} | {r['sae_fvu']:.4f} | {r['mean_cosine']:.3f} "
                f"| {r['mean_cosine_shuffled']:.3f} | {_pct(r['b_along_a'])} | "
                f"{_pct(r['a_along_b'])} | {_pct(r['r2_b_from_a'])} | {_pct(r['r2_a_from_b'])} "
                f"| {fam} |"
            )
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------- plots
def figure(results: dict):
    """The report's figure (a matplotlib ``Figure``), drawn in memory."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 8))
    axes = fig.subplots(2, 3)
    kinds = list(results["by_kind"])
    for col, kind in enumerate(kinds[:2]):
        per_layer = results["by_kind"][kind]
        for row, (split, names) in enumerate(
            (("by_role", results["roles"]), ("by_position", results["position_bins"]))
        ):
            ax = axes[row, col]
            width = 0.8 / max(1, len(per_layer))
            for j, (layer, r) in enumerate(per_layer.items()):
                s = r[split]
                ratio = [
                    e / t if t > 0 else 0.0
                    for e, t in zip(s["error_share"], s["token_share"], strict=True)
                ]
                ax.bar([i + j * width for i in range(len(names))], ratio, width, label=f"L{layer}")
            ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, fontsize=8,
                          rotation=30)  # fmt: skip
            ax.set_yscale("log")
            ax.set_ylabel("error share / token share")
            ax.set_title(f"{kind}: error per token {split.replace('_', ' ')} (1 = average)")
            ax.legend(fontsize=7)
    ax = axes[0, 2]
    vs = results["lorsa_vs_sae"]
    if vs:
        keys = [
            ("mean_cosine", "mean cos"),
            ("mean_cosine_shuffled", "shuffled cos"),
            ("r2_b_from_a", "R² SAE from Lorsa"),
            ("r2_a_from_b", "R² Lorsa from SAE"),
        ]
        width = 0.8 / len(keys)
        layers = list(vs)
        for j, (key, label) in enumerate(keys):
            ax.bar([i + j * width for i in range(len(layers))], [vs[l][key] for l in layers],
                   width, label=label)  # fmt: skip
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))],
                      [f"L{l}" for l in layers])  # fmt: skip
        # room above the bars for the legend (it hid L3's mean cosine: a reviewer)
        top = max([vs[l][k] for l in layers for k, _ in keys if math.isfinite(vs[l][k])],
                  default=1.0)  # fmt: skip
        ax.set_ylim(top=max(top, 0.0) * 1.6 + 1e-3)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set_title("Lorsa error vs attention-SAE error, same tokens")
    ax = axes[1, 2]
    for kind in kinds:
        for layer, r in results["by_kind"][kind].items():
            ax.plot(results["families"], r["by_family"]["group_fvu"], "-o",
                    label=f"{kind} L{layer}")  # fmt: skip
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 30)  # room above the lines for the legend (it hid a point)
    ax.set_ylabel("FVU within the family's tokens")
    ax.set_title("By task family")
    ax.legend(fontsize=6, ncol=4, loc="upper center")
    title = "Replacement-layer errors"
    if results.get("quick"):
        title += " (SMOKE RUN: meaningless figures)"
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_error_report(results: dict, out: Path) -> list[Path]:
    """``errors.md`` and ``errors.png`` in ``out`` (created), as one set (module docstring:
    the command's and ``benchmarks/error_analysis.py``'s); returns their paths."""
    return write_results_report(results, out, REPORT_FILES, check=check_results,
                                markdown=markdown, figure=figure)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return render_results(
        argv,
        prog="python -m reports.errors",
        description="Render the error analysis (benchmarks/error_analysis.py) as markdown and PNG.",
        default_json=DEFAULT_JSON,
        benchmark="benchmarks/error_analysis.py",
        what="an error-analysis result",
        write=write_error_report,
    )


if __name__ == "__main__":
    run_cli(main)
