"""When a schedule search must stop (train-router --search-minutes), and where it did."""

from __future__ import annotations

import time


class Deadline:
    """When a search must stop (`minutes` after it was made; None: never); `stopped` records where it did."""

    def __init__(self, minutes: float | None, clock=time.monotonic):
        self.minutes, self.clock, self.start = minutes, clock, clock()
        self.stopped: dict | None = None

    def passed(self, where: str) -> bool:
        """True once the time is spent; the first call that finds it so records `where` the search stopped."""
        if self.stopped is not None:
            return True
        if self.minutes is None or self.clock() - self.start < 60.0 * self.minutes:
            return False
        self.stopped = {
            "limit_minutes": self.minutes,
            "after_minutes": (self.clock() - self.start) / 60.0,
            "phase": where,
            "reason": f"the {self.minutes:g}-minute limit (--search-minutes) was reached during {where}",
        }
        return True

    def spent_minutes(self) -> float:
        return (self.clock() - self.start) / 60.0


NEVER = Deadline(None)
