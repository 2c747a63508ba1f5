"""How the Trainer writes checkpoints: atomically, so that a kill mid-write leaves the previous
checkpoint whole (conf/trainer/default.yaml names this plugin). Reading them is
gptlab.checkpoint's, which needs no Lightning."""

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gptlab.atomic import written_whole


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every file system: the checkpoint is written
    to a partial file beside its target, then renamed over it, so a kill mid-write leaves the
    previous checkpoint whole. (Lightning's own writer stages in the system's temp directory,
    which is a copy, not a rename, when that is another file system.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # through a file of ours: a write the storage refuses is then an OSError saying why (torch
        # writing to a path says `unexpected pos` for a full disk)
        with written_whole(path) as partial, open(partial, "wb") as f:
            torch.save(checkpoint, f)
