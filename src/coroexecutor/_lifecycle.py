"""The life of an executor, one copy for CoroutineExecutor and ShardedExecutor.

After asyncio.TaskGroup: a job failure (fail-fast) or the executor's deadline cancels
every job and the body; the first failure wins; a cancellation that came from outside
propagates while ours is taken back; KeyboardInterrupt and SystemExit beat everything.
Also here, once: the options both executors take and their validation, the states, the
on_error hook, the deadline, ``repr``, and map()'s input.  The executors differ in how
they cancel their jobs and wait for them, which they provide as ``_cancel_all()`` and
``_finish()``, and in how they check a job function (``_check_map_fn``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ._jobs import _BASE_ERRORS, _State
from ._map import _map, _map_unordered, _open_sources
from ._pace import _Pace
from ._retry import Retry

__all__ = (
    "ExecutorFull",
    "ExecutorStats",
    "_Lifecycle",
    "_Options",
    "_check_count",
    "_positive_number",
)

_CancelledError = asyncio.CancelledError
T = TypeVar("T")


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
    retried: int = 0  # retries made (Retry): calls beyond each job's first
    keys: int = 0  # keys with a job in flight (per_key)


# ---------------------------------------------------------------------- options
def _positive_number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {value!r}")
    if not value > 0 or math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number greater than 0, got {value!r}")
    return float(value)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _Options:
    """The options both executors take, checked once, here."""

    suppress_task_errors: bool
    timeout: float | None  # seconds; float("inf") is no deadline at all
    job_timeout: float | None
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]
    max_per_second: float | None
    burst: int  # starts allowed at once after an idle spell, under max_per_second
    max_pending: int | None
    group: bool  # errors="group"
    on_error: Callable[[asyncio.Future[Any], BaseException], object] | None
    progress: int | None  # None: no bar; 0: a bar of unknown total
    retry: Retry | None

    @classmethod
    def check(  # the executors' constructors repeat these options, for their users
        cls,
        *,
        suppress_task_errors: bool = False,
        timeout: float | None = None,
        job_timeout: float | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        max_per_second: float | None = None,
        burst: int = 1,
        max_pending: int | None = None,
        errors: str = "first",
        on_error: Callable[[asyncio.Future[Any], BaseException], object] | None = None,
        progress: bool | int = False,
        retry: Retry | None = None,
    ) -> _Options:
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
            if not timeout > 0 or math.isnan(timeout):
                raise ValueError(f"timeout must be greater than 0 seconds, got {timeout!r}")
            timeout = None if math.isinf(timeout) else float(timeout)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        # Any sequence, as concurrent.futures takes; a string is refused, being almost
        # always initargs="x" written for initargs=("x",).
        if not isinstance(initargs, Sequence) or isinstance(initargs, (str, bytes)):
            raise TypeError(
                f"initargs must be a sequence of arguments (a tuple or a list), "
                f"got {type(initargs).__name__} {initargs!r}"
            )
        if max_pending is not None:
            if isinstance(max_pending, bool) or not isinstance(max_pending, int):
                raise TypeError(f"max_pending must be an int or None, got {max_pending!r}")
            if max_pending < 0:
                raise ValueError(f"max_pending must be 0 or more, got {max_pending!r}")
        if errors not in ("first", "group"):
            raise ValueError(f'errors must be "first" or "group", got {errors!r}')
        _check_count("burst", burst)
        if burst != 1 and max_per_second is None:
            raise ValueError(f"burst={burst!r} needs max_per_second: it is the rate's burst")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a Retry(...) or None, got {retry!r}")
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, got {on_error!r}")
        if not isinstance(progress, int) or (type(progress) is not bool and progress <= 0):
            raise TypeError(
                "progress must be True, False, or the number of jobs to expect "
                f"(an int > 0, for the bar's total and ETA), got {progress!r}"
            )
        return cls(
            suppress_task_errors=bool(suppress_task_errors),
            timeout=timeout,
            job_timeout=_positive_number("job_timeout", job_timeout),
            initializer=initializer,
            initargs=tuple(initargs),
            max_per_second=_positive_number("max_per_second", max_per_second),
            burst=burst,
            max_pending=max_pending,
            group=errors == "group",
            on_error=on_error,
            progress=None if progress is False else (0 if progress is True else progress),
            retry=retry,
        )

    def pace(self) -> _Pace | None:
        """The executor's rate limit (max_per_second, burst), or None."""
        rate = self.max_per_second
        return None if rate is None else _Pace(rate, self.burst)


