"""What crosses between ShardedExecutor and its shards, whatever carries it.

Both ends of both transports use this module: the frames, the statuses, how results and
errors travel, the shard's configuration, and the interface a transport implements.

Frames
------
A frame is a pickle; on a byte stream (the process transport) it is preceded by its
length, 4 bytes little-endian (``_FrameProtocol``).

parent -> shard, one frame per flush: ``(jobs, defs, cancels, control, resize)``

* ``jobs``: ``[(job_id, fn_id, blob)]``.  ``fn_id >= 0`` names a function sent once per
  shard in ``defs`` as ``(fn_id, pickle of the function)``; ``blob`` is ``None`` (no
  arguments) or the pickle of ``(args, kwargs)``.  ``fn_id == -1``: ``blob`` is the pickle
  of ``(fn, args, kwargs)`` (bound methods, partials).
* ``cancels``: job ids whose handles were cancelled, or ``None``.
* ``control``: 0, ``_CANCEL_ALL`` or ``_CLOSE``.
* ``resize``: the shard's new ``max_workers``, or ``None``.

shard -> parent: ``(_READY, pid, capacity)`` once, then ``(_RESULTS, results, running,
pending, retried)`` (``retried``: the shard's retries so far) with ``results = [(job_id,
status, payload)]``: ``_OK`` (payload is the value, of a plain type), ``_OK_PICKLED`` (a
pickle of it), ``_ERROR`` (a pickle of ``(exception, traceback text)``) or ``_CANCELLED``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import pickle
import struct
import sys
import traceback
from collections.abc import (
    Callable,
)
from typing import Any, Final, cast

_dumps: Final = pickle.dumps
_loads: Final = pickle.loads
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
_HEADER: Final = struct.Struct("<I")

# How many jobs (or results) go in one frame at most; a frame is also sent at the end
# of every loop turn that produced something.  A shard's capacity is max_workers plus
# min(max_workers, _BATCH): one batch may wait in its queue while max_workers run.
_BATCH: Final = 512


def _shard_capacity(max_workers: int) -> int:
    """What a shard holds: max_workers running, and one batch waiting behind them."""
    return max_workers + min(max_workers, _BATCH)


# Frame kinds and result statuses.
_READY: Final = 1
_RESULTS: Final = 0
_OK: Final = 0
_OK_PICKLED: Final = 1
_ERROR: Final = 2
_CANCELLED: Final = 3
_CANCEL_ALL: Final = 1
_CLOSE: Final = 2

# A shard process that finds the user's script starting shards while the process
# imports it (spawn imports __main__ again in each child) exits with this code, after
# saying on stderr, in this one line, what to add.
_EXIT_NO_MAIN_GUARD: Final = 3
_NO_MAIN_GUARD: Final = (
    "coroexecutor: this script starts a ShardedExecutor when it is imported, and each "
    "shard process imports it again; put the code that starts it under "
    'if __name__ == "__main__":'
)

# Results of these exact types travel inside the frame's own pickle.
_PLAIN: Final = frozenset({type(None), bool, int, float, str, bytes})


class ShardCrashed(RuntimeError):
    """A shard's process (or Ray actor) died: each job that was in flight on it fails
    with this error."""

    def __init__(
        self,
        message: str,
        shard: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.shard = shard
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.shard, self.pid, self.exitcode))


class _RemoteTraceback(Exception):
    """The traceback of a job's exception, as formatted in its shard."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# ---------------------------------------------------------------------- validation
