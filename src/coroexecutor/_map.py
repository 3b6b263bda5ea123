"""map() and map_unordered() of both executors: lazy async generators over submit.

One copy for CoroutineExecutor and ShardedExecutor.  What they need of an executor:
``_submit_for_map(fn, args)`` (submit, waiting for room; the job's errors belong to the
map, not to fail-fast) and ``_max_in_flight`` (how many jobs can run at once: the reorder
buffer's bound).  On CoroutineExecutor's engine, with sync input, the loops below take
the engine's fast path: ``_map_fill`` for map (a batch of jobs per call, no handle for
a job that returns at once), ``_counted < _fast_limit`` then ``_start`` inline for
map_unordered.  Measured specialisations, the hot path of map.  map's fast path is also
pull-style: the engine's runners take the next items of its ``_Feed`` as their jobs end
(``_Engine._pull``), and the generator below refills only what they leave.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import TYPE_CHECKING, Any

from ._engine_choice import _Engine, _Feed
from ._jobs import _NO_KWARGS

if TYPE_CHECKING:
    from typing import Protocol

    class _MapTarget(Protocol):
        @property
        def _max_in_flight(self) -> int: ...

        async def _submit_for_map(
            self, fn: Callable[..., Any], args: tuple[Any, ...]
        ) -> asyncio.Future[Any]: ...


__all__ = ("_map", "_map_unordered", "_next_args", "_open_sources")


def _open_sources(what: str, iterables: tuple[Any, ...]) -> list[Any]:
    """map()'s input as iterators: an async iterator for each async iterable, else iter()."""
    if not iterables:
        raise TypeError(f"{what}() needs at least one iterable")
    return [aiter(it) if isinstance(it, AsyncIterable) else iter(it) for it in iterables]


def _zip_sources(sources: list[Any]) -> tuple[Any, bool]:
    """A plain zip when every source is sync (the fast case), else the sources themselves."""
    if all(hasattr(src, "__next__") for src in sources):
        return zip(*sources, strict=False), True  # zip semantics: stop at the shortest
    return sources, False


async def _next_args(sources: list[Any]) -> tuple[Any, ...] | None:
    """The next zipped item of mixed sync and async iterators, or None when one ends."""
    args = []
    for src in sources:
        if hasattr(src, "__anext__"):
            try:
                args.append(await anext(src))
            except StopAsyncIteration:
                return None
        else:
            try:
                args.append(next(src))
            except StopIteration:
                return None
    return tuple(args)


def _drop(sources: list[Any]) -> None:
    # Let go of the input here, while this frame runs: an async generator left
    # unfinished by zip semantics is finalized when its last reference goes, and
    # finalizing it while this frame is being torn down crashes uvloop's debug-mode
    # stack capture on Python 3.12 and 3.13.
    sources.clear()


async def _read_args(it: Any, sync: bool) -> tuple[Any, ...] | None:
    return next(it, None) if sync else await _next_args(it)


_result = asyncio.Future.result  # a finished job's value, or its error raised


def _settled(handle: asyncio.Future[Any]) -> Any:
    """return_exceptions=True: a finished job's value, or its exception in its place
    (the CancelledError of a cancelled one), as ``asyncio.gather`` gives them.
    KeyboardInterrupt and SystemExit are raised: they stop the executor anyway."""
    try:
        return handle.result()
    except (Exception, asyncio.CancelledError) as exc:
        return exc


async def _settle(handle: asyncio.Future[Any]) -> Any:
    """Wait for a job and give what _settled() gives.  Only a cancellation of the task
    iterating the map propagates (its jobs are cancelled as it unwinds)."""
    if not handle.done():
        task = asyncio.current_task()
        assert task is not None
        before = task.cancelling()
        try:
            await handle
        except asyncio.CancelledError:
            if task.cancelling() > before:
                raise
        except Exception:
            pass
    return _settled(handle)


