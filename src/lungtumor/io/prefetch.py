"""Read a NIfTI CT in a background thread while the process imports torch (``predict``'s start-up).

``lungtumor predict`` must import torch (about a second) before its first scan can reach the model,
and reading a compressed 512x512x300 CT is another half second, most of it zlib decompression, which
releases the GIL. :func:`start` begins that read in a thread before the imports;
:func:`~lungtumor.io.readers.read_volume` then takes the result (:func:`take`) instead of reading the
file again. Nothing else changes: the same reader (:func:`~lungtumor.io.nifti.read_nifti`) makes the
same ``Volume``; a prefetched read that failed, or a file that changed since (size or modification
time), is read again the normal way, so every error is raised where and as it always was. One read
is kept at a time and is handed out once.

``start(path, then=f)`` also runs ``f(volume)`` in the same thread after the read (``predict`` passes
the lung finder, which needs no model); :func:`after` gives its result for the Volume that
:func:`take` handed out (or None when it was not computed or failed: the caller computes it itself).

This module imports only the standard library at import time (the thread imports the reader), so
starting a read costs the caller nothing.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_pending: dict[str, Any] | None = None
#: The result of ``then`` for the Volume last handed out by :func:`take` (a weak reference to it: the result
#: is never given for another Volume, and goes with it).
_after: tuple[weakref.ref, Any] | None = None


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def start(path: str | os.PathLike[str], then: Callable[[Any], Any] | None = None) -> bool:
    """Begin reading the NIfTI file ``path`` in a daemon thread, then ``then(volume)`` in the same thread;
    False (nothing started) for anything else (a folder, a missing file, another type). A read started
    before is dropped."""
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
            return
        if then is not None:
            try:
                box["after"] = (then(box["volume"]),)
            except BaseException:  # computed again by the caller, which raises or logs its own way
                pass

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
    volume = box.get("volume")
    global _after
    _after = (weakref.ref(volume), box["after"][0]) if volume is not None and "after" in box else None
    return volume


def after(volume: Any) -> tuple[Any] | None:
    """``(then(volume),)`` when ``volume`` is the Volume :func:`take` handed out and ``then`` succeeded on
    it, else None. Given once."""
    global _after
    with _lock:
        held = _after
        if held is None or held[0]() is not volume:
            return None
        _after = None
    return (held[1],)
