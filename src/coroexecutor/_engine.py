"""The engine: worker runners on a free list, the back-pressure gate, the job lifecycle.

How a job runs
--------------
``submit`` takes a count on the gate (a plain integer compared with the limit; a
blocked submitter waits on a future of its own in a FIFO deque), then *starts the job
eagerly*: the job's coroutine is stepped once, right inside ``submit``, with a worker
runner's task made the current task and its context entered, exactly as
``asyncio.eager_task_factory`` does for a new task.  A job that finishes in that first
step (a no-op, a cache hit) never touches the event loop: no task, no callback, no
wake-up.

A job that suspends stays with that runner.  A runner (:class:`_Runner`) is the
coroutine of one long-lived task: its ``send``/``throw`` step the job's own coroutine,
so no frame of ours sits between the task and the job.  While idle it is parked on
itself: it poses as a future (``_asyncio_future_blocking``, ``add_done_callback``,
``cancel``) so that its task hands it the task's wake-up callback.  When a job's first
step waited on a future, that wake-up is attached straight to the job's future, so the
job resumes exactly when a task of its own would have: the hand-off costs no loop step.

Runners are reused job after job (the free list) and are never more than
``max_workers`` plus the producers that lent their count (see ``_submit_slow``), so
memory is O(max_workers) however many jobs pass through.  The engine keeps no
reference to a finished job.  ``bench/README.md`` weighs this against a task per
suspended job, with numbers.
"""

from __future__ import annotations

import asyncio
import collections.abc as _collections_abc
import contextvars
import itertools
import sys
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

from ._jobs import (
    _BASE_ERRORS,
    _NO_KWARGS,
    _as_coroutine,
    _check_fn,
    _CoroutineType,
    _NotAwaitable,
    _State,
)
from ._pace import _Pace


def _cython_stand_in() -> types.ModuleType:
    """`cython` for the pure-Python engine where Cython is not installed: a module, as
    Cython's own shadow module is.  `cython.compiled` is read on the hot path, and the
    interpreter specialises an attribute read on a module (on a SimpleNamespace it did
    not: 200 instructions per read, 5 % of a pure no-op job)."""
    stand_in = types.ModuleType("cython")
    stand_in.compiled = False  # type: ignore[attr-defined]
    return stand_in


try:
    # In the compiled engine (setup.py) this is the compiler's own module, and
    # `cython.compiled` a constant True: the branches on it pick the C helpers that
    # _engine.pxd defines.  Here it is False (Cython's shadow module, or this stand-in).
    import cython
except ImportError:  # the pure-Python engine, where Cython is not installed
    cython = _cython_stand_in()

__all__ = ("_Engine",)

P = ParamSpec("P")
T = TypeVar("T")

_send: Final = types.CoroutineType.send  # unbound: no bound method made per job
_CancelledError: Final = asyncio.CancelledError

_Future: Final = asyncio.Future
_future_cancel: Final = asyncio.Future.cancel
# The C methods themselves, for the compiled engine's calls on futures of known type: a
# call by name looks the method up in the type on every call (-100 to -150 instructions).
_future_done: Final = asyncio.Future.done
_future_set_result: Final = asyncio.Future.set_result
_task_cancelling: Final = asyncio.Task.cancelling
_get_running_loop: Final = asyncio.events._get_running_loop  # the C function, no error check
_Task: Final = asyncio.Task
_EAGER_START: Final = sys.version_info >= (3, 12)  # Task(..., eager_start=True)


def _ignore_callback(fn: Any, *, context: Any = None) -> None:
    """What a parked runner's task calls as its add_done_callback(wakeup, context=...)."""


# A callable that takes the task's call and does nothing.  Compiled, the function above:
# a C function taking its arguments as they come (no tuple, no dict).  Pure, a C
# callable that takes any arguments ("".format), cheaper than a Python function.
_IGNORE_CALLBACK: Final = _ignore_callback if cython.compiled else "".format

if not cython.compiled:
    # The free list's pop and append: C helpers in _engine.pxd that keep the list's
    # storage; here the list's own methods.
    _c_pop: Final = list.pop
    _c_push: Final = list.append

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

    def _swap_current_task_311(loop: asyncio.AbstractEventLoop, task: Any) -> Any:
        prev = _current_tasks.get(loop)
        if task is None:
            _current_tasks.pop(loop, None)
        else:
            _current_tasks[loop] = task
        return prev

    _swap_current_task = _swap_current_task_311


# Executors that have worker tasks.  A parked worker is referenced only by its executor
# (the loop holds tasks weakly), so an executor dropped without shutdown() would let the
# garbage collector destroy pending tasks; this keeps them until they end (at the latest
# when asyncio.run() cancels what is left).
_LIVE: Final[set[Any]] = set()
_NUMBERS: Final = itertools.count(1)  # executors, for their workers' task names


# A runner's states (the table is _Runner's docstring).  Plain ints: they are compared
# on the hot path.
_OPEN: Final = _State.OPEN  # a global, not an Enum class attribute: read per job
_GO: Final = object()  # _Runner._step(): step the job now
# A job's coroutine returned (its value is in runner.returned): what the compiled
# engine's C helpers give instead of raising StopIteration, and so the pure one's too.
_RETURNED: Final = object()

# (Like any table of named constants, this one has the shape of sharded/_protocol's.)
_IDLE: Final = 0
_EAGER: Final = 1
_WAIT: Final = 2
_RESUME: Final = 3
_YIELD: Final = 4
_RUN: Final = 5
_STOP: Final = 6

# Most items _map_fill() takes in one call: the map's look-ahead past what it has yielded.
_MAP_BATCH: Final = 32