def _describe(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return repr(fn)


def _importable_target(fn: Any) -> Any:
    """The function that must be importable by module and qualname for ``fn`` to be."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.ismethod(target):
        target = target.__func__
    return target


def _check_job_fn(fn: Any, what: str, must_be_async: bool = True) -> None:
    """TypeError unless ``fn`` is a coroutine function a shard can import by name
    (any function, for the initializer: ``must_be_async=False``)."""
    if inspect.iscoroutine(fn):
        name = getattr(fn, "__qualname__", "f")
        fn.close()  # no "never awaited" warning
        raise TypeError(
            f"{what}() takes a coroutine function and its arguments, not a coroutine: "
            f"write {what}({name}, x), not {what}({name}(x))"
        )
    if not callable(fn):
        raise TypeError(f"{what}() needs a coroutine function, got {fn!r}")
    target = _importable_target(fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"{what}(): {fn!r} has no module and qualified name: a shard imports each "
            "job function by module:qualname, so jobs must be module-level "
            "coroutine functions (async def)"
        )
    if "<lambda>" in qualname:
        raise TypeError(
            f"{what}(): {module}.{qualname} is a lambda: a shard imports each job "
            "function by module:qualname; define the job with `async def` at module level"
        )
    if "<locals>" in qualname:
        raise TypeError(
            f"{what}(): {module}.{qualname} is defined inside a function (a closure or "
            "local function): a shard imports each job function by module:qualname; "
            "move it to module level"
        )
    if must_be_async and not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{what}(): {_describe(target)} is not a coroutine function: ShardedExecutor "
            "runs `async def` functions"
        )
    if module == "__main__" and not hasattr(sys.modules.get("__main__"), "__file__"):
        raise TypeError(
            f"{what}(): {qualname} is defined in an interactive session (__main__ has "
            "no file): shard processes cannot import it; put it in a module"
        )
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as err:
        raise TypeError(
            f"{what}(): {module}:{qualname} cannot be imported ({err!r}): a shard "
            "imports each job function by module:qualname"
        ) from None
    if getattr(found, "__func__", found) is not target:
        raise TypeError(
            f"{what}(): importing {module}:{qualname} gives {found!r}, not {fn!r}: a "
            "shard imports each job function by module:qualname, so the job must be "
            "the object bound to that name"
        )


def _pickle_error(fn: Any, err: BaseException) -> TypeError:
    return TypeError(
        f"the arguments of job {_describe(_importable_target(fn))} cannot be pickled to "
        f"send them to a shard: {err!r}"
    )


# ---------------------------------------------------------------------- outcomes
def _dump_exception(exc: BaseException) -> bytes:
    """Pickle ``(exc, traceback text)``; if ``exc`` does not survive pickling, a
    RuntimeError carrying its repr and traceback instead."""
    tb = "".join(traceback.format_exception(exc))
    try:
        blob = _dumps((exc, tb), _PROTOCOL)
        _loads(blob)  # a pickle that cannot be loaded is no better than none
        return blob
    except BaseException as err:
        stand_in = RuntimeError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc!r} "
            f"(the job's exception could not be pickled: {err!r})\n{tb}"
        )
        return _dumps((stand_in, tb), _PROTOCOL)


def _load_exception(blob: bytes) -> BaseException:
    try:
        exc, tb = _loads(blob)
    except BaseException as err:
        return RuntimeError(f"a job's exception could not be unpickled: {err!r}")
    if isinstance(exc, BaseException):
        exc.__cause__ = _RemoteTraceback(tb)
        return exc
    return RuntimeError(f"a shard reported a non-exception as an error: {exc!r}")


def _outcome(jid: int, value: Any) -> tuple[int, int, Any]:
    """A job's result, as it travels: inline when plain, else pickled on its own."""
    if type(value) in _PLAIN:
        return (jid, _OK, value)
    try:
        return (jid, _OK_PICKLED, _dumps(value, _PROTOCOL))
    except Exception as err:
        error = TypeError(
            f"the job's result {value!r:.200} cannot be pickled to send it back from its "
            f"shard: {err!r}"
        )
        return (jid, _ERROR, _dump_exception(error))


class _BadFunction:
    """A job function its shard failed to unpickle: each job of it fails with that."""

    def __init__(self, error: BaseException) -> None:
        self.blob = _dump_exception(error)


class _ShardConfig:
    """What a shard needs to know; pickled into the shard process or Ray actor."""

    __slots__ = (
        "capacity",
        "index",
        "initargs",
        "initializer",
        "job_timeout",
        "max_workers",
        "retry",
        "uvloop",
    )

    def __init__(
        self,
        index: int,
        max_workers: int,
        job_timeout: float | None,
        capacity: int,
        uvloop: bool | None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        retry: Any = None,
    ) -> None:
        self.index = index
        self.max_workers = max_workers
        self.job_timeout = job_timeout
        self.capacity = capacity
        self.uvloop = uvloop
        self.initializer = initializer  # run in the shard before each job
        self.initargs = initargs
        self.retry = retry  # a Retry: the shard retries a failed job itself

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


# ---------------------------------------------------------------------- framing
class _FrameProtocol(asyncio.Protocol):
    """Length-prefixed frames over a stream; each complete frame goes to ``on_frame``."""

    def __init__(
        self,
        on_frame: Callable[[bytes | memoryview], None],
        on_lost: Callable[[BaseException | None], None],
    ) -> None:
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        size = len(buf)
        pos = 0
        frames: list[bytes] = []
        while size - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            end = pos + 4 + length
            if end > size:
                break
            frames.append(bytes(buf[pos + 4 : end]))
            pos = end
        if pos:
            del buf[:pos]
        for frame in frames:
            self.on_frame(frame)

    def eof_received(self) -> bool:
        return False  # close our end too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost(exc)

    def send(self, frame: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_HEADER.pack(len(frame)) + frame)


class _Transport:
    """How the parent reaches one shard.  Frames are opaque bytes both ways."""

    pid: int | None = None

    async def start(
        self,
        on_frame: Callable[[bytes | memoryview], None],
        on_lost: Callable[[BaseException | None], None],
    ) -> None:
        """Start the shard; frames then go to ``on_frame``, the end to ``on_lost``."""
        raise NotImplementedError

    def send(self, frame: bytes) -> None:
        raise NotImplementedError

    async def describe_loss(self, exc: BaseException | None) -> tuple[str, int | None]:
        """After ``on_lost``: why the shard is gone, and its exit code if known."""
        raise NotImplementedError

    async def close(self, grace: float) -> None:
        """After the close frame: wait up to ``grace`` for the shard to end, then stop it."""
        raise NotImplementedError

    def kill(self) -> None:
        """Stop the shard now (synchronous; for error paths)."""
        raise NotImplementedError
