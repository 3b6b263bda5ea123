"""The capacity planner (coroexecutor.plan) and the scraper example (examples/scraper.py).

Sweeps run their steps in child processes, so these tests drive the command line
(``main(argv)`` in-process, or a subprocess) rather than the ``run`` fixture.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from coroexecutor.plan import StepResult, main, recommend
from coroexecutor.plan import _cli as plan_cli
from coroexecutor.plan._model import Histogram
from coroexecutor.plan._units import parse_duration, parse_share, parse_workers

ROOT = Path(__file__).resolve().parent.parent
SCRAPER = ROOT / "examples" / "scraper.py"


def plan(argv: Sequence[str]) -> int:
    """main(argv), with argparse's own exits turned into a status as well."""
    try:
        return main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


def table_rows(out: str) -> dict[int, list[str]]:
    """The table's rows by max_workers (the first table printed)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["max_workers", "jobs/s"])
    rows: dict[int, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[int(cells[0].replace(",", ""))] = cells
    return rows


# --------------------------------------------------------------------- units and the rule


def test_parse_duration_share_and_workers() -> None:
    assert parse_duration("50ms") == pytest.approx(0.05)
    assert parse_duration("200us") == pytest.approx(200e-6)
    assert parse_duration("1.5") == 1.5
    assert parse_duration("0", allow_zero=True) == 0
    assert parse_share("20%") == pytest.approx(0.2)
    assert parse_share("0.01") == 0.01
    assert parse_workers("100, 1,10 10k") == [1, 10, 100, 10_000]
    for bad in ("abc", "50 parsecs", "-1s", "0"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="empty list"):
        parse_workers(" , ")
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_share("150%")


def test_histogram_quantiles_within_two_percent() -> None:
    h = Histogram()
    for i in range(1, 10_001):
        h.add(i * 1e-4)  # 0.1 ms .. 1 s, uniformly
    assert h.count == 10_000
    assert h.mean == pytest.approx(0.50005)
    assert h.max == pytest.approx(1.0)
    for q in (0.5, 0.95, 0.99):
        assert h.quantile(q) == pytest.approx(q, rel=0.02)


def step(w: int, rate: float, lag_ms: float = 1.0, **kw: float) -> StepResult:
    fields: dict[str, float] = {"latency_mean_s": 0.01, "cpu_per_job_s": 1e-4, "cpu_pct": 50.0}
    fields.update(kw)
    return StepResult(
        max_workers=w,
        ended_by="duration",
        window_s=1.0,
        jobs=int(rate),
        jobs_per_s=rate,
        ok_per_s=rate,
        lag_p99_s=lag_ms / 1e3,
        own_lag_p99_s=lag_ms / 1e3,
        **fields,  # type: ignore[arg-type]
    )


def test_recommend_smallest_reaching_95_percent_of_the_best_within_the_lag_bound() -> None:
    steps = [
        step(10, 1000),
        step(100, 9600),
        step(1000, 10_000, lag_ms=20),
        step(10_000, 12_000, lag_ms=300),  # faster, but the loop runs 300 ms late
    ]
    rec = recommend(steps, max_lag=0.05)
    assert rec.max_workers == 100
    assert rec.best_max_workers == 1000
    assert rec.excluded_for_lag == (10_000,)
    assert rec.littles_law_workers == pytest.approx(10_000 * 0.01)
    text = rec.text()
    assert text.startswith("Recommendation: max_workers = 100")
    assert "Little's law" in text
    assert "10000 (300 ms)" in text.replace(",", "")


def test_recommend_corrects_for_cpu_time_other_processes_took() -> None:
    # max_workers=100 ran while another process held the CPU half the time.
    steps = [step(10, 1000), step(100, 5000, cpu_wait_pct=50.0), step(200, 10_000)]
    assert recommend(steps, max_lag=0.05).max_workers == 100
    assert recommend(steps, max_lag=0.05, correct_rate=False).max_workers == 200


def test_recommend_none_when_every_step_lags_or_failed() -> None:
    rec = recommend([step(10, 1000, lag_ms=80), step(100, 2000, lag_ms=90)], max_lag=0.05)
    assert rec.max_workers is None
    assert "loop lag p99 was over" in rec.text()
    rec = recommend([StepResult(max_workers=10, error="boom")], max_lag=0.05)
    assert rec.max_workers is None
    assert "boom" in rec.text()


def test_recommend_none_when_no_job_succeeded() -> None:
    dead = [
        dataclasses.replace(step(w, 500), ok_per_s=0.0, failed=500, failure_kinds={"HTTP 503": 500})
        for w in (1, 10)
    ]
    rec = recommend(dead, max_lag=0.05)
    assert rec.max_workers is None
    assert "no job succeeded" in rec.text()
    assert "HTTP 503 (1,000)" in rec.text()


def test_recommend_says_when_no_job_ended_in_time() -> None:
    rec = recommend([StepResult(max_workers=5, cut=5)], max_lag=0.05)
    assert rec.max_workers is None
    assert "--job-timeout" in rec.text()


def test_recommend_says_when_throughput_still_rises_at_the_top() -> None:
    rec = recommend([step(10, 1000), step(100, 10_000)], max_lag=0.05)
    assert rec.max_workers == 100
    assert "sweep higher" in rec.text()


# --------------------------------------------------------------------- sweeps


def test_small_synthetic_sweep_prints_table_and_writes_csv_json_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    out = {ext: tmp_path / f"plan.{ext}" for ext in ("csv", "json", "png")}
    status = plan(
        [
            "--latency=20ms",
            "--jitter=20%",
            "--cpu-us=50",
            "--fail-rate=0.05",
            "--max-workers=1,4,16",
            "--duration=0.4s",
            f"--csv={out['csv']}",
            f"--json={out['json']}",
            f"--plot={out['png']}",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    rows = table_rows(printed)
    assert sorted(rows) == [1, 4, 16]
    jobs_per_s = {w: float(cells[1].replace(",", "")) for w, cells in rows.items()}
    assert jobs_per_s[1] < jobs_per_s[4] < jobs_per_s[16]  # latency-bound: more is faster
    assert re.search(r"^Recommendation: max_workers = (1|4|16)$", printed, re.M)
    assert "Little's law" in printed

    with out["csv"].open() as f:
        records = list(csv.DictReader(f))
    assert [int(r["max_workers"]) for r in records] == [1, 4, 16]
    for r in records:
        for field in ("jobs_per_s", "latency_p99_ms", "cpu_pct", "peak_rss_mb", "lag_p99_ms"):
            assert float(r[field]) > 0, (field, r)
        assert float(r["latency_p50_ms"]) >= 16  # 20 ms ± 20 %
        assert r["error"] == ""
    data = json.loads(out["json"].read_text())
    assert [s["max_workers"] for s in data["steps"]] == [1, 4, 16]
    assert data["recommendation"]["max_workers"] in (1, 4, 16)
    assert data["recommendation"]["text"].startswith("Recommendation:")
    assert data["machine"]["cpus"] >= 1
    assert sum(s["failed"] for s in data["steps"]) > 0  # 5 % of the jobs fail
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sharded_synthetic_sweep_has_a_shards_column_and_a_recommendation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psutil")
    out = {ext: tmp_path / f"plan.{ext}" for ext in ("csv", "json")}
    status = plan(
        [
            "--shards=2",
            "--latency=20ms",
            "--fail-rate=0.05",
            "--max-workers=10,50",
            "--duration=1s",
            f"--csv={out['csv']}",
            f"--json={out['json']}",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "max_workers (per shard)" in printed
    lines = printed.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["max_workers", "shards", "jobs/s"]
    )
    rows = {int(line.split()[0]): line.split() for line in lines[start + 1 : start + 3]}
    assert sorted(rows) == [10, 50]
    assert all(cells[1] == "2" for cells in rows.values())
    assert re.search(r"^Recommendation: max_workers = (10|50)$", printed, re.M)
    assert "ShardedExecutor(shards=2, max_workers=" in printed

    with out["csv"].open() as f:
        records = list(csv.DictReader(f))
    assert [(int(r["max_workers"]), int(r["shards"])) for r in records] == [(10, 2), (50, 2)]
    for r in records:
        assert r["error"] == ""
        assert float(r["jobs_per_s"]) > 0
        assert float(r["latency_p50_ms"]) >= 16  # 20 ms ± 20 %
        # The shards' CPU counts: they burn each job's 200 µs.
        assert 0 < float(r["shard_cpu_pct"]) <= float(r["cpu_pct"])
        assert float(r["shard_peak_rss_mb"]) > 0
    data = json.loads(out["json"].read_text())
    assert data["config"]["shards"] == 2
    assert [(s["max_workers"], s["shards"]) for s in data["steps"]] == [(10, 2), (50, 2)]
    assert data["recommendation"]["max_workers"] in (10, 50)
    assert sum(s["failed"] for s in data["steps"]) > 0  # 5 % fail, in the shards
    assert all(set(s["failure_kinds"]) <= {"SyntheticFailure"} for s in data["steps"])


def test_recommendation_lands_where_the_cpu_saturates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 10 ms of waiting and 100 µs of CPU per job: one core does at most ~10,000 jobs/s
    # (less the executor's and the loop's own cost per job), which W workers reach when
    # W / 10.1 ms = 10,000/s, so at W ~ 100.  Past that every extra worker only queues
    # for the CPU, and every timer waits behind the queue: ~300 extra workers x ~115 µs
    # is ~35 ms of loop lag at W=400.  The lag bound of 25 ms (2.5 job latencies) says
    # "saturated" there; throughput alone cannot, as the loop still gains a few percent
    # per doubling past the knee by doing more callbacks per iteration.  Each step runs
    # twice and keeps its faster run, and the planner corrects throughput and lag for
    # the time other processes held the CPU, so a busy machine cannot move the answer.
    status = plan(
        [
            "--latency=10ms",
            "--jitter=0",
            "--cpu-us=100",
            "--fail-rate=0",
            "--max-workers=10,25,50,100,200,400,800",
            "--duration=0.8s",
            "--repeat=2",
            "--max-lag=25ms",
            f"--json={tmp_path / 'plan.json'}",
            "--csv=",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    chosen = json.loads((tmp_path / "plan.json").read_text())["recommendation"]["max_workers"]
    assert 50 <= chosen <= 200, printed


def test_user_job_function_over_an_args_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plan_user_jobs.py").write_text(
        "import asyncio\n\n"
        "async def work(line):\n"
        "    await asyncio.sleep(0.005)\n"
        "    if line == 'bad':\n"
        "        raise ValueError(line)\n"
        "    print('job output goes to stderr, not into the table')\n"
    )
    (tmp_path / "args.txt").write_text("a\nb\n\nbad\nc\n")
    monkeypatch.chdir(tmp_path)
    status = plan(
        [
            "--job=plan_user_jobs:work",
            "--args-file=args.txt",
            "--max-workers=1,8",
            "--duration=0.4s",
            "--json=plan.json",
            "--csv=",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert sorted(table_rows(printed)) == [1, 8]
    steps = json.loads((tmp_path / "plan.json").read_text())["steps"]
    for s in steps:
        assert s["error"] is None
        assert s["jobs"] > 0
        # one line in four is 'bad'
        assert s["failure_kinds"].get("ValueError", 0) == pytest.approx(s["jobs"] / 4, rel=0.3)


# --------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--job", "no_such_module_here:fn"], r"--job: .*cannot import 'no_such_module_here'"),
        (["--job", "os.path"], r"--job: .*not of the form package\.module:function"),
        (["--job", "os:no_such_function"], r"--job: .*has no attribute 'no_such_function'"),
        (["--latency", "fast"], r"argument --latency: 'fast' is not a duration"),
        (["--max-workers", ""], r"argument --max-workers/-w: '' is an empty list"),
        (["--max-workers", "10,x"], r"'x' is not a whole number of workers"),
        (["--jitter", "150%"], r"argument --jitter: .*between 0 and 1"),
        (["--url", "http://127.0.0.1:1/", "--latency", "5ms"], r"--latency applies to the"),
        (["--url", "http://192.0.2.1/"], r"--url: .*not on this machine.*--allow-remote"),
        (["--args-file", "x.txt"], r"--args-file goes with --job"),
        (["--duration", "1s", "--warmup", "2s"], r"--warmup must be shorter than --duration"),
        (["--shards", "0"], r"argument --shards: '0' must be greater than 0"),
        (["--shards", "1.5"], r"argument --shards: '1.5' is not a whole number"),
        (["--shards", "two"], r"argument --shards: 'two' is not a whole number"),
        (["--url", "http://127.0.0.1:1/", "--shards", "2"], r"--url cannot run in shards"),
        (["--job", "os:getcwd", "--shards", "2"], r"--job: .*not a coroutine function"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plan(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("coroexecutor-plan: error: ")
    assert re.search(message, lines[0]), lines[0]


def test_empty_args_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    assert plan(["--job", "asyncio:sleep", "--args-file", str(tmp_path / "empty.txt")]) == 2
    assert re.fullmatch(
        r"coroexecutor-plan: error: --args-file: .*no arguments.*\n", capsys.readouterr().err
    )


def test_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(plan_cli, "_installed", lambda module: module != "matplotlib")
    assert plan(["--plot", "out.png"]) == 2
    assert capsys.readouterr().err == (
        "coroexecutor-plan: error: --plot needs matplotlib: pip install 'coroexecutor[plot]'\n"
    )
    monkeypatch.setattr(plan_cli, "_installed", lambda module: module != "aiohttp")
    assert plan(["--url", "http://127.0.0.1:1/"]) == 2
    assert "pip install 'coroexecutor[http]'" in capsys.readouterr().err


def test_command_line_exit_status_and_one_line_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "coroexecutor.plan", "--latency", "soon"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "'soon' is not a duration" in proc.stderr


# --------------------------------------------------------------------- the scraper


@pytest.fixture
def scraper_server() -> Iterator[str]:
    """The scraper's test server on 127.0.0.1, a random port, for 60 s at most."""
    pytest.importorskip("aiohttp")
    proc = subprocess.Popen(
        [sys.executable, str(SCRAPER), "--serve-only", "--serve-for=60s", "--port=0"]
        + ["--server-latency=5ms", "--error-rate=0.02", "--hang-rate=0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert m, line
        yield m.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_plan_against_the_scraper_server(
    scraper_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = plan(
        [
            f"--url={scraper_server}/page/{{i}}",
            "--max-workers=1,16",
            "--duration=0.6s",
            "--job-timeout=2s",
            f"--json={tmp_path / 'plan.json'}",
            "--csv=",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    steps = json.loads((tmp_path / "plan.json").read_text())["steps"]
    assert [s["max_workers"] for s in steps] == [1, 16]
    assert all(s["error"] is None and s["jobs"] > 0 for s in steps)
    assert steps[1]["jobs_per_s"] > steps[0]["jobs_per_s"]
    assert steps[1]["latency_p50_s"] >= 0.002  # the server's lognormal delay, median 5 ms
    assert re.search(r"^Recommendation: max_workers = (1|16)$", printed, re.M)


def run_scraper(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("aiohttp")
    return subprocess.run(
        [sys.executable, str(SCRAPER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_scraper_end_to_end_one_line_per_url(tmp_path: Path) -> None:
    n = 400
    proc = run_scraper(
        f"--urls={n}",
        "--max-workers=50",
        "--timeout=1s",
        "--server-latency=5ms",
        "--error-rate=0.05",
        "--hang-rate=0.02",
        "--out=results.tsv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert len(lines) == n
    urls, statuses = [], []
    for line in lines:
        url, status, ms = line.split("\t")
        urls.append(url)
        statuses.append(status)
        assert float(ms) >= 0
    assert sorted(int(u.rsplit("/", 1)[1]) for u in urls) == list(range(n))  # each URL once
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    assert statuses.count("200") > n / 2  # (a busy machine may time out a few more)
    assert "503" in statuses  # the server's errors
    assert "timeout" in statuses  # its hangs, caught by the per-request timeout
    assert re.search(rf"{n} URLs in .* s .*ok.*timeouts", proc.stderr)


def test_scraper_per_host_finds_a_throttling_hosts_limit_and_finishes_every_url(
    tmp_path: Path,
) -> None:
    n = 1500
    proc = run_scraper(
        f"--urls={n}",
        "--hosts=3",
        "--throttle=4",
        "--per-host",
        "--max-workers=200",
        "--server-latency=10ms",
        "--error-rate=0",
        "--hang-rate=0",
        "--timeout=5s",
        "--out=results.tsv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert len(lines) == n  # every URL, once
    statuses = [line.split("\t")[1] for line in lines]
    assert statuses.count("200") >= n - 5, proc.stderr  # a 429 is retried, 8 times at most
    hosts = re.findall(
        r"^  (127\.0\.0\.1:\d+): .* limit found (\d+) \(real capacity: (.*)\)$", proc.stderr, re.M
    )
    assert len(hosts) == 3, proc.stderr
    throttled = [int(limit) for _, limit, real in hosts if real.startswith("429")]
    assert len(throttled) == 1 and 2 <= throttled[0] <= 8, proc.stderr  # its capacity is 4
    assert re.search(r"answers 429", proc.stderr)


def test_scraper_reads_urls_from_a_file_and_fetches_only_loopback(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text(
        "# paths are on the scraper's own server\n/a\n/b\n\n/c\nhttp://example.invalid/x\n"
    )
    proc = run_scraper(
        "--urls-file=urls.txt", "--format=jsonl", "--error-rate=0", "--hang-rate=0", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    results = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        results[record["url"].rsplit("/", 1)[1]] = record["status"]
    assert results == {"a": "200", "b": "200", "c": "200", "x": "refused"}
