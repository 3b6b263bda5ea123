"""ShardedExecutor on a Ray cluster of three nodes on this machine (ray.cluster_utils):
shards spread over the nodes, and a node removed mid-run.  The closest this machine gets
to the many-machine case.  Run by ``make test-ray``; skipped when Ray is not installed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install 'coroexecutor[ray]'): Ray backend not tested"
)
cluster_utils = pytest.importorskip("ray.cluster_utils")

from tests import sharded_jobs as jobs  # noqa: E402

from coroexecutor import ShardCrashed, ShardedExecutor  # noqa: E402


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A head and two worker nodes, one CPU each: one shard actor fits per node."""
    if ray.is_initialized():  # pragma: no cover - someone else's
        ray.shutdown()
    c = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        c.workers = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def loop_kind() -> str:
    return "asyncio"


def test_shards_spread_over_nodes_and_a_lost_node_fails_exactly_its_jobs(run, cluster: Any) -> None:
    async def main() -> None:
        async with ShardedExecutor(
            3,
            max_workers=4,
            backend="ray",
            suppress_task_errors=True,
            ray_actor_options={"num_cpus": 1},  # one per node: the shards spread
        ) as exe:
            first = [await exe.submit(jobs.node_after, 0) for _ in range(6)]
            nodes = {await h for h in first}
            assert len(nodes) == 3, nodes  # every node runs a shard
            handles = [await exe.submit(jobs.node_after, 5) for _ in range(9)]
            await asyncio.sleep(1.0)
            victim = cluster.workers[0]
            cluster.remove_node(victim, allow_graceful=False)
            await asyncio.wait(handles, timeout=120)
            later = [await exe.submit(jobs.node_after, 0) for _ in range(4)]
        assert all(h.done() for h in handles)
        crashed = [h for h in handles if isinstance(h.exception(), ShardCrashed)]
        finished = [h.result() for h in handles if h not in crashed]
        assert len(crashed) == 3  # the lost shard's in-flight jobs: placement alternates
        assert len({h.exception().shard for h in crashed}) == 1
        assert victim.node_id not in finished and len(finished) == 6
        assert {h.result() for h in later} <= nodes - {victim.node_id}
        st = exe.stats()
        assert (st.completed, st.failed) == (6 + 6 + 4, 3)

    run(main())


def test_a_lost_node_fails_fast_without_suppress(run, cluster: Any) -> None:
    async def main() -> None:
        handles: list[asyncio.Future[Any]] = []
        with pytest.raises(ShardCrashed):
            async with ShardedExecutor(
                3, max_workers=4, backend="ray", ray_actor_options={"num_cpus": 1}
            ) as exe:
                handles += [await exe.submit(jobs.node_after, 60) for _ in range(6)]
                await asyncio.sleep(1.0)
                cluster.remove_node(cluster.workers[1], allow_graceful=False)
                await asyncio.sleep(120)
        assert (
            sum(isinstance(h.exception(), ShardCrashed) for h in handles if not h.cancelled()) == 2
        )
        assert sum(h.cancelled() for h in handles) == 4  # the other shards' jobs

    run(main())
