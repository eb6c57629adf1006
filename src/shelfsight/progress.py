"""One progress bar for every long loop: Rich, with a rate column, or nothing when disabled."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str, *, completed: int = 0, unit: str = "items",
                 console: Console | None = None, transient: bool = False) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; shows done/total, the rate in ``unit``/s, elapsed and remaining time."""
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} " + unit + "/s"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=completed, rate="-")
        started, done = time.perf_counter(), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            elapsed = time.perf_counter() - started
            bar.update(task, advance=n, rate=f"{done / elapsed:.1f}" if elapsed > 0 else "-")

        yield advance
