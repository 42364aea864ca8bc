"""Follow one small ``repsim.compare`` call through the source files: how many stops, files, moves
between files, and moves back up the import order (issue 30: "compare reads top to bottom").

The data is followed: a *stop* is a call into a file of ``repsim/`` that receives the loader or
data made from it (a tensor, a list or dict of tensors, or an object holding some), on a loader of
one batch, consecutive calls in one file counted once. Once the call enters the math wings
(``repsim/measures``, ``repsim/inference``) the files below that entry are not followed (the
measure is one stop). A move goes *back up* when the file it enters imports (directly or not) the
file it leaves. Prints one line per stop and the totals; ``--quiet`` only the totals.

    python scripts/trace_compare.py [--quiet]
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repsim"
MATH = ("measures", "inference")


def _imports() -> dict[str, set[str]]:
    """Each repsim file (relative path) and the repsim files it imports, at any depth of its body."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - (node.level - 1)] if node.level else []
                module = base + (node.module.split(".") if node.module else [])
                for name in [*(alias.name for alias in node.names), None]:
                    parts = module + ([name] if name else [])
                    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
                        if candidate.is_file() and PACKAGE in candidate.parents:
                            targets.add(str(candidate.relative_to(ROOT)))
        graph[rel] = targets
    return graph


def _above(graph: dict[str, set[str]]):
    """above(a, b): a imports b, directly or through others."""
    cache: dict[str, set[str]] = {}

    def reach(a: str) -> set[str]:
        if a not in cache:
            cache[a] = set()
            out, todo = set(), list(graph.get(a, ()))
            while todo:
                b = todo.pop()
                if b not in out:
                    out.add(b)
                    todo.extend(graph.get(b, ()))
            cache[a] = out
        return cache[a]

    return lambda a, b: b in reach(a)


def _traced_compare() -> list[str]:
    import repsim

    torch.manual_seed(0)
    model_a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))
    model_b = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 5))
    loader = [torch.randn(16, 8)]
    repsim.compare(model_a, model_b, loader, progress=False)  # warm: imports and registry loaded
    stops: list[str] = []
    depth_in_math = [0]

    def data(value, deep: bool = True) -> bool:
        if value is loader or isinstance(value, torch.Tensor):
            return True
        if isinstance(value, (list, tuple)):
            return any(data(v, False) for v in value[:4])
        if isinstance(value, dict):
            return any(data(v, False) for v in list(value.values())[:4])
        return deep and hasattr(value, "__dict__") and any(data(v, False) for v in vars(value).values())

    def carries(frame) -> bool:
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        return any(data(frame.f_locals.get(name)) for name in names)

    def where(frame) -> str | None:
        path = Path(frame.f_code.co_filename)
        return str(path.relative_to(ROOT)) if PACKAGE in path.parents else None

    def tracer(frame, event, arg):
        if event not in ("call", "return"):
            return
        here = where(frame)
        if here is None:
            return
        in_math = here.split("/")[1] in MATH
        if event == "return":
            depth_in_math[0] -= bool(depth_in_math[0]) and in_math
            return
        if depth_in_math[0]:
            depth_in_math[0] += in_math
            return
        depth_in_math[0] = int(in_math)
        if carries(frame) and (not stops or stops[-1] != here):
            stops.append(here)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.setprofile(tracer)
        try:
            repsim.compare(model_a, model_b, loader, progress=False, measures=["linear_cka", "debiased_cka", "rsa"])
        finally:
            sys.setprofile(None)
    return stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true")
    quiet = parser.parse_args().quiet
    stops = _traced_compare()
    above = _above(_imports())
    moves = list(itertools.pairwise(stops))
    back_up = [(a, b) for a, b in moves if above(b, a)]
    if not quiet:
        for k, stop in enumerate(stops):
            print(f"{k:3d} {stop}")
    entries = Counter(stops)
    print(
        f"stops {len(stops)}, files {len(entries)}, moves {len(moves)}, back up {len(back_up)}; "
        + ", ".join(f"{Path(f).name} x{c}" for f, c in entries.most_common(4))
    )


if __name__ == "__main__":
    main()
