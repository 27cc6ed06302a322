import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import deleting
from safetensors.torch import load_file, save_file

from replacement.model import ReplacementModel
from toy_models.model import ToyTransformer

N_OV, D_SAE, LORSA_K, TC_K = 8, 16, 3, 4  # conftest.random_layers' defaults


@pytest.fixture
def random_layers(make_layers):
    """Layer 1's transcoder has a skip, so the skip path is exercised everywhere here."""
    return lambda n_layers=2, d_model=24: make_layers(n_layers, d_model, skip_layers=(1,))


@pytest.fixture
def replacement(random_model, random_layers):
    return ReplacementModel(random_model, *random_layers())


@pytest.fixture
def tokens():
    torch.manual_seed(2)
    return torch.randint(0, 50, (3, 12))


def layer_norm(x):
    """The toy model's LayerNorm, written out: centre and scale, no affine weights."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


def test_local_mode_reproduces_the_original_model(replacement, random_model, tokens):
    logits, cache = replacement.run_with_cache(tokens, mode="local")
    original_logits, original = random_model.run_with_cache(tokens)
    torch.testing.assert_close(logits, original_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replacement(tokens, mode="local"), original_logits)
    for l in range(2):
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            torch.testing.assert_close(cache[f"blocks.{l}.{name}"], original[f"blocks.{l}.{name}"])
        for site, target in (("lorsa", "hook_attn_out"), ("transcoder", "hook_mlp_out")):
            rebuilt = cache[f"blocks.{l}.{site}.hook_out"] + cache[f"blocks.{l}.{site}.hook_error"]
            torch.testing.assert_close(rebuilt, original[f"blocks.{l}.{target}"])
            torch.testing.assert_close(cache[f"blocks.{l}.{target}"], rebuilt)


def test_sparse_mode_is_the_definition(replacement, random_model, tokens):
    m = random_model
    resid = m.W_E[tokens] + m.W_pos[: tokens.shape[1]]
    for lorsa, transcoder in zip(replacement.lorsas, replacement.transcoders, strict=True):
        resid = resid + lorsa.decode(lorsa.encode(layer_norm(resid)))
        resid = resid + transcoder(layer_norm(resid))
    expected = layer_norm(resid) @ m.W_U + m.b_U
    torch.testing.assert_close(replacement(tokens), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replacement(tokens, mode="sparse"), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, m(tokens), atol=1e-3)  # random layers: a real change


def test_next_token_stats_needs_logits_and_tokens_that_line_up():
    """Found by a fuzz pass: logits of 5 positions against 3 tokens gave a cross-entropy read
    at the wrong positions, and one position NaN."""
    from replacement.evaluate import next_token_stats

    tokens = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits \(1, 5, 7\) do not line up with tokens"):
        next_token_stats(torch.zeros(1, 5, 7), tokens)
    with pytest.raises(ValueError, match="at least 2 positions"):
        next_token_stats(torch.zeros(1, 1, 7), tokens[:, :1])
    with pytest.raises(ValueError, match="not of one run's shape"):
        next_token_stats(torch.zeros(1, 3, 7), tokens, torch.zeros(1, 3, 8))
    assert next_token_stats(torch.zeros(1, 3, 7), tokens)["ce"] == pytest.approx(math.log(7))


def test_evaluation_needs_batches_and_documents(replacement, random_model):
    """Found by a fuzz pass: no batches failed in torch.cat() or divided by zero, a batch
    size of 0 gave empty 1-D tensors, and one token (no variance) divided by zero."""
    from replacement import evaluate as ev

    for call in (lambda: ev.reconstruction_stats(replacement, []),
                 lambda: ev.mean_outputs(random_model, []),
                 lambda: ev.loss_recovered(replacement, [])):  # fmt: skip
        with pytest.raises(ValueError, match="batches must hold at least one batch"):
            call()
    for size in (0, -2):
        with pytest.raises(ValueError, match=f"batch_size must be in 1..[0-9]+, got {size}"):
            ev.heldout_batches(random_model, None, 2, batch_size=size)
    with pytest.raises(ValueError, match="n_batches must be in 1..[0-9]+, got 0"):
        ev.heldout_batches(random_model, None, 0)
    with pytest.raises(ValueError, match="n_docs must be in 1..[0-9]+, got 0"):
        ev.family_probes(replacement, None, 0)
    stats = ev.reconstruction_stats(replacement, [torch.zeros(1, 1, dtype=torch.long)])
    assert all(math.isnan(s["fvu"]) for s in stats["lorsa"] + stats["transcoder"])
    stats = ev.reconstruction_stats(replacement, [torch.tensor([[0, 5, 7]])])
    assert all(math.isfinite(s["fvu"]) for s in stats["lorsa"] + stats["transcoder"])


def test_loss_recovered_is_one_rule_with_a_floor_on_the_gap():
    """Every loss recovered (the replacement's evaluation, the ablation sweep and its report)
    is ``fraction_recovered``: a ratio over the loss that ablating costs, NaN where that cost
    is ``MIN_GAP`` nats or less (the sweep once took any positive gap)."""
    from replacement.evaluate import MIN_GAP, fraction_recovered, measurable_gap

    assert fraction_recovered(2.0, 3.0, 2.25) == 0.75
    assert fraction_recovered(2.0, 3.0, 3.5) == -0.5 and fraction_recovered(2.0, 3.0, 1.5) == 1.5
    assert measurable_gap(0.0, 2 * MIN_GAP) and not measurable_gap(0.0, MIN_GAP)
    for ablated in (MIN_GAP / 2, MIN_GAP, 0.0, -1.0):
        assert math.isnan(fraction_recovered(0.0, ablated, 0.0))


def test_the_reconstruction_tally_counts_fvu_l0_and_dead_units():
    """One dictionary's figures over batches: FVU over every token (NaN when the targets are
    constant), L0 the mean count of non-zero units a token, dead the units never non-zero."""
    from replacement.evaluate import ReconstructionTally

    tally = ReconstructionTally(4)
    code = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [2.0, 3.0, 0.0, 0.0]]])  # (batch, pos, units)
    target = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    tally.add(code, target + torch.tensor([1.0, 0.0]), target)  # error energy 2
    target = torch.tensor([[[0.0, 2.0], [2.0, 2.0]]])
    tally.add(torch.zeros(1, 2, 4), target, target)
    # four targets about their mean (1, 1): a spread of 8; 3 active units over 4 tokens
    assert tally.result() == {"fvu": 0.25, "l0": 0.75, "dead_fraction": 0.5}
    constant = ReconstructionTally(4)
    for _ in range(3):  # a constant not exact in binary, over batches: no spread at all
        constant.add(code, target * 0, torch.full_like(target, 0.1))
    assert math.isnan(constant.result()["fvu"])


def test_the_reconstruction_tally_measures_errors_beyond_float32_and_refuses_overflow():
    """A review: an error whose float32 square overflows made the FVU infinite, written as
    null ("could not be measured on this data") by replacement.evaluate and as Infinity by the
    ablation sweep. Finite errors are summed in float64; a reconstruction that is not finite
    (weights overflowing in use) is refused in one line naming the dictionary."""
    from replacement.evaluate import ReconstructionTally

    target = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    tally = ReconstructionTally(2)
    tally.add(torch.ones(1, 2, 2), target + 1e20, target)  # (1e20)^2: beyond float32
    assert tally.result()["fvu"] == pytest.approx(4e40 / 2)
    tally = ReconstructionTally(2, "the lorsa of layer 1")
    with pytest.raises(ValueError, match="the lorsa of layer 1: its reconstruction holds NaN"):
        tally.add(torch.ones(1, 2, 2), target + float("inf"), target)


def test_the_reconstruction_tally_merges_batches_to_the_whole_spread():
    """The targets' spread is merged batch by batch (memory constant in the batches): it is
    the spread of all of them at once about their one mean, batches of any size and offset."""
    from replacement.dictionaries import target_variance
    from replacement.evaluate import ReconstructionTally

    gen = torch.Generator().manual_seed(0)
    targets = [
        torch.randn(rows, 5, 3, generator=gen) * 2 + torch.randn(3, generator=gen) * 10
        for rows in (1, 4, 2, 7)
    ]
    tally = ReconstructionTally(2)
    for y in targets:
        tally.add(torch.zeros(*y.shape[:-1], 2), torch.zeros_like(y), y)
    whole = torch.cat([y.flatten(0, -2) for y in targets]).double()
    energy = whole.pow(2).sum().item()
    assert tally.result()["fvu"] == pytest.approx(energy / target_variance(whole).item(), 1e-6)


def test_starting_at_a_layer_checks_its_arguments(replacement, tokens):
    """Found by a fuzz pass: start_at_layer=True ran from block 1 and 2.0 raised a slice
    TypeError, a resid of the wrong width failed in an einsum, and tokens given beside resid
    were not looked at."""
    _, cache = replacement.run_with_cache(tokens, mode="local")
    resid = cache["blocks.1.hook_resid_pre"]
    full = replacement(tokens, mode="local")
    torch.testing.assert_close(replacement(None, "local", start_at_layer=1, resid=resid), full)
    torch.testing.assert_close(replacement(tokens, "local", start_at_layer=1, resid=resid), full)
    for start in (True, 2.0, -1, 3):
        with pytest.raises(ValueError, match=f"start_at_layer must be an integer in 0..2, got "
                                             f"{start!r}"):  # fmt: skip
            replacement(None, start_at_layer=start, resid=resid)
    for bad in (resid[..., :7], resid[0], resid.double(), resid[:0], torch.zeros(1, 17, 24)):
        with pytest.raises(ValueError, match=r"resid must be \(batch, pos, d_model=24\) of "):
            replacement(None, start_at_layer=1, resid=bad)
    with pytest.raises(ValueError, match=r"tokens \(3, 11\) are not the rows of resid"):
        replacement(tokens[:, :-1], start_at_layer=1, resid=resid)
    with pytest.raises(ValueError, match="start_at_layer=1 needs resid"):
        replacement(tokens, start_at_layer=1)
    with pytest.raises(ValueError, match=r"with a row or more, got shape \(0, 4\)"):
        replacement.run_with_cache(torch.zeros(0, 4, dtype=torch.long))


def test_sparse_mode_is_local_mode_without_errors(replacement, tokens):
    zero = [(lambda name: name.endswith("hook_error"), lambda act, hook: torch.zeros_like(act))]
    local = replacement.run_with_hooks(tokens, mode="local", fwd_hooks=zero)
    torch.testing.assert_close(local, replacement(tokens), atol=1e-5, rtol=1e-5)


def test_hook_names_and_shapes(replacement, tokens):
    b, n = tokens.shape
    d_model = replacement.cfg.d_model
    d = (b, n, d_model)
    expected = {"hook_embed": d, "hook_pos_embed": d, "ln_final.hook_scale": (b, n, 1)}
    for l in range(2):
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            expected[f"blocks.{l}.{name}"] = d
        for name in ("hook_attn_out", "hook_mlp_out", "ln1.hook_normalized", "ln2.hook_normalized"):
            expected[f"blocks.{l}.{name}"] = d
        for site, acts, width in (("lorsa", "hook_z", N_OV), ("transcoder", "hook_acts", D_SAE)):
            for name in ("hook_in", "hook_out", "hook_error"):
                expected[f"blocks.{l}.{site}.{name}"] = d
            expected[f"blocks.{l}.{site}.{acts}"] = (b, n, width)

    _, cache = replacement.run_with_cache(tokens, mode="local")
    assert {k: tuple(cache[k].shape) for k in expected} == expected
    _, sparse = replacement.run_with_cache(tokens)
    assert not [k for k in sparse.keys() if k.endswith("hook_error")]  # no error term: no hook
    assert set(sparse.keys()) == set(cache.keys()) - {k for k in cache.keys() if "error" in k}

    for c in (cache, sparse):
        for l in range(2):
            z, f = c[f"blocks.{l}.lorsa.hook_z"], c[f"blocks.{l}.transcoder.hook_acts"]
            assert ((z != 0).sum(-1) <= LORSA_K).all() and (z >= 0).all()
            assert ((f != 0).sum(-1) <= TC_K).all() and (f >= 0).all()
            torch.testing.assert_close(
                c[f"blocks.{l}.lorsa.hook_in"], c[f"blocks.{l}.ln1.hook_normalized"]
            )
            torch.testing.assert_close(
                c[f"blocks.{l}.transcoder.hook_in"], c[f"blocks.{l}.ln2.hook_normalized"]
            )


def test_building_a_replacement_keeps_the_toy_models_hook_names(replacement, random_model):
    # The LayerNorms are shared; setup() must not have renamed the toy model's hook points.
    _, cache = random_model.run_with_cache(torch.randint(0, 50, (1, 5)))
    assert "blocks.1.ln1.hook_scale" in cache and "ln_final.hook_scale" in cache
    assert "blocks.0.attn.hook_pattern" in cache and "hook_embed" in cache
    assert not any(name.startswith("model.") for name in replacement.hook_dict)


@pytest.mark.parametrize("mode", ["sparse", "local"])
def test_ablating_a_lorsa_head_moves_the_output_by_its_contribution(replacement, tokens, mode):
    logits, clean = replacement.run_with_cache(tokens, mode=mode)
    z = clean["blocks.0.lorsa.hook_z"]
    head = int((z != 0).sum((0, 1)).argmax())  # the head active at the most positions
    assert (z[..., head] != 0).any()

    def ablate(act, hook):
        act = act.clone()
        act[..., head] = 0
        return act

    seen = {}

    def record(act, hook):
        seen[hook.name] = act

    ablated = replacement.run_with_hooks(
        tokens,
        mode=mode,
        fwd_hooks=[("blocks.0.lorsa.hook_z", ablate), ("blocks.0.hook_attn_out", record)],
    )
    assert not torch.allclose(ablated, logits)
    # The layer's output moves by exactly -z_i w_o^i: in local mode the error does not absorb it.
    w_o = replacement.lorsas[0].W_O[head]
    moved = clean["blocks.0.hook_attn_out"] - z[..., head, None] * w_o
    torch.testing.assert_close(seen["blocks.0.hook_attn_out"], moved, atol=1e-5, rtol=1e-5)
    assert torch.equal(replacement(tokens, mode=mode), replacement(tokens, mode=mode))
    torch.testing.assert_close(replacement(tokens, mode=mode), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "site", ["lorsa.hook_z", "transcoder.hook_acts", "lorsa.hook_error", "transcoder.hook_error"]
)
def test_an_edit_in_place_acts_as_an_edit_of_a_copy(replacement, tokens, site):
    """A review: in local mode a hook editing ``hook_z``, ``hook_acts`` or ``hook_error`` in
    place (``act[...] = 0; return act``, TransformerLens's idiom) moved nothing, the error
    being measured against the edited tensor itself (on the default model, zeroing the top
    layer-0 feature moved the logits by 0.0 where the same edit of a copy moved them by
    4.3). Either way of writing the hook gives the same logits now, in both modes."""
    for mode in ("local", "sparse") if "error" not in site else ("local",):
        clean = replacement(tokens, mode=mode)
        name = f"blocks.0.{site}"

        def in_place(act, hook):
            act[:, -1] = 0
            return act

        def copied(act, hook):
            act = act.clone()
            act[:, -1] = 0
            return act

        edited = replacement.run_with_hooks(tokens, mode=mode, fwd_hooks=[(name, copied)])
        assert not torch.allclose(edited, clean)
        assert torch.equal(
            replacement.run_with_hooks(tokens, mode=mode, fwd_hooks=[(name, in_place)]), edited
        )
    assert torch.equal(replacement(tokens, mode="local"), replacement.model(tokens))


def test_an_edit_of_the_position_vectors_in_place_leaves_the_weights(
    replacement, random_model, tokens
):
    """A review: ``hook_pos_embed`` was handed ``W_pos[:n]``, a view of the weight, so a hook
    zeroing a position's vector in place (``act[:, 3] = 0; return act``) zeroed ``W_pos[3]``
    for every later run, of the toy model and of the replacement model alike."""
    weights = random_model.W_pos.detach().clone()

    def in_place(act, hook):
        act[:, 3] = 0
        return act

    def copied(act, hook):
        act = act.clone()
        act[:, 3] = 0
        return act

    hooks = [("hook_pos_embed", in_place)]
    for model, modes in (
        (random_model, [{}]),
        (replacement, [{"mode": "local"}, {"mode": "sparse"}]),
    ):
        for kw in modes:
            edited = model.run_with_hooks(tokens, fwd_hooks=[("hook_pos_embed", copied)], **kw)
            assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=hooks, **kw), edited)
            assert torch.equal(random_model.W_pos.detach(), weights)
            assert not torch.equal(model(tokens, **kw), edited)


def test_the_position_vectors_hook_has_transformer_lenss_shape(replacement, random_model, tokens):
    """A review: ``hook_pos_embed`` held ``W_pos[:n]`` (pos, d_model), where TransformerLens's
    is (batch, pos, d_model): its idiom for zeroing position 3's vector, ``act[:, 3] = 0``,
    zeroed component 3 of every position's without an error, and ``cache[name][b, p]`` was one
    number. Now each row's vectors: the cache holds ``W_pos[p]`` at ``[b, p]``, and the idiom
    does what zeroing ``W_pos[3]`` in the weights does, one row's edit that row alone."""
    import copy

    b, n = tokens.shape
    for model, kw in ((random_model, {}), (replacement, {"mode": "local"})):
        _, cache = model.run_with_cache(tokens, names_filter="hook_pos_embed", **kw)
        assert torch.equal(cache["hook_pos_embed"], random_model.W_pos[:n].expand(b, n, -1))

        def zero_3(act, hook):
            act[:, 3] = 0
            return act

        def zero_3_of_row_0(act, hook):
            act[0, 3] = 0
            return act

        hooked = model.run_with_hooks(tokens, fwd_hooks=[("hook_pos_embed", zero_3)], **kw)
        edited = copy.deepcopy(model)
        toy = edited if model is random_model else edited.model
        with torch.no_grad():
            toy.W_pos[3] = 0
        assert torch.equal(hooked, edited(tokens, **kw))
        row_0 = model.run_with_hooks(tokens, fwd_hooks=[("hook_pos_embed", zero_3_of_row_0)], **kw)
        assert torch.equal(row_0[0], hooked[0]) and torch.equal(row_0[1:], model(tokens, **kw)[1:])


def test_toy_model_stays_frozen_and_replacement_layers_train(replacement, random_model, tokens):
    logits = replacement(tokens)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    assert all(not p.requires_grad and p.grad is None for p in random_model.parameters())
    for name, p in replacement.named_parameters():
        assert p.grad is not None, name
    names = {name for name, _ in replacement.named_parameters()}
    assert "blocks.1.transcoder.layer.W_skip" in names and not any("W_E" in n for n in names)


def test_unknown_mode_and_bad_tokens(replacement):
    with pytest.raises(ValueError, match="unknown mode 'dense'"):
        replacement(torch.zeros(1, 4, dtype=torch.long), mode="dense")
    with pytest.raises(ValueError, match="outside 1..n_ctx=16"):
        replacement(torch.zeros(1, 17, dtype=torch.long))


def test_bad_construction_is_refused(random_model, random_layers):
    lorsas, transcoders = random_layers()
    with pytest.raises(ValueError, match="got 1 Lorsa layers for a 2-layer model"):
        ReplacementModel(random_model, lorsas[:1], transcoders)
    with pytest.raises(ValueError, match="got 3 transcoder layers for a 2-layer model"):
        ReplacementModel(random_model, lorsas, transcoders + transcoders[:1])
    narrow, _ = random_layers(d_model=16)
    with pytest.raises(ValueError, match="Lorsa layer 0 has d_model=16, the model has d_model=24"):
        ReplacementModel(random_model, narrow, transcoders)
    _, narrow = random_layers(d_model=16)
    with pytest.raises(ValueError, match="transcoder layer 0 has d_model=16"):
        ReplacementModel(random_model, lorsas, narrow)
    with pytest.raises(TypeError, match="transcoder layer 0 is a LorsaLayer"):
        ReplacementModel(random_model, lorsas, lorsas)


def test_save_load_round_trip(replacement, random_model, tokens, tmp_path):
    replacement.save(tmp_path, "random", meta={"fvu": [0.1, 0.2]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lorsa.0.safetensors",
        "lorsa.1.safetensors",
        "replacement.json",
        "transcoder.0.safetensors",
        "transcoder.1.safetensors",
    ]  # and no temporary files left behind
    config = json.loads((tmp_path / "replacement.json").read_text())
    assert config["model"]["name"] == "random" and config["model"]["n_layers"] == 2
    assert config["transcoders"][1] == {"d_model": 24, "d_sae": 16, "top_k": 4, "skip": True}

    loaded = ReplacementModel.load(tmp_path, random_model)
    assert loaded.meta == {"fvu": [0.1, 0.2]} and loaded.model_name == "random"
    for mode in ("sparse", "local"):
        assert torch.equal(loaded(tokens, mode=mode), replacement(tokens, mode=mode))


def test_load_refuses_another_toy_model(replacement, random_model, tmp_path):
    replacement.save(tmp_path, "random")
    torch.manual_seed(5)
    other = ToyTransformer(random_model.cfg)
    with pytest.raises(ValueError, match=r"replacement.json: made for toy model 'random' \("):
        ReplacementModel.load(tmp_path, other)
    deeper = ToyTransformer(dataclasses.replace(random_model.cfg, n_layers=3))
    with pytest.raises(ValueError, match="made for a 2-layer model with d_model=24, the given"):
        ReplacementModel.load(tmp_path, deeper)


def test_load_refuses_truncated_and_missing_files(replacement, random_model, tmp_path):
    replacement.save(tmp_path, "random")
    lorsa = tmp_path / "lorsa.1.safetensors"
    lorsa.write_bytes(lorsa.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"lorsa.1.safetensors: unreadable weights \(") as info:
        ReplacementModel.load(tmp_path, random_model)
    assert "\n" not in str(info.value)
    replacement.save(tmp_path, "random")
    (tmp_path / "transcoder.0.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint file missing: .*transcoder.0"):
        ReplacementModel.load(tmp_path, random_model)
    (tmp_path / "replacement.json").unlink()
    with pytest.raises(FileNotFoundError, match="replacement.json"):
        ReplacementModel.load(tmp_path, random_model)


def test_load_refuses_wrong_shapes_and_bad_configs(replacement, random_model, tmp_path):
    replacement.save(tmp_path, "random")
    path = tmp_path / "transcoder.1.safetensors"
    tensors = load_file(str(path))
    tensors["W_enc"] = tensors["W_enc"][:, :10].contiguous()
    save_file(tensors, str(path))
    with pytest.raises(
        ValueError,
        match=r"transcoder.1.safetensors: W_enc has shape \(24, 10\), the config in "
        r"replacement.json implies \(24, 16\)",
    ):
        ReplacementModel.load(tmp_path, random_model)
    del tensors["W_skip"]
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"missing \['W_skip'\]"):
        ReplacementModel.load(tmp_path, random_model)

    config_path = tmp_path / "replacement.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "lorsa": config["lorsa"][:1]}))
    with pytest.raises(ValueError, match="1 Lorsa and 2 transcoder configs for n_layers=2"):
        ReplacementModel.load(tmp_path, random_model)
    config["lorsa"][0]["colour"] = 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="replacement.json: not a valid replacement config"):
        ReplacementModel.load(tmp_path, random_model)


