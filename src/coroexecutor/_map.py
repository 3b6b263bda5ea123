"""map() and map_unordered(): lazy async generators on top of the engine's submit."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import _Engine

__all__ = ("_map", "_map_unordered", "_next_args", "_open_sources")

_NO_KWARGS: dict[str, Any] = {}


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


async def _submit(
    exe: _Engine, fn: Callable[..., Any], args: tuple[Any, ...]
) -> asyncio.Future[Any]:
    return await exe._submit_slow(fn, args, _NO_KWARGS, False)


async def _map(
    exe: _Engine, fn: Callable[..., Any], sources: list[Any]
) -> AsyncGenerator[Any, None]:
    """Submit one job per zipped item and yield the results in input order.

    Memory: at most ``max_workers`` jobs run, and at most ``max_workers`` finished
    results wait behind a slow one (the reorder buffer); past that the map waits for
    the oldest job before it pulls more input.  ``max_workers`` is read as it is now,
    so a map follows a resized executor.

    The map owns its jobs' errors: a job's error is raised from the ``async for`` when
    its turn comes (every earlier result has been yielded), never by the executor's
    fail-fast on its own, as ``concurrent.futures.Executor.map`` does.
    """
    pending: deque[asyncio.Future[Any]] = deque()
    it, sync = _zip_sources(sources)
    try:
        if sync:
            # The loop below twice, on purpose: a plain `for` over zip() is the hot
            # path of map (FOR_ITER, no call per item); async input needs an await.
            for args in it:
                # submit()'s fast path, inlined.
                if exe._running < exe._cap:
                    exe._running += 1
                    handle = exe._start(fn, args, _NO_KWARGS, False)
                else:
                    handle = await _submit(exe, fn, args)
                if not pending and handle.done():
                    yield handle.result()
                    continue
                pending.append(handle)
                while pending and pending[0].done():
                    yield pending.popleft().result()
                while len(pending) > exe._limit:  # read each time: max_workers may change
                    yield await pending.popleft()
        else:
            while (args := await _next_args(it)) is not None:
                handle = await _submit(exe, fn, args)
                pending.append(handle)
                while pending and pending[0].done():
                    yield pending.popleft().result()
                while len(pending) > exe._limit:
                    yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        # Left early, failed, or cancelled: the map's unfinished jobs are cancelled
        # (each ends as cancelled and is awaited by the executor's exit).
        for handle in pending:
            handle.cancel()
        _drop(sources)


async def _map_unordered(
    exe: _Engine, fn: Callable[..., Any], sources: list[Any]
) -> AsyncGenerator[Any, None]:
    """Submit one job per zipped item; yield each result as its job ends.

    The same lazy, bounded pulling as map(): at most ``max_workers`` jobs in flight,
    and finished results are yielded before more input is pulled.  The first error,
    in the order jobs end, is raised from the ``async for``; leaving early, failing or
    being cancelled cancels the map's unfinished jobs.
    """
    loop = asyncio.get_running_loop()
    finished: deque[asyncio.Future[Any]] = deque()
    unfinished: set[asyncio.Future[Any]] = set()
    wake: list[asyncio.Future[None]] = []

    def on_done(handle: asyncio.Future[Any]) -> None:
        unfinished.discard(handle)
        finished.append(handle)
        if wake and not wake[0].done():
            wake[0].set_result(None)

    it, sync = _zip_sources(sources)
    exhausted = False
    try:
        while True:
            if not exhausted:
                args = next(it, None) if sync else await _next_args(it)
                if args is None:
                    exhausted = True
                else:
                    if exe._running < exe._cap:
                        exe._running += 1
                        handle = exe._start(fn, args, _NO_KWARGS, False)
                    else:
                        handle = await _submit(exe, fn, args)
                    if handle.done():
                        finished.append(handle)
                    else:
                        unfinished.add(handle)
                        handle.add_done_callback(on_done)
            while finished:
                yield finished.popleft().result()
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
