"""A URL scraper on CoroutineExecutor, with its own local test server.

The seed's example, made real: fetch many URLs with at most ``--max-workers`` requests
in flight, a timeout on each request, every error handled in the job, and one result
line per URL.  The URLs come from a file (streamed, never all in memory) or are
generated, so ``--urls 1000000`` runs in flat memory: the executor's back-pressure
keeps O(max_workers) of them alive at once.

By default it starts its own aiohttp server on 127.0.0.1 (a random port, in a child
process so that it has a CPU of its own) that answers after a lognormal delay, fails
a share of requests and never answers another share.  Only loopback URLs are fetched.

    python examples/scraper.py --urls 10000 --out results.tsv
    python examples/scraper.py --urls-file urls.txt --max-workers 200 --timeout 2s
    python examples/scraper.py --serve-only --port 8080 --serve-for 10m   # just the server
    coroexecutor-plan --url 'http://127.0.0.1:8080/page/{i}' --plot plan.png

Each result line is ``url<TAB>status<TAB>milliseconds`` (``--format jsonl`` for JSON
lines); status is the HTTP status, ``timeout``, ``error:<ExceptionName>`` or
``refused`` (not a loopback URL).  Totals go to stderr at the end.  Needs aiohttp:
``pip install 'coroexecutor[http]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.util
import ipaddress
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import NoReturn, TextIO

try:
    import aiohttp
    from aiohttp import web
except ImportError:  # pragma: no cover
    sys.exit("scraper.py needs aiohttp: pip install 'coroexecutor[http]'")

from coroexecutor import AdaptiveLimit, CoroutineExecutor, PerKey, Retry, run

# --------------------------------------------------------------------- the test server


def make_app(
    *,
    latency: float,
    sigma: float,
    error_rate: float,
    hang_rate: float,
    hang_for: float,
    throttle: int | None = None,
) -> web.Application:
    """Answer GET on any path after a lognormal delay (median ``latency``).

    A share ``error_rate`` of requests gets a 503 after that delay; a share
    ``hang_rate`` gets no answer at all (the handler waits ``hang_for`` seconds, or
    until the client gives up and closes the connection).  With ``throttle``, a request
    that finds that many already in the handler gets a 429 after 1 ms: a capacity the
    server never announces.
    """
    mu = math.log(latency) if latency > 0 else 0.0
    rnd = random.random
    busy = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal busy
        if throttle is not None and busy >= throttle:
            await asyncio.sleep(0.001)
            return web.Response(status=429, text="too many requests\n")
        busy += 1
        try:
            return await answer(request)
        finally:
            busy -= 1

    async def answer(request: web.Request) -> web.StreamResponse:
        r = rnd()
        if r < hang_rate:
            await asyncio.sleep(hang_for)  # cancelled when the client hangs up
            return web.Response(status=504, text="hung\n")
        if latency > 0:
            await asyncio.sleep(random.lognormvariate(mu, sigma) if sigma else latency)
        if r < hang_rate + error_rate:
            return web.Response(status=503, text="unavailable\n")
        return web.Response(text=f"page {request.path}\n")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def serve(args: argparse.Namespace, announce: TextIO) -> None:
    """Run the server (--hosts of them, one port each) until --serve-for runs out, or
    stdin closes (--watch-stdin).  The first host throttles at --throttle."""
    runners = []
    for i in range(args.hosts):
        app = make_app(
            latency=args.server_latency,
            sigma=args.server_sigma,
            error_rate=args.error_rate,
            hang_rate=args.hang_rate,
            hang_for=args.hang_for,
            throttle=args.throttle if i == 0 else None,
        )
        # handler_cancellation: a hung handler ends when its client times out and hangs up.
        runners.append(web.AppRunner(app, handler_cancellation=True, access_log=None))
    try:
        bases = []
        for i, runner in enumerate(runners):
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", args.port + i if args.port else 0, backlog=4096)
            await site.start()
            host, port = runner.addresses[0][:2]
            bases.append(f"http://{host}:{port}/")
        print(
            f"serving on {' '.join(bases)} (median latency {args.server_latency * 1e3:g} "
            f"ms, sigma {args.server_sigma:g}, {args.error_rate:.1%} errors, "
            f"{args.hang_rate:.1%} hangs"
            + (
                ""
                if args.throttle is None
                else f"; the first answers 429 past {args.throttle} at once"
            )
            + ")",
            file=announce,
            flush=True,
        )
        stop = asyncio.Event()
        if args.watch_stdin:
            # Our parent (the scraper) holds our stdin: when it goes away, so do we.
            loop = asyncio.get_running_loop()

            def wait_for_eof() -> None:
                sys.stdin.read()
                loop.call_soon_threadsafe(stop.set)

            threading.Thread(target=wait_for_eof, daemon=True).start()
        try:
            async with asyncio.timeout(args.serve_for):
                await stop.wait()
        except TimeoutError:
            pass
    finally:
        for runner in runners:
            await runner.cleanup()


@contextlib.contextmanager
def server_process(args: argparse.Namespace) -> Iterator[list[str]]:
    """Start the test server in a child process; yield its base URLs; stop it after."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--serve-only",
        "--watch-stdin",
        "--port=0",
        f"--server-latency={args.server_latency}s",
        f"--server-sigma={args.server_sigma}",
        f"--error-rate={args.error_rate}",
        f"--hang-rate={args.hang_rate}",
        f"--hang-for={args.hang_for}s",
        f"--hosts={args.hosts}",
    ] + ([] if args.throttle is None else [f"--throttle={args.throttle}"])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        bases = re.findall(r"http://127\.0\.0\.1:\d+", line)
        if not bases:
            raise RuntimeError(f"the test server did not start: {line!r}")
        print(line.strip(), file=sys.stderr)
        yield bases
    finally:
        proc.stdin.close()  # the server's cue to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# --------------------------------------------------------------------- the scraper


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def generated_urls(bases: list[str], n: int) -> Iterator[str]:
    """N URLs, dealt round the hosts in turn."""
    return (f"{bases[i % len(bases)]}/page/{i}" for i in range(n))


