"""Read a NIfTI CT in a background thread while the process imports torch (``predict``'s start-up).

``lungtumor predict`` must import torch (about a second) before its first scan can reach the model,
and reading a compressed 512x512x300 CT is another half second, most of it zlib decompression, which
releases the GIL. :func:`start` begins that read in a thread before the imports;
:func:`~lungtumor.io.readers.read_volume` then takes the result (:func:`take`) instead of reading the
file again. Nothing else changes: the same reader (:func:`~lungtumor.io.nifti.read_nifti`) makes the
same ``Volume``; a prefetched read that failed, or a file that changed since (size or modification
time), is read again the normal way, so every error is raised where and as it always was. One read
is kept at a time and is handed out once.

This module imports only the standard library at import time (the thread imports the reader), so
starting a read costs the caller nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_pending: dict[str, Any] | None = None


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def start(path: str | os.PathLike[str]) -> bool:
    """Begin reading the NIfTI file ``path`` in a daemon thread; False (nothing started) for anything else
    (a folder, a missing file, another type). A read started before is dropped."""
    global _pending
    p = Path(path)
    if not p.name.lower().endswith((".nii", ".nii.gz")) or not p.is_file():
        return False
    key = _key(p)
    if key is None:
        return False
    box: dict[str, Any] = {"key": key}

    def work() -> None:
        try:
            from lungtumor.io.nifti import read_nifti

            box["volume"] = read_nifti(p)
        except BaseException:  # read again by the caller, which raises its own error
            box["volume"] = None

    thread = threading.Thread(target=work, name="lungtumor-prefetch", daemon=True)
    box["thread"] = thread
    with _lock:
        _pending = box
    thread.start()
    return True


def take(path: str | os.PathLike[str]) -> Any:
    """The prefetched ``Volume`` of ``path`` (waiting for its thread), or None: none was started for
    this file, it failed, or the file changed since. Handed out once."""
    global _pending
    with _lock:
        box = _pending
        if box is None or box["key"] != _key(Path(path)):
            return None
        _pending = None
    box["thread"].join()
    if box["key"] != _key(Path(path)):  # changed while it was read
        return None
    return box.get("volume")
