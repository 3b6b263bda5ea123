"""The sweep's outputs: the table printed as it goes, the CSV, the JSON and the chart."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._model import StepResult
from ._recommend import Recommendation, effective_rate
from ._units import format_count, format_ms

__all__ = ("table_header", "table_row", "write_csv", "write_json", "write_plot")


def _failed(s: StepResult) -> str:
    return f"{s.failed:,} ({100 * s.failure_share:.1f}%)" if s.failed else "0"


# (header, width, cell)
_COLUMNS: tuple[tuple[str, int, Callable[[StepResult], str]], ...] = (
    ("max_workers", 11, lambda s: f"{s.max_workers:,}"),
    ("jobs/s", 9, lambda s: format_count(s.jobs_per_s)),
    ("p50 ms", 8, lambda s: format_ms(s.latency_p50_s)),
    ("p95 ms", 8, lambda s: format_ms(s.latency_p95_s)),
    ("p99 ms", 8, lambda s: format_ms(s.latency_p99_s)),
    ("CPU %", 6, lambda s: f"{s.cpu_pct:.0f}"),
    ("wait %", 6, lambda s: f"{s.cpu_wait_pct:.0f}"),
    ("peak RSS MB", 11, lambda s: f"{s.peak_rss_mb:.1f}"),
    ("lag p99 ms", 10, lambda s: format_ms(s.lag_p99_s)),
    ("failed", 14, _failed),
)


# With shards > 1: a shards column after max_workers, which is then per shard.
_SHARDS_COLUMN: tuple[str, int, Callable[[StepResult], str]] = (
    "shards",
    6,
    lambda s: f"{s.shards:,}",
)


def _columns(shards: int) -> tuple[tuple[str, int, Callable[[StepResult], str]], ...]:
    if shards <= 1:
        return _COLUMNS
    return (_COLUMNS[0], _SHARDS_COLUMN, *_COLUMNS[1:])


def table_header(shards: int = 1) -> str:
    """The table's header; with ``shards`` > 1 a shards column, and a first line saying
    that max_workers is per shard."""
    head = "  ".join(h.rjust(w) for h, w, _ in _columns(shards))
    if shards > 1:
        head = "max_workers (per shard)".rjust(11) + "\n" + head
    return head


def table_row(step: StepResult, shards: int = 1) -> str:
    if step.error is not None:
        return f"{step.max_workers:>11,}  FAILED: {step.error}"
    return "  ".join(cell(step).rjust(w) for _, w, cell in _columns(shards))


_CSV_FIELDS = (
    "max_workers",
    "shards",
    "run",
    "kept",
    "jobs_per_s",
    "ok_per_s",
    "ok_per_s_corrected",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "cpu_pct",
    "shard_cpu_pct",
    "cpu_wait_pct",
    "cpu_per_job_us",
    "rss_start_mb",
    "peak_rss_mb",
    "shard_peak_rss_mb",
    "lag_p50_ms",
    "lag_p99_ms",
    "lag_max_ms",
    "own_lag_p99_ms",
    "jobs",
    "failed",
    "failure_kinds",
    "window_s",
    "ended_by",
    "total_jobs",
    "cut",
    "drain_s",
    "ramp_s",
    "loop",
    "error",
)


def _csv_row(s: StepResult, run: int, kept: bool) -> dict[str, Any]:
    ms = 1e3
    return {
        "max_workers": s.max_workers,
        "shards": s.shards,
        "run": run,
        "kept": int(kept),
        "jobs_per_s": round(s.jobs_per_s, 3),
        "ok_per_s": round(s.ok_per_s, 3),
        "ok_per_s_corrected": round(effective_rate(s), 3),
        "latency_mean_ms": round(s.latency_mean_s * ms, 4),
        "latency_p50_ms": round(s.latency_p50_s * ms, 4),
        "latency_p95_ms": round(s.latency_p95_s * ms, 4),
        "latency_p99_ms": round(s.latency_p99_s * ms, 4),
        "latency_max_ms": round(s.latency_max_s * ms, 4),
        "cpu_pct": round(s.cpu_pct, 2),
        "shard_cpu_pct": round(s.shard_cpu_pct, 2),
        "cpu_wait_pct": round(s.cpu_wait_pct, 2),
        "cpu_per_job_us": round(s.cpu_per_job_s * 1e6, 3),
        "rss_start_mb": round(s.rss_start_mb, 2),
        "peak_rss_mb": round(s.peak_rss_mb, 2),
        "shard_peak_rss_mb": round(s.shard_peak_rss_mb, 2),
        "lag_p50_ms": round(s.lag_p50_s * ms, 4),
        "lag_p99_ms": round(s.lag_p99_s * ms, 4),
        "lag_max_ms": round(s.lag_max_s * ms, 4),
        "own_lag_p99_ms": round(s.own_lag_p99_s * ms, 4),
        "jobs": s.jobs,
        "failed": s.failed,
        "failure_kinds": ";".join(f"{k}={v}" for k, v in sorted(s.failure_kinds.items())),
        "window_s": round(s.window_s, 4),
        "ended_by": s.ended_by,
        "total_jobs": s.total_jobs,
        "cut": s.cut,
        "drain_s": round(s.drain_s, 4),
        "ramp_s": round(s.ramp_s, 4),
        "loop": s.loop,
        "error": s.error or "",
    }


def write_csv(
    path: Path, runs: Sequence[tuple[int, StepResult]], kept: Sequence[StepResult]
) -> None:
    """Every run of every step, in the order they ran; ``kept`` marks the ones used."""
    kept_ids = {id(s) for s in kept}
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for run, s in runs:
            writer.writerow(_csv_row(s, run, id(s) in kept_ids))


def write_json(
    path: Path,
    *,
    config: dict[str, Any],
    machine: dict[str, Any],
    steps: Sequence[StepResult],
    runs: Sequence[tuple[int, StepResult]],
    recommendation: Recommendation,
) -> None:
    """The configuration, the machine, the steps used (the fastest run of each
    max_workers), every run, and the recommendation with its reasoning."""
    data = {
        "config": config,
        "machine": machine,
        "steps": [{**s.to_json(), "ok_per_s_corrected": effective_rate(s)} for s in steps],
        "runs": [{"run": run, **s.to_json()} for run, s in runs],
        "recommendation": {
            "max_workers": recommendation.max_workers,
            "reasons": list(recommendation.reasons),
            "text": recommendation.text(),
            "best_max_workers": recommendation.best_max_workers,
            "best_ok_per_s": recommendation.best_rate,
            "threshold_ok_per_s": recommendation.threshold,
            "littles_law_workers": recommendation.littles_law_workers,
            "target_rate": recommendation.target_rate,
            "unloaded_latency_s": recommendation.unloaded_latency_s,
            "excluded_for_lag": list(recommendation.excluded_for_lag),
            "knee_max_workers": recommendation.knee_max_workers,
            "rate_corrected": recommendation.rate_corrected,
            "lag_corrected": recommendation.lag_corrected,
        },
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_plot(
    path: Path,
    steps: Sequence[StepResult],
    recommendation: Recommendation,
    *,
    max_lag: float,
    title: str,
) -> None:
    """Throughput and loop lag p99 against max_workers (log scale), the choice marked."""
    from matplotlib.figure import Figure  # the planner checked it is installed

    ok = [s for s in steps if s.error is None and s.jobs > 0]
    xs = [s.max_workers for s in ok]
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(xs, [s.jobs_per_s for s in ok], "o-", label="jobs/s (measured)")
    if recommendation.rate_corrected:
        top.plot(
            xs,
            [effective_rate(s) for s in ok],
            "s--",
            label="successful jobs/s, corrected for CPU wait",
        )
    else:
        top.plot(xs, [s.ok_per_s for s in ok], "s--", label="successful jobs/s")
    if recommendation.threshold:
        top.axhline(recommendation.threshold, color="grey", lw=0.8, ls=":", label="95 % of best")
    top.set_ylabel("throughput (jobs/s)")
    top.set_ylim(bottom=0)
    top.grid(True, which="both", alpha=0.3)
    # One plot() per line of the chart, of one shape: matplotlib's own way.
    bottom.plot(
        xs, [max(s.lag_p99_s * 1e3, 1e-3) for s in ok], "o-", color="C3", label="loop lag p99"
    )
    if recommendation.lag_corrected and any(s.cpu_wait_pct >= 2 for s in ok):
        bottom.plot(
            xs,
            [max(s.own_lag_p99_s * 1e3, 1e-3) for s in ok],
            "o--",
            color="C4",
            label="loop lag p99, less CPU wait",
        )
    bottom.plot(
        xs,
        [max(s.latency_p99_s * 1e3, 1e-3) for s in ok],
        "^:",
        color="C2",
        label="job latency p99",
    )
    bottom.axhline(max_lag * 1e3, color="C3", lw=0.8, ls="--", label="--max-lag")
    bottom.set_yscale("log")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("max_workers")
    bottom.set_xscale("log")
    bottom.set_xticks(xs, [f"{x:,}" for x in xs])
    bottom.minorticks_off()
    bottom.grid(True, which="both", alpha=0.3)
    if recommendation.max_workers is not None:
        for ax in (top, bottom):
            ax.axvline(recommendation.max_workers, color="C1", lw=1.2)
        top.annotate(
            f"recommended: {recommendation.max_workers:,}",
            xy=(recommendation.max_workers, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(5, -14),
            textcoords="offset points",
            color="C1",
        )
    top.legend(loc="lower right", fontsize="small")
    bottom.legend(loc="upper left", fontsize="small")
    top.set_title(title, fontsize="medium")
    fig.savefig(path, dpi=110)
