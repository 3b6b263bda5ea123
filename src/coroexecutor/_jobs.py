"""What a job is, apart from the engine that runs it: the coroutine a job's function
makes (or the TypeError naming the mistake), the wrapper that adds the executor's
initializer and job_timeout, and the executor's states.

Kept out of ``_engine``, which may be compiled: the wrappers here must stay native
coroutines, which the engine steps with ``types.CoroutineType.send``.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import reprlib
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from ._retry import Retry, _RetryCount, _retrying

__all__ = (
    "_BASE_ERRORS",
    "_NO_KWARGS",
    "_NotAwaitable",
    "_State",
    "_as_coroutine",
    "_check_fn",
    "_guarded_job",
    "_retried_job",
    "_timed_job",
    "_wrapped_job",
)

_CoroutineType: Final = types.CoroutineType
_BASE_ERRORS: Final = (KeyboardInterrupt, SystemExit)
_NO_KWARGS: Final[dict[str, Any]] = {}  # a job's kwargs when it has none; never mutated


class _State(enum.Enum):
    """An executor's life; both executors go through these (CoroutineExecutor is OPEN
    from its construction: it binds to a loop on first use instead of starting)."""

    NEW = "new"  # ShardedExecutor: its shards have not been started
    STARTING = "starting"  # ShardedExecutor: its shards are starting
    OPEN = "open"
    CLOSING = "closing"  # no new jobs; running jobs go on
    CLOSED = "closed"  # every job and every worker has ended


async def _await_awaitable(aw: Awaitable[Any]) -> Any:
    return await aw


async def _wrapped_job(
    init: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    job_timeout: float | None,
    retry: tuple[Retry, _RetryCount] | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A job with the executor's initializer before it, and/or its retries and its
    job_timeout (per attempt) around it."""
    if init is not None:
        r = init(*initargs)
        if inspect.isawaitable(r):
            await r
    if retry is None and job_timeout is None:
        return await _as_coroutine(fn, fn(*args, **kwargs))
    return await _guarded_job(retry, job_timeout, fn, args, kwargs)


def _guarded_job(
    retry: tuple[Retry, _RetryCount] | None,
    job_timeout: float | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Coroutine[Any, Any, Any]:
    """A job under the executor's retries and/or job_timeout (one of them is set), as
    both executors run it: in CoroutineExecutor's wrapper, and in a shard."""
    if retry is not None:
        return _retried_job(retry, job_timeout, fn, args, kwargs)
    assert job_timeout is not None
    return _timed_job(job_timeout, fn, args, kwargs)


def _retried_job(
    retry: tuple[Retry, _RetryCount],
    job_timeout: float | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Coroutine[Any, Any, Any]:
    """A job's attempts under ``Retry``, each one under the job_timeout."""

    def attempt() -> Coroutine[Any, Any, Any]:
        if job_timeout is None:
            return _as_coroutine(fn, fn(*args, **kwargs))
        return _timed_job(job_timeout, fn, args, kwargs)

    return _retrying(retry[0], retry[1], attempt, (_NotAwaitable,))


async def _timed_job(
    job_timeout: float, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A job under its job_timeout: at expiry, a TimeoutError that names the job."""
    limit = asyncio.timeout(job_timeout)
    try:
        async with limit:
            return await _as_coroutine(fn, fn(*args, **kwargs))
    except TimeoutError as exc:
        if not limit.expired():
            raise  # the job's own TimeoutError, not ours
        raise TimeoutError(
            f"job {_describe_call(fn, args, kwargs)} timed out after {job_timeout:g} s "
            "(job_timeout)"
        ) from exc


_ARGS_REPR = reprlib.Repr()
_ARGS_REPR.maxstring = _ARGS_REPR.maxother = 60
_ARGS_REPR.maxlevel = 2


def _describe_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``fetch('https://example.com/a', retries=3)``: a job, short enough for a message."""
    name = getattr(fn, "__qualname__", None) or _ARGS_REPR.repr(fn)
    parts = [_ARGS_REPR.repr(a) for a in args[:6]]
    if len(args) > 6:
        parts.append("...")
    parts += [f"{k}={_ARGS_REPR.repr(v)}" for k, v in list(kwargs.items())[:6]]
    if len(kwargs) > 6:
        parts.append("...")
    return f"{name}({', '.join(parts)})"


class _NotAwaitable(TypeError):
    """A job's function returned something that cannot be awaited: a mistake of the
    caller's, which submit() raises as a TypeError at the call (nothing was started),
    as ``TaskGroup.create_task`` does, rather than a failure of the executor's jobs."""


def _as_coroutine(fn: Any, obj: Any) -> Coroutine[Any, Any, Any]:
    """What a job's function returned, as a coroutine, or a TypeError naming the mistake."""
    if type(obj) is _CoroutineType:
        return obj
    if inspect.isawaitable(obj):
        return _await_awaitable(obj)
    if inspect.isasyncgen(obj):
        obj.aclose().close()
        raise _NotAwaitable(
            f"{fn!r} returned an async generator, which is not awaitable; "
            "submit a coroutine function (async def ... return)"
        )
    raise _NotAwaitable(
        f"{fn!r} returned {type(obj).__name__} {obj!r}, which is not awaitable; "
        "the executor runs coroutine functions (async def) or functions returning awaitables"
    )


def _check_fn(fn: Any, what: str) -> None:
    """Refuse a job function that cannot be one, before anything starts."""
    if callable(fn):
        return
    if inspect.iscoroutine(fn):
        name = getattr(fn, "__name__", "f")
        fn.close()  # no "coroutine ... was never awaited" warning after our error
        raise TypeError(
            f"{what}() takes a coroutine function and its arguments, not a coroutine object: "
            f"write {what}({name}, x), not {what}({name}(x))"
        )
    if inspect.isawaitable(fn):
        raise TypeError(
            f"{what}() takes a function and its arguments, not an awaitable ({fn!r}): "
            f"write {what}(fn, x), not {what}(fn(x))"
        )
    raise TypeError(f"{what}() needs a callable as its first argument, got {fn!r}")
