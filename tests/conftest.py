"""Fixtures: a tiny model trained from scratch with the project's own command (seconds)."""

from __future__ import annotations

import pytest
import torch

from toy_models.model import ModelConfig, ToyTransformer


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from toy_models.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    train("tiny", out, quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_run):
    from toy_models.zoo import load_pretrained

    return load_pretrained(str(tiny_run))


@pytest.fixture
def random_model():
    torch.manual_seed(0)
    cfg = ModelConfig(d_vocab=50, n_ctx=16, d_model=24, n_layers=2, n_heads=3, d_head=8, d_mlp=48)
    model = ToyTransformer(cfg)
    # Larger weights than the init so that attention patterns are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model.eval()
