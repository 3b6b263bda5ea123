"""``coroexecutor-plan``: sweep max_workers, print a table, recommend one."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._model import StepConfig, StepResult
from ._recommend import recommend
from ._report import table_header, table_row, write_csv, write_json, write_plot
from ._sweep import fastest_runs, run_step
from ._units import format_count, format_duration, parse_duration, parse_share, parse_workers
from ._workloads import check_args_file, check_url, is_loopback, resolve_job

__all__ = ("main",)

PROG = "coroexecutor-plan"
DEFAULT_WORKERS = "1,10,100,1000,10000"
HTTP_JOB_TIMEOUT = 10.0

EPILOG = """\
Each step runs in a fresh Python process with a fresh event loop, so its peak RSS is its
own.  Its clocks start once its first max_workers jobs have started (that start-up is
reported as ramp_s); it then submits jobs for --duration (or until --jobs jobs), and its
last jobs get a grace period to end.  The first --warmup is left out of every figure.
Where Linux tells how long the loop waited for a CPU that other processes held, the
rule compares loop lag less that wait, and throughput as if it had not happened (not for
a --url on this machine, whose server is part of what is measured); --no-adjust turns
both off.  The table shows what was measured.

examples:
  coroexecutor-plan                                   # synthetic job, default sweep
  coroexecutor-plan --latency 10ms --cpu-us 100 --max-workers 10,50,100,200,400
  coroexecutor-plan --job mypkg.jobs:fetch --args-file urls.txt --job-timeout 5s
  python examples/scraper.py --serve-only --port 8080 &
  coroexecutor-plan --url 'http://127.0.0.1:8080/page/{i}' --plot plan.png
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _cpu(text: str) -> float:
    """--cpu-us: microseconds as a number, or a duration with its unit."""
    try:
        value = float(text)
    except ValueError:
        return parse_duration(text, allow_zero=True)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a number of microseconds >= 0")
    return value * 1e-6


