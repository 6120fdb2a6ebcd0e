"""The package's shape: no import cycles, and the dependency rule that reads top-down.

The import graph is read from the source with `ast` (every import, at module level or inside a function,
except those under `if TYPE_CHECKING:`), so a cycle hidden in a function body counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bitlm"

# Each subpackage may import its own modules and those of lower layers, never a higher one.
LAYERS = {"paths": 0, "bits": 0, "model": 1, "generate": 2, "compress": 3, "train": 3, "app": 4, "cli": 5}
# The one upward import, by name: `BitTransformerLM.generate` / `generate_stream` / `bit_decoder` are front doors
# to the sampling machinery, which reads the model only through its methods (see bitlm/model/transformer.py).
ALLOWED_UPWARD = {("bitlm.model.transformer", "bitlm.generate.decoder")}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules `name` imports (resolving relative imports and `from pkg import module`)."""
    found: set[str] = set()

    def add(target: str) -> None:
        # `import a.b.c` also runs a and a.b: the nearest module of the package that exists counts.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    add(full if full in modules else base)
            visit(child)

    visit(ast.parse(source))
    return found


def import_graph(root: Path = ROOT, package: str = "bitlm") -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p.read_text(), m, p.name == "__init__.py", modules) for m, p in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module, or of one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_the_package_has_no_import_cycle():
    assert strongly_connected(import_graph()) == []


def test_a_planted_cycle_is_found(tmp_path):
    pkg = tmp_path / "bitlm"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text("from bitlm.a.two import f\n")
    (pkg / "a" / "two.py").write_text("def f():\n    from . import three\n")
    (pkg / "a" / "three.py").write_text("from typing import TYPE_CHECKING\nimport bitlm.a.one\n"
                                        "if TYPE_CHECKING:\n    from bitlm.a import two\n")
    (pkg / "a" / "four.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from bitlm.a import one\n")
    (pkg / "a" / "five.py").write_text("from bitlm.a import four\n")
    graph = import_graph(tmp_path)
    assert graph["bitlm.a.three"] == {"bitlm.a.one"}      # the TYPE_CHECKING import is not an edge
    assert strongly_connected(graph) == [["bitlm.a.one", "bitlm.a.three", "bitlm.a.two"]]


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in import_graph() if m != "bitlm" and layer_of(m) is None]
    assert unplaced == [], f"add these subpackages to LAYERS: {unplaced}"


def test_imports_point_down_the_layers():
    upward = sorted((m, t) for m, targets in import_graph().items() if m != "bitlm" for t in targets
                    if t != "bitlm" and layer_of(t) > layer_of(m) and (m, t) not in ALLOWED_UPWARD)
    assert upward == [], "a lower layer imports a higher one"
    sideways = sorted((m, t) for m, targets in import_graph().items() if m != "bitlm" for t in targets
                      if t != "bitlm" and layer_of(t) == layer_of(m) and m.split(".")[1] != t.split(".")[1])
    assert sideways == [], "two subpackages of the same layer import each other"


def test_the_allowed_upward_import_still_exists():
    # An allowance that no longer applies must be removed, not left to excuse a new upward import.
    graph = import_graph()
    for module, target in ALLOWED_UPWARD:
        assert target in graph[module]


def test_no_library_module_parses_the_command_line():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        source = path.read_text()
        assert "argparse" not in source and "__main__" not in source, \
            f"{path.relative_to(ROOT)}: command lines live in bitlm/cli/"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_what_it_owns(path):
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} needs a docstring"


def test_each_tab_is_its_own_unit():
    # What two tabs share (status lines, bit formatting) lives below them in bitlm.app.inputs or plots.
    graph = import_graph()
    tabs = {m for m in graph if m.startswith("bitlm.app.") and m.endswith("_tab")}
    assert len(tabs) == 3
    assert {(m, t) for m in tabs for t in graph[m] if t in tabs} == set()
