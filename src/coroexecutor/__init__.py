"""coroexecutor: a concurrent.futures-style Executor for asyncio coroutines.

Run millions of coroutines with at most ``max_workers`` of them in flight::

    async with CoroutineExecutor(max_workers=10_000) as exe:
        for line in open("urls.txt"):
            await exe.submit(fetch, line)   # waits while 10,000 jobs are running
"""

from ._executor import CoroutineExecutor, ExecutorFull, ExecutorStats
from ._runner import run
from ._sharded import ShardCrashed, ShardedExecutor

__all__ = (
    "CoroutineExecutor",
    "ExecutorFull",
    "ExecutorStats",
    "ShardCrashed",
    "ShardedExecutor",
    "run",
)
