"""The package's shape: no import circles, public names never shadowed by submodules, checked tables."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

import ddpm_bench

PACKAGE = Path(ddpm_bench.__file__).parent


def module_names() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions (a function-level
    import that dodges a circle is a circle all the same). Imports of the top-level package (its public
    API, which no module of the package imports) are left out."""
    mods = module_names()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t.startswith("ddpm_bench"):
                    r = resolve(t)
                    if r and r not in (mod, "ddpm_bench"):
                        graph[mod].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_circle_check_finds_a_circle():
    graph = import_graph()
    graph["ddpm_bench.noise"].add("ddpm_bench.variational_bound")  # the bound imports noise: a circle
    assert any({"ddpm_bench.noise", "ddpm_bench.variational_bound"} <= set(c) for c in cycles(graph))


def test_no_submodule_shares_a_name_with_the_public_api():
    """Importing a submodule binds it on its package: a public function of the same name would be shadowed."""
    submodules = {m.name for m in pkgutil.iter_modules([str(PACKAGE)])}
    exported_modules = {n for n in ddpm_bench.__all__ if isinstance(getattr(ddpm_bench, n), types.ModuleType)}
    assert exported_modules == {"estimators", "formats"}  # tables exported as the modules they are
    assert not submodules & (set(ddpm_bench.__all__) - exported_modules)
    for name in submodules - {"__main__"}:
        importlib.import_module(f"ddpm_bench.{name}")
    assert callable(ddpm_bench.bound) and callable(ddpm_bench.sample) and callable(ddpm_bench.rate_distortion)


def test_every_public_name_is_documented():
    for name in ddpm_bench.__all__:
        if name != "__version__":
            assert getattr(ddpm_bench, name).__doc__, name


def test_the_estimator_table_refuses_a_duplicate_or_a_stranger():
    from ddpm_bench.estimators import Exact, register

    with pytest.raises(ValueError, match="already registered"):
        register(Exact)
    with pytest.raises(TypeError, match="not an Estimator"):
        register(dict)
