"""A corpus prepared once: text files in, a token file and its manifest out, memory-mapped.

The corpus is a text file, the files of a directory matching a glob (sorted), or a list of
files, joined with a separator. Its first train_fraction of bytes (cut at a character) is the
training split, the rest validation. Preparing reads it in pieces of CHUNK_BYTES, trains the
tokenizer on the training split (unless one is given, as when fine-tuning), encodes each piece
straight into the token file (uint8/16/32 by vocabulary size) and writes a manifest beside it:
the source files with their sizes, times and SHA-256, the tokenizer, and the split point in
tokens. Every later run, sweep job and DDP rank memory-maps that file instead: memory does not
grow with the corpus. A changed source file is noticed (size, then time and hash) and the
corpus prepared again. One process prepares at a time (a lock file); the others wait, and only
ever see complete files, which are renamed into place.
"""

import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gptlab.atomic import written_whole
from gptlab.data.tokenizer import (
    Tokenizer,
    UnknownCharacters,
    token_dtype,
    tokenizer_from_dict,
    train_tokenizer,
)
from gptlab.faults import SettingError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 24  # read, decoded and encoded at a time: memory stays small whatever the corpus
FORMAT = 1  # of the manifest: a cache entry of another format is prepared again
DEFAULT_CACHE = "gptlab-prepared"  # beside the data, unless data.cache_dir says where
# a token file no larger than this may stay mapped whole; a larger one is released after each batch
RELEASE_ABOVE_BYTES = 64 << 20


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    mtime_ns: int


def source_files(path: str | Sequence[str], glob: str) -> list[Source]:
    """The corpus's files in order: a file, a directory's files matching glob (sorted), or a list."""
    if isinstance(path, str | os.PathLike):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"data file {path} not found: put a text file there or set data.path")
        if path.is_dir():
            paths = sorted(p for p in path.glob(glob) if p.is_file())
            if not paths:
                raise SettingError(
                    f"data.path={path} is a directory with no file matching data.glob={glob!r}: "
                    "set data.glob (e.g. '*.md', '**/*.txt') or point data.path at a text file"
                )
        else:
            paths = [path]
    else:
        paths = [Path(p) for p in path]
        if not paths:
            raise SettingError("data.path=[] lists no file: give a text file, a directory or a list of files")
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"data file {p} (in data.path) not found: give text files only")
    sources = [Source(p, (stat := p.stat()).st_size, stat.st_mtime_ns) for p in paths]
    if sum(s.size for s in sources) == 0:
        what = f"data file {paths[0]} is" if len(paths) == 1 else f"the {len(paths)} files of data.path are"
        raise SettingError(f"{what} empty: point data.path at text")
    return sources


def default_cache_dir(path: str | Sequence[str]) -> Path:
    """Beside the data: next to the file or the directory (or the first file of a list)."""
    first = Path(path) if isinstance(path, str | os.PathLike) else Path(path[0])
    return first.resolve().parent / DEFAULT_CACHE


def corpus_bytes(sources: list[Source], separator: str) -> int:
    return sum(s.size for s in sources) + len(separator.encode()) * (len(sources) - 1)


def read_pieces(
    sources: list[Source], separator: str, train_bytes: int, hashes: dict[Path, str] | None = None
) -> Iterator[tuple[Path, bytes, bool]]:
    """The corpus as UTF-8 pieces of at most CHUNK_BYTES: (file, piece, in the training split).
    No piece cuts a character in two or straddles the split. A byte that is not UTF-8 stops
    it, naming the file and the byte's offset. Fills hashes with each file's SHA-256 if given."""
    position = 0  # bytes of the joined corpus before the next piece
    for i, source in enumerate(sources):
        if i and separator:
            yield source.path, separator.encode(), position < train_bytes
            position += len(separator.encode())
        digest = hashlib.sha256()
        offset, carry = 0, b""
        with open(source.path, "rb") as f:
            while True:
                read = f.read(CHUNK_BYTES)
                digest.update(read)
                data, at_end = carry + read, len(read) < CHUNK_BYTES
                if not data:
                    break
                end = len(data)
                if 0 < train_bytes - position < end:  # the split is in data: at a character's start
                    train_bytes = position + character_start(data, train_bytes - position)
                    end = train_bytes - position or end
                if end == len(data) and not at_end:
                    end = character_start(data, end)  # the rest of that character is still to read
                piece, carry = data[:end], data[end:]
                if not piece:
                    continue
                if not piece.isascii():
                    check_utf8(piece, source.path, offset)
                yield source.path, piece, position < train_bytes
                offset += len(piece)
                position += len(piece)
        if hashes is not None:
            hashes[source.path] = digest.hexdigest()


def character_start(data: bytes, end: int) -> int:
    """end, or the first byte of the UTF-8 character that cutting data at end would split."""
    for start in range(end - 1, max(end - 4, -1), -1):
        byte = data[start]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the last character before end starts here
            length = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return start if start + length > end else end
    return end  # no UTF-8 there: decoding says so


