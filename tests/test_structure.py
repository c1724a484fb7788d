"""The package's shape: its import graph has no loops, and the TensorRT layer stays light (no torch and no
exporter at import time), read from the modules' own import statements."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mla_export"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path], top_level_only: bool = False) -> set[str]:
    """Names of the modules `path` imports (package-internal ones resolved; others as written)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in modules else source)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def test_import_graph_has_no_loops():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                loop = visit(target)
                if loop:
                    return loop
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            loop = visit(module)
            assert loop is None, "import loop: " + " -> ".join(loop)
    assert "mla_export.spec" in graph["mla_export.export"]  # the graph is really read


def test_trt_layer_imports_neither_torch_nor_the_exporter_at_module_level():
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("mla_export.trt"):
            continue
        top = _imports(path, modules, top_level_only=True)
        everywhere = _imports(path, modules)
        assert not any(m == "torch" or m.startswith("torch.") for m in top), f"{name} imports torch at import time"
        assert "mla_export.export" not in everywhere, f"{name} imports the exporter"


def test_spec_and_kernel_plan_are_torch_free():
    """What build, the plugin check and the AOT build read must not pull torch in."""
    modules = _modules()
    for name in ("mla_export.spec", "mla_export.config", "mla_export.common.contract", "mla_export.onnx_reader",
                 "mla_export.kernels", "mla_export.kernels.plan", "mla_export.kernels.moe_plan",
                 "mla_export.kernels.codegen"):
        top = _imports(modules[name], modules, top_level_only=True)
        assert "torch" not in top and "triton" not in top, name
