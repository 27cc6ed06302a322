"""Byte-level BPE trained on the generated corpus, with one token per digit and a BOS sink.

Digits are split one per token before BPE (otherwise merges like ``347`` make carries
unlearnable), and every encoded sequence starts with the BOS special token, which the model
learns to use as an attention sink. Saved as ``tokenizer.json`` beside a model's weights.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .cli import one_line

BOS = "<|bos|>"
NEVER_PREDICTED = f"{BOS} only begins a sequence and is never predicted"  # a target refused


def tokenizer_text(tokenizer: Tokenizer) -> str:
    """The text a model's ``tokenizer.json`` holds (what ``toy_models.train`` writes)."""
    return tokenizer.to_str(pretty=True)


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """The SHA-256 of ``tokenizer`` saved as a model's ``tokenizer.json`` (``tokenizer_text``,
    UTF-8): the hash a model records as its ``tokenizer_sha256``."""
    return hashlib.sha256(tokenizer_text(tokenizer).encode("utf-8")).hexdigest()


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train the project's byte-level BPE on ``texts``; BOS is prepended on encode.
    ``vocab_size`` bounds the vocabulary it returns, and holds at least the 256 bytes and
    BOS (a smaller one came back as 257 tokens without a word)."""
    least = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < least:
        raise ValueError(f"vocab_size must be an integer of at least {least} (every byte and "
                         f"{BOS}), got {vocab_size!r}")  # fmt: skip
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
    """``path``'s tokenizer, refused in one line naming the file unless it is one this project
    could have made: ids 0..n-1, BOS id 0 and prepended once. A file that loads but differs
    (no post-processor, BOS swapped with another token) would otherwise give wrong numbers
    without a word: evaluation and attribution read position 0 as BOS."""
    from .files import check_readable_file

    path = Path(path)
    # a directory or a link in a loop there was "not found" (a review): say which
    check_readable_file(path, "tokenizer file")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"{path}: not a valid tokenizer file ({one_line(exc)})") from None
    if tokenizer.token_to_id(BOS) is None:
        raise ValueError(f"{path}: tokenizer has no {BOS} token; it was not made by this project")
    ids = sorted(tokenizer.get_vocab(with_added_tokens=True).values())
    if ids != list(range(len(ids))) or len(ids) != tokenizer.get_vocab_size():
        raise ValueError(f"{path}: its token ids are not 0..{len(ids) - 1}, one per token "
                         "(a model's embedding rows are indexed by them)")  # fmt: skip
    # What this project never sets, and what changes the ids of a text without a word: a
    # truncation or padding setting cut or padded every document a model read (a fuzz pass:
    # ``truncation.max_length: 8`` scored truncated documents, exit 0, for a model that
    # records no tokenizer hash), a normalizer rewrites the text before it is split.
    for name in ("truncation", "padding", "normalizer"):
        if getattr(tokenizer, name) is not None:
            raise ValueError(f"{path}: sets a {name}, which no tokenizer of this project has "
                             "(it changes the ids of a text)")  # fmt: skip
    _check_bos(tokenizer, path)
    return tokenizer


def _check_bos(tokenizer: Tokenizer, path: str | Path) -> None:
    """Refuse a tokenizer whose BOS is not id 0 or that does not begin a plain text with
    exactly one BOS: the model was trained with BOS 0 as position 0's sink, and every reader
    of a sequence takes position 0 for it."""
    bos = tokenizer.token_to_id(BOS)
    if bos != 0:
        raise ValueError(f"{path}: {BOS} is token {bos}, not 0; it was not made by this project")
    try:
        ids = tokenizer.encode("a").ids
    except Exception as exc:  # anything else the tokenizer cannot take
        raise ValueError(f"{path}: cannot encode a plain text ({one_line(exc)})") from None
    if not begins_with_one_bos(tokenizer, ids):
        raise ValueError(f"{path}: does not begin an encoded text with exactly one {BOS} "
                         "(its post-processor is missing or changed)")  # fmt: skip


def _byte_of_char() -> dict[str, int]:
    """The byte-level alphabet read back: the printable character that stands for each byte
    in a token's string (printable Latin-1 bytes stand for themselves, the other 68 bytes for
    the characters from U+0100 on, in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars |= {b: chr(256 + i) for i, b in enumerate(others)}
    return {c: b for b, c in chars.items()}


_BYTE_OF_CHAR = _byte_of_char()


