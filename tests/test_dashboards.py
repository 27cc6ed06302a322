"""Unit dashboards and concept labels (circuits.dashboards, circuits.concepts) against brute
force on a tiny trained model with random replacement layers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from circuits import dashboard_pass as P
from circuits import dashboards as D
from circuits.concepts import CONCEPTS, INDEX, best_f1, corpus_rows, units_best_f1
from circuits.nodes import Kind
from replacement.model import hook_name

ROWS, BATCH = 11, 4  # batches that do not divide the rows


@pytest.fixture
def setup(tiny_pretrained, make_replacement, tmp_path):
    model, tokenizer = tiny_pretrained
    replacement = make_replacement(model, n_qk=2, n_ov=8, lorsa_k=3, d_sae=16, tc_k=4)
    return replacement, tokenizer, tmp_path


def _build(replacement, tokenizer, path, **kw):
    kw = {"rows": ROWS, "batch_rows": BATCH, "seed": 3, "progress": False, **kw}
    return P.build(replacement, tokenizer, path, **kw)


def _brute(replacement, tokenizer, n_ctx):
    """Every firing (unit, value, token index), the concept matrix and the row tokens."""
    rows = corpus_rows(tokenizer, n_ctx, 3, 0, ROWS)
    layout = D.Layout.of(replacement)
    firings, acts_all = [], []
    for r, row in enumerate(rows):
        tokens = torch.tensor([row.ids])
        _, cache = replacement.run_with_cache(tokens, mode="local")
        per_unit = []
        for kind, l, _, start in layout.blocks():
            site = "lorsa.hook_z" if kind == Kind.LORSA else "transcoder.hook_acts"
            acts = cache[hook_name(l, site)][0]  # pos width
            per_unit.append(acts)
            for p, i in acts.nonzero().tolist():
                firings.append((start + i, float(acts[p, i]), r * n_ctx + p))
        acts_all.append(torch.cat(per_unit, 1))
    concepts = torch.zeros(sum(len(r.ids) for r in rows), len(CONCEPTS))
    t = 0
    for row in rows:
        for cs in row.concepts:
            concepts[t, list(cs)] = 1
            t += 1
    return rows, firings, torch.cat(acts_all), concepts


def test_top_k_samples_and_counts_equal_brute_force(setup):
    replacement, tokenizer, tmp = setup
    n_ctx = replacement.cfg.n_ctx
    with torch.no_grad():
        dash = _build(replacement, tokenizer, tmp / "d.safetensors")
        rows, firings, acts, _ = _brute(replacement, tokenizer, n_ctx)
    s = dash.state
    assert dash.n_tokens == acts.shape[0]
    assert torch.equal(s["fires"], (acts > 0).sum(0))
    checked, several = 0, False
    for u in range(dash.layout.total):
        mine = [f for f in firings if f[0] == u]
        # the top examples: the best firing of each row (document), the best rows first
        best = {}
        for f in sorted(mine, key=lambda f: (-f[1], f[2])):
            best.setdefault(f[2] // n_ctx, f)
        top = sorted(best.values(), key=lambda f: (-f[1], f[2]))[: D.TOP_K]
        several |= len(best) < len(mine)
        got = [(int(i), float(v)) for i, v in zip(s["top.index"][u], s["top.value"][u], strict=True)
               if i >= 0]  # fmt: skip
        assert [g[0] for g in got] == [f[2] for f in top], u
        assert [g[1] for g in got] == pytest.approx([f[1] for f in top], rel=1e-5, abs=1e-5)
        h = P._hash(
            3, torch.full((len(mine),), u), torch.tensor([f[2] for f in mine], dtype=torch.long)
        )
        sample = sorted(zip(h.tolist(), [f[2] for f in mine], strict=True))[: D.SAMPLES]
        assert sorted(int(i) for i in s["sample.index"][u] if i >= 0) == sorted(
            i for _, i in sample
        )
        for j, (_, _, index) in enumerate(top):  # the window around the activating token
            r, p = divmod(index, n_ctx)
            ids = rows[r].ids
            want = [ids[q] if 0 <= q < len(ids) else -1
                    for q in range(p - D.WINDOW_BEFORE, p + D.WINDOW_AFTER + 1)]  # fmt: skip
            assert s["top.window"][u, j].tolist() == want
        checked += len(top)
    assert checked > 50 and several  # units firing twice in a row, which the rule thins out


def test_z_pattern_keys_are_the_largest_contributions(setup):
    replacement, tokenizer, tmp = setup
    n_ctx = replacement.cfg.n_ctx
    with torch.no_grad():
        dash = _build(replacement, tokenizer, tmp / "d.safetensors")
        rows = corpus_rows(tokenizer, n_ctx, 3, 0, ROWS)
        layout, slot, seen = dash.layout, dash.layout.lorsa_slot(), 0
        for kind, l, width, start in layout.blocks():
            if kind != Kind.LORSA:
                continue
            for i in range(width):
                u = start + i
                for j in range(D.TOP_K):
                    index = int(dash.state["top.index"][u, j])
                    if index < 0:
                        continue
                    r, q = divmod(index, n_ctx)
                    _, cache = replacement.run_with_cache(torch.tensor([rows[r].ids]), mode="local")
                    x = cache[hook_name(l, "lorsa.hook_in")][0]
                    c = replacement.lorsas[l].contributions(x, q, torch.tensor([i]))[0]
                    assert float(c.sum()) == pytest.approx(
                        float(dash.state["top.value"][u, j]), rel=1e-4, abs=1e-5
                    )
                    order = c.abs().argsort(descending=True)[: D.N_KEYS]
                    h = int(slot[u])
                    assert dash.state["top.key_pos"][h, j].tolist()[: len(order)] == order.tolist()
                    assert dash.state["top.key_value"][h, j, : len(order)] == pytest.approx(
                        c[order], rel=1e-4, abs=1e-6
                    )
                    seen += 1
    assert seen > 10


def test_f1_equals_brute_force(setup):
    replacement, tokenizer, tmp = setup
    with torch.no_grad():
        dash = _build(replacement, tokenizer, tmp / "d.safetensors")
        _, _, acts, concepts = _brute(replacement, tokenizer, replacement.cfg.n_ctx)
    index, f1 = dash.concept_labels()
    fired = acts > 0
    for u in range(dash.layout.total):
        if not fired[:, u].any():
            assert index[u] == -1 and torch.isnan(f1[u])
            continue
        scores = []
        for c in range(len(CONCEPTS)):
            tp = float((fired[:, u] & (concepts[:, c] > 0)).sum())
            precision = tp / float(fired[:, u].sum())
            recall = tp / float(concepts[:, c].sum()) if concepts[:, c].any() else 0.0
            scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
        best = max(scores)
        assert float(f1[u]) == pytest.approx(best, abs=1e-9)
        assert int(index[u]) == scores.index(best)


def test_units_best_f1_of_any_dictionary_equals_the_pass(setup):
    """The labels of units outside the replacement model (an SAE's latents) come from the
    same counts: given the replacement's own activations, the pass's labels; a unit that is
    a concept's indicator gets it with F1 1 (padding, where it is also on, not counted); a unit
    that never fires gets none."""
    replacement, tokenizer, tmp = setup
    layout = D.Layout.of(replacement)
    rows = corpus_rows(tokenizer, replacement.cfg.n_ctx, 3, 0, ROWS)
    concept = INDEX["family: names"]
    batches = iter(range(0, ROWS, 3))

    def activations(tokens):
        _, cache = replacement.run_with_cache(tokens, mode="local")
        sites = [(l, "lorsa.hook_z" if kind == Kind.LORSA else "transcoder.hook_acts")
                 for kind, l, _, _ in layout.blocks()]  # fmt: skip
        acts = [cache[hook_name(l, site)] for l, site in sites]
        chunk = rows[next(batches) :][: len(tokens)]
        on = torch.zeros(tokens.shape + (1,))
        for b, row in enumerate(chunk):
            names = [concept in cs for cs in row.concepts]
            on[b, : len(names), 0] = torch.tensor(names, dtype=torch.float)
            on[b, len(names) :, 0] = float(names[-1])  # padding: on where the row ended on
        return torch.cat(acts + [on, torch.full(tokens.shape + (1,), -1.0)], -1)

    with torch.no_grad():
        dash = _build(replacement, tokenizer, tmp / "d.safetensors")
        index, f1, fires, chance = units_best_f1(activations, rows, batch_rows=3)
    ours, our_f1 = dash.concept_labels()
    n = layout.total
    assert torch.equal(fires[:n], dash.state["fires"].long())
    assert torch.equal(index[:n], ours)
    torch.testing.assert_close(f1[:n], our_f1.double(), equal_nan=True)
    assert sum(len(r.ids) for r in rows) == dash.n_tokens  # both count the same tokens
    torch.testing.assert_close(chance[:n], dash.concept_chance(ours), equal_nan=True)
    u = int((ours >= 0).nonzero()[0])  # the viewer's record of a labelled unit carries both
    kind, layer, _, start = max((b for b in layout.blocks() if b[3] <= u), key=lambda b: b[3])
    view = next(iter(dash.for_viewer(tokenizer, [(kind, layer, u - start)]).values()))
    assert view["concept"]["chance"] == pytest.approx(float(chance[u]))
    assert view["concept"]["at_chance"] == bool(our_f1[u] < 1.5 * chance[u])
    # the summary names and groups by the labels that are neither at chance nor the kind of
    # document a unit fires in (``family: ...``), and only those
    named = dash.summary_concepts()
    ids = layout.ids()
    document = torch.tensor([c.startswith("family: ") for c in CONCEPTS])[ours.clamp_min(0)]
    above = (ours >= 0) & ~(our_f1 < 1.5 * chance[:n])
    informative = above & ~document
    assert int(informative.sum()) < int(above.sum())  # the tiny set has family-labelled units
    assert 0 < int(informative.sum()) < int((ours >= 0).sum())  # the tiny set has dense units
    assert sorted(named) == sorted(ids[v] for v in informative.nonzero()[:, 0].tolist())
    for v in informative.nonzero()[:, 0].tolist()[:20]:
        assert named[ids[v]] == (CONCEPTS[int(ours[v])], pytest.approx(float(our_f1[v])))
    names_tokens = sum(concept in cs for row in rows for cs in row.concepts)
    assert 0 < names_tokens and int(fires[n]) == names_tokens
    assert int(index[n]) == concept and float(f1[n]) == 1.0
    assert int(index[n + 1]) == -1 and torch.isnan(f1[n + 1]) and int(fires[n + 1]) == 0


def test_best_f1_picks_a_perfect_concept():
    fires = torch.tensor([4, 0, 3])
    count = torch.tensor([4, 8, 6])
    both = torch.tensor([[4, 2, 0], [0, 0, 0], [1, 3, 3]])
    index, f1 = best_f1(fires, count, both)
    assert index.tolist()[0] == 0 and f1[0] == 1.0
    assert index[1] == -1 and torch.isnan(f1[1])
    assert index[2] == 2 and float(f1[2]) == pytest.approx(2 * 3 / (3 + 6))  # not 2*3/(3+8)


def test_a_dense_units_label_is_at_chance_and_a_selective_ones_is_not():
    """A unit firing on 90 of 100 tokens matches a concept on 30 of them (all 30 inside its
    firings) with F1 0.5, which its density alone would give (chance 0.45): at chance. A unit
    firing on 10 tokens, 8 of them the concept's, has F1 0.4 against chance 0.15: a label."""
    from circuits.concepts import at_chance, chance_f1, f1_summary

    fires, count = torch.tensor([90, 10, 0]), torch.tensor([30])
    both = torch.tensor([[30], [8], [0]])
    index, f1 = best_f1(fires, count, both)
    chance = chance_f1(fires, count, 100, index)
    assert f1[:2].tolist() == pytest.approx([0.5, 16 / 40])
    assert chance[:2].tolist() == pytest.approx([2 * 0.3 * 0.9 / 1.2, 2 * 0.3 * 0.1 / 0.4])
    assert at_chance(f1, chance).tolist() == [True, False, False]  # never fired: no label
    summary = f1_summary(f1, chance)
    assert summary["units"] == 2 and summary["at_chance"] == 0.5
    assert summary["mean_not_at_chance"] == pytest.approx(0.4)
    from reports.labels import concept_text

    dense = {"label": "family: addition", "f1": 0.5, "chance": 0.45, "at_chance": True}
    document = ": the kind of document it fires in, not what it reads"
    # at chance, no concept: said first, the label after (a reviewer read "family: addition"
    # beside induction heads, the disclaimer 60 characters later)
    assert concept_text(dense) == "none (at chance: family: addition, F1 0.50 vs 0.45)"
    digit = {"label": "addition: answer digit", "f1": 0.2, "chance": 0.19, "at_chance": True}
    assert concept_text(digit) == "none (at chance: addition: answer digit, F1 0.20 vs 0.19)"
    assert concept_text(dense | {"at_chance": False}) == "family: addition, F1 0.50" + document
    role = {"label": "addition: '='", "f1": 0.7, "chance": 0.1, "at_chance": False}
    assert concept_text(role) == "addition: '=', F1 0.70"


def test_resume_equals_uninterrupted(setup):
    replacement, tokenizer, tmp = setup
    with torch.no_grad():
        whole = _build(replacement, tokenizer, tmp / "whole.safetensors")
        part = _build(replacement, tokenizer, tmp / "part.safetensors", stop_after=BATCH)
        assert not part.finished
        assert D.read_file(tmp / "part.safetensors").meta["rows_done"] == BATCH
        resumed = _build(replacement, tokenizer, tmp / "part.safetensors")
    assert resumed.finished
    for name, tensor in whole.state.items():
        assert torch.equal(tensor, resumed.state[name]), name


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rows": -1}, "rows must be a positive integer, got -1"),
        ({"rows": True}, "rows must be a positive integer, got True"),
        ({"n_ctx": 1}, "n_ctx must be a whole number in 2..64, got 1"),
        ({"n_ctx": -5}, "n_ctx must be a whole number in 2..64, got -5"),
        ({"seed": 2**70}, "seed must be a whole number in 0.."),
        ({"batch_rows": 0}, "batch_rows must be a positive integer"),
        ({"stop_after": 0}, "stop_after must be a positive integer"),
    ],
)
def test_a_build_refuses_settings_its_file_could_not_hold(setup, options, message):
    """Found by a fuzz pass: each wrote an 18 MB file that ``read_file`` then refused (or
    sliced rows from their end); nothing is written now, and a str path is taken."""
    replacement, tokenizer, tmp = setup
    with pytest.raises(ValueError, match=re.escape(message)):
        _build(replacement, tokenizer, tmp / "x.safetensors", **options)
    assert not (tmp / "x.safetensors").exists()


