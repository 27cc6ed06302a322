"""The shipped replacement set: intact, made for the shipped model, reproducing its record."""

import json

import pytest
import torch

from replacement.ship import RECORD_BATCHES, SHIPPED_DIR
from toy_models.zoo import file_sha256, load_pretrained

DEFAULT = SHIPPED_DIR / "default"
RECORD = json.loads((DEFAULT / "record.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORD["sha256"]))
def test_shipped_files_match_their_recorded_hashes(name):
    assert file_sha256(DEFAULT / name) == RECORD["sha256"][name]


def test_shipped_set_reproduces_its_record_and_local_mode_is_exact():
    from replacement.evaluate import heldout_batches, reconstruction_stats
    from replacement.model import ReplacementModel

    model, tokenizer = load_pretrained("default")
    replacement = ReplacementModel.load(DEFAULT, model)
    batches = heldout_batches(model, tokenizer, RECORD_BATCHES)
    stats = reconstruction_stats(replacement, batches)
    for kind, layers in RECORD["reconstruction"].items():
        for got, want in zip(stats[kind], layers, strict=True):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    with torch.no_grad():
        local = replacement(batches[0][:4], mode="local")
        torch.testing.assert_close(local, model(batches[0][:4]), atol=1e-5, rtol=1e-5)
