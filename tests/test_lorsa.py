import math

import pytest
import torch

from replacement.lorsa import LorsaConfig, LorsaLayer, topk_relu


@pytest.fixture
def lorsa():
    torch.manual_seed(0)
    return LorsaLayer(LorsaConfig(d_model=16, n_qk_heads=3, n_ov_heads=12, d_qk=4, top_k=5))


def naive_pre_activations(layer: LorsaLayer, x):
    """One explicit pattern per OV head, looped: the definition, written out."""
    b, n, _ = x.shape
    out = torch.zeros(b, n, layer.cfg.n_ov_heads)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(layer.cfg.n_ov_heads):
        h = i // layer.cfg.group_size
        q = x @ layer.W_Q[h] + layer.b_Q[h]
        k = x @ layer.W_K[h] + layer.b_K[h]
        scores = (q @ k.transpose(-1, -2) / math.sqrt(layer.cfg.d_qk)).masked_fill(
            ~causal, -math.inf
        )
        v = x @ layer.W_V[i] + layer.b_V[i]
        out[:, :, i] = (scores.softmax(-1) @ v[..., None])[..., 0]
    return out


def test_grouped_equals_naive_per_head_loop(lorsa):
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(
        lorsa.pre_activations(x), naive_pre_activations(lorsa, x), atol=1e-5, rtol=1e-5
    )


def test_topk_keeps_exactly_k_ranked_by_output_norm(lorsa):
    x = torch.randn(2, 7, 16)
    z = lorsa.encode(x)
    assert ((z != 0).sum(-1) <= 5).all() and (z >= 0).all()
    pre = torch.relu(lorsa.pre_activations(x))
    assert ((z != 0).sum(-1) == (pre > 0).sum(-1).clamp(max=5)).all()  # k, unless fewer fire
    score = pre * lorsa.W_O.norm(dim=-1)
    kept = z != 0
    # every kept head outranks every dropped one
    assert (
        score.masked_fill(~kept, math.inf).min(-1).values
        >= score.masked_fill(kept, -math.inf).max(-1).values
    ).all()


def test_topk_gradient_reaches_kept_entries_only():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5]], requires_grad=True)
    topk_relu(pre, 2).sum().backward()
    assert pre.grad.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_contributions_sum_to_pre_activations(lorsa):
    x = torch.randn(1, 9, 16)
    heads = torch.tensor([0, 5, 11])
    contrib = lorsa.contributions(x[0], 6, heads)
    assert contrib.shape == (3, 7)
    torch.testing.assert_close(
        contrib.sum(-1), lorsa.pre_activations(x)[0, 6, heads], atol=1e-5, rtol=1e-5
    )


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of n_qk_heads"):
        LorsaConfig(d_model=8, n_qk_heads=3, n_ov_heads=10, d_qk=4, top_k=2)
    with pytest.raises(ValueError, match="top_k=0"):
        LorsaConfig(d_model=8, n_qk_heads=2, n_ov_heads=10, d_qk=4, top_k=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("n_qk_heads", 0), ("n_qk_heads", -2), ("n_ov_heads", -10), ("d_qk", 0), ("d_model", -8),
     ("d_qk", 4.0), ("n_qk_heads", True)],
)  # fmt: skip
def test_config_refuses_sizes_that_are_not_positive_integers(field, value):
    """Found by a fuzz pass: n_qk_heads=0 was a ZeroDivisionError, and -2 passed the
    divisibility check (10 % -2 == 0). Each is one ValueError naming the field."""
    shapes = dict(d_model=8, n_qk_heads=2, n_ov_heads=10, d_qk=4, top_k=2) | {field: value}
    with pytest.raises(ValueError, match=f"^{field}={value!r} must be a positive integer$"):
        LorsaConfig(**shapes)
