"""Job functions for tests/test_contract.py: importable by module and name, as the
shards of a ShardedExecutor import them."""

from __future__ import annotations

import asyncio
from typing import Any

_init: list[Any] = []  # what the initializer was last called with, in this process


async def echo(x: Any) -> Any:
    return x


async def add(a: int, b: int) -> int:
    return a + b


async def sleep_echo(dt: float, x: Any = None) -> Any:
    await asyncio.sleep(dt)
    return x


async def fail(dt: float, message: str) -> None:
    await asyncio.sleep(dt)
    raise ValueError(message)


async def fail_if(x: int, bad: int) -> int:
    await asyncio.sleep(0.001 * x)
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


async def outcome(x: int, kind: str) -> int:
    """x, or fail as ``kind`` says: "error", "cancel" (the job cancels itself),
    "hang" (sleeps for an hour), "quick-error" (before its first await)."""
    if kind == "quick-error":
        raise ValueError(f"quick {x}")
    await asyncio.sleep(0.001 * (x % 3))
    if kind == "error":
        raise ValueError(f"bad {x}")
    if kind == "cancel":
        raise asyncio.CancelledError
    if kind == "hang":
        await asyncio.sleep(3600)
    return x


_calls: dict[str, int] = {}  # flaky(): calls so far per key, in this process


async def flaky(key: str, failures: int, error: str = "ValueError") -> str:
    """Fail the first ``failures`` calls with ``key`` (ValueError, KeyError or
    CancelledError, by name), then return how many calls it took."""
    n = _calls[key] = _calls.get(key, 0) + 1
    await asyncio.sleep(0)
    if n <= failures:
        raise {"ValueError": ValueError, "KeyError": KeyError}.get(error, asyncio.CancelledError)(
            f"{key} call {n}"
        )
    return f"{key} took {n}"


async def hang_then_answer(key: str) -> str:
    """Sleep an hour on the first call with ``key``, answer on the next."""
    n = _calls[key] = _calls.get(key, 0) + 1
    if n == 1:
        await asyncio.sleep(3600)
    return f"{key} took {n}"


async def raise_timeout(message: str) -> None:
    await asyncio.sleep(0)
    raise TimeoutError(message)


def init(*args: Any) -> None:
    _init[:] = args


async def seen_by_init() -> list[Any]:
    return list(_init)


async def fail_when_cancelled(message: str) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise ValueError(message) from None


_running = 0  # jobs of track() running now, in this process


async def track(dt: float, x: Any) -> tuple[Any, int]:
    """Sleep; return x and how many track() jobs ran in this process when it started."""
    global _running
    _running += 1
    seen = _running
    try:
        await asyncio.sleep(dt)
    finally:
        _running -= 1
    return x, seen


async def read_var(name: str) -> Any:
    """The value of the context variable ``name`` of this module, as the job sees it."""
    return _VARS[name].get(None)


_VARS: dict[str, Any] = {}


def context_var(name: str) -> Any:
    import contextvars

    return _VARS.setdefault(name, contextvars.ContextVar(name))
