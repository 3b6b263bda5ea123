"""Retry: a job that raises one of ``on`` is called again, after an exponential backoff.

One copy for both executors: ``_retrying`` runs a job's attempts, where the job runs (in
CoroutineExecutor's worker, or in a ShardedExecutor's shard).  The job holds its worker
while it backs off (the README says why).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ("Retry", "_RetryCount", "_retrying")

# Never retried, whatever ``on`` says: a cancellation is the caller's decision, and
# KeyboardInterrupt / SystemExit stop the executor.
_NEVER_RETRIED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)
_sleep = asyncio.sleep  # the backoff's wait (a test puts a fake clock here)


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Call a failed job again with the same arguments, up to ``attempts`` calls in all.

    ``on``: the exception types that are retried (a type or a tuple of types); others
    fail the job at once, and so does a cancellation, always.  Before the n-th retry
    the job waits ``min(max_backoff, backoff * 2 ** (n - 1))`` seconds, or, with
    ``jitter`` (full jitter, as in the AWS Architecture Blog's "Exponential Backoff And
    Jitter"), a uniformly random part of it.  The job's handle, ``on_error`` and
    fail-fast see only the final outcome.
    """

    attempts: int = 3
    _: dataclasses.KW_ONLY
    on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.1
    max_backoff: float = 10.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"Retry attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"Retry attempts must be 1 or more, got {self.attempts!r}")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            raise TypeError(
                f"Retry on must be an exception type or a tuple of them, got {self.on!r}"
            )
        object.__setattr__(self, "on", on)
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Retry {name} must be a number of seconds, got {value!r}")
            if not 0 <= value < math.inf:
                raise ValueError(f"Retry {name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.jitter, bool):
            raise TypeError(f"Retry jitter must be True or False, got {self.jitter!r}")

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry!r}")
        cap = (
            self.max_backoff
            if retry > 64
            else min(self.max_backoff, self.backoff * 2.0 ** (retry - 1))
        )
        return cap * rand() if self.jitter else cap


class _RetryCount:
    """How many retries an executor has made (``stats().retried``)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


async def _retrying(
    retry: Retry,
    count: _RetryCount,
    attempt: Callable[[], Awaitable[Any]],
    mistakes: tuple[type[BaseException], ...] = (),
) -> Any:
    """Run ``attempt()`` until it returns, fails with what ``retry`` does not retry (a
    cancellation, or one of ``mistakes``: the caller's, which no retry mends), or has
    been tried ``retry.attempts`` times."""
    on = retry.on
    never = _NEVER_RETRIED + mistakes
    n = 1
    while True:
        try:
            return await attempt()
        except on as exc:
            if isinstance(exc, never):
                raise
            if n >= retry.attempts:
                if n > 1:
                    exc.add_note(f"coroexecutor: failed {n} times (Retry(attempts={n}))")
                raise
        count.n += 1
        await _sleep(retry.delay(n))
        n += 1
