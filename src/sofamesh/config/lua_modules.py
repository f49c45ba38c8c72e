"""The Lua modules an inline script `require`s that LuaJIT would not find: Envoy fails
such a config at load ("script load error: module 'x' not found")."""

from __future__ import annotations

import re
from collections.abc import Callable

# LuaJIT's default package.path / cpath, relative entries resolved from the working dir.
_LUA_PATHS = (
    "./?.lua",
    "/usr/local/share/luajit-2.1/?.lua",
    "/usr/local/share/lua/5.1/?.lua",
    "/usr/local/share/lua/5.1/?/init.lua",
    "./?.so",
    "/usr/local/lib/lua/5.1/?.so",
)
_LUA_REQUIRE = re.compile(r"""\brequire\s*\(?\s*["']([A-Za-z0-9_.\-]+)["']""")
_LUA_BUILTIN = {
    "string",
    "table",
    "math",
    "io",
    "os",
    "coroutine",
    "debug",
    "package",
    "bit",
    "jit",
    "ffi",
    "utf8",
}


def missing_lua_modules(code: str, exists: Callable[[str], bool]) -> list[str]:
    """The modules `code` requires that are neither built in nor a file on LuaJIT's default
    paths (`exists(path)` says whether a file is there)."""
    out = []
    for mod in _LUA_REQUIRE.findall(code):
        if mod.split(".")[0] in _LUA_BUILTIN:
            continue
        rel = mod.replace(".", "/")
        if not any(exists(t.replace("?", rel)) for t in _LUA_PATHS):
            out.append(mod)
    return out
