"""The recommendation: which max_workers to set, and why, from a sweep's measurements.

The rule: among the steps whose event-loop lag p99 stayed under the bound, take the best
throughput of successful jobs; recommend the smallest max_workers that reached 95 % of
it.  Past that point more workers buy at most 5 % more throughput and cost memory,
latency and loop lag.  Little's law (target rate x mean latency of the least loaded step)
is given beside it as the back-of-the-envelope figure to compare with.

On a shared machine other processes take CPU time from a step: a CPU-bound step then
runs slower, and every timer fires later, whatever max_workers is.  Each step measures
how long its event loop waited, ready to run, for a CPU (Linux's schedstat), in all and
during each tick of the lag probe.  By default the rule compares loop lag less that
wait (``correct_lag``), and throughputs as if the wait had not happened
(``ok_per_s / (1 - wait share)``, ``correct_rate``), which takes the other processes'
noise out of the comparison.  The throughput correction is wrong when the other process
is part of the system measured (a server on this machine): the planner turns it off for
a loopback --url.  The table always shows what was measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ._model import StepResult
from ._units import format_count, format_duration, format_ms

__all__ = ("Recommendation", "effective_lag", "effective_rate", "recommend")

SHARE_OF_BEST = 0.95
_MAX_WAIT_SHARE = 0.9  # never scale a rate up more than tenfold
BUSY_WAIT_PCT = 2.0  # a step that waited longer for a CPU ran on a busy machine
SLOW_RAMP_S = 0.5  # starting the first max_workers jobs took long enough to mention


def effective_lag(step: StepResult, *, correct: bool = True) -> float:
    """Loop lag p99, less the time the loop waited for a CPU meanwhile (``correct``)."""
    return step.own_lag_p99_s if correct else step.lag_p99_s


def effective_rate(step: StepResult, *, correct: bool = True) -> float:
    """Successful jobs per second, as if other processes had not held the CPU (``correct``)."""
    if not correct:
        return step.ok_per_s
    wait = min(max(step.cpu_wait_pct / 100.0, 0.0), _MAX_WAIT_SHARE)
    return step.ok_per_s / (1.0 - wait)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The answer (``max_workers``, None when no step qualifies) and its reasoning."""

    max_workers: int | None
    reasons: tuple[str, ...]
    best_max_workers: int | None = None
    best_rate: float = 0.0  # successful jobs/s at the best step (as the rule compared it)
    threshold: float = 0.0  # 95 % of best_rate
    littles_law_workers: float | None = None
    target_rate: float | None = None  # jobs/s used for Little's law
    unloaded_latency_s: float | None = None  # mean job latency at the least loaded step
    excluded_for_lag: tuple[int, ...] = ()
    rate_corrected: bool = False  # throughputs compared as if no other process ran
    lag_corrected: bool = False  # loop lag compared less the time spent waiting for a CPU
    knee_max_workers: int | None = None  # where jobs/s per second of latency peaks

    def text(self) -> str:
        head = (
            f"Recommendation: max_workers = {self.max_workers}"
            if self.max_workers is not None
            else "Recommendation: none"
        )
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def recommend(
    steps: Sequence[StepResult],
    *,
    max_lag: float,
    target_rate: float | None = None,
    correct_rate: bool = True,
    correct_lag: bool = True,
    total_jobs: int | None = None,
) -> Recommendation:
    """The smallest max_workers reaching 95 % of the best throughput with lag p99 < max_lag."""
    measured = sorted((s for s in steps if s.error is None and s.jobs > 0), key=_workers)
    failed = [s for s in steps if s.error is not None]
    reasons: list[str] = []
    if not measured:
        cut = sum(s.cut for s in steps if s.error is None)
        if cut:
            reasons.append(
                f"no job ended within any step's time budget ({cut:,} were still running "
                "after the grace period, and cancelled): the job takes longer than "
                "--duration, or never ends. Give it --job-timeout, or a longer --duration."
            )
        else:
            reasons.append("no step measured anything" + _failures(failed))
        return Recommendation(None, tuple(reasons))
    busiest = max(measured, key=lambda s: s.cpu_wait_pct)
    busy = busiest.cpu_wait_pct >= BUSY_WAIT_PCT

    def rate(s: StepResult) -> float:
        return effective_rate(s, correct=correct_rate)

    def lag(s: StepResult) -> float:
        return effective_lag(s, correct=correct_lag)

    eligible = [s for s in measured if lag(s) <= max_lag]
    too_laggy = [s for s in measured if lag(s) > max_lag]
    least_loaded = measured[0]
    if not eligible:
        calmest = min(measured, key=lag)
        over = (
            f"loop lag p99 was over {format_ms(max_lag)} ms at every max_workers tried "
            f"(lowest {format_ms(lag(calmest))} ms, at {calmest.max_workers})"
        )
        if least_loaded.max_workers > 1:
            reasons.append(
                f"{over}: sweep smaller max_workers (e.g. --max-workers 1,10,"
                f"{max(least_loaded.max_workers // 2, 2)}), or allow more lag with --max-lag."
            )
        else:
            reasons.append(
                f"{over}: the job itself blocks the event loop "
                f"({_us(least_loaded.cpu_per_job_s)} of CPU per job). Move its CPU work off "
                "the loop (asyncio.to_thread, a process pool) or allow more lag with --max-lag."
            )
        return Recommendation(
            None, tuple(reasons), rate_corrected=correct_rate, lag_corrected=correct_lag
        )

    best = max(eligible, key=rate)
    if rate(best) <= 0:
        kinds: dict[str, int] = {}
        for s in measured:
            for kind, n in s.failure_kinds.items():
                kinds[kind] = kinds.get(kind, 0) + n
        common = ", ".join(f"{k} ({n:,})" for k, n in sorted(kinds.items(), key=_count)[:3])
        reasons.append(
            "no job succeeded at any max_workers"
            + (f"; the failures: {common}" if common else "")
            + ". Fix the job (or the target) first."
        )
        return Recommendation(
            None, tuple(reasons), rate_corrected=correct_rate, lag_corrected=correct_lag
        )
    threshold = SHARE_OF_BEST * rate(best)
    chosen = next(s for s in eligible if rate(s) >= threshold)
    corrected = " (corrected, see below)" if busy and correct_rate else ""
    reasons.append(
        f"Best throughput: {format_count(rate(best))} successful jobs/s{corrected} at "
        f"max_workers={best.max_workers} (loop lag p99 {format_ms(lag(best))} ms)."
    )
    reasons.append(
        f"95 % of it is {format_count(threshold)} jobs/s; the smallest max_workers that "
        f"reaches it with loop lag p99 under {format_ms(max_lag)} ms is "
        f"{chosen.max_workers}: {format_count(rate(chosen))} jobs/s, job latency p99 "
        f"{format_ms(chosen.latency_p99_s)} ms, loop lag p99 {format_ms(lag(chosen))} ms."
    )
    if too_laggy:
        left_out = ", ".join(f"{s.max_workers} ({format_ms(lag(s))} ms)" for s in too_laggy)
        reasons.append(
            f"Left out for loop lag p99 over {format_ms(max_lag)} ms: {left_out}. "
            "A loop that late delays every timer, timeout and heartbeat in the process."
        )
        faster = [s for s in too_laggy if rate(s) > rate(best) * 1.05]
        if faster:
            s = max(faster, key=rate)
            reasons.append(
                f"max_workers={s.max_workers} was faster ({format_count(rate(s))} jobs/s) "
                f"but only by letting the loop run {format_ms(lag(s))} ms late; "
                "raise --max-lag if that is acceptable."
            )
    if best is eligible[-1] and best is measured[-1] and chosen is best and len(measured) > 1:
        reasons.append(
            "Throughput was still rising at the largest max_workers swept: sweep higher "
            f"(e.g. --max-workers {best.max_workers},{best.max_workers * 2},"
            f"{best.max_workers * 4}) before trusting this."
        )
    if busy:
        reasons.append(_busy_note(busiest, correct_rate, correct_lag))
    # What bounds the throughput: the CPU of one event loop, or something else.
    cpu_job = chosen.cpu_per_job_s
    if cpu_job > 0:
        ceiling = 1.0 / cpu_job
        bound = (
            "the loop is CPU-bound: more workers only add latency and loop lag"
            if chosen.cpu_pct + chosen.cpu_wait_pct >= 80
            else "the CPU is not the limit here"
        )
        reasons.append(
            f"CPU: at max_workers={chosen.max_workers} the process used "
            f"{chosen.cpu_pct:.0f} % of a core, {_us(cpu_job)} per job, so "
            f"{'one event loop tops' if chosen.shards <= 1 else 'this CPU budget tops'} "
            f"out near {format_count(ceiling)} jobs/s; {bound}."
        )
    # The knee: where throughput per unit of job latency peaks (Kleinrock's "power").
    # Past it, extra workers mostly queue: Little's law turns each of them into latency.
    knee = max(eligible, key=lambda s: rate(s) / s.latency_mean_s if s.latency_mean_s else 0.0)
    if knee.max_workers < chosen.max_workers and knee.latency_mean_s > 0:
        reasons.append(
            f"Knee: throughput per unit of job latency peaks at max_workers="
            f"{knee.max_workers} ({format_count(rate(knee))} jobs/s at "
            f"{format_ms(knee.latency_mean_s)} ms mean job latency); {chosen.max_workers} "
            f"buys {100 * (rate(chosen) / rate(knee) - 1):.0f} % more throughput for "
            f"{chosen.latency_mean_s / knee.latency_mean_s:.1f}x the latency. Take the knee "
            "where latency matters more than the last few percent."
        )
    # Little's law: jobs in flight = rate x time in the system.
    used_rate = target_rate if target_rate is not None else rate(best)
    latency0 = least_loaded.latency_mean_s
    littles = used_rate * latency0 if latency0 > 0 else None
    if littles is not None:
        which = "target (--target-rate)" if target_rate is not None else "best measured"
        in_flight = chosen.max_workers * max(chosen.shards, 1)  # max_workers is per shard
        reasons.append(
            f"Little's law: {which} {format_count(used_rate)} jobs/s x "
            f"{format_ms(latency0)} ms mean job latency at max_workers="
            f"{least_loaded.max_workers} (the least loaded step) = "
            f"{littles:,.0f} jobs in flight; the measured answer allows "
            f"{in_flight:,} in flight, {in_flight / max(littles, 1e-9):.1f}x that (more when "
            "latency grows under load)."
        )
        if target_rate is not None and rate(best) < target_rate:
            reasons.append(
                f"The target {format_count(target_rate)} jobs/s was not reached at any "
                f"max_workers (best {format_count(rate(best))}): one event loop cannot do "
                "it here; run several processes, or make each job cheaper."
            )
    # Failures that grow with concurrency: the target (or the job's timeout) pushes back.
    worse = [s for s in measured if s.failure_share > least_loaded.failure_share + 0.05]
    if worse:
        listed = ", ".join(
            f"{100 * s.failure_share:.0f} % at {s.max_workers} ({_main_kind(s)})" for s in worse
        )
        reasons.append(
            f"Failures grow with concurrency: {listed}, against "
            f"{100 * least_loaded.failure_share:.1f} % at {least_loaded.max_workers}: the "
            "target is pushing back (overload, rate limits), or jobs wait past their timeout."
        )
    # Starting max_workers jobs back to back can hold the loop for seconds.
    slow_starts = [s for s in measured if s.ramp_s >= SLOW_RAMP_S]
    if slow_starts:
        s = max(slow_starts, key=_ramp)
        reasons.append(
            f"Start-up: at max_workers={s.max_workers} the first {s.max_workers:,} jobs took "
            f"{format_duration(s.ramp_s)} to start ({_us(s.ramp_s / s.max_workers)} each). "
            "Each job runs to its first await inside submit(), so meanwhile the loop runs "
            "nothing else (no I/O, no timers) while job timeouts already count; the "
            "figures above leave that start-up out."
        )
    # Memory.
    top = measured[-1]
    mem = f"Memory: peak RSS {chosen.peak_rss_mb:.1f} MB at max_workers={chosen.max_workers}"
    if top is not least_loaded and top.max_workers > least_loaded.max_workers:
        per_worker = (
            (top.peak_rss_mb - least_loaded.peak_rss_mb)
            * 2**20
            / (top.max_workers - least_loaded.max_workers)
        )
        mem += (
            f"; from {least_loaded.peak_rss_mb:.1f} MB at {least_loaded.max_workers} to "
            f"{top.peak_rss_mb:.1f} MB at {top.max_workers}, about "
            f"{max(per_worker, 0.0) / 1024:.1f} KB per worker"
        )
    reasons.append(mem + ".")
    if total_jobs and chosen.jobs_per_s > 0:
        reasons.append(
            f"{total_jobs:,} jobs at max_workers={chosen.max_workers} would take about "
            f"{format_duration(total_jobs / chosen.jobs_per_s)} at the measured "
            f"{format_count(chosen.jobs_per_s)} jobs/s."
        )
    if failed:
        reasons.append("Steps that could not run" + _failures(failed) + ".")
    return Recommendation(
        chosen.max_workers,
        tuple(reasons),
        best_max_workers=best.max_workers,
        best_rate=rate(best),
        threshold=threshold,
        littles_law_workers=littles,
        target_rate=used_rate,
        unloaded_latency_s=latency0 if latency0 > 0 else None,
        excluded_for_lag=tuple(s.max_workers for s in too_laggy),
        knee_max_workers=knee.max_workers,
        rate_corrected=correct_rate,
        lag_corrected=correct_lag,
    )


