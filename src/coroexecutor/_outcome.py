"""The outcome rules CoroutineExecutor and ShardedExecutor share, after asyncio.TaskGroup.

A job failure (fail-fast) or the executor's deadline cancels every job and the body; the
first failure wins; a cancellation that came from outside propagates while ours is taken
back; KeyboardInterrupt and SystemExit beat everything.  The executors differ in how they
cancel their jobs and wait for them, which they provide as ``_cancel_all()`` and
``_finish()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._jobs import _BASE_ERRORS

__all__ = ("_Outcome",)

_CancelledError = asyncio.CancelledError


class _Outcome:
    """Mixin: what leaving the ``async with`` block raises, and fail-fast."""

    if TYPE_CHECKING:
        _aborting: bool

        def _cancel_all(self) -> None:
            """Cancel every unfinished job (sets ``_aborting``); not a job error."""

        def _finish(self) -> Awaitable[BaseException | None]:
            """Wait for every job; return an outside cancellation to propagate."""

    def _init_outcome(self, group: bool = False) -> None:
        self._entered = False
        self._exiting = False
        self._parent_task: asyncio.Task[Any] | None = None
        self._parent_cancel_requested = False
        self._error: BaseException | None = None  # the first job error, or the TimeoutError
        self._base_error: BaseException | None = None  # KeyboardInterrupt / SystemExit
        self._error_raised = False
        self._timed_out: TimeoutError | None = None
        self._group = group  # errors="group": exit raises every job error
        self._errors: list[BaseException] = []

    def _claim_entry(self, used: bool) -> None:
        """``__aenter__``'s checks: entered once, before any use, inside a task (the one
        fail-fast cancels)."""
        if self._entered:
            raise RuntimeError(f"{self!r} has already been entered")
        if used:
            raise RuntimeError(f"{self!r} was used before it was entered; enter it first")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError(f"{self!r} must be entered inside a task")
        self._entered = True
        self._parent_task = task

    def _abort(self, error: BaseException) -> None:
        """Fail-fast: record the error, cancel everything, and cancel the body."""
        if self._error is None:
            self._error = error
        if self._aborting:
            return
        self._cancel_all()
        parent = self._parent_task
        if parent is not None and not self._exiting and not parent.done():
            # As TaskGroup does: stop the body wherever it waits (a submit, a sleep).
            self._parent_cancel_requested = True
            parent.cancel()

    def _finish_interrupted(self, ex: BaseException) -> BaseException | None:
        """The task waiting in ``_finish()`` was cancelled: the cancellation to propagate,
        or None for our own cancellation of the body (fail-fast, timeout)."""
        if not self._aborting:
            # Someone else's: the jobs are cancelled and still awaited.
            self._cancel_all()
            return ex
        if not self._parent_cancel_requested or asyncio.current_task() is not self._parent_task:
            return ex
        return None

    async def _finish_at_exit(self) -> BaseException | None:
        return await self._finish()

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Wait for every job, then raise the executor's outcome."""
        self._exiting = True
        error_before_exit = self._error
        if isinstance(exc, _BASE_ERRORS) and self._base_error is None:
            self._base_error = exc
        propagate_cancel: BaseException | None = None
        if isinstance(exc, _CancelledError):
            propagate_cancel = exc
        if exc is not None and not self._aborting:
            # The body raised or was cancelled: every job is cancelled and awaited.
            self._cancel_all()
        # As with TaskGroup, running jobs may still submit while we wait for them (a
        # producer job submitted by the body goes on producing); the executor closes
        # once no job is left.
        cancelled = await self._finish_at_exit()
        if propagate_cancel is None:
            propagate_cancel = cancelled
        parent = self._parent_task
        assert parent is not None
        if self._parent_cancel_requested:
            # We cancelled the body (fail-fast or timeout).  On 3.11 and 3.12 a
            # cancellation the body never reached stays pending after uncancel():
            # take it here, or it would hit the code after the block.
            if getattr(parent, "_must_cancel", False):
                try:
                    await asyncio.sleep(0)
                except _CancelledError:
                    pass
            self._parent_cancel_requested = False
            if parent.uncancel() == 0:
                propagate_cancel = None
        body_error = exc if exc is not None and not isinstance(exc, _CancelledError) else None
        # The first failure wins: a job error that caused the shutdown beats what the
        # body raised because of it; an error of the body's own beats later job errors.
        self._raise_error(body_error, error_before_exit is not None)
        if propagate_cancel is not None:
            raise propagate_cancel

    def _raise_error(
        self, body_error: BaseException | None = None, job_error_first: bool = True
    ) -> None:
        """Raise what the executor's outcome is, once: KeyboardInterrupt/SystemExit, the
        ExceptionGroup of job errors (errors="group"), or the first error."""
        if self._base_error is not None:
            raise self._base_error
        if self._error_raised:
            return
        if self._group and self._errors:
            errors = list(self._errors)
            if self._timed_out is not None:
                errors.append(self._timed_out)
            if body_error is not None:
                errors.append(body_error)  # as TaskGroup adds the body's exception
            self._error_raised = True
            raise BaseExceptionGroup(f"unhandled errors in {type(self).__name__}", errors)
        if self._error is not None and (body_error is None or job_error_first):
            self._error_raised = True
            raise self._error