def _set(path: str, value):
    def edit(config):
        *parents, last = path.split(".")
        for key in parents:
            config = config[key]
        config[last] = value

    return edit


WRITTEN = "written by another version, or edited"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (deleting("content_sha256"), f"it lacks 'content_sha256': {WRITTEN}"),
        (deleting("model"), f"it lacks 'model': {WRITTEN}"),
        (deleting("model.name"), f"model lacks 'name': {WRITTEN}"),
        (deleting("model.sha256"), f"model lacks 'sha256': {WRITTEN}"),
        (deleting("model.n_layers"), f"model lacks 'n_layers': {WRITTEN}"),
        (deleting("model.d_model"), f"model lacks 'd_model': {WRITTEN}"),
        (deleting("lorsa"), f"it lacks 'lorsa': {WRITTEN}"),
        (deleting("transcoders"), f"it lacks 'transcoders': {WRITTEN}"),
        (deleting("files"), f"it lacks 'files': {WRITTEN}"),
        (_set("model", "random"), "'model' must be an object, got str"),
        (_set("lorsa", 3), "'lorsa' must be an array, got int"),
        (_set("files", []), "'files' must be an object, got list"),
        (_set("content_sha256", None), "'content_sha256' must be a string, got NoneType"),
    ],
)
def test_a_config_missing_a_key_names_it(replacement, random_model, tmp_path, edit, message):
    """Found by a fuzz pass: without ``content_sha256`` the refusal read ``not a valid
    replacement config ('content_sha256')``, a KeyError's bare repr. Each key the reader needs
    is named by its path when it is missing or of the wrong JSON type."""
    replacement.save(tmp_path, "random")
    config_path = tmp_path / "replacement.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        ReplacementModel.load(tmp_path, random_model)
    assert str(error.value) == f"{config_path}: not a valid replacement config ({message})"