def _busy_note(busiest: StepResult, correct_rate: bool, correct_lag: bool) -> str:
    note = (
        "The machine was busy: other processes held the CPU while this one was ready to "
        f"run (up to {busiest.cpu_wait_pct:.0f} % of a step, at max_workers="
        f"{busiest.max_workers})."
    )
    done = []
    if correct_rate:
        done.append("throughputs as if they had not (successful jobs/s / (1 - wait share))")
    if correct_lag:
        done.append("loop lag less the wait during each tick")
    if not done:
        return note + " The figures are as measured (--no-adjust)."
    note += " The rule compares " + " and ".join(done) + "; the table shows what was measured."
    if not correct_rate:
        note += (
            " Throughputs are not corrected: the target runs on this machine, so its CPU "
            "time is part of what is measured (--repeat helps against the noise)."
        )
    return note


def _workers(s: StepResult) -> int:
    return s.max_workers


def _ramp(s: StepResult) -> float:
    return s.ramp_s


def _count(item: tuple[str, int]) -> int:
    return -item[1]


def _main_kind(s: StepResult) -> str:
    if not s.failure_kinds:
        return "unknown"
    return min(s.failure_kinds.items(), key=_count)[0]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds >= 1e-5 else f"{seconds * 1e6:.1f} µs"


def _failures(failed: Sequence[StepResult]) -> str:
    if not failed:
        return ""
    return ": " + "; ".join(f"max_workers={s.max_workers}: {s.error}" for s in failed)