class _Runner:
    """A reusable worker: the coroutine of one long-lived task, which runs one job at a time.

    To its task this object is a coroutine (``send``, ``throw``) that steps the job's
    own coroutine: no generator frame of ours sits between the task and the job.
    While it waits for a job it is also the future the task waits on
    (``_asyncio_future_blocking``, ``add_done_callback``, ``cancel``), so that the task
    hands it its wake-up callback.  That wake-up is then attached straight to the future
    a new job waits on, so the job resumes exactly when a task of its own would have:
    the hand-off costs no loop step.

    States (``state``) and transitions::

      state    meaning                                           next
      -------  ------------------------------------------------  -------------------------
      _IDLE    on the free list: no job; parked on itself, or    _EAGER (submit steps a
               its task has not taken its first step yet          job on it), _STOP
      _EAGER   a job is being stepped inside submit(), with the  _IDLE (it ended there),
               runner's task made the current task               _RESUME/_YIELD/_WAIT (it
                                                                 suspended), _STOP
      _WAIT    parked; the job waits on ``yielded`` (what its    _RUN (``yielded`` is
               first step yielded), and the task's wake-up is    done)
               attached to it
      _RESUME  the task's next step resumes the job (send None)  _RUN
      _YIELD   the task's next step hands ``yielded`` to it      _RUN
      _RUN     the task drives the job, step by step             _IDLE (the job ended:
                                                                 back on the free list),
                                                                 _STOP
      _STOP    the task is to end at its next step               (the task ends)

    A job is in flight from its suspension (_RESUME/_YIELD/_WAIT) until it ends in _RUN.
    Beside the state, four flags: ``parked`` (the task waits on this runner: waking it
    needs its ``wakeup``), ``counted`` (the job holds a count; False while it lends it to
    a child job, ``_submit_slow``), ``cancel_requested`` (the job cancelled its own task
    in its first step) and ``release_on_exit`` (the count goes back when the task ends:
    ``copy_context``).  The cold paths assert the states they expect.
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "add_done_callback",
        "cancel_requested",
        "coro",
        "counted",
        "ctx",
        "engine",
        "feed",
        "get_loop",
        "handle",
        "live_next",
        "live_prev",
        "parked",
        "release_on_exit",
        "returned",
        "state",
        "task",
        "to_executor",
        "wakeup",
        "yielded",
    )

    def __init__(self, engine: _Engine, ctx: contextvars.Context) -> None:
        self.engine = engine
        self.ctx = ctx
        self.task: asyncio.Task[None] | None = None
        self.wakeup: Any = None
        self.parked = False
        self._asyncio_future_blocking = False
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.handle: _Handle[Any] | None = None
        self.yielded: Any = None
        self.returned: Any = None  # what the job's coroutine returned, until it is taken
        self.state = _IDLE
        self.to_executor = True
        self.counted = True  # the job holds a count (False while it lends it: _submit_slow)
        self.cancel_requested = False
        self.release_on_exit = False
        self.feed: Any = None  # the map whose job this is, for _pull
        # The engine's list of runners whose task lives, in the order they were made.
        self.live_prev: _Runner | None = None
        self.live_next: _Runner | None = None
        # The future protocol, as much of it as a task uses on what it awaits: our task
        # calls get_loop() and add_done_callback() each time it parks on us, so both are
        # C callables (shared by the engine's runners; -1,500 instructions per job).
        # add_done_callback is _capture_wakeup for the first park only, set just before
        # it: a runner that has never parked (every one of 100,000 jobs parked at once)
        # holds no bound method.
        self.get_loop: Callable[[], asyncio.AbstractEventLoop] = engine._loop_getter
        self.add_done_callback: Callable[..., object] = _IGNORE_CALLBACK

    # ---------------------------------------------------------------- as a coroutine
    def send(self, value: Any = None) -> Any:
        state: cython.int = self.state
        if state != _RUN:
            if state in (_WAIT, _RESUME):
                # A job's first resumption: inlined from _step(), as every job that
                # suspends comes through here once.
                self.state = _RUN
                self.parked = False
                self.yielded = None
            else:
                out = self._step(None)
                if out is not _GO:
                    return out
        try:
            if cython.compiled:
                # _c_send and _c_send_in are defined in _engine.pxd (compiled engine only).
                out = _c_send(self, self.coro, value)  # type: ignore[name-defined]  # noqa: F821
            else:
                return _send(self.coro, value)  # type: ignore[arg-type]
        except StopIteration as stop:
            self.engine._job_returned(self, stop.value)
        except BaseException as exc:
            self._raised(exc)
        else:
            if out is not _RETURNED:
                return out
            returned = self.returned
            self.returned = None
            self.engine._job_returned(self, returned)
        if self.state == _IDLE:  # back on the free list (_after_job's first case)
            return self._park()
        return self._after_job()

    __next__ = send  # 3.12+ tasks step an iterator through tp_iternext

    def throw(self, exc: Any, val: Any = None, tb: Any = None) -> Any:
        if val is not None:  # the legacy three-argument form
            exc = val
        elif isinstance(exc, type):
            exc = exc()
        if self.state != _RUN:
            out = self._step(exc)
            if out is not _GO:
                return out
        # The same ending as send()'s, written out again so that send(), which steps
        # every job, stays a single frame.
        try:
            return self.coro.throw(exc)  # type: ignore[union-attr]
        except StopIteration as stop:
            self.engine._job_returned(self, stop.value)
        except BaseException as err:
            self._raised(err)
        return self._after_job()

    def _raised(self, exc: BaseException) -> None:
        try:
            self.engine._job_raised(self, exc)
        except BaseException:
            # KeyboardInterrupt or SystemExit: it goes on up through our task, which ends
            # with it.  The loop raises it already: mark the task's copy retrieved once
            # the task has stored it, or it is logged again when the task is collected.
            # (Only here: a done-callback on every worker would cost each a loop step.)
            self.state = _STOP
            task = self.task
            engine = self.engine
            engine._runner_exited(self)
            if task is not None:
                engine._loop.call_soon(_retrieve, task)
            raise

    def _after_job(self) -> Any:
        """The job ended: wait for the next one, or end the task."""
        state: cython.int = self.state
        if state == _IDLE:
            return self._park()
        if state == _STOP:
            self.engine._runner_exited(self)
            raise StopIteration
        # A job was started on us while the last one ended (by an on_error hook):
        # take it from where its first step left it.
        if state == _RESUME:
            return None  # a bare yield: the task steps us again on the next turn
        return self._step(None)

    def _park(self) -> _Runner:
        """Wait for a job, parked on ourselves: what a step of our task returns then."""
        if self.wakeup is None:
            # The task's first park on us: it hands us its wake-up (_capture_wakeup).
            self.add_done_callback = self._capture_wakeup
        self._asyncio_future_blocking = True
        self.parked = True
        return self

    def close(self) -> None:
        """The task is destroyed unfinished (a loop torn down without cancelling)."""
        coro = self.coro
        if coro is not None and self.state == _RUN:
            coro.close()
            self.engine._job_raised(self, _CancelledError("worker destroyed"))
        self.engine._runner_exited(self)

    def __await__(self) -> Any:  # pragma: no cover - a task drives us; nobody awaits us
        return self

    def _step(self, exc: BaseException | None) -> Any:
        """A step of the task in any state but _RUN: what to yield to the task, or
        _GO to go on into the job (send None, or throw ``exc``)."""
        state: cython.int = self.state
        if state == _IDLE and exc is None:
            return self._park()  # on the free list: wait for a job
        if state in (_IDLE, _STOP):
            self.state = _STOP
            self.parked = False
            self.engine._runner_exited(self)
            if exc is not None:
                raise exc
            raise StopIteration
        assert state in (_WAIT, _RESUME, _YIELD), state
        self.parked = False
        yielded = self.yielded
        self.yielded = None
        self.state = _RUN
        if state == _YIELD:
            if exc is None:
                # The job's first step yielded ``first``: give it to the task now.
                if asyncio.isfuture(yielded):
                    yielded._asyncio_future_blocking = True  # as Future.__await__ does
                return yielded
            if asyncio.isfuture(yielded):
                yielded.cancel()  # the task is cancelled before it waited on it
        return _GO

    # ---------------------------------------------------------------- as a future
    def _capture_wakeup(self, fn: Any, *, context: contextvars.Context | None = None) -> None:
        # The first time our task parks on us, keep its wake-up callback (bound to the
        # task, valid for its whole life; run in the task's context, self.ctx).  Later
        # parks need nothing: a C no-op that takes any arguments stands in.
        self.wakeup = fn
        self.add_done_callback = _IGNORE_CALLBACK
        if cython.compiled and type(self.task) is _Task:
            # Out of the GC's sight as its task is (_Engine._new_runner).
            _c_gc_hide(fn)  # type: ignore[name-defined]  # noqa: F821

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
        state: cython.int = self.state
        if state == _WAIT:
            # Cancel what the job waits on, as Task.cancel does with its _fut_waiter.
            return bool(self.yielded.cancel(msg))
        if state == _EAGER:
            # The job cancelled its own task during its first step: deliver it at the
            # job's next resumption, as a task's pending cancellation would be.
            self.cancel_requested = True
            return False
        if state == _IDLE:
            # Cancelled with no job (the loop is shutting down): end this runner.
            try:
                self.engine._free.remove(self)
            except ValueError:
                pass
            self.state = _STOP
            self.parked = False
            fut = self.engine._loop.create_future()
            fut.cancel(msg)
            self.engine._loop.call_soon(self.wakeup, fut, context=self.ctx)
            return True
        # A resumption is already scheduled: the task delivers the cancellation then.
        return False

    def _handle_cancelled(self, handle: _Handle[Any]) -> None:
        # The handle was cancelled before the job ended: cancel the job.  (A job that
        # has ended has cleared handle._runner, so the handle is this job's.)
        assert handle is self.handle, (handle, self.handle)
        if self.task is not None:
            self.task.cancel()

    def __repr__(self) -> str:
        return f"<coroexecutor runner state={self.state} job={self.coro!r}>"


_collections_abc.Coroutine.register(_Runner)


class _Handle(asyncio.Future[T]):
    """The handle of a job that suspended (or was queued): an asyncio.Future whose
    ``cancel()`` also cancels the job.

    A callback on a plain future would do the same at the price of a bound method per
    worker and a callback added and removed per job; this costs one slot.  A job that
    ends in its first step gets a plain asyncio.Future: nothing can cancel it any more.
    """

    __slots__ = ("_runner",)  # the runner of the job while it runs, else unset or None
    _runner: _Runner | None

    def cancel(self, msg: Any = None) -> bool:
        if not _future_cancel(self, msg):
            return False
        runner = getattr(self, "_runner", None)
        if runner is not None:
            self._runner = None
            runner._handle_cancelled(self)
        return True


# The class, as a C variable of the compiled engine (a module global's read is a dict
# lookup there since 3.12; see _engine.pxd).
_HANDLE_TYPE: Final = _Handle


class _Queued:
    """A job of submit_nowait() waiting for a worker (or, rate-limited, for its turn)."""

    __slots__ = ("args", "fn", "handle", "kwargs", "to_executor")

    def __init__(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handle: asyncio.Future[Any],
        to_executor: bool,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.handle = handle
        self.to_executor = to_executor


class _Feed:
    """A map's input and its results in order, shared by the map and its runners."""

    __slots__ = ("error", "fn", "it", "open", "pending", "settle")

    def __init__(self, fn: Any, it: Any, pending: deque[asyncio.Future[Any]], settle: bool) -> None:
        self.fn = fn
        self.it = it
        self.pending = pending
        self.open = True
        self.error: BaseException | None = None
        self.settle = settle  # return_exceptions: a failed job does not end the map


