"""A run's progress, as its user sees it: the time left moves within a cell, from the cell's own bars; and lines
printed during a run (top-tuning trials) land on lines of their own, above the bars.

The display is rich's own, driven by a hand-set clock (rich's ``get_time``), so every number is hand-computed.
"""

from __future__ import annotations

import io
import re

import numpy as np
from rich.console import Console

from shelfsight.adapt.toptune import TopTuneConfig, toptune
from shelfsight.bench.run_progress import RunProgress
from shelfsight.progress import live_console, progress_bar, run_display

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _left_shown(overall: RunProgress) -> str:
    """What the overall line's last column shows now."""
    assert overall.display is not None and overall.task is not None
    task = next(task for task in overall.display.tasks if task.id == overall.task)
    return str(overall.display.columns[-1].render(task))  # type: ignore[union-attr]


def test_the_time_left_moves_within_a_cell_from_its_own_pace() -> None:
    """The issue's case: a cell planned as 9,800 photos at 98/s (100 s) embeds at 42/s. Before, the line counted
    down from the plan (~130 s left at t=20 s, whatever the pace); now it projects the bar's measured pace."""
    clock = Clock()
    quiet = Console(file=io.StringIO(), force_terminal=False)
    with run_display(quiet, get_time=clock) as display:
        overall = RunProgress(display, [100.0, 50.0])
        assert overall.seconds_left() == 150.0  # the plan
        with progress_bar(True, 9800, "embed", unit="img") as advance:
            clock.now = 10.0
            advance(420)  # one sample: no pace yet, so the plan less the time run: 90 + 50
            assert overall.seconds_left() == 140.0
            clock.now = 20.0
            advance(420)  # 42/s over the last 10 s: 8,960 photos left -> ceil(213.3) = 214 s, + 50
            assert overall.seconds_left() == 264.0
            assert _left_shown(overall) == "~4:24 left"
            clock.now = 30.0
            advance(420)  # still 42/s: 8,540 left -> ceil(203.3) = 204 s: ten seconds later, ten seconds less
            assert overall.seconds_left() == 254.0
            clock.now = 25.0 + 9800 / 42
            advance(9800 - 1260)
        overall.done(0, clock.now)  # 258.3 s against 100 planned: the next cell's 50 s become 2.583 x 50
        assert abs(overall.seconds_left() - 50.0 * clock.now / 100.0) < 1e-9
        clock.now += 60.0  # a cell without bars counts down from its (corrected) plan
        assert abs(overall.seconds_left() - (50.0 * (clock.now - 60.0) / 100.0 - 60.0)) < 1e-9
        overall.done(1, 60.0)
        assert overall.seconds_left() == 0.0


def test_a_faster_bar_never_cuts_the_rest_of_the_cells_plan() -> None:
    """A bar ahead of its pace (its photos done in 5 s of a 100 s cell) leaves the plan's remainder standing:
    the cell may have work after the bar (training, scoring)."""
    clock = Clock()
    with run_display(Console(file=io.StringIO()), get_time=clock) as display:
        overall = RunProgress(display, [100.0])
        with progress_bar(True, 100, "embed", unit="img") as advance:
            for step in range(1, 6):
                clock.now = float(step)
                advance(10)  # 10 photos/s: 50 left -> 5 s
            assert overall.seconds_left() == 95.0  # max(100 - 5, 5)


def test_trial_lines_land_on_their_own_lines_above_the_bars() -> None:
    """A real top-tuning search (3 trials) inside a run's display on a terminal console: every trial line is printed
    through the display's console, so it starts a line of its own (before, they went to another console and were
    glued onto the bar)."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    x[np.arange(60), y] += 3.0
    config = TopTuneConfig(trials=3, trial_epochs=2, trial_repeats=1, final_max_epochs=3, patience=2,
                           photos_per_trial=None, widths=(16,), layers=(2,))
    with run_display(console) as display:
        assert display is not None and live_console() is console
        display.add_task("run", total=1, count="0/1 cells", detail="", left="")
        result = toptune(x[::2], y[::2], x[1::2], y[1::2], config=config, progress=True)
    assert result.trials_run == 3
    lines = ANSI.sub("", screen.getvalue()).replace("\r", "\n").splitlines()
    trial_lines = [line for line in lines if "trial " in line and "val acc" in line]
    assert len({line.split("]")[0] for line in trial_lines}) == 3  # trials 0, 1 and 2, each shown
    assert all(line.startswith("trial ") for line in trial_lines), trial_lines
    assert any(line.startswith("final head: val acc") for line in lines)
