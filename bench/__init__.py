"""Benchmark harness for coroexecutor: `python -m bench.run` (see bench/README.md)."""
