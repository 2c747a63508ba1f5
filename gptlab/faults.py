"""What ends a command without being a bug in gptlab: bad input (a SettingError), storage that
refuses a write (full, read-only, no permission, over quota) and a training run that diverges (a
loss, or weights, not finite). Each ends it with one line that names what happened and where
(gptlab.cli; gptlab.train adds what a run kept); anything else is a bug, and shows its traceback."""

import errno
from pathlib import Path


class SettingError(ValueError):
    """Bad input: a setting, a combination of settings or a file's content that gptlab refuses,
    said in one line that names it and what to do instead. Given what is refused and what to do
    instead, it says the one sentence they make: `model.n_head=5 is not allowed: use ...`."""

    def __init__(self, message: str, instead: str | None = None):
        super().__init__(message if instead is None else f"{message} is not allowed: {instead}")


# what a write fails with when the storage refuses it, not the program
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


class StorageFault(OSError):
    """A write the storage refused, naming the file."""

    def __init__(self, path: Path | str, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.strerror}"


def storage_fault(err: BaseException, where: Path) -> StorageFault | None:
    """err as a storage fault, if it is one or was raised by one: a StorageFault, or an OSError
    whose errno says the storage refused (named by its file, else by `where`)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, StorageFault):
            return seen
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return StorageFault(seen.filename or where, seen)
        seen = seen.__cause__ or seen.__context__
    return None


class Divergence(ArithmeticError):
    """A run whose loss (or weights) stopped being finite numbers: it stops at that step."""

    def __init__(self, what: str, lrs: dict[str, float]):
        shown = ", ".join(f"{name} {lr:.3g}" for name, lr in lrs.items())
        super().__init__(
            f"{what} (lr {shown}): the run diverged; train again with a lower optim.lr (optim.muon_lr "
            "under Muon), a longer optim.warmup_steps or trainer.gradient_clip_val"
        )
