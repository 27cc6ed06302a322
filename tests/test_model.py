import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from toy_models.model import ModelConfig, ToyTransformer


def test_fused_kernels_match_the_hooked_computation(random_model):
    tokens = torch.randint(0, 50, (3, 16))
    fused = random_model(tokens)  # fused LayerNorm and attention: nobody is watching
    explicit, cache = random_model.run_with_cache(tokens)  # hooks force the explicit path
    assert "blocks.1.attn.hook_pattern" in cache
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_hook_names_and_residual_bookkeeping(random_model):
    tokens = torch.randint(0, 50, (2, 10))
    logits, cache = random_model.run_with_cache(tokens)
    assert logits.shape == (2, 10, 50)
    for l in range(2):
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]
        assert pattern.shape == (2, 3, 10, 10)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 3, 10))
        assert torch.all(pattern.triu(1) == 0)  # causal
        mid = cache[f"blocks.{l}.hook_resid_pre"] + cache[f"blocks.{l}.hook_attn_out"]
        torch.testing.assert_close(cache[f"blocks.{l}.hook_resid_mid"], mid)
        post = mid + cache[f"blocks.{l}.hook_mlp_out"]
        torch.testing.assert_close(cache[f"blocks.{l}.hook_resid_post"], post)
        # ln1's output is exactly the attention input: LayerNorm weights are folded away
        x = cache[f"blocks.{l}.hook_resid_pre"]
        normed = (x - x.mean(-1, keepdim=True)) / cache[f"blocks.{l}.ln1.hook_scale"]
        torch.testing.assert_close(cache[f"blocks.{l}.ln1.hook_normalized"], normed)
    resid = cache["blocks.1.hook_resid_post"]
    final = (resid - resid.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
    torch.testing.assert_close(logits, final @ random_model.W_U + random_model.b_U)


def test_run_with_hooks_ablation_changes_only_later_layers(random_model):
    tokens = torch.randint(0, 50, (1, 8))
    clean_logits, clean = random_model.run_with_cache(tokens)
    seen = {}

    def zero(act, hook):
        return torch.zeros_like(act)

    def record(act, hook):
        seen[hook.name] = act.clone()

    logits = random_model.run_with_hooks(
        tokens,
        fwd_hooks=[
            ("blocks.1.hook_attn_out", zero),
            ("blocks.1.hook_resid_pre", record),
            ("blocks.1.hook_resid_mid", record),
        ],
    )
    torch.testing.assert_close(seen["blocks.1.hook_resid_pre"], clean["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(seen["blocks.1.hook_resid_mid"], clean["blocks.1.hook_resid_pre"])
    assert not torch.allclose(logits, clean_logits)
    assert torch.equal(random_model(tokens), random_model(tokens))  # hooks were removed
    torch.testing.assert_close(random_model(tokens), clean_logits, atol=1e-5, rtol=1e-5)


def test_bad_shapes_and_lengths(random_model):
    with pytest.raises(ValueError, match="outside 1..n_ctx=16"):
        random_model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="must be"):
        random_model(torch.zeros(17, dtype=torch.long))
    # a fuzz pass: a batch of no rows failed in torch's min() ("Expected reduction dim")
    with pytest.raises(ValueError, match=r"with a row or more, got shape \(0, 4\)"):
        random_model(torch.zeros(0, 4, dtype=torch.long))


def test_token_ids_outside_the_vocabulary_or_of_another_type_are_refused(
    random_model, make_replacement
):
    """A negative id would index the embedding from its end (-1 read as the last token): a
    silently different prompt. Ids out of range, floats, bools, bytes (read as a mask) and
    plain lists are refused by the toy model and the replacement model in both modes."""
    vocab = random_model.cfg.d_vocab
    replacement = make_replacement(random_model)
    calls = [random_model, lambda t: replacement(t, mode="local"),
             lambda t: replacement(t, mode="sparse")]  # fmt: skip
    for tokens, message in (
        (torch.tensor([[1, -1, 3]]), f"token id -1 is outside 0..{vocab - 1}"),
        (torch.tensor([[1, vocab, 3]]), f"token id {vocab} is outside"),
        (torch.tensor([[1.0, 2.0]]), "integer ids, got torch.float32"),
        (torch.tensor([[True, False]]), "integer ids, got torch.bool"),
        (torch.tensor([[1, 2]], dtype=torch.uint8), "integer ids, got torch.uint8"),
        ([[1, 2]], "integer ids, got list"),
    ):
        for call in calls:
            with pytest.raises(ValueError, match=message):
                call(tokens)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(random_model(ids.int()), random_model(ids))  # int32 ids are ids


def test_save_load_round_trip(random_model, tmp_path):
    random_model.save(tmp_path)
    loaded = ToyTransformer.load(tmp_path)
    tokens = torch.randint(0, 50, (2, 16))
    assert torch.equal(loaded(tokens), random_model(tokens))


def test_load_refuses_mismatched_shapes(random_model, tmp_path):
    random_model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["d_mlp"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"model.safetensors: blocks.0.mlp.W_in has shape \(24, 48\)"
    ):
        ToyTransformer.load(tmp_path)


def test_load_refuses_missing_tensor_and_bad_config(random_model, tmp_path):
    random_model.save(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["W_U"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['W_U'\]"):
        ToyTransformer.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model": {"d_vocab": 5, "colour": 1}}')
    with pytest.raises(ValueError, match="config.json: not a valid model config"):
        ToyTransformer.load(tmp_path)
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="config.json: not valid JSON here: nested too deeply"):
        ToyTransformer.load(tmp_path)


def test_load_refuses_truncated_and_missing_files(random_model, tmp_path):
    random_model.save(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unreadable weights"):
        ToyTransformer.load(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ToyTransformer.load(tmp_path)


def test_a_config_key_beside_the_model_config_that_no_run_writes_is_refused(random_model, tmp_path):
    """A fuzz pass: a model directory whose config.json held a key of any name beside
    ``model`` (another version's, or an edit) loaded with the key ignored. A run's figures
    (``toy_models.ship.RunFields``) are what may stand there."""
    random_model.save(tmp_path, extra={"zoo_config": "tiny", "untrained_tokens": [3]})
    assert ToyTransformer.load(tmp_path).untrained_tokens == {3}
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"colour": "red"}))
    with pytest.raises(ValueError) as info:
        ToyTransformer.load(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'config.json'}: not a valid model config (its config holds unknown keys "
        "('colour'): written by another version, or edited)"
    )


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError) as info:
        ModelConfig.from_dict({"d_vocab": 10, "n_layer": 2})
    assert str(info.value) == ("model config holds unknown keys ('n_layer'): written by another "
                               "version, or edited")  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("d_vocab", 50.0, "model config.d_vocab must be an integer, got 50.0"),
        ("n_heads", "3", "model config.n_heads must be an integer, got '3'"),
        ("n_layers", -1, "model config.n_layers must be in 1..4096, got -1"),
        ("n_layers", True, "model config.n_layers must be an integer, got True"),
        ("d_model", None, "model config.d_model must be an integer, got None"),
        ("ln_eps", float("nan"), "model config.ln_eps must be finite and positive, got nan"),
        ("ln_eps", "1e-5", "model config.ln_eps must be a number, got '1e-5'"),
        ("init_std", -0.1, "model config.init_std must be finite and positive"),
        ("n_layers", 10**9, "model config.n_layers must be in 1..4096"),
        ("d_mlp", 2**40, "model config.d_mlp must be in 1..16777216"),
    ],
)
def test_load_refuses_config_values_of_the_wrong_type_or_range(
    random_model, tmp_path, field, value, message
):
    random_model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: not a valid model config") as info:
        ToyTransformer.load(tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_absurd_sizes_are_refused_before_anything_is_allocated(random_model, tmp_path):
    random_model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # within every field's range, but 2^44 parameters: refused by comparing with the file
    config["model"].update(d_vocab=2**22, d_model=2**22)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model.safetensors: .* has shape \(.*\), the config"):
        ToyTransformer.load(tmp_path)


def test_load_refuses_integer_or_non_finite_weights(random_model, tmp_path):
    random_model.save(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    save_file({**tensors, "W_U": tensors["W_U"].to(torch.int32)}, str(path))
    with pytest.raises(ValueError, match="model.safetensors: W_U is stored as torch.int32"):
        ToyTransformer.load(tmp_path)
    tensors["W_E"][3, 4] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="model.safetensors: W_E holds NaN or infinite values"):
        ToyTransformer.load(tmp_path)
    # finite as float64, infinite as the float32 it is used as (found by a fuzz pass:
    # evaluation then printed NaN losses with exit 0)
    tensors["W_E"][3, 4] = 0.0
    save_file({**tensors, "W_U": tensors["W_U"].double() * 1e300}, str(path))
    with pytest.raises(ValueError, match="model.safetensors: W_U holds values beyond float32"):
        ToyTransformer.load(tmp_path)


def test_identity_covers_config_tokenizer_and_weights(random_model, tmp_path):
    from toy_models.checkpoint import fingerprint

    random_model.save(tmp_path)
    base = fingerprint(ToyTransformer.load(tmp_path))
    assert fingerprint(random_model) == base  # what was saved is what was loaded
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["ln_eps"] = 1e-3
    (tmp_path / "config.json").write_text(json.dumps(config))
    changed_config = fingerprint(ToyTransformer.load(tmp_path))
    random_model.save(tmp_path)
    # a tokenizer file beside the model is loaded (``load_model`` reads BOS from it): the
    # shipped one, then the same written out with other spacing (other bytes, another hash)
    from toy_models.zoo import SHIPPED_DIR

    shipped = (SHIPPED_DIR / "default" / "tokenizer.json").read_text()
    (tmp_path / "tokenizer.json").write_text(shipped)
    with_tokenizer = fingerprint(ToyTransformer.load(tmp_path))
    (tmp_path / "tokenizer.json").write_text(json.dumps(json.loads(shipped), indent=1))
    other_tokenizer = fingerprint(ToyTransformer.load(tmp_path))
    with torch.no_grad():
        random_model.W_U[0, 0] += 1e-3
    other_weights = fingerprint(random_model)
    assert len({base, changed_config, with_tokenizer, other_tokenizer, other_weights}) == 5
    # the dtype weights are stored in is not part of it
    random_model.save(tmp_path / "double", dtype=torch.float64)
    assert fingerprint(ToyTransformer.load(tmp_path / "double")) == other_weights


def test_param_groups_decay_matrices_but_not_biases_or_positions(random_model):
    decayed, plain = random_model.param_groups(0.1)
    names = {id(p): n for n, p in random_model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in plain["params"]} >= {"W_pos", "b_U", "blocks.0.attn.b_O"}
    assert all(p.ndim >= 2 for p in decayed["params"])
    assert all(p.ndim == 1 or names[id(p)] == "W_pos" for p in plain["params"])
    assert "W_E" in {names[id(p)] for p in decayed["params"]}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(random_model.parameters()))


def test_a_backward_pass_gives_the_same_gradients_every_time():
    """Training is reproducible run to run: the embedding's gradient sums a repeated token's
    rows in a fixed order (indexing ``W_E[tokens]`` accumulates them in thread order, and two
    passes on the default's batch shape then differ in the last bits on 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(d_vocab=64, n_ctx=128, d_model=32, n_layers=1, n_heads=2, d_head=16,
                          d_mlp=64)  # fmt: skip
        model = ToyTransformer(cfg)
        tokens = torch.randint(0, cfg.d_vocab, (32, 127))  # the default's batch: many repeats

        def grads():
            model.zero_grad(set_to_none=True)
            model(tokens).square().mean().backward()
            return {n: p.grad.clone() for n, p in model.named_parameters()}

        first = grads()
        for _ in range(5):
            again = grads()
            assert all(torch.equal(first[n], again[n]) for n in first)
    finally:
        torch.set_num_threads(before)
