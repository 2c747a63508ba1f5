"""Tokenizers: round trips on any text, plain data for checkpoints, one line for bad settings."""

from pathlib import Path

import pytest

from gptlab.data.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    check_tokenizer_settings,
    tokenizer_from_dict,
    train_tokenizer,
)

NON_ASCII = "Größe: naïve café, 東京 and 🎭 — “quoted”\n"


def pieces_of(text: str):
    return lambda train_only: [text.encode()]


def test_char_round_trip_with_non_ascii_text(shakespeare: Path) -> None:
    text = shakespeare.read_text()[:5000] + NON_ASCII
    tokenizer = train_tokenizer({"type": "char"}, pieces_of(text))
    assert list(tokenizer.chars) == sorted(set(text))
    ids = tokenizer.encode(text)
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert tokenizer.encode_bytes(text.encode()).tolist() == ids  # corpus pieces encode alike
    again = tokenizer_from_dict(tokenizer.to_dict())
    assert again.to_dict() == {"type": "char", "chars": tokenizer.chars} and again.encode(text) == ids


def test_char_tokenizer_names_unknown_characters() -> None:
    tokenizer = CharTokenizer(" dehlorw")  # the characters of "hello world"
    with pytest.raises(ValueError, match=r"^text has 3 characters not in the vocabulary: 'W', 'X', 'é'$"):
        tokenizer.encode("hello World X é")
    with pytest.raises(ValueError, match=r"2 characters not in the vocabulary: 'X', 'é'"):
        tokenizer.encode_bytes("hello X é".encode())


def test_checkpoints_from_before_tokenizer_types_hold_characters() -> None:
    tokenizer = tokenizer_from_dict({"chars": "abc"})  # what older checkpoints saved
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.encode("cab") == [2, 0, 1]


def test_bpe_round_trip_with_non_ascii_and_unseen_text(shakespeare: Path) -> None:
    text = shakespeare.read_text()[:200_000]
    tokenizer = train_tokenizer({"type": "bpe", "vocab_size": 512}, pieces_of(text))
    assert tokenizer.vocab_size == 512
    sample = text[:3000] + NON_ASCII  # characters the training text never had still encode
    ids = tokenizer.encode(sample)
    assert tokenizer.decode(ids) == sample
    assert len(ids) < len(sample.encode()) / 2  # merges learned: fewer tokens than bytes
    assert tokenizer.encode_bytes(sample.encode()).tolist() == ids
    state = tokenizer.to_dict()
    assert state["type"] == "bpe" and isinstance(state["tokenizer"], str)  # plain data
    assert tokenizer_from_dict(state).encode(sample) == ids


def test_streamed_bpe_decoding_never_splits_a_character(shakespeare: Path) -> None:
    tokenizer = BPETokenizer.train([shakespeare.read_text()[:50_000]], vocab_size=300)
    text = "to 東京 and 🎭!"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)  # unseen characters are several byte tokens each
    decode = tokenizer.stream()
    pieces = [decode(i) for i in ids]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"type": "word"}, r"data.tokenizer.type='word' is not allowed: use one of \['char', 'bpe'\]"),
        ({"type": "bpe", "vocab_size": 256}, r"data.tokenizer.vocab_size=256 is not allowed"),
        ({"type": "bpe", "vocab_size": "big"}, r"data.tokenizer.vocab_size='big' is not allowed"),
        ({"type": "char", "vocab_size": 100}, r"data.tokenizer.vocab_size is not a char tokenizer setting"),
    ],
)
def test_bad_tokenizer_settings(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_tokenizer_settings(settings)


def test_bpe_vocab_larger_than_the_text_allows() -> None:
    with pytest.raises(
        ValueError, match=r"vocab_size=5000 is larger than the text allows: BPE learns \d+ tokens"
    ):
        train_tokenizer({"type": "bpe", "vocab_size": 5000}, pieces_of("abab abba baab " * 20))
