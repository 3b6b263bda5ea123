"""The pass/fail logic of ``bench/check.py`` (``make bench-check``), on fake measurements.

No timing: every measurement here is made up, so these tests take milliseconds and can
run in the normal suite (the file only needs ``bench`` importable from the repo root).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from bench import check
from bench.check import Ratios, Verdict

THRESHOLDS: Ratios = {
    "asyncio": {
        "submit/floor": 8.0,
        "map/floor": 10.0,
        "sleep0/bare-sleep0": 2.0,
        "sleep0/taskgroup": 1.2,
        "sleep10ms-w10000/taskgroup": 1.6,
        "parked/taskgroup": 3.0,
        "parked-bytes/taskgroup": 2.4,
    },
    "uvloop": {
        "submit/floor": 9.0,
        "map/floor": 11.0,
        "sleep0/bare-sleep0": 2.5,
        "sleep0/taskgroup": 1.1,
        "sleep10ms-w10000/taskgroup": 2.0,
        "parked/taskgroup": 3.2,
        "parked-bytes/taskgroup": 2.5,
    },
}
GOOD: Ratios = {
    "asyncio": {
        "submit/floor": 5.0,
        "map/floor": 6.5,
        "sleep0/bare-sleep0": 1.2,
        "sleep0/taskgroup": 0.6,
        "sleep10ms-w10000/taskgroup": 1.1,
        "parked/taskgroup": 2.0,
        "parked-bytes/taskgroup": 1.6,
    },
    "uvloop": {
        "submit/floor": 5.5,
        "map/floor": 7.0,
        "sleep0/bare-sleep0": 1.5,
        "sleep0/taskgroup": 0.7,
        "sleep10ms-w10000/taskgroup": 1.3,
        "parked/taskgroup": 2.1,
        "parked-bytes/taskgroup": 1.6,
    },
}
PER_LOOP = len(check.RATIOS)


def with_value(base: Ratios, loop: str, name: str, value: float) -> Ratios:
    out = {lp: dict(v) for lp, v in base.items()}
    out[loop][name] = value
    return out


class FakeMeasure:
    """Returns the queued results in turn (only the loops asked for); records the calls."""

    def __init__(self, *results: Ratios) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, loops: tuple[str, ...]) -> Ratios:
        self.calls.append(loops)
        result = self.results.pop(0)
        return {loop: result[loop] for loop in loops}


LOOPS = ("asyncio", "uvloop")


# --------------------------------------------------------------------------- judge


def test_judge_at_threshold_passes_and_above_fails() -> None:
    measured = with_value(GOOD, "asyncio", "submit/floor", 8.0)
    measured = with_value(measured, "uvloop", "map/floor", 11.01)
    verdicts = check.judge(measured, THRESHOLDS)
    assert [(v.loop, v.ratio) for v in check.failed(verdicts)] == [("uvloop", "map/floor")]
    assert len(verdicts) == 2 * PER_LOOP
    assert [v.loop for v in verdicts] == ["asyncio"] * PER_LOOP + ["uvloop"] * PER_LOOP
    assert [v.ratio for v in verdicts[:PER_LOOP]] == list(check.RATIOS)


def test_ratio_without_threshold_is_not_judged() -> None:
    verdicts = check.judge(GOOD, {"asyncio": THRESHOLDS["asyncio"]})
    uv = [v for v in verdicts if v.loop == "uvloop"]
    assert len(uv) == PER_LOOP
    assert all(v.threshold is None and v.ok for v in uv)


# --------------------------------------------------------------------------- run_check


def test_pass_measures_once() -> None:
    measure = FakeMeasure(GOOD)
    status, verdicts = check.run_check(measure, THRESHOLDS, LOOPS)
    assert status == 0
    assert measure.calls == [LOOPS]
    assert all(v.ok for v in verdicts)


def test_noise_on_first_measurement_is_forgiven() -> None:
    noisy = with_value(GOOD, "uvloop", "submit/floor", 20.0)
    measure = FakeMeasure(noisy, GOOD)
    logged: list[str] = []
    status, verdicts = check.run_check(measure, THRESHOLDS, LOOPS, log=logged.append)
    assert status == 0
    assert measure.calls == [LOOPS, ("uvloop",)]  # only the failing loop again
    assert "uvloop submit/floor" in logged[0]
    (v,) = [v for v in verdicts if (v.loop, v.ratio) == ("uvloop", "submit/floor")]
    assert v.value == GOOD["uvloop"]["submit/floor"]


def test_regression_in_both_measurements_fails() -> None:
    slow = with_value(GOOD, "asyncio", "map/floor", 13.0)
    slower = with_value(GOOD, "asyncio", "map/floor", 14.0)
    measure = FakeMeasure(slow, slower)
    status, verdicts = check.run_check(measure, THRESHOLDS, LOOPS)
    assert status == 1
    assert measure.calls == [LOOPS, ("asyncio",)]
    bad = check.failed(verdicts)
    assert [(v.loop, v.ratio, v.value) for v in bad] == [("asyncio", "map/floor", 13.0)]
    message = check.failure_message(bad)
    assert "asyncio map/floor = 13.000 > threshold 10.000" in message


def test_no_retry_fails_at_once() -> None:
    measure = FakeMeasure(with_value(GOOD, "asyncio", "sleep0/bare-sleep0", 3.0))
    status, _ = check.run_check(measure, THRESHOLDS, LOOPS, retry=False)
    assert status == 1
    assert measure.calls == [LOOPS]


def test_combine_keeps_the_lower_of_two_measurements() -> None:
    first = {"asyncio": {"submit/floor": 9.0, "map/floor": 6.0}, "uvloop": {"map/floor": 7.0}}
    second = {"asyncio": {"submit/floor": 7.0, "map/floor": 6.5}}
    assert check.combine(first, second) == {
        "asyncio": {"submit/floor": 7.0, "map/floor": 6.0},
        "uvloop": {"map/floor": 7.0},
    }


# --------------------------------------------------------------------------- thresholds


def test_make_thresholds_applies_the_margin() -> None:
    got = check.make_thresholds({"asyncio": {"submit/floor": 5.0, "map/floor": 1.234}}, 1.6)
    assert got == {"asyncio": {"submit/floor": 8.0, "map/floor": 1.97}}
    with pytest.raises(ValueError, match="margin"):
        check.make_thresholds(GOOD, 1.0)


def test_a_2x_regression_fails_against_fresh_thresholds() -> None:
    # What the margin is for: thresholds from a measurement, then everything twice as slow.
    thresholds = check.make_thresholds(GOOD, check.DEFAULT_MARGIN)
    doubled = {lp: {k: v * 2 for k, v in r.items()} for lp, r in GOOD.items()}
    assert check.run_check(FakeMeasure(GOOD), thresholds, LOOPS)[0] == 0
    assert check.run_check(FakeMeasure(doubled, doubled), thresholds, LOOPS)[0] == 1


def test_load_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"comment": "x", "thresholds": THRESHOLDS}))
    assert check.load_thresholds(path) == THRESHOLDS
    for bad, why in (
        ({"comment": "no table"}, "no 'thresholds' object"),
        ({"thresholds": {"asyncio": {"submit/flor": 2.0}}}, "unknown ratio 'submit/flor'"),
        ({"thresholds": {"asyncio": {"submit/floor": -1}}}, "must be a positive number"),
        ({"thresholds": {"asyncio": {"submit/floor": True}}}, "must be a positive number"),
        ({"thresholds": {"asyncio": 3}}, "is not an object"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=why):
            check.load_thresholds(path)


def test_the_committed_thresholds_file_is_valid() -> None:
    table = check.load_thresholds(check.THRESHOLDS)
    assert set(table) == set(check.LOOPS)
    for values in table.values():
        assert set(values) == set(check.RATIOS)
    doc = json.loads(check.THRESHOLDS.read_text())
    assert doc["comment"]


# --------------------------------------------------------------------------- what is measured


def test_every_kind_is_in_a_ratio_and_every_ratio_has_its_kinds() -> None:
    used = {kind for pair in check.RATIOS.values() for kind in pair}
    assert used == set(check.KINDS)
    assert set(check.MEMORY_KINDS) <= set(check.KINDS)
    # Memory is only ever compared with memory.
    for num, den in check.RATIOS.values():
        assert (num in check.MEMORY_KINDS) == (den in check.MEMORY_KINDS)


def test_jobs_per_measurement() -> None:
    n = check.DEFAULT_N
    assert check.jobs_of("floor", n) == n * check.FLOOR_SCALE
    assert check.jobs_of("submit", n) == n
    assert check.jobs_of("tg-sleep0", n) == check.jobs_of("sleep0", n) == n // 2
    for kind in ("sleep10ms", "tg-sleep10ms"):
        assert check.jobs_of(kind, n) % check.SLEEP10MS_WORKERS == 0
        assert check.jobs_of(kind, check.WORKERS) == check.SLEEP10MS_WORKERS  # one round
    assert check.jobs_of("parked", n) == check.jobs_of("tg-parked", n) == n // 10
    assert check.jobs_of("parked-bytes", n) == check.jobs_of("tg-parked-bytes", n) == n // 40
    for kind in check.KINDS:
        assert check.jobs_of(kind, check.WORKERS) >= check.WORKERS


@pytest.mark.parametrize("slowdown_ns", [0, 1000])
def test_every_kind_really_runs(slowdown_ns: int) -> None:
    # The smallest real measurement of each kind (under a second in all): what bench-check
    # times must keep working as the engine changes, with and without the injected delay.
    # debug=False as bench-check runs it (make unit sets PYTHONASYNCIODEBUG, 30x slower).
    n = check.WORKERS
    with asyncio.Runner(debug=False) as runner:
        for kind in check.KINDS:
            total = runner.run(check.workload(kind, n, slowdown_ns)())
            assert total > 0, kind
            if kind in check.MEMORY_KINDS:
                assert 200 < total / check.jobs_of(kind, n) < 100_000, kind  # bytes per job


# --------------------------------------------------------------------------- main()


def fake_measurement(ratios: Ratios, n: int = 1000, repeat: int = 3) -> check.Measurement:
    """A Measurement whose per-repeat ratios are exactly ``ratios``."""
    loops = tuple(ratios)
    m = check.Measurement(loops, n, repeat, 0.0)
    for loop in loops:
        # Each denominator costs 1 (µs or byte) per job unless a ratio already fixed it
        # (sleep0 is over both bare-sleep0 and tg-sleep0).
        per_job: dict[str, float] = {}
        for name, (num, den) in check.RATIOS.items():
            r = ratios[loop][name]
            if num in per_job:
                assert den not in per_job
                per_job[den] = per_job[num] / r
            else:
                per_job[num] = per_job.setdefault(den, 1.0) * r
        assert set(per_job) == set(check.KINDS)
        m.totals[loop] = {
            kind: [value * check.jobs_of(kind, n)] * repeat for kind, value in per_job.items()
        }
    return m


def patch_measure(monkeypatch: pytest.MonkeyPatch, *results: Ratios) -> list[tuple[str, ...]]:
    """Make check.measure return fake measurements of ``results`` in turn; return its calls."""
    queue = list(results)
    calls: list[tuple[str, ...]] = []

    def measure(
        loops: tuple[str, ...], n: int, repeat: int, *_a: object, **_k: object
    ) -> check.Measurement:
        calls.append(loops)
        result = queue.pop(0)
        return fake_measurement({lp: result[lp] for lp in loops}, n, repeat)

    monkeypatch.setattr(check, "measure", measure)
    monkeypatch.setattr(check, "_import_ours", lambda: "(not imported: measure is faked)")
    return calls


def test_fake_measurement_round_trips() -> None:
    got = fake_measurement(GOOD).ratios()
    for loop in GOOD:
        for name, value in GOOD[loop].items():
            assert got[loop][name] == pytest.approx(value)


def test_main_update_then_pass_then_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "thresholds.json"
    args = ["--thresholds", str(path), "--loops", "asyncio", "--n", "1000"]

    patch_measure(monkeypatch, GOOD)
    assert check.main([*args, "--update", "--margin", "1.5"]) == 0
    doc = json.loads(path.read_text())
    expected = {name: round(value * 1.5, 2) for name, value in GOOD["asyncio"].items()}
    assert doc["thresholds"] == {"asyncio": expected}
    assert doc["thresholds"]["asyncio"]["parked-bytes/taskgroup"] == 2.4
    assert "margin of 1.5" in doc["comment"]

    calls = patch_measure(monkeypatch, GOOD)
    assert check.main(args) == 0
    assert calls == [("asyncio",)]
    assert "bench-check passed" in capsys.readouterr().out

    slow = with_value(GOOD, "asyncio", "submit/floor", 10.0)
    calls = patch_measure(monkeypatch, slow, slow)
    assert check.main(args) == 1
    assert calls == [("asyncio",), ("asyncio",)]
    out = capsys.readouterr().out
    assert "| asyncio | submit/floor | 10.000 |" in out
    assert "ROSE" in out
    assert "asyncio submit/floor = 10.000 > threshold 7.500" in out


def test_main_without_thresholds_file_is_an_error(tmp_path: Path) -> None:
    assert check.main(["--thresholds", str(tmp_path / "missing.json"), "--loops", "asyncio"]) == 2


def test_verdict_ok() -> None:
    assert Verdict("asyncio", "map/floor", 1.0, None).ok
    assert Verdict("asyncio", "map/floor", 1.0, 1.0).ok
    assert not Verdict("asyncio", "map/floor", 1.01, 1.0).ok


# --------------------------------------------------------------------------- bench.run's targets
# make bench's report (bench/run.py) judges bench/targets.json from a run's medians; these
# check that judgement on a made-up run.


def fake_run(medians: dict[tuple[str, str, str], dict[str, float]]) -> dict[str, object]:
    """A bench.run summary with these (workload, loop, contender) -> fields medians."""
    from bench import run

    workloads = sorted({w for w, _lp, _c in medians}, key=run.WORKLOADS.index)
    rows = []
    for (w, lp, c), fields in medians.items():
        row: dict[str, object] = {"workload": w, "loop": lp, "contender": c, "runs": 1}
        if fields:
            row.update(ok_runs=1, **fields)
        else:
            row.update(ok_runs=0, skipped=True, error="needs Python 3.13+")
        rows.append(row)
    return {
        "config": {
            "workloads": workloads,
            "loops": ["asyncio"],
            "contenders": list(run.C.DEFAULT_CONTENDERS),
            "n_per_workload": {w: run.workload_n(w, run.DEFAULT_N) for w in workloads},
            "workers_per_workload": {w: run.workload_workers(w) for w in workloads},
            "repeat_per_workload": dict.fromkeys(workloads, 1),
        },
        "machine": {"python": "3.11.7", "cpu_model": "cpu", "cpu_count": 2, "platform": "x"},
        "medians": rows,
        "runs": [],
        "duration_s": 1.0,
        "finished_at": "now",
    }


def test_the_committed_targets_file_is_valid() -> None:
    from bench import run

    targets = run.load_targets(run.TARGETS)
    assert targets
    known = set(run.C.DEFAULT_CONTENDERS) | {run.FASTEST_PEER}
    for t in targets:
        assert t["workload"] in run.WORKLOADS
        assert set(t["contenders"]) <= set(run.C.OURS_CONTENDERS)
        for key in run.COMPARISONS:
            assert t.get(key, "floor") in known
        assert "SPEC" not in t["text"]


def test_load_targets_refuses_a_malformed_target(tmp_path: Path) -> None:
    from bench import run

    path = tmp_path / "targets.json"
    good = {"text": "t", "workload": "noop", "contenders": ["coroexecutor-submit"]}
    for bad, why in (
        ({"targets": {}}, "no 'targets' list"),
        ({"targets": [{**good, "metric": "speed", "at_most": 1}]}, "unknown metric"),
        ({"targets": [{**good, "metric": "us_per_job"}]}, "exactly one of at_most"),
        (
            {
                "targets": [
                    {
                        **good,
                        "metric": "us_per_job",
                        "at_most": 1,
                        "ratio_to": "floor",
                        "speedup_over": "floor",
                    }
                ]
            },
            "at most one of",
        ),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=why):
            run.load_targets(path)


def test_targets_are_judged_met_missed_or_not_judged() -> None:
    from bench import run

    summary = fake_run(
        {
            ("noop", "asyncio", "floor"): {"us_per_job": 0.1},
            ("noop", "asyncio", "coroexecutor-submit"): {"us_per_job": 1.2, "wall_s": 0.04},
            ("noop", "asyncio", "semaphore-taskgroup"): {"us_per_job": 6.0},
            ("noop", "asyncio", "aiolibs-executor"): {},  # skipped: needs Python 3.13
            ("sleep0", "asyncio", "coroexecutor-submit"): {"us_per_job": 4.0},
            ("sleep0", "asyncio", "semaphore-taskgroup"): {"us_per_job": 5.0},
            ("sleep0", "asyncio", "asyncio-pool"): {"us_per_job": 3.0},
            ("parked", "asyncio", "coroexecutor-submit"): {"bytes_per_job": 1500.0},
            ("parked", "asyncio", "semaphore-taskgroup"): {"bytes_per_job": 1500.0},
        }
    )
    targets = [
        {
            "text": "abs",
            "workload": "noop",
            "contenders": ["coroexecutor-submit"],
            "metric": "us_per_job",
            "at_most": 0.6,
        },
        {
            "text": "speedup",
            "workload": "noop",
            "contenders": ["coroexecutor-submit"],
            "metric": "us_per_job",
            "speedup_over": "semaphore-taskgroup",
            "at_least": 4,
        },
        {
            "text": "peer skipped",
            "workload": "noop",
            "contenders": ["coroexecutor-submit"],
            "metric": "us_per_job",
            "speedup_over": "aiolibs-executor",
            "at_least": 1,
        },
        {
            "text": "10M",
            "workload": "noop",
            "contenders": ["coroexecutor-submit"],
            "metric": "wall_s",
            "at_most": 6,
            "min_n": 10_000_000,
        },
        {
            "text": "fastest",
            "workload": "sleep0",
            "contenders": ["coroexecutor-submit"],
            "metric": "us_per_job",
            "speedup_over": "fastest-peer",
            "at_least": 1,
        },
        {
            "text": "pct",
            "workload": "sleep0",
            "contenders": ["coroexecutor-submit"],
            "metric": "us_per_job",
            "pct_throughput_of": "semaphore-taskgroup",
            "at_least": 95,
        },
        {
            "text": "bytes",
            "workload": "parked",
            "contenders": ["coroexecutor-submit"],
            "metric": "bytes_per_job",
            "ratio_to": "semaphore-taskgroup",
            "at_most": 1,
        },
        {
            "text": "other loop",
            "workload": "noop",
            "contenders": ["coroexecutor-submit"],
            "loops": ["uvloop"],
            "metric": "us_per_job",
            "at_most": 1,
        },
        {
            "text": "not run",
            "workload": "sleep10ms-w1000",
            "contenders": ["coroexecutor-map"],
            "metric": "us_per_job",
            "at_most": 1,
        },
    ]
    got = {r.text: r for r in run.judge_targets(targets, summary)}
    assert set(got) == {"abs", "speedup", "peer skipped", "10M", "fastest", "pct", "bytes"}
    assert got["abs"].status == "missed"
    assert got["abs"].factor == pytest.approx(2.0)
    assert f"needs 2.00{run.X} better" in got["abs"].verdict
    assert got["speedup"].status == "met"  # 5x as fast, 4x wanted
    assert got["speedup"].factor == pytest.approx(0.8)
    assert got["peer skipped"].status == "not judged"
    assert "aiolibs-executor not measured: needs Python 3.13+" in got["peer skipped"].why
    assert got["10M"].status == "not judged"
    assert "make bench-10m" in got["10M"].why
    assert got["fastest"].status == "missed"  # asyncio-pool's 3.0 beats our 4.0
    assert "asyncio-pool" in got["fastest"].measured
    assert got["pct"].status == "met"  # 125 % of its throughput
    assert got["bytes"].status == "met"  # equal is within "no more than"

    report = run.markdown(summary, list(got.values()))
    lines = run.summary_lines(summary, list(got.values()))
    assert "SPEC" not in report
    assert any("3 met, 2 missed, of 5 judged; 2 not judged" in line for line in lines)
    assert "aiolibs-executor: needs Python 3.13+" in report  # named under "Not measured"
    assert "Exit status 0" in " ".join(run.exit_lines(run.RESULTS, 0, False))


def test_workloads_of_make_bench() -> None:
    from bench import run

    assert run.split_workloads("sleep10ms") == ("sleep10ms-w1000", "sleep10ms-w10000")
    assert run.split_workloads("parked,sleep10ms-w500") == ("parked", "sleep10ms-w500")
    assert run.workload_workers("sleep10ms-w500") == 500
    assert run.base_workload("sleep10ms-w500") == "sleep10ms"
    assert run.workload_n("sleep10ms-w10000", 30_000) == 50_000  # 5 rounds at least
    assert run.workload_n("sleep10ms-w1000", 30_000) == 20_000  # 20 rounds at most
    with pytest.raises(SystemExit, match="unknown workload"):
        run.split_workloads("sleep10")
