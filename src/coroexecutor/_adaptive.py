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
_TOLERANCE = 1.25
_SLACK = 0.001
_OVERLOAD_CUT = 0.9  # the cut on an overload error (Netflix's AIMDLimit's backoff ratio)
_MIN_CUT = 0.5  # the deepest cut on latency (TCP's on a loss)
_PROBE_WINDOWS = 50  # re-learn the no-load latency every this many windows
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
    _MIN_WINDOW) by the window's median: a queue at the service delays every request,
    while the noise of a busy machine or of a jittery service delays some.  Its
    reference is the no-load latency, the lowest smoothed median seen (smoothed as TCP
    smooths its round-trip time, RFC 6298), plus twice the windows' usual spread, so
    that a service whose latency varies a lot is not taken for a congested one.
    """

    __slots__ = (
        "_base",
        "_epoch",
        "_limit",
        "_on_change",
        "_overload",
        "_rttvar",
        "_samples",
        "_slow_start",
        "_srtt",
        "_target",
        "_window",
        "_windows",
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
        self._windows = 0
        self._srtt = math.nan  # smoothed window median (uncongested windows)
        self._rttvar = 0.0  # smoothed deviation of the window medians from _srtt
        self._base = math.inf  # the no-load latency: the lowest _srtt seen
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
        elif 2 * self.in_flight + 2 >= self._limit:
            # Grow only a limit that is used: an idle limit says nothing of the service.
            self._grow()

    def _threshold(self) -> float:
        if self._target is not None:
            return self._target
        return self._base * _TOLERANCE + 2 * self._rttvar + _SLACK

    def _judge(self) -> None:
        """A window is complete: grow, or cut if its median latency is too high."""
        samples = self._samples
        samples.sort()
        median = samples[len(samples) // 2]
        samples.clear()
        self._windows += 1
        if self._base == math.inf:  # the first window: the reference
            self._srtt = self._base = median
        threshold = self._threshold()
        if median > threshold:
            self._cut(max(_MIN_CUT, min(_OVERLOAD_CUT, threshold / median)))
            return
        self._rttvar += (abs(median - self._srtt) - self._rttvar) / 4
        self._srtt += (median - self._srtt) / 8
        if self._srtt < self._base or self._windows % _PROBE_WINDOWS == 0:
            # Lower, or time to re-learn it (the service may have got slower for good,
            # as Netflix's Vegas limit re-probes its no-load latency).
            self._base = self._srtt
        self._grow()
        # The next window: one round trip's samples at the limit it starts with (fixed
        # now, or slow start, which grows the limit per sample, would never judge).
        self._window = max(_MIN_WINDOW, self.value)

    def _grow(self) -> None:
        if self._slow_start:
            self._set(self._limit + 1.0)  # one per success: doubles per round trip
        else:
            self._set(self._limit + 1.0 / self._limit)  # one per round trip

    def _cut(self, factor: float) -> None:
        self._slow_start = False
        self._epoch += 1
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
