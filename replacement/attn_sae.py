"""The attention-output SAE: the baseline a Lorsa layer is compared with (the Lorsa paper's).

A TopK SAE on one layer's ``hook_attn_out`` (input = target), with as many latents as the Lorsa
layer has OV heads and the same K, trained with the replacement layers' recipe
(``replacement.dictionaries``): the attention output scaled to mean norm sqrt(d_model) (one
scale for input and target), ``b_dec`` the mean target, K annealed, AuxK, the learning-rate
schedule; the scale folded back at the end, so the SAE maps the model's own activations. It is a
``Transcoder`` with ``y = x``.

Two trainers share the recipe: ``train_attn_saes`` streams every layer from the model at once
(``benchmarks/attn_sae_baseline.py``); ``replacement.ablations`` trains one layer from a cached
activation set. ``kept_attn_saes`` keeps streamed SAEs in a work directory, bound to the model and
the settings, so that the analyses comparing Lorsa with them (error analysis, concept F1) train
them once.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from .dictionaries import fold_scales_transcoder, init_transcoder
from .transcoder import Transcoder, TranscoderConfig

SEED_OFFSET = 0  # layer l's SAE starts from seed + offset + l (as the baseline always did)


def new_attn_sae(d_model: int, n_latents: int, top_k: int) -> Transcoder:
    return Transcoder(TranscoderConfig(d_model, n_latents, top_k))


def init_attn_sae(sae: Transcoder, y_mean_scaled: Tensor, seed: int) -> None:
    """Random unit encoder columns, small decoder rows, ``b_dec`` = the (scaled) mean output."""
    init_transcoder(sae, y_mean_scaled, seed)


def fold_attn_sae(sae: Transcoder, scale: float) -> None:
    """Trained on ``scale * y -> scale * y``: afterwards it maps ``y -> y``."""
    fold_scales_transcoder(sae, scale, scale)


def train_attn_saes(
    model,
    tokenizer,
    n_latents: int,
    top_k: int,
    steps: int,
    *,
    layers: list[int] | None = None,
    quiet: bool = False,
) -> tuple[list[Transcoder], float]:
    """One attention-output SAE per layer of ``layers`` (all by default), trained together
    from one activation stream with the default replacement config's optimisation (``steps``
    overridden). Returns the SAEs (scales folded) and the training wall seconds."""
    from tqdm import tqdm

    from .activations import ActivationStore
    from .dictionaries import dictionary_loss, estimate_scales
    from .train import CONFIGS, lr_at

    cfg = replace(CONFIGS["default"], steps=steps)
    # K anneals from at most the width (only a narrow test SAE is affected)
    cfg = replace(cfg, k_start_factor=max(1, min(cfg.k_start_factor, n_latents // top_k)))
    torch.manual_seed(cfg.seed)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    d_model = model.cfg.d_model
    saes = [new_attn_sae(d_model, n_latents, top_k) for _ in layers]
    store = ActivationStore(model, tokenizer, cfg.batch_size, "train", cfg.seed, layers=layers)
    scales = estimate_scales(store, cfg.norm_batches)[:, 0, 1]  # the attention output's
    first = next(store)
    for i, (l, sae) in enumerate(zip(layers, saes, strict=True)):
        y_mean = (first.lorsa_y[i] * scales[i]).flatten(0, 1).mean(0)
        init_attn_sae(sae, y_mean, cfg.seed + SEED_OFFSET + l)
    idle = torch.zeros(len(layers), n_latents)
    opt = torch.optim.Adam([p for sae in saes for p in sae.parameters()], lr=cfg.lr)
    start = time.perf_counter()
    for step in tqdm(range(steps), desc="train attention SAEs", disable=quiet):
        batch = next(store)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = torch.zeros(())
        for i, sae in enumerate(saes):
            y = batch.lorsa_y[i] * scales[i]
            loss, _, _ = dictionary_loss(sae, y, y, idle[i], step, cfg)
            total = total + loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    for i, sae in enumerate(saes):
        fold_attn_sae(sae, float(scales[i]))
    return saes, elapsed


SAES_FILE = "saes.json"  # a kept directory's record, written last
SAE_FILE = "sae.{}.safetensors"  # layer l's SAE in a kept directory


def kept_attn_saes(
    model,
    tokenizer,
    layers: list[int],
    n_latents: int,
    top_k: int,
    steps: int,
    work: Path,
    *,
    quiet: bool = False,
) -> tuple[dict[int, Transcoder], float]:
    """Per layer of ``layers``, the attention-output SAE of ``train_attn_saes``: read from
    ``work/<identity>/`` when an earlier call with the same model and settings left them there,
    else trained and saved there (atomically, the record last). Returns the SAEs by layer and
    their training wall seconds.

    The record (``SAES_FILE``) holds the identity, the training seconds and the SHA-256 of
    every SAE file. A record of other settings, or one written before files were hashed, is
    retrained over; a record of these settings that is damaged, or an SAE file of the wrong
    names, shapes or values (``load_checked``) or not the one recorded (its hash), is refused
    in one line (a ValueError naming the file)."""
    from toy_models.checkpoint import (
        fingerprint,
        json_sha256,
        load_checked,
        read_json,
        save_state_atomic,
    )
    from toy_models.files import file_sha256, write_json_atomic

    identity = json_sha256(
        {"model": fingerprint(model), "layers": layers, "width": n_latents, "k": top_k,
         "steps": steps}
    )  # fmt: skip
    directory = Path(work) / identity[:16]
    record_path = directory / SAES_FILE
    names = {l: SAE_FILE.format(l) for l in layers}
    record = read_json(record_path) if record_path.is_file() else {}
    if record.get("identity") == identity and "files" in record:
        seconds, hashes = _kept_record(record, sorted(names.values()), record_path)
        saes = {}
        for l, name in names.items():
            path = directory / name
            sae = load_checked(
                lambda: new_attn_sae(model.cfg.d_model, n_latents, top_k), path, SAES_FILE
            )
            saes[l] = sae.requires_grad_(False)
            if file_sha256(path) != hashes[name]:
                raise ValueError(f"{path}: not the file recorded in {SAES_FILE} (sha256 "
                                 "differs: damaged, edited or swapped with another)")  # fmt: skip
        return saes, seconds
    trained, seconds = train_attn_saes(
        model, tokenizer, n_latents, top_k, steps, layers=layers, quiet=quiet
    )
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, sae in zip(names.values(), trained, strict=True):
        save_state_atomic(sae, directory / name)
        hashes[name] = file_sha256(directory / name)
    write_json_atomic(record_path, {"identity": identity, "train_s": seconds, "files": hashes})
    return {l: sae.requires_grad_(False) for l, sae in zip(layers, trained, strict=True)}, seconds


def _kept_record(record: dict, names: list[str], where: Path) -> tuple[float, dict[str, str]]:
    """A kept record's training seconds (finite, above zero) and its file hashes, which must
    name exactly the SAE files ``names``."""
    from toy_models.checkpoint import check_value

    seconds, hashes = record.get("train_s"), record["files"]
    check_value("float", seconds, f"{where}: train_s", math.inf)
    if not isinstance(hashes, dict) or sorted(hashes) != names:
        raise ValueError(f"{where}: 'files' does not list the SAE files {names}")
    if not all(isinstance(h, str) for h in hashes.values()):
        raise ValueError(f"{where}: 'files' holds a hash that is not a string")
    return float(seconds), hashes
