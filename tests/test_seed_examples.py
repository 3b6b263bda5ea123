"""Every example of the user's original description, as written there (indentation
restored), run on every loop.  The last one called submit() without await; it is
corrected here and in the README."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from coroexecutor import CoroutineExecutor


def test_seed_example_submit_two_jobs(run, capsys: pytest.CaptureFixture[str]) -> None:
    async def f(dt: float, msg: str = "") -> None:
        await asyncio.sleep(dt)
        print(f"completion message: {msg}")

    async def main() -> None:
        async with CoroutineExecutor(max_workers=10) as exe:
            t1 = await exe.submit(f, 0.01, msg="task 1")
            t2 = await exe.submit(f, 0.05, msg="task 2")
        assert t1.done()
        assert t2.done()

    run(main())
    assert capsys.readouterr().out == "completion message: task 1\ncompletion message: task 2\n"


def test_seed_example_await_submit(run, capsys: pytest.CaptureFixture[str]) -> None:
    async def f() -> None:
        print("hi!")

    async def main() -> None:
        async with CoroutineExecutor(max_workers=10) as exe:
            t1 = await exe.submit(f)
        assert t1.done()

    run(main())
    assert capsys.readouterr().out == "hi!\n"


def _urls(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "urls.txt"
    path.write_text("".join(f"http://example.invalid/{i}\n" for i in range(n)))
    return path


def test_seed_example_url_fetcher_handles_its_own_errors(run, tmp_path: Path) -> None:
    # The seed's aiohttp scraper, with the network call replaced by a local stand-in
    # that sometimes fails: the job handles its errors, so nothing shuts down.
    urls = _urls(tmp_path, 300)
    fetched: list[str] = []
    problems: list[str] = []

    async def get(url: str) -> str:
        await asyncio.sleep(0.001)
        if url.endswith("7\n"):
            raise ConnectionError(url)
        return f"body of {url.strip()}"

    async def fetch(url: str) -> None:
        try:
            fetched.append(await get(url))
        except Exception:
            problems.append(url)

    async def main() -> None:
        async with CoroutineExecutor(max_workers=100) as exe:
            with open(urls) as f:
                for line in f:
                    await exe.submit(fetch, line)

    run(main())
    assert len(fetched) + len(problems) == 300
    assert len(problems) == 30


def test_seed_example_suppress_task_errors(run, tmp_path: Path) -> None:
    urls = _urls(tmp_path, 100)
    ok: list[str] = []

    async def naive_fetch(url: str) -> None:
        await asyncio.sleep(0.001)
        if url.endswith("3\n"):
            raise ConnectionError(url)  # no error handling in the job
        ok.append(url)

    async def main() -> None:
        async with CoroutineExecutor(max_workers=10000, suppress_task_errors=True) as exe:
            with open(urls) as f:
                for line in f:
                    await exe.submit(naive_fetch, line)

    run(main())
    assert len(ok) == 90


def test_seed_example_map(run) -> None:
    times = [0.01, 0.02, 0.03]

    async def f(dt: float) -> float:
        await asyncio.sleep(dt)
        return dt

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            results = exe.map(f, times)
            assert [v async for v in results] == times

    run(main())


def test_seed_example_map_error_keeps_partial_results(run) -> None:
    times = [0.01, 0.02, 0.1, 0.2]
    results: list[float] = []

    async def f(dt: float) -> float:
        await asyncio.sleep(dt)
        if dt == 0.1:
            raise Exception("oh noes")
        return dt

    async def main() -> None:
        async with CoroutineExecutor() as exe:
            async for r in exe.map(f, times):
                results.append(r)

    with pytest.raises(Exception, match="oh noes"):
        run(main())
    assert results == [0.01, 0.02]


def test_seed_example_producers_share_the_executor_and_its_timeout(run) -> None:
    # The seed wrote executor.submit(...) without await: a coroutine never awaited,
    # so no job would run.  Corrected with await.  Its random delays are up to 1 s
    # against a 0.5 s timeout, so the timeout fires and cancels what is left.
    rng = random.Random(7)
    started: list[float] = []

    async def f(dt: float) -> None:
        started.append(dt)
        await asyncio.sleep(dt)

    async def producer1(executor: CoroutineExecutor) -> None:
        await executor.submit(f, rng.random())
        await executor.submit(f, rng.random())
        await executor.submit(f, rng.random())

    async def producer2(executor: CoroutineExecutor) -> None:
        await executor.submit(f, rng.random())
        await executor.submit(f, rng.random())
        await executor.submit(f, rng.random())

    async def main() -> None:
        async with CoroutineExecutor(timeout=0.5) as executor:
            await executor.submit(f, rng.random())
            await executor.submit(f, rng.random())
            await executor.submit(f, rng.random())
            await executor.submit(producer1, executor)
            await executor.submit(producer2, executor)

    with pytest.raises(TimeoutError):
        run(main())
    assert len(started) == 9  # the producers' jobs ran under the same executor


def test_seed_example_producers_finish_within_the_timeout(run) -> None:
    async def f(dt: float) -> None:
        await asyncio.sleep(dt)

    async def producer(executor: CoroutineExecutor) -> None:
        for _ in range(3):
            await executor.submit(f, 0.01)

    async def main() -> None:
        async with CoroutineExecutor(timeout=5) as executor:
            for _ in range(3):
                await executor.submit(f, 0.01)
            await executor.submit(producer, executor)
            await executor.submit(producer, executor)

    run(main())
