"""per_key: a limit per key (a host, a tenant), under the executor's own.

A job of a key takes a place of its key first, then a worker of the executor as any
job does.  A key at its limit holds its own queue (await-submitters, and queued jobs
of submit_nowait and of the maps), so it never stands in the executor's queue in front
of other keys' jobs: no head-of-line blocking.  A key's state lives while it has a job
in flight or queued, and is dropped after (a million distinct keys keep memory flat);
an adaptive key's learned limit is kept a while longer, for the next job of that key.

The engine's side of a key's queued job is the engine's own: ``_queued_job`` makes its
handle (counted as pending) and ``_enqueue`` hands it on when its key has room.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from ._adaptive import AdaptiveLimit, _Limiter
from ._jobs import _NO_KWARGS, _JobMaker, _keyed_job, _KeyedCall, _State
from ._lifecycle import _check_count, _positive_number
from ._pace import _Pace

# The executor these serve is CoroutineExecutor (typed Any here: it imports this module).
CoroutineExecutor = Any

__all__ = ("PerKey", "_Keys")

_KEPT_LIMITERS = 4096  # idle keys whose learned adaptive limit is kept (least recent out)


@dataclasses.dataclass(frozen=True, slots=True)
class PerKey:
    """A limit per key: at most ``max_workers`` jobs of one key in flight (an int, or an
    ``AdaptiveLimit``, which then adapts per key), and with ``max_per_second``, at
    most that many starts per second per key, ``burst`` of them at once after an idle
    spell (GCRA).  Give it as ``CoroutineExecutor(per_key=PerKey(...))``, and the key
    as ``exe.keyed(key).submit(...)`` or ``exe.map(..., key=...)``.
    """

    max_workers: int | AdaptiveLimit
    _: dataclasses.KW_ONLY
    max_per_second: float | None = None
    burst: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.max_workers, AdaptiveLimit):
            if isinstance(self.max_workers, bool) or not isinstance(self.max_workers, int):
                raise TypeError(
                    f"PerKey max_workers must be an int or an AdaptiveLimit, "
                    f"got {self.max_workers!r}"
                )
            _check_count("PerKey max_workers", self.max_workers)
        rate = _positive_number("PerKey max_per_second", self.max_per_second)
        object.__setattr__(self, "max_per_second", rate)
        _check_count("PerKey burst", self.burst)
        if self.burst != 1 and rate is None:
            raise ValueError(
                f"PerKey burst={self.burst!r} needs max_per_second: it is the rate's burst"
            )


class _KeyState:
    """One key with jobs in flight or queued."""

    __slots__ = ("key", "limit", "limiter", "observe", "pace", "queue", "running", "timer")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.running = 0  # jobs holding one of the key's places
        self.limit = 1
        self.limiter: _Limiter | None = None
        self.observe: tuple[_Limiter, ...] = ()
        self.pace: _Pace | None = None
        # Waiting for a place, first in first out: futures of await-submitters, and
        # queued jobs (engine _Queued) of submit_nowait and of the maps.
        self.queue: deque[Any] = deque()
        self.timer: asyncio.TimerHandle | None = None  # the rate limit's next dispatch


class _Keys:
    """The keys of one executor: their states, their queues, their places."""

    def __init__(self, exe: CoroutineExecutor, per_key: PerKey, maker: _JobMaker) -> None:
        self._exe = exe
        self._per_key = per_key
        self._maker = maker
        self._states: dict[Hashable, _KeyState] = {}
        self._kept: OrderedDict[Hashable, _Limiter] = OrderedDict()
        self.active = 0  # keys with a job holding a place (stats().keys)

    # ------------------------------------------------------------------ states
    def _state(self, key: Hashable) -> _KeyState:
        state = self._states.get(key)
        if state is not None:
            return state
        state = _KeyState(key)
        spec = self._per_key
        if isinstance(spec.max_workers, AdaptiveLimit):
            limiter = self._kept.pop(key, None)
            if limiter is None:
                limiter = _Limiter(spec.max_workers)
            limiter._on_change = lambda value, state=state: self._resized(state, value)
            state.limiter = limiter
            state.limit = limiter.value
        else:
            state.limit = spec.max_workers
        state.observe = (
            self._maker.observe
            if state.limiter is None
            else ((state.limiter, *self._maker.observe))
        )
        if spec.max_per_second is not None:
            state.pace = _Pace(spec.max_per_second, spec.burst)
        self._states[key] = state
        return state

    def _resized(self, state: _KeyState, value: int) -> None:
        grew = value > state.limit
        state.limit = value
        if grew and state.queue:
            self._dispatch(state)

    def _can_start(self, state: _KeyState) -> bool:
        if state.queue or state.running >= state.limit:
            return False
        pace = state.pace
        return pace is None or pace.next_at() <= self._exe._loop.time()

    def _take(self, state: _KeyState) -> None:
        """A job takes one of the key's places (and its turn, rate-limited)."""
        if state.running == 0:
            self.active += 1
        state.running += 1
        if state.pace is not None:
            state.pace.claim(self._exe._loop.time())

    def release(self, state: _KeyState) -> None:
        """A job of the key ended (or never started): its place goes to the next."""
        state.running -= 1
        if state.running == 0:
            self.active -= 1
        if state.queue:
            self._dispatch(state)
        self._maybe_drop(state)

    def _maybe_drop(self, state: _KeyState) -> None:
        """Drop the key's state if nothing of it is left (and its rate has recovered)."""
        queue = state.queue
        while queue and _gone(queue[0]):
            queue.popleft()  # cancelled while waiting: counted already
        if state.running or queue or state.timer is not None:
            return
        pace = state.pace
        loop = self._exe._loop
        if pace is not None and pace.tat > loop.time():
            # Dropped now, the key would get a fresh burst before its rate allows one.
            self._wake_at(state, pace.tat)
            return
        if self._states.get(state.key) is state:
            del self._states[state.key]
        if state.limiter is not None:
            state.limiter._on_change = None
            kept = self._kept
            kept[state.key] = state.limiter
            if len(kept) > _KEPT_LIMITERS:
                kept.popitem(last=False)

    def _wake_at(self, state: _KeyState, at: float) -> None:
        """Look at the key again at loop time ``at`` (or earlier, if already due)."""
        timer = state.timer
        if timer is not None:
            if timer.when() <= at:
                return
            timer.cancel()
        state.timer = self._exe._loop.call_at(at, self._cooled, state)

    def _cooled(self, state: _KeyState) -> None:
        state.timer = None
        if state.queue:
            self._dispatch(state)
        self._maybe_drop(state)

    def _dispatch(self, state: _KeyState) -> None:
        """Give the key's free places to what waits for them, first in first out (and
        on time when the key is rate-limited)."""
        queue = state.queue
        pace = state.pace
        loop = self._exe._loop
        while queue and state.running < state.limit:
            if pace is not None:
                at = pace.next_at()
                if at > loop.time():
                    self._wake_at(state, at)  # the key's next start is due then
                    return
            waiter = queue.popleft()
            if isinstance(waiter, asyncio.Future):
                if waiter.done():
                    continue  # its submitter was cancelled
                self._take(state)
                waiter.set_result(True)
            else:
                if waiter.handle.done():
                    continue  # cancelled while queued (counted already)
                self._take(state)
                waiter.args[1].placed = True
                self._exe._enqueue(waiter)

    # ------------------------------------------------------------------ submit
    def job(self, state: _KeyState, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The coroutine of a key's job (called by _keyed_job, in the job's first step)."""
        return self._maker.make(fn, args, kwargs, state.observe)

    async def submit(
        self,
        key: Hashable,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        to_executor: bool,
    ) -> asyncio.Future[Any]:
        """``await exe.keyed(key).submit()``: wait for a place of the key (in the key's
        queue, not the executor's), then for a worker, as submit() does."""
        exe = self._exe
        exe._ready_to_submit()
        if exe._state is not _State.OPEN:
            await exe._refuse_submit()
        state = self._state(key)
        if self._can_start(state):
            self._take(state)
        else:
            waiter: asyncio.Future[bool] = exe._loop.create_future()
            state.queue.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self.release(state)  # handed a place just as we were cancelled
                else:
                    self._maybe_drop(state)
                raise
            if not handed:  # the executor closed
                self._maybe_drop(state)
                exe._check_open()
        call = _KeyedCall(state, placed=True)
        try:
            handle: asyncio.Future[Any] = await exe._submit_slow(
                _keyed_job, (self, call, fn, args, kwargs), _NO_KWARGS, to_executor
            )
            return handle
        finally:
            if not call.started:
                self.release(state)  # refused, or cancelled while waiting for a worker

    def submit_nowait(
        self,
        key: Hashable,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        to_executor: bool,
        bounded: bool = True,
    ) -> asyncio.Future[Any]:
        """``exe.keyed(key).submit_nowait()``: start now, or queue behind the key (or,
        with a place, behind the executor).  ``bounded``: max_pending applies (not to
        a map's items, which the map's window bounds)."""
        exe = self._exe
        exe._ready_to_submit()
        exe._check_open()
        state = self._state(key)
        if self._can_start(state):
            self._take(state)
            call = _KeyedCall(state, placed=True)
            try:
                handle = exe._submit_nowait_slow(
                    _keyed_job, (self, call, fn, args, kwargs), _NO_KWARGS, to_executor, bounded
                )
            except BaseException:
                if not call.started:
                    self.release(state)
                raise
        else:
            if bounded and exe._max_pending is not None and exe._pending >= exe._max_pending:
                self._maybe_drop(state)
                raise exe._full_error()
            call = _KeyedCall(state, placed=False)
            job = exe._queued_job(
                _keyed_job, (self, call, fn, args, kwargs), _NO_KWARGS, to_executor
            )
            state.queue.append(job)
            handle = job.handle
        if not call.started:
            # Queued (by its key, or by the executor): if it is cancelled before it
            # starts, its place (if it has one yet) goes back.
            handle.add_done_callback(
                functools.partial(self._never_started, call), context=exe._context
            )
        return handle  # type: ignore[no-any-return]

    def _never_started(self, call: _KeyedCall, handle: asyncio.Future[Any]) -> None:
        if call.started:
            return
        call.started = True  # once
        if call.placed:
            self.release(call.state)
        else:
            self._maybe_drop(call.state)  # it was still in its key's queue

    async def submit_for_map(self, key: Hashable, fn: Any, args: tuple[Any, ...]) -> Any:
        """map(key=...)'s submit: a key at its limit queues the item and returns its
        handle at once, so the map goes on with other keys' items; a key with room
        waits for a worker, as map() does."""
        exe = self._exe
        if exe._state is _State.OPEN and exe._bound() and not self._can_start(self._state(key)):
            return self.submit_nowait(key, fn, args, _NO_KWARGS, False, bounded=False)
        return await self.submit(key, fn, args, _NO_KWARGS, False)

    # ------------------------------------------------------------------ control
    def close(self) -> None:
        """The executor closed: await-submitters waiting for a key raise."""
        for state in list(self._states.values()):
            for waiter in state.queue:
                if isinstance(waiter, asyncio.Future) and not waiter.done():
                    waiter.set_result(False)

    def cancel(self) -> None:
        """Cancel every queued job of every key (each counted by its handle's callback)."""
        for state in list(self._states.values()):
            for waiter in list(state.queue):
                if not isinstance(waiter, asyncio.Future):
                    waiter.handle.cancel()

    def limit_of(self, key: Hashable) -> int:
        """The limit in force for ``key`` (what its next job would get, when idle)."""
        state = self._states.get(key)
        if state is not None:
            return state.limit
        spec = self._per_key.max_workers
        if not isinstance(spec, AdaptiveLimit):
            return spec
        kept = self._kept.get(key)
        if kept is not None:
            return kept.value
        return spec.initial if spec.initial is not None else spec.min_workers

    def __len__(self) -> int:
        return len(self._states)


def _gone(waiter: Any) -> bool:
    """A waiter of a key's queue that left: a cancelled submitter, a cancelled job."""
    return waiter.done() if isinstance(waiter, asyncio.Future) else waiter.handle.done()


class _KeyedView:
    """``exe.keyed(key)``: the executor's submit, submit_nowait and maps, for one key."""

    __slots__ = ("_exe", "_key")

    def __init__(self, exe: CoroutineExecutor, key: Hashable) -> None:
        self._exe = exe
        self._key = key

    async def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``exe.submit()`` for this key: waits while the key (or the executor) is full."""
        return await self._exe._keyed_submit(self._key, fn, args, kwargs)

    def submit_nowait(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``exe.submit_nowait()`` for this key: queued behind the key when it is full."""
        return self._exe._keyed_submit_nowait(self._key, fn, args, kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Any, return_exceptions: bool = False) -> Any:
        """``exe.map()`` with every item of this key."""
        key = self._key
        return self._exe.map(
            fn, *iterables, key=lambda *_: key, return_exceptions=return_exceptions
        )

    def map_unordered(
        self, fn: Callable[..., Any], *iterables: Any, return_exceptions: bool = False
    ) -> Any:
        """``exe.map_unordered()`` with every item of this key."""
        key = self._key
        return self._exe.map_unordered(
            fn, *iterables, key=lambda *_: key, return_exceptions=return_exceptions
        )

    @property
    def max_workers(self) -> int:
        """The key's limit now in force (an AdaptiveLimit's current value)."""
        keys: _Keys = self._exe._keys
        return keys.limit_of(self._key)

    def __repr__(self) -> str:
        return f"<keyed {self._key!r} of {self._exe!r}>"
