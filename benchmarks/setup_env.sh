#!/usr/bin/env bash
# A separate benchmark environment (.benchvenv) with the peer packages; they are never project dependencies.
# The PyPI package "repsim" (an unrelated C++/Eigen CKA library) clashes with our import name, so it is
# installed into .benchvenv/peer_repsim and loaded under another name by benchmarks/peers.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .benchvenv/bin/python ] || python3 -m venv .benchvenv
.benchvenv/bin/python -m pip install --quiet -c constraints-cpu.txt -e . torch-cka pytorch-cka ckatorch rsatoolbox
[ -d .benchvenv/peer_repsim/repsim ] || .benchvenv/bin/python -m pip install --quiet --no-deps \
    --target .benchvenv/peer_repsim repsim
