"""Property tests (issue 4): random mixes of job lengths, failures, cancellations,
timeouts and max_workers, checked against invariants rather than examples.

Job lengths are counted in loop turns (``await asyncio.sleep(0)``), not wall time, so a
run is fast and its interleaving is decided by the program, not by the clock.  The only
wall-clock element is the timeout, and the oracle does not guess when it fires: it reads
the order in which things actually happened from a log the jobs and the body write.

Invariants, for every program:

* never more than ``max_workers`` jobs run at once (jobs count themselves);
* every submitted job ends exactly once, and its handle agrees with how it ended:
  completed + failed + cancelled == submitted, by handle state, by the job's own record,
  and by ``exe.stats()``;
* the exit raises what the README says: in fail-fast mode the first job error (the job's
  own exception object; ``CancelledError`` for a job cancelled through its handle;
  ``TimeoutError`` when the executor's deadline came first), under
  ``suppress_task_errors`` nothing but the executor's ``TimeoutError``;
* afterwards the task has ``cancelling() == 0``; the ``run`` fixture checks that no task
  is left behind and nothing reached the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coroexecutor import CoroutineExecutor

GUARD = 5.0  # seconds: a hang fails the example (each takes milliseconds)

PROPERTY_SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
    max_examples=120,
)


class JobError(Exception):
    pass


async def spin(turns: int) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def me() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


# ============================================================ submit: the whole lifecycle


@dataclasses.dataclass(frozen=True)
class Job:
    turns: int  # loop turns before it ends; 0 = it ends in its first step, inside submit
    fails: bool  # raise JobError instead of returning


@dataclasses.dataclass(frozen=True)
class Submit:
    job: Job


@dataclasses.dataclass(frozen=True)
class Turns:
    n: int  # the body lets the loop go round n times


@dataclasses.dataclass(frozen=True)
class Cancel:
    pick: int  # handle.cancel() on submitted job number pick % len(submitted)


jobs = st.builds(
    Job,
    turns=st.integers(0, 6),
    fails=st.sampled_from([False, False, False, True]),
)
actions = st.lists(
    st.one_of(
        st.builds(Submit, jobs),
        st.builds(Submit, jobs),
        st.builds(Submit, jobs),
        st.builds(Turns, st.integers(0, 4)),
        st.builds(Cancel, st.integers(0, 1000)),
    ),
    min_size=3,
    max_size=30,
)
# "none": no deadline; "long": one that never fires; "short_executor": the executor's
# timeout fires while a job that never ends is still running; "short_job": a job_timeout
# that such a job always exceeds.
timeouts = st.sampled_from(["none", "long", "short_executor", "short_job"])


@PROPERTY_SETTINGS
@given(
    max_workers=st.integers(1, 6),
    suppress=st.sampled_from([False, False, True]),
    timeout=timeouts,
    script=actions,
)
def test_every_job_ends_once_within_the_limit_and_exit_raises_the_first_error(
    run, max_workers: int, suppress: bool, timeout: str, script: list[Any]
) -> None:
    log: list[tuple[Any, ...]] = []  # ("end", j, how) | ("cancel", j) | ("body cancelled",)
    ends: dict[int, list[str]] = {}
    running = 0
    peak = 0

    async def job(j: int, spec: Job | None) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        ends.setdefault(j, [])
        try:
            if spec is None:  # never ends by itself
                await asyncio.get_running_loop().create_future()
            else:
                await spin(spec.turns)
                if spec.fails:
                    err = JobError(j)
                    log.append(("end", j, "raised", err))
                    ends[j].append("raised")
                    raise err
        except asyncio.CancelledError:
            log.append(("end", j, "cancelled", None))
            ends[j].append("cancelled")
            raise
        finally:
            running -= 1
        log.append(("end", j, "returned", None))
        ends[j].append("returned")
        return f"result {j}"

    handles: list[asyncio.Future[Any]] = []
    never_ends = timeout in ("short_executor", "short_job")

    async def body(exe: CoroutineExecutor) -> None:
        try:
            if never_ends:
                handles.append(await exe.submit(job, 0, None))
            for action in script:
                if isinstance(action, Submit):
                    handles.append(await exe.submit(job, len(handles), action.job))
                elif isinstance(action, Turns):
                    await spin(action.n)
                else:
                    # The job that never ends is left alone: the deadline is for it.
                    first = 1 if never_ends else 0
                    if len(handles) > first:
                        j = first + action.pick % (len(handles) - first)
                        if handles[j].cancel():
                            log.append(("cancel", j))
        except asyncio.CancelledError:
            log.append(("body cancelled",))
            raise

    async def main() -> tuple[BaseException | None, Any]:
        exe = CoroutineExecutor(
            max_workers=max_workers,
            suppress_task_errors=suppress,
            timeout={"long": 30.0, "short_executor": 0.02}.get(timeout),
            job_timeout=0.02 if timeout == "short_job" else None,
        )
        raised: BaseException | None = None
        try:
            async with asyncio.timeout(GUARD), exe:
                await body(exe)
        except (JobError, TimeoutError, asyncio.CancelledError) as e:
            raised = e
        assert me().cancelling() == 0
        return raised, exe.stats()

    raised, stats = run(main())

    # Never more than max_workers at once; every job ended exactly once.
    assert peak <= max_workers
    assert running == 0
    assert sorted(ends) == list(range(len(handles)))
    assert all(len(how) == 1 for how in ends.values()), ends

    # The handles agree with the jobs, and with stats().
    counts = {"completed": 0, "failed": 0, "cancelled": 0}
    for j, h in enumerate(handles):
        assert h.done()
        how = ends[j][0]
        if h.cancelled():
            counts["cancelled"] += 1
        elif h.exception() is not None:
            counts["failed"] += 1
            exc = h.exception()
            if how == "raised":
                assert isinstance(exc, JobError) and exc.args == (j,)
            else:  # job_timeout: the job saw CancelledError, its handle says TimeoutError
                assert timeout == "short_job" and how == "cancelled"
                assert isinstance(exc, TimeoutError)
        else:
            counts["completed"] += 1
            assert how == "returned" and h.result() == f"result {j}"
        if how == "cancelled":  # the job saw CancelledError: its handle must say so
            assert h.cancelled() or (timeout == "short_job" and counts["failed"]), h
    assert sum(counts.values()) == len(handles)
    assert (stats.completed, stats.failed, stats.cancelled) == (
        counts["completed"],
        counts["failed"],
        counts["cancelled"],
    ), stats
    assert (stats.submitted, stats.pending, stats.running) == (len(handles), 0, 0), stats

    # What the exit raised, read from the order in which things happened.
    expected = expected_exit(log, handles, suppress)
    event(f"exit raised {type(raised).__name__}; {timeout}; suppress={suppress}")
    if expected is None:
        assert raised is None, f"nothing should be raised, got {raised!r}"
    elif isinstance(expected, BaseException):
        assert raised is expected, f"expected {expected!r}, got {raised!r}"
    else:
        assert type(raised) is expected, f"expected {expected.__name__}, got {raised!r}"


def expected_exit(
    log: list[tuple[Any, ...]], handles: list[asyncio.Future[Any]], suppress: bool
) -> BaseException | type[BaseException] | None:
    """The first event that must end the executor, by the README's rules."""
    cancel_requested: set[int] = set()
    for entry in log:
        if entry[0] == "cancel":
            cancel_requested.add(entry[1])
        elif entry[0] == "body cancelled":
            # Only the deadline (or, in fail-fast mode, an earlier failure) cancels the body.
            return TimeoutError
        else:
            _, j, _how, _err = entry
            h = handles[j]
            if h.cancelled():
                if j in cancel_requested:
                    if not suppress:
                        return asyncio.CancelledError
                else:
                    return TimeoutError  # the executor cancelled it: its deadline passed
            elif h.exception() is not None and not suppress:
                return h.exception()
    return None