def _submitter(exe: Any, key: Callable[..., Any] | None) -> Callable[..., Any]:
    """The map's submit: the executor's, or, with ``key``, its key's (per_key), which
    queues an item whose key is full and returns at once."""
    if key is None:
        return exe._submit_for_map  # type: ignore[no-any-return]
    submit_keyed = exe._submit_keyed_for_map

    def submit(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        return submit_keyed(key(*args), fn, args)

    return submit


async def _map(
    exe: _MapTarget,
    fn: Callable[..., Any],
    sources: list[Any],
    return_exceptions: bool,
    key: Callable[..., Any] | None = None,
) -> AsyncGenerator[Any, None]:
    """Submit one job per zipped item and yield the results in input order.

    Memory: at most ``max_workers`` jobs run, and at most ``max_workers`` finished
    results wait behind a slow one (the reorder buffer); past that the map waits for
    the oldest job before it pulls more input.  ``max_workers`` is read as it is now,
    so a map follows a resized executor.

    The map owns its jobs' errors: a job's error is raised from the ``async for`` when
    its turn comes (every earlier result has been yielded), never by the executor's
    fail-fast on its own, as ``concurrent.futures.Executor.map`` does.  With
    ``return_exceptions`` it is yielded in its place instead, and the map goes on.
    """
    take = _settled if return_exceptions else _result
    pending: deque[asyncio.Future[Any]] = deque()
    it, sync = _zip_sources(sources)
    feed = None
    submit = _submitter(exe, key)
    try:
        if sync and key is None and isinstance(exe, _Engine):
            # The engine's fast path: _map_fill starts a batch of jobs in one call (in
            # C, in the compiled engine), and a job that returns in its first step
            # while none is pending costs no handle; its value comes back in `done`.
            done: list[Any] = []
            # Pull-style: a runner whose job of this map ends takes the next item itself
            # (_Engine._pull); the feed is what they share.
            feed = _Feed(fn, it, pending, return_exceptions)
            while True:
                try:
                    ended = exe._map_fill(feed, done)
                except Exception:
                    # The input, or starting a job, raised: the results before it first.
                    for value in done:
                        yield value
                    raise
                for value in done:
                    yield value
                done.clear()
                if feed.error is not None:
                    raise feed.error  # the input raised, in a runner's pull
                if ended:
                    break
                if exe._counted >= exe._fast_limit:
                    if pending and exe._counted >= exe._limit and exe._fast_limit == exe._limit:
                        # Full, and nothing else shuts the gate: the runners pull the
                        # next items as their jobs end; wait for the oldest result.
                        while pending and pending[0].done():
                            yield take(pending.popleft())
                        if pending:
                            h = pending.popleft()
                            yield await (_settle(h) if return_exceptions else h)
                        continue
                    # The gate is shut (closing, rate-limited): one item the slow way.
                    if not feed.open or (args := next(it, None)) is None:
                        break
                    pending.append(await exe._submit_for_map(fn, args))
                while pending and pending[0].done():
                    yield take(pending.popleft())
                while len(pending) > exe._max_in_flight:  # read each time: it may change
                    h = pending.popleft()
                    yield await (_settle(h) if return_exceptions else h)
        else:
            while (args := await _read_args(it, sync)) is not None:
                pending.append(await submit(fn, args))
                while pending and pending[0].done():
                    yield take(pending.popleft())
                while len(pending) > exe._max_in_flight:
                    h = pending.popleft()
                    yield await (_settle(h) if return_exceptions else h)
        while pending:
            h = pending.popleft()
            yield await (_settle(h) if return_exceptions else h)
        if feed is not None and feed.error is not None:
            raise feed.error
    finally:
        # Left early, failed, or cancelled: the map's unfinished jobs are cancelled
        # (each ends as cancelled and is awaited by the executor's exit).
        if feed is not None:
            feed.open = False
        for handle in pending:
            handle.cancel()
        _drop(sources)


async def _map_unordered(
    exe: _MapTarget,
    fn: Callable[..., Any],
    sources: list[Any],
    return_exceptions: bool,
    key: Callable[..., Any] | None = None,
) -> AsyncGenerator[Any, None]:
    """Submit one job per zipped item; yield each result as its job ends.

    The same lazy, bounded pulling as map(): at most ``max_workers`` jobs in flight,
    and finished results are yielded before more input is pulled.  The first error,
    in the order jobs end, is raised from the ``async for`` (with ``return_exceptions``,
    yielded in its place); leaving early, failing or being cancelled cancels the map's
    unfinished jobs.
    """
    take = _settled if return_exceptions else _result
    loop = asyncio.get_running_loop()
    finished: deque[asyncio.Future[Any]] = deque()
    unfinished: set[asyncio.Future[Any]] = set()
    wake: list[asyncio.Future[None]] = []

    def on_done(handle: asyncio.Future[Any]) -> None:
        unfinished.discard(handle)
        finished.append(handle)
        if wake and not wake[0].done():
            wake[0].set_result(None)

    # on_done's context, made once: without one, each add_done_callback() would copy
    # the current context, a Context per job in flight.
    ctx = contextvars.copy_context()
    it, sync = _zip_sources(sources)
    # The engine's fast path, inlined below (not for a keyed map: its items take their
    # key's place first).
    engine = exe if isinstance(exe, _Engine) and key is None else None
    submit = _submitter(exe, key)
    exhausted = False
    try:
        while True:
            if key is not None:
                # A keyed map's items may wait behind their keys without holding a
                # worker: bound them as map()'s window bounds its own.
                while len(unfinished) >= 2 * exe._max_in_flight and not finished:
                    wake.append(loop.create_future())
                    try:
                        await wake[0]
                    finally:
                        wake.clear()
            if not exhausted:
                args = await _read_args(it, sync)
                if args is None:
                    exhausted = True
                else:
                    if engine is not None and engine._counted < engine._fast_limit:
                        engine._counted += 1
                        handle = engine._start(fn, args, _NO_KWARGS, False)
                    else:
                        handle = await submit(fn, args)
                    if handle.done():
                        finished.append(handle)
                    else:
                        unfinished.add(handle)
                        handle.add_done_callback(on_done, context=ctx)
            while finished:
                yield take(finished.popleft())
            if exhausted:
                if not unfinished:
                    break
                wake.append(loop.create_future())
                try:
                    await wake[0]
                finally:
                    wake.clear()
    finally:
        for handle in unfinished:
            handle.remove_done_callback(on_done)
            handle.cancel()
        _drop(sources)
