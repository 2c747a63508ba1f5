"""Characters in, (x, y) batches out: the tokenizer and the Lightning data module.

Training batches are random windows of the training split, drawn afresh for every step
from a generator seeded by (seed, rank, step): each DDP rank sees different text, a run is
reproducible, and a resumed run draws exactly the batches it would have drawn. Validation
uses one fixed set of evenly spaced windows, so val_loss is comparable across runs.
"""

import hashlib
import logging
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger(__name__)


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of a text."""

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        if unknown := self.unknown_chars(text):
            raise ValueError(f"text has {describe_unknown(unknown)}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, str]:
        return {"chars": self.chars}

    @classmethod
    def from_dict(cls, state: dict[str, str]) -> "CharTokenizer":
        return cls(state["chars"])


def describe_unknown(unknown: list[str]) -> str:
    shown = ", ".join(repr(ch) for ch in unknown[:20])
    more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
    plural = "s" if len(unknown) > 1 else ""
    return f"{len(unknown)} character{plural} not in the vocabulary: {shown}{more}"


def step_seed(seed: int, rank: int, step: int) -> int:
    """One seed for each (seed, rank, step). hash() of a tuple of ints is the same in every
    process (no PYTHONHASHSEED salt), so the draws are reproducible across runs and resumes."""
    return hash((seed, rank, step)) % 2**63


class RandomWindows:
    """An endless stream of training batches: batch_size random windows of block_size + 1
    characters, x the first block_size, y the same shifted by one (the lecture's get_batch)."""

    def __init__(
        self, data: torch.Tensor, block_size: int, batch_size: int, seed: int, rank: int, start_step: int
    ):
        self.data = data
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.offsets = torch.arange(block_size + 1)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.rank, step))
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=generator)
        windows = self.data[starts[:, None] + self.offsets].long()  # (B, block_size + 1), one gather
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class CharDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str,
        block_size: int,
        batch_size: int,
        url: str | None = None,
        sha256: str | None = None,
        train_fraction: float = 0.9,
        val_batches: int = 50,
        seed: int = 1337,
    ):
        super().__init__()
        for name, value in (
            ("block_size", block_size),
            ("batch_size", batch_size),
            ("val_batches", val_batches),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}={value!r} is not allowed: use a positive integer")
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(
                f"data.train_fraction={train_fraction} is not allowed: use 0 < train_fraction < 1"
            )
        self.path = Path(path)
        self.url = url
        self.sha256 = sha256
        self.block_size = block_size
        self.batch_size = batch_size
        self.train_fraction = train_fraction
        self.val_batches = val_batches
        self.seed = seed
        self.tokenizer: CharTokenizer | None = None

    def prepare_data(self) -> None:
        """Download the text file if it is not there yet. The entry point calls this before the
        Trainer starts any DDP process; any process that still finds the file missing downloads
        it too, and the atomic rename below keeps concurrent downloads safe."""
        if self.path.exists():
            return
        if not self.url:
            raise FileNotFoundError(
                f"data file {self.path} not found: put a text file there or set data.path"
            )
        log.info("downloading %s to %s", self.url, self.path)
        try:
            with urllib.request.urlopen(self.url, timeout=30) as response:
                content = response.read()
        except OSError as err:
            raise FileNotFoundError(
                f"data file {self.path} not found and downloading {self.url} failed ({err}): "
                f"put the file at {self.path} or set data.path"
            ) from None
        if self.sha256 and hashlib.sha256(content).hexdigest() != self.sha256:
            raise ValueError(f"downloaded {self.url} does not match data.sha256={self.sha256}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        partial.write_bytes(content)
        partial.replace(self.path)  # atomic: a reader never sees half a file

    def setup(self, stage: str | None = None) -> None:
        """Reads and encodes the text. The vocabulary is the text's own characters, unless a
        tokenizer was set before (fine-tuning keeps the checkpoint's vocabulary)."""
        if hasattr(self, "train_data"):
            return  # the entry point has already set the data up before the Trainer calls this
        text = self.path.read_text(encoding="utf-8")
        if not text:
            raise ValueError(f"data file {self.path} is empty: point data.path at a text file with content")
        self.tokenizer = self.tokenizer or CharTokenizer.from_text(text)
        if unknown := self.tokenizer.unknown_chars(text):
            raise ValueError(f"data file {self.path} has {describe_unknown(unknown)}")
        dtype = torch.uint8 if self.tokenizer.vocab_size <= 256 else torch.int32
        data = torch.tensor(self.tokenizer.encode(text), dtype=dtype)
        n_train = int(self.train_fraction * len(data))
        self.train_data, self.val_data = data[:n_train], data[n_train:]
        for split, part in (("training", self.train_data), ("validation", self.val_data)):
            if len(part) <= self.block_size:
                raise ValueError(
                    f"model.block_size={self.block_size} is too long for the {split} split of "
                    f"{self.path} ({len(part)} characters): use block_size < {len(part)} or more text"
                )

    def train_dataloader(self) -> RandomWindows:
        rank, step = 0, 0
        if self.trainer is not None:
            rank = self.trainer.global_rank
            step = self.trainer.global_step * self.trainer.accumulate_grad_batches
        windows = RandomWindows(self.train_data, self.block_size, self.batch_size, self.seed, rank, step)
        log.info(
            "rank %d: training windows drawn by (seed=%d, rank=%d, step) from step %d",
            rank,
            self.seed,
            rank,
            step,
        )
        # Lightning takes any iterable of batches. These are made whole in memory (about 15 us):
        # a DataLoader around them would only add its own per-batch cost, and worker processes
        # more (pickling each batch back)
        return windows

    def val_dataloader(self) -> DataLoader:
        n_windows = self.val_batches * self.batch_size
        starts = torch.linspace(0, len(self.val_data) - self.block_size - 1, n_windows).long()
        windows = self.val_data[starts[:, None] + torch.arange(self.block_size + 1)].long()
        # under DDP Lightning shards this dataset across ranks with a DistributedSampler
        return DataLoader(TensorDataset(windows[:, :-1], windows[:, 1:]), batch_size=self.batch_size)
