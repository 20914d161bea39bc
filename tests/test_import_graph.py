"""Imports inside src/lmmiqa point one way: no module imports, directly or through others, a module that imports
it back — counting imports inside functions (lazy imports) and under ``TYPE_CHECKING`` too.

The graph is read from the source with :mod:`ast` (nothing is imported). An edge ``A -> B`` is drawn for
``import lmmiqa.x.B``, ``from lmmiqa.x import B`` when ``B`` is a module, and ``from lmmiqa.x import name``
(``name`` defined in ``lmmiqa/x/__init__.py``) as an edge to the package ``lmmiqa.x`` itself — so a module that
imports its own package's ``__init__`` counts. Relative imports are resolved. The implicit import of parent
packages that Python performs is not an edge (every module would then depend on ``lmmiqa/__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(src: Path, package: str = "lmmiqa") -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` file of ``package`` under ``src``."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _owner(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (``a.b.c`` -> ``a.b`` when c is a name)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(src: Path, package: str = "lmmiqa") -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (see the module docstring)."""
    modules = module_files(src, package)
    edges: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        here = mod if is_pkg else mod.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == package:
                        target = _owner(alias.name, modules)
                        if target:
                            out.add(target)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != package:
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    target = full if full in modules else _owner(source, modules)
                    if target:
                        out.add(target)
        out.discard(mod)
        edges[mod] = out
    return edges


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each is an import circle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # Tarjan's algorithm
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def _path_within(edges: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete circle through the first module of ``comp`` (for the failure message)."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    seen = {start}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return " -> ".join(reversed(path)) + f" -> {start}"
            if w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return " <-> ".join(comp)


def test_no_import_circle_in_lmmiqa():
    edges = import_edges(SRC)
    assert len(edges) > 50 and "lmmiqa.methods.base" in edges  # the walk found the package
    cycles = import_cycles(edges)
    assert not cycles, "import circles (imports must point one way):\n" + "\n".join(
        f"  {_path_within(edges, c)}" for c in cycles
    )


# --------------------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return tmp_path


def test_checker_sees_lazy_relative_and_package_imports(tmp_path):
    src = _tree(tmp_path, {
        "pkg/__init__.py": "def f():\n    from pkg.sub import low\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/low.py": "X = 1\n",
        "pkg/sub/high.py": "def g():\n    from . import low\n    from .low import X\n",
        "pkg/api.py": "import pkg\n",  # imports the package __init__: an edge to 'pkg'
        "pkg/leaf.py": "from pkg import api\n",  # 'api' is a module: an edge to pkg.api, not to pkg
    })
    edges = import_edges(src, "pkg")
    assert edges["pkg.sub.high"] == {"pkg.sub.low"}
    assert edges["pkg"] == {"pkg.sub.low"}
    assert edges["pkg.api"] == {"pkg"}
    assert edges["pkg.leaf"] == {"pkg.api"}
    assert import_cycles(edges) == []


def test_checker_finds_circles_through_lazy_imports_and_own_package(tmp_path):
    src = _tree(tmp_path, {
        "pkg/__init__.py": "VERSION = '1'\ndef run():\n    from pkg.runner import go\n",
        "pkg/runner.py": "def go():\n    from pkg import VERSION\n",  # attribute of __init__: edge to 'pkg'
        "pkg/a.py": "from pkg.b import y\n",
        "pkg/b.py": "def f():\n    from .a import x\n",
    })
    edges = import_edges(src, "pkg")
    assert import_cycles(edges) == [["pkg", "pkg.runner"], ["pkg.a", "pkg.b"]]
    assert _path_within(edges, ["pkg.a", "pkg.b"]) == "pkg.a -> pkg.b -> pkg.a"
