"""Envoy's Lua cluster specifier (`envoy.router.cluster_specifier_plugin.lua`) in an embedded
LuaJIT (the `lupa` package, extra `sofamesh[lua]`): a route's `envoy_on_route(route_handle)`
names the cluster of each request.

What a script sees, as in Envoy (source/extensions/router/cluster_specifiers/lua):
- `route_handle:headers():get(name)`: the request header's values joined by "," (the name
  is lower-cased; pseudo-headers `:path`, `:method`, `:authority`, `:scheme` too), or nil;
- `route_handle:getCluster(name)`: nil for an unknown cluster, else an object with
  `numConnections()`, `numRequests()` and `numPendingRequests()`.
The script is loaded once per configuration in each worker process (a runtime of its own);
a load error (syntax, a failing top-level statement) or no `envoy_on_route` function
refuses the configuration. Per request, a string (or number) returned names the cluster;
nil or any other value, or a run-time error, gives `default_cluster` (Envoy logs an error
and serves on; sofamesh also counts them: `cluster_specifier.lua.non_string_return`,
`cluster_specifier.lua.script_error`). A returned cluster that does not exist is the
router's no-cluster answer (503, NC), as in Envoy.

PERF(benchmarks/lua_cluster.py, instr_per_request.py --lua): a request costs one call into
Lua (_core/lua_route.pyx). The handle lives in Lua: the values of the header names the source
asks for by literal (`get("x")`, up to four) are passed as arguments of that call, and only
other names call back into Python. Routes without a plugin pay one integer compare in the
router.
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import Any

from sofamesh._core.lua_route import LuaRoute
from sofamesh.config.support import register_extension
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.lua")

NAME = "envoy.router.cluster_specifier_plugin.lua"
TYPE_URL = "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"
register_extension(TYPE_URL, "sofamesh.proxy.lua_cluster (needs lupa: sofamesh[lua])")

_PREFETCH = 4  # literal header names whose values travel with the call
_LITERAL_GET = re.compile(r"""get\s*\(\s*(?:"([^"\\\n]*)"|'([^'\\\n]*)')\s*\)""")
_PSEUDO = (b":path", b":method", b":authority", b":scheme")

# The handle, built once per script. Chunk arguments: the script's envoy_on_route, the
# Python callbacks (one header by lower-case name; a cluster's three counts), the literal
# header names passed per call. Returns the per-request function: its arguments are those
# names' values; it returns the cluster name (bytes), nil (not a string), or false and the
# error message.
_HANDLE = """
local fn, get_header, get_cluster, n1, n2, n3, n4 = ...
local pcall, type, tostring, error, lower = pcall, type, tostring, error, string.lower
local setmetatable = setmetatable
local v1, v2, v3, v4
-- read-only objects, as Envoy's userdata: an assignment is a run-time error
local function sealed(methods)
  return setmetatable({}, {
    __index = methods,
    __newindex = function() error("attempt to modify a read-only Envoy object", 2) end,
    __metatable = false,
  })
end
local HM = {}
function HM.get(self, name)
  if name == n1 then return v1 end
  if name == n2 then return v2 end
  if name == n3 then return v3 end
  if name == n4 then return v4 end
  local t = type(name)
  if t == "number" then
    name = tostring(name)
  elseif t ~= "string" then
    error("bad argument #1 to 'get' (string expected, got " .. t .. ")", 2)
  end
  return get_header(lower(name))
end
local H = sealed(HM)
local function count(n) return function() return n end end
local RM = {}
function RM.headers(self) return H end
function RM.getCluster(self, name)
  if type(name) ~= "string" and type(name) ~= "number" then
    error("bad argument #1 to 'getCluster' (string expected, got " .. type(name) .. ")", 2)
  end
  local c, r, p = get_cluster(tostring(name))
  if c == nil then return nil end
  return sealed({numConnections = count(c), numRequests = count(r), numPendingRequests = count(p)})
end
local R = sealed(RM)
return function(a1, a2, a3, a4)
  v1, v2, v3, v4 = a1, a2, a3, a4
  local ok, out = pcall(fn, R)
  v1, v2, v3, v4 = nil, nil, nil, nil
  if not ok then return false, tostring(out) end
  local t = type(out)
  if t == "string" then return out end
  if t == "number" then return tostring(out) end
  return nil
end
"""

# Runs the script's top level; returns nil, or the load / run error as Envoy words it.
_LOAD = """
local f, err = (loadstring or load)(...)
if not f then return err end
local ok, e = pcall(f)
if not ok then return tostring(e) end
return nil
"""


