"""Every test runs on each event loop we support, with asyncio debug on, and fails if
the loop's exception handler was called (an exception never retrieved, a task
destroyed while pending) or a task was left behind."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import coroexecutor

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

LOOPS = ["asyncio", "uvloop", "eager"]


def pytest_configure(config: pytest.Config) -> None:
    # `make test` runs the suite once per engine and says which it expects: a suite
    # meant for the compiled engine must not pass on the pure one unnoticed.
    expected = os.environ.get("COROEXECUTOR_EXPECT_ENGINE")
    loaded = "compiled" if coroexecutor.__compiled__ else "pure"
    if expected and expected != loaded:
        raise pytest.UsageError(
            f"COROEXECUTOR_EXPECT_ENGINE={expected}, but the {loaded} engine is loaded "
            "(was the package installed with a C compiler? see pip's output)"
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    skipped = []
    if uvloop is None:
        skipped.append("uvloop (not installed)")
    if sys.version_info < (3, 12):
        skipped.append("eager task factory (needs Python 3.12+)")
    engine = "compiled (Cython)" if coroexecutor.__compiled__ else "pure Python"
    return [f"engine: {engine}", f"loops skipped: {', '.join(skipped) or 'none'}"]


Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    if kind == "eager" and sys.version_info < (3, 12):
        pytest.skip("asyncio.eager_task_factory needs Python 3.12+")
    return kind


@pytest.fixture
def run(loop_kind: str) -> Runner:
    """run(coro): run it to completion on this test's loop, then check the loop is clean."""

    def _run(main: Coroutine[Any, Any, Any], *, debug: bool = True) -> Any:
        factory = uvloop.new_event_loop if loop_kind == "uvloop" else None
        errors: list[dict[str, Any]] = []
        with asyncio.Runner(loop_factory=factory, debug=debug) as runner:
            loop = runner.get_loop()
            loop.slow_callback_duration = 10.0  # a loaded CI machine is not a bug
            loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
            if loop_kind == "eager":
                loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
            try:
                result = runner.run(main)
            finally:
                gc.collect()
            leftovers = runner.run(_leftover_tasks())
            gc.collect()
        assert not errors, f"the loop's exception handler was called: {errors}"
        assert not leftovers, f"tasks left behind: {leftovers}"
        return result

    return _run


async def _leftover_tasks() -> list[asyncio.Task[Any]]:
    await asyncio.sleep(0)
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done()]
