#!/usr/bin/env bash
# A separate benchmark environment (.benchvenv) with the peer packages; they are NEVER project dependencies.
#
# PyPI peers: rsatoolbox, dcor, ckatorch, torch-cka, pytorch-cka (imported as `cka`), and the PyPI "repsim"
# (an unrelated C++/Eigen CKA library whose import name clashes with ours: it goes to .benchvenv/peer_repsim
# and benchmarks/peers.py loads it under another name).
#
# GitHub peers (not on PyPI): pass a folder holding their source trees, one sub-folder each:
#     mkdir -p ~/peers && cd ~/peers
#     git clone https://github.com/mklabunde/resi resi
#     git clone https://github.com/ahwillia/netrep netrep
#     git clone https://github.com/moskomule/anatome anatome
#     git clone https://github.com/minyoungg/platonic-rep platonic-rep
#     bash benchmarks/setup_env.sh ~/peers          # or PEERS_DIR=~/peers bash benchmarks/setup_env.sh
# Without the folder only the PyPI peers are installed. The trees are copied to .benchvenv/peers/:
#   netrep, anatome: installed with --no-deps (their deps numpy/scipy/sklearn/tqdm/torch/torchvision are here);
#   platonic-rep: has no installable metrics module, so its root goes on sys.path through a .pth file
#     (metrics.py imports torchaudio only for edit-distance kNN; benchmarks/catalogue.py stubs it);
#   resi (ReSi): its package is also called "repsim", so it is NOT installed; benchmarks/catalogue.py runs it
#     in its own subprocess with .benchvenv/peers/resi first on sys.path. Its RTD, geometry score and IMD
#     need git-only packages (rtd, gs, msid) that are not installed: those rows are skipped.
# torch stays the CPU build pinned in constraints-cpu.txt (an unpinned torch pulls GB of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_DIR=${1:-${PEERS_DIR:-}}
VENV=.benchvenv
PIP=("$VENV/bin/python" -m pip install --quiet -c constraints-cpu.txt)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# torch first (pinned CPU), then the peers' own runtime needs, then the PyPI peers, then us.
"${PIP[@]}" torch torchvision numpy scipy scikit-learn tqdm loguru einops
"${PIP[@]}" rsatoolbox dcor ckatorch torch-cka pytorch-cka
"${PIP[@]}" --no-deps -e .
[ -d "$VENV/peer_repsim/repsim" ] || "$VENV/bin/python" -m pip install --quiet --no-deps \
    --target "$VENV/peer_repsim" repsim
if [ -n "$PEERS_DIR" ]; then
    mkdir -p "$VENV/peers"
    for name in resi netrep anatome platonic-rep; do
        [ -d "$PEERS_DIR/$name" ] || { echo "missing $PEERS_DIR/$name (see the git clone lines above)" >&2; exit 1; }
        rm -rf "${VENV:?}/peers/$name"
        cp -r "$PEERS_DIR/$name" "$VENV/peers/$name"
    done
    "${PIP[@]}" --no-deps "$VENV/peers/netrep" "$VENV/peers/anatome"
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$(pwd)/$VENV/peers/platonic-rep" > "$site/peer_platonic_rep.pth"
    touch "$VENV/.peers-ready"
fi
