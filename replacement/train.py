"""Train one Lorsa and one transcoder for every layer of a toy model, all at once.

    python -m replacement.train --model default --layers all --out runs/replacement-default

Every step runs the frozen toy model once over generated rows (``ActivationStore``) and
updates every layer's Lorsa (on whole sequences) and transcoder (on shuffled tokens) from
that one pass. A named config is two parts: the dictionaries' shapes (``DictionaryShapes``,
what a replacement set is) and the optimisation (``ReplacementTrainConfig``: steps, batch,
learning rate, the schedule as fractions of the run, AuxK). What one step computes (the
initialisation, the loss, the scale folding) is in ``replacement.dictionaries``; the loop,
its checkpoints and ``--resume`` are ``toy_models.resumable``'s.

Ablations (many short runs of one layer) read a cached activation set instead
(``python -m replacement.cache``, see ``replacement.activation_cache``) and train only some
layers::

    python -m replacement.train --activations runs/acts --layers 1 \
        --base replacement/zoo/default --out runs/layer1

The output is still a complete replacement set: the other layers are copied from ``--base``
(a set for the same model), so ``replacement.evaluate`` and everything downstream read it as
it is. A layer's FVU and its spliced-alone loss recovered depend on that layer alone, so runs
compare layer by layer whatever the base; the all-layers figure measures it among the base's
layers. ``meta`` records ``trained_layers``, the base and the cache (id, epochs read). The
cache's rows are those of the stream with the cache's seed: a fresh run from a cache built with
seed 0 sees the rows a streaming run with ``seed=0`` sees. A run from a cache resumed with
``--resume`` reads on as an uninterrupted run does (the same rows, shuffle buffer and
generator), so it ends with the same weights, bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from toy_models.cli import MAX_STEPS, ArgumentParser, UserError, path_arg, run_cli
from toy_models.records import Bounds

STREAM_SEED_STRIDE = 7919  # the activation stream of seed s resumed at step t: s * stride + t
STATS_WINDOW = 20  # steps averaged in the progress bar
SET_FILE = "replacement.json"  # replacement.model.CONFIG_FILE, named without importing torch
# The range of each of a step's statistics (``replacement.dictionaries.STAT_NAMES``, named
# here without importing torch; ``dictionary_loss`` computes them): each layer's Lorsa and
# transcoder FVU, never below 0, and the fraction of its units counted dead, in [0, 1]. A
# resumed checkpoint's are checked against them (``toy_models.resumable``): a dead fraction of
# -5 was resumed into the set's final figures (found by a fuzz pass).
STAT_BOUNDS = {
    "lorsa_fvu": Bounds(0, None),
    "tc_fvu": Bounds(0, None),
    "lorsa_dead": Bounds(0, 1),
    "tc_dead": Bounds(0, 1),
}


@dataclass(frozen=True)
class DictionaryShapes:
    """The architecture of a replacement set: every layer's Lorsa and transcoder shapes."""

    n_qk_heads: int = 16
    n_ov_heads: int = 1024
    d_qk: int = 16  # = the default model's d_head, so QK starts as a copy of its heads
    lorsa_top_k: int = 32
    d_sae: int = 2048
    transcoder_top_k: int = 32
    transcoder_skip: bool = False

    def lorsa(self, d_model: int):
        from .lorsa import LorsaConfig

        return LorsaConfig(d_model, self.n_qk_heads, self.n_ov_heads, self.d_qk, self.lorsa_top_k)

    def transcoder(self, d_model: int):
        from .transcoder import TranscoderConfig

        return TranscoderConfig(d_model, self.d_sae, self.transcoder_top_k, self.transcoder_skip)


@dataclass(frozen=True)
class ReplacementTrainConfig:
    """The optimisation. The schedule is a fraction of the run, so ``--steps N`` scales it."""

    steps: int = 2800
    batch_size: int = 16  # sequences per step (transcoders: the same number of tokens)
    lr: float = 1e-3
    warmup_fraction: float = 1 / 30  # linear warm-up over this part of the run ...
    decay_fraction: float = 0.2  # ... and linear decay to zero over this last part
    k_start_factor: int = 4  # K anneals from factor * top_k down to top_k ...
    k_anneal_fraction: float = 4 / 15  # ... over this part of the run (747 of 2800 steps)
    aux_k: int = 64
    aux_coef: float = 1 / 32
    dead_tokens: int = 200_000
    norm_batches: int = 8
    checkpoint_every: int = 250
    seed: int = 0

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup_fraction * self.steps))

    @property
    def k_anneal_steps(self) -> int:
        return round(self.k_anneal_fraction * self.steps)

    @property
    def decay_start(self) -> int:
        return self.steps - round(self.decay_fraction * self.steps)


