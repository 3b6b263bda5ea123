"""max_per_second, one copy for both executors: job starts spaced 1 / rate apart."""

from __future__ import annotations

import asyncio
import math

__all__ = ("_Pace",)


class _Pace:
    """The rate limit's clock.

    A start is claimed when it happens, not booked ahead: a timer that fires late (a
    busy loop) then delays the starts after it instead of bunching them.  Whoever waits
    for its turn re-checks after each sleep, so two waiters woken together never start
    together.
    """

    __slots__ = ("interval", "last")

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.last = -math.inf  # loop time of the last start

    def next_at(self) -> float:
        """The loop time from which the next start may happen."""
        return self.last + self.interval

    def claim(self, now: float) -> None:
        self.last = now

    async def turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until a start may happen; the caller claims it, with no await in between."""
        # A deadline that others move, not an event to wait for: sleep and re-check.
        while (wait := self.next_at() - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
