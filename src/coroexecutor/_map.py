"""map(): an ordered, lazy async generator on top of the engine's submit."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import _Engine

__all__ = ("_map",)

_NO_KWARGS: dict[str, Any] = {}


async def _map(
    exe: _Engine, fn: Callable[..., Any], iterators: list[Iterator[Any]]
) -> AsyncGenerator[Any, None]:
    """Submit one job per zipped item and yield the results in input order.

    Memory: at most ``max_workers`` jobs run, and at most ``max_workers`` finished
    results wait behind a slow one (the reorder buffer); past that the map waits for
    the oldest job before it pulls more input.

    The map owns its jobs' errors: a job's error is raised from the ``async for`` when
    its turn comes (every earlier result has been yielded), never by the executor's
    fail-fast on its own, as ``concurrent.futures.Executor.map`` does.
    """
    pending: deque[asyncio.Future[Any]] = deque()
    reorder = exe._limit
    try:
        for args in zip(*iterators, strict=False):  # zip semantics: stop at the shortest
            # submit()'s fast path, inlined: this loop is the hot path of map.
            if exe._running < exe._cap:
                exe._running += 1
                handle = exe._start(fn, args, _NO_KWARGS, False)
            else:
                handle = await exe._submit_slow(fn, args, _NO_KWARGS, False)
            if not pending and handle.done():
                yield handle.result()
                continue
            pending.append(handle)
            while pending and pending[0].done():
                yield pending.popleft().result()
            while len(pending) > reorder:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        # Left early, failed, or cancelled: the map's unfinished jobs are cancelled
        # (each ends as cancelled and is awaited by the executor's exit).
        for handle in pending:
            handle.cancel()
