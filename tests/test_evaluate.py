"""The probes score what they claim: an oracle gets everything right, a blind model nothing."""

import math
from types import SimpleNamespace

import pytest
import torch

from toy_models import evaluate as ev


class Oracle:
    """Puts all its probability on the true next token (given the whole sequence)."""

    def __init__(self, cfg, sharp=True):
        self.cfg, self.sharp = cfg, sharp

    def run_with_cache(self, tokens, names_filter=None):
        b, n = tokens.shape
        logits = torch.zeros(b, n, self.cfg.d_vocab)
        if self.sharp:
            logits[:, :-1].scatter_(2, tokens[:, 1:, None], 50.0)
        pattern = torch.full((b, self.cfg.n_heads, n, n), 0.0)
        pattern[..., 0] = 1.0  # every head a perfect BOS sink
        cache = {f"blocks.{l}.attn.hook_pattern": pattern for l in range(self.cfg.n_layers)}
        return logits, cache


@pytest.fixture
def oracle(tiny_pretrained):
    model, tokenizer = tiny_pretrained
    cfg = SimpleNamespace(d_vocab=model.cfg.d_vocab, n_ctx=128, n_layers=2, n_heads=2)
    return Oracle(cfg), Oracle(cfg, sharp=False), tokenizer


def test_oracle_is_perfect_and_blind_model_scores_nothing(oracle):
    perfect, blind, tokenizer = oracle
    assert ev.successor_probe(perfect, tokenizer, 10)["accuracy"] == 1.0
    assert ev.addition_probe(perfect, tokenizer, 10)["exact_match"] == 1.0
    assert ev.subtoken_induction_probe(perfect, tokenizer, 30)["accuracy"] == 1.0
    assert ev.sink_probe(perfect, tokenizer, 2)["best_head_layer_ge_1"]["score"] == 1.0
    loss = ev.heldout_loss(blind, tokenizer, 5)
    assert all(math.isclose(v, math.log(blind.cfg.d_vocab), rel_tol=1e-6) for v in loss.values())
    # argmax of flat logits is token 0, which never is the answer
    assert ev.addition_probe(blind, tokenizer, 10)["exact_match"] == 0.0


def test_induction_scores_find_a_planted_induction_head(oracle, tiny_pretrained):
    _, _, tokenizer = oracle
    model, _ = tiny_pretrained
    docs = [ev.encode(tokenizer, e, model.cfg.n_ctx) for e in ev.heldout_examples("repeat", 3)]

    # A head that attends to the token after the previous copy of the current token scores 1.
    class Planted(Oracle):
        def run_with_cache(self, tokens, names_filter=None):
            logits, cache = super().run_with_cache(tokens)
            b, n = tokens.shape
            pattern = torch.zeros(b, 2, n, n)
            for j in range(b):
                doc = next(d for d in docs if d.ids == tokens[j, : len(d.ids)].tolist())
                copy = doc.example.spans_of("second")[0]
                first, second = doc.tokens_in(copy.earlier), doc.tokens_in(copy)
                off = second[0] - first[0]
                pattern[j, 0, :, 0] = 1.0
                for q in range(1, n):
                    pattern[j, 1, q] = 0
                    pattern[j, 1, q, q - 1] = 1.0  # previous-token head
                for q in second[1:]:
                    pattern[j, 0, q] = 0
                    pattern[j, 0, q, q - off + 1] = 1.0
            cache = {"blocks.0.attn.hook_pattern": pattern, "blocks.1.attn.hook_pattern": pattern}
            return logits, cache

    planted = Planted(
        SimpleNamespace(d_vocab=model.cfg.d_vocab, n_ctx=model.cfg.n_ctx, n_layers=2, n_heads=2)
    )
    result = ev.induction_probe(planted, tokenizer, 3)
    assert result["best_induction_head"]["score"] == pytest.approx(1.0)
    assert result["best_previous_token_head"] == {
        "layer": 0,
        "head": 1,
        "score": pytest.approx(1.0),
    }
    assert result["loss_second_copy"] < 1e-6


def test_full_evaluation_runs_on_the_tiny_model(tiny_pretrained):
    model, tokenizer = tiny_pretrained
    results = ev.evaluate(model, tokenizer, n_docs=4)
    assert all(math.isfinite(v) for v in results["heldout_loss"].values())
    assert 0 <= results["addition"]["exact_match"] <= 1
    assert results["induction"]["loss_ratio"] > 0
    assert "addition" in ev.summary(results)
