"""ShardedExecutor: one job stream over several processes (or Ray actors).

Each shard is a :class:`CoroutineExecutor` with its own event loop in another process.
The parent keeps one future (the job's handle) per job in flight and nothing else per
job; it talks to each shard over a *transport* that carries opaque frames (pickled
batches of messages) both ways.  Two transports implement the same small interface:

* ``_ProcessTransport`` (here): a ``multiprocessing`` child started with the "spawn"
  (or "forkserver") method, connected by a Unix socket pair that both ends read with an
  asyncio protocol: a frame is a 4-byte little-endian length and a pickle.
* ``_RayTransport`` (``_sharded_ray``): an async Ray actor, fed by actor calls and
  drained by a long poll.

Both ends of both transports share the rest: the parent side is ``ShardedExecutor``
(placement, credits, error rules), the shard side is ``_ShardCore`` (it feeds a
``CoroutineExecutor`` with ``submit_nowait`` and reports outcomes).

Protocol
--------
parent -> shard, one frame per flush: ``(jobs, defs, cancels, control)``

* ``jobs``: ``[(job_id, fn_id, blob)]``.  ``fn_id >= 0`` names a function sent once per
  shard in ``defs`` as ``(fn_id, pickle of the function)``; ``blob`` is ``None`` (no
  arguments) or the pickle of ``(args, kwargs)``.  ``fn_id == -1``: ``blob`` is the pickle
  of ``(fn, args, kwargs)`` (bound methods, partials).
* ``cancels``: job ids whose handles were cancelled, or ``None``.
* ``control``: 0, ``_CANCEL_ALL`` or ``_CLOSE``.

shard -> parent: ``(_READY, pid, capacity)`` once, then ``(_RESULTS, results, running,
pending)`` with ``results = [(job_id, status, payload)]``: ``_OK`` (payload is the value,
of a plain type), ``_OK_PICKLED`` (a pickle of it), ``_ERROR`` (a pickle of ``(exception,
traceback text)``) or ``_CANCELLED``.

Back-pressure
-------------
A shard's capacity is ``max_workers`` plus a batch buffer; the parent holds that many
*credits* per shard, spends one per job it places there and gets it back when the job's
outcome comes back.  ``submit`` waits (first in, first out) while no shard has a credit,
so the parent never holds more than ``shards x capacity`` jobs, nor does any shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import importlib
import inspect
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import types
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

from ._executor import CoroutineExecutor, ExecutorStats, _positive_number
from ._map import _next_args, _open_sources
from ._outcome import _Outcome

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

__all__ = ("ShardCrashed", "ShardedExecutor")

T = TypeVar("T")

_CancelledError: Final = asyncio.CancelledError
_BASE_ERRORS: Final = (KeyboardInterrupt, SystemExit)
_future_cancel: Final = asyncio.Future.cancel  # cancel a handle without telling its shard

_dumps: Final = pickle.dumps
_loads: Final = pickle.loads
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
_HEADER: Final = struct.Struct("<I")

# How many jobs (or results) go in one frame at most; a frame is also sent at the end
# of every loop turn that produced something.  A shard's capacity is max_workers plus
# min(max_workers, _BATCH): one batch may wait in its queue while max_workers run.
_BATCH: Final = 512

# Frame kinds and result statuses.
_READY: Final = 1
_RESULTS: Final = 0
_OK: Final = 0
_OK_PICKLED: Final = 1
_ERROR: Final = 2
_CANCELLED: Final = 3
_CANCEL_ALL: Final = 1
_CLOSE: Final = 2

# Results of these exact types travel inside the frame's own pickle.
_PLAIN: Final = frozenset({type(None), bool, int, float, str, bytes})

_NO_KWARGS: Final[dict[str, Any]] = {}  # never mutated

_START_TIMEOUT: Final = 120.0  # a shard must say it is ready within this
_CLOSE_GRACE: Final = 5.0  # after asking a shard to close: then SIGTERM, then SIGKILL


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


def _check_job_fn(fn: Any, what: str) -> None:
    """TypeError unless ``fn`` is a coroutine function a shard can import by name."""
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
    if not inspect.iscoroutinefunction(fn):
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


# ---------------------------------------------------------------------- shard side
class _ShardConfig:
    """What a shard needs to know; pickled into the shard process or Ray actor."""

    __slots__ = ("capacity", "index", "job_timeout", "max_workers", "uvloop")

    def __init__(
        self,
        index: int,
        max_workers: int,
        job_timeout: float | None,
        capacity: int,
        uvloop: bool | None,
    ) -> None:
        self.index = index
        self.max_workers = max_workers
        self.job_timeout = job_timeout
        self.capacity = capacity
        self.uvloop = uvloop

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.index, self.max_workers, self.job_timeout, self.capacity, self.uvloop)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.index, self.max_workers, self.job_timeout, self.capacity, self.uvloop) = state


class _ShardCore:
    """The shard end of either transport: runs jobs in a CoroutineExecutor.

    ``on_frame`` takes a parent frame; ``send`` (set by the transport) takes a frame for
    the parent.  ``serve`` runs the executor until the parent asks to close (or is gone).

    Jobs beyond ``max_workers`` wait in the shard's own backlog (at most one batch, by
    the parent's credits) and go to the executor only when a worker is free, so its
    ``submit_nowait`` always starts them at once.  Each job runs inside ``_run``, which
    reports its outcome itself: no done callback per job.
    """

    def __init__(self, config: _ShardConfig, send: Callable[[bytes], None]) -> None:
        self.config = config
        self.send = send
        # The shard never fails fast on its own: the parent applies the error rules.
        # job_timeout is applied by _run, with the asyncio.timeout the executor would use.
        self.exe = CoroutineExecutor(config.max_workers, suppress_task_errors=True)
        self.limit = config.max_workers
        self.job_timeout = config.job_timeout
        self.fns: dict[int, Any] = {}
        self.active = 0  # jobs given to the executor and not ended
        self.backlog: deque[int] = deque()  # job ids waiting for a worker, in order
        self.waiting: dict[int, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {}
        self.handles: dict[int, asyncio.Future[Any]] = {}  # running jobs, to cancel them
        self.current = -1  # the job whose _run started last
        self.out: list[tuple[int, int, Any]] = []
        self.turn_scheduled = False
        self.loop = asyncio.get_running_loop()
        self.stop: asyncio.Future[bool] = self.loop.create_future()  # True: parent gone

    async def serve(self) -> None:
        async with self.exe:
            self.send(_dumps((_READY, os.getpid(), self.config.capacity), _PROTOCOL))
            parent_gone = await self.stop
            if parent_gone:
                self.send = _ignore
                self.cancel_all()
        # Every job has ended and reported itself; send what is left.
        self.flush()

    def parent_lost(self) -> None:
        if not self.stop.done():
            self.stop.set_result(True)

    def on_frame(self, data: bytes | memoryview) -> None:
        jobs, defs, cancels, control = _loads(data)
        fns = self.fns
        if defs:
            for fid, blob in defs:
                try:
                    fns[fid] = _loads(blob)
                except BaseException as err:
                    err.add_note(f"(shard {self.config.index} could not import the job function)")
                    fns[fid] = _BadFunction(err)
        out = self.out
        waiting = self.waiting
        backlog = self.backlog
        for jid, fid, blob in jobs:
            try:
                if fid >= 0:
                    fn = fns[fid]
                    if type(fn) is _BadFunction:
                        out.append((jid, _ERROR, fn.blob))
                        continue
                    if blob is None:
                        args: tuple[Any, ...] = ()
                        kwargs: dict[str, Any] = _NO_KWARGS
                    else:
                        args, kwargs = _loads(blob)
                else:
                    fn, args, kwargs = _loads(blob)
            except Exception as err:
                out.append((jid, _ERROR, _dump_exception(err)))
                continue
            if self.active < self.limit and not backlog:
                self._start(jid, fn, args, kwargs)
            else:
                backlog.append(jid)
                waiting[jid] = (fn, args, kwargs)
        if cancels:
            for jid in cancels:
                if waiting.pop(jid, None) is not None:
                    out.append((jid, _CANCELLED, None))  # never started
                else:
                    found = self.handles.get(jid)
                    if found is not None:
                        found.cancel()
        if control == _CANCEL_ALL:
            self.cancel_all()
        elif control == _CLOSE and not self.stop.done():
            self.stop.set_result(False)
        if out:
            self.flush()

    def cancel_all(self) -> None:
        for jid in self.waiting:
            self.out.append((jid, _CANCELLED, None))
        self.waiting.clear()
        self.backlog.clear()
        for handle in list(self.handles.values()):
            handle.cancel()

    def _start(self, jid: int, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.active += 1
        handle = self.exe.submit_nowait(self._run, jid, fn, args, kwargs)
        if not handle.done():
            self.handles[jid] = handle
            if self.current != jid:  # pragma: no cover - queued by the executor after all
                handle.add_done_callback(functools.partial(self._never_ran, jid))

    def _never_ran(self, jid: int, handle: asyncio.Future[Any]) -> None:
        if self.handles.pop(jid, None) is not None:  # _run did not report it: it never ran
            self._ended((jid, _CANCELLED, None))

    async def _run(self, jid: int, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """One job, reporting its own outcome (KeyboardInterrupt and SystemExit too: the
        parent decides what they do; the shard goes on)."""
        self.current = jid
        try:
            if self.job_timeout is None:
                value = await fn(*args, **kwargs)
            else:
                async with asyncio.timeout(self.job_timeout):
                    value = await fn(*args, **kwargs)
        except _CancelledError:
            self.handles.pop(jid, None)
            self._ended((jid, _CANCELLED, None))
            raise
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            self.handles.pop(jid, None)
            self._ended((jid, _ERROR, _dump_exception(exc)))
            return
        self.handles.pop(jid, None)
        self._ended(_outcome(jid, value))

    def _ended(self, result: tuple[int, int, Any]) -> None:
        self.active -= 1
        out = self.out
        out.append(result)
        if len(out) >= _BATCH:
            self.flush()
        if not self.turn_scheduled:
            self.turn_scheduled = True
            self.loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        """Once per loop turn with ended jobs: start jobs from the backlog (their workers
        are free now), then send the outcomes."""
        self.turn_scheduled = False
        backlog = self.backlog
        waiting = self.waiting
        while backlog and self.active < self.limit:
            jid = backlog.popleft()
            job = waiting.pop(jid, None)
            if job is not None:
                self._start(jid, *job)
        self.flush()

    def flush(self) -> None:
        if self.out:
            out = self.out
            self.out = []
            self.send(_dumps((_RESULTS, out, self.active, len(self.waiting)), _PROTOCOL))


def _ignore(data: bytes) -> None:
    pass


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
    from ._runner import run

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


# ---------------------------------------------------------------------- transports
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

    async def start(
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


# ---------------------------------------------------------------------- parent side
class _Handle(asyncio.Future[Any]):
    """A job's handle: a Future whose cancel() also cancels the job in its shard."""

    __slots__ = ("_jid", "_report", "_shard")

    _jid: int
    _report: bool
    _shard: _Shard

    def cancel(self, msg: Any | None = None) -> bool:
        if not _future_cancel(self, msg):
            return False
        shard = self._shard
        shard.exe._cancel_job(shard, self._jid)
        return True


