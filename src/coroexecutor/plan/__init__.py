"""Capacity planning for ``max_workers``: ``python -m coroexecutor.plan`` (``coroexecutor-plan``).

Sweeps ``max_workers`` over a list for a synthetic job, your own coroutine function or an
HTTP URL; measures throughput, job latency, CPU, peak RSS, event-loop lag and failures
at each, each step in a fresh process; prints a table, writes CSV, JSON and a chart, and
recommends the smallest ``max_workers`` that reaches 95 % of the best throughput while
the loop lag p99 stays under a bound.  It uses only coroexecutor's public API.
"""

from ._cli import main
from ._model import StepConfig, StepResult
from ._recommend import Recommendation, recommend

__all__ = ("Recommendation", "StepConfig", "StepResult", "main", "recommend")
