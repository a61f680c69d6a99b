"""The package's modules import one another without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path, package: str) -> set[str]:
    """The modules of ``package`` that a source file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.split(".")[0] == package}


def test_no_module_imports_one_that_imports_it_back():
    """Library modules never import the command line (it imports them): the import graph of
    the package, lazy imports included, has no cycle."""
    src = ROOT / "src"
    files = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
             for p in src.rglob("*.py")}
    graph = {m: imports(p, "segunet") & files.keys() - {m} for m, p in files.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen))
                   for n in graph[start])

    cycles = sorted(f"{m} -> {n}" for m in graph for n in graph[m] if reaches(n, m, set()))
    assert not cycles, cycles