class _Engine:
    """Worker runners, free list, back-pressure gate and job lifecycle.

    ``CoroutineExecutor`` builds its context manager, shutdown, fail-fast and timeout on
    the hooks at the end of this class.
    """

    _loop: asyncio.AbstractEventLoop
    _loop_getter: Callable[[], asyncio.AbstractEventLoop]  # a C callable returning _loop

    def __init__(self, max_workers: int, copy_context: bool) -> None:
        self._limit = max_workers  # max_workers
        self._name = f"{type(self).__name__}-{next(_NUMBERS)}"  # its workers' tasks' names
        self._workers_made = 0
        # The gate.  _counted: jobs holding a count, the ones max_workers limits (from
        # their start, in submit, to their end).  The fast path starts a job while
        # _counted < _fast_limit; _fast_limit is _limit, or 0 until the executor is bound
        # to a loop, once it is closing, and under a rate limit, which sends submit() to
        # its slow path with the one comparison the fast path makes anyway.
        self._fast_limit = 0
        self._counted = 0
        # Jobs that suspended and have not ended, each on a runner: what stats() calls
        # "running" (a job that ends in its first step, inside submit, never is).
        self._suspended = 0
        # First in, first out: blocked submitters (a future each) and queued jobs of
        # submit_nowait(), in the order they arrived.
        self._waiters: deque[asyncio.Future[Any] | _Queued] = deque()
        self._ready: deque[_Queued] = deque()  # queued jobs holding a count, to start
        self._ready_scheduled = False
        self._pending = 0  # queued jobs not started yet (in _waiters or _ready)
        self._pace: _Pace | None = None  # max_per_second
        self._job_factory: Callable[..., Coroutine[Any, Any, Any]] | None = None
        self._free: list[_Runner] = []  # idle runners, the last parked first to go
        # Every runner whose task lives, in the order they were made: a list linked
        # through the runners (live_prev, live_next), so a live worker costs no dict or
        # set entry (about 50 bytes each at 100,000; the runner has room for the links).
        self._live_first: _Runner | None = None
        self._live_last: _Runner | None = None
        self._copy_context = copy_context
        self._plain_futures = False
        self._step_at_birth = False  # 3.11: a new worker's task steps in its constructor
        self._future_kwargs: dict[str, Any] = {}  # {"loop": our loop}, made once: _new_handle()
        self._context: contextvars.Context | None = None
        self._done_fut: asyncio.Future[None] | None = None
        # Set when no job is left to wait for (_suspended and _pending both 0).
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
        self._loop_getter = itertools.repeat(loop).__next__
        self._future_kwargs = {"loop": loop}
        self._context = contextvars.copy_context()
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        self._done_fut = done
        # loop.create_future() is a Python-level method on the default loop; call the
        # C constructor directly where that is all it does (asyncio's and uvloop's loops).
        self._plain_futures = _loops_own(loop, "create_future")
        # 3.11: _task_stepped_at_birth() takes a new worker's first step from asyncio's
        # ready queue, or stands in for uvloop's call_soon as an instance attribute.
        # Never through loop.__dict__: on 3.11 reading it materializes the instance's
        # dict, and the interpreter then stops specializing every method call on the
        # loop (asyncio's loop is Python: +2,000 instructions per job that suspends).
        self._step_at_birth = (
            not _EAGER_START
            and _loops_own(loop, "call_soon")
            and (type(getattr(loop, "_ready", None)) is deque or type(loop).__dictoffset__ != 0)
        )
        self._refresh_gate()

    def _bound(self) -> bool:
        """Whether the executor is tied to a loop yet (``_loop`` is set from then on)."""
        return self._done_fut is not None

    def _refresh_gate(self) -> None:
        """Open submit()'s fast path only where it may be used: bound, open, no rate limit."""
        bound = self._bound()
        plain = self._state is _OPEN and self._pace is None and bound
        self._fast_limit = self._limit if plain else 0

    # ------------------------------------------------------------------ submit
    async def submit(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Start ``fn(*args, **kwargs)`` as a job; wait first while ``max_workers`` run.

        Returns the job's handle, an ``asyncio.Future``.  The job starts at once,
        inside this call, and runs until its first suspension before submit returns
        (as with ``asyncio.eager_task_factory``).
        """
        if self._counted < self._fast_limit:
            self._counted += 1
            return self._start(fn, args, kwargs, True)  # refuses a bad fn itself
        return await self._submit_slow(fn, args, kwargs, True)

    async def _submit_slow(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], to_executor: bool
    ) -> asyncio.Future[Any]:
        """submit() when the gate is shut: not yet bound, full, or closed."""
        if not callable(fn):
            _check_fn(fn, "submit")
        self._ready_to_submit()
        if self._state is not _OPEN:
            await self._refuse_submit()  # type: ignore[attr-defined]
        if self._counted < self._limit and not self._waiters:
            self._counted += 1
        else:
            # Full.  A job submitting to its own executor lends its count to the new
            # job (which starts now) and waits for a count to resume: W producers can
            # never starve their own children.
            parent = self._runner_of(asyncio.current_task())
            if parent is not None and parent.counted and parent.state != _IDLE:
                parent.counted = False
                if self._pace is not None:
                    await self._wait_for_turn()
                handle = self._start(fn, args, kwargs, to_executor)
                if await self._wait_for_count():
                    parent.counted = True
                return handle
            if not await self._wait_for_count():
                self._check_open()  # type: ignore[attr-defined]
        if self._pace is not None:
            await self._wait_for_turn()
        return self._start(fn, args, kwargs, to_executor)

    async def _submit_for_map(self, fn: Any, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """map()'s submit when the fast path is shut: its jobs' errors are the map's."""
        return await self._submit_slow(fn, args, _NO_KWARGS, False)

    @property
    def _max_in_flight(self) -> int:
        """How many jobs run at once at most: map()'s reorder buffer holds as many."""
        return self._limit

    async def _wait_for_turn(self) -> None:
        """Rate limit: wait, holding our count, for our turn (``_pace``), and claim it."""
        loop = self._loop
        pace = self._pace
        assert pace is not None
        try:
            await pace.turn(loop)
        except _CancelledError:
            self._release()
            raise
        if self._state is not _OPEN:
            self._release()
            self._check_open()  # type: ignore[attr-defined]
        pace.claim(loop.time())

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
        if self._counted < self._fast_limit:
            self._counted += 1
            return self._start(fn, args, kwargs, True)
        return self._submit_nowait_slow(fn, args, kwargs, True, True)

    def _submit_nowait_slow(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        to_executor: bool,
        bounded: bool,
    ) -> asyncio.Future[Any]:
        """submit_nowait() when the gate is shut; ``bounded``: max_pending applies."""
        self._ready_to_submit()
        self._check_open()  # type: ignore[attr-defined]
        if self._counted < self._limit and not self._waiters and self._pace is None:
            self._counted += 1
            return self._start(fn, args, kwargs, to_executor)
        if bounded and self._max_pending is not None and self._pending >= self._max_pending:
            raise self._full_error()  # type: ignore[attr-defined]
        job = self._queued_job(fn, args, kwargs, to_executor)
        self._enqueue(job)
        return job.handle

    def _ready_to_submit(self) -> None:
        """Bind to the running loop on first use; refuse another loop."""
        if not self._bound():
            self._bind()
        elif asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(f"{self!r} is bound to another event loop")

    def _queued_job(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], to_executor: bool
    ) -> _Queued:
        """A job to start later, with its handle (a _Handle, which _start links to its
        runner), counted as pending from now on."""
        handle: asyncio.Future[Any] = _Handle(loop=self._loop)
        job = _Queued(fn, args, kwargs, handle, to_executor)
        handle.add_done_callback(  # the executor's context, not a copy per job
            self._queued_handle_done if to_executor else self._queued_map_handle_done,
            context=self._context,
        )
        self._pending += 1
        return job

    def _enqueue(self, job: _Queued) -> None:
        """A queued job goes to the ready list when a count is free and nobody waits
        ahead of it (rate-limited: it waits there for its turn), else it waits in line."""
        if self._counted < self._limit and not self._waiters:
            self._counted += 1
            self._ready.append(job)
            self._schedule_ready()
        else:
            self._waiters.append(job)

    def _queued_handle_done(self, handle: asyncio.Future[Any]) -> None:
        # Only a queued job's handle gets this callback, removed when the job starts:
        # so it was cancelled (by its owner, or by shutdown) before starting.
        self._pending -= 1
        self._cancelled += 1
        self._check_drained()
        self._job_cancelled_by_handle(True)

    def _queued_map_handle_done(self, handle: asyncio.Future[Any]) -> None:
        # The same, for a queued job of a map's (per_key): its errors are the map's.
        self._pending -= 1
        self._cancelled += 1
        self._check_drained()
        self._job_cancelled_by_handle(False)

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
        pace = self._pace
        while ready:
            if pace is not None:
                at = pace.next_at()
                if at > loop.time():
                    loop.call_at(at, self._start_ready)
                    return
                pace.claim(loop.time())
            job = ready.popleft()
            handle = job.handle
            if handle.done():  # cancelled while queued: already counted
                self._release()
                continue
            handle.remove_done_callback(
                self._queued_handle_done if job.to_executor else self._queued_map_handle_done
            )
            self._pending -= 1
            self._start(job.fn, job.args, job.kwargs, job.to_executor, handle)
        self._ready_scheduled = False
        self._check_drained()

    async def _wait_for_count(self) -> bool:
        """Wait, first in first out, until a finishing job hands us its count.

        False when woken because the executor closed instead.
        """
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.append(fut)
        if self._counted < self._limit:
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

    def _release(self) -> None:
        """A counted job ended: free its count, and hand free counts on, FIFO."""
        self._counted -= 1
        if self._waiters:
            self._admit()

    def _admit(self) -> None:
        """Give free counts to blocked submitters and queued jobs, first in first out.

        Never more than max_workers counts: after max_workers shrank, finishing jobs
        free counts until the executor is under the new limit.
        """
        waiters = self._waiters
        while waiters and self._counted < self._limit:
            waiter = waiters.popleft()
            if isinstance(waiter, _Queued):
                if waiter.handle.done():
                    continue  # cancelled while queued (already counted)
                self._counted += 1
                self._ready.append(waiter)
                self._schedule_ready()
            elif not waiter.done():
                self._counted += 1
                waiter.set_result(None)

    # ------------------------------------------------------------------ job start
    def _start(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        to_executor: bool,
        handle: asyncio.Future[Any] | None = None,
        done: list[Any] | None = None,
        inplace: bool = False,
    ) -> asyncio.Future[Any]:
        """Start one job; the caller holds a count for it.

        This is the hot path: a job that ends in its first step costs one future and
        its coroutine, with no call into the event loop.  With ``done`` (map's fast
        path, _map_fill) it costs no future either: if the job returns in its first
        step, its value is appended to ``done`` and None is returned.  The handle is
        made after the first step (nobody can see it before _start returns it): a plain
        future for a job that has ended, a _Handle for one that suspended.
        """
        loop = self._loop
        queued = handle is not None  # a queued job's caller has gone: nothing to raise to
        try:
            if self._job_factory is None:
                # Compiled: fn(*args, **kwargs) with kwargs passed as it is, as CPython's
                # own call does with a dict; Cython's would copy it first.
                coro = (
                    _c_call(fn, args, kwargs)  # type: ignore[name-defined]  # noqa: F821
                    if cython.compiled
                    else fn(*args, **kwargs)
                )
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
            if type(exc) is _NotAwaitable and not queued:
                raise TypeError(*exc.args) from None  # the caller's mistake, not a job's
            if handle is None:
                handle = self._new_handle()
            self._settle_raised(handle, exc, to_executor)
            return handle
        # Typed locals: C field access in the compiled engine (plain names here).
        runner: _Runner
        free: list[_Runner] = self._free
        if free:
            # Compiled: a pop that keeps the list's storage (_engine.pxd).
            runner = _c_pop(free)
        elif _get_running_loop() is loop:
            runner = self._new_runner()
        else:
            self._refuse_other_loop(None, coro)
        runner.state = _EAGER
        ct = _current_tasks
        if ct is not None:
            prev = ct.get(loop)
            ct[loop] = runner.task
        else:
            prev = _swap_current_task(loop, runner.task)
        if prev is None and _get_running_loop() is not loop:
            # No task of our loop is running: called from a plain callback, or from
            # another event loop.  Only then is the running loop looked up (on 3.11 that
            # costs a getpid() system call, a fifth of a no-op job).
            self._refuse_other_loop(runner, coro)
        try:
            if inplace:
                # _pull: inside the runner's own task step, its context entered already.
                yielded = (
                    _c_send(runner, coro, None)  # type: ignore[name-defined]  # noqa: F821
                    if cython.compiled
                    else _send(coro, None)
                )
            elif cython.compiled:
                # Context.run() and send(), minus the call and the StopIteration.
                yielded = _c_send_in(runner, coro)  # type: ignore[name-defined]  # noqa: F821
            else:
                yielded = runner.ctx.run(_send, coro, None)
        except StopIteration as stop:
            # Only the value is kept past this block: holding the exception (to branch on
            # it later) would make a frame <-> traceback cycle per job for the GC, +30 %.
            runner.returned = stop.value
            yielded = _RETURNED
        except BaseException as exc:
            _swap_current_task(loop, prev)
            runner.state = _IDLE
            self._after_eager(runner)
            if type(exc) is _NotAwaitable and not queued:
                # The function, called by the initializer/job_timeout wrapper in this
                # first step, returned something that cannot be awaited.
                raise TypeError(*exc.args) from None
            if handle is None:
                handle = self._new_handle()
            self._settle_raised(handle, exc, to_executor)
            return handle
        if ct is not None:
            if prev is None:
                del ct[loop]
            else:
                ct[loop] = prev
        else:
            _swap_current_task(loop, prev)
        if yielded is _RETURNED:
            value = runner.returned
            runner.returned = None
            runner.state = _IDLE
            if done is not None:
                done.append(value)
            else:
                if handle is None:
                    if cython.compiled or not self._plain_futures:
                        handle = self._new_handle()
                    else:
                        # _new_handle()'s pure-Python case, inlined: the pure engine's
                        # submit() pays a Python call less per job (-700 instructions).
                        handle = _Future(loop=loop)
                if cython.compiled and (type(handle) is _Future or type(handle) is _HANDLE_TYPE):
                    _future_set_result(handle, value)
                else:
                    handle.set_result(value)
            self._completed += 1
            # A parked task reports a cancellation through runner.cancel(); one that
            # has not run yet only records it (Task._must_cancel, in the C and the
            # Python Task alike), which would hit the next job it runs.  Under
            # copy_context a runner serves one job, parked or not (its task has run
            # already under asyncio.eager_task_factory): it never goes back to the free
            # list, where the next job would see this job's context.
            if (
                runner.cancel_requested
                or self._copy_context
                or (not runner.parked and runner.task._must_cancel)  # type: ignore[union-attr]
            ):
                self._after_eager(runner)
            else:
                if self._waiters:
                    self._release()
                else:
                    self._counted -= 1
                _c_push(self._free, runner)
            return handle  # type: ignore[return-value]  # None with `done`: see above
        # The job suspended: the runner's task takes it from here.  Its handle is a
        # _Handle, whose cancel() reaches the runner.
        job_handle: _Handle[Any]
        if handle is not None:
            job_handle = handle  # type: ignore[assignment]  # a queued job's: submit_nowait
        elif cython.compiled:
            job_handle = _c_call(_HANDLE_TYPE, (), self._future_kwargs)  # type: ignore[name-defined]  # noqa: F821
        else:
            job_handle = _Handle(loop=loop)
        job_handle._runner = runner
        if cython.compiled:
            # Out of the GC's sight while the job runs, as its worker is: the runner
            # holds it (a Future subclass costs the GC a subtype_traverse per visit).
            _c_gc_hide(job_handle)  # type: ignore[name-defined]  # noqa: F821
        self._suspended += 1
        runner.coro = coro
        runner.handle = job_handle
        runner.to_executor = to_executor
        if not runner.parked:
            # The task has not taken its first step yet (or is ending the job before
            # this one); its next step resumes the job.
            if getattr(yielded, "_asyncio_future_blocking", None):
                # The step hands it to the task with the flag set again; until then
                # it is down, so another job may await the same future meanwhile.
                yielded._asyncio_future_blocking = False
            runner.yielded = yielded
            runner.state = _RESUME if yielded is None else _YIELD
        elif yielded is None:  # a bare yield (asyncio.sleep(0)): resume on the next turn
            runner.state = _RESUME
            loop.call_soon(runner.wakeup, self._done_fut, context=runner.ctx)
        elif getattr(yielded, "_asyncio_future_blocking", None) and yielded.get_loop() is loop:
            # It waits on a future: wake the task when that future is done, exactly
            # when a task of its own would have woken.
            yielded._asyncio_future_blocking = False
            runner.yielded = yielded
            runner.state = _WAIT
            yielded.add_done_callback(runner.wakeup, context=runner.ctx)
        else:  # anything else: let the task deal with it (and raise what it raises)
            runner.yielded = yielded
            runner.state = _YIELD
            loop.call_soon(runner.wakeup, self._done_fut, context=runner.ctx)
        if runner.cancel_requested:
            # The job cancelled its own task in its first step: the task holds that
            # cancellation (counted once) for its next step.  Make that step come now,
            # as a task does with the future it is cancelled on.
            runner.cancel_requested = False
            if runner.state == _WAIT:
                yielded.cancel()
        return job_handle

    def _new_handle(self) -> asyncio.Future[Any]:
        """The handle of a job that ended in its first step: a plain future of our loop
        (the C constructor where that is all loop.create_future() does)."""
        if self._plain_futures:
            if cython.compiled:
                # asyncio.Future(loop=loop) with the keyword dict made once, at _bind:
                # Future's C type has no vectorcall, so a call with a keyword builds a
                # dict each time (about 500 of a no-op job's 6,450 instructions).
                return _c_call(_Future, (), self._future_kwargs)  # type: ignore[name-defined,no-any-return]  # noqa: F821
            return _Future(loop=self._loop)
        return self._loop.create_future()

    def _map_fill(self, feed: _Feed, done: list[Any]) -> bool:
        """map()'s fast path: start jobs on items of ``it`` while the gate is open.

        While no earlier job is pending, a job that returns in its first step costs no
        handle: its value goes to ``done``, which the map yields, in order, before
        ``pending``.  Any other job's handle goes to ``pending``.  It stops after a batch
        (at most _MAP_BATCH items, and never more than max_workers, so the map stays
        lazy), when the oldest pending job is done (its result is due), when ``pending``
        holds more than max_workers, or when the gate shuts (the map then takes the slow
        path).  True when ``it`` is exhausted.
        """
        if not feed.open:
            return True  # ended in a runner's pull (_pull)
        fn = feed.fn
        it = feed.it
        pending: deque[asyncio.Future[Any]] = feed.pending
        limit = self._limit
        batch = limit if limit < _MAP_BATCH else _MAP_BATCH
        while batch > 0:
            batch -= 1
            if self._counted >= self._fast_limit:
                return False
            args = next(it, None)
            if args is None:
                feed.open = False
                return True
            self._counted += 1
            if not pending:
                handle = self._start(fn, args, _NO_KWARGS, False, None, done)
                if handle is None:
                    continue  # it returned: its value is in done
            else:
                handle = self._start(fn, args, _NO_KWARGS, False)
            pending.append(handle)
            if type(handle) is _HANDLE_TYPE and handle._runner is not None:
                handle._runner.feed = feed
            if pending[0].done() or len(pending) > limit:
                return False
        return False

    def _pull(self, runner: _Runner, feed: _Feed) -> None:
        """Pull-style map: the job of ``feed`` on ``runner`` ended inside the runner's
        task step, and the runner is back on the free list: start the map's next items
        on it at once, in place, while the gate is open, no submitter waits and the
        map's look-ahead has room.  The map's own _map_fill takes over otherwise."""
        pending = feed.pending
        fn = feed.fn
        free: list[_Runner] = self._free
        while feed.open and not self._waiters and self._counted < self._fast_limit:
            if len(pending) >= 2 * self._limit:
                return  # max_workers in flight and as many finished behind a slow one
            if not free or free[len(free) - 1] is not runner:
                return  # the runner was retired (a job before cancelled its task)
            try:
                args = next(feed.it, None)
                if args is None:
                    feed.open = False
                    return
                self._counted += 1
                handle = self._start(fn, args, _NO_KWARGS, False, None, None, True)
            except BaseException as exc:
                # The input raised, or fn returned something that cannot be awaited:
                # the map raises it after the results before it, as when it pulls.
                feed.open = False
                feed.error = exc
                return
            pending.append(handle)
            if type(handle) is _HANDLE_TYPE and handle._runner is not None:
                runner.feed = feed
                return
            if not feed.settle and (handle.cancelled() or handle.exception() is not None):
                # It failed in its first step: the map raises it in its place, and no
                # item after a failing one is started (as in _map_fill).
                feed.open = False
                return

    def _refuse_other_loop(
        self, runner: _Runner | None, coro: Coroutine[Any, Any, Any]
    ) -> NoReturn:
        """_start() was called from another event loop (a second asyncio.run(), another
        loop in this thread): undo it and raise, before the job has run at all."""
        if runner is not None:  # it was made the current task of our loop: undo that
            loop = self._loop
            if _current_tasks is not None:
                del _current_tasks[loop]
            else:
                _swap_current_task(loop, None)
            runner.state = _IDLE
            _c_push(self._free, runner)
        coro.close()  # never started: no "coroutine ... was never awaited"
        self._release()
        raise RuntimeError(f"{self!r} is bound to another event loop")

    def _after_eager(self, runner: _Runner) -> None:
        """A job ended in its first step: release its count; recycle or retire the runner."""
        task = runner.task
        assert task is not None
        if runner.cancel_requested or task.cancelling() or task._must_cancel:  # type: ignore[attr-defined]
            # A cancelled task carries its cancellation into whatever it runs next.
            runner.cancel_requested = False
            self._release()
            self._retire(runner)
        elif self._copy_context:
            # One job per task here, and this task has yet to take its (last) step:
            # the count goes back when it has, so at most max_workers such tasks exist.
            runner.release_on_exit = True
            self._retire(runner)
        elif self._state is _OPEN:
            self._release()
            _c_push(self._free, runner)
        else:
            self._release()
            self._retire(runner)

    def _new_runner(self) -> _Runner:
        """A runner and its task, which parks until it gets a job (or takes the job
        already stepped on it at its first step)."""
        if self._copy_context:
            ctx = contextvars.copy_context()
        else:
            assert self._context is not None
            ctx = self._context.copy()
        runner = _Runner(self, ctx)
        loop = self._loop
        # The task's name, as `python -m asyncio ps` shows it: the executor and the worker.
        self._workers_made += 1
        name = f"{self._name} worker {self._workers_made}"
        if self._plain_futures and loop.get_task_factory() is None:
            # What create_task() does then, minus a Python-level call on asyncio's loop.
            # 3.12+: the task takes its first step now, inside the constructor (it
            # parks on the runner), not from the loop later: the job about to be
            # stepped on it waits with the task's wake-up already attached, and no
            # first step per new worker is left queued (100,000 of them, with 100,000
            # jobs parked at once).
            if _EAGER_START:
                task: asyncio.Task[None] = _Task(  # type: ignore[call-arg]
                    runner, loop=loop, name=name, context=ctx, eager_start=True
                )
            elif self._step_at_birth:
                task = _task_stepped_at_birth(loop, runner, ctx, name)
            else:
                task = _Task(runner, loop=loop, name=name, context=ctx)
        else:
            task = loop.create_task(runner, name=name, context=ctx)
        runner.task = task
        if cython.compiled and not task.done():
            # While its task lives, the runner, its context and its task are out of the
            # cyclic GC's sight; _runner_exited() shows them again (_engine.pxd says why).
            _c_gc_hide(runner)  # type: ignore[name-defined]  # noqa: F821
            _c_gc_hide(ctx)  # type: ignore[name-defined]  # noqa: F821
            if type(task) is _Task:
                _c_gc_hide(task)  # type: ignore[name-defined]  # noqa: F821
                if runner.wakeup is not None:
                    # Captured in the constructor (a first step at birth), before
                    # runner.task was set for _capture_wakeup() to see.
                    _c_gc_hide(runner.wakeup)  # type: ignore[name-defined]  # noqa: F821
        if task.done():  # it ended in its first step, in the constructor (not so far)
            return runner
        if self._live_first is None:
            _LIVE.add(self)
        last = self._live_last
        runner.live_prev = last
        if last is None:
            self._live_first = runner
        else:
            last.live_next = runner
        self._live_last = runner
        return runner

    def _runner_of(self, task: asyncio.Task[Any] | None) -> _Runner | None:
        """The runner of ours whose task this is, if any (a worker's task's coroutine is
        its runner)."""
        if task is None:
            return None
        coro = task.get_coro()
        if type(coro) is _Runner and coro.engine is self and coro.task is task:
            return coro
        return None

    def _live_runners(self) -> list[_Runner]:
        """Every runner whose task lives, oldest first."""
        runners = []
        runner = self._live_first
        while runner is not None:
            runners.append(runner)
            runner = runner.live_next
        return runners

    def _retire(self, runner: _Runner) -> None:
        """A runner with no job is to end (its task ends at its next step)."""
        assert runner.state in (_IDLE, _STOP), runner.state
        runner.state = _STOP
        if runner.parked:
            runner.parked = False
            self._loop.call_soon(runner.wakeup, self._done_fut, context=runner.ctx)

    def _runner_exited(self, runner: _Runner) -> None:
        """A runner's task is ending (retired, cancelled while idle, or on
        KeyboardInterrupt/SystemExit)."""
        if runner.release_on_exit:
            runner.release_on_exit = False
            self._release()
        task = runner.task
        runner.task = None
        if cython.compiled:
            # Seen by the GC again before anything can free them: a Context's dealloc
            # (3.11) unlinks it from the GC's lists unchecked.
            _c_gc_show(runner)  # type: ignore[name-defined]  # noqa: F821
            _c_gc_show(runner.ctx)  # type: ignore[name-defined]  # noqa: F821
            if runner.wakeup is not None:
                _c_gc_show(runner.wakeup)  # type: ignore[name-defined]  # noqa: F821
            if type(task) is _Task:
                _c_gc_show(task)  # type: ignore[name-defined]  # noqa: F821
        runner.wakeup = None  # a bound method of the task: a reference cycle otherwise
        if task is not None:  # it is on the list of live runners: unlink it
            prev = runner.live_prev
            nxt = runner.live_next
            if prev is None:
                self._live_first = nxt
            else:
                prev.live_next = nxt
            if nxt is None:
                self._live_last = prev
            else:
                nxt.live_prev = prev
            runner.live_prev = runner.live_next = None
        try:
            self._free.remove(runner)  # only if it died while idle (rare)
        except ValueError:
            pass
        if self._live_first is None:
            _LIVE.discard(self)
            gone = self._workers_gone
            if gone is not None and not gone.done():
                gone.set_result(None)

    # ------------------------------------------------------------------ job end
    def _job_returned(self, runner: _Runner, result: Any) -> None:
        """A job ended in its task with a result (the hot path of a suspended job)."""
        handle = runner.handle
        assert handle is not None
        if cython.compiled:
            _c_gc_show(handle)  # type: ignore[name-defined]  # noqa: F821
        runner.handle = None
        runner.coro = None
        handle._runner = None
        # A _Handle (the job suspended): its methods are called as C functions, compiled.
        if _future_done(handle) if cython.compiled else handle.done():
            # Its handle was cancelled while the job ran (or, by hand, given a result).
            self._suspended -= 1
            self._cancelled += 1
            runner.feed = None
            self._end_runner(runner)
            self._job_cancelled_by_handle(runner.to_executor)
            return
        if cython.compiled:
            _future_set_result(handle, result)
        else:
            handle.set_result(result)
        self._completed += 1
        self._suspended -= 1
        if runner.counted:
            if self._waiters:
                self._release()
            else:
                self._counted -= 1
        else:
            runner.counted = True
        task = runner.task
        if cython.compiled and type(task) is _Task:
            cancelling = _task_cancelling(task)
        else:
            cancelling = task.cancelling()  # type: ignore[union-attr]
        feed = runner.feed
        runner.feed = None
        if self._state is _OPEN and not self._copy_context and not cancelling:
            runner.state = _IDLE
            _c_push(self._free, runner)
            if feed is not None and feed.open:
                self._pull(runner, feed)
            if self._suspended == 0 and self._drained is not None:
                self._check_drained()
        else:
            runner.counted = False  # released above
            self._end_runner(runner)

    def _job_raised(self, runner: _Runner, exc: BaseException) -> None:
        # Its first lines are _job_returned()'s, written out in both: that one is the
        # hot path of every job that suspends, and pays no call for them.
        assert runner.state == _RUN, runner.state
        handle = runner.handle
        assert handle is not None
        if cython.compiled:
            _c_gc_show(handle)  # type: ignore[name-defined]  # noqa: F821
        runner.handle = None
        runner.coro = None
        self._suspended -= 1
        handle._runner = None
        runner.feed = None
        to_executor = runner.to_executor
        self._end_runner(runner)
        self._settle_raised(handle, exc, to_executor)

    def _end_runner(self, runner: _Runner) -> None:
        """The job on ``runner`` ended: release its count and recycle or retire it."""
        assert runner.state == _RUN, runner.state
        if runner.counted:
            self._release()
        runner.counted = True
        assert runner.task is not None
        if runner.task.cancelling() or self._copy_context or self._state is not _OPEN:
            # A cancelled task carries its cancellation (count, pending throw) into
            # whatever it runs next, and a copied context serves one job: retire it.
            runner.state = _STOP
        else:
            runner.state = _IDLE
            _c_push(self._free, runner)
        self._check_drained()

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done() and not self._suspended and not self._pending:
            drained.set_result(None)

    def _settle_raised(
        self, handle: asyncio.Future[Any], exc: BaseException, to_executor: bool
    ) -> None:
        """Record a job that ended by an exception, and tell the executor."""
        if handle.done():
            # Its handle was cancelled first, and says so: the job counts as cancelled.
            self._cancelled += 1
            if isinstance(exc, _CancelledError):
                self._job_cancelled_by_handle(to_executor)
                return
            # It failed while unwinding: that error goes to on_error and errors="group",
            # but for fail-fast the job was cancelled, which is what caused it.
            self._job_error(handle, exc)  # type: ignore[attr-defined]
            self._job_failed(exc, to_executor, after_cancel=True)  # type: ignore[attr-defined]
            return
        elif isinstance(exc, _CancelledError):
            handle.cancel(*exc.args[:1])
            self._cancelled += 1
        else:
            handle.set_exception(exc)
            handle.exception()  # raised at exit or kept on the handle: never "never retrieved"
            self._failed += 1
            self._job_error(handle, exc)  # type: ignore[attr-defined]
        self._job_failed(exc, to_executor)  # type: ignore[attr-defined]
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
        for runner in self._live_runners():
            if runner.state in (_IDLE, _STOP) or runner.task is None:
                continue
            handle = runner.handle
            if handle is not None:
                # The handle says "cancelled" at once, as Future.cancel() does; the
                # job itself unwinds in its task, and exit/shutdown wait for that.
                handle._runner = None  # the task is cancelled just below, once
                handle.cancel()
            runner.task.cancel()

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
        for runner in self._free:
            self._retire(runner)
        self._free.clear()

    # ------------------------------------------------------------------ hooks
    # CoroutineExecutor provides _full_error(), and from _lifecycle (shared with
    # ShardedExecutor) _check_open(), _job_failed() and _job_error(); the engine calls
    # them on its slow paths.  They are not declared here, not even for the type
    # checker under TYPE_CHECKING: Cython compiles a def in a class body whatever the
    # `if` around it, and the stub would shadow the real method.
    _max_pending: int | None

    def _job_cancelled_by_handle(self, to_executor: bool) -> None:
        self._job_failed(_CancelledError(), to_executor)  # type: ignore[attr-defined]


