#!/usr/bin/env bash
# Set up (or reuse) the environment and run the main job: CL, NSCL, SupCon, CE and the balanced
# loss trained in lockstep on the embedded digits data, with alignment tracked against CL.
# Extra arguments go to `python -m zoo train` (e.g. --epochs 20).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
.venv/bin/python -m zoo train --data digits --out results/digits "$@"
