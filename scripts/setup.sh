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
# reinstall when the dependencies or the set of top-level packages change (an editable install
# maps the packages that exist when it runs)
want=$( (cat pyproject.toml ${CONSTRAINTS:+"$CONSTRAINTS"}; ls -d */__init__.py) | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch, torchvision and timm in one resolver run, pinned, or pip fetches CUDA builds.
    .venv/bin/python -m pip install --quiet ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[test,topology]"
    echo "$want" > "$stamp"
fi
# Let plain `import torchvision` work even before `import repsim` (see repsim/_compat.py).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Loaded by path so that interpreter start-up imports neither repsim nor torch.
hook="$(pwd)/repsim/_import_hook.py"
echo "import importlib.util as u; s = u.spec_from_file_location('_repsim_import_hook', '$hook'); m = u.module_from_spec(s); s.loader.exec_module(m); m.install()" > "$site/repsim_torchvision_guard.pth"