def _positive_int(text: str) -> int:
    try:
        n = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if n <= 0:
        raise ValueError(f"{text!r} must be greater than 0")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 < x < float("inf"):
        raise ValueError(f"{text!r} must be greater than 0")
    return x


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description=(
            "Capacity planning for CoroutineExecutor: run a job at each max_workers of a "
            "list and measure throughput, job latency, CPU, peak RSS, event-loop lag and "
            "failures; recommend the smallest max_workers that gets 95% of the best "
            "throughput while the loop lag p99 stays under --max-lag."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = _typed(parse_duration)
    sweep = p.add_argument_group("the sweep")
    sweep.add_argument(
        "--max-workers",
        "-w",
        type=_typed(parse_workers),
        default=parse_workers(DEFAULT_WORKERS),
        metavar="LIST",
        help=f"max_workers to try, comma-separated; per shard with --shards "
        f"(default {DEFAULT_WORKERS})",
    )
    sweep.add_argument(
        "--shards",
        type=_typed(_positive_int),
        default=1,
        metavar="N",
        help="run each step's jobs through ShardedExecutor(shards=N, max_workers=W): N "
        "processes of max_workers (per shard) each, so N*W jobs at once; CPU %% includes "
        "the shards' (default 1: one CoroutineExecutor, no shards)",
    )
    sweep.add_argument(
        "--duration", type=d, default=5.0, help="time budget of each step (default 5s)"
    )
    sweep.add_argument(
        "--jobs",
        type=_typed(_positive_int),
        default=1_000_000,
        help="job budget of each step; a step ends at whichever budget runs out first "
        "(default 1000000)",
    )
    sweep.add_argument(
        "--repeat",
        type=_typed(_positive_int),
        default=1,
        metavar="N",
        help="run the sweep N times (up, down, up...) and keep each max_workers' fastest "
        "run: other processes only ever slow a step down (default 1; try 2-3 on a busy "
        "machine)",
    )
    sweep.add_argument(
        "--warmup",
        type=_typed(lambda t: parse_duration(t, allow_zero=True)),
        default=None,
        help="start of each step left out of the figures (default 10%% of --duration)",
    )
    sweep.add_argument(
        "--grace",
        type=d,
        default=None,
        help="how long a step's last jobs may run on before they are cancelled "
        "(default: --job-timeout + 1s, else --duration)",
    )
    sweep.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (default auto: uvloop when installed, as coroexecutor.run)",
    )
    sweep.add_argument(
        "--job-timeout",
        type=d,
        default=None,
        help=f"CoroutineExecutor(job_timeout=...): a job running longer fails "
        f"(default none; {HTTP_JOB_TIMEOUT:g}s with --url)",
    )

    job = p.add_argument_group(
        "the job (one of: a synthetic job, the default; --job; --url)",
    )
    job.add_argument(
        "--latency",
        type=_typed(lambda t: parse_duration(t, allow_zero=True)),
        help="synthetic: how long each job waits (default 50ms)",
    )
    # One add_argument per option below, of one shape: argparse's own way.
    job.add_argument(
        "--jitter",
        type=_typed(parse_share),
        help="synthetic: latency spread, uniform ± this share (default 20%%)",
    )
    job.add_argument(
        "--cpu-us",
        type=_typed(_cpu),
        metavar="MICROSECONDS",
        help="synthetic: CPU each job burns on the loop (default 200)",
    )
    job.add_argument(
        "--fail-rate",
        type=_typed(parse_share),
        help="synthetic: share of jobs that raise (default 0.01)",
    )
    job.add_argument(
        "--job",
        metavar="MODULE:FUNCTION",
        help="your coroutine function, imported from the current directory or sys.path",
    )
    job.add_argument(
        "--args-file",
        metavar="FILE",
        help="with --job: one argument per line, each passed as a str (the file is read "
        "again from the top when a step needs more); without it the function gets none",
    )
    job.add_argument(
        "--url",
        help="GET this URL with aiohttp ('{i}' is replaced by the job's number); "
        "an answer of 400 or more is a failure (extra: http)",
    )
    job.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --url name a host that is not this machine (a sweep is a load test)",
    )

    rec = p.add_argument_group("the recommendation")
    rec.add_argument("--max-lag", type=d, default=0.05, help="bound on loop lag p99 (default 50ms)")
    rec.add_argument(
        "--target-rate",
        type=_typed(_positive_float),
        metavar="JOBS_PER_S",
        help="rate for the Little's-law estimate (default: the best measured)",
    )
    rec.add_argument(
        "--total-jobs",
        type=_typed(_positive_int),
        default=1_000_000,
        help="size of the run to estimate the time of (default 1000000)",
    )
    rec.add_argument(
        "--no-adjust",
        dest="adjust",
        action="store_false",
        help="compare throughput and loop lag as measured, not corrected for the time "
        "other processes held the CPU (throughput is never corrected for a --url on this "
        "machine: its server's CPU time is part of what is measured)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--csv",
        default="coroexecutor-plan.csv",
        metavar="FILE",
        help="one row per run of a step (default coroexecutor-plan.csv; '' for none)",
    )
    out.add_argument(
        "--json",
        default="coroexecutor-plan.json",
        metavar="FILE",
        help="steps, recommendation, machine (default coroexecutor-plan.json; '' for none)",
    )
    out.add_argument(
        "--plot",
        metavar="PNG",
        help="chart of throughput and loop lag against max_workers (extra: plot)",
    )
    out.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="a progress bar on stderr (extra: progress; default: when a terminal)",
    )
    out.add_argument("--no-progress", dest="progress", action="store_false")
    return p


class _Fail(Exception):
    """A one-line error before the sweep starts: exit status 2."""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _need(module: str, what: str, extra: str) -> None:
    if not _installed(module):
        raise _Fail(f"{what} needs {module}: pip install 'coroexecutor[{extra}]'")


