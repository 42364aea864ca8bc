#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with its test extras.
# CPU machines use constraints-cpu.txt so pip never pulls CUDA wheels; set REPSIM_CONSTRAINTS=""
# to skip it on a GPU machine that already has a CUDA torch/torchvision in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONSTRAINTS=${REPSIM_CONSTRAINTS-constraints-cpu.txt}
log=.venv-install.log  # pip's output goes here; shown only when the install fails
quietly() {  # run a step with its output captured; on failure print the log and stop
    if ! "$@" >>"$log" 2>&1; then
        echo "repsim setup failed; the installer's output follows (also in $log):" >&2
        cat "$log" >&2
        exit 1
    fi
}
if [ ! -x .venv/bin/python ]; then
    : >"$log"
    quietly "$PY" -m venv .venv
fi
stamp=.venv/.repsim-installed
# reinstall when the dependencies or the set of top-level packages change (an editable install
# maps the packages that exist when it runs)
want=$( (cat pyproject.toml ${CONSTRAINTS:+"$CONSTRAINTS"}; ls -d */__init__.py) | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing repsim into .venv (first run, ~2 min)..." >&2
    : >"$log"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS=ignore
    quietly .venv/bin/python -m pip install --upgrade pip
    # torch, torchvision and timm in one resolver run, pinned, or pip fetches CUDA builds.
    quietly .venv/bin/python -m pip install ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[test,topology,text,text-example,brain-example,features,knn]"
    unset PYTHONWARNINGS
    echo "$want" > "$stamp"
fi
# The text example's corpus: Debian's fortunes (English quotations, /usr/share/games/fortunes).
# Installed where apt-get can run as root; elsewhere the example says how to get it.
if [ ! -d /usr/share/games/fortunes ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing the fortunes corpus (apt-get install fortunes)..." >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fortunes; } >>"$log" 2>&1; then
        echo "warning: could not install Debian's fortunes; examples/11_text_layers.py will not run (see $log)" >&2
    fi
fi
# Let plain `import torchvision` work even before `import repsim` (see repsim/core/compat.py).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Loaded by path so that interpreter start-up imports neither repsim nor torch.
hook="$(pwd)/repsim/_import_hook.py"
echo "import importlib.util as u; s = u.spec_from_file_location('_repsim_import_hook', '$hook'); m = u.module_from_spec(s); s.loader.exec_module(m); m.install()" > "$site/repsim_torchvision_guard.pth"
# Fashion-MNIST for --data fashion-mnist: Debian's dataset-fashion-mnist package, installed only when this runs
# as root where apt already knows the package; skipped silently otherwise (the data is optional).
# (apt's lists may be empty on a fresh machine: refresh them once when the package is unknown)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 \
    && { apt-cache show dataset-fashion-mnist >/dev/null 2>&1 \
         || { apt-get update -qq >>"$log" 2>&1 && apt-cache show dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >>"$log" 2>&1 || true
fi
