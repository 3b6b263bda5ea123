# Two commands on a fresh machine: `make test` and `make bench`.  Both create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test test-all test-ray lint typecheck unit matrix wheel leakcheck bench bench-publish bench-10m bench-check bench-hotpaths bench-sharded soak clean

# What the compiled engine is built from: an editable install compiles it in place, and
# is redone when any of these change (a stale build is refused at import anyway).
ENGINE_SOURCES := setup.py src/coroexecutor/_engine.py src/coroexecutor/_engine.pxd

$(VENV)/.test-installed: pyproject.toml $(ENGINE_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench-installed: pyproject.toml $(ENGINE_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

## make test: lint, mypy --strict, the suite on asyncio + uvloop (+ eager factory on
## 3.12+) with asyncio debug on, on the compiled engine and again on the pure-Python
## one: everything, on the running Python (about 10 minutes).
test: lint typecheck unit

## make test-all: make test, then the matrix (CI runs both).
test-all: test matrix

lint: $(VENV)/.test-installed
	$(PY) -m ruff check setup.py noxfile.py src tests bench scripts examples
	$(PY) -m ruff format --check setup.py noxfile.py src tests bench scripts examples

typecheck: $(VENV)/.test-installed
	$(PY) -m mypy

# COROEXECUTOR_EXPECT_ENGINE makes the suite fail at once if the other engine loaded.
# The compiled engine's run is under -X dev (debug memory allocator hooks, asyncio debug,
# faulthandler): reference and memory errors in C code show there first.
unit: $(VENV)/.test-installed
	COROEXECUTOR_EXPECT_ENGINE=compiled COROEXECUTOR_PACKAGING_TESTS=1 PYTHONASYNCIODEBUG=1 \
		$(PY) -X dev -m pytest -p no:cacheprovider
	COROEXECUTOR_NO_EXTENSIONS=1 COROEXECUTOR_EXPECT_ENGINE=pure PYTHONASYNCIODEBUG=1 \
		$(PY) -m pytest -p no:cacheprovider

## make wheel: a wheel for the running Python, with the compiled engine, in dist/.
wheel: $(VENV)/.test-installed
	$(PY) -m build --wheel --outdir dist

## make matrix: the suite on every other Python >= 3.11 found, each with a compiled and a
## pure-Python build (nox, noxfile.py; a Python this machine lacks is reported skipped).
matrix: $(VENV)/.test-installed
	$(PY) -m nox --python $$($(PY) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; \
		print(*(p for p in ("3.11", "3.12", "3.13", "3.14") if p != v))')

## make bench: ShardedExecutor against one executor (about 30 s), then every contender x
## workload x loop, each in its own process (about 5 minutes), ending with a summary
## of the targets in bench/targets.json met and missed.  A report: exit 0 even when targets
## are missed.  Writes bench/results/local/ (untracked).  N=10000000 pushes ten million
## jobs; BENCH_ARGS passes more flags to bench.run.
N ?=
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed
	$(PY) -m bench.sharded
	$(PY) -m bench.run $(if $(N),--n $(N)) $(BENCH_ARGS)

## make bench-publish: the same, written to bench/results/ (committed: the README quotes it).
bench-publish: $(VENV)/.bench-installed
	$(PY) -m bench.sharded --out bench/results
	$(PY) -m bench.run --out bench/results $(if $(N),--n $(N)) $(BENCH_ARGS)

## make bench-sharded: one CoroutineExecutor against ShardedExecutor(shards=2).
bench-sharded: $(VENV)/.bench-installed
	$(PY) -m bench.sharded

bench-10m: $(VENV)/.bench-installed
	$(PY) -m bench.run --n 10000000 --workloads noop \
		--contenders floor,coroexecutor-submit,coroexecutor-map $(BENCH_ARGS)

## make bench-check: the regression guard (CI runs it, ~2 min).  Our cost per job over the
## floor's and over Semaphore + TaskGroup's (no-op and yield-once jobs, sleep(10 ms) at
## W=10,000, jobs all parked at once: time and bytes), measured side by side in one
## process, against bench/thresholds.json (fails on a ~1.5x rise).
BENCH_CHECK_ARGS ?=
bench-check: $(VENV)/.test-installed
	$(PY) -m bench.check $(BENCH_CHECK_ARGS)

## make bench-hotpaths: pytest-benchmark micro-benchmarks of the hot paths.
bench-hotpaths: $(VENV)/.bench-installed
	$(PY) -m pytest bench/test_hotpaths.py --benchmark-only -p no:cacheprovider

## make soak: ten million jobs with 1% failures and 1% cancellations, suppressed and then
## fail-fast, on both loops and both engines; prints the accounting and RSS every
## million (not in CI).
JOBS ?= 10000000
soak: $(VENV)/.test-installed
	$(PY) scripts/soak.py --jobs $(JOBS)
	$(PY) scripts/soak.py --jobs $(JOBS) --uvloop
	COROEXECUTOR_NO_EXTENSIONS=1 $(PY) scripts/soak.py --jobs $(JOBS)
	COROEXECUTOR_NO_EXTENSIONS=1 $(PY) scripts/soak.py --jobs $(JOBS) --uvloop

## make leakcheck: a million jobs of each kind (completed, failed, cancelled by handle,
## timed out) on each engine and loop: reference counts, traced memory and RSS must not
## grow (a few minutes; tests/test_leaks.py runs it with fewer jobs).
JOBS_PER_KIND ?= 1000000
leakcheck: $(VENV)/.test-installed
	for engine in "" 1; do for loop in "" --uvloop; do \
		COROEXECUTOR_NO_EXTENSIONS=$$engine $(PY) scripts/leakcheck.py --jobs $(JOBS_PER_KIND) $$loop \
		|| exit 1; done; done

## make test-ray: the ShardedExecutor suite and the contract suite on a local Ray instance,
## then a three-node Ray cluster on this machine with a node removed mid-run
## (installs ray, ~1 min).
test-ray: $(VENV)/.test-installed
	$(PY) -m pip install -q -e '.[ray]'
	$(PY) -m pytest -p no:cacheprovider tests/test_sharded_ray.py tests/test_sharded_ray_cluster.py

clean:
	rm -rf $(VENV) .nox .mypy_cache .ruff_cache .pytest_cache build dist
