"""run(): asyncio.run on uvloop when it is asked for or installed, or on a loop_factory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ("run",)

T = TypeVar("T")


def _uvloop_factory(uvloop: bool | None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if uvloop is False:
        return None
    try:
        import uvloop as _uvloop
    except ImportError:
        if uvloop is None:
            return None
        raise ImportError(
            "run(..., uvloop=True) needs uvloop: pip install 'coroexecutor[uvloop]'"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = _uvloop.new_event_loop
    return factory


def run(
    main: Coroutine[Any, Any, T],
    *,
    uvloop: bool | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    debug: bool | None = None,
) -> T:
    """Run ``main`` to completion in a new event loop, as ``asyncio.run`` does.

    ``uvloop=None`` (the default) uses uvloop when it is installed, ``True`` requires
    it (ImportError naming the extra to install otherwise), ``False`` never uses it.
    ``loop_factory`` makes the loop instead (any loop; ``uvloop`` must then be left
    out).  An ``asyncio.Runner`` with no event-loop policy involved, so nothing here is
    deprecated on 3.14+.
    """
    if uvloop is not None and not isinstance(uvloop, bool):
        raise TypeError(f"uvloop must be True, False or None, got {uvloop!r}")
    if loop_factory is not None:
        if not callable(loop_factory):
            raise TypeError(f"loop_factory must be callable, got {loop_factory!r}")
        if uvloop is not None:
            raise ValueError("give run() uvloop= or loop_factory=, not both")
        factory: Callable[[], asyncio.AbstractEventLoop] | None = loop_factory
    else:
        factory = _uvloop_factory(uvloop)
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