def _loops_own(loop: asyncio.AbstractEventLoop, name: str) -> bool:
    """Whether the loop's method ``name`` is asyncio's or uvloop's own, not an override."""
    meth = getattr(type(loop), name)
    if meth is getattr(asyncio.BaseEventLoop, name):
        return True
    uvloop = sys.modules.get("uvloop")  # imported already if this is its loop
    return uvloop is not None and meth is getattr(uvloop.Loop, name)


def _task_stepped_at_birth(
    loop: asyncio.AbstractEventLoop, runner: _Runner, ctx: contextvars.Context, name: str
) -> asyncio.Task[None]:
    """3.11's ``Task(runner, loop=loop, context=ctx)`` taking its first step inside its
    constructor, as ``eager_start=True`` does on 3.12.

    3.11's Task schedules its first step with ``loop.call_soon``.  On asyncio's loop
    that step is the handle the constructor just appended to the loop's ready queue:
    it is taken back at once and run.  On uvloop, whose queue is out of reach, an
    attribute of the loop instance stands in for the method while the constructor
    runs (_FirstStep): it runs that one step at once, and passes any other call on to
    the loop's own method (a finalizer run by a collection in between may call it).
    A runner's first step only parks it, so the job stepped on it next waits with the
    task's wake-up attached, and no queued step and handle per new worker stays behind
    (100,000 of them, made between the jobs' own objects, with 100,000 jobs parked at
    once).  A call_soon set on the loop instance (a mock, a tracer) is left to see
    every step, as before.
    """
    own = loop.call_soon
    if getattr(own, "__self__", None) is not loop or getattr(own, "__name__", "") != "call_soon":
        return _Task(runner, loop=loop, name=name, context=ctx)  # someone else's call_soon
    ready = getattr(loop, "_ready", None)
    if type(ready) is deque:
        task = _Task(runner, loop=loop, name=name, context=ctx)
        if ready:
            handle = ready[len(ready) - 1]
            step = handle._callback
            if getattr(step, "__self__", None) is task and handle._context is ctx:
                ready.pop()
                _first_step(loop, step, handle._args, ctx)
        return task
    stand_in = _FirstStep(loop, runner)
    setattr(loop, "call_soon", stand_in)  # noqa: B010  # not loop.__dict__ (see _bind)
    try:
        return _Task(runner, loop=loop, name=name, context=ctx)
    finally:
        if loop.call_soon is stand_in:
            delattr(loop, "call_soon")


