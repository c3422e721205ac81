#!/usr/bin/env bash
# A digest of the code a GPU run measures and tests (sources, tests, build files, names and
# contents, local changes included, git or not): the key of make gpu-check's state and of
# make gpu-session's benchmark record, so that a later call resumes only the same code's work.
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=()
for d in csrc fusedrnn bench tools tests; do [ -d "$d" ] && dirs+=("$d"); done
files=()
for f in setup.py pyproject.toml setup.cfg Makefile CMakeLists.txt; do [ -f "$f" ] && files+=("$f"); done
{
  find "${dirs[@]}" -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \
    -o -name '*.sh' -o -name '*.cmake' -o -name '*.txt' \) -not -path '*/results/*' -not -path '*/__pycache__/*' -print0
  printf '%s\0' "${files[@]}"
} | LC_ALL=C sort -z | xargs -0 sha1sum | sha1sum | cut -c1-12
