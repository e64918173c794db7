"""The house's shape, checked against the code: no import cycles (imports inside functions count),
few modules at the top, small modules. The layer rules themselves are import-linter's contracts in
pyproject.toml (run by scripts/test.sh); this file checks what a contract cannot say."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "occoord"
MAX_TOP_LEVEL_MODULES = 8
MAX_MODULE_LINES = 400


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("occoord", cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.startswith("occoord"))
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _is_package_face(module: str) -> bool:
    """A package's ``__init__`` is imported by each of its modules implicitly; it must not import
    them back (that would be a cycle through the package itself)."""
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a graph with a loop must be reported."""
    g = grimp.ImportGraph()
    for name in ("occoord", "occoord.a", "occoord.b", "occoord.c"):
        g.add_module(name)
    g.add_import(importer="occoord.a", imported="occoord.b")
    g.add_import(importer="occoord.b", imported="occoord.c")
    g.add_import(importer="occoord.c", imported="occoord.a")
    assert _cycles(g) == [["occoord.a", "occoord.b", "occoord.c"]]


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert _cycles(graph) == []


def test_package_faces_import_nothing_of_their_own(graph: grimp.ImportGraph) -> None:
    faces = [m for m in graph.modules if m.startswith("occoord.") and _is_package_face(m)]
    assert faces, "the packages were found"
    for face in faces:
        own = [m for m in graph.find_modules_directly_imported_by(face) if m.startswith(face + ".")]
        assert own == [], f"{face} imports its own modules: {own}"


def test_few_modules_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    large = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert large == {}
