"""What a run tells its user: the plan before the first cell (and what it warns of: a gallery too large for the
configured engine), one overall line while it runs, the photos it had to leave out at the end.

The overall line sits above the per-cell bars (one shared Rich display, ``shelfsight.progress``): cells
done of the total, elapsed time, and the time left, estimated from the plan and corrected by how long the
finished cells took against their estimates, and, within a cell, by the cell's own bars (photos embedded,
trials run, each at its measured pace).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

if TYPE_CHECKING:
    from shelfsight.bench.estimate import CellEstimate

SKIPPED_FILE = "skipped.csv"
SHOWN_SKIPS = 5


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``4 min 05 s``, ``12 s``."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.0f} s"


def print_plan(out: Console, cells: Sequence[tuple[object, object, object]], decisions: Sequence[object],
               estimates: Sequence[CellEstimate]) -> None:
    """The cells, what each will do and cost, and the estimated total, before anything runs."""
    table = Table(title="plan", show_lines=False, title_justify="left")
    for column in ("#", "cell", "does", "estimate"):
        table.add_column(column, justify="right" if column in ("#", "estimate") else "left")
    for number, ((cell, _, _), decision, estimate) in enumerate(zip(cells, decisions, estimates, strict=True), 1):
        reused = getattr(decision, "reason", None) is None
        table.add_row(str(number), getattr(cell, "cell_id", str(cell)), "reuse stored result" if reused
                      else estimate.work, "-" if reused else duration(estimate.seconds))
    out.print(table)
    total = sum(e.seconds for e in estimates)
    running = sum(1 for d in decisions if getattr(d, "reason", None) is not None)
    out.print(f"[bold]{len(cells)} cells[/]: {running} to compute, {len(cells) - running} reused; "
              f"estimated {duration(total)} (rates measured by earlier runs where there are any)")
    for warning in dict.fromkeys(w for e in estimates for w in getattr(e, "warnings", ())):  # once each, in order
        out.print(f"[yellow]{warning}[/]", highlight=False)


class RunProgress:
    """The overall line: cells done, elapsed, and a self-correcting estimate of the time left (:meth:`seconds_left`,
    asked at every refresh of the display)."""

    def __init__(self, display: Progress | None, estimates: Sequence[float]) -> None:
        self.display = display
        self.estimates = list(estimates)
        self.actual: list[float | None] = [None] * len(estimates)
        self.clock = display.get_time if display is not None else time.monotonic
        self.cell_started = self.clock()
        """When the running cell began: cells run in plan order, each one as the previous one is done."""
        self.task: TaskID | None = None  # the display may render the line before add_task returns
        self.task = display.add_task("run", total=len(estimates), count=f"0/{len(estimates)} cells",
                                     detail="estimated", time_left=self.seconds_left,
                                     eta=self.cell_started + sum(estimates)) \
            if display is not None else None

    def done(self, index: int, seconds: float) -> None:
        """Cell ``index`` finished after ``seconds`` (0 when reused)."""
        self.actual[index] = seconds
        self.cell_started = self.clock()
        if self.display is None or self.task is None:
            return
        finished = sum(1 for a in self.actual if a is not None)
        self.display.update(self.task, advance=1, count=f"{finished}/{len(self.estimates)} cells",
                            eta=self.clock() + self.seconds_left(), detail="" if finished else "estimated")

    def remaining(self) -> float:
        """The estimates of the cells left, scaled by how the computed cells compared with theirs."""
        left = sum(e for a, e in zip(self.actual, self.estimates, strict=True) if a is None)
        return left * self._ratio()

    def _ratio(self) -> float:
        spent = [(a, e) for a, e in zip(self.actual, self.estimates, strict=True) if a and e > 0]
        ratio = sum(a for a, _ in spent) / sum(e for _, e in spent) if spent else 1.0
        return min(5.0, max(0.2, ratio))

    def seconds_left(self) -> float:
        """:meth:`remaining`, with the running cell's share replaced by what it shows of itself: its plan less the
        time it has run, or, when one of its bars (photos embedded, trials run) projects more at its measured pace,
        that. So a cell embedding at 42 photos/s against 98 planned moves the time left while it runs."""
        current = next((i for i, a in enumerate(self.actual) if a is None), None)
        if current is None:
            return 0.0
        planned = self.estimates[current] * self._ratio()
        own = max(0.0, planned - (self.clock() - self.cell_started))
        return self.remaining() - planned + max([own, *self._bars_left()])

    def _bars_left(self) -> list[float]:
        """The time left of each bar of the running cell, from its pace over rich's speed window (none until a
        bar has advanced twice)."""
        if self.display is None:
            return []
        return [float(task.time_remaining) for task in self.display.tasks
                if task.id != self.task and task.time_remaining is not None]


def write_skipped(run_dir: Path, skipped: dict[tuple[str, str], tuple[str, str, str]], out: Console) -> Path | None:
    """``skipped.csv`` (dataset, item id, path, reason, backbone) in the run folder, and a console summary."""
    target = run_dir / SKIPPED_FILE
    if not skipped:
        target.unlink(missing_ok=True)
        return None
    rows = sorted((dataset, item_id, *rest) for (dataset, item_id), rest in skipped.items())
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "item_id", "path", "reason", "backbone"])
        writer.writerows(rows)
    out.print(f"[yellow]{len(rows)} photo(s) could not be used and were left out[/] (all listed in {target}):")
    for dataset, item_id, path, reason, _ in rows[:SHOWN_SKIPS]:
        out.print(f"  {dataset} · {item_id}: {reason} ({path})", highlight=False)
    if len(rows) > SHOWN_SKIPS:
        out.print(f"  ... and {len(rows) - SHOWN_SKIPS} more")
    return target
