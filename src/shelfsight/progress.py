"""One progress display for every long loop: Rich bars with a rate column, or nothing when disabled.

A bench run opens one shared display (:func:`run_display`) whose first line is the whole run (cells done,
elapsed, estimated time left); every bar opened while it is up (extraction, a top-tuning search, a
fine-tuning epoch) becomes a line under it instead of a display of its own, so they never fight over
the terminal. Lines printed while it is up (a top-tuning trial) go through its console
(:func:`live_console`), above the bars, each on its own line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["Advance", "live_console", "progress_bar", "run_display"]


class _LeftColumn(ProgressColumn):
    """The time left: a task's ``time_left`` (a function of no arguments, asked at every refresh, so the estimate
    moves between updates), else counted down from its ``eta`` (a ``time.monotonic()`` deadline), else its
    ``left`` text."""

    def render(self, task: Task) -> Text:
        time_left = task.fields.get("time_left")
        if callable(time_left):
            return Text(f"~{_clock(max(0.0, float(time_left())))} left")
        eta = task.fields.get("eta")
        if isinstance(eta, float):
            return Text(f"~{_clock(max(0.0, eta - time.monotonic()))} left")
        return Text(str(task.fields.get("left", "")))


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


_COLUMNS = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), _LeftColumn())
_shared: Progress | None = None


class Advance(Protocol):
    def __call__(self, n: int, note: str = "") -> None: ...


def _left(done: float, total: float, elapsed: float) -> str:
    if done <= 0 or elapsed <= 0 or done >= total:
        return ""
    return f"~{_clock((total - done) * elapsed / done)} left"


@contextlib.contextmanager
def run_display(console: Console, enabled: bool = True, *,
                get_time: Callable[[], float] | None = None) -> Iterator[Progress | None]:
    """The shared display of a run: bars opened inside it become its lines (nothing when disabled). ``get_time``:
    its clock (rich's; default ``time.monotonic``), which the bars' rates and the time left read."""
    global _shared
    if not enabled or _shared is not None:
        yield None
        return
    with Progress(*_COLUMNS, console=console, transient=False, get_time=get_time) as display:
        _shared = display
        try:
            yield display
        finally:
            _shared = None


def live_console() -> Console | None:
    """The console of the run's live display, if one is up: print through it (``live_console().print``) and the
    line lands above the bars on a line of its own, instead of being glued onto a bar by another console."""
    return _shared.console if _shared is not None else None


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str, *, completed: int = 0, unit: str = "items",
                 console: Console | None = None, transient: bool = False) -> Iterator[Advance]:
    """Yields ``advance(n, note="")``; shows done/total, the rate in ``unit``/s (and the note), elapsed and
    remaining time. Inside a :func:`run_display` the bar is a line of it, removed when done."""
    if not enabled:
        yield lambda n, note="": None
        return
    with contextlib.ExitStack() as stack:
        display = _shared
        if display is None:
            display = stack.enter_context(Progress(*_COLUMNS, console=console, transient=transient))
        task = display.add_task(description, total=total, completed=completed, count=f"{completed}/{total}",
                                detail="", left="")
        if display is _shared:
            stack.callback(display.remove_task, task)
        yield _advancer(display, task, total, completed, unit)


def _advancer(display: Progress, task: TaskID, total: int, completed: int, unit: str) -> Advance:
    started, done = time.perf_counter(), 0

    def advance(n: int, note: str = "") -> None:
        nonlocal done
        done += n
        elapsed = time.perf_counter() - started
        rate = f"{done / elapsed:.1f} {unit}/s" if elapsed > 0 else ""
        display.update(task, advance=n, count=f"{completed + done}/{total}",
                       detail=" · ".join(part for part in (note, rate) if part), left=_left(done, total - completed,
                                                                                         elapsed))

    return advance