def test_corpus_rows_and_statistics_never_slice_rows_from_their_end(setup):
    """Found by a fuzz pass: a negative start read rows from the end (mislabelled), a negative
    n_ctx cut each row's last tokens, and statistics wrote files their reader refuses."""
    from circuits.gathering import gather_statistics

    replacement, tokenizer, _ = setup
    with pytest.raises(ValueError, match=r"rows -3\.\.2: whole numbers"):
        corpus_rows(tokenizer, 16, 0, -3, 2)
    with pytest.raises(ValueError, match="n_ctx must be a positive whole number, got -5"):
        corpus_rows(tokenizer, -5, 0, 0, 2)
    for options, message in (({"n_ctx": 1}, "n_ctx must be a whole number in 2..64"),
                             ({"seed": -1}, "seed must be a whole number")):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            gather_statistics(replacement, tokenizer, rows=2, progress=False, **options)


def test_file_refused_when_damaged_or_foreign(setup, make_replacement, tiny_pretrained):
    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        _build(replacement, tokenizer, path)
    D.read_file(path, replacement, tokenizer)  # accepted as written
    data = bytearray(path.read_bytes())
    damaged = tmp / "damaged.safetensors"
    data[-5] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        D.read_file(damaged)
    # a valid setting that is not the one built with: only the checksum over the header sees it
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()[D.HEADER_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    header["meta"]["seed"] += 1
    edited = tmp / "edited.safetensors"
    save_file(tensors, str(edited), metadata={D.HEADER_KEY: json.dumps(header)})
    with pytest.raises(ValueError, match="damaged"):
        D.read_file(edited)
    truncated = tmp / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        D.read_file(truncated)
    other = make_replacement(tiny_pretrained[0], n_qk=2, n_ov=8, lorsa_k=3, d_sae=16, tc_k=4)
    with torch.no_grad():
        next(iter(other.lorsas[0].parameters())).add_(0.01)
    with pytest.raises(ValueError, match="identity differs"):
        D.read_file(path, other, tokenizer)
    with pytest.raises(ValueError, match="made with"):
        _build(replacement, tokenizer, path, seed=4)


def _forge(path, dash, monkeypatch) -> None:
    """``dash`` written with a valid checksum but without ``write_file``'s checks (a file
    forged by another writer), for the reader's checks to refuse."""
    with monkeypatch.context() as m:
        m.setattr(D, "_check_values", lambda dash: None)
        D.write_file(path, dash)


@pytest.mark.parametrize(
    ("tensor", "value", "message"),
    [
        ("logit_token", -5, "logit_token holds ids outside"),
        ("logit_token", 30000, "logit_token holds ids outside"),
        ("top.window", 30000, "top.window holds ids outside"),
        ("sample.key_token", 30000, "sample.key_token holds ids outside"),
        ("top.key_token", -2, "top.key_token holds ids outside"),
    ],
)
def test_a_forged_file_with_token_ids_outside_the_vocabulary_is_refused(
    setup, tensor, value, message, monkeypatch
):
    """A file whose checksum was recomputed over a wrong token id: refused by value, not
    shown as an empty string or a traceback in the viewer and the feature files."""
    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        dash = _build(replacement, tokenizer, path)
    dash.state[tensor].view(-1)[0] = value
    forged = tmp / "forged.safetensors"
    _forge(forged, dash, monkeypatch)  # a valid checksum over the forged tensors
    with pytest.raises(ValueError, match=message):
        D.read_file(forged, replacement, tokenizer)


def _key_after_query(name: str):
    def edit(state, layout, n_ctx):
        slot = layout.lorsa_slot()
        h, j = (state[f"{name}.key_pos"][..., 0] >= 0).nonzero()[0].tolist()  # a kept example
        query = int(state[f"{name}.index"][int((slot == h).nonzero()[0]), j]) % n_ctx
        assert query < n_ctx - 1  # (so that a key after it is still inside the row)
        state[f"{name}.key_pos"][h, j, 0] = n_ctx - 1

    return edit


def _key_of_no_example(state, layout, n_ctx):
    slot = layout.lorsa_slot()
    unit, j = ((state["sample.index"] < 0) & (slot >= 0)[:, None]).nonzero()[0].tolist()
    state["sample.key_pos"][int(slot[unit]), j, 0] = 0


def _act_sum(kind: str, value: float):
    def edit(state, layout, n_ctx):
        units = (layout.lorsa_slot() >= 0) == (kind == "lorsa")
        state["act_sum"][int((units & (state["fires"] > 0)).nonzero()[0])] = value

    return edit


def _key_value(name: str, where: str, value: float):
    """A z-pattern key's value set to ``value``: the first kept key's (``where`` "kept"), one
    where no key is kept ("empty"), or a second kept key's, larger in size than the first
    ("larger": ``value`` times one more than the first's size)."""

    def edit(state, layout, n_ctx):
        pos, values = state[f"{name}.key_pos"], state[f"{name}.key_value"]
        slot = {"kept": 0, "empty": None, "larger": 1}[where]
        h, j, n = ((pos == -1) if slot is None else (pos[..., slot : slot + 1] >= 0)).nonzero()[0]
        n = n if slot is None else slot
        values[h, j, n] = value * (1 + abs(float(values[h, j, 0])) if where == "larger" else 1)

    return edit


def _act_sum_below_its_bins(state, layout, n_ctx):
    """A unit with no firing in the first bin (whose lower edge is 0), its sum made tiny."""
    u = int(((state["fires"] > 0) & (state["hist"][:, 0] == 0)).nonzero()[0])
    state["act_sum"][u] = 1e-30


def _refusal_of_forged(setup, edit, monkeypatch) -> tuple:
    """A dashboards file built on the fixture (accepted as written), ``edit``-ed in its state
    and saved with a valid checksum (``_forge``): its path and ``read_file``'s refusal."""
    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        dash = _build(replacement, tokenizer, path)
    D.read_file(path, replacement, tokenizer)  # the file as written: accepted
    edit(dash.state, dash.layout, dash.meta["n_ctx"])
    forged = tmp / "forged.safetensors"
    _forge(forged, dash, monkeypatch)
    with pytest.raises(ValueError) as info:
        D.read_file(forged, replacement, tokenizer)
    return forged, str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_key_after_query("top"), "top.key_pos holds a key after its example's query position"),
        (_key_after_query("sample"), "sample.key_pos holds a key after its example's query"),
        (_key_of_no_example, "sample.key_pos holds keys of examples that are not kept"),
        (_act_sum("lorsa", -1.0), "act_sum holds negative sums of activations"),
        (_act_sum("transcoder", -1.0), "act_sum holds negative sums of activations"),
        (_act_sum("transcoder", 0.0), "act_sum is not positive exactly where its unit fired"),
        # a review: these were read and sent to the viewer (a sum is at most the unit's fires
        # times its top activation; a key's value is a signed share of the activation's sum)
        (_act_sum("lorsa", 1e30), "act_sum is not a sum of the activations its histogram"),
        (_act_sum("transcoder", 1e30), "act_sum is not a sum of the activations its histogram"),
        (_act_sum_below_its_bins, "act_sum is not a sum of the activations its histogram"),
        (_key_value("top", "kept", 1e30), "top.key_value holds keys that do not sum to their"),
        (_key_value("sample", "kept", -1e30), "sample.key_value holds keys that do not sum to"),
        (_key_value("top", "empty", -1.0), "top.key_value holds a value where no key is kept"),
        (_key_value("sample", "empty", 1e30), "sample.key_value holds a value where no key is"),
        (_key_value("top", "larger", -1.0), "top.key_value is not in order of |contribution|"),
    ],
)
def test_a_forged_file_with_keys_or_sums_the_pass_never_writes_is_refused(
    setup, edit, message, monkeypatch
):
    """Found by a fuzz pass: a file with a valid checksum was accepted with a z-pattern key
    after its example's query position (attention is causal) and a negative act_sum (every
    unit's activation is a ReLU output, Lorsa heads' z too). Both are refused."""
    _, refusal = _refusal_of_forged(setup, edit, monkeypatch)
    assert message in refusal


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["meta"].update(rows_hidden=1), r"meta holds unknown keys \('rows_hidden'\)"),
        (lambda h: h.update(made_by="another"), r"its header holds unknown keys \('made_by'\)"),
        (lambda h: h["meta"].pop("batch_rows"), "meta lacks 'batch_rows'"),
    ],
)
def test_a_forged_file_with_keys_its_reader_does_not_know_is_refused(setup, edit, message):
    """A fuzz pass: a file re-signed with keys of any name in its header or its meta was read,
    the keys ignored (another version's file, or a forgery)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from toy_models.checkpoint import content_sha256

    replacement, tokenizer, tmp = setup
    path, forged = tmp / "d.safetensors", tmp / "forged.safetensors"
    with torch.no_grad():
        _build(replacement, tokenizer, path)
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()[D.HEADER_KEY])
    tensors = load_file(str(path))
    edit(header)
    header["sha256"] = content_sha256(tensors, header)
    save_file(tensors, str(forged), metadata={D.HEADER_KEY: json.dumps(header)})
    with pytest.raises(ValueError, match=message) as info:
        D.read_file(forged, replacement, tokenizer)
    assert str(info.value).startswith(f"dashboards file {forged}: ")


def _logits_times(state, layout, n_ctx):
    state["logit_value"].mul_(1e30)


def _logits_of_another_unit(state, layout, n_ctx):
    state["logit_token"][0], state["logit_value"][0] = (
        state["logit_token"][1],
        state["logit_value"][1],
    )


def _logit_token_twice(state, layout, n_ctx):
    state["logit_token"][0, 0, 1] = state["logit_token"][0, 0, 0]


@pytest.mark.parametrize("edit", [_logits_times, _logits_of_another_unit, _logit_token_twice])
def test_a_forged_file_whose_logit_effects_are_not_the_replacements_is_refused(
    setup, edit, monkeypatch
):
    """Found by a fuzz pass: the shipped default's dashboards re-signed with every logit effect
    x1e30, or each unit given the next unit's tokens, were shown by the trace's viewer and
    graph.json with exit 0. A finished file's effects are recomputed from the replacement
    (``direct_logits``, as the pass writes them)."""
    forged, refusal = _refusal_of_forged(setup, edit, monkeypatch)
    assert refusal == (f"dashboards file {forged}: logit effects of the lorsa units of layer 0 "
                       "are not this replacement model's; build again")  # fmt: skip


def _fired_unit(state) -> int:
    return int(((state["fires"] > 1) & (D.hist_bin(state["top.value"][:, 0]) < D.N_BINS - 2))
               .nonzero()[0])  # fmt: skip


def _all_in_the_last_bin(state, layout, n_ctx):
    u = _fired_unit(state)
    state["hist"][u] = 0
    state["hist"][u, -1] = state["fires"][u]


def _top_bin_moved_up(state, layout, n_ctx):
    u = _fired_unit(state)
    b = int(D.hist_bin(state["top.value"][u, 0]))
    state["hist"][u, b + 1] += state["hist"][u, b]
    state["hist"][u, b] = 0


def _top_dropped(state, layout, n_ctx):
    u = _fired_unit(state)
    state["top.index"][u] = -1


def _top_of_one_row_twice(state, layout, n_ctx):
    """A unit's second top example moved into its first one's row (one position on)."""
    index = state["top.index"]
    u = int(((index >= 0).sum(1) >= 2).nonzero()[0])
    row, pos = divmod(int(index[u, 0]), n_ctx)
    index[u, 1] = row * n_ctx + (pos + 1) % n_ctx


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_all_in_the_last_bin, "hist has firings above the bin of its unit's top activation"),
        (_top_bin_moved_up, "hist has firings above the bin of its unit's top activation"),
        (_top_dropped, "top does not keep at most min(fires, 8) and one at least examples"),
        (_top_of_one_row_twice, "top keeps two examples of one row"),
    ],
)
def test_a_histogram_above_its_units_top_activation_is_refused(setup, edit, message, monkeypatch):
    """Found by fuzz pass 13: a forged file moving every firing of a unit into the last bin
    (its count unchanged) was accepted, and the viewer drew all of them in [215, 256] for a
    unit whose largest activation is 4.7. The histogram's highest bin with firings is the bin
    of the top activation (``hist_bin``, the pass's own binning: an activation on an edge is
    in the bin it starts), each bin counts the kept examples in it, and every unit keeps its
    examples (so that there is a top activation to compare with)."""
    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        dash = _build(replacement, tokenizer, path)
    D.read_file(path, replacement, tokenizer)  # the file as written: accepted
    edges = torch.tensor(D.HIST_EDGES, dtype=torch.float32)
    below = torch.nextafter(edges, torch.tensor(-1.0))
    assert D.hist_bin(edges).tolist() == [*range(D.N_BINS), D.N_BINS - 1]
    assert D.hist_bin(below[1:]).tolist() == list(range(D.N_BINS))
    edit(dash.state, dash.layout, dash.meta["n_ctx"])
    forged = tmp / "forged.safetensors"
    _forge(forged, dash, monkeypatch)
    with pytest.raises(ValueError, match=re.escape(message)):
        D.read_file(forged, replacement, tokenizer)


def _key_token(part: int, where: str):
    """A key's token (``part`` 0) or the token before it (1) edited where a kept key is at a
    row's first position (``where`` "first") or after it ("later")."""

    def edit(state, layout, n_ctx):
        pos = state["top.key_pos"]
        h, j, n = ((pos == 0) if where == "first" else (pos > 0)).nonzero()[0].tolist()
        token = state["top.key_token"][h, j, n]
        token[part] = 5 if token[part] < 0 else -1

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_key_token(0, "later"), "top.key_token holds no token (-1) for a key it keeps"),
        (_key_token(1, "later"), "top.key_token holds no token (-1) before a key it keeps"),
        (_key_token(1, "first"), "before a key it keeps after a row's first position, or one"),
    ],
)
def test_a_kept_key_of_no_token_is_refused(setup, edit, message, monkeypatch):
    """Found by fuzz pass 13: a forged file whose kept z-pattern keys held token -1 was
    accepted, and the trace failed after its work with a bare "token id -1 is outside the
    vocabulary (0..1023)" naming no file. A kept key's token, and the token before it after a
    row's first position, are tokens; -1 stands only where there is none."""
    forged, refusal = _refusal_of_forged(setup, edit, monkeypatch)
    assert f"dashboards file {forged}: " in refusal
    assert message in refusal and "\n" not in refusal


