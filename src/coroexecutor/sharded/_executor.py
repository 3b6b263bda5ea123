"""ShardedExecutor: one job stream over several processes (or Ray actors).

Each shard is a :class:`CoroutineExecutor` with its own event loop in another process.
The parent keeps one future (the job's handle) per job in flight and nothing else per
job; it talks to each shard over a *transport* (``_process``, ``_ray``) that carries
the frames of ``_protocol`` both ways; the shard side is ``_shard._ShardCore``.

Back-pressure
-------------
A shard's capacity is ``max_workers`` plus a batch buffer; the parent holds that many
*credits* per shard, spends one per job it places there and gets it back when the job's
outcome comes back.  ``submit`` waits (first in, first out) while no shard has a credit,
so the parent never holds more than ``shards x capacity`` jobs, nor does any shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import types
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Sequence,
)
from typing import Any, Final, Literal, TypeVar

from .._jobs import _NO_KWARGS, _State
from .._lifecycle import ExecutorFull, ExecutorStats, _check_count, _Lifecycle, _Options
from .._retry import Retry
from ._protocol import (
    _BATCH,
    _CANCEL_ALL,
    _CANCELLED,
    _CLOSE,
    _ERROR,
    _EXIT_NO_MAIN_GUARD,
    _NO_MAIN_GUARD,
    _OK,
    _OK_PICKLED,
    _PROTOCOL,
    _RESULTS,
    ShardCrashed,
    _check_job_fn,
    _describe,
    _dumps,
    _load_exception,
    _loads,
    _pickle_error,
    _shard_capacity,
    _ShardConfig,
    _Transport,
)

__all__ = ("ShardedExecutor",)

T = TypeVar("T")

_CancelledError: Final = asyncio.CancelledError
_future_cancel: Final = asyncio.Future.cancel  # cancel a handle without telling its shard
_START_TIMEOUT: Final = 120.0  # a shard must say it is ready within this
_CLOSE_GRACE: Final = 5.0  # after asking a shard to close: then SIGTERM, then SIGKILL


# ---------------------------------------------------------------------- parent side
class _Handle(asyncio.Future[Any]):
    """A job's handle: a Future whose cancel() also cancels the job in its shard."""

    __slots__ = ("_jid", "_shard", "_to_executor")

    _jid: int
    _to_executor: bool
    _shard: _Shard | None

    def cancel(self, msg: Any | None = None) -> bool:
        if not _future_cancel(self, msg):
            return False
        shard = self._shard
        if shard is not None:  # placed; a queued job's cancel is seen when its turn comes
            shard.exe._cancel_job(shard, self._jid)
        return True


class _Queued:
    """A job of submit_nowait() waiting, in the gate's line, for a shard's credit."""

    __slots__ = ("blob", "fid", "handle")

    def __init__(self, fid: int, blob: bytes | None, handle: _Handle) -> None:
        self.fid = fid
        self.blob = blob
        self.handle = handle


class _Shard:
    __slots__ = (
        "alive",
        "cancels",
        "control",
        "credits",
        "defs",
        "exe",
        "index",
        "jobs",
        "known",
        "outbox",
        "pending",
        "ready",
        "resize",
        "retried",
        "running",
        "transport",
    )

    def __init__(self, exe: ShardedExecutor, index: int, transport: _Transport) -> None:
        self.exe = exe
        self.index = index
        self.transport = transport
        self.credits = 0
        self.jobs: dict[int, _Handle] = {}  # in flight: placed here, outcome not back yet
        self.outbox: list[tuple[int, int, bytes | None]] = []
        self.defs: list[tuple[int, bytes]] = []
        self.known: set[int] = set()  # function ids this shard has been sent
        self.cancels: list[int] = []
        self.control = 0
        self.resize: int | None = None  # a new max_workers to send
        self.alive = False
        self.running = 0
        self.pending = 0
        self.retried = 0  # the shard's retries so far (it outlives the shard)
        self.ready: asyncio.Future[None] | None = None


_NO_SHARD_LEFT: Final = object()  # a blocked submitter's wake-up: every shard is dead


