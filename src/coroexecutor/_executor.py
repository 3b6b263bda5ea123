"""CoroutineExecutor: the context manager, shutdown, fail-fast and the whole-executor timeout.

The engine (``_engine``) runs jobs; the rules both executors share (options, exit,
fail-fast, which error wins, the deadline, the on_error hook) live in ``_lifecycle``,
following ``asyncio.TaskGroup`` wherever the two can be compared.  This module puts
them together and adds what only CoroutineExecutor has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Literal, TypeVar

from ._adaptive import AdaptiveLimit, _Limiter
from ._engine_choice import _Engine
from ._jobs import _check_fn, _JobMaker, _State
from ._keyed import PerKey, _KeyedView, _Keys
from ._lifecycle import ExecutorFull, ExecutorStats, _check_count, _Lifecycle, _Options
from ._retry import Retry, _RetryCount

__all__ = ("CoroutineExecutor", "ExecutorFull", "ExecutorStats")

T = TypeVar("T")

_CancelledError = asyncio.CancelledError


class CoroutineExecutor(_Engine, _Lifecycle):
    """Run coroutine functions with at most ``max_workers`` of them in flight at once.

    ``async with CoroutineExecutor(max_workers=1000) as exe: await exe.submit(fn, x)``
    """

    def __init__(
        self,
        max_workers: int | AdaptiveLimit = 1000,
        *,
        per_key: PerKey | None = None,
        suppress_task_errors: bool = False,
        timeout: float | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        copy_context: bool = False,
        job_timeout: float | None = None,
        max_per_second: float | None = None,
        burst: int = 1,
        max_pending: int | None = None,
        errors: Literal["first", "group"] = "first",
        on_error: Callable[[asyncio.Future[Any], BaseException], object] | None = None,
        progress: bool | int = False,
        retry: Retry | None = None,
    ) -> None:
        adaptive = max_workers if isinstance(max_workers, AdaptiveLimit) else None
        if adaptive is None:
            _check_count("max_workers", max_workers)
        if per_key is not None and not isinstance(per_key, PerKey):
            raise TypeError(f"per_key must be a PerKey(...) or None, got {per_key!r}")
        # Each constructor spells out the options it takes, for its users; checking
        # them is _Options.check's, once for both executors.
        options = _Options.check(
            suppress_task_errors=suppress_task_errors,
            timeout=timeout,
            job_timeout=job_timeout,
            initializer=initializer,
            initargs=initargs,
            max_per_second=max_per_second,
            burst=burst,
            max_pending=max_pending,
            errors=errors,
            on_error=on_error,
            progress=progress,
            retry=retry,
        )
        # max_workers=AdaptiveLimit(...): its limiter sets the limit (_resized).
        self._adaptive = None if adaptive is None else _Limiter(adaptive, self._resized)
        super().__init__(
            self._adaptive.value if self._adaptive is not None else max_workers,  # type: ignore[arg-type]
            bool(copy_context),
        )
        self._init_lifecycle(options)
        self._max_pending = options.max_pending
        self._pace = options.pace()
        self._retried = _RetryCount()
        maker = _JobMaker(
            options.initializer,
            options.initargs,
            options.job_timeout,
            None if options.retry is None else (options.retry, self._retried),
            () if self._adaptive is None else (self._adaptive,),
        )
        if maker.wraps():
            # Only then does a job get a wrapper coroutine: the plain path pays nothing.
            self._job_factory = maker
        self._keys = None if per_key is None else _Keys(self, per_key, maker)
        self._started_at = time.monotonic()  # the timeout counts from here, or from entry
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ public API
    @property
    def max_workers(self) -> int:
        """How many jobs may run at once: the limit now in force.  Settable while
        running, unless an AdaptiveLimit sets it (then it is read-only).

        Growing takes effect at once and wakes blocked submitters (and queued jobs);
        shrinking lets running jobs finish and starts no new one until the executor
        is under the new limit.
        """
        return self._limit

    @max_workers.setter
    def max_workers(self, value: int) -> None:
        if self._adaptive is not None:
            raise AttributeError(
                "max_workers is set by the executor's AdaptiveLimit; it cannot be set by hand"
            )
        self._resized(_check_count("max_workers", value))

    def _resized(self, value: int) -> None:
        self._limit = value
        self._refresh_gate()
        if self._waiters:
            self._admit()

    def keyed(self, key: Hashable) -> _KeyedView:
        """The executor for the jobs of one key, under ``per_key``'s limit for that key:
        ``await exe.keyed(host).submit(fetch, url)``; also ``submit_nowait``, ``map``
        and ``map_unordered``.  A key at its limit waits (or queues) on its own, never
        in front of other keys' jobs."""
        if self._keys is None:
            raise ValueError(
                "keyed() needs per_key: CoroutineExecutor(per_key=PerKey(max_workers=...))"
            )
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"a key must be hashable, got {type(key).__name__} {key!r}") from None
        return _KeyedView(self, key)

    async def _keyed_submit(
        self, key: Hashable, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        if not callable(fn):
            _check_fn(fn, "submit")
        assert self._keys is not None
        return await self._keys.submit(key, fn, args, kwargs, True)

    def _keyed_submit_nowait(
        self, key: Hashable, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        if not callable(fn):
            _check_fn(fn, "submit_nowait")
        assert self._keys is not None
        return self._keys.submit_nowait(key, fn, args, kwargs, True)

    def _submit_keyed_for_map(
        self, key: Hashable, fn: Any, args: tuple[Any, ...]
    ) -> Awaitable[asyncio.Future[Any]]:
        assert self._keys is not None
        return self._keys.submit_for_map(key, fn, args)

    def stats(self) -> ExecutorStats:
        """The job counts now, as a frozen ExecutorStats."""
        pending = self._pending
        running = self._suspended  # a job counts as running once it first suspends
        done = self._completed + self._failed + self._cancelled
        return ExecutorStats(
            submitted=pending + running + done,
            pending=pending,
            running=running,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            max_workers=self._limit,
            retried=self._retried.n,
            keys=0 if self._keys is None else self._keys.active,
        )

    def _used(self) -> bool:
        return self._bound()

    async def _prepare_shutdown(self) -> bool:
        if not self._bound():  # never used: nothing to stop
            self._state = _State.CLOSED
            return False
        return True

    def _stop_without_waiting(self) -> None:
        self._stop_idle_workers()

    async def __aenter__(self) -> CoroutineExecutor:
        self._claim_entry()
        self._started_at = time.monotonic()
        self._bind()
        self._entry_done()
        return self

    # ------------------------------------------------------------------ internals
    def _bind(self) -> None:
        super()._bind()
        if self._progress is not None:
            self._progress.start(self._loop)
        if self._timeout is not None:
            remaining = self._timeout - (time.monotonic() - self._started_at)
            self._timer = self._loop.call_later(max(remaining, 0.0), self._on_timeout)

    def _close(self) -> None:
        if self._state is _State.OPEN:
            self._state = _State.CLOSING
            self._close_gate()
            if self._keys is not None:
                self._keys.close()

    def _cancel_all(self) -> None:
        """Cancel every unfinished job; their CancelledErrors are not job errors."""
        self._aborting = True
        self._close()
        if self._keys is not None:
            self._keys.cancel()
        self._cancel_jobs()

    def _full_error(self) -> Exception:
        return ExecutorFull(
            f"{self!r}: no free worker and {self._pending} jobs already queued "
            f"(max_pending={self._max_pending})"
        )

    async def _finish(self) -> BaseException | None:
        """Wait until every job and worker has ended.

        Returns the CancelledError to propagate when the waiting task was cancelled
        by someone else (the jobs are cancelled and still awaited then); our own
        cancellation of the body (fail-fast, timeout) is absorbed.
        """
        propagate: BaseException | None = None
        loop = self._loop
        while self._suspended or self._pending or self._live_first is not None:
            if not self._suspended and not self._pending:
                self._close()
                self._stop_idle_workers()
            try:
                if self._suspended or self._pending:
                    if self._drained is None or self._drained.done():
                        self._drained = loop.create_future()
                    await self._drained
                else:
                    if self._workers_gone is None or self._workers_gone.done():
                        self._workers_gone = loop.create_future()
                    await self._workers_gone
            except _CancelledError as ex:
                outside = self._finish_interrupted(ex)
                if outside is not None:
                    propagate = outside
        self._close()
        self._state = _State.CLOSED
        if self._progress is not None:
            self._progress.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return propagate

    def _check_map_fn(self, fn: Any, what: str) -> None:
        if not callable(fn):
            _check_fn(fn, what)