def check_utf8(piece: bytes, path: Path, offset: int) -> None:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SettingError(
            f"data file {path} is not UTF-8 text: byte {piece[err.start]:#04x} at offset "
            f"{offset + err.start} cannot be decoded; point data.path at UTF-8 text"
        ) from None


def characters(piece: bytes) -> int:
    return len(piece) if piece.isascii() else len(piece.decode("utf-8"))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class PreparedCorpus:
    """A prepared corpus, memory-mapped: tokens[:train_tokens] train, the rest validates."""

    directory: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer
    mapped: mmap.mmap  # the token file, read-only
    tokens: np.ndarray  # an array over mapped, not a copy
    prepared_now: bool  # by this process, rather than found in the cache

    @classmethod
    def open(cls, directory: Path, prepared_now: bool = False) -> "PreparedCorpus":
        manifest = json.loads((directory / "manifest.json").read_text())
        with open(directory / "tokens.bin", "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)  # windows are read here and there: no read-ahead
        tokens = np.frombuffer(mapped, dtype=manifest["dtype"])
        tokenizer = tokenizer_from_dict(manifest["tokenizer"])
        return cls(directory, manifest, tokenizer, mapped, tokens, prepared_now)

    @property
    def text_sha256(self) -> str:
        """A digest of the text: of its files' own, in order (what a checkpoint records as the
        text it trained on)."""
        return hashlib.sha256("".join(s["sha256"] for s in self.manifest["sources"]).encode()).hexdigest()

    def release(self) -> None:
        """Hands the pages read so far back to the OS (they stay in its page cache, shared by
        every process reading the file), if the file is larger than RELEASE_ABOVE_BYTES. The data
        module calls this after every training batch and every validation. Without it, a
        process's resident memory grows towards the size of the corpus as training reads windows
        all over it, and fast: a read may map a whole large folio of the page cache (up to 2 MB
        on recent Linux kernels), not only the page it reads."""
        if len(self.mapped) > RELEASE_ABOVE_BYTES:
            self.mapped.madvise(mmap.MADV_DONTNEED)

    @property
    def train(self) -> np.ndarray:
        return self.tokens[: self.manifest["train_tokens"]]

    @property
    def val(self) -> np.ndarray:
        return self.tokens[self.manifest["train_tokens"] :]


class Corpus:
    """What a corpus is made of (files, separator, split) and where it is prepared."""

    def __init__(
        self,
        path: str | Sequence[str],
        glob: str = "*.txt",
        separator: str = "\n",
        train_fraction: float = 0.9,
        cache_dir: str | None = None,
    ):
        self.path = path
        self.sources = source_files(path, glob)
        self.separator = separator
        self.train_fraction = train_fraction
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(path)
        self.train_bytes = int(train_fraction * corpus_bytes(self.sources, separator))

    def entry(self, tokenizer_key: dict[str, Any]) -> Path:
        """The cache folder of this corpus with this tokenizer: a readable name and a digest of
        everything that decides its tokens."""
        described = {
            "sources": [str(s.path.resolve()) for s in self.sources],
            "separator": self.separator,
            "train_fraction": self.train_fraction,
            "tokenizer": tokenizer_key,
        }
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]
        first = Path(self.path) if isinstance(self.path, str | os.PathLike) else self.sources[0].path
        kind = tokenizer_key.get("type", "given") + str(tokenizer_key.get("vocab_size", ""))
        return self.cache_dir / f"{first.stem}-{kind}-{digest}"

    def prepared(
        self, settings: dict[str, Any], tokenizer: Tokenizer | None = None, progress: bool = False
    ) -> PreparedCorpus:
        """The corpus prepared with a tokenizer trained by settings, or with the tokenizer
        given (which the corpus prepared with those settings is used for, if it has that very
        tokenizer): from the cache when it is current, else prepared now."""
        entry = self.entry(settings)
        if tokenizer is not None:
            manifest = read_manifest(entry)
            if manifest is None or manifest["tokenizer"] != tokenizer.to_dict():
                given = json.dumps(tokenizer.to_dict(), sort_keys=True).encode()
                entry = self.entry({"given": hashlib.sha256(given).hexdigest()[:16]})
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            lock_file = open(entry.with_name(entry.name + ".lock"), "a")  # noqa: SIM115 (locked below)
        except OSError as err:
            if self.is_current(entry, update=False):  # a read-only cache someone prepared for us
                return PreparedCorpus.open(entry)
            raise SettingError(
                f"data.cache_dir={self.cache_dir} cannot be written ({err.strerror}): set data.cache_dir "
                "to a folder you can write"
            ) from None
        with locked(lock_file):
            if self.is_current(entry):
                return PreparedCorpus.open(entry)
            self.prepare(entry, settings, tokenizer, progress)
            return PreparedCorpus.open(entry, prepared_now=True)

    def is_current(self, entry: Path, update: bool = True) -> bool:
        """Whether entry holds this corpus as its files are now. A file whose time changed but
        whose content did not is only recorded anew (when update)."""
        manifest = read_manifest(entry)
        if manifest is None:
            return False
        recorded = {Path(s["path"]): s for s in manifest["sources"]}
        if list(recorded) != [s.path.resolve() for s in self.sources]:
            log.info("data: the files of data.path changed since %s was prepared: preparing it again", entry)
            return False
        touched = False
        for source in self.sources:
            old = recorded[source.path.resolve()]
            if old["mtime_ns"] == source.mtime_ns and old["size"] == source.size:
                continue
            if old["size"] != source.size or file_sha256(source.path) != old["sha256"]:
                log.info("data: %s changed since it was prepared: preparing %s again", source.path, entry)
                return False
            old["mtime_ns"], touched = source.mtime_ns, True
        expected = manifest["tokens"] * np.dtype(manifest["dtype"]).itemsize
        tokens = entry / "tokens.bin"
        if not tokens.is_file() or tokens.stat().st_size != expected:
            return False
        if touched and update:
            write_manifest(entry, manifest)
        return True

    def pieces(
        self, train_only: bool = False, hashes: dict[Path, str] | None = None
    ) -> Iterator[tuple[Path, bytes, bool]]:
        pieces = read_pieces(self.sources, self.separator, self.train_bytes, hashes)
        return itertools.takewhile(lambda p: p[2], pieces) if train_only else pieces

    def prepare(
        self, entry: Path, settings: dict[str, Any], tokenizer: Tokenizer | None, progress: bool
    ) -> None:
        """Tokenizer (trained on the training split unless given), token file, then manifest."""
        started = time.perf_counter()
        total = corpus_bytes(self.sources, self.separator)
        log.info("data: preparing %s (%.1f MB) in %s", self.path, total / 1e6, entry)
        with progress_bar(progress) as bar:
            if tokenizer is None:
                task = bar.add_task(f"training the {settings['type']} tokenizer", total=None)

                def text(train_only: bool) -> Iterator[bytes]:
                    bar.update(task, total=self.train_bytes if train_only else total)
                    return (piece for _, piece, _ in self.advanced(bar, task, self.pieces(train_only)))

                tokenizer = train_tokenizer(settings, text)
            trained = time.perf_counter()
            dtype = token_dtype(tokenizer.vocab_size)
            entry.mkdir(parents=True, exist_ok=True)
            task = bar.add_task("encoding", total=total)
            hashes: dict[Path, str] = {}  # filled as each file is read
            with written_whole(entry / "tokens.bin") as partial, open(partial, "wb") as out:
                pieces = self.advanced(bar, task, self.pieces(hashes=hashes))
                counts = encode(tokenizer, dtype, pieces, out)
        manifest = {
            "format": FORMAT,
            "sources": [
                {
                    "path": str(s.path.resolve()),
                    "size": s.size,
                    "mtime_ns": s.mtime_ns,
                    "sha256": hashes[s.path],
                }
                for s in self.sources
            ],
            "separator": self.separator,
            "train_fraction": self.train_fraction,
            "tokenizer_settings": settings,
            "tokenizer": tokenizer.to_dict(),
            "dtype": dtype.name,
            "tokens": counts["tokens"],
            "train_tokens": counts["train_tokens"],
            "characters": {"train": counts["train_characters"], "val": counts["val_characters"]},
            "seconds": {"tokenizer": trained - started, "encoding": time.perf_counter() - trained},
        }
        write_manifest(entry, manifest)

    @staticmethod
    def advanced(
        bar: Progress, task: Any, pieces: Iterator[tuple[Path, bytes, bool]]
    ) -> Iterator[tuple[Path, bytes, bool]]:
        for item in pieces:
            yield item
            bar.advance(task, len(item[1]))