def _first_step(
    loop: asyncio.AbstractEventLoop,
    step: Callable[..., Any],
    args: tuple[Any, ...],
    context: contextvars.Context,
) -> None:
    """Run a new worker task's first step now, inside submit(): the step enters its own
    task, so the submitter's is taken off the loop meanwhile."""
    ct = _current_tasks
    assert ct is not None
    prev = ct.pop(loop, None)
    try:
        context.run(step, *args)
    finally:
        if prev is not None:
            ct[loop] = prev


class _FirstStep:
    """What uvloop's call_soon is while _task_stepped_at_birth() makes a runner's task."""

    __slots__ = ("loop", "runner")

    def __init__(self, loop: asyncio.AbstractEventLoop, runner: _Runner) -> None:
        self.loop = loop
        self.runner = runner

    def __call__(
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> Any:
        loop = self.loop
        runner = self.runner
        task = getattr(callback, "__self__", None)  # the C step wrapper's, or a method's
        if (
            loop.call_soon is not self
            or type(task) is not _Task
            or task.get_coro() is not runner
            or context is None
        ):
            return type(loop).call_soon(loop, callback, *args, context=context)
        delattr(loop, "call_soon")  # the loop's own again before the step runs anything
        _first_step(loop, callback, args, context)
        return None


def _retrieve(task: asyncio.Task[None]) -> None:
    # A worker only ends with an exception when a job raised KeyboardInterrupt or
    # SystemExit through it (_Runner._raised); that went out through the loop already.
    if task.done() and not task.cancelled():
        task.exception()
