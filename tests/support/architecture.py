"""The import rule of DESIGN.md as a function over a source tree, so a test can run it on the real
package and on a copy with a violation planted in it."""

from __future__ import annotations

import ast
from pathlib import Path

BASE = {"config", "errors", "logging", "clock"}
DOMAINS = ["identity", "audit", "sessions", "agents", "usage", "tasks", "webhooks", "protocols", "ops"]
# what a domain may take from a domain before it
PUBLIC_ROLES = {"service", "schemas"}
ENTRY_POINTS = {"app", "worker", "__main__", "cli"}
FRAMEWORKS = {"starlette", "arq", "uvicorn"}
# the modules of a domain that may touch a framework: endpoints speak Starlette, jobs and the
# queue adapter speak arq; everything else (services, repositories, lifecycle…) neither
STARLETTE_ROLES = ("endpoints", "auth_backend")
ARQ_ROLES = ("jobs", "queue")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, inside_function) for every absolute import in the file."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                base = child.module
                # `from agent_service.tasks import service` names the module agent_service.tasks.service
                found.extend((f"{base}.{a.name}", child.lineno, in_func) for a in child.names)
            visit(child, nested)

    visit(tree, False)
    return found


def sources(pkg: Path) -> list[Path]:
    return sorted(p for p in pkg.rglob("*.py") if p != pkg / "__init__.py")


def _top(pkg: Path, path: Path) -> str:
    return path.relative_to(pkg).parts[0].removesuffix(".py")


def _role(pkg: Path, path: Path) -> str:
    """The module's name inside its domain (`service`, `endpoints`, `admin_endpoints`, …)."""
    return path.relative_to(pkg).parts[1].removesuffix(".py") if len(path.relative_to(pkg).parts) > 1 else ""


def _target(module: str, pkg_name: str) -> tuple[str, str] | None:
    parts = module.split(".")
    if parts[0] != pkg_name:
        return None
    if len(parts) == 1:
        return "__init__", ""
    return parts[1], parts[2] if len(parts) > 2 else ""


def violations(pkg: Path) -> list[str]:
    name = pkg.name
    out: list[str] = []
    for path in sources(pkg):
        src, role = _top(pkg, path), _role(pkg, path)
        where = str(path.relative_to(pkg))
        for module, line, _ in imports(path):
            root = module.split(".")[0]
            if src in DOMAINS and root in FRAMEWORKS:
                allowed = (root == "starlette" and role.endswith(STARLETTE_ROLES)) or (
                    root == "arq" and role in ARQ_ROLES)
                if not allowed:
                    out.append(f"{where}:{line} ({src}.{role}) may not import the framework {module}")
            target = _target(module, name)
            if target is None:
                continue
            dst, dst_role = target
            if dst == "__init__" or dst == src:
                continue
            if dst in ENTRY_POINTS:
                if src not in ENTRY_POINTS:
                    out.append(f"{where}:{line} imports the entry point {module}")
                continue
            if src in ENTRY_POINTS:
                continue
            if src in BASE:
                if dst not in BASE:
                    out.append(f"{where}:{line} ({src}) may import only config, errors, logging, clock")
            elif src == "kit":
                if dst not in BASE:
                    out.append(f"{where}:{line} kit may not import {module}")
            elif src in DOMAINS:
                if dst in BASE or dst == "kit" or dst == "migrations":
                    continue
                if dst not in DOMAINS:
                    out.append(f"{where}:{line} ({src}) imports unknown package {module}")
                elif DOMAINS.index(dst) > DOMAINS.index(src):
                    out.append(f"{where}:{line} ({src}) may not import a later domain: {module}")
                elif dst_role.split(".")[0] not in PUBLIC_ROLES:
                    out.append(f"{where}:{line} ({src}) may import only service/schemas of {dst}, not {module}")
    return out


def nested_imports(pkg: Path, optional: set[str]) -> list[str]:
    return [f"{p.relative_to(pkg)}:{line} {m}" for p in sources(pkg) for m, line, inner in imports(p)
            if inner and m.split(".")[0] not in optional]