def _configure(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Check the arguments against each other; the StepConfig fields and a description."""
    synthetic_opts = {
        "--latency": args.latency,
        "--jitter": args.jitter,
        "--cpu-us": args.cpu_us,
        "--fail-rate": args.fail_rate,
    }
    given = [name for name, value in synthetic_opts.items() if value is not None]
    if args.job and args.url:
        raise _Fail("--job and --url cannot be combined: choose one job")
    if (args.job or args.url) and given:
        raise _Fail(f"{given[0]} applies to the synthetic job, not to --job or --url")
    if args.args_file is not None and not args.job:
        raise _Fail("--args-file goes with --job")
    if args.allow_remote and not args.url:
        raise _Fail("--allow-remote goes with --url")
    if args.url and args.shards > 1:
        raise _Fail("--url cannot run in shards: use --shards 1, or a --job that fetches it")
    job_timeout = args.job_timeout
    if args.url:
        try:
            check_url(args.url, allow_remote=args.allow_remote)
        except ValueError as exc:
            raise _Fail(f"--url: {exc}") from None
        _need("aiohttp", "--url", "http")
        job_timeout = job_timeout if job_timeout is not None else HTTP_JOB_TIMEOUT
        fields: dict[str, Any] = {"kind": "http", "url": args.url}
        what = f"GET {args.url}"
    elif args.job:
        try:
            fn = resolve_job(args.job)
        except ValueError as exc:
            raise _Fail(f"--job: {exc}") from None
        if args.shards > 1 and not inspect.iscoroutinefunction(fn):
            raise _Fail(
                f"--job: {args.job!r} is not a coroutine function (async def), which "
                "--shards needs: its shards import it by name"
            )
        if args.args_file is not None:
            try:
                check_args_file(args.args_file)
            except ValueError as exc:
                raise _Fail(f"--args-file: {exc}") from None
        args_file = None if args.args_file is None else os.path.abspath(args.args_file)
        fields = {"kind": "function", "job": args.job, "args_file": args_file}
        what = f"{args.job}" + (f" over the lines of {args.args_file}" if args_file else "()")
    else:
        latency = 0.05 if args.latency is None else args.latency
        jitter = 0.2 if args.jitter is None else args.jitter
        cpu = 200e-6 if args.cpu_us is None else args.cpu_us
        fail = 0.01 if args.fail_rate is None else args.fail_rate
        fields = {
            "kind": "synthetic",
            "latency": latency,
            "jitter": jitter,
            "cpu": cpu,
            "fail_rate": fail,
        }
        what = (
            f"synthetic job: {latency * 1e3:g} ms ±{jitter * 100:g}% latency, "
            f"{cpu * 1e6:g} µs CPU, {fail * 100:g}% failures"
        )
    if job_timeout is not None:
        what += f", job_timeout {job_timeout:g} s"
    fields["job_timeout"] = job_timeout
    return fields, what


def _check_outputs(args: argparse.Namespace) -> None:
    for opt, path in (("--csv", args.csv), ("--json", args.json), ("--plot", args.plot)):
        if path and not Path(path).resolve().parent.is_dir():
            raise _Fail(f"{opt}: the folder of {path!r} does not exist")
    if args.plot:
        _need("matplotlib", "--plot", "plot")
    if args.progress:
        _need("tqdm", "--progress", "progress")
    if args.loop == "uvloop":
        _need("uvloop", "--loop uvloop", "uvloop")


def _machine(loop: str) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        ours = version("coroexecutor")
    except Exception:
        ours = "unknown"
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop": loop,
        "coroexecutor": ours,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class _Bar:
    """The sweep's progress: a tqdm bar on stderr with fractional steps, or nothing."""

    def __init__(self, enabled: bool, steps: int) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=steps,
                unit="step",
                bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}",
                dynamic_ncols=True,
                leave=False,
            )

    def step(self, index: int, config: StepConfig) -> Callable[[dict[str, Any]], None]:
        bar = self._bar
        if bar is None:
            return lambda message: None
        bar.set_description_str(f"max_workers={config.max_workers:,}", refresh=False)

        def on_progress(message: dict[str, Any]) -> None:
            t = float(message["t"])
            jobs = int(message["jobs"])
            within = t / config.duration
            if config.jobs:
                within = max(within, jobs / config.jobs)
            bar.n = index + min(within, 1.0)
            bar.set_postfix_str(f"{jobs:,} jobs, {format_count(jobs / t if t else 0)}/s")

        return on_progress

    def write(self, line: str) -> None:
        if self._bar is None:
            print(line, flush=True)
        else:
            self._bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    def done(self, steps_done: int) -> None:
        if self._bar is not None:
            self._bar.n = steps_done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run_sweep(
    configs: Sequence[StepConfig], repeat: int, progress: bool, shards: int = 1
) -> tuple[list[tuple[int, StepResult]], bool]:
    """Run every step ``repeat`` times, printing each row as it comes.

    Returns the (run number, result) pairs in the order they ran, and whether Ctrl-C
    stopped the sweep early.
    """
    bar = _Bar(progress, len(configs) * repeat)
    bar.write(table_header(shards))
    runs: list[tuple[int, StepResult]] = []
    interrupted = False
    try:
        for run_no in range(1, repeat + 1):
            # Every other run goes downwards, so a slow drift of the machine's load
            # does not always favour the same end of the list.
            for config in configs if run_no % 2 else configs[::-1]:
                step = run_step(config, bar.step(len(runs), config))
                runs.append((run_no, step))
                bar.done(len(runs))
                bar.write(table_row(step, shards) + (f"  (run {run_no})" if repeat > 1 else ""))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if interrupted:
        total = len(configs) * repeat
        print(f"interrupted after {len(runs)} of {total} steps", file=sys.stderr)
    return runs, interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Run the planner; return the exit status (0 ok, 1 no step ran, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fields, what = _configure(args)
        _check_outputs(args)
    except _Fail as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    duration: float = args.duration
    warmup = 0.1 * duration if args.warmup is None else args.warmup
    if warmup >= duration:
        print(f"{PROG}: error: --warmup must be shorter than --duration", file=sys.stderr)
        return 2
    job_timeout = fields["job_timeout"]
    if args.grace is not None:
        grace = args.grace
    else:
        grace = job_timeout + 1.0 if job_timeout is not None else max(1.0, duration)
    workers: list[int] = args.max_workers
    configs = [
        StepConfig(
            max_workers=w,
            duration=duration,
            jobs=args.jobs,
            warmup=warmup,
            grace=grace,
            loop=args.loop,
            shards=args.shards,
            **fields,
        )
        for w in workers
    ]
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    if progress and args.progress is None and not _installed("tqdm"):
        progress = False
    loop = args.loop
    if loop == "auto":
        loop = "uvloop" if _installed("uvloop") else "asyncio"
    print(f"{PROG}: {what}")
    print(
        f"  max_workers {', '.join(f'{w:,}' for w in workers)}; "
        f"{format_duration(duration)} per step (warm-up {format_duration(warmup)}, "
        f"at most {args.jobs:,} jobs)"
        + (f", {args.repeat} runs each" if args.repeat > 1 else "")
        + f", each step in a fresh process; loop {loop}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    print()
    shards: int = args.shards
    if shards > 1:
        print(
            f"{shards} shards (ShardedExecutor processes) per step; max_workers is per "
            f"shard: each step runs up to {shards} x max_workers jobs at once"
        )
    runs, interrupted = _run_sweep(configs, args.repeat, progress, shards)
    correct_rate = args.adjust and not (args.url and is_loopback(args.url))
    steps = fastest_runs([step for _, step in runs], correct=correct_rate)
    if args.repeat > 1 and steps:
        print(f"\nThe fastest of {args.repeat} runs of each max_workers:")
        print(table_header(shards))
        for step in steps:
            print(table_row(step, shards))
    rec = recommend(
        steps,
        max_lag=args.max_lag,
        target_rate=args.target_rate,
        correct_rate=correct_rate,
        correct_lag=args.adjust,
        total_jobs=args.total_jobs,
    )
    print()
    print(rec.text())
    if shards > 1 and rec.max_workers is not None:
        print(
            f"  - max_workers is per shard: ShardedExecutor(shards={shards}, "
            f"max_workers={rec.max_workers}) runs up to {shards * rec.max_workers:,} jobs at once"
        )
    loop = next((s.loop for s in steps if s.loop), loop)
    written = []
    if args.csv:
        write_csv(Path(args.csv), runs, steps)
        written.append(args.csv)
    if args.json:
        settings = {
            "argv": list(sys.argv[1:] if argv is None else argv),
            "job": what,
            "max_workers": workers,
            "duration_s": duration,
            "jobs": args.jobs,
            "warmup_s": warmup,
            "grace_s": grace,
            "max_lag_s": args.max_lag,
            "target_rate": args.target_rate,
            "correct_rate": correct_rate,
            "correct_lag": args.adjust,
            "repeat": args.repeat,
            "shards": shards,
            **fields,
        }
        write_json(
            Path(args.json),
            config=settings,
            machine=_machine(loop),
            steps=steps,
            runs=runs,
            recommendation=rec,
        )
        written.append(args.json)
    if args.plot and any(s.error is None and s.jobs for s in steps):
        write_plot(Path(args.plot), steps, rec, max_lag=args.max_lag, title=f"{PROG}: {what}")
        written.append(args.plot)
    if written:
        print(f"\nwrote {', '.join(written)}")
    if interrupted:
        return 130
    return 0 if any(s.error is None for s in steps) else 1
