"""Progress that says how long: "step i/n, ~N s left" from the mean step time so far.

A long stage (the method search, sensitivity, the latency race) knows how many steps it
has done and, mostly, how many it will do; the time left is the mean time of the steps
so far times the steps left, which is what a user waiting on a 2-core host needs to
decide whether to wait. Steps of unknown count report the elapsed time instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def time_left(elapsed: float, done: float, total: float) -> str:
    """``"~N left"`` for work `done` of `total` in `elapsed` seconds at the pace so far;
    empty before any work is done."""
    if done <= 0 or total <= done:
        return ""
    return f"~{_duration(elapsed / done * (total - done))} left"


class StepEstimate:
    """Calls ``sink`` with ``"<label> <done>/<total>: <what>, ~<left> left"`` per step.

    ``step()`` is called when a step *starts*; the estimate comes from the steps that
    finished before it (none for the first step: no estimate yet)."""

    def __init__(self, sink: Callable[[str], None] | None, label: str,
                 total: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.label, self.total, self.clock = sink, label, total, clock
        self.start = clock()
        self.started = 0

    def message(self, what: str = "") -> str:
        elapsed = self.clock() - self.start
        done = self.started  # steps finished before the one starting now
        self.started += 1
        head = f"{self.label} {self.started}" + (f"/{self.total}" if self.total else "")
        text = f"{head}: {what}" if what else head
        if self.total and done:
            left = elapsed / done * max(self.total - done, 0)
            return f"{text}, ~{_duration(left)} left"
        return f"{text}, {_duration(elapsed)} so far" if done else text

    def step(self, what: str = "") -> None:
        message = self.message(what)
        if self.sink is not None:
            self.sink(message)
