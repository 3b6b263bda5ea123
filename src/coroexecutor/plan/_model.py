"""What passes between the planner and a step's process: its configuration and its result.

Both are flat dataclasses so that they cross the process boundary as one JSON object and
land in the CSV as one row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ("Histogram", "StepConfig", "StepResult")

_PER_LOG = 1 / math.log(1.02)  # buckets per unit of log(value): Histogram.RATIO


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """One step of a sweep: which job, at which max_workers, within which budget."""

    max_workers: int
    duration: float  # seconds of submitting jobs (the step's time budget)
    jobs: int | None  # the step's job budget; the step ends at whichever comes first
    warmup: float  # seconds at the start left out of every figure
    grace: float  # seconds the last jobs get to end before they are cancelled
    loop: str  # "auto", "asyncio" or "uvloop"
    kind: str  # "synthetic", "function" or "http"
    job_timeout: float | None = None
    # synthetic
    latency: float = 0.0
    jitter: float = 0.0
    cpu: float = 0.0
    fail_rate: float = 0.0
    # function
    job: str | None = None
    args_file: str | None = None
    # http
    url: str | None = None
    progress_every: float = 0.25  # seconds between progress reports to the planner
    shards: int = 1  # > 1: a ShardedExecutor of this many processes, max_workers each

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepConfig:
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step measured.  Times in seconds; rates per second; memory in MB.

    The step's clocks start once the first max_workers jobs have started (``ramp_s``).
    The measurement window starts after the warm-up and ends when the time budget runs
    out (or, when the job budget ends the step first, when its last job ends).
    """

    max_workers: int  # per shard when shards > 1
    error: str | None = None  # the step could not run (its process failed)
    shards: int = 1  # 1: a CoroutineExecutor in the step's process; else a ShardedExecutor
    ended_by: str = ""  # "duration" or "jobs"
    window_s: float = 0.0
    jobs: int = 0  # jobs that ended in the window
    jobs_per_s: float = 0.0  # jobs that ended (successfully or not) per second
    ok_per_s: float = 0.0  # jobs that ended successfully per second
    failed: int = 0  # of the jobs that ended in the window
    failure_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    latency_mean_s: float = 0.0  # of jobs that ended after the warm-up, start to end
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    latency_p99_s: float = 0.0
    latency_max_s: float = 0.0
    cpu_pct: float = 0.0  # CPU time (user + system, shards included) / wall time, in the window
    shard_cpu_pct: float = 0.0  # the part of cpu_pct spent in the shard processes
    cpu_per_job_s: float = 0.0
    cpu_wait_pct: float = 0.0  # share of the window the loop waited for a CPU (busy machine)
    rss_start_mb: float = 0.0  # before the first job
    peak_rss_mb: float = 0.0  # the process's high-water mark
    shard_peak_rss_mb: float = 0.0  # the shard processes' high-water marks, summed
    rss_source: str = ""
    lag_p50_s: float = 0.0  # how late a 10 ms timer fired, in the window
    lag_p99_s: float = 0.0
    lag_max_s: float = 0.0
    own_lag_p99_s: float = 0.0  # the same, less the time the loop waited for a CPU
    total_jobs: int = 0  # every job the step started
    cut: int = 0  # jobs still running after the grace period, cancelled
    drain_s: float = 0.0  # from the end of submitting to the last job's end
    ramp_s: float = 0.0  # to start the first max_workers jobs (before the budget starts)
    loop: str = ""

    @property
    def failure_share(self) -> float:
        return self.failed / self.jobs if self.jobs else 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Histogram:
    """Counts of positive values in logarithmic buckets 2 % wide: O(1) memory and time.

    Quantiles are the geometric middle of their bucket (within 1 % of the true value);
    the count, mean and maximum are exact.
    """

    __slots__ = ("count", "counts", "max", "total")

    LOW = 1e-6  # values below one microsecond share the first bucket
    RATIO = 1.02
    SIZE = 1200  # up to 1e-6 * 1.02**1200, about 2e4 s

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.counts = [0] * self.SIZE
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value
        i = int(math.log(value * 1e6) * _PER_LOG) if value > self.LOW else 0
        self.counts[i if i < self.SIZE else self.SIZE - 1] += 1

    def quantile(self, q: float) -> float:
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                if i == 0:
                    return min(self.LOW, self.max)
                return min(self.LOW * math.pow(self.RATIO, i + 0.5), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0
