"""Job functions for tests/test_sharded.py and tests/test_sharded_ray.py.

Shard processes (and Ray actors) import jobs by module and name, so the jobs live here,
at module level, importable as ``tests.sharded_jobs``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any


async def noop() -> None:
    pass


async def echo(x: Any) -> Any:
    return x


async def add(a: int, b: int = 0) -> int:
    return a + b


async def sleep_echo(dt: float, x: Any = None) -> Any:
    await asyncio.sleep(dt)
    return x


async def pid() -> int:
    return os.getpid()


async def sleep_pid(dt: float) -> int:
    await asyncio.sleep(dt)
    return os.getpid()


async def fail(dt: float, message: str = "boom") -> None:
    await asyncio.sleep(dt)
    raise ValueError(message)


async def fail_now(message: str = "boom") -> None:
    raise ValueError(message)


class Unpicklable(Exception):
    """An exception that pickles but cannot be unpickled (two required arguments)."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}-{b}")


async def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


async def return_unpicklable() -> Any:
    return lambda: None


async def ignore_cancel(dt: float) -> str:
    try:
        await asyncio.sleep(dt)
    except asyncio.CancelledError:
        return "ignored"
    return "slept"


def not_async(x: Any) -> Any:
    return x


class Jobs:
    """Bound methods of a picklable object are fine too."""

    def __init__(self, k: int) -> None:
        self.k = k

    async def times(self, x: int) -> int:
        return self.k * x


async def shadowed() -> None:
    pass


shadowed_original = shadowed
shadowed = None  # the name no longer gives the function: not importable by name


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


async def sleep_forever_ignoring_sigint() -> None:
    await asyncio.sleep(3600)


async def fail_if(dt: float) -> float:
    """The README's map example: fails for 0.1."""
    await asyncio.sleep(dt)
    if dt == 0.1:
        raise Exception("oh noes")
    return dt


async def raise_base(kind: str) -> None:
    await asyncio.sleep(0.05)
    raise KeyboardInterrupt if kind == "kbi" else SystemExit(3)


async def block_loop(seconds: float) -> None:
    """Hogs its shard's event loop (no await): only the parent watch thread can stop it."""
    import time

    time.sleep(seconds)  # noqa: ASYNC251 -- blocking on purpose


async def sleep10ms() -> None:
    await asyncio.sleep(0.01)


async def node_after(dt: float) -> str:
    """Sleep, then say which Ray node this shard runs on (Ray backend only)."""
    import ray

    await asyncio.sleep(dt)
    return str(ray.get_runtime_context().get_node_id())
