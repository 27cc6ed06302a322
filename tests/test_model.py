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


def test_load_refuses_truncated_and_missing_files(random_model, tmp_path):
    random_model.save(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unreadable weights"):
        ToyTransformer.load(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ToyTransformer.load(tmp_path)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"d_vocab": 10, "n_layer": 2})
