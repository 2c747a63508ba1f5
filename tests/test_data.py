import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.data.datamodule import RandomWindows, TextDataModule, ValidationBatches


def test_random_windows_are_shifted_windows_inside_the_data() -> None:
    data = np.arange(1000)  # each value is its own position
    x, y = RandomWindows(data, block_size=16, batch_size=64, seed=0, rank=0, start_step=0).batch(0)
    assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous windows
    assert x.min() >= 0 and y.max() <= 999


def test_batches_depend_on_seed_rank_and_step_only() -> None:
    data = np.arange(10_000)

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
    dm = TextDataModule(path=str(two_part_file(tmp_path)), block_size=20, batch_size=16)
    dm.setup("fit")
    a, b = dm.tokenizer.encode("ab")
    x, y = next(iter(dm.train_dataloader()))
    assert (x == a).all() and (y == a).all()
    val_batches = list(dm.val_dataloader())
    assert [x.shape for x, _ in val_batches] == [(4, 20), (1, 19)]  # 99 targets: 4 windows of 20, one of 19
    for x, y in val_batches:
        assert (x == b).all() and (y == b).all()


@pytest.mark.parametrize(
    ("block_size", "batch_size", "world_size"), [(16, 8, 1), (16, 3, 1), (7, 8, 1), (16, 8, 2), (5, 4, 3)]
)
def test_validation_scores_every_token_once(block_size: int, batch_size: int, world_size: int) -> None:
    span = np.arange(1001)  # each value is its own position: 1000 targets
    targets = []
    for rank in range(world_size):
        for x, y in ValidationBatches(span, block_size, batch_size, rank, world_size):
            assert x.shape == y.shape and x.size(0) <= batch_size and x.size(1) <= block_size
            assert torch.equal(y, x + 1)  # each target predicted from the tokens before it
            targets += y.flatten().tolist()
    assert sorted(targets) == list(range(1, 1001))  # every target once: none twice, none left out


def test_validation_span_is_fixed_in_tokens(shakespeare: Path) -> None:
    def val_targets(**settings) -> torch.Tensor:
        dm = TextDataModule(path=str(shakespeare), **({"block_size": 32, "batch_size": 4} | settings))
        dm.setup("fit")
        return torch.cat([y.flatten() for _, y in dm.val_dataloader()]).sort().values

    first = val_targets(val_tokens=5000)
    assert len(first) == 5000
    for other in ({"seed": 2}, {"batch_size": 7}, {"block_size": 9}):
        assert torch.equal(val_targets(val_tokens=5000, **other), first)
    assert len(val_targets(val_tokens=None)) == 1_115_394 - math.floor(0.9 * 1_115_394) - 1  # the whole split


def test_split_sizes(shakespeare: Path) -> None:
    dm = TextDataModule(path=str(shakespeare), block_size=32, batch_size=4)
    dm.setup("fit")
    assert len(dm.train_data) == math.floor(0.9 * 1_115_394)
    assert len(dm.val_span) == 1_115_394 - len(dm.train_data)  # val_tokens=None: the whole split
    assert dm.train_data.dtype == np.uint8  # 65 characters fit in a byte


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_size": 101}, r"model.block_size=101 is too long for the validation split"),
        ({"batch_size": 0}, r"data.batch_size=0"),
        ({"train_fraction": 1.0}, r"data.train_fraction=1.0"),
        ({"val_tokens": 0}, r"data.val_tokens=0 is not allowed"),
    ],
)
def test_bad_data_settings(tmp_path: Path, kwargs: dict, message: str) -> None:
    settings = {"path": str(two_part_file(tmp_path)), "block_size": 8, "batch_size": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        TextDataModule(**settings).setup("fit")


def mapped_file_mb() -> float:
    """This process's resident memory that maps files (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssFile:"))) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from /proc (Linux)")
def test_training_on_a_large_corpus_keeps_only_a_batch_of_it_resident(
    tmp_path: Path, shakespeare: Path
) -> None:
    # 80 MB of text: above the size under which the token file may stay mapped whole. A read
    # of the map may make a whole large folio resident (up to 2 MB), not only its page
    text = shakespeare.read_bytes()
    corpus = tmp_path / "large.txt"
    corpus.write_bytes(text * (80_000_000 // len(text)))
    dm = TextDataModule(path=str(corpus), block_size=64, batch_size=16)
    dm.setup("fit")
    windows = iter(dm.train_dataloader())
    before = mapped_file_mb()
    for _ in range(300):  # 4,800 windows, all over the 72 MB training split
        next(windows)
    assert mapped_file_mb() - before < 40  # one batch's worth at most: 16 windows of up to 2 MB