def test_a_partial_file_whose_header_claims_it_finished_is_refused(setup, monkeypatch):
    """rows_done lies in the header, outside the tensors' checksum: a partial file edited to
    claim every row was shown as finished, with empty logit effects (every promoted token
    id 0, effect 0) and the concept labels of the few rows it held."""
    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        dash = _build(replacement, tokenizer, path, stop_after=BATCH)
    dash.meta["rows_done"] = ROWS
    forged = tmp / "forged.safetensors"
    with pytest.raises(ValueError, match="not written .* finished, but it holds no logit"):
        D.write_file(forged, dash)
    assert not forged.exists()
    _forge(forged, dash, monkeypatch)  # a valid checksum: the tensors are the partial file's
    with pytest.raises(ValueError, match="finished, but it holds no logit effects"):
        D.read_file(forged, replacement, tokenizer)
    D.read_file(path, replacement, tokenizer)  # the partial file as written: accepted
    with torch.no_grad():
        finished = _build(replacement, tokenizer, path)  # resumed and finished: accepted
    D.read_file(path, replacement, tokenizer)
    finished.meta["rows"] = 2 * ROWS  # a finished file may not claim to be partial either
    _forge(forged, finished, monkeypatch)
    with pytest.raises(ValueError, match="partial, but it holds logit effects"):
        D.read_file(forged, replacement, tokenizer)


