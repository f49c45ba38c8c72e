"""The layering issue 9 asked for, read from the source: imports (module-level and inside
functions) form no cycle between the admin API and the proxy's command line / workers, nor
between the network filters (the HTTP connection manager is one of them) and the Server."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src"


def _graph() -> dict[str, set[str]]:
    mods = {}
    for p in (ROOT / "sofamesh").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != m:
                    g[m].add(t)
    return g


def _reaches(g: dict[str, set[str]], src: str, dst_prefixes: tuple[str, ...]) -> list[str]:
    """A path from src to a module under one of dst_prefixes, or []."""
    seen, stack = {src: [src]}, [src]
    while stack:
        m = stack.pop()
        for n in g[m]:
            if n not in seen:
                seen[n] = seen[m] + [n]
                if n.startswith(dst_prefixes):
                    return seen[n]
                stack.append(n)
    return []


def test_admin_does_not_import_the_command_line_or_the_workers():
    g = _graph()
    for m in g:
        if m.startswith("sofamesh.admin"):
            path = _reaches(g, m, ("sofamesh.proxy.cli", "sofamesh.proxy.workers"))
            assert not path, " -> ".join(path)


def test_network_filters_do_not_import_the_server():
    g = _graph()
    assert "sofamesh.filters.network.http_connection_manager" in g
    for m in g:
        if m.startswith("sofamesh.filters"):
            path = _reaches(g, m, ("sofamesh.proxy.server",))
            assert not path, " -> ".join(path)