# ============================================================ map


@PROPERTY_SETTINGS
@given(
    max_workers=st.integers(1, 5),
    items=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([False] * 6 + [True])), max_size=25
    ),
    stop_after=st.one_of(st.none(), st.integers(0, 25)),
    let_escape=st.booleans(),
    suppress=st.booleans(),
    body_turns=st.integers(0, 2),
)
def test_map_yields_in_order_up_to_the_first_error_in_input_order(
    run,
    max_workers: int,
    items: list[tuple[int, bool]],
    stop_after: int | None,
    let_escape: bool,
    suppress: bool,
    body_turns: int,
) -> None:
    """map: results come in input order; the first failing item *by input order* raises
    its own error after every earlier result, whatever the finishing order; breaking out
    early raises nothing; the input is pulled lazily; never more than max_workers jobs run;
    every started job ends exactly once.  A map error the body lets escape is what the
    exit raises (in either mode); one caught inside leaves the executor open.  The body
    may await between results (``body_turns``), while the workers take the next items."""
    running = 0
    peak = 0
    pulled = 0
    started: list[int] = []
    ended: list[int] = []

    def source() -> Any:
        nonlocal pulled
        for i, item in enumerate(items):
            pulled += 1
            yield i, item

    async def f(arg: tuple[int, tuple[int, bool]]) -> int:
        nonlocal running, peak
        i, (turns, fails) = arg
        started.append(i)
        running += 1
        peak = max(peak, running)
        try:
            await spin(turns)
            if fails:
                raise JobError(i)
            return i
        finally:
            running -= 1
            ended.append(i)

    first_bad = next((i for i, (_t, fails) in enumerate(items) if fails), None)

    async def main() -> tuple[list[int], BaseException | None, BaseException | None]:
        got: list[int] = []
        from_loop: BaseException | None = None
        from_exit: BaseException | None = None
        try:
            async with (
                asyncio.timeout(GUARD),
                CoroutineExecutor(max_workers=max_workers, suppress_task_errors=suppress) as exe,
            ):
                try:
                    async with contextlib.aclosing(exe.map(f, source())) as results:
                        async for r in results:
                            if stop_after is not None and len(got) == stop_after:
                                break
                            got.append(r)
                            await spin(body_turns)
                except JobError as e:
                    from_loop = e
                    if let_escape:
                        raise
                if from_loop is not None:
                    after = await exe.submit(spin, 1)  # caught inside: still open
                    await after
        except JobError as e:
            from_exit = e
        assert me().cancelling() == 0
        return got, from_loop, from_exit

    got, from_loop, from_exit = run(main())

    limit = len(items) if first_bad is None else first_bad
    if stop_after is not None and stop_after < limit:
        assert got == list(range(stop_after))
        assert from_loop is None and from_exit is None
    else:
        assert got == list(range(limit))
        if first_bad is None:
            assert from_loop is None and from_exit is None
        else:
            assert isinstance(from_loop, JobError) and from_loop.args == (first_bad,)
            assert from_exit is (from_loop if let_escape else None)
    assert peak <= max_workers
    assert sorted(started) == sorted(ended) and len(set(ended)) == len(ended)
    consumed = len(got) + 1
    assert pulled <= consumed + 2 * max_workers + 1, (pulled, consumed)


