"""Atomic file output: readers see the old file or the complete new one, never a partial one.

Everything lungtumor writes goes through :func:`atomic_output`: the data is written to a
temporary file in the target's folder and renamed over the target only on success. The
temporary file gets the permissions an ordinary ``open()`` would give (``mkstemp`` makes it
owner-only), so masks and reports stay readable by the people they are shared with.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status).

    ``os.umask`` can only be read by setting it, which is not thread-safe (another thread creating
    a file in between would get mode 0666); so that is done once, at import, only where /proc
    does not tell.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The umask at import (a library does not change it, and a program rarely does after start-up).
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def publish_permissions(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Give ``path`` the mode a normal file (0666) or folder (0777) would get under the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    Args:
        path: the final file.
        suffix: suffix of the temporary file (default: ``path``'s full suffix, so writers that
            choose the format from the name, such as nibabel's ``.nii.gz``, still do).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish_permissions(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename == tmp:  # name the file the user asked for, not our hidden temporary one
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_output(path, suffix=".tmp") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return Path(path)


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_input_as_output(outputs: list[str | os.PathLike[str]], inputs: list[str | os.PathLike[str]], *, command: str) -> None:
    """Raise a one-line ConfigError when an output is, or would replace, one of the inputs.

    Catches the same path, the same file under another name (hard or symbolic links), an output
    folder equal to an input folder (a folder predicted into itself would overwrite every scan),
    and an output file that would land on a file inside an input folder.
    """
    from lungtumor.errors import ConfigError

    for out in (Path(o) for o in outputs if o is not None):
        for inp in (Path(i) for i in inputs if i is not None):
            clash = _same(out, inp)
            if not clash and inp.is_dir() and out.parent.resolve() == inp.resolve() and (inp / out.name).exists():
                clash = _same(out, inp / out.name)
            if clash:
                raise ConfigError(
                    f"{out}: this output is the input {inp}; `{command}` would overwrite it — write to another file or folder"
                )
