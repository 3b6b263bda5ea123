"""The jobs a sweep can run: a synthetic job, the user's coroutine function, an HTTP GET.

``open_workload(config)`` gives the job function (one argument) and the endless stream
of its arguments.  The ``check_*`` functions refuse bad input in the planner's process,
before any step starts, with a message that fits on one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import itertools
import os
import random
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from ._model import StepConfig

__all__ = (
    "HTTPStatusError",
    "SyntheticFailure",
    "check_args_file",
    "check_url",
    "is_loopback",
    "open_workload",
    "resolve_job",
    "sharded_workload",
    "synthetic_sharded",
)

JobFn = Callable[[Any], Awaitable[Any]]


class SyntheticFailure(Exception):
    """What a synthetic job raises, at --fail-rate."""


class HTTPStatusError(Exception):
    """An HTTP answer of 400 or more: a failed job."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.kind = f"HTTP {status}"


# --------------------------------------------------------------------- synthetic


def _cpu_clock() -> Callable[[], float]:
    # Burn CPU time, not wall time, so a job costs the same CPU however busy the
    # machine is; fall back to wall time where the thread clock is coarse (Windows).
    if time.get_clock_info("thread_time").resolution <= 1e-6:
        return time.thread_time
    return time.perf_counter  # pragma: no cover - not on Linux or macOS


def synthetic_job(latency: float, jitter: float, cpu: float, fail_rate: float) -> JobFn:
    """Wait ``latency`` (uniformly ±``jitter`` of it), burn ``cpu`` seconds, maybe fail."""
    sleep = asyncio.sleep
    rnd = random.random
    clock = _cpu_clock()

    async def synthetic(_: Any) -> None:
        if latency:
            await sleep(latency * (1.0 + jitter * (2.0 * rnd() - 1.0)) if jitter else latency)
        if cpu:
            end = clock() + cpu
            while clock() < end:
                pass
        if fail_rate and rnd() < fail_rate:
            raise SyntheticFailure("synthetic failure")

    return synthetic


_SHARD_CLOCK: Callable[[], float] | None = None


async def synthetic_sharded(latency: float, jitter: float, cpu: float, fail_rate: float) -> None:
    """The synthetic job as a module-level coroutine function taking plain arguments, so
    that a ShardedExecutor's shard processes can import it and run it (``--shards``)."""
    global _SHARD_CLOCK
    if latency:
        spread = latency * (1.0 + jitter * (2.0 * random.random() - 1.0)) if jitter else latency
        await asyncio.sleep(spread)
    if cpu:
        clock = _SHARD_CLOCK
        if clock is None:
            clock = _SHARD_CLOCK = _cpu_clock()
        end = clock() + cpu
        while clock() < end:
            pass
    if fail_rate and random.random() < fail_rate:
        raise SyntheticFailure("synthetic failure")


# --------------------------------------------------------------------- the user's function


def resolve_job(spec: str) -> Callable[..., Any]:
    """'package.module:function' (or module:Class.method) -> the callable; ValueError if not."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form package.module:function")
    # Look beside the user first, as `python -m` does (a step's process runs that way).
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{spec!r}: cannot import {module_name!r} ({exc})") from None
    except Exception as exc:
        raise ValueError(
            f"{spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ValueError(f"{spec!r}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable (it is {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def check_args_file(path: str) -> None:
    """The file must be readable and hold at least one non-empty line."""
    try:
        with open(path, encoding="utf-8") as f:
            if not any(line.strip("\r\n") for line in f):
                raise ValueError(f"{path!r} has no arguments (one per line)")
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def _lines_forever(path: str) -> Iterator[str]:
    """The file's non-empty lines, newline removed, over and over: never all in memory."""
    while True:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\r\n")
                if line:
                    yield line


def _function_workload(config: StepConfig) -> tuple[JobFn, Iterator[Any]]:
    assert config.job is not None
    fn = resolve_job(config.job)
    if config.args_file is None:

        def call(_: Any) -> Awaitable[Any]:
            return fn()  # type: ignore[no-any-return]

        return call, itertools.repeat(None)
    return fn, _lines_forever(config.args_file)


# --------------------------------------------------------------------- HTTP


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_remote: bool) -> None:
    """http(s) URL with a host; loopback only unless ``allow_remote``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if not is_loopback(url) and not allow_remote:
        raise ValueError(
            f"{url!r} is not on this machine: a sweep is a load test, so pass "
            "--allow-remote to point it at another host you are allowed to load"
        )


@contextlib.asynccontextmanager
async def _http_workload(config: StepConfig) -> AsyncIterator[tuple[JobFn, Iterator[Any]]]:
    import aiohttp  # the planner checked it is installed

    url = config.url
    assert url is not None
    numbered = "{i}" in url
    # One session for the step; its connector allows as many connections as jobs.
    connector = aiohttp.TCPConnector(limit=config.max_workers, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        get = session.get

        async def fetch(i: int) -> int:
            target = url.replace("{i}", str(i)) if numbered else url
            async with get(target) as resp:
                await resp.read()
                status: int = resp.status
            if status >= 400:
                raise HTTPStatusError(status, target)
            return status

        yield fetch, itertools.count()


# --------------------------------------------------------------------- all of them


def sharded_workload(config: StepConfig) -> tuple[Callable[..., Awaitable[Any]], Iterator[Any]]:
    """For ``--shards`` > 1: an importable coroutine function and the endless stream of
    its argument tuples (plain, picklable values)."""
    if config.kind == "synthetic":
        args = (config.latency, config.jitter, config.cpu, config.fail_rate)
        return synthetic_sharded, itertools.repeat(args)
    if config.kind == "function":
        assert config.job is not None
        fn = resolve_job(config.job)
        if config.args_file is None:
            return fn, itertools.repeat(())
        return fn, ((line,) for line in _lines_forever(config.args_file))
    raise ValueError(f"a {config.kind!r} job cannot run in shards")


@contextlib.asynccontextmanager
async def open_workload(config: StepConfig) -> AsyncIterator[tuple[JobFn, Iterator[Any]]]:
    """The step's job function and the endless stream of its arguments."""
    if config.kind == "http":
        async with _http_workload(config) as workload:
            yield workload
    elif config.kind == "function":
        yield _function_workload(config)
    elif config.kind == "synthetic":
        job = synthetic_job(config.latency, config.jitter, config.cpu, config.fail_rate)
        yield job, itertools.count()
    else:
        raise ValueError(f"unknown kind of job {config.kind!r}")
