"""A prepared corpus in, (x, y) batches out: the Lightning data module.

The corpus (gptlab/data/corpus.py) is prepared once and memory-mapped; the tokenizer
(gptlab/data/tokenizer.py) comes with it. Training batches are random windows of the training
split, drawn afresh for every step from a generator seeded by (seed, rank, step): each DDP
rank sees different text, a run is reproducible, and a resumed run draws exactly the batches
it would have drawn. Validation scores one fixed span of the validation split, every token of
it once, so val_loss is comparable across runs whatever their batch size, block size or number
of ranks; bits per character make it comparable across tokenizers too.
"""

import hashlib
import logging
import math
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from gptlab.atomic import written_whole
from gptlab.config import DataSettings, TrainSettings, check_data_settings
from gptlab.data.corpus import Corpus, PreparedCorpus
from gptlab.data.tokenizer import Tokenizer, check_tokenizer_settings
from gptlab.faults import SettingError

log = logging.getLogger(__name__)


def validation_windows(n_targets: int, block_size: int) -> list[tuple[int, int]]:
    """(start, length) of the windows that score each of n_targets targets exactly once:
    consecutive, non-overlapping, block_size long except the last. Window (s, n) reads
    tokens s .. s+n-1 and predicts tokens s+1 .. s+n."""
    return [(start, min(block_size, n_targets - start)) for start in range(0, n_targets, block_size)]


class ValidationBatches:
    """This rank's share of the windows that score every target of span (tokens 1..) once:
    windows rank, rank + world_size, ... (no window twice, none padded), batch_size to a
    batch; the short last window of the span, if any, is a batch of its own. Batches are
    gathered from the span (a memory map) as they are iterated, not held in memory."""

    def __init__(
        self,
        span: np.ndarray,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        release: Callable[[], None] | None = None,
    ):
        self.span = span
        self.release = release  # called after the last batch: see PreparedCorpus.release
        windows = validation_windows(len(span) - 1, block_size)[rank::world_size]
        self.batches: list[tuple[int, np.ndarray]] = []  # (window length, window starts)
        for length in sorted({n for _, n in windows}, reverse=True):
            starts = np.array([s for s, n in windows if n == length])
            self.batches += [(length, starts[i : i + batch_size]) for i in range(0, len(starts), batch_size)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for length, starts in self.batches:
            tokens = torch.from_numpy(self.span[starts[:, None] + np.arange(length + 1)].astype(np.int64))
            yield tokens[:, :-1], tokens[:, 1:]
        if self.release is not None:
            self.release()

    def __len__(self) -> int:
        return len(self.batches)


def step_seed(seed: int, rank: int, step: int) -> int:
    """One seed for each (seed, rank, step). hash() of a tuple of ints is the same in every
    process (no PYTHONHASHSEED salt), so the draws are reproducible across runs and resumes."""
    return hash((seed, rank, step)) % 2**63


def windows_in_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return batch[0].size(0)


def tokens_in_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    return batch[0].numel()


class RandomWindows:
    """An endless stream of training batches: batch_size random windows of block_size + 1
    tokens, x the first block_size, y the same shifted by one (the lecture's get_batch),
    gathered from the token array (a memory map: only these windows are read)."""

    def __init__(
        self,
        data: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int,
        start_step: int,
        release: Callable[[], None] | None = None,
    ):
        self.data = data
        self.release = release  # called after every batch: see PreparedCorpus.release
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.offsets = np.arange(block_size + 1)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.rank, step))
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=generator)
        windows = self.data[starts.numpy()[:, None] + self.offsets]  # (B, block_size + 1), one gather
        windows = torch.from_numpy(windows.astype(np.int64))  # a copy: the pages read can go
        if self.release is not None:
            self.release()
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def plain(value: Any) -> Any:
    """Config values as plain data: the data module's settings go into checkpoints, which hold
    nothing else (see gptlab/checkpoint.py)."""
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


