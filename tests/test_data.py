import math
from pathlib import Path

import pytest
import torch

from gptlab.data import CharDataModule, CharTokenizer, RandomWindows


def test_tokenizer_round_trip(shakespeare: Path) -> None:
    text = shakespeare.read_text()
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.vocab_size == 65
    assert list(tokenizer.chars) == sorted(set(text))
    sample = text[:2000]
    ids = tokenizer.encode(sample)
    assert len(ids) == len(sample) and max(ids) < 65
    assert tokenizer.decode(ids) == sample
    assert CharTokenizer.from_dict(tokenizer.to_dict()).encode(sample) == ids


def test_tokenizer_names_unknown_characters() -> None:
    tokenizer = CharTokenizer.from_text("hello world")
    with pytest.raises(ValueError, match=r"'X'.*'é'"):
        tokenizer.encode("hello World? X é")


def test_random_windows_are_shifted_windows_inside_the_data() -> None:
    data = torch.arange(1000)  # each value is its own position
    x, y = RandomWindows(data, block_size=16, batch_size=64, seed=0, rank=0, start_step=0).batch(0)
    assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous windows
    assert x.min() >= 0 and y.max() <= 999


def test_batches_depend_on_seed_rank_and_step_only() -> None:
    data = torch.arange(10_000)

    def batch(seed: int, rank: int, step: int) -> torch.Tensor:
        return RandomWindows(data, 8, 16, seed=seed, rank=rank, start_step=0).batch(step)[0]

    assert torch.equal(batch(1, 0, 5), batch(1, 0, 5))
    assert not torch.equal(batch(1, 0, 5), batch(1, 1, 5))  # ranks draw different windows
    assert not torch.equal(batch(1, 0, 5), batch(1, 0, 6))
    assert not torch.equal(batch(1, 0, 5), batch(2, 0, 5))
    stream = iter(RandomWindows(data, 8, 16, seed=1, rank=0, start_step=5))
    assert torch.equal(next(stream)[0], batch(1, 0, 5))  # resuming at step 5 continues the stream
    assert torch.equal(next(stream)[0], batch(1, 0, 6))


def two_part_file(tmp_path: Path) -> Path:
    # the first 90% (training split) is all 'a', the last 10% (validation split) all 'b'
    path = tmp_path / "ab.txt"
    path.write_text("a" * 900 + "b" * 100)
    return path


def test_training_and_validation_windows_stay_inside_their_split(tmp_path: Path) -> None:
    dm = CharDataModule(path=str(two_part_file(tmp_path)), block_size=20, batch_size=16, val_batches=3)
    dm.setup("fit")
    a, b = dm.tokenizer.encode("ab")
    x, y = next(iter(dm.train_dataloader()))
    assert (x == a).all() and (y == a).all()
    val_batches = list(dm.val_dataloader())
    assert len(val_batches) == 3
    for x, y in val_batches:
        assert x.shape == (16, 20) and (x == b).all() and (y == b).all()


def test_validation_set_is_fixed(shakespeare: Path) -> None:
    def val_batches(seed: int) -> list[torch.Tensor]:
        dm = CharDataModule(path=str(shakespeare), block_size=32, batch_size=4, val_batches=5, seed=seed)
        dm.setup("fit")
        return [x for x, _ in dm.val_dataloader()]

    first, again, other_seed = val_batches(1), val_batches(1), val_batches(2)
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(first, other_seed, strict=True))
    windows = torch.cat(first)
    assert len(torch.unique(windows, dim=0)) == len(windows)  # 20 distinct windows


def test_split_sizes(shakespeare: Path) -> None:
    dm = CharDataModule(path=str(shakespeare), block_size=32, batch_size=4)
    dm.setup("fit")
    assert len(dm.train_data) == math.floor(0.9 * 1_115_394)
    assert len(dm.train_data) + len(dm.val_data) == 1_115_394
    assert dm.train_data.dtype == torch.uint8  # 65 characters fit in a byte


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 101}, r"model.block_size=101 is too long for the validation split"),
        ({"batch_size": 0}, r"data.batch_size=0"),
        ({"train_fraction": 1.0}, r"data.train_fraction=1.0"),
    ],
)
def test_bad_data_settings(tmp_path: Path, kwargs: dict, message: str) -> None:
    settings = {"path": str(two_part_file(tmp_path)), "block_size": 8, "batch_size": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        CharDataModule(**settings).setup("fit")
