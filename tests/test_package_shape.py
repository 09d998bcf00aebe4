"""The package's shape, read from its source with `ast` (nothing is imported): no import cycle inside
pipeline/, only pipeline/run imports Ray, and no module is longer than MAX_LINES unless it says why.

An import is an edge to the most specific module of the package that it names, wherever it stands
(at the top, or inside a function: a lazy import still ties the two modules):
`from pipeline.storage import writing` is pipeline.storage.writing, `from pipeline.storage import
Location` is pipeline.storage, `from . import x` resolves against the importing module. The parent
packages whose `__init__` Python runs on the way are not counted, as import-linter counts them: a
package's `__init__` that hands its modules' names on would otherwise tie every one of them to it.

A module may be longer than MAX_LINES when its opening docstring has a line that starts with
"Long because" and says why (one concept that does not split well, say).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_LINES = 450
REASON = "Long because"


def module_names(root: Path) -> dict[str, Path]:
    """Every module under root (a package folder) by its dotted name."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(path: Path, name: str) -> list[tuple[str, str]]:
    """Each import in this file (module `name`) as (the module it names if that is a module, else
    the one it falls back to): `import x.y` is (x.y, x.y); `from x import y` is (x.y, x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, one level up per extra dot
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [(f"{base}.{alias.name}", base) for alias in node.names]
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (see the module docstring)."""
    modules = module_names(root)
    graph = {}
    for name, path in modules.items():
        named = {specific if specific in modules else fallback for specific, fallback in imports(path, name)}
        graph[name] = {m for m in named if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other in a loop (strongly connected components of
    more than one module), found by Tarjan's algorithm, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_inside_the_package():
    assert cycles(import_graph(PACKAGE)) == []


def test_only_the_run_package_imports_ray():
    outside = sorted(name for name, path in module_names(PACKAGE).items() if not name.startswith("pipeline.run.")
                     and any(m == "ray" or m.startswith("ray.") for m, _ in imports(path, name)))
    assert outside == []


def long_without_reason(root: Path) -> list[str]:
    """Modules over MAX_LINES lines whose opening docstring has no line starting with REASON."""
    found = []
    for name, path in module_names(root).items():
        text = path.read_text()
        lines = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and not any(line.strip().startswith(REASON) for line in doc.splitlines()):
            found.append(f"{name}: {lines} lines")
    return found


def test_no_module_is_long_without_a_reason():
    assert long_without_reason(PACKAGE) == [], f"over {MAX_LINES} lines, and no '{REASON} ...' line in the docstring"


def test_the_checks_see_cycles_lazy_imports_and_long_modules(tmp_path):
    """The checks above can fail: a loop through a lazy relative import, and a long module."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")  # a package face: no edge back
    (root / "a.py").write_text("import pkg.sub.b\n")
    (root / "sub" / "b.py").write_text("B = 1\n\ndef f():\n    from ..c import C\n")
    (root / "c.py").write_text("from pkg import a\nC = 1\n")
    graph = import_graph(root)
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.b"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.c"},
                     "pkg.c": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (root / "c.py").write_text("C = 1\n")
    assert cycles(import_graph(root)) == []

    body = "x = 1\n" * MAX_LINES
    (root / "long.py").write_text(f'"""A long module."""\n{body}')
    (root / "explained.py").write_text(f'"""A long module.\n\nLong because it is one table.\n"""\n{body}')
    assert long_without_reason(root) == [f"pkg.long: {MAX_LINES + 1} lines"]
