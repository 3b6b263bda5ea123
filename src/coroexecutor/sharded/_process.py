"""The process transport: each shard a ``multiprocessing`` child started with "spawn"
(or "forkserver"), connected by a Unix socket pair that both ends read with an asyncio
protocol.  Both ends live here: the child's entry point and the parent's transport.

Imported only when a ShardedExecutor starts its shards: ``import coroexecutor`` pays
for neither multiprocessing nor this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import (
    Callable,
)
from typing import TYPE_CHECKING, Any

from ._protocol import (
    _EXIT_NO_MAIN_GUARD,
    _NO_MAIN_GUARD,
    _FrameProtocol,
    _ShardConfig,
    _Transport,
)
from ._shard import _ignore, _ShardCore

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess


# ---------------------------------------------------------------------- process shard
def _watch_parent() -> None:
    """Exit if the parent process dies and the loop does not notice (a job hogging it)."""
    import multiprocessing.connection

    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - we are always started by multiprocessing
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        time.sleep(2.0)  # the loop's own shutdown (socket EOF) normally wins
        os._exit(70)

    threading.Thread(target=watch, name="coroexecutor-parent-watch", daemon=True).start()


def _shard_process_main(sock: socket.socket, config: _ShardConfig) -> None:
    """The shard process: serve jobs until the parent closes the connection."""
    # Ctrl-C in a terminal signals the whole process group: the parent decides what
    # happens to the jobs, and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent()
    from .._runner import run

    run(_serve_process(sock, config), uvloop=config.uvloop)


async def _serve_process(sock: socket.socket, config: _ShardConfig) -> None:
    loop = asyncio.get_running_loop()
    core = _ShardCore(config, _ignore)
    gone: asyncio.Future[None] = loop.create_future()

    def on_lost(exc: BaseException | None) -> None:
        core.parent_lost()
        if not gone.done():
            gone.set_result(None)

    transport, protocol = await loop.create_unix_connection(
        lambda: _FrameProtocol(core.on_frame, on_lost), sock=sock
    )
    core.send = protocol.send
    try:
        await core.serve()
    finally:
        transport.close()
        await gone


def _exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


class _ProcessTransport(_Transport):
    def __init__(self, config: _ShardConfig, start_method: str) -> None:
        import multiprocessing  # here: `import coroexecutor` does not pay for it

        self.config = config
        self.ctx: Any = multiprocessing.get_context(start_method)
        self.proc: BaseProcess | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.protocol: _FrameProtocol | None = None
        self.lost: asyncio.Future[None] | None = None

    async def start(  # _Transport.start, whose signature each transport repeats
        self,
        on_frame: Callable[[bytes | memoryview], None],
        on_lost: Callable[[BaseException | None], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.lost = lost = loop.create_future()

        def lost_cb(exc: BaseException | None) -> None:
            if not lost.done():
                lost.set_result(None)
            on_lost(exc)

        if getattr(self.ctx.current_process(), "_inheriting", False):
            # We are a shard process, importing the user's script to start (as spawn
            # does), and the script starts shards at import: it lacks the __main__
            # guard.  Say so in one line (not multiprocessing's page of tracebacks,
            # once per shard) and let the parent tell it by the exit code.
            print(_NO_MAIN_GUARD, file=sys.stderr, flush=True)
            os._exit(_EXIT_NO_MAIN_GUARD)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = self.ctx.Process(
                target=_shard_process_main,
                args=(theirs, self.config),
                name=f"coroexecutor-shard-{self.config.index}",
                daemon=True,  # multiprocessing's exit handler terminates it if we forget
            )
            proc.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its copy; EOF must mean the child is gone
        self.proc = proc
        self.pid = proc.pid
        try:
            self.transport, self.protocol = await loop.create_unix_connection(
                lambda: _FrameProtocol(on_frame, lost_cb), sock=ours
            )
        except BaseException:
            ours.close()
            raise

    def send(self, frame: bytes) -> None:
        protocol = self.protocol
        if protocol is not None:
            protocol.send(frame)

    async def _wait_exit(self, limit: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        deadline = time.monotonic() + limit
        delay = 0.001
        while proc.exitcode is None and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return proc.exitcode

    async def describe_loss(self, exc: BaseException | None) -> tuple[str, int | None]:
        code = await self._wait_exit(2.0)
        return _exit_description(code), code

    async def close(self, grace: float) -> None:
        try:
            if self.lost is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await asyncio.shield(self.lost)
            if await self._wait_exit(grace) is None and self.proc is not None:
                self.proc.terminate()
                if await self._wait_exit(1.0) is None:
                    self.proc.kill()
                    await self._wait_exit(5.0)
        finally:
            self._release()

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.exitcode is None:
            proc.kill()
            proc.join(5.0)
        self._release()

    def _release(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.protocol = None
        proc = self.proc
        if proc is not None and proc.exitcode is not None:
            self.proc = None
            proc.join()
            proc.close()
