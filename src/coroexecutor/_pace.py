"""max_per_second and burst, one copy for both executors (and, per key, for PerKey):
the Generic Cell Rate Algorithm (GCRA, ITU-T I.371; the "virtual scheduling" form)."""

from __future__ import annotations

import asyncio
import math

__all__ = ("_Pace",)


class _Pace:
    """The rate limit's clock: starts spaced ``1 / rate`` apart, with up to ``burst`` of
    them at once after an idle spell.

    ``tat`` is GCRA's theoretical arrival time: when the next start would be due if
    starts came exactly at the rate.  A start may happen from ``tat - (burst - 1) /
    rate`` on; each start moves ``tat`` on by ``1 / rate`` from itself or from now,
    whichever is later.  With ``burst=1`` that is "one start per interval, none
    banked".  A start is claimed when it happens, not booked ahead: a timer that fires
    late (a busy loop) then delays the starts after it instead of bunching them.
    Whoever waits for its turn re-checks after each sleep, so two waiters woken together
    never start together beyond the burst.
    """

    __slots__ = ("interval", "tat", "tolerance")

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.tat = -math.inf  # loop time the next start is due at the rate

    def next_at(self) -> float:
        """The loop time from which the next start may happen."""
        return self.tat - self.tolerance

    def claim(self, now: float) -> None:
        self.tat = max(self.tat, now) + self.interval

    async def turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until a start may happen; the caller claims it, with no await in between."""
        # A deadline that others move, not an event to wait for: sleep and re-check.
        while (wait := self.next_at() - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