def _runtime(path: str) -> Any:
    """A new Lua runtime: LuaJIT (Envoy's Lua), else Lua 5.1, from lupa."""
    try:
        try:
            from lupa import luajit21 as lua  # type: ignore[import-not-found]
        except ImportError:
            from lupa import lua51 as lua  # type: ignore[import-not-found]
    except ImportError:
        raise UnsupportedConfig(
            f"{path}: the Lua cluster specifier needs the lupa package (pip install "
            "'sofamesh[lua]'); without it envoy.router.cluster_specifier_plugin.lua is not "
            "implemented by sofamesh"
        ) from None
    # encoding=None: Lua strings are bytes both ways (header values, cluster names)
    return lua.LuaRuntime(
        encoding=None, register_eval=False, register_builtins=False, unpack_returned_tuples=True
    )


def _literal_names(source: str) -> list[bytes]:
    names: list[bytes] = []
    for m in _LITERAL_GET.finditer(source):
        n = (m.group(1) if m.group(1) is not None else m.group(2)).encode()
        if n and n not in names and not n.startswith(b":"):
            names.append(n)
    return names[:_PREFETCH]


def lua_route(source: str, default_cluster: str, path: str, stats: Any = None) -> LuaRoute:
    """Loads one LuaConfig's script into a runtime of its own; returns the compiled
    _core.lua_route.LuaRoute whose cluster(headers, clusters) routes each request."""
    lua = _runtime(path)
    # loaded as Envoy loads it (luaL_loadstring, the source as chunk name): same messages
    err = lua.execute(_LOAD, source.encode())
    if err is not None:
        raise UnsupportedConfig(
            f"{path}.source_code: script load error: {err.decode('utf-8', 'replace')}"
        )
    g = lua.globals()
    fn = g[b"envoy_on_route"]
    if fn is None or lua.eval(b"type")(fn) != b"function":
        raise UnsupportedConfig(
            f"{path}.source_code: envoy_on_route() function not found. Lua will not hook "
            "cluster specifier."
        )
    g[b"python"] = None  # the script sees standard Lua only, as in Envoy
    names = _literal_names(source)
    errors, non_string = _counters(stats)

    def on_failure(r: Any) -> None:
        if r is None:
            _bump(non_string, "return value is not string, use default cluster")
        else:
            msg = r[1].decode("utf-8", "replace") if isinstance(r[1], bytes) else str(r[1])
            _bump(errors, f"{msg}, use default cluster")

    route = LuaRoute(default_cluster, [n.lower() for n in names], on_failure)
    ref = weakref.ref(route)  # no cycle through the Lua registry (see lua_route.pyx)

    def get_header(name: bytes) -> bytes | None:
        r = ref()
        h = r.headers if r is not None else None
        if h is None:  # a handle kept by the script past its request
            return None
        if name in _PSEUDO:
            if name == b":path":
                return h.path_value
            if name == b":method":
                return h.method_value
            if name == b":authority":
                return h.authority_value
            # HTTP/2 carries :scheme; an HTTP/1 request's is what the connection manager put
            # in x-forwarded-proto (the connection's, as Envoy's :scheme), else http
            return getattr(h, "scheme", None) or h.get_value(b"x-forwarded-proto") or b"http"
        return h.get_value(name)

    def get_cluster(name: bytes) -> tuple[int, int, int] | None:
        r = ref()
        clusters = r.clusters if r is not None else None
        cl = (clusters or {}).get(name.decode("utf-8", "surrogateescape"))
        if cl is None:
            return None
        return (cl.cx_active, cl.rq_active, cl.pending_active)

    slots = [*names] + [None] * (_PREFETCH - len(names))
    route.call = lua.execute(_HANDLE.encode(), fn, get_header, get_cluster, *slots)
    route.lua = lua  # the runtime lives as long as the route
    return route


def _counters(stats: Any) -> tuple[Any, Any]:
    from sofamesh._core.stats import Store

    store = stats if stats is not None else Store()  # no store: counted, not shown
    return (
        store.counter("cluster_specifier.lua.script_error"),
        store.counter("cluster_specifier.lua.non_string_return"),
    )


def _bump(c: Any, what: str) -> None:
    c.value += 1
    c.used = True
    n = c.value
    if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th, ...: a failing script does not flood the log
        log.error("script log: %s (%s: %d)", what, c.name, n)


def compile_plugin(ext: Any, path: str, stats: Any = None) -> LuaRoute:
    """A ClusterSpecifierPlugin's extension (TypedExtensionConfig) -> its plugin."""
    tc = ext.typed_config
    if tc.type_url != TYPE_URL:
        raise UnsupportedConfig(
            f"{path}.extension: cluster specifier plugin {tc.type_url or ext.name!r} is not "
            "implemented by sofamesh"
        )
    from envoy.extensions.router.cluster_specifiers.lua.v3 import lua_pb2

    cfg = lua_pb2.LuaConfig()
    tc.Unpack(cfg)
    from sofamesh.proxy.tls import data_source

    epath = f"{path}.extension.typed_config"
    code = data_source(cfg.source_code, f"{epath}.source_code")
    return lua_route(code.decode("utf-8", "replace"), cfg.default_cluster, epath, stats)
