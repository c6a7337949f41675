"""Lightning's checkpoint writing, made atomic on the run folder's own file system.

Every checkpoint of a run (best, last, any other callback's) goes through
:func:`lungtumor.model.checkpoint.save_checkpoint_file`; reading is Lightning's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lungtumor.model.checkpoint import PREVIOUS_LAST, save_checkpoint_file

#: The run's resume checkpoint, whose predecessor is kept as :data:`PREVIOUS_LAST`.
LAST_NAME = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """A :class:`TorchCheckpointIO` whose ``save_checkpoint`` is atomic (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"`storage_options` is not supported by {type(self).__name__}")
        target = Path(path)
        save_checkpoint_file(checkpoint, target, keep_previous=PREVIOUS_LAST if target.name == LAST_NAME else None)
