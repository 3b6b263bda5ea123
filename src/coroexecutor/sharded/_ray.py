"""The Ray backend of ShardedExecutor: each shard is an async Ray actor.

The actor runs the same ``_ShardCore`` as a shard process, on Ray's event loop in the
actor's worker process.  Frames go to it through ``feed`` calls (numbered: Ray does not
promise to run an async actor's calls in the order they were made) and come back
through a long ``poll`` call the parent always keeps one of in flight; the poll failing
with ``RayActorError`` is the shard's death.

``ray`` is imported only here, and only when ``backend="ray"`` is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from ._protocol import _ShardConfig, _Transport
from ._shard import _ShardCore

__all__ = ("_RayTransport", "_ShardActor", "_ensure_ray", "_import_ray")

_EXTRA_HINT = "pip install 'coroexecutor[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            f'ShardedExecutor(backend="ray") needs Ray: {_EXTRA_HINT} ({err})'
        ) from err
    return ray


def _ensure_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address``, or start or join a local one, unless this
    process is connected to Ray already.  Ray is left running afterwards."""
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True)


def _driver_sys_path() -> list[str]:
    """The parent's import path, made absolute, for the actor to extend its own with
    (as multiprocessing's spawn does): jobs are imported by module name there too."""
    cwd = os.getcwd()
    return [os.path.join(cwd, p) if p else cwd for p in sys.path]


class _ShardActor:
    """The actor class (wrapped by ``ray.remote`` on first use)."""

    def __init__(self, config: _ShardConfig, sys_path: list[str]) -> None:
        for path in sys_path:
            if path not in sys.path and os.path.isdir(path):
                sys.path.append(path)
        self._config = config
        self._core: _ShardCore | None = None
        self._out: list[bytes | None] = []
        self._wake: asyncio.Future[None] | None = None
        self._next_seq = 1
        self._early: dict[int, bytes] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._core = _ShardCore(self._config, self._emit)
        self._task = asyncio.get_running_loop().create_task(self._serve())
        return os.getpid()

    async def _serve(self) -> None:
        assert self._core is not None
        try:
            await self._core.serve()
        finally:
            self._emit(None)  # the end: the parent's poll loop stops there

    def _emit(self, frame: bytes | None) -> None:
        self._out.append(frame)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def feed(self, seq: int, frame: bytes) -> int:
        core = self._core
        assert core is not None
        if seq != self._next_seq:
            self._early[seq] = frame
            return seq
        core.on_frame(frame)
        self._next_seq = seq = seq + 1
        early = self._early
        while seq in early:
            core.on_frame(early.pop(seq))
            self._next_seq = seq = seq + 1
        return seq

    async def poll(self) -> list[bytes | None]:
        while not self._out:
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        out = self._out
        self._out = []
        return out


_actor_class: Any = None


def _remote_actor_class() -> Any:
    global _actor_class
    if _actor_class is None:
        ray = _import_ray()
        _actor_class = ray.remote(_ShardActor)
    return _actor_class


class _RayTransport(_Transport):
    def __init__(
        self, config: _ShardConfig, address: str | None, actor_options: dict[str, Any]
    ) -> None:
        self.config = config
        self.address = address
        self.actor_options = actor_options
        self.actor: Any = None
        self.seq = 0
        self.feeds: deque[asyncio.Future[Any]] = deque()  # feed calls not known to have ended
        self.poller: asyncio.Task[None] | None = None
        self.ended: asyncio.Future[None] | None = None
        self.loss: BaseException | None = None

    async def start(  # _Transport.start, whose signature each transport repeats
        self,
        on_frame: Callable[[bytes | memoryview], None],
        on_lost: Callable[[BaseException | None], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.ended = loop.create_future()
        actor_class = _remote_actor_class()
        if self.actor_options:
            actor_class = actor_class.options(**self.actor_options)
        self.actor = actor_class.remote(self.config, _driver_sys_path())
        self.pid = await self.actor.start.remote()
        self.poller = loop.create_task(self._poll(on_frame, on_lost))

    async def _poll(
        self,
        on_frame: Callable[[bytes | memoryview], None],
        on_lost: Callable[[BaseException | None], None],
    ) -> None:
        ray = _import_ray()
        loss: BaseException | None = None
        try:
            while True:
                frames = await self.actor.poll.remote()
                for frame in frames:
                    if frame is None:
                        return  # the shard closed
                    on_frame(frame)
                self._forget_feeds()
        except asyncio.CancelledError:
            raise
        except (ray.exceptions.RayError, ConnectionError) as err:
            loss = err
        finally:
            self.loss = loss
            if self.ended is not None and not self.ended.done():
                self.ended.set_result(None)
            on_lost(loss)

    def _forget_feeds(self) -> None:
        # Feed calls that have ended (their errors were looked at by _retrieve).
        feeds = self.feeds
        while feeds and feeds[0].done():
            feeds.popleft()

    def send(self, frame: bytes) -> None:
        if self.actor is None:
            return
        self.seq += 1
        ref = self.actor.feed.remote(self.seq, frame)
        fut = asyncio.wrap_future(ref.future())
        fut.add_done_callback(_retrieve)
        self.feeds.append(fut)

    async def describe_loss(self, exc: BaseException | None) -> tuple[str, int | None]:
        if exc is None:
            return "its actor ended", None
        first = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {first[0] if first else ''}", None

    async def close(self, grace: float) -> None:
        try:
            if self.ended is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await asyncio.shield(self.ended)
            pending = list(self.feeds)
            self.feeds.clear()
            if pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self.kill()

    def kill(self) -> None:
        poller = self.poller
        if poller is not None and not poller.done():
            poller.cancel()
        actor = self.actor
        self.actor = None
        if actor is not None:
            ray = _import_ray()
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