def _check_grace(grace: Any, wait: bool, cancel_futures: bool) -> float | None:
    """shutdown()'s grace: None, or seconds (0 or more; inf is None), with wait=True."""
    if grace is None:
        return None
    if isinstance(grace, bool) or not isinstance(grace, (int, float)):
        raise TypeError(f"grace must be a number of seconds or None, got {grace!r}")
    if not grace >= 0:  # also NaN
        raise ValueError(f"grace must be 0 seconds or more, got {grace!r}")
    if not wait:
        raise ValueError("shutdown(wait=False) cancels at once: grace needs wait=True")
    if cancel_futures:
        raise ValueError("shutdown(cancel_futures=True) cancels at once: drop it or grace")
    return None if math.isinf(grace) else float(grace)


# ---------------------------------------------------------------------- the life
class _Lifecycle:
    """Mixin: entry, exit and what it raises, fail-fast, the deadline, the hook."""

    _state: _State
    _loop: asyncio.AbstractEventLoop
    _progress: Any
    _timer: asyncio.TimerHandle | None

    if TYPE_CHECKING:
        _aborting: bool

        def _cancel_all(self) -> None:
            """Cancel every unfinished job (sets ``_aborting``); not a job error."""

        def _finish(self) -> Awaitable[BaseException | None]:
            """Wait for every job; return an outside cancellation to propagate."""

        def _check_map_fn(self, fn: Any, what: str) -> None:
            """Refuse a job function this executor cannot run, before map() starts."""

        def _prepare_shutdown(self) -> Awaitable[bool]:
            """Whether there is anything to shut down (False: never used; now closed)."""

        def _stop_without_waiting(self) -> None:
            """shutdown(wait=False): let what is left end in the background."""

        def _close(self) -> None:
            """Take no new job (CLOSING)."""

        def _used(self) -> bool:
            """Whether a job was submitted, or the executor started, before entry."""

        def stats(self) -> ExecutorStats: ...

        @property
        def _max_in_flight(self) -> int:
            """How many jobs run at once at most: map()'s reorder buffer holds as many."""

        async def _submit_for_map(
            self, fn: Callable[..., Any], args: tuple[Any, ...]
        ) -> asyncio.Future[Any]:
            """submit() for map(): waits for room; the job's errors are the map's."""

    def _init_lifecycle(self, options: _Options) -> None:
        self._options = options
        self._suppress = options.suppress_task_errors
        self._timeout = options.timeout
        self._on_error = options.on_error
        self._progress = None
        if options.progress is not None:
            from ._progress import Progress  # ImportError naming the extra, without tqdm

            self._progress = Progress(self, options.progress)
        self._init_outcome(group=options.group)

    def _init_outcome(self, group: bool = False) -> None:
        self._entered = False
        self._cancel_on_enter = False  # cancel() before entry (as TaskGroup.cancel())
        self._exiting = False
        self._parent_task: asyncio.Task[Any] | None = None
        self._parent_cancel_requested = False
        self._error: BaseException | None = None  # the first job error, or the TimeoutError
        self._base_error: BaseException | None = None  # KeyboardInterrupt / SystemExit
        self._error_raised = False
        self._timed_out: TimeoutError | None = None
        self._group = group  # errors="group": exit raises every job error
        self._errors: list[BaseException] = []

    def _claim_entry(self) -> None:
        """``__aenter__``'s checks: entered once, before any use, inside a task (the one
        fail-fast cancels)."""
        if self._entered:
            raise RuntimeError(f"{self!r} has already been entered")
        if self._used():
            raise RuntimeError(f"{self!r} was used before it was entered; enter it first")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError(f"{self!r} must be entered inside a task")
        self._entered = True
        self._parent_task = task

    def _entry_done(self) -> None:
        """The end of ``__aenter__``: a cancel() that came before entry takes effect."""
        if self._cancel_on_enter:
            self.cancel()

    def cancel(self) -> None:
        """Stop everything, as ``TaskGroup.cancel()`` (Python 3.15) does: every unfinished
        job (queued ones too) and the ``async with`` body are cancelled, and the block
        exits without raising, once the jobs have unwound.  No new job is taken.

        Not an error: the jobs end as cancelled, fail-fast and on_error see nothing,
        and an error that came first is still raised.  Idempotent; a no-op once the
        executor has closed.  Called before the ``async with``, it takes effect on
        entry; on an executor used without ``async with``, it cancels the jobs.
        """
        if not self._entered:
            if not self._used():
                self._cancel_on_enter = True
                return
        elif self._state is _State.CLOSED:
            return
        self._abort(None)

    def _abort(self, error: BaseException | None) -> None:
        """Fail-fast (``error``), or cancel() (None): record the error, cancel
        everything, and cancel the body."""
        if self._error is None and error is not None:
            self._error = error
        if self._aborting:
            return
        self._cancel_all()
        parent = self._parent_task
        if parent is not None and not self._exiting and not parent.done():
            # As TaskGroup does: stop the body wherever it waits (a submit, a sleep).
            self._parent_cancel_requested = True
            parent.cancel()

    def _finish_interrupted(self, ex: BaseException) -> BaseException | None:
        """The task waiting in ``_finish()`` was cancelled: the cancellation to propagate,
        or None for our own cancellation of the body (fail-fast, timeout)."""
        if not self._aborting:
            # Someone else's: the jobs are cancelled and still awaited.
            self._cancel_all()
            return ex
        if not self._parent_cancel_requested or asyncio.current_task() is not self._parent_task:
            return ex
        return None

    async def _finish_at_exit(self) -> BaseException | None:
        return await self._finish()

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Wait for every job, then raise the executor's outcome."""
        self._exiting = True
        error_before_exit = self._error
        if isinstance(exc, _BASE_ERRORS) and self._base_error is None:
            self._base_error = exc
        propagate_cancel: BaseException | None = None
        if isinstance(exc, _CancelledError):
            propagate_cancel = exc
        if exc is not None and not self._aborting:
            # The body raised or was cancelled: every job is cancelled and awaited.
            self._cancel_all()
        # As with TaskGroup, running jobs may still submit while we wait for them (a
        # producer job submitted by the body goes on producing); the executor closes
        # once no job is left.
        cancelled = await self._finish_at_exit()
        if propagate_cancel is None:
            propagate_cancel = cancelled
        parent = self._parent_task
        assert parent is not None
        if self._parent_cancel_requested:
            # We cancelled the body (fail-fast or timeout).  On 3.11 and 3.12 a
            # cancellation the body never reached stays pending after uncancel():
            # take it here, or it would hit the code after the block.
            if getattr(parent, "_must_cancel", False):
                try:
                    await asyncio.sleep(0)
                except _CancelledError:
                    pass
            self._parent_cancel_requested = False
            if parent.uncancel() == 0:
                propagate_cancel = None
        body_error = exc if exc is not None and not isinstance(exc, _CancelledError) else None
        # The first failure wins: a job error that caused the shutdown beats what the
        # body raised because of it; an error of the body's own beats later job errors.
        self._raise_error(body_error, error_before_exit is not None)
        if propagate_cancel is not None:
            raise propagate_cancel
        # The body's CancelledError was ours (cancel()) and is taken back, as
        # TaskGroup does: the block exits without raising.
        return isinstance(exc, _CancelledError)

    def _raise_error(
        self, body_error: BaseException | None = None, job_error_first: bool = True
    ) -> None:
        """Raise what the executor's outcome is, once: KeyboardInterrupt/SystemExit, the
        ExceptionGroup of job errors (errors="group"), or the first error."""
        if self._base_error is not None:
            raise self._base_error
        if self._error_raised:
            return
        if self._group and self._errors:
            errors = list(self._errors)
            if self._timed_out is not None:
                errors.append(self._timed_out)
            if body_error is not None:
                errors.append(body_error)  # as TaskGroup adds the body's exception
            self._error_raised = True
            raise BaseExceptionGroup(f"unhandled errors in {type(self).__name__}", errors)
        if self._error is not None and (body_error is None or job_error_first):
            self._error_raised = True
            raise self._error

    # ------------------------------------------------------------------ shutdown
    async def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, grace: float | None = None
    ) -> None:
        """Stop taking jobs; with ``wait``, wait for every job to end.

        ``cancel_futures`` cancels the unfinished jobs first.  ``grace`` (seconds) waits
        that long for the jobs, then cancels what is left and waits for it to unwind
        (those jobs end as cancelled, not as errors).  ``wait=False`` cancels them and
        returns at once without raising (what is left ends in the background; leaving
        the ``async with`` block waits for it).  With ``wait=True`` the first job error
        (fail-fast mode) or the executor's TimeoutError is raised here.
        """
        grace = _check_grace(grace, wait, cancel_futures)
        if not await self._prepare_shutdown():
            return
        self._close()
        if cancel_futures or not wait:
            self._cancel_all()
        if not wait:
            self._stop_without_waiting()
            return
        timer = None
        if grace is not None and not self._aborting:
            timer = self._loop.call_later(grace, self._grace_over)
        try:
            cancelled = await self._finish()
        finally:
            if timer is not None:
                timer.cancel()
        if cancelled is not None:
            raise cancelled
        self._raise_error()

    def _grace_over(self) -> None:
        """shutdown(grace=...)'s time is up: cancel what is left (not an error)."""
        if not self._aborting and self._state is not _State.CLOSED:
            self._cancel_all()

    # ------------------------------------------------------------------ shared rules
    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise RuntimeError("cannot schedule new futures after shutdown")

    async def _refuse_submit(self) -> None:
        """A submit() to a closed executor.  When the executor closed itself and cancelled
        the body (cancel(), fail-fast, its timeout), a submit of the body's is where the
        body's cancellation lands, as at any await: a loop of submits ends as the block
        expects, not with a RuntimeError escaping it."""
        if self._parent_cancel_requested and asyncio.current_task() is self._parent_task:
            await asyncio.sleep(0)
        self._check_open()

    def _job_failed(
        self, exc: BaseException, to_executor: bool, after_cancel: bool = False
    ) -> None:
        """A job raised or was cancelled; ``after_cancel``: it raised ``exc`` while
        unwinding from a cancellation of its handle.  ``to_executor``: the executor's
        error rules (fail-fast, errors="group") apply to the job's failure; False for a
        map's jobs, whose errors the map raises itself."""
        if isinstance(exc, _BASE_ERRORS):
            if self._base_error is None:
                self._base_error = exc
            self._abort(exc)
            return
        if not to_executor or self._suppress or self._state is _State.CLOSED:
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
        """A job failed with ``exc`` (not a cancellation): the on_error hook."""
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

    def _on_timeout(self) -> None:
        self._timer = None
        if self._state is _State.CLOSED:
            return
        self._timed_out = TimeoutError(f"{self!r} timed out after {self._timeout} s")
        self._abort(self._timed_out)

    @overload
    def map(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
        key: Callable[..., Hashable] | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncIterator[T]: ...

    @overload
    def map(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
        key: Callable[..., Hashable] | None = ...,
        return_exceptions: bool,
    ) -> AsyncIterator[T | BaseException]: ...

    def map(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
        key: Callable[..., Hashable] | None = None,
        return_exceptions: bool = False,
    ) -> AsyncIterator[T | BaseException]:
        """Run ``fn`` over the zipped iterables; yield the results in input order.

        Iterables may be sync or async, mixed.  The input is pulled lazily (about
        ``max_workers`` items in flight plus a reorder buffer of as many; for
        ShardedExecutor, all of its shards' capacity), so an endless generator is fine.
        A job's error is raised from the ``async for`` in its turn, after every earlier
        result, and the map's other jobs are cancelled; so are they when the loop is
        left early or the generator is closed.

        ``return_exceptions=True`` (``asyncio.gather``'s word): a failed job's exception
        is yielded in its place and the map goes on; a cancelled job yields its
        ``CancelledError``.  Errors of the input itself are still raised.

        ``key`` (with ``per_key``): called with each item's arguments, it gives the
        item's key; an item whose key is at its limit waits behind its key while the
        map goes on with other keys' items.
        """
        sources = self._map_input("map", fn, iterables, return_exceptions, key)
        return _map(self, fn, sources, return_exceptions, key)

    @overload
    def map_unordered(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
        key: Callable[..., Hashable] | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncIterator[T]: ...

    @overload
    def map_unordered(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
        key: Callable[..., Hashable] | None = ...,
        return_exceptions: bool,
    ) -> AsyncIterator[T | BaseException]: ...

    def map_unordered(
        self,
        fn: Callable[..., Awaitable[T]],
        *iterables: Iterable[Any] | AsyncIterable[Any],
        key: Callable[..., Hashable] | None = None,
        return_exceptions: bool = False,
    ) -> AsyncIterator[T | BaseException]:
        """Like map(), but yield each result as soon as its job ends.

        The first job error (in the order jobs end) is raised from the ``async for``
        and the map's other jobs are cancelled; leaving early cancels them too.
        ``return_exceptions`` and ``key`` as for map().
        """
        sources = self._map_input("map_unordered", fn, iterables, return_exceptions, key)
        return _map_unordered(self, fn, sources, return_exceptions, key)

    def _map_input(
        self,
        what: str,
        fn: Any,
        iterables: tuple[Iterable[Any] | AsyncIterable[Any], ...],
        return_exceptions: Any,
        key: Any,
    ) -> list[Any]:
        """map()'s function and options checked and its input opened (and counted by
        the bar)."""
        if not isinstance(return_exceptions, bool):
            raise TypeError(f"return_exceptions must be True or False, got {return_exceptions!r}")
        if key is not None:
            if not callable(key):
                raise TypeError(
                    f"{what}() key must be a function of the job's arguments, got {key!r}"
                )
            if getattr(self, "_keys", None) is None:
                raise ValueError(
                    f"{what}(key=...) needs per_key: "
                    "CoroutineExecutor(per_key=PerKey(max_workers=...))"
                )
        self._check_map_fn(fn, what)
        sources = _open_sources(what, iterables)
        if self._progress is not None:
            self._progress.add_total(iterables)
        return sources

    def _repr_fields(self) -> str:
        """What an executor adds to its repr, ahead of the state and the counts."""
        return ""

    def __repr__(self) -> str:
        st = self.stats()
        return (
            f"<{type(self).__name__} {self._repr_fields()}state={self._state.value} "
            f"max_workers={st.max_workers} submitted={st.submitted} pending={st.pending} "
            f"running={st.running} completed={st.completed} failed={st.failed} "
            f"cancelled={st.cancelled}>"
        )
