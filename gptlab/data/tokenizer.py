"""Text to token ids and back: characters (the lecture's) or byte-level BPE (`tokenizers`).

One small interface for the rest of gptlab: `vocab_size`, `encode` and `decode` for short
texts (prompts, samples), `encode_bytes` for a corpus in large UTF-8 pieces (into a numpy
array, never a Python list per token), `stream` to decode tokens as they are sampled, and
`to_dict` / `tokenizer_from_dict` for checkpoints, which keep a tokenizer as plain data with
its type. A tokenizer is trained on text (`train_tokenizer`) or comes from a checkpoint.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from tokenizers.decoders import DecodeStream

from gptlab.faults import SettingError

TOKENIZER_TYPES = ("char", "bpe")
BYTE_ALPHABET = 256  # a byte-level BPE starts from every byte value
UNICODE_SIZE = 0x110000
UNKNOWN = -1  # in the character tokenizer's lookup table: not in the vocabulary


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_bytes(self, piece: bytes) -> np.ndarray: ...

    def stream(self) -> Callable[[int], str]: ...

    def to_dict(self) -> dict[str, Any]: ...


class UnknownCharacters(SettingError):
    """Text with characters a character tokenizer's vocabulary does not have."""

    def __init__(
        self, unknown: Iterable[str], where: str = "text", vocabulary: str = "the vocabulary", hint: str = ""
    ):
        self.unknown = sorted(set(unknown))
        self.where = where
        shown = ", ".join(repr(ch) for ch in self.unknown[:20])
        more = f" and {len(self.unknown) - 20} more" if len(self.unknown) > 20 else ""
        plural = "s" if len(self.unknown) > 1 else ""
        super().__init__(
            f"{where} has {len(self.unknown)} character{plural} not in {vocabulary}: {shown}{more}"
            + (f"; {hint}" if hint else "")
        )


def code_points(piece: bytes) -> np.ndarray:
    """The characters of UTF-8 bytes as Unicode code points; an ASCII piece is its own bytes."""
    if piece.isascii():
        return np.frombuffer(piece, dtype=np.uint8)
    return np.frombuffer(piece.decode("utf-8").encode("utf-32-le"), dtype=np.uint32)


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of a text."""

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @cached_property
    def lookup(self) -> np.ndarray:
        """Code point -> id (UNKNOWN if not in the vocabulary), to encode corpus pieces at once.
        Made when first needed: sampling and text samples never need it."""
        lookup = np.full(UNICODE_SIZE, UNKNOWN, dtype=np.int32)
        lookup[[ord(ch) for ch in self.chars]] = np.arange(len(self.chars), dtype=np.int32)
        return lookup

    @classmethod
    def train(cls, pieces: Iterable[bytes]) -> "CharTokenizer":
        """The vocabulary of a corpus given as UTF-8 pieces, without holding it in memory."""
        seen = np.zeros(UNICODE_SIZE, dtype=bool)
        for piece in pieces:
            seen[code_points(piece)] = True
        return cls("".join(map(chr, np.flatnonzero(seen))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        if unknown := set(text) - self.stoi.keys():
            raise UnknownCharacters(unknown)
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def encode_bytes(self, piece: bytes) -> np.ndarray:
        points = code_points(piece)
        ids = self.lookup[points]
        if (ids == UNKNOWN).any():
            raise UnknownCharacters(map(chr, np.unique(points[ids == UNKNOWN])))
        return ids

    def stream(self) -> Callable[[int], str]:
        return self.chars.__getitem__

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme) from the `tokenizers` library: any text encodes, no
    unknown tokens; the first 256 tokens are the byte values, the rest learned merges."""

    def __init__(self, tokenizer: HFTokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        tokenizer = HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def encode_bytes(self, piece: bytes) -> np.ndarray:
        # many small texts, each cut after a newline, which the library encodes on every core
        texts = list(lines_in_parts(piece.decode("utf-8"), part_chars=1 << 14))
        encodings = self.tokenizer.encode_batch_fast(texts)
        return np.concatenate([np.array(e.ids, dtype=np.int32) for e in encodings])

    def stream(self) -> Callable[[int], str]:
        """Decodes one token at a time; a character split over several byte tokens comes out
        whole, with the token that completes it."""
        decoder = DecodeStream(skip_special_tokens=False)
        return lambda token: decoder.step(self.tokenizer, token) or ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bpe", "tokenizer": self.tokenizer.to_str()}


def lines_in_parts(text: str, part_chars: int = 1 << 18) -> Iterator[str]:
    """text in parts of about part_chars characters, each cut just after a newline (where one
    is near), so that no word is cut in two."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + part_chars) + 1 or len(text)
        yield text[start:end]
        start = end


def check_tokenizer_settings(settings: dict[str, Any]) -> None:
    """One line for data.tokenizer settings that cannot make a tokenizer."""
    kind = settings.get("type")
    if kind not in TOKENIZER_TYPES:
        raise SettingError(f"data.tokenizer.type={kind!r}", f"use one of {list(TOKENIZER_TYPES)}")
    allowed = {"type"} | ({"vocab_size"} if kind == "bpe" else set())
    if unknown := sorted(set(settings) - allowed):
        raise SettingError(
            f"data.tokenizer.{unknown[0]} is not a {kind} tokenizer setting: use {sorted(allowed)}"
        )
    if kind == "bpe":
        vocab_size = settings.get("vocab_size")
        if (
            not isinstance(vocab_size, int)
            or isinstance(vocab_size, bool)
            or not BYTE_ALPHABET < vocab_size < 2**31
        ):
            raise SettingError(
                f"data.tokenizer.vocab_size={vocab_size!r}",
                f"a byte-level BPE has the "
                f"{BYTE_ALPHABET} bytes and at least one merge: use an integer > {BYTE_ALPHABET}, e.g. 1024",
            )


def train_tokenizer(settings: dict[str, Any], text: Callable[[bool], Iterable[bytes]]) -> Tokenizer:
    """A tokenizer trained on a corpus, which text(train_only) reads in UTF-8 pieces: BPE on
    the training split; characters on all of it (a character only in the validation split
    could not be encoded). A BPE that cannot learn vocab_size tokens is refused."""
    check_tokenizer_settings(settings)
    if settings["type"] == "char":
        return CharTokenizer.train(text(False))
    tokenizer = BPETokenizer.train(lines_of_pieces(text(True)), settings["vocab_size"])
    if tokenizer.vocab_size < settings["vocab_size"]:
        raise SettingError(
            f"data.tokenizer.vocab_size={settings['vocab_size']} is larger than the text allows: BPE "
            f"learns {tokenizer.vocab_size} tokens from its training split (no pair of tokens is left to "
            f"merge): use vocab_size <= {tokenizer.vocab_size}, or more text"
        )
    return tokenizer


def lines_of_pieces(pieces: Iterable[bytes]) -> Iterator[str]:
    for piece in pieces:
        yield from lines_in_parts(piece.decode("utf-8"))


def tokenizer_from_dict(state: dict[str, Any]) -> Tokenizer:
    """A tokenizer from a checkpoint's plain data (a checkpoint from before tokenizer types
    holds characters only)."""
    kind = state.get("type", "char")
    if kind == "char":
        return CharTokenizer(state["chars"])
    if kind == "bpe":
        return BPETokenizer(HFTokenizer.from_str(state["tokenizer"]))
    raise SettingError(
        f"unknown tokenizer type {kind!r} in checkpoint: this gptlab reads {list(TOKENIZER_TYPES)}"
    )


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer that holds every token id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise SettingError(f"a vocabulary of {vocab_size} tokens does not fit 32-bit token ids")
