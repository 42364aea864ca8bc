#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with its test extras.
# CPU machines use constraints-cpu.txt so pip never pulls CUDA wheels; set REPSIM_CONSTRAINTS=""
# to skip it on a GPU machine that already has a CUDA torch/torchvision in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONSTRAINTS=${REPSIM_CONSTRAINTS-constraints-cpu.txt}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.repsim-installed
want=$(cat pyproject.toml ${CONSTRAINTS:+"$CONSTRAINTS"} | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch, torchvision and timm in one resolver run, pinned, or pip fetches CUDA builds.
    .venv/bin/python -m pip install --quiet ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[test]"
    echo "$want" > "$stamp"
fi
