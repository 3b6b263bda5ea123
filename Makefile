# Two commands on a fresh machine: `make test` and `make bench`.  Both create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test lint typecheck unit matrix bench clean

$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## make test: lint, mypy --strict, the suite on asyncio + uvloop (+ eager factory on
## 3.12+) with asyncio debug on, then the same on every other Python >= 3.11 found.
test: lint typecheck unit matrix

lint: $(VENV)/.test-installed
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m ruff format --check src tests bench scripts

typecheck: $(VENV)/.test-installed
	$(PY) -m mypy

unit: $(VENV)/.test-installed
	PYTHONASYNCIODEBUG=1 $(PY) -m pytest -p no:cacheprovider

matrix: $(VENV)/.test-installed
	PYTHON=$(PY) bash scripts/test-matrix.sh

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .ruff_cache .pytest_cache build dist
