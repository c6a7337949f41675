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
from collections.abc import Iterable, Iterator
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


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _input_files(folder: Path) -> Iterator[Path]:
    """Every file under an input folder (a DICOM series is read recursively, so all of them count)."""
    try:
        yield from (p for p in folder.rglob("*") if p.is_file())
    except OSError:
        return


def refuse_overwriting_inputs(
    outputs: Iterable[str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    command: str,
) -> None:
    """Raise a one-line ConfigError when a command's output is, replaces or lands inside one of its inputs.

    The one input-as-output guard of every command that writes, called before any work is done.
    An output clashes with an input when

    - both are the same path once resolved (``..``, symbolic links), or the same file under
      another name (``os.path.samefile``: a hard link), where both exist;
    - the input is a folder and the output is the folder itself or lies anywhere inside it. An
      input folder stands for every file under it (a DICOM series folder is read whole: a
      ``NAME.dcm`` written over a slice loses it, and a new file in it is read with the series
      next time). A command that reads only some files of a folder (a folder of NIfTI files)
      passes those files, not the folder;
    - the output exists and is a hard link to a file under an input folder.

    Args:
        outputs: every file or folder the command will write (None entries are skipped).
        inputs: every file or folder it reads (None entries are skipped).
        command: the command's name for the message, e.g. ``"lungtumor predict"``.

    Raises:
        ConfigError: naming the output, the input it would replace and the fix.
    """
    from lungtumor.errors import ConfigError

    outs = [Path(o) for o in outputs if o is not None]
    ins = [Path(i) for i in inputs if i is not None]
    folders = [i for i in ins if i.is_dir()]
    under_folders: dict[tuple[int, int], Path] | None = None  # built only when an output exists
    for out in outs:
        r_out = out.resolve()
        same_as = _identity(out)
        for inp in ins:
            r_in = inp.resolve()
            if r_out == r_in or (same_as is not None and same_as == _identity(inp)):
                raise ConfigError(
                    f"{out}: this output is the input {inp}; `{command}` would overwrite it: write to another file or folder"
                )
            if inp in folders and r_in in r_out.parents:
                raise ConfigError(
                    f"{out}: this output lies inside the input folder {inp}; `{command}` would overwrite or add to its files "
                    f"(a DICOM series folder is read whole): write outside it, e.g. {inp.parent / out.name}"
                )
        if same_as is not None and out.is_file() and folders:
            if under_folders is None:
                under_folders = {ident: folder for folder in folders for f in _input_files(folder) if (ident := _identity(f))}
            if same_as in under_folders:
                folder = under_folders[same_as]
                raise ConfigError(
                    f"{out}: this output is a hard link to a file of the input folder {folder}; `{command}` would overwrite it: "
                    "write to another file"
                )