def test_write_file_refuses_what_read_file_would(setup):
    """Found by a fuzz pass: a state with NaN in act_sum, or fires disagreeing with hist, was
    written, and read_file then refused the file. write_file runs the reader's checks first,
    and the file already at the path stays as it was."""
    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        dash = _build(replacement, tokenizer, path)
    before = path.read_bytes()
    edits = [
        (lambda s: s["act_sum"].__setitem__(0, float("nan")), "act_sum holds NaN"),
        (lambda s: s["fires"].__setitem__(0, s["fires"][0] + 1), "hist does not count every"),
        (lambda s: s.__setitem__("hist", s["hist"].long()), "hist is I64"),
        (lambda s: s.pop("top.value"), "missing ['top.value']"),
    ]
    for edit, message in edits:
        state = {k: v.clone() for k, v in dash.state.items()}
        edit(state)
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            D.write_file(path, D.Dashboards(dash.layout, state, dash.meta))
        assert str(info.value).startswith(f"dashboards not written to {path}: ")
        assert path.read_bytes() == before
    rows = dash.meta["rows"]
    for meta, message in (
        ({"seconds": -1.0}, "meta.seconds must be a finite number"),
        # the bound above said (it said ">= 0, not 12" of 12 rows done of 11)
        ({"rows_done": rows + 1}, f"meta.rows_done must be an integer in 0..{rows}, not "),
        ({"identity": {"model": None}}, "meta.identity lacks 'replacement', 'tokenizer': written"),
        ({"identity": dict.fromkeys(("model", "replacement", "tokenizer", "x" * 10**5))},
         r"meta.identity holds unknown keys \('x{39}\.\.\.\): written"),
        ({"identity": dict.fromkeys(("model", "replacement", "tokenizer"), 1)},
         "meta.identity values must be strings or null"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            D.write_file(path, D.Dashboards(dash.layout, dash.state, dash.meta | meta))
    assert D.read_file(path, replacement, tokenizer).meta == dash.meta


def test_partial_dashboards_show_no_logit_effects_and_units_are_checked(setup):
    """Found by a fuzz pass: a partial pass's viewer dashboards listed the zero placeholders of
    its logit effects (computed when the pass finishes) as promoted tokens; a float unit
    index was truncated (Layout.unit(TRANSCODER, 0, 3.5) gave unit 1027.5), a kind given by
    name was refused, and f1_report(min_fires=0) failed in torch."""
    from reports.viewer import check_dashboards

    replacement, tokenizer, tmp = setup
    with torch.no_grad():
        part = _build(replacement, tokenizer, tmp / "d.safetensors", stop_after=BATCH)
    assert not part.finished
    views = part.for_viewer(tokenizer)
    assert views and not any("logits" in d for d in views.values())
    check_dashboards(views)
    assert part.for_viewer(tokenizer, [("lorsa", 1, 2)]) == part.for_viewer(
        tokenizer, [(Kind.LORSA, 1, 2)]
    )
    layout = part.layout
    assert layout.unit("transcoder", 0, 3) == layout.unit(Kind.TRANSCODER, 0, 3) == 8 + 3
    for args, message in (
        ((Kind.TRANSCODER, 0, 3.5), "transcoder 0 index must be an integer, got 3.5"),
        ((Kind.LORSA, 0, True), "lorsa 0 index must be an integer, got True"),
        ((Kind.LORSA, 0, 8), "lorsa 0 index 8 is outside 0..7"),
        ((Kind.LORSA, 1.0, 0), "layer must be an integer, got 1.0"),
        ((Kind.LORSA, -1, 0), "layer -1 is outside 0..1"),
        (("lorsa head", 0, 0), "unknown node kind 'lorsa head'"),
        ((Kind.EMBEDDING, 0, 0), "no embedding layer 0"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            layout.unit(*args)
    with pytest.raises(ValueError, match="lorsa 0 index must be an integer, got 5.7"):
        part.for_viewer(tokenizer, [(Kind.LORSA, 0, 5.7)])
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=f"min_fires must be a positive integer, got {bad}"):
            part.f1_report(min_fires=bad)
    fired = int((part.kind_mask(Kind.LORSA) & (part.state["fires"] >= 1)).sum())
    assert 0 < fired and part.f1_report(min_fires=1)["lorsa"]["units"] == fired


def test_viewer_schema(setup):
    from reports.viewer import check_dashboards

    replacement, tokenizer, tmp = setup
    with torch.no_grad():
        dash = _build(replacement, tokenizer, tmp / "d.safetensors")
    views = dash.for_viewer(tokenizer)
    checked = check_dashboards(views)
    assert set(checked) == set(dash.layout.ids())
    fired = [u for u, d in checked.items() if d.get("examples")]
    assert fired
    for unit in fired:
        d = checked[unit]
        assert len(d["logits"]["promoted"]) == D.N_LOGITS
        tops = [e for e in d["examples"] if e["group"] == "top"]
        assert tops[0]["activation"] == max(e["activation"] for e in d["examples"])
        assert sum(d["histogram"]["counts"]) == round(d["frequency"] * dash.n_tokens)
    one = dash.for_viewer(tokenizer, [(Kind.LORSA, 1, 2)])
    assert list(one) == ["2_2"]


def test_cli_refuses_bad_arguments_before_importing_torch(fresh_cli, tmp_path):
    code, heavy, err = fresh_cli("circuits.dashboard_cli", ["--rows", "0"])
    assert code == 2 and "--rows" in err and heavy == []
    # found by the fourth fuzz pass: 2**24 rows passed this check and failed after the load
    code, heavy, err = fresh_cli("circuits.dashboard_cli", ["--rows", str(1 << 24)])
    assert code == 2 and f"--rows must be in 1..{1 << 20}" in err and heavy == []
    code, heavy, err = fresh_cli("circuits.trace", ["--prompt", "a", "--dashboard-rows",
                                                    str(1 << 24)])  # fmt: skip
    assert code == 2 and "--dashboard-rows must be in 1..1048576" in err and heavy == []
    code, heavy, err = fresh_cli("circuits.dashboard_cli", ["--out", str(tmp_path)])
    assert code == 2 and err.strip() == f"error: --out {tmp_path}: is a directory" and heavy == []
    # a fuzz pass: into a training checkpoint (deleted by its next save), or over a set's own
    # file
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (ckpt / "weights.safetensors").write_bytes(b"")
    code, heavy, err = fresh_cli("circuits.dashboard_cli", ["--out", str(ckpt / "d.safetensors")])
    assert code == 2 and "which its run replaces whole" in err and heavy == [], err
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "replacement.json").write_text("{}")
    code, heavy, err = fresh_cli("circuits.dashboard_cli",
                                 ["--out", str(tmp_path / "set" / "replacement.json")])  # fmt: skip
    assert code == 2 and "is replacement.json of a replacement set" in err, err
    assert (tmp_path / "set" / "replacement.json").read_text() == "{}"
    # a fuzz pass: "--out newdir/" wrote a file called newdir
    code, heavy, err = fresh_cli("circuits.dashboard_cli", ["--out", str(tmp_path / "new") + "/"])
    assert code == 2 and "ends in a separator or a dot directory" in err and heavy == []
    assert not (tmp_path / "new").exists()
    # ... and the next fuzz pass: every other option naming a file to write did the same
    new = str(tmp_path / "new") + "/"
    calls = (("toy_models.evaluate", ["--model", "default", "--json", new]),
             ("replacement.evaluate", ["--model", "default", "--json", new]),
             ("circuits.global_graph", ["--start", "lorsa:1:0", "--stats", new]),
             ("circuits.trace", ["--prompt", "a", "--dashboards-file", new + "."]),
             ("circuits.dashboard_cli", ["--out", new + ".."]))  # fmt: skip
    for module, args in calls:
        code, heavy, err = fresh_cli(module, args)
        assert code == 2 and "ends in a separator or a dot directory" in err, (module, err)
        assert heavy == [] and not (tmp_path / "new").exists()
    # a seed below 0 passed the check and failed after the model loaded, naming no option;
    # the head taxonomy and the superposition report took one
    for module in ("circuits.dashboard_cli", "reports.heads", "reports.superposition"):
        for seed, words in (("-5", "must be at least 0, got -5"),
                            (str(2**63), "must be at most 2**63 - 1")):  # fmt: skip
            code, heavy, err = fresh_cli(module, [f"--seed={seed}"])
            assert code == 2 and "--seed" in err and words in err and heavy == [], (module, err)


def test_v3_concepts_follow_the_spans_in_every_form(tiny_pretrained):
    """Separators of any form are found from the spans: the repeat separator is the span's
    ``form`` (its tokens, whatever the characters), a list's items have the text between them
    marked, steps and sentence roles come from the items' fields; every concept has a role."""
    from circuits.concepts import CONCEPT_ROLE, TOKEN_ROLES

    _, tokenizer = tiny_pretrained
    rows = corpus_rows(tokenizer, 128, 11, 0, 48)
    sep, between = (
        INDEX["repeat: separator between the copies"],
        INDEX["successor: between two items of a list"],
    )
    forms = steps = separators = 0
    for row in rows:
        text, spans = row.example.text, row.example.spans
        offsets = [tuple(o) for o in tokenizer.encode(text).offsets][: len(row.ids)]
        marked = "".join(text[s:e] for (s, e), cs in zip(offsets, row.concepts, strict=True)
                         if sep in cs)  # fmt: skip
        second = [sp for sp in spans if sp.kind == "second"]
        if second and second[0].end <= offsets[-1][1]:
            assert marked == second[0].form  # the separator exactly, empty when there is none
            forms += bool(marked)
        for sp in spans:
            if sp.kind == "item" and sp.frame == "list" and sp.end <= offsets[-1][1]:
                inside = [i for i, (s, e) in enumerate(offsets)
                          if i and s >= sp.previous.end and e <= sp.start and e > s]  # fmt: skip
                # (a separator glued to an item's first characters is one token with it)
                assert all(between in row.concepts[i] for i in inside)
                separators += bool(inside)
                item = [i for i, (s, e) in enumerate(offsets) if i and s < sp.end and e > sp.start]
                step = INDEX[f"successor: next item, step {sp.step:+d}"]
                assert all(step in row.concepts[i] for i in item)
                steps += 1
    assert forms and steps and separators
    assert set(CONCEPT_ROLE) == set(CONCEPTS)
    assert set(CONCEPT_ROLE.values()) - {None} <= set(TOKEN_ROLES) - {"other"}


def test_next_token_concepts_sit_on_the_token_before_their_concept(tiny_pretrained):
    """``next token: X`` is on exactly the tokens followed (in the row) by a token with the
    role-naming concept X: the token before an answer's first digit is where that digit, with
    its place, is predicted; the last token of a row and family-level concepts get none."""
    from circuits.concepts import CONCEPT_ROLE, NEXT

    _, tokenizer = tiny_pretrained
    rows = corpus_rows(tokenizer, 128, 5, 0, 24)
    own = {i for i, c in enumerate(CONCEPTS) if not c.startswith(NEXT)}
    twin = {INDEX[c]: INDEX[NEXT + c] for c in CONCEPTS if NEXT + c in INDEX}
    assert INDEX["BOS"] not in twin and INDEX["family: addition"] not in twin
    assert INDEX["addition: answer digit, place 0"] in twin
    assert all(CONCEPT_ROLE[CONCEPTS[t]] is None for t in twin.values())
    answers = 0
    for row in rows:
        for i, cs in enumerate(row.concepts):
            following = row.concepts[i + 1] if i + 1 < len(row.concepts) else ()
            assert set(cs) - own == {twin[c] for c in following if c in twin}
        text = row.example.text
        offsets = [tuple(o) for o in tokenizer.encode(text).offsets][: len(row.ids)]
        for span in row.example.spans_of("answer"):
            digits = [
                i for i, (s, e) in enumerate(offsets) if i and s < span.end and e > span.start
            ]
            if span.end > offsets[-1][1] or len(span.value) > 4:
                continue
            place = len(span.value) - 1
            assert (
                INDEX[f"{NEXT}addition: answer digit, place {place}"] in row.concepts[digits[0] - 1]
            )
            answers += 1
    assert answers > 5


def test_a_long_model_path_makes_a_file_name_the_system_takes(tmp_path):
    """Found by a fuzz pass: a model given by a path of about 220 characters made a dashboards
    file name the file system refused ("File name too long"), after the graph was built. The
    name keeps the path's end; the file's key tells models apart."""
    long_path = "/".join(["a_directory_with_a_long_name"] * 12) + "/my-model"
    name = D.default_name(long_path, "local")
    assert len(name) <= D.NAME_CHARS + len("-local") and name.endswith("my-model-local")
    (tmp_path / f"{name}-0123456789ab.safetensors").write_bytes(b"")  # the system takes it
    assert D.default_name("default", "local") == "default-local"


def test_a_build_without_a_terminal_says_what_it_builds(setup, capsys):
    """With no terminal the progress bar is off: a line names the file and the rows to go (a
    reviewer's first trace under `| tee` was silent for 90 s); none where the file is done."""
    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        _build(replacement, tokenizer, path, progress=None)
    assert capsys.readouterr().err == f"building unit dashboards: {path} ({ROWS} rows to go)\n"
    with torch.no_grad():
        _build(replacement, tokenizer, path, progress=None)
    assert capsys.readouterr().err == ""


def test_a_file_is_ours_once_its_header_is_found(setup, monkeypatch):
    """A file without the dashboards header is no dashboards file (``NotDashboards``: never to
    be removed on this code's word); one whose header is found and that fails after it is
    ours, damaged (a plain ValueError: it may be removed and built again), as a review found
    it was classed as no dashboards file."""
    from safetensors.torch import save_file

    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    with torch.no_grad():
        _build(replacement, tokenizer, path)
    other = tmp / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    text = tmp / "notes.txt"
    text.write_text("notes")
    for given in (other, text):
        with pytest.raises(D.NotDashboards):
            D.read_file(given, replacement, tokenizer)

    def broken(_):
        raise RuntimeError("damaged header")

    monkeypatch.setattr(D, "parse_json", broken)
    with pytest.raises(ValueError, match="damaged header") as info:
        D.read_file(path, replacement, tokenizer)
    assert not isinstance(info.value, D.NotDashboards)


@pytest.mark.parametrize("how", ["dangling", "loop"])
def test_a_link_that_leads_nowhere_is_refused_before_building(setup, how, monkeypatch):
    """A review: a dangling link or one in a loop at the dashboards path (circuits.dashboard_cli's
    default, known once the set is loaded) was built into until the first save refused it."""
    from toy_models.cli import UserError

    replacement, tokenizer, tmp = setup
    path = tmp / "d.safetensors"
    path.symlink_to(tmp / "nowhere" if how == "dangling" else path)
    monkeypatch.setattr(P, "corpus_rows", lambda *a, **k: 1 / 0)  # no row is drawn
    with pytest.raises(UserError, match=f"dashboards file {path}: is a symbolic link"):
        _build(replacement, tokenizer, path)
    assert path.is_symlink()


def test_cli_says_what_to_do_with_an_out_that_is_no_dashboards_file(tiny_run, tiny_pretrained,
                                                                    tmp_path, cli):  # fmt: skip
    """A fault pass: ``--out`` naming someone's file (no dashboards header) was refused, and
    left alone, with only "not readable as a dashboards file (Error while deserializing
    header: header too small)": nothing said what to do. The line now says it."""
    from conftest import random_replacement

    from circuits import dashboard_cli

    model, _ = tiny_pretrained
    random_replacement(model, n_qk=2, n_ov=16, lorsa_k=4).save(tmp_path / "set", str(tiny_run))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    code, _, err = cli(dashboard_cli.main, "--model", tiny_run, "--replacement",
                       tmp_path / "set", "--rows", 8, "--out", notes, "--quiet")  # fmt: skip
    assert code == 2 and err == (
        f"error: dashboards file {notes}: not readable as a dashboards file (Error while "
        "deserializing header: header too small); it is left as it is: choose another --out, "
        "or move it away\n"
    )
    assert notes.read_text() == "mine\n"


@pytest.mark.parametrize("forged", ["directory", "itself", "/dev/zero"])
def test_a_dashboards_path_that_is_no_regular_file_is_said_to_be_that(tmp_path, forged):
    """A fault pass: a directory at a dashboards path was refused as "not readable as a
    dashboards file (No such device (os error 19))", a link to itself as "(No such file or
    directory ...)". Each is now said to be what it is (``check_readable_file``), as no one's
    dashboards (``NotDashboards``: left alone)."""
    from circuits.dashboards import NotDashboards, read_file

    path = tmp_path / "d.safetensors"
    if forged == "directory":
        path.mkdir()
    else:
        path.symlink_to(path.name if forged == "itself" else forged)
    why = {"directory": "a directory, not a file",
           "itself": "a symbolic link that leads to no file (dangling, or in a loop)",
           "/dev/zero": "not a regular file (a FIFO, a device or a socket)"}[forged]  # fmt: skip
    with pytest.raises(NotDashboards) as info:
        read_file(path)
    assert str(info.value) == f"dashboards file {path}: {why}"
