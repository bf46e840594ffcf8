"""The package's import structure: no module imports itself back through others, and the modules that the actor
side and the config need import no TensorFlow."""

import ast
import sys
from pathlib import Path

from conftest import ROOT, run


def _modules(root: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:``, which never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, at its top level or inside any function. ``from hvd_dqn.x
    import y`` counts as importing ``hvd_dqn.x.y`` where that is a module, else ``hvd_dqn.x``. A package's parent
    is left out: Python initializes it before its children, so it closes no cycle."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def _graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = _modules(root, package)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_module_import_graph_has_no_cycle():
    graph = _graph(ROOT, "hvd_dqn")
    assert len(graph) >= 40
    assert "hvd_dqn.envs" in graph["hvd_dqn.config"]  # its validator's import, inside a function, is counted
    assert "hvd_dqn.config" not in graph["hvd_dqn.scaling"]  # under TYPE_CHECKING: never run
    assert _cycles(graph) == []


def test_a_cycle_closed_by_a_function_level_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\ndef g():\n    import pkg.a\n"
    )
    (package / "d.py").write_text("import pkg.c\n")
    graph = _graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"}
    assert _cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_numpy_only_modules_import_no_tensorflow():
    code = (
        "import sys\n"
        "import hvd_dqn.nstep, hvd_dqn.jsoncodec, hvd_dqn.envids\n"
        "print(sorted(m for m in ('tensorflow', 'horovod', 'gymnasium') if m in sys.modules))\n"
    )
    proc = run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
