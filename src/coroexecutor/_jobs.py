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
from typing import TYPE_CHECKING, Any, Final

from ._retry import Retry, _RetryCount, _retrying

if TYPE_CHECKING:
    from ._adaptive import _Limiter

__all__ = (
    "_BASE_ERRORS",
    "_NO_KWARGS",
    "_JobMaker",
    "_KeyedCall",
    "_NotAwaitable",
    "_State",
    "_as_coroutine",
    "_check_fn",
    "_guarded_job",
    "_keyed_job",
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
    observe: tuple[_Limiter, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A job with the executor's initializer before it, and/or its retries, its
    job_timeout and its adaptive limits' observation (per attempt) around it."""
    if init is not None:
        r = init(*initargs)
        if inspect.isawaitable(r):
            await r
    if retry is None and job_timeout is None and not observe:
        return await _as_coroutine(fn, fn(*args, **kwargs))
    return await _guarded_job(retry, job_timeout, fn, args, kwargs, observe)


def _guarded_job(
    retry: tuple[Retry, _RetryCount] | None,
    job_timeout: float | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    observe: tuple[_Limiter, ...] = (),
) -> Coroutine[Any, Any, Any]:
    """A job under the executor's retries, job_timeout and/or adaptive limits (one of
    them is set), as both executors run it: in CoroutineExecutor's wrapper, and in a
    shard."""
    if retry is not None:
        return _retrying(
            retry[0],
            retry[1],
            lambda: _attempt(job_timeout, observe, fn, args, kwargs),
            (_NotAwaitable,),
        )
    return _attempt(job_timeout, observe, fn, args, kwargs)


def _attempt(
    job_timeout: float | None,
    observe: tuple[_Limiter, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Coroutine[Any, Any, Any]:
    """One call of a job: under its job_timeout, watched by its adaptive limits."""
    if observe:
        return _observed(observe, job_timeout, fn, args, kwargs)
    if job_timeout is None:
        return _as_coroutine(fn, fn(*args, **kwargs))
    return _timed_job(job_timeout, fn, args, kwargs)


async def _observed(
    observe: tuple[_Limiter, ...],
    job_timeout: float | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """One attempt, reported to the adaptive limits it runs under (its latency, or the
    exception it raised)."""
    tokens = [limiter.started() for limiter in observe]
    try:
        if job_timeout is None:
            result = await _as_coroutine(fn, fn(*args, **kwargs))
        else:
            result = await _timed_job(job_timeout, fn, args, kwargs)
    except BaseException as exc:
        for limiter, token in zip(observe, tokens, strict=True):
            limiter.ended(token, exc)
        raise
    for limiter, token in zip(observe, tokens, strict=True):
        limiter.ended(token, None)
    return result


class _JobMaker:
    """How CoroutineExecutor makes a job's coroutine when an option wraps it (the
    engine's ``_job_factory``): initializer, job_timeout, retry, adaptive limit."""

    __slots__ = ("init", "initargs", "job_timeout", "observe", "retry")

    def __init__(
        self,
        init: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        job_timeout: float | None,
        retry: tuple[Retry, _RetryCount] | None,
        observe: tuple[_Limiter, ...],
    ) -> None:
        self.init = init
        self.initargs = initargs
        self.job_timeout = job_timeout
        self.retry = retry
        self.observe = observe  # the executor's adaptive limit, if any

    def wraps(self) -> bool:
        """Whether a job needs a wrapper coroutine at all."""
        return bool(
            self.init is not None
            or self.job_timeout is not None
            or self.retry is not None
            or self.observe
        )

    def __call__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        if fn is _keyed_job:
            return _keyed_job(*args)  # wrapped already, by make(), inside
        return self.make(fn, args, kwargs, self.observe)

    def make(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        observe: tuple[_Limiter, ...],
    ) -> Coroutine[Any, Any, Any]:
        if self.init is None and self.job_timeout is None and self.retry is None and not observe:
            return _as_coroutine(fn, fn(*args, **kwargs))
        return _wrapped_job(
            self.init, self.initargs, self.job_timeout, self.retry, observe, fn, args, kwargs
        )


class _KeyedCall:
    """A job of a key (per_key): its key's state, whether it holds one of the key's
    places yet, and whether it has started (a queued one that is cancelled first gives
    its place back)."""

    __slots__ = ("placed", "started", "state")

    def __init__(self, state: Any, placed: bool) -> None:
        self.state = state
        self.placed = placed
        self.started = False


async def _keyed_job(
    keys: Any,
    call: _KeyedCall,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A job of a key: it gives the key's place back when it ends, however it ends."""
    call.started = True
    try:
        return await keys.job(call.state, fn, args, kwargs)
    finally:
        keys.release(call.state)


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
