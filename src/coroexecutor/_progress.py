"""progress=True (or a total): a live tqdm bar of completed, failed and cancelled jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - exercised by a test that hides tqdm
    raise ImportError("progress=True needs tqdm: pip install 'coroexecutor[progress]'") from None

__all__ = ("Progress",)

_REFRESH_S = 0.1  # the bar is redrawn from the executor's counters, not per job


class Progress:
    """Redraws a bar from ``exe.stats()`` every 0.1 s: no cost per job."""

    def __init__(self, exe: Any, total: int = 0) -> None:
        self._exe = exe
        self._total = total  # 0: unknown until a map of sized inputs adds to it
        self._fixed = total > 0  # the user's own total: maps do not add to it
        self._bar: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._bar = tqdm(total=self._total or None, unit="job", dynamic_ncols=True, leave=True)
        self._timer = loop.call_later(_REFRESH_S, self._tick)

    def add_total(self, iterables: Iterable[Any]) -> None:
        """A map whose inputs all have a length adds min(lengths) to the total (unless
        the total was given up front)."""
        if self._fixed:
            return
        try:
            n = min(len(it) for it in iterables)
        except TypeError:
            return
        self._total += n
        if self._bar is not None:
            self._bar.total = self._total
            self._bar.refresh()

    def _tick(self) -> None:
        self._refresh()
        assert self._loop is not None
        self._timer = self._loop.call_later(_REFRESH_S, self._tick)

    def _refresh(self) -> None:
        st = self._exe.stats()
        done = st.completed + st.failed + st.cancelled
        self._bar.update(done - self._bar.n)
        # As text: tqdm writes a number in its short form, 200000 as 2e+5.
        self._bar.set_postfix(
            completed=str(st.completed),
            failed=str(st.failed),
            cancelled=str(st.cancelled),
            refresh=False,
        )
        self._bar.refresh()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._bar is not None:
            self._refresh()
            self._bar.close()
            self._bar = None
