"""run(): asyncio.run on uvloop when it is asked for or installed."""

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
    main: Coroutine[Any, Any, T], *, uvloop: bool | None = None, debug: bool | None = None
) -> T:
    """Run ``main`` to completion in a new event loop, as ``asyncio.run`` does.

    ``uvloop=None`` (the default) uses uvloop when it is installed, ``True`` requires
    it (ImportError naming the extra to install otherwise), ``False`` never uses it.
    """
    if uvloop is not None and not isinstance(uvloop, bool):
        raise TypeError(f"uvloop must be True, False or None, got {uvloop!r}")
    factory = _uvloop_factory(uvloop)
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
