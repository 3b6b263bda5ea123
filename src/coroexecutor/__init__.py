"""coroexecutor: a concurrent.futures-style Executor for asyncio coroutines.

Run millions of coroutines with at most ``max_workers`` of them in flight::

    async with CoroutineExecutor(max_workers=10_000) as exe:
        for line in open("urls.txt"):
            await exe.submit(fetch, line)   # waits while 10,000 jobs are running
"""

from ._adaptive import AdaptiveLimit
from ._engine_choice import COMPILED
from ._executor import CoroutineExecutor, ExecutorFull, ExecutorStats
from ._keyed import PerKey
from ._retry import Retry
from ._runner import run
from .sharded import ShardCrashed, ShardedExecutor

#: True when the compiled engine runs jobs; False for the pure-Python one (no C compiler
#: at install, COROEXECUTOR_NO_EXTENSIONS set, or a build older than _engine.py).
__compiled__: bool = COMPILED

__all__ = (
    "AdaptiveLimit",
    "CoroutineExecutor",
    "ExecutorFull",
    "ExecutorStats",
    "PerKey",
    "Retry",
    "ShardCrashed",
    "ShardedExecutor",
    "run",
)
