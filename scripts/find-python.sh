#!/usr/bin/env bash
# Print the path of a Python interpreter of the given minor version (e.g. 3.12), from
# PATH or from pyenv; print nothing (exit 1) when the machine has none.
set -u
v="$1"
if command -v "python$v" >/dev/null 2>&1 && "python$v" -c 'import sys' >/dev/null 2>&1; then
  command -v "python$v"
  exit 0
fi
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for d in $(ls -d "$root/versions/$v".* 2>/dev/null | sort -V -r); do
    if [ -x "$d/bin/python$v" ]; then
      echo "$d/bin/python$v"
      exit 0
    fi
  done
fi
exit 1
