#!/usr/bin/env bash
# Set up (or reuse) the environment, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
.venv/bin/python -m ruff check .
# the API reference is generated from the docstrings; --strict turns every warning into a failure
site=$(mktemp -d)
.venv/bin/python -m mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
# one worker per core (at most 4), each single-threaded (tests/conftest.py); worksteal rebalances the
# long example smokes
.venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal "$@"
