"""Prepared corpora: encoded once, reused, prepared again when the text changes, one at a time."""

import fcntl
import json
import logging
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptlab.data import corpus
from gptlab.data.corpus import Corpus

CHAR = {"type": "char"}
TEXT = "Größe: naïve café, 東京 🎭\n" * 40


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def decoded(prepared: corpus.PreparedCorpus) -> str:
    return prepared.tokenizer.decode(prepared.tokens.tolist())


def test_prepared_once_then_memory_mapped_from_the_cache(tmp_path: Path) -> None:
    text = write(tmp_path / "data" / "text.txt", TEXT)
    first = Corpus(str(text)).prepared(CHAR)
    assert first.prepared_now and first.directory.parent == tmp_path / "data" / "gptlab-prepared"
    assert isinstance(first.mapped, mmap.mmap) and first.tokens.nbytes == len(first.mapped)  # not a copy
    assert decoded(first) == TEXT
    manifest = json.loads((first.directory / "manifest.json").read_text())
    assert manifest["sources"][0]["sha256"] and manifest["tokenizer"] == first.tokenizer.to_dict()
    token_file = (first.directory / "tokens.bin").stat()

    again = Corpus(str(text)).prepared(CHAR)
    assert not again.prepared_now and again.directory == first.directory
    assert (again.directory / "tokens.bin").stat().st_mtime_ns == token_file.st_mtime_ns  # not written again
    assert np.array_equal(again.tokens, first.tokens)


def test_a_touched_file_is_not_encoded_again_and_a_changed_one_is(tmp_path: Path, caplog) -> None:
    text = write(tmp_path / "text.txt", TEXT)
    first = Corpus(str(text)).prepared(CHAR)
    os.utime(text, ns=(text.stat().st_atime_ns, text.stat().st_mtime_ns + 10**9))  # same content
    touched = Corpus(str(text)).prepared(CHAR)
    assert not touched.prepared_now
    assert touched.manifest["sources"][0]["mtime_ns"] == text.stat().st_mtime_ns  # recorded anew

    write(text, TEXT.replace("café", "cafè"))  # same size, other content
    with caplog.at_level(logging.INFO, logger="gptlab.data.corpus"):
        changed = Corpus(str(text)).prepared(CHAR)
    assert changed.prepared_now and changed.directory == first.directory
    assert decoded(changed) == TEXT.replace("café", "cafè")
    assert f"data: {text} changed since it was prepared: preparing {first.directory} again" in caplog.messages


def test_a_directory_is_its_matching_files_sorted_and_joined(tmp_path: Path) -> None:
    write(tmp_path / "texts" / "b.txt", "second")
    write(tmp_path / "texts" / "a.txt", "first")
    write(tmp_path / "texts" / "notes.md", "not text")
    prepared = Corpus(str(tmp_path / "texts")).prepared(CHAR)
    assert decoded(prepared) == "first\nsecond"
    assert prepared.directory.parent == tmp_path / "gptlab-prepared"  # beside the directory
    listed = Corpus([str(tmp_path / "texts" / "notes.md"), str(tmp_path / "texts" / "a.txt")], separator="|")
    assert decoded(listed.prepared(CHAR)) == "not text|first"
    write(tmp_path / "texts" / "c.txt", "third")  # a new file changes the corpus
    assert decoded(Corpus(str(tmp_path / "texts")).prepared(CHAR)) == "first\nsecond\nthird"


@pytest.mark.parametrize("chunk_bytes", [1, 5, 7, 64])
def test_pieces_never_cut_a_character_or_straddle_the_split(
    tmp_path: Path, monkeypatch, chunk_bytes: int
) -> None:
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk_bytes)
    text = write(tmp_path / "text.txt", TEXT)
    prepared = Corpus(
        str(text), train_fraction=0.5, cache_dir=str(tmp_path / f"cache{chunk_bytes}")
    ).prepared({"type": "bpe", "vocab_size": 260})
    assert decoded(prepared) == TEXT
    # the split point is the first half of the bytes, moved back to a character's start
    train_text = prepared.tokenizer.decode(prepared.train.tolist())
    assert (
        TEXT.startswith(train_text)
        and len(TEXT.encode()) // 2 - 3 <= len(train_text.encode()) <= len(TEXT.encode()) // 2
    )
    assert prepared.manifest["characters"] == {"train": len(train_text), "val": len(TEXT) - len(train_text)}


def test_a_byte_that_is_not_utf8_is_named_with_its_file_and_offset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 8)  # the bad byte is in a later piece
    write(tmp_path / "texts" / "a.txt", "fine")
    bad = tmp_path / "texts" / "b.txt"
    bad.write_bytes("naïve text, then ".encode() + b"\xae")
    with pytest.raises(ValueError, match=rf"^data file {bad} is not UTF-8 text: byte 0xae at offset 18 "):
        Corpus(str(tmp_path / "texts")).prepared(CHAR)


def test_a_cache_folder_that_cannot_be_written(tmp_path: Path) -> None:
    text = write(tmp_path / "text.txt", TEXT)
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(ValueError, match=rf"^data.cache_dir={blocked}/cache cannot be written \("):
        Corpus(str(text), cache_dir=str(blocked / "cache")).prepared(CHAR)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write(d / "empty.txt", ""), r"data file .*empty.txt is empty"),
        (
            lambda d: write(d / "texts" / "a.md", "x").parent,
            r"is a directory with no file matching data.glob='\*.txt'",
        ),
        (lambda d: d / "missing.txt", r"data file .*missing.txt not found"),
    ],
)
def test_nothing_to_prepare(tmp_path: Path, make, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        Corpus(str(make(tmp_path)))


PREPARE = """
import logging, sys
from gptlab.data.corpus import Corpus
logging.basicConfig(level=logging.INFO, format="%(message)s")
prepared = Corpus(sys.argv[1]).prepared({"type": "bpe", "vocab_size": 300})
print(prepared.prepared_now, prepared.directory)
"""


def test_two_processes_preparing_at_once_make_one_good_file(tmp_path: Path, shakespeare: Path) -> None:
    text = write(tmp_path / "text.txt", shakespeare.read_text()[:300_000])
    entry = Corpus(str(text)).entry({"type": "bpe", "vocab_size": 300})
    entry.parent.mkdir()
    # hold the lock until both processes wait for it: then they prepare at once, as far as they know
    with open(entry.with_name(entry.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", PREPARE, str(text)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for process in processes:
            assert process.stderr.readline().startswith(
                f"data: waiting for another process preparing {entry}"
            )
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert sorted(out.split()[0] for out, _ in outputs) == ["False", "True"]  # one prepared, one reused
    assert {out.split()[1] for out, _ in outputs} == {str(entry)}
    assert [p.name for p in entry.iterdir()] and not list(entry.glob("*.partial"))
    prepared = Corpus(str(text)).prepared({"type": "bpe", "vocab_size": 300})
    assert not prepared.prepared_now and decoded(prepared) == text.read_text()