# ============================================================ jobs submitting jobs


@PROPERTY_SETTINGS
@given(
    max_workers=st.integers(1, 4),
    fanout=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    turns=st.integers(0, 3),
    roots=st.integers(1, 6),
)
def test_jobs_submitting_jobs_never_deadlock_and_keep_the_limit(
    run, max_workers: int, fanout: list[int], turns: int, roots: int
) -> None:
    """Trees of jobs where each job submits ``fanout[depth]`` children to its own executor:
    however many producers fill the slots, nothing deadlocks (GUARD), never more than
    max_workers jobs run at once (a job blocked in submit lends its slot and does not
    count), and every job of the tree runs exactly once."""
    running = 0
    peak = 0
    ran = 0

    def enter() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        running -= 1

    async def node(exe: CoroutineExecutor, depth: int) -> None:
        nonlocal ran
        enter()
        try:
            await spin(turns)
            if depth < len(fanout):
                for _ in range(fanout[depth]):
                    leave()  # blocked in submit: not running
                    try:
                        await exe.submit(node, exe, depth + 1)
                    finally:
                        enter()
            ran += 1
        finally:
            leave()

    async def main() -> None:
        async with asyncio.timeout(GUARD), CoroutineExecutor(max_workers=max_workers) as exe:
            for _ in range(roots):
                await exe.submit(node, exe, 0)
        stats = exe.stats()
        assert stats.completed == stats.submitted == ran
        assert stats.failed == stats.cancelled == 0

    run(main())
    size, width = 1, 1
    for k in fanout:
        width *= k
        size += width
    assert ran == roots * size
    assert peak <= max_workers
    assert running == 0
