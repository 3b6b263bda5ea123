"""The engine: worker slots on a free list, the back-pressure gate, the job lifecycle.

How a job runs
--------------
``submit`` takes a count on the gate (a plain integer compared with the limit; a
blocked submitter waits on a future of its own in a FIFO deque), then *starts the job
eagerly*: the job's coroutine is stepped once, right inside ``submit``, with the worker
slot's task made the current task and the slot's context entered, exactly as
``asyncio.eager_task_factory`` does for a new task.  A job that finishes in that first
step (a no-op, a cache hit) never touches the event loop: no task, no callback, no
wake-up.  That is what makes a no-op job cost well under a microsecond.

A job that suspends is handed to an idle worker slot.  A slot is a long-lived task
running :func:`_work`, parked on the slot object itself: the slot poses as a future
(``_asyncio_future_blocking``, ``add_done_callback``, ``cancel``) so the parked task
gives us its wake-up callback.  When the job's first step waited on a future, that
wake-up callback is attached straight to the job's future, so the job resumes in the
worker exactly when a task of its own would have: the hand-off costs no loop
round-trip.  The worker then drives the job with ``yield from``, i.e. at C speed, as
a task drives any coroutine.

Slots are reused job after job (the free list) and are never more than
``max_workers`` plus the producers that lent their slot (see ``_submit_slow``), so
memory is O(max_workers) however many jobs pass through.  The engine keeps no
reference to a finished job.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import itertools
import math
import sys
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Final, ParamSpec, TypeVar

__all__ = ("_Engine", "_State")

P = ParamSpec("P")
T = TypeVar("T")

_CoroutineType: Final = types.CoroutineType
_send: Final = types.CoroutineType.send  # unbound: no bound method made per job
_CancelledError: Final = asyncio.CancelledError
_BASE_ERRORS: Final = (KeyboardInterrupt, SystemExit)

_Future: Final = asyncio.Future
_IGNORE_CALLBACK: Final = "".format  # a C callable that takes any arguments and does nothing

# During a job's first step (inside submit) the current task must be the worker's, as
# it is for an eager task: asyncio.timeout(), TaskGroup and current_task() in the job
# must see the task that will go on running it.
if sys.version_info >= (3, 12):
    _swap_current_task = asyncio.tasks._swap_current_task  # type: ignore[attr-defined]
    _current_tasks: dict[Any, Any] | None = None
else:  # pragma: no cover - exercised on 3.11 only
    # 3.11 has no _swap_current_task; its C module keeps the current task of each
    # loop in this dict, which current_task(), _enter_task() and _leave_task() read.
    # _start() swaps with two dict stores instead of two calls.
    _current_tasks = asyncio.tasks._current_tasks  # type: ignore[attr-defined]

    def _swap_current_task(loop: asyncio.AbstractEventLoop, task: Any) -> Any:
        prev = _current_tasks.get(loop)
        if task is None:
            _current_tasks.pop(loop, None)
        else:
            _current_tasks[loop] = task
        return prev


# Executors that have worker tasks.  A parked worker is referenced only by its executor
# (the loop holds tasks weakly), so an executor dropped without shutdown() would let the
# garbage collector destroy pending tasks; this keeps them until they end (at the latest
# when asyncio.run() cancels what is left).
_LIVE: Final[set[Any]] = set()


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # no new jobs; running jobs go on
    CLOSED = "closed"  # every job and every worker has ended


# What a slot is doing.  Plain ints: they are compared on the hot path.
_IDLE: Final = 0  # parked on the free list (or about to park)
_EAGER: Final = 1  # its job is being stepped inside submit()
_WAIT: Final = 2  # the job waits on ``slot.first``; our wake-up is attached to it
_RESUME: Final = 3  # the worker is to resume the job with send(None)
_YIELD: Final = 4  # the worker is to hand ``slot.first`` to its task first
_RUN: Final = 5  # the worker is driving the job
_STOP: Final = 6  # the worker is to end


class _Slot:
    """A reusable worker: one task that runs one job at a time.

    It poses as a future so that its parked task hands it the wake-up callback.
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "add_done_callback",
        "cancel_requested",
        "coro",
        "counted",
        "ctx",
        "engine",
        "first",
        "get_loop",
        "handle",
        "loop",
        "on_handle_done",
        "parked",
        "release_on_exit",
        "report",
        "state",
        "task",
        "wakeup",
        "wctx",
    )

    def __init__(self, engine: _Engine, ctx: contextvars.Context) -> None:
        self.engine = engine
        self.loop = engine._loop
        self.ctx = ctx
        self.task: asyncio.Task[None] | None = None
        self.wakeup: Any = None
        self.wctx: contextvars.Context | None = None
        self.parked = False
        self._asyncio_future_blocking = False
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.handle: asyncio.Future[Any] | None = None
        self.first: Any = None
        self.state = _IDLE
        self.report = True
        self.counted = True
        self.cancel_requested = False
        self.release_on_exit = False
        self.on_handle_done = self._on_handle_done
        # The future protocol, as much of it as a Task uses on what it awaits.  Our
        # task calls get_loop() and add_done_callback() each time it parks on us:
        # both are C callables here, to keep the worker's hot path out of Python.
        self.get_loop: Callable[[], asyncio.AbstractEventLoop] = itertools.repeat(
            self.loop
        ).__next__
        self.add_done_callback: Callable[..., object] = self._capture_wakeup

    def _capture_wakeup(self, fn: Any, *, context: contextvars.Context | None = None) -> None:
        # The first time our task parks on us, keep its wake-up callback (bound to the
        # task, valid for its whole life) and the task's context.  Later parks need
        # nothing: a C no-op that takes any arguments stands in.
        self.wakeup = fn
        self.wctx = context
        self.add_done_callback = _IGNORE_CALLBACK

    def remove_done_callback(self, fn: Any) -> int:  # pragma: no cover - asyncio never calls it
        return 0

    def done(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def result(self) -> None:  # pragma: no cover - only called on the futures we pass
        return None

    def cancel(self, msg: Any = None) -> bool:
        """Our task is being cancelled while parked on us (Task.cancel calls this)."""
        state = self.state
        if state == _WAIT:
            # Cancel what the job waits on, as Task.cancel does with its _fut_waiter.
            return bool(self.first.cancel(msg))
        if state == _EAGER:
            # The job cancelled its own task during its first step: deliver it at the
            # job's next resumption, as a task's pending cancellation would be.
            self.cancel_requested = True
            return False
        if state == _IDLE:
            # Cancelled with no job (the loop is shutting down): end this worker.
            try:
                self.engine._free.remove(self)
            except ValueError:
                pass
            self.state = _STOP
            self.parked = False
            fut = self.loop.create_future()
            fut.cancel(msg)
            self.loop.call_soon(self.wakeup, fut, context=self.wctx)
            return True
        # A resumption is already scheduled: the task delivers the cancellation then.
        return False

    def _on_handle_done(self, handle: asyncio.Future[Any]) -> None:
        # The handle ended before the job did: somebody cancelled it.  Cancel the job.
        if handle is self.handle and self.task is not None:
            self.task.cancel()

    def __repr__(self) -> str:
        return f"<coroexecutor worker slot state={self.state}>"


@types.coroutine
def _drive(
    coro: Coroutine[Any, Any, Any], pending: Any, exc: BaseException | None
) -> Generator[Any, Any, Any]:
    """Go on driving ``coro`` from a state that ``yield from`` cannot start from.

    Either an exception is to be thrown into it (``exc``), or it has already yielded
    ``pending``, which must go to the task before the coroutine is resumed.
    """
    while True:
        if exc is not None:
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            exc = None
        try:
            yield pending
        except BaseException as thrown:
            exc = thrown
        else:
            return (yield from coro)


async def _worker(slot: _Slot) -> None:
    # A native coroutine for the task (3.12+ tasks take nothing else), delegating to
    # the generator below, which can ``yield from`` the jobs.
    await _work(slot)


@types.coroutine
def _work(slot: _Slot) -> Generator[Any, Any, None]:
    """The body of a worker task: run the jobs handed to ``slot`` until told to stop."""
    engine = slot.engine
    exc: BaseException | None = None
    try:
        try:
            yield  # primed by _Engine._new_slot: a cancellation before our first step lands below
        except BaseException as thrown:
            exc = thrown
        while True:
            if slot.coro is None:
                if exc is None and slot.state != _STOP:
                    slot._asyncio_future_blocking = True
                    slot.parked = True  # our task registers with the slot as we yield it
                    try:
                        yield slot  # park until a job arrives
                    except BaseException as thrown:
                        exc = thrown
                    slot.parked = False
                if slot.coro is None:
                    if exc is not None:
                        raise exc
                    return
            coro: Any = slot.coro
            state = slot.state
            slot.state = _RUN
            try:
                if exc is not None:
                    if state == _YIELD and asyncio.isfuture(slot.first):
                        slot.first.cancel()
                    result = yield from _drive(coro, None, exc)
                elif state == _YIELD:
                    first = slot.first
                    if asyncio.isfuture(first):
                        first._asyncio_future_blocking = True  # as Future.__await__ does
                    result = yield from _drive(coro, first, None)
                else:
                    result = yield from coro
            except GeneratorExit:
                # Our task is being destroyed with the job unfinished (it can only
                # happen when the loop is torn down without cancelling its tasks).
                engine._job_raised(slot, _CancelledError("worker destroyed"))
                raise
            except BaseException as err:
                exc = None
                engine._job_raised(slot, err)
            else:
                exc = None
                engine._job_returned(slot, result)
                result = None  # hold nothing of a finished job while parked
            coro = None
    finally:
        engine._worker_exited(slot)


async def _await_awaitable(aw: Awaitable[Any]) -> Any:
    return await aw


async def _wrapped_job(
    init: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    job_timeout: float | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A job with the executor's initializer before it and/or its job_timeout around it."""
    if init is not None:
        r = init(*initargs)
        if inspect.isawaitable(r):
            await r
    if job_timeout is None:
        return await _as_coroutine(fn, fn(*args, **kwargs))
    async with asyncio.timeout(job_timeout):
        return await _as_coroutine(fn, fn(*args, **kwargs))


def _as_coroutine(fn: Any, obj: Any) -> Coroutine[Any, Any, Any]:
    """What a job's function returned, as a coroutine, or a TypeError naming the mistake."""
    if type(obj) is _CoroutineType:
        return obj
    if inspect.isawaitable(obj):
        return _await_awaitable(obj)
    if inspect.isasyncgen(obj):
        obj.aclose().close()
        raise TypeError(
            f"{fn!r} returned an async generator, which is not awaitable; "
            "submit a coroutine function (async def ... return)"
        )
    raise TypeError(
        f"{fn!r} returned {type(obj).__name__} {obj!r}, which is not awaitable; "
        "the executor runs coroutine functions (async def) or functions returning awaitables"
    )


def _check_fn(fn: Any, what: str) -> None:
    """Refuse a job function that cannot be one, before anything starts."""
    if callable(fn):
        return
    if inspect.iscoroutine(fn):
        name = getattr(fn, "__name__", "f")
        fn.close()  # no "coroutine ... was never awaited" warning after our error
        raise TypeError(
            f"{what}() takes a coroutine function and its arguments, not a coroutine object: "
            f"write {what}({name}, x), not {what}({name}(x))"
        )
    if inspect.isawaitable(fn):
        raise TypeError(
            f"{what}() takes a function and its arguments, not an awaitable ({fn!r}): "
            f"write {what}(fn, x), not {what}(fn(x))"
        )
    raise TypeError(f"{what}() needs a callable as its first argument, got {fn!r}")


class _Queued:
    """A job of submit_nowait() waiting for a worker (or, rate-limited, for its turn)."""

    __slots__ = ("args", "fn", "handle", "kwargs", "report")

    def __init__(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handle: asyncio.Future[Any],
        report: bool,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.handle = handle
        self.report = report


class _Engine:
    """Worker slots, free list, back-pressure gate and job lifecycle.

    ``CoroutineExecutor`` builds its context manager, shutdown, fail-fast and timeout on
    the hooks at the end of this class.
    """

    _loop: asyncio.AbstractEventLoop

    def __init__(self, max_workers: int, copy_context: bool) -> None:
        self._limit = max_workers
        # The gate: a job may start while _running < _cap.  _cap is 0 until the
        # executor is bound to a loop and once it is closing, so both send submit()
        # to its slow path with one comparison on the fast one.
        self._cap = 0
        self._running = 0  # jobs holding a count (the ones max_workers limits)
        self._active = 0  # jobs that suspended and are not finished (in worker slots)
        # First in, first out: blocked submitters (a future each) and queued jobs of
        # submit_nowait(), in the order they arrived.
        self._waiters: deque[asyncio.Future[Any] | _Queued] = deque()
        self._ready: deque[_Queued] = deque()  # queued jobs holding a count, to start
        self._ready_scheduled = False
        self._pending = 0  # queued jobs not started yet (in _waiters or _ready)
        self._interval: float | None = None  # 1 / max_per_second
        self._last_start = -math.inf  # loop time of the last start (rate limit)
        self._job_factory: Callable[..., Coroutine[Any, Any, Any]] | None = None
        self._free: list[_Slot] = []
        self._slots: dict[asyncio.Task[None], _Slot] = {}
        self._copy_context = copy_context
        self._plain_futures = False
        self._context: contextvars.Context | None = None
        self._done_fut: asyncio.Future[None] | None = None
        # Set when no job is left to wait for (_active and _pending both 0).
        self._drained: asyncio.Future[None] | None = None
        self._workers_gone: asyncio.Future[None] | None = None  # set when the last worker ends
        self._state = _State.OPEN
        self._aborting = False
        self._completed = 0
        self._failed = 0
        self._cancelled = 0

    # ------------------------------------------------------------------ binding
    def _bind(self) -> None:
        """Tie the executor to the running loop (on entry or first use)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._context = contextvars.copy_context()
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        self._done_fut = done
        # loop.create_future() is a Python-level method on the default loop; call the
        # C constructor directly where that is all it does (asyncio's and uvloop's loops).
        self._plain_futures = _plain_create_future(loop)
        self._refresh_gate()

    def _refresh_gate(self) -> None:
        """Open submit()'s fast path only where it may be used: bound, open, no rate limit."""
        bound = self._done_fut is not None
        plain = self._state is _State.OPEN and self._interval is None and bound
        self._cap = self._limit if plain else 0

    # ------------------------------------------------------------------ submit
    async def submit(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Start ``fn(*args, **kwargs)`` as a job; wait first while ``max_workers`` run.

        Returns the job's handle, an ``asyncio.Future``.  The job starts at once,
        inside this call, and runs until its first suspension before submit returns
        (as with ``asyncio.eager_task_factory``).
        """
        if self._running < self._cap:
            self._running += 1
            return self._start(fn, args, kwargs, True)  # refuses a bad fn itself
        return await self._submit_slow(fn, args, kwargs, True)

    async def _submit_slow(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], report: bool
    ) -> asyncio.Future[Any]:
        """submit() when the gate is shut: not yet bound, full, or closed."""
        if not callable(fn):
            _check_fn(fn, "submit")
        try:
            loop = self._loop
        except AttributeError:
            self._bind()
            loop = self._loop
        else:
            if asyncio.get_running_loop() is not loop:
                raise RuntimeError(f"{self!r} is bound to another event loop")
        self._check_open()
        if self._running < self._limit and not self._waiters:
            self._running += 1
        else:
            # Full.  A job submitting to its own executor lends its count to the new
            # job (which starts now) and waits for a count to resume: W producers can
            # never starve their own children.
            parent = self._slots.get(asyncio.current_task())  # type: ignore[arg-type]
            if parent is not None and parent.counted and parent.state != _IDLE:
                parent.counted = False
                if self._interval is not None:
                    await self._wait_for_turn()
                handle = self._start(fn, args, kwargs, report)
                if await self._wait_for_count():
                    parent.counted = True
                return handle
            if not await self._wait_for_count():
                self._check_open()
        if self._interval is not None:
            await self._wait_for_turn()
        return self._start(fn, args, kwargs, report)

    async def _wait_for_turn(self) -> None:
        """Rate limit: wait, holding our count, until 1 / rate after the last start.

        Claimed when the start happens, not booked ahead: a timer that fires late
        (a busy loop) then delays the starts after it instead of bunching them.
        """
        loop = self._loop
        assert self._interval is not None
        while (wait := self._last_start + self._interval - loop.time()) > 0:
            try:
                await asyncio.sleep(wait)
            except _CancelledError:
                self._release()
                raise
        if self._state is not _State.OPEN:
            self._release()
            self._check_open()
        self._last_start = loop.time()

    def submit_nowait(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Start ``fn(*args, **kwargs)`` now if a worker is free, else queue it.

        A plain method, for producers that must not await.  The queue is first in,
        first out with blocked ``await submit()`` calls; ``max_pending`` bounds it and
        ``ExecutorFull`` is raised when it is full.  Needs a running event loop.
        """
        if not callable(fn):
            _check_fn(fn, "submit_nowait")
        if self._running < self._cap:
            self._running += 1
            return self._start(fn, args, kwargs, True)
        if self._done_fut is None:
            self._bind()
        elif asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(f"{self!r} is bound to another event loop")
        self._check_open()
        if self._running < self._limit and not self._waiters and self._interval is None:
            self._running += 1
            return self._start(fn, args, kwargs, True)
        if self._max_pending is not None and self._pending >= self._max_pending:
            raise self._full_error()
        handle: asyncio.Future[Any] = self._loop.create_future()
        job = _Queued(fn, args, kwargs, handle, True)
        handle.add_done_callback(self._queued_handle_done)
        self._pending += 1
        if self._running < self._limit and not self._waiters:  # rate-limited: wait for a turn
            self._running += 1
            self._ready.append(job)
            self._schedule_ready()
        else:
            self._waiters.append(job)
        return handle

    def _queued_handle_done(self, handle: asyncio.Future[Any]) -> None:
        # Only a queued job's handle gets this callback, removed when the job starts:
        # so it was cancelled (by its owner, or by shutdown) before starting.
        self._pending -= 1
        self._cancelled += 1
        self._check_drained()
        self._job_cancelled_by_handle(True)

    def _schedule_ready(self) -> None:
        if not self._ready_scheduled:
            self._ready_scheduled = True
            self._loop.call_soon(self._start_ready)

    def _start_ready(self) -> None:
        """Start the queued jobs that hold a count, in order (and on time when rate-limited).

        A loop, not a recursion: a job that ends at once frees a count that admits the
        next queued job onto the same list.
        """
        ready = self._ready
        loop = self._loop
        while ready:
            if self._interval is not None:
                at = self._last_start + self._interval
                if at > loop.time():
                    loop.call_at(at, self._start_ready)
                    return
                self._last_start = loop.time()
            job = ready.popleft()
            handle = job.handle
            if handle.done():  # cancelled while queued: already counted
                self._release()
                continue
            handle.remove_done_callback(self._queued_handle_done)
            self._pending -= 1
            self._start(job.fn, job.args, job.kwargs, job.report, handle)
        self._ready_scheduled = False
        self._check_drained()

    async def _wait_for_count(self) -> bool:
        """Wait, first in first out, until a finishing job hands us its count.

        False when woken because the executor closed instead.
        """
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.append(fut)
        if self._running < self._limit:
            # Counts came free with nobody to hand them to (a lent count whose job ended
            # at once, inside submit): take ours now, in turn.
            self._admit()
        try:
            await fut
        except _CancelledError:
            if fut.done() and not fut.cancelled() and fut.result() is None:
                self._release()  # handed a count just as we were cancelled: pass it on
            raise
        return fut.result() is None

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _release(self) -> None:
        """A counted job ended: free its count, and hand free counts on, FIFO."""
        self._running -= 1
        if self._waiters:
            self._admit()

    def _admit(self) -> None:
        """Give free counts to blocked submitters and queued jobs, first in first out.

        Never more than max_workers counts: after max_workers shrank, finishing jobs
        free counts until the executor is under the new limit.
        """
        waiters = self._waiters
        while waiters and self._running < self._limit:
            waiter = waiters.popleft()
            if isinstance(waiter, _Queued):
                if waiter.handle.done():
                    continue  # cancelled while queued (already counted)
                self._running += 1
                self._ready.append(waiter)
                self._schedule_ready()
            elif not waiter.done():
                self._running += 1
                waiter.set_result(None)

    # ------------------------------------------------------------------ job start
    def _start(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        report: bool,
        handle: asyncio.Future[Any] | None = None,
    ) -> asyncio.Future[Any]:
        """Start one job; the caller holds a count for it.

        This is the hot path: a job that ends in its first step costs one future,
        its coroutine, and what is below, with no call into the event loop.
        """
        loop = self._loop
        if handle is None:
            handle = _Future(loop=loop) if self._plain_futures else loop.create_future()
        try:
            if self._job_factory is None:
                coro = fn(*args, **kwargs)
                if type(coro) is not _CoroutineType:
                    coro = _as_coroutine(fn, coro)
            else:
                if not callable(fn):
                    raise TypeError
                coro = self._job_factory(fn, args, kwargs)
        except BaseException as exc:
            self._release()
            if not callable(fn):  # bad input: refused by submit, not a job failure
                _check_fn(fn, "submit")
            self._settle_raised(handle, exc, report)
            return handle
        free = self._free
        slot = free.pop() if free else self._new_slot()
        slot.state = _EAGER
        ct = _current_tasks
        if ct is not None:
            prev = ct.get(loop)
            ct[loop] = slot.task
        else:
            prev = _swap_current_task(loop, slot.task)
        # The current task is put back in each branch below, not once after the try:
        # keeping the caught exception past its except block (to branch on it later)
        # makes a frame <-> traceback cycle per job for the garbage collector, +30 %.
        try:
            first = slot.ctx.run(_send, coro, None)
        except StopIteration as stop:
            if ct is not None:
                if prev is None:
                    del ct[loop]
                else:
                    ct[loop] = prev
            else:
                _swap_current_task(loop, prev)
            slot.state = _IDLE
            handle.set_result(stop.value)
            self._completed += 1
            # A parked worker's task reports a cancellation through slot.cancel(); one
            # that has not run yet only records it (Task._must_cancel, in the C and the
            # Python Task alike), which would hit the next job it runs.
            if slot.cancel_requested or (
                not slot.parked and (slot.task._must_cancel or self._copy_context)  # type: ignore[union-attr]
            ):
                self._after_eager(slot)
            else:
                if self._waiters:
                    self._release()
                else:
                    self._running -= 1
                free.append(slot)
            return handle
        except BaseException as exc:
            _swap_current_task(loop, prev)
            slot.state = _IDLE
            self._after_eager(slot)
            self._settle_raised(handle, exc, report)
            return handle
        if ct is not None:
            if prev is None:
                del ct[loop]
            else:
                ct[loop] = prev
        else:
            _swap_current_task(loop, prev)
        # The job suspended: the slot's worker takes it from here.
        self._active += 1
        slot.coro = coro
        slot.handle = handle
        slot.report = report
        handle.add_done_callback(slot.on_handle_done)
        if not slot.parked:
            # The task has not taken its first step yet; that step resumes the job.
            if getattr(first, "_asyncio_future_blocking", None):
                # The step hands it to the task with the flag set again; until then
                # it is down, so another job may await the same future meanwhile.
                first._asyncio_future_blocking = False
            slot.first = first
            slot.state = _RESUME if first is None else _YIELD
        elif first is None:  # a bare yield (asyncio.sleep(0)): resume on the next turn
            slot.state = _RESUME
            loop.call_soon(slot.wakeup, self._done_fut, context=slot.wctx)
        elif getattr(first, "_asyncio_future_blocking", None) and first.get_loop() is loop:
            # It waits on a future: wake the worker when that future is done, exactly
            # when a task of its own would have woken.
            first._asyncio_future_blocking = False
            slot.first = first
            slot.state = _WAIT
            first.add_done_callback(slot.wakeup, context=slot.wctx)
        else:  # anything else: let the task deal with it (and raise what it raises)
            slot.first = first
            slot.state = _YIELD
            loop.call_soon(slot.wakeup, self._done_fut, context=slot.wctx)
        if slot.cancel_requested:
            # The job cancelled its own task in its first step: the task holds that
            # cancellation (counted once) for its next step.  Make that step come now,
            # as a task does with the future it is cancelled on.
            slot.cancel_requested = False
            if slot.state == _WAIT:
                first.cancel()
        return handle

    def _after_eager(self, slot: _Slot) -> None:
        """A job ended in its first step: release its count and recycle or end the slot."""
        assert slot.task is not None
        if slot.cancel_requested or slot.task.cancelling() or slot.task._must_cancel:  # type: ignore[attr-defined]
            # A cancelled task carries its cancellation into whatever it runs next.
            slot.cancel_requested = False
            self._release()
            self._stop_slot(slot)
        elif self._copy_context:
            # One job per task here, and this task has yet to take its (last) step:
            # the count goes back when it has, so at most max_workers such tasks exist.
            slot.release_on_exit = True
            self._stop_slot(slot)
        elif self._state is _State.OPEN:
            self._release()
            self._free.append(slot)
        else:
            self._release()
            self._stop_slot(slot)

    def _new_slot(self) -> _Slot:
        if self._copy_context:
            ctx = contextvars.copy_context()
        else:
            assert self._context is not None
            ctx = self._context.copy()
        slot = _Slot(self, ctx)
        coro = _worker(slot)
        coro.send(None)  # prime it, so even a cancellation before its first step is caught
        task = self._loop.create_task(coro, context=ctx)
        slot.task = task
        if not self._slots:
            _LIVE.add(self)
        self._slots[task] = slot
        task.add_done_callback(_retrieve)
        return slot

    def _stop_slot(self, slot: _Slot) -> None:
        slot.state = _STOP
        if slot.parked:
            slot.parked = False
            self._loop.call_soon(slot.wakeup, self._done_fut, context=slot.wctx)

    def _worker_exited(self, slot: _Slot) -> None:
        if slot.release_on_exit:
            slot.release_on_exit = False
            self._release()
        if slot.task is not None:
            self._slots.pop(slot.task, None)
        if not self._slots:
            _LIVE.discard(self)
        try:
            self._free.remove(slot)  # only if it died while parked (rare)
        except ValueError:
            pass
        if not self._slots and self._workers_gone is not None and not self._workers_gone.done():
            self._workers_gone.set_result(None)

    # ------------------------------------------------------------------ job end
    def _job_returned(self, slot: _Slot, result: Any) -> None:
        """A job ended in its worker with a result (the worker's hot path, inlined)."""
        handle = slot.handle
        assert handle is not None
        slot.handle = None
        slot.coro = None
        slot.first = None
        if handle.done():  # its handle was cancelled while the job ran
            self._active -= 1
            self._cancelled += 1
            self._end_slot(slot)
            self._job_cancelled_by_handle(slot.report)
            return
        handle.remove_done_callback(slot.on_handle_done)
        handle.set_result(result)
        self._completed += 1
        self._active -= 1
        if slot.counted:
            if self._waiters:
                self._release()
            else:
                self._running -= 1
        else:
            slot.counted = True
        task = slot.task
        if self._state is _State.OPEN and not task.cancelling() and not self._copy_context:  # type: ignore[union-attr]
            slot.state = _IDLE
            self._free.append(slot)
            if self._active == 0 and self._drained is not None:
                self._check_drained()
        else:
            slot.counted = False  # released above
            self._end_slot(slot)

    def _job_raised(self, slot: _Slot, exc: BaseException) -> None:
        handle = slot.handle
        assert handle is not None
        slot.handle = None
        slot.coro = None
        slot.first = None
        self._active -= 1
        handle.remove_done_callback(slot.on_handle_done)
        report = slot.report
        self._end_slot(slot)
        self._settle_raised(handle, exc, report)

    def _end_slot(self, slot: _Slot) -> None:
        """The job on ``slot`` ended: release its count and park, retire or stop the slot."""
        if slot.counted:
            self._release()
        slot.counted = True
        assert slot.task is not None
        if slot.task.cancelling() or self._copy_context:
            # A cancelled task carries its cancellation (count, pending throw) into
            # whatever it runs next, and a copied context serves one job: retire it.
            slot.state = _STOP
        elif self._state is _State.OPEN:
            slot.state = _IDLE
            self._free.append(slot)
        else:
            slot.state = _STOP
        self._check_drained()

    def _check_drained(self) -> None:
        drained = self._drained
        if self._active == 0 and self._pending == 0 and drained is not None and not drained.done():
            drained.set_result(None)

    def _settle_raised(self, handle: asyncio.Future[Any], exc: BaseException, report: bool) -> None:
        """Record a job that ended by an exception, and tell the executor."""
        if handle.done():
            # Its handle was cancelled first, and says so: the job counts as cancelled.
            self._cancelled += 1
            if isinstance(exc, _CancelledError):
                self._job_cancelled_by_handle(report)
                return
            # It failed while unwinding: that error goes to on_error and errors="group",
            # but for fail-fast the job was cancelled, which is what caused it.
            self._job_error(handle, exc)
            self._job_failed(exc, report, after_cancel=True)
            return
        elif isinstance(exc, _CancelledError):
            handle.cancel(*exc.args[:1])
            self._cancelled += 1
        else:
            handle.set_exception(exc)
            handle.exception()  # raised at exit or kept on the handle: never "never retrieved"
            self._failed += 1
            self._job_error(handle, exc)
        self._job_failed(exc, report)
        if isinstance(exc, _BASE_ERRORS):
            raise exc

    # ------------------------------------------------------------------ control
    def _cancel_jobs(self) -> None:
        """Cancel every job that has not ended, queued ones included."""
        for waiter in self._waiters:
            if isinstance(waiter, _Queued):
                waiter.handle.cancel()  # counted by its callback; skipped by _admit()
        for job in self._ready:
            job.handle.cancel()  # _start_ready() releases its count
        for slot in list(self._slots.values()):
            if slot.state in (_IDLE, _STOP) or slot.task is None:
                continue
            handle = slot.handle
            if handle is not None:
                # The handle says "cancelled" at once, as Future.cancel() does; the
                # job itself unwinds in its worker, and exit/shutdown wait for that.
                handle.remove_done_callback(slot.on_handle_done)
                handle.cancel()
            slot.task.cancel()

    def _close_gate(self) -> None:
        """No new jobs: blocked submitters are woken to raise RuntimeError."""
        self._refresh_gate()
        # Blocked submitters have submitted nothing yet: they raise RuntimeError.  Jobs
        # queued by submit_nowait() were submitted: they still run (shutdown waits for
        # them) unless cancelled by _cancel_jobs().
        queued = [w for w in self._waiters if isinstance(w, _Queued)]
        for waiter in self._waiters:
            if not isinstance(waiter, _Queued) and not waiter.done():
                waiter.set_result(_State.CLOSING)
        self._waiters = deque(queued)

    def _stop_idle_workers(self) -> None:
        for slot in self._free:
            slot.state = _STOP
            if slot.parked:
                slot.parked = False
                self._loop.call_soon(slot.wakeup, self._done_fut, context=slot.wctx)
        self._free.clear()

    # ------------------------------------------------------------------ hooks
    _max_pending: int | None

    def _full_error(self) -> Exception:
        raise NotImplementedError

    def _job_failed(self, exc: BaseException, report: bool, after_cancel: bool = False) -> None:
        """A job raised or was cancelled; ``after_cancel``: it raised ``exc`` while
        unwinding from a cancellation of its handle."""
        raise NotImplementedError

    def _job_error(self, handle: asyncio.Future[Any], exc: BaseException) -> None:
        """A job failed with ``exc`` (not a cancellation): the on_error hook."""

    def _job_cancelled_by_handle(self, report: bool) -> None:
        self._job_failed(_CancelledError(), report)


def _plain_create_future(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether loop.create_future() does nothing but asyncio.Future(loop=loop)."""
    meth = type(loop).create_future
    if meth is asyncio.BaseEventLoop.create_future:
        return True
    uvloop = sys.modules.get("uvloop")  # imported already if this is its loop
    return uvloop is not None and meth is uvloop.Loop.create_future


def _retrieve(task: asyncio.Task[None]) -> None:
    # A worker only ends with an exception when a job raised KeyboardInterrupt or
    # SystemExit through it; that went out through the loop already.  Mark it
    # retrieved so it is not logged a second time when the task is collected.
    if not task.cancelled():
        task.exception()
