"""The pass/fail logic of ``bench/check.py`` (``make bench-check``), on fake measurements.

No timing: every measurement here is made up, so these tests take milliseconds and can
run in the normal suite (the file only needs ``bench`` importable from the repo root).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench import check
from bench.check import Ratios, Verdict

THRESHOLDS: Ratios = {
    "asyncio": {"submit/floor": 8.0, "map/floor": 10.0, "sleep0/bare-sleep0": 2.0},
    "uvloop": {"submit/floor": 9.0, "map/floor": 11.0, "sleep0/bare-sleep0": 2.5},
}
GOOD: Ratios = {
    "asyncio": {"submit/floor": 5.0, "map/floor": 6.5, "sleep0/bare-sleep0": 1.2},
    "uvloop": {"submit/floor": 5.5, "map/floor": 7.0, "sleep0/bare-sleep0": 1.5},
}


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
    assert len(verdicts) == 6
    assert [v.loop for v in verdicts] == ["asyncio"] * 3 + ["uvloop"] * 3
    assert [v.ratio for v in verdicts[:3]] == list(check.RATIOS)


def test_ratio_without_threshold_is_not_judged() -> None:
    verdicts = check.judge(GOOD, {"asyncio": THRESHOLDS["asyncio"]})
    uv = [v for v in verdicts if v.loop == "uvloop"]
    assert len(uv) == 3
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


# --------------------------------------------------------------------------- main()


def fake_measurement(ratios: Ratios, n: int = 1000, repeat: int = 3) -> check.Measurement:
    """A Measurement whose per-repeat ratios are exactly ``ratios``."""
    loops = tuple(ratios)
    m = check.Measurement(loops, n, repeat, 0.0)
    floor_us, bare_us = 0.1, 1.0  # µs per job of the two floors
    for loop in loops:
        r = ratios[loop]
        per_job = {
            "floor": floor_us,
            "submit": floor_us * r["submit/floor"],
            "map": floor_us * r["map/floor"],
            "bare-sleep0": bare_us,
            "sleep0": bare_us * r["sleep0/bare-sleep0"],
        }
        m.seconds[loop] = {
            kind: [us * 1e-6 * check.jobs_of(kind, n)] * repeat for kind, us in per_job.items()
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
    expected = {"submit/floor": 7.5, "map/floor": 9.75, "sleep0/bare-sleep0": 1.8}
    assert doc["thresholds"] == {"asyncio": expected}
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
