"""The package's shape, read from the modules' own import statements: the sub-packages are layers that
import only the layers below them (so there are no loops), and the TensorRT layer stays light (no torch and
no exporter at import time)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mla_export"


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path], top_level_only: bool = False,
             root: Path = PACKAGE) -> set[str]:
    """Names of the modules `path` imports (package-internal ones resolved; others as written)."""
    name = _module_name(path, root)
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


# The layers, lowest first: a module may import its own layer and the layers before it, never one after.
# The package's face (`mla_export/__init__.py`, `__main__.py`, the `polygraphy_data` shim) sits above all.
LAYERS = ("common", "kernels", "model", "weights", "graph", "trt", "run", "ui")


def _layer(module: str) -> int:
    """The rank of a module's layer; the package's face ranks above every layer."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(package)
    return {name: {m for m in _imports(path, modules, root=package) if m in modules and m != name}
            for name, path in modules.items()}


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a layer's module from a higher layer, as readable lines."""
    return sorted(f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})"
                  for module, targets in graph.items() if _layer(module) < len(LAYERS)
                  for target in targets if _layer(target) > _layer(module))


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
    assert "mla_export.model.spec" in graph["mla_export.graph.export"]  # the graph is really read


def test_trt_layer_imports_neither_torch_nor_the_exporter_at_module_level():
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("mla_export.trt"):
            continue
        top = _imports(path, modules, top_level_only=True)
        everywhere = _imports(path, modules)
        assert not any(m == "torch" or m.startswith("torch.") for m in top), f"{name} imports torch at import time"
        assert "mla_export.graph.export" not in everywhere, f"{name} imports the exporter"


def test_spec_and_kernel_plan_are_torch_free():
    """What build, the plugin check and the AOT build read must not pull torch in."""
    modules = _modules()
    for name in ("mla_export.model.spec", "mla_export.model.config", "mla_export.common.contract",
                 "mla_export.graph.onnx_reader",
                 "mla_export.kernels", "mla_export.kernels.attention.plan", "mla_export.kernels.moe.plan",
                 "mla_export.kernels.codegen"):
        top = _imports(modules[name], modules, top_level_only=True)
        assert "torch" not in top and "triton" not in top, name


def test_every_module_lives_in_a_layer():
    face = {"mla_export", "mla_export.__main__", "mla_export.polygraphy_data"}
    strays = sorted(m for m in _modules() if _layer(m) == len(LAYERS) and m not in face)
    assert not strays, f"modules outside every layer: {strays}; put each in the sub-package of its job"


def test_layers_import_only_the_layers_below_them():
    graph = _graph()
    upward = _upward_imports(graph)
    assert not upward, "imports against the layering:\n" + "\n".join(upward)
    assert "mla_export.model.spec" in graph["mla_export.run.validate"]  # the graph is really read


def test_the_layer_check_reports_an_upward_import(tmp_path):
    """The check itself can fail: a planted `model -> run` import is reported, a `run -> model` one is not."""
    package = tmp_path / "mla_export"
    for folder in ("model", "run"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "run" / "validate.py").write_text("from ..model.spec import Y\nX = 1\n")
    (package / "model" / "spec.py").write_text("Y = 2\n")
    (package / "model" / "config.py").write_text("from ..run.validate import X\n")
    assert _upward_imports(_graph(package)) == [
        "mla_export.model.config (model) imports mla_export.run.validate (run)"]
