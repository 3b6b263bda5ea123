"""Parsing and printing of the planner's quantities: durations, shares, lists of counts."""

from __future__ import annotations

import math
import re

__all__ = (
    "format_count",
    "format_duration",
    "format_ms",
    "parse_duration",
    "parse_share",
    "parse_workers",
)

_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
    "m": 60.0,
    "min": 60.0,
}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*$")


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """'50ms' -> 0.05.  Units: ns, us (µs), ms, s, m; a bare number is seconds."""
    m = _DURATION.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a duration (try 50ms, 1.5s or 200us)")
    seconds = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{text!r}: the duration must be greater than 0")
    return seconds


def parse_share(text: str) -> float:
    """'20%' or '0.2' -> 0.2, a share between 0 and 1."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a share (try 20% or 0.2)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} is not between 0 and 1 (or 0% and 100%)")
    return value


def parse_workers(text: str) -> list[int]:
    """'1,10,100' (commas and/or spaces; 10k = 10000) -> [1, 10, 100], sorted, no repeats."""
    counts: set[int] = set()
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        p = part.lower().replace("_", "")
        scale = 1000 if p.endswith("k") else 1
        try:
            n = int(p[:-1] if scale > 1 else p) * scale
        except ValueError:
            raise ValueError(f"{part!r} is not a whole number of workers") from None
        if n <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {part!r}")
        counts.add(n)
    if not counts:
        raise ValueError(f"{text!r} is an empty list (try 1,10,100,1000)")
    return sorted(counts)


def _three_figures(x: float) -> str:
    """About three significant digits, thousands separated: 8312.4 -> '8,312',
    12.34 -> '12.3', 1.234 -> '1.23' (and 0.1234 -> '0.12')."""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def format_ms(seconds: float) -> str:
    """A time in milliseconds with three significant digits: 0.0123 -> '12.3'."""
    ms = seconds * 1e3
    if ms == 0:
        return "0"
    return _three_figures(ms) if ms >= 1 else f"{ms:.3f}"


def format_count(x: float) -> str:
    """A rate or count for people: 8312.4 -> '8,312', 12.34 -> '12.3'."""
    return _three_figures(x)


def format_duration(seconds: float) -> str:
    """A span for people: 125 -> '2 min 5 s', 0.25 -> '250 ms'."""
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
