"""Byte-level BPE trained on the generated corpus, with one token per digit and a BOS sink.

Digits are split one per token before BPE (otherwise merges like ``347`` make carries
unlearnable), and every encoded sequence starts with the BOS special token, which the model
learns to use as an attention sink. Saved as ``tokenizer.json`` beside a model's weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<|bos|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train the project's byte-level BPE on ``texts``; BOS is prepended on encode."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)]),
        ]
    )
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"{path}: not a valid tokenizer file ({exc})") from None
    if tokenizer.token_to_id(BOS) is None:
        raise ValueError(f"{path}: tokenizer has no {BOS} token; it was not made by this project")
    return tokenizer


def bos_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(BOS)