class TextDataModule(L.LightningDataModule):
    """A text corpus (a file, the files of a directory matching glob, or a list of files)
    prepared with a tokenizer (data.tokenizer: char, or bpe with a vocab_size), split into
    training (the first train_fraction) and validation (the rest); validation scores the first
    val_tokens tokens of its split (all of it if null). Setting `tokenizer` before preparing
    encodes the corpus with it instead (fine-tuning keeps the checkpoint's)."""

    def __init__(
        self,
        path: str | Sequence[str],
        block_size: int,
        batch_size: int,
        tokenizer: dict[str, Any] | None = None,
        glob: str = DataSettings.glob,  # the defaults of the data settings (gptlab/config.py)
        separator: str = DataSettings.separator,
        cache_dir: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        train_fraction: float = DataSettings.train_fraction,
        val_tokens: int | None = DataSettings.val_tokens,
        seed: int = TrainSettings.seed,
    ):
        super().__init__()
        check_data_settings(block_size, batch_size, val_tokens, train_fraction)
        path, tokenizer = plain(path), plain(tokenizer) or {"type": "char"}
        check_tokenizer_settings(tokenizer)
        # saved in checkpoints (datamodule_hyper_parameters): a resumed run checks it gets the same
        # data, and gptlab.eval scores the run's own validation set. Not where the cache is.
        self.save_hyperparameters(ignore=["url", "sha256", "cache_dir"])
        self.path = path
        self.tokenizer_settings = tokenizer
        self.glob = glob
        self.separator = separator
        self.cache_dir = cache_dir
        self.url = url
        self.sha256 = sha256
        self.block_size = block_size
        self.batch_size = batch_size
        self.train_fraction = train_fraction
        self.val_tokens = val_tokens
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.corpus: PreparedCorpus | None = None
        self.progress = sys.stderr.isatty()

    def __getstate__(self) -> dict[str, Any]:
        # spawned DDP ranks map the prepared corpus themselves (setup) rather than get a copy of it
        state = self.__dict__.copy()
        for name in ("corpus", "train_data", "val_span"):
            state.pop(name, None)
        return state | {"corpus": None}

    def prepare_data(self) -> None:
        """Download the text file if it is missing and data.url is that file (by name: a mistyped
        path to your own text is an error, not a copy of Tiny Shakespeare), then prepare the
        corpus (or find it prepared). The entry point calls this before the Trainer starts any
        DDP process; processes started by a cluster launcher all call it, and the first
        prepares while the others wait (see gptlab/data/corpus.py)."""
        if self.corpus is not None:
            return  # the entry point has prepared it before the Trainer calls this
        if (
            isinstance(self.path, str)
            and not Path(self.path).exists()
            and self.url
            and Path(self.path).name == Path(urllib.parse.urlparse(self.url).path).name
        ):
            download(self.url, Path(self.path), self.sha256)
        corpus = Corpus(self.path, self.glob, self.separator, self.train_fraction, self.cache_dir)
        self.corpus = corpus.prepared(self.tokenizer_settings, self.tokenizer, self.progress)
        self.tokenizer = self.corpus.tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Maps the prepared corpus (preparing it first if needed) and checks both splits."""
        if hasattr(self, "train_data"):
            return  # the entry point has set the data up before the Trainer calls this
        self.prepare_data()
        train_data, val_data = self.corpus.train, self.corpus.val
        for split, part in (("training", train_data), ("validation", val_data)):
            if len(part) <= self.block_size:
                raise SettingError(
                    f"model.block_size={self.block_size} is too long for the {split} split of "
                    f"{self.path} ({len(part)} tokens): use block_size < {len(part)} or more text"
                )
        n_targets = len(val_data) - 1 if self.val_tokens is None else min(self.val_tokens, len(val_data) - 1)
        self.train_data = train_data
        self.val_span = val_data[: n_targets + 1]
        log.info(
            "rank %d: %s tokens (%s) memory-mapped from %s",
            rank_zero_only.rank,
            f"{len(self.corpus.tokens):,}",
            "prepared by this process" if self.corpus.prepared_now else "prepared before",
            self.corpus.directory / "tokens.bin",
        )
        # bits per character need the characters the targets (tokens 1..) stand for
        if n_targets == len(val_data) - 1:
            first = len(self.tokenizer.decode([int(val_data[0])]))
            self.val_characters = self.corpus.manifest["characters"]["val"] - first
        else:
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
        windows = RandomWindows(
            self.train_data, self.block_size, self.batch_size, self.seed, rank, step, self.corpus.release
        )
        log.info(
            "rank %d: training windows drawn by (seed=%d, rank=%d, step) from step %d",
            rank,
            self.seed,
            rank,
            step,
        )
        # Lightning takes any iterable of batches. These are made whole in memory (a gather from
        # the map): a DataLoader around them would only add its own per-batch cost, and worker
        # processes more (pickling each batch back)
        return windows

    def val_dataloader(self) -> ValidationBatches:
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        n_windows = math.ceil((len(self.val_span) - 1) / self.block_size)  # validation_windows() makes these
        if n_windows < world_size:
            raise SettingError(
                f"data.val_tokens={len(self.val_span) - 1} makes {n_windows} validation windows of "
                f"block_size {self.block_size}, fewer than the {world_size} ranks: use more validation tokens"
            )
        # not a DataLoader: Lightning would shard one with a DistributedSampler, which pads the
        # last ranks with repeated windows
        return ValidationBatches(
            self.val_span, self.block_size, self.batch_size, rank, world_size, self.corpus.release
        )


def download(url: str, path: Path, sha256: str | None) -> None:
    """The file at url, saved at path. Any process that finds the file missing downloads it;
    each writes its own partial file and renames it into place, so concurrent downloads are safe."""
    log.info("downloading %s to %s", url, path)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            content = response.read()
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"data file {path} not found and downloading {url} failed ({err}): "
            f"put the file at {path} or set data.path"
        ) from None
    if sha256 and hashlib.sha256(content).hexdigest() != sha256:
        raise SettingError(f"downloaded {url} does not match data.sha256={sha256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as partial:
        partial.write_bytes(content)
