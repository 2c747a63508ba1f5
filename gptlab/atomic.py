"""Files that appear whole or not at all: a file is written beside its place (the same folder, so
that the rename is atomic on every file system) and renamed over it once complete. A reader, or
a run killed mid-write, never sees half a file; the previous version stays until the new one is
there. Checkpoints, prepared corpora, their manifests and downloads are written this way; a
write the storage refuses (full, read-only, ...) raises a StorageFault naming the file, and leaves
no partial file behind."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gptlab.faults import STORAGE_ERRNOS, StorageFault


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """Yields the path to write instead of path; renamed over path when the block ends, removed
    if it fails. Named by the process, so processes writing the same file do not collide."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as err:
        if err.errno in STORAGE_ERRNOS and not isinstance(err, StorageFault):
            raise StorageFault(path, err) from err
        raise
    finally:
        partial.unlink(missing_ok=True)