def encode(
    tokenizer: Tokenizer, dtype: np.dtype, pieces: Iterator[tuple[Path, bytes, bool]], out: IO[bytes]
) -> dict[str, int]:
    """Writes the pieces' tokens to out; returns the counts of tokens and characters. Characters
    a given char tokenizer lacks are named at the end, all of them, by file."""
    counts = {"tokens": 0, "train_tokens": 0, "train_characters": 0, "val_characters": 0}
    unknown: dict[Path, set[str]] = {}
    for path, piece, in_train in pieces:
        try:
            ids = tokenizer.encode_bytes(piece)
        except UnknownCharacters as err:
            unknown.setdefault(path, set()).update(err.unknown)
            continue
        ids.astype(dtype).tofile(out)
        counts["tokens"] += len(ids)
        if in_train:
            counts["train_tokens"] += len(ids)
        counts["train_characters" if in_train else "val_characters"] += characters(piece)
    if unknown:
        where = "data file" + ("s " if len(unknown) > 1 else " ") + ", ".join(map(str, unknown))
        raise UnknownCharacters(set().union(*unknown.values()), where=where)
    return counts


def write_manifest(entry: Path, manifest: dict[str, Any]) -> None:
    with written_whole(entry / "manifest.json") as partial:
        partial.write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == FORMAT else None


@contextmanager
def locked(lock_file: IO[str]) -> Iterator[None]:
    """Holds an exclusive lock on lock_file, then closes it: one process prepares a corpus,
    the others wait for it."""
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("data: waiting for another process preparing %s", lock_file.name.removesuffix(".lock"))
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def progress_bar(visible: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not visible,
    )
