"""The package's import graph has no cycles, and inference does not load the training stack.

The graph is read from the source (``ast``), so an import that runs only inside a function, or only on
some code path, counts as much as one at the top of a module: a cycle through a lazy import is still
two modules that each need the other. What counts as ``M`` importing ``X``:

- ``import X``, ``from X import name`` and ``from . import X``, at any depth, relative or absolute;
  importing ``a.b.c`` from outside ``a.b`` also runs ``a/__init__`` and ``a/b/__init__``, so those count
  too (a module's own enclosing packages are already importing, so they count only for a name that
  their ``__init__`` defines: ``from . import name`` where ``name`` is no submodule);
- a string naming a module in a module that calls ``importlib.import_module`` (the lazy export tables
  of ``peft_svf/__init__`` and ``peft_svf.trainer``).

Imports under ``if TYPE_CHECKING:`` never run and are left out: they are how annotations name a type
without importing its module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "src" / "peft_svf"
# What inference must not load: TRL, and transformers' Trainer (its module imports accelerate, datasets...).
TRAINING_STACK = ("trl", "transformers.trainer")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def enclosing_packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in (
                "TYPE_CHECKING",
                "typing.TYPE_CHECKING",
            ):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return nodes


def imported_names(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules ``name`` (at ``path``) names in its imports, before adding enclosing packages."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = runtime_nodes(ast.parse(path.read_text(), str(path)))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    calls_import_module = any(
        (isinstance(n, ast.Name) and n.id == "import_module")
        or (isinstance(n, ast.Attribute) and n.attr == "import_module")
        for n in nodes
    )
    if calls_import_module:
        for node in nodes:
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                found.add(f"{package}{text}" if text.startswith(".") else text)
    return found & modules


def import_graph(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """``{module: the package modules importing it runs}`` for every module under ``root``."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        own = enclosing_packages(name) | ({name} if path.name == "__init__.py" else set())
        edges = set()
        for target in imported_names(path, name, set(paths)):
            edges.add(target)  # an enclosing package here means a name its __init__ defines
            edges |= {p for p in enclosing_packages(target) if p in paths and p not in own}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None: depth-first search, a back edge closes a cycle."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph[node]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "peft_svf.hub" in graph  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_relative_and_package_imports(tmp_path):
    """The reader itself: a cycle closed only by a function-level import is found; TYPE_CHECKING is not one."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .b import B\n")
    (package / "a.py").write_text("from .sub.b import B\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import A\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == set()
    assert find_cycle(graph) == ["pkg.a", "pkg.sub", "pkg.sub.b", "pkg.a"]


def test_inference_does_not_load_trl_or_the_trainer():
    code = (
        "import sys, peft_svf.adaptive\n"
        f"print(sorted(m for m in sys.modules for s in {TRAINING_STACK!r} if m == s or m.startswith(s + '.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