def test_dtype_and_device_moves_reach_the_toy_model(replacement, random_model, tokens):
    replacement.double()  # the toy model sits outside the module tree; .to() must still move it
    assert random_model.W_E.dtype == torch.float64
    assert replacement.lorsas[0].W_Q.dtype == torch.float64
    torch.testing.assert_close(replacement(tokens, mode="local"), random_model(tokens))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("colour", "red"), f"it holds unknown keys ('colour'): {WRITTEN}"),
        (_set("model.note", 1), f"model holds unknown keys ('note'): {WRITTEN}"),
        (lambda c: c["transcoders"][1].clear(),
         f"transcoders[1] lacks 'd_model', 'd_sae', 'top_k' and 1 more: {WRITTEN}"),
    ],
)  # fmt: skip
def test_a_resigned_config_with_keys_save_never_writes_is_refused(
    replacement, random_model, tmp_path, edit, message
):
    """A key ``save`` never writes, with ``content_sha256`` recomputed (which anyone can),
    loaded and was ignored, at the top and in the model identity (another version's file, or a
    forgery); a layer's config was named "transcoder", not which. ``check_keys``'s form."""
    from toy_models.checkpoint import json_sha256

    replacement.save(tmp_path, "random")
    config_path = tmp_path / "replacement.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config["content_sha256"] = json_sha256({k: v for k, v in config.items()
                                            if k != "content_sha256"})  # fmt: skip
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        ReplacementModel.load(tmp_path, random_model)
    assert str(error.value) == f"{config_path}: not a valid replacement config ({message})"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_weights_stored_in_any_float_type_load_to_run_in_float32(
    replacement, random_model, tokens, tmp_path, dtype
):
    """The formats allow a weights file of any float type (``WEIGHT_DTYPES``: the zoo ships
    float16; a fuzz pass loaded float64 model and dictionary files): every model here runs in
    float32, and loaded they do, every parameter and buffer, the toy model and the set; a
    float64 file of float32 weights computes bit for bit what they did."""
    from toy_models.model import ToyTransformer

    random_model.save(tmp_path / "model", dtype=dtype)
    replacement.save(tmp_path / "set", "random", dtype=dtype)
    model = ToyTransformer.load(tmp_path / "model")
    exact = dtype == torch.float64  # (a narrower file rounds: another model's identity)
    loaded = ReplacementModel.load(tmp_path / "set", model if exact else random_model)
    tensors = [*loaded.parameters(), *loaded.buffers(), *model.parameters(), *model.buffers()]
    assert {t.dtype for t in tensors} == {torch.float32}
    assert model(tokens).dtype == loaded(tokens, mode="sparse").dtype == torch.float32
    if exact:
        assert torch.equal(model(tokens), random_model(tokens))
        for mode in ("sparse", "local"):
            assert torch.equal(loaded(tokens, mode=mode), replacement(tokens, mode=mode))
