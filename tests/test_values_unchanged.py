"""Every registered measure's value on fixed inputs, by route (one-shot, 2 x 3 grid, streaming), equals the
recorded one (tests/data/registry_values.csv, written by scripts/registry_values.py).

A refactor must not move a value; a deliberate change (a bug fix) rewrites the file with
``python scripts/registry_values.py --write tests/data/registry_values.csv --no-gloo`` and says why in
the commit. The two-rank route is checked by the script itself (``--check``, with gloo).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pandas as pd

ROOT = pathlib.Path(__file__).parents[1]
TOLERANCE = 1e-10  # relative to max(1, |value|): far above rounding on any BLAS, far below any real change


def _script():
    spec = importlib.util.spec_from_file_location("registry_values", ROOT / "scripts" / "registry_values.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["registry_values"] = module
    spec.loader.exec_module(module)
    return module


def test_registered_values_do_not_move():
    script = _script()
    recorded = pd.read_csv(ROOT / "tests" / "data" / "registry_values.csv")
    now = script.values(with_gloo=False)
    merged = recorded.merge(now, on=["measure", "route"], how="outer", suffixes=("_recorded", "_now"), indicator=True)
    missing = merged[merged["_merge"] != "both"]
    assert missing.empty, f"routes recorded or computed only on one side:\n{missing}"
    scale = merged[["value_recorded", "value_now"]].abs().max(axis=1).clip(lower=1.0)
    moved = merged[(merged["value_recorded"] - merged["value_now"]).abs() > TOLERANCE * scale]
    assert moved.empty, f"values moved:\n{moved[['measure', 'route', 'value_recorded', 'value_now']]}"
