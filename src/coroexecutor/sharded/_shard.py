"""The shard end of either transport: a CoroutineExecutor fed with the parent's jobs."""

from __future__ import annotations

import asyncio
import functools
import os
from collections import deque
from collections.abc import (
    Callable,
)
from typing import Any

from .._executor import CoroutineExecutor
from .._jobs import _NO_KWARGS, _guarded_job
from .._retry import _RetryCount
from ._protocol import (
    _BATCH,
    _CANCEL_ALL,
    _CANCELLED,
    _CLOSE,
    _ERROR,
    _PROTOCOL,
    _READY,
    _RESULTS,
    _BadFunction,
    _dump_exception,
    _dumps,
    _loads,
    _outcome,
    _shard_capacity,
    _ShardConfig,
)


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
        # job_timeout is applied by _run, with the executor's own _timed_job.
        self.exe = CoroutineExecutor(
            config.max_workers,
            suppress_task_errors=True,
            initializer=config.initializer,
            initargs=config.initargs,
        )
        self.limit = config.max_workers
        self.job_timeout = config.job_timeout
        self.retried = _RetryCount()
        self.retry = None if config.retry is None else (config.retry, self.retried)
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
        jobs, defs, cancels, control, resize = _loads(data)
        if resize is not None:  # before the jobs: the parent sent those after it
            self.resize(resize)
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

    def resize(self, max_workers: int) -> None:
        self.limit = max_workers
        self.config.capacity = _shard_capacity(max_workers)
        self.exe.max_workers = max_workers
        if self.backlog and not self.turn_scheduled:  # room now: start from the backlog
            self.turn_scheduled = True
            self.loop.call_soon(self._end_of_turn)

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
            if self.retry is None and self.job_timeout is None:
                value = await fn(*args, **kwargs)
            else:
                value = await _guarded_job(self.retry, self.job_timeout, fn, args, kwargs)
        except asyncio.CancelledError:
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
            msg = (_RESULTS, out, self.active, len(self.waiting), self.retried.n)
            self.send(_dumps(msg, _PROTOCOL))


def _ignore(data: bytes) -> None:
    pass
