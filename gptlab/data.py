"""Characters in, (x, y) batches out: the tokenizer and the Lightning data module.

Training batches are random windows of the training split, drawn afresh for every step
from a generator seeded by (seed, rank, step): each DDP rank sees different text, a run is
reproducible, and a resumed run draws exactly the batches it would have drawn. Validation
scores one fixed span of the validation split, every token of it once, so val_loss is
comparable across runs whatever their batch size, block size or number of ranks.
"""

import hashlib
import logging
import math
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch

from gptlab.model import is_count

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


def validation_windows(n_targets: int, block_size: int) -> list[tuple[int, int]]:
    """(start, length) of the windows that score each of n_targets targets exactly once:
    consecutive, non-overlapping, block_size long except the last. Window (s, n) reads
    tokens s .. s+n-1 and predicts tokens s+1 .. s+n."""
    return [(start, min(block_size, n_targets - start)) for start in range(0, n_targets, block_size)]


class Batches:
    """Batches made in advance, as one loader (Lightning would read a list as several loaders)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def validation_batches(
    span: torch.Tensor, block_size: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> Batches:
    """This rank's share of the windows that score every target of span (tokens 1..) once:
    windows rank, rank + world_size, ... (no window twice, none padded), batch_size to a
    batch; the short last window of the span, if any, is a batch of its own."""
    windows = validation_windows(len(span) - 1, block_size)[rank::world_size]
    batches = []
    for length in sorted({n for _, n in windows}, reverse=True):
        starts = torch.tensor([s for s, n in windows if n == length])
        for chunk in starts.split(batch_size):
            tokens = span[chunk[:, None] + torch.arange(length + 1)].long()
            batches.append((tokens[:, :-1], tokens[:, 1:]))
    return Batches(batches)


def step_seed(seed: int, rank: int, step: int) -> int:
    """One seed for each (seed, rank, step). hash() of a tuple of ints is the same in every
    process (no PYTHONHASHSEED salt), so the draws are reproducible across runs and resumes."""
    return hash((seed, rank, step)) % 2**63


def read_text(path: Path) -> str:
    """The file's text; one line naming the file and the byte offset if it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"data file {path} is not UTF-8 text: byte {err.object[err.start]:#04x} at offset {err.start} "
            "cannot be decoded; point data.path at a UTF-8 text file"
        ) from None
    except IsADirectoryError:
        raise ValueError(f"data.path={path} is a directory: point it at a text file") from None


def windows_in_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return batch[0].size(0)


def tokens_in_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return batch[0].numel()


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
    """The text file, split into training (the first train_fraction) and validation (the
    rest); validation scores the first val_tokens tokens of its split (all of it if null)."""

    def __init__(
        self,
        path: str,
        block_size: int,
        batch_size: int,
        url: str | None = None,
        sha256: str | None = None,
        train_fraction: float = 0.9,
        val_tokens: int | None = None,
        seed: int = 1337,
    ):
        super().__init__()
        for name, value in (
            ("block_size", block_size),
            ("batch_size", batch_size),
            ("val_tokens", val_tokens),
        ):
            if value is None and name == "val_tokens":
                continue
            if not is_count(value) or value < 1:
                raise ValueError(f"data.{name}={value!r} is not allowed: use a positive integer")
        if not isinstance(train_fraction, float) or not 0.0 < train_fraction < 1.0:
            raise ValueError(f"data.train_fraction={train_fraction!r} is not allowed: use a number in (0, 1)")
        if not is_count(seed):
            raise ValueError(f"seed={seed!r} is not allowed: use an integer")
        # saved in checkpoints (datamodule_hyper_parameters): a resumed run checks it gets the same data
        self.save_hyperparameters(ignore=["url", "sha256"])
        self.path = Path(path)
        self.url = url
        self.sha256 = sha256
        self.block_size = block_size
        self.batch_size = batch_size
        self.train_fraction = train_fraction
        self.val_tokens = val_tokens
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
        except (OSError, ValueError) as err:
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
        text = read_text(self.path)
        if not text:
            raise ValueError(f"data file {self.path} is empty: point data.path at a text file with content")
        self.tokenizer = self.tokenizer or CharTokenizer.from_text(text)
        if unknown := self.tokenizer.unknown_chars(text):
            raise ValueError(f"data file {self.path} has {describe_unknown(unknown)}")
        dtype = torch.uint8 if self.tokenizer.vocab_size <= 256 else torch.int32
        data = torch.tensor(self.tokenizer.encode(text), dtype=dtype)
        n_train = int(self.train_fraction * len(data))
        self.train_data, val_data = data[:n_train], data[n_train:]
        for split, part in (("training", self.train_data), ("validation", val_data)):
            if len(part) <= self.block_size:
                raise ValueError(
                    f"model.block_size={self.block_size} is too long for the {split} split of "
                    f"{self.path} ({len(part)} characters): use block_size < {len(part)} or more text"
                )
        n_targets = len(val_data) - 1 if self.val_tokens is None else min(self.val_tokens, len(val_data) - 1)
        self.val_span = val_data[: n_targets + 1]
        # bits per character need characters: one a token here, more with other tokenizers
        self.val_characters = len(self.tokenizer.decode(self.val_span[1:].tolist()))

    @property
    def val_bits_per_nat(self) -> float:
        """Bits per character of the validation set for each nat of val_loss: total nats /
        characters / ln 2 is val_loss x tokens / characters / ln 2."""
        return (len(self.val_span) - 1) / self.val_characters / math.log(2)

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

    def val_dataloader(self) -> Batches:
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        n_windows = math.ceil((len(self.val_span) - 1) / self.block_size)  # validation_windows() makes these
        if n_windows < world_size:
            raise ValueError(
                f"data.val_tokens={len(self.val_span) - 1} makes {n_windows} validation windows of "
                f"block_size {self.block_size}, fewer than the {world_size} ranks: use more validation tokens"
            )
        # not a DataLoader: Lightning would shard one with a DistributedSampler, which pads the
        # last ranks with repeated windows
        return validation_batches(self.val_span, self.block_size, self.batch_size, rank, world_size)
