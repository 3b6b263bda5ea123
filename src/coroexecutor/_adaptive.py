"""AdaptiveLimit: a concurrency limit that finds and holds what the service can take.

The algorithm is AIMD, additive increase and multiplicative decrease (Chiu and Jain,
1989), as TCP runs it (RFC 5681: slow start, then congestion avoidance, at most one cut
per window), with two congestion signals: an ``overload`` exception (the dropped
packet), and latency grown past its no-load baseline, the observed minimum, as TCP
Vegas (Brakmo and Peterson, 1995) and Netflix's concurrency-limits judge it, or past
``target_latency``.  The README says why this one.

One ``_Limiter`` per limit in force: the executor's (``max_workers=AdaptiveLimit(...)``)
or one per key (``PerKey(AdaptiveLimit(...))``).  Jobs report each attempt to it
(``_jobs._observed``); it tells its owner when the whole-number limit moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable

__all__ = ("AdaptiveLimit", "_Limiter")

# A latency this many times the no-load minimum (plus _SLACK seconds, so that a job of a
# few microseconds is not judged by the loop's noise) is congestion.
_TOLERANCE = 1.2
_SLACK = 0.0005
_OVERLOAD_CUT = 0.9  # the cut on an overload error (Netflix's AIMDLimit's backoff ratio)
_MIN_CUT = 0.5  # the deepest cut on latency (TCP's on a loss)
_MIN_WINDOW = 16  # samples: the smallest window a latency verdict is taken on


@dataclasses.dataclass(frozen=True, slots=True)
class AdaptiveLimit:
    """A concurrency limit that adapts while jobs run, between ``min_workers`` and
    ``max_workers``, starting at ``initial`` (default ``min_workers``).

    It grows while jobs succeed with a latency near the lowest seen (or under
    ``target_latency`` seconds, when given), doubling per round trip at first and by
    one per round trip once it has been cut; it is cut by 10 % when a job raises one of
    the ``overload`` exception types (an HTTP 429, say), and by up to half when latency
    grows, at most once per round trip.  A lower limit never cancels a running job:
    fewer start after it ends.
    """

    min_workers: int = 1
    max_workers: int = 1000
    _: dataclasses.KW_ONLY
    initial: int | None = None
    target_latency: float | None = None
    overload: type[BaseException] | tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        for name in ("min_workers", "max_workers", "initial"):
            value = getattr(self, name)
            if value is None and name == "initial":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"AdaptiveLimit {name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"AdaptiveLimit {name} must be 1 or more, got {value!r}")
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"AdaptiveLimit min_workers={self.min_workers!r} is above "
                f"max_workers={self.max_workers!r}"
            )
        if self.initial is not None and not self.min_workers <= self.initial <= self.max_workers:
            raise ValueError(
                f"AdaptiveLimit initial={self.initial!r} is outside "
                f"[min_workers={self.min_workers}, max_workers={self.max_workers}]"
            )
        target = self.target_latency
        if target is not None:
            if isinstance(target, bool) or not isinstance(target, (int, float)):
                raise TypeError(
                    f"AdaptiveLimit target_latency must be a number of seconds or None, "
                    f"got {target!r}"
                )
            if not 0 < target < math.inf:
                raise ValueError(
                    f"AdaptiveLimit target_latency must be a finite number > 0, got {target!r}"
                )
            object.__setattr__(self, "target_latency", float(target))
        overload = self.overload if isinstance(self.overload, tuple) else (self.overload,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in overload):
            raise TypeError(
                "AdaptiveLimit overload must be an exception type or a tuple of them, "
                f"got {self.overload!r}"
            )
        if any(issubclass(t, asyncio.CancelledError) for t in overload):
            raise ValueError("AdaptiveLimit overload cannot include CancelledError")
        object.__setattr__(self, "overload", overload)


class _Limiter:
    """The state of one adaptive limit: ``value`` is the limit in force (an int).

    ``started()`` is called as an attempt starts and returns its token; ``ended(token,
    exc)`` as it ends.  Only attempts started since the last cut (the current
    ``epoch``) count: what ran under the old limit says nothing about the new one, and
    a burst of rejections from it cuts once, not once each.

    Latency is judged per window (about one round trip of successes, at least
    _MIN_WINDOW) by the window's mean.  Its reference is the no-load latency (the
    lowest smoothed mean seen, smoothed as TCP smooths its round-trip time, RFC 6298)
    times _TOLERANCE, plus three standard errors of the mean (from the latencies'
    spread near the no-load latency), so that a service whose latency varies a lot is
    not taken for a congested one.  Two windows in a row over it cut the limit.
    """

    __slots__ = (
        "_base",
        "_epoch",
        "_limit",
        "_on_change",
        "_overload",
        "_samples",
        "_slow_start",
        "_spread",
        "_srtt",
        "_suspect",
        "_target",
        "_window",
        "high",
        "in_flight",
        "low",
        "value",
    )

    def __init__(self, config: AdaptiveLimit, on_change: Callable[[int], object] | None = None):
        self.low = config.min_workers
        self.high = config.max_workers
        self._limit = float(config.initial if config.initial is not None else config.min_workers)
        self.value = int(self._limit)
        self._target = config.target_latency
        self._overload: tuple[type[BaseException], ...] = config.overload  # type: ignore[assignment]
        self._on_change = on_change
        self._epoch = 0
        self._slow_start = True
        self._samples: list[float] = []  # this window's latencies (successes of this epoch)
        self._window = max(_MIN_WINDOW, self.value)  # how many make the window
        self._srtt = math.nan  # smoothed window median (uncongested windows)
        self._base = math.inf  # the no-load latency: the lowest _srtt seen
        self._suspect = 0.0  # the median of the last window, if it looked congested
        self._spread = 0.0  # the samples' spread (0.93 IQR) near the no-load latency
        self.in_flight = 0  # attempts started and not ended

    def started(self) -> tuple[int, float]:
        self.in_flight += 1
        return self._epoch, time.monotonic()

    def ended(self, token: tuple[int, float], exc: BaseException | None) -> None:
        self.in_flight -= 1
        epoch, t0 = token
        if exc is not None:
            if epoch == self._epoch and isinstance(exc, self._overload):
                self._cut(_OVERLOAD_CUT)
            return  # other failures (and cancellations) say nothing about the load
        if epoch != self._epoch:
            return
        samples = self._samples
        samples.append(time.monotonic() - t0)
        if len(samples) >= self._window:
            self._judge()
        elif not self._suspect and 2 * self.in_flight + 2 >= self._limit:
            # Grow only a limit that is used (an idle limit says nothing of the
            # service), and not while the last window looked congested.
            self._grow()

    def _judge(self) -> None:
        """A window is complete: grow, or, if its mean latency is too high twice in a
        row, cut (one slow window is a pause of the machine more often than a queue).

        The mean, not the median: past the service's capacity its throughput is fixed,
        so by Little's law the mean latency grows with every request added, while a
        queue that delays only some requests leaves the median where it was."""
        samples = self._samples
        n = len(samples)
        mean = math.fsum(samples) / n
        spread = math.sqrt(max(0.0, math.fsum(x * x for x in samples) / n - mean * mean))
        samples.clear()
        self._window = max(_MIN_WINDOW, self.value)
        if self._base == math.inf:  # the first window: the reference
            self._srtt = self._base = mean
            self._spread = spread
        if self._target is not None:
            threshold = self._target
        else:
            # The service's own jitter (its latencies' standard deviation, measured near
            # the no-load latency: a queue spreads latencies too, which must not raise
            # the bar) gives the mean of n samples a standard error of spread /
            # sqrt(n): allow three.
            threshold = self._base * _TOLERANCE + 3 * self._spread / math.sqrt(n) + _SLACK
        if mean <= threshold:
            self._suspect = 0.0
            self._srtt += (mean - self._srtt) / 8
            if self._srtt < self._base:
                self._base = self._srtt
            if mean <= self._base * 1.1:
                self._spread += (spread - self._spread) / 8
            self._grow()
            return
        if self._target is None and self.value <= self.low:
            # Slow even at the floor: our load is not the cause, the service got slower
            # for good.  Its no-load latency is this, and the search starts again.
            self._srtt = self._base = mean
            self._spread = spread
            self._suspect = 0.0
            self._slow_start = True
            return
        if not self._suspect:
            self._suspect = mean  # no growth on this one; cut if the next agrees
            return
        worst = min(mean, self._suspect)
        self._suspect = 0.0
        self._cut(max(_MIN_CUT, min(_OVERLOAD_CUT, threshold / worst)))

    def _grow(self) -> None:
        if self._slow_start:
            self._set(self._limit + 1.0)  # one per success: doubles per round trip
        else:
            self._set(self._limit + 1.0 / self._limit)  # one per round trip

    def _cut(self, factor: float) -> None:
        self._slow_start = False
        self._epoch += 1
        self._suspect = 0.0
        self._samples.clear()
        self._set(self._limit * factor)
        self._window = max(_MIN_WINDOW, self.value)

    def _set(self, limit: float) -> None:
        self._limit = min(float(self.high), max(float(self.low), limit))
        value = int(self._limit)
        if value != self.value:
            self.value = value
            if self._on_change is not None:
                self._on_change(value)

    def __repr__(self) -> str:
        return f"<_Limiter value={self.value} in [{self.low}, {self.high}]>"
