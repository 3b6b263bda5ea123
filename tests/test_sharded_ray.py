"""ShardedExecutor, Ray backend: the behaviour suite of tests/test_sharded.py on a local
Ray instance (started once for this module, on loopback, and shut down after it).

Skipped when Ray is not installed: ``pip install 'coroexecutor[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Single-node mode: Ray then binds every server to 127.0.0.1 (otherwise it resolves
# "127.0.0.1" to the machine's outward address).  Read when ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install 'coroexecutor[ray]'): Ray backend not tested"
)

from tests.test_sharded import (  # noqa: E402  -- the same suite, on Ray
    test_a_job_its_shard_cannot_import_fails_alone,
    test_back_pressure_bounds_what_is_in_flight,
    test_bad_jobs_are_type_errors_at_submit_before_sending,
    test_blocked_submitters_are_served_in_order,
    test_body_error_cancels_jobs_and_propagates,
    test_fail_fast_cancels_every_shard_and_raises_at_exit,
    test_handle_cancel_cancels_the_job_in_its_shard,
    test_job_timeout_is_each_shards,
    test_keyboard_interrupt_in_the_body_stops_every_shard,
    test_keyboard_interrupt_or_system_exit_in_a_job_propagates,
    test_kill_9_fails_exactly_its_jobs_then_the_rest_shut_down,
    test_kill_9_with_suppressed_errors_goes_on_with_the_other_shard,
    test_map_error_is_raised_in_turn_and_cancels_the_rest,
    test_map_is_ordered_lazy_and_zips,
    test_map_unordered_yields_as_jobs_end,
    test_outer_cancellation_cancels_jobs_and_propagates,
    test_shutdown_without_context_manager,
    test_submit_results_and_handles,
    test_suppress_task_errors_keeps_errors_on_handles,
    test_timeout_covers_every_job,
)

SUITE = (
    test_a_job_its_shard_cannot_import_fails_alone,
    test_back_pressure_bounds_what_is_in_flight,
    test_bad_jobs_are_type_errors_at_submit_before_sending,
    test_blocked_submitters_are_served_in_order,
    test_body_error_cancels_jobs_and_propagates,
    test_fail_fast_cancels_every_shard_and_raises_at_exit,
    test_handle_cancel_cancels_the_job_in_its_shard,
    test_job_timeout_is_each_shards,
    test_keyboard_interrupt_in_the_body_stops_every_shard,
    test_keyboard_interrupt_or_system_exit_in_a_job_propagates,
    test_kill_9_fails_exactly_its_jobs_then_the_rest_shut_down,
    test_kill_9_with_suppressed_errors_goes_on_with_the_other_shard,
    test_map_error_is_raised_in_turn_and_cancels_the_rest,
    test_map_is_ordered_lazy_and_zips,
    test_map_unordered_yields_as_jobs_end,
    test_outer_cancellation_cancels_jobs_and_propagates,
    test_shutdown_without_context_manager,
    test_submit_results_and_handles,
    test_suppress_task_errors_keeps_errors_on_handles,
    test_timeout_covers_every_job,
)


# The contract suite (tests/test_contract.py), on Ray: its tests and its `make` fixture,
# with the executor under test fixed to ShardedExecutor(2, backend="ray").
from tests.test_contract import *  # noqa: E402,F403
from tests.test_contract import make  # noqa: E402,F401


@pytest.fixture
def kind() -> tuple[str, str]:
    return ("ray-2", "asyncio")


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[Any]:
    """A local Ray instance on loopback for this module."""
    if ray.is_initialized():  # pragma: no cover - someone else's
        ray.shutdown()
    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield context
    finally:
        ray.shutdown()


@pytest.fixture
def backend() -> str:
    return "ray"


@pytest.fixture
def loop_kind() -> str:
    return "uvloop"


def test_the_whole_suite_is_here() -> None:
    from tests import test_sharded

    shared = {
        name
        for name, fn in vars(test_sharded).items()
        if name.startswith("test_") and "backend" in fn.__code__.co_varnames
    }
    assert shared == {fn.__name__ for fn in SUITE}