def token_text(tokenizer: Tokenizer, token: int) -> str:
    """How one token reads to a person: its text (special tokens such as BOS kept, since
    skipping them leaves an empty label), or, for a token holding part of a multi-byte
    character (which decodes alone to U+FFFD), its bytes with each byte of an incomplete
    character written ``<0xF0>``, as byte-fallback vocabularies name them. An id outside the
    vocabulary is refused (it decoded to "")."""
    if not 0 <= token < tokenizer.get_vocab_size():
        raise ValueError(f"token id {token} is outside the vocabulary "
                         f"(0..{tokenizer.get_vocab_size() - 1})")  # fmt: skip
    text = tokenizer.decode([token], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text
    raw = tokenizer.id_to_token(token)
    return text if raw is None else vocab_text(raw, text)


def vocab_text(raw: str, otherwise: str | None = None) -> str:
    """A vocabulary entry (``Tokenizer.id_to_token``: byte-level symbols, ``Ġby``, ``Ċ``) as it
    reads to a person (`` by``, a newline), each byte of an incomplete character written
    ``<0xF0>``; ``otherwise`` (default ``raw`` itself) where it holds a character outside the
    byte alphabet (a special token). Results files that kept the entries (the error analysis)
    are rendered through it (a reviewer read `Ċ` and `Ġ` in its report)."""
    if any(c not in _BYTE_OF_CHAR for c in raw):
        return raw if otherwise is None else otherwise
    escaped = bytes(_BYTE_OF_CHAR[c] for c in raw).decode("utf-8", errors="surrogateescape")
    return "".join(
        f"<0x{ord(c) - 0xDC00:02X}>" if "\udc80" <= c <= "\udcff" else c for c in escaped
    )


_ESCAPED_BYTE = re.compile(r"<0x([0-9A-F]{2})>")


def text_of_token_texts(texts: list[str]) -> str | None:
    """The text a sequence's ``token_text`` strings read back to (a leading BOS dropped, each
    ``<0xF0>`` an incomplete character's byte, joined with the bytes around it), as
    ``tokenizer.decode(ids, skip_special_tokens=True)`` gives it; None when the bytes are not
    UTF-8. A trace's prompt is this text of its token strings (``encode_prompt`` refuses a
    prompt that does not survive tokenization)."""
    data = bytearray()
    for text in texts[1:] if texts[:1] == [BOS] else texts:
        start = 0
        for match in _ESCAPED_BYTE.finditer(text):
            data += text[start : match.start()].encode("utf-8", "surrogatepass")
            data.append(int(match.group(1), 16))
            start = match.end()
        data += text[start:].encode("utf-8", "surrogatepass")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def bos_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(BOS)


def begins_with_one_bos(tokenizer: Tokenizer, ids: list[int]) -> bool:
    """Whether ``ids`` begin with BOS and hold no other: what every reader of a sequence
    assumes (position 0 is the sink the model was trained with, and only there)."""
    bos = bos_id(tokenizer)
    return bool(ids) and ids[0] == bos and ids.count(bos) == 1


def check_prompt_text(text: str, what: str = "the prompt") -> None:
    """What ``encode_prompt`` refuses in the text itself, no tokenizer needed: empty text, a
    BOS inside it, text that is not valid UTF-8; a CLI calls it before the model loads (a
    reviewer's empty ``--prompt`` was refused after 15 s of loading)."""
    if not text:
        raise ValueError(f"{what} is empty")
    if BOS in text:
        raise ValueError(
            f"{what} contains the special token {BOS}, which only begins a "
            "sequence (the trace puts it before the prompt; it is never predicted)"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # e.g. bytes that were not UTF-8 on the command line
        raise ValueError(f"{what} is not valid UTF-8 text") from None


def encode_prompt(
    tokenizer: Tokenizer, text: str, n_ctx: int, what: str = "the prompt"
) -> list[int]:
    """A user's prompt as token ids (BOS first), refusing what the model cannot take: empty
    text, text that is not valid Unicode or does not survive encoding unchanged, a BOS inside
    it, or more than ``n_ctx`` tokens (for a prompt, the positions the model was trained on:
    ``ToyTransformer.trained_positions``); and a tokenizer that does not begin it with exactly
    one BOS (one not read by ``load_tokenizer``). ``what`` names the text in messages."""
    check_prompt_text(text, what)
    try:
        ids = tokenizer.encode(text).ids
    except Exception as exc:  # anything else the tokenizer cannot take
        raise ValueError(f"{what} cannot be tokenized ({one_line(exc)})") from None
    if not begins_with_one_bos(tokenizer, ids):
        raise ValueError(f"the tokenizer does not begin {what} with exactly one {BOS}")
    if tokenizer.decode(ids, skip_special_tokens=True) != text:
        raise ValueError(f"{what} does not survive tokenization unchanged")
    if len(ids) > n_ctx:
        raise ValueError(
            f"{what} is {len(ids)} tokens with BOS, longer than the {n_ctx} positions the "
            "model was trained on"
        )
    return ids


def single_token(tokenizer: Tokenizer, text: str, what: str = "target") -> int:
    """The id of ``text`` if it is exactly one token (e.g. " Julia"), else a ValueError naming
    it as ``what`` (a trace's target, a global graph's start token)."""
    if text == BOS:
        return bos_id(tokenizer)
    ids = encode_prompt(tokenizer, text, n_ctx=10**9, what=f"{what} {text!r}")[1:] if text else []
    if len(ids) != 1:
        # as every label reads them (`' Z'`, `'<0xE6>'`), not the vocabulary's byte symbols
        # (`ĠZ`, `æ`), which no one can type back
        pieces = [token_text(tokenizer, t) for t in tokenizer.encode(text).ids[1:]] if text else []
        raise ValueError(
            f"{what} {text!r} is not one token of this tokenizer (it is {len(ids)}: {pieces})"
        )
    return ids[0]