def host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def urls_from_file(path: str, base: str | None) -> Iterator[str]:
    """The file's URLs, one a line, streamed; a line starting with '/' is a path on our server."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            url = line.strip()
            if not url or url.startswith("#"):
                continue
            if url.startswith("/") and base is not None:
                url = base + url
            yield url


class Totals:
    """Counts by outcome, and the sum of response times: O(1) however many URLs."""

    def __init__(self) -> None:
        self.by_status: collections.Counter[str] = collections.Counter()
        self.ms_total = 0.0
        self.retried = 0

    def add(self, status: str, ms: float) -> None:
        self.by_status[status] += 1
        self.ms_total += ms

    @property
    def count(self) -> int:
        return sum(self.by_status.values())


class Throttled(Exception):
    """A 429 answer, raised (with --per-host) so that Retry retries it and the host's
    AdaptiveLimit cuts its limit."""

    def __init__(self, url: str, ms: float) -> None:
        super().__init__(f"429 from {url}")
        self.url = url
        self.ms = ms


class Hosts:
    """Per host: URLs done, 429 answers seen, the most requests in flight at once."""

    def __init__(self) -> None:
        self.done: collections.Counter[str] = collections.Counter()
        self.throttled: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.limit: dict[str, int] = {}


async def scrape(
    urls: Iterator[str],
    out: TextIO,
    args: argparse.Namespace,
    totals: Totals,
    hosts: Hosts | None = None,
) -> None:
    """Fetch every URL through one CoroutineExecutor and one aiohttp session.

    With ``hosts`` (--per-host): each host gets its own adaptive limit and 429s are
    retried, through ``map_unordered(..., key=host)``, which never lets a throttled host
    hold up the others."""
    tsv = args.format == "tsv"
    write = out.write
    perf = time.perf_counter
    timeout = args.timeout
    # One session for all requests, with as many connections as there are workers.
    connector = aiohttp.TCPConnector(limit=args.max_workers, limit_per_host=0)

    def record(url: str, status: str, ms: float) -> None:
        totals.add(status, ms)
        if hosts is not None:
            hosts.done[host_of(url)] += 1
        if tsv:
            write(f"{url}\t{status}\t{ms:.1f}\n")
        else:
            write(json.dumps({"url": url, "status": status, "ms": round(ms, 1)}) + "\n")

    async with aiohttp.ClientSession(connector=connector) as session:

        async def fetch(url: str) -> None:
            """GET url; every outcome, error or not, becomes exactly one result line
            (a 429 with --per-host: once its retries are spent)."""
            t0 = perf()
            if not is_loopback(url):
                status = "refused"  # traffic stays on this machine
            else:
                host = host_of(url)
                if hosts is not None:
                    hosts.in_flight[host] += 1
                    hosts.peak[host] = max(hosts.peak[host], hosts.in_flight[host])
                try:
                    async with asyncio.timeout(timeout), session.get(url) as resp:
                        await resp.read()
                        status = str(resp.status)
                except TimeoutError:
                    status = "timeout"
                except Exception as exc:  # aiohttp.ClientError, a bad URL, ...
                    status = f"error:{type(exc).__name__}"
                finally:
                    if hosts is not None:
                        hosts.in_flight[host] -= 1
                if status == "429" and hosts is not None:
                    hosts.throttled[host] += 1
                    raise Throttled(url, (perf() - t0) * 1e3)
            record(url, status, (perf() - t0) * 1e3)

        if hosts is None:
            async with CoroutineExecutor(
                max_workers=args.max_workers,
                timeout=args.max_time,  # None: no deadline for the whole run
                progress=args.progress,
            ) as exe:
                for url in urls:
                    await exe.submit(fetch, url)  # waits while max_workers requests run
            return
        per_host = PerKey(AdaptiveLimit(1, args.max_workers, overload=Throttled))
        retry = Retry(args.retries, on=Throttled, backoff=0.05, max_backoff=2.0)
        async with CoroutineExecutor(
            max_workers=args.max_workers,
            per_key=per_host,
            retry=retry,
            timeout=args.max_time,
            progress=args.progress,
        ) as exe:
            async for r in exe.map_unordered(fetch, urls, key=host_of, return_exceptions=True):
                if isinstance(r, Throttled):  # still 429 after every retry
                    record(r.url, "429", r.ms)
                elif isinstance(r, BaseException):
                    raise r
            for host in hosts.done:
                hosts.limit[host] = exe.keyed(host).max_workers
            totals.retried = exe.stats().retried


def peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0.0
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024


def host_report(hosts: Hosts, bases: list[str], throttle: int | None) -> str:
    """One line per host: what it took, the limit found, and its real capacity."""
    lines = []
    for i, base in enumerate(bases):
        host = host_of(base)
        real = f"429 past {throttle}" if i == 0 and throttle is not None else "never throttles"
        lines.append(
            f"  {host}: {hosts.done[host]:,} URLs, {hosts.throttled[host]:,} answers 429, "
            f"at most {hosts.peak[host]} in flight, limit found {hosts.limit.get(host, 0)} "
            f"(real capacity: {real})"
        )
    return "\n".join(lines)


def report(totals: Totals, elapsed: float) -> str:
    n = totals.count
    ok = sum(c for s, c in totals.by_status.items() if s.isdigit() and int(s) < 400)
    http_err = sum(c for s, c in totals.by_status.items() if s.isdigit() and int(s) >= 400)
    timeouts = totals.by_status["timeout"]
    refused = totals.by_status["refused"]
    errors = n - ok - http_err - timeouts - refused
    kinds = ", ".join(f"{s}: {c:,}" for s, c in sorted(totals.by_status.items()))
    mean = totals.ms_total / n if n else 0.0
    return (
        f"{n:,} URLs in {elapsed:.1f} s ({n / elapsed if elapsed else 0:,.0f}/s): "
        f"{ok:,} ok, {http_err:,} HTTP errors, {timeouts:,} timeouts, {errors:,} other "
        f"errors, {refused:,} refused; mean {mean:.1f} ms; peak RSS {peak_rss_mb():.0f} MB\n"
        f"  by status: {kinds}" + (f"; {totals.retried:,} retries" if totals.retried else "")
    )


# --------------------------------------------------------------------- command line


def _duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (try 20ms or 2s)")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def _share(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (try 1% or 0.01)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(
        prog="scraper.py",
        description="Fetch URLs through CoroutineExecutor from a local test server.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--urls", type=int, default=1000, help="generate N URLs (default 1000)")
    src.add_argument("--urls-file", help="read URLs from this file, one a line")
    p.add_argument("--base-url", help="fetch from this server instead of starting one")
    p.add_argument("--max-workers", type=int, default=1000, help="requests in flight")
    p.add_argument("--timeout", type=_duration, default=1.0, help="per request (default 1s)")
    p.add_argument("--max-time", type=_duration, help="deadline for the whole run")
    p.add_argument("--out", default="-", help="result lines go here (default stdout)")
    p.add_argument("--format", choices=("tsv", "jsonl"), default="tsv")
    p.add_argument("--progress", action="store_true", help="a tqdm bar (extra: progress)")
    p.add_argument(
        "--per-host",
        action="store_true",
        help="an adaptive limit per host (PerKey(AdaptiveLimit)), 429s retried (Retry)",
    )
    p.add_argument("--retries", type=int, default=8, help="--per-host: attempts per URL")
    srv = p.add_argument_group("the test server")
    srv.add_argument("--serve-only", action="store_true", help="run only the server")
    srv.add_argument("--port", type=int, default=0, help="(default: a random free port)")
    srv.add_argument("--serve-for", type=_duration, help="stop serving after this long")
    srv.add_argument("--server-latency", type=_duration, default=0.02, help="median delay")
    srv.add_argument("--server-sigma", type=float, default=0.5, help="lognormal sigma")
    srv.add_argument("--error-rate", type=_share, default=0.01, help="share answered 503")
    srv.add_argument("--hang-rate", type=_share, default=0.001, help="share never answered")
    srv.add_argument("--hang-for", type=_duration, default=60.0, help=argparse.SUPPRESS)
    srv.add_argument("--hosts", type=int, default=1, help="serve this many hosts (ports)")
    srv.add_argument(
        "--throttle", type=int, help="the first host answers 429 past this many at once"
    )
    srv.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.max_workers <= 0:
        p.error("--max-workers must be greater than 0")
    if args.urls < 0:
        p.error("--urls must be 0 or more")
    if args.hosts < 1:
        p.error("--hosts must be 1 or more")
    if args.throttle is not None and args.throttle < 1:
        p.error("--throttle must be 1 or more")
    if args.retries < 1:
        p.error("--retries must be 1 or more")
    if args.error_rate + args.hang_rate > 1:
        p.error("--error-rate and --hang-rate add up to more than 1")
    if args.progress and importlib.util.find_spec("tqdm") is None:
        p.error("--progress needs tqdm: pip install 'coroexecutor[progress]'")
    if args.base_url is not None and not is_loopback(args.base_url):
        p.error("--base-url must be on this machine (127.0.0.1 or localhost)")
    return args


@contextlib.contextmanager
def output(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
    else:
        with open(path, "w", encoding="utf-8", buffering=1 << 16) as f:
            yield f


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_only:
        with contextlib.suppress(KeyboardInterrupt):
            run(serve(args, sys.stdout))
        return 0
    with contextlib.ExitStack() as stack:
        if args.base_url:
            bases = [args.base_url.rstrip("/")]
        else:
            bases = stack.enter_context(server_process(args))
        if args.urls_file is not None:
            urls: Iterator[str] = urls_from_file(args.urls_file, bases[0])
        else:
            urls = generated_urls(bases, args.urls)
        out = stack.enter_context(output(args.out))
        totals = Totals()
        hosts = Hosts() if args.per_host else None
        t0 = time.perf_counter()
        try:
            run(scrape(urls, out, args, totals, hosts))
        except TimeoutError:
            print(f"--max-time {args.max_time:g} s ran out: stopped", file=sys.stderr)
        finally:
            out.flush()
            print(report(totals, time.perf_counter() - t0), file=sys.stderr)
            if hosts is not None:
                print(host_report(hosts, bases, args.throttle), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
