"""The app's route table as templates: which route a path was headed for, and which methods its
path allows — for answers given before (or instead of) routing: the metrics label of a request
refused by the credential middleware, and the `Allow` header of a 405 when several routes share
one path (Starlette's 405 names only the first route's methods)."""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence

from starlette.routing import BaseRoute, Mount, Route, compile_path
from starlette.types import Scope

# per app: every route's full template (mount prefixes joined), its compiled pattern and methods,
# built on the first request that needs them; a lookup is then one regex match per route
Templates = tuple[tuple[re.Pattern[str], str, frozenset[str] | None], ...]
_TEMPLATES: weakref.WeakKeyDictionary[object, Templates] = weakref.WeakKeyDictionary()


def _flatten(routes: Sequence[BaseRoute], prefix: str = "") -> Templates:
    found: list[tuple[re.Pattern[str], str, frozenset[str] | None]] = []
    for r in routes:
        if isinstance(r, Mount):
            found += _flatten(r.routes, prefix + r.path)
        elif isinstance(r, Route):
            found.append((compile_path(prefix + r.path)[0], prefix + r.path,
                          frozenset(r.methods) if r.methods else None))
    return tuple(found)


def template_for(scope: Scope) -> str | None:
    """The route the router would pick: the first whose path and method match, else the first
    whose path matches (a 405 there); unmatched when no path matches."""
    app = scope.get("app")
    routes = getattr(app, "routes", None)
    if app is None or routes is None:
        return None
    table = _table(app, routes)
    root, path = _local_path(scope)
    method = scope.get("method", "")
    partial = None
    for pattern, template, methods in table:
        if pattern.match(path):
            if methods is None or method in methods:
                return f"{root}{template}"
            partial = partial or template
    return None if partial is None else f"{root}{partial}"


def methods_for(scope: Scope) -> set[str]:
    """Every method some route allows at this path (HEAD with GET, as Starlette serves it)."""
    app = scope.get("app")
    routes = getattr(app, "routes", None)
    if app is None or routes is None:
        return set()
    _, path = _local_path(scope)
    found: set[str] = set()
    for pattern, _, methods in _table(app, routes):
        if methods and pattern.match(path):
            found |= methods
    return found


def _table(app: object, routes: Sequence[BaseRoute]) -> Templates:
    table = _TEMPLATES.get(app)
    if table is None:
        table = _TEMPLATES[app] = _flatten(routes)
    return table


def _local_path(scope: Scope) -> tuple[str, str]:
    # the server's root path, not a Mount's (routing adds each mount to `root_path`)
    root: str = scope.get("app_root_path", scope.get("root_path", ""))
    path: str = scope.get("path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return root, path


