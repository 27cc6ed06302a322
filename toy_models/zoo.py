"""The model zoo: named configurations, and where the shipped checkpoints live.

``default`` is the model the rest of the project sparsifies; ``tiny`` trains in seconds and is
what tests build. A name resolves to a shipped checkpoint directory in ``toy_models/zoo/NAME``;
any existing directory path is accepted too (a model you trained yourself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from .cli import MAX_STEPS
from .files import file_sha256  # noqa: F401  (re-exported: the shipped-file tests use it)
from .records import Bounds

SHIPPED_DIR = Path(__file__).parent / "zoo"


@dataclass(frozen=True)
class TrainConfig:
    """A toy model's training settings. A finished run records them in its ``config.json``,
    which ``toy_models.ship`` reads back as untrusted data: the bounds below are what a run
    can have trained with (``toy_models.records.from_json`` refuses anything else, naming the
    field)."""

    vocab_size: Annotated[int, Bounds(2, 2**20)] = 1024
    # Training documents per task family (the held-out split gets a tenth as many).
    n_docs: dict[str, Annotated[int, Bounds(0, 2**31)]] = field(
        default_factory=lambda: {
            "names": 60_000,
            "addition": 60_000,
            "successor": 50_000,
            "repeat": 100_000,
        }
    )
    batch_size: Annotated[int, Bounds(1, 2**20)] = 32
    steps: Annotated[int, Bounds(1, MAX_STEPS)] = 5400
    lr: Annotated[float, Bounds(1e-12, 1)] = 3e-3  # (0, 1], as ``toy_models.train --lr``
    # The schedule is a fraction of the run, so that ``--steps N`` scales it (300 of 5400).
    warmup_fraction: Annotated[float, Bounds(0, 1)] = 1 / 18
    min_lr_ratio: Annotated[float, Bounds(0, 1)] = 0.05
    weight_decay: Annotated[float, Bounds(0, None)] = 0.1
    grad_clip: Annotated[float, Bounds(1e-12, None)] = 1.0
    checkpoint_every: Annotated[int, Bounds(1, None)] = 250
    seed: Annotated[int, Bounds(0, 2**32 - 1)] = 0  # as ``toy_models.train --seed``

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup_fraction * self.steps))


@dataclass(frozen=True)
class ZooEntry:
    model: dict  # ModelConfig fields except d_vocab (which comes from the tokenizer)
    train: TrainConfig
    description: str


CONFIGS: dict[str, ZooEntry] = {
    "default": ZooEntry(
        model=dict(n_ctx=128, d_model=128, n_layers=4, n_heads=8, d_head=16, d_mlp=512),
        train=TrainConfig(),
        description="4 layers, d_model 128, 8 heads: the model the project sparsifies",
    ),
    "tiny": ZooEntry(
        model=dict(n_ctx=64, d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64),
        train=TrainConfig(
            vocab_size=400,
            n_docs={"names": 300, "addition": 300, "successor": 200, "repeat": 300},
            batch_size=8,
            steps=30,
            warmup_fraction=1 / 6,
            checkpoint_every=10,
        ),
        description="2 layers, d_model 32: trains in seconds, for tests",
    ),
}


class UnknownModelError(ValueError):
    pass


def get_config(name: str) -> ZooEntry:
    if name not in CONFIGS:
        raise UnknownModelError(f"unknown config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]


def check_tokens(model: str, named: list[tuple[str, str]], what: str = "target") -> None:
    """Refuse now each text of ``named`` (``(label, text)`` pairs: the label says where it was
    given) that is not one token of ``model``'s tokenizer, read alone (light: no torch, no
    weights), before a command loads the model: a reviewer waited 11-20 s for a trace's
    ``--target-diff " 30" " 31"`` to be refused. An unknown model is refused here
    (``UnknownModelError``); a tokenizer that does not load is left to the model's full load,
    which says what is wrong with it."""
    if not named:
        return
    from .checkpoint import TOKENIZER_FILE
    from .cli import UserError
    from .tokenizer import load_tokenizer, single_token

    try:
        tokenizer = load_tokenizer(resolve_model_dir(model) / TOKENIZER_FILE)
    except UnknownModelError:
        raise
    except (OSError, ValueError):
        return
    for label, text in named:
        try:
            single_token(tokenizer, text, what)
        except ValueError as exc:
            raise UserError(f"{label}: {exc}") from None


def resolve_model_dir(name_or_path: str) -> Path:
    """A zoo name with a shipped checkpoint, or a checkpoint directory (an empty name is
    neither: ``Path("")`` would be the current directory). A bare zoo name that is also a
    directory here is refused (a fuzz pass evaluated ``runs/default`` for ``--model default``
    run inside ``runs/``, and could have shipped a set bound to it as the zoo's): a path says
    which (``./default``)."""
    name_or_path = str(name_or_path)  # a Path is taken too
    if not name_or_path.strip():
        raise UnknownModelError("the model is an empty name: give a zoo name or a directory")
    path = Path(name_or_path)
    shipped = SHIPPED_DIR / name_or_path
    if path.is_dir():
        bare = len(path.parts) == 1 and name_or_path not in (".", "..") \
            and not name_or_path.startswith(".")  # fmt: skip
        if bare and name_or_path in CONFIGS and shipped.is_dir() \
                and path.resolve() != shipped.resolve():  # fmt: skip
            raise UnknownModelError(f"{name_or_path!r} is both the shipped model and a directory "
                                    f"here: write ./{name_or_path} for the directory, or run "
                                    "from elsewhere for the shipped one")  # fmt: skip
        return path
    from .files import cut_short, is_swap_leftover

    if name_or_path in CONFIGS:
        if shipped.is_dir():
            return shipped
        why = cut_short(shipped)
        if why:
            raise UnknownModelError(f"{why}; ship it again (python -m toy_models.ship RUN "
                                    f"--name {name_or_path}) or rename that back")  # fmt: skip
    shipped_names = (
        sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_dir() and not is_swap_leftover(p))
        if SHIPPED_DIR.is_dir()
        else []
    )
    raise UnknownModelError(
        f"unknown model {name_or_path!r}: not a directory and not a shipped model"
        f" (shipped: {', '.join(shipped_names) or 'none'})"
    )


def load_pretrained(name_or_path: str):
    """``(model, tokenizer)`` from a zoo name or a checkpoint directory, checked together."""
    from .checkpoint import CONFIG_FILE, TOKENIZER_FILE, load_model, read_json
    from .tokenizer import load_tokenizer

    directory = resolve_model_dir(name_or_path)
    model = load_model(directory)  # its bos_id from the tokenizer file beside it (load_model)
    tokenizer_path = directory / TOKENIZER_FILE
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.get_vocab_size() != model.cfg.d_vocab:
        raise ValueError(
            f"{tokenizer_path}: vocabulary of {tokenizer.get_vocab_size()} tokens does not match "
            f"the model's d_vocab={model.cfg.d_vocab}"
        )
    recorded = read_json(directory / CONFIG_FILE).get("tokenizer_sha256")
    if recorded is not None and not isinstance(recorded, str):
        raise ValueError(f"{directory / CONFIG_FILE}: tokenizer_sha256 must be a string")
    if recorded is not None and recorded != model.tokenizer_sha256:
        raise ValueError(
            f"{tokenizer_path}: not the tokenizer this model was trained with (hash differs)"
        )
    model.eval()
    return model, tokenizer
