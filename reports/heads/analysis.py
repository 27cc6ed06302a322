"""The whole analysis, in phases: scores and labels; each family's causal test against random
heads (and the successor family's OV test); where each task is computed; single-head ground
truth with each detector's precision and recall. Then the results that ``heads.json`` holds,
with an example of what each top head reads."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch

from circuits.statistics import identity
from toy_models.cli import UserError
from toy_models.data import FAMILIES
from toy_models.tokenizer import token_text

from .ablation import (
    corpus_batches,
    family_ablation,
    for_tasks,
    precision_recall,
    single_head_effects,
    task_batches,
    task_loss,
)
from .account import task_account
from .config import (
    DIAGNOSTICS,
    HEAD_FAMILIES,
    MIN_LAYER,
    RATIO_TARGET,
    SUCCESSOR_OV_TARGET,
    SUCCESSOR_TOP,
    SWEEP_SCORES,
    TASK_CORPUS,
    TASK_OF,
    TASKS,
    TEST_OF,
    THRESHOLDS,
    TRUTH_DELTA,
    Settings,
    Threshold,
    truth_key,
)
from .probes import ProbeDoc, build_probes
from .scores import HeadScores, family_labels, labels, passing, score_heads
from .successor import successor_ov

HeadSet = set[tuple[int, int]]  # (layer, head)
# Group testing's first chunks: zeroing is tried on the heads active on a task, many of which
# matter; BOS masking on every head, few of which do, so larger chunks are cheaper there.
TRUTH_CHUNK = {"zero": 32, "mask_bos": 128}


def analyse(replacement, tokenizer, settings: Settings | None = None, progress: bool = True):
    """Scores, labels, tests, accounts and ground truth: ``(results, scores, probes)``, where
    ``results`` is what ``heads.json`` holds (``settings``: ``Settings()`` when None)."""
    from tqdm import tqdm

    settings = settings or Settings()
    seconds: dict[str, float] = {}
    # 1) scores and labels
    t0 = time.perf_counter()
    probes = build_probes(tokenizer, settings.docs, replacement.cfg.n_ctx)
    scores = score_heads(replacement, probes, progress=progress)
    labelled = labels(scores)
    seconds["scores"] = time.perf_counter() - t0

    # 2) each family's test vs random heads; the successor family's OV test
    t0 = time.perf_counter()
    corpus = corpus_batches(replacement, probes)
    batches = task_batches(replacement, probes, corpus)
    clean = {task: task_loss(replacement, b, {}) for task, b in batches.items() if b}
    overflow = sorted(task for task, loss in clean.items() if not math.isfinite(loss))
    if overflow:  # weights that load (finite) but overflow in use: every figure would be NaN
        raise UserError(f"the replacement model's loss is not finite on {', '.join(overflow)}: "
                        "its weights overflow")  # fmt: skip
    ablation = {}
    for family in tqdm(HEAD_FAMILIES, desc="family tests", disable=not progress, leave=False):
        test = TEST_OF[family]
        ablation[family] = family_ablation(
            replacement, batches, clean, labelled[family], TASK_OF[family], settings.draws,
            settings.seed, test, corpus, every_task=serves_every_task(family),
        )  # fmt: skip
    successor = successor_ov(
        replacement, scores, probes, labelled["successor"], settings.draws, settings.seed
    )
    met = {f: bool(ablation[f].get("meets_target")) for f in HEAD_FAMILIES}
    # A successor head must both map the item to its successor and matter causally.
    met["successor"] &= bool(successor.get("meets_target"))
    seconds["family_tests"] = time.perf_counter() - t0

    # 2b) each family that misses, labelled and tested at other thresholds
    t0 = time.perf_counter()
    missed = [f for f in HEAD_FAMILIES if not met[f]]
    sweeps = {
        f: threshold_sweep(replacement, scores, probes, batches, clean, f, settings)
        for f in tqdm(missed, desc="threshold sweeps", disable=not progress, leave=False)
    }
    seconds["threshold_sweeps"] = time.perf_counter() - t0

    # 3) where each task is computed: layers of heads vs of features
    t0 = time.perf_counter()
    account = task_account(replacement, corpus)
    seconds["task_account"] = time.perf_counter() - t0

    # 4) single heads: the ground truth for precision and recall
    label_sets = {f: {(l, h) for l, hs in labelled[f].items() for h in hs} for f in HEAD_FAMILIES}
    truth, detectors = {}, {}
    if settings.truth:
        t0 = time.perf_counter()
        truth, detectors = ground_truth(replacement, probes, settings, label_sets, progress)
        seconds["single_head_tests"] = time.perf_counter() - t0

    results = {
        "settings": {
            **settings.__dict__,
            "thresholds": {f: t.__dict__ for f, t in THRESHOLDS.items()},
            "min_layer": MIN_LAYER,
            "successor_top": SUCCESSOR_TOP,
            "successor_ov_target": SUCCESSOR_OV_TARGET,
            "truth_delta": TRUTH_DELTA,
            "ratio_target": RATIO_TARGET,
            "tasks": {t: {"description": d, "corpus": TASK_CORPUS[t]} for t, d in TASKS.items()},
            "tests": TEST_OF,
        },
        "n_ov_heads": [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas],
        "probe_queries": {
            f: sum(len(p.keys.get(f, {})) for docs in probes.values() for p in docs)
            for f in HEAD_FAMILIES + DIAGNOSTICS
        },
        "clean_loss": clean,
        "families": {
            f: _family_summary(replacement, tokenizer, scores, probes, labelled, f, settings)
            for f in HEAD_FAMILIES
        },
        "scores": {
            f: {
                "score": [[round(v, 4) for v in s.score.tolist()] for s in per_layer],
                "active": [[int(v) for v in s.active.tolist()] for s in per_layer],
            }
            for f, per_layer in scores.families.items()
        },
        "ablation": ablation,
        "successor_ov": successor,
        "threshold_sweeps": sweeps,
        "account": account,
        "truth": truth,
        "detectors": detectors,
        "seconds": seconds,
    }
    # what the labels are bound to: a consumer checks it before reading heads by index
    results["identity"] = identity(replacement, tokenizer)
    results["overlaps"] = {
        f: {g: len(label_sets[f] & label_sets[g]) for g in HEAD_FAMILIES if g != f}
        for f in HEAD_FAMILIES
    }
    results["found"] = {f: results["families"][f]["total"] > 0 for f in HEAD_FAMILIES}
    carriers = successor_carriers_ov(replacement, scores, probes, truth, settings)
    if carriers is not None:
        results["successor_ov_truth"] = carriers
    results["met"] = met
    return results, scores, probes


def threshold_sweep(replacement, scores, probes, batches, clean, family: str, settings: Settings):
    """One family labelled at every ``SWEEP_SCORES`` threshold but its own (the same minimum of
    active queries and first layer) and tested as the verdict is, on its own task: per
    threshold its heads (listed when at most ten), its test against both random controls
    and, for successor heads, the OV test; ``met`` as the verdict would read it. A threshold
    labelling the same heads as the next lower one (or as the verdict's) is left out, and the
    sweep ends at the first that labels none."""
    own = THRESHOLDS[family]
    task, test = TASK_OF[family], TEST_OF[family]
    rows, previous = [], None
    for score in sorted({*SWEEP_SCORES, own.score}):
        heads = family_labels(
            scores, family, Threshold(score, own.min_active), MIN_LAYER.get(family, 0)
        )
        n = sum(len(h) for h in heads.values())
        if not n:
            break
        seen, previous = heads == previous or score == own.score, heads
        if seen:  # the same heads as the score below, or the verdict's
            continue
        a = family_ablation(
            replacement, batches, clean, heads, task, settings.draws, settings.seed, test
        )
        row = {"score": score, "heads": n, "per_layer": [len(h) for h in heads.values()]}
        if n <= 10:
            row["listed"] = [[l, h] for l, hs in heads.items() for h in hs]
        keep = ("increase", "random_mean", "ratio", "matched_random_mean", "matched_ratio")
        row |= {k: a.get(k) for k in keep} | {"meets_target": bool(a.get("meets_target"))}
        row["met"] = row["meets_target"]
        if family == "successor":
            ov = successor_ov(replacement, scores, probes, heads, settings.draws, settings.seed)
            keep = ("in_top", "random_in_top", "above_item", "median_rank", "in_sequence",
                    "meets_target")  # fmt: skip
            row["ov_test"] = {k: ov.get(k) for k in keep}
            row["met"] &= bool(ov.get("meets_target"))
        rows.append(row)
    return {"task": task, "test": test, "verdict_threshold": own.score, "rows": rows}


def successor_carriers_ov(replacement, scores, probes, truth: dict, settings: Settings):
    """The successor OV test on the heads that carry the successor task by their single-head
    tests (chosen by their causal effect alone, not by their OV): where the successor map
    lives among heads when the family fails. None without such heads."""
    key = truth_key(TASK_OF["successor"], TEST_OF["successor"])
    carriers: dict[int, list[int]] = {}
    for t in truth.get(key, {}).get("true_heads", []):
        carriers.setdefault(t["layer"], []).append(t["head"])
    if not carriers:
        return None
    ov = successor_ov(replacement, scores, probes, carriers, settings.draws, settings.seed)
    return ov | {"truth": key}


def serves_every_task(family: str) -> bool:
    """Families whose probe queries are every position of every corpus family (previous-token,
    local-context, duplicate-token and sink heads: machinery other heads read): their test is
    measured, with its own uniform control, on every task, since their damage may land on any
    of them; the verdict stays the one on the task fixed in advance."""
    return set(TASK_CORPUS[TASK_OF[family]]) == set(FAMILIES)


def truth_groups() -> list[tuple[tuple[str, ...], str]]:
    """The single-head runs the families need: ``(tasks, test)``, tasks that share documents
    (``TASK_CORPUS``) and a test measured together, in one group testing."""
    groups: dict[tuple, list[str]] = {}
    for family in HEAD_FAMILIES:
        task, test = TASK_OF[family], TEST_OF[family]
        tasks = groups.setdefault((TASK_CORPUS[task], test), [])
        if task not in tasks:
            tasks.append(task)
    return [(tuple(tasks), test) for (_, test), tasks in groups.items()]


def ground_truth(
    replacement,
    probes: dict[str, list[ProbeDoc]],
    settings: Settings,
    label_sets: dict[str, HeadSet],
    progress: bool = True,
) -> tuple[dict, dict]:
    """``(truth, detectors)``: per task and test (``truth_key``), the heads whose single-head
    test on the first ``settings.truth_docs`` documents costs at least ``TRUTH_DELTA`` (with
    their labels); per family, its labels' precision and recall against its own task and
    test."""
    from tqdm import tqdm

    subset = {c: docs[: settings.truth_docs] for c, docs in probes.items()}
    corpus = corpus_batches(replacement, subset)
    truth = {}
    for tasks, test in tqdm(truth_groups(), desc="single-head tests", disable=not progress,
                            leave=False):  # fmt: skip
        effects, runs = single_head_effects(
            replacement, for_tasks(corpus, tasks), TRUTH_DELTA, TRUTH_CHUNK[test], progress, test
        )
        for task in tasks:
            measured = effects.get(task, {})
            true = sorted((lh for lh, e in measured.items() if e >= TRUTH_DELTA),
                          key=lambda lh, m=measured: -m[lh])  # fmt: skip
            truth[truth_key(task, test)] = {
                "task": task,
                "test": test,
                "forward_passes": runs,
                "shared_with": [t for t in tasks if t != task],
                "heads_measured_alone": len(measured),
                "true_heads": [
                    {
                        "layer": l,
                        "head": h,
                        "increase": measured[(l, h)],
                        "labels": [f for f in HEAD_FAMILIES if (l, h) in label_sets[f]],
                    }
                    for l, h in true
                ],
            }
    detectors = {}
    for family in HEAD_FAMILIES:
        key = truth_key(TASK_OF[family], TEST_OF[family])
        true = {(t["layer"], t["head"]) for t in truth[key]["true_heads"]}
        detectors[family] = precision_recall(label_sets[family], true) | {
            "task": TASK_OF[family],
            "truth": key,
            "true_heads_by_label": by_label(truth[key]["true_heads"]),
        }
    return truth, detectors


def by_label(true_heads: list[dict]) -> dict[str, int]:
    """How many of the heads carry each label (``(none)``: unlabelled)."""
    out: dict[str, int] = {}
    for t in true_heads:
        for name in t["labels"] or ["(none)"]:
            out[name] = out.get(name, 0) + 1
    return out


def _family_summary(replacement, tokenizer, scores, probes, labelled, family, settings) -> dict:
    per_layer = scores.families[family]
    heads = []
    for l, hs in labelled[family].items():
        s = per_layer[l]
        for rank, h in enumerate(hs):
            entry = {"layer": l, "head": h, "score": float(s.score[h]), "active": int(s.active[h])}
            if rank < settings.examples:
                entry["example"] = example(replacement, tokenizer, scores, probes, family, l, h)
            heads.append(entry)
    heads.sort(key=lambda e: -e["score"])
    t = THRESHOLDS[family]
    below = [
        int(len(passing(per_layer[l], t)))
        for l in range(min(MIN_LAYER.get(family, 0), len(per_layer)))
    ]
    return {
        "task": TASK_OF[family],
        "test": TEST_OF[family],
        "threshold": t.__dict__,
        "min_layer": MIN_LAYER.get(family, 0),
        "counts_per_layer": [len(labelled[family][l]) for l in range(len(per_layer))],
        "layers": [l for l in range(len(per_layer)) if labelled[family][l]],
        "total": len(heads),
        "look_alikes_below_min_layer": sum(below),
        "heads": heads,
    }


def example(replacement, tokenizer, scores: HeadScores, probes, family: str, layer: int, head: int):
    """The probe query where the head read most from the family's keys (a sink: attended most
    to BOS): the query token, the expected key it read most from, the head's activation ``z``
    there, that key's share of ``z`` (``LorsaLayer.contributions``; None where the head is
    silent, as a sink often is where it rests on BOS) and the head's attention on it."""
    where = scores.families[family][layer].best_at[head]
    if where is None:
        return None
    corpus, doc, q = where
    probe = probes[corpus][doc]
    x = scores.lorsa_inputs[corpus][layer][doc, : len(probe.ids)]
    lorsa = replacement.lorsas[layer]
    with torch.no_grad():
        c = lorsa.contributions(x, q, torch.tensor([head]))[0]
        attention = lorsa.patterns(x[None, : q + 1])[0, head // lorsa.cfg.group_size, q]
        z = float(lorsa.encode(x[None, : q + 1])[0, q, head])  # after ReLU and TopK
    key = max(probe.keys[family][q], key=lambda k: float(c[k]))
    return {
        "corpus": corpus,
        "doc": doc,
        "query": q,
        "query_token": _token(tokenizer, probe.ids[q]),
        "key": key,
        "key_token": _token(tokenizer, probe.ids[key]),
        "z": z,
        "share_of_z": float(c[key] / c.sum()) if z > 0 else None,
        "attention": float(attention[key]),
        "context": _context(tokenizer, probe.ids, key, q),
    }


def _token(tokenizer, token: int) -> str:
    return token_text(tokenizer, token)


def _context(tokenizer, ids: list[int], key: int, query: int, width: int = 3) -> str:
    """The text around the key and the query, each in brackets, with ``…`` for a long gap."""

    def piece(positions: Iterable[int]) -> str:
        return "".join(
            f"[{_token(tokenizer, ids[p])}]" if p in (key, query) else _token(tokenizer, ids[p])
            for p in positions
        )

    left = range(max(0, key - width + 1), key + 1)
    if query - key <= width + 1:
        return piece(range(left.start, query + 1))
    return piece(left) + " … " + piece(range(query - width + 1, query + 1))
