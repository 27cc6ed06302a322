import torch
from safetensors.torch import load_file

from toy_models.train import lr_at, train
from toy_models.zoo import CONFIGS


def test_resume_continues_bit_for_bit(tiny_run, tmp_path):
    assert train("tiny", tmp_path, stop_after=20, quiet=True) is None
    assert not (tmp_path / "model.safetensors").exists()
    train("tiny", tmp_path, resume=True, quiet=True)
    straight = load_file(str(tiny_run / "model.safetensors"))
    resumed = load_file(str(tmp_path / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_training_lowers_the_loss(tiny_run):
    import json

    meta = json.loads((tiny_run / "config.json").read_text())
    # uniform over the vocabulary would be ln(400) = 5.99
    assert meta["final_train_loss"] < 5.9
    assert meta["tokenizer_sha256"]


def test_lr_schedule_warms_up_and_decays():
    cfg = CONFIGS["default"].train
    assert lr_at(0, cfg) < lr_at(cfg.warmup_steps - 1, cfg) == cfg.lr
    assert lr_at(cfg.steps - 1, cfg) < 0.06 * cfg.lr
    assert all(lr_at(s, cfg) > 0 for s in range(0, cfg.steps, 97))


def test_ship_writes_fp16_weights_and_a_record_that_reloads(tiny_run, tmp_path):
    import json

    from toy_models.ship import SHIPPED_FILES, ship
    from toy_models.zoo import file_sha256, load_pretrained

    dest = ship(tiny_run, "tiny", dest_root=tmp_path)
    record = json.loads((dest / "record.json").read_text())
    assert set(record["sha256"]) == set(SHIPPED_FILES)
    assert all(file_sha256(dest / name) == h for name, h in record["sha256"].items())
    assert all(
        t.dtype == torch.float16 for t in load_file(str(dest / "model.safetensors")).values()
    )
    model, _ = load_pretrained(str(dest))
    assert next(model.parameters()).dtype == torch.float32
    # shipping again replaces the entry whole
    assert ship(tiny_run, "tiny", dest_root=tmp_path) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
