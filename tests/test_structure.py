"""The codebase's own rules, checked: short functions, private names stay private, no import cycles."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("repsim", "probes", "zoo")
MAX_FUNCTION_LINES = 80


def _sources(*folders: str):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``path``)."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _sources(*PACKAGES, "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_no_private_name_is_imported_across_packages():
    """An underscore means internal to its package: probes, zoo, examples and benchmarks use public names."""
    crossing = []
    for path in _sources(*PACKAGES, "examples", "benchmarks", "scripts"):
        home = path.relative_to(ROOT).parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, path)
                top = target.split(".")[0]
                if top not in PACKAGES or top == home:
                    continue
                private = [p for p in target.split(".") if p.startswith("_")]
                private += [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    crossing.append(f"{path.relative_to(ROOT)}:{node.lineno} from {target} import {private}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] in PACKAGES and parts[0] != home and any(p.startswith("_") for p in parts):
                        crossing.append(f"{path.relative_to(ROOT)}:{node.lineno} import {alias.name}")
    assert not crossing, "private names used outside their package:\n" + "\n".join(crossing)


def _module_level_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the project that ``path`` imports when it is imported (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, ast.ImportFrom):
            target = _absolute(node, path)
            names = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != _module_name(path):
                found.add(name)
                break
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    """Module-level imports form no cycle (a package's __init__ importing its own submodules is the one
    allowed direction: a submodule never imports its package's __init__ back)."""
    paths = {_module_name(p): p for p in _sources(*PACKAGES)}
    known = set(paths)
    graph = {m: _module_level_imports(p, known) for m, p in paths.items() if m.split(".")[0] == package}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]) if dep in stack else dep)
            elif dep in graph and not state.get(dep):
                visit(dep, [*stack, dep])
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# The wings of repsim and what each may import (module-level or inside functions): the model side
# (networks) and the math side (measures, inference) meet only in the pipeline; core is under all.
WINGS = {
    "core": {"core"},
    "networks": {"core", "networks"},
    "measures": {"core", "measures"},
    "inference": {"core", "measures", "inference"},
    "pipeline": {"core", "networks", "measures", "inference", "pipeline"},
}


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "repsim" and parts[1] in WINGS else None


def test_wings_import_only_downwards():
    """core <- networks; core <- measures <- inference; all <- pipeline (<- cli, the package's __init__)."""
    upward = []
    for path in _sources("repsim"):
        wing = _wing(_module_name(path))
        if wing is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = _absolute(node, path)
                targets = [f"{base}.{a.name}" for a in node.names] if base in ("repsim", "repsim.core") else [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] != "repsim":
                    continue
                other = _wing(target)
                if other is None or other not in WINGS[wing]:
                    upward.append(f"{path.relative_to(ROOT)}:{node.lineno} ({wing}) imports {target}")
    assert not upward, "imports against the wings' order:\n" + "\n".join(upward)


def test_wing_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule above can fail: a measures module importing the pipeline is reported."""
    fake = tmp_path / "repsim" / "measures" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..pipeline.compare import compare\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"imports repsim\.pipeline\.compare"):
        test_wings_import_only_downwards()
