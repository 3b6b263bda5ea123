"""CoroutineExecutor: the context manager, shutdown, fail-fast and the whole-executor timeout.

The engine (``_engine``) runs jobs; this module decides what a job's failure, the body's
exception, a cancellation or the deadline do to the rest, following
``asyncio.TaskGroup`` wherever the two can be compared.  The rules ShardedExecutor
shares (exit, fail-fast, which error wins) live in ``_outcome``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

from ._engine_choice import _Engine
from ._jobs import _BASE_ERRORS, _check_fn, _State, _wrapped_job
from ._map import _map, _map_unordered, _open_sources
from ._outcome import _Outcome

__all__ = ("CoroutineExecutor", "ExecutorFull", "ExecutorStats")

T = TypeVar("T")

_CancelledError = asyncio.CancelledError


class ExecutorFull(Exception):
    """submit_nowait() found no free worker and its queue at max_pending."""


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutorStats:
    """A snapshot of an executor's job counts (see ``CoroutineExecutor.stats()``).

    ``submitted == pending + running + completed + failed + cancelled`` always.
    """

    submitted: int
    pending: int  # queued by submit_nowait(), not started yet
    running: int  # started and not ended (a job is counted once it first suspends)
    completed: int
    failed: int
    cancelled: int
    max_workers: int


def _positive_number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {value!r}")
    if not value > 0 or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number greater than 0, got {value!r}")
    return float(value)


def _check_max_workers(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_workers must be an int, got {value!r}")
    if value <= 0:
        raise ValueError("max_workers must be greater than 0")
    return value


class CoroutineExecutor(_Engine, _Outcome):
    """Run coroutine functions with at most ``max_workers`` of them in flight at once.

    ``async with CoroutineExecutor(max_workers=1000) as exe: await exe.submit(fn, x)``
    """

    def __init__(
        self,
        max_workers: int = 1000,
        *,
        suppress_task_errors: bool = False,
        timeout: float | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        copy_context: bool = False,
        job_timeout: float | None = None,
        max_per_second: float | None = None,
        max_pending: int | None = None,
        errors: Literal["first", "group"] = "first",
        on_error: Callable[[asyncio.Future[Any], BaseException], object] | None = None,
        progress: bool | int = False,
    ) -> None:
        _check_max_workers(max_workers)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
            if not timeout > 0 or math.isnan(timeout):
                raise ValueError(f"timeout must be greater than 0 seconds, got {timeout!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        # Any sequence, as concurrent.futures takes; a string is refused, being almost
        # always initargs="x" written for initargs=("x",).
        if not isinstance(initargs, Sequence) or isinstance(initargs, (str, bytes)):
            raise TypeError(
                f"initargs must be a sequence of arguments (a tuple or a list), "
                f"got {type(initargs).__name__} {initargs!r}"
            )
        initargs = tuple(initargs)
        job_timeout = _positive_number("job_timeout", job_timeout)
        rate = _positive_number("max_per_second", max_per_second)
        if max_pending is not None:
            if isinstance(max_pending, bool) or not isinstance(max_pending, int):
                raise TypeError(f"max_pending must be an int or None, got {max_pending!r}")
            if max_pending < 0:
                raise ValueError(f"max_pending must be 0 or more, got {max_pending!r}")
        if errors not in ("first", "group"):
            raise ValueError(f'errors must be "first" or "group", got {errors!r}')
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, got {on_error!r}")
        super().__init__(max_workers, bool(copy_context))
        self._suppress = bool(suppress_task_errors)
        self._timeout = timeout
        self._max_pending = max_pending
        self._interval = None if rate is None else 1.0 / rate
        self._init_outcome(group=errors == "group")
        self._on_error = on_error
        if initializer is not None or job_timeout is not None:
            # Only then does a job get a wrapper coroutine: the plain path pays nothing.
            self._job_factory = functools.partial(_wrapped_job, initializer, initargs, job_timeout)
        if not isinstance(progress, int) or (type(progress) is not bool and progress <= 0):
            raise TypeError(
                "progress must be True, False, or the number of jobs to expect "
                f"(an int > 0, for the bar's total and ETA), got {progress!r}"
            )
        self._progress: Any = None
        if progress:
            from ._progress import Progress  # ImportError naming the extra, without tqdm

            total = 0 if progress is True else progress
            self._progress = Progress(self, total)
        self._started_at = time.monotonic()  # the timeout counts from here, or from entry
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ public API
    @property
    def max_workers(self) -> int:
        """How many jobs may run at once.  Settable while running.

        Growing takes effect at once and wakes blocked submitters (and queued jobs);
        shrinking lets running jobs finish and starts no new one until the executor
        is under the new limit.
        """
        return self._limit

    @max_workers.setter
    def max_workers(self, value: int) -> None:
        self._limit = _check_max_workers(value)
        self._refresh_gate()
        if self._waiters:
            self._admit()

    def stats(self) -> ExecutorStats:
        """The job counts now, as a frozen ExecutorStats."""
        pending = self._pending
        running = self._active
        done = self._completed + self._failed + self._cancelled
        return ExecutorStats(
            submitted=pending + running + done,
            pending=pending,
            running=running,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            max_workers=self._limit,
        )

    def map(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
    ) -> AsyncIterator[T]:
        """Run ``fn`` over the zipped iterables; yield the results in input order.

        Iterables may be sync or async, mixed.  The input is pulled lazily (about
        ``max_workers`` items in flight plus a reorder buffer of as many), so an
        endless generator is fine.  A job's error is raised from the ``async for`` in
        its turn, after every earlier result, and the map's other jobs are cancelled;
        so are they when the loop is left early or the generator is closed.
        """
        return _map(self, fn, self._map_input("map", fn, iterables))

    def map_unordered(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
    ) -> AsyncIterator[T]:
        """Like map(), but yield each result as soon as its job ends.

        The first job error (in the order jobs end) is raised from the ``async for``
        and the map's other jobs are cancelled; leaving early cancels them too.
        """
        return _map_unordered(self, fn, self._map_input("map_unordered", fn, iterables))

    def _map_input(
        self, what: str, fn: Any, iterables: tuple[Iterable[Any] | AsyncIterable[Any], ...]
    ) -> list[Any]:
        if not callable(fn):
            _check_fn(fn, what)
        sources = _open_sources(what, iterables)
        if self._progress is not None:
            self._progress.add_total(iterables)
        return sources

    async def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; with ``wait``, wait for every job to end.

        ``cancel_futures`` cancels the unfinished jobs first.  ``wait=False`` cancels
        them and returns at once without raising.  With ``wait=True`` the first job
        error (fail-fast mode) or the executor's TimeoutError is raised here.
        """
        if not self._bound():
            self._state = _State.CLOSED
            return
        self._close()
        if cancel_futures or not wait:
            self._cancel_all()
        if not wait:
            self._stop_idle_workers()
            return
        cancelled = await self._finish()
        if cancelled is not None:
            raise cancelled
        self._raise_error()

    async def __aenter__(self) -> CoroutineExecutor:
        self._claim_entry(used=self._bound())
        self._started_at = time.monotonic()
        self._bind()
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

    def _cancel_all(self) -> None:
        """Cancel every unfinished job; their CancelledErrors are not job errors."""
        self._aborting = True
        self._close()
        self._cancel_jobs()

    def _job_failed(self, exc: BaseException, report: bool, after_cancel: bool = False) -> None:
        if isinstance(exc, _BASE_ERRORS):
            if self._base_error is None:
                self._base_error = exc
            self._abort(exc)
            return
        if not report or self._suppress or self._state is _State.CLOSED:
            return  # absorbed, or owned by a map
        is_error = not isinstance(exc, _CancelledError)
        if self._group and is_error:
            self._errors.append(exc)  # as TaskGroup collects errors raised while cancelled
        if self._aborting or after_cancel:
            # A consequence of a cancellation (ours, or of the job's handle), not what
            # caused it: it never becomes the first error.
            if not self._aborting:
                self._abort(_CancelledError())
            return
        self._abort(exc)

    def _job_error(self, handle: asyncio.Future[Any], exc: BaseException) -> None:
        on_error = self._on_error
        if on_error is None:
            return
        try:
            on_error(handle, exc)
        except Exception as err:
            # A broken hook must not break the executor: report it as asyncio reports
            # an error in a callback.
            self._loop.call_exception_handler(
                {
                    "message": f"on_error hook {on_error!r} raised",
                    "exception": err,
                    "future": handle,
                }
            )

    def _full_error(self) -> Exception:
        return ExecutorFull(
            f"{self!r}: no free worker and {self._pending} jobs already queued "
            f"(max_pending={self._max_pending})"
        )

    def _on_timeout(self) -> None:
        self._timer = None
        if self._state is _State.CLOSED:
            return
        self._timed_out = TimeoutError(f"{self!r} timed out after {self._timeout} s")
        self._abort(self._timed_out)

    async def _finish(self) -> BaseException | None:
        """Wait until every job and worker has ended.

        Returns the CancelledError to propagate when the waiting task was cancelled
        by someone else (the jobs are cancelled and still awaited then); our own
        cancellation of the body (fail-fast, timeout) is absorbed.
        """
        propagate: BaseException | None = None
        loop = self._loop
        while self._active or self._pending or self._tasks:
            if not self._active and not self._pending:
                self._close()
                self._stop_idle_workers()
            try:
                if self._active or self._pending:
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

    def __repr__(self) -> str:
        st = self.stats()
        return (
            f"<CoroutineExecutor state={self._state.value} max_workers={st.max_workers} "
            f"submitted={st.submitted} pending={st.pending} running={st.running} "
            f"completed={st.completed} failed={st.failed} cancelled={st.cancelled}>"
        )