class _Shard:
    __slots__ = (
        "alive",
        "cancels",
        "control",
        "credits",
        "defs",
        "exe",
        "index",
        "jobs",
        "known",
        "outbox",
        "pending",
        "ready",
        "running",
        "transport",
    )

    def __init__(self, exe: ShardedExecutor, index: int, transport: _Transport) -> None:
        self.exe = exe
        self.index = index
        self.transport = transport
        self.credits = 0
        self.jobs: dict[int, _Handle] = {}  # in flight: placed here, outcome not back yet
        self.outbox: list[tuple[int, int, bytes | None]] = []
        self.defs: list[tuple[int, bytes]] = []
        self.known: set[int] = set()  # function ids this shard has been sent
        self.cancels: list[int] = []
        self.control = 0
        self.alive = False
        self.running = 0
        self.pending = 0
        self.ready: asyncio.Future[None] | None = None


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_NO_SHARD_LEFT: Final = object()  # a blocked submitter's wake-up: every shard is dead


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return value


class ShardedExecutor(_Outcome):
    """Run importable coroutine functions over ``shards`` processes (or Ray actors).

    Each shard is a ``CoroutineExecutor(max_workers)`` on its own event loop (uvloop when
    installed) in another process, so CPU-bound work in jobs uses every core.  The API
    and the error rules are those of ``CoroutineExecutor``::

        async with ShardedExecutor(shards=4, max_workers=1000) as exe:
            async for page in exe.map(parse, urls):
                ...

    Jobs must be coroutine functions importable by ``module:qualname`` with picklable
    arguments and results; anything else is a ``TypeError`` from ``submit``.
    """

    def __init__(
        self,
        shards: int,
        *,
        max_workers: int = 1000,
        backend: Literal["process", "ray"] = "process",
        suppress_task_errors: bool = False,
        timeout: float | None = None,
        job_timeout: float | None = None,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        ray_address: str | None = None,
        ray_actor_options: dict[str, Any] | None = None,
    ) -> None:
        self._nshards = _count("shards", shards)
        self._max_workers = _count("max_workers", max_workers)
        if backend not in ("process", "ray"):
            raise ValueError(f'backend must be "process" or "ray", got {backend!r}')
        self._timeout = _positive_number("timeout", timeout)
        self._job_timeout = _positive_number("job_timeout", job_timeout)
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f'start_method must be "spawn" or "forkserver" (not "fork": the parent '
                f"runs an event loop), got {start_method!r}"
            )
        if ray_address is not None and not isinstance(ray_address, str):
            raise TypeError(f"ray_address must be a str or None, got {ray_address!r}")
        if ray_actor_options is not None and not isinstance(ray_actor_options, dict):
            raise TypeError(f"ray_actor_options must be a dict or None, got {ray_actor_options!r}")
        if backend == "ray":
            from ._sharded_ray import _import_ray

            _import_ray()  # ImportError naming the extra, now rather than at start
        elif ray_address is not None or ray_actor_options is not None:
            raise ValueError('ray_address and ray_actor_options need backend="ray"')
        self._backend = backend
        self._start_method = start_method
        self._ray_address = ray_address
        self._ray_actor_options = dict(ray_actor_options or {})
        self._suppress = bool(suppress_task_errors)
        self._capacity = self._max_workers + min(self._max_workers, _BATCH)

        self._state = _State.NEW
        self._shards: list[_Shard] = []
        self._live: list[_Shard] = []
        self._starting: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None  # set once the shards are stopped
        self._background: set[asyncio.Task[Any]] = set()  # failing a dead shard's jobs
        self._closing_task: asyncio.Task[Any] | None = None  # shutdown(wait=False)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._flush_scheduled = False
        self._next_jid = 0
        self._fids: dict[Any, int] = {}
        self._fn_blobs: list[bytes] = []
        self._inflight = 0
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._drained: asyncio.Future[None] | None = None

        self._timer: asyncio.TimerHandle | None = None
        self._aborting = False
        self._init_outcome()

    # ------------------------------------------------------------------ public API
    @property
    def shards(self) -> int:
        """How many shards (processes or Ray actors) run the jobs."""
        return self._nshards

    @property
    def max_workers(self) -> int:
        """How many jobs each shard runs at once."""
        return self._max_workers

    @property
    def shard_pids(self) -> list[int | None]:
        """The process id of each shard (None before it has started)."""
        return [s.transport.pid for s in self._shards] or [None] * self._nshards

    def stats(self) -> ExecutorStats:
        """Job counts over every shard, as a frozen ExecutorStats.

        ``running`` is what the shards last reported as started, ``pending`` the rest
        of the jobs in flight (queued in a shard or on the way); ``max_workers`` is the
        total, ``shards * max_workers``.
        """
        inflight = self._inflight
        running = min(inflight, sum(s.running for s in self._live))
        return ExecutorStats(
            submitted=self._submitted,
            pending=inflight - running,
            running=running,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            max_workers=self._nshards * self._max_workers,
        )

    async def submit(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> Any:
        """Send ``fn(*args, **kwargs)`` to a shard; wait first while every shard is full.

        Returns the job's handle, an ``asyncio.Future`` resolved when the shard reports
        the job's outcome; ``handle.cancel()`` cancels the job in its shard.
        """
        return await self._submit(fn, args, kwargs, True)

    async def _submit(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], report: bool
    ) -> _Handle:
        try:
            fid = self._fids.get(fn)
        except TypeError:  # an unhashable callable
            fid = None
        if fid is None:
            fid = self._register(fn, "submit")
        if fid >= 0:
            if args or kwargs:
                try:
                    blob: bytes | None = _dumps((args, kwargs), _PROTOCOL)
                except Exception as err:
                    raise _pickle_error(fn, err) from err
            else:
                blob = None
        else:
            try:
                blob = _dumps((fn, args, kwargs), _PROTOCOL)
            except Exception as err:
                raise _pickle_error(fn, err) from err
        if self._state is _State.OPEN and not self._waiters:
            best = None
            most = 0
            for shard in self._live:
                if shard.credits > most:
                    best = shard
                    most = shard.credits
            if best is not None:
                best.credits = most - 1
                return self._place(best, fid, blob, report)
        return self._place(await self._wait_for_credit(), fid, blob, report)

    def map(
        self, fn: Callable[..., Awaitable[T]], *iterables: Iterable[Any] | AsyncIterable[Any]
    ) -> AsyncIterator[T]:
        """Run ``fn`` over the zipped iterables in the shards; yield results in input order.

        As ``CoroutineExecutor.map``: lazy, bounded (the shards' capacity in flight plus a
        reorder buffer of as many), the first error raised in its turn with the other map
        jobs cancelled, and leaving early cancels them.
        """
        return _map(self, fn, self._map_input("map", fn, iterables))

    def map_unordered(
        self, fn: Callable[..., Awaitable[T]], *iterables: Iterable[Any] | AsyncIterable[Any]
    ) -> AsyncIterator[T]:
        """Like map(), but yield each result as soon as its job ends."""
        return _map_unordered(self, fn, self._map_input("map_unordered", fn, iterables))

    async def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; with ``wait``, wait for every job, then stop the shards.

        ``cancel_futures`` cancels the unfinished jobs first.  ``wait=False`` cancels
        them and returns at once without raising (the shards stop in the background;
        leaving the ``async with`` block waits for that).  With ``wait=True`` the first
        job error (fail-fast mode) or the executor's TimeoutError is raised here.
        """
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        if self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)
        self._close()
        if cancel_futures or not wait:
            self._cancel_all()
        if not wait:
            if self._closing_task is None:
                self._closing_task = self._loop.create_task(self._finish())
            return
        cancelled = await self._finish()
        if cancelled is not None:
            raise cancelled
        self._raise_error()

    async def __aenter__(self) -> ShardedExecutor:
        self._claim_entry(used=self._state is not _State.NEW)
        await self._ensure_started()
        return self

    async def _finish_at_exit(self) -> BaseException | None:
        clean = False
        try:
            cancelled = await self._finish()
            clean = True
        finally:
            if not clean:
                self._kill_all()  # a second Ctrl-C, or worse: no shard outlives us
        return cancelled

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled (nor sent to a shard)")

    def __repr__(self) -> str:
        st = self.stats()
        return (
            f"<ShardedExecutor backend={self._backend} shards={self._nshards} "
            f"state={self._state.value} max_workers={self._max_workers} "
            f"submitted={st.submitted} pending={st.pending} running={st.running} "
            f"completed={st.completed} failed={st.failed} cancelled={st.cancelled}>"
        )

    # ------------------------------------------------------------------ startup
    async def _ensure_started(self) -> None:
        if self._state is _State.OPEN:
            return
        if self._state is _State.STARTING:
            assert self._starting is not None
            await asyncio.shield(self._starting)
            return
        if self._state is not _State.NEW:
            raise RuntimeError("cannot schedule new futures after shutdown")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._state = _State.STARTING
        self._starting = loop.create_future()
        self._closed = loop.create_future()
        try:
            await self._start_shards()
        except BaseException as err:
            self._kill_all()
            self._state = _State.CLOSED
            self._closed.set_result(None)
            if isinstance(err, Exception):
                self._starting.set_exception(err)
                self._starting.exception()
            else:
                self._starting.cancel()
            raise
        self._state = _State.OPEN
        self._starting.set_result(None)
        if self._timeout is not None:
            # From when the shards are up: starting them (seconds on a Ray cluster) is
            # not the jobs' time.
            self._timer = loop.call_later(self._timeout, self._on_timeout)

    async def _start_one(self, shard: _Shard) -> None:
        await shard.transport.start(
            functools.partial(self._on_frame, shard),
            functools.partial(self._on_lost, shard),
        )
        shard.alive = True
        assert shard.ready is not None
        await shard.ready

    def _new_transport(self, config: _ShardConfig) -> _Transport:
        if self._backend == "ray":
            from ._sharded_ray import _RayTransport

            return _RayTransport(config, self._ray_address, self._ray_actor_options)
        return _ProcessTransport(config, self._start_method)

    async def _start_shards(self) -> None:
        loop = self._loop
        if self._backend == "ray":
            from ._sharded_ray import _ensure_ray

            _ensure_ray(self._ray_address)
        uvloop = None
        for i in range(self._nshards):
            config = _ShardConfig(i, self._max_workers, self._job_timeout, self._capacity, uvloop)
            shard = _Shard(self, i, self._new_transport(config))
            shard.ready = loop.create_future()
            self._shards.append(shard)
        try:
            async with asyncio.timeout(_START_TIMEOUT), asyncio.TaskGroup() as group:
                for shard in self._shards:
                    group.create_task(self._start_one(shard))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        for shard in self._shards:
            if not shard.alive:
                raise RuntimeError(
                    f"shard {shard.index} (pid {shard.transport.pid}) died while the "
                    "others started; see its traceback on stderr"
                )
        self._live = list(self._shards)

    # ------------------------------------------------------------------ placement
    def _register(self, fn: Any, what: str) -> int:
        """Check ``fn`` and give it an id (-1: it travels with each job's arguments)."""
        _check_job_fn(fn, what)
        if type(fn) is not types.FunctionType:
            return -1  # bound methods, partials: pickled with each job
        try:
            blob = _dumps(fn, _PROTOCOL)
        except Exception as err:
            raise TypeError(f"{what}(): {_describe(fn)} cannot be pickled: {err!r}") from err
        fid = len(self._fn_blobs)
        self._fn_blobs.append(blob)
        self._fids[fn] = fid
        return fid

    def _place(self, shard: _Shard, fid: int, blob: bytes | None, report: bool) -> _Handle:
        """Put a job on ``shard`` (its credit is already taken)."""
        jid = self._next_jid
        self._next_jid = jid + 1
        handle = _Handle(loop=self._loop)
        handle._jid = jid
        handle._shard = shard
        handle._report = report
        shard.jobs[jid] = handle
        if fid not in shard.known:
            shard.known.add(fid)
            if fid >= 0:
                shard.defs.append((fid, self._fn_blobs[fid]))
        outbox = shard.outbox
        outbox.append((jid, fid, blob))
        self._inflight += 1
        self._submitted += 1
        if len(outbox) >= _BATCH:
            self._send(shard)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return handle

    async def _wait_for_credit(self) -> _Shard:
        """A shard with a credit taken for the caller; first in, first out."""
        await self._ensure_started()
        while True:
            self._check_open()
            if not self._live:
                raise ShardCrashed("every shard of this ShardedExecutor has died")
            if not self._waiters:
                best = self._least_loaded()
                if best is not None:
                    best.credits -= 1
                    return best
            waiter: asyncio.Future[Any] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                got = await waiter
            except _CancelledError:
                if waiter.done() and not waiter.cancelled():
                    got = waiter.result()
                    if isinstance(got, _Shard):
                        got.credits += 1  # handed to us, not used: pass it on
                        self._wake()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if isinstance(got, _Shard):
                if got.alive:
                    return got
                continue  # it died since: try again
            if got is _NO_SHARD_LEFT:
                raise ShardCrashed("every shard of this ShardedExecutor has died")
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _least_loaded(self) -> _Shard | None:
        best = None
        most = 0
        for shard in self._live:
            if shard.credits > most:
                best = shard
                most = shard.credits
        return best

    def _wake(self) -> None:
        """Hand free credits to blocked submitters, oldest first."""
        waiters = self._waiters
        while waiters:
            if waiters[0].done():
                waiters.popleft()
                continue
            best = self._least_loaded()
            if best is None:
                return
            best.credits -= 1
            waiters.popleft().set_result(best)

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise RuntimeError("cannot schedule new futures after shutdown")

    # ------------------------------------------------------------------ sending
    def _flush(self) -> None:
        self._flush_scheduled = False
        for shard in self._shards:
            if shard.outbox or shard.cancels or shard.control:
                self._send(shard)

    def _send(self, shard: _Shard) -> None:
        jobs = shard.outbox
        defs = shard.defs
        cancels = shard.cancels
        control = shard.control
        shard.outbox = []
        if defs:
            shard.defs = []
        if cancels:
            shard.cancels = []
        shard.control = 0
        if shard.alive:
            frame = _dumps((jobs, defs or None, cancels or None, control), _PROTOCOL)
            shard.transport.send(frame)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._state is not _State.NEW:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _cancel_job(self, shard: _Shard, jid: int) -> None:
        """A handle was cancelled: cancel its job in its shard."""
        if self._aborting or not shard.alive or jid not in shard.jobs:
            return  # a cancel-all is on its way, or the job is gone anyway
        shard.cancels.append(jid)
        self._schedule_flush()

    # ------------------------------------------------------------------ receiving
    def _on_frame(self, shard: _Shard, data: bytes | memoryview) -> None:
        msg = _loads(data)
        if msg[0] != _RESULTS:
            # _READY: the shard's pid (for Ray) and its capacity, our first credits.
            _, pid, capacity = msg
            shard.transport.pid = pid
            shard.credits = capacity
            if shard.ready is not None and not shard.ready.done():
                shard.ready.set_result(None)
            return
        _, results, running, pending = msg
        jobs = shard.jobs
        completed = 0
        for jid, status, payload in results:
            handle = jobs.pop(jid)
            if status == _OK and not handle.done():
                handle.set_result(payload)
                completed += 1
            else:
                self._settle(handle, status, payload)
        self._completed += completed
        n = len(results)
        shard.running = running
        shard.pending = pending
        if shard.alive:
            shard.credits += n
        self._inflight -= n
        if self._waiters:
            self._wake()
        if not self._inflight:
            self._check_drained()

    def _settle(self, handle: _Handle, status: int, payload: Any) -> None:
        """A job's outcome, other than a plain result for a live handle."""
        exc: BaseException | None
        if handle.done():
            # Its handle was cancelled first, and says so: the job counts as cancelled.
            self._cancelled += 1
            self._job_failed(_CancelledError(), handle._report)
            return
        if status == _CANCELLED:
            _future_cancel(handle)
            self._cancelled += 1
            self._job_failed(_CancelledError(), handle._report)
            return
        if status == _OK:
            handle.set_result(payload)
            self._completed += 1
            return
        if status == _OK_PICKLED:
            try:
                value = _loads(payload)
            except Exception as err:
                exc = RuntimeError(f"a job's result could not be unpickled: {err!r}")
            else:
                handle.set_result(value)
                self._completed += 1
                return
        else:
            exc = _load_exception(payload)
        self._fail(handle, exc)

    def _fail(self, handle: _Handle, exc: BaseException) -> None:
        handle.set_exception(exc)
        handle.exception()  # raised at exit or kept on the handle: never "never retrieved"
        self._failed += 1
        self._job_failed(exc, handle._report)

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _on_lost(self, shard: _Shard, exc: BaseException | None) -> None:
        """A shard's connection ended.  Expected once it was asked to close; otherwise
        it died, and each job in flight on it fails with ShardCrashed."""
        was_alive = shard.alive
        shard.alive = False
        shard.credits = 0
        shard.running = shard.pending = 0
        if shard in self._live:
            self._live.remove(shard)
        if shard.ready is not None and not shard.ready.done():
            shard.ready.set_exception(
                RuntimeError(
                    f"shard {shard.index} (pid {shard.transport.pid}) ended before it was "
                    "ready; see its traceback on stderr"
                )
            )
            shard.ready.exception()
            return
        if was_alive and self._state is not _State.CLOSED:
            self._spawn(self._shard_died(shard, exc))
        if not self._live and self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(_NO_SHARD_LEFT)
            self._waiters.clear()

    async def _shard_died(self, shard: _Shard, exc: BaseException | None) -> None:
        how, code = await shard.transport.describe_loss(exc)
        jobs = list(shard.jobs.values())
        shard.jobs.clear()
        shard.outbox = []
        pid = shard.transport.pid
        for handle in jobs:
            error = ShardCrashed(
                f"shard {shard.index} (pid {pid}) died ({how}) with this job in flight",
                shard.index,
                pid,
                code,
            )
            if handle.done():
                self._cancelled += 1
                self._job_failed(_CancelledError(), handle._report)
            else:
                self._fail(handle, error)
        self._inflight -= len(jobs)
        if not self._inflight:
            self._check_drained()

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ error rules
    def _close(self) -> None:
        if self._state in (_State.OPEN, _State.STARTING):
            self._state = _State.CLOSING
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def _cancel_all(self) -> None:
        """Cancel every unfinished job; their cancellations are not job errors."""
        self._aborting = True
        self._close()
        for shard in self._shards:
            for handle in shard.jobs.values():
                if not handle.done():
                    _future_cancel(handle)
            if shard.alive and shard.jobs:
                shard.control = _CANCEL_ALL
        self._schedule_flush()

    def _job_failed(self, exc: BaseException, report: bool) -> None:
        if isinstance(exc, _BASE_ERRORS):
            if self._base_error is None:
                self._base_error = exc
            self._abort(exc)
        elif self._aborting and isinstance(exc, _CancelledError):
            return  # one of the cancellations we asked for
        elif report and not self._suppress and self._state is not _State.CLOSED:
            self._abort(exc)

    def _on_timeout(self) -> None:
        self._timer = None
        if self._state is _State.CLOSED:
            return
        self._abort(TimeoutError(f"{self!r} timed out after {self._timeout} s"))

    async def _finish(self) -> BaseException | None:
        """Wait until every job has ended, then stop the shards.

        Returns the CancelledError to propagate when the waiting task was cancelled
        by someone else (the jobs are cancelled and still awaited then).
        """
        propagate: BaseException | None = None
        loop = self._loop
        while self._inflight:
            try:
                if self._drained is None or self._drained.done():
                    self._drained = loop.create_future()
                await self._drained
            except _CancelledError as ex:
                outside = self._finish_interrupted(ex)
                if outside is not None:
                    propagate = outside
        self._close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self._stop_shards()
            closing = self._closing_task  # shutdown(wait=False)'s: let it end too
            if closing is not None and closing is not asyncio.current_task():
                await asyncio.wait([closing])
        except _CancelledError as ex:
            self._kill_all()
            propagate = ex
        return propagate

    async def _stop_shards(self) -> None:
        closed = self._closed
        assert closed is not None
        if self._state is _State.CLOSED:
            await asyncio.shield(closed)
            return
        self._state = _State.CLOSED
        try:
            for shard in self._shards:
                if shard.alive:
                    shard.control = _CLOSE
                    self._send(shard)
            await asyncio.gather(*(s.transport.close(_CLOSE_GRACE) for s in self._shards))
            # Crashed shards' jobs are failed by a task of their own: let it end.
            while self._background:
                await asyncio.gather(*list(self._background))
        finally:
            self._kill_all()
            if not closed.done():
                closed.set_result(None)

    def _kill_all(self) -> None:
        for shard in self._shards:
            shard.alive = False
            shard.transport.kill()
        self._live = []

    def _map_input(
        self, what: str, fn: Any, iterables: tuple[Iterable[Any] | AsyncIterable[Any], ...]
    ) -> list[Any]:
        try:
            known = self._fids.get(fn) is not None
        except TypeError:
            known = False
        if not known:
            self._register(fn, what)
        return _open_sources(what, iterables)


# ---------------------------------------------------------------------- map
async def _map(exe: ShardedExecutor, fn: Any, sources: list[Any]) -> AsyncGenerator[Any, None]:
    """Ordered map: the map owns its jobs' errors (raised in turn, not fail-fast)."""
    pending: deque[asyncio.Future[Any]] = deque()
    limit = exe._nshards * exe._capacity
    try:
        while (args := await _next_args(sources)) is not None:
            pending.append(await exe._submit(fn, args, _NO_KWARGS, False))
            while pending and pending[0].done():
                yield pending.popleft().result()
            while len(pending) > limit:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for handle in pending:
            handle.cancel()
        sources.clear()


async def _map_unordered(
    exe: ShardedExecutor, fn: Any, sources: list[Any]
) -> AsyncGenerator[Any, None]:
    """Results as jobs end; the first error (in that order) is raised, the rest cancelled."""
    loop = asyncio.get_running_loop()
    finished: deque[asyncio.Future[Any]] = deque()
    unfinished: set[asyncio.Future[Any]] = set()
    wake: list[asyncio.Future[None]] = []

    def on_done(handle: asyncio.Future[Any]) -> None:
        unfinished.discard(handle)
        finished.append(handle)
        if wake and not wake[0].done():
            wake[0].set_result(None)

    exhausted = False
    try:
        while True:
            if not exhausted:
                args = await _next_args(sources)
                if args is None:
                    exhausted = True
                else:
                    job = await exe._submit(fn, args, _NO_KWARGS, False)
                    unfinished.add(job)
                    job.add_done_callback(on_done)
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
        sources.clear()
