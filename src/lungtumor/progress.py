"""One progress bar for all long work (preprocessing, prediction, evaluation, phantom data).

The bar is drawn on stderr, and only when stderr is a terminal: piped or logged runs (CI,
batch schedulers) get no bar lines and no stray blank line, and stdout stays clean for results.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


def _no_op(n: int = 1) -> None:
    del n


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n=1)``; a no-op when disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield _no_op
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total, completed=completed)
        yield lambda n=1: prog.advance(task, n)
