"""The package import graph has no cycles (imports inside functions count too: a deferred import that closes
a cycle only hides the knot)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "specforge"


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of specforge it imports`` (``from pkg import name`` counts as the submodule when
    ``name`` is one, else as the package)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("specforge"):
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_deferred_imports():
    g = import_graph()
    assert "specforge.errors" in g["specforge.cli"]  # imported inside main()


def test_package_import_graph_has_no_cycles():
    g = import_graph()
    cycles = []
    while (c := find_cycle(g)) is not None:  # list them all, not only the first
        cycles.append(" -> ".join(c))
        g[c[-2]].discard(c[-1])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def package_graph(depth: int = 2) -> dict[str, set[str]]:
    """The module graph collapsed to packages ``specforge.<sub>`` (``depth`` dotted parts)."""
    out: dict[str, set[str]] = {}
    for m, deps in import_graph().items():
        a = ".".join(m.split(".")[:depth])
        out.setdefault(a, set())
        for d in deps:
            b = ".".join(d.split(".")[:depth])
            out.setdefault(b, set())
            if a != b:
                out[a].add(b)
    return out


def test_subpackage_graph_has_no_cycles():
    """Layers stay layers: e.g. ``modeling`` (targets) never reaches back into ``export`` or the trainer."""
    g = package_graph()
    cycles = []
    while (c := find_cycle(g)) is not None:
        cycles.append(" -> ".join(c))
        g[c[-2]].discard(c[-1])
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(cycles)
