"""The shipped default model: files intact, loadable, and reproducing their recorded figures."""

import json
import random

import pytest

from toy_models.data import COMMON_NAMES, rare_name
from toy_models.ship import RECORD_DOCS, SHIPPED_FILES
from toy_models.zoo import SHIPPED_DIR, file_sha256, load_pretrained

DEFAULT = SHIPPED_DIR / "default"
RECORD = json.loads((DEFAULT / "record.json").read_text())


@pytest.mark.parametrize("name", SHIPPED_FILES)
def test_shipped_files_match_their_recorded_hashes(name):
    assert file_sha256(DEFAULT / name) == RECORD["sha256"][name]


def test_shipped_model_reproduces_its_recorded_heldout_loss():
    from toy_models.evaluate import heldout_loss

    model, tokenizer = load_pretrained("default")
    loss = heldout_loss(model, tokenizer, RECORD_DOCS)
    assert loss == pytest.approx(RECORD["heldout_loss"], rel=1e-5)


def test_shipped_artifacts_are_small():
    total = sum(f.stat().st_size for f in SHIPPED_DIR.rglob("*") if f.is_file())
    assert total < 10e6


def test_trained_vocabulary_makes_subtoken_induction_observable():
    _, tokenizer = load_pretrained("default")
    for name in COMMON_NAMES:
        assert len(tokenizer.encode(" " + name).ids) == 2, name  # BOS + one token
    rng = random.Random(0)
    heldout = [rare_name(rng, "heldout") for _ in range(200)]
    split = [len(tokenizer.encode(" " + n).ids) - 1 >= 2 for n in heldout]
    assert sum(split) / len(split) >= 0.95
    digits = tokenizer.encode("1234567890").tokens[1:]
    assert digits == list("1234567890")