class ShardedExecutor(_Lifecycle):
    """Run importable coroutine functions over ``shards`` processes (or Ray actors).

    Each shard is a ``CoroutineExecutor(max_workers)`` on its own event loop (uvloop when
    installed) in another process, so CPU-bound work in jobs uses every core.  The API
    and the error rules are those of ``CoroutineExecutor``::

        async with ShardedExecutor(shards=4, max_workers=1000) as exe:
            async for page in exe.map(parse, urls):
                ...

    Jobs must be coroutine functions importable by ``module:qualname`` with picklable
    arguments and results; anything else is a ``TypeError`` from ``submit``.
    """

    def __init__(
        self,
        shards: int,
        *,
        max_workers: int = 1000,
        backend: Literal["process", "ray"] = "process",
        suppress_task_errors: bool = False,
        timeout: float | None = None,
        job_timeout: float | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Sequence[Any] = (),
        max_per_second: float | None = None,
        burst: int = 1,
        max_pending: int | None = None,
        errors: Literal["first", "group"] = "first",
        on_error: Callable[[asyncio.Future[Any], BaseException], object] | None = None,
        progress: bool | int = False,
        retry: Retry | None = None,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        ray_address: str | None = None,
        ray_actor_options: dict[str, Any] | None = None,
    ) -> None:
        self._nshards = _check_count("shards", shards)
        self._max_workers = _check_count("max_workers", max_workers)
        if backend not in ("process", "ray"):
            raise ValueError(f'backend must be "process" or "ray", got {backend!r}')
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
        if options.initializer is not None:
            # It runs in the shards, before each job, as CoroutineExecutor's does: they
            # import it by name, and its arguments travel pickled.
            _check_job_fn(options.initializer, "initializer", must_be_async=False)
            try:
                _dumps(options.initargs, _PROTOCOL)
            except Exception as err:
                raise TypeError(
                    f"initargs cannot be pickled to send them to the shards: {err!r}"
                ) from err
        if options.retry is not None:
            # The shards retry their jobs themselves: Retry (its exception types) travels
            # pickled, so those types must be importable by name.
            try:
                _dumps(options.retry, _PROTOCOL)
            except Exception as err:
                raise TypeError(
                    f"retry cannot be pickled to send it to the shards (its exception types "
                    f"must be importable by name): {err!r}"
                ) from err
        self._job_timeout = options.job_timeout
        self._pace = options.pace()
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f'start_method must be "spawn" or "forkserver" (not "fork": the parent '
                f"runs an event loop), got {start_method!r}"
            )
        if ray_address is not None and not isinstance(ray_address, str):
            raise TypeError(f"ray_address must be a str or None, got {ray_address!r}")
        if ray_actor_options is not None and not isinstance(ray_actor_options, dict):
            raise TypeError(f"ray_actor_options must be a dict or None, got {ray_actor_options!r}")
        if backend == "ray":
            from ._ray import _import_ray

            _import_ray()  # ImportError naming the extra, now rather than at start
        elif ray_address is not None or ray_actor_options is not None:
            raise ValueError('ray_address and ray_actor_options need backend="ray"')
        self._backend = backend
        self._start_method = start_method
        self._ray_address = ray_address
        self._ray_actor_options = dict(ray_actor_options or {})
        self._capacity = _shard_capacity(self._max_workers)

        self._state = _State.NEW
        self._shards: list[_Shard] = []
        self._live: list[_Shard] = []
        self._starting: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None  # set once the shards are stopped
        self._background: set[asyncio.Task[Any]] = set()  # failing a dead shard's jobs
        self._closing_task: asyncio.Task[Any] | None = None  # shutdown(wait=False)
        # Blocked submitters (a future each) and submit_nowait()'s jobs, in one line.
        self._waiters: deque[asyncio.Future[Any] | _Queued] = deque()
        self._queued = 0  # submit_nowait() jobs in that line, not placed yet
        self._wake_scheduled = False  # a rate-limited _wake() is due
        self._max_pending = options.max_pending
        self._flush_scheduled = False
        self._next_jid = 0
        self._fids: dict[Any, int] = {}
        self._fn_blobs: list[bytes] = []
        self._inflight = 0
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._drained: asyncio.Future[None] | None = None

        self._timer: asyncio.TimerHandle | None = None
        self._aborting = False
        self._init_lifecycle(options)

    # ------------------------------------------------------------------ public API
    @property
    def shards(self) -> int:
        """How many shards (processes or Ray actors) run the jobs."""
        return self._nshards

    @property
    def max_workers(self) -> int:
        """How many jobs each shard runs at once (one event loop's limit, as for
        CoroutineExecutor).  Settable while running: each shard grows at once, or
        lets its running jobs finish and starts no new one until it is under the new
        limit."""
        return self._max_workers

    @max_workers.setter
    def max_workers(self, value: int) -> None:
        value = _check_count("max_workers", value)
        old_capacity = self._capacity
        self._max_workers = value
        self._capacity = _shard_capacity(value)
        if self._state is _State.OPEN:
            self._resize_shards(old_capacity)
        # else: not started (the shards start with it, or _ensure_started() resizes
        # them once they are up), or gone.

    def _resize_shards(self, old_capacity: int) -> None:
        # What was submitted before goes first, under the limit of its time: a shard
        # applies a frame's resize before the frame's jobs.
        self._flush()
        # Credits are a shard's free capacity: they follow it (below zero until enough
        # of its jobs have ended after a shrink); the shards learn it with the next frame.
        for shard in self._live:
            shard.credits += self._capacity - old_capacity
            shard.resize = self._max_workers
        self._schedule_flush()
        if self._waiters:
            self._wake()

    @property
    def shard_pids(self) -> list[int | None]:
        """The process id of each shard (None before it has started)."""
        return [s.transport.pid for s in self._shards] or [None] * self._nshards

    def stats(self) -> ExecutorStats:
        """Job counts over every shard, as a frozen ExecutorStats.

        ``running`` is what the shards last reported as started, ``pending`` the rest
        of the jobs in flight (queued in a shard or on the way); ``max_workers`` is the
        total, ``shards * max_workers``.
        """
        inflight = self._inflight
        running = min(inflight, sum(s.running for s in self._live))
        return ExecutorStats(
            submitted=self._submitted,
            pending=inflight - running + self._queued,
            running=running,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            max_workers=self._max_workers,
            retried=sum(s.retried for s in self._shards),
        )

    async def submit(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> Any:
        """Send ``fn(*args, **kwargs)`` to a shard; wait first while every shard is full.

        Returns the job's handle, an ``asyncio.Future`` resolved when the shard reports
        the job's outcome; ``handle.cancel()`` cancels the job in its shard.
        """
        return await self._submit(fn, args, kwargs, True)

    def submit_nowait(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> asyncio.Future[T]:
        """Send ``fn(*args, **kwargs)`` to a shard now if one has room, else queue it.

        As ``CoroutineExecutor.submit_nowait``: a plain method, first in first out with
        blocked ``await submit()`` calls, bounded by ``max_pending`` (``ExecutorFull``);
        queued jobs still run at shutdown unless cancelled.  Needs a running event loop;
        it starts the shards if they are not up yet.
        """
        fid, blob = self._encode(fn, args, kwargs, "submit_nowait")
        handle = self._place_now(fid, blob, True)
        if handle is not None:
            return handle
        loop = asyncio.get_running_loop()
        if self._state in (_State.CLOSING, _State.CLOSED):
            raise RuntimeError("cannot schedule new futures after shutdown")
        if self._max_pending is not None and self._queued >= self._max_pending:
            raise ExecutorFull(
                f"{self!r}: no shard has room and {self._queued} jobs already queued "
                f"(max_pending={self._max_pending})"
            )
        handle = _Handle(loop=loop)
        handle._shard = None
        handle._to_executor = True
        handle.add_done_callback(self._queued_cancelled)
        self._waiters.append(_Queued(fid, blob, handle))
        self._queued += 1
        self._submitted += 1
        if self._state is _State.NEW:
            self._loop = loop
            self._spawn_start()
        elif self._state is _State.OPEN:
            self._wake()
        return handle

    def _encode(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], what: str
    ) -> tuple[int, bytes | None]:
        """A job as it travels: its function's id (sent once per shard) and its pickled
        arguments; or id -1 and the pickle of the whole call."""
        try:
            fid = self._fids.get(fn)
        except TypeError:  # an unhashable callable
            fid = None
        if fid is None:
            fid = self._register(fn, what)
        if fid >= 0:
            if args or kwargs:
                try:
                    return fid, _dumps((args, kwargs), _PROTOCOL)
                except Exception as err:
                    raise _pickle_error(fn, err) from err
            return fid, None
        try:
            return fid, _dumps((fn, args, kwargs), _PROTOCOL)
        except Exception as err:
            raise _pickle_error(fn, err) from err

    async def _submit(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], to_executor: bool
    ) -> _Handle:
        fid, blob = self._encode(fn, args, kwargs, "submit")
        handle = self._place_now(fid, blob, to_executor)
        if handle is not None:
            return handle
        shard = await self._wait_for_credit()
        if self._pace is not None:
            await self._wait_for_turn(shard)
        return self._place(shard, fid, blob, to_executor)

    def _place_now(self, fid: int, blob: bytes | None, to_executor: bool) -> _Handle | None:
        """The fast path: place the job at once if a shard has room and nobody is ahead
        in line (and no rate limit applies); else None."""
        if self._state is _State.OPEN and not self._waiters and self._pace is None:
            best = self._least_loaded()
            if best is not None:
                best.credits -= 1
                return self._place(best, fid, blob, to_executor)
        return None

    async def _wait_for_turn(self, shard: _Shard) -> None:
        """max_per_second, one rate over every shard: wait, holding the credit taken on
        ``shard``, for our turn (``_pace``), and claim it."""
        pace = self._pace
        assert pace is not None
        loop = self._loop
        try:
            await pace.turn(loop)
            self._check_open()
        except BaseException:
            shard.credits += 1  # not used: pass it on
            self._wake()
            raise
        pace.claim(loop.time())

    def _used(self) -> bool:
        return self._state is not _State.NEW

    async def _prepare_shutdown(self) -> bool:
        if self._state is _State.NEW:  # never started: nothing to stop
            self._state = _State.CLOSED
            return False
        if self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)
        return True

    def _stop_without_waiting(self) -> None:
        # The shards stop in the background; leaving the `async with` waits for that.
        if self._closing_task is None:
            self._closing_task = self._loop.create_task(self._finish())

    async def __aenter__(self) -> ShardedExecutor:
        self._claim_entry()
        await self._ensure_started()
        self._entry_done()
        return self

    async def _finish_at_exit(self) -> BaseException | None:
        clean = False
        try:
            cancelled = await self._finish()
            clean = True
        finally:
            if not clean:
                self._kill_all()  # a second Ctrl-C, or worse: no shard outlives us
        return cancelled

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled (nor sent to a shard)")

    def _repr_fields(self) -> str:
        return f"backend={self._backend} shards={self._nshards} "

    # ------------------------------------------------------------------ startup
    async def _ensure_started(self) -> None:
        if self._state is _State.OPEN:
            return
        if self._state is _State.STARTING:
            assert self._starting is not None
            await asyncio.shield(self._starting)
            return
        if self._state is not _State.NEW:
            raise RuntimeError("cannot schedule new futures after shutdown")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._state = _State.STARTING
        self._starting = loop.create_future()
        self._closed = loop.create_future()
        started_capacity = self._capacity
        try:
            await self._start_shards()
        except BaseException as err:
            self._kill_all()
            self._state = _State.CLOSED
            self._closed.set_result(None)
            if isinstance(err, Exception):
                self._starting.set_exception(err)
                self._starting.exception()
            else:
                self._starting.cancel()
            raise
        self._state = _State.OPEN
        self._starting.set_result(None)
        if self._capacity != started_capacity:  # resized while the shards started
            self._resize_shards(started_capacity)
        if self._waiters:
            self._wake()  # jobs queued by submit_nowait() before the shards were up
        if self._progress is not None:
            self._progress.start(loop)
        if self._timeout is not None:
            # From when the shards are up: starting them (seconds on a Ray cluster) is
            # not the jobs' time.
            self._timer = loop.call_later(self._timeout, self._on_timeout)

    async def _start_one(self, shard: _Shard) -> None:
        await shard.transport.start(
            functools.partial(self._on_frame, shard),
            functools.partial(self._on_lost, shard),
        )
        shard.alive = True
        assert shard.ready is not None
        await shard.ready

    async def _lacks_main_guard(self) -> bool:
        """Whether a shard process ended at start because the user's script, which it
        imported, starts shards itself (no ``if __name__ == "__main__":``)."""
        for shard in self._shards:
            if shard.transport.pid is not None and not shard.alive:
                _, code = await shard.transport.describe_loss(None)
                if code == _EXIT_NO_MAIN_GUARD:
                    return True
        return False

    def _new_transport(self, config: _ShardConfig) -> _Transport:
        # Each transport is imported when first used: `import coroexecutor` loads neither.
        if self._backend == "ray":
            from ._ray import _RayTransport

            return _RayTransport(config, self._ray_address, self._ray_actor_options)
        from ._process import _ProcessTransport

        return _ProcessTransport(config, self._start_method)

    async def _start_shards(self) -> None:
        loop = self._loop
        if self._backend == "ray":
            from ._ray import _ensure_ray

            _ensure_ray(self._ray_address)
        uvloop = None
        for i in range(self._nshards):
            config = _ShardConfig(
                i,
                self._max_workers,
                self._job_timeout,
                self._capacity,
                uvloop,
                self._options.initializer,
                self._options.initargs,
                self._options.retry,
            )
            shard = _Shard(self, i, self._new_transport(config))
            shard.ready = loop.create_future()
            self._shards.append(shard)
        try:
            async with asyncio.timeout(_START_TIMEOUT), asyncio.TaskGroup() as group:
                for shard in self._shards:
                    group.create_task(self._start_one(shard))
        except BaseExceptionGroup as group_error:
            if await self._lacks_main_guard():
                raise RuntimeError(_NO_MAIN_GUARD) from None
            raise group_error.exceptions[0] from None
        for shard in self._shards:
            if not shard.alive:
                raise RuntimeError(
                    f"shard {shard.index} (pid {shard.transport.pid}) died while the "
                    "others started; see its traceback on stderr"
                )
        self._live = list(self._shards)

    # ------------------------------------------------------------------ placement
    def _register(self, fn: Any, what: str) -> int:
        """Check ``fn`` and give it an id (-1: it travels with each job's arguments)."""
        _check_job_fn(fn, what)
        if type(fn) is not types.FunctionType:
            return -1  # bound methods, partials: pickled with each job
        try:
            blob = _dumps(fn, _PROTOCOL)
        except Exception as err:
            raise TypeError(f"{what}(): {_describe(fn)} cannot be pickled: {err!r}") from err
        fid = len(self._fn_blobs)
        self._fn_blobs.append(blob)
        self._fids[fn] = fid
        return fid

    def _place(
        self,
        shard: _Shard,
        fid: int,
        blob: bytes | None,
        to_executor: bool,
        queued: _Handle | None = None,
    ) -> _Handle:
        """Put a job on ``shard`` (its credit is already taken); ``queued``: the handle a
        job of submit_nowait() got when it was queued (and counted as submitted)."""
        jid = self._next_jid
        self._next_jid = jid + 1
        if queued is None:
            handle = _Handle(loop=self._loop)
            handle._to_executor = to_executor
            self._submitted += 1
        else:
            handle = queued
        handle._jid = jid
        handle._shard = shard
        shard.jobs[jid] = handle
        if fid not in shard.known:
            shard.known.add(fid)
            if fid >= 0:
                shard.defs.append((fid, self._fn_blobs[fid]))
        outbox = shard.outbox
        outbox.append((jid, fid, blob))
        self._inflight += 1
        if len(outbox) >= _BATCH:
            self._send(shard)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return handle

    async def _wait_for_credit(self) -> _Shard:
        """A shard with a credit taken for the caller; first in, first out."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            await self._refuse_submit()
        await self._ensure_started()
        while True:
            self._check_open()
            if not self._live:
                raise ShardCrashed("every shard of this ShardedExecutor has died")
            if not self._waiters:
                best = self._least_loaded()
                if best is not None:
                    best.credits -= 1
                    return best
            waiter: asyncio.Future[Any] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                got = await waiter
            except _CancelledError:
                if waiter.done() and not waiter.cancelled():
                    got = waiter.result()
                    if isinstance(got, _Shard):
                        got.credits += 1  # handed to us, not used: pass it on
                        self._wake()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if isinstance(got, _Shard):
                if got.alive:
                    return got
                continue  # it died since: try again
            if got is _NO_SHARD_LEFT:
                raise ShardCrashed("every shard of this ShardedExecutor has died")
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _least_loaded(self) -> _Shard | None:
        best = None
        most = 0
        for shard in self._live:
            if shard.credits > most:
                best = shard
                most = shard.credits
        return best

    def _wake(self) -> None:
        """Hand free credits to the line, oldest first: a blocked submitter gets its
        credit to place its job itself; a queued job (submit_nowait) is placed here, on
        its turn when rate-limited."""
        waiters = self._waiters
        pace = self._pace
        loop = self._loop
        while waiters:
            waiter = waiters[0]
            if isinstance(waiter, _Queued) and waiter.handle.done():
                waiters.popleft()  # cancelled while queued: counted by its callback
                continue
            if isinstance(waiter, asyncio.Future) and waiter.done():
                waiters.popleft()
                continue
            best = self._least_loaded()
            if best is None:
                return
            if isinstance(waiter, asyncio.Future):
                best.credits -= 1
                waiters.popleft()
                waiter.set_result(best)
                continue
            if pace is not None:
                at = pace.next_at()
                if at > loop.time():
                    if not self._wake_scheduled:
                        self._wake_scheduled = True
                        loop.call_at(at, self._paced_wake)
                    return
                pace.claim(loop.time())
            waiters.popleft()
            best.credits -= 1
            self._queued -= 1
            waiter.handle.remove_done_callback(self._queued_cancelled)
            self._place(best, waiter.fid, waiter.blob, True, waiter.handle)

    def _paced_wake(self) -> None:
        self._wake_scheduled = False
        self._wake()

    def _queued_cancelled(self, handle: asyncio.Future[Any]) -> None:
        # Only a queued job's handle has this callback, removed when the job is placed:
        # it was cancelled (by its owner, or by a cancel-all) while queued.
        self._queued -= 1
        self._cancelled += 1
        self._job_failed(_CancelledError(), True)
        self._check_drained()

    # ------------------------------------------------------------------ sending
    def _flush(self) -> None:
        self._flush_scheduled = False
        for shard in self._shards:
            if shard.outbox or shard.cancels or shard.control or shard.resize is not None:
                self._send(shard)

    def _send(self, shard: _Shard) -> None:
        jobs = shard.outbox
        defs = shard.defs
        cancels = shard.cancels
        control = shard.control
        resize = shard.resize
        shard.outbox = []
        if defs:
            shard.defs = []
        if cancels:
            shard.cancels = []
        shard.control = 0
        shard.resize = None
        if shard.alive:
            frame = _dumps((jobs, defs or None, cancels or None, control, resize), _PROTOCOL)
            shard.transport.send(frame)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._state is not _State.NEW:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _cancel_job(self, shard: _Shard, jid: int) -> None:
        """A handle was cancelled: cancel its job in its shard."""
        if self._aborting or not shard.alive or jid not in shard.jobs:
            return  # a cancel-all is on its way, or the job is gone anyway
        shard.cancels.append(jid)
        self._schedule_flush()

    # ------------------------------------------------------------------ receiving
    def _on_frame(self, shard: _Shard, data: bytes | memoryview) -> None:
        msg = _loads(data)
        if msg[0] != _RESULTS:
            # _READY: the shard's pid (for Ray) and its capacity, our first credits.
            _, pid, capacity = msg
            shard.transport.pid = pid
            shard.credits = capacity
            if shard.ready is not None and not shard.ready.done():
                shard.ready.set_result(None)
            return
        _, results, running, pending, shard.retried = msg
        jobs = shard.jobs
        completed = 0
        for jid, status, payload in results:
            handle = jobs.pop(jid)
            if status == _OK and not handle.done():
                handle.set_result(payload)
                completed += 1
            else:
                self._settle(handle, status, payload)
        self._completed += completed
        n = len(results)
        shard.running = running
        shard.pending = pending
        if shard.alive:
            shard.credits += n
        self._inflight -= n
        if self._waiters:
            self._wake()
        if not self._inflight:
            self._check_drained()

    def _settle(self, handle: _Handle, status: int, payload: Any) -> None:
        """A job's outcome, other than a plain result for a live handle."""
        exc: BaseException | None
        if handle.done():
            # Its handle was cancelled first, and says so: the job counts as cancelled.
            self._cancelled += 1
            if status == _ERROR:
                # It failed while unwinding: that error goes to on_error and
                # errors="group" (as TaskGroup collects it), never first for fail-fast.
                exc = _load_exception(payload)
                self._job_error(handle, exc)
                self._job_failed(exc, handle._to_executor, after_cancel=True)
            else:
                self._job_failed(_CancelledError(), handle._to_executor)
            return
        if status == _CANCELLED:
            _future_cancel(handle)
            self._cancelled += 1
            self._job_failed(_CancelledError(), handle._to_executor)
            return
        if status == _OK:
            handle.set_result(payload)
            self._completed += 1
            return
        if status == _OK_PICKLED:
            try:
                value = _loads(payload)
            except Exception as err:
                exc = RuntimeError(f"a job's result could not be unpickled: {err!r}")
            else:
                handle.set_result(value)
                self._completed += 1
                return
        else:
            exc = _load_exception(payload)
        self._fail(handle, exc)

    def _fail(self, handle: _Handle, exc: BaseException) -> None:
        handle.set_exception(exc)
        handle.exception()  # raised at exit or kept on the handle: never "never retrieved"
        self._failed += 1
        self._job_error(handle, exc)
        self._job_failed(exc, handle._to_executor)

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done() and not self._inflight and not self._queued:
            drained.set_result(None)

    def _on_lost(self, shard: _Shard, exc: BaseException | None) -> None:
        """A shard's connection ended.  Expected once it was asked to close; otherwise
        it died, and each job in flight on it fails with ShardCrashed."""
        was_alive = shard.alive
        shard.alive = False
        shard.credits = 0
        shard.running = shard.pending = 0
        if shard in self._live:
            self._live.remove(shard)
        if shard.ready is not None and not shard.ready.done():
            shard.ready.set_exception(
                RuntimeError(
                    f"shard {shard.index} (pid {shard.transport.pid}) ended before it was "
                    "ready; see its traceback on stderr"
                )
            )
            shard.ready.exception()
            return
        if was_alive and self._state is not _State.CLOSED:
            self._spawn(self._shard_died(shard, exc))
        if not self._live and self._waiters:
            waiters = list(self._waiters)
            self._waiters.clear()
            for waiter in waiters:
                if isinstance(waiter, asyncio.Future):
                    if not waiter.done():
                        waiter.set_result(_NO_SHARD_LEFT)
                elif not waiter.handle.done():
                    handle = waiter.handle
                    handle.remove_done_callback(self._queued_cancelled)
                    self._queued -= 1
                    self._fail(handle, ShardCrashed("every shard of this ShardedExecutor has died"))
            self._check_drained()

    async def _shard_died(self, shard: _Shard, exc: BaseException | None) -> None:
        how, code = await shard.transport.describe_loss(exc)
        jobs = list(shard.jobs.values())
        shard.jobs.clear()
        shard.outbox = []
        pid = shard.transport.pid
        for handle in jobs:
            error = ShardCrashed(
                f"shard {shard.index} (pid {pid}) died ({how}) with this job in flight",
                shard.index,
                pid,
                code,
            )
            if handle.done():
                self._cancelled += 1
                self._job_failed(_CancelledError(), handle._to_executor)
            else:
                self._fail(handle, error)
        self._inflight -= len(jobs)
        if not self._inflight:
            self._check_drained()

    def _spawn_start(self) -> None:
        """submit_nowait() before the shards are up: start them in the background."""

        async def start() -> None:
            try:
                await self._ensure_started()
            except BaseException as err:
                # The shards could not start: the queued jobs fail with that error.
                error = err if isinstance(err, Exception) else RuntimeError(repr(err))
                for waiter in list(self._waiters):
                    if isinstance(waiter, _Queued) and not waiter.handle.done():
                        waiter.handle.remove_done_callback(self._queued_cancelled)
                        self._queued -= 1
                        self._fail(waiter.handle, error)
                self._waiters.clear()

        self._spawn(start())

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ error rules
    def _close(self) -> None:
        if self._state in (_State.OPEN, _State.STARTING):
            self._state = _State.CLOSING
        # Blocked submitters have submitted nothing yet: they raise RuntimeError.  Jobs
        # queued by submit_nowait() were submitted: they still run (shutdown waits for
        # them) unless cancelled.
        queued = [w for w in self._waiters if isinstance(w, _Queued)]
        for waiter in self._waiters:
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_result(None)
        self._waiters = deque(queued)

    def _cancel_all(self) -> None:
        """Cancel every unfinished job; their cancellations are not job errors."""
        self._aborting = True
        self._close()
        for waiter in list(self._waiters):
            if isinstance(waiter, _Queued):
                waiter.handle.cancel()  # counted by its callback
        for shard in self._shards:
            for handle in shard.jobs.values():
                if not handle.done():
                    _future_cancel(handle)
            if shard.alive and shard.jobs:
                shard.control = _CANCEL_ALL
        self._schedule_flush()

    async def _finish(self) -> BaseException | None:
        """Wait until every job has ended, then stop the shards.

        Returns the CancelledError to propagate when the waiting task was cancelled
        by someone else (the jobs are cancelled and still awaited then).
        """
        propagate: BaseException | None = None
        loop = self._loop
        while self._inflight or self._queued:
            try:
                if self._drained is None or self._drained.done():
                    self._drained = loop.create_future()
                await self._drained
            except _CancelledError as ex:
                outside = self._finish_interrupted(ex)
                if outside is not None:
                    propagate = outside
        self._close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._progress is not None:
            self._progress.close()
        try:
            await self._stop_shards()
            closing = self._closing_task  # shutdown(wait=False)'s: let it end too
            if closing is not None and closing is not asyncio.current_task():
                await asyncio.wait([closing])
        except _CancelledError as ex:
            self._kill_all()
            propagate = ex
        return propagate

    async def _stop_shards(self) -> None:
        closed = self._closed
        assert closed is not None
        if self._state is _State.CLOSED:
            await asyncio.shield(closed)
            return
        self._state = _State.CLOSED
        try:
            for shard in self._shards:
                if shard.alive:
                    shard.control = _CLOSE
                    self._send(shard)
            await asyncio.gather(*(s.transport.close(_CLOSE_GRACE) for s in self._shards))
            # Crashed shards' jobs are failed by a task of their own: let it end.
            while self._background:
                await asyncio.gather(*list(self._background))
        finally:
            self._kill_all()
            if not closed.done():
                closed.set_result(None)

    def _kill_all(self) -> None:
        for shard in self._shards:
            shard.alive = False
            shard.transport.kill()
        self._live = []

    async def _submit_for_map(self, fn: Any, args: tuple[Any, ...]) -> _Handle:
        """map()'s submit: its jobs' errors are the map's, not fail-fast's."""
        return await self._submit(fn, args, _NO_KWARGS, False)

    @property
    def _max_in_flight(self) -> int:
        """How many jobs the shards hold at once: map()'s reorder buffer holds as many."""
        return self._nshards * self._capacity

    def _check_map_fn(self, fn: Any, what: str) -> None:
        try:
            known = self._fids.get(fn) is not None
        except TypeError:
            known = False
        if not known:
            self._register(fn, what)
