"""Imports in app/ point one way: no module imports, even inside a function, a module that
imports it back (directly or through others). The feed is the bottom of the services."""

import ast
from pathlib import Path

from support.paths import REPO_ROOT

APP = REPO_ROOT / "app"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> app modules it imports anywhere in its body (functions included)."""
    files = {_module_name(p): p for p in APP.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle_in_app() -> None:
    graph = _import_graph()
    assert "app.services.feed" in graph
    cycles = [c for c in (_cycle_through(graph, m) for m in sorted(graph)) if c]
    assert cycles == [], cycles


def test_the_feed_does_not_import_visitors_or_presence() -> None:
    graph = _import_graph()
    assert "app.services.visitors" not in graph["app.services.feed"]
    assert "app.services.presence" not in graph["app.services.feed"]
    assert "app.services.feed" in graph["app.services.visitors"]  # the layer above it


def test_the_graph_sees_imports_inside_functions() -> None:
    """The check would have caught the old cycle: feed imported visitors inside post()."""
    graph = _import_graph()
    assert "app.services.feed" in graph["app.__main__"]  # imported inside _moderation()
