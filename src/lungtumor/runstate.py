"""State of resumable folders: the options a folder was made with, and one writer at a time.

Three folders are resumed by re-running the command that made them: the slice store
(``preprocess``), the training run (``train --resume``) and the cross-validation folder (``cv``).
Each records the options that decide its content in a small file, and a re-run with other values
for those options is refused with one line naming the folder, the option(s) and the fix, instead
of silently mixing two configurations (:func:`check_recorded_config`). A folder that one process
writes at a time takes an exclusive lock (:func:`exclusive_folder_lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lungtumor.atomic import write_text_atomic
from lungtumor.errors import ConfigError

#: Name of the lock file a writer holds in its folder (hidden; left in place: deleting a lock
#: file while another process may be opening it would let two writers in).
LOCK_FILE = ".lock"
#: Differing options shown in one error line (the rest are counted).
_MAX_SHOWN = 4


def _read_record(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as exc:  # unreadable, truncated JSON, a YAML syntax error
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: the {what}'s recorded options are unreadable ({first}); delete the folder {path.parent} and start again") from exc


def option_flag(key: str) -> str:
    """The command-line spelling of an option key (``split_seed`` -> ``--split-seed``)."""
    return "--" + key.replace("_", "-")


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[tuple[str, Any, Any]]:
    """``(key, recorded, current)`` for every key whose values differ; keys the record lacks (a
    folder written before the key was recorded) are not compared."""
    chosen = list(keys) if keys is not None else list(current)
    return [(k, recorded[k], current.get(k)) for k in chosen if k in recorded and _norm(recorded[k]) != _norm(current.get(k))]


def _norm(value: Any) -> Any:
    # JSON turns tuples into lists: (-1024, 3071) and [-1024, 3071] are the same option.
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def check_recorded_config(
    folder: str | os.PathLike[str],
    recorded_name: str,
    current: Mapping[str, Any],
    keys: Iterable[str] | None = None,
    *,
    what: str,
    fix: str,
    section: str | None = None,
) -> bool:
    """Compare ``current`` with the options recorded in ``folder/recorded_name``.

    Args:
        folder: the resumable folder.
        recorded_name: its record file (JSON, or YAML by suffix).
        current: the options of this run, by key.
        keys: the keys that must match (default: every key of ``current``).
        what: the folder's kind in the message ("cross-validation folder").
        fix: what to do instead, ending the message ("use a new --out, or the options it was made with").
        section: compare this sub-dictionary of the record instead of its top level.

    Returns:
        True when the record exists and matches; False when there is no record yet.

    Raises:
        ConfigError: one line naming the folder, each differing option (recorded -> requested)
            and ``fix``; or an unreadable record.
    """
    path = Path(folder) / recorded_name
    if not path.exists():
        return False
    recorded = _read_record(path, what)
    if section is not None and isinstance(recorded, dict):
        recorded = recorded.get(section)
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path}: the {what}'s recorded options are not a mapping; delete the folder {path.parent} and start again")
    refuse_config_differences(folder, config_differences(recorded, current, keys), what=what, fix=fix)
    return True


def refuse_config_differences(folder: str | os.PathLike[str], diff: list[tuple[str, Any, Any]], *, what: str, fix: str) -> None:
    """Raise the one-line ConfigError of :func:`check_recorded_config` when ``diff`` is not empty."""
    if not diff:
        return
    shown = ", ".join(f"{option_flag(k)} {was!r} -> {now!r}" for k, was, now in diff[:_MAX_SHOWN])
    more = f" and {len(diff) - _MAX_SHOWN} more" if len(diff) > _MAX_SHOWN else ""
    raise ConfigError(f"{Path(folder)}: this {what} was made with a different config (recorded -> requested: {shown}{more}); {fix}")


def record_config(folder: str | os.PathLike[str], recorded_name: str, current: Mapping[str, Any]) -> Path:
    """Write ``current`` as the folder's record (atomic JSON)."""
    return write_text_atomic(Path(folder) / recorded_name, json.dumps(dict(current), indent=2, sort_keys=True, default=str))


def _is_secondary_rank() -> bool:
    """True in a process that a distributed launcher started besides rank 0 (it shares rank 0's folder)."""
    for var in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value not in (None, "", "0"):
            return True
    return False


@contextlib.contextmanager
def exclusive_folder_lock(folder: str | os.PathLike[str], *, command: str, what: str = "folder") -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``folder`` (``flock`` on ``folder/.lock``).

    A second process asking for it is refused at once with a one-line ConfigError naming the
    folder. The lock goes with the process (a killed writer leaves no stale lock). Secondary ranks
    of a distributed run share rank 0's folder and do not lock; where ``fcntl`` is missing
    (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    if _is_secondary_rank():
        yield
        return
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(
                f"{root}: another `{command}` is writing this {what} now; wait for it to finish, or use another --out"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
