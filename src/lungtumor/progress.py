"""A small wrapper over rich's progress bar so long work shows progress the same way everywhere."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n=1)``; a no-op when disabled or not a terminal-like run."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=not sys.stderr.isatty(),
    ) as prog:
        task = prog.add_task(description, total=total, completed=completed)
        yield lambda n=1: prog.advance(task, n)
