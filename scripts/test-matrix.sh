#!/usr/bin/env bash
# Run the test suite on every other Python from 3.11 up that this machine has, each in
# its own venv (.venv-3.X).  The default interpreter's run is done by `make test`.
# Each runs the suite twice: on the compiled engine and on the pure-Python one.
# Says plainly which interpreter it skipped and why.
set -eu
default=$("${PYTHON:-python3}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
status=0
for v in 3.11 3.12 3.13 3.14; do
  [ "$v" = "$default" ] && continue
  if ! py=$(bash scripts/find-python.sh "$v"); then
    echo "matrix: SKIPPED Python $v (not installed on this machine)"
    continue
  fi
  venv=".venv-$v"
  stale=0
  for f in pyproject.toml ${ENGINE_SOURCES:?the Makefile passes ENGINE_SOURCES}; do
    if [ "$f" -nt "$venv/.installed" ]; then stale=1; fi
  done
  if [ ! -f "$venv/.installed" ] || [ $stale = 1 ]; then
    echo "matrix: creating $venv with $py"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e '.[test]'
    touch "$venv/.installed"
  fi
  echo "matrix: Python $v ($("$venv/bin/python" -V 2>&1))"
  # The whole suite on the compiled engine, then on the pure-Python one.
  COROEXECUTOR_EXPECT_ENGINE=compiled "$venv/bin/python" -m pytest -q -p no:cacheprovider || status=1
  COROEXECUTOR_NO_EXTENSIONS=1 COROEXECUTOR_EXPECT_ENGINE=pure \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider || status=1
done
exit $status