SHAPES: dict[str, DictionaryShapes] = {
    "default": DictionaryShapes(),
    "tiny": DictionaryShapes(
        n_qk_heads=2, n_ov_heads=32, d_qk=16, lorsa_top_k=4, d_sae=64, transcoder_top_k=4
    ),
}
CONFIGS: dict[str, ReplacementTrainConfig] = {
    "default": ReplacementTrainConfig(),
    "tiny": ReplacementTrainConfig(
        steps=20,
        batch_size=4,
        warmup_fraction=0.1,
        k_anneal_fraction=0.25,
        aux_k=8,
        dead_tokens=500,
        norm_batches=2,
        checkpoint_every=10,
    ),
}


def k_at(step: int, top_k: int, cfg: ReplacementTrainConfig) -> int:
    """K anneals linearly from ``k_start_factor * top_k`` to ``top_k`` over the first
    ``k_anneal_fraction`` of the run, then stays there."""
    frac = max(0.0, 1 - step / max(1, cfg.k_anneal_steps))
    return round(top_k + (cfg.k_start_factor - 1) * top_k * frac)


def lr_at(step: int, cfg: ReplacementTrainConfig) -> float:
    """Linear warm-up, constant, then linear decay to zero over the last ``decay_fraction``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * min(1.0, (cfg.steps - step) / max(1, cfg.steps - cfg.decay_start))


def check_config(config: str) -> None:
    if config not in CONFIGS:
        raise UserError(f"unknown replacement config {config!r}; known: {', '.join(CONFIGS)}")


def check_apart(out: Path, activations: Path) -> None:
    """Refuse an output directory that is the activation cache, inside it or holds it: the
    run's checkpoint and set would be written among (or over) the cache's chunks."""
    o, a = out.resolve(), activations.resolve()
    if o == a or a in o.parents or o in a.parents:
        where = "is" if o == a else "is inside" if a in o.parents else "holds"
        raise UserError(f"--out {out} {where} --activations {activations}: the run would "
                        "write its checkpoint and set among the cache's files; keep them "
                        "apart")  # fmt: skip


def train_replacement(
    model_name: str,
    out: Path,
    layers: list[int] | None = None,
    config: str = "default",
    resume: bool = False,
    steps: int | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
    activations: Path | None = None,
    base: Path | None = None,
):
    """Train the dictionaries of ``layers`` (all by default) with scales folded in, from the
    streamed model or, with ``activations``, from that cached activation set (it must hold
    ``layers`` and have been built from this model). ``base``: the set whose layers will fill
    those not trained (the caller builds the complete set); it must load for this model, and
    it is part of the run's identity (a resume with another base is refused).

    Returns ``(toy model, LayerDictionaries, meta)``; ``meta`` holds the training figures.
    ``stop_after`` ends the run after the checkpoint at that step, as an interruption would;
    the function then returns None. A ``resume`` of a finished run whose set in ``out`` loads
    (``finished_set``) trains nothing and writes nothing, as ``toy_models.train`` does: it
    returns ``(toy model, None, the set's meta)``, the set standing as written (it rewrote the
    checkpoint, and the caller the set: found by a fuzz pass).
    """
    from toy_models.resumable import WEIGHTS_FILE, ResumableRun

    # 1) the configuration and the run directory, before any heavy work
    check_config(config)
    shapes = SHAPES[config]
    cfg = CONFIGS[config] if steps is None else replace(CONFIGS[config], steps=steps)
    if stop_after is not None and stop_after % cfg.checkpoint_every:
        raise ValueError(f"stop_after={stop_after} is not a checkpoint step")
    out = Path(out)
    if activations is not None:
        check_apart(out, Path(activations))
    run = ResumableRun(out, resume=resume, outputs=(SET_FILE,), window=STATS_WINDOW)
    # what the identity holds before the model is loaded; the set the other layers come from
    # by its content, not its path (None: no base, a key the identity then leaves out)
    known = {"shapes": asdict(shapes), "train": asdict(cfg), "base_sha256": None}
    if base is not None:
        from toy_models.files import file_sha256

        known["base_sha256"] = file_sha256(Path(base) / SET_FILE)
    if resume:  # another run's checkpoint: refused before any heavy work
        run.check_resumable(known, STAT_BOUNDS)

    # 2) the frozen model, and the dictionaries with their optimizer (restored on --resume)
    import torch

    from toy_models.checkpoint import fingerprint
    from toy_models.zoo import load_pretrained

    from .activations import ActivationStore
    from .dictionaries import LayerDictionaries, layer_losses

    model, tokenizer = load_pretrained(model_name)
    model.requires_grad_(False)
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    bad = [l for l in layers if not 0 <= l < model.cfg.n_layers]
    if bad:
        raise UserError(f"layers {bad} out of range: the model has {model.cfg.n_layers} layers")
    cache = None
    if activations is not None:
        from .activation_cache import ActivationCache

        cache = ActivationCache(activations, model)
        cache.check_layers(layers)
        if cache.plan.split != "train":  # (accepted silently, found by a fuzz pass)
            raise UserError(f"--activations {activations}: caches the {cache.plan.split!r} "
                            "split; dictionaries trained on it would be evaluated on the rows "
                            "they saw: cache the 'train' split (replacement.cache --split "
                            "train)")  # fmt: skip
    if base is not None:  # a set it cannot use: refused now, not after the training
        from .model import ReplacementModel

        ReplacementModel.load(base, model)
    torch.manual_seed(cfg.seed)
    dicts = LayerDictionaries(layers, model.cfg.d_model, shapes)
    opt = torch.optim.Adam(dicts.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    identity = {
        "model_sha256": fingerprint(model),
        "layers": layers,
        "shapes": asdict(shapes),
        "train": asdict(cfg),
    }
    if cache is not None:  # a streaming run's identity stays what it was
        identity["activations"] = cache.plan.cache_id()
    if base is not None:  # so does that of a run without a base
        identity["base_sha256"] = known["base_sha256"]
    run.start(identity, dicts, opt, stats=STAT_BOUNDS)
    if run.step:
        dicts.check_buffers(str(run.checkpoint / WEIGHTS_FILE))
    if run.step == cfg.steps and (meta := finished_set(out, model, layers, shapes, cfg)):
        return model, None, meta  # a finished run: its set and figures stand as written
    # (a run stopped while writing its set, or whose set was damaged since, resumes here: no
    # steps left, the set is written again from the last checkpoint)

    # 3) a fresh run starts from the original model; a resumed streaming run continues on
    #    fresh (still seeded) data rather than replaying the stream
    if cache is None:
        seed = cfg.seed * STREAM_SEED_STRIDE + run.step
        store = ActivationStore(model, tokenizer, cfg.batch_size, "train", seed, layers=layers)
    else:
        from .activation_cache import CachedActivationStore

        seed = cfg.seed * STREAM_SEED_STRIDE
        store = CachedActivationStore(cache, layers, cfg.batch_size, seed)
        # resumed, it stands where an uninterrupted run stands at this step (the same rows,
        # shuffle buffer and generator): past the scales' batches, the first, one a step
        if resume:
            store.skip(cfg.norm_batches, 1 + run.step)
    if not resume:
        dicts.initialise(model, store, cfg.norm_batches, cfg.seed)

    # 4) the loop
    def step_fn(step: int) -> dict[str, float]:
        batch = next(store)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss, stats = layer_losses(dicts, batch, step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {k: sum(v) / len(v) for k, v in stats.items()}

    finished = run.train(
        step_fn,
        cfg.steps,
        checkpoint_every=cfg.checkpoint_every,
        desc="train replacement",
        quiet=quiet,
        stop_after=stop_after,
        postfix=lambda r: {k: f"{r.mean(k):.3f}" for k in ("lorsa_fvu", "tc_fvu")},
    )
    if not finished:
        return None

    # 5) scales folded into the weights, and the training figures
    dicts.fold_scales()
    tokens = cfg.steps * cfg.batch_size * model.cfg.n_ctx  # elapsed spans resumes
    meta = {
        "train_config": config,
        "shapes": asdict(shapes),
        "train": asdict(cfg),
        "layers": layers,
        "train_elapsed_s": round(run.elapsed_s, 1),
        "train_tokens_per_s": round(tokens / max(run.elapsed_s, 1e-9)),
        "final_train_stats": run.recent[-1] if run.recent else {},
    }
    if cache is not None:
        meta["activations"] = {
            "directory": str(activations),
            "cache_id": cache.plan.cache_id(),
            "rows": cache.plan.rows,
            "epochs_read": round(store.epochs, 3),
        }
    return model, dicts, meta


def finished_set(
    out: Path, model, layers: list[int], shapes: DictionaryShapes, cfg: ReplacementTrainConfig
) -> dict | None:
    """The meta of the set a finished run wrote into ``out``, or None unless it loads for
    ``model`` (every check of ``ReplacementModel.load``), was trained with these ``layers``,
    ``shapes`` and ``cfg``, and records the figures ``main`` prints: finite and not negative
    (a fuzz pass's 401-digit FVU was an OverflowError traceback where ``main`` formats it)."""
    from toy_models.records import is_finite_number

    from .model import ReplacementModel

    try:
        meta = ReplacementModel.load(out, model).meta
    except (OSError, ValueError, UserError):
        return None
    stats = meta.get("final_train_stats")
    figures = [meta.get("train_elapsed_s"), meta.get("train_tokens_per_s")]
    if isinstance(stats, dict):
        figures += [stats.get("lorsa_fvu"), stats.get("tc_fvu")]
    trained = [layers, asdict(shapes), asdict(cfg)]
    same = [meta.get(k) for k in ("layers", "shapes", "train")] == trained
    numbers = all(is_finite_number(v) and v >= 0 for v in figures)
    return meta if same and isinstance(stats, dict) and numbers else None


def parse_layers(text: str) -> list[int] | None:
    """``all`` (None) or a comma-separated list of layer indices."""
    if text == "all":
        return None
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(
            f"--layers must be 'all' or comma-separated integers, got {text!r}"
        ) from None
    if twice := sorted({l for l in layers if layers.count(l) > 1}):
        raise UserError(f"--layers {text}: layer {twice[0]} is named twice; name each once")
    return sorted(layers)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m replacement.train",
        description="Train a Lorsa layer and a transcoder for every layer of a toy model.",
    )
    parser.add_argument("--model", default="default", help="zoo name or toy model directory")
    parser.add_argument(
        "--layers",
        default="all",
        help="'all', or layers to train such as 1 or 0,2 (needs --activations and --base: the "
        "other layers are copied from --base, so the output is a complete set)",
    )
    parser.add_argument(
        "--activations",
        type=path_arg,
        help="train from this cached activation set (python -m replacement.cache) instead of "
        "streaming from the model",
    )
    parser.add_argument(
        "--base", type=path_arg, help="replacement set whose layers fill those not trained"
    )
    parser.add_argument("--config", default="default", help=f"one of {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=path_arg, required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--steps", type=int, help="override the config's number of steps")
    args = parser.parse_args(argv)
    check_config(args.config)
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:  # a config's bound (a fuzz
        # pass's 10**20 steps started; the finished run's config would then be refused)
        raise UserError(f"--steps must be in 1..{MAX_STEPS}, got {args.steps}")
    layers = parse_layers(args.layers)
    if layers is not None and (args.activations is None or args.base is None):
        raise UserError(
            "--layers other than 'all' trains part of a set: it needs --activations (a cached "
            "activation set) and --base (the set that supplies the other layers)"
        )
    if layers is None and args.base is not None:
        raise UserError(
            "--base fills layers that are not trained; with --layers all there are none"
        )
    if args.activations is not None and not (args.activations / "manifest.json").is_file():
        raise UserError(f"--activations {args.activations}: not an activation cache")
    if args.base is not None and not (args.base / SET_FILE).is_file():
        raise UserError(f"--base {args.base}: no {SET_FILE} there")
    from toy_models.zoo import resolve_model_dir

    resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    model, dicts, meta = train_replacement(
        args.model,
        args.out,
        layers=layers,
        config=args.config,
        resume=args.resume,
        steps=args.steps,
        activations=args.activations,
        base=args.base,
    )
    if dicts is not None:  # (None: a finished run, its set already written)
        from .model import ReplacementModel

        lorsas, transcoders = list(dicts.lorsas), list(dicts.transcoders)
        if args.base is not None:
            base = ReplacementModel.load(args.base, model)
            lorsas, transcoders = list(base.lorsas), list(base.transcoders)
            for i, l in enumerate(dicts.layers):
                lorsas[l], transcoders[l] = dicts.lorsas[i], dicts.transcoders[i]
            meta = {**meta, "trained_layers": dicts.layers, "base": str(args.base)}
        replacement = ReplacementModel(model, lorsas, transcoders)
        replacement.save(args.out, args.model, meta)
    stats = meta["final_train_stats"]
    print(
        f"trained {len(meta['layers'])} Lorsa layers and transcoders in"
        f" {meta['train_elapsed_s']:.0f} s ({meta['train_tokens_per_s']} tokens/s);"
        f" last-batch FVU Lorsa {stats['lorsa_fvu']:.3f}, transcoders {stats['tc_fvu']:.3f}"
        f" -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
